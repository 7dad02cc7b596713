#!/usr/bin/env python3
"""tetherd as a systemd service sees it (issue 18), without systemd: this
machine's PID 1 is not systemd, so the test plays its part.

- sd_notify: a unix datagram socket stands in for NOTIFY_SOCKET. READY=1
  must arrive only once the local, admin and peer sockets accept
  connections; with WATCHDOG_USEC set, WATCHDOG=1 arrives about every half
  interval; SIGSTOP (a wedged daemon) stops it; SIGHUP brackets a reload
  with RELOADING=1 .. READY=1; SIGTERM sends STOPPING=1.
- logs: with JOURNAL_STREAM naming stderr, every line carries a syslog
  priority <3>..<7> and no date; gRPC's own lines (GRPC_VERBOSITY=debug)
  come through the same sink; without it, lines start with an ISO 8601
  UTC date.
- tetherctl log-level changes the level at run time.
- --version, --help, --check-config; every flag --help lists is in
  docs/man/tetherd.8.

Run by ctest (label unit): service_test.py --build-dir BUILD."""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
failed = []


def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what)
    if not cond:
        failed.append(what)


class Daemon:
    def __init__(self, tetherd, tmp, extra_env=None, args=()):
        self.tmp = tmp
        self.notify_path = os.path.join(tmp, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.local = os.path.join(tmp, "l.sock")
        self.admin = os.path.join(tmp, "a.sock")
        self.log = os.path.join(tmp, "tetherd.log")
        self.logf = open(self.log, "w")
        st = os.fstat(self.logf.fileno())
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        env.update(extra_env or {})
        if env.get("JOURNAL_STREAM") == "match":
            env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
        self.port = free_port()
        cmd = [tetherd, "--node_id=1", "--insecure_peers", "--rdma=off",
               "--local_socket=" + self.local, "--admin_socket=" + self.admin,
               "--peer_listen=127.0.0.1:%d" % self.port, "--data_listen=127.0.0.1:0",
               "--notifier=user"] + list(args)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.logf, stderr=self.logf)

    def recv(self, timeout):
        """The next notification (a list of its lines), or None."""
        self.notify.settimeout(timeout)
        try:
            return self.notify.recv(4096).decode().split("\n")
        except socket.timeout:
            return None

    def wait_for(self, key, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.recv(max(0.01, deadline - time.time()))
            if m and key in m:
                return m
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.logf.close()

    def text(self):
        with open(self.log) as f:
            return f.read()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def accepts(path=None, port=None, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_UNIX if path else socket.AF_INET, kind)
    try:
        s.connect(path if path else ("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_notify(tetherd, ctl, tmp):
    # 400 ms: WATCHDOG=1 every ~200 ms.
    d = Daemon(tetherd, tmp, {"WATCHDOG_USEC": "400000", "JOURNAL_STREAM": "match",
                              "GRPC_VERBOSITY": "debug"})
    try:
        first = d.recv(30)
        check(first is not None and "STATUS=starting" in first,
              "first notification is STATUS=starting: %r" % first)
        ready = d.wait_for("READY=1", 30)
        check(ready is not None, "READY=1 arrives")
        # Checked at once: the daemon said ready, so everything must accept.
        # The local socket is SOCK_SEQPACKET (local_server.h), admin's gRPC a stream.
        up = (accepts(path=d.local, kind=socket.SOCK_SEQPACKET), accepts(path=d.admin), accepts(port=d.port))
        check(all(up), "at READY=1 the local, admin and peer sockets accept connections: %s"
              % (up,))
        check(ready is not None and any(l.startswith("STATUS=") for l in ready),
              "READY=1 comes with a STATUS= line: %r" % ready)
        stamps = []
        t0 = time.time()
        while len(stamps) < 6 and time.time() - t0 < 10:
            m = d.recv(5)
            if m and "WATCHDOG=1" in m:
                stamps.append(time.time())
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        check(len(stamps) == 6, "six WATCHDOG=1 within 10 s (got %d)" % len(stamps))
        # Half of 400 ms; generous bounds for a loaded 2-core machine.
        mean = sum(gaps) / len(gaps) if gaps else 0
        check(0.1 <= mean <= 0.35, "WATCHDOG=1 every ~0.2 s (mean gap %.3f s)" % mean)
        # A stopped daemon pings no more.
        d.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # drain what was sent before the stop took effect
        while d.recv(0.05):
            pass
        check(d.recv(1.0) is None, "no WATCHDOG=1 while the daemon is stopped (SIGSTOP)")
        d.proc.send_signal(signal.SIGCONT)
        check(d.wait_for("WATCHDOG=1", 5) is not None, "WATCHDOG=1 again after SIGCONT")
        # tetherctl log-level: the level changes at run time.
        env = dict(os.environ, TETHER_ADMIN_SOCKET=d.admin)
        r = subprocess.run([ctl, "log-level"], env=env, capture_output=True, text=True)
        check(r.returncode == 0 and "log level: info" in r.stdout,
              "tetherctl log-level shows info: %r" % (r.stdout + r.stderr))
        r = subprocess.run([ctl, "log-level", "loud"], env=env, capture_output=True, text=True)
        check(r.returncode != 0 and "must be debug, info, warning or error" in r.stderr,
              "tetherctl log-level loud is refused: %r" % (r.stdout + r.stderr))
        r = subprocess.run([ctl, "log-level", "debug"], env=env, capture_output=True, text=True)
        check(r.returncode == 0 and "log level: debug" in r.stdout,
              "tetherctl log-level debug: %r" % (r.stdout + r.stderr))
        # SIGHUP: RELOADING=1, then READY=1 again.
        d.proc.send_signal(signal.SIGHUP)
        check(d.wait_for("RELOADING=1", 5) is not None, "SIGHUP: RELOADING=1")
        check(d.wait_for("READY=1", 5) is not None, "after the reload: READY=1")
        d.proc.terminate()
        check(d.wait_for("STOPPING=1", 20) is not None, "SIGTERM: STOPPING=1")
        d.proc.wait(20)
        text = d.text()
        lines = [l for l in text.splitlines() if l]
        bad = [l for l in lines if not re.match(r"<[3-7]>", l)]
        check(lines and not bad, "journal: every line starts with <3>..<7> (not: %r)" % bad[:3])
        check(any(re.match(r"<7>tetherd\[node 1\]: ", l) for l in lines),
              "journal: a debug line after tetherctl log-level debug")
        check(any(re.match(r"<[3-7]>\S.*: grpc \S+:\d+: ", l) for l in lines),
              "journal: gRPC's own lines come through the sink")
    finally:
        d.stop()


def test_plain_log_and_no_watchdog(tetherd, tmp):
    d = Daemon(tetherd, tmp, {"JOURNAL_STREAM": "1:1"})
    try:
        check(d.wait_for("READY=1", 30) is not None, "plain: READY=1 arrives")
        check(d.recv(1.0) is None, "without WATCHDOG_USEC: no WATCHDOG=1")
        d.proc.terminate()
        d.proc.wait(20)
        lines = [l for l in d.text().splitlines() if l]
        bad = [l for l in lines
               if not re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [DIWE] tetherd", l)]
        check(lines and not bad, "plain: ISO 8601 UTC date and level on every line (not: %r)"
              % bad[:3])
    finally:
        d.stop()


def test_version_help_check(tetherd, tmp):
    r = subprocess.run([tetherd, "--version"], capture_output=True, text=True)
    check(r.returncode == 0 and re.search(
        r"^tetherd \d+\.\d+\.\d+ \(git [0-9a-f]{7,}(-dirty)?|unknown\), tether\.ko ABI \d+",
        r.stdout), "--version: %r" % r.stdout)
    r = subprocess.run([tetherd, "--help"], capture_output=True, text=True)
    flags = re.findall(r"^    --(\w+) \(", r.stdout, re.M)
    check(r.returncode in (0, 1) and len(flags) >= 30 and "node_id" in flags,
          "--help lists the flags (%d)" % len(flags))
    page = open(os.path.join(REPO, "docs", "man", "tetherd.8")).read()
    missing = [f for f in flags if ("\\-\\-" + f.replace("_", "_")) not in page]
    check(not missing, "every flag --help lists is in docs/man/tetherd.8 (missing: %s)" % missing)
    good = os.path.join(tmp, "good.conf")
    with open(good, "w") as f:
        f.write("# a comment\n--node_id=3\n--insecure_peers\n--peers=1=10.0.0.1:7600\n"
                "--local_socket=%s/x.sock\n--admin_socket=%s/y.sock\n--notifier=user\n"
                % (tmp, tmp))
    r = subprocess.run([tetherd, "--check-config", "--flagfile=" + good], capture_output=True,
                       text=True, timeout=10)
    check(r.returncode == 0 and "config OK: node 3" in r.stdout and ":7601" in r.stdout
          and not os.path.exists(os.path.join(tmp, "x.sock")),
          "--check-config on a good file: 0, OK, data port 7601, no socket: %r"
          % (r.stdout + r.stderr))
    bad = os.path.join(tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write("--node_id=3\n--insecure_peers\n--peers=3=10.0.0.3:7600\n")
    r = subprocess.run([tetherd, "--check-config", "--flagfile=" + bad], capture_output=True,
                       text=True, timeout=10)
    check(r.returncode == 2 and "--peers names this node's own id" in r.stderr,
          "--check-config on a bad file: 2 and the reason: %r" % (r.stdout + r.stderr))
    r = subprocess.run([tetherd, "--check_config", "--node_id=1", "--insecure_peers",
                        "--notifier=kernel"], capture_output=True, text=True, timeout=10,
                       env=dict(os.environ))
    if os.path.exists("/dev/tether"):
        check(r.returncode == 0, "--check-config --notifier=kernel with /dev/tether: 0")
    else:
        check(r.returncode == 2 and "--notifier=kernel but /dev/tether does not exist" in r.stderr,
              "--check-config --notifier=kernel without tether.ko: 2: %r" % r.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    args = ap.parse_args()
    tetherd = os.path.join(args.build_dir, "daemon", "tetherd")
    ctl = os.path.join(args.build_dir, "client", "tetherctl")
    for name, fn in [("version, help, check-config", lambda t: test_version_help_check(tetherd, t)),
                     ("sd_notify and journal logs", lambda t: test_notify(tetherd, ctl, t)),
                     ("plain logs", lambda t: test_plain_log_and_no_watchdog(tetherd, t))]:
        tmp = tempfile.mkdtemp(prefix="tether-service-")
        print("--- " + name)
        try:
            fn(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("%d failed" % len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
