// Cluster-wide segment ids.
//
// A segid is a positive int64 (XPMEM's xpmem_segid_t is signed):
//   bit 63      0 (keeps the value positive)
//   bits 62..48 home node id (15 bits, 1..32767)
//   bits 47..32 home daemon incarnation (16 bits, never 0)
//   bits 31..0  local counter (never 0)
// The incarnation changes at every daemon start, so a segid from before a
// restart is recognisably stale and gets ENOENT instead of reaching a new
// segment that reused the counter.
//
// Thread contract: pure functions on values.
#ifndef TETHER_DAEMON_COMMON_SEGID_H_
#define TETHER_DAEMON_COMMON_SEGID_H_

#include <cstdint>

namespace tether {

constexpr uint32_t kMaxNodeId = (1u << 15) - 1;

struct SegidParts {
  uint32_t node = 0;
  uint32_t incarnation = 0;
  uint32_t local = 0;
};

// Returns 0 when a part is out of range (0 is never a valid segid).
uint64_t MakeSegid(uint32_t node, uint32_t incarnation, uint32_t local);
// False when the value cannot be a segid (negative, zero parts).
bool ParseSegid(uint64_t segid, SegidParts* out);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_SEGID_H_
