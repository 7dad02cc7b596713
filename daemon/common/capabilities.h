// Least privilege: the Linux capabilities tetherd keeps, and dropping the
// rest at start (docs/security.md, "Capabilities"). Written against the
// raw capget/capset syscalls and prctl: libcap's headers are not a
// dependency of the build.
//
// What tetherd needs, and why:
//   CAP_SYS_PTRACE        process_vm_readv/_writev of exporters of any uid
//                         (the ptrace-attach check), and creating its own
//                         userfaultfd (the sharing probe) where
//                         vm.unprivileged_userfaultfd is 0.
//   CAP_DAC_READ_SEARCH   opening /proc/<pid>/mem of an exporter of
//                         another uid (mode 0600, that uid's): the export's
//                         upfront ptrace check and its hold on the mm.
//   CAP_IPC_LOCK          rdma only: registering (pinning) buffer pools
//                         beyond RLIMIT_MEMLOCK.
//   CAP_NET_BIND_SERVICE  only when a listen address has a port < 1024.
// Everything else (CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, CAP_SETUID, ...) goes
// from the effective, permitted, inheritable and ambient sets and from the
// bounding set, so that not even an exec could get it back.
//
// Thread contract: capabilities are per thread, and new threads inherit
// their creator's: DropCapabilities must run on the main thread before
// any other thread exists (asserted from /proc/self/status).
#ifndef TETHER_DAEMON_COMMON_CAPABILITIES_H_
#define TETHER_DAEMON_COMMON_CAPABILITIES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tether {

// The capabilities tetherd needs (numbers from linux/capability.h).
std::vector<int> NeededCapabilities(bool rdma, bool low_port);

// Keeps only `keep` (and of those only what the process has), dropping
// every other capability from every set, the bounding set included when
// the process may (CAP_SETPCAP). Returns the names of the capabilities
// kept, e.g. "cap_sys_ptrace". Must be called before any thread is
// started.
absl::StatusOr<std::vector<std::string>> DropCapabilities(const std::vector<int>& keep);

// The names of the capabilities in this thread's bounding set, in number
// order: what an exec could still gain. Without CAP_SETPCAP (tetherd under
// its unit, whose CapabilityBoundingSet= lacks it) DropCapabilities cannot
// narrow it, so it stays what systemd set.
std::vector<std::string> BoundingSet();

// The lowercase name of capability `cap` ("cap_ipc_lock").
std::string CapabilityName(int cap);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_CAPABILITIES_H_
