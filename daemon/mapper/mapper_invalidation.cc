#include "daemon/mapper/mapper_invalidation.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/clock.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"
#include "daemon/common/thread_name.h"
#include "daemon/mapper/mapper_metrics.h"

namespace tether {

MapperInvalidation::~MapperInvalidation() { Stop(); }

void MapperInvalidation::Start() {
  queueing_ = true;
  thread_ = std::thread([this] {
    NameThisThread("tt-ends");
    RunEnds();
  });
}

void MapperInvalidation::Stop() {
  queueing_ = false;
  ends_.Stop();
  if (thread_.joinable()) thread_.join();
  // Pushed before the queue stopped, never popped: applied here, in order
  // (no dirty data is dropped at shutdown).
  for (const InvalidationNotice& n : ends_.TakeAll()) (void)Apply(n);
}

void MapperInvalidation::RunEnds() {
  while (std::optional<InvalidationNotice> n = ends_.Pop()) (void)Apply(*n);
}

absl::Status MapperInvalidation::Handle(const InvalidationNotice& n) {
  // END: ended here if no cache has anything to write back for it (it
  // waits for nothing: the common case costs no thread hop), else queued
  // and applied on our thread (see the header). A refused push (stopping)
  // is applied here instead.
  if (n.kind == InvalidationNotice::Kind::kEnd && queueing_) {
    if (EndWithoutWriteBack(n)) {
      Mapper().notices_end->Add();
      return absl::OkStatus();
    }
    if (ends_.Push(n)) return absl::OkStatus();
  }
  return Apply(n);
}

uint64_t MapperInvalidation::WindowKey(const InvalidationNotice& n) {
  // Windows are keyed by segid and window id: segids are unique across the
  // cluster and window ids per segment's home.
  return (n.segid * 0x9e3779b97f4a7c15ull) ^ n.window;
}

std::vector<std::shared_ptr<SegmentCache>> MapperInvalidation::CachesOf(uint64_t segid) {
  // The segment's attachments on this node share one (attachment.h), or
  // have one each on a kernel that cannot share.
  std::vector<std::shared_ptr<SegmentCache>> caches;
  for (const auto& att : attachments_->Of(segid))
    if (std::find(caches.begin(), caches.end(), att->cache) == caches.end())
      caches.push_back(att->cache);
  return caches;
}

bool MapperInvalidation::EndWithoutWriteBack(const InvalidationNotice& n) {
  const uint64_t key = WindowKey(n);
  bool all = true;
  // A cache that has write-backs keeps its window for Apply, on our
  // thread; the others are ended already, and Apply finds them so.
  for (const auto& c : CachesOf(n.segid)) all &= faults_->EndWindowIfNothingToWriteBack(*c, key);
  return all;
}

absl::Status MapperInvalidation::Apply(const InvalidationNotice& n) {
  const uint64_t key = WindowKey(n);
  absl::Status result;
  absl::Time t0 = absl::Now();
  // Segment pages (the cache's), clipped to the segment by the cache.
  const uint64_t p0 = n.start / kPageSize, p1 = (n.end + kPageSize - 1) / kPageSize;
  if (n.kind == InvalidationNotice::Kind::kRevoke) {
    for (const auto& att : attachments_->Of(n.segid))
      faults_->Revoke(*att, n.reason.empty() ? "revoked by the home" : n.reason);
  } else if (p0 < p1) {
    for (const auto& cache : CachesOf(n.segid)) {  // once per cache, not per attachment
      SegmentCache& c = *cache;
      if (n.kind == InvalidationNotice::Kind::kBegin) {
        faults_->BeginWindow(c, key, p0, p1);
        continue;
      }
      std::vector<std::pair<uint64_t, uint64_t>> gone;  // in segment pages
      for (const auto& [g0, g1] : n.gone)
        if (g0 < g1) gone.emplace_back(g0 / kPageSize, (g1 + kPageSize - 1) / kPageSize);
      absl::Status st = faults_->EndWindow(c, key, gone);
      if (!st.ok()) {
        TLOG_WARN("segment %#x: write-back after a window failed: %s", c.segid, st.ToString());
        result = st;
      }
    }
  }
  switch (n.kind) {
    case InvalidationNotice::Kind::kBegin:
      Mapper().notices_begin->Add();
      Mapper().begin_latency->Observe(absl::Now() - t0);
      break;
    case InvalidationNotice::Kind::kEnd: Mapper().notices_end->Add(); break;
    case InvalidationNotice::Kind::kRevoke: Mapper().notices_revoke->Add(); break;
    default: break;
  }
  TLOG_DEBUG("notice kind %d for segment %#x [%#x, %#x): handled in %d us",
             static_cast<int>(n.kind), n.segid, n.start, n.end,
             absl::ToInt64Microseconds(absl::Now() - t0));
  return result;
}

}  // namespace tether
