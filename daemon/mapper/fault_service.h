// FaultService: serves the page faults of every local attachment.
//
// One thread waits on all attachments' userfaultfds (epoll). A missing-page
// fault marks the page (and a read-ahead window of absent pages after it,
// growing 1, 2, 4 … 256 pages while access stays sequential, sent as reads
// of up to 64 pages so that they pipeline) kFetching and asks the home; the completion installs the
// pages with UFFDIO_COPY, write-protected when the attachment is writable, which wakes the faulting
// threads. Many fetches are in flight at once: the fault thread never waits for the network.
//
// Dirty tracking: a store to a clean (write-protected) page raises a WP
// fault; the page becomes kDirty and is unprotected. Write-back protects
// again first, then reads the page from the memfd, so a store racing with
// it re-dirties the page instead of being lost.
//
// Cache budget: pages installed across all attachments of this node are
// bounded. Past the budget an evictor thread punches clean pages out of the
// memfds (the client's next access faults again) and writes dirty ones back
// before evicting them.
#ifndef TETHER_DAEMON_MAPPER_FAULT_SERVICE_H_
#define TETHER_DAEMON_MAPPER_FAULT_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/wakeable_epoll.h"
#include "daemon/mapper/attachment.h"
#include "daemon/mapper/data_path.h"

namespace tether {

class FaultService {
 public:
  // Asks the client library to make [offset, offset+len) of an attachment
  // raise SIGBUS (it maps an empty memfd over it and wakes the faulters).
  using SigbusSink =
      std::function<void(const Attachment&, uint64_t offset, uint64_t len, const std::string& why)>;

  FaultService(DataPath* data, uint64_t budget_bytes, SigbusSink sigbus);
  ~FaultService();

  absl::Status Start();
  void Stop();

  // Starts serving faults of `att` (its vaddr is set).
  absl::Status Add(std::shared_ptr<Attachment> att);
  // Stops serving; in-flight fetches complete harmlessly.
  void Remove(const std::shared_ptr<Attachment>& att);

  // Writes back dirty pages in [offset, offset+len) of the attachment.
  absl::Status Sync(Attachment& att, uint64_t offset, uint64_t len);
  // Drops clean copies in the range, so the next access refetches.
  absl::Status Acquire(Attachment& att, uint64_t offset, uint64_t len);
  // Revokes the whole attachment: every access raises SIGBUS from now on.
  void Revoke(Attachment& att, const std::string& why);

  // range_begin for pages [p0, p1) of the attachment: faults there wait,
  // clean copies are dropped, dirty ones kept aside; in-flight fetches are
  // discarded when they complete. Returns once no copy is mapped.
  void BeginWindow(Attachment& att, uint64_t key, uint64_t p0, uint64_t p1);
  // range_end: writes kept-aside pages back unless they fall in `gone`
  // (page ranges whose address no longer exists: counted as lost), then
  // lets faults in the range fetch again.
  absl::Status EndWindow(Attachment& att, uint64_t key,
                         const std::vector<std::pair<uint64_t, uint64_t>>& gone);

  uint64_t budget_bytes() const { return budget_pages_ * 4096; }
  uint64_t resident_bytes() const { return resident_pages_.load() * 4096; }

 private:
  void FaultLoop();
  void HandleMissing(const std::shared_ptr<Attachment>& att, uint64_t addr);
  void HandleWriteProtect(Attachment& att, uint64_t addr);
  void Install(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n, uint8_t* buf,
               uint64_t gen, absl::Status st);
  // Wakes [first, first+n) after a short delay (home said "retry").
  void RetryLater(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n);
  void RunDueRetries();
  absl::Status WriteBackPages(Attachment& att, uint64_t first, absl::Span<const uint8_t> data);
  void EvictLoop();
  uint64_t EvictClean(Attachment& att, uint64_t want);
  uint8_t* GetBuffer();
  void PutBuffer(uint8_t* buf);

  DataPath* const data_;
  const uint64_t budget_pages_;
  SigbusSink sigbus_;

  std::atomic<uint64_t> resident_pages_{0};
  std::atomic<bool> stopping_{false};
  WakeableEpoll faults_;  // the attachments' userfaultfds, keyed by attachment id
  std::thread fault_thread_;
  std::thread evict_thread_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Attachment>> atts_ ABSL_GUARDED_BY(mu_);
  bool evict_wanted_ ABSL_GUARDED_BY(mu_) = false;

  struct Retry {
    std::weak_ptr<Attachment> att;
    uint64_t first, n;
    absl::Time due;
  };
  absl::Mutex retry_mu_;
  std::vector<Retry> retries_ ABSL_GUARDED_BY(retry_mu_);

  absl::Mutex pool_mu_;
  std::vector<uint8_t*> pool_ ABSL_GUARDED_BY(pool_mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_FAULT_SERVICE_H_
