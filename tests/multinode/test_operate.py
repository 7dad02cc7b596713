#!/usr/bin/env python3
"""Host multi-node tests of what an operator sees and does (issue 18):
each node's Prometheus endpoint (GET /metrics, docs/metrics.md) and its
counters moving with a read, a write-back and an invalidation; `tetherctl
stats`; `tetherctl drain`/`undrain` (new exports and attachments refused,
existing ones kept, dirty pages written back); `tetherctl revoke SEGID`
(every mapper fenced: SIGBUS on its next access, the exporter's memory
untouched); tetherctl's errors (JSON, the hint when tetherd is not
running) and `segments --cluster` naming the peers it could not reach."""
import json
import os
import signal
import time

from cluster import Exporter, Mapper
from harness import Failure, expect, freeze, run, scrape

MiB = 1 << 20
EBUSY, ENOENT, SIGBUS = 16, 2, 7

def moved(before, after, key):
    return after.get(key, 0) - before.get(key, 0)


def test_metrics_move_with_reads_write_backs_and_invalidations(c):
    n1, n2 = c.node(1), c.node(2)
    via = "rdma" if c.rdma else "tcp"
    e = Exporter(n1, 64 * 1024, 3)
    h0, m0 = scrape(n1), scrape(n2)
    expect(any(k.startswith('tether_info{node="2",') for k in m0), "tether_info: %s" % sorted(m0))
    expect(any(k.startswith("tether_notifier_source{source=") for k in m0),
           "the notifier source in use is exported: %s" % sorted(m0))
    # A read: 16 pages fetched from node 1 by node 2's faults.
    m = Mapper(n2, e.segid, length=64 * 1024)
    expect(m.command("verify 3 0 65536") == "ok", "read")
    h1, m1 = scrape(n1), scrape(n2)
    fetched = 'tether_fetched_bytes_total{peer="1",transport="%s"}' % via
    expect(moved(m0, m1, fetched) >= 65536, "node 2 fetched from node 1: %s" %
           {k: v for k, v in m1.items() if "fetched" in k})
    expect(moved(m0, m1, 'tether_faults_total{kind="missing"}') >= 1, "missing faults counted")
    expect(moved(m0, m1, "tether_fault_fetch_seconds_count") >= 1, "fetch latency observed")
    expect(m1.get('tether_fault_fetch_seconds_bucket{le="+Inf"}') ==
           m1.get("tether_fault_fetch_seconds_count"), "+Inf bucket == count")
    expect(moved(h0, h1, "tether_served_bytes_total") >= 65536, "node 1 served the read")
    expect(m1.get("tether_cache_resident_bytes", 0) >= 65536, "the cache holds the pages")
    expect(m1.get("tether_attachments") == 1 and h1.get("tether_segments_exported") == 1,
           "gauges: %s %s" % (m1.get("tether_attachments"), h1.get("tether_segments_exported")))
    # A write-back.
    expect(m.command("write 5 0 4096") == "ok" and m.command("sync") == "ok", "write, sync")
    m2 = scrape(n2)
    expect(moved(m1, m2, 'tether_written_back_bytes_total{peer="1",transport="%s"}' % via) > 0,
           "node 2 wrote back to node 1: %s" % {k: v for k, v in m2.items() if "written" in k})
    expect(moved(m1, m2, 'tether_faults_total{kind="write_protect"}') >= 1,
           "the first store to a clean page is a write-protect fault")
    # An invalidation: node 1's exporter drops pages node 2 caches.
    r = e.command("dontneed 0 8192")
    expect(r.startswith("ok"), "dontneed: " + r)
    h3, m3 = scrape(n1), scrape(n2)
    expect(moved(h1, h3, "tether_home_invalidations_total") >= 1, "node 1 opened a window")
    expect(moved(h1, h3, "tether_home_invalidation_seconds_count") >= 1,
           "node 1 timed the fan-out")
    expect(moved(m2, m3, 'tether_mapper_invalidations_total{kind="begin"}') >= 1,
           "node 2 applied the range_begin")
    # tetherctl stats: the same registry, as protobuf JSON.
    r = n2.ctl("--json", "stats")
    expect(r.returncode == 0, "tetherctl stats: " + r.stdout + r.stderr)
    stats = json.loads(r.stdout)["metrics"]
    got = [s for s in stats if s["name"] == "tether_fetched_bytes_total" and
           s["labels"] == {"peer": "1", "transport": via}]
    expect(got and got[0]["value"] >= 65536 and got[0]["type"] == "counter",
           "tetherctl stats: %s" % got)
    r = n2.ctl("stats")
    expect(r.returncode == 0 and "tether_fault_fetch_seconds" in r.stdout and "p99" in r.stdout,
           "tetherctl stats (table): " + r.stdout)
    m.close()
    e.close()


def api(node):
    from cluster import InteractiveClient
    return InteractiveClient(node, [node.cluster.tt, "api"], "tt api")


def test_drain_refuses_new_work_and_keeps_what_exists(c):
    n1, n2, n3 = c.node(1), c.node(2), c.node(3)
    e = Exporter(n1, 64 * 1024, 3)
    m = Mapper(n2, e.segid, length=64 * 1024)
    expect(m.command("verify 3 0 8192") == "ok", "read before the drain")
    expect(m.command("write 5 0 4096") == "ok", "a dirty page, not synced")
    r = n2.ctl("--json", "drain")
    expect(r.returncode == 0, "tetherctl drain: " + r.stdout + r.stderr)
    d = json.loads(r.stdout)
    expect(d["draining"] and d["attachments"] == 1 and int(d["written_back_bytes"]) > 0,
           "drain: %s" % d)
    expect(e.verify(5, 0, 4096) == "ok", "the drain wrote the dirty page back to its home")
    st = json.loads(n2.ctl("--json", "status").stdout)
    expect(st["draining"], "status shows draining: %s" % st)
    expect("DRAINING" in n2.ctl("status").stdout, "the table says so")
    # New work on node 2 is refused, with a message that says why.
    a = api(n2)
    r = a.command("make 65536 0644")
    expect(r.startswith("error: errno=%d" % EBUSY) and "draining" in r, "export: " + r)
    r = a.command("get %d rw" % e.segid)
    expect(r.startswith("error: errno=%d" % EBUSY) and "draining" in r, "get: " + r)
    a.close()
    # What exists keeps working: reads, writes, write-backs.
    expect(m.command("verify 3 8192 8192") == "ok", "a read after the drain")
    expect(m.command("write 6 4096 4096") == "ok" and m.command("sync") == "ok", "a sync")
    expect(e.verify(6, 4096, 4096) == "ok", "the write-back landed")
    # A draining home grants nobody new: node 3 may not attach node 1's.
    r = n1.ctl("drain")
    expect(r.returncode == 0 and "draining" in r.stdout, "drain node 1: " + r.stdout + r.stderr)
    r = n3.tt("map", "--segid", e.segid, "--len", 4096)
    expect(r.returncode == 1 and "errno=%d" % EBUSY in r.stdout and "node 1 is draining"
           in r.stdout, "attach of a draining home's segment: " + r.stdout)
    for n in (n1, n2):
        r = n.ctl("undrain")
        expect(r.returncode == 0 and "not draining" in r.stdout, "undrain: " + r.stdout)
    r = n3.tt("map", "--segid", e.segid, "--offset", 8192, "--len", 4096, "--verify", 3)
    expect(r.returncode == 0 and "done" in r.stdout, "attach after undrain: " + r.stdout)
    m.close()
    e.close()


def wait_for(what, cond, timeout=20):
    """Polls `cond` (a state the daemons report) until it holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    expect(False, "timed out waiting for " + what)


def test_revoke_fences_every_mapper_and_keeps_the_segment(c):
    n1, n2, n3 = c.node(1), c.node(2), c.node(3)
    e = Exporter(n1, 64 * 1024, 3)
    m2 = Mapper(n2, e.segid, length=64 * 1024)
    m3 = Mapper(n3, e.segid, length=64 * 1024)
    for m in (m2, m3):
        expect(m.command("verify 3 0 65536") == "ok", "read before the revoke")
    # Refused: not homed here, no such segment, not a segid.
    r = n2.ctl("--json", "revoke", str(e.segid))
    expect(r.returncode == 1 and "homed on node 1" in json.loads(r.stdout)["error"],
           "revoke on another node: " + r.stdout + r.stderr)
    r = n1.ctl("--json", "revoke", str(e.segid + 1))
    expect(r.returncode == 1 and json.loads(r.stdout)["errno"] == ENOENT,
           "revoke of no segment: " + r.stdout + r.stderr)
    r = n1.ctl("revoke", "matrix")
    expect(r.returncode == 2 and "not a segid" in r.stderr, "revoke matrix: " + r.stderr)
    r = n1.ctl("--json", "revoke", hex(e.segid), "maintenance")
    expect(r.returncode == 0, "tetherctl revoke: " + r.stdout + r.stderr)
    expect(sorted(json.loads(r.stdout)["nodes"]) == [2, 3], "nodes fenced: " + r.stdout)
    # The REVOKE reaches each mapper node; then the next access is SIGBUS.
    for n, m in ((n2, m2), (n3, m3)):
        wait_for("node %d to apply the REVOKE" % n.id,
                 lambda: scrape(n).get("tether_copies_revoked_total", 0) >= 1)
        expect(m.command("read 0") == "signal:%d" % SIGBUS, "node %d reads after revoke" % n.id)
    # The exporter's memory and the segment stay; node 2 may not attach again.
    expect(e.verify(3, 0, 65536) == "ok", "exported memory untouched")
    segs = json.loads(n1.ctl("--json", "segments").stdout)["segments"]
    expect([s for s in segs if s["segid"] == str(e.segid)], "the segment is still exported")
    h = scrape(n1)
    expect(h.get("tether_fenced_nodes") == 2 and h.get("tether_fences_total", 0) >= 2,
           "fences: %s %s" % (h.get("tether_fenced_nodes"), h.get("tether_fences_total")))
    r = n2.tt("map", "--segid", e.segid, "--len", 4096)
    expect(r.returncode == 1 and "maintenance" in r.stdout, "re-attach after revoke: " + r.stdout)
    e.close()


def test_tetherctl_errors_and_unreachable_peers(c):
    n1, n3 = c.node(1), c.node(3)
    # No daemon at the socket: exit 3, a hint, and JSON under --json.
    r = n1.ctl("--socket", "/nonexistent/admin.sock", "status")
    expect(r.returncode == 3 and "tetherd is not running" in r.stderr and
           "systemctl status tetherd" in r.stderr, "no daemon: %d %s" % (r.returncode, r.stderr))
    r = n1.ctl("--json", "--socket", "/nonexistent/admin.sock", "status")
    err = json.loads(r.stdout)
    expect(r.returncode == 3 and err["errno"] == ENOENT and "hint" in err, "JSON: " + r.stdout)
    r = n1.ctl("--json", "lookup", "no-such-name")
    err = json.loads(r.stdout)
    expect(r.returncode == 1 and err["errno"] == ENOENT and "no segment named" in err["error"],
           "lookup miss: " + r.stdout)
    r = n1.ctl("frobnicate")
    expect(r.returncode == 2 and "usage" in r.stderr, "unknown command: " + r.stderr)
    # segments --cluster with node 3 stopped: listed as not reached.
    e = Exporter(n1, 4096, 1)
    freeze(n3)
    try:
        r = n1.ctl("--json", "segments", "--cluster")
        out = json.loads(r.stdout)
        expect(r.returncode == 0 and [s for s in out["segments"] if s["segid"] == str(e.segid)],
               "segments --cluster: " + r.stdout)
        expect([p["node_id"] for p in out["unreachable"]] == [3],
               "node 3 named as not reached: %s" % out["unreachable"])
        r = n1.ctl("segments", "--cluster")
        expect(r.returncode == 0 and "node 3" in r.stderr and "not reached" in r.stderr,
               "table: " + r.stderr)
    finally:
        n3.daemon.send_signal(signal.SIGCONT)
    e.close()


def thread_names(pid):
    names = set()
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                names.add(f.read().strip())
        except OSError:  # a thread that just ended
            pass
    return names


def test_threads_carry_their_names(c):
    # docs/architecture.md, "Threads of tetherd": top -H, gdb and perf tell
    # them apart by name, and the VM bench counts context switches by it.
    n1, n2 = c.node(1), c.node(2)
    if n1.agent or n2.agent:
        raise Failure("needs local tetherds (their /proc)")
    e = Exporter(n1, 64 * 1024, 5)
    m = Mapper(n2, e.segid, length=64 * 1024)
    try:
        expect(m.command("verify 5 0 %d" % (64 * 1024)).startswith("ok"), "mapper read")
        both = ("tt-fault", "tt-evict", "tt-exits", "tt-local-accept", "tt-local", "tt-ends",
                "tt-notice-rx", "tt-peer-inval", "tt-retry", "tt-lease")
        want = {1: set(both), 2: set(both)}
        if not c.rdma:  # node 2 read over a tcp data connection node 1 served
            want[1] |= {"tt-tcp-accept", "tt-tcp-serve"}
            want[2] |= {"tt-tcp-data"}
        for n in (n1, n2):
            have = thread_names(n.daemon.pid)
            expect(want[n.id] <= have, "node %d: threads %s missing (it has %s)" %
                   (n.id, sorted(want[n.id] - have), sorted(have)))
    finally:
        m.close()
        e.close()


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
