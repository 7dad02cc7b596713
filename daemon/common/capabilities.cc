#include "daemon/common/capabilities.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"

namespace tether {
namespace {

int LastCap() {
  std::ifstream f("/proc/sys/kernel/cap_last_cap");
  int last = CAP_LAST_CAP;
  f >> last;
  return last;
}

int Threads() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "Threads:") {
      int n = 0;
      f >> n;
      return n;
    }
  }
  return 0;
}

bool Has(const __user_cap_data_struct* d, int cap) {
  return d[cap / 32].permitted & (1u << (cap % 32));
}

}  // namespace

std::vector<int> NeededCapabilities(bool rdma, bool low_port) {
  std::vector<int> caps = {CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH};
  if (rdma) caps.push_back(CAP_IPC_LOCK);
  if (low_port) caps.push_back(CAP_NET_BIND_SERVICE);
  std::sort(caps.begin(), caps.end());
  return caps;
}

std::string CapabilityName(int cap) {
  static const char* const kNames[] = {"cap_chown",
                                       "cap_dac_override",
                                       "cap_dac_read_search",
                                       "cap_fowner",
                                       "cap_fsetid",
                                       "cap_kill",
                                       "cap_setgid",
                                       "cap_setuid",
                                       "cap_setpcap",
                                       "cap_linux_immutable",
                                       "cap_net_bind_service",
                                       "cap_net_broadcast",
                                       "cap_net_admin",
                                       "cap_net_raw",
                                       "cap_ipc_lock",
                                       "cap_ipc_owner",
                                       "cap_sys_module",
                                       "cap_sys_rawio",
                                       "cap_sys_chroot",
                                       "cap_sys_ptrace",
                                       "cap_sys_pacct",
                                       "cap_sys_admin",
                                       "cap_sys_boot",
                                       "cap_sys_nice",
                                       "cap_sys_resource",
                                       "cap_sys_time",
                                       "cap_sys_tty_config",
                                       "cap_mknod",
                                       "cap_lease",
                                       "cap_audit_write",
                                       "cap_audit_control",
                                       "cap_setfcap",
                                       "cap_mac_override",
                                       "cap_mac_admin",
                                       "cap_syslog",
                                       "cap_wake_alarm",
                                       "cap_block_suspend",
                                       "cap_audit_read",
                                       "cap_perfmon",
                                       "cap_bpf",
                                       "cap_checkpoint_restore"};
  if (cap >= 0 && static_cast<size_t>(cap) < sizeof(kNames) / sizeof(kNames[0])) return kNames[cap];
  return absl::StrCat("cap_", cap);
}

std::vector<std::string> BoundingSet() {
  std::vector<std::string> out;
  for (int cap = 0, last = LastCap(); cap <= last; ++cap)
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) out.push_back(CapabilityName(cap));
  return out;
}

absl::StatusOr<std::vector<std::string>> DropCapabilities(const std::vector<int>& keep) {
  // Per-thread state: a thread started before this would keep everything.
  if (int n = Threads(); n != 1)
    return ErrnoStatus(EBUSY, absl::StrCat("dropping capabilities with ", n,
                                           " threads running (must be the only thread)"));
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &hdr, data) != 0) return ErrnoStatus(errno, "capget");
  // The bounding set first: dropping from it needs CAP_SETPCAP in the
  // effective set, which the capset below removes. Without CAP_SETPCAP (an
  // unprivileged daemon) there is nothing in it worth the trouble.
  const bool setpcap = data[CAP_SETPCAP / 32].effective & (1u << (CAP_SETPCAP % 32));
  const int last = LastCap();
  for (int cap = 0; cap <= last && setpcap; ++cap) {
    if (std::find(keep.begin(), keep.end(), cap) != keep.end()) continue;
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
      return ErrnoStatus(errno, absl::StrCat("prctl(PR_CAPBSET_DROP, ", CapabilityName(cap), ")"));
  }
  // No ambient capabilities (an exec would keep them); tolerate kernels
  // without them.
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    return ErrnoStatus(errno, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)");
  __user_cap_data_struct want[_LINUX_CAPABILITY_U32S_3] = {};
  std::vector<std::string> kept;
  for (int cap : keep) {
    if (!Has(data, cap)) continue;
    want[cap / 32].permitted |= 1u << (cap % 32);
    want[cap / 32].effective |= 1u << (cap % 32);
    kept.push_back(CapabilityName(cap));
  }
  if (syscall(SYS_capset, &hdr, want) != 0) return ErrnoStatus(errno, "capset");
  return kept;
}

}  // namespace tether
