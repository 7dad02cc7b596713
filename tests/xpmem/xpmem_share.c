/*
 * xpmem_share — a producer/consumer pair written against <xpmem.h> only, the
 * way XPMEM programs share memory; tests/multinode/test_xpmem.py runs the two
 * roles in different processes on one node and on different nodes.
 *
 *   xpmem_share produce --size N --seed S [--mode 0644] [--whole]
 *       Fills N bytes with pattern(S), xpmem_make()s them, prints
 *       "segid=ID", "base=B" and "ready", then obeys stdin lines until
 *       EOF/quit (offsets relative to the buffer):
 *         verify SEED OFF LEN -> "ok" | "mismatch at OFF"
 *         fill SEED OFF LEN   -> rewrites that part (plain stores); "ok"
 *         remove              -> xpmem_remove(); "ok" | "error: errno=E"
 *         unmap OFF LEN       -> munmap of that part; "ok"
 *         remap SEED OFF LEN  -> new memory there (MAP_FIXED), pattern(SEED); "ok"
 *         own SEED OFF LEN    -> xpmem_get + xpmem_attach of its own segment,
 *                                pattern(SEED) stored into that part through
 *                                the attachment, detach, release; "ok" |
 *                                "error: errno=E what"
 *         fork SEED OFF LEN   -> the same done by a child made by fork()
 *                                (the parent's segment); "ok" | "error: ..."
 *       --whole: export the whole address space, xpmem_make(NULL,
 *       XPMEM_MAXADDR_SIZE), as UCX and MPI runtimes do; the buffer is at
 *       segment offset B (its address), and the first page of this
 *       program's file, mapped read-only, at segment offset F (printed as
 *       "file=F" before "ready"). Otherwise B is 0.
 *
 *   xpmem_share consume --segid ID [--offset O] [--len L] [--rdonly]
 *                       [--fixed] [--uid U] [--verify SEED] [--base B]
 *                       [--write SEED OFF LEN] [--interactive] [--get-only]
 *       xpmem_get + xpmem_attach of [O, O+L) (at a fixed address with
 *       --fixed), checks pattern(SEED), stores pattern(SEED2) into
 *       [OFF, OFF+LEN) (segment offsets), xpmem_detach, xpmem_release.
 *       The pattern at segment offset X is pattern(SEED) at X - B.
 *       Prints "done" and exits 0; on error "error: errno=E what", exit 1.
 *       --get-only: xpmem_get and xpmem_release, no attach (a permit check
 *       for users who may not open /dev/userfaultfd).
 *       --interactive: after attaching print "ready", then obey stdin lines
 *       (offsets relative to the attachment):
 *         read OFF | verify SEED OFF LEN | write SEED OFF LEN |
 *         detach | attach | release
 *       An access that raises a signal kills the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xpmem.h>

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* pattern(seed) at byte offset off (the same pattern as tests/tools/tt.c). */
static void fill(uint8_t* p, uint64_t off, uint64_t len, uint64_t seed) {
  for (uint64_t i = 0; i < len;) {
    uint64_t a = off + i, w = mix(seed * 0x100000001b3ull ^ (a / 8));
    for (uint64_t k = a % 8; k < 8 && i < len; ++k, ++i) p[i] = (uint8_t)(w >> (8 * k));
  }
}

static int64_t check(const uint8_t* p, uint64_t off, uint64_t len, uint64_t seed) {
  uint8_t buf[4096];
  for (uint64_t i = 0; i < len; i += sizeof buf) {
    uint64_t n = len - i < sizeof buf ? len - i : sizeof buf;
    fill(buf, off + i, n, seed);
    if (memcmp(buf, p + i, n) != 0)
      for (uint64_t j = 0; j < n; ++j)
        if (buf[j] != p[i + j]) return (int64_t)(off + i + j);
  }
  return -1;
}

static int fail(const char* what) {
  printf("error: errno=%d %s: %s\n", errno, what, strerror(errno));
  return 1;
}

static const char* arg(int argc, char** argv, const char* name) {
  for (int i = 2; i < argc - 1; ++i)
    if (strcmp(argv[i], name) == 0) return argv[i + 1];
  return NULL;
}
static int flag(int argc, char** argv, const char* name) {
  for (int i = 2; i < argc; ++i)
    if (strcmp(argv[i], name) == 0) return 1;
  return 0;
}
static uint64_t num(const char* s, uint64_t dflt) { return s ? strtoull(s, NULL, 0) : dflt; }

/* xpmem_get + xpmem_attach of segment offset `segoff`, pattern(seed) for
 * buffer offset `off` stored through the attachment, detach, release. 0, or
 * an errno (what failed in *what). */
static int store_through_attachment(xpmem_segid_t segid, uint64_t segoff, uint64_t off,
                                    uint64_t len, uint64_t seed, const char** what) {
  xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
  if (apid < 0) return *what = "xpmem_get", errno;
  struct xpmem_addr addr = {apid, (off_t)segoff};
  uint8_t* p = xpmem_attach(addr, len, NULL);
  if (p == (void*)-1) return *what = "xpmem_attach", errno;
  fill(p, off, len, seed);
  if (xpmem_detach(p) != 0) return *what = "xpmem_detach", errno;
  if (xpmem_release(apid) != 0) return *what = "xpmem_release", errno;
  return 0;
}

static int produce(int argc, char** argv) {
  uint64_t size = num(arg(argc, argv, "--size"), 1 << 20);
  uint64_t seed = num(arg(argc, argv, "--seed"), 1);
  uint64_t mode = num(arg(argc, argv, "--mode"), 0644);
  int whole = flag(argc, argv, "--whole");
  uint8_t* mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return fail("mmap");
  fill(mem, 0, size, seed);
  xpmem_segid_t segid =
      whole ? xpmem_make(NULL, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void*)(uintptr_t)mode)
            : xpmem_make(mem, size, XPMEM_PERMIT_MODE, (void*)(uintptr_t)mode);
  if (segid < 0) return fail("xpmem_make");
  if (whole) { /* a file-backed mapping, for consumers to attach too */
    FILE* self = fopen("/proc/self/exe", "r");
    void* f = self ? mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fileno(self), 0) : MAP_FAILED;
    if (f == MAP_FAILED) return fail("mmap of /proc/self/exe");
    fclose(self);
    printf("file=%" PRIu64 "\n", (uint64_t)(uintptr_t)f);
  }
  const uint64_t base = whole ? (uint64_t)(uintptr_t)mem : 0; /* segment offset of mem */
  printf("segid=%lld\nbase=%" PRIu64 "\nready\n", (long long)segid, base);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    uint64_t s, off, len;
    if (sscanf(line, "verify %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      int64_t bad = off > size || len > size - off ? 0 : check(mem + off, off, len, s);
      if (off > size || len > size - off)
        printf("error: range\n");
      else if (bad < 0)
        printf("ok\n");
      else
        printf("mismatch at %" PRId64 "\n", bad);
    } else if (sscanf(line, "fill %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      if (off > size || len > size - off) {
        printf("error: range\n");
      } else {
        fill(mem + off, off, len, s);
        printf("ok\n");
      }
    } else if (sscanf(line, "unmap %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      if (off > size || len > size - off || munmap(mem + off, len) != 0)
        printf("error: range\n");
      else
        printf("ok\n");
    } else if (sscanf(line, "remap %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      if (off > size || len > size - off ||
          mmap(mem + off, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
               0) == MAP_FAILED) {
        printf("error: range\n");
      } else {
        fill(mem + off, off, len, s);
        printf("ok\n");
      }
    } else if (sscanf(line, "own %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      const char* what = "range";
      int e = off > size || len > size - off
                  ? EINVAL
                  : store_through_attachment(segid, base + off, off, len, s, &what);
      if (e)
        printf("error: errno=%d %s\n", e, what);
      else
        printf("ok\n");
    } else if (sscanf(line, "fork %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      if (off > size || len > size - off) {
        printf("error: range\n");
        continue;
      }
      fflush(stdout);
      pid_t pid = fork();
      if (pid == 0) {
        const char* what = "";
        int e = store_through_attachment(segid, base + off, off, len, s, &what);
        if (e) fprintf(stderr, "fork child: %s: %s\n", what, strerror(e));
        _exit(e);
      }
      int status = 0;
      if (pid < 0 || waitpid(pid, &status, 0) != pid)
        printf("error: errno=%d fork\n", errno);
      else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        printf("error: errno=%d fork child (status %#x)\n",
               WIFEXITED(status) ? WEXITSTATUS(status) : 0, status);
      else
        printf("ok\n");
    } else if (strncmp(line, "remove", 6) == 0) {
      if (xpmem_remove(segid) != 0)
        printf("error: errno=%d remove\n", errno);
      else
        printf("ok\n");
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    } else {
      printf("error: unknown command\n");
    }
  }
  return 0;
}

struct consumer {
  xpmem_apid_t apid;
  off_t offset;
  uint64_t base; /* segment offset of the pattern's offset 0 */
  uint64_t len;
  void* fixed; /* NULL: the system chooses */
  uint8_t* p;
};

static int do_attach(struct consumer* c) {
  struct xpmem_addr addr = {c->apid, c->offset};
  void* p = xpmem_attach(addr, c->len, c->fixed);
  if (p == (void*)-1) return -1;
  c->p = p;
  return 0;
}

static int interactive(struct consumer* c) {
  printf("ready\n");
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    uint64_t s, o, l;
    if (sscanf(line, "read %" SCNu64, &o) == 1) {
      if (!c->p || o >= c->len)
        printf("error: range\n");
      else
        printf("byte %u\n", c->p[o]);
    } else if (sscanf(line, "verify %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &o, &l) == 3) {
      if (!c->p || o > c->len || l > c->len - o) {
        printf("error: range\n");
      } else {
        int64_t bad = check(c->p + o, (uint64_t)c->offset - c->base + o, l, s);
        if (bad < 0)
          printf("ok\n");
        else
          printf("mismatch at %" PRId64 "\n", bad);
      }
    } else if (sscanf(line, "write %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &o, &l) == 3) {
      if (!c->p || o > c->len || l > c->len - o) {
        printf("error: range\n");
      } else {
        fill(c->p + o, (uint64_t)c->offset - c->base + o, l, s);
        printf("ok\n");
      }
    } else if (strncmp(line, "detach", 6) == 0) {
      if (!c->p)
        printf("error: not attached\n");
      else if (xpmem_detach(c->p) != 0)
        printf("error: errno=%d detach\n", errno);
      else {
        c->p = NULL;
        printf("ok\n");
      }
    } else if (strncmp(line, "attach", 6) == 0) {
      if (c->p)
        printf("error: attached\n");
      else if (do_attach(c) != 0)
        printf("error: errno=%d attach\n", errno);
      else
        printf("ok\n");
    } else if (strncmp(line, "release", 7) == 0) {
      if (xpmem_release(c->apid) != 0)
        printf("error: errno=%d release\n", errno);
      else {
        c->p = NULL;
        printf("ok\n");
      }
    } else {
      printf("error: unknown command\n");
    }
  }
  return 0;
}

static int consume(int argc, char** argv) {
  const char* uid = arg(argc, argv, "--uid");
  if (uid) {
    uid_t u = (uid_t)num(uid, 65534);
    if (setresgid(u, u, u) != 0 || setresuid(u, u, u) != 0) return fail("setresuid");
  }
  struct consumer c = {0};
  xpmem_segid_t segid = (xpmem_segid_t)num(arg(argc, argv, "--segid"), 0);
  c.offset = (off_t)num(arg(argc, argv, "--offset"), 0);
  c.len = num(arg(argc, argv, "--len"), 4096);
  c.base = num(arg(argc, argv, "--base"), 0);
  int rdonly = flag(argc, argv, "--rdonly");
  c.apid = xpmem_get(segid, rdonly ? XPMEM_RDONLY : XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
  if (c.apid < 0) return fail("xpmem_get");
  if (flag(argc, argv, "--get-only")) {
    if (xpmem_release(c.apid) != 0) return fail("xpmem_release");
    printf("done\n");
    return 0;
  }
  if (flag(argc, argv, "--fixed")) {
    /* reserve a range with a guard page before it, attach into it */
    uint8_t* r = mmap(NULL, c.len + 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return fail("mmap");
    c.fixed = r + 4096;
  }
  if (do_attach(&c) != 0) return fail("xpmem_attach");
  if (c.fixed && c.p != c.fixed) {
    printf("error: attached at %p, asked for %p\n", (void*)c.p, c.fixed);
    return 1;
  }
  if (flag(argc, argv, "--interactive")) return interactive(&c);
  const char* verify = arg(argc, argv, "--verify");
  if (verify) {
    int64_t bad = check(c.p, (uint64_t)c.offset - c.base, c.len, num(verify, 0));
    if (bad >= 0) {
      printf("error: mismatch at segment offset %" PRId64 "\n", bad);
      return 1;
    }
    printf("verified %" PRIu64 " bytes\n", c.len);
  }
  for (int i = 2; i < argc; ++i) {
    if (strcmp(argv[i], "--write") != 0) continue;
    if (i + 3 >= argc) {
      errno = EINVAL;
      return fail("--write needs SEED OFF LEN");
    }
    uint64_t ws = num(argv[i + 1], 0), wo = num(argv[i + 2], 0), wl = num(argv[i + 3], 0);
    if (wo < (uint64_t)c.offset || wo + wl > (uint64_t)c.offset + c.len) {
      errno = EINVAL;
      return fail("--write range outside the attachment");
    }
    fill(c.p + (wo - (uint64_t)c.offset), wo - c.base, wl, ws);
    printf("wrote %" PRIu64 " bytes at segment offset %" PRIu64 "\n", wl, wo);
  }
  if (xpmem_detach(c.p) != 0) return fail("xpmem_detach");
  if (xpmem_release(c.apid) != 0) return fail("xpmem_release");
  printf("done\n");
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && strcmp(argv[1], "produce") == 0) return produce(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "consume") == 0) return consume(argc, argv);
  fprintf(stderr, "usage: xpmem_share produce|consume ... (see the comment at the top)\n");
  return 2;
}
