/*
 * tt_race — the stale-read race test of G1 (docs/architecture.md, "The
 * invalidation contract"), against tether.h only.
 *
 *   tt_race export --pages N --iters K --seed S --log FILE --name NAME [--gap-us G]
 *       Exports N pages; word 0 of each page holds its epoch (> 0). After
 *       "go" on stdin, K times: picks pages at random and replaces them
 *       (mmap MAP_FIXED), frees them (madvise DONTNEED) or moves them away
 *       (mremap + new memory in their place), logs (time the call returned,
 *       pages, newest epoch they held), then stores a fresh epoch; then
 *       sleeps G us (default 0), so that slow mappers (emulated machines)
 *       read between the calls too.
 *   tt_race map --name NAME --pages N --seed S --log FILE
 *       Reads random pages in a tight loop until "stop" on stdin, logging
 *       (time the read started, page, epoch seen); SIGBUS (a page read in
 *       the instant it was unmapped) re-attaches.
 *   tt_race check --log EXPORTER_LOG MAPPER_LOG[@OFFSET_NS,SLACK_NS]...
 *       A read that started after a call returned must not see an epoch
 *       that call replaced (0, a freed page's zeros, is always allowed).
 *       A mapper log from another machine (a second VM) carries its clock's
 *       offset from the exporter's (remote minus local, CLOCK_MONOTONIC) and
 *       the offset's error bound: its reads count as "after" a call only if
 *       they started more than SLACK_NS after it (no false alarms; a stale
 *       read later than that is still caught).
 *       Prints "violations=V reads=R checked=K calls=C" and exits 1 if
 *       V > 0; K counts the reads that could have been stale: non-zero,
 *       started after some call on their page had returned.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <tether/tether.h>

#define PAGE 4096ul

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static const char* arg(int argc, char** argv, const char* name) {
  for (int i = 2; i < argc - 1; ++i)
    if (strcmp(argv[i], name) == 0) return argv[i + 1];
  return NULL;
}

static int do_export(int argc, char** argv) {
  uint64_t pages = strtoull(arg(argc, argv, "--pages"), NULL, 0);
  uint64_t iters = strtoull(arg(argc, argv, "--iters"), NULL, 0);
  const char* gap_arg = arg(argc, argv, "--gap-us");
  useconds_t gap_us = gap_arg ? (useconds_t)strtoul(gap_arg, NULL, 0) : 0;
  rng_state = strtoull(arg(argc, argv, "--seed"), NULL, 0) | 1;
  const char* log = arg(argc, argv, "--log");
  uint8_t* mem =
      mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t* epoch = calloc(pages, sizeof(uint64_t));
  uint64_t next = 1;
  for (uint64_t p = 0; p < pages; ++p) *(volatile uint64_t*)(mem + p * PAGE) = epoch[p] = next++;
  tether_segid_t segid = tether_make(mem, pages * PAGE, TETHER_PERMIT_MODE, (void*)0644);
  if (segid < 0 || tether_publish(segid, arg(argc, argv, "--name")) != 0) {
    printf("error: %s\n", tether_strerror());
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  char line[64];
  if (!fgets(line, sizeof line, stdin)) return 1;
  FILE* f = fopen(log, "w");
  uint64_t counts[3] = {0};
  for (uint64_t i = 0; i < iters; ++i) {
    uint64_t first = rnd() % pages, n = 1 + rnd() % 4;
    if (first + n > pages) n = pages - first;
    uint64_t newest = 0;
    for (uint64_t p = first; p < first + n; ++p)
      if (epoch[p] > newest) newest = epoch[p];
    int op = (int)(rnd() % 3);
    uint8_t* at = mem + first * PAGE;
    size_t len = n * PAGE;
    int rc = 0;
    if (op == 0) {
      rc = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
           MAP_FAILED;
    } else if (op == 1) {
      rc = madvise(at, len, MADV_DONTNEED);
    } else {
      void* away = mremap(at, len, len, MREMAP_MAYMOVE);
      rc = away == MAP_FAILED;
      if (!rc) {
        munmap(away, len);
        rc = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                  0) == MAP_FAILED;
      }
    }
    uint64_t t = now_ns();
    if (rc) {
      printf("error: op %d: %s\n", op, strerror(errno));
      return 1;
    }
    ++counts[op];
    fprintf(f, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", t, first, n, newest);
    for (uint64_t p = first; p < first + n; ++p)
      *(volatile uint64_t*)(mem + p * PAGE) = epoch[p] = next++;
    if (rnd() % 4 == 0) usleep(rnd() % 300);
    if (gap_us) usleep(gap_us);
  }
  fclose(f);
  free(epoch);
  printf("done replace=%" PRIu64 " dontneed=%" PRIu64 " mremap=%" PRIu64 "\n", counts[0], counts[1],
         counts[2]);
  return 0;
}

static sigjmp_buf jump;
static void on_sigbus(int sig) {
  (void)sig;
  siglongjmp(jump, 1);
}

static int do_map(int argc, char** argv) {
  uint64_t pages = strtoull(arg(argc, argv, "--pages"), NULL, 0);
  rng_state = (strtoull(arg(argc, argv, "--seed"), NULL, 0) + 1) * 0x9e3779b97f4a7c15ull;
  size_t segsize = 0;
  tether_segid_t segid = tether_lookup(arg(argc, argv, "--name"), &segsize);
  if (segid < 0) {
    printf("error: %s\n", tether_strerror());
    return 1;
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_sigbus;
  sigaction(SIGBUS, &sa, NULL);
  size_t cap = 4u << 20, count = 0;
  uint64_t* rec = malloc(cap * 3 * sizeof(uint64_t));
  uint64_t sigbus = 0;
  tether_apid_t apid = tether_get(segid, TETHER_RDONLY, TETHER_PERMIT_MODE, NULL);
  volatile uint8_t* p = tether_attach(apid, 0, pages * PAGE, NULL);
  if (apid < 0 || p == TETHER_ATTACH_FAILED) {
    printf("error: %s\n", tether_strerror());
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  struct pollfd in = {0, POLLIN, 0};
  for (uint64_t i = 0;; ++i) {
    if ((i & 1023) == 0 && poll(&in, 1, 0) > 0) break;
    uint64_t page = rnd() % pages;
    uint64_t t = now_ns();
    if (sigsetjmp(jump, 1)) {
      /* The library made the page raise SIGBUS (it was unmapped when we
       * fetched it): start over with a new attachment. */
      ++sigbus;
      tether_detach((void*)p);
      p = tether_attach(apid, 0, pages * PAGE, NULL);
      if (p == TETHER_ATTACH_FAILED) {
        printf("error: reattach: %s\n", tether_strerror());
        return 1;
      }
      continue;
    }
    uint64_t v = *(volatile uint64_t*)(p + page * PAGE);
    if (count < cap) {
      rec[3 * count] = t;
      rec[3 * count + 1] = page;
      rec[3 * count + 2] = v;
      ++count;
    }
  }
  FILE* f = fopen(arg(argc, argv, "--log"), "w");
  for (size_t i = 0; i < count; ++i)
    fprintf(f, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", rec[3 * i], rec[3 * i + 1], rec[3 * i + 2]);
  fclose(f);
  free(rec);
  printf("reads=%zu sigbus=%" PRIu64 "\n", count, sigbus);
  return 0;
}

struct call {
  uint64_t t, first, n, newest;
};
static int by_time(const void* a, const void* b) {
  const struct call *x = a, *y = b;
  return x->t < y->t ? -1 : x->t > y->t;
}

static int do_check(int argc, char** argv) {
  const char* elog = arg(argc, argv, "--log");
  FILE* f = fopen(elog, "r");
  if (!f) return 2;
  size_t ncalls = 0, cap = 1024;
  struct call* calls = malloc(cap * sizeof *calls);
  struct call c;
  while (fscanf(f, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &c.t, &c.first, &c.n,
                &c.newest) == 4) {
    if (ncalls == cap) calls = realloc(calls, (cap *= 2) * sizeof *calls);
    calls[ncalls++] = c;
  }
  fclose(f);
  qsort(calls, ncalls, sizeof *calls, by_time);
  uint64_t violations = 0, reads = 0, checked = 0;
  for (int i = 4; i < argc; ++i) {
    char path[4096];
    int64_t offset = 0, slack = 0;
    snprintf(path, sizeof path, "%s", argv[i]);
    char* at = strrchr(path, '@');
    if (at) {
      *at = 0;
      if (sscanf(at + 1, "%" SCNd64 ",%" SCNd64, &offset, &slack) != 2 || slack < 0) return 2;
      printf("%s: clock offset %" PRId64 " ns, slack %" PRId64 " ns\n", path, offset, slack);
    }
    FILE* m = fopen(path, "r");
    if (!m) return 2;
    uint64_t t, page, v;
    while (fscanf(m, "%" SCNu64 " %" SCNu64 " %" SCNu64, &t, &page, &v) == 3) {
      ++reads;
      if (v == 0) continue;
      t = (uint64_t)((int64_t)t - offset - slack); /* exporter's clock, minus the doubt */
      /* newest epoch replaced on this page by a call that returned before t */
      int after_a_call = 0;
      for (size_t k = 0; k < ncalls && calls[k].t < t; ++k) {
        if (page < calls[k].first || page >= calls[k].first + calls[k].n) continue;
        after_a_call = 1;
        if (v <= calls[k].newest) {
          if (violations < 10)
            printf("violation: page %" PRIu64 " read at %" PRIu64 " saw epoch %" PRIu64
                   ", replaced by a call that returned at %" PRIu64 "\n",
                   page, t, v, calls[k].t);
          ++violations;
          break;
        }
      }
      checked += (uint64_t)after_a_call;
    }
    fclose(m);
  }
  free(calls);
  printf("violations=%" PRIu64 " reads=%" PRIu64 " checked=%" PRIu64 " calls=%zu\n", violations,
         reads, checked, ncalls);
  return violations ? 1 : 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && strcmp(argv[1], "export") == 0) return do_export(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "map") == 0) return do_map(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "check") == 0) return do_check(argc, argv);
  fprintf(stderr, "usage: see tests/tools/tt_race.c\n");
  return 2;
}
