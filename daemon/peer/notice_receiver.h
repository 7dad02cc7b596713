// NoticeReceiver: a mapper node's end of the invalidation notices that
// homes send over notice connections (NoticeTransport::Notify), the fast path
// beside the Peer service's Invalidate call.
//
// range_begin is handled on the connection's serving thread before the
// answer: the ack means what it means over gRPC (copies dropped, faults
// blocked). range_end is handed to the target on that thread too, which
// only queues it (InvalidationTarget's contract: its write-backs of
// kept-aside pages wait for the home, and must not hold up the next
// range_begin queued behind it on the same connection — the home would
// fence us for it); each END then costs the exporter's path one thread
// hop, not two. Revocations are answered at once and handled in order on
// our own thread. A home's notice connection carries nothing else, so
// range_begin never waits behind a read either.
//
// Thread contract: Notice() runs on notice connections' serving threads,
// concurrently; Start() starts the one thread that handles revocations in
// arrival order; Stop() drains it and joins.
#ifndef TETHER_DAEMON_PEER_NOTICE_RECEIVER_H_
#define TETHER_DAEMON_PEER_NOTICE_RECEIVER_H_

#include <deque>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/invalidation/notice.h"
#include "daemon/transport/transport.h"

namespace tether {

class NoticeReceiver : public NoticeServer {
 public:
  explicit NoticeReceiver(InvalidationTarget* target);
  ~NoticeReceiver() override;

  // Never fails with kUnavailable (the home's channel reads that as a lost
  // connection and resends over gRPC): EINVAL for an undecodable notice,
  // EACCES for one that names another home than the connection's node.
  absl::Status Notice(uint32_t peer_node, absl::Span<const uint8_t> payload) override;
  void Start();
  // Handles what is queued, then stops the thread.
  void Stop();

 private:
  void Run();

  InvalidationTarget* const target_;
  absl::Mutex mu_;
  std::deque<InvalidationNotice> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_NOTICE_RECEIVER_H_
