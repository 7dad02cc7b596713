#include "daemon/mapper/mapper_invalidation.h"

#include <algorithm>
#include <optional>

#include "absl/time/clock.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"

namespace tether {

MapperInvalidation::~MapperInvalidation() { Stop(); }

void MapperInvalidation::Start() {
  queueing_ = true;
  thread_ = std::thread([this] { RunEnds(); });
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
  // END: queued, applied on our thread (see the header). A refused push
  // (stopping) is applied here instead.
  if (n.kind == InvalidationNotice::Kind::kEnd && queueing_ && ends_.Push(n))
    return absl::OkStatus();
  return Apply(n);
}

absl::Status MapperInvalidation::Apply(const InvalidationNotice& n) {
  // Windows are keyed by segid and window id: segids are unique across the
  // cluster and window ids per segment's home.
  uint64_t key = (n.segid * 0x9e3779b97f4a7c15ull) ^ n.window;
  absl::Status result;
  absl::Time t0 = absl::Now();
  for (const auto& att : attachments_->Of(n.segid)) {
    if (n.kind == InvalidationNotice::Kind::kRevoke) {
      faults_->Revoke(*att, n.reason.empty() ? "revoked by the home" : n.reason);
      continue;
    }
    uint64_t a0 = att->seg_offset, a1 = att->seg_offset + att->size;
    uint64_t s = std::max(n.start, a0), e = std::min(n.end, a1);
    if (s >= e) continue;
    uint64_t p0 = (s - a0) / kPageSize, p1 = (e - a0 + kPageSize - 1) / kPageSize;
    if (n.kind == InvalidationNotice::Kind::kBegin) {
      faults_->BeginWindow(*att, key, p0, p1);
    } else {
      std::vector<std::pair<uint64_t, uint64_t>> gone;  // in attachment pages
      for (const auto& [g0, g1] : n.gone) {
        uint64_t gs = std::max(g0, a0), ge = std::min(g1, a1);
        if (gs < ge)
          gone.emplace_back((gs - a0) / kPageSize, (ge - a0 + kPageSize - 1) / kPageSize);
      }
      absl::Status st = faults_->EndWindow(*att, key, gone);
      if (!st.ok()) {
        TLOG_WARN("attachment %#x: write-back after a window failed: %s", att->id, st.ToString());
        result = st;
      }
    }
  }
  TLOG_DEBUG("notice kind %d for segment %#x [%#x, %#x): handled in %d us",
             static_cast<int>(n.kind), n.segid, n.start, n.end,
             absl::ToInt64Microseconds(absl::Now() - t0));
  return result;
}

}  // namespace tether
