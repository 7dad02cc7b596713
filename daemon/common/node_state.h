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
// It also keeps, a line per live segment, what a registration again must
// match: the segment's owner (uid, gid) and mode. Without it, anyone could
// claim the segid of another user's segment that has not come back yet
// after a restart (issue 18/17). The table changes only when a segment is
// made, registered again or removed (SegmentRegistry), never on the fault
// path; the segments of the earlier run that were not registered again
// are dropped at the first change after the grace (DropEarlier), so the
// file stays a line per live segment (plus those still within the grace).
//
// The file is text ("tether-state 2", "node N", "epoch 0xE", "reserved R",
// then "segment LOCAL UID GID MODE" per segment, one per line), written to
// a temporary file, fsync'd and renamed over the old one, so a crash
// leaves either the old or the new file, never a torn one. A version-1
// file (the four lines, no table) is read as one without segments: none
// of that run can be registered again. Missing file: a fresh start (a new epoch; the segids of any
// earlier run are gone). A file that does not parse, or names another
// node: a start-up error naming the file — the operator decides (removing
// it starts fresh, and the earlier run's segments die with it); tetherd
// never silently discards segids that exporters may still hold.
//
// Thread contract: Open() on the start-up thread; NextLocal() and the
// segment table's methods from any thread, serialized by the caller
// (SegmentRegistry calls them under its mutex: one file write per
// kReserveBlock segments, and one per segment made, registered again or
// removed).
#ifndef TETHER_DAEMON_COMMON_NODE_STATE_H_
#define TETHER_DAEMON_COMMON_NODE_STATE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace tether {

class NodeState {
 public:
  static constexpr uint32_t kReserveBlock = 1u << 16;
  static constexpr const char* kFileName = "node.state";
  // At most this many segment lines are read (a bound on the file; a
  // node has far fewer live segments).
  static constexpr size_t kMaxSegments = 1u << 20;

  // What a segment's registration again must match.
  struct SegmentOwner {
    uint32_t uid = 0;
    uint32_t gid = 0;
    uint32_t mode = 0;
    bool operator==(const SegmentOwner&) const = default;
  };

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

  // The owner of segment `local` of an earlier run, as the file said at
  // Open(), if it was live then and neither registered again nor dropped
  // since.
  std::optional<SegmentOwner> Earlier(uint32_t local) const;
  // Records segment `local` as live (made, or registered again: it leaves
  // the earlier run's table) and writes the file before it returns.
  absl::Status AddSegment(uint32_t local, const SegmentOwner& owner);
  // Forgets segment `local` (removed, its exporter exited) and writes the
  // file; nothing to do if it is not recorded.
  absl::Status RemoveSegment(uint32_t local);
  // Forgets the earlier run's segments that were not registered again
  // (the grace ran out); written with the next change.
  void DropEarlier() { earlier_.clear(); }
  // Every segment recorded, live or of the earlier run (tests).
  std::map<uint32_t, SegmentOwner> Segments() const;

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
  // Segments of this run, and of the earlier run not registered again
  // (disjoint). Both are written to the file.
  std::map<uint32_t, SegmentOwner> live_, earlier_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_NODE_STATE_H_
