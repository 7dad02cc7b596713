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
// It may also hand out direct attachments (DirectAttach): a file that maps
// the exporter's pages themselves rather than a copy, which only tether.ko
// can make (docs/architecture.md, "Same-node attachments and direct
// attachments").
//
// Thread contract: constructed and wired before Start(), which starts the
// source's own threads; AddExporter and DirectAttach run on local client
// threads,
// BeforeRead on transport threads, SegmentGone on the registry's threads —
// all concurrently. Stop() joins every thread the source started.
#ifndef TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_
#define TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_

#include <sys/types.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
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
  // The watchdog's question (tetherd's CheckAlive, service_notify.h): is
  // the source still seeing the kernel's memory events? OK once the thread
  // that reads them has come round its loop after this call (it is not
  // wedged, and it did not stop on an error); an error naming why not
  // after `timeout` at most. Any thread, after Start().
  virtual absl::Status Ping(absl::Duration timeout) = 0;
  // A direct attachment of [offset, offset + len) of segment `segid`
  // (page aligned, inside the segment; the caller checked): a new fd
  // (O_CLOEXEC, the caller owns it) to mmap MAP_SHARED, PROT_WRITE only if
  // `writable`. Answers Unimplemented where this source cannot make one
  // (no tether.ko, a module without TETHER_FEAT_DIRECT, an exporter watched
  // through a userfaultfd), FailedPrecondition where the module could not
  // serve the range (not all of it is the exporter's anonymous memory):
  // the caller then serves a copy. Any other error is the attach's.
  virtual absl::StatusOr<int> DirectAttach(uint64_t segid, uint64_t offset, uint64_t len,
                                           bool writable) = 0;
};

}  // namespace tether

#endif  // TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_
