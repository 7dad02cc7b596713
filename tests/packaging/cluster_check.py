#!/usr/bin/env python3
"""A 3-node namespace cluster from the INSTALLED packages (tests/packaging/run).

tetherd and tetherctl come from /usr/sbin and /usr/bin, every daemon starts
with --flagfile=/etc/tether/tetherd.conf (the package's conffile) and the
cluster's own flags after it (node id, addresses, certificates made by the
installed make-certs); the tcp data port is the fixed 7601 of
docs/operations.md. The clients are `consumer` and `xpmem_consumer`, built
by the caller against the installed -dev packages with pkg-config:

  cluster_check.py CONSUMER XPMEM_CONSUMER CRAY_CONSUMER

(CRAY_CONSUMER: xpmem_consumer.c built with `pkg-config cray-xpmem`.)

Node 1 exports a named segment; node 2 reads it through libtether, node 3
through libxpmem; node 1 rewrites it and both read the new contents, node 2
also through the cray-xpmem build.
Prints one line per check and "N passed, N failed"; exits 1 on a failure.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "multinode"))
from cluster import Cluster  # noqa: E402

SIZE = 3 * 4096 + 1024 * 1024
NAME = "packaging-check"


def main():
    consumer, xconsumer, cray = sys.argv[1], sys.argv[2], sys.argv[3]
    passed = failed = 0

    def check(ok, what, detail=""):
        nonlocal passed, failed
        print("%s %s%s" % ("PASS" if ok else "FAIL", what, "" if ok else ": " + detail),
              flush=True)
        if ok:
            passed += 1
        else:
            failed += 1
        return ok

    c = Cluster(n=3, bin_path="/usr/sbin:/usr/bin", flagfile="/etc/tether/tetherd.conf")
    c.make_certs_path = "/usr/share/tether/make-certs"
    # The conffile insists on tether.ko (--notifier=kernel); this build host
    # runs its own kernel without it (the VM tier runs the module), so the
    # nodes here take the user-space source. The data port is the default's.
    c.extra_args = ["--notifier=auto"]
    exporter = None
    try:
        c.start()
        for n in c.nodes:
            r = n.ctl("status", "--json")
            st = json.loads(r.stdout) if r.returncode == 0 else {}
            peers = st.get("peers", [])
            check(r.returncode == 0 and len(peers) == 2,
                  "node %d: installed tetherctl status sees 2 peers" % n.id, r.stdout + r.stderr)
        log = open(c.node(1).log).read()
        check(":7601" in log, "node 1 serves data on the fixed port 7601", log[-2000:])

        exporter = c.node(1).popen([consumer, "export", NAME, str(SIZE), "11"], text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        segid = None
        for line in exporter.stdout:
            line = line.strip()
            if line.startswith("segid="):
                segid = int(line.split("=")[1])
            if line == "ready" or line.startswith("error"):
                break
        if not check(segid is not None, "node 1: consumer exports %s" % NAME, line):
            return 1

        def read(node, seed):
            r = node.run([consumer, "read", NAME, seed], timeout=60)
            check(r.returncode == 0 and r.stdout.strip() == "ok",
                  "node %d: consumer (libtether, pkg-config tether) reads seed %s" %
                  (node.id, seed), r.stdout + r.stderr)

        def xread(node, seed, prog=xconsumer, pc="xpmem"):
            r = node.run([prog, segid, SIZE, seed], timeout=60)
            check(r.returncode == 0 and r.stdout.strip() == "ok",
                  "node %d: xpmem_consumer (libxpmem, pkg-config %s) reads seed %s" %
                  (node.id, pc, seed), r.stdout + r.stderr)

        read(c.node(2), "11")
        xread(c.node(3), "11")
        exporter.stdin.write("fill 12\n")
        exporter.stdin.flush()
        check(exporter.stdout.readline().strip() == "ok", "node 1: exporter rewrites")
        read(c.node(2), "12")
        xread(c.node(3), "12")
        xread(c.node(2), "12", cray, "cray-xpmem")
    except Exception as e:  # a cluster that does not start is a failure, loudly
        check(False, "cluster from the installed packages", repr(e))
        for n in c.nodes:
            try:
                print("--- tetherd %d log (tail) ---\n%s" % (n.id, open(n.log).read()[-3000:]))
            except OSError:
                pass
    finally:
        if exporter and exporter.poll() is None:
            exporter.stdin.close()
            exporter.wait(10)
        c.stop()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
