// SegmentRegistry, its invalidation side: windows over segment ranges
// (while one is open no read or write of the range is served), the ranges
// each node has cached (marked before the read, G3), the recent-window log
// that brackets reads (G5), and fencing. docs/architecture.md, "The
// invalidation contract".
#include "daemon/home/segment_registry.h"

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {
bool Overlap(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1) { return a0 < b1 && b0 < a1; }
// The log of recent windows that OpenedSince() consults.
constexpr size_t kRecentWindows = 64;
}  // namespace

bool SegmentRegistry::OpenedSince(uint64_t segid, uint64_t gen, uint64_t start, uint64_t end) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return true;
  const Segment& seg = *it->second;
  if (seg.gen == gen) return false;
  // The log holds the last kRecentWindows; older ones answer "yes".
  if (seg.recent.empty() || seg.recent.front().gen > gen + 1) return true;
  for (const auto& w : seg.recent)
    if (w.gen > gen && Overlap(start, end, w.start, w.end)) return true;
  return false;
}

absl::StatusOr<OpenedWindow> SegmentRegistry::OpenWindow(uint64_t segid, uint64_t start,
                                                         uint64_t end) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x", segid));
  Segment* seg = it->second.get();
  start = std::min(start, seg->size);
  end = std::min(end, seg->size);
  if (start >= end) return ErrnoStatus(EINVAL, "empty invalidation range");
  OpenedWindow w;
  w.id = next_window_++;
  ++seg->gen;
  seg->recent.push_back({seg->gen, start, end});
  if (seg->recent.size() > kRecentWindows) seg->recent.erase(seg->recent.begin());
  for (auto& [node, set] : seg->cached) {
    if (set.Overlaps(start, end)) {
      w.nodes.push_back(node);
      set.Remove(start, end);
    }
  }
  // An overlapping window still open cleared the marks of the nodes it
  // asked, which may hold their copies until they answer it (a frozen
  // node, a slow link): without them this window could end at once and
  // its change complete while they still read the old contents (G1).
  // Fenced nodes are left out: the fence's lease wait (or, without
  // leases, the documented gap of G2) covers what they hold.
  for (const auto& [id, other] : seg->windows) {
    if (!Overlap(start, end, other.start, other.end)) continue;
    for (uint32_t node : other.nodes)
      if (!seg->fenced.contains(node)) w.nodes.push_back(node);
  }
  std::sort(w.nodes.begin(), w.nodes.end());
  w.nodes.erase(std::unique(w.nodes.begin(), w.nodes.end()), w.nodes.end());
  seg->windows.emplace(w.id, Window{start, end, w.nodes});
  return w;
}

void SegmentRegistry::CloseWindow(uint64_t segid, uint64_t window,
                                  const std::vector<std::pair<uint64_t, uint64_t>>& gone) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return;
  for (auto& [id, g] : it->second->grants)
    for (const auto& [g0, g1] : gone) g.unmapped.Add(g0, g1);
  it->second->windows.erase(window);
}

std::vector<std::pair<uint64_t, uint64_t>> SegmentRegistry::WritableCopies(uint64_t segid,
                                                                           uint64_t start,
                                                                           uint64_t end) const {
  IntervalSet held;
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end() || start >= end) return {};
  for (const auto& [id, g] : it->second->grants)
    for (const auto& [c0, c1] : g.copies.Intersect(start, end)) held.Add(c0, c1);
  return held.ToVector();
}

void SegmentRegistry::RecordChange(uint64_t segid, uint64_t start, uint64_t end, bool gone) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return;
  Segment* seg = it->second.get();
  start = std::min(start, seg->size);
  end = std::min(end, seg->size);
  if (start >= end) return;
  // OpenWindow's bookkeeping for OpenedSince, then CloseWindow's.
  ++seg->gen;
  seg->recent.push_back({seg->gen, start, end});
  if (seg->recent.size() > kRecentWindows) seg->recent.erase(seg->recent.begin());
  if (gone)
    for (auto& [id, g] : seg->grants) g.unmapped.Add(start, end);
}

bool SegmentRegistry::WritingOverlaps(const Segment& seg, uint64_t start, uint64_t end) const {
  for (const auto& [token, range] : seg.writing)
    if (Overlap(start, end, range.first, range.second)) return true;
  return false;
}

bool SegmentRegistry::WriteBacksLanded(uint64_t segid, uint64_t start, uint64_t end) const {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  return it == segments_.end() || !WritingOverlaps(*it->second, start, end);
}

bool SegmentRegistry::AwaitWriteBacks(uint64_t segid, uint64_t start, uint64_t end,
                                      absl::Time deadline) {
  // No write-back gets past Resolve into a range while a window is open
  // over it, so the entries waited for are only those that were in flight
  // when the window opened: the wait cannot be starved.
  absl::MutexLock lock(&mu_);
  for (;;) {
    auto it = segments_.find(segid);
    if (it == segments_.end() || !WritingOverlaps(*it->second, start, end)) return true;
    if (write_landed_.WaitWithDeadline(&mu_, deadline)) {
      it = segments_.find(segid);
      return it == segments_.end() || !WritingOverlaps(*it->second, start, end);
    }
  }
}

void SegmentRegistry::FenceNode(uint64_t segid, uint32_t node, const std::string& why) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return;
  Segment* seg = it->second.get();
  seg->fenced[node] = why;
  seg->cached.erase(node);
  size_t revoked = 0;
  for (auto g = seg->grants.begin(); g != seg->grants.end();) {
    if (g->second.node == node) {
      seg->grants.erase(g++);
      ++revoked;
    } else {
      ++g;
    }
  }
  TLOG_WARN("segment %#x: node %d fenced (%s): %d grants revoked", segid, node, why, revoked);
}

std::vector<std::pair<uint64_t, std::string>> SegmentRegistry::FencedSegments(uint32_t node) const {
  std::vector<std::pair<uint64_t, std::string>> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [segid, seg] : segments_) {
    auto it = seg->fenced.find(node);
    if (it != seg->fenced.end()) out.emplace_back(segid, it->second);
  }
  return out;
}

}  // namespace tether
