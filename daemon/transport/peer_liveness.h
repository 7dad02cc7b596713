// PeerLiveness: when a data connection's peer counts as dead, and when the
// requester sends a heartbeat. Pure logic on the times it is given, so the
// decisions are unit-tested with a FakeClock (tests/unit/peer_liveness_test.cc);
// RdmaTransport's connection threads drive it with absl::Now().
//
// Why. An RC queue pair notices a dead peer only while it sends (retry
// exceeded), and not at all when the peer's adapter still acknowledges but
// its daemon no longer answers (crashed after acking, stopped): a request
// could wait forever, and a home would keep a vanished mapper's queue pair,
// pinned pool and thread forever. So both sides watch the other:
//
// - Requester (mapper's daemon). While requests are outstanding, each must
//   be answered within `timeout` of the later of its posting and the last
//   word from the home (the home serves a connection's requests in order,
//   so "nothing heard for `timeout` while something is owed" is the
//   deadline of the oldest request). While nothing is outstanding and the
//   connection has been quiet for `interval`, it sends a heartbeat — a
//   zero-length SEND that the home's daemon answers with one — and the
//   heartbeat is then owed like a request.
// - Home. Anything from the requester (a request, a heartbeat, the
//   completion of a signalled send to it) is a sign of life; nothing for
//   `timeout` means the requester is gone: it sends a heartbeat at least
//   every `interval` while it has nothing outstanding, and while it has,
//   the home is answering (and hears the completions). timeout >= 2 x
//   interval keeps one lost heartbeat from killing a live connection.
//
// "Outstanding" is what the caller says at each Check: the connection's
// thread looks at least every PollTimeout(), so the moment a request was
// posted is known to within that — no clock read on the posting path.
//
// Thread contract: not thread-safe; one owner (a connection's thread).
#ifndef TETHER_DAEMON_TRANSPORT_PEER_LIVENESS_H_
#define TETHER_DAEMON_TRANSPORT_PEER_LIVENESS_H_

#include <string>

#include "absl/time/time.h"

namespace tether {

class PeerLiveness {
 public:
  enum class Role { kRequester, kHome };
  enum class Action { kNone, kSendHeartbeat, kDead };
  struct Options {
    absl::Duration interval = absl::Seconds(1);  // requester: heartbeat after this much quiet
    absl::Duration timeout = absl::Seconds(5);   // silence that makes the peer dead
  };

  PeerLiveness(Role role, Options options, absl::Time now);

  // Something arrived from the peer (any successful completion).
  void Heard(absl::Time now);
  // The requester posted a heartbeat (after kSendHeartbeat).
  void HeartbeatSent(absl::Time now);
  // The heartbeat's answer arrived (also a Heard).
  void HeartbeatAnswered(absl::Time now);
  bool heartbeat_outstanding() const { return heartbeat_outstanding_; }

  // What to do now. `outstanding`: requests posted and not yet answered
  // (requester; ignored at the home).
  Action Check(absl::Time now, bool outstanding);
  // How long the connection's thread may sleep before the next Check.
  absl::Duration PollTimeout(absl::Time now) const;
  // Why Check said kDead, for the log and the requests' status.
  std::string DeadReason(absl::Time now) const;

 private:
  const Role role_;
  const Options options_;
  absl::Time last_heard_;
  absl::Time last_sent_;  // requester: last heartbeat
  bool busy_ = false;     // requester: requests were outstanding at the last Check
  absl::Time busy_since_;
  bool heartbeat_outstanding_ = false;
};

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_PEER_LIVENESS_H_
