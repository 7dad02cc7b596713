#include "daemon/invalidation/invalidation_coordinator.h"

#include <algorithm>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/metrics.h"
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
                                                 const HomeLeaseTable* leases,
                                                 absl::Duration write_back_wait)
    : home_node_(home_node),
      registry_(registry),
      channel_(channel),
      ack_deadline_(ack_deadline),
      leases_(leases),
      write_back_wait_(write_back_wait) {}

InvalidationCoordinator::~InvalidationCoordinator() {
  // A range_end's callback still to come finds nobody to fence for; one
  // running now finishes first.
  absl::MutexLock lock(&lifeline_->mu);
  lifeline_->self = nullptr;
}

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
                                                                  absl::Time deadline,
                                                                  InFlightWrites writes) {
  auto pending = StartBegin(segid, start, end, why, deadline, writes);
  if (!pending.ok()) return pending.status();
  if (pending->replies_) {
    PendingBegin::Replies& r = *pending->replies_;
    absl::MutexLock lock(&r.mu);
    r.mu.AwaitWithTimeout(absl::Condition(&r.done), pending->wait_);
  }
  return FinishBegin(*std::move(pending));
}

absl::StatusOr<InvalidationCoordinator::PendingBegin> InvalidationCoordinator::StartBegin(
    uint64_t segid, uint64_t start, uint64_t end, const std::string& why, absl::Time deadline,
    InFlightWrites writes) {
  // What is left of the caller's budget, never more than the ack deadline.
  const absl::Duration wait =
      std::max(absl::ZeroDuration(), std::min(ack_deadline_, deadline - absl::Now()));
  auto opened = registry_->OpenWindow(segid, start, end);
  if (!opened.ok()) return opened.status();
  stats_.windows++;
  PendingBegin p;
  p.why_ = why;
  p.wait_ = wait;
  p.opened_ = absl::Now();
  InvalidationWindow& w = p.window_;
  w.segid = segid;
  w.id = opened->id;
  w.start = start;
  w.end = end;
  // Counted from the opening, within the fan-out's deadline: the exporter
  // waits no longer than it would for a silent mapper.
  w.await_write_backs = writes == InFlightWrites::kAwait;
  w.write_backs_until = absl::Now() + std::min(write_back_wait_, wait);
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
  InvalidationWindow w = FenceUnanswered(std::move(pending));
  AwaitWriteBacks(w);
  if (leases_) WaitOutFences(w);
  if (leases_) WaitOutRestart(w);
  return w;
}

void InvalidationCoordinator::WaitOutRestart(const InvalidationWindow& w) {
  // A daemon that restarted with its segment epoch does not know which
  // nodes still hold copies its earlier run served: until every lease the
  // earlier run granted has run out, a node may serve one it cannot reach
  // with a range_begin (lease_table.h). Only in the first lease * (1 +
  // margin) after such a restart; never otherwise (one lock round).
  absl::Time until = leases_->QuietUntil();
  if (until <= leases_->clock()->Now()) return;
  TLOG_INFO("segment %#x: change held until the leases of before the restart ran out (%d ms)",
            w.segid, absl::ToInt64Milliseconds(until - leases_->clock()->Now()));
  while (leases_->clock()->Now() < until)
    absl::SleepFor(std::min(until - leases_->clock()->Now(), absl::Milliseconds(10)));
  stats_.lease_waits++;
}

bool InvalidationCoordinator::WriteBacksLanded(const InvalidationWindow& w) const {
  return !w.await_write_backs || registry_->WriteBacksLanded(w.segid, w.start, w.end);
}

void InvalidationCoordinator::AwaitWriteBacks(const InvalidationWindow& w) {
  if (WriteBacksLanded(w)) return;  // the usual case: one lock round, no wait
  stats_.write_back_waits++;
  // Held here (tests) with no lock held: a write-back of the range that
  // passed the registry's checks before the window opened has not returned.
  TETHER_FAULT_POINT("invalidation.begin.write_back_wait");
  if (registry_->AwaitWriteBacks(w.segid, w.start, w.end, w.write_backs_until)) return;
  stats_.write_backs_outlasted++;
  TLOG_WARN(
      "segment %#x: a write-back into [%#x, %#x) is still in flight at the bound of this "
      "change's wait for it; the change goes on and the write may land after it (blocked on the "
      "exporter's mmap_lock?)",
      w.segid, w.start, w.end);
}

InvalidationWindow InvalidationCoordinator::FenceUnanswered(PendingBegin pending) {
  InvalidationWindow w = std::move(pending.window_);
  if (!pending.replies_) return Snapshot(w);
  {
    PendingBegin::Replies& r = *pending.replies_;
    absl::MutexLock lock(&r.mu);
    r.acks.Expire();
    w.acked = r.acks.acked();
    w.fenced = r.acks.failed();
  }
  // How long the mappers took to drop their copies (or the deadline ran
  // out for those fenced now): the part of a change's delay tether adds.
  static metrics::Histogram* const latency = metrics::Default().GetHistogram(
      "tether_home_invalidation_seconds",
      "from opening an invalidation window to every mapper node holding a copy having "
      "acknowledged the range_begin or been fenced (windows with copies to drop only)",
      metrics::Histogram::LatencyBounds());
  latency->Observe(absl::Now() - pending.opened_);
  if (!w.fenced.empty())
    FenceAndHold(w.segid, w.fenced,
                 absl::StrFormat("did not acknowledge an invalidation of segment %#x within %d ms "
                                 "(%s)",
                                 w.segid, absl::ToInt64Milliseconds(pending.wait_), pending.why_));
  return Snapshot(w);
}

InvalidationWindow InvalidationCoordinator::Snapshot(InvalidationWindow w) {
  // The fences this window waits out: those made until now (its own
  // included). A node fenced later — by a later Begin, or an End whose
  // range_end it missed — holds no copy of this window's range that the
  // window must wait for: this window asked it and it acked (it dropped
  // the range first), or the window did not need to ask it (it held no
  // copy, or its marks had been dropped by a fence made before, which is
  // waited for); and since the window opened no read of the range is
  // served. Waiting for later fences as well held the exporter's call past
  // deadline + lease x (1 + margin) while nodes went silent one after the
  // other (tests/sim, seed 58).
  absl::MutexLock lock(&holds_->mu);
  w.fences_before = holds_->fences;
  return w;
}

void InvalidationCoordinator::FenceAndHold(uint64_t segid, const std::vector<uint32_t>& nodes,
                                           const std::string& what) {
  for (uint32_t node : nodes) {
    std::string reason = absl::StrFormat("node %d %s", node, what);
    registry_->FenceNode(segid, node, reason);
    std::shared_ptr<FenceHold> hold;
    if (leases_) {
      // Read after the fence: a renewal granted from now on carries it
      // (lease_table.h), so only the lease held now can outlive it.
      hold = std::make_shared<FenceHold>();
      hold->expires = leases_->ExpiresAt(node);
      absl::MutexLock lock(&holds_->mu);
      hold->seq = ++holds_->fences;
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

absl::Time InvalidationCoordinator::FencesHeldUntil(const InvalidationWindow& w) {
  // Every node fenced for this segment before the window's fan-out ended
  // (Snapshot) — by this Begin, by an overlapping one still waiting, or by
  // an End whose range_end it missed — that has not acknowledged its
  // REVOKE and whose lease as of the fence may still run. Not only one
  // Begin's own: fencing dropped the node's cached marks, so a change of
  // another range the node still holds asks nobody, and must not return
  // before that node stops serving it.
  if (!leases_) return absl::InfinitePast();
  const uint64_t segid = w.segid;
  absl::Time now = leases_->clock()->Now();
  absl::Time until = absl::InfinitePast();
  FenceHolds& h = *holds_;
  absl::MutexLock lock(&h.mu);
  auto it = h.by_segid.find(segid);
  if (it == h.by_segid.end()) return until;
  auto& v = it->second;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [now](const std::shared_ptr<FenceHold>& f) {
                           return f->revoke_acked || f->expires <= now;
                         }),
          v.end());
  for (const auto& f : v)
    if (f->seq <= w.fences_before) until = std::max(until, f->expires);
  if (v.empty()) h.by_segid.erase(it);
  return until;
}

void InvalidationCoordinator::WaitOutFences(const InvalidationWindow& w) {
  // Time is read from the lease table's clock after every wake-up
  // (FencesHeldUntil); the timed wait only paces the loop (a FakeClock
  // moves in steps), and a REVOKE's ack wakes it early.
  if (!leases_) return;
  FenceHolds& h = *holds_;
  bool waited = false;
  for (;;) {
    uint64_t acks;
    {
      absl::MutexLock lock(&h.mu);
      acks = h.revoke_acks;
    }
    absl::Time until = FencesHeldUntil(w);
    absl::Time now = leases_->clock()->Now();
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
    TLOG_INFO("segment %#x: waited for the lease of fenced node(s) to run out", w.segid);
  }
}

void InvalidationCoordinator::End(const InvalidationWindow& w,
                                  const std::vector<std::pair<uint64_t, uint64_t>>& gone) {
  registry_->CloseWindow(w.segid, w.id, gone);
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kEnd;
  n.segid = w.segid;
  n.start = w.start;
  n.end = w.end;
  n.window = w.id;
  n.gone = gone;
  n.home_node = home_node_;
  stats_.notices_sent += w.acked.size();
  // Every window a node opened must end: until its range_end arrives the
  // node keeps the range blocked (its faults there wait, forever) and the
  // dirty pages it kept aside unwritten. So range_end goes as reliably as a
  // revocation: the channel resends it (gRPC waits for a cut-off, frozen or
  // restarting peer) for as long as a REVOKE, and a duplicate is harmless
  // (the mapper ends a window once; an unknown one is ignored). A node it
  // still has not reached by then, or that lost the connection with it in
  // flight, is fenced, as one that missed a range_begin is: the REVOKE ends
  // its windows (or, with leases, its lease has long run out and it revoked
  // them itself), and this home refuses its write-backs of pages it kept
  // aside over contents that changed since. The simpler alternative — the
  // mapper ending a window itself when a lease renewal says the home closed
  // it — would write kept-aside pages back without knowing which of them
  // the change unmapped (range_end's `gone`), and needs leases. The
  // callback may run minutes from now: it reaches this object only through
  // lifeline_.
  channel_->SendToAll(
      w.acked, n, kRevokeTimeout,
      [life = lifeline_, segid = w.segid, id = w.id](uint32_t node, absl::Status st) {
        // Cancelled: this daemon is shutting down (PeerDirectory::Shutdown)
        // and its segments go with it.
        if (st.ok() || absl::IsCancelled(st)) return;
        TLOG_INFO("range_end of window %d to node %d: %s", id, node, st.ToString());
        absl::MutexLock lock(&life->mu);
        if (!life->self) return;
        life->self->FenceAndHold(
            segid, {node},
            absl::StrFormat("did not acknowledge the end of invalidation window %d of segment "
                            "%#x within %d s (%s)",
                            id, segid, absl::ToInt64Seconds(kRevokeTimeout), st.message()));
      });
}

std::vector<uint32_t> InvalidationCoordinator::RevokeGrants(uint64_t segid,
                                                            const std::string& why) {
  std::vector<uint32_t> nodes = registry_->GrantNodes(segid);
  FenceAndHold(segid, nodes, why);
  return nodes;
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
