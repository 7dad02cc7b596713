// SPDX-License-Identifier: GPL-2.0
/*
 * tether_notifier.c - exporters, ranges, marks and the mmu notifier.
 *
 * ==========================================================================
 * Concurrency protocol
 * ==========================================================================
 *
 * Objects and references
 *   tether_file      one per open(2); its mutex only serialises role binding
 *                    and setup ioctls of that fd.  Never taken by notifier
 *                    callbacks.
 *   tether_mm        one per mm that has exporters: THE mmu notifier of that
 *                    mm, shared by all its exporter fds (mmu_notifier_get()
 *                    refcounts it per ops + mm: one reference per exporter,
 *                    dropped when the exporter is freed; the kernel frees
 *                    it after an SRCU grace period, tether_mn_free()).  It
 *                    holds the interval tree of every exporter's ranges, the
 *                    invalidations in progress and the in-flight ENDs.
 *   tether_exporter  refs: the exporter file, the attachment to a ctl (the
 *                    ctl's ->exporters list), short ioctl lookups.
 *   tether_range     lives exactly as long as its exporter; found by id via
 *                    the tether_ranges xarray (lookups take an exporter
 *                    reference with kref_get_unless_zero under xa_lock).
 *   tether_ctl       refs: the control file, each attached exporter
 *                    (exp->ctl), each notifier call that queues to it.
 *
 * Why one notifier per mm, not per exporter fd
 *   libtether opens one exporter fd per export, so a process exporting N
 *   segments has N exporter fds on one mm.  With a notifier per fd, one
 *   munmap over all N ran N invalidate_range_start callbacks one after the
 *   other, each queueing its BEGIN and waiting for its ack: N deadlines
 *   for the exporter when a mapper is frozen.  With one notifier per mm,
 *   one callback finds the overlapping ranges of every exporter in
 *   tm->ranges, queues every BEGIN (on whichever ctls they are attached to,
 *   at most TETHER_MAX_MM_CTLS) and only then waits for all of them with
 *   one deadline; each END goes out after the zap, from the end callback.
 *
 * Locks, outermost first (a lock is only ever taken while holding locks
 * above it in this list):
 *   tether_file.lock (mutex)  ->  tm->lock (spinlock)  ->  ctl->lock (spinlock)
 * plus xa_lock(tether_ranges), which nests inside nothing of ours except
 * around kref_get_unless_zero.  tm->lock protects the tm and the
 * non-constant fields of every exporter and range of that mm ("exp->tm->lock"
 * below is the lock of the exporter's mm).  Notifier callbacks take
 * tm->lock and ctl->lock, never both at once, and never sleep while
 * holding either; ATTACH nests ctl->lock inside tm->lock.
 * tether_file.lock is held around mmu_notifier_get() (which takes the mm's
 * mmap_lock for write); no notifier callback takes it.
 *
 * Every function that must be called with one of these locks held says so
 * on its "Context:" line and checks it with lockdep_assert_held() (active
 * on CONFIG_LOCKDEP kernels only); a function that takes a lock itself
 * says "takes".  This comment is the one description of the protocol; the
 * kernel-doc of each function and the field comments in tether_internal.h
 * state only their own part of it.
 *
 * The notifier (classic mmu_notifier on the exporter's mm, one per mm)
 *   invalidate_range_start(r), under tm->lock:
 *     1. record [r->start, r->end) in a free slot of tm->inprog keyed by
 *        r (every invalidation of the mm, forwarded or not, like KVM's
 *        mn_active_invalidate_count but by address); when all
 *        TETHER_MAX_INPROG slots are taken, count it in
 *        tm->inprog_untracked instead, which means "the whole mm".  No
 *        allocation.  start/end calls of one subscription are balanced
 *        because mmu_notifier_get() registers it under mm_take_all_locks();
 *        an exporter that joins an existing tm finds the invalidations
 *        already running recorded there.
 *     2. G3 filter: unless some range of the mm has marks, return at once.
 *        Otherwise, for every registered range of any exporter of the mm
 *        that overlaps r, is attached, and has a marked interval
 *        overlapping r: allocate a BEGIN and an END event (GFP_NOWAIT),
 *        bump range->seq, give the BEGIN its event id now (an atomic
 *        counter of the exporter's ctl, which is stable under tm->lock)
 *        and copy it into the END's begin_id, put END on tm->inflight keyed
 *        by r, and BEGIN on the call's batch for that ctl (struct
 *        tether_batch, one per tm->ctls slot).  If an allocation fails,
 *        note an overflow for that ctl.
 *     3. take a reference on each ctl with a batch.
 *   then, without tm->lock: queue every batch's BEGINs on its ctl and, if
 *   r is blockable, wait (killable, bounded by ack_timeout_ms for all of
 *   them together) for their acks and, for a ctl whose events were lost,
 *   for the ack of an OVERFLOW read after the loss (the daemon acks it once
 *   every range was invalidated).
 *   No allocation in start may enter reclaim, blockable or not: the caller
 *   holds the mmu notifier lockdep map, which fs_reclaim is ordered after
 *   (start is called from reclaim).  A BEGIN the daemon had not read when
 *   the wait ended (timeout, fatal signal) is not dropped: it stays queued,
 *   flagged LATE, and is the ctl's (tether_ctl.c).
 *   invalidate_range_end(r), under tm->lock: free r's tm->inprog slot
 *   (or decrement inprog_untracked), take the END events keyed by r off
 *   tm->inflight, bump range->seq; then queue them, after their BEGINs.
 *
 * Why marks and the filter share one lock and one sequence (G3 + G1)
 *   The daemon calls MARK_CACHED before it reads the exporter's memory for
 *   a fetch.  MARK takes tm->lock, adds the mark and returns
 *   seq = range->seq << 1 | (an invalidation overlapping the marked
 *   interval is in progress).  After reading, the daemon calls
 *   READ_RETRY(seq): it succeeds only if no forwarded BEGIN/END touched the
 *   range and no invalidation overlapping the range is in progress.
 *   - An invalidation that starts after MARK sees the mark (same lock) and
 *     is forwarded: the daemon drops the copy before the kernel goes on.
 *   - One that started before MARK and overlaps the marked interval was not
 *     forwarded, but it keeps its tm->inprog slot (or inprog_untracked)
 *     until its end: MARK returns an odd seq or READ_RETRY fails, and the
 *     daemon retries.  One that does not overlap it cannot change what the
 *     fetch reads, so a stalled window on one segment no longer makes every
 *     fetch of the exporter's other segments retry.  (This is the
 *     mmu_interval_notifier read_begin/read_retry pattern, with the "in
 *     progress" state kept per address interval.)
 *
 * G4 - non-blockable invalidations: classic start/end ops
 *   The kernel's rule (mm/mmu_notifier.c): a notifier whose
 *   invalidate_range_start may fail with -EAGAIN must not implement
 *   invalidate_range_end.  We implement invalidate_range_end (it is how the
 *   daemon learns the kernel has finished, so mappers may fault again), so
 *   invalidate_range_start NEVER fails.  When the range is not blockable
 *   (today only the OOM reaper tearing down a dying exporter) we do not
 *   sleep: the BEGIN is allocated with GFP_NOWAIT, queued under spinlocks
 *   and delivered WITHOUT TETHER_EVF_BLOCKABLE; the kernel goes on at once
 *   and the daemon revokes the remote copies asynchronously.  That is safe
 *   because remote copies are copies, not references to the exporter's
 *   pages: nothing remote can touch a page the reaper frees, and what a
 *   mapper may still read for a moment is the content of a process that
 *   is being killed (its RELEASE follows).  The alternative,
 *   mmu_interval_notifier (return false when !blockable, no end callback,
 *   end derived from the interval sequence), would need one interval per
 *   range and an extra thread to turn sequence changes into END events;
 *   the classic ops give us END for free and one filter walk per event.
 *
 * RELEASE (the mm is torn down, or an exporter file is released)
 *   ->release() (exit_mmap() only: mmu_notifier_put() never calls it)
 *   queues one RELEASE per range of every exporter of the mm, marked or
 *   not (attachments exist without cached pages), and waits for all the
 *   acks together like a blockable BEGIN (so exit() returns after remote
 *   copies are revoked), bounded by the timeout; during that wait the OOM
 *   reaper may still call invalidate_range_start non-blockably, so marks
 *   are cleared only afterwards.  An exporter file released while the mm
 *   lives takes its own ranges out of tm (tether_exporter_teardown()) and
 *   queues their RELEASEs without waiting: the releasing thread may be the
 *   daemon's own event loop.  The other exporters of the mm stay.
 *
 * G5 - no deadlock
 *   Callbacks may run with the exporter's mmap_lock (read or write), a page
 *   lock or i_mmap_rwsem held.  While waiting for an ack we hold none of
 *   our locks and never touch user memory; read(2)/ACK never take
 *   mmap_lock of the exporter, so the daemon can always answer.  Nothing
 *   here calls back into mm code except mmu_notifier_get/put, which run
 *   from ioctl / the final exporter put (process context, no spinlock).
 *
 * Detach (ctl closed) clears every mark of the exporter and bumps
 * attach_gen; an END whose BEGIN went to an older attachment is dropped.
 * ==========================================================================
 */
#include <linux/atomic.h>
#include <linux/memcontrol.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "tether_internal.h"

static atomic64_t tether_next_exporter_id = ATOMIC64_INIT(0);

/* ---------------------------------------------------------------- marks */

/**
 * tether_marks_overlap() - does a marked interval of @range meet [@s, @e)?
 * @range: range
 * @s:     start offset into the range
 * @e:     end offset (exclusive)
 *
 * Context: range->exp->tm->lock held (the G3 filter, from tether_mn_start()).
 * Return: true if some marked interval overlaps [@s, @e).
 */
static bool tether_marks_overlap(struct tether_range *range, u64 s, u64 e)
{
	struct tether_ival *iv;

	lockdep_assert_held(&range->exp->tm->lock);

	list_for_each_entry(iv, &range->marks, node) {
		if (iv->start >= e)
			break;
		if (iv->end > s)
			return true;
	}
	return false;
}

/**
 * tether_marks_add() - add [@s, @e) to the marked intervals of @range
 * @range: range
 * @s:     start offset into the range
 * @e:     end offset (exclusive)
 * @pre:   a preallocated interval; consumed (set to NULL) if a new node is
 *         needed
 *
 * Keeps the set sorted, merging overlapping and adjacent intervals.
 *
 * Context: range->exp->tm->lock held (from tether_range_mark()).
 * Return: 0, or -ENOSPC (TETHER_MAX_MARKS intervals already).
 */
static int tether_marks_add(struct tether_range *range, u64 s, u64 e,
			    struct tether_ival **pre)
{
	struct tether_ival *iv, *tmp, *m = NULL;
	struct list_head *pos = &range->marks;

	lockdep_assert_held(&range->exp->tm->lock);

	list_for_each_entry_safe(iv, tmp, &range->marks, node) {
		if (iv->end < s)
			continue;
		if (iv->start > (m ? m->end : e)) {
			pos = &iv->node;
			break;
		}
		if (!m) {
			m = iv;
			m->start = min(m->start, s);
			m->end = max(m->end, e);
		} else {
			m->end = max(m->end, iv->end);
			list_del(&iv->node);
			kfree(iv);
			range->nr_marks--;
		}
	}
	if (m)
		return 0;
	if (range->nr_marks >= TETHER_MAX_MARKS)
		return -ENOSPC;
	m = *pre;
	*pre = NULL;
	m->start = s;
	m->end = e;
	list_add_tail(&m->node, pos);	/* before pos: keeps the list sorted */
	range->nr_marks++;
	return 0;
}

/**
 * tether_marks_remove() - remove [@s, @e) from the marked intervals of @range
 * @range: range
 * @s:     start offset into the range
 * @e:     end offset (exclusive)
 * @pre:   a preallocated interval; splitting one interval consumes it
 *
 * Context: range->exp->tm->lock held (from tether_range_mark()).
 */
static void tether_marks_remove(struct tether_range *range, u64 s, u64 e,
				struct tether_ival **pre)
{
	struct tether_ival *iv, *tmp, *n;

	lockdep_assert_held(&range->exp->tm->lock);

	list_for_each_entry_safe(iv, tmp, &range->marks, node) {
		if (iv->start >= e)
			break;
		if (iv->end <= s)
			continue;
		if (iv->start < s && iv->end > e) {
			n = *pre;
			*pre = NULL;
			n->start = e;
			n->end = iv->end;
			iv->end = s;
			list_add(&n->node, &iv->node);
			range->nr_marks++;
			break;
		}
		if (iv->start >= s && iv->end <= e) {
			list_del(&iv->node);
			kfree(iv);
			range->nr_marks--;
		} else if (iv->start < s) {
			iv->end = s;
		} else {
			iv->start = e;
		}
	}
}

/**
 * tether_marks_clear() - forget every marked interval of @range
 * @tm:    the mm of the range's exporter
 * @range: range
 *
 * Context: tm->lock held (from tether_mn_release(), tether_exporter_detach()
 * and tether_exporter_teardown()).
 */
static void tether_marks_clear(struct tether_mm *tm, struct tether_range *range)
{
	struct tether_ival *iv, *tmp;

	lockdep_assert_held(&tm->lock);

	if (list_empty(&range->marks))
		return;
	list_for_each_entry_safe(iv, tmp, &range->marks, node) {
		list_del(&iv->node);
		kfree(iv);
	}
	range->nr_marks = 0;
	WARN_ON_ONCE(tm->nr_marked == 0);
	tm->nr_marked--;
}

/* --------------------------------------------------------------- events */

static u32 tether_event_type(enum mmu_notifier_event event)
{
	switch (event) {
	case MMU_NOTIFY_UNMAP:		return TETHER_EV_UNMAP;
	case MMU_NOTIFY_CLEAR:		return TETHER_EV_CLEAR;
	case MMU_NOTIFY_PROTECTION_VMA:	return TETHER_EV_PROTECTION_VMA;
	case MMU_NOTIFY_PROTECTION_PAGE: return TETHER_EV_PROTECTION_PAGE;
	case MMU_NOTIFY_SOFT_DIRTY:	return TETHER_EV_SOFT_DIRTY;
	case MMU_NOTIFY_RELEASE:	return TETHER_EV_RELEASE;
	case MMU_NOTIFY_MIGRATE:	return TETHER_EV_MIGRATE;
#if TETHER_HAVE_MMU_NOTIFY_EXCLUSIVE
	case MMU_NOTIFY_EXCLUSIVE:	return TETHER_EV_EXCLUSIVE;
#endif
	default:			return TETHER_EV_OTHER;
	}
}

/* ---------------------------------------------- invalidations in progress */

/**
 * tether_inprog_add() - an invalidation of the exporter's mm starts
 * @tm:  the exporter's mm
 * @r:   its range (the key tether_inprog_del() finds it by)
 *
 * Takes a free slot of tm->inprog, or counts it as untracked (the whole
 * mm) when all TETHER_MAX_INPROG are in use.  No allocation: this runs for
 * every invalidation of the mm, forwarded or not, in any context.
 *
 * Context: tm->lock held (from tether_mn_start()).
 */
static void tether_inprog_add(struct tether_mm *tm,
			      const struct mmu_notifier_range *r)
{
	unsigned int i;

	lockdep_assert_held(&tm->lock);

	if (tm->nr_inprog < TETHER_MAX_INPROG) {
		for (i = 0; i < TETHER_MAX_INPROG; i++) {
			if (tm->inprog[i].key)
				continue;
			tm->inprog[i].key = r;
			tm->inprog[i].start = r->start;
			tm->inprog[i].end = r->end;
			tm->nr_inprog++;
			return;
		}
		WARN_ON_ONCE(1);	/* nr_inprog says there is a free slot */
	}
	tm->inprog_untracked++;
}

/**
 * tether_inprog_del() - the invalidation keyed @r ends
 * @tm:  the exporter's mm
 * @r:   the range tether_inprog_add() saw (start and end of one
 *       invalidation get the same object)
 *
 * Context: tm->lock held (from tether_mn_end()).
 */
static void tether_inprog_del(struct tether_mm *tm,
			      const struct mmu_notifier_range *r)
{
	unsigned int i;

	lockdep_assert_held(&tm->lock);

	for (i = 0; i < TETHER_MAX_INPROG; i++) {
		if (tm->inprog[i].key != r)
			continue;
		tm->inprog[i].key = NULL;
		tm->nr_inprog--;
		return;
	}
	/* It found no slot at start; start/end are balanced (see above). */
	if (!WARN_ON_ONCE(tm->inprog_untracked == 0))
		tm->inprog_untracked--;
}

/**
 * tether_inprog_overlaps() - is an invalidation of [@start, @end) running?
 * @tm:    the exporter's mm
 * @start: user address
 * @end:   user address (exclusive)
 *
 * Context: tm->lock held.
 * Return: true if an invalidation in progress overlaps the interval, or
 * one is in progress that found no slot (it may cover anything).
 */
static bool tether_inprog_overlaps(struct tether_mm *tm, u64 start,
				   u64 end)
{
	unsigned int i, seen = 0;

	lockdep_assert_held(&tm->lock);

	if (tm->inprog_untracked)
		return true;
	for (i = 0; i < TETHER_MAX_INPROG && seen < tm->nr_inprog; i++) {
		if (!tm->inprog[i].key)
			continue;
		seen++;
		if (tm->inprog[i].start < end && tm->inprog[i].end > start)
			return true;
	}
	return false;
}

/**
 * tether_mm_busy() - is an invalidation of [@start, @end) of the mm running?
 * @tm:    the exporter's mm
 * @start: user address
 * @end:   user address (exclusive)
 *
 * For the faults of direct attachments (tether_direct.c).
 *
 * Context: tm->lock held.
 * Return: as tether_inprog_overlaps().
 */
bool tether_mm_busy(struct tether_mm *tm, u64 start, u64 end)
{
	return tether_inprog_overlaps(tm, start, end);
}

/**
 * tether_range_seq() - the sequence MARK and READ_RETRY report for @range
 * @tm:    the mm of the range's exporter
 * @range: range
 * @s:     start offset into the range of the interval asked about
 * @e:     end offset (exclusive)
 *
 * Context: tm->lock held (range->seq and tm->inprog are read together).
 * Return: range->seq << 1, or'ed with 1 while an invalidation overlapping
 * [@s, @e) of the range is in progress.
 */
static u64 tether_range_seq(struct tether_mm *tm, struct tether_range *range,
			    u64 s, u64 e)
{
	lockdep_assert_held(&tm->lock);

	return (range->seq << 1) |
	       (tether_inprog_overlaps(tm, range->start + s,
				       range->start + e) ? 1 : 0);
}

/**
 * tether_fill() - fill in a new event for @range
 * @ev:    event from tether_kevent_alloc()
 * @exp:   the range's exporter
 * @range: range
 * @s:     start offset into the range
 * @e:     end offset (exclusive)
 * @type:  TETHER_EV_*
 * @flags: TETHER_EVF_*
 * @kind:  TETHER_KIND_*
 *
 * Context: exp->tm->lock held (reads range->seq, tm->inprog, exp->attach_gen).
 */
static void tether_fill(struct tether_kevent *ev, struct tether_exporter *exp,
			struct tether_range *range, u64 s, u64 e, u32 type,
			u32 flags, u32 kind)
{
	lockdep_assert_held(&exp->tm->lock);

	ev->range = range;
	ev->uev.exporter_id = exp->id;
	ev->uev.range_id = range->id;
	ev->uev.start = s;
	ev->uev.end = e;
	ev->uev.seq = tether_range_seq(exp->tm, range, s, e);
	ev->uev.type = type;
	ev->uev.flags = flags;
	ev->uev.kind = kind;
	ev->attach_gen = exp->attach_gen;
}

/**
 * tether_free_list() - free events that were never queued
 * @evs: events linked by ->node, on no shared list any more
 *
 * Context: any context; no lock needed (the list is the caller's own).
 */
static void tether_free_list(struct list_head *evs)
{
	struct tether_kevent *ev, *tmp;

	list_for_each_entry_safe(ev, tmp, evs, node) {
		list_del_init(&ev->node);
		tether_kevent_free(ev);
	}
}

/* ------------------------------------------------------------- notifier */

/**
 * tether_batch_for() - the batch of @exp's ctl in a notifier call
 * @b:   the call's batches, indexed like tm->ctls
 * @exp: an attached exporter
 *
 * The first use of a slot takes a ctl reference for the call (dropped by
 * tether_batches_put()) and starts an empty event list.
 *
 * Context: exp->tm->lock held (exp->ctl and exp->ctl_slot are stable).
 * Return: the batch.
 */
static struct tether_batch *tether_batch_for(struct tether_batch *b,
					     struct tether_exporter *exp)
{
	struct tether_batch *bt = &b[exp->ctl_slot];

	lockdep_assert_held(&exp->tm->lock);

	if (!bt->ctl) {
		bt->ctl = exp->ctl;
		tether_ctl_get(bt->ctl);
		INIT_LIST_HEAD(&bt->evs);
		bt->overflow = false;
		bt->overflow_gen = 0;
	}
	WARN_ON_ONCE(bt->ctl != exp->ctl);	/* a slot names one ctl */
	return bt;
}

/**
 * tether_queue_releases() - a RELEASE event for each of @exp's ranges
 * @bt:       @exp's batch (tether_batch_for())
 * @exp:      the exporter whose ranges go away
 * @prealloc: events allocated beforehand; one is taken per range
 * @waitlist: NULL for RELEASEs nobody waits for (an exporter fd closed);
 *            else they are blockable and added here, for tether_ctl_wait()
 *            (the address space is going away)
 *
 * When @prealloc runs out, @bt is marked overflowed instead.
 *
 * Context: exp->tm->lock held.
 */
static void tether_queue_releases(struct tether_batch *bt,
				  struct tether_exporter *exp,
				  struct list_head *prealloc,
				  struct list_head *waitlist)
{
	struct tether_range *range;
	struct tether_kevent *ev;

	lockdep_assert_held(&exp->tm->lock);

	list_for_each_entry(range, &exp->range_list, node) {
		if (list_empty(prealloc)) {
			bt->overflow = true;
			return;
		}
		ev = list_first_entry(prealloc, struct tether_kevent, node);
		list_move_tail(&ev->node, &bt->evs);
		range->seq++;
		tether_fill(ev, exp, range, 0, range->len, TETHER_EV_RELEASE,
			    waitlist ? TETHER_EVF_BLOCKABLE : 0,
			    TETHER_KIND_RELEASE);
		if (waitlist) {
			ev->waiter = true;
			ev->ctl = bt->ctl;
			list_add_tail(&ev->wnode, waitlist);
		}
	}
}

/**
 * tether_batches_queue() - queue the events of every used batch
 * @b:         batches (TETHER_MAX_MM_CTLS)
 * @blockable: the caller will wait: ask for the overflow generations
 *
 * Context: any context, no lock of ours held; never sleeps.
 * Return: true if some batch has an OVERFLOW to wait for.
 */
static bool tether_batches_queue(struct tether_batch *b, bool blockable)
{
	bool ov = false;
	unsigned int i;

	for (i = 0; i < TETHER_MAX_MM_CTLS; i++) {
		if (!b[i].ctl)
			continue;
		tether_ctl_queue(b[i].ctl, &b[i].evs, b[i].overflow,
				 blockable ? &b[i].overflow_gen : NULL);
		ov |= b[i].overflow_gen != 0;
	}
	return ov;
}

/* Context: any context; drops the references tether_batch_for() took. */
static void tether_batches_put(struct tether_batch *b)
{
	unsigned int i;

	for (i = 0; i < TETHER_MAX_MM_CTLS; i++)
		if (b[i].ctl)
			tether_ctl_put(b[i].ctl);
}

/**
 * tether_mn_start() - invalidate_range_start
 * @mn: the mm's subscription (shared by all its exporters)
 * @r:  the range being invalidated
 *
 * Context: process context; blockable or not (mmu_notifier_range_blockable);
 * the caller may hold the exporter's mmap_lock, page locks, i_mmap_rwsem
 * (G5), and holds the notifier SRCU read lock.  Takes tm->lock then
 * ctl->lock (not nested); sleeps only if blockable, holding none of ours.
 * Return: always 0 (see G4 above: we implement invalidate_range_end).
 */
static int tether_mn_start(struct mmu_notifier *mn,
			   const struct mmu_notifier_range *r)
{
	struct tether_mm *tm = container_of(mn, struct tether_mm, mn);
	bool blockable = mmu_notifier_range_blockable(r);
	struct tether_batch b[TETHER_MAX_MM_CTLS] = {};
	struct interval_tree_node *it;
	bool ov;
	struct tether_kevent *ev, *end;
	LIST_HEAD(waitlist);
	bool direct;
	u32 type;

	if (WARN_ON_ONCE(r->end <= r->start))
		return 0;

	spin_lock(&tm->lock);
	tether_inprog_add(tm, r);
	/* Faults of direct attachments that raced with us see it change. */
	direct = tm->nr_direct;
	if (direct)
		tm->direct_seq++;
	if (!tm->nr_marked) {
		spin_unlock(&tm->lock);	/* G3 fast path */
		if (direct)
			tether_direct_zap(tm, r->start, r->end, NULL);
		return 0;
	}
	type = tether_event_type(r->event);
	for (it = interval_tree_iter_first(&tm->ranges, r->start, r->end - 1);
	     it; it = interval_tree_iter_next(it, r->start, r->end - 1)) {
		struct tether_range *range =
			container_of(it, struct tether_range, it);
		struct tether_exporter *exp = range->exp;
		u64 s = max_t(u64, r->start, range->start) - range->start;
		u64 e = min_t(u64, r->end, range->start + range->len) -
			range->start;
		struct tether_batch *bt;

		/* Marks exist only while attached (detach clears them). */
		if (!exp->ctl || !tether_marks_overlap(range, s, e))
			continue;
		bt = tether_batch_for(b, exp);
		ev = tether_kevent_alloc_charged(exp->memcg, GFP_NOWAIT);
		end = tether_kevent_alloc_charged(exp->memcg, GFP_NOWAIT);
		if (!ev || !end) {
			if (ev)
				tether_kevent_free(ev);
			if (end)
				tether_kevent_free(end);
			bt->overflow = true;
			continue;
		}
		range->seq++;
		ev->waiter = blockable;
		tether_fill(ev, exp, range, s, e, type,
			    ev->waiter ? TETHER_EVF_BLOCKABLE : 0,
			    TETHER_KIND_BEGIN);
		tether_fill(end, exp, range, s, e, type, 0, TETHER_KIND_END);
		/* exp->ctl is stable under tm->lock: ids of that ctl */
		ev->uev.event_id = tether_ctl_next_id(exp->ctl);
		end->uev.begin_id = ev->uev.event_id;
		end->key = r;
		list_add_tail(&end->node, &tm->inflight);
		list_add_tail(&ev->node, &bt->evs);
		if (ev->waiter) {
			ev->ctl = bt->ctl;
			list_add_tail(&ev->wnode, &waitlist);
		}
	}
	spin_unlock(&tm->lock);

	/*
	 * Every BEGIN of this invalidation, for every exporter of the mm and
	 * every ctl, is queued before we wait for any: the daemons handle
	 * them together, and the wait costs one timeout at most.  Direct
	 * attachments are zapped while the daemons work.
	 */
	ov = tether_batches_queue(b, blockable);
	if (direct)
		tether_direct_zap(tm, r->start, r->end, NULL);
	if (ov || !list_empty(&waitlist)) {
		might_sleep();
		tether_ctl_wait(&waitlist, b, TETHER_MAX_MM_CTLS);
	}
	tether_batches_put(b);
	return 0;
}

/**
 * tether_mn_end() - invalidate_range_end
 * @mn: the mm's subscription
 * @r:  the same range object start saw
 *
 * Context: as tether_mn_start(); takes tm->lock then ctl->lock (not
 * nested); never sleeps.
 */
static void tether_mn_end(struct mmu_notifier *mn,
			  const struct mmu_notifier_range *r)
{
	struct tether_mm *tm = container_of(mn, struct tether_mm, mn);
	struct tether_batch b[TETHER_MAX_MM_CTLS] = {};
	struct tether_kevent *ev, *tmp;
	LIST_HEAD(stale);
	bool wake;

	if (r->end <= r->start)
		return;		/* start ignored it (and warned) */

	spin_lock(&tm->lock);
	tether_inprog_del(tm, r);
	wake = tm->nr_direct;
	list_for_each_entry_safe(ev, tmp, &tm->inflight, node) {
		struct tether_exporter *exp = ev->range->exp;

		if (ev->key != r)
			continue;
		ev->key = NULL;
		ev->range->seq++;
		ev->uev.seq = tether_range_seq(tm, ev->range, ev->uev.start,
					       ev->uev.end);
		if (exp->ctl && ev->attach_gen == exp->attach_gen)
			list_move_tail(&ev->node, &tether_batch_for(b, exp)->evs);
		else
			list_move_tail(&ev->node, &stale);
	}
	spin_unlock(&tm->lock);

	/* Faults of direct attachments wait for the end of invalidations. */
	if (wake)
		wake_up_all(&tm->direct_wq);
	tether_free_list(&stale);
	tether_batches_queue(b, false);
	tether_batches_put(b);
}

/**
 * tether_mn_release() - the exporter's address space goes away
 * @mn: the mm's subscription
 * @mm: the mm
 *
 * Called from exit_mmap() (the exporter exits) only: exporter files
 * released before leave the mm themselves (tether_exporter_teardown()), and
 * mmu_notifier_put() never calls it.  Queues one RELEASE per range of every
 * exporter of the mm and waits for all the acks together.
 *
 * Context: process context, may sleep; no mm locks held by the caller (the
 * notifier SRCU read lock only).  Takes tm->lock, then ctl->lock (not
 * nested), and waits holding neither.
 */
static void tether_mn_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct tether_mm *tm = container_of(mn, struct tether_mm, mn);
	struct tether_batch b[TETHER_MAX_MM_CTLS] = {};
	struct tether_exporter *exp;
	struct tether_kevent *ev, *tmp;
	struct tether_range *range;
	struct mem_cgroup *memcg;
	unsigned int n = 0, i;
	LIST_HEAD(prealloc);
	LIST_HEAD(waitlist);

	/*
	 * No exporter or range can be added now: REGISTER needs
	 * current->mm == mm, and the mm has no users left.  So preallocate
	 * outside the spinlock.
	 */
	spin_lock(&tm->lock);
	list_for_each_entry(exp, &tm->exporters, mm_node)
		if (exp->ctl)
			n += exp->nr_ranges;
	spin_unlock(&tm->lock);
	/*
	 * The last mmput may be another task's (a /proc reader's): charge
	 * the mm's own cgroup, that of the exporters' process.
	 */
	memcg = get_mem_cgroup_from_mm(mm);
	for (i = 0; i < n; i++) {
		ev = tether_kevent_alloc_charged(memcg, GFP_KERNEL);
		if (!ev)
			break;
		list_add_tail(&ev->node, &prealloc);
	}
	mem_cgroup_put(memcg);

	spin_lock(&tm->lock);
	if (WARN_ON_ONCE(tm->mm_gone)) {	/* called once per subscription */
		spin_unlock(&tm->lock);
		tether_free_list(&prealloc);
		return;
	}
	tm->mm_gone = true;	/* faults of direct attachments: SIGBUS */
	list_for_each_entry(exp, &tm->exporters, mm_node)
		if (exp->ctl)
			tether_queue_releases(tether_batch_for(b, exp), exp,
					      &prealloc, &waitlist);
	spin_unlock(&tm->lock);
	tether_free_list(&prealloc);
	/* Before exit_mmap() frees the pages they map. */
	tether_direct_zap(tm, 0, ULLONG_MAX, NULL);

	if (tether_batches_queue(b, true) || !list_empty(&waitlist))
		tether_ctl_wait(&waitlist, b, TETHER_MAX_MM_CTLS);
	tether_batches_put(b);

	/* Nothing is cached for a dead address space. */
	spin_lock(&tm->lock);
	list_for_each_entry(exp, &tm->exporters, mm_node)
		list_for_each_entry(range, &exp->range_list, node)
			tether_marks_clear(tm, range);
	list_for_each_entry_safe(ev, tmp, &tm->inflight, node)
		list_move_tail(&ev->node, &prealloc);
	spin_unlock(&tm->lock);
	/* END events of invalidations still running will not be sent. */
	tether_free_list(&prealloc);
}

/**
 * tether_mn_alloc() - mmu_notifier_get() found no subscription for @mm
 * @mm: the mm
 *
 * Context: process context, may sleep; the caller holds @mm's mmap_lock for
 * write (mmu_notifier_get()).
 * Return: the new tm's notifier, or ERR_PTR(-ENOMEM).
 */
static struct mmu_notifier *tether_mn_alloc(struct mm_struct *mm)
{
	struct tether_mm *tm = kzalloc(sizeof(*tm), GFP_KERNEL_ACCOUNT);

	if (!tm)
		return ERR_PTR(-ENOMEM);
	spin_lock_init(&tm->lock);
	tm->ranges = RB_ROOT_CACHED;
	INIT_LIST_HEAD(&tm->exporters);
	INIT_LIST_HEAD(&tm->inflight);
	INIT_LIST_HEAD(&tm->directs);
	init_waitqueue_head(&tm->direct_wq);
	return &tm->mn;
}

/**
 * tether_mn_free() - the last mmu_notifier_put() of the mm's subscription
 * @mn: the subscription
 *
 * Runs after an SRCU grace period: no callback uses it any more, and no
 * exporter refers to it (each held a reference until it was freed).
 *
 * Context: SRCU callback (softirq); must not sleep.
 */
static void tether_mn_free(struct mmu_notifier *mn)
{
	struct tether_mm *tm = container_of(mn, struct tether_mm, mn);

	WARN_ON(!list_empty(&tm->exporters) || !list_empty(&tm->inflight) ||
		!list_empty(&tm->directs));
	kfree(tm);
}

static const struct mmu_notifier_ops tether_mn_ops = {
	.release		= tether_mn_release,
	.invalidate_range_start	= tether_mn_start,
	.invalidate_range_end	= tether_mn_end,
	.alloc_notifier		= tether_mn_alloc,
	.free_notifier		= tether_mn_free,
};

/**
 * tether_notifier_exit() - module unload: wait for freed subscriptions
 *
 * Context: process context (module exit), may sleep.
 */
void tether_notifier_exit(void)
{
	mmu_notifier_synchronize();
}

/* ------------------------------------------------------------ exporters */

/**
 * tether_exporter_create() - allocate an exporter for current's mm
 *
 * Context: process context, may sleep.
 * Return: exporter with one reference (the file's), or NULL.
 */
struct tether_exporter *tether_exporter_create(void)
{
	struct tether_exporter *exp = kzalloc(sizeof(*exp), GFP_KERNEL_ACCOUNT);

	if (!exp)
		return NULL;
	kref_init(&exp->ref);
	INIT_LIST_HEAD(&exp->mm_node);
	INIT_LIST_HEAD(&exp->range_list);
	INIT_LIST_HEAD(&exp->ctl_node);
	exp->id = atomic64_inc_return(&tether_next_exporter_id);
	exp->memcg = get_mem_cgroup_from_mm(current->mm);
	return exp;
}

void tether_exporter_get(struct tether_exporter *exp)
{
	kref_get(&exp->ref);
}

static void tether_exporter_free(struct kref *ref)
{
	struct tether_exporter *exp = container_of(ref, struct tether_exporter, ref);
	struct tether_range *range, *tmp;

	/* The file release tore us down: off the mm, not attached. */
	WARN_ON(exp->registered && !exp->closing);
	WARN_ON(exp->ctl || !list_empty(&exp->ctl_node) ||
		!list_empty(&exp->mm_node));
	list_for_each_entry_safe(range, tmp, &exp->range_list, node) {
		struct tether_ival *iv, *t;

		list_for_each_entry_safe(iv, t, &range->marks, node)
			kfree(iv);
		kfree(range);
	}
	/*
	 * Only now: an ioctl that looked a range up before teardown erased
	 * it may still take tm->lock until it drops its reference.
	 */
	if (exp->tm)
		mmu_notifier_put(&exp->tm->mn);
	if (exp->mm)
		mmdrop(exp->mm);
	mem_cgroup_put(exp->memcg);
	kfree(exp);
}

/**
 * tether_exporter_put() - drop a reference
 * @exp: exporter
 *
 * Context: process context (the final put frees memory and calls mmdrop).
 */
void tether_exporter_put(struct tether_exporter *exp)
{
	kref_put(&exp->ref, tether_exporter_free);
}

/**
 * tether_exporter_register() - bind @exp to current->mm and its notifier
 * @exp: exporter not yet registered
 * @tf:  the exporter file that will own @exp
 *
 * Joins the mm's one tether notifier (mmu_notifier_get(): registered by the
 * first exporter of the mm, shared by the others), so that one invalidation
 * of the mm is one callback however many exporter fds the process has.
 *
 * Context: process context, may sleep; @tf->lock held (it serialises the
 * first REGISTER_RANGE of the fd, and exp->registered is written under
 * it).  Takes the mm's mmap_lock for write (mmu_notifier_get), then
 * tm->lock.
 * Return: 0 or a negative errno.
 */
int tether_exporter_register(struct tether_exporter *exp,
			     struct tether_file *tf)
{
	struct mm_struct *mm = current->mm;
	struct mmu_notifier *mn;

	lockdep_assert_held(&tf->lock);

	if (WARN_ON(exp->registered))
		return -EINVAL;
	if (!mm)
		return -EINVAL;
	mn = mmu_notifier_get(&tether_mn_ops, mm);
	if (IS_ERR(mn))
		return PTR_ERR(mn);
	mmgrab(mm);
	exp->mm = mm;
	exp->tm = container_of(mn, struct tether_mm, mn);
	spin_lock(&exp->tm->lock);
	list_add_tail(&exp->mm_node, &exp->tm->exporters);
	spin_unlock(&exp->tm->lock);
	exp->registered = true;
	return 0;
}

/**
 * tether_exporter_add_range() - register [start, start + len) of exp->mm
 * @exp:      registered exporter; current->mm == exp->mm (checked by caller)
 * @tf:       the exporter file that owns (or is about to own) @exp
 * @start:    page-aligned address (validated by caller)
 * @len:      page-aligned length (validated by caller)
 * @range_id: out
 *
 * Context: process context, may sleep; @tf->lock held (REGISTER_RANGE);
 * takes xa_lock and tm->lock (not nested).
 * Return: 0, -ENOSPC, -ENOMEM, -EBUSY (id space exhausted).
 */
int tether_exporter_add_range(struct tether_exporter *exp,
			      struct tether_file *tf, u64 start, u64 len,
			      u64 *range_id)
{
	static u32 next_id;
	struct tether_mm *tm = exp->tm;
	struct tether_range *range;
	u32 id;
	int ret;

	lockdep_assert_held(&tf->lock);

	range = kzalloc(sizeof(*range), GFP_KERNEL_ACCOUNT);
	if (!range)
		return -ENOMEM;
	range->start = start;
	range->len = len;
	range->exp = exp;
	range->it.start = start;
	range->it.last = start + len - 1;
	INIT_LIST_HEAD(&range->marks);

	ret = xa_alloc_cyclic(&tether_ranges, &id, range,
			      XA_LIMIT(1, U32_MAX), &next_id, GFP_KERNEL_ACCOUNT);
	if (ret < 0)
		goto err_free;

	spin_lock(&tm->lock);
	if (exp->nr_ranges >= TETHER_MAX_RANGES || tm->mm_gone) {
		ret = tm->mm_gone ? -EINVAL : -ENOSPC;
		spin_unlock(&tm->lock);
		goto err_erase;
	}
	range->id = id;
	interval_tree_insert(&range->it, &tm->ranges);
	list_add_tail(&range->node, &exp->range_list);
	exp->nr_ranges++;
	spin_unlock(&tm->lock);
	*range_id = id;
	return 0;

err_erase:
	xa_erase(&tether_ranges, id);
err_free:
	kfree(range);
	return ret;
}

/**
 * tether_exporter_unslot() - @exp lets go of its ctl slot in the mm
 * @exp: an attached exporter
 *
 * Context: exp->tm->lock held.
 * Return: the ctl @exp was attached to; the caller owns exp->ctl's
 * reference now.
 */
static struct tether_ctl *tether_exporter_unslot(struct tether_exporter *exp)
{
	struct tether_mm_ctl *slot = &exp->tm->ctls[exp->ctl_slot];
	struct tether_ctl *ctl = exp->ctl;

	lockdep_assert_held(&exp->tm->lock);

	WARN_ON_ONCE(slot->ctl != ctl || !slot->users);
	if (--slot->users == 0)
		slot->ctl = NULL;
	exp->ctl = NULL;
	exp->attach_gen++;
	return ctl;
}

/**
 * tether_exporter_teardown() - the exporter file is released
 * @exp: exporter; the file's reference is dropped here
 *
 * Takes the exporter's ranges out of the mm's notifier (other exporters of
 * the mm stay), queues one RELEASE per range without waiting (the
 * releasing thread may be the daemon's own event loop) if the address
 * space still exists, forgets the range ids and detaches from the ctl.
 * END events of invalidations of its ranges still running are dropped
 * (the RELEASE supersedes them).
 *
 * Context: process context, may sleep; takes tm->lock, then ctl->lock
 * (not nested).  Called from the file release with no lock held, or from
 * a failed first REGISTER_RANGE with the file's mutex held (then @exp was
 * never visible to anyone else: no range, no ctl).
 */
void tether_exporter_teardown(struct tether_exporter *exp)
{
	struct tether_batch b[TETHER_MAX_MM_CTLS] = {};
	struct tether_mm *tm = exp->tm;
	struct tether_kevent *ev, *tmp;
	struct tether_range *range;
	struct tether_ctl *ctl = NULL;
	struct tether_datt *d;
	LIST_HEAD(prealloc);
	LIST_HEAD(stale);
	bool drop = false, zap = false;
	unsigned int i;

	if (!tm) {
		exp->closing = true;
		tether_exporter_put(exp);
		return;
	}

	/* No range can be added: REGISTER on this file cannot run now. */
	for (i = 0; i < exp->nr_ranges; i++) {
		ev = tether_kevent_alloc_charged(exp->memcg, GFP_KERNEL);
		if (!ev)
			break;
		list_add_tail(&ev->node, &prealloc);
	}

	spin_lock(&tm->lock);
	exp->closing = true;
	list_del_init(&exp->mm_node);
	list_for_each_entry(d, &tm->directs, tm_node) {
		if (d->exp == exp) {
			d->dead = true;	/* the export is withdrawn */
			zap = true;
		}
	}
	if (exp->ctl && !tm->mm_gone)
		tether_queue_releases(tether_batch_for(b, exp), exp, &prealloc,
				      NULL);
	list_for_each_entry_safe(ev, tmp, &tm->inflight, node)
		if (ev->range->exp == exp)
			list_move_tail(&ev->node, &stale);
	list_for_each_entry(range, &exp->range_list, node) {
		interval_tree_remove(&range->it, &tm->ranges);
		tether_marks_clear(tm, range);
	}
	if (exp->ctl)
		ctl = tether_exporter_unslot(exp);
	spin_unlock(&tm->lock);

	tether_free_list(&prealloc);
	tether_free_list(&stale);
	tether_batches_queue(b, false);
	tether_batches_put(b);
	if (zap)
		tether_direct_zap(tm, 0, ULLONG_MAX, exp);

	list_for_each_entry(range, &exp->range_list, node)
		xa_erase(&tether_ranges, range->id);

	if (ctl) {
		spin_lock(&ctl->lock);
		if (!list_empty(&exp->ctl_node)) {
			list_del_init(&exp->ctl_node);
			drop = true;
		}
		spin_unlock(&ctl->lock);
		tether_ctl_put(ctl);		/* exp->ctl's reference */
		if (drop)
			tether_exporter_put(exp);	/* the list's reference */
	}
	tether_exporter_put(exp);		/* the file's reference */
}

/**
 * tether_exporter_attach() - attach @exp to @ctl
 * @exp: registered exporter (caller holds a reference, which the ctl list
 *       takes over on success)
 * @ctl: control
 *
 * Context: process context; takes tm->lock, and ctl->lock nested inside it.
 * Return: 0, -EBUSY (attached already, or the mm's exporters are attached
 * to TETHER_MAX_MM_CTLS other ctls), -ESRCH (mm gone / closing), -EBADF
 * (@ctl released).
 */
int tether_exporter_attach(struct tether_exporter *exp, struct tether_ctl *ctl)
{
	struct tether_mm *tm = exp->tm;
	unsigned int i, slot = TETHER_MAX_MM_CTLS;
	int ret = 0;

	spin_lock(&tm->lock);
	for (i = 0; i < TETHER_MAX_MM_CTLS; i++) {
		if (tm->ctls[i].ctl == ctl) {
			slot = i;
			break;
		}
		if (!tm->ctls[i].ctl && slot == TETHER_MAX_MM_CTLS)
			slot = i;
	}
	if (tm->mm_gone || exp->closing) {
		ret = -ESRCH;
	} else if (exp->ctl || slot == TETHER_MAX_MM_CTLS) {
		ret = -EBUSY;
	} else {
		spin_lock(&ctl->lock);
		if (ctl->dead) {
			ret = -EBADF;
		} else {
			list_add_tail(&exp->ctl_node, &ctl->exporters);
			tether_ctl_get(ctl);
			exp->ctl = ctl;
			exp->ctl_slot = slot;
			tm->ctls[slot].ctl = ctl;
			tm->ctls[slot].users++;
			exp->attach_gen++;
		}
		spin_unlock(&ctl->lock);
	}
	spin_unlock(&tm->lock);
	return ret;
}

/**
 * tether_exporter_detach() - the ctl lets go of @exp
 * @exp: exporter, already taken off ctl->exporters by the caller
 * @ctl: control being released
 *
 * Clears all marks (nobody caches anything for this exporter now).
 *
 * Context: process context; ctl->lock not held (the caller dropped it after
 * unlinking @exp); takes tm->lock.
 */
void tether_exporter_detach(struct tether_exporter *exp, struct tether_ctl *ctl)
{
	struct tether_mm *tm = exp->tm;
	struct tether_range *range;
	bool put = false;

	spin_lock(&tm->lock);
	if (exp->ctl == ctl) {
		tether_exporter_unslot(exp);
		put = true;
		list_for_each_entry(range, &exp->range_list, node)
			tether_marks_clear(tm, range);
	}
	spin_unlock(&tm->lock);
	if (put)
		tether_ctl_put(ctl);
}

/* --------------------------------------------------------------- ranges */

/**
 * tether_range_lookup() - find a range by id and pin its exporter
 * @range_id: id from REGISTER_RANGE
 *
 * Context: any process context; takes xa_lock.
 * Return: the range with a reference on range->exp (drop it with
 * tether_exporter_put()), or NULL.
 */
struct tether_range *tether_range_lookup(u64 range_id)
{
	struct tether_range *range;

	if (!range_id || range_id > U32_MAX)
		return NULL;
	xa_lock(&tether_ranges);
	range = xa_load(&tether_ranges, range_id);
	if (range && !kref_get_unless_zero(&range->exp->ref))
		range = NULL;
	xa_unlock(&tether_ranges);
	return range;
}

/**
 * tether_range_mark() - MARK_CACHED / UNMARK_CACHED
 * @ctl:    control the request came from
 * @range:  looked-up range (exporter pinned)
 * @offset: page-aligned, validated against the range by the caller
 * @len:    page-aligned, > 0
 * @mark:   true to mark, false to unmark
 * @seq:    out: the range's sequence taken under the filter's lock
 *
 * Context: process context, may sleep (allocation before tm->lock); takes
 * tm->lock.
 * Return: 0, -ENOENT (range not attached to @ctl), -ESRCH (mm gone),
 * -ENOSPC, -ENOMEM.
 */
int tether_range_mark(struct tether_ctl *ctl, struct tether_range *range,
		      u64 offset, u64 len, bool mark, u64 *seq)
{
	struct tether_exporter *exp = range->exp;
	struct tether_mm *tm = exp->tm;
	struct tether_ival *pre;
	bool was_marked;
	int ret = 0;

	pre = kmalloc(sizeof(*pre), GFP_KERNEL_ACCOUNT);
	if (!pre)
		return -ENOMEM;

	spin_lock(&tm->lock);
	if (exp->ctl != ctl) {
		ret = -ENOENT;
	} else if (tm->mm_gone) {
		ret = -ESRCH;
	} else {
		was_marked = !list_empty(&range->marks);
		if (mark)
			ret = tether_marks_add(range, offset, offset + len, &pre);
		else
			tether_marks_remove(range, offset, offset + len, &pre);
		if (!was_marked && !list_empty(&range->marks)) {
			tm->nr_marked++;
		} else if (was_marked && list_empty(&range->marks)) {
			WARN_ON_ONCE(tm->nr_marked == 0);
			tm->nr_marked--;
		}
		*seq = tether_range_seq(tm, range, offset, offset + len);
	}
	spin_unlock(&tm->lock);
	kfree(pre);
	return ret;
}

/**
 * tether_range_read_retry() - did an invalidation race with a fetch?
 * @ctl:   control
 * @range: looked-up range
 * @seq:   value from MARK (or an earlier READ_RETRY)
 *
 * Context: process context; takes tm->lock.
 * Return: 0 (valid), -EAGAIN (retry), -ENOENT, -ESRCH.
 */
int tether_range_read_retry(struct tether_ctl *ctl, struct tether_range *range,
			    u64 seq)
{
	struct tether_exporter *exp = range->exp;
	struct tether_mm *tm = exp->tm;
	int ret;

	spin_lock(&tm->lock);
	if (exp->ctl != ctl)
		ret = -ENOENT;
	else if (tm->mm_gone)
		ret = -ESRCH;
	else if ((seq & 1) || tether_range_seq(tm, range, 0, range->len) != seq)
		ret = -EAGAIN;	/* READ_RETRY names no interval: the whole range */
	else
		ret = 0;
	spin_unlock(&tm->lock);
	return ret;
}

/**
 * tether_range_write_check() - may a write-back still be made? (WRITE)
 * @ctl:   control
 * @range: looked-up range
 * @s:     start offset into the range of the pages to be written
 * @e:     end offset (exclusive, page aligned)
 * @seq:   value MARK_CACHED returned before the daemon's checks
 *
 * The write side of READ_RETRY (tether_write.c): no forwarded
 * invalidation of the range since @seq, none overlapping [@s, @e) in
 * progress.  The caller holds the exporter's mmap_lock, so the answer
 * holds until it drops it for every invalidation that replaces mappings.
 *
 * Context: process context, the exporter's mmap_lock held for read;
 * takes tm->lock.
 * Return: 0 (write), -ESTALE (refuse), -ENOENT, -ESRCH.
 */
int tether_range_write_check(struct tether_ctl *ctl, struct tether_range *range,
			     u64 s, u64 e, u64 seq)
{
	struct tether_exporter *exp = range->exp;
	struct tether_mm *tm = exp->tm;
	int ret;

	mmap_assert_locked(exp->mm);
	spin_lock(&tm->lock);
	if (exp->ctl != ctl)
		ret = -ENOENT;
	else if (tm->mm_gone)
		ret = -ESRCH;
	else if ((seq & 1) || tether_range_seq(tm, range, s, e) != seq)
		ret = -ESTALE;
	else
		ret = 0;
	spin_unlock(&tm->lock);
	return ret;
}

/**
 * tether_range_info() - RANGE_INFO
 * @ctl:   control
 * @range: looked-up range
 * @info:  out
 *
 * Context: process context; takes tm->lock.
 * Return: 0 or -ENOENT (not attached to @ctl).
 */
int tether_range_info(struct tether_ctl *ctl, struct tether_range *range,
		      struct tether_range_info *info)
{
	struct tether_exporter *exp = range->exp;
	struct tether_mm *tm = exp->tm;
	int ret = 0;

	spin_lock(&tm->lock);
	if (exp->ctl != ctl) {
		ret = -ENOENT;
	} else {
		info->exporter_id = exp->id;
		info->start = range->start;
		info->len = range->len;
	}
	spin_unlock(&tm->lock);
	return ret;
}
