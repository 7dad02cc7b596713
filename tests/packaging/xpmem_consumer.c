/*
 * xpmem_consumer — an XPMEM program built against the installed
 * libtether-xpmem-dev: `cc xpmem_consumer.c $(pkg-config --cflags --libs
 * xpmem)` (and the same with cray-xpmem, UCX's name; tests/packaging/run).
 *
 *   xpmem_consumer SEGID SIZE SEED
 *       xpmem_get + xpmem_attach of [0, SIZE) of segment SEGID (another
 *       node's export: tether's segids are valid across nodes), checks
 *       pattern(SEED), detaches and releases: prints "ok" (exit 0), or
 *       "error: ..." (exit 1).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xpmem.h>

#include "pattern.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: xpmem_consumer SEGID SIZE SEED\n");
    return 2;
  }
  xpmem_segid_t segid = strtoll(argv[1], NULL, 0);
  size_t size = strtoull(argv[2], NULL, 0);
  unsigned seed = (unsigned)strtoul(argv[3], NULL, 0);
  xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL);
  if (apid < 0) {
    printf("error: xpmem_get: errno=%d %s\n", errno, strerror(errno));
    return 1;
  }
  struct xpmem_addr addr = {.apid = apid, .offset = 0};
  const uint8_t* p = xpmem_attach(addr, size, NULL);
  if (p == (void*)-1) {
    printf("error: xpmem_attach: errno=%d %s\n", errno, strerror(errno));
    return 1;
  }
  long bad = pattern_check(p, size, seed);
  if (bad >= 0) {
    printf("error: mismatch at offset %ld\n", bad);
    return 1;
  }
  if (xpmem_detach((void*)p) != 0 || xpmem_release(apid) != 0) {
    printf("error: xpmem_detach/release: errno=%d %s\n", errno, strerror(errno));
    return 1;
  }
  printf("ok\n");
  return 0;
}
