#!/usr/bin/env python3
"""Reloading the peer list (issue 18): SIGHUP and `tetherctl reload` read
the --peers line of the daemon's --flagfile again. An added peer becomes
reachable; a peer in use (this node maps a segment it homes, or it maps one
homed here) cannot be dropped: the reload is refused with the reason and
the old list stays; once unused it is dropped; a bad file changes
nothing."""
import re
import signal
import time

from cluster import Exporter, Mapper
from harness import Failure, expect, run, with_nodes

ENOENT = 2  # an unknown home: "node N is not in this cluster"
MiB = 1 << 20


def log_of(node):
    with open(node.log, errors="replace") as f:
        return f.read()


def wait_log(node, pattern, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(pattern, log_of(node))
        if m:
            return m
        time.sleep(0.1)
    raise Failure("node %d: no log line matching %r in %d s; log ends:\n%s" %
                  (node.id, pattern, timeout, log_of(node)[-3000:]))


def write_peers(node, *ids):
    with open(node.peers_file, "w") as f:
        f.write("# test_reload.py\n--peers=%s\n" %
                ",".join("%d=%s:7600" % (i, node.cluster.node(i).ip) for i in ids))


def status_peers(node):
    r = node.ctl("status")
    expect(r.returncode == 0, "status: " + r.stdout + r.stderr)
    return sorted(int(m) for m in re.findall(r"^(\d+)\s+\S+:7600\s", r.stdout, re.M))


def map_result(node, segid, seed):
    return node.tt("map", "--segid", segid, "--len", MiB, "--verify", seed)


@with_nodes(3)
def test_reload_adds_and_drops_peers(c):
    n1, n3 = c.node(1), c.node(3)
    # Node 1 starts from a config file that names node 2 only.
    n1.stop()
    n1.peers_file = "%s/n1.conf" % c.dir
    write_peers(n1, 2)
    n1.start()
    expect(status_peers(n1) == [2], "node 1's peers at start: %s" % status_peers(n1))
    e3 = Exporter(n3, MiB, 5)
    r = map_result(n1, e3.segid, 5)
    expect(r.returncode == 1 and "errno=%d " % ENOENT in r.stdout and
           "node 3 is not in this cluster" in r.stdout,
           "node 1 mapped node 3's segment before knowing node 3: " + r.stdout + r.stderr)

    # Added by SIGHUP: reachable at once.
    write_peers(n1, 2, 3)
    n1.daemon.send_signal(signal.SIGHUP)
    wait_log(n1, r"reload: peers: added 3; removed none; new address none")
    r = map_result(n1, e3.segid, 5)
    expect(r.returncode == 0 and "verified %d bytes" % MiB in r.stdout,
           "node 1 cannot map node 3's segment after the reload: " + r.stdout + r.stderr)
    expect(status_peers(n1) == [2, 3], "peers after adding 3: %s" % status_peers(n1))

    # In use one way: node 1 maps a segment node 3 homes.
    m = Mapper(n1, e3.segid, length=MiB)
    write_peers(n1, 2)
    r = n1.ctl("reload")
    expect(r.returncode != 0 and "node 3 would be dropped but this node maps segments it homes"
           in r.stderr, "reload dropped a peer this node maps from: " + r.stdout + r.stderr)
    expect(m.command("verify 5 0 8192") == "ok", "the mapping broke after a refused reload")
    expect(status_peers(n1) == [2, 3], "refused reload changed the peers: %s" % status_peers(n1))
    m.close()

    # In use the other way: node 3 maps a segment node 1 homes.
    e1 = Exporter(n1, MiB, 7)
    m3 = Mapper(n3, e1.segid, length=MiB)
    expect(m3.command("verify 7 0 4096") == "ok", "node 3 cannot map node 1's segment")
    n1.daemon.send_signal(signal.SIGHUP)
    wait_log(n1, r"reload: node 3 would be dropped but it maps segment %#x homed here.*the peer "
             r"list in use stays" % e1.segid)
    expect(status_peers(n1) == [2, 3], "refused reload changed the peers: %s" % status_peers(n1))
    m3.close()

    # Unused now: dropped.
    r = n1.ctl("reload")
    expect(r.returncode == 0 and "peers: added none; removed 3" in r.stdout,
           "reload: " + r.stdout + r.stderr)
    expect(status_peers(n1) == [2], "peers after dropping 3: %s" % status_peers(n1))
    r = map_result(n1, e3.segid, 5)
    expect(r.returncode == 1 and "errno=%d " % ENOENT in r.stdout and
           "node 3 is not in this cluster" in r.stdout,
           "node 1 still maps from dropped node 3: " + r.stdout + r.stderr)
    e1.close()
    e3.close()


@with_nodes(2)
def test_bad_peer_file_keeps_the_old_list(c):
    n1 = c.node(1)
    n1.stop()
    n1.peers_file = "%s/n1.conf" % c.dir
    write_peers(n1, 2)
    n1.start()
    # This node's own id, then an entry that does not parse.
    for bad, why in (("--peers=1=%s:7600\n" % n1.ip, "names this node's own id"),
                     ("--peers=2:10.0.0.2:7600\n", "bad --peers entry")):
        with open(n1.peers_file, "w") as f:
            f.write(bad)
        r = n1.ctl("reload")
        expect(r.returncode != 0 and "peers not reloaded" in r.stderr and why in r.stderr,
               "bad file %r: %s" % (bad, r.stdout + r.stderr))
        wait_log(n1, re.escape(why) + r".*the peer list in use stays")
        expect(status_peers(n1) == [2], "a bad file changed the peers: %s" % status_peers(n1))
    e2 = Exporter(c.node(2), MiB, 9)
    r = map_result(n1, e2.segid, 9)
    expect(r.returncode == 0, "node 2 unreachable after bad reloads: " + r.stdout + r.stderr)
    e2.close()


if __name__ == "__main__":
    run([test_reload_adds_and_drops_peers, test_bad_peer_file_keeps_the_old_list])
