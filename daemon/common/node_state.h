// NodeState: what a node's daemon keeps across restarts, in one small file
// in its state directory (--state_dir; /var/lib/tether, the unit's
// StateDirectory): the node id, the *segment epoch* and how far the
// segment counter has been reserved.
//
// The segment epoch is the 16-bit field of every segid this node makes
// (segid.h). It is drawn once, when the node has no state yet, and kept:
// a restarted tetherd (an upgrade, a crash) makes segids of the same
// epoch, so exporters' libtether can register their segments again under
// the segids mappers already hold (docs/consistency.md, "When the home
// daemon restarts"). The counter part must then never be handed out twice
// across runs: the file records a reservation, and a run hands out local
// ids only below it, writing a larger reservation (kReserveBlock more)
// before it crosses it. A run after a crash starts at the recorded
// reservation, so ids of the runs before are never made again (at most
// kReserveBlock - 1 ids are skipped per restart; there are 2^32).
//
// The file is text ("tether-state 1", "node N", "epoch 0xE", "reserved R",
// one per line), written to a temporary file, fsync'd and renamed over
// the old one, so a crash leaves either the old or the new file, never a
// torn one. Missing file: a fresh start (a new epoch; the segids of any
// earlier run are gone). A file that does not parse, or names another
// node: a start-up error naming the file — the operator decides (removing
// it starts fresh, and the earlier run's segments die with it); tetherd
// never silently discards segids that exporters may still hold.
//
// Thread contract: Open() on the start-up thread; NextLocal() from any
// thread, serialized by the caller (SegmentRegistry calls it under its
// mutex: one file write per kReserveBlock segments).
#ifndef TETHER_DAEMON_COMMON_NODE_STATE_H_
#define TETHER_DAEMON_COMMON_NODE_STATE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tether {

class NodeState {
 public:
  static constexpr uint32_t kReserveBlock = 1u << 16;
  static constexpr const char* kFileName = "node.state";

  // Loads `dir`/node.state, or starts fresh when it does not exist (a new
  // random epoch). Either way writes the next reservation before it
  // returns, so the caller may hand out ids at once. `dir` must exist.
  static absl::StatusOr<std::unique_ptr<NodeState>> Open(const std::string& dir, uint32_t node_id);
  // An in-memory state that persists nothing (unit tests; tetherd without
  // --state_dir is not allowed).
  static std::unique_ptr<NodeState> Ephemeral(uint32_t node_id, uint32_t epoch);

  uint32_t epoch() const { return epoch_; }
  // True when no state file existed: this run's epoch is new.
  bool fresh() const { return fresh_; }
  // The first local id this run hands out: ids below it may belong to
  // segments of earlier runs (they can only be registered again).
  uint32_t first_local() const { return first_local_; }
  std::string path() const { return path_; }

  // The next local id (never 0); ENOSPC when 2^32 - 1 ids are used up,
  // or the error of writing the next reservation.
  absl::StatusOr<uint32_t> NextLocal();

 private:
  NodeState() = default;
  absl::Status Write(uint64_t reserved);

  std::string dir_, path_;  // empty: ephemeral
  uint32_t node_id_ = 0;
  uint32_t epoch_ = 0;
  bool fresh_ = false;
  uint32_t first_local_ = 1;
  uint64_t next_ = 1;      // next local id to hand out
  uint64_t reserved_ = 1;  // ids below this may be handed out without a write
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_NODE_STATE_H_
