// FaultService, sync and write-back: dirty pages are write-protected again
// before they are read from the memfd and sent to the home, so that a
// store racing the write-back re-dirties its page instead of being lost;
// a home's "retry" (a window there) is retried for a bounded time.
#include "daemon/mapper/fault_service.h"

#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/mapper/mapping_ops.h"

namespace tether {

using mapping_ops::WriteProtect;

absl::Status FaultService::Sync(Attachment& att, uint64_t offset, uint64_t len) {
  if (offset > att.size || len > att.size - offset)
    return ErrnoStatus(EINVAL, "sync range outside the attachment");
  if (!att.writable) return absl::OkStatus();
  uint64_t p0 = offset / kPageSize, p1 = (offset + len + kPageSize - 1) / kPageSize;
  uint64_t base = att.vaddr.load();
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
      absl::MutexLock lock(&att.mu);
      // Writes kept aside by an open window are written back (or found
      // lost, or put back dirty) when it ends: wait for that, bounded, so
      // that sync reports them — until the window's end has settled them,
      // not only taken them out of kept_aside to write them back.
      auto kept_in_window = [&att, p0, p1]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(att.mu) {
        if (att.windows.empty()) return false;
        auto k = att.kept_aside.lower_bound(p0);
        if (k != att.kept_aside.end() && k->first < p1) return true;
        auto w = att.kept_writing.lower_bound(p0);
        return w != att.kept_writing.end() && *w < p1;
      };
      while (kept_in_window() && clock_->Now() < deadline) {
        att.mu.Unlock();
        // Held here (tests), no lock held: waiting for a window's end.
        TETHER_FAULT_POINT("fault_service.sync.wait_kept_aside");
        absl::SleepFor(absl::Milliseconds(1));
        att.mu.Lock();
      }
      // Still kept aside: not at the home, so this sync cannot say OK
      // (docs/consistency.md, EAGAIN). The window's end writes them back.
      if (kept_in_window() && still_kept.ok())
        still_kept = ErrnoStatus(EAGAIN,
                                 "writes kept aside by an invalidation window open for more than "
                                 "10 s are not at the home yet; written back when it ends");
      if (att.revoked) {
        std::string msg = "attachment revoked (" + att.revoke_reason + ")";
        if (att.lost_pages > 0)
          msg += absl::StrFormat(": %d page(s) of writes not yet synced were discarded",
                                 att.lost_pages);
        att.lost_pages = 0;
        return ErrnoStatus(EIDRM, msg);
      }
      if (att.lost_pages > 0) {
        lost =
            ErrnoStatus(EIO, absl::StrFormat("%d page(s) of writes not yet synced were discarded: "
                                             "the exporter unmapped that memory",
                                             att.lost_pages));
        att.lost_pages = 0;
      }
      for (uint64_t p = p0; p < p1;) {
        if (att.state[p] != PageState::kDirty) {
          ++p;
          continue;
        }
        uint64_t q = p;
        while (q < p1 && att.state[q] == PageState::kDirty) {
          att.state[q] = PageState::kWriteback;
          ++q;
        }
        // Protect before reading: a store from now on faults and re-dirties.
        WriteProtect(att.uffd, base + p * kPageSize, (q - p) * kPageSize, true);
        att.dirty -= q - p;
        runs.emplace_back(p, q - p);
        p = q;
      }
      epoch = att.wb_epoch;
    }
    bool superseded = false;
    absl::Status result = WriteBackRuns(att, runs, epoch, &superseded);
    if (superseded && result.ok() && clock_->Now() < deadline) continue;
    if (superseded && result.ok())
      result = ErrnoStatus(EAGAIN, "write-back kept being superseded; pages stay dirty");
    if (!lost.ok()) return lost;
    return result.ok() ? still_kept : result;
  }
}

absl::Status FaultService::WriteBackRuns(Attachment& att,
                                         const std::vector<std::pair<uint64_t, uint64_t>>& runs,
                                         uint64_t epoch, bool* superseded) {
  absl::Status result;
  std::vector<uint8_t> buf;
  std::vector<bool> ok(runs.size(), false);
  for (size_t r = 0; r < runs.size(); ++r) {
    auto [p, count] = runs[r];
    buf.resize(count * kPageSize);
    ssize_t got = pread(att.memfd, buf.data(), buf.size(), static_cast<off_t>(p * kPageSize));
    absl::Status st;
    bool run_superseded = false;
    if (got != static_cast<ssize_t>(buf.size())) {
      st = ErrnoStatus(got < 0 ? errno : EIO, "read back dirty pages");
    } else {
      st = WriteBackPages(att, p, buf, &epoch, &run_superseded);
    }
    ok[r] = st.ok();
    if (run_superseded) {
      *superseded = true;  // not an error: a later round or the window writes it
    } else if (!st.ok() && result.ok()) {
      result = st;
    }
  }
  absl::MutexLock lock(&att.mu);
  for (size_t r = 0; r < runs.size(); ++r) {
    for (uint64_t p = runs[r].first; p < runs[r].first + runs[r].second; ++p) {
      if (att.state[p] != PageState::kWriteback) continue;  // re-dirtied, or taken by a window
      if (ok[r]) {
        att.state[p] = PageState::kClean;
      } else {
        att.state[p] = PageState::kDirty;  // keep it: a later sync retries
        ++att.dirty;
      }
    }
  }
  return result;
}

absl::Status FaultService::WriteBackPages(Attachment& att, uint64_t first,
                                          absl::Span<const uint8_t> data, const uint64_t* epoch,
                                          bool* superseded) {
  // The home refuses writes inside one of its windows (Retry): retry for
  // a bounded time, since windows close within the ack deadline.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    // Held here (tests), no lock held: the write-back is about to be sent.
    TETHER_FAULT_POINT("fault_service.writeback.before_send");
    absl::Status st =
        data_->WriteSync(att.home, att.segid, att.grant, att.seg_offset + first * kPageSize, data);
    if (st.ok() || !IsRetry(st) || absl::Now() > deadline) return st;
    // Held here (tests), no lock held: the home refused, not yet retried.
    TETHER_FAULT_POINT("fault_service.writeback.before_retry");
    if (epoch) {
      // A sync's copy: a store or a window may have made a newer one
      // since (the home's window usually means ours opens too). Sending
      // this one after that would land older contents over newer.
      absl::MutexLock lock(&att.mu);
      if (att.wb_epoch != *epoch) {
        *superseded = true;
        return st;
      }
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
}

}  // namespace tether
