/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */
/*
 * tether.h - ioctl ABI of /dev/tether (tether.ko), shared by the kernel module
 * and user space (libtether, tetherd, tests).
 *
 * Two kinds of file descriptors are opened on /dev/tether:
 *
 *  - an *exporter* fd: a process registers ranges of its OWN address space
 *    (TETHER_IOC_REGISTER_RANGE).  The first registration binds the fd to the
 *    caller's mm; later calls from another mm (a forked child, the daemon)
 *    fail with EINVAL.  The exporter hands the fd to its daemon (SCM_RIGHTS).
 *
 *  - a *control* fd: opened by the daemon itself (TETHER_IOC_CONTROL, or
 *    implicitly by the first TETHER_IOC_ATTACH).  The daemon attaches exporter
 *    fds to it, marks the sub-ranges that some mapper caches
 *    (TETHER_IOC_MARK_CACHED / UNMARK_CACHED), reads invalidation events with
 *    read(2) (poll(2) says when there are some) and acknowledges them
 *    (TETHER_IOC_ACK).  Waiters belong to the control fd: closing it releases
 *    every exporter blocked on it at once.
 *
 * Only invalidations that overlap a marked sub-range are forwarded (G3);
 * everything else returns at once.  A blockable BEGIN (flag
 * TETHER_EVF_BLOCKABLE) holds the exporter's call until the daemon acks it,
 * the control fd closes, the exporter gets a fatal signal, or the module's
 * ack_timeout_ms expires (then the module logs it, and a BEGIN the daemon
 * had not read yet is still delivered, flagged TETHER_EVF_LATE).
 *
 * All structures have fixed sizes, only __u64/__u32/__s32 fields, explicit
 * padding that must be zero on input, and are identical for 32- and 64-bit
 * user space.  Any change to a structure or a command is a new
 * TETHER_ABI_VERSION; user space checks it with TETHER_IOC_GET_VERSION.
 * A new command is announced by a TETHER_FEAT_* bit instead (DIRECT_ATTACH,
 * WRITE): a daemon that does not know it never calls it.
 *
 * Addresses and lengths (start, len, offset) must be multiples of the page
 * size (TETHER_IOC_WRITE's pieces excepted); len must not be zero and
 * start + len must not wrap nor pass the end of the user address space.
 * Offsets are relative to the registered range.
 */
#ifndef _UAPI_LINUX_TETHER_H
#define _UAPI_LINUX_TETHER_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define TETHER_ABI_VERSION	2
#define TETHER_DEVICE		"/dev/tether"
#define TETHER_IOC_MAGIC	0xB7

/**
 * struct tether_version - TETHER_IOC_GET_VERSION (any fd)
 * @abi_version:  out: TETHER_ABI_VERSION of the module
 * @event_size:   out: sizeof(struct tether_event) as the module sees it
 * @features:     out: TETHER_FEAT_* bits
 */
struct tether_version {
	__u32 abi_version;
	__u32 event_size;
	__u64 features;
};

#define TETHER_FEAT_SEQ		(1ULL << 0)	/* MARK returns seq, READ_RETRY exists */
#define TETHER_FEAT_DIRECT	(1ULL << 1)	/* TETHER_IOC_DIRECT_ATTACH exists */
#define TETHER_FEAT_WRITE	(1ULL << 2)	/* TETHER_IOC_WRITE exists */

/**
 * struct tether_range_reg - TETHER_IOC_REGISTER_RANGE (exporter fd)
 * @start:    in: page-aligned user address in the caller's mm
 * @len:      in: page-aligned length, > 0
 * @flags:    in: must be 0
 * @range_id: out: module-wide id of the range (> 0, never reused while the
 *            module is loaded... modulo 2^32 wrap of the allocator)
 *
 * Errors: EINVAL (alignment, zero length, wrap, beyond the user address
 * space, flags != 0, fd bound to another mm, exporter already gone),
 * EBADFD (fd is a control fd), ENOSPC (too many ranges), ENOMEM, EFAULT.
 * The range need not be mapped: it is a window of the address space.
 */
struct tether_range_reg {
	__u64 start;
	__u64 len;
	__u64 flags;
	__u64 range_id;
};

/**
 * struct tether_attach - TETHER_IOC_ATTACH (control fd)
 * @fd:          in: exporter fd (e.g. received with SCM_RIGHTS)
 * @pad:         in: must be 0
 * @flags:       in: must be 0
 * @exporter_id: out: id carried in every event of this exporter
 *
 * Errors: EBADF (@fd not open), EINVAL (@fd is not a /dev/tether exporter fd
 * with at least one range, is this fd itself, pad/flags != 0), EBUSY
 * (already attached to a control fd), ESRCH (the exporter's mm is gone),
 * EBADFD (this fd is an exporter fd).
 */
struct tether_attach {
	__s32 fd;
	__u32 pad;
	__u64 flags;
	__u64 exporter_id;
};

/**
 * struct tether_mark - TETHER_IOC_MARK_CACHED / TETHER_IOC_UNMARK_CACHED
 * (control fd)
 * @range_id: in: a range of an exporter attached to THIS control fd
 * @offset:   in: page-aligned offset into the range
 * @len:      in: page-aligned length, > 0, offset + len <= range length
 * @seq:      out: the range's invalidation sequence, taken under the same
 *            lock as the filter.  Odd: an invalidation of the exporter's mm
 *            that overlaps [@offset, @offset + @len) is in progress (a fetch
 *            of it started now must be retried).  Pass it to
 *            TETHER_IOC_READ_RETRY after reading the exporter's memory.
 *
 * MARK is idempotent (overlapping marks merge); UNMARK of unmarked space is
 * a no-op.  Errors: ENOENT (unknown or foreign range id), EINVAL (alignment,
 * zero length, wrap, outside the range), ESRCH (exporter exited), ENOSPC
 * (too many separate marked intervals in one range), EBADFD (exporter fd).
 */
struct tether_mark {
	__u64 range_id;
	__u64 offset;
	__u64 len;
	__u64 seq;
};

/**
 * struct tether_seq - TETHER_IOC_READ_RETRY (control fd)
 * @range_id: in
 * @seq:      in: value returned by MARK_CACHED (or a previous READ_RETRY)
 *
 * Returns 0 when no invalidation touched the range since @seq was taken and
 * none overlapping the range is in progress (the data read meanwhile is
 * valid), -1/EAGAIN when the caller must discard what it read and retry.
 * ENOENT/ESRCH as for MARK.
 */
struct tether_seq {
	__u64 range_id;
	__u64 seq;
};

/**
 * struct tether_range_info - TETHER_IOC_RANGE_INFO (control fd)
 * @range_id:    in: a range of an exporter attached to this control fd
 * @exporter_id: out
 * @start:       out: start address in the exporter's mm
 * @len:         out
 *
 * Lets the daemon check what an exporter claims over its socket.
 */
struct tether_range_info {
	__u64 range_id;
	__u64 exporter_id;
	__u64 start;
	__u64 len;
};

/**
 * struct tether_ack - TETHER_IOC_ACK (control fd)
 * @event_id: in: id of a BEGIN or RELEASE event read from this control fd,
 *            or of the last OVERFLOW flagged TETHER_EVF_BLOCKABLE read
 * @flags:    in: must be 0
 *
 * Errors: ENOENT (no exporter waits for that event: unknown id, already
 * acked, timed out, or an event that nobody waits for: harmless).
 */
struct tether_ack {
	__u64 event_id;
	__u64 flags;
};

/**
 * struct tether_direct - TETHER_IOC_DIRECT_ATTACH (control fd)
 * @range_id: in: a range of an exporter attached to THIS control fd
 * @offset:   in: page-aligned offset into the range
 * @len:      in: page-aligned length, > 0, @offset + @len <= range length
 * @flags:    in: 0 (read-only) or TETHER_DIRECT_WRITE
 * @fd:       out: a new file descriptor (O_CLOEXEC) of the attachment
 *
 * A direct attachment maps the exporter's own pages, not a copy: mmap(2)
 * of @fd (MAP_SHARED only; file offset 0 is @offset of the range; PROT_WRITE
 * only with TETHER_DIRECT_WRITE) shows [@offset, @offset + @len) of the
 * exporter's range, faulted in page by page from the exporter's page
 * tables.  Every invalidation of the exporter's mm over that interval
 * (munmap, madvise, mprotect, COW break, migration, swap-out) unmaps the
 * pages from every mapping of @fd before the exporter's call goes on; the
 * next access faults again and sees what the exporter has there then.
 * An access gets SIGBUS when the exporter has no anonymous memory at that
 * address (unmapped, a file mapping), when the exporter's protection
 * forbids it (a write where the exporter may not write), after the
 * exporter exited, and after its exporter fd was closed.  No page is
 * pinned beyond one fault.  Only the daemon the exporter handed its
 * exporter fd to (the control fd it is attached to) may create one; it
 * passes @fd on to a process on the same node.  Closing @fd and unmapping
 * every mapping of it ends the attachment.
 *
 * Errors: ENOENT (unknown range, or one not attached to this control fd),
 * EINVAL (alignment, zero length, wrap, outside the range, unknown flags),
 * ESRCH (the exporter exited or closed its exporter fd), EBADFD (not a
 * control fd), EMFILE, ENOMEM, EFAULT.  A rejected call creates nothing.
 */
struct tether_direct {
	__u64 range_id;
	__u64 offset;
	__u64 len;
	__u32 flags;
	__s32 fd;
};

#define TETHER_DIRECT_WRITE	(1U << 0)	/* mappings may be PROT_WRITE */

/**
 * struct tether_write_seg - one piece of a TETHER_IOC_WRITE
 * @offset: in: byte offset into the range (any alignment)
 * @len:    in: bytes, > 0; @offset + @len <= range length
 * @buf:    in: address of the bytes in the caller's own memory
 */
struct tether_write_seg {
	__u64 offset;
	__u64 len;
	__u64 buf;
};

#define TETHER_WRITE_MAX_SEGS	1024		/* pieces per TETHER_IOC_WRITE */
#define TETHER_WRITE_MAX_LEN	(1U << 20)	/* bytes per TETHER_IOC_WRITE */

/**
 * struct tether_write - TETHER_IOC_WRITE (control fd)
 * @range_id: in: a range of an exporter attached to THIS control fd
 * @seq:      in: what TETHER_IOC_MARK_CACHED returned for an interval that
 *            covers every piece, taken BEFORE the caller decided the write
 *            may be made (its own checks)
 * @segs:     in: address of an array of @nr_segs struct tether_write_seg
 * @nr_segs:  in: 1..TETHER_WRITE_MAX_SEGS
 * @flags:    in: must be 0
 * @written:  out: bytes written (all of them on success; on EFAULT/EACCES
 *            the pieces before the one refused, that one up to the page
 *            refused)
 *
 * Writes the pieces into the exporter's memory, as process_vm_writev(2)
 * would, but refuses the write whole (ESTALE, nothing written) if an
 * invalidation of the exporter's mm overlapping the range began since
 * @seq was taken, or one overlapping the pieces' span is in progress: the
 * check and the write are made under the exporter's mmap_lock (read), so
 * no munmap, mmap(MAP_FIXED) or mremap can replace the mapping between
 * them.  A write that passed the caller's checks, held up while the
 * exporter replaced the mapping (with mmap_lock held for writing, across
 * the daemon's ack), thus never lands in the new mapping.  The range's
 * sequence moves only with forwarded invalidations, hence MARK (which both
 * marks the interval and returns the sequence).  The exporter's
 * protections are respected (no FOLL_FORCE): a page it may not write is
 * EACCES, an address it has nothing mapped at (or that cannot be faulted
 * in) EFAULT.  The bytes are copied from @buf before the exporter's lock
 * is taken, so the total is bounded (TETHER_WRITE_MAX_LEN).
 *
 * Errors: ESTALE (an invalidation began since @seq, @seq is odd, or one is
 * in progress: nothing written), ENOENT (unknown range, or one not
 * attached to this control fd), EINVAL (flags, @nr_segs, a piece empty,
 * wrapping or outside the range, total over TETHER_WRITE_MAX_LEN), ESRCH
 * (the exporter's address space is gone), EFAULT (@segs or a @buf
 * unreadable: nothing written; an exporter page unmapped), EACCES (an
 * exporter page not writable), ENOMEM, EINTR (fatal signal), EBADFD (not
 * a control fd).  Bad input is refused before anything is written.
 */
struct tether_write {
	__u64 range_id;
	__u64 seq;
	__u64 segs;
	__u32 nr_segs;
	__u32 flags;
	__u64 written;
};

/* struct tether_event.type: what the kernel is doing (mmu_notifier_event) */
enum tether_event_type {
	TETHER_EV_NONE            = 0,
	TETHER_EV_UNMAP           = 1,	/* munmap, mremap (old place), OOM reaper */
	TETHER_EV_CLEAR           = 2,	/* madvise DONTNEED/FREE, COW break, swap, THP, KSM */
	TETHER_EV_PROTECTION_VMA  = 3,	/* mprotect, NUMA hinting */
	TETHER_EV_PROTECTION_PAGE = 4,	/* fork (write-protect for COW) */
	TETHER_EV_SOFT_DIRTY      = 5,
	TETHER_EV_RELEASE         = 6,	/* the exporter's mm is torn down / fd closed */
	TETHER_EV_MIGRATE         = 7,
	TETHER_EV_EXCLUSIVE       = 8,
	TETHER_EV_OTHER           = 15,	/* a kernel event this ABI does not name */
};

/* struct tether_event.kind */
enum tether_event_kind {
	TETHER_KIND_BEGIN    = 1,	/* drop cached copies of [start,end), then ack */
	TETHER_KIND_END      = 2,	/* the kernel finished: fetches may resume */
	TETHER_KIND_RELEASE  = 3,	/* range gone for good: revoke, then ack */
	TETHER_KIND_OVERFLOW = 4,	/* events were lost (no memory / queue full):
					 * treat every range of every exporter on
					 * this control fd as invalidated; with
					 * TETHER_EVF_BLOCKABLE an invalidation
					 * waits for its ack */
};

/* struct tether_event.flags */
#define TETHER_EVF_BLOCKABLE	(1U << 0)	/* the exporter waits for the ack */
#define TETHER_EVF_LATE		(1U << 1)	/* BEGIN/RELEASE: the kernel stopped
						 * waiting before this record was
						 * read (ack timeout, fatal signal)
						 * and went on without the ack */

/**
 * struct tether_event - one record returned by read(2) on a control fd
 * @event_id:    id to pass to TETHER_IOC_ACK (unique per control fd, > 0)
 * @exporter_id: from TETHER_IOC_ATTACH (0 for OVERFLOW)
 * @range_id:    affected range (0 for OVERFLOW)
 * @start:       byte offset in the range where the invalidation starts
 * @end:         byte offset where it ends (exclusive), clamped to the range
 * @seq:         the range's sequence (as MARK returns it) when queued
 * @type:        enum tether_event_type
 * @flags:       TETHER_EVF_*
 * @kind:        enum tether_event_kind
 * @pad:         0
 * @begin_id:    END: the @event_id of its BEGIN (every BEGIN has exactly
 *               one END, queued after it; ENDs of identical concurrent
 *               invalidations are told apart only by this); 0 otherwise
 *
 * read(2) returns whole records only (count < sizeof -> EINVAL), blocks
 * unless O_NONBLOCK (then EAGAIN).  Non-blockable BEGINs (no
 * TETHER_EVF_BLOCKABLE) come from contexts that may not sleep (the OOM
 * reaper): the kernel does not wait, the daemon revokes asynchronously.
 * A BEGIN (or RELEASE) flagged TETHER_EVF_LATE was blockable, but the
 * kernel gave up waiting before the daemon read it: nobody waits for its
 * ack any more, and the pages may already be gone, so the daemon revokes
 * asynchronously as for a non-blockable BEGIN.  Its END follows it.
 * An OVERFLOW flagged TETHER_EVF_BLOCKABLE holds at least one blockable
 * invalidation whose events could not be allocated: it waits (bounded by
 * ack_timeout_ms) until the daemon has treated every range as invalidated
 * and acked that OVERFLOW's @event_id.
 */
struct tether_event {
	__u64 event_id;
	__u64 exporter_id;
	__u64 range_id;
	__u64 start;
	__u64 end;
	__u64 seq;
	__u32 type;
	__u32 flags;
	__u32 kind;
	__u32 pad;
	__u64 begin_id;
};

#define TETHER_IOC_GET_VERSION    _IOR(TETHER_IOC_MAGIC, 0x00, struct tether_version)
#define TETHER_IOC_REGISTER_RANGE _IOWR(TETHER_IOC_MAGIC, 0x01, struct tether_range_reg)
#define TETHER_IOC_CONTROL        _IO(TETHER_IOC_MAGIC, 0x02)
#define TETHER_IOC_ATTACH         _IOWR(TETHER_IOC_MAGIC, 0x03, struct tether_attach)
#define TETHER_IOC_MARK_CACHED    _IOWR(TETHER_IOC_MAGIC, 0x04, struct tether_mark)
#define TETHER_IOC_UNMARK_CACHED  _IOWR(TETHER_IOC_MAGIC, 0x05, struct tether_mark)
#define TETHER_IOC_READ_RETRY     _IOW(TETHER_IOC_MAGIC, 0x06, struct tether_seq)
#define TETHER_IOC_ACK            _IOW(TETHER_IOC_MAGIC, 0x07, struct tether_ack)
#define TETHER_IOC_RANGE_INFO     _IOWR(TETHER_IOC_MAGIC, 0x08, struct tether_range_info)
#define TETHER_IOC_DIRECT_ATTACH  _IOWR(TETHER_IOC_MAGIC, 0x09, struct tether_direct)
#define TETHER_IOC_WRITE          _IOWR(TETHER_IOC_MAGIC, 0x0a, struct tether_write)

#endif /* _UAPI_LINUX_TETHER_H */
