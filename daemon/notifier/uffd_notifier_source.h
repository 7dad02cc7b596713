// UffdNotifierSource: the user-space notifier source (no kernel module).
//
// Each exporting process hands its daemon a userfaultfd (features
// EVENT_REMOVE | EVENT_UNMAP | EVENT_REMAP) with its first export. The
// exported range is registered in write-protect mode only — first-touch
// faults stay the kernel's — lazily, before the first read of it by a
// mapper (so unshared ranges cost nothing), and again after an unmap
// dropped the registration. One thread per exporter:
//
//   poll(uffd) readable  -> an event is queued and the exporter's calling
//                           thread is blocked until we read it
//   begin windows        -> for every segment of the exporter (we cannot
//                           know the range before reading: conservative),
//                           concurrently: one ack deadline for all of them;
//                           each also waits (bounded) for the home's
//                           write-backs in flight over its segment: the
//                           exporter holds no mmap_lock while it waits here
//   read the events      -> the kernel goes on: REMOVE zaps after this,
//                           UNMAP/REMAP already happened
//   REMOVE: wait until the zap is visible in /proc/<pid>/pagemap, at most
//           50 ms — then the windows end whether or not it is (a lapse of
//           G1: a mapper may refetch a frame about to be zapped)
//   end windows          -> unmapped sub-ranges are reported as gone
//
// What it cannot see (limits of user space; tether.ko sees them all):
// mprotect (no uffd event; write-backs still respect the exporter's
// protections at the home, reads of held pages go on), the end of a
// REMOVE's zap (above), fallocate(PUNCH_HOLE) or ftruncate of a memfd or
// shmem file backing an export (the page cache changes, no mapping does:
// no event), exec (the old mm goes without an UNMAP; the exporter's exit
// is not signalled either, so its segments live until it exits),
// kernel-internal events (contents unchanged), memory other than
// anonymous/shmem/hugetlb.
//
// Thread contract: AddExporter starts the exporter's thread (detached,
// counted in running_; Stop() waits for them); while it begins windows it
// runs helper threads (joined before it goes on) that only call the
// coordinator's Begin. BeforeRead runs on transport
// threads and registers under the exporter's mutex. mu_ guards the
// exporter and segment maps; no ioctl or coordinator call happens under it.
#ifndef TETHER_DAEMON_NOTIFIER_UFFD_NOTIFIER_SOURCE_H_
#define TETHER_DAEMON_NOTIFIER_UFFD_NOTIFIER_SOURCE_H_

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/interval_set.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/invalidation_coordinator.h"
#include "daemon/notifier/notifier_source.h"

namespace tether {

class UffdNotifierSource : public NotifierSource {
 public:
  UffdNotifierSource(SegmentRegistry* registry, InvalidationCoordinator* coordinator);
  ~UffdNotifierSource() override;

  absl::Status AddExporter(uint64_t segid, pid_t pid, int pidfd, int fd,
                           uint64_t tether_range_id) override;
  absl::Status Start() override;
  absl::Status BeforeRead(uint64_t segid, uint64_t start, uint64_t end) override;
  // Revokes every mapper of the segment (the coordinator's RevokeAll).
  void SegmentGone(uint64_t segid, const std::string& why) override;
  // Unimplemented: a userfaultfd cannot map another process's pages.
  absl::StatusOr<int> DirectAttach(uint64_t segid, uint64_t offset, uint64_t len,
                                   bool writable) override;
  void Stop() override;
  // OK while started: each exporter has a thread of its own whose waits the
  // coordinator's deadline bounds, so there is no one thread to wedge, and
  // a thread that stops (its exporter exited) has nothing left to see.
  absl::Status Ping(absl::Duration timeout) override;

 private:
  struct Exporter {
    pid_t pid = 0;
    int uffd = -1, pidfd = -1, pagemap = -1, maps = -1, stop_fd = -1;
    absl::Mutex mu;
    IntervalSet registered ABSL_GUARDED_BY(mu);  // exporter addresses
    ~Exporter();
  };
  struct SegmentWatch {
    std::shared_ptr<Exporter> exporter;
    uint64_t vaddr = 0, size = 0;
  };

  void Run(std::shared_ptr<Exporter> ex);
  void HandleEvents(Exporter& ex);
  // The parts of [start, end) that the exporter has mappings at now, from
  // /proc/<pid>/maps; false if it cannot be read.
  bool ReadMapped(Exporter& ex, uint64_t start, uint64_t end, IntervalSet* out);
  // Reads /proc/<pid>/pagemap entries for [start, end) (exporter addresses).
  bool ReadPagemap(Exporter& ex, uint64_t start, uint64_t end, std::vector<uint64_t>* out);
  // Waits (bounded) until the kernel's zap after a REMOVE is visible: every
  // page that held a frame before is gone or holds another frame.
  void WaitForZap(Exporter& ex, uint64_t start, uint64_t end, uint64_t snap_start,
                  const std::vector<uint64_t>& snapshot);

  SegmentRegistry* const registry_;
  InvalidationCoordinator* const coordinator_;
  absl::Mutex mu_;
  absl::flat_hash_map<pid_t, std::shared_ptr<Exporter>> exporters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, SegmentWatch> segments_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stopping_{false};
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // exporter threads (detached)
};

}  // namespace tether

#endif  // TETHER_DAEMON_NOTIFIER_UFFD_NOTIFIER_SOURCE_H_
