#!/usr/bin/env python3
"""Host multi-node tests of errors (issue: errno preserved end to end across
nodes): the errnos of docs/consistency.md's table are provoked through the
C API on node 2, against a segment whose home is node 1, and each must be
exactly the documented one. Where the error came from node 1, the message
(tether_strerror) must name node 1. EPERM and EEXIST are checked at the
home itself (remove and publish act only there). Not provoked: ESRCH and
EAGAIN from the home (they need a race), EFAULT (a protection change
during the write), and the local resource errors (ENOMEM, EMFILE, ENOSPC, ...).

The client is `tt api` (tests/tools/tt.c): one tether call per line,
answering "ok ..." or "error: errno=N ENAME CALL: MESSAGE".

Runs on the host tier, without tether.ko: the exporter's mprotect is not
seen by the user-space notifier, which is what lets the EACCES write-back
case below happen."""
import errno
import re
import signal
import time

from cluster import Exporter, InteractiveClient
from harness import Failure, expect, freeze, run, with_nodes

MiB = 1 << 20
NOBODY = 65534
DEADLINE_MS = 500
# Leases off: the fencing test checks the home's fencing message, and a
# node's own lease, run out while it was frozen, would revoke first with
# its own ("the lease from node 1 ran out": test_leases.py checks that one).
FAST = ("--invalidate_deadline_ms=%d" % DEADLINE_MS, "--lease_ms=0")
RPC_TIMEOUT_S = 3  # cluster.py starts tetherd with --rpc_timeout_ms=3000
ERROR = re.compile(r"^error: errno=(\d+) (\S+) (\w+): (.*)$")


class Api(InteractiveClient):
    """A `tt api` process on a node (as `uid` if given)."""

    def __init__(self, node, uid=None):
        args = [node.cluster.tt, "api"] + (["--uid", str(uid)] if uid is not None else [])
        self.node = node
        super().__init__(node, args, "tt api")
        procs = getattr(node.cluster, "extra_procs", [])
        procs.append(self.proc)  # killed by Cluster.stop whatever happens
        node.cluster.extra_procs = procs

    def ok(self, line, timeout=30):
        """Runs `line`, which must succeed; returns its key=value pairs."""
        r = self.command(line, timeout)
        expect(r == "ok" or r.startswith("ok "),
               "node %d: %s: wanted success, got %r" % (self.node.id, line, r))
        return dict(kv.split("=", 1) for kv in r.split()[1:])

    def err(self, line, want, says=(), timeout=30):
        """Runs `line`, which must fail with exactly errno `want` (and a
        message containing each of `says`); returns the message."""
        r = self.command(line, timeout)
        m = ERROR.match(r)
        if not m:
            raise Failure("node %d: %s: wanted %s, got %r" %
                          (self.node.id, line, errno.errorcode[want], r))
        got = int(m.group(1))
        expect(got == want, "node %d: %s: wanted errno %d %s, got %d %s (%s)" %
               (self.node.id, line, want, errno.errorcode[want], got,
                errno.errorcode.get(got, "?"), m.group(4)))
        for s in says:
            expect(s in m.group(4), "node %d: %s: the message should say %r: %r" %
                   (self.node.id, line, s, m.group(4)))
        return m.group(4)

    def attach(self, segid, length, write=True):
        """get + attach of [0, length); returns (apid, address)."""
        apid = self.ok("get %d %s" % (segid, "rw" if write else "ro"))["apid"]
        addr = int(self.ok("attach %s 0 %d" % (apid, length))["addr"], 16)
        return apid, addr


def exporter(node, *args, **kw):
    e = Exporter(node, *args, **kw)
    procs = getattr(node.cluster, "extra_procs", [])
    procs.append(e.proc)
    node.cluster.extra_procs = procs
    return e


def wait_revoked(node, why, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = node.ctl("attachments")
        if ("revoked: " + why) in r.stdout:
            return
        time.sleep(0.05)
    raise Failure("node %d did not revoke its attachment (%s): %s" % (node.id, why, r.stdout))


def thaw(node):
    node.daemon.send_signal(signal.SIGCONT)


def other_incarnation(segid):
    inc = (segid >> 32) & 0xffff
    return (segid & ~(0xffff << 32)) | ((inc ^ 0x5a5a) << 32)


@with_nodes(2)
def test_get_errors_from_the_remote_home(c):
    n1, n2 = c.node(1), c.node(2)
    private = exporter(n1, 64 * 1024, 1, mode=0o600)
    shared = exporter(n1, 64 * 1024, 2, mode=0o644)
    nobody = Api(n2, uid=NOBODY)
    root = Api(n2)
    # EACCES: node 1's permit check, for another uid on node 2
    nobody.err("get %d ro" % private.segid, errno.EACCES, says=("at node 1", "mode 600"))
    nobody.err("get %d rw" % shared.segid, errno.EACCES, says=("at node 1", "read-write"))
    nobody.ok("release %s" % nobody.ok("get %d ro" % shared.segid)["apid"])  # read is allowed
    # ENOENT: another incarnation of node 1 (from before a restart): node 1 says so
    root.err("get %d ro" % other_incarnation(shared.segid), errno.ENOENT,
             says=("at node 1", "no segment"))
    # ENOENT: the exporter exited (node 2 still holds a grant, so node 1 says why);
    # the attachment node 2 had is revoked: sync says EIDRM
    apid, addr = root.attach(private.segid, 64 * 1024)
    root.ok("write %d 4096 7" % addr)
    private.kill()
    wait_revoked(n2, "exporter exited")
    root.err("sync %d 65536" % addr, errno.EIDRM, says=("revoked", "exporter exited"))
    root.err("get %d rw" % private.segid, errno.ENOENT, says=("at node 1", "exporter exited"))
    root.ok("detach %d" % addr)  # a revoked attachment detaches without writing back
    root.ok("release %s" % apid)
    # ENOENT: removed by its owner (root, on node 1), while node 2 holds a grant
    apid = root.ok("get %d ro" % shared.segid)["apid"]
    Api(n1).ok("remove %d" % shared.segid)
    root.err("get %d ro" % shared.segid, errno.ENOENT, says=("at node 1", "removed"))
    root.ok("release %s" % apid)
    # ... and once no grant refers to it, node 1 has forgotten it: still ENOENT
    root.err("get %d ro" % shared.segid, errno.ENOENT, says=("at node 1", "no segment"))
    shared.close()


@with_nodes(2)
def test_local_checks_on_a_remote_segment(c):
    n1, n2 = c.node(1), c.node(2)
    e = exporter(n1, 64 * 1024, 3)
    a = Api(n2)
    # EINVAL / ENOENT that node 2 decides alone
    a.err("get 12345 ro", errno.EINVAL, says=("not a segid",))
    a.err("get %d ro" % ((9 << 48) | (1 << 32) | 1), errno.ENOENT, says=("node 9",))
    a.err("release 12345", errno.EINVAL)
    a.err("lookup %s" % ("x" * 256), errno.EINVAL)
    apid = a.ok("get %d rw" % e.segid)["apid"]
    # the segment's size came from node 1: a range past it is EINVAL
    a.err("attach %s %d 4096" % (apid, 64 * 1024), errno.EINVAL, says=("outside the segment",))
    a.err("attach %s 0 %d" % (apid, 128 * 1024), errno.EINVAL, says=("outside the segment",))
    addr = int(a.ok("attach %s 0 65536" % apid)["addr"], 16)
    # EBUSY: the apid still has an attachment
    a.err("release %s" % apid, errno.EBUSY, says=("attachments",))
    a.err("sync %d 4096" % (addr + 65536), errno.EINVAL)     # not inside the attachment
    a.err("acquire %d 4096" % (addr + 65536), errno.EINVAL)
    a.ok("write %d 4096 9" % addr)
    a.ok("sync %d 4096" % addr)
    a.ok("acquire %d 65536" % addr)
    a.ok("detach %d" % addr)
    a.err("detach %d" % addr, errno.EINVAL, says=("no attachment",))
    a.ok("release %s" % apid)
    a.err("release %s" % apid, errno.EINVAL)
    e.close()


@with_nodes(2)
def test_owner_and_name_errors(c):
    n1, n2 = c.node(1), c.node(2)
    e = exporter(n1, 64 * 1024, 4, name="errs-a")  # owned by root
    other = Api(n1, uid=NOBODY)
    home = Api(n1)
    remote = Api(n2)
    # EPERM: not the owner (checked at the home, where remove and publish act)
    other.err("remove %d" % e.segid, errno.EPERM, says=("owner",))
    other.err("publish %d errs-b" % e.segid, errno.EPERM, says=("owner",))
    # EEXIST: the name is taken on this node
    e2 = exporter(n1, 64 * 1024, 5)
    home.err("publish %d errs-a" % e2.segid, errno.EEXIST, says=("taken",))
    home.ok("publish %d errs-b" % e2.segid)
    # remove and publish act at the home only: from node 2 there is no such segment
    remote.err("remove %d" % e.segid, errno.ENOENT)
    remote.err("publish %d errs-c" % e.segid, errno.ENOENT)
    # lookup asks the peers: found on node 1, or ENOENT
    got = remote.ok("lookup errs-a")
    expect(int(got["segid"]) == e.segid and int(got["size"]) == 64 * 1024, "lookup: %s" % got)
    remote.err("lookup errs-none", errno.ENOENT, says=("on any node",))
    # the owner may; a second remove finds nothing
    home.ok("remove %d" % e.segid)
    home.err("remove %d" % e.segid, errno.ENOENT)
    home.err("publish %d errs-d" % e.segid, errno.ENOENT)
    e.close()
    e2.close()


@with_nodes(2, daemon_args=FAST)
def test_fenced_node_gets_eidrm(c):
    """Fencing, provoked as test_invalidation.py does: node 2 caches a page
    and is frozen while the exporter unmaps it; node 1 fences it after the
    ack deadline. Deterministic: node 2 cannot ack while stopped."""
    n1, n2 = c.node(1), c.node(2)
    e = exporter(n1, MiB, 1)
    a = Api(n2)
    apid, addr = a.attach(e.segid, MiB)
    a.ok("read %d" % addr)                       # node 2 caches page 0
    a.ok("write %d 4096 9" % (addr + 32768))     # and dirties page 8
    freeze(n2)
    try:
        r = e.command("munmap 0 4096")
    finally:
        thaw(n2)
    expect(r.startswith("ok "), "exporter munmap: " + r)
    wait_revoked(n2, "fenced")
    # the revoked attachment: its unsynced write is reported lost
    a.err("sync %d %d" % (addr, MiB), errno.EIDRM, says=("revoked", "fenced"))
    expect(e.verify(1, 32768, 4096) == "ok", "a fenced node's write reached the exporter")
    # node 1 refuses node 2 the segment from now on
    a.err("get %d ro" % e.segid, errno.EIDRM, says=("at node 1", "revoked for node 2"))
    a.ok("detach %d" % addr)
    a.ok("release %s" % apid)
    e.close()


@with_nodes(2)
def test_write_back_errors_from_the_home(c):
    n1, n2 = c.node(1), c.node(2)
    e = exporter(n1, MiB, 1)
    a = Api(n2)
    apid, addr = a.attach(e.segid, MiB)
    # EACCES over the data wire: the exporter made page 4 read-only (the
    # user-space notifier does not see mprotect), so node 1 refuses the write
    r = e.command("mprotect 16384 4096 r")
    expect(r.startswith("ok "), "mprotect: " + r)
    a.ok("write %d 4096 5" % (addr + 16384))
    a.err("sync %d 4096" % (addr + 16384), errno.EACCES, says=("node 1",))
    r = e.command("mprotect 16384 4096 rw")
    expect(r.startswith("ok "), "mprotect: " + r)
    a.ok("sync %d 4096" % (addr + 16384))       # the page stayed dirty: it goes now
    # EIO: writes to memory the exporter then unmapped are reported lost, once
    a.ok("write %d 4096 6" % (addr + 8192))
    r = e.command("munmap 8192 4096")
    expect(r.startswith("ok "), "munmap: " + r)
    a.err("sync %d %d" % (addr, MiB), errno.EIO, says=("discarded",))
    a.ok("sync %d %d" % (addr, MiB))
    # EIDRM: the owner removed the segment at node 1; node 2's attachment is revoked
    a.ok("write %d 4096 7" % addr)
    Api(n1).ok("remove %d" % e.segid)
    wait_revoked(n2, "segment removed")
    a.err("sync %d %d" % (addr, MiB), errno.EIDRM, says=("revoked", "removed"))
    a.ok("detach %d" % addr)
    a.ok("release %s" % apid)
    e.close()


# Leases off: this walks the data path's errors while the home is frozen,
# stopped and restarted, each longer than a lease. With leases node 2
# revokes the attachment instead once its lease runs out, or at once when
# the restarted home answers a renewal (EIDRM; test_leases.py).
@with_nodes(2, daemon_args=("--lease_ms=0",))
def test_home_unreachable(c):
    n1, n2 = c.node(1), c.node(2)
    e = exporter(n1, MiB, 1, name="errs-home")
    a = Api(n2)
    apid, addr = a.attach(e.segid, MiB)
    a.ok("write %d 4096 7" % addr)
    a.ok("sync %d 4096" % addr)                 # the data connection is up
    # frozen: node 1 does not answer within the RPC timeout
    freeze(n1)
    try:
        t0 = time.time()
        a.err("get %d ro" % e.segid, errno.EHOSTUNREACH, says=("at node 1", "unreachable"))
        took = time.time() - t0
        expect(took >= RPC_TIMEOUT_S * 0.9, "EHOSTUNREACH after %.1f s, before the timeout" % took)
        # a lookup skips a node that does not answer
        a.err("lookup errs-home", errno.ENOENT, says=("on any node",))
    finally:
        thaw(n1)
    a.ok("sync %d 4096" % addr)
    # stopped: the control plane says EHOSTUNREACH, the data path the
    # connect error to the port it knows (docs/consistency.md); the dirty
    # page is kept for a later sync
    n1.stop()
    a.err("get %d ro" % e.segid, errno.EHOSTUNREACH, says=("at node 1", "unreachable"))
    a.ok("write %d 4096 8" % addr)
    a.err("sync %d 4096" % addr, errno.ECONNREFUSED, says=("node 1",))
    a.err("sync %d 4096" % addr, errno.ECONNREFUSED, says=("node 1",))
    # tetherctl status drops the data endpoint it knew and asks node 1 for
    # it again, which fails: the write-back now fails at that question
    n2.ctl("status")
    a.err("sync %d 4096" % addr, errno.EHOSTUNREACH, says=("node 1", "unreachable"))
    # restarted: node 1 answers again, but has no such segment any more
    n1.start()
    deadline = time.time() + 10
    while not re.search(r"^1\s+\S+\s+\S+\s+up\b", n2.ctl("status").stdout, re.M):
        expect(time.time() < deadline, "node 2 does not see node 1 again: " +
               n2.ctl("status").stdout)
        time.sleep(0.2)
    a.err("sync %d 4096" % addr, errno.ENOENT, says=("node 1",))
    # detach fails the same way, but the attachment is gone anyway
    a.err("detach %d" % addr, errno.ENOENT, says=("node 1",))
    a.err("sync %d 4096" % addr, errno.EINVAL)
    a.ok("release %s" % apid)  # release never reports the home's errors
    e.close()


@with_nodes(2)
def test_local_daemon_not_running(c):
    n1, n2 = c.node(1), c.node(2)
    e = exporter(n1, 64 * 1024, 1)
    a = Api(n2)
    apid, addr = a.attach(e.segid, 64 * 1024)
    n2.stop()
    # under a running process: its attachment is lost, every call ENOTCONN
    a.err("sync %d 4096" % addr, errno.ENOTCONN)
    a.err("get %d ro" % e.segid, errno.ENOTCONN)
    a.err("release %s" % apid, errno.ENOTCONN)
    # a process started while no daemon runs
    b = Api(n2)
    b.err("get %d ro" % e.segid, errno.ENOTCONN, says=("cannot reach tetherd",))
    b.err("lookup anything", errno.ENOTCONN, says=("cannot reach tetherd",))
    b.err("make 65536 0600", errno.ENOTCONN, says=("cannot reach tetherd",))
    # node 1 is unaffected
    a1 = Api(n1)
    a1.ok("release %s" % a1.ok("get %d ro" % e.segid)["apid"])
    e.close()


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")], default_nodes=2)
