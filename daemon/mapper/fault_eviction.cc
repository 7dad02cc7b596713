// FaultService, eviction: past the cache budget the evictor punches clean
// pages out of the caches' memfds (a clock hand per cache; a page leaves
// every attachment that maps it, and counts once) down
// to a low-water mark, and writes dirty pages back first so that they can
// go on the next round; it never drops them.
#include "daemon/mapper/fault_service.h"

#include <algorithm>

#include "daemon/common/log.h"
#include "daemon/mapper/mapper_metrics.h"
#include "daemon/mapper/mapping_ops.h"

namespace tether {

using mapping_ops::PunchHole;

uint64_t FaultService::EvictClean(SegmentCache& c, uint64_t want) {
  evictor_role_.AssertHere();
  uint64_t dropped = 0;
  absl::MutexLock lock(&c.mu);
  const uint64_t pages = c.seg_pages;
  for (uint64_t scanned = 0; scanned < pages && dropped < want;) {
    uint64_t p = c.first() + c.evict_hand % pages;
    if (c.state[p] != PageState::kClean) {
      c.evict_hand = p + 1 - c.first();
      ++scanned;
      continue;
    }
    uint64_t q = p;
    while (q < c.end() && dropped + (q - p) < want && c.state[q] == PageState::kClean)
      c.state[q++] = PageState::kAbsent;
    PunchHole(c.memfd, c.Off(p), (q - p) * kPageSize);
    dropped += q - p;
    scanned += q - p;
    c.evict_hand = q - c.first();
  }
  c.resident -= dropped;
  Mapper().evicted_pages->Add(dropped);
  return dropped;
}

void FaultService::EvictLoop() {
  evictor_role_.AssertHere();
  const uint64_t low_water = budget_pages_ - budget_pages_ / 8;
  while (true) {
    std::vector<std::shared_ptr<SegmentCache>> caches;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&evict_wanted_));
      evict_wanted_ = false;
      if (stopping_) return;
      for (auto& [id, a] : atts_)
        if (std::find(caches.begin(), caches.end(), a->cache) == caches.end())
          caches.push_back(a->cache);
    }
    for (int round = 0; round < 2 && resident_pages_.load() > low_water; ++round) {
      for (auto& c : caches) {
        uint64_t cur = resident_pages_.load();
        if (cur <= low_water) break;
        uint64_t want = std::min<uint64_t>(cur - low_water, c->seg_pages);
        resident_pages_ -= EvictClean(*c, want);
      }
      if (resident_pages_.load() <= low_water) break;
      // Not enough clean pages: write dirty ones back so they become
      // evictable on the next round. Never drop them.
      for (auto& c : caches) {
        bool has_dirty;
        uint64_t grant;
        {
          absl::MutexLock lock(&c->mu);
          has_dirty = c->dirty > 0 && !c->revoked;
          grant = c->write_grant;
        }
        if (!has_dirty) continue;
        absl::Status st = SyncCache(*c, grant, c->first(), c->end());
        if (!st.ok())
          TLOG_WARN("evictor: write-back of segment %#x failed: %s", c->segid, st.ToString());
      }
    }
  }
}

}  // namespace tether
