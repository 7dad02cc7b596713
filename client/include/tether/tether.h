/*
 * tether.h — the tether C API.
 *
 * XPMEM-shaped (make / get / attach / detach / release / remove) with
 * segids that are valid across nodes, plus sync (write back), acquire
 * (drop stale clean copies) and name publish/lookup.
 *
 * Errors: functions return -1 (tether_attach: TETHER_ATTACH_FAILED) and set
 * errno; tether_strerror() returns the daemon's message for the calling
 * thread's last error. An error decided by the segment's home on another
 * node arrives with the errno the home chose, and its message names that
 * node. Every call but tether_version/_strerror can fail with EINVAL (bad
 * argument), ENOTCONN (the local tetherd is not running) and EAGAIN (the
 * calling uid, or all users together, hold as many connections to tetherd
 * as it allows: --local_max_connections_per_uid, --local_max_connections;
 * retry after closing some, e.g. in exited processes); the table of
 * what else each call returns, and when, is in docs/consistency.md,
 * "Errors (errno) a program should expect". Below, per call, the errnos
 * beyond those three.
 *
 * Consistency (docs/consistency.md): home memory is authoritative. A mapper
 * sees the home's contents as of its last fault or tether_acquire(); its
 * writes reach the home at tether_sync(), tether_detach() or process exit.
 * On the home node with tether.ko an attachment of anonymous memory maps
 * the exporter's pages themselves (a direct attachment): both sides see
 * each other's stores at once ($TETHER_ATTACH_COPY=1: a copy instead).
 *
 * The library talks to the local tetherd at $TETHER_SOCKET (default
 * /run/tether/tetherd.sock). All functions are thread-safe.
 */
#ifndef TETHER_TETHER_H_
#define TETHER_TETHER_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TETHER_API_VERSION 0x00010000

typedef int64_t tether_segid_t; /* > 0; carries home node and incarnation */
typedef int64_t tether_apid_t;  /* > 0; permission to attach, this process */

/* permit_type for tether_make/tether_get */
#define TETHER_PERMIT_MODE 0x1
/* flags for tether_get */
#define TETHER_RDONLY 0x1
#define TETHER_RDWR 0x2

#define TETHER_ATTACH_FAILED ((void*)-1)

int tether_version(void);

/* Exports [vaddr, vaddr+size) of the calling process (page aligned).
 * permit_value is the mode, XPMEM style: (void *)(uintptr_t)0600. */
tether_segid_t tether_make(void* vaddr, size_t size, int permit_type, void* permit_value);
/* Revokes every attachment of the segment: mappers get SIGBUS or errors.
 * Only at the segment's home node. ENOENT: no live segment with that segid
 * on this node; EPERM: the caller is neither its owner nor root. */
int tether_remove(tether_segid_t segid);

/* Permission to map a segment of any node, checked at its home with the
 * caller's credentials. The apid belongs to the calling process.
 * ENOENT: no such segment (removed, exporter exited, from before its home
 * restarted, node not in the cluster); EACCES: its permit denies this
 * uid/gid; EIDRM: the home fenced this node for it; EHOSTUNREACH: the
 * home does not answer. */
tether_apid_t tether_get(tether_segid_t segid, int flags, int permit_type, void* permit_value);
/* EBUSY: the apid still has attachments. Never reports the home's errors. */
int tether_release(tether_apid_t apid);

/* Maps [offset, offset+size) of the segment; returns the address, or
 * TETHER_ATTACH_FAILED. vaddr != NULL asks for that address (MAP_FIXED).
 * EOPNOTSUPP: with tether.ko, the exporter attaching its own segment where
 * no direct attachment can be made (docs/consistency.md). */
void* tether_attach(tether_apid_t apid, off_t offset, size_t size, void* vaddr);
/* Writes back, then unmaps the attachment that starts at vaddr. Returns
 * once every write-back of the attachment landed at the home (or fails). */
int tether_detach(void* vaddr);

/* Writes the caller's stores in [addr, addr+size) back to the home.
 * EIDRM: the attachment was revoked (segment removed, exporter exited, this
 * node fenced); EIO: writes to memory the exporter unmapped were discarded;
 * EACCES: the home refused the write (exporter memory not writable);
 * EHOSTUNREACH, ECONNREFUSED, ETIMEDOUT: the home cannot be reached (the
 * dirty pages are kept); ENOENT: the home restarted. tether_detach writes
 * back first and fails the same way, but the attachment is gone anyway —
 * except EIO: writes lost only because the exporter unmapped their memory
 * do not fail a detach (as XPMEM's detach of a dead range). */
int tether_sync(void* addr, size_t size);
/* Drops clean cached pages in the range: the next access refetches. */
int tether_acquire(void* addr, size_t size);

/* Exporter side: bracket a change of this process's exported memory
 * explicitly. When tether_invalidate_begin() returns, no mapper holds a copy
 * of [addr, addr+size) and their faults there wait; tether_invalidate_end()
 * lets them fetch again (gone != 0: the range no longer exists, so their
 * unsynced writes to it are discarded). Returns a handle > 0, or -1.
 * Works with or without tether.ko, for any change (also mprotect, which
 * the user-space notifier cannot see). */
int64_t tether_invalidate_begin(void* addr, size_t size);
int tether_invalidate_end(int64_t handle, int gone);
/* munmap(2) bracketed by the two above. */
int tether_munmap(void* addr, size_t size);

/* Names are cluster-wide; lookup asks this node, then its peers.
 * publish acts at the segment's home only: ENOENT (no live segment with
 * that segid on this node), EPERM (not the owner), EEXIST (the name is
 * taken on this node; other nodes' names are not checked). lookup: ENOENT
 * when no node that answers has the name. */
int tether_publish(tether_segid_t segid, const char* name);
tether_segid_t tether_lookup(const char* name, size_t* size_out);

/* The daemon's (or library's) message for this thread's last error. */
const char* tether_strerror(void);

#ifdef __cplusplus
}
#endif

#endif /* TETHER_TETHER_H_ */
