// What the home tells mapper nodes about a range of a segment, and the two
// interfaces a notice passes through: InvalidationChannel (the home's way
// out; PeerInvalidationChannel in peer/) and InvalidationTarget (a mapper
// node's way in; MapperInvalidation in mapper/).
//
// Thread contract: both interfaces are called from any thread,
// concurrently. Channel sends never block (done runs later, on the
// channel's threads); a target's Handle blocks until the node holds no copy
// of the range (range_begin) and must not wait for the home.
#ifndef TETHER_DAEMON_INVALIDATION_NOTICE_H_
#define TETHER_DAEMON_INVALIDATION_NOTICE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace tether {

struct InvalidationNotice {
  enum class Kind { kBegin, kEnd, kRevoke };
  Kind kind = Kind::kBegin;
  uint64_t segid = 0;
  uint64_t start = 0, end = 0;  // segment offsets [start, end)
  uint64_t window = 0;
  // END: sub-ranges (segment offsets) whose address no longer exists:
  // dirty data kept aside for them is discarded, not written back.
  std::vector<std::pair<uint64_t, uint64_t>> gone;
  std::string reason;
  uint32_t home_node = 0;
};

// Delivers notices to mapper nodes: gRPC for peers, a direct call for this
// node's own mappers. `done` runs once: OK means acknowledged.
class InvalidationChannel {
 public:
  using Done = absl::AnyInvocable<void(absl::Status) &&>;
  virtual ~InvalidationChannel() = default;
  virtual void Send(uint32_t node, const InvalidationNotice& notice, absl::Duration timeout,
                    Done done) = 0;
  // One notice to several nodes (a window's fan-out); `done` runs once per
  // node. This sends them one by one; a channel that serializes notices
  // overrides it to do that once per fan-out, not once per node.
  using NodeDone = std::function<void(uint32_t node, absl::Status)>;
  virtual void SendToAll(const std::vector<uint32_t>& nodes, const InvalidationNotice& notice,
                         absl::Duration timeout, NodeDone done) {
    for (uint32_t node : nodes)
      Send(node, notice, timeout, [done, node](absl::Status st) { done(node, std::move(st)); });
  }
  // The home granted `node` an attachment, so notices to it will follow:
  // connect now (without waiting), so that the first range_begin does not
  // spend its ack deadline on connection and TLS set-up.
  virtual void Prepare(uint32_t node) {}
};

// The mapper side of the protocol, on every node.
class InvalidationTarget {
 public:
  virtual ~InvalidationTarget() = default;
  // BEGIN: returns once the node holds no copy of the range and blocks
  // faults in it. END: must not wait (for the network, or a home's
  // answer): it may only queue, in arrival order, what it has to write
  // back (NoticeReceiver calls it on a notice connection's serving thread).
  virtual absl::Status Handle(const InvalidationNotice& notice) = 0;
};

}  // namespace tether

#endif  // TETHER_DAEMON_INVALIDATION_NOTICE_H_
