#include "daemon/common/interval_set.h"

#include <algorithm>

namespace tether {

void IntervalSet::Add(uint64_t start, uint64_t end) {
  if (start >= end) return;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= start) {  // touches or overlaps the previous one
      start = prev->first;
      end = std::max(end, prev->second);
      it = map_.erase(prev);
    }
  }
  while (it != map_.end() && it->first <= end) {
    end = std::max(end, it->second);
    it = map_.erase(it);
  }
  map_.emplace(start, end);
}

void IntervalSet::Remove(uint64_t start, uint64_t end) {
  if (start >= end) return;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second > start) {
      uint64_t pstart = prev->first, pend = prev->second;
      map_.erase(prev);
      if (pstart < start) map_.emplace(pstart, start);
      if (pend > end) map_.emplace(end, pend);
      it = map_.upper_bound(start);
    }
  }
  while (it != map_.end() && it->first < end) {
    uint64_t iend = it->second;
    it = map_.erase(it);
    if (iend > end) {
      map_.emplace(end, iend);
      break;
    }
  }
}

bool IntervalSet::Contains(uint64_t start, uint64_t end) const {
  if (start >= end) return true;
  auto it = map_.upper_bound(start);
  if (it == map_.begin()) return false;
  --it;
  return it->first <= start && it->second >= end;
}

bool IntervalSet::Overlaps(uint64_t start, uint64_t end) const {
  if (start >= end) return false;
  auto it = map_.lower_bound(end);  // first interval starting at/after end
  if (it == map_.begin()) return false;
  --it;
  return it->second > start;
}

std::vector<IntervalSet::Interval> IntervalSet::Intersect(uint64_t start, uint64_t end) const {
  std::vector<Interval> out;
  if (start >= end) return out;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) --it;
  for (; it != map_.end() && it->first < end; ++it) {
    uint64_t s = std::max(start, it->first), e = std::min(end, it->second);
    if (s < e) out.emplace_back(s, e);
  }
  return out;
}

uint64_t IntervalSet::TotalLength() const {
  uint64_t total = 0;
  for (const auto& [s, e] : map_) total += e - s;
  return total;
}

std::vector<IntervalSet::Interval> IntervalSet::ToVector() const {
  return std::vector<Interval>(map_.begin(), map_.end());
}

}  // namespace tether
