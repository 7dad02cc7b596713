// SegmentObserver: what the home's SegmentRegistry tells the part of the
// daemon that watches exporters' memory (a notifier source, notifier/).
// The registry sits below the notifier layer and knows it only through
// this interface.
//
// Thread contract: BeforeRead runs on transport threads (one per data
// connection) and on mapper threads of this node, concurrently, never
// under the registry's lock; it must not wait for an invalidation to
// finish (G5 in docs/architecture.md). SegmentGone runs outside the
// registry's lock, on the thread that removed the segment (a local client
// request) or on the registry's exit-watcher thread; it may block on the
// network for a bounded time (revocations are sent without waiting).
// BeforeWrite and GuardedWrite run on the threads that serve write-backs
// (transport threads, mapper threads of this node), never under the
// registry's lock; GuardedWrite may block on the exporter's mm.
#ifndef TETHER_DAEMON_HOME_SEGMENT_OBSERVER_H_
#define TETHER_DAEMON_HOME_SEGMENT_OBSERVER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tether {

class SegmentObserver {
 public:
  virtual ~SegmentObserver() = default;
  // The home is about to read [start, end) (segment offsets) of the
  // segment for a mapper, or to write a mapper's write-back there (the
  // writer keeps the page): from now on changes to the range must be seen
  // (register lazily, mark cached). Fast when nothing changes. An error
  // refuses the read or write (Retry(): the mapper tries again shortly).
  virtual absl::Status BeforeRead(uint64_t segid, uint64_t start, uint64_t end) = 0;
  // The segment stopped being live (removed, or its exporter exited):
  // mappers are revoked and whatever watches its memory is dropped.
  virtual void SegmentGone(uint64_t segid, const std::string& why) = 0;

  // --- Write-backs a source can refuse (issue 14: mmap(MAP_FIXED) and
  // mremap hold the exporter's mmap_lock for writing across the ack, so a
  // write-back past the registry's checks but not yet in the kernel would
  // otherwise land in the NEW mapping; docs/architecture.md). ---
  //
  // Where the source writes a write-back itself: `guarded`, and the
  // sequence of the range it took (tether.ko's MARK) that GuardedWrite
  // checks. Unguarded: the registry writes through ExporterMemory.
  struct WriteGuard {
    bool guarded = false;
    uint64_t seq = 0;
  };
  // One piece of a write-back: `data` at segment offset `offset`.
  struct WritePiece {
    uint64_t offset = 0;
    absl::Span<const uint8_t> data;
  };
  // After the registry's checks of a write-back to [start, end) (segment
  // offsets) and before the registry checks its windows once more: what
  // BeforeRead does (the writer keeps the page), and the guard. The
  // default: BeforeRead, unguarded.
  virtual absl::StatusOr<WriteGuard> BeforeWrite(uint64_t segid, uint64_t start, uint64_t end) {
    absl::Status st = BeforeRead(segid, start, end);
    if (!st.ok()) return st;
    return WriteGuard{};
  }
  // Writes `pieces` (all inside what BeforeWrite was asked about) into the
  // exporter's memory, unless the exporter's memory there changed since
  // `guard` was taken: then ESTALE and nothing is written (the registry
  // checks the request again). Other errors as ExporterMemory::Write's.
  // Only called with a guarded guard.
  virtual absl::Status GuardedWrite(uint64_t segid, const WriteGuard& guard,
                                    absl::Span<const WritePiece> pieces) {
    return absl::UnimplementedError("this notifier source does not write");
  }
};

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_SEGMENT_OBSERVER_H_
