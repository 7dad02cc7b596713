#!/usr/bin/env python3
"""Host multi-node tests of the core (issue: export/map over TCP): real
tetherd daemons in network namespaces, real gRPC with mutual TLS, the tcp
transport, and real client processes (tests/tools/tt.c on libtether)."""
import json
import random
import re
import signal
import subprocess
import time

from cluster import Exporter, Mapper
from harness import expect, run, with_nodes

EINVAL, ENOENT, EACCES, EHOSTUNREACH, ENOTCONN = 22, 2, 13, 113, 107
SIGBUS, SIGSEGV = 7, 11
MiB = 1 << 20


def map_ok(node, *args):
    r = node.tt("map", *args)
    expect(r.returncode == 0 and "done" in r.stdout,
           "tt map %s on node %d: rc=%d %s" % (" ".join(map(str, args)), node.id,
                                               r.returncode, r.stdout + r.stderr))
    return r.stdout


def map_err(node, errno, *args):
    r = node.tt("map", *args)
    expect(r.returncode == 1 and ("errno=%d " % errno) in r.stdout,
           "tt map %s on node %d: wanted errno %d, got rc=%d %s" %
           (" ".join(map(str, args)), node.id, errno, r.returncode, r.stdout + r.stderr))
    return r.stdout


def test_content_random_sizes(c):
    rng = random.Random(1234)
    for size in (4096, 3 * 4096, 1 * MiB + 5 * 4096, 16 * MiB, 64 * MiB):
        seed = rng.randrange(1, 1 << 30)
        e = Exporter(c.node(1), size, seed)
        out = map_ok(c.node(2), "--segid", e.segid, "--len", size, "--verify", seed)
        expect("verified %d bytes" % size in out, out)
        # a window in the middle, at an offset
        if size > 8 * 4096:
            off = (size // 4096 // 3) * 4096
            map_ok(c.node(3), "--segid", e.segid, "--offset", off, "--len", 8 * 4096,
                   "--verify", seed)
        e.close()


def test_concurrent_mappers_on_several_nodes(c):
    size, seed = 16 * MiB, 99
    e = Exporter(c.node(1), size, seed)
    procs = []
    for node in (c.node(2), c.node(2), c.node(3), c.node(3), c.node(1)):
        procs.append(node.popen(
            [c.tt, "map", "--segid", str(e.segid), "--len", str(size), "--verify", str(seed)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=180)
        expect(p.returncode == 0 and "done" in out, "concurrent mapper: " + out)
    e.close()


def test_writeback_from_two_mappers_disjoint_pages(c):
    size = 1 * MiB
    e = Exporter(c.node(1), size, 1)
    a = c.node(2).popen(
        [c.tt, "map", "--segid", str(e.segid), "--len", str(size), "--write", "2", "0",
         str(64 * 1024), "--sync"], stdout=subprocess.PIPE, text=True)
    b = c.node(3).popen(
        [c.tt, "map", "--segid", str(e.segid), "--len", str(size), "--write", "3",
         str(64 * 1024), str(64 * 1024), "--sync"], stdout=subprocess.PIPE, text=True)
    for p in (a, b):
        out, _ = p.communicate(timeout=60)
        expect(p.returncode == 0, "writer: " + out)
    expect(e.verify(2, 0, 64 * 1024) == "ok", "node 2's write did not reach the exporter")
    expect(e.verify(3, 64 * 1024, 64 * 1024) == "ok", "node 3's write did not reach the exporter")
    expect(e.verify(1, 128 * 1024, size - 128 * 1024) == "ok", "untouched pages changed")
    e.close()


def test_writers_of_one_page_keep_each_others_bytes(c):
    """Two nodes, a mapper on the home node and the exporter itself write
    interleaved bytes of one page; after every sync all bytes survive: a
    write-back carries only the bytes its writer changed since it fetched
    the page (twin and diff, issue 16), not the whole page, which wrote
    the writer's stale copy of everybody else's bytes over them."""
    size, page = 64 * 1024, 4096
    e = Exporter(c.node(1), size, 1)
    a = Mapper(c.node(2), e.segid, length=size)
    b = Mapper(c.node(3), e.segid, length=size)
    h = Mapper(c.node(1), e.segid, length=size)  # the home node's own path
    for m in (a, b, h):  # all fetch the page before anyone writes
        expect(m.command("read %d" % page).startswith("byte "), "fetch")
    for rnd, (sa, sb, sh, se) in enumerate(((2, 3, 4, 5), (6, 7, 8, 9))):
        expect(a.command("wstride %d %d 2048 2" % (sa, page)) == "ok", "A's stores")
        expect(b.command("wstride %d %d 2047 2" % (sb, page + 1)) == "ok", "B's stores")
        expect(h.command("wstride %d %d 1024 1" % (sh, page + 3072)) == "ok", "home's stores")
        expect(e.command("fill %d %d 1024" % (se, page + 2048)) == "ok", "exporter's stores")
        for m in (a, b, h):
            expect(m.command("sync") == "ok", "sync")
        for what, cmd in (("node 2's even bytes", "vstride %d %d 2048 2" % (sa, page)),
                          ("node 3's odd bytes", "vstride %d %d 2047 2" % (sb, page + 1)),
                          ("the exporter's bytes", "verify %d %d 1024" % (se, page + 2048)),
                          ("the home-node mapper's bytes",
                           "verify %d %d 1024" % (sh, page + 3072))):
            r = e.command(cmd)
            expect(r == "ok", "round %d: %s lost at the exporter (%s)" % (rnd, what, r))
    expect(e.verify(1, 0, page) == "ok" and e.verify(1, 2 * page, size - 2 * page) == "ok",
           "other pages changed")
    for m in (a, b, h):
        expect(m.command("detach") == "ok", "detach")
    e.close()
    # One byte in every page of 8 MiB: a dirty run longer than one diff
    # may span (kMaxDiffPages, 4 MiB) goes in pieces, each from its own
    # offset (a single diff of it was refused: EINVAL at the sync).
    size = 8 * MiB
    e = Exporter(c.node(1), size, 11)
    a = Mapper(c.node(2), e.segid, length=size)
    expect(a.command("verify 11 0 %d" % size) == "ok", "fetch")
    expect(a.command("wstride 12 0 %d 4096" % size) == "ok", "stores")
    r = a.command("sync")
    expect(r == "ok", "sync of 2048 pages: %s" % r)
    expect(e.command("vstride 12 0 %d 4096" % size) == "ok", "a page's byte lost")
    expect(e.command("vstride 11 1 %d 4096" % (size - 1)) == "ok", "bytes not stored changed")
    expect(a.command("detach") == "ok", "detach")
    e.close()


def test_detach_writes_back_and_dirty_pages_survive_eviction(c):
    # Without --sync: detach alone must write back.
    e = Exporter(c.node(1), 256 * 1024, 5)
    map_ok(c.node(2), "--segid", e.segid, "--len", 256 * 1024, "--write", 6, 4096, 8192)
    expect(e.verify(6, 4096, 8192) == "ok", "detach did not write back")
    e.close()


def test_same_node_mapper(c):
    e = Exporter(c.node(1), 2 * MiB, 42)
    map_ok(c.node(1), "--segid", e.segid, "--len", 2 * MiB, "--verify", 42, "--write", 43, 0,
           4096, "--sync")
    expect(e.verify(43, 0, 4096) == "ok", "same-node write-back lost")
    e.close()


def test_names_and_tetherctl(c):
    e = Exporter(c.node(1), 1 * MiB, 8, name="matrix-a")
    out = map_ok(c.node(3), "--name", "matrix-a", "--verify", 8)
    expect("verified %d bytes" % MiB in out, out)
    r = c.node(2).ctl("lookup", "matrix-a")
    expect(r.returncode == 0 and str(e.segid) in r.stdout, "lookup: " + r.stdout + r.stderr)
    r = c.node(2).ctl("--json", "segments", "--cluster")
    # protobuf's JSON mapping: 64-bit integers are strings
    expect(r.returncode == 0 and str(e.segid) in
           [s["segid"] for s in json.loads(r.stdout)["segments"]], "segments: " + r.stdout)
    r = c.node(2).ctl("status")
    # the rdma tier (TETHER_CLUSTER_RDMA=1) must show rdma, the host tier tcp
    want = "rdma" if c.rdma else "tcp"
    up = re.findall(r"^\d+\s+\S+\s+%s\s+up\b" % want, r.stdout, re.M)
    expect(r.returncode == 0 and len(up) == 2, "status: " + r.stdout)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 8 0 8192") == "ok", "interactive verify")
    r = c.node(2).ctl("--json", "attachments")
    atts = json.loads(r.stdout)["attachments"] if r.returncode == 0 else []
    expect([a for a in atts if a["segid"] == str(e.segid) and "resident_bytes" in a],
           "attachments: " + r.stdout)
    m.close()
    r = c.node(2).ctl("lookup", "no-such-name")
    expect(r.returncode != 0 and "no segment named" in r.stderr, "lookup miss: " + r.stderr)
    e.close()


def test_permissions(c):
    e = Exporter(c.node(1), 64 * 1024, 3, mode=0o600)
    map_err(c.node(2), EACCES, "--segid", e.segid, "--len", 65536, "--uid", 65534)
    e.close()
    e = Exporter(c.node(1), 64 * 1024, 3, mode=0o644)
    # others may read but not write
    map_err(c.node(3), EACCES, "--segid", e.segid, "--len", 65536, "--uid", 65534)
    # a read-only attachment cannot write: the store faults (SIGSEGV)
    r = c.node(2).tt("map", "--segid", e.segid, "--len", 65536, "--rdonly", "--write", 4, 0, 8)
    expect(r.returncode == -SIGSEGV, "write through a read-only attachment: rc=%d" % r.returncode)
    expect(e.verify(3, 0, 65536) == "ok", "read-only mapper changed the exporter")
    e.close()


def test_bad_input(c):
    e = Exporter(c.node(1), 64 * 1024, 3)
    n2 = c.node(2)
    map_err(n2, EINVAL, "--segid", 12345)                       # not a segid
    map_err(n2, ENOENT, "--segid", (9 << 48) | (1 << 32) | 1)   # node not in cluster
    stale = (e.segid & ~(0xffff << 32)) | ((((e.segid >> 32) & 0xffff) ^ 0x5a5a) << 32)
    map_err(n2, ENOENT, "--segid", stale)                       # another incarnation
    map_err(n2, EINVAL, "--segid", e.segid, "--offset", 64 * 1024, "--len", 4096)  # past end
    map_err(n2, EINVAL, "--segid", e.segid, "--offset", 100, "--len", 4096)        # unaligned
    map_err(n2, EINVAL, "--segid", e.segid, "--len", 0)                            # zero length
    map_err(n2, EINVAL, "--segid", e.segid, "--len", 1 << 63)                      # overflow
    # the daemons are unaffected
    map_ok(n2, "--segid", e.segid, "--len", 64 * 1024, "--verify", 3)
    e.close()


def test_peer_down_then_restarted(c):
    e = Exporter(c.node(3), 64 * 1024, 11)
    old = e.segid
    # node 2 learns node 3's data endpoints now (status says Hello): after
    # the restart they are stale, and a new segid's incarnation must renew them
    expect(c.node(2).ctl("status").returncode == 0, "status")
    c.node(3).stop()
    map_err(c.node(2), EHOSTUNREACH, "--segid", old, "--len", 4096)
    c.node(3).start()
    # gRPC reconnects within its (1 s) backoff: wait for the peer to be back
    deadline = time.time() + 10
    while time.time() < deadline:
        r = c.node(2).tt("map", "--segid", old, "--len", 4096)
        if "errno=%d " % EHOSTUNREACH not in r.stdout:
            break
        time.sleep(0.2)
    # the exporter's library registered its segment again under the same
    # segid (the node's segment epoch is kept in its --state_dir):
    # it maps again, with its contents (test_restart.py has the rest)
    deadline = time.time() + 10
    while True:
        r = c.node(2).tt("map", "--segid", old, "--len", 4096, "--verify", 11)
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(0.2)
    expect(r.returncode == 0, "the kept segment does not map after the restart: " + r.stdout)
    e.close()
    e = Exporter(c.node(3), 64 * 1024, 12)
    map_ok(c.node(2), "--segid", e.segid, "--len", 64 * 1024, "--verify", 12)
    e.close()


def test_exporter_gone(c):
    e = Exporter(c.node(1), 64 * 1024, 3)
    m = Mapper(c.node(2), e.segid, length=64 * 1024)
    expect(m.command("read 0").startswith("byte"), "first read")
    e.kill()
    time.sleep(0.5)
    out = map_err(c.node(2), ENOENT, "--segid", e.segid, "--len", 4096)
    expect("exporter exited" in out, "error should say why: " + out)
    # a page the mapper did not hold cannot be fetched any more: SIGBUS
    expect(m.command("read 32768") == "signal:%d" % SIGBUS, "unheld page after exporter exit")
    m.close()


def test_home_gone_sigbus_on_unheld_pages(c):
    e = Exporter(c.node(1), 1 * MiB, 21)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 21 0 4096") == "ok", "held page")
    c.node(1).stop(signal.SIGKILL)
    expect(m.command("verify 21 0 4096") == "ok", "a held page stays readable")
    expect(m.command("read 524288") == "signal:%d" % SIGBUS, "unheld page with home gone")
    m.close()
    e.kill()


# Over rdma the reconnect finds no listener, a set-up failure (docs/rdma.md,
# Fallback): the request goes over tcp, which the dead home refuses too.
test_home_gone_sigbus_on_unheld_pages.allow_tcp_fallback = True


def test_sequential_read_up_to_a_hole(c):
    """A hole in the exporter's range (unmapped before anyone mapped it):
    read-ahead requests that span it must not cost the valid pages before
    it — only the hole raises SIGBUS, and pages after it read fine."""
    e = Exporter(c.node(1), MiB, 41)
    hole = 200 * 4096  # inside a read-ahead request, not at its start
    ms = e.command("munmap %d %d" % (hole, 8192))
    expect(ms.startswith("ok"), "exporter munmap: " + ms)
    m = Mapper(c.node(2), e.segid, length=MiB)
    r = m.command("verify 41 0 %d" % hole)
    expect(r == "ok", "pages before the hole, read in order: " + r)
    r = m.command("verify 41 %d %d" % (hole + 8192, MiB - hole - 8192))
    expect(r == "ok", "pages after the hole: " + r)
    r = m.command("read %d" % (hole + 4096))
    expect(r == "signal:%d" % SIGBUS, "the hole raises SIGBUS: " + r)
    e.close()


def test_daemon_restarted_under_client(c):
    e = Exporter(c.node(1), 1 * MiB, 31)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 31 0 4096") == "ok", "before restart")
    c.node(2).stop()
    c.node(2).start()
    r = m.command("read 600000")
    expect(r == "signal:%d" % SIGBUS, "access after the mapper's daemon restarted: " + r)
    map_ok(c.node(2), "--segid", e.segid, "--len", MiB, "--verify", 31)
    e.close()


@with_nodes(2, budgets={2: 8})
def test_cache_budget_bounds_node_memory(c):
    size = 32 * MiB  # 4x the budget
    e = Exporter(c.node(1), size, 77)
    out = map_ok(c.node(2), "--segid", e.segid, "--len", size, "--verify", 77, "--check-blocks")
    peak = int(out.split("max_blocks=")[1].split()[0])
    # The budget plus in-flight read-ahead (64 pages) and one eviction batch.
    expect(0 < peak <= 8 * MiB + 2 * MiB,
           "backing memfd held %.1f MiB with an 8 MiB budget" % (peak / MiB))
    # dirty pages are written back before eviction, never dropped
    m = Mapper(c.node(2), e.segid, length=size)
    for off in range(0, size, MiB):
        expect(m.command("write 78 %d 4096" % off) == "ok", "write")
    expect(m.command("verify 77 0 %d" % (size // 2)).startswith("mismatch"), "sanity")
    expect(m.command("detach") == "ok", "detach")
    for off in range(0, size, MiB):
        expect(e.verify(78, off, 4096) == "ok", "dirty page at %d lost under eviction" % off)
    e.close()


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
