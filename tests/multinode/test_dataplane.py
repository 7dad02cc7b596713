#!/usr/bin/env python3
"""Host multi-node tests of the data plane's authentication (issue 17): real
tetherd daemons in network namespaces. A data connection opens with a
challenge and response in both directions (daemon/transport/wire_format.h,
data_token.h): fresh nonces on both sides, HMAC proofs of the per-pair data
token, which itself never crosses the data link. The tests watch the wire
with a packet tap on the hub's bridge (wiretap.py, no tcpdump) and play
handshakes of their own from a node's namespace:

- normal traffic works, and a real mapper's recorded handshake, replayed on
  a new connection from the same node, is refused;
- a dialer with a wrong token is refused, with a log line that says so.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from cluster import Exporter
from harness import Failure, expect, run, with_nodes

MiB = 1 << 20
HELLO, HELLO_ACK, AUTH, AUTH_ACK = 1, 2, 10, 11
EACCES = 13
WIRETAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wiretap.py")


def log_of(node):
    with open(node.log) as f:
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


def data_address(node):
    """host:port of the node's tcp data listener (its start line)."""
    m = wait_log(node, r"data on (\S+:\d+) \(tcp\)")
    return m.group(1)


def map_ok(node, *args):
    r = node.tt("map", *args)
    expect(r.returncode == 0 and "done" in r.stdout,
           "tt map %s on node %d: rc=%d %s" % (" ".join(map(str, args)), node.id,
                                               r.returncode, r.stdout + r.stderr))


class Tap:
    """Every TCP segment to and from `node` while it runs: its link's port
    on the hub's bridge (a bridge device itself sees only what is addressed
    to it); in the flat cluster, lo."""

    def __init__(self, c, node):
        self.out = tempfile.mktemp(prefix="tether-tap-", suffix=".json")
        iface = "lo" if c.flat else "%sp%d" % (c.prefix, node.id)
        cmd = [sys.executable, WIRETAP, "tap", iface, self.out]
        if not c.flat:
            cmd = ["ip", "netns", "exec", c.hub] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        c.extra_procs = getattr(c, "extra_procs", []) + [self.proc]
        expect(self.proc.stdout.readline().strip() == "ready", "the wire tap did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        with open(self.out) as f:
            segs = json.load(f)
        os.unlink(self.out)
        return segs


def streams_to(segs, src_ip, dst_addr):
    """The byte streams src_ip sent to dst_addr (host:port), one per
    connection, in the order the connections began."""
    host, port = dst_addr.rsplit(":", 1)
    flows = {}
    for s in segs:
        if s["src"] == src_ip and s["dst"] == host and s["dport"] == int(port):
            flows.setdefault(s["sport"], {})[s["seq"]] = bytes.fromhex(s["data"])
    out = []
    for sport, by_seq in flows.items():
        base = min(by_seq)
        data = b"".join(by_seq[k] for k in sorted(by_seq, key=lambda q: (q - base) & 0xffffffff))
        out.append(data)
    return out


def handshake_of(stream):
    """The dialer's handshake frames at the start of a stream (HELLO and,
    with the nonce handshake, AUTH): the bytes a replay would send."""
    off = 0
    while off + 48 <= len(stream):
        ftype = int.from_bytes(stream[off + 6:off + 8], "little")
        length = int.from_bytes(stream[off + 40:off + 44], "little")
        if ftype not in (HELLO, AUTH):
            break
        off += 48 + length
    return stream[:off]


@with_nodes(2)
def test_a_replayed_handshake_is_refused(c):
    """Node 2 maps node 1's segment while the tap records the wire; then
    the first handshake node 2 sent is sent again, byte for byte, from node
    2's namespace on a new connection. Node 1 must refuse it (the nonce it
    picks is new, so the recorded proof is wrong) and say so in its log."""
    n1, n2 = c.node(1), c.node(2)
    addr = data_address(n1)
    tap = Tap(c, n2)
    e = Exporter(n1, 1 * MiB, 77)
    map_ok(n2, "--segid", e.segid, "--len", 1 * MiB, "--verify", 77)  # normal traffic works
    segs = tap.stop()
    streams = streams_to(segs, n2.ip, addr)
    expect(streams, "the tap saw no data connection from node 2 to node 1 at %s" % addr)
    recorded = handshake_of(streams[0])
    expect(recorded, "no handshake at the start of the stream: %r" % streams[0][:96])
    r = n2.run([sys.executable, WIRETAP, "replay", addr, recorded.hex()], timeout=30)
    expect(r.returncode == 0, "replay: %s" % (r.stdout + r.stderr))
    answers = json.loads(r.stdout)
    refused = any(a["status"] == EACCES for a in answers)
    expect(refused, "node 1 accepted a replayed handshake (answers: %s)" % answers)
    wait_log(n1, r"data connection from %s:\d+: refused: claims node 2 but its proof is wrong" %
             re.escape(n2.ip))
    # The node itself still gets through on a connection of its own.
    map_ok(n2, "--segid", e.segid, "--len", 64 * 1024, "--verify", 77)
    e.close()


@with_nodes(2)
def test_a_wrong_token_is_refused_with_a_clear_log_line(c):
    """A dialer in node 2's namespace claims node 2 with a token that is
    not node 2's: node 1's proof does not check out for it, and node 1
    refuses the dialer's proof (AUTH_ACK EACCES) and logs why."""
    n1, n2 = c.node(1), c.node(2)
    addr = data_address(n1)
    r = n2.run([sys.executable, WIRETAP, "dial", addr, "2", "1", "ab" * 32], timeout=30)
    expect(r.returncode == 0, "dial: %s" % (r.stdout + r.stderr))
    res = json.loads(r.stdout)
    expect(res.get("hello_ack_status") == 0, "node 1 refused the hello itself: %s" % res)
    expect(res.get("listener_proof_ok") is False,
           "node 1 proved a token the dialer does not share: %s" % res)
    expect(res.get("auth_ack_type") == AUTH_ACK and res.get("auth_ack_status") == EACCES,
           "node 1 did not refuse a wrong token: %s" % res)
    wait_log(n1, r"data connection from %s:\d+: refused: claims node 2 but its proof is wrong "
             r"\(a wrong or stale data token, or a replayed handshake\)" % re.escape(n2.ip))
    # A node id that is not one is refused at the hello.
    r = n2.run([sys.executable, WIRETAP, "dial", addr, "0", "1", "ab" * 32], timeout=30)
    res = json.loads(r.stdout)
    expect(res.get("hello_ack_status") == EACCES, "node id 0 was not refused: %s" % res)
    # The cluster is unharmed.
    e = Exporter(n1, 256 * 1024, 5)
    map_ok(n2, "--segid", e.segid, "--len", 256 * 1024, "--verify", 5)
    e.close()


if __name__ == "__main__":
    run([test_a_replayed_handshake_is_refused,
         test_a_wrong_token_is_refused_with_a_clear_log_line])
