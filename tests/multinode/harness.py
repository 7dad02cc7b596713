"""A tiny test runner for the multi-node tests: runs each test function in
a fresh cluster, prints PASS/FAIL lines and a closing 'N passed, N failed'
line, and exits non-zero on any failure. Select tests with -k SUBSTRING."""
import argparse
import os
import re
import signal
import sys
import time
import traceback

from cluster import Cluster


class Failure(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Failure(msg)


def freeze(node):
    """SIGSTOP a node's tetherd and wait until every thread of it has
    stopped: kill(2) returns before a busy process's threads do, and a
    thread still running could answer the very next request (seen on a
    loaded machine: a frozen node acked a BEGIN sent after kill returned).
    A daemon on another machine (the VM pair stage: no /proc of it here)
    is only signalled."""
    node.daemon.send_signal(signal.SIGSTOP)
    if getattr(node, "agent", None):
        return
    pid = node.daemon.pid
    deadline = time.time() + 10
    while time.time() < deadline:
        states = []
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass  # a thread that exited
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.01)
    raise Failure("tetherd %d did not stop on SIGSTOP" % node.id)


def run(tests, default_nodes=3):
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="")
    ap.add_argument("--build-dir")
    args = ap.parse_args()
    passed = failed = 0
    for fn in tests:
        if args.k not in fn.__name__:
            continue
        nodes = getattr(fn, "nodes", default_nodes)
        budgets = getattr(fn, "budgets", None)
        extra = getattr(fn, "daemon_args", ())
        t0 = time.time()
        cluster = None
        logs = ""
        try:
            with Cluster(nodes, build_dir=args.build_dir, budgets=budgets,
                         extra_args=extra) as cluster:
                try:
                    fn(cluster)
                    for node in cluster.nodes:  # a clean SIGTERM shutdown is part of every test
                        if node.daemon is None or node.daemon.poll() is not None:
                            continue  # killed by the test itself
                        rc = node.stop()
                        expect(rc == 0, "tetherd %d exited with %s on SIGTERM" % (node.id, rc))
                    # the rdma tier must not pass over tcp quietly (unless
                    # falling back is what the test checks)
                    if cluster.rdma and not getattr(fn, "allow_tcp_fallback", False):
                        fb = cluster.rdma_fallbacks()
                        expect(not fb, "fell back to tcp: %s" % fb[:3])
                finally:
                    logs = cluster.logs()  # before the cluster's directory goes
            passed += 1
            print("PASS %s (%.1f s)" % (fn.__name__, time.time() - t0), flush=True)
        except Exception as e:
            failed += 1
            print("FAIL %s: %s" % (fn.__name__, e), flush=True)
            if not isinstance(e, Failure):
                traceback.print_exc()
            print(logs)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


def with_nodes(n, budgets=None, daemon_args=()):
    def deco(fn):
        fn.nodes = n
        fn.budgets = budgets
        fn.daemon_args = daemon_args
        return fn
    return deco


SCRAPE = ("import sys, urllib.request\n"
          "r = urllib.request.urlopen('http://%s:9640/metrics', timeout=10)\n"
          "sys.stdout.write(r.headers['Content-Type'] + '\\n' + r.read().decode())\n")

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(node):
    """{'name{labels}': value} from the node's /metrics (as a scraper
    sees it, from inside the node's namespace), after checking the
    format: HELP and TYPE before each family's samples, every sample
    line parses."""
    r = node.run(["python3", "-c", SCRAPE % node.ip], timeout=30)
    expect(r.returncode == 0, "GET /metrics on node %d: %s" % (node.id, r.stdout + r.stderr))
    ctype, _, body = r.stdout.partition("\n")
    expect(ctype.startswith("text/plain; version=0.0.4"), "Content-Type: " + ctype)
    out, typed = {}, set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        expect(m, "node %d: a sample line that does not parse: %r" % (node.id, line))
        family = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        expect(m.group(1) in typed or family in typed,
               "node %d: %s has no TYPE line before it" % (node.id, m.group(1)))
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out
