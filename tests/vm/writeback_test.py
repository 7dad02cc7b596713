#!/usr/bin/env python3
"""VM tier, issue 14: a mapper's write-back held between the home's checks
and its write while the exporter replaces or unmaps the page, with
tether.ko and a real tetherd.

The lever: the home tetherd (node 1) runs with --test_fault_socket (test
only: refused unless TETHER_TEST_HOOKS=1, daemon/common/fault_point_server.h),
through which this script arms daemon/common/fault_points.h points, waits
until a daemon thread is held at one and releases it — the same named
steps the unit tests hold, never a sleep that hopes for the race:

  exporter_memory.write.before_write   the write-back passed the checks,
                                       the write is about to be made
  segment_registry.write_back.after_write  it was made or refused
  invalidation.begin.write_back_wait   a BEGIN found a write-back in flight
                                       over its range, before its bounded wait

A write-back kept across a window's END (issue 14, the last two holes):
the mapper (node 2) runs with a fault socket of its own, through which the
kept-aside write-back after a window is held before it is sent

  fault_service.writeback.before_send  (mapper) about to send a write-back
  segment_registry.write_back.before_guard  (home) past the checks, before
                                       tether.ko's MARK guard
  kernel_notifier.event_thread.before_read  (home) events queued, not read:
                                       with ack_timeout_ms=100 the BEGIN
                                       goes LATE
  kernel_notifier.windowless_begin.handled  (home) a LATE BEGIN handled
  fault_service.writeback.before_retry  (mapper) the home answered Retry

    python3 tests/vm/writeback_test.py --build-dir build/release [-k NAME]
"""
import os
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "multinode"))
from cluster import Exporter, Mapper  # noqa: E402
from harness import expect, run, with_nodes  # noqa: E402

MiB = 1 << 20
PAGE = 4096
EIO = 5
EIDRM = 43
FAULTS = "/tmp/tether-writeback-faults.sock"
BEFORE_WRITE = "exporter_memory.write.before_write"
AFTER_WRITE = "segment_registry.write_back.after_write"
BEGIN_WAITS = "invalidation.begin.write_back_wait"
MAPPER_FAULTS = "/tmp/tether-writeback-faults-2.sock"
SEND = "fault_service.writeback.before_send"
BEFORE_GUARD = "segment_registry.write_back.before_guard"
BEFORE_READ = "kernel_notifier.event_thread.before_read"
LATE_HANDLED = "kernel_notifier.windowless_begin.handled"
RETRY = "fault_service.writeback.before_retry"
ACK_TIMEOUT = "/sys/module/tether/parameters/ack_timeout_ms"
HOME = {1: ("--test_fault_socket=" + FAULTS,)}
BOTH = {1: ("--test_fault_socket=" + FAULTS,), 2: ("--test_fault_socket=" + MAPPER_FAULTS,)}
# The daemons inherit it (cluster.Node.env copies os.environ).
os.environ["TETHER_TEST_HOOKS"] = "1"


class Faults:
    """The home's fault point socket: one command line, one answer line."""

    def __init__(self, path=FAULTS):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rw")

    def call(self, line):
        self.f.write(line + "\n")
        self.f.flush()
        return self.f.readline().strip()

    def arm(self, name):
        expect(self.call("arm " + name) == "ok", "arm " + name)

    def wait(self, name, seconds=20):
        return self.call("wait %s %d" % (name, seconds * 1000)) == "reached"

    def release(self, name):
        self.call("release " + name)

    def close(self):
        try:
            self.call("release_all")
        finally:
            self.s.close()


def send(e, line):
    """Sends an exporter command without waiting for its answer."""
    e.proc.stdin.write(line + "\n")
    e.proc.stdin.flush()


def answered(e, timeout):
    """The exporter's answer to the command sent, or None within timeout s."""
    r, _, _ = select.select([e.proc.stdout], [], [], timeout)
    return e.proc.stdout.readline().strip() if r else None


def held_write_back(c):
    """Exporter on node 1 (the home, fault socket), a mapper on node 2 that
    dirtied page 0, and its sync's write-back held at BEFORE_WRITE."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    expect(m.command("verify 1 0 8192") == "ok", "the mapper reads pages 0 and 1")
    expect(m.command("write 9 0 4096") == "ok", "the mapper dirties page 0")
    f = Faults()
    f.arm(BEFORE_WRITE)
    m.send("sync")
    expect(f.wait(BEFORE_WRITE), "the sync's write-back never reached the home's write")
    return e, m, f


def expect_lost(e, m, reply, seed, landed):
    """The end of every "page 0 replaced under a write-back" case: the
    mapper's last reply (its write or sync) reports the page lost (EIO),
    the exporter's page 0 holds what the replacement put there (`seed`),
    not the write-back (`landed` says how it would have got there), the
    rest of the exporter is unchanged and the mapper still reads page 1."""
    expect(reply.startswith("error: errno=%d" % EIO),
           "the mapper's sync after page 0 was replaced: %r (want EIO: lost)" % reply)
    expect(e.verify(seed, 0, PAGE) == "ok", landed)
    expect(e.verify(1, PAGE, MiB - PAGE) == "ok", "the rest of the exporter changed")
    expect(m.command("verify 1 4096 4096") == "ok", "the mapper still reads page 1")


def replaced_while_held(c, change, seed):
    e, m, f = held_write_back(c)
    try:
        # The change holds mmap_lock for writing through the notifier: the
        # home's wait for the held write-back runs out (100 ms), it acks,
        # the new mapping is installed. Then the write is let go.
        r = e.command(change)
        expect(r.startswith("ok "), "%s: %s" % (change, r))
        if change.startswith("mremap"):
            expect(e.command("fill %d 0 4096" % seed) == "ok", "fill the new page")
        f.release(BEFORE_WRITE)
        r = m.reply(30)
        if r == "ok":
            # The home refused the write (ENXIO) after node 2 had taken the
            # page aside for the change's window but before it handled the
            # window's end, which counts the page lost: then the next sync
            # reports it (it waits for that end first).
            r = m.command("sync")
        expect_lost(e, m, r, seed, "the old page's write-back landed in the mapping %s put "
                    "there" % change.split()[0])
    finally:
        f.close()
        m.close()
        e.close()


@with_nodes(3, daemon_args=HOME)
def test_write_back_held_across_map_fixed_is_lost(c):
    """mmap(MAP_FIXED) of new memory (pattern 5) over page 0 while its
    write-back is held: the new page stays pattern 5, the sync says EIO."""
    replaced_while_held(c, "remap 5 0 4096", 5)


@with_nodes(3, daemon_args=HOME)
def test_write_back_held_across_mremap_is_lost(c):
    """mremap moves page 0 away (zeros mapped in its place, then filled
    with pattern 6) while its write-back is held."""
    replaced_while_held(c, "mremap 0 4096", 6)


@with_nodes(3, daemon_args=HOME)
def test_munmap_returns_after_the_write_back_in_flight(c):
    """The UNMAP ordering against the real module: munmap of a page whose
    write-back is held. The home's BEGIN must wait for it (munmap calls the
    notifier with mmap_lock downgraded to read, so the write can go on):
    munmap returns only after the write was made in the old mapping or
    refused; never after it, into what is mapped there next."""
    e, m, f = held_write_back(c)
    try:
        f.arm(BEGIN_WAITS)
        f.arm(AFTER_WRITE)
        send(e, "munmap 0 4096")
        expect(f.wait(BEGIN_WAITS),
               "the home's BEGIN for the munmap did not wait for the write-back in flight")
        expect(answered(e, 0) is None, "munmap returned while the write-back was held")
        f.release(BEFORE_WRITE)
        expect(f.wait(AFTER_WRITE), "the write-back did not go on during the munmap")
        expect(answered(e, 0.2) is None, "munmap returned before the write-back returned")
        f.release(AFTER_WRITE)
        f.release(BEGIN_WAITS)
        r = answered(e, 30)
        expect(r is not None and r.startswith("ok "), "munmap: %r" % r)
        r = m.reply(30)
        expect(r.startswith("error: errno=%d" % EIO) or r == "ok",
               "the mapper's sync: %r (want EIO, or ok if it landed before the unmap)" % r)
        # New memory at the address: nothing lands in it later.
        expect(e.command("remap 7 0 4096").startswith("ok "), "remap after the munmap")
        expect(m.command("verify 1 4096 4096") == "ok", "the mapper still reads page 1")
        expect(e.verify(7, 0, PAGE) == "ok", "a write-back landed in the new mapping")
    finally:
        f.close()
        m.close()
        e.close()


def kept_across_end(c, changes, seed):
    """Page 0 dirtied on node 2, a madvise(DONTNEED) window over it: node 2
    keeps it aside and writes it back after the window's END — held at
    its send. Meanwhile the exporter replaces page 0 (`changes`). The END
    unmarked page 0 in tether.ko before the fix: the replacement was not
    forwarded, nothing told the home, and the held write-back landed in the
    new page. Now the range stays marked while a writable copy may exist:
    the replacement opens a window that reports page 0 gone, and the
    write-back is refused (ENXIO): lost, never landed."""
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    mf = Faults(MAPPER_FAULTS)
    try:
        expect(m.command("verify 1 0 8192") == "ok", "the mapper reads pages 0 and 1")
        expect(m.command("write 9 0 4096") == "ok", "the mapper dirties page 0")
        mf.arm(SEND)
        r = e.command("dontneed 0 4096")
        expect(r.startswith("ok "), "dontneed: %s" % r)
        expect(mf.wait(SEND), "node 2 did not write page 0 back after the window's end")
        for change in changes:
            r = e.command(change)
            expect(r.startswith("ok"), "%s: %s" % (change, r))
        mf.release(SEND)
        expect_lost(e, m, m.command("sync"), seed,
                    "the write-back kept across the END landed in the new page (%s)" %
                    "; ".join(changes))
    finally:
        mf.close()
        m.close()
        e.close()


@with_nodes(3, daemon_args=BOTH)
def test_kept_across_end_then_map_fixed_is_lost(c):
    """mmap(MAP_FIXED) of new memory (pattern 5) over page 0 after the END."""
    kept_across_end(c, ["remap 5 0 4096"], 5)


@with_nodes(3, daemon_args=BOTH)
def test_kept_across_end_then_munmap_mmap_is_lost(c):
    """munmap of page 0, then new memory (pattern 7) mapped there."""
    kept_across_end(c, ["munmap 0 4096", "remap 7 0 4096"], 7)


@with_nodes(3, daemon_args=BOTH)
def test_kept_across_end_then_mremap_is_lost(c):
    """mremap moves page 0 away; zeros mapped in its place, filled with 6."""
    kept_across_end(c, ["mremap 0 4096", "fill 6 0 4096"], 6)


@with_nodes(3, daemon_args=HOME)
def test_write_back_across_late_begin_is_lost(c):
    """A write-back past the home's checks (held before tether.ko's guard);
    the home's event thread is held before it reads, so the BEGIN of the
    exporter's MAP_FIXED over page 0 times out in the module
    (ack_timeout_ms=100) and reaches the daemon LATE, after the change.
    The LATE BEGIN opened no window before the fix: the write-back's
    second look found nothing, tether.ko's sequence (taken after the
    change) matched, and it landed in the new page. Now the LATE BEGIN is
    recorded as a window opened and closed (page 0 gone): the write-back
    is refused and re-checked (ENXIO), never landed."""
    with open(ACK_TIMEOUT) as f:
        saved = f.read().strip()
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    f = Faults()
    try:
        expect(m.command("verify 1 0 8192") == "ok", "the mapper reads pages 0 and 1")
        expect(m.command("write 9 0 4096") == "ok", "the mapper dirties page 0")
        f.arm(BEFORE_GUARD)
        m.send("sync")
        expect(f.wait(BEFORE_GUARD), "the sync's write-back never reached the home")
        with open(ACK_TIMEOUT, "w") as t:
            t.write("100")
        f.arm(BEFORE_READ)
        send(e, "remap 5 0 4096")
        expect(f.wait(BEFORE_READ), "the home's event thread did not wake for the BEGIN")
        r = answered(e, 30)
        expect(r is not None and r.startswith("ok "), "remap (its BEGIN timed out): %r" % r)
        f.arm(LATE_HANDLED)
        f.release(BEFORE_READ)
        expect(f.wait(LATE_HANDLED), "the home did not handle the BEGIN as LATE")
        f.release(LATE_HANDLED)
        f.release(BEFORE_GUARD)
        r = m.reply(30)
        # Lost to the unmap (EIO), or reported with the revocation the
        # LATE BEGIN sent (EIDRM); never OK.
        expect(r.startswith("error: errno=%d " % EIO) or r.startswith("error: errno=%d " % EIDRM),
               "the mapper's sync across a LATE BEGIN: %r (want EIO or EIDRM)" % r)
        expect(e.verify(5, 0, PAGE) == "ok",
               "the write-back resolved before a LATE BEGIN landed in the new page")
        expect(e.verify(1, PAGE, MiB - PAGE) == "ok", "the rest of the exporter changed")
    finally:
        with open(ACK_TIMEOUT, "w") as t:
            t.write(saved)
        f.close()
        m.close()
        e.close()


@with_nodes(3, daemon_args=BOTH)
def test_write_back_after_an_unread_late_begin_is_lost(c):
    """The write-back starts only after the change: the exporter's
    MAP_FIXED over page 0 went LATE (the home's event thread held before
    it reads, ack_timeout_ms=100) and returned; then node 2 syncs page 0.
    Its checks and tether.ko's guard both come after the change, so
    neither can tell. Before the fix the home took it and it landed in
    the new page; now the home answers Retry while tether.ko has events it
    has not read (or is handling, or a BEGIN of the range waits for a
    worker), and once the LATE BEGIN is read the retry is refused as
    gone."""
    with open(ACK_TIMEOUT) as f:
        saved = f.read().strip()
    e = Exporter(c.node(1), MiB, 1)
    m = Mapper(c.node(2), e.segid, length=MiB)
    f = Faults()
    mf = Faults(MAPPER_FAULTS)
    try:
        expect(m.command("verify 1 0 8192") == "ok", "the mapper reads pages 0 and 1")
        expect(m.command("write 9 0 4096") == "ok", "the mapper dirties page 0")
        with open(ACK_TIMEOUT, "w") as t:
            t.write("100")
        f.arm(BEFORE_READ)
        send(e, "remap 5 0 4096")
        expect(f.wait(BEFORE_READ), "the home's event thread did not wake for the BEGIN")
        r = answered(e, 30)
        expect(r is not None and r.startswith("ok "), "remap (its BEGIN timed out): %r" % r)
        mf.arm(RETRY)
        m.send("sync")
        expect(mf.wait(RETRY, 10),
               "the home took a write-back while the LATE BEGIN of a change before it was "
               "still unread")
        f.release(BEFORE_READ)
        mf.release(RETRY)
        r = m.reply(30)
        expect(r.startswith("error: errno=%d " % EIO) or r.startswith("error: errno=%d " % EIDRM),
               "the mapper's sync after an unread LATE BEGIN: %r (want EIO or EIDRM)" % r)
        expect(e.verify(5, 0, PAGE) == "ok",
               "a write-back checked after a LATE BEGIN the home had not read landed in the "
               "new page")
    finally:
        with open(ACK_TIMEOUT, "w") as t:
            t.write(saved)
        mf.close()
        f.close()
        m.close()
        e.close()


@with_nodes(1)
def test_fault_socket_refused_without_test_hooks(c):
    """--test_fault_socket is for tests only: a start without
    TETHER_TEST_HOOKS=1 fails with a clear message and listens for nothing."""
    env = dict(os.environ)
    env.pop("TETHER_TEST_HOOKS", None)
    path = "/tmp/tether-writeback-refused.sock"
    r = subprocess.run([c.tetherd, "--node_id=9", "--insecure_peers",
                        "--test_fault_socket=" + path], env=env, capture_output=True,
                       text=True, timeout=30)
    expect(r.returncode == 2 and "TETHER_TEST_HOOKS=1" in r.stderr,
           "tetherd --test_fault_socket without TETHER_TEST_HOOKS: rc %d, %r" %
           (r.returncode, r.stderr[-300:]))
    expect(not os.path.exists(path), "the fault socket was created anyway")


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
