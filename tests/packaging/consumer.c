/*
 * consumer — a program built the way a user builds one against the
 * installed libtether-dev: `cc consumer.c $(pkg-config --cflags --libs
 * tether)` (tests/packaging/run). It is not part of the CMake build: what
 * it proves is that the installed headers, tether.pc and libtether.so.0 are
 * enough.
 *
 *   consumer export NAME SIZE SEED
 *       Fills SIZE bytes with pattern(SEED), tether_make()s and publishes
 *       them as NAME, prints "segid=ID" and "ready", then obeys stdin lines
 *       until EOF: "fill SEED" rewrites the whole range -> "ok".
 *   consumer read NAME SEED
 *       tether_lookup(NAME), tether_get + tether_attach (read-only) of the
 *       whole segment, checks pattern(SEED): prints "ok" (exit 0), or
 *       "error: ..." (exit 1).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <tether/tether.h>

#include "pattern.h"

static int fail(const char* what) {
  int e = errno;
  printf("error: %s: errno=%d %s\n", what, e, tether_strerror());
  return 1;
}

static int do_export(const char* name, size_t size, unsigned seed) {
  uint8_t* mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return fail("mmap");
  pattern_fill(mem, size, seed);
  tether_segid_t segid = tether_make(mem, size, TETHER_PERMIT_MODE, (void*)(uintptr_t)0644);
  if (segid < 0) return fail("tether_make");
  if (tether_publish(segid, name) != 0) return fail("tether_publish");
  printf("segid=%" PRId64 "\nready\n", segid);
  fflush(stdout);
  char line[128];
  while (fgets(line, sizeof(line), stdin)) {
    unsigned s;
    if (sscanf(line, "fill %u", &s) == 1) {
      pattern_fill(mem, size, s);
      printf("ok\n");
    } else {
      printf("error: unknown command\n");
    }
    fflush(stdout);
  }
  return tether_remove(segid) == 0 ? 0 : fail("tether_remove");
}

static int do_read(const char* name, unsigned seed) {
  size_t size = 0;
  tether_segid_t segid = tether_lookup(name, &size);
  if (segid < 0) return fail("tether_lookup");
  tether_apid_t apid = tether_get(segid, TETHER_RDONLY, TETHER_PERMIT_MODE, NULL);
  if (apid < 0) return fail("tether_get");
  const uint8_t* p = tether_attach(apid, 0, size, NULL);
  if (p == TETHER_ATTACH_FAILED) return fail("tether_attach");
  long bad = pattern_check(p, size, seed);
  if (bad >= 0) {
    printf("error: mismatch at offset %ld\n", bad);
    return 1;
  }
  if (tether_detach((void*)p) != 0) return fail("tether_detach");
  if (tether_release(apid) != 0) return fail("tether_release");
  printf("ok\n");
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 5 && strcmp(argv[1], "export") == 0)
    return do_export(argv[2], strtoull(argv[3], NULL, 0), (unsigned)strtoul(argv[4], NULL, 0));
  if (argc == 4 && strcmp(argv[1], "read") == 0)
    return do_read(argv[2], (unsigned)strtoul(argv[3], NULL, 0));
  fprintf(stderr, "usage: consumer export NAME SIZE SEED | consumer read NAME SEED\n");
  return 2;
}
