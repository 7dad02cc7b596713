// FaultService, sync and write-back: dirty pages are write-protected again
// before they are read from the memfd and sent to the home, so that a
// store racing the write-back re-dirties its page instead of being lost;
// only the bytes that differ from each page's twin are sent (a page diff:
// other writers' bytes of the page survive at the home); a home's "retry"
// (a window there) is retried for a bounded time.
#include "daemon/mapper/fault_service.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/page_diff.h"
#include "daemon/mapper/mapping_ops.h"

namespace tether {

using mapping_ops::PunchHole;

namespace {
constexpr char kLostUnmappedPayload[] = "tether.lost_unmapped";

// Takes the cache's count of writes lost (reported once). OK if there
// are none. Lost because the cache was revoked (fenced, the exporter gone)
// — a revocation while a write-back was on its way counts the pages it
// dropped — they are reported as that (EIDRM, with the reason), never as
// an unmap: detach forgives writes lost to an unmap (IsOnlyLostUnmapped),
// not to a revocation, and the caller must see why its data is gone.
absl::Status TakeLost(SegmentCache& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu) {
  if (c.lost_pages == 0) return absl::OkStatus();
  if (c.revoked) {
    absl::Status st = ErrnoStatus(
        EIDRM, absl::StrFormat("attachment revoked (%s): %d page(s) of writes not yet synced "
                               "were discarded",
                               c.revoke_reason, c.lost_pages));
    c.lost_pages = 0;
    return st;
  }
  absl::Status st =
      ErrnoStatus(EIO, absl::StrFormat("%d page(s) of writes not yet synced were discarded: "
                                       "the exporter unmapped that memory",
                                       c.lost_pages));
  st.SetPayload(kLostUnmappedPayload, absl::Cord("1"));
  c.lost_pages = 0;
  return st;
}
}  // namespace

bool FaultService::IsGoneAtHome(const absl::Status& st) { return ToErrno(st) == ENXIO; }

bool FaultService::IsOnlyLostUnmapped(const absl::Status& st) {
  return st.GetPayload(kLostUnmappedPayload).has_value();
}

absl::Status FaultService::Sync(Attachment& att, uint64_t offset, uint64_t len) {
  if (offset > att.size || len > att.size - offset)
    return ErrnoStatus(EINVAL, "sync range outside the attachment");
  // A read-only attachment stored nothing; pages of the range that another
  // (writable) attachment of the cache dirtied are that one's to sync.
  if (!att.writable) return absl::OkStatus();
  const uint64_t off = att.first_page();
  return SyncCache(*att.cache, att.grant, off + offset / kPageSize,
                   off + (offset + len + kPageSize - 1) / kPageSize);
}

absl::Status FaultService::SyncCache(SegmentCache& c, uint64_t grant, uint64_t p0, uint64_t p1) {
  absl::Status lost;
  absl::Status still_kept;  // EAGAIN: a window held kept-aside writes past the budget
  absl::Time deadline = clock_->Now() + absl::Seconds(10);
  // Rounds: a round whose write-back a newer copy superseded (a store or a
  // window took a page while the home kept refusing) runs again, bounded,
  // and writes the newest contents.
  while (true) {
    std::vector<std::pair<uint64_t, uint64_t>> runs;  // [first page, count)
    uint64_t epoch;
    {
      absl::MutexLock lock(&c.mu);
      // Writes kept aside by an open window are written back (or found
      // lost, or put back dirty) when it ends: wait for that, bounded, so
      // that sync reports them — until the window's end has settled them,
      // not only taken them out of kept_aside to write them back. A page
      // in kept_writing is waited for whether or not a window is still
      // open: it is a write on its way to the home, whatever opened it.
      // (EndWindow closes its window only after settling them, so today
      // one is; the sync does not rely on that order — issue 14.)
      auto kept_in_window = [&c, p0, p1]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu) {
        auto w = c.kept_writing.lower_bound(p0);
        if (w != c.kept_writing.end() && *w < p1) return true;
        if (c.windows.empty()) return false;
        auto k = c.kept_aside.lower_bound(p0);
        return k != c.kept_aside.end() && k->first < p1;
      };
      // Pages another thread's write-back has in flight (the evictor's
      // sync, another client thread's, a detach racing a sync): this sync
      // would skip them (they are not kDirty) and return while they are
      // on their way — a detach then returned before its write landed
      // (issue 16). Wait until that write-back settles them: kClean
      // (landed), or kDirty again (failed or superseded), which this sync
      // then takes and writes or reports. O(pages) under the lock, like
      // the scan for dirty pages below; sync is not the fault path.
      auto writing = [&c, p0, p1]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu) {
        for (uint64_t p = p0; p < p1; ++p)
          if (c.state[p] == PageState::kWriteback) return true;
        return false;
      };
      while ((kept_in_window() || writing()) && !c.revoked && clock_->Now() < deadline) {
        c.mu.Unlock();
        // Held here (tests), no lock held: waiting for a window's end or
        // for another thread's write-back.
        TETHER_FAULT_POINT("fault_service.sync.wait_kept_aside");
        absl::SleepFor(absl::Milliseconds(1));
        c.mu.Lock();
      }
      // Still kept aside: not at the home, so this sync cannot say OK
      // (docs/consistency.md, EAGAIN). The window's end writes them back.
      if (kept_in_window() && still_kept.ok())
        still_kept = ErrnoStatus(EAGAIN,
                                 "writes kept aside by an invalidation window open for more than "
                                 "10 s are not at the home yet; written back when it ends");
      if (writing() && still_kept.ok())
        still_kept = ErrnoStatus(EAGAIN,
                                 "another write-back of these pages has been in flight for more "
                                 "than 10 s; they are not known to be at the home yet");
      if (c.revoked) {
        absl::Status st = TakeLost(c);
        return st.ok() ? ErrnoStatus(EIDRM, "attachment revoked (" + c.revoke_reason + ")") : st;
      }
      if (lost.ok()) lost = TakeLost(c);
      for (uint64_t p = p0; p < p1;) {
        if (c.state[p] != PageState::kDirty) {
          ++p;
          continue;
        }
        uint64_t q = p;
        while (q < p1 && c.state[q] == PageState::kDirty) {
          c.state[q] = PageState::kWriteback;
          ++q;
        }
        // Protect before reading, in every mapping of the page: a store
        // from now on, through any of them, faults and re-dirties.
        ProtectEverywhere(c, p, q);
        c.dirty -= q - p;
        runs.emplace_back(p, q - p);
        p = q;
      }
      epoch = c.wb_epoch;
    }
    bool superseded = false;
    absl::Status result = WriteBackRuns(c, grant, runs, epoch, &superseded);
    if (superseded && result.ok() && clock_->Now() < deadline) continue;
    if (superseded && result.ok())
      result = ErrnoStatus(EAGAIN, "write-back kept being superseded; pages stay dirty");
    {
      // Pages this round's write-back found gone at the home (ENXIO).
      absl::MutexLock lock(&c.mu);
      if (lost.ok()) lost = TakeLost(c);
    }
    if (result.ok()) result = still_kept;
    if (lost.ok()) return result;
    if (result.ok()) return lost;
    // Both: the failure is what the caller must act on (its pages stay
    // dirty); the loss is reported in the same message, not dropped.
    return WithErrno(ToErrno(result), absl::StrCat(result.message(), "; also ", lost.message()));
  }
}

void FaultService::EncodeDiff(const std::vector<TwinStore::Twin>& twins,
                              absl::Span<const uint8_t> pages, std::vector<uint8_t>* diff) const {
  for (size_t i = 0; i < twins.size(); ++i) {
    const uint8_t* page = pages.data() + i * kPageSize;
    if (twins[i] && !whole_pages_) {
      AppendPageDiff(static_cast<uint32_t>(i), twins[i].get(), page, diff);
    } else {
      AppendWholePage(static_cast<uint32_t>(i), page, diff);
    }
  }
}

absl::Status FaultService::WriteBackRuns(SegmentCache& c, uint64_t grant,
                                         const std::vector<std::pair<uint64_t, uint64_t>>& runs,
                                         uint64_t epoch, bool* superseded) {
  absl::Status result;
  std::vector<uint8_t> buf, diff;
  std::vector<TwinStore::Twin> twins;
  uint64_t dropped = 0;
  int64_t twin_delta = 0;
  // A run the home finds gone (ENXIO) may be gone only in part (an unmap
  // of some of its pages): it is sent again page by page, so that only
  // the pages whose address is gone are counted lost. A diff spans at most
  // kMaxDiffPages pages from its offset: longer runs go in pieces.
  std::vector<std::pair<uint64_t, uint64_t>> work;
  for (auto [p, count] : runs)
    for (uint64_t q = p; q < p + count; q += kMaxDiffPages)
      work.emplace_back(q, std::min<uint64_t>(kMaxDiffPages, p + count - q));
  for (size_t r = 0; r < work.size(); ++r) {
    auto [p, count] = work[r];
    buf.resize(count * kPageSize);
    ssize_t got = pread(c.memfd, buf.data(), buf.size(), c.Off(p));
    absl::Status st;
    bool run_superseded = false;
    if (got != static_cast<ssize_t>(buf.size())) {
      st = ErrnoStatus(got < 0 ? errno : EIO, "read back dirty pages");
    } else {
      // Only the bytes that differ from the twins go (twin_store.h): the
      // home keeps what other writers stored in the rest of the pages.
      // Twins are never changed in place: diffed without the lock.
      twins.clear();
      {
        absl::MutexLock lock(&c.mu);
        for (uint64_t q = p; q < p + count; ++q) twins.push_back(c.twins.Get(q));
      }
      diff.clear();
      EncodeDiff(twins, buf, &diff);
      // Nothing differs (stores of the bytes already there): nothing to send.
      if (!diff.empty()) st = WriteBackPages(c, grant, p, diff, &epoch, &run_superseded);
    }
    bool gone = IsGoneAtHome(st);
    if (gone && count > 1) {
      for (uint64_t q = p; q < p + count; ++q) work.emplace_back(q, 1);
      continue;
    }
    if (gone) {
      // Not an error of this sync: the exporter unmapped the memory, so
      // there is nothing to write to (the contract holds while the address
      // exists). Counted lost below and reported as such (EIO).
      TLOG_INFO("segment %#x: write-back of page %d: %s", c.segid, p, st.message());
    } else if (run_superseded) {
      *superseded = true;  // not an error: a later round or the window writes it
    } else if (!st.ok() && result.ok()) {
      result = st;
    }
    // Settled run by run: a page re-dirtied while its write landed takes
    // the bytes sent as its twin, and `buf` holds them only until the
    // next run.
    absl::MutexLock lock(&c.mu);
    for (uint64_t q = p; q < p + count; ++q) {
      if (gone && c.state[q] == PageState::kDirty) {
        // Re-dirtied while the refused write was on its way: the store is
        // on the same copy of the gone mapping, so it goes too — and the
        // loss is reported now, not hidden behind this sync's OK.
        c.state[q] = PageState::kWriteback;
        --c.dirty;
      }
      if (c.state[q] != PageState::kWriteback) {
        // Re-dirtied, or taken by a window. If this write landed, the
        // home has these bytes now: the next diff (the next sync's, or
        // the window's kept-aside write-back) is against them, so that a
        // byte stored back to its old value since is sent too.
        if (st.ok() && (c.state[q] == PageState::kDirty || c.kept_aside.contains(q)))
          twin_delta += c.twins.Set(q, buf.data() + (q - p) * kPageSize);
        continue;
      }
      if (gone) {
        // Dropped: the client's next access fetches what the home has
        // there now (or faults on nothing mapped), not this copy. A store
        // that re-dirtied it left its mm's PTE unprotected: protect it
        // first, so that the punch leaves a marker there (attachment.h).
        ProtectEverywhere(c, q, q + 1);
        PunchHole(c.memfd, c.Off(q), kPageSize);
        c.state[q] = PageState::kAbsent;
        --c.resident;
        ++dropped;
        ++c.lost_pages;
        twin_delta += c.twins.Drop(q);
      } else if (st.ok()) {
        // Clean and write-protected: the next store takes a new twin.
        c.state[q] = PageState::kClean;
        twin_delta += c.twins.Drop(q);
      } else {
        c.state[q] = PageState::kDirty;  // keep it (and its twin): a later sync retries
        ++c.dirty;
      }
    }
  }
  // Twins count against the cache budget (twin_store.h).
  resident_pages_ += static_cast<uint64_t>(twin_delta);
  resident_pages_ -= dropped;
  return result;
}

absl::Status FaultService::WriteBackPages(SegmentCache& c, uint64_t grant, uint64_t first,
                                          absl::Span<const uint8_t> diff, const uint64_t* epoch,
                                          bool* superseded) {
  // The home refuses writes inside one of its windows (Retry): retry for
  // a bounded time, since windows close within the ack deadline.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    // Held here (tests), no lock held: the write-back is about to be sent.
    TETHER_FAULT_POINT("fault_service.writeback.before_send");
    absl::Status st = data_->WriteDiffSync(c.home, c.segid, grant, first * kPageSize, diff);
    if (st.ok() || !IsRetry(st) || absl::Now() > deadline) return st;
    // Held here (tests), no lock held: the home refused, not yet retried.
    TETHER_FAULT_POINT("fault_service.writeback.before_retry");
    if (epoch) {
      // A sync's copy: a store or a window may have made a newer one
      // since (the home's window usually means ours opens too). Sending
      // this one after that would land older contents over newer.
      absl::MutexLock lock(&c.mu);
      if (c.wb_epoch != *epoch) {
        *superseded = true;
        return st;
      }
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
}

}  // namespace tether
