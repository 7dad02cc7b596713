#!/usr/bin/env python3
"""VM tier benchmark (issue 4): what tether.ko costs the exporter.

Runs inside a tests/vm VM with tether.ko loaded (`tests/vm/run --bench`),
on the host tier's cluster (tests/multinode/cluster.py: 2 tetherd in
network namespaces, veth, mutual TLS), tetherd using tether.ko.

Figures (microseconds, medians of interleaved rounds: TCG is noisy):
  * munmap / madvise(DONTNEED) of a 1 MiB populated exported range that no
    mapper caches, beside the same calls in the same program run without
    tether (`tt export --no-export`: same binary, same steps, no export, so
    no notifier on its mm); target <= 1.1x (G3).  Also reported: the same
    beside a minimal C program that never links tether (tests/vm/plain_mm.c:
    a smaller process, which TCG makes faster at munmap by itself), and
    munmap of fresh unexported memory in the exporter's own process (tt's
    plain-munmap: the mm has tether's notifier, the range is not exported).
  * the same with one remote mapper (tt map --interactive on node 2) that
    cached the whole range just before (verify), beside the same baseline
    (reported), and its extra cost over the baseline beside a raw 4 KiB TCP
    round trip on the same veth (tether_bench tcp-rr, p50); target <= 3x,
    as in tests/bench/run.py.
  * what --data_encryption costs (kernel TLS on the tcp data connections,
    which the host tier's kernel may lack): a 4 KiB read, 1 MiB reads back
    to back (MB/s), the reader's CPU time per MiB and a new connection's
    first read, each encrypted beside plaintext on the same link
    (transport_bench crypto; reported).

    python3 tests/vm/bench.py --build-dir build/release --plain PLAIN_MM [--json F]
    python3 tests/vm/bench.py --table F      # print F's table
"""
import argparse
import collections
import json
import os
import platform
import random
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "multinode"))
from cluster import Cluster, Exporter, Mapper  # noqa: E402

MiB = 1 << 20
LEN = MiB
# The 0-mapper figures compare processes: run them without address-space
# randomization, so that the same program gets the same layout in both
# (under TCG, layout alone moves a munmap's cost by several per cent).
NO_ASLR = ["setarch", platform.machine(), "-R"]
ZERO_REPS = 4


def ms(reply, what):
    if not reply.startswith("ok "):
        raise RuntimeError("%s failed: %r" % (what, reply))
    return float(reply.split()[1])


def ok(reply, what):
    if reply != "ok":
        raise RuntimeError("%s failed: %r" % (what, reply))


def print_table(rows):
    print("\n%-38s %10s %-4s  %-46s %10s %7s %7s %s" %
          ("benchmark", "value", "unit", "baseline", "baseline", "ratio", "target", "pass"))
    for r in rows:
        print("%-38s %10.1f %-4s  %-46s %10.1f %7.2f %7s %s" %
              (r["name"], r["value"], r["unit"], r["baseline"], r["baseline_value"],
               r["ratio"], r["target"], "yes" if r["pass"] else "NO"))


def row(name, value, baseline, base_value, target, unit="us"):
    ratio = value / base_value if base_value > 0 else float("inf")
    limit = None if target == "report" else float(target.split()[-1])
    return {"name": name, "value": round(value, 2), "unit": unit, "baseline": baseline,
            "baseline_value": round(base_value, 2), "ratio": round(ratio, 3),
            "target": target, "pass": bool(limit is None or ratio <= limit)}


def encryption(c, build_dir):
    """What --data_encryption costs (issue 17): the daemon's own
    TcpTransport between the cluster's two namespaces, plaintext and kernel
    TLS in alternating rounds (tests/bench/transport_bench.cc `crypto`):
    a 4 KiB read's round trip, 1 MiB reads back to back, the reader's CPU
    time per MiB (the kernel decrypts on the reading thread), and a new
    connection's first read (connect, handshake, key set-up)."""
    tb = os.path.join(build_dir, "tests", "transport_bench")
    home, far = c.node(1), c.node(2)
    hp = "%s:7711" % home.ip
    server = subprocess.Popen(home.netns_cmd([tb, "serve", hp]), stdout=subprocess.PIPE, text=True)
    c.extra_procs.append(server)
    server.stdout.readline()
    out = subprocess.run(far.netns_cmd([tb, "crypto", hp, "100", "8"]), env=far.env(),
                         capture_output=True, text=True, timeout=600)
    server.kill()
    server.wait(10)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    kv = dict(t.split("=", 1) for t in first.split() if "=" in t)
    if out.returncode != 0 or kv.get("ktls") != "yes":
        # The guest's kernel has TLS (Debian's): not measuring it is a failure.
        raise RuntimeError("transport_bench crypto: " + out.stdout + out.stderr)
    f = {k: float(v) for k, v in kv.items() if k != "ktls"}
    print("encryption (transport_bench crypto, medians of 5 alternated rounds): %s" %
          " ".join("%s=%s" % kv_ for kv_ in sorted(kv.items())))
    return [
        row("vm_tcp_read_4k_encrypted", f["enc_read_p50_us"], "the same read in plaintext (p50)",
            f["plain_read_p50_us"], "report"),
        row("vm_tcp_stream_encrypted", f["enc_stream_mbps"], "the same reads in plaintext",
            f["plain_stream_mbps"], "report", unit="MB/s"),
        row("vm_tcp_cpu_per_mib_encrypted", f["enc_cpu_us_per_mib"],
            "reader CPU per MiB in plaintext", f["plain_cpu_us_per_mib"], "report"),
        row("vm_tcp_connect_encrypted", f["enc_conn_read_p50_us"],
            "a new plaintext connection's first read", f["plain_conn_read_p50_us"], "report"),
        # AES-128-GCM in user space (OpenSSL), per MiB at the slower end
        row("vm_aes_gcm_cipher_per_mib",
            1.048576e6 / min(f["cipher_seal_mbps"], f["cipher_open_mbps"]),
            "1 MiB read in plaintext (tcp transport)", 1.048576e6 / f["plain_stream_mbps"],
            "report"),
    ]


def daemon_counts(node):
    """Node's tetherd so far, by thread name (tetherd names its threads,
    tt-...): (context switches, CPU time in us: /proc/PID/task/*/schedstat),
    and its read- and write-type system calls (/proc/PID/io syscr + syscw).
    Switches and calls are structural costs, the same on any machine."""
    pid = node.daemon.pid  # `ip netns exec` execs tetherd: the same pid
    switches, cpu_us = collections.Counter(), collections.Counter()
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                status = f.read().splitlines()
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                cpu = int(f.read().split()[0]) / 1000.0  # time on a CPU, ns -> us
        except OSError:  # a thread that just ended
            continue
        name = status[0].split(None, 1)[1] if status and status[0].startswith("Name:") else "?"
        cpu_us[name] += cpu
        switches[name] += sum(int(line.split()[1]) for line in status
                             if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
    with open("/proc/%d/io" % pid) as f:
        io = dict(line.split(":") for line in f)
    return switches, cpu_us, int(io["syscr"]) + int(io["syscw"])


def since(after, before):
    """What a Counter of daemon_counts moved by, per thread name."""
    d = after.copy()
    d.subtract(before)
    return d


def measure(build_dir, plain_bin, rounds, warmup):
    tt_bench = os.path.join(build_dir, "tests", "tether_bench")
    keys = ("tt_munmap", "tt_dontneed", "plain_munmap", "plain_dontneed", "munmap0", "dontneed0",
            "munmap1", "dontneed1", "unexp_munmap", "rtt")
    res = {k: [] for k in keys}
    # per 1-mapper munmap, around the call only (the refetch before it is
    # not counted): each daemon's context switches and read/write calls
    counts = {k: [] for k in ("home_sw", "home_rw", "home_cpu", "mapper_sw", "mapper_rw",
                              "mapper_cpu")}
    # the same, by thread name: (side, "sw" or "cpu") -> a Counter per call
    threads = {(side, k): [] for side in ("home", "mapper") for k in ("sw", "cpu")}
    plain = subprocess.Popen(NO_ASLR + [plain_bin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)

    def plain_cmd(line):
        plain.stdin.write(line + "\n")
        plain.stdin.flush()
        return plain.stdout.readline().strip()

    verbose = os.environ.get("TETHER_VM_BENCH_VERBOSE") == "1"
    with Cluster(2, build_dir=build_dir, extra_args=("--verbose",) if verbose else ()) as c:
        home, far = c.node(1), c.node(2)
        for n in c.nodes:
            with open(n.log) as f:
                if "notifier source: tether.ko" not in f.read():
                    raise RuntimeError("node %d does not use tether.ko" % n.id)
        c.extra_procs = [plain]
        e0 = Exporter(home, LEN, 1, prefix=NO_ASLR)  # nobody ever maps it
        tn = Exporter(home, LEN, 1, extra=["--no-export"], prefix=NO_ASLR)  # no tether
        e1 = Exporter(home, LEN, 1, prefix=NO_ASLR)  # one mapper on node 2 caches it
        m = Mapper(far, e1.segid, length=LEN)
        procs = {"e0": e0, "e1": e1, "tn": tn}
        seed = {k: 1 for k in procs}
        rnd = random.Random(4)

        def munmap(which):
            def go():
                if which == "plain":
                    return "plain_munmap", ms(plain_cmd("munmap %d" % LEN), "plain munmap")
                if which == "unexp":  # unexported memory, in the exporter's process
                    return "unexp_munmap", ms(e0.command("plain-munmap %d" % LEN), "plain-munmap")
                e = procs[which]
                if which == "e1":
                    ok(m.command("verify %d 0 %d" % (seed["e1"], LEN)), "mapper caching")
                before = (daemon_counts(home), daemon_counts(far))
                t = ms(e.command("munmap 0 %d" % LEN), which + " munmap")
                if which == "e1":
                    after = (daemon_counts(home), daemon_counts(far))
                    for i, side in enumerate(("home", "mapper")):
                        for j, k in enumerate(("sw", "cpu")):
                            d = since(after[i][j], before[i][j])
                            threads[(side, k)].append(d)
                            counts["%s_%s" % (side, k)].append(sum(d.values()))
                        counts[side + "_rw"].append(after[i][2] - before[i][2])
                seed[which] += 1
                ms(e.command("remap %d 0 %d" % (seed[which], LEN)), which + " remap")
                return {"e0": "munmap0", "e1": "munmap1", "tn": "tt_munmap"}[which], t
            return go

        def dontneed(which):
            def go():
                if which == "plain":
                    return "plain_dontneed", ms(plain_cmd("dontneed %d" % LEN), "plain dontneed")
                e = procs[which]
                if which == "e1":
                    ok(m.command("verify %d 0 %d" % (seed["e1"], LEN)), "mapper caching")
                t = ms(e.command("dontneed 0 %d" % LEN), which + " dontneed")
                seed[which] += 1
                ok(e.command("fill %d 0 %d" % (seed[which], LEN)), which + " refill")
                return {"e0": "dontneed0", "e1": "dontneed1", "tn": "tt_dontneed"}[which], t
            return go

        for r in range(warmup + rounds):
            for family in (munmap, dontneed):
                # the cheap 0-mapper calls several times a round, the 1-mapper
                # one (which needs a 1 MiB refetch first) once
                zero = ("plain", "tn", "e0", "unexp") if family is munmap else ("plain", "tn", "e0")
                steps = [family(w) for w in zero] * ZERO_REPS + [family("e1")]
                rnd.shuffle(steps)  # interleaved, in a different order each round
                for step in steps:
                    k, t = step()
                    if r >= warmup:
                        res[k].append(t)
            # a fresh server per round (tcp-serve takes at most 16 connections)
            server = subprocess.Popen(home.netns_cmd([tt_bench, "tcp-serve", "7701"]),
                                      stdout=subprocess.PIPE, text=True)
            c.extra_procs.append(server)
            server.stdout.readline()
            out = subprocess.run(far.netns_cmd([tt_bench, "tcp-rr", "%s:7701" % home.ip, "200"]),
                                 env=far.env(), capture_output=True, text=True, timeout=120)
            server.kill()
            server.wait(10)
            kv = dict(t.split("=", 1) for t in out.stdout.split() if "=" in t)
            if out.returncode != 0 or "tcp_rr_p50_us" not in kv:
                raise RuntimeError("tether_bench tcp-rr: " + out.stdout + out.stderr)
            if r >= warmup:
                res["rtt"].append(float(kv["tcp_rr_p50_us"]) / 1000.0)
        crypto = encryption(c, build_dir)
        # The mapper still reads the exporter's current contents, and every
        # daemon is alive: the figures come from a working cluster.
        ok(m.command("verify %d 0 %d" % (seed["e1"], LEN)), "final mapper read")
        for n in c.nodes:
            if n.daemon.poll() is not None:
                raise RuntimeError("tetherd %d died during the benchmark" % n.id)
        if verbose:  # where the 1-mapper time goes, from the daemons' debug log
            for n in c.nodes:
                with open(n.log) as f:
                    lines = [x.rstrip() for x in f if "handled in" in x or "to acks" in x or
                             "window" in x]
                print("--- node %d: %d timing lines, last 12:" % (n.id, len(lines)))
                print("\n".join(lines[-12:]))
        m.close()
        e0.close()
        e1.close()
        tn.close()
        plain_cmd("quit")
    med = {k: statistics.median(v) * 1000.0 for k, v in res.items()}  # us
    spread = {k: (min(v) * 1000.0, max(v) * 1000.0) for k, v in res.items()}
    print("rounds: %d (+%d warm-up; 0-mapper calls and their baselines %d times a round), "
          "medians in us; min..max:" % (rounds, warmup, ZERO_REPS))
    for k in keys:
        print("  %-15s median %9.1f   %9.1f .. %9.1f" % (k, med[k], *spread[k]))
    tm, td, rtt = med["tt_munmap"], med["tt_dontneed"], med["rtt"]
    pm, pd = med["plain_munmap"], med["plain_dontneed"]
    base_m = "munmap, same program without tether"
    base_d = "madvise(DONTNEED), same program w/o tether"
    min_m = "munmap, minimal C program (plain_mm)"
    min_d = "madvise(DONTNEED), minimal C program"
    rtt_b = "raw TCP 4 KiB RTT on the veth (p50)"
    cnt = {k: statistics.median(v[warmup:]) for k, v in counts.items()}
    print("per 1-mapper munmap (medians): home tetherd %g context switches, %g read/write "
          "calls, %.0f us on a CPU; mapper tetherd %g, %g, %.0f us" %
          (cnt["home_sw"], cnt["home_rw"], cnt["home_cpu"], cnt["mapper_sw"],
           cnt["mapper_rw"], cnt["mapper_cpu"]))
    # which threads switch and spend: where an extra hand-off or check is
    for side in ("home", "mapper"):
        for k, what, fmt in (("sw", "context switches", "%s %g/%.2f"),
                             ("cpu", "CPU us", "%s %.0f/%.0f")):
            per = threads[(side, k)][warmup:]
            names = sorted({n for d in per for n in d if any(x[n] for x in per)})
            print("  %s tetherd %s by thread (median, mean): %s" % (side, what, ", ".join(
                fmt % (n, statistics.median(d[n] for d in per), statistics.mean(d[n] for d in per))
                for n in names)))
    structural = [
        row("vm_munmap_1mib_1_mapper_%s_%s" % (side, what), cnt["%s_%s" % (side, k)],
            "count (hardware-independent)", 1.0, "report", unit="n")
        for side in ("home", "mapper")
        for k, what in (("sw", "ctx_switches"), ("rw", "rw_syscalls"))] + [
        # CPU time of all its threads (schedstat) around the call: machine-
        # bound, so beside the same run's munmap without tether
        row("vm_munmap_1mib_1_mapper_%s_cpu" % side, cnt["%s_cpu" % side], base_m,
            med["tt_munmap"], "report")
        for side in ("home", "mapper")]
    return crypto + structural + [
        row("vm_munmap_1mib_0_mappers", med["munmap0"], base_m, tm, "<= 1.1"),
        row("vm_dontneed_1mib_0_mappers", med["dontneed0"], base_d, td, "<= 1.1"),
        row("vm_munmap_1mib_0_mappers_vs_minimal", med["munmap0"], min_m, pm, "report"),
        row("vm_dontneed_1mib_0_mappers_vs_minimal", med["dontneed0"], min_d, pd, "report"),
        row("vm_munmap_1mib_unexported", med["unexp_munmap"], base_m, tm, "report"),
        row("vm_munmap_1mib_1_mapper", med["munmap1"], base_m, tm, "report"),
        row("vm_munmap_1mib_1_mapper_extra", med["munmap1"] - tm, rtt_b, rtt, "<= 3"),
        row("vm_dontneed_1mib_1_mapper", med["dontneed1"], base_d, td, "report"),
        row("vm_dontneed_1mib_1_mapper_extra", med["dontneed1"] - td, rtt_b, rtt, "<= 3"),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir")
    ap.add_argument("--plain")
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("TETHER_VM_BENCH_ROUNDS", 31)))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--table", help="print the table of an existing JSON file and exit")
    a = ap.parse_args()
    if a.table:
        with open(a.table) as f:
            print_table([json.loads(line) for line in f if line.strip()])
        return 0
    if not a.build_dir or not a.plain:
        ap.error("--build-dir and --plain are needed")
    rows = measure(a.build_dir, a.plain, a.rounds, a.warmup)
    print_table(rows)
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print("bench: %d figures, %d below target" % (len(rows), sum(not r["pass"] for r in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
