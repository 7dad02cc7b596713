#include "daemon/mapper/lease_keeper.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/segid.h"

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
  thread_ = std::thread([this] { Loop(); });
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
    for (const auto& att : atts) revoke_(*att, why);
  }
  for (auto [h, sent] : leases_->StartRenewals(homes)) SendRenewal(h, sent);
  return leases_->NextEvent(homes);
}

void LeaseKeeper::SendRenewal(uint32_t home, absl::Time sent) {
  renewer_->Renew(
      home, leases_->config().lease / 2,
      [this, home, sent](absl::StatusOr<LeaseRenewal> r) { OnRenewal(home, sent, std::move(r)); });
}

bool LeaseKeeper::Fresh(uint32_t home) const {
  return leases_->ValidUntil(home) - leases_->clock()->Now() > leases_->config().lease / 3;
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

void LeaseKeeper::OnRenewal(uint32_t home, absl::Time sent, absl::StatusOr<LeaseRenewal> r) {
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
  // node hold.
  for (const auto& att : attachments_->FromHome(home)) {
    SegidParts parts;
    if (ParseSegid(att->segid, &parts) && parts.incarnation != r->incarnation) {
      revoke_(*att, absl::StrFormat("node %d restarted (incarnation %#x, the segment's was %#x): "
                                    "the segment is gone",
                                    home, r->incarnation, parts.incarnation));
      continue;
    }
    for (const auto& [segid, why] : r->fenced)
      if (segid == att->segid) revoke_(*att, "fenced: " + why);
  }
  leases_->Renewed(home, sent, r->lease);
  absl::MutexLock lock(&mu_);
  woken_ = true;  // the next renewal is due later now
  ++answers_;
}

}  // namespace tether
