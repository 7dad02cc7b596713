#!/usr/bin/env python3
"""Every bad flag is refused at start (issue 17): tetherd run with a table of
bad flag sets must exit with status 2 and a message naming what is wrong,
before it opens a socket. A case that tetherd accepts would start a daemon:
it is killed after a few seconds and reported as accepted.

Run by ctest (label unit): flags_test.py --build-dir BUILD."""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    args = ap.parse_args()
    tetherd = os.path.join(args.build_dir, "daemon", "tetherd")
    tmp = tempfile.mkdtemp(prefix="tether-flags-")
    try:
        return run_cases(tetherd, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ktls_available():
    """Whether this kernel takes the TLS ULP on a connected TCP socket."""
    with socket.socket() as lst, socket.socket() as cli:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        cli.connect(lst.getsockname())
        srv, _ = lst.accept()
        with srv:
            try:
                cli.setsockopt(socket.SOL_TCP, 31, b"tls")  # TCP_ULP
                return True
            except OSError:
                return False


def run_cases(tetherd, tmp):
    ca, certs = os.path.join(tmp, "ca"), os.path.join(tmp, "certs")
    mk = os.path.join(REPO, "deploy", "make-certs")
    subprocess.run([mk, "ca", ca], check=True)
    subprocess.run([mk, "node", ca, certs, "1", "2"], check=True)
    unreadable = os.path.join(tmp, "missing.pem")
    garbage = os.path.join(tmp, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    conf_unknown, conf_bad = os.path.join(tmp, "unknown.conf"), os.path.join(tmp, "bad.conf")
    with open(conf_unknown, "w") as f:
        f.write("# tetherd.conf\n\n--cache_budget=64\n")
    with open(conf_bad, "w") as f:
        f.write("--rpc_timeout_ms=5s\n")
    base = ["--node_id=1", "--local_socket=%s/l.sock" % tmp, "--admin_socket=%s/a.sock" % tmp,
            "--peer_listen=127.0.0.1:0", "--rdma=off", "--state_dir=%s/state" % tmp]
    tls = ["--tls_ca=%s/ca.pem" % certs, "--tls_cert=%s/node-1.pem" % certs,
           "--tls_key=%s/node-1.key" % certs]
    insecure = ["--insecure_peers"]
    # (name, flags, what the message must contain)
    cases = [
        ("node id 0", ["--node_id=0"] + insecure, "--node_id must be 1..32767"),
        ("node id too big", ["--node_id=40000"] + insecure, "--node_id must be 1..32767"),
        ("own id in peers", ["--peers=1=10.0.0.1:7600,2=10.0.0.2:7600"] + insecure,
         "--peers names this node's own id"),
        ("duplicate peer id", ["--peers=2=10.0.0.2:7600,2=10.0.0.3:7600"] + insecure,
         "--peers names node 2 twice"),
        ("duplicate peer address", ["--peers=2=10.0.0.2:7600,3=10.0.0.2:7600"] + insecure,
         "the same address"),
        ("peer id out of range", ["--peers=40000=10.0.0.2:7600"] + insecure,
         "is not in 1..32767"),
        ("peer without port", ["--peers=2=10.0.0.2"] + insecure, "is not host:port"),
        ("peer syntax", ["--peers=2:10.0.0.2:7600"] + insecure, "bad --peers entry"),
        ("cache budget overflow", ["--cache_budget_mb=18446744073709551615"] + insecure,
         "--cache_budget_mb must be 1.."),
        ("cache budget zero", ["--cache_budget_mb=0"] + insecure, "--cache_budget_mb must be 1.."),
        ("metrics address by name", ["--metrics_listen=localhost:9640"] + insecure,
         "--metrics_listen: metrics address localhost:9640: bad IPv4 address"),
        ("metrics port", ["--metrics_listen=127.0.0.1:96400"] + insecure,
         "--metrics_listen: metrics address 127.0.0.1:96400: bad port"),
        ("negative rpc timeout", ["--rpc_timeout_ms=-5"] + insecure,
         "--rpc_timeout_ms must be 1..600000"),
        ("zero rpc timeout", ["--rpc_timeout_ms=0"] + insecure,
         "--rpc_timeout_ms must be 1..600000"),
        ("negative invalidate deadline", ["--invalidate_deadline_ms=-1"] + insecure,
         "--invalidate_deadline_ms must be"),
        ("negative lease", ["--lease_ms=-10"] + insecure, "--lease_ms must be 0"),
        ("lease margin", ["--lease_margin_pct=0"] + insecure, "--lease_margin_pct must be 1..50"),
        ("deadline + lease beyond the module's ack timeout",
         ["--lease_ms=60000"] + insecure,
         "must stay below tether.ko's ack_timeout_ms"),
        ("restart grace too short", ["--restart_grace_ms=10"] + insecure,
         "--restart_grace_ms must be 1000..600000"),
        ("empty state dir", ["--state_dir="] + insecure, "--state_dir must name a directory"),
        ("negative data retry", ["--data_retry_ms=-1"] + insecure, "--data_retry_ms must be"),
        ("rdma timeout below two heartbeats",
         ["--rdma_heartbeat_ms=1000", "--rdma_timeout_ms=1500"] + insecure,
         "--rdma_timeout_ms must be at least 2 x"),
        ("bad peer_listen", ["--peer_listen=nowhere"] + insecure, "--peer_listen must be host:port"),
        ("same socket twice", ["--admin_socket=%s/l.sock" % tmp] + insecure,
         "must be different paths"),
        ("insecure together with TLS files", insecure + tls,
         "--insecure_peers (plaintext) together with --tls_ca"),
        ("no TLS and not insecure", [], "node-to-node TLS needs --tls_ca"),
        ("unreadable TLS file", tls[:2] + ["--tls_key=" + unreadable],
         "cannot read --tls_key %s: No such file" % unreadable),
        ("CA file not a certificate", ["--tls_ca=" + garbage] + tls[1:],
         "the CA file holds no PEM certificate"),
        ("another node's certificate",
         tls[:1] + ["--tls_cert=%s/node-2.pem" % certs, "--tls_key=%s/node-2.key" % certs],
         "not this node (tether-node-1)"),
        ("key of another certificate", tls[:2] + ["--tls_key=%s/node-2.key" % certs],
         "the key file's key is not the certificate's"),
        ("expiry warning days", ["--tls_expiry_warn_days=-1"] + tls,
         "--tls_expiry_warn_days must be 0..3650"),
        ("notifier source", ["--notifier=module"] + insecure,
         "--notifier must be auto, kernel or user"),
        ("log level", ["--log_level=loud"] + insecure,
         "--log_level must be debug, info, warning or error"),
        ("data encryption value", ["--data_encryption=yes"] + insecure,
         "--data_encryption must be on or off"),
        ("data encryption with rdma on", ["--data_encryption=on", "--rdma=on"] + insecure,
         "--data_encryption=on and --rdma=on: rdma moves pages unencrypted"),
        # What absl's own parser would refuse with status 1: tetherd says which
        # flag, and where it came from, with 2.
        ("unknown flag", ["--node=1"] + insecure, "unknown flag --node (the command line"),
        ("unknown bool flag negated", ["--noverbosity"] + insecure, "unknown flag --noverbosity"),
        ("value of the wrong type", ["--node_id=one"] + insecure, "--node_id=one: "),
        ("bool value", ["--insecure_peers=maybe"], "--insecure_peers=maybe: "),
        ("flag without its value", insecure + ["--lease_ms"], "--lease_ms needs a value"),
        ("unknown flag in a flag file", ["--flagfile=%s" % conf_unknown] + insecure,
         "unknown flag --cache_budget (%s line 3" % conf_unknown),
        ("bad value in a flag file", ["--flagfile=%s" % conf_bad] + insecure,
         "--rpc_timeout_ms=5s: "),
        ("flag file missing", ["--flagfile=%s/none.conf" % tmp] + insecure,
         "cannot read flag file %s/none.conf" % tmp),
    ]
    if not ktls_available():
        # Asking for encryption where the kernel has no TLS: refused at start.
        cases.append(("data encryption without kernel TLS", ["--data_encryption=on"] + insecure,
                      "--data_encryption=on: this kernel cannot encrypt tcp connections"))
    if not os.path.exists("/dev/tether"):
        # Insisting on tether.ko where it is not loaded: refused at start.
        cases.append(("kernel notifier without tether.ko", ["--notifier=kernel"] + insecure,
                      "--notifier=kernel but /dev/tether does not exist"))
    failed = 0
    # absl's usage flags still pass the check and do what they do
    usage = ((["--version"], "tetherd "), (["--help"], "the tether node daemon"),
             (["--helpfull"], "--node_id"))
    for flags, want in usage:
        r = subprocess.run([tetherd] + flags, capture_output=True, text=True, timeout=5)
        out = r.stdout + r.stderr
        if want not in out or "unknown flag" in out:
            failed += 1
            print("FAIL %s: exit status %d, wanted %r in:\n  %s" %
                  (flags[0], r.returncode, want, out.strip()[-400:]))
        else:
            print("PASS %s: exit status %d" % (flags[0], r.returncode))
    for name, flags, want in cases:
        cmd = [tetherd] + base + flags
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = "none (still running after 5 s: accepted)", (e.stderr or b"").decode()
        ok = rc == 2 and want in err
        if not ok:
            failed += 1
            print("FAIL %s: %s\n  exit status %s, wanted 2 with %r; stderr:\n  %s" %
                  (name, " ".join(flags), rc, want, err.strip()[-600:].replace("\n", "\n  ")))
        else:
            print("PASS %s: %s" % (name, err.strip().splitlines()[-1]))
        for sock in ("l.sock", "a.sock"):
            try:
                os.unlink(os.path.join(tmp, sock))
            except OSError:
                pass
    print("%d passed, %d failed" % (len(cases) + len(usage) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
