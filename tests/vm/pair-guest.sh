#!/bin/sh
# Runs inside each VM of tests/vm/run's pair stage (from /mnt/share/cmd.sh):
#   pair-guest.sh home|mapper <kernel build dir> <Release build dir> <scale>
# The two VMs are joined by a virtual link (QEMU UDP socket netdev); each
# puts a Soft-RoCE device on it and loads tether.ko.
#   mapper VM: 10.99.0.2 (node 2); runs the tests/multinode/remote.py agent
#              until the home VM says quit.
#   home VM:   10.99.0.1 (node 1, the home) and 10.99.0.3 (node 3); runs the
#              host tier's invalidation and core suites with node 2 remote:
#              a 3-node cluster across two kernels, tetherd on tether.ko,
#              data over rdma between the VMs; then tests/vm/rdma_test.py
#              (the mapper VM's device removed under a client).
# Prints "PASS x" / "FAIL x: why" lines like guest-tests.sh.
ROLE=$1 KB=$2 RELEASE=$3 SCALE=${4:-1}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
AGENT=10.99.0.2:7800
rc=0
echo "INFO pair $ROLE: kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime)s"
[ -w /proc/sys/kernel/numa_balancing ] && echo 0 > /proc/sys/kernel/numa_balancing
[ -w /sys/kernel/mm/transparent_hugepage/enabled ] && echo never > /sys/kernel/mm/transparent_hugepage/enabled
dmesg -C 2>/dev/null

mkdir -p /mnt/pair
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 pair /mnt/pair; then
  echo "FAIL pair share: cannot mount the shared directory"; exit 1
fi
modprobe virtio_net 2>/dev/null
i=0; while ! ip link show eth0 >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ "$ROLE" = mapper ]; then addrs="10.99.0.2"; else addrs="10.99.0.1 10.99.0.3"; fi
for a in $addrs; do ip addr add "$a/24" dev eth0 || rc=1; done
ip link set eth0 up || rc=1
# rxe1 on a dummy link is never used for traffic: it keeps the device list
# non-empty when rdma_test.py removes rxe0 (librdmacm only lets go of a
# removed device while another one remains; see docs/rdma.md, Limits).
if modprobe rdma_rxe && modprobe rdma_ucm && modprobe ib_uverbs &&
   rdma link add rxe0 type rxe netdev eth0 &&
   ip link add spare0 type dummy && ip link set spare0 up &&
   rdma link add rxe1 type rxe netdev spare0; then
  echo "PASS pair $ROLE: eth0 ($addrs) with Soft-RoCE device rxe0 (and a spare, rxe1)"
else
  echo "FAIL pair $ROLE: network or Soft-RoCE set-up"; rc=1
fi
if insmod "$KB/kernel/tether.ko"; then
  echo "PASS pair $ROLE: insmod"
else
  echo "FAIL pair $ROLE: insmod $KB/kernel/tether.ko"; rc=1
fi
[ $rc -eq 0 ] || exit $rc

if [ "$ROLE" = mapper ]; then
  timeout $((1500 * SCALE)) /usr/bin/python3 "$REPO/tests/multinode/remote.py" \
    --serve "$AGENT" --lifetime $((1400 * SCALE))
  src=$?
  if [ $src -eq 0 ]; then echo "PASS pair agent: served until quit"; else echo "FAIL pair agent: exit $src"; rc=1; fi
else
  # The agent must answer within a minute (the other VM boots in parallel).
  i=0
  until /usr/bin/python3 -c "import socket,sys; socket.create_connection(('10.99.0.2', 7800), 1)" 2>/dev/null; do
    i=$((i+1))
    if [ $i -ge 120 ]; then echo "FAIL pair link: the mapper VM's agent never answered"; exit 1; fi
    sleep 0.5
  done
  echo "PASS pair link: the mapper VM answers over the virtual link"
  export TETHER_CLUSTER_NET=pair TETHER_CLUSTER_RDMA=1 TETHER_CLUSTER_SHARED=/mnt/pair
  export TETHER_CLUSTER_IPS=1=10.99.0.1,2=10.99.0.2,3=10.99.0.3 TETHER_CLUSTER_REMOTE=2=$AGENT
  export TETHER_RACE_ITERS=${TETHER_VM_RACE_ITERS:-200}
  # Under TCG the mappers read slowly: a pause after each exporter call lets
  # them read between calls, and the test wants this many reads that could
  # have been stale (tests/multinode/test_invalidation.py).
  export TETHER_RACE_GAP_US=10000 TETHER_RACE_MIN_CHECKED=10
  . "$REPO/tests/vm/suite.sh"
  pair_suite() {  # <label> <script> [<-k filter>]
    py_suite "$1" $((${TETHER_VM_PAIR_TIMEOUT:-600} * SCALE)) "$2" "${3:-}"
  }
  case " ${TETHER_VM_PAIR_SUITES:-invalidation core rdma} " in *" invalidation "*)
    pair_suite pair-invalidation "$REPO/tests/multinode/test_invalidation.py" "${TETHER_VM_PAIR_K:-}";; esac
  case " ${TETHER_VM_PAIR_SUITES:-invalidation core rdma} " in *" core "*)
    pair_suite pair-core "$REPO/tests/multinode/test_core.py" "${TETHER_VM_PAIR_K:-}";; esac
  # Last: it removes the mapper VM's rxe device (and adds it back).
  export TETHER_CLUSTER_RXE=rxe0 TETHER_CLUSTER_NETDEV=eth0
  case " ${TETHER_VM_PAIR_SUITES:-invalidation core rdma} " in *" rdma "*)
    pair_suite pair-rdma "$REPO/tests/vm/rdma_test.py" "${TETHER_VM_PAIR_K:-}";; esac
  # tests/vm/run --bench: the rdma fault latency and bandwidth between the
  # two VMs (node 1 here, node 2 there), perftest on the same link.
  case " ${TETHER_VM_PAIR_SUITES:-} " in *" bench "*)
    . "$REPO/tests/vm/rdma-bench.sh"
    if rdma_bench "pair bench"; then
      sed -i 's/"name": "rdma_/"name": "rdma_2vm_/' /mnt/share/bench-rdma.json
    else
      rc=1
    fi;;
  esac
  /usr/bin/python3 -c "
import sys; sys.path.insert(0, '$REPO/tests/multinode')
import remote; remote._request(('10.99.0.2', 7800), {'op': 'quit'})" ||
    { echo "FAIL pair agent: could not stop it"; rc=1; }
fi
if rmmod tether; then echo "PASS pair $ROLE: rmmod"; else echo "FAIL pair $ROLE: rmmod: module still in use"; rc=1; fi
echo "INFO pair $ROLE: done, uptime $(cut -d' ' -f1 /proc/uptime)s"
exit $rc
