/*
 * xpmem.h — XPMEM's user API, implemented by tether's libxpmem on top of
 * libtether (client/xpmem/README.md, docs/xpmem.md).
 *
 * Types, constants and signatures follow the XPMEM user header
 * (openucx/xpmem include/xpmem.h), so that programs written for XPMEM
 * compile unchanged against this header and link against -lxpmem.
 * Segment ids made here are valid on every node of a tether cluster.
 *
 * What differs from XPMEM, in short (docs/xpmem.md has the whole story):
 *  - An attachment is a cached copy of the exporter's pages, kept by the
 *    attaching node's tetherd, on the exporter's node too. The exporter's
 *    later stores are seen by a new attach (or tether_acquire()); the
 *    consumer's stores reach the exporter at xpmem_detach(),
 *    xpmem_release() or the consumer's exit.
 *  - Whole-address-space exports (vaddr NULL, size XPMEM_MAXADDR_SIZE) work
 *    as in XPMEM (attach offsets are the exporter's addresses); without
 *    tether.ko only anonymous, shmem and hugetlb memory can be attached.
 *
 * All functions return -1 (xpmem_attach: (void *)-1) and set errno on error.
 */
#ifndef XPMEM_H
#define XPMEM_H

#include <linux/types.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Segment id returned by xpmem_make(); > 0, valid cluster-wide. __s64 (long
 * long) exactly as in XPMEM's header, so printf formats and C++ overloads
 * written for XPMEM stay right. */
typedef __s64 xpmem_segid_t;
/* Access permit id returned by xpmem_get(); > 0, valid in this process. */
typedef __s64 xpmem_apid_t;

/* Where to attach: an access permit and an offset into its segment. */
struct xpmem_addr {
  xpmem_apid_t apid; /* apid that represents memory */
  off_t offset;      /* offset into apid's memory */
};

/* xpmem_make() size that, with vaddr NULL, exports the whole address space
 * (segment offset = address); with any other vaddr it is EINVAL, as in
 * XPMEM. */
#define XPMEM_MAXADDR_SIZE ((size_t)(-1L))

/* XPMEM's "unknown thread due to fork()" error number (never set by tether). */
#define XPMEM_ERRNO_NOPROC 2004

/* flags for xpmem_get(): segment permissions */
#define XPMEM_RDONLY 0x1
#define XPMEM_RDWR 0x2

/* permit_type values for xpmem_make()/xpmem_get() */
enum {
  /* permit_value is a Unix mode (mask 0777): any other bit is an error. */
  XPMEM_PERMIT_MODE = 0x1,
};

/* The XPMEM interface level this library implements (major 12 bits, minor
 * 16 bits), returned by xpmem_version(). */
#define XPMEM_CURRENT_VERSION 0x00027004
#define XPMEM_CURRENT_VERSION_STRING "2.7.4"

/* XPMEM_CURRENT_VERSION if the local tetherd answers; -1 (errno ENOTCONN)
 * if it does not, so that "xpmem_version() < 0" still means "no XPMEM". */
int xpmem_version(void);

/* Shares [vaddr, vaddr+size) of the calling process (page aligned, size > 0)
 * under a Unix mode: permit_value is (void *)0600 and the like. */
xpmem_segid_t xpmem_make(void* vaddr, size_t size, int permit_type, void* permit_value);
/* Stops sharing a segment made by this process; mappers' later accesses to
 * pages they do not hold raise SIGBUS. */
int xpmem_remove(xpmem_segid_t segid);

/* Permission to attach segid (any node, the caller's own segments too, as
 * in XPMEM), checked at its home against the caller's uid/gid. flags: XPMEM_RDONLY or XPMEM_RDWR (0
 * means read-only). permit_type must be XPMEM_PERMIT_MODE; permit_value is ignored, as in XPMEM's
 * own library. */
xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type, void* permit_value);
/* Detaches this permit's attachments (writing back), then gives it up. */
int xpmem_release(xpmem_apid_t apid);

/* Maps [addr.offset, addr.offset+size) of the segment (offset page aligned;
 * size rounded up to pages) at vaddr (page aligned, MAP_FIXED) or where the
 * system chooses (vaddr NULL). Read-only permits give read-only mappings. */
void* xpmem_attach(struct xpmem_addr addr, size_t size, void* vaddr);
/* Writes back and unmaps the attachment that contains vaddr. */
int xpmem_detach(void* vaddr);

#ifdef __cplusplus
}
#endif

#endif /* XPMEM_H */
