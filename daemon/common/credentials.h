// Who is asking: a local caller's SO_PEERCRED, or a remote mapper's
// credentials as vouched for by its (authenticated) daemon.
//
// Thread contract: plain values and pure functions (PermitAllows); no state.
#ifndef TETHER_DAEMON_COMMON_CREDENTIALS_H_
#define TETHER_DAEMON_COMMON_CREDENTIALS_H_

#include <sys/types.h>

#include <cstdint>
#include <vector>

namespace tether {

struct Credentials {
  pid_t pid = 0;  // local callers only
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups
};

// XPMEM_PERMIT_MODE check: owner bits for the owner uid, group bits for a
// member of the owner gid, other bits otherwise. `want` is 4 (read) or
// 6 (read+write). There is deliberately no root override: the exporter
// decides who may map its memory.
bool PermitAllows(uint32_t mode, uint32_t owner_uid, uint32_t owner_gid, const Credentials& cred,
                  uint32_t want);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_CREDENTIALS_H_
