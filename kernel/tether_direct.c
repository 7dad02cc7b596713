// SPDX-License-Identifier: GPL-2.0
/*
 * tether_direct.c - direct attachments: true sharing on the home node.
 *
 * A process on the exporter's own node need not read a copy: a direct
 * attachment (TETHER_IOC_DIRECT_ATTACH) is a file whose mmap(2) shows the
 * exporter's own anonymous pages, as XPMEM's attachments do.  Nothing is
 * mapped at mmap time.  The fault handler looks the page up in the
 * exporter's page tables (get_user_pages_remote(), which faults it in
 * there if needed, with the exporter's own protection), inserts its pfn
 * into the faulting VMA (VM_PFNMAP: no reference and no rmap entry is
 * kept; read-only for a read fault, writable after a write lookup) and
 * drops the reference GUP took.  What keeps a mapped page from
 * being freed or moved is the mm's one tether notifier (tether_notifier.c):
 * every invalidate_range_start of the exporter's mm zaps every direct
 * attachment over the invalidated interval (unmap_mapping_range() on the
 * attachment's own inode, which reaches every VMA mapping it, in every
 * process, forked children included) before the kernel goes on; the next
 * access faults and sees what the exporter has there then.
 *
 * The fault / invalidation race (the mmu_interval_read_begin/read_retry
 * pattern, with tm->inprog and tm->direct_seq, both under tm->lock):
 *   fault:  under tm->lock: an invalidation over the address in progress
 *           -> wait for its end, retry; else remember seq = direct_seq.
 *           GUP the page (reference held), insert the pfn, then under
 *           tm->lock again: direct_seq changed, or an invalidation over
 *           the address is in progress -> zap what we inserted ourselves
 *           (zap_vma_ptes()) before dropping the page reference, refault.
 *   start:  under tm->lock: record the invalidation in tm->inprog and bump
 *           direct_seq; then, without it, zap the overlapping attachments.
 *   An insert that comes before the zap is removed by the zap; one that
 *   comes after it sees direct_seq changed and removes itself while the
 *   GUP reference still keeps the page from being freed.  direct_seq is one
 *   per mm (any invalidation while attachments exist), so a fault retries
 *   when any invalidation of the exporter's mm starts during its few
 *   microseconds between lookup and insert.
 *
 * Locks: the attachment's fault holds the faulting mm's mmap_lock (read);
 * it takes the exporter's mmap_lock (read) nested inside it with a trylock
 * first: two processes faulting on each other's attachments would
 * otherwise deadlock as soon as a writer queues on either lock.  When the
 * trylock fails and the fault may be retried, it drops its own mmap_lock,
 * waits for the exporter's and returns VM_FAULT_RETRY.  An attachment of
 * the faulting process's own mm uses the mmap_lock the fault holds.
 * The notifier walks tm->directs under SRCU (the zap sleeps: i_mmap_rwsem
 * of the attachment's inode, the attacher's page-table locks and its own
 * mmu notifiers); it holds none of tether's spinlocks while zapping.
 * Nested calls are fine: zapping an attachment mapped in the exporter's
 * own mm runs the notifier of that mm again, over the attachment's
 * addresses, under a nested SRCU read lock.
 *
 * Non-blockable invalidations (the OOM reaper) zap too: the pages are the
 * exporter's own, and leaving them mapped in another process while the
 * reaper frees them is not an option.  The zap may sleep briefly on the
 * attachment's i_mmap_rwsem, which only mmap/munmap of the attachment
 * take, never on anything of the dying exporter.
 *
 * Lifetime: the attachment file holds one reference on the exporter
 * (mm_struct kept by the exporter's mmgrab, never the address space: a
 * fault takes mmget_not_zero() for the duration of its lookup).  The
 * exporter's exit (tm->mm_gone) or the close of its exporter fd
 * (@dead) zaps every mapping and makes later faults SIGBUS.  The file's
 * release unlinks the attachment and waits for SRCU walkers before the
 * inode can go.
 */
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/srcu.h>

#include "tether_internal.h"

#define TETHER_DIRECT_MAGIC	0x74657468	/* "teth" */

DEFINE_STATIC_SRCU(tether_direct_srcu);
static struct vfsmount *tether_direct_mnt;
static const struct file_operations tether_datt_fops;

/* --------------------------------------------------------- pseudo fs */

static int tether_direct_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, TETHER_DIRECT_MAGIC) ? 0 : -ENOMEM;
}

/*
 * One inode per attachment (as dma-buf does): the inode's mapping is what
 * links the VMAs of exactly that attachment.
 */
static struct file_system_type tether_direct_fs = {
	.name		 = "tether_direct",
	.init_fs_context = tether_direct_init_fs_context,
	.kill_sb	 = kill_anon_super,
};

/**
 * tether_direct_init() - module init: mount the attachments' pseudo fs
 *
 * Context: process context (module init).
 * Return: 0 or a negative errno.
 */
int tether_direct_init(void)
{
	tether_direct_mnt = kern_mount(&tether_direct_fs);
	return PTR_ERR_OR_ZERO(tether_direct_mnt);
}

/* Context: process context (module exit; no attachment file is open). */
void tether_direct_exit(void)
{
	kern_unmount(tether_direct_mnt);
}

/* ------------------------------------------------------------ helpers */

static void tether_datt_free(struct kref *ref)
{
	struct tether_datt *d = container_of(ref, struct tether_datt, ref);

	if (d->exp)
		tether_exporter_put(d->exp);
	kfree(d);
}

/* Context: process context (the final put drops an exporter reference). */
static void tether_datt_put(struct tether_datt *d)
{
	kref_put(&d->ref, tether_datt_free);
}

static void tether_vma_flags(struct vm_area_struct *vma, vm_flags_t set,
			     vm_flags_t clear)
{
#if TETHER_HAVE_VM_FLAGS_MOD
	vm_flags_mod(vma, set, clear);
#else
	vma->vm_flags = (vma->vm_flags | set) & ~clear;
#endif
}

/* Context: ->fault; drops whichever lock the fault holds (VMA or mmap). */
static void tether_release_fault_lock(struct vm_fault *vmf)
{
#if TETHER_HAVE_RELEASE_FAULT_LOCK
	release_fault_lock(vmf);
#else
	mmap_read_unlock(vmf->vma->vm_mm);
#endif
}

/* The fault may drop its lock and return VM_FAULT_RETRY. */
static bool tether_can_retry(struct vm_fault *vmf)
{
	return (vmf->flags & FAULT_FLAG_ALLOW_RETRY) &&
	       !(vmf->flags & FAULT_FLAG_RETRY_NOWAIT);
}

/**
 * tether_datt_state() - may a fault of @d at @src go on?
 * @d:   attachment
 * @src: user address in the exporter's mm
 * @seq: out: tm->direct_seq, when 0 is returned
 *
 * Context: takes tm->lock.
 * Return: 0, -ESRCH (exporter gone: SIGBUS), -EAGAIN (an invalidation over
 * @src is in progress: wait for it).
 */
static int tether_datt_state(struct tether_datt *d, unsigned long src,
			     u64 *seq)
{
	struct tether_mm *tm = d->tm;
	int ret = 0;

	spin_lock(&tm->lock);
	if (d->dead || tm->mm_gone)
		ret = -ESRCH;
	else if (tether_mm_busy(tm, src, src + PAGE_SIZE))
		ret = -EAGAIN;
	else if (seq)
		*seq = tm->direct_seq;
	spin_unlock(&tm->lock);
	return ret;
}

/**
 * tether_datt_wait() - a fault found an invalidation over its address
 * @vmf: the fault
 * @d:   the attachment
 * @src: user address in the exporter's mm
 *
 * Waits (killably) until no invalidation over @src is in progress.  When
 * the fault may be retried it waits without the faulting mm's lock (the
 * invalidation may wait up to ack_timeout_ms for the daemon).
 *
 * Context: ->fault, the faulting mm's mmap_lock held for read; may sleep.
 * Return: VM_FAULT_RETRY (lock dropped) or VM_FAULT_NOPAGE (lock held:
 * refault).
 */
static vm_fault_t tether_datt_wait(struct vm_fault *vmf, struct tether_datt *d,
				   unsigned long src)
{
	bool retry = tether_can_retry(vmf);
	vm_fault_t ret = VM_FAULT_NOPAGE;

	if (retry) {
		kref_get(&d->ref);	/* the VMA (and file) may go now */
		tether_release_fault_lock(vmf);
		ret = VM_FAULT_RETRY;
	}
	wait_event_killable(d->tm->direct_wq,
			    tether_datt_state(d, src, NULL) != -EAGAIN);
	if (retry)
		tether_datt_put(d);
	return ret;
}

/**
 * tether_datt_get_page() - the exporter's page at @src, with a reference
 * @vmf:   the fault
 * @d:     the attachment
 * @src:   user address in the exporter's mm
 * @write: look it up for writing (FOLL_WRITE: breaks COW in the exporter,
 *         fails where the exporter may not write)
 * @pagep: out
 *
 * Only anonymous memory of the exporter (or the zero page, read-only) is
 * attached: a file page would be somebody else's to write back.
 *
 * Context: ->fault, the faulting mm's mmap_lock held for read; takes the
 * exporter's mmap_lock for read unless it is the faulting mm; may sleep.
 * Return: 0; -EAGAIN: the faulting mm's lock was dropped (VM_FAULT_RETRY);
 * -ESRCH, -EFAULT, -ENOMEM (SIGBUS / OOM).
 */
static int tether_datt_get_page(struct vm_fault *vmf, struct tether_datt *d,
				unsigned long src, bool write,
				struct page **pagep)
{
	struct mm_struct *mm = d->mm;
	bool own = mm == vmf->vma->vm_mm;
	struct vm_area_struct *vma;
	struct page *page;
	long got;
	int ret = 0;

	if (!mmget_not_zero(mm))
		return -ESRCH;
	if (!own && !mmap_read_trylock(mm)) {
		if (tether_can_retry(vmf)) {
			tether_release_fault_lock(vmf);
			if (!mmap_read_lock_killable(mm))
				mmap_read_unlock(mm);
			mmput_async(mm);
			return -EAGAIN;
		}
		mmap_read_lock(mm);
	}
	vma = vma_lookup(mm, src);
	if (!vma || !vma_is_anonymous(vma)) {
		ret = -EFAULT;
		goto out;
	}
#if TETHER_HAVE_GUP_REMOTE_VMAS
	got = get_user_pages_remote(mm, src, 1, write ? FOLL_WRITE : 0, &page,
				    NULL, NULL);
#else
	got = get_user_pages_remote(mm, src, 1, write ? FOLL_WRITE : 0, &page,
				    NULL);
#endif
	if (got != 1) {
		ret = got == -ENOMEM ? -ENOMEM : -EFAULT;
		goto out;
	}
	if (!PageAnon(page) && !is_zero_pfn(page_to_pfn(page))) {
		put_page(page);
		ret = -EFAULT;
		goto out;
	}
	*pagep = page;
out:
	if (!own)
		mmap_read_unlock(mm);
	mmput_async(mm);	/* never exit_mmap() from inside a fault */
	return ret;
}

/* --------------------------------------------------------------- VMA */

/*
 * Test hook (tether_main.c, test_direct_hold): stop between lookup and
 * insert until the test clears the parameter (10 s at most).
 * Context: ->fault; sleeps holding the faulting mm's mmap_lock for read.
 */
static noinline void tether_test_hold(void)
{
	WRITE_ONCE(tether_test_direct_held, tether_test_direct_held + 1);
	wait_event_killable_timeout(tether_test_direct_wq,
				    !READ_ONCE(tether_test_direct_hold), 10 * HZ);
	WRITE_ONCE(tether_test_direct_held, tether_test_direct_held - 1);
}

/**
 * tether_datt_fault() - map the exporter's page at the faulting address
 * @vmf: the fault
 *
 * Context: the faulting mm's mmap_lock held for read (never only the VMA
 * lock: without ->map_pages the kernel retries such faults under
 * mmap_lock; if one comes anyway we ask for that retry ourselves).
 * Return: VM_FAULT_NOPAGE (mapped, or refault), VM_FAULT_RETRY,
 * VM_FAULT_SIGBUS, VM_FAULT_OOM.
 */
static vm_fault_t tether_datt_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct tether_datt *d = vma->vm_file->private_data;
	bool write = vmf->flags & FAULT_FLAG_WRITE;
	u64 off = (u64)vmf->pgoff << PAGE_SHIFT;
	struct tether_mm *tm = d->tm;
	unsigned long src;
	struct page *page;
	vm_fault_t ret;
	bool stale;
	u64 seq;
	int err;

#if TETHER_HAVE_RELEASE_FAULT_LOCK
	if (vmf->flags & FAULT_FLAG_VMA_LOCK) {
		release_fault_lock(vmf);
		return VM_FAULT_RETRY;
	}
#endif
	if (WARN_ON_ONCE(off >= d->len))	/* mmap checked the bounds */
		return VM_FAULT_SIGBUS;
	src = d->start + off;

	err = tether_datt_state(d, src, &seq);
	if (err == -EAGAIN)
		return tether_datt_wait(vmf, d, src);
	if (err)
		return VM_FAULT_SIGBUS;

	/*
	 * A read fault maps the page read-only, also in a writable mapping:
	 * a read-only lookup may return the zero page or a page the exporter
	 * shares COW with a child, and it must not break COW or fail where
	 * the exporter itself may only read.  A later write goes through
	 * tether_datt_pfn_mkwrite() and a write lookup.
	 */
	err = tether_datt_get_page(vmf, d, src, write, &page);
	if (err == -EAGAIN)
		return VM_FAULT_RETRY;
	if (err)
		return err == -ENOMEM ? VM_FAULT_OOM : VM_FAULT_SIGBUS;
	if (unlikely(READ_ONCE(tether_test_direct_hold)))
		tether_test_hold();

	/*
	 * Not vma->vm_page_prot: having ->pfn_mkwrite makes it read-only
	 * (write notification), and a write fault must map writable.
	 */
	ret = vmf_insert_pfn_prot(vma, vmf->address & PAGE_MASK,
				  page_to_pfn(page),
				  vm_get_page_prot(write ? vma->vm_flags :
						   vma->vm_flags & ~VM_WRITE));
	spin_lock(&tm->lock);
	stale = tm->direct_seq != seq || d->dead || tm->mm_gone ||
		tether_mm_busy(tm, src, src + PAGE_SIZE);
	spin_unlock(&tm->lock);
	if (stale && !(ret & VM_FAULT_ERROR)) {
		/* An invalidation may have zapped before our insert. */
		zap_vma_ptes(vma, vmf->address & PAGE_MASK, PAGE_SIZE);
		ret = VM_FAULT_NOPAGE;
	}
	put_page(page);
	return ret;
}

/**
 * tether_datt_pfn_mkwrite() - a write to a page a read fault mapped
 * @vmf: the write fault on the read-only pte
 *
 * Without this the kernel would make the pte writable as it is; the page
 * may be the zero page, or one the exporter shares COW.  Take the pte
 * away: the access faults again, as a write, and looks the page up for
 * writing (breaking COW in the exporter, or failing with SIGBUS where the
 * exporter may not write).
 *
 * Context: the faulting mm's mmap_lock (or the VMA lock) held for read.
 * Return: VM_FAULT_NOPAGE (refault).
 */
static vm_fault_t tether_datt_pfn_mkwrite(struct vm_fault *vmf)
{
	zap_vma_ptes(vmf->vma, vmf->address & PAGE_MASK, PAGE_SIZE);
	return VM_FAULT_NOPAGE;
}

static const struct vm_operations_struct tether_datt_vm_ops = {
	.fault = tether_datt_fault,
	.pfn_mkwrite = tether_datt_pfn_mkwrite,
};

/**
 * tether_datt_mmap() - map (part of) a direct attachment
 * @file: the attachment file
 * @vma:  the new VMA; file offset 0 is the attachment's first byte
 *
 * Context: process context, the caller's mmap_lock held for write.
 * Return: 0; -EINVAL (MAP_PRIVATE: a private copy of another process's
 * pages is not an attachment; beyond the attachment's end), -EACCES
 * (writable mapping of a read-only attachment).  A MAP_SHARED mapping of
 * a read-only file has VM_MAYSHARE without VM_SHARED (mmap clears it).
 */
static int tether_datt_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct tether_datt *d = file->private_data;
	u64 npages = d->len >> PAGE_SHIFT;

	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (vma->vm_pgoff >= npages || vma_pages(vma) > npages - vma->vm_pgoff)
		return -EINVAL;
	if (!d->writable && (vma->vm_flags & VM_WRITE))
		return -EACCES;
	/* VM_PFNMAP: ptes without page references or rmap; VM_IO: no GUP,
	 * no /proc/pid/mem through it; not in core dumps; no mremap growth. */
	tether_vma_flags(vma, VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP,
			 d->writable ? 0 : VM_MAYWRITE);
	vma->vm_ops = &tether_datt_vm_ops;
	return 0;
}

/*
 * Context: process context (last fput; no VMA maps the file any more).
 * Takes tm->lock; waits for notifier walkers (SRCU) before the inode can
 * be freed.
 */
static int tether_datt_release(struct inode *inode, struct file *file)
{
	struct tether_datt *d = file->private_data;
	struct tether_mm *tm = d->tm;

	if (d->linked) {
		spin_lock(&tm->lock);
		list_del_rcu(&d->tm_node);
		tm->nr_direct--;
		spin_unlock(&tm->lock);
		synchronize_srcu(&tether_direct_srcu);
	}
	tether_datt_put(d);
	return 0;
}

static const struct file_operations tether_datt_fops = {
	.owner		= THIS_MODULE,
	.mmap		= tether_datt_mmap,
	.release	= tether_datt_release,
	.llseek		= noop_llseek,
};

/* ------------------------------------------------------------ notifier */

/**
 * tether_direct_zap() - unmap direct attachments over [@start, @end)
 * @tm:    the exporter's mm
 * @start: user address in the exporter's mm
 * @end:   (exclusive)
 * @exp:   only the attachments of this exporter, or NULL: all of @tm
 *
 * Context: process context, may sleep (also for a non-blockable
 * invalidation: see the comment at the top); no tether lock held.  Takes
 * the SRCU read lock, each attachment's i_mmap_rwsem and the attachers'
 * page-table locks.
 */
void tether_direct_zap(struct tether_mm *tm, u64 start, u64 end,
		       struct tether_exporter *exp)
{
	struct tether_datt *d;
	int idx;

	idx = srcu_read_lock(&tether_direct_srcu);
	list_for_each_entry_srcu(d, &tm->directs, tm_node,
				 srcu_read_lock_held(&tether_direct_srcu)) {
		u64 s = max(start, d->start);
		u64 e = min(end, d->start + d->len);

		if (s >= e || (exp && d->exp != exp))
			continue;
		unmap_mapping_range(d->inode->i_mapping, s - d->start, e - s, 1);
	}
	srcu_read_unlock(&tether_direct_srcu, idx);
}

/* -------------------------------------------------------------- ioctl */

/**
 * tether_direct_create() - TETHER_IOC_DIRECT_ATTACH
 * @ctl:      the control the request came from
 * @range:    looked-up range (exporter pinned by the caller)
 * @offset:   page-aligned, validated against the range by the caller
 * @len:      page-aligned, > 0
 * @writable: TETHER_DIRECT_WRITE
 * @ufd:      where the new fd number goes (written before the fd exists:
 *            a fault there creates nothing)
 *
 * Only the daemon the exporter handed its exporter fd to may attach: the
 * range must belong to an exporter attached to @ctl, as for MARK_CACHED.
 *
 * Context: process context, may sleep; takes tm->lock.
 * Return: 0, -ENOENT, -ESRCH, -EMFILE, -ENOMEM, -EFAULT.
 */
int tether_direct_create(struct tether_ctl *ctl, struct tether_range *range,
			 u64 offset, u64 len, bool writable, int __user *ufd)
{
	struct tether_exporter *exp = range->exp;
	struct tether_mm *tm = exp->tm;
	struct tether_datt *d;
	struct inode *inode;
	struct file *file;
	int fd, ret;

	d = kzalloc(sizeof(*d), GFP_KERNEL_ACCOUNT);
	if (!d)
		return -ENOMEM;
	kref_init(&d->ref);
	INIT_LIST_HEAD(&d->tm_node);
	d->tm = tm;
	d->mm = exp->mm;
	d->start = range->start + offset;
	d->len = len;
	d->writable = writable;

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		kfree(d);
		return fd;
	}
	if (put_user(fd, ufd)) {
		ret = -EFAULT;
		goto err_fd;
	}
	if (!try_module_get(THIS_MODULE)) {	/* dropped by the file's fput */
		ret = -ENODEV;
		goto err_fd;
	}
	inode = alloc_anon_inode(tether_direct_mnt->mnt_sb);
	if (IS_ERR(inode)) {
		ret = PTR_ERR(inode);
		module_put(THIS_MODULE);
		goto err_fd;
	}
	file = alloc_file_pseudo(inode, tether_direct_mnt, "tether_direct",
				 writable ? O_RDWR : O_RDONLY, &tether_datt_fops);
	if (IS_ERR(file)) {
		ret = PTR_ERR(file);
		iput(inode);
		module_put(THIS_MODULE);
		goto err_fd;
	}
	d->inode = inode;
	file->private_data = d;	/* the file owns d from here on */

	spin_lock(&tm->lock);
	if (exp->ctl != ctl) {
		ret = -ENOENT;
	} else if (tm->mm_gone || exp->closing) {
		ret = -ESRCH;
	} else {
		tether_exporter_get(exp);
		d->exp = exp;
		list_add_tail_rcu(&d->tm_node, &tm->directs);
		tm->nr_direct++;
		d->linked = true;
		ret = 0;
	}
	spin_unlock(&tm->lock);
	if (ret) {
		fput(file);	/* not linked: release only frees d */
		put_unused_fd(fd);
		return ret;
	}
	fd_install(fd, file);
	return 0;

err_fd:
	put_unused_fd(fd);
	kfree(d);
	return ret;
}
