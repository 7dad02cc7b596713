// FaultService, eviction: past the cache budget the evictor punches clean
// pages out of the attachments' memfds (a clock hand per attachment) down
// to a low-water mark, and writes dirty pages back first so that they can
// go on the next round; it never drops them.
#include "daemon/mapper/fault_service.h"

#include <algorithm>

#include "daemon/common/log.h"
#include "daemon/mapper/mapping_ops.h"

namespace tether {

using mapping_ops::PunchHole;

uint64_t FaultService::EvictClean(Attachment& att, uint64_t want) {
  evictor_role_.AssertHere();
  uint64_t dropped = 0;
  absl::MutexLock lock(&att.mu);
  uint64_t pages = att.pages();
  for (uint64_t scanned = 0; scanned < pages && dropped < want;) {
    uint64_t p = att.evict_hand % pages;
    if (att.state[p] != PageState::kClean) {
      att.evict_hand = p + 1;
      ++scanned;
      continue;
    }
    uint64_t q = p;
    while (q < pages && dropped + (q - p) < want && att.state[q] == PageState::kClean)
      att.state[q++] = PageState::kAbsent;
    PunchHole(att.memfd, p * kPageSize, (q - p) * kPageSize);
    dropped += q - p;
    scanned += q - p;
    att.evict_hand = q;
  }
  att.resident -= dropped;
  return dropped;
}

void FaultService::EvictLoop() {
  evictor_role_.AssertHere();
  const uint64_t low_water = budget_pages_ - budget_pages_ / 8;
  while (true) {
    std::vector<std::shared_ptr<Attachment>> atts;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&evict_wanted_));
      evict_wanted_ = false;
      if (stopping_) return;
      for (auto& [id, a] : atts_) atts.push_back(a);
    }
    for (int round = 0; round < 2 && resident_pages_.load() > low_water; ++round) {
      for (auto& a : atts) {
        uint64_t cur = resident_pages_.load();
        if (cur <= low_water) break;
        uint64_t want = std::min<uint64_t>(cur - low_water, a->pages());
        resident_pages_ -= EvictClean(*a, want);
      }
      if (resident_pages_.load() <= low_water) break;
      // Not enough clean pages: write dirty ones back so they become
      // evictable on the next round. Never drop them.
      for (auto& a : atts) {
        bool has_dirty;
        {
          absl::MutexLock lock(&a->mu);
          has_dirty = a->dirty > 0 && !a->revoked;
        }
        if (!has_dirty) continue;
        absl::Status st = Sync(*a, 0, a->size);
        if (!st.ok())
          TLOG_WARN("evictor: write-back of attachment %d failed: %s", a->id, st.ToString());
      }
    }
  }
}

}  // namespace tether
