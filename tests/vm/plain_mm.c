/*
 * plain_mm — the baseline process of `tests/vm/run --bench`: the same
 * calls as `tt export`'s munmap/dontneed, in a process that never touched
 * tether (no /dev/tether, no mmu notifier on its mm).  Reads stdin lines:
 *   munmap LEN    fresh private anonymous LEN bytes, every byte written,
 *                 then munmap() timed                       -> "ok MS"
 *   dontneed LEN  a LEN-byte region (kept across calls), every byte
 *                 written, then madvise(MADV_DONTNEED) timed -> "ok MS"
 *   quit
 * MS has tt's format (milliseconds, 3 decimals).
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double ms_since(const struct timespec *a) {
  struct timespec b;
  clock_gettime(CLOCK_MONOTONIC, &b);
  return (b.tv_sec - a->tv_sec) * 1e3 + (b.tv_nsec - a->tv_nsec) / 1e6;
}

static void populate(uint8_t *p, uint64_t len, unsigned round) {
  for (uint64_t i = 0; i < len; ++i) p[i] = (uint8_t)(i * 131 + round);
}

int main(void) {
  char line[128];
  uint8_t *keep = NULL;
  uint64_t keep_len = 0;
  unsigned round = 0;
  while (fgets(line, sizeof line, stdin)) {
    uint64_t len;
    struct timespec a;
    ++round;
    if (sscanf(line, "munmap %" SCNu64, &len) == 1 && len > 0) {
      uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) { printf("error: mmap\n"); fflush(stdout); continue; }
      populate(m, len, round);
      clock_gettime(CLOCK_MONOTONIC, &a);
      int rc = munmap(m, len);
      double ms = ms_since(&a);
      if (rc) printf("error: munmap\n");
      else printf("ok %.3f\n", ms);
    } else if (sscanf(line, "dontneed %" SCNu64, &len) == 1 && len > 0) {
      if (keep && keep_len != len) { munmap(keep, keep_len); keep = NULL; }
      if (!keep) {
        keep = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (keep == MAP_FAILED) { keep = NULL; printf("error: mmap\n"); fflush(stdout); continue; }
        keep_len = len;
      }
      populate(keep, len, round);
      clock_gettime(CLOCK_MONOTONIC, &a);
      int rc = madvise(keep, len, MADV_DONTNEED);
      double ms = ms_since(&a);
      if (rc) printf("error: madvise\n");
      else printf("ok %.3f\n", ms);
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    } else {
      printf("error: unknown command\n");
    }
    fflush(stdout);
  }
  return 0;
}
