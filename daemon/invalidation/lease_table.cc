#include "daemon/invalidation/lease_table.h"

#include <algorithm>

namespace tether {

void HomeLeaseTable::Granted(uint32_t node) {
  if (!config_.enabled()) return;
  absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  absl::Time& t = granted_[node];
  t = std::max(t, now);
}

absl::Time HomeLeaseTable::ExpiresAt(uint32_t node) const {
  if (!config_.enabled()) return absl::InfinitePast();
  absl::MutexLock lock(&mu_);
  absl::Time granted = quiet_until_ - config_.lease * (1 + config_.margin);
  auto it = granted_.find(node);
  if (it != granted_.end()) granted = std::max(granted, it->second);
  if (granted == absl::InfinitePast()) return absl::InfinitePast();
  return granted + config_.lease * (1 + config_.margin);
}

void HomeLeaseTable::Restarted() {
  if (!config_.enabled()) return;
  absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  quiet_until_ = now + config_.lease * (1 + config_.margin);
}

absl::Time HomeLeaseTable::QuietUntil() const {
  absl::MutexLock lock(&mu_);
  return quiet_until_;
}

void MapperLeaseTable::Granted(uint32_t home, absl::Time sent, absl::Duration lease) {
  if (!config_.enabled()) return;
  absl::MutexLock lock(&mu_);
  Lease& l = leases_[home];
  l.last_sent = std::max(l.last_sent, sent);
  l.unbounded = lease <= absl::ZeroDuration();
  l.lease = lease;
  if (!l.unbounded) l.valid_until = std::max(l.valid_until, sent + lease * (1 - config_.margin));
}

absl::Time MapperLeaseTable::RenewDue(const Lease& l) const {
  absl::Duration len = l.unbounded || l.lease <= absl::ZeroDuration() ? config_.lease : l.lease;
  // A third of the way in, so that two renewals may fail (a lost packet, a
  // busy home) before the lease ends.
  absl::Time due = l.last_sent + len / 3;
  if (!l.unbounded) due = std::min(due, l.valid_until);
  return due;
}

std::vector<std::pair<uint32_t, absl::Time>> MapperLeaseTable::StartRenewals(
    const std::vector<uint32_t>& homes) {
  std::vector<std::pair<uint32_t, absl::Time>> out;
  if (!config_.enabled()) return out;
  absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  for (uint32_t h : homes) {
    Lease& l = leases_[h];
    if (l.in_flight || now < RenewDue(l)) continue;
    l.in_flight = true;
    out.emplace_back(h, now);
  }
  return out;
}

absl::Time MapperLeaseTable::StartRenewalNow(uint32_t home) {
  if (!config_.enabled()) return absl::InfinitePast();
  absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  Lease& l = leases_[home];
  if (l.in_flight) return absl::InfinitePast();
  l.in_flight = true;
  return now;
}

void MapperLeaseTable::Renewed(uint32_t home, absl::Time sent, absl::Duration lease) {
  Granted(home, sent, lease);
  RenewFailed(home);  // clears in_flight
}

void MapperLeaseTable::RenewFailed(uint32_t home) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(home);
  if (it != leases_.end()) it->second.in_flight = false;
}

absl::Time MapperLeaseTable::ValidUntil(uint32_t home) const {
  if (!config_.enabled()) return absl::InfiniteFuture();
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(home);
  if (it == leases_.end()) return absl::InfinitePast();
  return it->second.unbounded ? absl::InfiniteFuture() : it->second.valid_until;
}

bool MapperLeaseTable::Lapsed(uint32_t home) const { return clock_->Now() >= ValidUntil(home); }

absl::Time MapperLeaseTable::NextEvent(const std::vector<uint32_t>& homes) const {
  absl::Time next = absl::InfiniteFuture();
  if (!config_.enabled()) return next;
  absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  for (uint32_t h : homes) {
    auto it = leases_.find(h);
    if (it == leases_.end()) return absl::InfinitePast();  // never renewed: due now
    const Lease& l = it->second;
    if (!l.in_flight) next = std::min(next, RenewDue(l));
    if (!l.unbounded && l.valid_until > now) next = std::min(next, l.valid_until);
  }
  return next;
}

}  // namespace tether
