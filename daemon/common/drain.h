// DrainState: whether this node is draining for maintenance (`tetherctl
// drain`, docs/operations: what an operator expects before taking a node
// down). While it drains, the node takes on nothing new — no export
// (tether_make), no grant of a segment homed here (tether_get, here or from
// another node), no attachment made here (tether_get, tether_attach) — and
// refuses with EBUSY and a message that says so; everything that exists
// keeps working (exported segments, their grants, attachments, faults,
// write-backs, invalidations) until its owner ends it. `tetherctl undrain`
// ends the drain.
//
// Process-wide, as the data counters are: one daemon per process. The
// check is one relaxed load on paths that already take locks and make
// syscalls (export, grant, attach), never on the fault path.
//
// Thread contract: any thread.
#ifndef TETHER_DAEMON_COMMON_DRAIN_H_
#define TETHER_DAEMON_COMMON_DRAIN_H_

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"

namespace tether {

class DrainState {
 public:
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  void Set(bool on) { draining_.store(on, std::memory_order_relaxed); }
  // OK, or EBUSY naming what was refused (`what`: "export", "attach").
  absl::Status Accepting(uint32_t node, const std::string& what) const {
    if (!draining()) return absl::OkStatus();
    return ErrnoStatus(EBUSY, absl::StrFormat("node %d is draining for maintenance: new %s "
                                              "refused (tetherctl undrain ends it)",
                                              node, what));
  }

 private:
  std::atomic<bool> draining_{false};
};

DrainState& Drain();

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_DRAIN_H_
