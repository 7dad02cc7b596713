#!/usr/bin/env python3
"""Host multi-node tests of the XPMEM compatibility layer (issue 6): programs
written against <xpmem.h> alone (tests/xpmem/), linked with tether's
libxpmem, sharing memory between processes on one node and across nodes,
in the patterns tether's consistency model supports (docs/xpmem.md):
a consumer that attaches after the producer wrote sees the data; the
producer sees a consumer's stores once the consumer detached."""
import os
import subprocess
import time

from cluster import InteractiveClient
from harness import expect, run

EINVAL, ENOENT, EACCES = 22, 2, 13
SIGBUS, SIGSEGV = 7, 11
MiB = 1 << 20


def share_bin(c):
    return os.path.join(os.path.dirname(c.tt), "xpmem", "xpmem_share")


def validation_bin(c):
    return os.path.join(os.path.dirname(c.tt), "xpmem", "xpmem_validation")


class Producer:
    """`xpmem_share produce`: a pattern-filled range, xpmem_make()d."""

    def __init__(self, node, size, seed, mode=0o644, whole=False):
        args = [share_bin(node.cluster), "produce", "--size", str(size), "--seed", str(seed),
                "--mode", oct(mode).replace("0o", "0")] + (["--whole"] if whole else [])
        self.proc = subprocess.Popen(node.netns_cmd(args), env=node.env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.segid = None
        self.base = 0  # segment offset of the buffer (its address with whole=True)
        self.file = 0  # whole=True: address of a read-only mapping of the program file
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("producer died: rc=%s" % self.proc.wait(5))
            if line.startswith("segid="):
                self.segid = int(line.split("=")[1])
            if line.startswith("base="):
                self.base = int(line.split("=")[1])
            if line.startswith("file="):
                self.file = int(line.split("=")[1])
            if line.strip() == "ready":
                return
            if line.startswith("error"):
                raise RuntimeError("producer: " + line.strip())
        raise RuntimeError("producer did not get ready")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def verify(self, seed, off, length):
        return self.command("verify %d %d %d" % (seed, off, length))

    def fill(self, seed, off, length):
        return self.command("fill %d %d %d" % (seed, off, length))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Consumer(InteractiveClient):
    """`xpmem_share consume --interactive`: holds an attachment."""

    def __init__(self, node, segid, offset=0, length=4096, extra=()):
        args = [share_bin(node.cluster), "consume", "--segid", str(segid), "--offset",
                str(offset), "--len", str(length), "--interactive"] + list(extra)
        super().__init__(node, args, "consumer")


def consume(node, *args, timeout=120):
    env = node.env()
    env["TETHER_XPMEM_DEBUG"] = "1"  # libxpmem says why a call failed, on stderr
    return subprocess.run(node.netns_cmd([share_bin(node.cluster), "consume"] +
                                         [str(a) for a in args]),
                          env=env, capture_output=True, text=True, timeout=timeout)


def consume_ok(node, *args):
    r = consume(node, *args)
    expect(r.returncode == 0 and "done" in r.stdout,
           "consume %s on node %d: rc=%d %s" % (" ".join(map(str, args)), node.id,
                                                r.returncode, r.stdout + r.stderr))
    return r.stdout


def consume_err(node, errno, *args, why=""):
    """why: a piece of the reason libxpmem prints (the same errno can have
    several causes: EACCES from the permit, or from the daemon's socket)."""
    r = consume(node, *args)
    expect(r.returncode == 1 and ("errno=%d " % errno) in r.stdout and why in r.stderr,
           "consume %s on node %d: wanted errno %d (%s), got rc=%d %s" %
           (" ".join(map(str, args)), node.id, errno, why, r.returncode, r.stdout + r.stderr))


def test_validation_on_each_node(c):
    # Argument validation and errno values: the program forks its own
    # producer, so this is the same-node case; run it on two nodes.
    for node in (c.node(1), c.node(2)):
        r = subprocess.run(node.netns_cmd([validation_bin(c)]), env=node.env(),
                           capture_output=True, text=True, timeout=120)
        expect(r.returncode == 0 and ", 0 failed" in r.stdout,
               "xpmem_validation on node %d: rc=%d\n%s%s" % (node.id, r.returncode, r.stdout,
                                                            r.stderr))


def test_share_same_node(c):
    p = Producer(c.node(1), 2 * MiB, 11)
    out = consume_ok(c.node(1), "--segid", p.segid, "--len", 2 * MiB, "--verify", 11,
                     "--write", 12, 4096, 3 * 4096)
    expect("verified %d bytes" % (2 * MiB) in out, out)
    # the consumer detached: its stores are in the producer's memory
    expect(p.verify(12, 4096, 3 * 4096) == "ok", "same-node consumer's write after detach")
    expect(p.verify(11, 0, 4096) == "ok" and p.verify(11, 4 * 4096, 2 * MiB - 4 * 4096) == "ok",
           "untouched pages changed")
    p.close()


def test_share_across_nodes(c):
    size = 4 * MiB
    p = Producer(c.node(1), size, 21)
    # several consumers on other nodes at once, one with a window at an offset
    procs = [subprocess.Popen(n.netns_cmd([share_bin(c), "consume", "--segid", str(p.segid),
                                           "--len", str(size), "--verify", "21"]),
                              env=n.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for n in (c.node(2), c.node(3), c.node(3))]
    consume_ok(c.node(2), "--segid", p.segid, "--offset", MiB, "--len", 64 * 1024,
               "--verify", 21)
    for pr in procs:
        out, _ = pr.communicate(timeout=180)
        expect(pr.returncode == 0 and "done" in out, "concurrent consumer: " + out)
    # writers on two nodes, disjoint pages
    consume_ok(c.node(2), "--segid", p.segid, "--len", size, "--write", 22, 0, 64 * 1024)
    consume_ok(c.node(3), "--segid", p.segid, "--len", size, "--write", 23, 64 * 1024, 64 * 1024)
    expect(p.verify(22, 0, 64 * 1024) == "ok", "node 2's write did not reach the producer")
    expect(p.verify(23, 64 * 1024, 64 * 1024) == "ok", "node 3's write did not reach the producer")
    expect(p.verify(21, 128 * 1024, size - 128 * 1024) == "ok", "untouched pages changed")
    p.close()


def test_consumer_attaches_after_producer_wrote(c):
    p = Producer(c.node(1), MiB, 31)
    consume_ok(c.node(2), "--segid", p.segid, "--len", MiB, "--verify", 31)
    # the producer stores again (plain stores, no call): a new attach sees them
    expect(p.fill(32, 0, MiB) == "ok", "fill")
    for node in (c.node(1), c.node(2), c.node(3)):
        consume_ok(node, "--segid", p.segid, "--len", MiB, "--verify", 32)
    p.close()


def test_own_segment_and_fork_child(c):
    # As on XPMEM, the producer may get and attach its own segment, and a
    # child it forks may get and attach its parent's (issue 16). Their
    # stores reach the producer's memory, and consumers on other nodes that
    # attach afterwards see them.
    p = Producer(c.node(1), 256 * 1024, 111)
    expect(p.command("own 112 4096 8192") == "ok", "the producer's own get/attach/store")
    expect(p.verify(112, 4096, 8192) == "ok", "own store did not reach the producer")
    expect(p.command("fork 113 65536 4096") == "ok", "a fork child's get/attach/store")
    expect(p.verify(113, 65536, 4096) == "ok", "the fork child's store did not reach the producer")
    expect(p.verify(111, 0, 4096) == "ok" and p.verify(111, 12288, 53248) == "ok" and
           p.verify(111, 69632, 256 * 1024 - 69632) == "ok", "untouched pages changed")
    consume_ok(c.node(2), "--segid", p.segid, "--offset", 4096, "--len", 8192, "--verify", 112)
    consume_ok(c.node(3), "--segid", p.segid, "--offset", 65536, "--len", 4096, "--verify", 113)
    # The same with a whole-address-space segment (attach offsets are the
    # producer's addresses), as MPI runtimes use them within one process.
    w = Producer(c.node(2), 64 * 1024, 114, whole=True)
    expect(w.command("own 115 8192 4096") == "ok", "own attach of a whole-space segment")
    expect(w.command("fork 116 16384 4096") == "ok", "fork child of a whole-space exporter")
    expect(w.verify(115, 8192, 4096) == "ok" and w.verify(116, 16384, 4096) == "ok",
           "stores through a whole-space segment did not reach the producer")
    w.close()
    p.close()


def test_open_attachment_is_a_cached_copy(c):
    # What docs/xpmem.md states: an attachment held open keeps the pages it
    # already read; the producer's later stores show after a new attach.
    # Same node and across nodes alike (the host tier, without tether.ko:
    # with it a same-node attachment is direct, tests/vm/daemon_test.py).
    p = Producer(c.node(1), 64 * 1024, 41)
    cons = [Consumer(c.node(1), p.segid, length=64 * 1024),
            Consumer(c.node(2), p.segid, length=64 * 1024)]
    for m in cons:
        expect(m.command("verify 41 0 4096") == "ok", "first read")
    expect(p.fill(42, 0, 4096) == "ok", "fill")
    for m in cons:
        expect(m.command("verify 41 0 4096") == "ok",
               "a held page should still show the old contents (cached copy)")
        expect(m.command("detach") == "ok" and m.command("attach") == "ok", "re-attach")
        expect(m.command("verify 42 0 4096") == "ok", "a new attach sees the producer's stores")
        m.close()
    p.close()


def test_detach_after_the_producer_unmapped_succeeds(c):
    """Issue 16: xpmem_detach after the producer unmapped part of the range
    the consumer wrote returned -1 (EIO, or EFAULT when the home found the
    address unmapped at the write-back). XPMEM's detach of a dead range
    succeeds: the writes to the unmapped part have nowhere to go (counted
    lost, as tether_sync reports); those to memory still mapped land."""
    p = Producer(c.node(1), 256 * 1024, 61)
    m = Consumer(c.node(2), p.segid, length=256 * 1024)
    expect(m.command("write 62 0 8192") == "ok", "write")
    expect(m.command("write 63 %d 8192" % (192 * 1024)) == "ok", "write")
    expect(p.command("unmap %d 65536" % (192 * 1024)) == "ok", "producer's munmap")
    r = m.command("detach")
    expect(r == "ok", "xpmem_detach after the producer unmapped part of the range: " + r)
    expect(p.verify(62, 0, 8192) == "ok", "the write to memory still mapped did not land")
    expect(m.command("release") == "ok", "release")
    m.close()
    p.close()


def test_producer_sees_consumer_writes_after_detach(c):
    p = Producer(c.node(1), 256 * 1024, 51)
    for node, seed, off in ((c.node(1), 52, 0), (c.node(2), 53, 64 * 1024),
                            (c.node(3), 54, 128 * 1024)):
        m = Consumer(node, p.segid, length=256 * 1024)
        expect(m.command("write %d %d 8192" % (seed, off)) == "ok", "write")
        expect(m.command("detach") == "ok", "detach")
        expect(p.verify(seed, off, 8192) == "ok",
               "node %d consumer's stores not in the producer after detach" % node.id)
        # release after detach, then process exit: nothing else changes
        expect(m.command("release") == "ok", "release")
        m.close()
    expect(p.verify(51, 136 * 1024, 120 * 1024) == "ok", "untouched pages changed")
    # xpmem_release alone (no detach) also writes back: it detaches first
    m = Consumer(c.node(2), p.segid, length=256 * 1024)
    expect(m.command("write 55 200704 4096") == "ok", "write")
    expect(m.command("release") == "ok", "release")
    expect(p.verify(55, 200704, 4096) == "ok", "release did not write back")
    m.close()
    p.close()


def test_fixed_address_and_read_only(c):
    p = Producer(c.node(1), 256 * 1024, 61)
    consume_ok(c.node(2), "--segid", p.segid, "--len", 128 * 1024, "--offset", 64 * 1024,
               "--fixed", "--verify", 61)
    consume_ok(c.node(1), "--segid", p.segid, "--len", 64 * 1024, "--fixed", "--rdonly",
               "--verify", 61)
    # a store through a read-only attachment faults
    for node in (c.node(1), c.node(2)):
        r = consume(node, "--segid", p.segid, "--len", 4096, "--rdonly", "--write", 62, 0, 8)
        expect(r.returncode == -SIGSEGV,
               "store through a read-only attachment on node %d: rc=%d %s" %
               (node.id, r.returncode, r.stdout))
    expect(p.verify(61, 0, 256 * 1024) == "ok", "read-only consumer changed the producer")
    p.close()


def test_permissions(c):
    # The cluster's directory is 0700 (mkdtemp): let uid 65534 reach the
    # daemons' sockets (0666), or every call fails EACCES at connect().
    os.chmod(c.dir, 0o711)
    denied = "does not permit"
    p = Producer(c.node(1), 64 * 1024, 71, mode=0o600)
    consume_err(c.node(2), EACCES, "--segid", p.segid, "--uid", 65534, why=denied)
    consume_err(c.node(1), EACCES, "--segid", p.segid, "--uid", 65534, why=denied)
    p.close()
    p = Producer(c.node(1), 64 * 1024, 72, mode=0o644)
    consume_err(c.node(3), EACCES, "--segid", p.segid, "--uid", 65534, why=denied)  # read-write
    # others may read (the permit check; attaching needs /dev/userfaultfd,
    # which this host grants to root only, deploy/ to group tether)
    consume_ok(c.node(3), "--segid", p.segid, "--uid", 65534, "--rdonly", "--get-only")
    consume_ok(c.node(1), "--segid", p.segid, "--uid", 65534, "--rdonly", "--get-only")
    consume_ok(c.node(2), "--segid", p.segid, "--rdonly", "--verify", 72)
    p.close()


def test_whole_address_space(c):
    # xpmem_make(NULL, XPMEM_MAXADDR_SIZE) as UCX, Open MPI and MPICH make
    # it: consumers attach at the producer's buffer address (its segment
    # offset), on the same node and across nodes.
    size = 2 * MiB
    p = Producer(c.node(1), size, 91, whole=True)
    b = p.base
    expect(b > 0 and b % 4096 == 0, "producer's buffer address: %d" % b)
    for node in (c.node(1), c.node(2)):
        out = consume_ok(node, "--segid", p.segid, "--base", b, "--offset", b, "--len", size,
                         "--verify", 91)
        expect("verified %d bytes" % size in out, out)
    consume_ok(c.node(3), "--segid", p.segid, "--base", b, "--offset", b + MiB, "--len", MiB,
               "--write", 92, b + MiB, 8192)
    expect(p.verify(92, MiB, 8192) == "ok", "node 3's write through a whole-space segment")
    expect(p.verify(91, 0, MiB) == "ok", "untouched pages changed")
    # The invalidation guarantee holds for it too: the producer unmaps the
    # tail of its buffer while a consumer holds those pages; the consumer's
    # next access raises SIGBUS, the rest still reads.
    m = Consumer(c.node(2), p.segid, offset=b, length=size, extra=["--base", str(b)])
    expect(m.command("verify 91 0 %d" % MiB) == "ok", "first read")
    expect(m.command("verify 91 %d 65536" % (size - 65536)) == "ok", "first read of the tail")
    expect(p.command("unmap %d 65536" % (size - 65536)) == "ok", "producer's munmap")
    expect(m.command("verify 91 0 4096") == "ok", "a page still mapped at the producer")
    r = m.command("read %d" % (size - 4096))
    expect(r == "signal:%d" % SIGBUS, "page unmapped by the producer: " + r)
    m.close()
    # Addresses with nothing mapped at the producer: SIGBUS on access, and
    # the daemons go on serving.
    tail = b + size - 65536
    r = consume(c.node(2), "--segid", p.segid, "--base", b, "--offset", tail,
                "--len", 65536, "--verify", 91)
    expect(r.returncode == -SIGBUS, "attachment of unmapped addresses: rc=%d %s" %
           (r.returncode, r.stdout + r.stderr))
    consume_ok(c.node(2), "--segid", p.segid, "--base", b, "--offset", b, "--len", 64 * 1024,
               "--verify", 91)
    # Memory mapped later in that hole is watched from its first read: the
    # producer maps it again, a consumer reads it, the producer unmaps it.
    expect(p.command("remap 93 %d 65536" % (size - 65536)) == "ok", "producer maps the hole")
    m = Consumer(c.node(3), p.segid, offset=tail, length=65536, extra=["--base", str(b)])
    expect(m.command("verify 93 0 65536") == "ok", "memory mapped in the hole")
    expect(p.command("unmap %d 65536" % (size - 65536)) == "ok", "producer's second munmap")
    r = m.command("read 4096")
    expect(r == "signal:%d" % SIGBUS, "memory mapped in a hole, then unmapped: " + r)
    m.close()
    # A file-backed mapping (the producer's own ELF header): tether.ko
    # watches any mapping; userfaultfd only anonymous/shmem/hugetlb, so
    # without the module its read is refused (SIGBUS), never served
    # unwatched (docs/xpmem.md).
    m = Consumer(c.node(2), p.segid, offset=p.file, length=4096)
    got = [m.command("read %d" % i) for i in range(4)]
    with open(c.node(1).log) as f:
        kernel_source = "notifier source: tether.ko" in f.read()
    if kernel_source:
        expect(got == ["byte %d" % ch for ch in b"\x7fELF"],
               "ELF header through a whole-space segment with tether.ko: %s" % got)
    else:
        expect(got[0] == "signal:%d" % SIGBUS,
               "a file mapping without tether.ko must not be served: %s" % got)
    m.close()
    expect(p.command("remove") == "ok", "xpmem_remove of the whole-space segment")
    consume_err(c.node(3), ENOENT, "--segid", p.segid)
    p.close()


def test_remove_and_exit_revoke(c):
    p = Producer(c.node(1), MiB, 81)
    held = [Consumer(c.node(1), p.segid, length=MiB), Consumer(c.node(2), p.segid, length=MiB)]
    for m in held:
        expect(m.command("verify 81 0 4096") == "ok", "first read")
    expect(p.command("remove") == "ok", "producer's xpmem_remove")
    expect(p.command("remove") == "error: errno=%d remove" % ENOENT, "double remove")
    for node in (c.node(1), c.node(2), c.node(3)):
        consume_err(node, ENOENT, "--segid", p.segid)
    for m in held:
        # pages the consumer did not hold cannot be fetched any more
        r = m.command("read %d" % (MiB - 4096))
        expect(r == "signal:%d" % SIGBUS, "unheld page after xpmem_remove: " + r)
        m.close()
    p.close()
    p = Producer(c.node(2), 64 * 1024, 82)
    consume_ok(c.node(3), "--segid", p.segid, "--len", 64 * 1024, "--verify", 82)
    p.kill()
    time.sleep(0.5)
    consume_err(c.node(3), ENOENT, "--segid", p.segid)
    consume_err(c.node(2), ENOENT, "--segid", p.segid)


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
