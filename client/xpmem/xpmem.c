/*
 * libxpmem on tether: XPMEM's user API (xpmem.h) on top of libtether's
 * public C API (tether/tether.h) only.
 *
 * XPMEM keeps per-process state in its kernel module: which segments a
 * process made, which permits it holds, where its attachments are. tether
 * keeps some of it in the daemon, keyed differently, so this library keeps
 * small per-process tables to give XPMEM's answers:
 *   - segs: segids this process made and has not removed (xpmem_remove of
 *     anything else is refused; xpmem_get of one's own segment is EINVAL);
 *   - aps:  apids this process got and has not released;
 *   - atts: attachments [addr, addr+size) with their apid (xpmem_detach
 *     takes any address inside one; xpmem_release detaches them first).
 * The tables are guarded by one mutex that is never held across a call to
 * the daemon.
 *
 * Errors follow XPMEM's driver (checks in its order, same errno values);
 * docs/xpmem.md lists them. TETHER_XPMEM_DEBUG=1 prints the reason of every
 * failure to stderr, since XPMEM's API has no error-message function.
 */
#define _GNU_SOURCE
#include "xpmem.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <tether/tether.h>

#define XPMEM_EXPORT __attribute__((visibility("default")))

/* Highest user address + 1 (the kernel's TASK_SIZE with 4-level paging);
 * XPMEM rejects ranges beyond its per-process addr_limit. */
#if defined(__x86_64__)
#define USER_ADDR_LIMIT UINT64_C(0x00007ffffffff000)
#else
#define USER_ADDR_LIMIT (UINT64_C(1) << 48)
#endif

struct att {
  uintptr_t addr;
  size_t size;
  xpmem_apid_t apid;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static xpmem_segid_t* segs;
static size_t nsegs, capsegs;
static xpmem_apid_t* aps;
static size_t naps, capaps;
static struct att* atts;
static size_t natts, capatts;

static size_t page_size(void) {
  static size_t ps;
  if (!ps) {
    long v = sysconf(_SC_PAGESIZE);
    ps = v > 0 ? (size_t)v : 4096;
  }
  return ps;
}

/* Sets errno (after reporting, so stderr output cannot clobber it). */
static int fail(int err, const char* fn, const char* fmt, ...) {
  static int debug = -1;
  if (debug < 0) {
    const char* e = getenv("TETHER_XPMEM_DEBUG");
    debug = e && *e && strcmp(e, "0") != 0;
  }
  if (debug) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "libxpmem(tether): %s: ", fn);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (%s)\n", strerror(err));
    va_end(ap);
  }
  errno = err;
  return -1;
}

/* --- tables (callers hold mu) -------------------------------------------- */

static int grow(void** arr, size_t* cap, size_t n, size_t elem) {
  if (n < *cap) return 0;
  size_t ncap = *cap ? *cap * 2 : 16;
  void* p = realloc(*arr, ncap * elem);
  if (!p) return -1;
  *arr = p;
  *cap = ncap;
  return 0;
}

static int id_index(const __s64* arr, size_t n, __s64 id) {
  for (size_t i = 0; i < n; ++i)
    if (arr[i] == id) return (int)i;
  return -1;
}

static void id_erase(__s64* arr, size_t* n, size_t i) { arr[i] = arr[--*n]; }

static int id_add(__s64** arr, size_t* n, size_t* cap, __s64 id) {
  if (grow((void**)arr, cap, *n, sizeof **arr) != 0) return -1;
  (*arr)[(*n)++] = id;
  return 0;
}

static int att_containing(uintptr_t a) {
  for (size_t i = 0; i < natts; ++i)
    if (a >= atts[i].addr && a - atts[i].addr < atts[i].size) return (int)i;
  return -1;
}

static int att_overlapping(uintptr_t a, size_t size) {
  for (size_t i = 0; i < natts; ++i)
    if (a < atts[i].addr + atts[i].size && atts[i].addr < a + size) return (int)i;
  return -1;
}

static void att_erase(size_t i) { atts[i] = atts[--natts]; }

/* --- the API --------------------------------------------------------------- */

XPMEM_EXPORT int xpmem_version(void) {
  /* Like XPMEM's (an ioctl on /dev/xpmem), this tells whether the service
   * is there: ask the daemon about an apid it never issues. It answers
   * EINVAL; no daemon gives ENOTCONN. */
  if (tether_release(INT64_MAX) == 0 || errno == EINVAL) return XPMEM_CURRENT_VERSION;
  return fail(errno, "xpmem_version", "local tetherd: %s", tether_strerror());
}

XPMEM_EXPORT xpmem_segid_t xpmem_make(void* vaddr, size_t size, int permit_type,
                                      void* permit_value) {
  static const char fn[] = "xpmem_make";
  uintptr_t a = (uintptr_t)vaddr, mode = (uintptr_t)permit_value;
  if (permit_type != XPMEM_PERMIT_MODE)
    return fail(EINVAL, fn, "permit_type %d is not XPMEM_PERMIT_MODE", permit_type);
  if (mode & ~(uintptr_t)0777)
    return fail(EINVAL, fn, "permit mode %#lo has bits beyond 0777", (unsigned long)mode);
  if (size == 0) return fail(EINVAL, fn, "size is zero");
  /* As XPMEM: a range past the end of the user address space is an error
   * unless the size is XPMEM_MAXADDR_SIZE, which then means "to the end".
   * XPMEM computes vaddr + size with wrap-around, so only vaddr NULL gets
   * there (the whole address space, as UCX, Open MPI and MPICH ask at
   * start-up); any other vaddr with that size is EINVAL. Such a segment is
   * watched lazily: only what mappers read is registered (docs/xpmem.md). */
  if (size == XPMEM_MAXADDR_SIZE && a + size > USER_ADDR_LIMIT) {
    size = USER_ADDR_LIMIT - a;
  } else if (a + size < a || a + size > USER_ADDR_LIMIT) {
    return fail(EINVAL, fn, "range [%#lx, +%#zx) leaves the user address space", (unsigned long)a,
                size);
  }
  if (a % page_size() != 0 || size % page_size() != 0)
    return fail(EINVAL, fn, "address and size must be page aligned");
  tether_segid_t segid = tether_make(vaddr, size, TETHER_PERMIT_MODE, permit_value);
  if (segid < 0) return fail(errno, fn, "%s", tether_strerror());
  pthread_mutex_lock(&mu);
  int rc = id_add(&segs, &nsegs, &capsegs, segid);
  pthread_mutex_unlock(&mu);
  if (rc != 0) {
    tether_remove(segid);
    return fail(ENOMEM, fn, "out of memory");
  }
  return segid;
}

XPMEM_EXPORT int xpmem_remove(xpmem_segid_t segid) {
  static const char fn[] = "xpmem_remove";
  if (segid <= 0) return fail(EINVAL, fn, "segid %lld is not positive", (long long)segid);
  pthread_mutex_lock(&mu);
  int i = id_index(segs, nsegs, segid);
  if (i >= 0) id_erase(segs, &nsegs, (size_t)i);
  pthread_mutex_unlock(&mu);
  if (i >= 0) {
    if (tether_remove(segid) != 0) return fail(errno, fn, "%s", tether_strerror());
    return 0;
  }
  /* Not a live segment of this process. XPMEM answers EACCES if the segment
   * lives (in another process) and ENOENT if it does not (or no longer). */
  tether_apid_t probe = tether_get(segid, TETHER_RDONLY, TETHER_PERMIT_MODE, NULL);
  if (probe > 0) {
    tether_release(probe);
    return fail(EACCES, fn, "segment %#llx was made by another process", (unsigned long long)segid);
  }
  if (errno == EACCES)
    return fail(EACCES, fn, "segment %#llx was made by another process", (unsigned long long)segid);
  if (errno == EINVAL || errno == ENOENT)
    return fail(ENOENT, fn, "no segment %#llx (never made, or removed)", (unsigned long long)segid);
  return fail(errno, fn, "%s", tether_strerror());
}

XPMEM_EXPORT xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type,
                                    void* permit_value) {
  static const char fn[] = "xpmem_get";
  (void)permit_value; /* XPMEM's library passes NULL to its driver too */
  if (segid <= 0) return fail(EINVAL, fn, "segid %lld is not positive", (long long)segid);
  if ((flags & ~(XPMEM_RDONLY | XPMEM_RDWR)) ||
      (flags & (XPMEM_RDONLY | XPMEM_RDWR)) == (XPMEM_RDONLY | XPMEM_RDWR))
    return fail(EINVAL, fn, "flags %#x: want XPMEM_RDONLY or XPMEM_RDWR", flags);
  if (permit_type != XPMEM_PERMIT_MODE)
    return fail(EINVAL, fn, "permit_type %d is not XPMEM_PERMIT_MODE", permit_type);
  pthread_mutex_lock(&mu);
  int own = id_index(segs, nsegs, segid) >= 0;
  pthread_mutex_unlock(&mu);
  if (own)
    return fail(EINVAL, fn, "segment %#llx is this process's own", (unsigned long long)segid);
  /* flags 0: XPMEM checks read permission only; grant no more than that. */
  int tflags = flags == XPMEM_RDWR ? TETHER_RDWR : TETHER_RDONLY;
  tether_apid_t apid = tether_get(segid, tflags, TETHER_PERMIT_MODE, NULL);
  if (apid < 0) {
    /* tetherd says EINVAL for a value that cannot be a segid: XPMEM says
     * ENOENT for any positive segid it does not know. */
    if (errno == EINVAL)
      return fail(ENOENT, fn, "no such segment (tetherd: %s)", tether_strerror());
    return fail(errno, fn, "%s", tether_strerror());
  }
  pthread_mutex_lock(&mu);
  int rc = id_add(&aps, &naps, &capaps, apid);
  pthread_mutex_unlock(&mu);
  if (rc != 0) {
    tether_release(apid);
    return fail(ENOMEM, fn, "out of memory");
  }
  return apid;
}

/* Detaches [a, a+size) (already taken out of the table). */
static int detach_one(uintptr_t a, const char* fn) {
  if (tether_detach((void*)a) != 0) return fail(errno, fn, "%s", tether_strerror());
  return 0;
}

XPMEM_EXPORT int xpmem_release(xpmem_apid_t apid) {
  static const char fn[] = "xpmem_release";
  if (apid <= 0) return fail(EINVAL, fn, "apid %lld is not positive", (long long)apid);
  pthread_mutex_lock(&mu);
  int i = id_index(aps, naps, apid);
  if (i >= 0) id_erase(aps, &naps, (size_t)i);
  pthread_mutex_unlock(&mu);
  if (i < 0) return fail(ENOENT, fn, "no apid %#llx in this process", (unsigned long long)apid);
  /* XPMEM's release detaches the permit's attachments. */
  int rc = 0, err = 0;
  for (;;) {
    uintptr_t a = 0;
    pthread_mutex_lock(&mu);
    for (size_t k = 0; k < natts; ++k) {
      if (atts[k].apid == apid && atts[k].size != 0) { /* size 0: attach pending */
        a = atts[k].addr;
        att_erase(k);
        break;
      }
    }
    pthread_mutex_unlock(&mu);
    if (!a) break;
    if (detach_one(a, fn) != 0 && rc == 0) {
      rc = -1;
      err = errno;
    }
  }
  if (tether_release(apid) != 0 && rc == 0) {
    rc = -1;
    err = errno;
    fail(err, fn, "%s", tether_strerror());
  }
  if (rc != 0) errno = err;
  return rc;
}

/* Long because XPMEM's checks come first, each with the errno XPMEM gives
 * (EINVAL for the argument, in XPMEM's order), before the one call that
 * maps; splitting it would scatter that table. */
XPMEM_EXPORT void* xpmem_attach(struct xpmem_addr addr, size_t size, void* vaddr) {
  static const char fn[] = "xpmem_attach";
  const size_t ps = page_size();
  uintptr_t v = (uintptr_t)vaddr;
  if (addr.apid <= 0) {
    fail(EINVAL, fn, "apid %lld is not positive", (long long)addr.apid);
    return (void*)-1;
  }
  if (v && (v >= USER_ADDR_LIMIT - ps)) {
    fail(EINVAL, fn, "vaddr %#lx is outside the user address space", (unsigned long)v);
    return (void*)-1;
  }
  if (v % ps != 0 || addr.offset % (off_t)ps != 0) {
    fail(EINVAL, fn, "vaddr and offset must be page aligned");
    return (void*)-1;
  }
  if (size % ps != 0) { /* XPMEM rounds the size up to whole pages */
    if (size > SIZE_MAX - ps) {
      fail(EINVAL, fn, "size %#zx overflows when rounded up to pages", size);
      return (void*)-1;
    }
    size += ps - size % ps;
  }
  pthread_mutex_lock(&mu);
  int known = id_index(aps, naps, addr.apid) >= 0;
  pthread_mutex_unlock(&mu);
  if (!known) {
    fail(ENOENT, fn, "no apid %#llx in this process", (unsigned long long)addr.apid);
    return (void*)-1;
  }
  if (addr.offset < 0 || size == 0 || (uint64_t)addr.offset + size < (uint64_t)addr.offset) {
    fail(EINVAL, fn, "offset %lld / size %#zx", (long long)addr.offset, size);
    return (void*)-1;
  }
  if (v && (v + size < v || v + size > USER_ADDR_LIMIT)) {
    fail(EINVAL, fn, "[vaddr, vaddr+size) leaves the user address space");
    return (void*)-1;
  }
  /* A fixed address must not land on another attachment (XPMEM: EINVAL);
   * reserve the range in the table while the daemon works. */
  pthread_mutex_lock(&mu);
  if (v && att_overlapping(v, size) >= 0) {
    pthread_mutex_unlock(&mu);
    fail(EINVAL, fn, "[%#lx, +%#zx) overlaps an attachment", (unsigned long)v, size);
    return (void*)-1;
  }
  if (grow((void**)&atts, &capatts, natts, sizeof *atts) != 0) {
    pthread_mutex_unlock(&mu);
    fail(ENOMEM, fn, "out of memory");
    return (void*)-1;
  }
  size_t slot = natts++;
  /* unfixed: a placeholder no lookup can match until the address is known */
  atts[slot] = (struct att){v, v ? size : 0, addr.apid};
  pthread_mutex_unlock(&mu);

  void* p = tether_attach(addr.apid, addr.offset, size, vaddr);
  int err = errno;

  pthread_mutex_lock(&mu);
  /* the table may have moved: find our placeholder again */
  int idx = -1;
  for (size_t k = 0; k < natts; ++k) {
    if (atts[k].apid == addr.apid && atts[k].addr == v && atts[k].size == (v ? size : 0)) {
      idx = (int)k;
      break;
    }
  }
  if (p == TETHER_ATTACH_FAILED) {
    if (idx >= 0) att_erase((size_t)idx);
    pthread_mutex_unlock(&mu);
    fail(err, fn, "%s", tether_strerror());
    return (void*)-1;
  }
  if (idx >= 0) {
    atts[idx].addr = (uintptr_t)p;
    atts[idx].size = size;
  }
  pthread_mutex_unlock(&mu);
  return p;
}

XPMEM_EXPORT int xpmem_detach(void* vaddr) {
  static const char fn[] = "xpmem_detach";
  uintptr_t v = (uintptr_t)vaddr;
  pthread_mutex_lock(&mu);
  int i = att_containing(v);
  uintptr_t start = 0;
  if (i >= 0) {
    start = atts[i].addr;
    att_erase((size_t)i);
  }
  pthread_mutex_unlock(&mu);
  if (i >= 0) return detach_one(start, fn);
  /* XPMEM: nothing mapped there is success; a mapping that is not an
   * attachment is EINVAL. mincore() tells which (ENOMEM: unmapped). */
  const size_t ps = page_size();
  unsigned char vec;
  if (mincore((void*)(v - v % ps), ps, &vec) != 0 && errno == ENOMEM) return 0;
  return fail(EINVAL, fn, "%#lx is not inside an attachment", (unsigned long)v);
}
