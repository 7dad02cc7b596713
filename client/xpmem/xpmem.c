/*
 * libxpmem on tether: XPMEM's user API (xpmem.h) on top of libtether's
 * public C API (tether/tether.h) only.
 *
 * XPMEM keeps per-process state in its kernel module: which segments a
 * process made, which permits it holds, where its attachments are. tether
 * keeps some of it in the daemon, keyed differently, so this library keeps
 * small per-process tables to give XPMEM's answers:
 *   - segs: segments this process made and has not removed, with their
 *     range (xpmem_remove of anything else is refused; an attachment of
 *     one's own segment at a fixed address over its own source range is
 *     EINVAL, as XPMEM's overlap check);
 *   - aps:  apids this process got and has not released, with their segid
 *     (a process may get its own segments, as on XPMEM);
 *   - atts: attachments [addr, addr+size) with their apid (xpmem_detach
 *     takes any address inside one; xpmem_release detaches them first);
 *   - parent_aps: after fork(), the apids the parent held: they are not
 *     the child's (xpmem_release of one is EACCES, as XPMEM answers).
 * The tables are guarded by one mutex that is never held across a call to
 * the daemon.
 *
 * fork(): XPMEM's state is per thread group, so a child starts with none:
 * no segments, no permits, and no attachments (XPMEM maps them
 * VM_DONTCOPY; libtether maps them MADV_DONTFORK, so the child has
 * nothing mapped there). A pthread_atfork handler makes the tables say
 * the same in the child: without it the child would believe it made its
 * parent's segments and held its permits and attachments. libtether gives
 * the child a connection of its own to tetherd.
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

struct seg {
  xpmem_segid_t segid;
  uintptr_t vaddr; /* segment offset 0 is this address (0 for whole-space) */
  size_t size;
};

struct ap {
  xpmem_apid_t apid;
  xpmem_segid_t segid;
};

struct att {
  uintptr_t addr;
  size_t size;
  xpmem_apid_t apid;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct seg* segs;
static size_t nsegs, capsegs;
static struct ap* aps;
static size_t naps, capaps;
static struct att* atts;
static size_t natts, capatts;
static xpmem_apid_t* parent_aps;
static size_t nparent_aps, capparent_aps;

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

static int seg_index(xpmem_segid_t segid) {
  for (size_t i = 0; i < nsegs; ++i)
    if (segs[i].segid == segid) return (int)i;
  return -1;
}

static int ap_index(xpmem_apid_t apid) {
  for (size_t i = 0; i < naps; ++i)
    if (aps[i].apid == apid) return (int)i;
  return -1;
}

static int parent_ap_index(xpmem_apid_t apid) {
  for (size_t i = 0; i < nparent_aps; ++i)
    if (parent_aps[i] == apid) return (int)i;
  return -1;
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
  int rc = grow((void**)&segs, &capsegs, nsegs, sizeof *segs);
  if (rc == 0) segs[nsegs++] = (struct seg){segid, a, size};
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
  int i = seg_index(segid);
  if (i >= 0) segs[i] = segs[--nsegs];
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
  /* One's own segment too: XPMEM lets a process get and attach it. flags 0: XPMEM checks read
   * permission only; grant no more than that. */
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
  int rc = grow((void**)&aps, &capaps, naps, sizeof *aps);
  if (rc == 0) aps[naps++] = (struct ap){apid, segid};
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
  int i = ap_index(apid);
  if (i >= 0) aps[i] = aps[--naps];
  int parents = i < 0 && parent_ap_index(apid) >= 0;
  pthread_mutex_unlock(&mu);
  /* XPMEM: a permit of another process (here: the parent's, inherited by
   * fork) is EACCES; one nobody holds is ENOENT. */
  if (parents)
    return fail(EACCES, fn, "apid %#llx belongs to the parent process", (unsigned long long)apid);
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
  int k = ap_index(addr.apid);
  int known = k >= 0, parents = !known && parent_ap_index(addr.apid) >= 0;
  /* The source range, if the permit is for one of this process's own live
   * segments: XPMEM refuses to map a segment over its own source. */
  int own = 0;
  uintptr_t src = 0;
  if (known) {
    int sg = seg_index(aps[k].segid);
    if (sg >= 0) {
      own = 1;
      src = segs[sg].vaddr + (uintptr_t)addr.offset;
    }
  }
  pthread_mutex_unlock(&mu);
  if (parents) {
    fail(EACCES, fn, "apid %#llx belongs to the parent process", (unsigned long long)addr.apid);
    return (void*)-1;
  }
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
  /* As XPMEM: one's own segment may not be attached on top of the memory
   * it exports there (the attachment would replace its own source). */
  if (own && v && v < src + size && src < v + size) {
    fail(EINVAL, fn, "[%#lx, +%#zx) overlaps the segment's own source range", (unsigned long)v,
         size);
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

/* --- fork ------------------------------------------------------------------ */

/* Held across fork(), so that the child never inherits it locked. */
static void before_fork(void) { pthread_mutex_lock(&mu); }
static void after_fork_parent(void) { pthread_mutex_unlock(&mu); }

/* The child is a new XPMEM process: it made no segments (its parent's stay
 * the parent's: xpmem_remove of one is EACCES), holds no permits (the
 * parent's are remembered only to answer EACCES for xpmem_release) and has
 * no attachments (libtether's are MADV_DONTFORK: nothing is mapped there,
 * so xpmem_detach of such an address succeeds and does nothing). */
static void after_fork_child(void) {
  /* (Out of memory: the rest then answer ENOENT instead of EACCES.) */
  for (size_t i = 0; i < naps; ++i) {
    if (grow((void**)&parent_aps, &capparent_aps, nparent_aps, sizeof *parent_aps) != 0) break;
    parent_aps[nparent_aps++] = aps[i].apid;
  }
  nsegs = 0;
  naps = 0;
  natts = 0;
  pthread_mutex_unlock(&mu);
}

__attribute__((constructor)) static void register_fork_handlers(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
