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
//                                             read:  an exporter worker:
//                                                    BlockServer::ReadBlocks
//                                                    into a home slot,
//   RECV (imm = request)  ◀─ RDMA WRITE_WITH_IMM ─  home slot → requester slot
//                                             write: RDMA READ requester slot
//                                                    → home slot; a worker:
//                                                    WriteBlocks
//   RECV  WRITE_RESP, or a refusal  ◀─ SEND ─
//   read: done(status) handed the slot (ReadInPlace, one slot), or the
//   slot copied into dst; pool.Release(slot)
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
// - Completions: one thread per connection polls its CQ. When more than
//   one CPU is online it keeps polling for spin_us after the last
//   completion and, on a requester with requests in flight, for 4 x
//   spin_us after the last post (a post wakes it if it slept: it polls
//   for the answer instead of taking an interrupt and a wake-up after
//   it); then it arms the completion channel and sleeps in poll(2)
//   together with the connection's rdma_cm events and a wake fd.
// - Copies of page contents: home, one (process_vm_readv/writev between
//   the exporter and the home's registered slot); mapper, one for a
//   ReadInPlace of up to a slot (UFFDIO_COPY from the registered slot),
//   two otherwise (slot → dst, then the caller's).
// - Authentication: a challenge and response both ways (rdma_wire.h,
//   data_token.h): the connect request carries the requester's node id
//   and nonce, the accept the home's nonce and its proof of the token the
//   home gave that node over the mutually authenticated control plane,
//   and the requester's first message its own proof. The token never
//   crosses the fabric; the home serves nothing before the proof, drops a
//   connection without one after kRdmaAuthTimeoutMs and holds at most
//   kRdmaMaxUnauthenticated such connections.
// - Negotiation: the connect request also carries the requester's queue
//   depth and slot size, and the accept what the connection uses (the
//   smaller of each side's Options). A refusal says why in the reject's
//   private data; which refusals are set-up failures (tcp fallback):
//   rdma_wire.h, RdmaRejectStatus.
// - Fabric options on every id: ToS (RoCE priority, hence the PFC class),
//   the ACK timeout exponent, and a source address for outgoing connects.
// - Failure: a work completion error, a DISCONNECTED, UNREACHABLE,
//   CONNECT_ERROR or DEVICE_REMOVAL event, a fatal QP async event, a
//   silent peer (PeerLiveness: nothing heard for peer_timeout_ms while a
//   request or a heartbeat is owed; the requester sends a zero-length SEND
//   heartbeat after heartbeat_interval_ms of quiet, the home answers it,
//   and a home hears from a live requester at least that often) or
//   Disconnect() drops the connection and fails what it owed with
//   UNAVAILABLE: requests never sent tagged NotSent, requests in flight
//   LostInFlight (transport.h; DataPath retries them). A port error or
//   fatal device async event does the same to every connection on that
//   port or device, but fails their reads and never-sent requests as
//   set-up failures (DataPath: over tcp at once). The next request
//   reconnects. Data is only ever placed in the pool, never in a caller's
//   buffer, so a late RDMA WRITE_WITH_IMM cannot land in memory that was
//   handed back.
// - One connection per (home node, incarnation): an endpoint with a newer
//   incarnation (the home restarted) replaces the connection; callers
//   that find a connection being set up queue on it. A home keeps one
//   connection per requester node: a new connect from the node replaces
//   (frees) the old one, and a NodeFence keeps the old one's write-backs
//   from reaching the exporter after the new one's.
// - Device removal: the connection's thread releases its verbs objects at
//   once and the listener drops its id (a removed device waits for its
//   last user), then listens again at the same address when a device
//   serves it. Connects that cannot reach the peer meanwhile are set-up
//   failures: DataPath sends those requests over tcp (no write-back lost).
//
// Thread contract:
// - Listen and Shutdown: the owner's thread (tetherd's start and stop),
//   once each. Shutdown wakes and joins every thread below; `server` must
//   outlive it.
// - Read, Write, Disconnect: any thread (a transport that only requests
//   needs no Listen); bound_address: once Listen returned. Read and Write
//   never wait for the network: on first use they publish an unconnected
//   connection and queue on it; its thread connects (ConnectAndRun:
//   address and route resolution and the connect, each bounded by
//   connect_timeout_ms + 0.5 s) and then posts what queued.
// - Threads: one listener thread (ListenLoop: connect requests, the
//   listener's device removal, listening again, its device's async events)
//   and one thread per connection on either side (RunConnection:
//   completions, the connection's rdma_cm events, wake-ups, the liveness
//   checks and heartbeats, its device's async events; a requester's thread
//   first connects), and, once Listen ran, the exporter workers shared by
//   the home connections (two when more than one CPU is online: the
//   BlockServer calls and the responses after them, so that a slow
//   exporter page holds up only its own request). ReadAsyncEvents runs on
//   whichever of them saw the device's async fd readable, without locks
//   held, and takes mu_ and the connections' mu in that order. `done` runs
//   on a connection's thread, or inline on the caller's thread when the
//   request fails before it is posted; home-side BlockServer calls run on
//   an exporter worker (without workers: on the connection's thread),
//   writes under the requester node's NodeFence. No lock is held while
//   either runs.
// - mu_ guards conns_ and all_conns_ and is taken before a Connection's mu,
//   never after. Listen writes listener_, bound_address_, secret_ and
//   server_ before the listener thread starts; they are read-only after
//   (until Shutdown), but for listener_->id, which is the listener
//   thread's.
// - The files: rdma_transport.cc (this API), rdma_connection.cc (listener,
//   connect/accept, set-up and teardown, the connection's thread, device
//   discovery), rdma_requester.cc (posting requests, their completions),
//   rdma_responder.cc (serving a peer's requests), and
//   rdma_transport_internal.h (the Connection they share, its contract).
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
#include "absl/time/time.h"
#include "daemon/transport/transport.h"

struct rdma_cm_event;  // <rdma/rdma_cma.h>
struct ibv_context;    // <infiniband/verbs.h>

namespace tether {

class RdmaTransport : public Transport {
 public:
  struct Options {
    // What this node asks for as a requester and allows as a home; a
    // connection uses the smaller of the two sides' values (negotiated in
    // the connect's private data, rdma_wire.h).
    uint32_t queue_depth = 32;         // requests in flight per connection
    uint32_t slot_bytes = 256 * 1024;  // one read-ahead batch
    int spin_us = -1;                  // adaptive polling; -1: 50 µs if >1 CPU, else 0
    // Home side: threads that read and write the exporter off the
    // connections' threads; -1: 2 if >1 CPU, else 0 (0: on the connection's
    // thread: with one CPU a hand-off only adds a switch per request).
    int exporter_workers = -1;
    int connect_timeout_ms = 3000;
    int heartbeat_interval_ms = 1000;  // quiet time before a requester's heartbeat
    int peer_timeout_ms = 5000;        // silence (while owed an answer) that kills a connection
    // Connections a home accepts at once (each pins its pool); more are
    // refused with kTooManyConnections and their requests go over tcp.
    uint32_t max_connections = 256;
    int tos = -1;          // RDMA_OPTION_ID_TOS on every id (0..255); -1: rdma_cm's default
    int ack_timeout = -1;  // RDMA_OPTION_ID_ACK_TIMEOUT, 4.096 µs × 2^n (1..31); -1: default
    std::string source;    // numeric host:port to connect from ("" or port 0: any)
    // Tests only (TETHER_TEST_HOOKS=1): log each connect request's private
    // data, so that a test can replay a genuine one (tests/vm/rdma_test.py).
    // It holds no secret since wire version 6: a node id, a nonce, sizes.
    bool log_connect_requests = false;
  };

  // Checks `o` (a bad value is a start-up error that names it); a source
  // address must also be one a verbs device owns.
  static absl::Status CheckOptions(const Options& o);

  // True if a verbs device with an active port exists (the automatic
  // transport choice); `why` says what was found or missing.
  static bool DeviceAvailable(std::string* why);

  explicit RdmaTransport(uint32_t local_node);
  RdmaTransport(uint32_t local_node, Options options);
  ~RdmaTransport() override;

  const char* name() const override { return "rdma"; }
  // `secret` derives the per-node tokens whose proofs connections must show.
  absl::Status Listen(const std::string& address, std::string secret, BlockServer* server,
                      NoticeServer* notices) override;
  std::string bound_address() const override;
  // Uses home.rdma_address and home.token.
  void Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
            absl::Span<uint8_t> dst, Done done) override;
  void Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Done done) override;
  // Cut at page entries into slot-sized WRITE_DIFF_REQs (SplitDiff), each
  // a diff of `offset`; a connection whose slot is smaller than one page's
  // entry (kMaxDiffEntry: --rdma_slot_kb=4) fails it as a set-up failure,
  // so DataPath sends it over tcp.
  void WriteDiff(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                 absl::Span<const uint8_t> diff, Done done) override;
  // A read of at most one slot hands `done` the requester's slot itself
  // (the home wrote into it; released when `done` returns): no copy out of
  // registered memory. Larger reads are split and copied into `dst`.
  void ReadInPlace(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                   absl::Span<uint8_t> dst, ReadDone done) override;
  void Disconnect(uint32_t node) override;
  void Shutdown() override;

  struct Connection;  // rdma_transport_internal.h

 private:
  struct Listener;      // rdma_transport_internal.h
  struct NodeFence;     // rdma_transport_internal.h
  struct ExporterPool;  // rdma_transport_internal.h

  // rdma_requester.cc: a Read or Write, on the caller's thread.
  // `in_place` (reads of at most one slot only) replaces `done`. `diff`:
  // a write whose `src` is a page diff (WriteDiff).
  void Submit(const DataEndpoint& home, bool is_read, uint64_t segid, uint64_t grant,
              uint64_t offset, absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Done done,
              ReadDone in_place = nullptr, bool diff = false) ABSL_LOCKS_EXCLUDED(mu_);
  // rdma_connection.cc. The live connection to `home` (this incarnation),
  // or a new one being set up by its own thread (never blocks): on the
  // caller's thread. An error only for an endpoint no connect could use.
  absl::StatusOr<std::shared_ptr<Connection>> GetConnection(const DataEndpoint& home)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A requester connection's thread: sets it up, then runs it.
  void ConnectAndRun(Connection* c, const DataEndpoint& home);
  // Sets up a requester connection (on its thread; bounded).
  absl::Status Connect(Connection* c, const DataEndpoint& home);
  // The listener thread's loop, and its parts (on that thread only):
  // listening again after a device removal, and accepting one connect
  // request (false: the transport is shutting down).
  void ListenLoop();
  void Relisten(absl::Time* relisten_at);
  bool Accept(rdma_cm_event* ev, int spin_us) ABSL_LOCKS_EXCLUDED(mu_);
  // Joins and forgets connections whose thread has finished (any thread).
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads and acts on `verbs`'s async events (its fd is non-blocking): a
  // port error or a fatal device error fails every connection on that
  // port or device as if it could not be set up (their reads and unsent
  // requests go over tcp, rdma is tried again later); a fatal QP error
  // drops that connection; PORT_ACTIVE is logged. Whoever saw the fd
  // readable: a connection's thread or the listener thread.
  void ReadAsyncEvents(ibv_context* verbs) ABSL_LOCKS_EXCLUDED(mu_);

  const uint32_t local_node_;
  const Options options_;
  std::atomic<bool> shutting_down_{false};

  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Connection>> conns_ ABSL_GUARDED_BY(mu_);
  // Every connection whose thread may still run (requester and home side).
  std::vector<std::shared_ptr<Connection>> all_conns_ ABSL_GUARDED_BY(mu_);
  // Home side: per requester node, the fence of its connections' writes,
  // and the generation the next accepted connection gets.
  absl::flat_hash_map<uint32_t, std::shared_ptr<NodeFence>> fences_ ABSL_GUARDED_BY(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_) = 1;

  // Set by Listen before the listener thread starts, then read-only (but
  // for listener_->id: the listener thread's).
  std::unique_ptr<Listener> listener_;
  std::string bound_address_;
  std::string secret_;
  BlockServer* server_ = nullptr;
  std::thread listen_thread_;
  // Home side: the exporter workers (started by Listen, stopped by
  // Shutdown after the connections' threads).
  std::unique_ptr<ExporterPool> exporter_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_H_
