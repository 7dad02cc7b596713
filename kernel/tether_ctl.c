// SPDX-License-Identifier: GPL-2.0
/*
 * tether_ctl.c - the daemon's control fd: event queue, read(2), poll(2),
 * ACK, and the exporter side of waiting for an ack.
 *
 * Event ownership (see also "Concurrency protocol" in tether_notifier.c):
 *
 *  - An event with ->waiter set (a blockable BEGIN, a RELEASE from exit) is
 *    owned by the thread that waits for it.  The ctl only links it on
 *    ->pending / ->delivered; ACK and ctl release take it off the lists and
 *    complete ->done under ctl->lock.  The waiter takes ctl->lock once more
 *    after waking (to unlink it on timeout) and only then frees it, so an
 *    ACK can never touch a freed event.
 *  - Any other event (END, non-blockable BEGIN, RELEASE without waiting)
 *    belongs to the ctl once queued and is freed when read(2) copies it out
 *    or when the ctl is released.
 *  - A waiter that gives up (ack timeout, fatal signal) before the daemon
 *    read its event does not free it: under ctl->lock it clears ->waiter,
 *    flags the record TETHER_EVF_LATE instead of BLOCKABLE and leaves it
 *    queued, so the event becomes the ctl's like any non-waited one.  An
 *    unread BEGIN is never dropped: the daemon would see only its END and
 *    keep serving the old contents.
 *
 * Events come from a kmem_cache (charged to the exporter's memory cgroup,
 * tether_kevent_alloc_charged()) backed by a small mempool and are always allocated
 * without direct reclaim: notifier callbacks may run inside reclaim
 * (try_to_unmap) or in the OOM reaper, and invalidate_range_start runs
 * under the mmu notifier lockdep map that fs_reclaim is ordered after, so
 * not even a blockable start may enter reclaim.  If even the pool is empty
 * the event is dropped and the ctl delivers one OVERFLOW record instead
 * (the daemon then treats all its ranges as invalidated).  A blockable
 * invalidation that lost its events that way still waits: the OVERFLOW is
 * flagged BLOCKABLE and it waits (bounded like any wait) until the daemon
 * acks an OVERFLOW read after its loss (->overflow_acked_gen).
 */
#include <linux/jiffies.h>
#include <linux/mempool.h>
#include <linux/poll.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "tether_internal.h"

#define TETHER_KEVENT_RESERVE	64

static struct kmem_cache *tether_kevent_cache;
static mempool_t *tether_kevent_pool;

int tether_kevent_cache_init(void)
{
	tether_kevent_cache = KMEM_CACHE(tether_kevent, SLAB_ACCOUNT);
	if (!tether_kevent_cache)
		return -ENOMEM;
	tether_kevent_pool = mempool_create_slab_pool(TETHER_KEVENT_RESERVE,
						      tether_kevent_cache);
	if (!tether_kevent_pool) {
		kmem_cache_destroy(tether_kevent_cache);
		return -ENOMEM;
	}
	return 0;
}

void tether_kevent_cache_exit(void)
{
	mempool_destroy(tether_kevent_pool);
	kmem_cache_destroy(tether_kevent_cache);
}

/**
 * tether_kevent_alloc() - allocate a zeroed event
 * @gfp: allocation flags; GFP_NOWAIT from notifier callbacks
 *
 * Context: any context that may use @gfp.
 * Return: the event or NULL.
 */
struct tether_kevent *tether_kevent_alloc(gfp_t gfp)
{
	struct tether_kevent *ev;

	/* The test hook fails only what notifier callbacks allocate. */
	if (!(gfp & __GFP_DIRECT_RECLAIM) &&
	    READ_ONCE(tether_test_fail_event_alloc))
		return NULL;
	ev = mempool_alloc(tether_kevent_pool, gfp | __GFP_NOWARN);
	if (!ev)
		return NULL;
	memset(ev, 0, sizeof(*ev));
	INIT_LIST_HEAD(&ev->node);
	INIT_LIST_HEAD(&ev->wnode);
	init_completion(&ev->done);
	return ev;
}

/**
 * tether_kevent_alloc_charged() - allocate an event charged to @memcg
 * @memcg: the exporter's memory cgroup (tether_exporter.memcg), or NULL
 * @gfp:   as for tether_kevent_alloc()
 *
 * The cache is SLAB_ACCOUNT, so an event is charged to the allocating
 * task's memory cgroup, and the task that makes the kernel invalidate an
 * exporter's range is often not the exporter: kswapd or khugepaged (no
 * cgroup: the root's), the daemon closing the last reference to an
 * exporter fd it was sent, another process's process_madvise().  Events
 * exist because of the exporter, so they are charged to its cgroup.  A
 * charge that fails (the cgroup at its limit; no reclaim from here) takes
 * an event from the mempool reserve, which was charged once, at module
 * load, to whoever loaded it: a cgroup at its limit still gets its BEGINs.
 *
 * Context: as for tether_kevent_alloc().
 * Return: the event or NULL.
 */
struct tether_kevent *tether_kevent_alloc_charged(struct mem_cgroup *memcg,
						  gfp_t gfp)
{
	struct mem_cgroup *old = set_active_memcg(memcg);
	struct tether_kevent *ev = tether_kevent_alloc(gfp);

	set_active_memcg(old);
	return ev;
}

/**
 * tether_kevent_free() - free an event
 * @ev: event, off every list
 *
 * Context: any context (no sleeping).
 */
void tether_kevent_free(struct tether_kevent *ev)
{
	WARN_ON_ONCE(!list_empty(&ev->node));
	mempool_free(ev, tether_kevent_pool);
}

/**
 * tether_ctl_create() - allocate a control object
 *
 * Context: process context, may sleep.
 * Return: the ctl with one reference (the file's), or NULL.
 */
struct tether_ctl *tether_ctl_create(void)
{
	struct tether_ctl *ctl = kzalloc(sizeof(*ctl), GFP_KERNEL_ACCOUNT);

	if (!ctl)
		return NULL;
	kref_init(&ctl->ref);
	spin_lock_init(&ctl->lock);
	INIT_LIST_HEAD(&ctl->pending);
	INIT_LIST_HEAD(&ctl->delivered);
	INIT_LIST_HEAD(&ctl->exporters);
	init_waitqueue_head(&ctl->readq);
	init_waitqueue_head(&ctl->ovq);
	atomic64_set(&ctl->next_event_id, 0);
	return ctl;
}

void tether_ctl_get(struct tether_ctl *ctl)
{
	kref_get(&ctl->ref);
}

static void tether_ctl_free(struct kref *ref)
{
	struct tether_ctl *ctl = container_of(ref, struct tether_ctl, ref);

	/* release() emptied everything; a queued event here is a leak. */
	WARN_ON(!list_empty(&ctl->pending) || !list_empty(&ctl->delivered) ||
		!list_empty(&ctl->exporters));
	kfree(ctl);
}

/**
 * tether_ctl_put() - drop a reference
 * @ctl: control
 *
 * Context: any context; the final put only frees memory (the file release
 * already detached exporters), so it is safe from notifier callbacks.
 */
void tether_ctl_put(struct tether_ctl *ctl)
{
	kref_put(&ctl->ref, tether_ctl_free);
}

/**
 * tether_ctl_next_id() - hand out an event id of @ctl
 * @ctl: control (caller holds a reference)
 *
 * Ids are unique per ctl and never 0; they need not follow queue order.
 *
 * Context: any context (atomic; callers may hold tm->lock).
 * Return: the id.
 */
u64 tether_ctl_next_id(struct tether_ctl *ctl)
{
	return atomic64_inc_return(&ctl->next_event_id);
}

/**
 * tether_ctl_queue() - hand events to the daemon
 * @ctl:      control (caller holds a reference)
 * @evs:      list of new events linked by ->node; emptied
 * @overflow: an event could not be allocated: deliver OVERFLOW
 * @overflow_gen: NULL, or (blockable callers) out: the overflow generation
 *            the caller must wait to see acked (0: nothing to wait for)
 *
 * Assigns event ids (unless the caller did) and queues the events on
 * ->pending.  If the ctl is dead, waiters are completed at once (nobody
 * will ack) and the others are freed.  Non-waited events beyond
 * TETHER_MAX_QUEUED are dropped and turn into OVERFLOW.
 *
 * Context: any context, tm->lock not held (notifier callbacks drop it
 * before queueing); takes ctl->lock; never sleeps (used from non-blockable
 * notifier calls).
 */
void tether_ctl_queue(struct tether_ctl *ctl, struct list_head *evs,
		      bool overflow, u64 *overflow_gen)
{
	struct tether_kevent *ev, *tmp;
	bool wake = overflow, lost = overflow;

	if (overflow_gen)
		*overflow_gen = 0;

	spin_lock(&ctl->lock);
	list_for_each_entry_safe(ev, tmp, evs, node) {
		list_del_init(&ev->node);
		/* Only fresh events are queued, and each only once. */
		WARN_ON_ONCE(ev->state != TETHER_KEV_NEW);
		if (ctl->dead) {
			if (ev->waiter) {
				ev->state = TETHER_KEV_DONE;
				complete(&ev->done);
			} else {
				tether_kevent_free(ev);
			}
			continue;
		}
		if (!ev->waiter && ctl->nr_queued >= TETHER_MAX_QUEUED) {
			tether_kevent_free(ev);
			overflow = true;
			continue;
		}
		if (!ev->uev.event_id)
			ev->uev.event_id = tether_ctl_next_id(ctl);
		ev->state = TETHER_KEV_PENDING;
		list_add_tail(&ev->node, &ctl->pending);
		ctl->nr_queued++;
		wake = true;
	}
	if (overflow && !ctl->dead) {
		ctl->overflow = true;
		ctl->overflow_gen++;
		/*
		 * The caller's own events were lost (not just non-waited ones
		 * beyond the queue limit): it waits for the OVERFLOW's ack.
		 */
		if (lost && overflow_gen) {
			ctl->overflow_blocking = true;
			*overflow_gen = ctl->overflow_gen;
		}
	}
	spin_unlock(&ctl->lock);
	if (wake)
		wake_up_interruptible_poll(&ctl->readq, EPOLLIN | EPOLLRDNORM);
}

/*
 * Context: process context (a wait_event() condition); takes ctl->lock.
 * Return: true once an OVERFLOW covering @gen was acked, or the ctl died.
 */
static bool tether_ctl_overflow_acked(struct tether_ctl *ctl, u64 gen)
{
	bool r;

	spin_lock(&ctl->lock);
	r = ctl->dead || ctl->overflow_acked_gen >= gen;
	spin_unlock(&ctl->lock);
	return r;
}

/**
 * tether_ctl_wait() - wait until the daemon(s) acked every event of a list
 * @waitlist: events with ->waiter and ->ctl set, linked by ->wnode, already
 *            queued; emptied.  They may belong to several ctls.
 * @b:        the caller's batches (each ctl referenced by the caller); a
 *            non-zero ->overflow_gen: also wait until an OVERFLOW of that
 *            ctl covering this generation was acked (the caller's own
 *            events were lost)
 * @nr:       entries of @b
 *
 * Waits killably, at most tether_ack_timeout_ms in total for everything:
 * the caller queued all its events first, so the daemons handle them in
 * parallel and one invalidation costs one timeout at most, however many
 * ranges and exporters it touches.  Then an event the daemon read but did
 * not ack is unlinked and freed (its END follows); one it never read is
 * handed to its ctl as a non-waited record flagged TETHER_EVF_LATE, so the
 * daemon still learns of the invalidation before its END.  A timeout is
 * logged.
 *
 * Context: process context, may sleep; the caller may hold mmap_lock, a
 * page lock or i_mmap_rwsem of the exporter (G5), but none of our locks;
 * takes each event's ctl->lock after the wait, once per event.
 */
void tether_ctl_wait(struct list_head *waitlist, struct tether_batch *b,
		     unsigned int nr)
{
	unsigned long deadline = jiffies +
		msecs_to_jiffies(READ_ONCE(tether_ack_timeout_ms));
	struct tether_kevent *ev, *tmp;
	bool gave_up = false, timed_out = false;
	u64 first_missing = 0;
	unsigned int i;

	list_for_each_entry(ev, waitlist, wnode) {
		long left, ret;

		if (gave_up)
			break;
		left = (long)(deadline - jiffies);
		if (left < 0)
			left = 0;
		ret = wait_for_completion_killable_timeout(&ev->done, left);
		if (ret == 0 && !completion_done(&ev->done)) {
			timed_out = true;
			gave_up = true;
			first_missing = ev->uev.event_id;
		} else if (ret < 0) {
			gave_up = true;	/* fatal signal: the task is dying */
		}
	}
	for (i = 0; i < nr && !gave_up; i++) {
		struct tether_ctl *ctl = b[i].ctl;
		u64 gen = b[i].overflow_gen;
		long left = (long)(deadline - jiffies), ret;

		if (!ctl || !gen)
			continue;
		ret = wait_event_killable_timeout(ctl->ovq,
				tether_ctl_overflow_acked(ctl, gen),
				left > 0 ? left : 0);
		if (ret == 0 && !tether_ctl_overflow_acked(ctl, gen)) {
			timed_out = true;	/* first_missing 0: the OVERFLOW */
			gave_up = true;
		} else if (ret < 0) {
			gave_up = true;
		}
	}

	list_for_each_entry_safe(ev, tmp, waitlist, wnode) {
		struct tether_ctl *ctl = ev->ctl;

		/* Only a waiter owns its event; any other belongs to the ctl. */
		WARN_ON_ONCE(!ev->waiter || !ctl);
		list_del_init(&ev->wnode);
		spin_lock(&ctl->lock);
		if (ev->state == TETHER_KEV_PENDING) {
			/*
			 * Never read: the daemon must still see it, before its
			 * END.  It stays queued where it is and is the ctl's
			 * from now on (freed after read(2)); we may not touch
			 * it after unlocking.
			 */
			ev->waiter = false;
			ev->uev.flags = (ev->uev.flags & ~TETHER_EVF_BLOCKABLE) |
					TETHER_EVF_LATE;
			spin_unlock(&ctl->lock);
			continue;
		}
		if (ev->state != TETHER_KEV_DONE) {
			list_del_init(&ev->node);
			ev->state = TETHER_KEV_DONE;
		}
		spin_unlock(&ctl->lock);
		tether_kevent_free(ev);
	}

	if (timed_out)
		pr_warn_ratelimited("tether: pid %d (%s): no ack for event %llu (0: OVERFLOW) within %u ms, continuing without it\n",
				    task_pid_nr(current), current->comm,
				    first_missing, READ_ONCE(tether_ack_timeout_ms));
}

/**
 * tether_ctl_release() - the control file is closed
 * @ctl: control; the file's reference is dropped here
 *
 * Marks the ctl dead, releases every waiter at once, frees every queued
 * event and detaches every exporter (which clears their marks: nobody
 * caches anything for them any more).
 *
 * Context: process context (file release), may sleep; takes ctl->lock, and
 * tm->lock of each exporter with ctl->lock dropped (tether_exporter_detach).
 */
void tether_ctl_release(struct tether_ctl *ctl)
{
	struct tether_kevent *ev, *tmp;
	struct tether_exporter *exp;
	LIST_HEAD(to_free);

	spin_lock(&ctl->lock);
	ctl->dead = true;
	ctl->overflow = false;
	wake_up_all(&ctl->ovq);		/* nobody will ack an OVERFLOW now */
	list_splice_init(&ctl->delivered, &ctl->pending);
	list_for_each_entry_safe(ev, tmp, &ctl->pending, node) {
		list_del_init(&ev->node);
		if (ev->waiter) {
			ev->state = TETHER_KEV_DONE;
			complete(&ev->done);
		} else {
			list_add_tail(&ev->node, &to_free);
		}
	}
	ctl->nr_queued = 0;
	spin_unlock(&ctl->lock);

	list_for_each_entry_safe(ev, tmp, &to_free, node) {
		list_del_init(&ev->node);
		tether_kevent_free(ev);
	}

	/*
	 * Take exporters off one at a time under ctl->lock: an exporter being
	 * torn down concurrently unlinks itself under the same lock, and
	 * whoever unlinks it drops the reference the list held.
	 */
	spin_lock(&ctl->lock);
	while (!list_empty(&ctl->exporters)) {
		exp = list_first_entry(&ctl->exporters, struct tether_exporter,
				       ctl_node);
		list_del_init(&exp->ctl_node);
		spin_unlock(&ctl->lock);
		tether_exporter_detach(exp, ctl);
		tether_exporter_put(exp);
		spin_lock(&ctl->lock);
	}
	spin_unlock(&ctl->lock);

	tether_ctl_put(ctl);
}

/**
 * tether_ctl_readable() - is there something for read(2)?
 * @ctl: control
 *
 * Context: process context (also as a wait_event() condition); takes
 * ctl->lock.
 * Return: true if an OVERFLOW record or a pending event is waiting.
 */
static bool tether_ctl_readable(struct tether_ctl *ctl)
{
	bool r;

	spin_lock(&ctl->lock);
	r = ctl->overflow || !list_empty(&ctl->pending);
	spin_unlock(&ctl->lock);
	return r;
}

/**
 * tether_ctl_read() - read(2) on a control fd
 * @ctl:      control
 * @buf:      user buffer
 * @count:    its size; whole records only
 * @nonblock: O_NONBLOCK
 *
 * Context: process context, may sleep (interruptibly) until an event comes;
 * takes ctl->lock, dropped around copy_to_user() and the wait.
 * Return: bytes copied, -EINVAL (@count too small), -EAGAIN, -ERESTARTSYS,
 * -EFAULT.
 */
ssize_t tether_ctl_read(struct tether_ctl *ctl, char __user *buf,
			size_t count, bool nonblock)
{
	const size_t sz = sizeof(struct tether_event);
	size_t copied = 0;
	int ret;

	if (count < sz)
		return -EINVAL;

	for (;;) {
		spin_lock(&ctl->lock);
		while (copied + sz <= count) {
			struct tether_kevent *ev, *to_free = NULL;
			struct tether_event rec;

			if (ctl->overflow) {
				memset(&rec, 0, sizeof(rec));
				rec.event_id = tether_ctl_next_id(ctl);
				rec.type = TETHER_EV_OTHER;
				rec.kind = TETHER_KIND_OVERFLOW;
				ctl->overflow = false;
				if (ctl->overflow_blocking) {
					/* its ack releases every loss so far */
					rec.flags = TETHER_EVF_BLOCKABLE;
					ctl->overflow_blocking = false;
					ctl->overflow_read_id = rec.event_id;
					ctl->overflow_read_gen = ctl->overflow_gen;
				}
			} else if (!list_empty(&ctl->pending)) {
				ev = list_first_entry(&ctl->pending,
						      struct tether_kevent, node);
				list_del_init(&ev->node);
				ctl->nr_queued--;
				rec = ev->uev;
				if (ev->waiter) {
					ev->state = TETHER_KEV_DELIVERED;
					list_add_tail(&ev->node, &ctl->delivered);
				} else {
					ev->state = TETHER_KEV_DONE;
					to_free = ev;
				}
			} else {
				break;
			}
			spin_unlock(&ctl->lock);
			if (to_free)
				tether_kevent_free(to_free);
			if (copy_to_user(buf + copied, &rec, sz)) {
				/*
				 * The record is lost for the daemon: make it
				 * resynchronise rather than miss an event.
				 */
				spin_lock(&ctl->lock);
				ctl->overflow = true;
				if (rec.kind == TETHER_KIND_OVERFLOW &&
				    (rec.flags & TETHER_EVF_BLOCKABLE))
					ctl->overflow_blocking = true;
				spin_unlock(&ctl->lock);
				return copied ? copied : -EFAULT;
			}
			copied += sz;
			spin_lock(&ctl->lock);
		}
		spin_unlock(&ctl->lock);

		if (copied)
			return copied;
		if (nonblock)
			return -EAGAIN;
		ret = wait_event_interruptible(ctl->readq,
					       tether_ctl_readable(ctl));
		if (ret)
			return ret;
	}
}

/**
 * tether_ctl_poll() - poll(2) on a control fd
 * @ctl:  control
 * @file: the file
 * @wait: poll table
 *
 * Context: process context; takes ctl->lock.
 */
__poll_t tether_ctl_poll(struct tether_ctl *ctl, struct file *file,
			 poll_table *wait)
{
	poll_wait(file, &ctl->readq, wait);
	return tether_ctl_readable(ctl) ? (EPOLLIN | EPOLLRDNORM) : 0;
}

/**
 * tether_ctl_ack() - the daemon acknowledges an event
 * @ctl:      control
 * @event_id: id from a record read from this ctl (a BEGIN, a RELEASE, or
 *            the last blockable OVERFLOW read)
 *
 * Context: process context; takes ctl->lock.
 * Return: 0, or -ENOENT if nobody waits for that id (any more).
 */
int tether_ctl_ack(struct tether_ctl *ctl, u64 event_id)
{
	struct list_head *lists[] = { &ctl->delivered, &ctl->pending };
	struct tether_kevent *ev;
	int i, ret = -ENOENT;

	if (!event_id)
		return -ENOENT;
	spin_lock(&ctl->lock);
	if (event_id == ctl->overflow_read_id) {
		/* Everything lost up to that record was invalidated. */
		ctl->overflow_read_id = 0;
		if (ctl->overflow_acked_gen < ctl->overflow_read_gen)
			ctl->overflow_acked_gen = ctl->overflow_read_gen;
		wake_up_all(&ctl->ovq);
		ret = 0;
	}
	for (i = 0; i < ARRAY_SIZE(lists) && ret; i++) {
		list_for_each_entry(ev, lists[i], node) {
			if (ev->uev.event_id != event_id || !ev->waiter)
				continue;
			if (ev->state == TETHER_KEV_PENDING)
				ctl->nr_queued--;
			list_del_init(&ev->node);
			ev->state = TETHER_KEV_DONE;
			complete(&ev->done);	/* ev may be freed after unlock */
			ret = 0;
			break;
		}
	}
	spin_unlock(&ctl->lock);
	return ret;
}
