// ExporterMemory: the home's access path to an exporter's address space.
//
// The exporter's identity is pinned at export: the client sends a pidfd of
// itself over SCM_RIGHTS, we check that it names the SO_PEERCRED pid, open
// /proc/<pid>/mem (bound to that mm for the life of the fd) and check the
// pidfd again, so a pid reused in between cannot be picked up. Reads go
// through the pinned /proc/<pid>/mem fd. Writes check the exporter's own
// protections first (/proc/<pid>/mem writes would pass through PROT_READ).
//
// Thread contract: Read and Write may run concurrently from any thread (the
// fds are only read after Open); they may block on the exporter's mm (page
// faults, mmap_lock), so never call them on a thread that answers
// invalidation events (G5, docs/architecture.md).
#ifndef TETHER_DAEMON_HOME_EXPORTER_MEMORY_H_
#define TETHER_DAEMON_HOME_EXPORTER_MEMORY_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tether {

class ExporterMemory {
 public:
  // Takes ownership of `pidfd`.
  static absl::StatusOr<std::unique_ptr<ExporterMemory>> Open(int pidfd, pid_t expected_pid);
  ~ExporterMemory();

  absl::Status Read(uint64_t addr, absl::Span<uint8_t> dst) const;
  absl::Status Write(uint64_t addr, absl::Span<const uint8_t> src) const;
  // True while the exporter runs (its pidfd is not readable yet).
  bool Alive() const;
  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_; }

 private:
  ExporterMemory(pid_t pid, int pidfd, int mem_fd, int maps_fd)
      : pid_(pid), pidfd_(pidfd), mem_fd_(mem_fd), maps_fd_(maps_fd) {}
  absl::Status CheckWritable(uint64_t addr, uint64_t len) const;

  pid_t pid_;
  int pidfd_;
  int mem_fd_;
  int maps_fd_;
};

// The pid a pidfd refers to (from /proc/self/fdinfo), or -1.
pid_t PidOfPidfd(int pidfd);

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_EXPORTER_MEMORY_H_
