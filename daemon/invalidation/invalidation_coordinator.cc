#include "daemon/invalidation/invalidation_coordinator.h"

#include <algorithm>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/invalidation/ack_collector.h"

namespace tether {
namespace {
// Revocations must reach a node that was frozen when it was fenced: give
// them time to be delivered once it runs again.
constexpr absl::Duration kRevokeTimeout = absl::Minutes(5);
}  // namespace

InvalidationCoordinator::InvalidationCoordinator(uint32_t home_node, SegmentRegistry* registry,
                                                 InvalidationChannel* channel,
                                                 absl::Duration ack_deadline,
                                                 const HomeLeaseTable* leases)
    : home_node_(home_node),
      registry_(registry),
      channel_(channel),
      ack_deadline_(ack_deadline),
      leases_(leases) {}

// The replies of one fan-out: written by the channel's threads, read by
// the thread in Begin (or the simulation).
struct InvalidationCoordinator::PendingBegin::Replies {
  absl::Mutex mu;
  AckCollector acks ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  explicit Replies(const std::vector<uint32_t>& n) : acks(n) {}
};

bool InvalidationCoordinator::PendingBegin::answered() const {
  if (!replies_) return true;
  absl::MutexLock lock(&replies_->mu);
  return replies_->done;
}

absl::StatusOr<InvalidationWindow> InvalidationCoordinator::Begin(uint64_t segid, uint64_t start,
                                                                  uint64_t end,
                                                                  const std::string& why,
                                                                  absl::Time deadline) {
  auto pending = StartBegin(segid, start, end, why, deadline);
  if (!pending.ok()) return pending.status();
  if (pending->replies_) {
    PendingBegin::Replies& r = *pending->replies_;
    absl::MutexLock lock(&r.mu);
    r.mu.AwaitWithTimeout(absl::Condition(&r.done), pending->wait_);
  }
  return FinishBegin(*std::move(pending));
}

absl::StatusOr<InvalidationCoordinator::PendingBegin> InvalidationCoordinator::StartBegin(
    uint64_t segid, uint64_t start, uint64_t end, const std::string& why, absl::Time deadline) {
  // What is left of the caller's budget, never more than the ack deadline.
  const absl::Duration wait =
      std::max(absl::ZeroDuration(), std::min(ack_deadline_, deadline - absl::Now()));
  auto opened = registry_->OpenWindow(segid, start, end);
  if (!opened.ok()) return opened.status();
  stats_.windows++;
  PendingBegin p;
  p.why_ = why;
  p.wait_ = wait;
  InvalidationWindow& w = p.window_;
  w.segid = segid;
  w.id = opened->id;
  w.start = start;
  w.end = end;
  if (opened->nodes.empty()) return p;  // nobody caches it: as cheap as unexported (G3)

  auto replies = std::make_shared<PendingBegin::Replies>(opened->nodes);
  p.replies_ = replies;
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kBegin;
  n.segid = segid;
  n.start = start;
  n.end = end;
  n.window = w.id;
  n.home_node = home_node_;
  stats_.notices_sent += opened->nodes.size();
  channel_->SendToAll(opened->nodes, n, wait, [replies](uint32_t node, absl::Status st) {
    absl::MutexLock lock(&replies->mu);
    if (replies->acks.OnReply(node, st)) replies->done = true;
    if (!st.ok()) TLOG_INFO("range_begin to node %d: %s", node, st.ToString());
  });
  return p;
}

InvalidationWindow InvalidationCoordinator::FinishBegin(PendingBegin pending) {
  InvalidationWindow w = std::move(pending.window_);
  if (!pending.replies_) {
    if (leases_) WaitOutFences(w.segid);
    return w;
  }
  {
    PendingBegin::Replies& r = *pending.replies_;
    absl::MutexLock lock(&r.mu);
    r.acks.Expire();
    w.acked = r.acks.acked();
    w.fenced = r.acks.failed();
  }
  if (!w.fenced.empty()) FenceAndWait(w.segid, w.fenced, pending.why_, pending.wait_);
  if (leases_) WaitOutFences(w.segid);
  return w;
}

void InvalidationCoordinator::FenceAndWait(uint64_t segid, const std::vector<uint32_t>& nodes,
                                           const std::string& why, absl::Duration ack_wait) {
  for (uint32_t node : nodes) {
    std::string reason = absl::StrFormat(
        "node %d did not acknowledge an invalidation of segment %#x within %d ms (%s)", node, segid,
        absl::ToInt64Milliseconds(ack_wait), why);
    registry_->FenceNode(segid, node, reason);
    std::shared_ptr<FenceHold> hold;
    if (leases_) {
      // Read after the fence: a renewal granted from now on carries it
      // (lease_table.h), so only the lease held now can outlive it.
      hold = std::make_shared<FenceHold>();
      hold->expires = leases_->ExpiresAt(node);
      absl::MutexLock lock(&holds_->mu);
      holds_->by_segid[segid].push_back(hold);
    }
    stats_.fenced++;
    InvalidationNotice r;
    r.kind = InvalidationNotice::Kind::kRevoke;
    r.segid = segid;
    r.home_node = home_node_;
    r.reason = "fenced: " + reason;
    // The ack may come minutes later (kRevokeTimeout): shared state, not
    // `this`.
    channel_->Send(node, r, kRevokeTimeout, [holds = holds_, hold](absl::Status st) {
      if (!st.ok() || !hold) return;
      absl::MutexLock lock(&holds->mu);
      hold->revoke_acked = true;
      ++holds->revoke_acks;
    });
  }
}

void InvalidationCoordinator::WaitOutFences(uint64_t segid) {
  // Wait until every node fenced for this segment — by this Begin or by an
  // overlapping one still waiting — acknowledged its REVOKE or its lease
  // as of the fence ran out. Not only this Begin's own: fencing dropped
  // the node's cached marks, so a change of another range the node still
  // holds asks nobody, and must not return before that node stops serving
  // it. Time is read from the lease table's clock after every wake-up; the
  // timed wait only paces the loop (a FakeClock moves in steps).
  FenceHolds& h = *holds_;
  bool waited = false;
  for (;;) {
    absl::Time now = leases_->clock()->Now();
    absl::Time until = absl::InfinitePast();
    uint64_t acks;
    {
      absl::MutexLock lock(&h.mu);
      auto it = h.by_segid.find(segid);
      if (it != h.by_segid.end()) {
        auto& v = it->second;
        v.erase(std::remove_if(v.begin(), v.end(),
                               [now](const std::shared_ptr<FenceHold>& f) {
                                 return f->revoke_acked || f->expires <= now;
                               }),
                v.end());
        for (const auto& f : v) until = std::max(until, f->expires);
        if (v.empty()) h.by_segid.erase(it);
      }
      acks = h.revoke_acks;
    }
    if (until <= now) break;
    waited = true;
    // Held here (tests) with no lock held: Begin has read the clock and
    // decided that a fenced node's lease still runs.
    TETHER_FAULT_POINT("invalidation.fence.lease_wait");
    struct More {
      const uint64_t* acks;
      uint64_t before;
    };
    absl::MutexLock lock(&h.mu);
    More more{&h.revoke_acks, acks};
    h.mu.AwaitWithTimeout(absl::Condition(
                              +[](More* m) { return *m->acks != m->before; }, &more),
                          std::min(until - now, absl::Milliseconds(10)));
  }
  if (waited) {
    stats_.lease_waits++;
    TLOG_INFO("segment %#x: waited for the lease of fenced node(s) to run out", segid);
  }
}

void InvalidationCoordinator::End(const InvalidationWindow& w,
                                  const std::vector<std::pair<uint64_t, uint64_t>>& gone) {
  registry_->CloseWindow(w.segid, w.id);
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kEnd;
  n.segid = w.segid;
  n.start = w.start;
  n.end = w.end;
  n.window = w.id;
  n.gone = gone;
  n.home_node = home_node_;
  stats_.notices_sent += w.acked.size();
  // range_end needs no ack. A node that misses it (a cut that outlasts
  // the timeout) keeps its window open: never stale data, but its faults
  // in the range wait and its kept-aside pages stay unwritten (a known
  // gap: docs/architecture.md, G1; tests/sim/README.md).
  channel_->SendToAll(w.acked, n, ack_deadline_, [](uint32_t node, absl::Status st) {
    if (!st.ok()) TLOG_INFO("range_end to node %d: %s", node, st.ToString());
  });
}

void InvalidationCoordinator::RevokeAll(uint64_t segid, const std::string& why) {
  InvalidationNotice r;
  r.kind = InvalidationNotice::Kind::kRevoke;
  r.segid = segid;
  r.home_node = home_node_;
  r.reason = why;
  for (uint32_t node : registry_->GrantNodes(segid)) {
    stats_.notices_sent++;
    channel_->Send(node, r, kRevokeTimeout, [](absl::Status) {});
  }
}

}  // namespace tether
