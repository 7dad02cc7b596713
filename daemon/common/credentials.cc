#include "daemon/common/credentials.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "daemon/common/errors.h"

namespace tether {

absl::StatusOr<Credentials> PeerCredentials(int fd) {
  Credentials cred;
  ucred uc{};
  socklen_t len = sizeof(uc);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0)
    return ErrnoStatus(errno, "getsockopt(SO_PEERCRED)");
  cred.pid = uc.pid;
  cred.uid = uc.uid;
  cred.gid = uc.gid;
  // Most callers have a few groups: one try with a small buffer. A caller
  // with more gets ERANGE and the size needed in `len`; its groups cannot
  // change (they are the connecting process's, taken at connect()), so the
  // second try with that size is the last.
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 2; ++attempt) {
    len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      cred.groups.assign(groups.begin(), groups.begin() + len / sizeof(gid_t));
      return cred;
    }
    if (errno != ERANGE || len <= groups.size() * sizeof(gid_t))
      return ErrnoStatus(errno, "getsockopt(SO_PEERGROUPS)");
    groups.resize(len / sizeof(gid_t));
  }
  return ErrnoStatus(ERANGE, "getsockopt(SO_PEERGROUPS): the group list kept growing");
}

Credentials SquashRoot(Credentials cred) {
  if (cred.uid == 0) cred.uid = kNobodyUid;
  if (cred.gid == 0) cred.gid = kNobodyGid;
  for (uint32_t& g : cred.groups)
    if (g == 0) g = kNobodyGid;
  return cred;
}

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
