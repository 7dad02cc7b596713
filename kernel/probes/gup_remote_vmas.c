// SPDX-License-Identifier: GPL-2.0
/* before 6.5, get_user_pages_remote() took a vmas array (7 arguments) */
#include <linux/mm.h>
long tether_probe(struct mm_struct *mm, unsigned long addr, struct page **p);
long tether_probe(struct mm_struct *mm, unsigned long addr, struct page **p)
{
	return get_user_pages_remote(mm, addr, 1, 0, p, NULL, NULL);
}
