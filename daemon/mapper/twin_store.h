// TwinStore: the twins of one segment cache's dirty pages (issue 16: no lost
// updates between writers of one page; common/page_diff.h).
//
// A twin is a page as the home last had it from this mapper's point of
// view: taken when a clean page first becomes dirty (the write-protect
// fault, before the protection is lifted, so it holds no store of the
// client's yet), and replaced by the bytes a write-back sent once the home
// has them while the page was re-dirtied meanwhile. A write-back sends
// only the bytes that differ from it, so the bytes other writers stored in
// the same page at the home are left alone. A page with no twin (its read
// failed) is sent whole, as before.
//
// Lifetime of page p's twin: Take at the first store to a clean page;
// kept while p is kDirty or kWriteback, and while a window keeps p's
// bytes aside (that write-back after the window is a diff against it too,
// and if it fails the page is put back dirty with it); Set to the
// sent bytes when a write-back lands on a page stored to again meanwhile;
// Drop when the page is clean again (the next store takes a new twin),
// dropped as lost, or written back from kept-aside; Clear at revocation
// and removal.
//
// Memory: one page per twin, at most one twin per dirty (or kept-aside)
// page. Twins count against the node's cache budget (FaultService: every
// Take/Drop moves resident_pages_), so past the budget the evictor writes
// dirty pages back, which drops their twins.
//
// Pages are segment pages (SegmentCache's index): a cache shared by several
// mappings keeps one twin per page, taken at the write-protect fault of
// whichever writable mapping stores to the clean page first.
//
// Thread contract: none of its own. It lives in its SegmentCache, guarded
// by the cache's mu (every method is called with it held; the caller
// adjusts FaultService's count by the returned deltas). Get hands out a
// shared reference: a twin is never changed in place (Set and Take put a
// new one), so a write-back may diff against it after releasing mu.
#ifndef TETHER_DAEMON_MAPPER_TWIN_STORE_H_
#define TETHER_DAEMON_MAPPER_TWIN_STORE_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "daemon/common/page.h"

namespace tether {

class TwinStore {
 public:
  using Twin = std::shared_ptr<const uint8_t[]>;

  // Takes page `p`'s twin from the cache's memfd at `off` (its contents
  // now), replacing any older one. Returns the change in twins held (0 or 1); a
  // failed read leaves none (the page then goes whole).
  int Take(int memfd, off_t off, uint64_t p);
  // Page `p`'s twin becomes `bytes` (kPageSize: what a write-back sent).
  // Returns the change in twins held (0 or 1).
  int Set(uint64_t p, const uint8_t* bytes);
  // Returns the change in twins held (0 or -1).
  int Drop(uint64_t p);
  // Drops every twin; returns how many there were.
  uint64_t Clear();
  // Page `p`'s twin, or null.
  Twin Get(uint64_t p) const;
  uint64_t size() const { return twins_.size(); }

 private:
  absl::flat_hash_map<uint64_t, Twin> twins_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_TWIN_STORE_H_
