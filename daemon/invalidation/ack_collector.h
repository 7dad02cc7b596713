// AckCollector: the home's bookkeeping for one range_begin fan-out. Pure
// state, no clock and no threads: the coordinator feeds it replies and,
// at the deadline, Expire(); unit tests feed it reordered, duplicate and
// late replies directly (time is an explicit event).
#ifndef TETHER_DAEMON_INVALIDATION_ACK_COLLECTOR_H_
#define TETHER_DAEMON_INVALIDATION_ACK_COLLECTOR_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace tether {

class AckCollector {
 public:
  enum class NodeState { kWaiting, kAcked, kFailed };

  explicit AckCollector(const std::vector<uint32_t>& nodes);

  // A reply from `node`. OK acks; an error (peer died, refused) marks it
  // failed — it is fenced like a silent node. Replies from nodes not asked,
  // duplicates and replies after Expire() change nothing. Returns true
  // when this reply completed the collection.
  bool OnReply(uint32_t node, const absl::Status& status);
  // The deadline passed: every node still waiting becomes failed.
  void Expire();

  bool complete() const { return waiting_ == 0; }
  std::vector<uint32_t> acked() const;
  std::vector<uint32_t> failed() const;  // to fence

 private:
  absl::flat_hash_map<uint32_t, NodeState> nodes_;
  size_t waiting_ = 0;
  bool expired_ = false;
};

}  // namespace tether

#endif  // TETHER_DAEMON_INVALIDATION_ACK_COLLECTOR_H_
