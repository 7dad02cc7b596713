// NotifierSource: where the home learns that an exporter's memory is about
// to change (docs/architecture.md, "The invalidation contract"). Two
// implementations: UffdNotifierSource (user space, no module) and, where
// /dev/tether exists, KernelNotifierSource (tether.ko). Both drive the same
// InvalidationCoordinator: begin (fan-out, acks) before the kernel goes
// on, end after it finished.
//
// It is the registry's SegmentObserver: asked before every read of an
// exporter (BeforeRead: register lazily, mark cached), and told when a
// segment is gone (SegmentGone: revoke every mapper through the
// coordinator, drop the exporter's event handle).
//
// Thread contract: constructed and wired before Start(), which starts the
// source's own threads; AddExporter runs on local client threads,
// BeforeRead on transport threads, SegmentGone on the registry's threads —
// all concurrently. Stop() joins every thread the source started.
#ifndef TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_
#define TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_

#include <sys/types.h>

#include <cstdint>

#include "absl/status/status.h"
#include "daemon/home/segment_observer.h"

namespace tether {

class NotifierSource : public SegmentObserver {
 public:
  ~NotifierSource() override = default;
  // Starts the source's threads (tetherd: after everything is wired).
  virtual absl::Status Start() = 0;
  // A new export. `fd` is the exporter's event handle sent with it: a
  // userfaultfd, or a /dev/tether exporter fd on which the exporter
  // registered the segment's range as `tether_range_id` (0 with a uffd);
  // -1 if it sent none. Takes ownership of fd and of `pidfd` (a duplicate
  // of the exporter's pidfd).
  virtual absl::Status AddExporter(uint64_t segid, pid_t pid, int pidfd, int fd,
                                   uint64_t tether_range_id) = 0;
  virtual void Stop() = 0;
};

}  // namespace tether

#endif  // TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_
