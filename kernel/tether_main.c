// SPDX-License-Identifier: GPL-2.0
/*
 * tether.ko - tells tetherd, through /dev/tether, before any page of an
 * exported range is freed, moved or has its protection changed.
 *
 * This file: module setup, /dev/tether file operations, ioctl argument
 * checking and dispatch.  tether_notifier.c holds the mmu notifier and the
 * concurrency protocol; tether_ctl.c the daemon's event queue.  The ABI is
 * include/uapi/linux/tether.h; kernel/README.md explains both.
 *
 * Every ioctl validates all of its input before changing anything: a
 * rejected call leaves the module's state as it was.
 */
#include <linux/file.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/stringify.h>
#include <linux/uaccess.h>

#include "tether_internal.h"

unsigned int tether_ack_timeout_ms = TETHER_ACK_TIMEOUT_DEFAULT_MS;

/**
 * tether_ack_timeout_set() - set ack_timeout_ms, at load or through sysfs
 * @val: the new value, as written (decimal, 0x/0 prefixes, trailing newline)
 * @kp:  the parameter
 *
 * Takes only TETHER_ACK_TIMEOUT_MIN_MS..TETHER_ACK_TIMEOUT_MAX_MS.  There is
 * no "never wait" value: a blockable invalidation always reaches the daemon
 * as blockable, which then takes it as a window, not as the OOM reaper's
 * BEGIN that revokes every mapper (G4).  Below the minimum, every blockable
 * BEGIN whose ack needs a network round trip would time out; above the
 * maximum, an exporter waiting with mmap_lock held would keep tasks queued
 * on that lock blocked past the default hung-task timeout (120 s).
 *
 * Context: process context, under the kernel's parameter lock.
 * Return: 0, or -EINVAL for anything that is not a number in range; the
 * value is then unchanged (a load with it fails).
 */
static int tether_ack_timeout_set(const char *val,
				  const struct kernel_param *kp)
{
	unsigned int ms;

	if (kstrtouint(val, 0, &ms) || ms < TETHER_ACK_TIMEOUT_MIN_MS ||
	    ms > TETHER_ACK_TIMEOUT_MAX_MS)
		return -EINVAL;
	WRITE_ONCE(*(unsigned int *)kp->arg, ms);
	return 0;
}

static const struct kernel_param_ops tether_ack_timeout_ops = {
	.set = tether_ack_timeout_set,
	.get = param_get_uint,
};

module_param_cb(ack_timeout_ms, &tether_ack_timeout_ops,
		&tether_ack_timeout_ms, 0644);
MODULE_PARM_DESC(ack_timeout_ms,
		 "How long a blockable invalidation waits for the daemon's ack (ms, "
		 __stringify(TETHER_ACK_TIMEOUT_MIN_MS) ".."
		 __stringify(TETHER_ACK_TIMEOUT_MAX_MS) ", default "
		 __stringify(TETHER_ACK_TIMEOUT_DEFAULT_MS) ")");

/*
 * Test hook (tests/vm/module_test.c only; root, like every module
 * parameter): while set, every event allocation of a notifier callback
 * (GFP_NOWAIT, the mempool reserve included) fails, as if memory and the
 * reserve were exhausted.  It never changes anything else.
 */
bool tether_test_fail_event_alloc;
module_param_named(test_fail_event_alloc, tether_test_fail_event_alloc, bool, 0644);
MODULE_PARM_DESC(test_fail_event_alloc,
		 "Test hook: fail every notifier event allocation (default N)");

/*
 * Test hook (tests/vm/module_test.c only, root): while test_direct_hold
 * is set, a fault of a direct attachment stops after it looked the
 * exporter's page up and before it inserts it, and counts itself in
 * test_direct_held; clearing the parameter lets it go on (at most 10 s
 * later it goes on anyway).  That is how the test puts an invalidation
 * of the exporter between lookup and insert (tether_direct.c), without
 * hoping for timing.  It never changes anything else.
 */
bool tether_test_direct_hold;
unsigned int tether_test_direct_held;
DECLARE_WAIT_QUEUE_HEAD(tether_test_direct_wq);

static int tether_test_direct_hold_set(const char *val,
				       const struct kernel_param *kp)
{
	int ret = param_set_bool(val, kp);

	wake_up_all(&tether_test_direct_wq);
	return ret;
}

static const struct kernel_param_ops tether_test_direct_hold_ops = {
	.set = tether_test_direct_hold_set,
	.get = param_get_bool,
};

module_param_cb(test_direct_hold, &tether_test_direct_hold_ops,
		&tether_test_direct_hold, 0644);
MODULE_PARM_DESC(test_direct_hold,
		 "Test hook: direct attachment faults stop between lookup and insert (default N)");
module_param_named(test_direct_held, tether_test_direct_held, uint, 0444);
MODULE_PARM_DESC(test_direct_held,
		 "Test hook: direct attachment faults stopped by test_direct_hold now");

DEFINE_XARRAY_ALLOC1(tether_ranges);

static const struct file_operations tether_fops;

/* ------------------------------------------------------------ helpers */

static bool tether_bad_span(u64 start, u64 len, u64 limit)
{
	return !len || !PAGE_ALIGNED(start) || !PAGE_ALIGNED(len) ||
	       start + len < start || start + len > limit;
}

/**
 * tether_file_role() - read the role of an open tether file
 * @tf: file private data
 *
 * Context: process context; takes and drops tf->lock.
 */
static enum tether_role tether_file_role(struct tether_file *tf)
{
	enum tether_role role;

	mutex_lock(&tf->lock);
	role = tf->role;
	mutex_unlock(&tf->lock);
	return role;
}

/**
 * tether_become_control() - bind an fd as a control fd (idempotent)
 * @tf: file private data
 *
 * Context: process context, may sleep; takes tf->lock.
 * Return: the ctl, or ERR_PTR(-EBADFD) for an exporter fd, -ENOMEM.
 */
static struct tether_ctl *tether_become_control(struct tether_file *tf)
{
	struct tether_ctl *ctl;

	mutex_lock(&tf->lock);
	switch (tf->role) {
	case TETHER_ROLE_CONTROL:
		ctl = tf->ctl;
		break;
	case TETHER_ROLE_EXPORTER:
		ctl = ERR_PTR(-EBADFD);
		break;
	default:
		ctl = tether_ctl_create();
		if (!ctl) {
			ctl = ERR_PTR(-ENOMEM);
			break;
		}
		tf->ctl = ctl;
		tf->role = TETHER_ROLE_CONTROL;
	}
	mutex_unlock(&tf->lock);
	return ctl;
}

/* A control fd never changes role once bound, and tf->ctl lives as long as
 * the file, so callers may use it without tf->lock afterwards. */
static struct tether_ctl *tether_get_control(struct tether_file *tf)
{
	return tether_file_role(tf) == TETHER_ROLE_CONTROL ? tf->ctl : NULL;
}

/* ------------------------------------------------------------- ioctls */

static long tether_ioc_version(void __user *uarg)
{
	struct tether_version v = {
		.abi_version = TETHER_ABI_VERSION,
		.event_size = sizeof(struct tether_event),
		.features = TETHER_FEAT_SEQ | TETHER_FEAT_DIRECT |
			    TETHER_FEAT_WRITE,
	};

	return copy_to_user(uarg, &v, sizeof(v)) ? -EFAULT : 0;
}

/**
 * tether_ioc_register() - REGISTER_RANGE on an exporter (or unbound) fd
 * @tf:   file private data
 * @uarg: struct tether_range_reg
 *
 * Context: process context, may sleep; takes tf->lock and, holding it,
 * (first range) the caller's mmap_lock for write, xa_lock and tm->lock:
 * tether_exporter_register() and tether_exporter_add_range() assert it.
 */
static long tether_ioc_register(struct tether_file *tf, void __user *uarg)
{
	struct tether_exporter *exp;
	struct tether_range_reg req;
	bool fresh = false;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags || tether_bad_span(req.start, req.len, TASK_SIZE))
		return -EINVAL;
	/* Make sure the answer can be written before changing anything. */
	if (copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	if (!current->mm)
		return -EINVAL;

	mutex_lock(&tf->lock);
	switch (tf->role) {
	case TETHER_ROLE_CONTROL:
		ret = -EBADFD;
		goto out_unlock;
	case TETHER_ROLE_EXPORTER:
		exp = tf->exp;
		/* Ranges of the caller's own mm only (not a forked child's,
		 * not the daemon's). */
		if (exp->mm != current->mm) {
			ret = -EINVAL;
			goto out_unlock;
		}
		break;
	default:
		exp = tether_exporter_create();
		if (!exp) {
			ret = -ENOMEM;
			goto out_unlock;
		}
		ret = tether_exporter_register(exp, tf);
		if (ret)
			goto out_free_exp;
		fresh = true;
	}

	ret = tether_exporter_add_range(exp, tf, req.start, req.len,
					&req.range_id);
	if (ret) {
		/* Unregisters the notifier; no range, no ctl: nothing is sent. */
		if (fresh)
			tether_exporter_teardown(exp);
		goto out_unlock;
	}
	if (fresh) {
		tf->exp = exp;
		tf->role = TETHER_ROLE_EXPORTER;
	}
	mutex_unlock(&tf->lock);

	/* Checked writable above; a racing munmap of the argument is the
	 * caller's own doing. */
	if (put_user(req.range_id, &((struct tether_range_reg __user *)uarg)->range_id))
		return -EFAULT;
	return 0;

out_free_exp:
	tether_exporter_put(exp);
out_unlock:
	mutex_unlock(&tf->lock);
	return ret;
}

/**
 * tether_ioc_attach() - ATTACH an exporter fd to this control fd
 * @tf:   file private data of the control (or unbound) fd
 * @file: the control file itself
 * @uarg: struct tether_attach
 *
 * Context: process context, may sleep; takes tf->lock, then the exporter
 * file's lock (not nested), then tm->lock -> ctl->lock.
 */
static long tether_ioc_attach(struct tether_file *tf, struct file *file,
			      void __user *uarg)
{
	struct tether_exporter *exp = NULL;
	struct tether_attach req;
	struct tether_file *otf;
	struct tether_ctl *ctl;
	struct file *ofile;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.pad || req.flags)
		return -EINVAL;
	if (copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	if (tether_file_role(tf) == TETHER_ROLE_EXPORTER)
		return -EBADFD;

	ofile = fget(req.fd);
	if (!ofile)
		return -EBADF;
	if (ofile->f_op != &tether_fops || ofile == file) {
		ret = -EINVAL;
		goto out_fput;
	}
	otf = ofile->private_data;
	mutex_lock(&otf->lock);
	if (otf->role == TETHER_ROLE_EXPORTER) {
		exp = otf->exp;
		tether_exporter_get(exp);
	}
	mutex_unlock(&otf->lock);
	if (!exp) {
		ret = -EINVAL;
		goto out_fput;
	}

	ctl = tether_become_control(tf);
	if (IS_ERR(ctl)) {
		ret = PTR_ERR(ctl);
		goto out_put;
	}
	ret = tether_exporter_attach(exp, ctl);
	if (ret)
		goto out_put;
	/* The ctl's exporter list owns our reference now. */
	fput(ofile);
	if (put_user(exp->id, &((struct tether_attach __user *)uarg)->exporter_id))
		return -EFAULT;
	return 0;

out_put:
	tether_exporter_put(exp);
out_fput:
	fput(ofile);
	return ret;
}

/**
 * tether_ioc_range() - MARK_CACHED, UNMARK_CACHED, READ_RETRY, RANGE_INFO,
 * DIRECT_ATTACH, WRITE
 * @tf:   file private data (must be a control fd)
 * @cmd:  the command
 * @uarg: its argument
 *
 * Context: process context, may sleep; takes tf->lock (role), xa_lock
 * (lookup), then tm->lock, none nested; see tether_range_mark().  WRITE
 * takes the exporter's mmap_lock (read) with tm->lock inside it
 * (tether_write()).
 */
static long tether_ioc_range(struct tether_file *tf, unsigned int cmd,
			     void __user *uarg)
{
	union {
		struct tether_mark mark;
		struct tether_seq seq;
		struct tether_range_info info;
		struct tether_direct direct;
		struct tether_write write;
	} u;
	struct tether_range *range;
	struct tether_ctl *ctl;
	size_t size = _IOC_SIZE(cmd);
	u64 range_id;
	long ret;

	ctl = tether_get_control(tf);
	if (!ctl)
		return -EBADFD;
	if (copy_from_user(&u, uarg, size))
		return -EFAULT;
	range_id = u.mark.range_id;	/* first field of each struct */

	range = tether_range_lookup(range_id);
	if (!range)
		return -ENOENT;

	switch (cmd) {
	case TETHER_IOC_MARK_CACHED:
	case TETHER_IOC_UNMARK_CACHED:
		if (tether_bad_span(u.mark.offset, u.mark.len, range->len)) {
			ret = -EINVAL;
			break;
		}
		if (copy_to_user(uarg, &u.mark, sizeof(u.mark))) {
			ret = -EFAULT;
			break;
		}
		ret = tether_range_mark(ctl, range, u.mark.offset, u.mark.len,
					cmd == TETHER_IOC_MARK_CACHED,
					&u.mark.seq);
		if (!ret && put_user(u.mark.seq,
				     &((struct tether_mark __user *)uarg)->seq))
			ret = -EFAULT;
		break;
	case TETHER_IOC_READ_RETRY:
		ret = tether_range_read_retry(ctl, range, u.seq.seq);
		break;
	case TETHER_IOC_RANGE_INFO:
		ret = tether_range_info(ctl, range, &u.info);
		if (!ret && copy_to_user(uarg, &u.info, sizeof(u.info)))
			ret = -EFAULT;
		break;
	case TETHER_IOC_DIRECT_ATTACH:
		if ((u.direct.flags & ~TETHER_DIRECT_WRITE) ||
		    tether_bad_span(u.direct.offset, u.direct.len, range->len)) {
			ret = -EINVAL;
			break;
		}
		ret = tether_direct_create(ctl, range, u.direct.offset,
					   u.direct.len,
					   u.direct.flags & TETHER_DIRECT_WRITE,
					   &((struct tether_direct __user *)uarg)->fd);
		break;
	case TETHER_IOC_WRITE:
		/* Make sure the count can be written back before writing. */
		if (copy_to_user(uarg, &u.write, sizeof(u.write))) {
			ret = -EFAULT;
			break;
		}
		ret = tether_write(ctl, range, &u.write);
		if (put_user(u.write.written,
			     &((struct tether_write __user *)uarg)->written) && !ret)
			ret = -EFAULT;
		break;
	default:
		WARN_ON_ONCE(1);
		ret = -ENOTTY;
	}
	tether_exporter_put(range->exp);
	return ret;
}

static long tether_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct tether_file *tf = file->private_data;
	void __user *uarg = (void __user *)arg;
	struct tether_ctl *ctl;

	switch (cmd) {
	case TETHER_IOC_GET_VERSION:
		return tether_ioc_version(uarg);
	case TETHER_IOC_REGISTER_RANGE:
		return tether_ioc_register(tf, uarg);
	case TETHER_IOC_CONTROL:
		ctl = tether_become_control(tf);
		return IS_ERR(ctl) ? PTR_ERR(ctl) : 0;
	case TETHER_IOC_ATTACH:
		return tether_ioc_attach(tf, file, uarg);
	case TETHER_IOC_MARK_CACHED:
	case TETHER_IOC_UNMARK_CACHED:
	case TETHER_IOC_READ_RETRY:
	case TETHER_IOC_RANGE_INFO:
	case TETHER_IOC_DIRECT_ATTACH:
	case TETHER_IOC_WRITE:
		return tether_ioc_range(tf, cmd, uarg);
	case TETHER_IOC_ACK: {
		struct tether_ack req;

		ctl = tether_get_control(tf);
		if (!ctl)
			return -EBADFD;
		if (copy_from_user(&req, uarg, sizeof(req)))
			return -EFAULT;
		if (req.flags)
			return -EINVAL;
		return tether_ctl_ack(ctl, req.event_id);
	}
	default:
		return -ENOTTY;
	}
}

/* ------------------------------------------------------ file operations */

static int tether_open(struct inode *inode, struct file *file)
{
	struct tether_file *tf = kzalloc(sizeof(*tf), GFP_KERNEL_ACCOUNT);

	if (!tf)
		return -ENOMEM;
	mutex_init(&tf->lock);
	file->private_data = tf;
	return 0;
}

/*
 * Context: process context (last fput), may sleep; no lock held.  tf->role
 * is read without tf->lock: no ioctl on this file can run any more.
 */
static int tether_release(struct inode *inode, struct file *file)
{
	struct tether_file *tf = file->private_data;

	switch (tf->role) {
	case TETHER_ROLE_EXPORTER:
		tether_exporter_teardown(tf->exp);
		break;
	case TETHER_ROLE_CONTROL:
		tether_ctl_release(tf->ctl);
		break;
	default:
		break;
	}
	mutex_destroy(&tf->lock);
	kfree(tf);
	return 0;
}

static ssize_t tether_read(struct file *file, char __user *buf, size_t count,
			   loff_t *ppos)
{
	struct tether_ctl *ctl = tether_get_control(file->private_data);

	if (!ctl)
		return -EBADFD;
	return tether_ctl_read(ctl, buf, count, file->f_flags & O_NONBLOCK);
}

static __poll_t tether_poll(struct file *file, poll_table *wait)
{
	struct tether_ctl *ctl = tether_get_control(file->private_data);

	if (!ctl)
		return EPOLLERR;
	return tether_ctl_poll(ctl, file, wait);
}

static const struct file_operations tether_fops = {
	.owner		= THIS_MODULE,
	.open		= tether_open,
	.release	= tether_release,
	.read		= tether_read,
	.poll		= tether_poll,
	.unlocked_ioctl	= tether_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

/*
 * No .mode: the node is created 0600 root (the kernel's default for a misc
 * device).  Who else may open it is the administrator's choice, made by
 * the udev rule deploy/60-tether.rules (group tether, 0660), not the
 * module's: every exporter fd costs kernel memory and every control fd can
 * make exporters wait (up to ack_timeout_ms per invalidation).
 */
static struct miscdevice tether_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "tether",
	.fops	= &tether_fops,
};

static int __init tether_init(void)
{
	int ret;

	ret = tether_kevent_cache_init();
	if (ret)
		return ret;
	ret = tether_direct_init();
	if (ret)
		goto err_cache;
	ret = misc_register(&tether_misc);
	if (ret)
		goto err_direct;
	pr_info("tether: ABI %d, ack_timeout_ms=%u, kernel API: %s hook, range->vma %s, MMU_NOTIFY_EXCLUSIVE %s\n",
		TETHER_ABI_VERSION, tether_ack_timeout_ms,
		TETHER_HAVE_MN_ARCH_INVALIDATE_SECONDARY_TLBS ?
			"arch_invalidate_secondary_tlbs" : "invalidate_range",
		TETHER_HAVE_MN_RANGE_VMA ? "present" : "absent",
		TETHER_HAVE_MMU_NOTIFY_EXCLUSIVE ? "present" : "absent");
	return 0;

err_direct:
	tether_direct_exit();
err_cache:
	tether_kevent_cache_exit();
	return ret;
}

static void __exit tether_exit(void)
{
	misc_deregister(&tether_misc);
	WARN_ON(!xa_empty(&tether_ranges));
	tether_notifier_exit();	/* subscriptions freed by SRCU callbacks */
	tether_direct_exit();	/* no attachment file is open: each holds the module */
	tether_kevent_cache_exit();
}

module_init(tether_init);
module_exit(tether_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("tether project");
MODULE_DESCRIPTION("mmu notifier events of exported ranges for tetherd (/dev/tether)");
