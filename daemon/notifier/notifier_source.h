// NotifierSource: where the home learns that an exporter's memory is about
// to change (DESIGN.md "The invalidation contract"). Two implementations:
// UffdNotifierSource (user space, no module) and, where /dev/tether
// exists, KernelNotifierSource (tether.ko). Both drive the same
// InvalidationCoordinator: begin (fan-out, acks) before the kernel goes
// on, end after it finished.
#ifndef TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_
#define TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_

#include <sys/types.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tether {

class NotifierSource {
 public:
  virtual ~NotifierSource() = default;
  // A new export. `fd` is the exporter's event handle sent with it: a
  // userfaultfd, or a /dev/tether exporter fd on which the exporter
  // registered the segment's range as `tether_range_id` (0 with a uffd);
  // -1 if it sent none. Takes ownership of fd and of `pidfd` (a duplicate
  // of the exporter's pidfd).
  virtual absl::Status AddExporter(uint64_t segid, pid_t pid, int pidfd, int fd,
                                   uint64_t tether_range_id) = 0;
  // Called before the home reads [start, end) of the segment for a mapper:
  // from now on events on the range must be seen (register lazily / mark
  // cached). Fast when nothing changes. An error refuses the read.
  virtual absl::Status Watch(uint64_t segid, uint64_t start, uint64_t end) = 0;
  virtual void Stop() = 0;
};

}  // namespace tether

#endif  // TETHER_DAEMON_NOTIFIER_NOTIFIER_SOURCE_H_
