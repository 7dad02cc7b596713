// Who is asking: a local caller's SO_PEERCRED, or a remote mapper's
// credentials as vouched for by its (authenticated) daemon.
//
// A local caller's identity is read from its socket (PeerCredentials):
// the pid, uid and gid of SO_PEERCRED and every supplementary group of
// SO_PEERGROUPS, however many (Linux allows NGROUPS_MAX = 65536). A remote
// mapper's is what its daemon sends; a remote root is squashed to nobody
// unless its node is trusted (SquashRemote, docs/security.md).
//
// Thread contract: plain values and pure functions; PeerCredentials reads
// only the socket it is given. Any thread.
#ifndef TETHER_DAEMON_COMMON_CREDENTIALS_H_
#define TETHER_DAEMON_COMMON_CREDENTIALS_H_

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace tether {

// The identity a squashed remote root acts as (nobody / nogroup).
constexpr uint32_t kNobodyUid = 65534;
constexpr uint32_t kNobodyGid = 65534;

struct Credentials {
  pid_t pid = 0;  // local callers only
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups
};

// The peer of a connected AF_UNIX socket: SO_PEERCRED, and all of its
// supplementary groups (SO_PEERGROUPS, with a buffer as large as the
// kernel says it needs). An error if either cannot be read: a caller whose
// groups are unknown must not be checked as if it had none.
absl::StatusOr<Credentials> PeerCredentials(int fd);

// Root squash (as NFS's root_squash): uid 0 becomes kNobodyUid, gid 0 and a
// supplementary group 0 become kNobodyGid. Other ids are kept.
Credentials SquashRoot(Credentials cred);

// XPMEM_PERMIT_MODE check: owner bits for the owner uid, group bits for a
// member of the owner gid, other bits otherwise. `want` is 4 (read) or
// 6 (read+write). There is deliberately no root override: the exporter
// decides who may map its memory.
bool PermitAllows(uint32_t mode, uint32_t owner_uid, uint32_t owner_gid, const Credentials& cred,
                  uint32_t want);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_CREDENTIALS_H_
