#include "daemon/common/credentials.h"

#include <algorithm>

namespace tether {

bool PermitAllows(uint32_t mode, uint32_t owner_uid, uint32_t owner_gid, const Credentials& cred,
                  uint32_t want) {
  uint32_t bits;
  if (cred.uid == owner_uid) {
    bits = (mode >> 6) & 7;
  } else if (cred.gid == owner_gid ||
             std::find(cred.groups.begin(), cred.groups.end(), owner_gid) != cred.groups.end()) {
    bits = (mode >> 3) & 7;
  } else {
    bits = mode & 7;
  }
  return (bits & want) == want;
}

}  // namespace tether
