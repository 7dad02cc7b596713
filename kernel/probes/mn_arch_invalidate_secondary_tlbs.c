// SPDX-License-Identifier: GPL-2.0
/* after 6.1, mmu_notifier_ops.invalidate_range became arch_invalidate_secondary_tlbs */
#include <linux/mmu_notifier.h>
static void f(struct mmu_notifier *mn, struct mm_struct *mm,
	      unsigned long start, unsigned long end) { }
const struct mmu_notifier_ops tether_probe_ops = {
	.arch_invalidate_secondary_tlbs = f,
};
