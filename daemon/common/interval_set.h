// A set of disjoint half-open byte ranges [start, end), kept merged.
// Used for dirty/resident bookkeeping and (later) invalidation windows.
// Not thread-safe: owners guard it with their own lock.
#ifndef TETHER_DAEMON_COMMON_INTERVAL_SET_H_
#define TETHER_DAEMON_COMMON_INTERVAL_SET_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/container/btree_map.h"

namespace tether {

class IntervalSet {
 public:
  using Interval = std::pair<uint64_t, uint64_t>;  // [first, second)

  // Adds [start, end); merges with touching or overlapping intervals.
  void Add(uint64_t start, uint64_t end);
  // Removes [start, end), splitting intervals that straddle its edges.
  void Remove(uint64_t start, uint64_t end);
  bool Contains(uint64_t start, uint64_t end) const;  // fully covered
  bool Overlaps(uint64_t start, uint64_t end) const;
  // The parts of [start, end) that are in the set, in order.
  std::vector<Interval> Intersect(uint64_t start, uint64_t end) const;
  uint64_t TotalLength() const;
  bool empty() const { return map_.empty(); }
  size_t size() const { return map_.size(); }
  void clear() { map_.clear(); }
  std::vector<Interval> ToVector() const;

 private:
  absl::btree_map<uint64_t, uint64_t> map_;  // start -> end
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_INTERVAL_SET_H_
