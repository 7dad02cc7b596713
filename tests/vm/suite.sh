# Sourced by guest-tests.sh and pair-guest.sh (POSIX sh: busybox or dash).
#
# py_suite <label> <timeout-s> <script> [<-k filter>]: runs one of the
# Python multi-node suites (harness.py) with the Release build in $RELEASE.
# Its "PASS x"/"FAIL x" lines are prefixed with the label, its "N passed,
# N failed" line becomes INFO. A script that dies without that summary line
# is a FAIL. For each failed test: its message and the last lines of every
# daemon's log (the harness prints the logs after a FAIL line), indented —
# tests/vm/run passes indented lines through, so CI's output says why.
# Sets rc=1 on a failure.
py_suite() {
  t0=$(cut -d' ' -f1 /proc/uptime)
  timeout "$2" /usr/bin/python3 "$3" --build-dir "$RELEASE" ${4:+-k "$4"} > "/tmp/$1.log" 2>&1
  src=$?
  sed -n -e "s/^INFO /INFO $1: /p" -e "s/^\(PASS\|FAIL\) /\1 $1\//p" \
    -e "s/^\([0-9]* passed, [0-9]* failed\)$/INFO $1: \1/p" "/tmp/$1.log"
  echo "INFO $1: exit $src, $(awk -v a="$t0" '{printf "%.0f", $1-a}' /proc/uptime) s"
  if ! grep -qE '^[0-9]+ passed, [0-9]+ failed$' "/tmp/$1.log"; then
    echo "FAIL $1: the script ended without a summary (exit $src; 124 = timed out); log tail:"
    tail -25 "/tmp/$1.log" | sed 's/^/    /'
    rc=1
  elif [ $src -ne 0 ]; then
    sed -n '/^FAIL /,/^PASS /p' "/tmp/$1.log" | grep -v '^PASS ' | awk '
      function flush() { n = c < 15 ? c : 15; for (i = c - n + 1; i <= c; i++) print buf[i]; c = 0 }
      /^FAIL |^--- node / { flush(); print; next }
      { buf[++c] = $0 }
      END { flush() }' | head -200 | sed 's/^/    /'
    rc=1
  fi
}
