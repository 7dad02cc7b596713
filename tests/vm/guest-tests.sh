#!/bin/sh
# Runs inside a tests/vm VM (from /mnt/share/cmd.sh):
#   guest-tests.sh <kernel build dir> <module_test binary> <scale>
# Loads tether.ko, runs the module tests, unloads it.  Prints one
# "PASS name" / "FAIL name: why" line per check (the host collects them).
KB=$1 TEST=$2 SCALE=${3:-1}
echo "INFO kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime)s"
# Pin the kernel-internal event sources the tests do not ask for (DESIGN:
# NUMA hinting and THP policy), so that events come only when a test makes them.
[ -w /proc/sys/kernel/numa_balancing ] && echo 0 > /proc/sys/kernel/numa_balancing
[ -w /sys/kernel/mm/transparent_hugepage/enabled ] && echo never > /sys/kernel/mm/transparent_hugepage/enabled
dmesg -C 2>/dev/null
if insmod "$KB/kernel/tether.ko"; then
  echo "PASS insmod"
else
  echo "FAIL insmod: insmod $KB/kernel/tether.ko failed"
  exit 1
fi
i=0; while [ ! -c /dev/tether ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
[ -c /dev/tether ] || { echo "FAIL devnode: /dev/tether did not appear"; exit 1; }
dmesg | grep 'tether: ABI' | sed 's/^/INFO /'
TETHER_TEST_SCALE=$SCALE timeout $((300 * SCALE)) "$TEST"
rc=$?
[ $rc -eq 124 ] && echo "FAIL module_test: timed out"
if rmmod tether; then echo "PASS rmmod"; else echo "FAIL rmmod: module still in use"; rc=1; fi
echo "INFO done, uptime $(cut -d' ' -f1 /proc/uptime)s"
exit $rc
