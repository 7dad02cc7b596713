// SPDX-License-Identifier: GPL-2.0
/*
 * tether_write.c - TETHER_IOC_WRITE: a daemon's write-back into an
 * exporter's memory that is refused when the mapping it was checked
 * against may have been replaced.
 *
 * Why the daemon cannot do this with process_vm_writev(2) alone: mmap
 * (MAP_FIXED) over an exported range and mremap call the notifier with
 * the exporter's mmap_lock held for WRITING.  A write-back that passed the
 * home's checks (no window open, grant, fencing) but has not yet entered
 * process_vm_writev, which needs mmap_lock for reading, cannot finish
 * before the daemon acks the BEGIN: the daemon's bounded wait for it runs
 * out, it acks, the kernel installs the new mapping and drops the lock,
 * and the write lands in the NEW mapping - bytes of the old object
 * written into an unrelated one.  (munmap downgrades the lock before the
 * notifier, so there the write lands in the old mapping first.)
 *
 * So the daemon takes the range's sequence with MARK_CACHED before its
 * own checks conclude, and passes it here.  Under the exporter's mmap_lock
 * (read), which no munmap, MAP_FIXED or mremap can hold for writing at the
 * same time, the sequence is compared under tm->lock, as READ_RETRY does
 * for reads (the mmu_interval_read_begin/read_retry pattern): a forwarded
 * invalidation of the range since then (range->seq moved: the marked
 * interval is forwarded, so every such change is) or one in progress over
 * the pieces (tm->inprog) refuses the whole write with -ESTALE before a
 * byte is written.  Otherwise the pieces are written with the lock still
 * held, through get_user_pages_remote(FOLL_WRITE) without FOLL_FORCE: the
 * exporter's protections hold (issue 14, defect 5), a page it may not
 * write is -EACCES, an address with nothing mapped -EFAULT.  Invalidations
 * that run under mmap_lock for reading (madvise, reclaim, a COW break the
 * write itself causes) may still run beside the write, as beside any
 * write of the exporter's own; they change the pages of the same mapping,
 * not the mapping, and the daemon's windows order them.
 *
 * The bytes are copied from the daemon's buffer into a kernel buffer
 * before the exporter's lock is taken: faulting on the daemon's own mm
 * while holding another mm's mmap_lock would order the two locks (the
 * kernel's own /proc/<pid>/mem does the same), hence the bound
 * TETHER_WRITE_MAX_LEN per call.
 */
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "tether_internal.h"

/**
 * tether_write_page() - write @n bytes at @addr, within one page
 * @mm:   the exporter's mm
 * @addr: user address in @mm
 * @src:  kernel buffer
 * @n:    bytes, @addr + @n within @addr's page
 *
 * Context: process context, @mm's mmap_lock held for read (never dropped:
 * get_user_pages_remote() with a NULL @locked keeps it); may sleep.
 * Return: 0, -EFAULT (nothing mapped, or the page cannot be had),
 * -EACCES (the mapping is not writable), -ENOMEM, -EINTR.
 */
static int tether_write_page(struct mm_struct *mm, unsigned long addr,
			     const u8 *src, size_t n)
{
	struct vm_area_struct *vma;
	struct page *page;
	void *dst;
	long got;

	mmap_assert_locked(mm);
	vma = vma_lookup(mm, addr);
	if (!vma)
		return -EFAULT;
	if (!(vma->vm_flags & VM_WRITE))
		return -EACCES;
#if TETHER_HAVE_GUP_REMOTE_VMAS
	got = get_user_pages_remote(mm, addr, 1, FOLL_WRITE, &page, NULL, NULL);
#else
	got = get_user_pages_remote(mm, addr, 1, FOLL_WRITE, &page, NULL);
#endif
	if (got != 1)
		return got == -ENOMEM || got == -EINTR ? got : -EFAULT;
	dst = kmap_local_page(page);
	memcpy(dst + offset_in_page(addr), src, n);
	kunmap_local(dst);
	flush_dcache_page(page);
	set_page_dirty_lock(page);
	put_page(page);
	return 0;
}

/**
 * tether_write() - TETHER_IOC_WRITE
 * @ctl:   the control fd the request came on
 * @range: looked-up range (exporter pinned)
 * @req:   the request, copied in; @req->written is set
 *
 * Context: process context, may sleep; takes the exporter's mmap_lock for
 * read, and tm->lock inside it (the notifier's order: its callbacks run
 * under mmap_lock and take tm->lock).
 * Return: 0, or a negative errno (include/uapi/linux/tether.h).
 */
int tether_write(struct tether_ctl *ctl, struct tether_range *range,
		 struct tether_write *req)
{
	struct tether_exporter *exp = range->exp;
	struct tether_write_seg *segs;
	u64 lo = U64_MAX, hi = 0, total = 0;
	struct mm_struct *mm = exp->mm;
	u8 *buf, *p;
	unsigned int i;
	int ret;

	req->written = 0;
	if (req->flags || !req->nr_segs || req->nr_segs > TETHER_WRITE_MAX_SEGS)
		return -EINVAL;
	segs = kvmalloc_array(req->nr_segs, sizeof(*segs), GFP_KERNEL_ACCOUNT);
	if (!segs)
		return -ENOMEM;
	if (copy_from_user(segs, u64_to_user_ptr(req->segs),
			   array_size(req->nr_segs, sizeof(*segs)))) {
		ret = -EFAULT;
		goto out_segs;
	}
	for (i = 0; i < req->nr_segs; i++) {
		u64 s = segs[i].offset, n = segs[i].len;

		if (!n || s + n < s || s + n > range->len ||
		    n > TETHER_WRITE_MAX_LEN - total) {
			ret = -EINVAL;
			goto out_segs;
		}
		total += n;
		lo = min(lo, s);
		hi = max(hi, s + n);
	}
	buf = kvmalloc(total, GFP_KERNEL_ACCOUNT);
	if (!buf) {
		ret = -ENOMEM;
		goto out_segs;
	}
	for (i = 0, p = buf; i < req->nr_segs; p += segs[i].len, i++) {
		if (copy_from_user(p, u64_to_user_ptr(segs[i].buf), segs[i].len)) {
			ret = -EFAULT;
			goto out_buf;
		}
	}

	if (!mmget_not_zero(mm)) {
		ret = -ESRCH;
		goto out_buf;
	}
	if (mmap_read_lock_killable(mm)) {
		ret = -EINTR;
		goto out_mm;
	}
	/* Under the lock no mapping of the range can be replaced: check. */
	ret = tether_range_write_check(ctl, range, round_down(lo, PAGE_SIZE),
				       round_up(hi, PAGE_SIZE), req->seq);
	for (i = 0, p = buf; !ret && i < req->nr_segs; i++) {
		unsigned long addr = range->start + segs[i].offset;
		u64 left = segs[i].len;

		while (left) {
			size_t n = min_t(u64, left,
					 PAGE_SIZE - offset_in_page(addr));

			ret = tether_write_page(mm, addr, p, n);
			if (ret)
				break;
			req->written += n;
			addr += n;
			p += n;
			left -= n;
		}
	}
	mmap_read_unlock(mm);
out_mm:
	mmput_async(mm);	/* never exit_mmap() on the daemon's thread */
out_buf:
	kvfree(buf);
out_segs:
	kvfree(segs);
	return ret;
}
