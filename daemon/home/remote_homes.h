// RemoteHomes: the homes on other nodes, as this node's client-request
// handler (local/) reaches them. PeerDirectory (peer/) implements it over
// gRPC; unit tests use a fake. It lives here, beside the local home it
// mirrors, so that local/ does not depend on peer/ (and gRPC).
//
// Thread contract: every method may be called from any thread, and may
// block for up to the control plane's RPC timeout.
#ifndef TETHER_DAEMON_HOME_REMOTE_HOMES_H_
#define TETHER_DAEMON_HOME_REMOTE_HOMES_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/common/credentials.h"
#include "daemon/home/segment_types.h"

namespace tether {

class RemoteHomes {
 public:
  virtual ~RemoteHomes() = default;
  // Whether `node` is in this node's peer list.
  virtual bool Knows(uint32_t node) const = 0;
  // SegmentRegistry::Attach at `node`'s home, for a mapper on this node.
  virtual absl::StatusOr<Grant> Attach(uint32_t node, uint64_t segid, const Credentials& cred,
                                       bool write) = 0;
  virtual absl::Status Detach(uint32_t node, uint64_t segid, uint64_t grant) = 0;
  // A published name on any other node; first match wins.
  virtual absl::StatusOr<SegmentSummary> Lookup(const std::string& name) = 0;
};

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_REMOTE_HOMES_H_
