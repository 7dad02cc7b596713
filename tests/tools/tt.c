/*
 * tt — the test and demo client for tether, written against tether.h only.
 *
 *   tt export --size N --seed S [--name NAME] [--mode 0644] [--no-export]
 *       Exports N bytes filled with pattern(S); prints "segid=ID" and
 *       "ready", then obeys stdin lines until EOF (--no-export: the same
 *       without calling tether at all, "segid=0": a benchmark baseline):
 *         verify SEED OFF LEN   -> "ok" | "mismatch at OFF"
 *         fill SEED OFF LEN     -> rewrites that part; "ok"
 *         vstride SEED OFF LEN K -> verify SEED of every K-th byte from OFF
 *         munmap OFF LEN        -> "ok MS" (how long the call took)
 *         dontneed OFF LEN      -> madvise(MADV_DONTNEED); "ok MS"
 *         remap SEED OFF LEN    -> new memory over the range (MAP_FIXED), filled
 *                                  with pattern(SEED); "ok MS" (the mmap's time)
 *         mremap OFF LEN        -> moves the range away, maps zeros in its place
 *         mprotect OFF LEN r|rw|none -> mprotect(); "ok MS"
 *         tmunmap OFF LEN       -> tether_munmap() (bracketed by the library); "ok MS"
 *         make OFF LEN          -> another segment over [OFF, OFF+LEN) of the same
 *                                  memory (tether_make); "ok segid=ID"
 *         invbegin OFF LEN      -> tether_invalidate_begin(); "ok MS handle=H"
 *         invend H [gone]       -> tether_invalidate_end(H, gone != 0); "ok"
 *         plain-munmap LEN      -> munmap of fresh, populated, unexported memory
 *                                  (the baseline for the invalidation bench)
 *         move NODE OFF LEN     -> move_pages() to NUMA node NODE (kernel-internal
 *                                  migration); "ok MS moved=PAGES_NOW_ON_NODE"
 *         pageout OFF LEN       -> madvise(MADV_PAGEOUT) (reclaim to swap, if any);
 *                                  "ok MS swap_kb=SWAPPED_KB_OF_THIS_PROCESS"
 *         quit
 *   tt map (--name NAME | --segid ID) [--offset O] [--len L] [--rdonly]
 *          [--verify SEED] [--write SEED OFF LEN] [--sync] [--uid U]
 *          [--check-blocks] [--interactive] [--quiet]
 *       Attaches, checks pattern(SEED) over [O, O+L) (segment offsets),
 *       writes pattern(SEED2) into [OFF, OFF+LEN), syncs, detaches.
 *       Exit 0 on success; on error prints "error: errno=E msg" and exits 1.
 *       --check-blocks: verify 1 MiB at a time and print the largest
 *       allocation of the attachment's backing memfd seen ("max_blocks=N").
 *       --interactive: after attaching, print "ready" and obey stdin lines:
 *         read OFF | verify SEED OFF LEN | write SEED OFF LEN | sync |
 *         wstride SEED OFF LEN K (every K-th byte from OFF) |
 *         acquire | detach   (offsets relative to the attachment)
 *       An access that raises SIGBUS kills the process (exit by signal).
 *   tt api [--uid U]
 *       One tether call per stdin line, for tests of errors (--uid: drop to
 *       uid and gid U first). Prints "ready", then one line per command:
 *       "ok [key=value ...]", or, when the call fails,
 *         "error: errno=N ENAME CALL: MESSAGE"
 *       (N the errno as a number, ENAME its symbolic name or "E?", CALL the
 *       tether function, MESSAGE tether_strerror()). Commands:
 *         make SIZE MODE            -> tether_make of fresh memory; "ok segid=ID"
 *         remove SEGID              -> tether_remove
 *         publish SEGID NAME        -> tether_publish
 *         lookup NAME               -> "ok segid=ID size=N"
 *         get SEGID ro|rw           -> "ok apid=ID"
 *         release APID
 *         attach APID OFF LEN       -> "ok addr=0xADDR"
 *         detach ADDR
 *         sync ADDR LEN | acquire ADDR LEN
 *         read ADDR                 -> "ok byte=B"
 *         write ADDR LEN BYTE       -> memset; "ok"
 *       Numbers may be decimal or 0x-hex. An access that raises SIGBUS
 *       kills the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <tether/tether.h>

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* pattern(seed) at byte offset off: 8-byte words, word i = mix(seed ^ i). */
static void fill(uint8_t* p, uint64_t off, uint64_t len, uint64_t seed) {
  for (uint64_t i = 0; i < len;) {
    uint64_t a = off + i, w = mix(seed * 0x100000001b3ull ^ (a / 8));
    uint64_t k = a % 8;
    for (; k < 8 && i < len; ++k, ++i) p[i] = (uint8_t)(w >> (8 * k));
  }
}

/* Every K-th byte of [off, off+len): pattern(seed) (the others untouched),
 * or the first of them that differs (-1: none). Writers of interleaved
 * bytes of one page (issue 16). */
static void fill_stride(uint8_t* p, uint64_t off, uint64_t len, uint64_t k, uint64_t seed) {
  for (uint64_t i = 0; i < len; i += k) fill(p + i, off + i, 1, seed);
}
static int64_t check_stride(const uint8_t* p, uint64_t off, uint64_t len, uint64_t k,
                            uint64_t seed) {
  for (uint64_t i = 0; i < len; i += k) {
    uint8_t b;
    fill(&b, off + i, 1, seed);
    if (p[i] != b) return (int64_t)(off + i);
  }
  return -1;
}

static int64_t check(const uint8_t* p, uint64_t off, uint64_t len, uint64_t seed) {
  uint8_t buf[4096];
  for (uint64_t i = 0; i < len; i += sizeof buf) {
    uint64_t n = len - i < sizeof buf ? len - i : sizeof buf;
    fill(buf, off + i, n, seed);
    if (memcmp(buf, p + i, n) != 0) {
      for (uint64_t j = 0; j < n; ++j)
        if (buf[j] != p[i + j]) return (int64_t)(off + i + j);
    }
  }
  return -1;
}

static int fail(const char* what) {
  printf("error: errno=%d %s: %s\n", errno, what, tether_strerror());
  fflush(stdout);
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

static int do_export(int argc, char** argv) {
  uint64_t size = num(arg(argc, argv, "--size"), 1 << 20);
  uint64_t seed = num(arg(argc, argv, "--seed"), 1);
  uint64_t mode = num(arg(argc, argv, "--mode"), 0600);
  const char* name = arg(argc, argv, "--name");
  int no_export = flag(argc, argv, "--no-export");
  if (no_export && name) {
    errno = EINVAL;
    return fail("--no-export and --name exclude each other");
  }
  uint8_t* mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return fail("mmap");
  fill(mem, 0, size, seed);
  tether_segid_t segid =
      no_export ? 0 : tether_make(mem, size, TETHER_PERMIT_MODE, (void*)(uintptr_t)mode);
  if (segid < 0) return fail("tether_make");
  if (name && tether_publish(segid, name) != 0) return fail("tether_publish");
  printf("segid=%" PRId64 "\nready\n", segid);
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    uint64_t s, off, len, k;
    int64_t handle;
    if (sscanf(line, "verify %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      if (off > size || len > size - off) {
        printf("error: range\n");
      } else {
        int64_t bad = check(mem + off, off, len, s);
        if (bad < 0)
          printf("ok\n");
        else
          printf("mismatch at %" PRId64 "\n", bad);
      }
    } else if (sscanf(line, "vstride %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len,
                      &k) == 4 &&
               k > 0) {
      if (off > size || len > size - off) {
        printf("error: range\n");
      } else {
        int64_t bad = check_stride(mem + off, off, len, k, s);
        if (bad < 0)
          printf("ok\n");
        else
          printf("mismatch at %" PRId64 "\n", bad);
      }
    } else if (sscanf(line, "fill %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3) {
      if (off > size || len > size - off)
        printf("error: range\n");
      else {
        fill(mem + off, off, len, s);
        printf("ok\n");
      }
    } else if (sscanf(line, "munmap %" SCNu64 " %" SCNu64, &off, &len) == 2 ||
               sscanf(line, "dontneed %" SCNu64 " %" SCNu64, &off, &len) == 2 ||
               sscanf(line, "remap %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3 ||
               sscanf(line, "mremap %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      if (line[0] == 'r') { /* remap SEED OFF LEN: shift the parsed values */
        sscanf(line, "remap %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len);
      }
      if (off > size || len > size - off) {
        printf("error: range\n");
        fflush(stdout);
        continue;
      }
      struct timespec a, b;
      int rc = 0;
      clock_gettime(CLOCK_MONOTONIC, &a);
      if (line[0] == 'm' && line[1] == 'u') {
        rc = munmap(mem + off, len);
      } else if (line[0] == 'd') {
        rc = madvise(mem + off, len, MADV_DONTNEED);
      } else if (line[0] == 'r') {
        rc = mmap(mem + off, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                  -1, 0) == MAP_FAILED
                 ? -1
                 : 0;
      } else {
        /* To a place of its own: mremap to the same size without
         * MREMAP_FIXED leaves the range where it is (a no-op). */
        void* dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void* away = dst == MAP_FAILED
                         ? MAP_FAILED
                         : mremap(mem + off, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
        rc = away == MAP_FAILED ? -1 : 0;
        if (rc == 0)
          rc = mmap(mem + off, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                    -1, 0) == MAP_FAILED
                   ? -1
                   : 0;
      }
      clock_gettime(CLOCK_MONOTONIC, &b);
      if (rc != 0) {
        printf("error: errno=%d\n", errno);
      } else {
        if (line[0] == 'r') fill(mem + off, off, len, s);
        printf("ok %.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
      }
    } else if (sscanf(line, "move %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &off, &len) == 3 ||
               sscanf(line, "pageout %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      int pageout = line[0] == 'p';
      if (pageout) sscanf(line, "pageout %" SCNu64 " %" SCNu64, &off, &len);
      if (off > size || len > size - off || off % 4096 || len % 4096 || len == 0) {
        printf("error: range\n");
        fflush(stdout);
        continue;
      }
      size_t n = len / 4096;
      void** pages = calloc(n, sizeof *pages);
      int *nodes = calloc(n, sizeof *nodes), *status = calloc(n, sizeof *status);
      for (size_t i = 0; i < n; ++i) {
        pages[i] = mem + off + i * 4096;
        nodes[i] = (int)s;
      }
      struct timespec a, b;
      clock_gettime(CLOCK_MONOTONIC, &a);
      long rc = pageout ? madvise(mem + off, len, 21 /* MADV_PAGEOUT */)
                        : syscall(SYS_move_pages, 0, n, pages, nodes, status, 2 /* MPOL_MF_MOVE */);
      clock_gettime(CLOCK_MONOTONIC, &b);
      double took = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
      if (rc < 0) {
        printf("error: errno=%d\n", errno);
      } else if (pageout) {
        long kb = -1;
        FILE* f = fopen("/proc/self/smaps_rollup", "r");
        char l[256];
        while (f && fgets(l, sizeof l, f))
          if (sscanf(l, "Swap: %ld kB", &kb) == 1) break;
        if (f) fclose(f);
        printf("ok %.3f swap_kb=%ld\n", took, kb);
      } else {
        /* where the pages are now (nodes == NULL: query only) */
        syscall(SYS_move_pages, 0, n, pages, NULL, status, 0);
        size_t moved = 0;
        for (size_t i = 0; i < n; ++i) moved += status[i] == (int)s;
        printf("ok %.3f moved=%zu\n", took, moved);
      }
      free(pages);
      free(nodes);
      free(status);
    } else if (sscanf(line, "tmunmap %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      struct timespec a, b;
      clock_gettime(CLOCK_MONOTONIC, &a);
      int rc = tether_munmap(mem + off, len);
      clock_gettime(CLOCK_MONOTONIC, &b);
      if (rc != 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok %.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
    } else if (sscanf(line, "make %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      tether_segid_t id =
          off <= size && len <= size - off
              ? tether_make(mem + off, len, TETHER_PERMIT_MODE, (void*)(uintptr_t)mode)
              : -1;
      if (id < 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok segid=%" PRId64 "\n", id);
    } else if (sscanf(line, "invbegin %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      struct timespec a, b;
      clock_gettime(CLOCK_MONOTONIC, &a);
      int64_t h = off <= size && len <= size - off ? tether_invalidate_begin(mem + off, len) : -1;
      clock_gettime(CLOCK_MONOTONIC, &b);
      if (h < 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok %.3f handle=%" PRId64 "\n",
               (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6, h);
    } else if (sscanf(line, "invend %" SCNd64, &handle) == 1) {
      int gone = 0;
      sscanf(line, "invend %*d %d", &gone);
      if (tether_invalidate_end(handle, gone) != 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok\n");
    } else if (sscanf(line, "plain-munmap %" SCNu64, &len) == 1) {
      uint8_t* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) {
        printf("error: errno=%d\n", errno);
      } else {
        fill(m, 0, len, 1);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        munmap(m, len);
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("ok %.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
      }
    } else if (sscanf(line, "mprotect %" SCNu64 " %" SCNu64, &off, &len) == 2) {
      /* mprotect OFF LEN r|rw|none -> "ok MS" (how long the call took) */
      char p[8] = "";
      sscanf(line, "mprotect %*u %*u %7s", p);
      int prot = strcmp(p, "rw") == 0     ? PROT_READ | PROT_WRITE
                 : strcmp(p, "r") == 0    ? PROT_READ
                 : strcmp(p, "none") == 0 ? PROT_NONE
                                          : -1;
      if (prot < 0 || off > size || len > size - off) {
        printf("error: usage or range\n");
      } else {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = mprotect(mem + off, len, prot);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (rc != 0)
          printf("error: errno=%d\n", errno);
        else
          printf("ok %.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
      }
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    } else {
      printf("error: unknown command\n");
    }
    fflush(stdout);
  }
  return 0;
}

/* Bytes allocated in the memfd behind the mapping at p (st_blocks). */
static long long memfd_bytes(const void* p) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[512];
  long long out = -1;
  uintptr_t a = (uintptr_t)p;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s <= a && a < e) {
      char path[128];
      snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", s, e);
      struct stat st;
      if (stat(path, &st) == 0) out = (long long)st.st_blocks * 512;
      break;
    }
  }
  if (f) fclose(f);
  return out;
}

static int interactive(uint8_t* p, uint64_t len, tether_apid_t apid) {
  printf("ready\n");
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    uint64_t s, o, l, k;
    if (sscanf(line, "read %" SCNu64, &o) == 1) {
      if (o >= len) {
        printf("error: range\n");
        fflush(stdout);
        continue;
      }
      printf("byte %u\n", p[o]);
    } else if (sscanf(line, "verify %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &o, &l) == 3) {
      int64_t bad = check(p + o, o, l, s);
      if (bad < 0)
        printf("ok\n");
      else
        printf("mismatch at %" PRId64 "\n", bad);
    } else if (sscanf(line, "wstride %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &o, &l,
                      &k) == 4 &&
               k > 0) {
      fill_stride(p + o, o, l, k, s);
      printf("ok\n");
    } else if (sscanf(line, "write %" SCNu64 " %" SCNu64 " %" SCNu64, &s, &o, &l) == 3) {
      fill(p + o, o, l, s);
      printf("ok\n");
    } else if (strncmp(line, "sync", 4) == 0) {
      if (tether_sync(p, len) != 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok\n");
    } else if (strncmp(line, "acquire", 7) == 0) {
      if (tether_acquire(p, len) != 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok\n");
    } else if (strncmp(line, "detach", 6) == 0) {
      if (tether_detach(p) != 0)
        printf("error: errno=%d %s\n", errno, tether_strerror());
      else
        printf("ok\n");
      fflush(stdout);
      tether_release(apid);
      return 0;
    } else {
      printf("error: unknown command\n");
    }
    fflush(stdout);
  }
  return 0;
}

static int do_map(int argc, char** argv) {
  const char* uid = arg(argc, argv, "--uid");
  if (uid) {
    uid_t u = (uid_t)num(uid, 65534);
    if (setresgid(u, u, u) != 0 || setresuid(u, u, u) != 0) return fail("setresuid");
  }
  int quiet = flag(argc, argv, "--quiet");
  tether_segid_t segid = (tether_segid_t)num(arg(argc, argv, "--segid"), 0);
  const char* name = arg(argc, argv, "--name");
  size_t segsize = 0;
  if (name) {
    segid = tether_lookup(name, &segsize);
    if (segid < 0) return fail("tether_lookup");
  }
  uint64_t off = num(arg(argc, argv, "--offset"), 0);
  uint64_t len = num(arg(argc, argv, "--len"), segsize ? segsize - off : 4096);
  int rdonly = flag(argc, argv, "--rdonly");
  tether_apid_t apid =
      tether_get(segid, rdonly ? TETHER_RDONLY : TETHER_RDWR, TETHER_PERMIT_MODE, NULL);
  if (apid < 0) return fail("tether_get");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  uint8_t* p = tether_attach(apid, (off_t)off, len, NULL);
  if (p == TETHER_ATTACH_FAILED) return fail("tether_attach");
  if (!quiet) printf("attached %" PRIu64 " bytes at %p\n", len, (void*)p);
  if (flag(argc, argv, "--interactive")) return interactive(p, len, apid);
  const char* verify = arg(argc, argv, "--verify");
  if (verify) {
    int64_t bad = -1;
    if (flag(argc, argv, "--check-blocks")) {
      long long max_blocks = 0;
      for (uint64_t o = 0; o < len && bad < 0; o += 1 << 20) {
        uint64_t n = len - o < (1u << 20) ? len - o : (1u << 20);
        bad = check(p + o, off + o, n, num(verify, 0));
        long long b = memfd_bytes(p);
        if (b > max_blocks) max_blocks = b;
      }
      printf("max_blocks=%lld\n", max_blocks);
    } else {
      bad = check(p, off, len, num(verify, 0));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (bad >= 0) {
      printf("error: mismatch at segment offset %" PRId64 "\n", bad);
      return 1;
    }
    if (!quiet)
      printf("verified %" PRIu64 " bytes in %.3f s (%.1f MB/s)\n", len, secs, len / secs / 1e6);
  }
  const char* w = arg(argc, argv, "--write");
  if (w) {
    /* --write SEED OFF LEN: three values after the flag */
    int i;
    for (i = 2; i < argc && strcmp(argv[i], "--write") != 0; ++i) {
    }
    if (i + 3 >= argc) return fail("--write needs SEED OFF LEN");
    uint64_t ws = num(argv[i + 1], 0), wo = num(argv[i + 2], 0), wl = num(argv[i + 3], 0);
    if (wo < off || wo + wl > off + len) {
      errno = EINVAL;
      return fail("--write range outside the attachment");
    }
    fill(p + (wo - off), wo, wl, ws);
    if (!quiet) printf("wrote %" PRIu64 " bytes at segment offset %" PRIu64 "\n", wl, wo);
  }
  if (flag(argc, argv, "--sync")) {
    if (tether_sync(p, len) != 0) return fail("tether_sync");
    if (!quiet) printf("synced\n");
  }
  if (tether_detach(p) != 0) return fail("tether_detach");
  if (tether_release(apid) != 0) return fail("tether_release");
  printf("done\n");
  return 0;
}

/* The symbolic name of an errno tether can return (docs/consistency.md). */
static const char* errno_name(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENOSPC: return "ENOSPC";
    case EPIPE: return "EPIPE";
    case ERANGE: return "ERANGE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENOSYS: return "ENOSYS";
    case EIDRM: return "EIDRM";
    case EPROTO: return "EPROTO";
    case EBADMSG: return "EBADMSG";
    case EMSGSIZE: return "EMSGSIZE";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ECONNRESET: return "ECONNRESET";
    case ENOTCONN: return "ENOTCONN";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    default: return "E?";
  }
}

static void api_error(const char* call) {
  int e = errno;
  printf("error: errno=%d %s %s: %s\n", e, errno_name(e), call, tether_strerror());
}

static int do_api(int argc, char** argv) {
  const char* uid = arg(argc, argv, "--uid");
  if (uid) {
    uid_t u = (uid_t)num(uid, 65534);
    if (setgroups(0, NULL) != 0 || setresgid(u, u, u) != 0 || setresuid(u, u, u) != 0) {
      api_error("setresuid");
      return 1;
    }
  }
  printf("ready\n");
  fflush(stdout);
  char line[512];
  while (fgets(line, sizeof line, stdin)) {
    char cmd[32] = "", a1[300] = "", a2[64] = "", a3[64] = "", a4[64] = "";
    int n = sscanf(line, "%31s %299s %63s %63s %63s", cmd, a1, a2, a3, a4);
    uint64_t x1 = num(a1, 0), x2 = num(a2, 0), x3 = num(a3, 0);
    if (n < 1) {
      printf("error: usage\n");
    } else if (strcmp(cmd, "make") == 0 && n == 3) {
      void* m = mmap(NULL, x1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) {
        api_error("mmap");
      } else {
        memset(m, 1, x1);
        tether_segid_t s = tether_make(m, x1, TETHER_PERMIT_MODE, (void*)(uintptr_t)x2);
        if (s < 0)
          api_error("tether_make");
        else
          printf("ok segid=%" PRId64 "\n", s);
      }
    } else if (strcmp(cmd, "remove") == 0 && n == 2) {
      if (tether_remove((tether_segid_t)x1) != 0)
        api_error("tether_remove");
      else
        printf("ok\n");
    } else if (strcmp(cmd, "publish") == 0 && n == 3) {
      if (tether_publish((tether_segid_t)x1, a2) != 0)
        api_error("tether_publish");
      else
        printf("ok\n");
    } else if (strcmp(cmd, "lookup") == 0 && n == 2) {
      size_t size = 0;
      tether_segid_t s = tether_lookup(a1, &size);
      if (s < 0)
        api_error("tether_lookup");
      else
        printf("ok segid=%" PRId64 " size=%zu\n", s, size);
    } else if (strcmp(cmd, "get") == 0 && n == 3) {
      int fl = strcmp(a2, "rw") == 0 ? TETHER_RDWR : TETHER_RDONLY;
      tether_apid_t ap = tether_get((tether_segid_t)x1, fl, TETHER_PERMIT_MODE, NULL);
      if (ap < 0)
        api_error("tether_get");
      else
        printf("ok apid=%" PRId64 "\n", ap);
    } else if (strcmp(cmd, "release") == 0 && n == 2) {
      if (tether_release((tether_apid_t)x1) != 0)
        api_error("tether_release");
      else
        printf("ok\n");
    } else if (strcmp(cmd, "attach") == 0 && n == 4) {
      void* p = tether_attach((tether_apid_t)x1, (off_t)x2, x3, NULL);
      if (p == TETHER_ATTACH_FAILED)
        api_error("tether_attach");
      else
        printf("ok addr=%#" PRIxPTR "\n", (uintptr_t)p);
    } else if (strcmp(cmd, "detach") == 0 && n == 2) {
      if (tether_detach((void*)(uintptr_t)x1) != 0)
        api_error("tether_detach");
      else
        printf("ok\n");
    } else if ((strcmp(cmd, "sync") == 0 || strcmp(cmd, "acquire") == 0) && n == 3) {
      int sync = cmd[0] == 's';
      int rc =
          sync ? tether_sync((void*)(uintptr_t)x1, x2) : tether_acquire((void*)(uintptr_t)x1, x2);
      if (rc != 0)
        api_error(sync ? "tether_sync" : "tether_acquire");
      else
        printf("ok\n");
    } else if (strcmp(cmd, "read") == 0 && n == 2) {
      printf("ok byte=%u\n", *(volatile uint8_t*)(uintptr_t)x1);
    } else if (strcmp(cmd, "write") == 0 && n == 4) {
      memset((void*)(uintptr_t)x1, (int)x3, x2);
      printf("ok\n");
    } else {
      printf("error: usage\n");
    }
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && strcmp(argv[1], "export") == 0) return do_export(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "map") == 0) return do_map(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "api") == 0) return do_api(argc, argv);
  fprintf(stderr, "usage: tt export|map|api ... (see the comment in tests/tools/tt.c)\n");
  return 2;
}
