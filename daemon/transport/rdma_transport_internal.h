// Private to RdmaTransport's files (rdma_transport.cc, rdma_connection.cc,
// rdma_requester.cc, rdma_responder.cc): the connection and listener state
// they share, and the functions one file calls in another. Nothing outside
// daemon/transport/rdma_*.cc includes this header.
//
// Thread contract (the threads themselves: rdma_transport.h):
//
// - A home-side Connection is set up (CreateResources and the plain fields
//   before it) by the listener thread while nobody else can see it
//   (RdmaTransport::Accept), then published under the transport's mu_ and
//   its thread started. A requester-side Connection is published at once,
//   unconnected (GetConnection: the caller of Read/Write never waits for a
//   connect): its thread sets it up (ConnectAndRun: address, route,
//   CreateResources, the connect) while callers queue chunks on it, then
//   sets `connected` under mu. Nobody but its thread touches the set-up
//   fields before `connected` (PumpLocked checks it under mu; what the
//   thread wrote before setting it is visible to whoever reads it set).
//   From then on, until DestroyVerbs, the set-up fields are read-only:
//   role, node, incarnation, depth, slot_bytes, use_inline, the rdma_cm and
//   verbs objects, the control ring, the pool's memory (pool->slot(),
//   base()), pool_mr, server, exporter, fence, generation. wake_fd is set
//   before the connection is published.
// - The connection's thread alone touches unacked_cq_events, completions,
//   heartbeat_answered, liveness, the home side's serving/backlog, the
//   connection's rdma_cm events, and calls DestroyVerbs once `dead` is set
//   and no exporter job of the connection is left (exporter_jobs == 0):
//   nobody posts after that (Submit, PumpLocked and PostResponse check
//   `dead` under mu).
// - Home side: the exporter's reads and writes (BlockServer calls) run on
//   the transport's exporter workers (ExporterPool; with one CPU online,
//   none: on the connection's thread), so one slow page (an exporter page
//   fault, a contended mmap_lock) does not hold up the completions, the
//   receives, the heartbeats and the other requests of the peer. A job
//   names a pool slot the connection's thread acquired; the worker fills or
//   drains it, then posts the response itself (PostResponse, under mu).
// - Connection::mu guards `dead`, `why`, `connected`, `setup_status`, the
//   requester's tables (heartbeat_slot included), the pool's free list
//   (pool->Acquire/Release/free_slots, on both sides: the pool is also the
//   window), each Op's chunks_left and status, and the home side's
//   unreleased and exporter_jobs. It is never held while `done` runs or
//   while a BlockServer call runs.
// - NodeFence::mu is held across each WriteBlocks call of a home
//   connection (by the exporter worker that runs it, or the connection's
//   thread without workers), and taken by a newer connection's thread from
//   the same node before it serves anything: a write that arrived on a
//   replaced connection can never reach the exporter after one that
//   arrived on its replacement (a replaced connection's queued writes see
//   the newer generation and drop their connection). Taken after no other
//   lock.
// - Lock order: RdmaTransport::mu_ before a Connection's mu (GetConnection,
//   Disconnect, Accept); never the other way round.
// - Posting: a requester posts its SENDs (requests, heartbeats) from any
//   thread, under mu (PumpLocked: the caller of Read/Write, or the
//   connection's thread when a slot frees; it releases mu only to copy
//   write data into slots it already took; SendHeartbeat: the connection's
//   thread); a home posts its responses from an exporter worker under mu
//   (so that `unreleased` is in posting order), and its heartbeat answers
//   and RDMA READs from the connection's thread, without mu (verbs
//   serialise posts to one QP). Receives are reposted by the connection's
//   thread.
#ifndef TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_INTERNAL_H_
#define TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_INTERNAL_H_

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "daemon/common/thread_role.h"
#include "daemon/common/work_queue.h"
#include "daemon/transport/buffer_pool.h"
#include "daemon/transport/peer_liveness.h"
#include "daemon/transport/rdma_transport.h"
#include "daemon/transport/rdma_wire.h"

namespace tether {

// Requests are sent unsignalled but for one in min(kSignalEvery, depth):
// the send queue (2 x depth + 4 entries) then never fills with entries
// that no completion retires.
inline constexpr uint32_t kSignalEvery = 8;

// wr_id: kind in the high half, ring or pool slot index in the low half.
// kHeartbeat: a home's answer to a heartbeat (a zero-length SEND; the
// requester's heartbeat itself goes out as a kSendRequest). kSendAuth: the
// requester's AUTH.
enum WrKind : uint32_t {
  kRecv = 1,
  kSendRequest = 2,
  kSendResponse = 3,
  kRdmaRead = 4,
  kHeartbeat = 5,
  kSendAuth = 6  // the requester's AUTH (rdma_wire.h), its connection's first SEND
};
inline uint64_t WrId(WrKind kind, uint32_t index) { return (uint64_t{kind} << 32) | index; }
inline WrKind KindOf(uint64_t wr_id) { return static_cast<WrKind>(wr_id >> 32); }
inline uint32_t IndexOf(uint64_t wr_id) { return static_cast<uint32_t>(wr_id); }

// ---------------------------------------------------------------- Connection

// One RC queue pair with one peer, requester or home side (rdma_connection.cc
// sets it up and runs its thread; rdma_requester.cc and rdma_responder.cc
// move the data). Owned by shared_ptr: the transport's tables, Submit while
// it posts.
struct RdmaTransport::Connection {
  enum class Role { kRequester, kHome };

  // A caller's request; split into chunks of at most one slot each.
  struct Op {
    bool is_read = true;
    // A write of a page diff: each chunk is a WRITE_DIFF_REQ of the whole
    // op's `offset` (its pieces are diffs of the same base, SplitDiff).
    bool diff = false;
    uint64_t segid = 0, grant = 0, offset = 0;
    absl::Span<uint8_t> dst;
    absl::Span<const uint8_t> src;
    Done done;
    // Instead of `done`, for a read of one chunk (ReadInPlace): handed the
    // requester's slot the home wrote into, before the slot is released.
    ReadDone in_place;
    // Guarded by the connection's mu (not expressible as ABSL_GUARDED_BY:
    // an Op does not know its connection). Whoever takes chunks_left to 0
    // runs `done`, outside mu.
    uint32_t chunks_left = 0;
    absl::Status status;  // first failure
    // A chunk was posted: if the connection is lost now, the home may have
    // served (part of) it (FailChunks: LostInFlight, not NotSent).
    bool sent = false;
  };
  // Turns an in-place read into one whose chunks are copied into its
  // `dst` (it no longer fits one slot); its completion is handed `dst`.
  static void CopyInsteadOfInPlace(Op& op) {
    op.done = [dst = op.dst, in_place = std::move(op.in_place)](absl::Status st) mutable {
      absl::Span<const uint8_t> data;
      if (st.ok()) data = dst;
      std::move(in_place)(std::move(st), data);
    };
    op.in_place = nullptr;
  }
  // Runs the op's completion (`data`: for an in-place read, its bytes in
  // the slot; empty otherwise). Outside mu, once chunks_left reached 0.
  static void Complete(Op& op, absl::Span<const uint8_t> data) {
    if (op.in_place) {
      std::move(op.in_place)(op.status, op.status.ok() ? data : absl::Span<const uint8_t>());
    } else {
      std::move(op.done)(op.status);
    }
  }
  struct Chunk {
    std::shared_ptr<Op> op;
    uint64_t op_offset = 0;
    uint32_t length = 0;
    bool sent = false;  // set by MarkDead for the chunks it takes from `inflight`
  };

  // Set up before the connection is shared, then read-only (see above).
  Role role = Role::kRequester;
  uint32_t node = 0;         // the peer
  uint64_t incarnation = 0;  // requester: the home daemon's (DataEndpoint), 0 unknown
  // A requester's are what it asks for until the home's accept answers;
  // its connection's thread then sets the answer under mu (Submit reads
  // slot_bytes under mu to cut requests); fixed once `connected`.
  uint32_t depth = 0, slot_bytes = 0;
  bool use_inline = false;

  rdma_event_channel* cm = nullptr;  // this connection's own event channel
  rdma_cm_id* id = nullptr;
  ibv_pd* pd = nullptr;
  ibv_comp_channel* comp = nullptr;
  ibv_cq* cq = nullptr;
  bool qp_created = false;
  // Which device, port and queue pair (set with the queue pair): for
  // matching the device's async events (OnAsyncEvent) against connections;
  // compared only, never dereferenced, so they may outlive DestroyVerbs.
  const ibv_context* verbs = nullptr;
  uint8_t port = 0;
  const ibv_qp* qp = nullptr;
  uint8_t* ctrl = nullptr;  // [depth receive messages][depth send messages]
  size_t ctrl_bytes = 0;
  ibv_mr* ctrl_mr = nullptr;
  // Its memory is set up once; its free list (Acquire, Release,
  // free_slots) is guarded by mu.
  std::optional<BufferPool> pool;
  ibv_mr* pool_mr = nullptr;
  int wake_fd = -1;
  unsigned unacked_cq_events = 0;  // the connection's thread only
  // Requester side, polling while requests are in flight: when the last
  // request was posted (absl::GetCurrentTimeNanos), and whether the
  // connection's thread sleeps in poll(2). A post to a sleeping thread
  // wakes it (when it spins at all: spin_us > 0) so that it polls for the
  // answer instead of taking the completion interrupt and a wake-up after
  // it; a wake-up missed in between costs only that.
  int spin_us = 0;
  std::atomic<int64_t> last_post_ns{0};
  std::atomic<bool> sleeping{false};

  BlockServer* server = nullptr;  // home side
  // Home side: where BlockServer calls run (null: on this thread).
  RdmaTransport::ExporterPool* exporter = nullptr;
  // Home side: the requester node's fence, and this connection's place in
  // the order of connections from that node (Accept numbers them).
  std::shared_ptr<NodeFence> fence;
  uint64_t generation = 0;
  // Home side, the handshake (rdma_wire.h): the dialer's connect request
  // (its node ids and nonce), our nonce, its data token here (cleared once
  // used), and when the connection is dropped if its AUTH has not checked
  // out by then. Set before the connection is shared, then the
  // connection's thread's. `authenticated`: AUTH checked out, requests
  // are served; set by the connection's thread, read by the listener
  // thread (it caps the connections still waiting for their AUTH).
  RdmaConnectData auth_request;
  AuthNonce home_nonce{};
  std::string auth_token;
  absl::Time auth_deadline = absl::InfiniteFuture();
  std::atomic<bool> authenticated{false};
  std::string peer_address;  // for log lines ("10.0.0.2:40312"; home side)
  // The connection's thread only: completions seen (a sign of life, read by
  // the liveness check without a clock read per completion), a heartbeat's
  // answer not yet told to `liveness`, and the liveness state itself.
  uint64_t completions = 0;
  bool heartbeat_answered = false;
  std::optional<PeerLiveness> liveness;
  ThreadRole thread_role;  // bound by the connection's thread as it starts
  RdmaTransport* owner = nullptr;
  // Started under the transport's mu_; joined under it (ReapLocked) or by
  // Shutdown once it took the connection out of all_conns_.
  std::thread thread;
  std::atomic<bool> finished{false};  // set when the thread is done

  absl::Mutex mu;
  bool dead ABSL_GUARDED_BY(mu) = false;
  std::string why ABSL_GUARDED_BY(mu);
  // Requester side: set up (chunks may be posted); the set-up's failure,
  // which the chunks queued meanwhile get (a SetupFailure: DataPath sends
  // them over tcp).
  bool connected ABSL_GUARDED_BY(mu) = false;
  absl::Status setup_status ABSL_GUARDED_BY(mu);
  // The pool slot an outstanding heartbeat holds (its credit: the home's
  // receive it uses), if one is outstanding.
  std::optional<uint32_t> heartbeat_slot ABSL_GUARDED_BY(mu);
  // The connection died because its port or device failed (an async
  // event): requests that were never answered by a home that may have seen
  // them fail as usual, but reads and requests never sent fail as set-up
  // failures, so DataPath sends them over tcp (FailChunks).
  bool device_failed ABSL_GUARDED_BY(mu) = false;
  // Requester side.
  std::vector<std::optional<Chunk>> inflight ABSL_GUARDED_BY(mu);  // by slot
  std::vector<uint64_t> inflight_req ABSL_GUARDED_BY(mu);          // req id by slot
  std::deque<Chunk> waiting ABSL_GUARDED_BY(mu);
  uint64_t next_req ABSL_GUARDED_BY(mu) = 1;
  uint32_t unsignaled_sends ABSL_GUARDED_BY(mu) = 0;
  // PumpLocked's batches: numbered as they take chunks from `waiting`,
  // posted in that order; `copying` counts those copying write data with
  // mu released (RunConnection waits for 0 before it fails their chunks).
  uint64_t next_batch ABSL_GUARDED_BY(mu) = 0;
  uint64_t posted_batches ABSL_GUARDED_BY(mu) = 0;
  int copying ABSL_GUARDED_BY(mu) = 0;
  // Home side (only the connection thread touches these): the request each
  // pool slot serves, and requests that arrived before the completion of
  // the response that frees their slot was seen (the requester may see our
  // response before we see our send complete).
  std::vector<RdmaMessage> serving;
  std::deque<RdmaMessage> backlog;
  // Slots whose response was posted, in posting order. Responses go out
  // unsignalled but for one in kSignalEvery (or when the pool is empty):
  // completions of one send queue arrive in order, so a signalled one
  // retires every slot posted before it.
  std::deque<uint32_t> unreleased ABSL_GUARDED_BY(mu);
  // Exporter jobs of this connection queued or running on the workers;
  // the connection's thread waits for 0 before it releases the pool.
  uint32_t exporter_jobs ABSL_GUARDED_BY(mu) = 0;

  ~Connection() { Destroy(); }

  uint8_t* recv_msg(uint32_t i) const { return ctrl + static_cast<size_t>(i) * kRdmaMessageSize; }
  uint8_t* send_msg(uint32_t i) const {
    return ctrl + static_cast<size_t>(depth + i) * kRdmaMessageSize;
  }
  // The requester's AUTH, after the send messages: a buffer of its own, so
  // that the requests that follow it at once never overwrite it in flight.
  uint8_t* auth_msg() const { return ctrl + 2 * static_cast<size_t>(depth) * kRdmaMessageSize; }

  // On the setting-up thread, before the connection is shared (hence no mu
  // for the tables it sizes). CreateResources is both parts, for a home
  // (which knows the negotiated depth and slot size before it accepts). A
  // requester creates the queue pair, sized for what it asks, before it
  // connects, and the buffers once the home's accept said what to use.
  absl::Status CreateResources(const std::string& what) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  absl::Status CreateQueuePair(const std::string& what);
  absl::Status CreateBuffers(const std::string& what) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // On the connection's thread (or in CreateResources).
  absl::Status PostRecv(uint32_t i);
  // Home side, on the connection's thread: the first message arrived in
  // receive slot `i`; it must be the dialer's AUTH with the right proof
  // (false and `why` otherwise: the connection is dropped, nothing served).
  bool CheckAuth(uint32_t i, uint32_t byte_len, std::string* why);
  // Home side, once AUTH checked out: from now on this connection speaks
  // for its node. Only now does it fence off the node's older connections'
  // write-backs and replace those connections: a replayed connect request,
  // which never gets this far, can neither.
  void Authenticated() ABSL_LOCKS_EXCLUDED(mu);
  // The device's async fd is readable (on the connection's thread).
  void AsyncEventsReady(ibv_context* v) { owner->ReadAsyncEvents(v); }
  // Any thread: makes the connection's thread look at `dead` and the
  // transport's shutdown.
  void Wake() {
    uint64_t one = 1;
    if (wake_fd >= 0) (void)!write(wake_fd, &one, sizeof(one));
  }
  // Marks the connection dead and returns every chunk it still owed (the
  // caller completes them outside mu; FailChunks tells the sent from the
  // never-sent). On the connection's thread.
  std::vector<Chunk> MarkDead(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Releases every verbs and rdma_cm object (the device can then go away:
  // librdmacm closes a removed device once nothing references it). Only
  // once the connection is dead and its thread is done with them: on the
  // connection's thread as it ends, or in ~Connection.
  void DestroyVerbs();
  // ~Connection: the last owner, once the thread (if any) was joined.
  void Destroy() {
    DestroyVerbs();
    if (wake_fd >= 0) close(wake_fd);
    wake_fd = -1;
  }
};

using Conn = RdmaTransport::Connection;

// One per requester node at a home: orders the write-backs of successive
// connections from that node (the thread contract above). `current` is
// the newest connection's generation that started serving.
struct RdmaTransport::NodeFence {
  absl::Mutex mu;
  uint64_t current ABSL_GUARDED_BY(mu) = 0;
};

// ---------------------------------------------------------------- exporter workers

// A home's exporter access for one request, off the connection's thread:
// read the exporter into pool slot `slot` and answer with the data, or (a
// write whose bytes an RDMA READ brought into the slot) write them to the
// exporter and answer.
struct ExporterJob {
  Conn* c = nullptr;  // alive: its thread waits for its jobs (exporter_jobs)
  uint32_t slot = 0;
  RdmaMessage m;
};

// A few threads shared by every home connection of the transport, started
// by Listen, stopped by Shutdown once every connection's thread was joined
// (those wait for their jobs). Any worker takes any job: requests of one
// peer are independent (each names its own slot and range; a mapper never
// has a read and a write of one page in flight at once).
struct RdmaTransport::ExporterPool {
  static constexpr int kWorkers = 2;  // Options::exporter_workers -1, >1 CPU
  WorkQueue<ExporterJob> jobs;
  std::vector<std::thread> threads;
};

// The listening rdma_cm id and its event channel. Created by Listen before
// the listener thread starts; `id` is then the listener thread's (it drops
// and re-creates it around a device removal); destroyed by Shutdown after
// that thread was joined.
struct RdmaTransport::Listener {
  rdma_event_channel* cm = nullptr;
  rdma_cm_id* id = nullptr;
  int wake_fd = -1;
  ~Listener() {
    if (id != nullptr) rdma_destroy_id(id);
    if (cm != nullptr) rdma_destroy_event_channel(cm);
    if (wake_fd >= 0) close(wake_fd);
  }
};

// ---------------------------------------------------------------- requester
// rdma_requester.cc.

// Posts as many waiting chunks as there are free slots, notes the time
// (last_post_ns) and wakes a sleeping connection thread to poll for the
// answers. Any thread: the caller of Read/Write (Submit), or the
// connection's thread as slots free.
void PumpLocked(Conn* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu);
// Completes chunks that will never be answered. On the connection's thread,
// as it ends: never-sent chunks fail as NotSent (or with the set-up's
// failure, if the connection never came up), sent ones as LostInFlight
// (transport.h).
void FailChunks(Conn* c, std::vector<Conn::Chunk> owed, const std::string& why)
    ABSL_LOCKS_EXCLUDED(c->mu);
// Sends a heartbeat if the connection is up, idle and has a free slot for
// it (false: not sent). On the requester connection's thread.
bool SendHeartbeat(Conn* c) ABSL_LOCKS_EXCLUDED(c->mu);
// The home answered our heartbeat (a zero-length SEND in receive slot
// `i`). On the connection's thread; false on a failure as below.
bool HeartbeatAnswered(Conn* c, uint32_t i, std::string* why) ABSL_LOCKS_EXCLUDED(c->mu);
// A response (SEND) arrived in receive slot `i`. On the connection's thread;
// false (and `why`) on a failure that drops the connection.
bool CompleteRequest(Conn* c, uint32_t i, uint32_t byte_len, std::string* why)
    ABSL_LOCKS_EXCLUDED(c->mu);
// A read's data and answer arrived as one WRITE_WITH_IMM, consuming receive
// slot `i`. On the connection's thread; false on a failure as above.
bool CompleteRead(Conn* c, uint32_t i, uint32_t imm, uint32_t byte_len, std::string* why)
    ABSL_LOCKS_EXCLUDED(c->mu);

// ---------------------------------------------------------------- responder
// rdma_responder.cc. All on the home connection's thread; false (and `why`)
// on a failure that drops the connection. They call the BlockServer.

// A heartbeat (a zero-length SEND) arrived in receive slot `i`: answer it.
bool AnswerHeartbeat(Conn* c, uint32_t i, std::string* why) ABSL_LOCKS_EXCLUDED(c->mu);
// A request arrived in receive slot `i`.
// (ServeRequest, ResponseSent, WriteFetched: on the connection's thread;
// RunExporterJob: on an exporter worker.)
bool ServeRequest(Conn* c, uint32_t i, uint32_t byte_len, std::string* why)
    ABSL_LOCKS_EXCLUDED(c->mu);
// A signalled response from pool slot `slot` completed.
bool ResponseSent(Conn* c, uint32_t slot, std::string* why) ABSL_LOCKS_EXCLUDED(c->mu);
// The RDMA READ of a write's bytes into pool slot `slot` completed.
bool WriteFetched(Conn* c, uint32_t slot, std::string* why) ABSL_LOCKS_EXCLUDED(c->mu);
// Runs one exporter job and posts its response; a failure to post drops
// the connection (marks it dead and wakes its thread).
void RunExporterJob(const ExporterJob& job) ABSL_LOCKS_EXCLUDED(job.c->mu);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_RDMA_TRANSPORT_INTERNAL_H_
