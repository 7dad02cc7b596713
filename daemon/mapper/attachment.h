// SegmentCache and Attachment: this node's copy of a segment, and one
// mapper's mapping of (part of) it, as the local daemon sees them.
//
// One cache per segment per node (issue 16). Every attachment of a segment
// on this node — in one process or in several — maps the same SegmentCache:
// one memfd as large as the segment (sparse: only pages some attachment
// touched are in it), mapped by each client at the attachment's offset in
// the segment. Page contents live in the memfd's page cache; `state` says
// what each page is, per segment page. So consumers on one node see each
// other's stores at once (they are stores to the same page), one fetch
// serves them all, an invalidation drops the one copy (once, for every
// mapping: a punched page leaves every mm), and eviction and write-back
// count each page once. The cache is refcounted by its attachments; the
// last detach closes it (docs/architecture.md, "A fault").
//
// What stays per attachment: the client (pid), its userfaultfd, where it
// mapped (vaddr), the range (seg_offset, size), the grant it came through
// and whether it may write. A read-only attachment maps PROT_READ and is
// registered for missing faults only, so nothing it does can dirty a page.
//
// Dirty tracking across mappings. uffd write-protection is per PTE per mm,
// and a page that one mapping's uffd installs (UFFDIO_COPY) shows up in the
// other mms on their next access without any missing fault — if such a
// PTE were plain, a store through it would land unseen, and a write-back
// would miss it (or an invalidation would read the page without it). The
// rule that keeps every store seen: while a cache has more than one
// mapping, every writable mapping is *armed* — its whole range was
// write-protected through its own uffd (UFFDIO_WRITEPROTECT) when the
// second mapping arrived, which leaves a uffd-wp PTE marker on each PTE
// that maps nothing yet (shmem keeps such markers across the zap of a
// punch hole and MADV_DONTNEED, and a later fault maps the page
// write-protected from the marker). A store through any armed mapping to a
// page it has not yet stored to since the page was last protected faults
// to us (WP), so the page turns kDirty before the store lands; we unprotect
// it in that mm only. Write-back and range_begin protect the page again in
// every writable mapping before they read it (issue 14's defect 3, for each
// mm), and a page is punched out only when every writable mapping's PTE is
// protected (clean pages are; dirty ones are protected first), so that no
// mapping is left with a plain PTE to a page another mapping installs
// later. A single mapping needs none of this (its PTEs are only ever
// filled by its own UFFDIO_COPY, write-protected), so the one-attachment
// fault path has no new system call; an install wakes the other mappings'
// faulters only when there are others. Whether the kernel leaves markers
// on unpopulated shmem PTEs is probed when the daemon starts
// (FaultService::Start); without them caches are not shared and each
// attachment keeps its own, as before. Measured on the host's 6.18
// (tests/unit/mapper_windows_test.cc, tests/multinode/test_invalidation.py
// test_one_cache_*), and on Debian's 6.1 and 6.12 in the VM tier (its
// invalidation suite runs those multinode tests). Segments larger
// than kMaxSharedBytes (XPMEM's whole address space) are not shared
// either: a cache per attachment covers only its range.
//
// A page whose fetch failed goes back to kAbsent: the attachment that
// fetched it raises SIGBUS (the client library maps an empty page over
// it), and any other attachment that touches it fetches it itself.
//
// Thread contract.
// - An Attachment's identity (id, segid, home, grant, seg_offset, size,
//   writable, pid, uffd, cache) is written by the thread that creates it
//   (LocalApi::Attach, FaultService::Join; `id` by AttachmentTable::
//   Insert) before it is shared, and never changes after. `vaddr` is set
//   once (compare-and-swap from 0) by the client thread that reports the
//   mapping, before FaultService::Add; `faults` is a counter the fault
//   thread bumps. Both atomic. Its read-ahead state and `armed` are
//   guarded by its cache's `mu`.
// - A SegmentCache's identity (home, segid, memfd, seg_pages) is written
//   before it is shared. `mu` guards everything else: the pages' state and
//   counts, the eviction hand, windows and their history, kept-aside
//   pages, the dirty pages' twins, the mappings, revocation. The threads
//   that take it: the fault thread (faults), the transports' threads
//   (installing fetches), the evictor, the threads that deliver
//   invalidation notices, local client threads (attach, sync, acquire,
//   detach) and tetherctl's (Summaries). It is held across uffd ioctls (of
//   any of its mappings) and memfd calls, never across the network, and no
//   other lock is taken under it but the logger's (a leaf).
// - InWindow, AbandonFetch, BegunSince, InOtherWindow need `mu` held
//   (annotated). The destructors (closing the fds) run on whichever thread
//   drops the last reference, possibly a transport's thread completing a
//   fetch after detach.
#ifndef TETHER_DAEMON_MAPPER_ATTACHMENT_H_
#define TETHER_DAEMON_MAPPER_ATTACHMENT_H_

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
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

struct Attachment;

// A state per page of a cache, indexed by segment page (from `base`).
class PageStates {
 public:
  void Reset(uint64_t base, uint64_t n) {
    base_ = base;
    v_.assign(n, PageState::kAbsent);
  }
  PageState& operator[](uint64_t p) { return v_[p - base_]; }
  const PageState& operator[](uint64_t p) const { return v_[p - base_]; }
  auto begin() { return v_.begin(); }
  auto end() { return v_.end(); }

 private:
  uint64_t base_ = 0;
  std::vector<PageState> v_;
};

struct SegmentCache {
  // Segments up to this size are cached whole (a memfd and a state per
  // page of the segment: 1 byte per 4 KiB), shared by their attachments.
  // Larger ones — XPMEM's whole-address-space segments, 128 TiB — get a
  // cache per attachment covering only its range, as before issue 16.
  static constexpr uint64_t kMaxSharedBytes = uint64_t{64} << 30;

  uint32_t home = 0;
  uint64_t segid = 0;
  uint64_t base_page = 0;  // the segment page at memfd offset 0
  uint64_t seg_pages = 0;  // the memfd's size in pages
  bool shared = false;     // in FaultService's caches by segid
  int memfd = -1;

  absl::Mutex mu;
  PageStates state ABSL_GUARDED_BY(mu);  // per segment page in [first(), end())
  // The attachments that map this cache (joined at attach, left at
  // FaultService::Remove). Those with vaddr 0 are not mapped yet.
  std::vector<std::shared_ptr<Attachment>> mappings ABSL_GUARDED_BY(mu);
  // The grant of the last writable attachment (handed to a remaining
  // writable one when it is removed): what write-backs not made for one
  // attachment (a window's kept-aside pages, the evictor, a detach's
  // pages no other attachment covers) use.
  uint64_t write_grant ABSL_GUARDED_BY(mu) = 0;
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
  // the next sync of any of its attachments).
  uint64_t lost_pages ABSL_GUARDED_BY(mu) = 0;
  // Revoked (fenced, the exporter gone), or closed by the last detach:
  // nothing is installed any more; a new attach makes a new cache.
  bool revoked ABSL_GUARDED_BY(mu) = false;
  std::string revoke_reason ABSL_GUARDED_BY(mu);

  // The segment pages this cache holds: [first(), end()).
  uint64_t first() const { return base_page; }
  uint64_t end() const { return base_page + seg_pages; }
  // The memfd offset of segment page `p`.
  off_t Off(uint64_t p) const { return static_cast<off_t>((p - base_page) * kPageSize); }
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

  ~SegmentCache() {
    if (memfd >= 0) close(memfd);
  }
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
  int uffd = -1;
  std::shared_ptr<SegmentCache> cache;  // set by FaultService::Join
  std::atomic<uint64_t> vaddr{0};       // in the client, 0 until mapped
  std::atomic<uint64_t> faults{0};

  // Guarded by cache->mu. Sequential stream detection, in this
  // attachment's pages: faults inside [seq_lo, next_seq_page] extend the
  // stream; next_seq_page is the end of what was requested.
  uint64_t seq_lo = ~uint64_t{0};
  uint64_t next_seq_page = ~uint64_t{0};
  uint32_t readahead = 1;
  // Whole range write-protected through uffd (see "Dirty tracking" above).
  bool armed = false;

  uint64_t pages() const { return size / kPageSize; }
  // The segment page of this attachment's first page.
  uint64_t first_page() const { return seg_offset / kPageSize; }
  // Whether segment page `p` is inside this attachment.
  bool Covers(uint64_t p) const { return p >= first_page() && p < first_page() + pages(); }
  // The client address of segment page `p` (Covers(p), mapped).
  uint64_t AddrOf(uint64_t p) const { return vaddr.load() + (p - first_page()) * kPageSize; }

  // The uffd lives as long as the last reference: an in-flight fetch that
  // completes after detach must not ioctl a closed (or reused) fd number.
  ~Attachment() {
    if (uffd >= 0) close(uffd);
  }
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_ATTACHMENT_H_
