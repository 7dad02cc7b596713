// SPDX-License-Identifier: GPL-2.0
/* MMU_NOTIFY_EXCLUSIVE (added in 5.13; device-exclusive rework may drop it) */
#include <linux/mmu_notifier.h>
int tether_probe(void);
int tether_probe(void) { return MMU_NOTIFY_EXCLUSIVE; }
