#include "daemon/transport/peer_liveness.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace tether {

PeerLiveness::PeerLiveness(Role role, Options options, absl::Time now)
    : role_(role), options_(options), last_heard_(now), last_sent_(now), busy_since_(now) {}

void PeerLiveness::Heard(absl::Time now) { last_heard_ = std::max(last_heard_, now); }

void PeerLiveness::HeartbeatSent(absl::Time now) {
  heartbeat_outstanding_ = true;
  last_sent_ = now;
}

void PeerLiveness::HeartbeatAnswered(absl::Time now) {
  heartbeat_outstanding_ = false;
  Heard(now);
}

PeerLiveness::Action PeerLiveness::Check(absl::Time now, bool outstanding) {
  if (role_ == Role::kHome)
    return now - last_heard_ >= options_.timeout ? Action::kDead : Action::kNone;
  outstanding = outstanding || heartbeat_outstanding_;
  if (!outstanding) {
    busy_ = false;
    // Quiet: probe once the last word (or our last probe) is `interval` old.
    if (now - std::max(last_heard_, last_sent_) >= options_.interval) return Action::kSendHeartbeat;
    return Action::kNone;
  }
  if (!busy_) {
    // Owed something since (about) now: its deadline counts from here, not
    // from an answer heard long before it was posted.
    busy_ = true;
    busy_since_ = heartbeat_outstanding_ ? std::min(now, last_sent_) : now;
  }
  return now - std::max(last_heard_, busy_since_) >= options_.timeout ? Action::kDead
                                                                      : Action::kNone;
}

absl::Duration PeerLiveness::PollTimeout(absl::Time now) const {
  // Often enough that a deadline is seen within a fraction of the timeout
  // and a heartbeat goes out about on time; never busier than 10 ms.
  absl::Duration step = std::min(options_.interval, options_.timeout / 4);
  return std::max(absl::Milliseconds(10), step);
}

std::string PeerLiveness::DeadReason(absl::Time now) const {
  absl::Duration silent = now - (busy_ ? std::max(last_heard_, busy_since_) : last_heard_);
  return absl::StrCat(role_ == Role::kHome ? "the requester" : "the home", " was silent for ",
                      absl::FormatDuration(absl::Floor(silent, absl::Milliseconds(1))),
                      " (timeout ", absl::FormatDuration(options_.timeout), ")",
                      heartbeat_outstanding_ ? ", a heartbeat unanswered" : "");
}

}  // namespace tether
