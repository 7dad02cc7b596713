/* pattern.h — the byte pattern the packaging test's consumers write and
 * check: every byte depends on the seed, its offset and its page, so a
 * page read from the wrong place or an older version does not match. */
#ifndef TETHER_TESTS_PACKAGING_PATTERN_H_
#define TETHER_TESTS_PACKAGING_PATTERN_H_

#include <stddef.h>
#include <stdint.h>

static inline uint8_t pattern_byte(size_t off, unsigned seed) {
  return (uint8_t)(seed * 131u + off * 7u + (off >> 12) * 13u);
}

static inline void pattern_fill(uint8_t* p, size_t len, unsigned seed) {
  for (size_t i = 0; i < len; i++) p[i] = pattern_byte(i, seed);
}

/* The first offset that does not match, or -1. */
static inline long pattern_check(const uint8_t* p, size_t len, unsigned seed) {
  for (size_t i = 0; i < len; i++)
    if (p[i] != pattern_byte(i, seed)) return (long)i;
  return -1;
}

#endif  // TETHER_TESTS_PACKAGING_PATTERN_H_
