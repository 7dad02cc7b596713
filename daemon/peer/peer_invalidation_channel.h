// PeerInvalidationChannel: how the home's InvalidationCoordinator reaches
// mapper nodes.
//
//   this node           a direct call to its own MapperInvalidation;
//   range_begin/_end    a NOTICE frame on the notice connection to the node
//                       (NoticeTransport::Notify, the tcp transport): one
//                       round trip of our own framing, the fast path;
//   revocations, and    the Peer service's Invalidate call (gRPC, mutual
//   any notice the      TLS, waits for a reconnecting peer).
//   fast path cannot
//   carry
//
// The notice connection (tcp, to the node's data listener, for notices
// only) is opened ahead of time — when the node is granted an attachment
// (Prepare), or after a notice had to go by gRPC — on this channel's own
// thread: connecting may block, and a range_begin must never spend its ack
// deadline on it. A notice that cannot be sent on it at once (Notify never
// waits: the peer stopped reading), or a connection lost with a notice in
// flight, resends that notice by gRPC.
//
// Thread contract: Send, SendToAll and Prepare may be called from any
// thread (the coordinator's callers) and never block; `done` runs on the
// transport's or gRPC's threads. One mutex guards the connect queue.
#ifndef TETHER_DAEMON_PEER_PEER_INVALIDATION_CHANNEL_H_
#define TETHER_DAEMON_PEER_PEER_INVALIDATION_CHANNEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/work_queue.h"
#include "daemon/invalidation/notice.h"

namespace tether {

class PeerDirectory;
class NoticeTransport;

class PeerInvalidationChannel : public InvalidationChannel {
 public:
  // `fast` may be null: then every notice to a peer goes by gRPC.
  PeerInvalidationChannel(uint32_t self, PeerDirectory* peers, NoticeTransport* fast,
                          InvalidationTarget* local);
  ~PeerInvalidationChannel() override;

  void Send(uint32_t node, const InvalidationNotice& notice, absl::Duration timeout,
            Done done) override;
  // Encodes the notice once for every node the fast path serves.
  void SendToAll(const std::vector<uint32_t>& nodes, const InvalidationNotice& notice,
                 absl::Duration timeout, NodeDone done) override;
  void Prepare(uint32_t node) override;
  // Starts the connecting thread. Notices may be sent before (connections
  // asked for meanwhile are opened once it runs).
  void Start();
  // Ends the connecting thread (before the PeerDirectory and transport go).
  void Stop();

 private:
  // True if `n` goes to `node` by a direct call or gRPC (Slow), not as a
  // NOTICE frame (Notify, with `payload` = EncodeNotice(*n)).
  bool TakesSlowPath(uint32_t node, const InvalidationNotice& n) const;
  void Slow(uint32_t node, const InvalidationNotice& n, absl::Duration timeout, Done done);
  void Notify(uint32_t node, std::shared_ptr<const InvalidationNotice> n,
              const std::string& payload, absl::Duration timeout, Done done);
  void Connect(uint32_t node);  // queues it for the thread
  void Run();

  const uint32_t self_;
  PeerDirectory* const peers_;
  NoticeTransport* const fast_;
  InvalidationTarget* const local_;

  absl::Mutex mu_;
  absl::flat_hash_set<uint32_t> queued_ ABSL_GUARDED_BY(mu_);
  // A node whose data listener we could not reach is not tried again
  // before this (its notices go by gRPC meanwhile).
  absl::flat_hash_map<uint32_t, absl::Time> retry_after_ ABSL_GUARDED_BY(mu_);
  WorkQueue<uint32_t> to_connect_;  // nodes in queued_, for the thread
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_PEER_INVALIDATION_CHANNEL_H_
