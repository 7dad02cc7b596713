// SPDX-License-Identifier: GPL-2.0
/* after 6.1, struct mmu_notifier_range lost its vma field */
#include <linux/mmu_notifier.h>
void *tether_probe(struct mmu_notifier_range *r);
void *tether_probe(struct mmu_notifier_range *r) { return r->vma; }
