// Values the home hands out about its segments: summaries (tetherctl,
// lookups), a segment's part of an exporter range (notifier sources), and
// grants (permissions to map). Plain data, copied freely.
#ifndef TETHER_DAEMON_HOME_SEGMENT_TYPES_H_
#define TETHER_DAEMON_HOME_SEGMENT_TYPES_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace tether {

struct SegmentSummary {
  uint64_t segid = 0;
  uint64_t vaddr = 0;
  uint64_t size = 0;
  pid_t pid = 0;
  uint32_t uid = 0, gid = 0, mode = 0;
  std::string name;
  uint32_t grants = 0;
  std::string state;  // "live", "removed", "exporter exited"
};

// A segment's part inside an exporter address range.
struct SegmentRange {
  uint64_t segid = 0;
  uint64_t vaddr = 0;           // the segment's start in the exporter
  uint64_t start = 0, end = 0;  // segment offsets
};

struct Grant {
  uint64_t id = 0;
  uint64_t incarnation = 0;  // of the home daemon's run that granted it (0: unknown)
  uint64_t segment_size = 0;
  bool writable = false;
};

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_SEGMENT_TYPES_H_
