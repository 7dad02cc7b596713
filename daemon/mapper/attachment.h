// Attachment: one mapper's mapping of (part of) a segment, as its local
// daemon sees it. The client maps `memfd` (owned here) and registered it
// with `uffd` (its own, sent to us; it keeps a reference too;
// docs/architecture.md, "A fault"). Page contents live in the memfd's page
// cache; `state` says what each page is.
//
// Thread contract.
// - The identity (id, segid, home, grant, seg_offset, size, writable, pid,
//   memfd, uffd) is written by the thread that creates the attachment
//   (LocalApi::Attach; `id` by AttachmentTable::Insert) before the
//   attachment is shared, and never changes after: read it from any
//   thread without a lock.
// - `vaddr` is set once (compare-and-swap from 0) by the client thread
//   that reports the mapping, before FaultService::Add; `faults` is a
//   counter the fault thread bumps. Both atomic.
// - `mu` guards everything else: the pages' state and counts, read-ahead,
//   the eviction hand, windows and their history, kept-aside pages, the
//   dirty pages' twins, revocation. The threads that take it: the fault thread (faults), the
//   transports' threads (installing fetches), the evictor, the threads
//   that deliver invalidation notices, local client threads (sync,
//   acquire, detach) and tetherctl's (AttachmentTable::Summaries). It is
//   held across uffd ioctls and memfd calls on this attachment, never
//   across the network, and no other lock is taken under it but the
//   logger's (a leaf).
// - InWindow, AbandonFetch, BegunSince and InOtherWindow need `mu` held
//   (annotated); pages() reads only the size. The destructor (closing
//   the fds) runs on whichever thread drops the last reference, possibly
//   a transport's thread completing a fetch after detach.
#ifndef TETHER_DAEMON_MAPPER_ATTACHMENT_H_
#define TETHER_DAEMON_MAPPER_ATTACHMENT_H_

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/page.h"
#include "daemon/mapper/twin_store.h"

namespace tether {

enum class PageState : uint8_t {
  kAbsent = 0,  // not in the memfd; an access faults to us
  kFetching,    // a fetch is in flight; faults wait for its install
  kClean,       // installed write-protected, same as the home's copy
  kDirty,       // written by the mapper since the last write-back
  kWriteback,   // being written back; a store meanwhile makes it kDirty
  kPoisoned,    // could not be fetched; the client makes it raise SIGBUS
};

struct Attachment {
  uint64_t id = 0;
  uint64_t segid = 0;
  uint32_t home = 0;
  uint64_t grant = 0;
  uint64_t seg_offset = 0;  // where the attachment starts in the segment
  uint64_t size = 0;        // bytes, page multiple
  bool writable = false;
  pid_t pid = 0;  // the client
  int memfd = -1;
  int uffd = -1;
  std::atomic<uint64_t> vaddr{0};  // in the client, 0 until mapped

  absl::Mutex mu;
  std::vector<PageState> state ABSL_GUARDED_BY(mu);
  // Sequential stream detection: faults inside [seq_lo, next_seq_page]
  // extend the stream; next_seq_page is the end of what was requested.
  uint64_t seq_lo ABSL_GUARDED_BY(mu) = ~uint64_t{0};
  uint64_t next_seq_page ABSL_GUARDED_BY(mu) = ~uint64_t{0};
  uint32_t readahead ABSL_GUARDED_BY(mu) = 1;
  uint64_t evict_hand ABSL_GUARDED_BY(mu) = 0;
  uint64_t resident ABSL_GUARDED_BY(mu) = 0;  // pages installed
  uint64_t dirty ABSL_GUARDED_BY(mu) = 0;     // pages kDirty
  // Invalidation (docs/architecture.md, "The invalidation contract").
  // Open windows by key (home segid + window id): faults in them wait.
  absl::flat_hash_map<uint64_t, std::pair<uint64_t, uint64_t>> windows ABSL_GUARDED_BY(mu);
  // Bumped by every range_begin. A fetch issued under an older value is
  // discarded instead of installed if one of the range_begins since then
  // overlaps it (its data may predate that window); one that no window
  // touched is installed — else, under frequent invalidations of other
  // ranges, a slow fetch would be thrown away again and again.
  uint64_t inval_gen ABSL_GUARDED_BY(mu) = 0;
  struct Begin {
    uint64_t gen, p0, p1;  // inval_gen after it, pages [p0, p1)
  };
  static constexpr size_t kRecentBegins = 64;
  std::deque<Begin> recent_begins ABSL_GUARDED_BY(mu);  // the last kRecentBegins
  // Bumped whenever a page leaves kWriteback other than by its write-back
  // settling: a store re-dirties it, a window takes it. A sync refused by
  // the home retries only while it is unchanged, so that its (older) copy
  // never lands after a newer one (the next sync round or the window's
  // range_end writes that).
  uint64_t wb_epoch ABSL_GUARDED_BY(mu) = 0;
  // Dirty pages a window took away, written back after it (page -> bytes).
  absl::btree_map<uint64_t, std::string> kept_aside ABSL_GUARDED_BY(mu);
  // Kept-aside pages that a window's end is writing back now: out of
  // kept_aside, not yet at the home or put back. Sync waits for them as
  // for kept_aside, so that it never returns OK before they land.
  absl::btree_set<uint64_t> kept_writing ABSL_GUARDED_BY(mu);
  // Twins of the dirty (and kept-aside) pages: what a write-back diffs
  // against (twin_store.h).
  TwinStore twins ABSL_GUARDED_BY(mu);
  // Dirty pages discarded because their address went away (reported by
  // the next sync).
  uint64_t lost_pages ABSL_GUARDED_BY(mu) = 0;
  bool revoked ABSL_GUARDED_BY(mu) = false;
  std::string revoke_reason ABSL_GUARDED_BY(mu);
  std::atomic<uint64_t> faults{0};

  uint64_t pages() const { return size / kPageSize; }
  bool InWindow(uint64_t page) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (const auto& [key, w] : windows)
      if (page >= w.first && page < w.second) return true;
    return false;
  }
  // Pages [first, first + n) of a fetch that will not be installed go back
  // to absent (pages no longer fetching — zapped, evicted — are left).
  void AbandonFetch(uint64_t first, uint64_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (uint64_t p = first; p < first + n; ++p)
      if (state[p] == PageState::kFetching) state[p] = PageState::kAbsent;
  }
  // Whether a range_begin after generation `gen` overlaps pages
  // [first, first + n) — or may have: history older than kRecentBegins
  // range_begins is forgotten, and then the answer is yes.
  bool BegunSince(uint64_t gen, uint64_t first, uint64_t n) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (gen == inval_gen) return false;
    if (recent_begins.empty() || recent_begins.front().gen > gen + 1) return true;
    for (const Begin& b : recent_begins)
      if (b.gen > gen && b.p0 < first + n && first < b.p1) return true;
    return false;
  }
  // In a window other than `key`'s.
  bool InOtherWindow(uint64_t page, uint64_t key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (const auto& [k, w] : windows)
      if (k != key && page >= w.first && page < w.second) return true;
    return false;
  }

  // The fds live as long as the last reference: an in-flight fetch that
  // completes after detach must not ioctl a closed (or reused) fd number.
  ~Attachment() {
    if (uffd >= 0) close(uffd);
    if (memfd >= 0) close(memfd);
  }
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_ATTACHMENT_H_
