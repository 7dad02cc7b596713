// SPDX-License-Identifier: GPL-2.0
/* from 6.3, vma->vm_flags is const: change it with vm_flags_mod() */
#include <linux/mm.h>
void tether_probe(struct vm_area_struct *vma);
void tether_probe(struct vm_area_struct *vma) { vm_flags_mod(vma, VM_IO, VM_MAYWRITE); }
