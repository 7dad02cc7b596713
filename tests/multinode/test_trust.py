#!/usr/bin/env python3
"""Host multi-node tests of trust between and inside nodes (issue 17):

- root squash: a mapper's uid 0 on another node acts as nobody (65534) at
  the home unless the home trusts that node (--trusted_peers);
- names owned by their creator: "OWNER/..." may be published only by
  OWNER (or root), and is found from any node;
- least privilege: a running tetherd holds exactly the capabilities
  common/capabilities.h names, in every set, the bounding set included.

Clients are `tt api` (tests/tools/tt.c), as in test_errors.py."""
import errno
import os

from cluster import Exporter
from harness import Failure, expect, run, with_nodes
from test_errors import Api

NOBODY = 65534
# linux/capability.h
CAP_DAC_READ_SEARCH, CAP_IPC_LOCK, CAP_SYS_PTRACE = 2, 14, 19


# tetherd's default (no --trusted_peers); cluster.py trusts all by default.
@with_nodes(2, daemon_args=("--trusted_peers=",))
def test_remote_root_is_squashed(c):
    n1, n2 = c.node(1), c.node(2)
    owner = Api(n1)  # root on node 1 exports a segment only root may use
    segid = int(owner.ok("make 65536 0600")["segid"])
    owner.ok("release %s" % owner.ok("get %d rw" % segid)["apid"])  # root here: allowed
    root2 = Api(n2)
    root2.err("get %d rw" % segid, errno.EACCES, says=("at node 1", "squashed"))
    root2.err("get %d ro" % segid, errno.EACCES, says=("uid 65534",))


@with_nodes(2, daemon_args={1: ("--trusted_peers=2",), 2: ("--trusted_peers=",)})
def test_trusted_peer_keeps_its_root(c):
    n1, n2 = c.node(1), c.node(2)
    owner = Api(n1)
    segid = int(owner.ok("make 65536 0600")["segid"])
    root2 = Api(n2)
    apid = root2.ok("get %d rw" % segid)["apid"]
    addr = root2.ok("attach %s 0 65536" % apid)["addr"]
    expect(addr, "no attachment address")
    # Node 1 trusts node 2, not the other way round: node 2 squashes node 1.
    exp2 = Api(n2)
    segid2 = int(exp2.ok("make 65536 0600")["segid"])
    Api(n1).err("get %d rw" % segid2, errno.EACCES, says=("squashed",))


@with_nodes(2, daemon_args=("--trusted_peers=",))
def test_names_belong_to_their_owner(c):
    n1, n2 = c.node(1), c.node(2)
    alice = Api(n1, uid=1000)
    seg = int(alice.ok("make 65536 0644")["segid"])
    alice.err("publish %d %d/db" % (seg, NOBODY), errno.EPERM, says=("belongs to uid 65534",))
    alice.ok("publish %d 1000/db" % seg)
    # Another uid cannot take it, on this node or on another one.
    mallory = Api(n1, uid=1001)
    seg_m = int(mallory.ok("make 65536 0644")["segid"])
    mallory.err("publish %d 1000/db" % seg_m, errno.EPERM)
    mallory2 = Api(n2, uid=1001)
    seg_m2 = int(mallory2.ok("make 65536 0644")["segid"])
    mallory2.err("publish %d 1000/db" % seg_m2, errno.EPERM)
    # An unowned name held by alice's segment: not taken by another either.
    seg2 = int(alice.ok("make 65536 0644")["segid"])
    alice.ok("publish %d shared-db" % seg2)
    mallory.err("publish %d shared-db" % seg_m, errno.EEXIST)
    # Everyone finds alice's name, from any node.
    got = Api(n2, uid=NOBODY).ok("lookup 1000/db")
    expect(int(got["segid"]) == seg, "lookup from node 2: %r, want segid %d" % (got, seg))


def cap_sets(pid):
    sets = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":")
                sets[k] = int(v.strip(), 16)
    return sets


@with_nodes(1)
def test_daemon_keeps_only_the_capabilities_it_needs(c):
    n1 = c.node(1)
    if n1.agent or os.geteuid() != 0:
        raise Failure("needs a local tetherd started as root")
    sets = cap_sets(n1.daemon.pid)
    want = (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE) | (1 << CAP_IPC_LOCK)
    for k in ("CapEff", "CapPrm", "CapBnd"):
        expect(sets[k] == want, "tetherd %s is %#x, want %#x" % (k, sets[k], want))
    for k in ("CapInh", "CapAmb"):
        expect(sets[k] == 0, "tetherd %s is %#x, want 0" % (k, sets[k]))
    # Every thread: capabilities are per thread.
    for tid in os.listdir("/proc/%d/task" % n1.daemon.pid):
        eff = cap_sets(int(tid))["CapEff"]
        expect(eff == want, "tetherd thread %s has CapEff %#x" % (tid, eff))
    with open(n1.log) as f:
        log = f.read()
    expect("capabilities: kept cap_dac_read_search,cap_ipc_lock,cap_sys_ptrace" in log,
           "the log does not say which capabilities were kept")
    # And it still serves an exporter of another uid, which is what they are
    # for: tt export exec'd as uid 1000 (so its /proc/<pid>/mem is 1000's,
    # mode 0600: CAP_DAC_READ_SEARCH), with CAP_SYS_PTRACE of its own only
    # for its userfaultfd; a mapper reads it (process_vm_readv of a uid-1000
    # process: CAP_SYS_PTRACE).
    e = Exporter(n1, 256 * 1024, 7, mode=0o644,
                 prefix=("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                         "--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace"))
    procs = getattr(c, "extra_procs", [])
    procs.append(e.proc)
    c.extra_procs = procs
    with open("/proc/%d/status" % e.proc.pid) as f:
        uid = [l.split()[1] for l in f if l.startswith("Uid:")][0]
    expect(uid == "1000", "the exporter runs as uid %s" % uid)
    r = n1.tt("map", "--segid", e.segid, "--len", 256 * 1024, "--verify", 7, "--rdonly")
    expect(r.returncode == 0 and "done" in r.stdout, "tt map: %s" % (r.stdout + r.stderr))


if __name__ == "__main__":
    run([test_remote_root_is_squashed, test_trusted_peer_keeps_its_root,
         test_names_belong_to_their_owner, test_daemon_keeps_only_the_capabilities_it_needs])
