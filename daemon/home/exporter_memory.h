// ExporterMemory: the home's access path to an exporter's address space.
//
// The exporter's identity is pinned at export: the client sends a pidfd of
// itself over SCM_RIGHTS, we check that it names the SO_PEERCRED pid, check
// that this daemon may access its memory (opening /proc/<pid>/mem, which
// asks the kernel the same ptrace question process_vm_readv/writev will),
// and check the pidfd again, so a pid reused in between cannot be picked up.
//
// Reads and writes go through process_vm_readv/writev, one call per batch
// of pages. Unlike /proc/<pid>/mem (FOLL_FORCE: it writes through
// PROT_READ and reads PROT_NONE) they respect the exporter's protections as
// they are when the kernel takes the pages, so an mprotect that has
// returned is never written through (issue 14, defect 5: a check of
// /proc/<pid>/maps before the write could not be atomic with it). A write
// the kernel had already pinned the pages for when mprotect began may
// still land while it runs, as with any write concurrent with mprotect.
// A refusal becomes EACCES (mapped, not writable — or for a read, not
// readable) or, not mapped, EFAULT for a read and ENXIO for a write (the
// mapper then counts the pages lost: nowhere to write), told apart from
// /proc/<pid>/maps only
// once the call failed, off the fast path.
//
// process_vm_* name the process by pid, not by the mm the export was made
// from: after an exec (no exit, the same pid) or an exit and pid reuse the
// pid names other memory. So every call checks that mm still exists,
// through the /proc/<pid>/mem fd opened at export (bound to that mm for
// its life; a one-byte read finds nothing once the mm is gone): after a
// read (the mm outlived the read, so the read was of it — short of
// another access of the old mm in flight across the exec) and before a
// write (writes cannot be taken back; one still lands in the new image
// if the exec completes between that check and the call, a few µs).
//
// With tether.ko (TETHER_FEAT_WRITE) the home's write-backs do not come
// here: the notifier source writes them through the module, which refuses
// a write whose range changed since the home checked it
// (SegmentObserver::GuardedWrite, SegmentRegistry::WriteBack); Write and
// WriteDiff serve the user-space source and older modules.
//
// WriteDiff writes a page diff (common/page_diff.h): only the changed
// bytes, one process_vm_writev per page (its runs as iovecs; a page of
// more than IOV_MAX runs takes several), under that page's lock (one of
// kPageLocks, by address), so that two write-backs of one page never
// interleave: each page's diff lands whole before or after another's, and
// a byte both wrote ends with the later one (last writer wins). The
// exporter's own stores are not ordered by it: they land between or
// around the runs, and only bytes a diff carries are written over.
//
// Thread contract: Read, Write and WriteDiff may run concurrently from any
// thread (the fds are only read after Open; the page locks are leaves,
// held across one page's writes only); they may block on the exporter's
// mm (page faults, mmap_lock), so never call them on a thread that
// answers invalidation events (G5, docs/architecture.md).
#ifndef TETHER_DAEMON_HOME_EXPORTER_MEMORY_H_
#define TETHER_DAEMON_HOME_EXPORTER_MEMORY_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "daemon/common/page.h"
#include "daemon/common/page_diff.h"

namespace tether {

class ExporterMemory {
 public:
  // Takes ownership of `pidfd`.
  static absl::StatusOr<std::unique_ptr<ExporterMemory>> Open(int pidfd, pid_t expected_pid);
  ~ExporterMemory();

  absl::Status Read(uint64_t addr, absl::Span<uint8_t> dst) const;
  absl::Status Write(uint64_t addr, absl::Span<const uint8_t> src) const;
  // Writes decoded diff `pages` (DecodeDiff) at `addr` (where page index 0
  // starts), a page at a time under its page lock.
  absl::Status WriteDiff(uint64_t addr, const std::vector<DiffPage>& pages) const;
  // The lock WriteDiff holds across one page's writes (page_addr: the
  // page's address in the exporter): a notifier source that writes a
  // diff itself (SegmentObserver::GuardedWrite) holds it too.
  absl::Mutex& PageLock(uint64_t page_addr) const {
    return page_locks_[(page_addr / kPageSize) % kPageLocks];
  }
  // True while the exporter runs (its pidfd is not readable yet).
  bool Alive() const;
  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_; }

 private:
  ExporterMemory(pid_t pid, int pidfd, int mem_fd, int maps_fd)
      : pid_(pid), pidfd_(pidfd), mem_fd_(mem_fd), maps_fd_(maps_fd) {}
  // The mm the export was made from is gone (exit, exec). `addr`: where
  // to look (any address; one in the access, so that it is mapped).
  bool MmGone(uint64_t addr) const;
  // Why an access at `addr` failed with EFAULT: nothing is mapped there
  // (a read: EFAULT; a write: ENXIO, the write has nowhere to go), or the
  // mapping lacks `perm` ('r' or 'w': EACCES), or it has it and still
  // refused (EFAULT).
  absl::Status Refused(uint64_t addr, char perm) const;

  pid_t pid_;
  int pidfd_;
  int mem_fd_;  // /proc/<pid>/mem, bound to the export's mm; read by MmGone only
  int maps_fd_;
  // Serialize write-backs of one page (WriteDiff), by page address.
  static constexpr size_t kPageLocks = 64;
  mutable absl::Mutex page_locks_[kPageLocks];
};

// The pid a pidfd refers to (from /proc/self/fdinfo), or -1.
pid_t PidOfPidfd(int pidfd);

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_EXPORTER_MEMORY_H_
