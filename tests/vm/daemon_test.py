#!/usr/bin/env python3
"""VM tier: daemon checks that only the kernel notifier source (tether.ko)
can pass. Runs inside a tests/vm VM with tether.ko loaded, on the host
tier's cluster (tests/multinode/cluster.py: tetherd per network namespace,
mutual TLS), next to a rerun of tests/multinode/test_invalidation.py.

"Dropped its copy" is read directly from the mapper's backing memfd
(/proc/<mapper>/map_files, SEEK_DATA), right after the exporter's call
returned: with tether.ko the call returns only after the ack, so the page
must already be gone. Needs root (map_files), which the VM has.

    python3 tests/vm/daemon_test.py --build-dir build/release [-k NAME]
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "multinode"))
from cluster import Exporter, InteractiveClient, Mapper  # noqa: E402
from harness import expect, run, scrape, with_nodes  # noqa: E402

MiB = 1 << 20
PAGE = 4096
SIGBUS = 7
DEADLINE_MS = 500
# A frozen mapper's lease: the home waits it out (+10%) after the deadline.
# Not shorter: renewals must be answered within it on emulated machines.
LEASE_MS = 2000
FAST = ("--invalidate_deadline_ms=%d" % DEADLINE_MS, "--lease_ms=%d" % LEASE_MS)
BEFORE_READ = "kernel_notifier.event_thread.before_read"


def ms(reply):
    expect(reply.startswith("ok "), "exporter call failed: " + reply)
    return float(reply.split()[1])


# /proc/vmstat counters of kernel work that moves or frees an exporter's
# pages on its own (reclaim, swap-out, compaction/migration, THP splits):
# each is a real change the module forwards, so a page outside the
# exporter's call may legitimately be dropped while one of them moves.
KERNEL_MOVES = ("pgsteal_kswapd", "pgsteal_direct", "pswpout", "pgmigrate_success",
                "compact_isolated", "thp_split_pmd", "numa_pte_updates", "pgdemote_kswapd")


def kernel_moves():
    with open("/proc/vmstat") as f:
        v = dict(line.split() for line in f)
    return {k: int(v.get(k, 0)) for k in KERNEL_MOVES}


def moved_since(before):
    now = kernel_moves()
    return {k: now[k] - before[k] for k in KERNEL_MOVES if now[k] != before[k]}


def what_moved(c, before):
    """For a failure message: the kernel's page moves since `before` and
    the invalidation counters of nodes 1 and 2 (their /metrics)."""
    pattern = r"invalidation|evicted|lease|revoked|notices|fenced|window|suspend"
    counters = [" ".join("%s %g" % (k, v) for k, v in sorted(scrape(c.node(n)).items())
                         if re.search(pattern, k) and v) for n in (1, 2)]
    return "kernel page moves meanwhile: %s; node 1: %s; node 2: %s" % (
        moved_since(before), counters[0], counters[1])


def read_until_sigbus(m, timeout=10):
    """Reads offset 0 through mapper `m` until its client gets SIGBUS or
    `timeout` s pass (a REVOKE is handled asynchronously); returns the
    last reply."""
    deadline = time.time() + timeout
    r = m.command("read 0")
    while r != "signal:%d" % SIGBUS and time.time() < deadline:
        time.sleep(0.1)
        r = m.command("read 0")
    return r


def cached(m, off, length):
    """True if page `off` of mapper m's attachment (length bytes) holds data
    in its backing memfd (the page is cached on the mapper's node)."""
    pid = m.proc.pid  # `ip netns exec` execs the command: same pid
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            a, b = (int(x, 16) for x in parts[0].split("-"))
            if "tether-cache" in line and b - a == length:
                pgoff = int(parts[2], 16)
                fd = os.open("/proc/%d/map_files/%s" % (pid, parts[0]), os.O_RDONLY)
                try:
                    return os.lseek(fd, pgoff + off, os.SEEK_DATA) == pgoff + off
                except OSError:  # ENXIO: no data at or after off
                    return False
                finally:
                    os.close(fd)
    raise AssertionError("no tether-cache mapping of %d bytes in mapper %d" % (length, pid))


def test_kernel_source_in_use(c):
    e = Exporter(c.node(1), MiB, 1)
    for n in c.nodes:
        with open(n.log) as f:
            log = f.read()
        expect("notifier source: tether.ko" in log,
               "node %d does not use tether.ko: %s" % (n.id, log[-500:]))
    e.close()


def test_munmap_returns_after_mapper_dropped_copy(c):
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 65536") == "ok", "cached before")
    expect(cached(m, 0, MiB) and cached(m, PAGE, MiB), "pages 0 and 1 are cached")
    before = kernel_moves()
    ms(e.command("munmap 0 4096"))
    # No sleep: the munmap has returned, so the copy must be gone already.
    expect(not cached(m, 0, MiB), "munmap returned while the mapper still held page 0")
    if not cached(m, PAGE, MiB):  # the counters are read only on failure
        expect(False, "page 1 was not part of the munmap and stays cached (%s)"
               % what_moved(c, before))
    expect(m.command("read 0") == "signal:%d" % SIGBUS, "an unmapped page raises SIGBUS")
    e.close()


def test_dontneed_returns_after_mapper_dropped_copy(c):
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    m3 = Mapper(c.node(3), e.segid, length=MiB)
    for x in (m, m3):
        expect(x.command("verify 1 0 65536") == "ok", "cached before")
    ms(e.command("dontneed 8192 8192"))
    for x in (m, m3):
        expect(not cached(x, 8192, MiB) and not cached(x, 12288, MiB),
               "madvise(DONTNEED) returned while a mapper still held the pages")
        expect(cached(x, 0, MiB), "page 0 was not part of the DONTNEED and stays cached")
        expect(x.command("read 8192") == "byte 0", "zeros after DONTNEED")
        expect(x.command("verify 1 0 8192") == "ok", "untouched pages keep their contents")
    m.close()
    m3.close()
    e.close()


def kernel_internal_event(c, command, check):
    """Issue 4: an event the kernel makes on its own (page migration,
    reclaim to swap) over a range a mapper caches and has dirtied: it must
    reach the mapper (its copy dropped before the call returns), the
    mapper's dirty page must survive (kept aside, written back after the
    window), and refetched pages must have the right contents."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 %d" % MiB) == "ok", "cached before")
    expect(m.command("write 9 32768 4096") == "ok", "the mapper dirties a page")
    reply = e.command(command)
    expect(reply.startswith("ok "), "%s: %s" % (command, reply))
    check(reply)
    expect(not cached(m, 65536, MiB), "%s returned while the mapper still held a page" % command)
    expect(m.command("verify 1 0 32768") == "ok", "refetched pages keep their contents")
    expect(m.command("verify 9 32768 4096") == "ok", "the mapper's dirty page is still there")
    expect(m.command("sync") == "ok", "sync after the window")
    expect(e.verify(9, 32768, 4096) == "ok", "the dirty page reached the exporter")
    expect(e.verify(1, 36864, MiB - 36864) == "ok", "the rest is unchanged")
    m.close()
    e.close()


def test_move_pages_is_seen(c):
    """move_pages(2) to the VM's second NUMA node (tests/vm/run gives it two)."""
    if not os.path.exists("/sys/devices/system/node/node1"):
        raise AssertionError("the VM has one NUMA node: tests/vm/run must boot it with two")

    def check(reply):
        moved = int(reply.split("moved=")[1])
        expect(moved == MiB // PAGE, "only %d of %d pages moved to node 1" % (moved, MiB // PAGE))
    kernel_internal_event(c, "move 1 0 %d" % MiB, check)


def test_pageout_to_swap_is_seen(c):
    """madvise(MADV_PAGEOUT) with swap on zram (guest-tests.sh sets it up):
    reclaim unmaps the exporter's pages (CLEAR)."""
    with open("/proc/swaps") as f:
        expect(len(f.read().splitlines()) > 1, "no swap device: guest-tests.sh must add zram swap")

    def check(reply):
        kb = int(reply.split("swap_kb=")[1])
        expect(kb >= 512, "only %d KiB of the exporter went to swap" % kb)
    kernel_internal_event(c, "pageout 0 %d" % MiB, check)


def test_exported_mapping_is_not_merged_with_the_library_stack(c):
    """libtether's export keeper (a thread started by the first export)
    must not run on a stack that merges into the exported memory's VMA:
    a default thread stack is mapped right below the last mapping — the
    exported memory — with its guard page at the bottom only, and on 6.1
    (where MAP_STACK leaves the VMA flags as they are) its top merged into
    the exporter's VMA; mappers then dropped pages no call of the exporter
    had changed (test_mprotect_is_seen, test_munmap_returns_... failed
    about every other run). The exported range must start its own VMA."""
    e = Exporter(c.node(1), MiB, 1)
    with open(c.node(1).log) as f:
        m = re.search(r"exported \[(0x[0-9a-f]+), \+(\d+)\) of pid (\d+)", f.read())
    expect(m, "the home logged no export")
    addr, pid = int(m.group(1), 16), int(m.group(3))
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read().splitlines()
    spans = [[int(a, 16) for a in x.split()[0].split("-")] + [x] for x in maps]
    vma = [x for lo, hi, x in spans if lo <= addr < hi]
    expect(len(vma) == 1, "no mapping holds the exported address %#x" % addr)
    expect(int(vma[0].split("-")[0], 16) == addr, "the exported range at %#x is part of a "
           "larger VMA: %s\n%s" % (addr, vma[0], "\n".join(maps)))
    e.close()


def test_mprotect_is_seen(c):
    """The user-space source cannot see mprotect at all; the module can."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 65536") == "ok", "cached before")
    expect(cached(m, 0, MiB), "page 0 is cached after the read")
    before = kernel_moves()
    ms(e.command("mprotect 16384 8192 r"))
    expect(not cached(m, 16384, MiB), "mprotect returned while the mapper still held the page")
    if not cached(m, 0, MiB):  # the counters are read only on failure
        expect(False, "page 0 was not part of the mprotect and stays cached (%s)"
               % what_moved(c, before))
    expect(m.command("verify 1 16384 8192") == "ok", "read-only pages refetched unchanged")
    ms(e.command("mprotect 16384 8192 rw"))
    m.close()
    e.close()


@with_nodes(2, daemon_args=FAST)
def test_mprotect_waits_for_a_frozen_mapper(c):
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 65536") == "ok", "cached before")
    os.kill(c.node(2).daemon.pid, signal.SIGSTOP)
    try:
        took = ms(e.command("mprotect 0 4096 r"))
    finally:
        os.kill(c.node(2).daemon.pid, signal.SIGCONT)
    expect(took >= DEADLINE_MS * 0.9,
           "mprotect took %.0f ms: it did not wait for the frozen mapper (deadline %d ms)"
           % (took, DEADLINE_MS))
    expect(took < DEADLINE_MS + LEASE_MS * 1.1 + 3000, "mprotect took %.0f ms" % took)
    m.close()
    e.close()


@with_nodes(3, daemon_args=("--invalidate_deadline_ms=2000", "--lease_ms=%d" % LEASE_MS))
def test_exporters_do_not_wait_for_each_others_windows(c):
    """Windows on disjoint ranges do not serialize: while one exporter's
    munmap waits for a frozen mapper (node 2), another exporter's munmap,
    cached by node 3 only, returns as soon as node 3 has acked."""
    a = Exporter(c.node(1), MiB, 1)
    b = Exporter(c.node(1), MiB, 2)
    ma = Mapper(c.node(2), a.segid, length=MiB)
    mb = Mapper(c.node(3), b.segid, length=MiB)
    expect(ma.command("verify 1 0 65536") == "ok", "node 2 caches a")
    expect(mb.command("verify 2 0 65536") == "ok", "node 3 caches b")
    took = {}
    os.kill(c.node(2).daemon.pid, signal.SIGSTOP)
    try:
        t = threading.Thread(target=lambda: took.update(a=ms(a.command("munmap 0 4096"))))
        t.start()
        time.sleep(0.5)  # a's window is open, waiting for node 2
        took["b"] = ms(b.command("munmap 0 4096"))
        t.join(30)
    finally:
        os.kill(c.node(2).daemon.pid, signal.SIGCONT)
    expect(took.get("a", 0) >= 2000 * 0.9, "a's munmap did not wait for the frozen node: %s" % took)
    expect(took["b"] < 1000, "b's munmap waited for a's window: %.0f ms" % took["b"])
    expect(mb.command("read 0") == "signal:%d" % SIGBUS, "node 3 dropped b's unmapped page")
    ma.close()
    mb.close()
    a.close()
    b.close()


# Leases off: once the first window fenced the frozen node and waited out
# its lease, the later windows need not wait for it (its lease lapsed), so
# with leases three windows in turn cost hardly more than one (measured:
# 3.1 s against 2.1 s). Without, each window waits its whole deadline.
@with_nodes(2, daemon_args=("--invalidate_deadline_ms=1000", "--lease_ms=0"))
def test_segments_of_one_exporter_cost_one_deadline(c):
    """Issue 14: libtether opens one tether.ko exporter fd per export, so
    one munmap over three segments of one exporter covers ranges of three
    fds. With one mmu notifier per fd the kernel ran their callbacks one
    after another, each waiting for its BEGIN's ack: with a frozen mapper
    holding pages of each segment (fenced per segment), three deadlines.
    The module now keeps one notifier per mm and queues every BEGIN before
    it waits: one deadline."""
    seg, deadline_ms = 256 << 10, 1000
    e = Exporter(c.node(1), MiB, 1)
    maps = []
    try:
        segids = [e.segid]
        for off in (seg, 2 * seg):
            r = e.command("make %d %d" % (off, seg))
            expect(r.startswith("ok segid="), "another segment of the exporter: " + r)
            segids.append(int(r.split("segid=")[1]))
        # Segment 1 is the whole MiB; node 2 caches the first page of each
        # segment (offsets 0, 256 KiB, 512 KiB of the exporter's mapping).
        maps = [Mapper(c.node(2), s, length=seg) for s in segids]
        for m in maps:
            r = m.command("read 0")
            expect(r.startswith("byte"), "node 2 caches each segment: " + r)
        os.kill(c.node(2).daemon.pid, signal.SIGSTOP)
        try:
            took = ms(e.command("munmap 0 %d" % (3 * seg)))
        finally:
            os.kill(c.node(2).daemon.pid, signal.SIGCONT)
        print("INFO one_deadline: munmap over 3 segments with a frozen mapper took %.0f ms "
              "(deadline %d ms)" % (took, deadline_ms))
        expect(took >= deadline_ms * 0.9,
               "munmap took %.0f ms: it did not wait for the frozen mapper" % took)
        expect(took < 2 * deadline_ms,
               "munmap over 3 segments took %.0f ms, more than one deadline (%d ms): the "
               "segments' BEGINs waited one after another" % (took, deadline_ms))
        # Node 2 was fenced for each segment; it handles the REVOKEs once it
        # runs again (asynchronously: poll, bounded).
        for m in maps:
            r = read_until_sigbus(m)
            expect(r == "signal:%d" % SIGBUS,
                   "the fenced mapper's client reads an unmapped page: %r" % r)
    finally:
        for m in maps:
            m.close()
        e.close()


ACK_TIMEOUT = "/sys/module/tether/parameters/ack_timeout_ms"


def _set_ack_timeout(ms_):
    with open(ACK_TIMEOUT, "w") as f:
        f.write("%d\n" % ms_)


@with_nodes(3, daemon_args=FAST)
def test_queued_begins_outlasting_the_module_timeout(c):
    """Issue 14, defect 2. 16 exporters munmap at once a segment each that
    a frozen node caches: 16 BEGINs queue on the home's 4 workers, each
    window waits the 500 ms deadline for the frozen node, so the last ones
    would start after the module (ack_timeout_ms=1000 here) stopped waiting
    and queued the ENDs. Those ENDs used to find no window (their BEGINs
    still queued or in Begin()) and were dropped; the windows opened later
    never closed, so every later fetch of those segments was refused
    ("retry") for good. Now each BEGIN gets what is left of its deadline
    from when it was read (none left: revoke, no window), and an END that
    comes while its BEGIN is queued or in Begin() is handed to that worker.
    Checked: after the munmaps and new memory mapped in their place, node 3
    reads every segment."""
    k, seg = 16, 4 * PAGE
    _set_ack_timeout(1000)
    exporters, clients = [], []
    try:
        exporters = [Exporter(c.node(1), seg, i + 1) for i in range(k)]
        api = InteractiveClient(c.node(2), [c.tt, "api"], "tt api")
        clients.append(api)
        for e in exporters:
            apid = api.command("get %d ro" % e.segid).split("apid=")[1]
            addr = api.command("attach %s 0 %d" % (apid, seg)).split("addr=")[1]
            r = api.command("read %s" % addr)
            expect(r.startswith("ok byte="), "node 2 caches segment %d: %s" % (e.segid, r))
        os.kill(c.node(2).daemon.pid, signal.SIGSTOP)
        try:
            for e in exporters:  # all at once: the BEGINs queue on the workers
                e.proc.stdin.write("munmap 0 %d\n" % seg)
                e.proc.stdin.flush()
            took = [ms(e.proc.stdout.readline().strip()) for e in exporters]
        finally:
            os.kill(c.node(2).daemon.pid, signal.SIGCONT)
        print("INFO queued_begins: %d concurrent munmaps with a frozen mapper took %.0f..%.0f ms "
              "(deadline %d ms, ack_timeout_ms 1000)" % (k, min(took), max(took), DEADLINE_MS))
        for e in exporters:
            ms(e.command("remap 7 0 %d" % seg))
        reader = InteractiveClient(c.node(3), [c.tt, "api"], "tt api")
        clients.append(reader)
        for e in exporters:
            apid = reader.command("get %d ro" % e.segid).split("apid=")[1]
            addr = reader.command("attach %s 0 %d" % (apid, seg)).split("addr=")[1]
            r = reader.command("read %s" % addr, timeout=10)
            expect(r.startswith("ok byte="),
                   "node 3's read of segment %d after the munmap: %r (a window of the munmap "
                   "never closed)" % (e.segid, r))
    finally:
        for x in clients:
            x.close()
        for e in exporters:
            e.close()
        _set_ack_timeout(5000)


# Leases off: a mapper that cannot renew with the stopped home revokes its
# attachments itself, which would hide whether the home revoked them.
@with_nodes(3, daemon_args=("--lease_ms=0",))
def test_stop_revokes_queued_begins(c):
    """Issue 14, defect 14: KernelNotifierSource::Stop used to ack the BEGINs
    still queued for its workers without invalidating anything, so the
    exporter went on while a mapper kept serving the old page. One munmap
    over five segments of one exporter (one notifier per mm: five BEGINs at
    once, in address order): node 2, frozen, holds the first four, whose
    windows keep the home's four begin workers waiting for the (8 s)
    deadline; node 3 holds the fifth, whose BEGIN stays queued. The home is
    stopped (SIGTERM) once it has read all five: Stop must revoke node 3,
    whose client then gets SIGBUS, never the old contents."""
    seg, k = 64 << 10, 5
    home = c.node(1)
    # The home again, with a deadline the workers cannot outlive before
    # Stop() (ack_timeout_ms must exceed it: tetherd checks at start).
    home.stop()
    _set_ack_timeout(30000)
    extra = c.extra_args
    c.extra_args = tuple(extra) + ("--invalidate_deadline_ms=8000", "--verbose")
    try:
        home.start()
    finally:
        c.extra_args = extra
    e = Exporter(home, k * seg, 1)
    maps, done = [], {}
    try:
        segids = []
        for i in range(k):
            r = e.command("make %d %d" % (i * seg, seg))
            expect(r.startswith("ok segid="), "segment %d of the exporter: %s" % (i, r))
            segids.append(int(r.split("segid=")[1]))
        maps = [Mapper(c.node(2 if i < k - 1 else 3), s, length=seg)
                for i, s in enumerate(segids)]
        for m in maps:
            r = m.command("read 0")
            expect(r.startswith("byte"), "page 0 of each segment is cached: " + r)
        old = maps[-1].command("read 0")
        with open(home.log) as f:
            mark = len(f.read())
        os.kill(c.node(2).daemon.pid, signal.SIGSTOP)
        try:
            t = threading.Thread(target=lambda: done.update(r=e.command("munmap 0 %d" % (k * seg))))
            t.start()
            # Wait (bounded) until the home has read all five BEGINs: four
            # are with the workers (each waiting 8 s for node 2), the last
            # is queued.
            deadline = time.time() + 20
            while time.time() < deadline:
                with open(home.log) as f:
                    begins = re.findall(r"tether\.ko event \d+: kind 1 ", f.read()[mark:])
                if len(begins) >= k:
                    break
                time.sleep(0.05)
            expect(len(begins) >= k, "the home read %d of %d BEGINs" % (len(begins), k))
            home.daemon.send_signal(signal.SIGTERM)
            home.daemon.wait(60)
            t.join(60)
        finally:
            os.kill(c.node(2).daemon.pid, signal.SIGCONT)
        expect(not t.is_alive() and done.get("r", "").startswith("ok "),
               "the exporter's munmap returned: %r" % done.get("r"))
        # The call returned; the revocation it waited for is on its way to
        # node 3 (REVOKE does not wait): bounded poll, and the old page must
        # never come back once it is gone.
        deadline = time.time() + 10
        r = maps[-1].command("read 0")
        while r == old and time.time() < deadline:
            time.sleep(0.1)
            r = maps[-1].command("read 0")
        expect(r == "signal:%d" % SIGBUS,
               "node 3's client still reads the page the exporter unmapped after the home "
               "stopped: %r (before: %r)" % (r, old))
        # And the case was the one meant: the fifth BEGIN was still queued
        # (not with a worker, which would have opened a window) at Stop.
        with open(home.log) as f:
            log = f.read()[mark:]
        expect("not handled before stopping" in log,
               "the fifth BEGIN was not left queued when the home stopped: " +
               log[-8000:])
    finally:
        _set_ack_timeout(5000)
        for m in maps:
            m.close()
        try:
            e.close()
        except Exception:  # its daemon is gone
            e.kill()


@with_nodes(2)
def test_watchdog_sees_a_held_event_thread(c):
    """systemd's watchdog (Type=notify, WatchdogSec) is fed only while the
    daemon works; the probe used to ask the admin server and the registry
    lock alone, so a home whose tether.ko event thread was wedged kept
    saying WATCHDOG=1 while every exporter's change waited out the module's
    ack timeout. The home runs with a stand-in NOTIFY_SOCKET (WATCHDOG_USEC
    2 s: a probe every second) and its event thread is held before it reads
    an exporter's BEGIN (kernel_notifier.event_thread.before_read): the
    probe must fail naming the notifier ("STATUS=watchdog probe failing:
    ... tether.ko events"), and WATCHDOG=1 must come again once it is let
    go."""
    from writeback_test import Faults  # noqa: E402 (its fault socket client)
    faults = "/tmp/tether-watchdog-faults.sock"
    notify = "/tmp/tether-watchdog-notify.sock"
    if os.path.exists(notify):
        os.unlink(notify)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify)
    home = c.node(1)
    home.stop()
    saved_env = dict(os.environ)
    extra = c.extra_args
    os.environ.update(NOTIFY_SOCKET=notify, WATCHDOG_USEC="2000000", TETHER_TEST_HOOKS="1")
    c.extra_args = tuple(extra) + ("--test_fault_socket=" + faults,)
    try:
        home.start()
    finally:
        c.extra_args = extra
        os.environ.clear()
        os.environ.update(saved_env)

    def next_message(want, timeout):
        """The first datagram containing `want` within timeout s, or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            sock.settimeout(max(0.01, deadline - time.time()))
            try:
                m = sock.recv(4096).decode()
            except socket.timeout:
                return None
            if want in m:
                return m
        return None

    e = Exporter(home, MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    f = Faults(faults)
    try:
        expect(next_message("WATCHDOG=1", 10) is not None, "no WATCHDOG=1 from a healthy home")
        expect(m.command("verify 1 0 4096") == "ok", "the mapper reads page 0")
        f.arm(BEFORE_READ)
        t = threading.Thread(target=lambda: e.command("munmap 0 4096"))
        t.start()
        expect(f.wait(BEFORE_READ), "the home's event thread did not wake for the BEGIN")
        failing = next_message("STATUS=watchdog probe failing", 20)
        expect(failing is not None and "tether.ko events" in failing,
               "the watchdog probe did not see the held event thread: %r" % failing)
        f.release(BEFORE_READ)
        t.join(30)
        expect(next_message("WATCHDOG=1", 15) is not None,
               "no WATCHDOG=1 after the event thread was let go")
        expect(home.daemon.poll() is None, "the home died")
    finally:
        f.close()
        m.close()
        e.close()
        sock.close()
        os.unlink(notify)


@with_nodes(2)
def test_late_begin_revokes(c):
    """Issue 14, defect 1, end to end. The home daemon is stopped while the
    exporter munmaps a page a mapper caches; the module gives up waiting
    after ack_timeout_ms (100 ms here) before the home read the BEGIN. That
    BEGIN used to be freed unread, the home then saw only the END and
    dropped it, and the mapper kept reading the unmapped page's old
    contents. Now the BEGIN comes LATE and the home revokes the mapper:
    its read of the page raises SIGBUS once the home runs again."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    try:
        expect(m.command("verify 1 0 65536") == "ok", "cached before")
        home = c.node(1).daemon
        _set_ack_timeout(100)
        os.kill(home.pid, signal.SIGSTOP)
        try:
            took = ms(e.command("munmap 0 4096"))
        finally:
            os.kill(home.pid, signal.SIGCONT)
            _set_ack_timeout(5000)
        print("INFO late_begin: munmap with the home stopped took %.0f ms" % took)
        r = read_until_sigbus(m)
        expect(r == "signal:%d" % SIGBUS,
               "the mapper still reads the page the exporter unmapped while the home was "
               "stopped: %r" % r)
        for n in c.nodes:
            expect(n.daemon.poll() is None, "daemon %d died" % n.id)
    finally:
        m.close()
        e.close()


def test_unshared_range_not_forwarded(c):
    """G3: a munmap of pages no mapper caches opens no window, so the pages
    a mapper does cache elsewhere in the segment stay cached (the user-space
    source cannot tell and drops the whole segment)."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 16384") == "ok", "cached before")
    expect(not cached(m, 768 * 1024, MiB), "the far page is not cached (no read-ahead there)")
    took = ms(e.command("munmap %d 4096" % (768 * 1024)))
    expect(cached(m, 0, MiB) and cached(m, 8192, MiB),
           "an unshared munmap dropped the mapper's unrelated pages (took %.1f ms)" % took)
    expect(m.command("verify 1 0 16384") == "ok", "still readable")
    m.close()
    e.close()


def test_exporter_exit_revokes(c):
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 65536") == "ok", "cached before")
    e.kill()
    r = read_until_sigbus(m)
    expect(r == "signal:%d" % SIGBUS, "held pages must raise SIGBUS after the exporter's exit: " + r)
    for n in c.nodes:
        expect(n.daemon.poll() is None, "daemon %d died" % n.id)


def _oom_kills(cg):
    with open(os.path.join(cg, "memory.events")) as f:
        return int(dict(line.split() for line in f).get("oom_kill", 0))


@with_nodes(2)
def test_exporter_oom_killed_revokes(c):
    """G4 from the daemon's side: the exporter, in a cgroup whose memory.max
    is then set below its usage (no swap), is OOM-killed while a mapper on
    another node caches its range. The mapper's held pages raise SIGBUS
    (revoked), every daemon stays up and still serves, the kernel log has
    nothing but the oom-killer report (tests/vm/run checks dmesg)."""
    _oom_test(c, stall_home=False)


@with_nodes(2, daemon_args=("--verbose",))
def test_exporter_oom_killed_home_stalled(c):
    """The same, with the home daemon stopped while the exporter dies: its
    exit waits in mmu_notifier_release for the RELEASE ack, so the OOM
    reaper reaps meanwhile and tether.ko queues a non-blockable BEGIN (marks
    are kept until the RELEASE is acked). The home, once it runs again, must
    read that event (its debug log shows it) and take it without waiting,
    and everything above still holds. Whether it logs "(OOM reaper)" depends
    on the order it reads RELEASE and BEGIN in (a BEGIN of a range already
    released is acked silently): told, not required."""
    _oom_test(c, stall_home=True)


def _oom_test(c, stall_home):
    cg = "/sys/fs/cgroup/tether_daemon_oom"
    expect(os.path.exists("/sys/fs/cgroup/cgroup.controllers"), "no cgroup2 at /sys/fs/cgroup")
    with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
        f.write("+memory\n")
    if not os.path.isdir(cg):
        os.mkdir(cg)
    size = 8 * MiB
    e = Exporter(c.node(1), size, 1)
    try:
        with open(os.path.join(cg, "memory.max"), "w") as f:
            f.write("%d\n" % (64 * MiB))
        if os.path.exists(os.path.join(cg, "memory.swap.max")):
            with open(os.path.join(cg, "memory.swap.max"), "w") as f:
                f.write("0\n")
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write("%d\n" % e.proc.pid)  # `ip netns exec` execs tt: same pid
        # Charges stay where they were made: new pages over the whole range,
        # made from inside the cgroup, are what memory.max will squeeze.
        ms(e.command("remap 2 0 %d" % size))
        m = Mapper(c.node(2), e.segid, length=size)
        expect(m.command("verify 2 0 %d" % MiB) == "ok", "mapper caches the first MiB")
        expect(cached(m, 0, size), "page 0 is cached on the mapper's node")
        before = _oom_kills(cg)
        # Below its usage: reclaim fails (anonymous, no swap) -> the memcg
        # OOM killer picks the only task in the cgroup, the exporter.
        home = c.node(1).daemon
        if stall_home:
            os.kill(home.pid, signal.SIGSTOP)
        try:
            r = subprocess.run(["sh", "-c", "echo %d > %s/memory.max" % (MiB, cg)],
                               capture_output=True, text=True, timeout=60)
            if stall_home:  # until the reaper is done (its delay is 2 s), < ack_timeout_ms
                deadline = time.time() + 4.5
                while time.time() < deadline and "oom_reaper: reaped process %d" % e.proc.pid \
                        not in subprocess.run(["dmesg"], capture_output=True, text=True).stdout:
                    time.sleep(0.1)
        finally:
            if stall_home:
                os.kill(home.pid, signal.SIGCONT)
        try:
            rc = e.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        expect(rc == -signal.SIGKILL, "the exporter was not OOM-killed (exit %s; memory.max "
               "write: %d %s)" % (rc, r.returncode, r.stderr.strip()))
        expect(_oom_kills(cg) > before, "memory.events shows no oom_kill")
        deadline = time.time() + 10
        got = m.command("read 0")
        while got != "signal:%d" % SIGBUS and time.time() < deadline:
            time.sleep(0.1)
            got = m.command("read 0")
        expect(got == "signal:%d" % SIGBUS,
               "the mapper's held page must raise SIGBUS after the OOM kill: " + got)
        for n in c.nodes:
            expect(n.daemon.poll() is None, "daemon %d died" % n.id)

        def non_blockable_begins(log):  # BEGINs without TETHER_EVF_BLOCKABLE
            return [m for m in re.finditer(r"tether\.ko event \d+: kind 1 type \d+ flags (\S+) ",
                                           log) if int(m.group(1), 0) & 1 == 0]

        # The home reads the queued events once it runs again, in queue
        # order: the RELEASE (which already revoked: the SIGBUS above) may be
        # handled before the reaper's BEGIN is logged, so wait (bounded) for
        # that line rather than reading the log once.
        deadline = time.time() + 10
        while True:
            with open(c.node(1).log) as f:
                log = f.read()
            if not stall_home or non_blockable_begins(log) or time.time() >= deadline:
                break
            time.sleep(0.1)
        # Which path revoked first is a race (exit_mmap's RELEASE or the OOM
        # reaper's non-blockable BEGIN): told, not required.
        print("INFO oom%s: home saw a non-blockable BEGIN (OOM reaper): %s" %
              (" (home stalled)" if stall_home else "",
               "yes" if "(OOM reaper)" in log else "no (none, or read after the RELEASE)"))
        if stall_home:
            expect(non_blockable_begins(log),
                   "the home read no non-blockable BEGIN (OOM reaper): " + log[-1500:])
        # The daemons still serve: a fresh export is mapped and read.
        e2 = Exporter(c.node(1), MiB, 3)
        m2 = Mapper(c.node(2), e2.segid, length=MiB)
        expect(m2.command("verify 3 0 65536") == "ok", "daemons serve after the OOM kill")
        m2.close()
        e2.close()
    finally:
        e.kill()
        for _ in range(50):
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.1)



# Same-node attachments with tether.ko: direct attachments (issue 16,
# docs/architecture.md "Same-node attachments and direct attachments"). The
# mapper on the exporter's node maps the exporter's pages themselves.
SIGSEGV = 11


def direct_mapping(m, length):
    """True if mapper m's attachment of `length` bytes is a tether.ko direct
    attachment (its file is "tether_direct"), False if it is a copy (the
    daemon's "tether-cache" memfd, the segment's cache on the node)."""
    with open("/proc/%d/maps" % m.proc.pid) as f:
        for line in f:
            parts = line.split()
            a, b = (int(x, 16) for x in parts[0].split("-"))
            if b - a != length:
                continue
            if "tether_direct" in line:
                return True
            if "tether-cache" in line:
                return False
    raise AssertionError("no attachment of %d bytes in mapper %d" % (length, m.proc.pid))


class CopyMapper(Mapper):
    """A same-node mapper that asks for a copy (TETHER_ATTACH_COPY=1)."""

    def __init__(self, node, segid, length):
        args = ["env", "TETHER_ATTACH_COPY=1", node.cluster.tt, "map", "--segid", str(segid),
                "--len", str(length), "--interactive", "--quiet"]
        InteractiveClient.__init__(self, node, args, "copy mapper")


def test_same_node_attachment_is_direct(c):
    """Stores of either side are seen by the other at once: no sync, no
    acquire, no fetch; nothing cached, nothing marked at the home."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(1), e.segid, length=MiB)
    expect(direct_mapping(m, MiB), "a same-node attachment with tether.ko is not direct")
    expect(m.command("verify 1 0 %d" % MiB) == "ok", "the exporter's contents")
    # Repeatedly, so that a copy (which would keep the first contents until
    # an acquire) cannot pass by chance.
    for seed in (2, 3, 4):
        expect(e.command("fill %d 4096 8192" % seed) == "ok", "exporter fill")
        expect(m.command("verify %d 4096 8192" % seed) == "ok",
               "the exporter's store (seed %d) is not seen at once" % seed)
        expect(m.command("write %d 65536 4096" % (seed + 10)) == "ok", "mapper write")
        expect(e.verify(seed + 10, 65536, 4096) == "ok",
               "the mapper's store (seed %d) is not in the exporter at once" % (seed + 10))
    expect(m.command("sync") == "ok", "sync of a direct attachment")
    expect(m.command("acquire") == "ok", "acquire of a direct attachment")
    # tetherctl lists it, with its kind (issue 16).
    r = c.node(1).ctl("--json", "attachments")
    expect('"segid":"%d"' % e.segid in r.stdout and '"kind":"direct"' in r.stdout,
           "tetherctl attachments does not list the direct attachment: " + r.stdout)
    m.close()
    expect(e.verify(1, 0, 4096) == "ok", "pages nobody wrote are unchanged")
    e.close()


def test_same_node_munmap_zaps_direct_attachment(c):
    """The exporter's munmap returns at once (nothing cached, no window) and
    has zapped the attachment before it returned: the next access of the
    unmapped page raises SIGBUS; memory mapped there again is seen."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(1), e.segid, length=MiB)
    expect(direct_mapping(m, MiB), "not a direct attachment")
    expect(m.command("verify 1 0 65536") == "ok", "mapped before")
    took = ms(e.command("munmap 4096 4096"))
    expect(took < DEADLINE_MS, "munmap took %.0f ms: it waited for a window" % took)
    expect(ms(e.command("remap 7 8192 4096")) < DEADLINE_MS, "remap")
    expect(m.command("verify 7 8192 4096") == "ok", "new memory at the address is seen at once")
    expect(m.command("verify 1 0 4096") == "ok", "page 0 is still the exporter's")
    r = m.command("read 4096")
    expect(r == "signal:%d" % SIGBUS, "access to the unmapped page: %s (want SIGBUS)" % r)
    e.close()


def test_same_node_mprotect_reaches_direct_attachment(c):
    """mprotect(PROT_READ) by the exporter returns at once and the
    attachment's next write raises SIGBUS (the exporter may not write
    there); reads still see the page."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(1), e.segid, length=MiB)
    expect(m.command("write 5 16384 4096") == "ok", "write before")
    took = ms(e.command("mprotect 16384 4096 r"))
    expect(took < DEADLINE_MS, "mprotect took %.0f ms" % took)
    expect(m.command("verify 5 16384 4096") == "ok", "reads after mprotect(PROT_READ)")
    r = m.command("write 6 16384 1")
    expect(r == "signal:%d" % SIGBUS, "write after the exporter's mprotect(PROT_READ): " + r)
    e.close()


def test_same_node_read_only_attachment_cannot_write(c):
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(1), e.segid, length=MiB, rdonly=True)
    expect(direct_mapping(m, MiB), "not a direct attachment")
    expect(m.command("verify 1 0 65536") == "ok", "reads")
    r = m.command("write 9 0 1")
    expect(r == "signal:%d" % SIGSEGV, "a store through a read-only attachment: " + r)
    expect(e.verify(1, 0, 4096) == "ok", "the exporter's page changed")
    e.close()


def test_same_node_copy_when_asked(c):
    """TETHER_ATTACH_COPY=1 keeps the copy for another process of the node:
    served by the daemon (cached in its memfd) and written back at sync."""
    e = Exporter(c.node(1), MiB, 1)
    m = CopyMapper(c.node(1), e.segid, MiB)
    expect(not direct_mapping(m, MiB), "TETHER_ATTACH_COPY=1 got a direct attachment")
    expect(m.command("verify 1 0 8192") == "ok", "reads")
    expect(cached(m, 0, MiB), "the copy caches page 0")
    expect(m.command("write 4 0 4096") == "ok", "write")
    expect(m.command("sync") == "ok", "sync")
    expect(e.verify(4, 0, 4096) == "ok", "the copy's write-back")
    m.close()
    e.close()


def test_own_segment_copy_is_refused(c):
    """A copy of one's own segment in one's own address space would stall
    the exporter's mprotect for the module's ack timeout (its mmap_lock is
    held while it waits for the daemon, whose window work needs it): with
    tether.ko such an attach is a direct attachment, or refused clearly."""
    node = c.node(1)
    p = subprocess.Popen(node.netns_cmd(["env", "TETHER_ATTACH_COPY=1", c.tt, "api"]),
                         env=node.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        expect(p.stdout.readline().strip() == "ready", "tt api did not start")

        def call(line):
            p.stdin.write(line + "\n")
            p.stdin.flush()
            return p.stdout.readline().strip()
        r = call("make 65536 0600")
        expect(r.startswith("ok segid="), r)
        segid = int(r.split("=")[1])
        r = call("get %d rw" % segid)
        expect(r.startswith("ok apid="), r)
        apid = int(r.split("=")[1])
        r = call("attach %d 0 65536" % apid)
        expect(r.startswith("error: errno=95 EOPNOTSUPP tether_attach") and "own segment" in r,
               "own-segment copy: " + r)
        expect(call("release %d" % apid) == "ok", "release after the refused attach")
    finally:
        p.stdin.close()
        p.wait(10)



# A packet capture of every frame in a namespace (AF_PACKET on all of its
# interfaces), appended to argv[1] until SIGTERM; "ready" once it listens.
SNIFF = """
import signal, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.settimeout(0.2)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
out = open(sys.argv[1], "wb")
print("ready", flush=True)
while not stop:
    try:
        out.write(s.recv(1 << 17))
    except socket.timeout:
        pass
out.close()
"""


def pattern(seed, off, n):
    """tt's pattern(seed) over [off, off+n) (tests/tools/tt.c)."""
    m64 = (1 << 64) - 1

    def mix(x):
        x = (x + 0x9e3779b97f4a7c15) & m64
        x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & m64
        x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & m64
        return x ^ (x >> 31)

    return bytes((mix(((seed * 0x100000001b3) & m64) ^ (a // 8)) >> (8 * (a % 8))) & 0xff
                 for a in range(off, off + n))


def tls_stat(node):
    """The node's namespace's /proc/net/tls_stat, as {name: value}."""
    r = node.run(["cat", "/proc/net/tls_stat"])
    expect(r.returncode == 0, "no /proc/net/tls_stat on node %d: %s" % (node.id, r.stderr))
    return {k: int(v) for k, v in (line.split() for line in r.stdout.splitlines())}


# --data_encryption=on (issue 17) on node 1 only: its connections with node
# 2 (node 2's data connection, which node 1 answers encrypted; node 1's
# notice connection) are kernel TLS, node 3's with node 2 stay plaintext.
# A capture of every frame on the three links must find the pages node 3
# served in clear text (so it sees what crosses: this test can fail) and
# none of what crossed between nodes 1 and 2: pages read, a write-back,
# a page refetched after a change (whose range_begin and range_end went
# over the encrypted notice connection).
@with_nodes(3, daemon_args={1: ("--data_encryption=on",)})
def test_data_encryption_on_the_wire(c):
    with open(c.node(1).log) as f:
        expect("data connections: encrypted" in f.read(), "node 1 did not turn encryption on")
    length = 64 * 1024
    cap = os.path.join(c.dir, "capture.bin")
    sniff = subprocess.Popen(["ip", "netns", "exec", c.hub, "python3", "-c", SNIFF, cap],
                             stdout=subprocess.PIPE, text=True)
    c.extra_procs = getattr(c, "extra_procs", []) + [sniff]
    expect(sniff.stdout.readline().strip() == "ready", "the capture did not start")
    try:
        e1 = Exporter(c.node(1), length, 11)
        e3 = Exporter(c.node(3), length, 21)
        m1 = Mapper(c.node(2), e1.segid, length=length)
        m3 = Mapper(c.node(2), e3.segid, length=length)
        expect(m1.command("verify 11 0 %d" % length) == "ok", "read over the encrypted link")
        expect(m3.command("verify 21 0 %d" % length) == "ok", "read over the plaintext link")
        expect(m1.command("write 12 0 8192") == "ok", "mapper write")
        expect(m1.command("sync") == "ok", "write-back over the encrypted link")
        expect(e1.command("verify 12 0 8192") == "ok", "the encrypted write-back did not land")
        ms(e1.command("munmap 16384 4096"))
        ms(e1.command("remap 13 16384 4096"))
        expect(m1.command("verify 13 16384 4096") == "ok", "the page after the change")
        stats = {n: tls_stat(c.node(n)) for n in (1, 2, 3)}
        for m in (m1, m3):
            m.close()
        e1.close()
        e3.close()
    finally:
        sniff.send_signal(signal.SIGTERM)
        sniff.wait(10)
    with open(cap, "rb") as f:
        wire = f.read()

    def in_clear(seed, off, n):  # 16-byte pieces of pattern(seed) found on the wire
        return sum(pattern(seed, o, 16) in wire for o in range(off, off + n, 512))

    control = in_clear(21, 0, length)
    expect(control > 0, "the capture (%d bytes) saw none of node 3's plaintext pages: it cannot "
           "tell encrypted from clear" % len(wire))
    for seed, off, n, what in ((11, 0, length, "pages read from node 1"),
                               (12, 0, 8192, "the write-back to node 1"),
                               (13, 16384, 4096, "the page refetched after the change")):
        seen = in_clear(seed, off, n)
        expect(seen == 0, "%s crossed in clear text (%d pieces)" % (what, seen))
    for n in (1, 2):
        expect(stats[n].get("TlsCurrTxSw", 0) >= 2 and stats[n].get("TlsCurrRxSw", 0) >= 2,
               "node %d has fewer than 2 kernel TLS connections: %s" % (n, stats[n]))
    expect(stats[3].get("TlsCurrTxSw", 0) == 0, "node 3 encrypts: %s" % stats[3])
    for n in (1, 2, 3):
        expect(stats[n].get("TlsDecryptError", 0) == 0, "node %d: %s" % (n, stats[n]))
    print("    capture %d bytes: node 3's plaintext pieces seen %d; encrypted pieces seen 0; "
          "tls_stat node 1 %s" % (len(wire), control,
                                  {k: v for k, v in stats[1].items() if v}))

if __name__ == "__main__":
    # TETHER_VM_DAEMON_OOM=0 leaves the two OOM-kill tests out (G4, ~20 s).
    oom = os.environ.get("TETHER_VM_DAEMON_OOM", "1") != "0"
    run([v for k, v in sorted(globals().items())
         if k.startswith("test_") and (oom or "_oom_" not in k)])
