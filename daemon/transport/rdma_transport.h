// RdmaTransport: the data transport over RDMA (rdma-core: librdmacm for
// connection set-up, libibverbs for the data path), for nodes whose verbs
// devices reach each other — InfiniBand, RoCE, or Soft-RoCE (rdma_rxe).
//
// Shape (one RC queue pair per home node, like TcpTransport's connection):
//
//   requester (mapper's daemon)              home
//   ---------------------------              ----
//   slot = pool.Acquire()  (else queue)
//   [write: copy src into slot]
//   SEND  READ_REQ/WRITE_REQ{slot addr,rkey} ─▶ RECV  (repost at once)
//                                             read:  BlockServer::ReadBlocks
//                                                    into a home slot,
//   RECV (imm = request)  ◀─ RDMA WRITE_WITH_IMM ─  home slot → requester slot
//                                             write: RDMA READ requester slot
//                                                    → home slot, WriteBlocks
//   RECV  WRITE_RESP, or a refusal  ◀─ SEND ─
//   [read: copy slot into dst]; pool.Release(slot); done(status)
//
// - Memory is registered once per connection (a BufferPool of queue_depth
//   slots of slot_bytes, plus the control-message rings): nothing is
//   registered on the fault path.
// - Flow control: the requester's pool is its window. Each side posts
//   queue_depth receives, the home reposts before it answers, so a
//   requester holding a free slot always has a receive waiting at the home.
//   Requests beyond the window queue and are posted as slots free; requests
//   larger than a slot are split and posted as one chained ibv_post_send
//   (read-ahead batches).
// - Completions: one thread per connection polls its CQ, spins for a short
//   while after the last completion when more than one CPU is online
//   (adaptive polling), then arms the completion channel and sleeps in
//   poll(2) together with the connection's rdma_cm events and a wake fd.
// - Authentication: the connect request's private data carries the
//   requester's node id and the home's data token for that node, learned
//   over the mutually authenticated control plane (data_token.h); a
//   mismatch is rejected before any resource is created for the peer.
// - Failure: a work completion error, a DISCONNECTED or DEVICE_REMOVAL
//   event or Disconnect() fails every request in flight or queued with
//   UNAVAILABLE and drops the connection; the next request reconnects.
//   Data is only ever placed in the pool, never in a caller's buffer, so a
//   late RDMA WRITE_WITH_IMM cannot land in memory that was handed back.
// - Device removal: the connection's thread releases its verbs objects at
//   once and the listener drops its id (a removed device waits for its
//   last user), then listens again at the same address when a device
//   serves it. Connects that cannot reach the peer meanwhile are set-up
//   failures: DataPath sends those requests over tcp (no write-back lost).
#ifndef TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_H_
#define TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/transport/transport.h"

namespace tether {

class RdmaTransport : public Transport {
 public:
  struct Options {
    uint32_t queue_depth = 32;           // requests in flight per connection
    uint32_t slot_bytes = 256 * 1024;    // one read-ahead batch
    int spin_us = -1;                    // adaptive polling; -1: 50 µs if >1 CPU, else 0
    int connect_timeout_ms = 3000;
  };

  // True if a verbs device with an active port exists (the automatic
  // transport choice); `why` says what was found or missing.
  static bool DeviceAvailable(std::string* why);

  explicit RdmaTransport(uint32_t local_node);
  RdmaTransport(uint32_t local_node, Options options);
  ~RdmaTransport() override;

  const char* name() const override { return "rdma"; }
  // `secret` derives the per-node tokens that connect requests must carry.
  absl::Status Listen(const std::string& address, std::string secret,
                      BlockServer* server, NoticeServer* notices) override;
  std::string bound_address() const override;
  // Uses home.rdma_address and home.token.
  void Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
            absl::Span<uint8_t> dst, Done done) override;
  void Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Done done) override;
  void Disconnect(uint32_t node) override;
  void Shutdown() override;

  struct Connection;  // rdma_transport.cc

 private:
  struct Listener;

  absl::StatusOr<std::shared_ptr<Connection>> GetConnection(const DataEndpoint& home);
  void Submit(const DataEndpoint& home, bool is_read, uint64_t segid, uint64_t grant,
              uint64_t offset, absl::Span<uint8_t> dst, absl::Span<const uint8_t> src,
              Done done);
  void ListenLoop();
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint32_t local_node_;
  const Options options_;
  std::atomic<bool> shutting_down_{false};

  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Connection>> conns_ ABSL_GUARDED_BY(mu_);
  // Every connection whose thread may still run (requester and home side).
  std::vector<std::shared_ptr<Connection>> all_conns_ ABSL_GUARDED_BY(mu_);

  std::unique_ptr<Listener> listener_;
  std::string bound_address_;
  std::string secret_;
  BlockServer* server_ = nullptr;
  std::thread listen_thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_H_
