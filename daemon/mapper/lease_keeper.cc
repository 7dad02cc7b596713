#include "daemon/mapper/lease_keeper.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/segid.h"
#include "daemon/common/thread_name.h"
#include "daemon/mapper/mapper_metrics.h"

namespace tether {
namespace {
// The keeper looks for new homes at least this often. Cheap: a pass with
// nothing due reads two tables and sends nothing.
constexpr absl::Duration kMaxSleep = absl::Milliseconds(100);
}  // namespace

LeaseKeeper::LeaseKeeper(uint32_t self, MapperLeaseTable* leases, LeaseRenewer* renewer,
                         AttachmentTable* attachments, Revoker revoke, HomesInUse homes)
    : self_(self),
      leases_(leases),
      renewer_(renewer),
      attachments_(attachments),
      revoke_(std::move(revoke)),
      homes_(std::move(homes)) {}

LeaseKeeper::~LeaseKeeper() { Stop(); }

void LeaseKeeper::Start() {
  if (!leases_->config().enabled() || thread_.joinable()) return;
  thread_ = std::thread([this] {
    NameThisThread("tt-lease");
    Loop();
  });
}

void LeaseKeeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void LeaseKeeper::Loop() {
  for (;;) {
    absl::Duration wait = SleepAfter(Tick());
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](LeaseKeeper* k) ABSL_EXCLUSIVE_LOCKS_REQUIRED(k->mu_) {
                               return k->stopping_ || k->woken_;
                             },
                             this),
                         wait);
    if (stopping_) return;
    woken_ = false;
  }
}

absl::Duration LeaseKeeper::SleepAfter(absl::Time next) const {
  // The clock is the lease table's; the wait is real time, capped, and
  // the next pass decides from the clock again (common/clock.h).
  return std::clamp(next - leases_->clock()->Now(), absl::Milliseconds(1), kMaxSleep);
}

bool LeaseKeeper::TakeWakeUp() {
  absl::MutexLock lock(&mu_);
  bool woken = woken_;
  woken_ = false;
  return woken;
}

std::vector<uint32_t> LeaseKeeper::Homes() {
  std::vector<uint32_t> homes = homes_ ? homes_() : std::vector<uint32_t>{};
  for (uint32_t h : attachments_->Homes())
    if (std::find(homes.begin(), homes.end(), h) == homes.end()) homes.push_back(h);
  homes.erase(std::remove(homes.begin(), homes.end(), self_), homes.end());
  return homes;
}

absl::Time LeaseKeeper::Tick() {
  if (!leases_->config().enabled()) return absl::InfiniteFuture();
  std::vector<uint32_t> homes = Homes();
  for (uint32_t h : homes) {
    if (!leases_->Lapsed(h)) {
      absl::MutexLock lock(&mu_);
      lapsed_.erase(h);
      continue;
    }
    auto atts = attachments_->FromHome(h);
    if (atts.empty()) continue;
    if (restart_.suspend) {
      SuspendLapsed(h, atts);
      continue;
    }
    std::string why = absl::StrFormat(
        "the lease from node %d ran out (no renewal answered in time): its pages are no longer "
        "served",
        h);
    bool first;
    {
      absl::MutexLock lock(&mu_);
      first = lapsed_.insert(h).second;
    }
    if (first) TLOG_WARN("%s; revoking %d attachment(s)", why, atts.size());
    if (first) Mapper().lease_expiries->Add(atts.size());
    for (const auto& att : atts) revoke_(*att, why);
  }
  for (auto [h, sent] : leases_->StartRenewals(homes)) SendRenewal(h, sent);
  RunResumes();
  absl::Time next = leases_->NextEvent(homes);
  absl::MutexLock lock(&mu_);
  // A suspended home is looked at again soon: its grace, its resumes.
  if (!suspended_.empty()) next = std::min(next, leases_->clock()->Now() + kMaxSleep);
  return next;
}

void LeaseKeeper::SuspendLapsed(uint32_t home,
                                const std::vector<std::shared_ptr<Attachment>>& atts) {
  const absl::Time now = leases_->clock()->Now();
  bool first = false;
  absl::Time since;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = suspended_.emplace(home, now);
    first = inserted;
    since = it->second;
    lapsed_.insert(home);
  }
  if (first) {
    TLOG_WARN(
        "the lease from node %d ran out (no renewal answered in time): %d attachment(s) "
        "suspended — clean copies dropped, dirty pages held, faults wait — until it "
        "answers, for up to %d ms (--restart_grace_ms)",
        home, atts.size(), absl::ToInt64Milliseconds(restart_.grace));
    for (const auto& att : atts) restart_.suspend(*att);
    return;
  }
  if (now - since < restart_.grace) {
    // Attachments made since (none can be: EnsureLease refuses) or whose
    // cache a resume reopened: suspended too. BeginWindow is idempotent.
    return;
  }
  std::string why = absl::StrFormat(
      "the lease from node %d ran out and it did not answer within the restart grace (%d ms): "
      "its pages are no longer served",
      home, absl::ToInt64Milliseconds(restart_.grace));
  TLOG_WARN("%s; revoking %d attachment(s)", why, atts.size());
  for (const auto& att : atts) revoke_(*att, why);
  absl::MutexLock lock(&mu_);
  suspended_.erase(home);
  reclaiming_.erase(home);
}

void LeaseKeeper::RunResumes() {
  std::vector<std::pair<uint64_t, bool>> todo;
  {
    absl::MutexLock lock(&mu_);
    todo.swap(resume_);
  }
  for (const auto& [segid, restarted] : todo)
    for (const auto& att : attachments_->Of(segid)) restart_.resume(*att, restarted);
}

void LeaseKeeper::SendRenewal(uint32_t home, absl::Time sent) {
  bool reclaim;
  {
    absl::MutexLock lock(&mu_);
    reclaim = reclaiming_.contains(home);
  }
  auto done = [this, home, sent, reclaim](absl::StatusOr<LeaseRenewal> r) {
    OnRenewal(home, sent, reclaim, std::move(r));
  };
  if (reclaim && restart_.held_grants) {
    renewer_->RenewReclaiming(home, leases_->config().lease / 2, restart_.held_grants(home),
                              std::move(done));
    return;
  }
  renewer_->Renew(home, leases_->config().lease / 2, std::move(done));
}

bool LeaseKeeper::Fresh(uint32_t home) const {
  return leases_->ValidUntil(home) - leases_->clock()->Now() > leases_->config().lease / 3;
}

void LeaseKeeper::NoteIncarnation(uint32_t home, uint64_t incarnation) {
  if (incarnation == 0) return;
  absl::MutexLock lock(&mu_);
  incarnation_.emplace(home, incarnation);
}

absl::Status LeaseKeeper::EnsureLease(uint32_t home) {
  if (!leases_->config().enabled() || home == self_ || Fresh(home)) return absl::OkStatus();
  const absl::Duration timeout = leases_->config().lease;
  absl::Time give_up = absl::Now() + timeout;
  for (;;) {
    uint64_t seen;
    {
      absl::MutexLock lock(&mu_);
      seen = answers_;
    }
    absl::Time sent = leases_->StartRenewalNow(home);
    if (sent != absl::InfinitePast()) SendRenewal(home, sent);
    {
      // Until an answer (ours or one already in flight) or the timeout.
      struct Answered {
        const uint64_t* answers;
        uint64_t seen;
      };
      absl::MutexLock lock(&mu_);
      Answered a{&answers_, seen};
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](Answered* x) { return *x->answers != x->seen; }, &a),
                           std::max(give_up - absl::Now(), absl::ZeroDuration()));
    }
    if (Fresh(home)) return absl::OkStatus();
    if (absl::Now() >= give_up)
      return ErrnoStatus(EHOSTUNREACH,
                         absl::StrFormat("no lease from node %d: it did not answer a renewal "
                                         "within %d ms",
                                         home, absl::ToInt64Milliseconds(timeout)));
    // A failed renewal is retried after a pause, not in a tight loop.
    absl::SleepFor(std::min(absl::Milliseconds(50), give_up - absl::Now()));
  }
}

void LeaseKeeper::OnRenewal(uint32_t home, absl::Time sent, bool reclaimed,
                            absl::StatusOr<LeaseRenewal> r) {
  if (!r.ok()) {
    leases_->RenewFailed(home);
    bool first;
    {
      absl::MutexLock lock(&mu_);
      first = failing_.insert(home).second;
    }
    if (first) TLOG_INFO("lease renewal at node %d failed: %s", home, r.status().ToString());
    absl::MutexLock lock(&mu_);
    ++answers_;
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    failing_.erase(home);
  }
  // Before the new lease counts: drop what the home no longer lets this
  // node hold. A segid carries its home's segment epoch (a home of before
  // segment epochs answers none: its incarnation is the segids').
  const uint64_t epoch = r->epoch != 0 ? r->epoch : r->incarnation;
  bool restarted = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = incarnation_.find(home);
    restarted = it != incarnation_.end() && it->second != r->incarnation && restart_.suspend;
    incarnation_[home] = r->incarnation;
  }
  auto all = attachments_->FromHome(home);
  std::vector<std::shared_ptr<Attachment>> atts;  // those not revoked here
  for (const auto& att : all) {
    SegidParts parts;
    std::string why;
    if (ParseSegid(att->segid, &parts) && parts.incarnation != epoch)
      why = absl::StrFormat(
          "node %d restarted (segment epoch %#x, the segment's was %#x): the "
          "segment is gone",
          home, epoch, parts.incarnation);
    for (const auto& [segid, w] : r->fenced)
      if (why.empty() && segid == att->segid) why = "fenced: " + w;
    for (const auto& [segid, w] : r->gone)
      if (why.empty() && segid == att->segid)
        why = absl::StrFormat("node %d restarted and did not take the segment back: %s", home, w);
    if (why.empty())
      atts.push_back(att);
    else
      revoke_(*att, why);
  }
  if (restarted) {
    // Nobody could invalidate our copies while it was down: drop them now,
    // before the new lease counts, and hand the grants back.
    TLOG_INFO(
        "node %d restarted (incarnation %#x) with its segment epoch: suspending its %d "
        "attachment(s) and handing their grants back",
        home, r->incarnation, atts.size());
    for (const auto& att : atts) restart_.suspend(*att);
    if (restart_.forget_endpoint) restart_.forget_endpoint(home);
    absl::MutexLock lock(&mu_);
    suspended_.emplace(home, leases_->clock()->Now());
    reclaiming_.insert(home);
  } else if (restart_.suspend) {
    absl::MutexLock lock(&mu_);
    if (reclaiming_.contains(home) && reclaimed) {
      // The reclaim's answer: resume every segment the home took back
      // (not gone, not pending); ask again for the pending ones.
      absl::flat_hash_set<uint64_t> skip(r->pending.begin(), r->pending.end());
      for (const auto& g : r->gone) skip.insert(g.first);
      absl::flat_hash_set<uint64_t> queued;
      for (const auto& att : atts)
        if (!skip.contains(att->segid) && queued.insert(att->segid).second)
          resume_.emplace_back(att->segid, true);
      if (r->pending.empty()) {
        reclaiming_.erase(home);
        suspended_.erase(home);
      }
      woken_ = true;
    } else if (!reclaiming_.contains(home) && suspended_.erase(home) > 0) {
      // The same daemon answers again (it was frozen, or cut off): what
      // it fenced is revoked above; the rest fetch again.
      TLOG_INFO("node %d answers again: resuming its attachments", home);
      absl::flat_hash_set<uint64_t> queued;
      for (const auto& att : atts)
        if (queued.insert(att->segid).second) resume_.emplace_back(att->segid, false);
      woken_ = true;
    }
  }
  leases_->Renewed(home, sent, r->lease);
  bool reclaim_now;
  {
    absl::MutexLock lock(&mu_);
    reclaim_now = restarted;
    woken_ = true;  // the next renewal is due later now
    ++answers_;
  }
  if (reclaim_now) {
    absl::Time s = leases_->StartRenewalNow(home);
    if (s != absl::InfinitePast()) SendRenewal(home, s);
  }
}

}  // namespace tether
