#!/usr/bin/env python3
"""A guided tour of tether on a 3-node cluster made on this machine.

Each node is a real tetherd in its own network namespace (veth + bridge,
mutual TLS between nodes); the programs are real client processes using
libtether (tests/tools/tt.c)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "multinode"))
from cluster import Cluster, Exporter, Mapper  # noqa: E402

MiB = 1 << 20


def step(n, text):
    print("\n\033[1m[%d] %s\033[0m" % (n, text), flush=True)


def show(text):
    for line in text.rstrip().splitlines():
        print("    " + line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    args = ap.parse_args()
    step(1, "Starting 3 nodes: each tetherd in its own network namespace, 10.x.y.{1,2,3}")
    with Cluster(3, build_dir=args.build_dir) as c:
        for node in c.nodes:
            print("    node %d: tetherd at %s:7600 (gRPC, mutual TLS), client socket %s" %
                  (node.id, node.ip, node.sock))
        show(c.node(2).ctl("status").stdout)

        step(2, "Node 1: a process exports 8 MiB of its memory (filled with pattern #7) "
                "and publishes it as 'demo-matrix'")
        e = Exporter(c.node(1), 8 * MiB, 7, name="demo-matrix", mode=0o644)
        print("    tether_make() -> segid %d (home node %d)" % (e.segid, e.segid >> 48))
        show(c.node(2).ctl("segments", "--cluster").stdout)

        step(3, "Node 2: a process looks the name up, attaches, and reads all 8 MiB "
                "(pages are fetched from node 1 on fault, over TCP)")
        r = c.node(2).tt("map", "--name", "demo-matrix", "--verify", 7)
        show(r.stdout)
        if r.returncode != 0:
            sys.exit("demo failed: " + r.stdout + r.stderr)

        step(4, "Node 2: another process keeps a mapping open, writes pattern #9 into "
                "page 3, and calls tether_sync()")
        m = Mapper(c.node(2), e.segid, length=8 * MiB)
        print("    verify first page     ->", m.command("verify 7 0 4096"))
        print("    write page 3          ->", m.command("write 9 12288 4096"))
        print("    tether_sync()         ->", m.command("sync"))
        show(c.node(2).ctl("attachments").stdout)

        step(5, "Node 1: the exporter checks its own memory")
        res = e.verify(9, 12288, 4096)
        print("    page 3 holds pattern #9:", res)
        print("    the rest still pattern #7:", e.verify(7, 16384, 8 * MiB - 16384))
        if res != "ok":
            sys.exit("demo failed: the write did not reach the exporter")

        step(6, "Node 3: a third mapper reads page 3 and sees node 2's write")
        r = c.node(3).tt("map", "--segid", e.segid, "--offset", 12288, "--len", 4096,
                         "--verify", 9)
        show(r.stdout)

        step(7, "Node 1 frees part of the range while node 2 reads it: madvise(DONTNEED) "
                "on pages 4-5, then mmap(MAP_FIXED) of new memory over pages 6-7")
        print("    node 2 reads page 4 (cached) ->", m.command("read 16384"))
        took = e.command("dontneed 16384 8192")
        print("    exporter: madvise(DONTNEED) ->", took,
              "ms  (returned only after node 2 dropped its copy)")
        print("    node 2 reads page 4 again    ->", m.command("read 16384"),
              " (faulted, fetched the new state: zeros)")
        took = e.command("remap 11 24576 8192")
        print("    exporter: mmap(MAP_FIXED) new memory, pattern #11 ->", took, "ms")
        print("    node 2 checks pages 6-7 hold pattern #11 ->", m.command("verify 11 24576 8192"))
        show(c.node(2).ctl("attachments").stdout)

        step(8, "The exporter exits: its segment is revoked and gone; a new attach gets ENOENT")
        m.command("detach")
        e.kill()
        import time
        time.sleep(0.3)
        r = c.node(2).tt("map", "--segid", e.segid, "--len", 4096)
        show(r.stdout)
        step(9, "Stopping the cluster (SIGTERM: attachments are written back, sockets removed)")
    print("\ndone.")


if __name__ == "__main__":
    main()
