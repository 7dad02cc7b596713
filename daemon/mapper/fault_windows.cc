// FaultService, windows: range_begin and range_end over an attachment's
// pages (the mapper's side of the invalidation contract, G1 and G5), a
// revocation (fenced, or the exporter gone), and Acquire (drop clean
// copies so that the next access refetches).
#include "daemon/mapper/fault_service.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/mapper/mapper_metrics.h"
#include "daemon/mapper/mapping_ops.h"

namespace tether {

using mapping_ops::PunchHole;
using mapping_ops::Wake;

void FaultService::BeginWindow(SegmentCache& c, uint64_t key, uint64_t p0, uint64_t p1) {
  uint64_t dropped = 0, twins_dropped = 0;
  {
    absl::MutexLock lock(&c.mu);
    p0 = std::max(p0, c.first());
    p1 = std::min(p1, c.end());
    if (c.revoked || p0 >= p1) return;
    c.windows[key] = {p0, p1};
    ++c.inval_gen;
    c.recent_begins.push_back({c.inval_gen, p0, p1});
    if (c.recent_begins.size() > SegmentCache::kRecentBegins) c.recent_begins.pop_front();
    auto installed = [](PageState s) {
      return s == PageState::kClean || s == PageState::kDirty || s == PageState::kWriteback;
    };
    std::string page(kPageSize, '\0');
    for (uint64_t p = p0; p < p1;) {
      if (!installed(c.state[p])) {
        ++p;
        continue;
      }
      uint64_t q = p;
      bool dirty = false;
      while (q < p1 && installed(c.state[q])) dirty |= c.state[q++] != PageState::kClean;
      // Protect before reading, as write-back does, in every mapping: a
      // store from now on faults, finds the page absent and waits for the
      // window; after it the page is fetched again — with the kept-aside
      // bytes, which EndWindow writes back before it wakes the range — and
      // the store lands on that. Without this a store between the read and
      // the punch would be lost. (It also leaves each mapping's PTE a
      // marker after the punch: attachment.h.)
      if (dirty) ProtectEverywhere(c, p, q);
      for (uint64_t r = p; r < q; ++r) {
        if (c.state[r] != PageState::kClean) {
          // Dirty data is never dropped while the address exists: keep it
          // aside, write it back after the window (G5: never inside it).
          if (pread(c.memfd, page.data(), kPageSize, c.Off(r)) == static_cast<ssize_t>(kPageSize)) {
            c.kept_aside[r] = page;
          } else {
            TLOG_WARN("segment %#x: read of dirty page %d for range_begin: %s", c.segid, r,
                      std::strerror(errno));
            ++c.lost_pages;                            // reported by the next sync, never silently
            if (c.twins.Drop(r) < 0) ++twins_dropped;  // twins count against the budget
          }
          if (c.state[r] == PageState::kDirty) --c.dirty;
          if (c.state[r] == PageState::kWriteback) ++c.wb_epoch;  // the window's copy is newer
        }
        c.state[r] = PageState::kAbsent;
      }
      // Held here (tests) with c.mu held: the dirty pages are read, not
      // yet punched out.
      TETHER_FAULT_POINT("fault_service.begin_window.after_read");
      // Out of every mapping at once: one page cache.
      PunchHole(c.memfd, c.Off(p), (q - p) * kPageSize);
      dropped += q - p;
      p = q;
    }
    c.resident -= dropped;
  }
  resident_pages_ -= dropped + twins_dropped;
}

void FaultService::Suspend(SegmentCache& c) {
  uint64_t p0, p1;
  {
    absl::MutexLock lock(&c.mu);
    p0 = c.first();
    p1 = c.end();
  }
  BeginWindow(c, kSuspendWindow, p0, p1);
}

absl::Status FaultService::Resume(SegmentCache& c, bool all) {
  std::vector<uint64_t> keys;
  {
    absl::MutexLock lock(&c.mu);
    for (const auto& [key, range] : c.windows)
      if (all && key != kSuspendWindow) keys.push_back(key);
  }
  // The old windows first (their pages written back while the suspension
  // still holds faults), the suspension last.
  absl::Status result;
  for (uint64_t key : keys) {
    absl::Status st = EndWindow(c, key, {});
    if (!st.ok()) result = st;
  }
  absl::Status st = EndWindow(c, kSuspendWindow, {});
  return st.ok() ? result : st;
}

absl::Status FaultService::EndWindow(SegmentCache& c, uint64_t key,
                                     const std::vector<std::pair<uint64_t, uint64_t>>& gone) {
  std::vector<std::pair<uint64_t, std::string>> writeback;
  uint64_t p0, p1, grant;
  int64_t twin_delta = 0;
  {
    absl::MutexLock lock(&c.mu);
    grant = c.write_grant;
    auto it = c.windows.find(key);
    if (it == c.windows.end()) return absl::OkStatus();  // duplicate or unknown
    p0 = it->second.first;
    p1 = it->second.second;
    for (auto k = c.kept_aside.lower_bound(p0); k != c.kept_aside.end() && k->first < p1;) {
      bool is_gone = false;
      for (const auto& g : gone) is_gone |= k->first >= g.first && k->first < g.second;
      if (is_gone) {
        ++c.lost_pages;
        twin_delta += c.twins.Drop(k->first);
      } else if (c.InOtherWindow(k->first, key)) {
        // Another window over the page is still open (range_begin of a
        // later event came first): the home refuses writes there, and
        // that event may replace or unmap the page. Its range_end decides.
        ++k;
        continue;
      } else {
        c.kept_writing.insert(k->first);  // a sync waits for it (fault_writeback.cc)
        writeback.emplace_back(k->first, std::move(k->second));
      }
      k = c.kept_aside.erase(k);
    }
  }
  // Written back before the range reopens, so that our next fault fetches
  // contents that include our own writes.
  absl::Status result;
  std::vector<std::pair<uint64_t, std::string>> failed;
  uint64_t unmapped = 0;
  std::vector<uint64_t> landed;
  std::vector<uint8_t> diff;
  for (size_t i = 0; i < writeback.size(); ++i) {
    auto& [p, bytes] = writeback[i];
    // A diff against the page's twin (kept with it while it was aside),
    // as every write-back: only the bytes this node changed since it
    // fetched the page go, so that what other writers (other nodes, the
    // exporter) stored in the rest of the page meanwhile survives. Before
    // issue 16's last part it went whole, because the window's change may
    // have replaced the home's bytes (DONTNEED zeroes them, a remap maps
    // others) — but the change came after the client's stores, so the
    // home's new bytes are the newer ones wherever the client did not
    // store: a diff is what true sharing would leave (the client's
    // changed bytes over the new page), where the whole page put the old
    // contents back over the change. A store of a byte's own old value is
    // no change and is not sent (docs/consistency.md).
    TwinStore::Twin twin;
    {
      absl::MutexLock lock(&c.mu);
      twin = c.twins.Get(p);
    }
    diff.clear();
    EncodeDiff({twin},
               absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes.data()), kPageSize),
               &diff);
    absl::Status st = diff.empty() ? absl::OkStatus() : WriteBackPages(c, grant, p, diff);
    if (st.ok()) landed.push_back(p);
    if (IsGoneAtHome(st)) {
      // The home refused it: the exporter unmapped the address since this
      // copy was read (a later change that did not ask this node, while
      // the write-back waited). Nothing to write to; counted lost, as a
      // page in `gone` is, and not put back (issue 14).
      TLOG_INFO("segment %#x: kept-aside page %d: %s", c.segid, p, st.message());
      ++unmapped;
      landed.push_back(p);  // no twin needed any more either
    } else if (!st.ok()) {
      TLOG_WARN("segment %#x: write-back of kept-aside page %d after a window: %s", c.segid, p,
                st.ToString());
      failed.emplace_back(p, std::move(bytes));
      if (result.ok()) result = st;
    }
  }
  uint64_t redirtied = 0;
  absl::MutexLock lock(&c.mu);
  for (const auto& [p, bytes] : writeback) c.kept_writing.erase(p);  // settled below
  c.lost_pages += unmapped;                                          // reported by the next sync
  for (uint64_t p : landed) twin_delta += c.twins.Drop(p);

  for (auto& [p, bytes] : failed) {
    // Not at the home. Refetching the page from there would hide the
    // client's writes from it, and writing this copy later would land it
    // over whatever the client stores after the range reopens. So it goes
    // back into the client's page, dirty, before the range reopens: the
    // client reads its own writes, and the next Sync writes the page back
    // (newest contents) or reports the failure. Another window open over
    // the page keeps it aside for its own end instead.
    // (Its twin stays: the page is still dirty against it.)
    if (c.revoked) {
      ++c.lost_pages;  // the revocation reports it
    } else if (c.InOtherWindow(p, key)) {
      c.kept_aside[p] = std::move(bytes);
    } else if (c.state[p] == PageState::kAbsent &&
               pwrite(c.memfd, bytes.data(), kPageSize, c.Off(p)) ==
                   static_cast<ssize_t>(kPageSize)) {
      c.state[p] = PageState::kDirty;
      ++c.dirty;
      ++c.resident;
      ++redirtied;
    } else {
      TLOG_WARN("segment %#x: kept-aside page %d could not be put back: %s", c.segid, p,
                std::strerror(errno));
      ++c.lost_pages;  // reported by the next sync
      twin_delta += c.twins.Drop(p);
    }
  }
  resident_pages_ += redirtied + static_cast<uint64_t>(twin_delta);
  c.windows.erase(key);
  WakeEverywhere(c, p0, p1, nullptr);
  return result;
}

bool FaultService::EndWindowIfNothingToWriteBack(SegmentCache& c, uint64_t key) {
  absl::MutexLock lock(&c.mu);
  auto it = c.windows.find(key);
  if (it == c.windows.end()) return true;  // duplicate or unknown
  const auto [p0, p1] = it->second;
  // Under c.mu, as BeginWindow keeps pages aside and EndWindow moves them
  // to kept_writing: nothing can join either set between this check and
  // the window's end. A page still being written back by an older window's
  // end keeps that window open meanwhile (EndWindow erases its window
  // last), so its faults keep waiting whatever this window does; waiting
  // for it here anyway keeps the two ends in order.
  auto aside = c.kept_aside.lower_bound(p0);
  if (aside != c.kept_aside.end() && aside->first < p1) return false;
  auto writing = c.kept_writing.lower_bound(p0);
  if (writing != c.kept_writing.end() && *writing < p1) return false;
  c.windows.erase(it);
  WakeEverywhere(c, p0, p1, nullptr);
  return true;
}

absl::Status FaultService::Acquire(Attachment& att, uint64_t offset, uint64_t len) {
  if (offset > att.size || len > att.size - offset)
    return ErrnoStatus(EINVAL, "acquire range outside the attachment");
  SegmentCache& c = *att.cache;
  const uint64_t off = att.first_page();
  uint64_t p0 = off + offset / kPageSize, p1 = off + (offset + len + kPageSize - 1) / kPageSize;
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&c.mu);
    for (uint64_t p = p0; p < p1;) {
      if (c.state[p] != PageState::kClean) {
        ++p;
        continue;
      }
      uint64_t q = p;
      while (q < p1 && c.state[q] == PageState::kClean) c.state[q++] = PageState::kAbsent;
      PunchHole(c.memfd, c.Off(p), (q - p) * kPageSize);
      dropped += q - p;
      p = q;
    }
    c.resident -= dropped;
  }
  resident_pages_ -= dropped;
  return absl::OkStatus();
}

void FaultService::Revoke(Attachment& att, const std::string& why) {
  SegmentCache& c = *att.cache;
  uint64_t dropped;
  absl::MutexLock lock(&c.mu);
  if (c.revoked) return;
  c.revoked = true;
  c.revoke_reason = why;
  Mapper().revoked_copies->Add();
  for (PageState st : c.state)
    if (st == PageState::kDirty || st == PageState::kWriteback) ++c.lost_pages;
  c.lost_pages += c.kept_aside.size();
  c.kept_aside.clear();
  c.windows.clear();
  dropped = c.resident + c.twins.Clear();  // twins count too (twin_store.h)
  c.resident = 0;
  c.dirty = 0;
  std::fill(c.state.begin(), c.state.end(), PageState::kAbsent);
  // Truncating the memfd makes every access raise SIGBUS, held pages too,
  // in every attachment of the cache.
  if (ftruncate(c.memfd, 0) != 0) TLOG_WARN("revoke: ftruncate: %s", std::strerror(errno));
  resident_pages_ -= dropped;
  WakeEverywhere(c, c.first(), c.end(), nullptr);
}

}  // namespace tether
