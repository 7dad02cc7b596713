#!/usr/bin/env python3
"""VM tier, issues 5 and 15: what the rdma transport does when its device
goes away, and how connections are negotiated and refused. Runs in
tests/vm/run's pair stage (node 2 on the other VM, reached through
remote.py; TETHER_CLUSTER_RXE / TETHER_CLUSTER_NETDEV name the Soft-RoCE
device and its link there), or in one VM with TETHER_CLUSTER_NET=flat
TETHER_CLUSTER_RDMA=1 (the single-VM rdma suite runs the tests named
*connection*, which leave the device in place).

    python3 tests/vm/rdma_test.py --build-dir build/release [-k NAME]
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "multinode"))
from cluster import Exporter, Mapper  # noqa: E402
from harness import expect, run, with_nodes  # noqa: E402

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


SMALL_HOME = ["--rdma_queue_depth=4", "--rdma_slot_kb=16"]


@with_nodes(3, daemon_args={1: SMALL_HOME, 2: [], 3: ["--rdma_queue_depth=64",
                                                     "--rdma_slot_kb=1024"]})
def test_connection_negotiates_depth_and_slot_size(c):
    """Issue 15: queue depth and slot size differ between the nodes (node 1:
    4 slots of 16 KiB; node 2: the defaults, 32 of 256 KiB; node 3: 64 of
    1 MiB). Each connection uses the smaller of each, so 256 KiB read-ahead
    batches and 1 MiB write-backs are split into the home's slots and
    throttled to its window: correct pages both ways, over rdma, no
    fallback (the harness fails a test that fell back to tcp). Before the
    negotiation, the home dropped the connection as soon as a request
    exceeded its slots ('request length ... outside'): SIGBUS, failed
    write-backs."""
    expect(c.rdma, "run with TETHER_CLUSTER_RDMA=1")
    e = Exporter(c.node(1), 4 * MiB, 3)
    ms = {n: Mapper(c.node(n), e.segid, length=4 * MiB) for n in (2, 3)}
    for n, m in ms.items():
        r = m.command("verify 3 0 %d" % (4 * MiB), timeout=60)
        expect(r == "ok", "node %d read the whole segment: %s" % (n, r))
    for n, m in ms.items():  # disjoint halves: node 2 the first, node 3 the second
        off = 4096 + (n - 2) * 2 * MiB
        r = m.command("write %d %d %d" % (10 + n, off, MiB))
        expect(r == "ok", "node %d dirtied 1 MiB: %s" % (n, r))
        r = m.command("sync", timeout=60)
        expect(r == "ok", "node %d wrote back: %s" % (n, r))
        expect(e.verify(10 + n, off, MiB) == "ok", "node %d's write-back arrived" % n)
    for m in ms.values():
        m.close()
    log1, log2, log3 = log_of(c.node(1)), log_of(c.node(2)), log_of(c.node(3))
    expect("node 2 asked for queue depth 32 and 256 KiB slots; using 4 and 16 KiB" in log1,
           "the home logs what it granted node 2: " + log1[-1500:])
    expect("node 3 asked for queue depth 64 and 1024 KiB slots; using 4 and 16 KiB" in log1,
           "the home logs what it granted node 3: " + log1[-1500:])
    expect("node 1 allows queue depth 4 and 16 KiB slots (we asked for 32 and 256 KiB)" in log2,
           "node 2 logs what it got: " + log2[-1500:])
    for n, log in ((2, log2), (3, log3)):
        expect("rdma: data connection to node 1" in log, "node %d did not use rdma" % n)
    e.close()


@allow_tcp_fallback
@with_nodes(3, daemon_args={1: ["--rdma_max_connections=1"]})
def test_connection_refused_at_the_limit_goes_over_tcp(c):
    """Issue 15: a home at its connection limit refuses a connect with a
    reason in the reject's private data (kTooManyConnections). The mapper
    takes that as a set-up failure: its requests go over tcp (logged), the
    client reads correct data and gets no SIGBUS. Before, a consumer reject
    was read as 'wrong token' and the fetch failed."""
    expect(c.rdma, "run with TETHER_CLUSTER_RDMA=1")
    e = Exporter(c.node(1), MiB, 5)
    m2 = Mapper(c.node(2), e.segid, length=MiB)
    expect(m2.command("verify 5 0 65536") == "ok", "node 2 fetched")
    expect("rdma: data connection to node 1" in log_of(c.node(2)), "node 2 is on rdma")
    m3 = Mapper(c.node(3), e.segid, length=MiB)
    expect(m3.command("verify 5 0 %d" % MiB, timeout=60) == "ok",
           "node 3 is served (over tcp) although the home refused its rdma connection")
    expect(m3.command("write 6 0 8192") == "ok" and m3.command("sync", timeout=60) == "ok",
           "node 3 writes back over tcp")
    expect(e.verify(6, 0, 8192) == "ok", "node 3's write-back arrived")
    log1, log3 = log_of(c.node(1)), log_of(c.node(3))
    expect("rdma: refused a connection from node 3: at its connection limit" in log1,
           "the home logs the refusal: " + log1[-1500:])
    expect("the home refused: at its connection limit" in log3 and "using tcp for" in log3,
           "node 3 says why it fell back: " + log3[-1500:])
    r = c.node(3).ctl("status", "--json")
    peers = {p.get("node_id"): p for p in json.loads(r.stdout).get("peers", [])}
    expect(peers.get(1, {}).get("transport") == "tcp",
           "tetherctl status shows node 1 on tcp from node 3: " + r.stdout)
    m3.close()
    m2.close()
    e.close()


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
