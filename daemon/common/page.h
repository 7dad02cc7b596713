// The page size tether works in: the unit of faults, fetches, invalidation
// ranges and write-backs, on every node. 4 KiB base pages on every
// architecture tether runs on (x86-64; arm64 kernels with 4K pages):
// segments and attachments must be multiples of it, and the wire formats
// count in it. The daemon checks at start that the kernel agrees
// (sysconf(_SC_PAGESIZE)).
#ifndef TETHER_DAEMON_COMMON_PAGE_H_
#define TETHER_DAEMON_COMMON_PAGE_H_

#include <cstdint>

namespace tether {

inline constexpr uint64_t kPageSize = 4096;

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_PAGE_H_
