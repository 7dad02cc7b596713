#include "daemon/common/segid.h"

namespace tether {

uint64_t MakeSegid(uint32_t node, uint32_t incarnation, uint32_t local) {
  if (node == 0 || node > kMaxNodeId || incarnation == 0 || incarnation > 0xffff || local == 0) {
    return 0;
  }
  return (uint64_t{node} << 48) | (uint64_t{incarnation} << 32) | local;
}

bool ParseSegid(uint64_t segid, SegidParts* out) {
  if (segid >> 63) return false;
  SegidParts p;
  p.node = static_cast<uint32_t>((segid >> 48) & kMaxNodeId);
  p.incarnation = static_cast<uint32_t>((segid >> 32) & 0xffff);
  p.local = static_cast<uint32_t>(segid);
  if (p.node == 0 || p.incarnation == 0 || p.local == 0) return false;
  *out = p;
  return true;
}

}  // namespace tether
