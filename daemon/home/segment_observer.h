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
#ifndef TETHER_DAEMON_HOME_SEGMENT_OBSERVER_H_
#define TETHER_DAEMON_HOME_SEGMENT_OBSERVER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

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
};

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_SEGMENT_OBSERVER_H_
