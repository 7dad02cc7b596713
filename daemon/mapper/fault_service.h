// FaultService: serves the page faults of every local attachment, over
// one SegmentCache per segment on this node (attachment.h: every
// attachment of a segment maps the same pages).
//
// One thread waits on all attachments' userfaultfds (epoll). A missing-page
// fault marks the page (and a read-ahead window of absent pages after it,
// growing 1, 2, 4 … 256 pages while access stays sequential, sent as reads
// of up to 64 pages so that they pipeline) kFetching and asks the home; the
// completion installs the pages with UFFDIO_COPY, write-protected when the
// attachment is writable, which wakes the faulting threads. Many fetches
// are in flight at once: the fault thread never waits for the network.
//
// Dirty tracking: a store to a clean (write-protected) page raises a WP
// fault; the page's twin is taken (twin_store.h), then it becomes kDirty
// and is unprotected. A write-back sends only the bytes that differ from
// the twins (a page diff, common/page_diff.h), so that stores other
// writers made to other bytes of the page at the home survive. Write-back and
// range_begin protect again first, then read the page from the memfd, so
// a store racing with them re-dirties the page (write-back) or waits for
// the window and lands on the page fetched after it (range_begin) instead
// of being lost.
//
// Cache budget: pages installed across all caches of this node are
// bounded (a page is counted once, however many attachments map it). Past
// the budget an evictor thread punches clean pages out of the memfds (every
// client's next access faults again) and writes dirty ones back before
// evicting them.
//
// Where each part lives: fault_service.cc (start, stop, add, remove, fetch
// buffers), fault_install.cc (the fault loop, missing and write-protect
// faults, read-ahead, installing fetched pages, retries), fault_windows.cc
// (range_begin/range_end windows, revoke, acquire), fault_writeback.cc
// (sync, write-back), fault_eviction.cc (the evictor).
//
// Thread contract.
// - Start and Stop: the owner (Tetherd's main thread), not concurrently.
//   Start once (it probes whether the kernel lets caches be shared:
//   attachment.h); Stop joins both threads, and runs again (a no-op) in
//   the destructor. The rest may be called only between them.
// - The fault thread (started by Start) runs FaultLoop, HandleMissing,
//   HandleWriteProtect and RunDueRetries, and nothing else runs them: they
//   assert it (ThreadRole, common/thread_role.h; Debug builds). It does
//   not wait for fetches from other nodes: they complete on a transport's
//   thread (a home on this node is read inline). The first fetch from a
//   home that the transport has no connection to yet does connect on
//   this thread (data_path.h).
// - The evictor thread (started by Start) runs EvictLoop and EvictClean
//   (asserted), and Sync for attachments with dirty pages.
// - Join, Add, Remove, Acquire, Revoke, BeginWindow,
//   EndWindowIfNothingToWriteBack: any thread; they take
//   only the cache's lock and this class's (never both at once), and never wait for the
//   network (BeginWindow is called on a notice connection's serving thread,
//   before its ack).
// - Sync, Detach and EndWindow write back and wait for the home (DataPath::
//   WriteDiffSync): only threads that may block — local client threads, the
//   evictor, MapperInvalidation's range_end thread (every EndWindow: never
//   the thread that delivered the range_end, G5 in docs/architecture.md),
//   Tetherd::Stop — never the fault thread or a transport's thread.
// - Callbacks: a fetch's completion (Install) runs on a transport's
//   receiver thread, or inline on the fault thread when the home is this
//   node or the request failed before it was sent (data_path.h); it calls
//   the SigbusSink (for a page that could not be fetched) on that same
//   thread, with no lock of this class or of the attachment held. It never
//   issues a request itself: a home's "retry" is queued for the fault
//   thread (RetryLater).
// - Locks: mu_ guards the attachments served and the evictor's wake-up,
//   the caches by segid, retry_mu_ the pending retries, pool_mu_ the
//   buffer pool; each SegmentCache's mu its pages' state and its mappings
//   (attachment.h). No two of them are ever held at once. A cache's lock
//   is held across its mappings' uffd ioctls and memfd calls (so that a
//   window cannot open between a check and a copy), never across the
//   network or a callback. The rest: set at construction (data_,
//   budget_pages_, sigbus_, clock_), set by Start (share_caches_), atomic
//   (resident_pages_, stopping_, the thread roles), thread-safe itself
//   (faults_), or touched by Start and Stop only (the std::threads).
#ifndef TETHER_DAEMON_MAPPER_FAULT_SERVICE_H_
#define TETHER_DAEMON_MAPPER_FAULT_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/clock.h"
#include "daemon/common/page.h"
#include "daemon/common/thread_role.h"
#include "daemon/common/wakeable_epoll.h"
#include "daemon/mapper/attachment.h"
#include "daemon/mapper/data_path.h"

namespace tether {

class FaultService {
 public:
  // Asks the client library to make [offset, offset+len) of an attachment
  // raise SIGBUS (it maps an empty memfd over it and wakes the faulters).
  // Runs on the thread that completed the fetch (see the contract above).
  using SigbusSink =
      std::function<void(const Attachment&, uint64_t offset, uint64_t len, const std::string& why)>;

  // `clock` (tests pass a FakeClock) times Sync's wait for windows.
  FaultService(DataPath* data, uint64_t budget_bytes, SigbusSink sigbus,
               Clock* clock = Clock::Real());
  ~FaultService();

  absl::Status Start();
  void Stop();
  // Before Start: write-backs carry whole pages instead of diffs (twins
  // are still taken). Loses other writers' stores to the same page: only
  // the write-back benchmark's baseline uses it (--writeback_diffs=false).
  void SetWholePageWriteBack(bool whole) { whole_pages_ = whole; }

  // Gives a new attachment (identity set, not yet shared) its cache: the
  // segment's cache on this node if one is open (and caches are shared),
  // else a new one, whose memfd is `segment_size` bytes. The client maps
  // att->cache->memfd at att->seg_offset.
  absl::Status Join(const std::shared_ptr<Attachment>& att, uint64_t segment_size);
  // Starts serving faults of `att` (its vaddr is set). When its cache has
  // another mapping, arms every writable mapping (attachment.h).
  absl::Status Add(std::shared_ptr<Attachment> att);
  // Detach (and a client's exit): writes back the dirty pages of the
  // attachment's range (Sync), then — since one cache serves every
  // attachment of the segment on this node — the dirty pages no other
  // writable attachment covers: in its range (a store that raced the
  // detach, pages a read-only attachment's range holds), and, when it is
  // the cache's last attachment, anywhere in the cache (pages an earlier
  // detach could not write back) — pages a window keeps aside or its end
  // is writing back too (it waits for them). Nobody would sync those
  // afterwards, and the last Remove drops them. Returns once each write-back landed, or
  // the first failure (which pages, in its message); then Remove.
  absl::Status Detach(const std::shared_ptr<Attachment>& att);
  // Stops serving; in-flight fetches complete harmlessly. The last
  // attachment of a cache closes it; otherwise the clean pages no other
  // attachment covers are dropped.
  void Remove(const std::shared_ptr<Attachment>& att);
  // Whether attachments of one segment share a cache (Start's probe).
  bool shares_caches() const { return share_caches_; }

  // Writes back dirty pages in [offset, offset+len) of the attachment.
  // Pages a window kept aside are written back by its end, pages another
  // thread is writing back (kWriteback) by that thread: Sync waits for
  // both up to 10 s, then says EAGAIN (they are not at the home yet), so
  // that it never answers OK before every write-back it covers landed.
  // Pages the home refuses as unmapped since read (ENXIO) are dropped and
  // reported lost (EIO), once.
  absl::Status Sync(Attachment& att, uint64_t offset, uint64_t len);
  // Drops clean copies in the range, so the next access refetches.
  absl::Status Acquire(Attachment& att, uint64_t offset, uint64_t len);
  // Revokes the attachment's cache — every attachment of it: every access
  // raises SIGBUS from now on.
  void Revoke(Attachment& att, const std::string& why);

  // range_begin for segment pages [p0, p1) of the cache (once for all its
  // attachments): faults there wait,
  // clean copies are dropped, dirty ones kept aside; in-flight fetches are
  // discarded when they complete. Returns once no copy is mapped.
  void BeginWindow(SegmentCache& c, uint64_t key, uint64_t p0, uint64_t p1);
  // range_end: writes kept-aside pages back unless they fall in `gone`
  // (page ranges whose address no longer exists: counted as lost), then
  // lets faults in the range fetch again. A page whose write-back fails
  // goes back into the attachment as a dirty page (the client reads its
  // own writes; the next Sync retries it and reports a failure), unless
  // another window still holds it (kept aside for that window's end), or
  // the home refused it as unmapped since read (ENXIO: counted lost).
  absl::Status EndWindow(SegmentCache& c, uint64_t key,
                         const std::vector<std::pair<uint64_t, uint64_t>>& gone);
  // range_end of a window that has nothing to write back — no page in its
  // range kept aside or on its way to the home (most windows: no page was
  // dirty) — reopens the range and returns true; such an end waits for
  // nothing, so any thread may call this (the one that delivered the
  // range_end). False, changing nothing, if the window has write-backs to
  // do: EndWindow's, on a thread that may wait. True for an unknown window.
  bool EndWindowIfNothingToWriteBack(SegmentCache& c, uint64_t key);

  // The window key of a suspension (LeaseKeeper: the home's lease lapsed,
  // or it restarted): one over the whole cache, opened by this node.
  static constexpr uint64_t kSuspendWindow = ~uint64_t{0};
  // Suspends the cache: BeginWindow(kSuspendWindow) over all of it.
  void Suspend(SegmentCache& c);
  // Ends the suspension; `all`: also every other window still open (a
  // restarted home's predecessor opened them; their range_ends will never
  // come), kept-aside pages written back first.
  absl::Status Resume(SegmentCache& c, bool all);

  // The home refused a write-back because the exporter's address is gone
  // (ENXIO: a window reported it unmapped since the copy was read, or
  // nothing is mapped there): the pages are counted lost, not kept dirty.
  static bool IsGoneAtHome(const absl::Status& st);
  // Sync's answer when the only thing it has to report is writes lost
  // because the exporter unmapped their memory (EIO). Detach treats it as
  // success, as XPMEM's detach of a dead range does (LocalApi).
  static bool IsOnlyLostUnmapped(const absl::Status& st);

  uint64_t budget_bytes() const { return budget_pages_ * kPageSize; }
  // Pages installed plus twins (twin_store.h): what the budget bounds.
  uint64_t resident_bytes() const { return resident_pages_.load() * kPageSize; }

 private:
  static constexpr uint32_t kMaxReadahead = 64;    // pages: one 256 KiB transport request
  static constexpr uint32_t kMaxAheadPages = 256;  // pages requested ahead of a sequential reader
  static constexpr size_t kMaxAheadRequests = kMaxAheadPages / kMaxReadahead + 1;
  static constexpr size_t kBufferBytes = kMaxReadahead * kPageSize;

  // fault_install.cc. The fault thread's: FaultLoop and the fault handlers.
  void FaultLoop();
  void HandleMissing(const std::shared_ptr<Attachment>& att, uint64_t addr);
  void HandleWriteProtect(Attachment& att, uint64_t addr);
  // A fetch's completion (a transport's thread, or the fault thread):
  // installs the n segment pages from `first` at `data` (valid while it
  // runs: the transport's registered slot, or `buf`) through `att`, the
  // attachment that faulted; `buf` goes back to the pool.
  void Install(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n, uint8_t* buf,
               const uint8_t* data, uint64_t gen, absl::Status st);
  // Install's failed fetches: "retry", a hole in a read-ahead, an error.
  void FetchFailed(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n, uint8_t* buf,
                   const absl::Status& st);
  // UFFDIO_COPY of a fetch's pages (segment pages from `first`) through
  // att's mapping into the cache; returns how many pages became kClean.
  // Sets *need_wake when faulters must be woken.
  static uint64_t CopyIn(SegmentCache& c, Attachment& att, uint64_t first, uint64_t n,
                         const uint8_t* buf, bool* need_wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Write-protects segment pages [p0, p1) in every writable mapping of the
  // cache that covers them (before a write-back or a window reads them).
  static void ProtectEverywhere(SegmentCache& c, uint64_t p0, uint64_t p1)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Wakes the faulters on segment pages [p0, p1) (those outside windows)
  // in every mapping of the cache but `except`.
  static void WakeEverywhere(SegmentCache& c, uint64_t p0, uint64_t p1, const Attachment* except)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);
  // Whether this kernel leaves uffd-wp markers on unpopulated shmem PTEs.
  static bool ProbeSharing();
  // Wakes [first, first+n) after a short delay (home said "retry").
  void RetryLater(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n);
  void RunDueRetries();

  // fault_writeback.cc. Blocking: see Sync.
  // Writes runs of kWriteback pages ([first page, count)) back and
  // settles their state: kClean, or kDirty again if the write failed or
  // was superseded (*superseded: see WriteBackPages). `epoch` is
  // att.wb_epoch when the runs were taken.
  absl::Status SyncCache(SegmentCache& c, uint64_t grant, uint64_t p0, uint64_t p1);
  absl::Status WriteBackRuns(SegmentCache& c, uint64_t grant,
                             const std::vector<std::pair<uint64_t, uint64_t>>& runs, uint64_t epoch,
                             bool* superseded);
  // Writes a page diff (page_diff.h) of the pages from `first`, retrying
  // the home's "retry" for a bounded time. With `epoch` (a sync's kWriteback pages) it retries only
  // while att.wb_epoch still equals *epoch; else it gives up and sets
  // *superseded: a newer copy exists (re-dirtied, or kept aside by a
  // window that writes it back at its end), and this one must not land
  // after it. Without (a window's kept-aside pages) it retries until the
  // deadline.
  absl::Status WriteBackPages(SegmentCache& c, uint64_t grant, uint64_t first,
                              absl::Span<const uint8_t> diff, const uint64_t* epoch = nullptr,
                              bool* superseded = nullptr);
  // Appends the diff of `pages` (twins.size() pages from index 0) against
  // their twins; a page without one goes whole.
  void EncodeDiff(const std::vector<TwinStore::Twin>& twins, absl::Span<const uint8_t> pages,
                  std::vector<uint8_t>* diff) const;

  // fault_eviction.cc. The evictor thread's.
  void EvictLoop();
  uint64_t EvictClean(SegmentCache& c, uint64_t want);

  // fault_service.cc. Read-ahead buffers: taken by the fault thread,
  // returned by completions.
  uint8_t* GetBuffer();
  void PutBuffer(uint8_t* buf);

  // Set at construction, never changed.
  DataPath* const data_;
  const uint64_t budget_pages_;
  const SigbusSink sigbus_;
  Clock* const clock_;
  bool whole_pages_ = false;  // SetWholePageWriteBack, before Start

  std::atomic<uint64_t> resident_pages_{0};
  std::atomic<bool> stopping_{false};
  // The attachments' userfaultfds, keyed by attachment id. Thread-safe
  // itself; Wait() only on the fault thread, Open/Close in Start/Stop.
  WakeableEpoll faults_;
  // Start and Stop only.
  std::thread fault_thread_;
  std::thread evict_thread_;
  // Bound by each thread when it starts; asserted (AssertHere) by the
  // functions that only that thread may run.
  ThreadRole fault_role_;
  ThreadRole evictor_role_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Attachment>> atts_ ABSL_GUARDED_BY(mu_);
  // The open caches, by segid (closed and revoked ones are replaced).
  absl::flat_hash_map<uint64_t, std::shared_ptr<SegmentCache>> caches_ ABSL_GUARDED_BY(mu_);
  bool share_caches_ = false;  // Start's probe
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
