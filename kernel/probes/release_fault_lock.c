// SPDX-License-Identifier: GPL-2.0
/* from 6.7, ->fault may hold the VMA lock or mmap_lock: release_fault_lock() drops either */
#include <linux/mm.h>
void tether_probe(struct vm_fault *vmf);
void tether_probe(struct vm_fault *vmf) { release_fault_lock(vmf); }
