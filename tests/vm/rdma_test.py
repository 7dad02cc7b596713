#!/usr/bin/env python3
"""VM tier, issue 5: what the rdma transport does when its device goes
away. Runs in tests/vm/run's pair stage (node 2 on the other VM, reached
through remote.py; TETHER_CLUSTER_RXE / TETHER_CLUSTER_NETDEV name the
Soft-RoCE device and its link there), or in one VM with
TETHER_CLUSTER_NET=flat TETHER_CLUSTER_RDMA=1.

    python3 tests/vm/rdma_test.py --build-dir build/release [-k NAME]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "multinode"))
from cluster import Exporter, Mapper  # noqa: E402
from harness import expect, run  # noqa: E402

MiB = 1 << 20


def allow_tcp_fallback(fn):
    fn.allow_tcp_fallback = True
    return fn


def device(c):
    if c.pair:
        return os.environ.get("TETHER_CLUSTER_RXE", "rxe0"), os.environ.get(
            "TETHER_CLUSTER_NETDEV", "eth0")
    return c.rxe, c.dummy


def log_of(node):
    with open(node.log) as f:
        return f.read()


@allow_tcp_fallback
def test_device_removed_under_a_mapper(c):
    """The mapper node's verbs device disappears while a client holds dirty
    pages: the connection fails over to a clear path (tcp, logged), the
    write-back is not lost, new faults are served, nothing hangs."""
    expect(c.rdma, "run with TETHER_CLUSTER_RDMA=1")
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 65536") == "ok", "fetched over rdma")
    expect("rdma: data connection to node 1" in log_of(c.node(2)), "node 2 did not use rdma")
    expect(m.command("write 9 8192 4096") == "ok", "dirty a page")
    rxe, netdev = device(c)
    r = c.node(2).run(["timeout", "60", "rdma", "link", "delete", rxe], timeout=90)
    expect(r.returncode == 0, "rdma link delete %s: %s" % (rxe, r.stdout + r.stderr))
    try:
        expect(m.command("sync", timeout=60) == "ok", "write-back after the device went away")
        expect(e.verify(9, 8192, 4096) == "ok", "the write-back reached the exporter")
        expect(m.command("verify 1 65536 262144", timeout=60) == "ok",
               "new faults are served after the device went away")
        log = log_of(c.node(2))
        expect("using tcp for" in log, "node 2 should say it fell back to tcp: " + log[-1500:])
    finally:
        r = c.node(2).run(["rdma", "link", "add", rxe, "type", "rxe", "netdev", netdev])
        expect(r.returncode == 0, "re-adding %s: %s" % (rxe, r.stdout + r.stderr))
    m.close()
    e.close()


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
