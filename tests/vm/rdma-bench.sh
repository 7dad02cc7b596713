# Sourced by guest-tests.sh (one VM) and pair-guest.sh (two VMs): the rdma
# fault latency and bandwidth beside perftest (tests/bench/run.py --rdma),
# with the sizes tests/vm/run passed, figures in /mnt/share/bench-rdma.json.
# Needs REPO, RELEASE and SCALE. Prints "INFO LABEL: ..." and "PASS LABEL"
# or "FAIL LABEL"; returns 1 when no figures were measured.
rdma_bench() {  # <label>
  t0=$(cut -d' ' -f1 /proc/uptime)
  timeout $((900 * SCALE)) /usr/bin/python3 "$REPO/tests/bench/run.py" --rdma \
    --build-dir "$RELEASE" --rounds "${TETHER_VM_RDMA_BENCH_ROUNDS:-3}" \
    --faults "${TETHER_VM_RDMA_BENCH_FAULTS:-400}" --size-mb "${TETHER_VM_RDMA_BENCH_MB:-32}" \
    --json /mnt/share/bench-rdma.json
  src=$?
  echo "INFO $1: exit $src, $(awk -v a="$t0" '{printf "%.0f", $1-a}' /proc/uptime) s"
  if [ $src -eq 0 ] && [ -s /mnt/share/bench-rdma.json ]; then
    echo "PASS $1: $(wc -l < /mnt/share/bench-rdma.json) figures measured"
    return 0
  fi
  echo "FAIL $1: run.py --rdma exit $src (124 = timed out), no figures"
  return 1
}
