#!/usr/bin/env bash
# The installed tetherd.service under a real systemd (tests/packaging/run,
# step 7): run by tether-check.service inside a systemd-nspawn container
# booted on this machine's /usr with a fresh tmpfs root (nothing it writes
# is kept), whose PID 1 is systemd. The unit is the package's, as installed,
# with one drop-in (unit_check.conf: a 3 s watchdog, and the user-space
# notifier source: the container shares this machine's kernel, which has no
# tether.ko).
#
# Writes "PASS what" / "FAIL what: detail" lines to /check/result and
# "done" at the end, then powers the container off.
set -u
out=/check/result
: >"$out"
# Whatever happens, the container powers off (an early exit says so).
finish() {
  grep -qx done "$out" || echo "FAIL unit_check.sh stopped early (line $1)" >>"$out"
  journalctl -u tetherd --no-pager >/check/journal.log 2>&1 || true
  systemctl poweroff --no-block
}
trap 'finish $LINENO' EXIT
# A status field of tetherd's /proc/PID/status (no awk: it is an
# alternatives link in /etc, which this container's fresh /etc lacks).
field() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status"; }
pass() { echo "PASS $*" >>"$out"; }
fail() { echo "FAIL $*" >>"$out"; }
check() {  # check WHAT COMMAND...: PASS if the command succeeds
  local what=$1
  shift
  if "$@" >>/check/commands.log 2>&1; then pass "$what"; else fail "$what: $* failed"; fi
}
prop() { systemctl show tetherd -P "$1"; }
# Waits up to $2 s until `prop $1` prints $3.
wait_prop() {
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    [[ $(prop "$1") == "$3" ]] && return 0
    sleep 0.2
  done
  return 1
}

# 1. start: Type=notify, so `systemctl start` returns once tetherd said
# READY=1 (and fails if it died or never said it).
if systemctl start tetherd >>/check/commands.log 2>&1; then
  pass "systemctl start tetherd returned (READY=1 received)"
else
  fail "systemctl start tetherd: $(systemctl status tetherd --no-pager 2>&1 | tail -20)"
fi
state="$(prop ActiveState)/$(prop SubState)"
[[ $state == active/running ]] && pass "active/running" || fail "state after start: $state"
status=$(prop StatusText)
[[ $status == serving* ]] && pass "STATUS= text from tetherd: '$status'" ||
  fail "StatusText after start: '$status' (want 'serving...')"
pid=$(prop MainPID)
check "tetherctl status answers through /run/tether/admin.sock" tetherctl status
[[ -S /run/tether/tetherd.sock ]] && pass "RuntimeDirectory /run/tether holds the local socket" ||
  fail "no /run/tether/tetherd.sock"
[[ -d /var/lib/tether ]] && pass "StateDirectory /var/lib/tether exists" || fail "no /var/lib/tether"

# 2. the sandbox as the kernel sees it in the running daemon.
bnd=$(field "$pid" CapBnd)
# The unit's CapabilityBoundingSet=: CAP_DAC_READ_SEARCH (2),
# CAP_NET_BIND_SERVICE (10), CAP_IPC_LOCK (14), CAP_SYS_PTRACE (19);
# tetherd drops from it what it does not need here (IPC_LOCK without rdma,
# NET_BIND_SERVICE without a port below 1024) and keeps 2 and 19.
want=$(((1 << 2) | (1 << 10) | (1 << 14) | (1 << 19)))
need=$(((1 << 2) | (1 << 19)))
b=$((16#${bnd:-0}))
((b & ~want)) && fail "CapBnd $bnd has capabilities outside the unit's bounding set" ||
  pass "capability bounding set within the unit's (CapBnd $bnd)"
((b & need)) && (((b & need) == need)) && pass "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE kept" ||
  fail "CapBnd $bnd lacks CAP_DAC_READ_SEARCH or CAP_SYS_PTRACE"
e=$(field "$pid" CapEff)
eff=$((16#${e:-0}))
((eff & ~want)) && fail "CapEff $(printf '%x' $eff) outside the bounding set" ||
  pass "effective capabilities within the bounding set (CapEff $(printf '%x' $eff))"
[[ $(field "$pid" NoNewPrivs) == 1 ]] && pass "NoNewPrivs" || fail "NoNewPrivs is not set"
[[ $(field "$pid" Seccomp) == 2 ]] && pass "a seccomp filter (SystemCallFilter=)" ||
  fail "no seccomp filter on tetherd"

# 3. the watchdog: systemd records each WATCHDOG=1 (WatchdogTimestamp).
w1=$(prop WatchdogTimestampMonotonic)
sleep 2.5
w2=$(prop WatchdogTimestampMonotonic)
[[ -n $w1 && -n $w2 && $w2 != "$w1" && $w2 != 0 ]] &&
  pass "WATCHDOG=1 received (WatchdogTimestamp moved)" ||
  fail "WatchdogTimestamp did not move in 2.5 s ($w1 -> $w2)"

# 4. reload: ExecReload sends SIGHUP; tetherd says RELOADING=1 then READY=1.
check "systemctl reload tetherd" systemctl reload tetherd
wait_prop StatusText 10 "serving; reloaded" && pass "STATUS= after reload: 'serving; reloaded'" ||
  fail "StatusText after reload: '$(prop StatusText)'"

# 5. a hung daemon: SIGSTOP; the watchdog (3 s here) must kill it and
# Restart=on-failure start a new one.
kill -STOP "$pid"
if wait_prop NRestarts 60 1 && wait_prop SubState 30 running; then
  newpid=$(prop MainPID)
  [[ $newpid != "$pid" ]] && pass "watchdog: a stopped tetherd was killed and restarted" ||
    fail "NRestarts 1 but MainPID still $pid"
else
  fail "watchdog: no restart of a SIGSTOPped tetherd within 90 s: NRestarts $(prop NRestarts), $(prop ActiveState)/$(prop SubState), result $(prop Result)"
fi
journalctl -u tetherd --no-pager 2>/dev/null | grep -qi "watchdog timeout" &&
  pass "the journal says why (watchdog timeout)" || fail "no 'watchdog timeout' in the journal"

# 6. the journal has tetherd's own priorities (it prefixes <N> when
# JOURNAL_STREAM matches its stderr; journald turns them into PRIORITY=):
# its own lines (_SYSTEMD_UNIT, not PID 1's about it) at info and, from a
# change of log level (which tetherd logs as a warning), at warning.
check "tetherctl log-level debug" tetherctl log-level debug
check "tetherctl log-level info" tetherctl log-level info
sleep 0.5  # journald reads the stream asynchronously
prios=$(journalctl _SYSTEMD_UNIT=tetherd.service -o json --no-pager 2>/dev/null |
  grep -o '"PRIORITY":"[0-9]"' | sort -u | tr -dc '0-9')
[[ $prios == *6* && $prios == *4* ]] &&
  pass "journal priorities of tetherd's own lines: $prios (info and warning among them)" ||
  fail "journal priorities of tetherd's lines: '$prios' (want 6 info and 4 warning)"
journalctl _SYSTEMD_UNIT=tetherd.service -o cat --no-pager 2>/dev/null | grep -q '^<[0-7]>' &&
  fail "raw <N> prefixes reached the journal" || pass "no raw <N> prefixes in the journal"

# 7. stop: SIGTERM, a clean exit.
check "systemctl stop tetherd" systemctl stop tetherd
r=$(prop Result)
[[ $r == success && $(prop ActiveState) == inactive ]] && pass "stopped cleanly (Result=success)" ||
  fail "after stop: $(prop ActiveState), Result=$r"

echo done >>"$out"
