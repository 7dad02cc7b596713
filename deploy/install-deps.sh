#!/usr/bin/env bash
# Installs everything tether needs to build and test, from Debian 12's
# package archive only. Idempotent: a second run is a no-op (~1 s).
#   deploy/install-deps.sh          build + host tests
#   deploy/install-deps.sh --vm     also QEMU, Debian kernels and Soft-RoCE tools
set -euo pipefail

want_vm=0
[[ "${1:-}" == "--vm" ]] && want_vm=1

pkgs=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libibverbs-dev librdmacm-dev
  # tetherd's sd_notify readiness and watchdog (Type=notify)
  libsystemd-dev
  iproute2 procps util-linux bc openssl python3 kmod
  clang-format
  # tests/check-man: groff -man -ww over docs/man/.
  groff groff-base
  # libFuzzer (tests/fuzz): Debian 12's clang 14, its runtimes
  # (libclang_rt.fuzzer, asan, ubsan) and llvm-symbolizer for readable stacks.
  clang libclang-rt-dev llvm
  # Debian packages (deploy/build-debs, tests/packaging/run): debhelper with
  # the dkms addon, lintian; dkms itself builds tether.ko from tether-dkms.
  debhelper dh-dkms dkms lintian libssl-dev
  # tests/packaging/run boots a systemd-nspawn container to run the
  # installed tetherd.service under a real systemd (PID 1 here is not).
  systemd-container
)
if (( want_vm )); then
  pkgs+=(qemu-system-x86 busybox-static linux-image-amd64 linux-headers-amd64
         linux-image-6.12-amd64 linux-headers-6.12-amd64
         rdma-core ibverbs-utils perftest rdmacm-utils ibverbs-providers
         kmod cpio ethtool)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if (( ${#missing[@]} == 0 )); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
(( EUID == 0 )) || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 \
  install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
