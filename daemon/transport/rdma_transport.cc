#include "daemon/transport/rdma_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/common/log.h"
#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"
#include "daemon/transport/buffer_pool.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/rdma_wire.h"
#include "daemon/transport/socket_address.h"

namespace tether {
namespace {

constexpr char kDeviceRemoved[] = "the rdma device was removed";
constexpr uint32_t kMaxInline = kRdmaMessageSize;
constexpr int kMaxRdAtomic = 16;
// Requests are sent unsignalled but for one in min(kSignalEvery, depth):
// the send queue (2 x depth + 4 entries) then never fills with entries
// that no completion retires.
constexpr uint32_t kSignalEvery = 8;

// wr_id: kind in the high half, ring or pool slot index in the low half.
enum WrKind : uint32_t { kRecv = 1, kSendRequest = 2, kSendResponse = 3, kRdmaRead = 4 };
uint64_t WrId(WrKind kind, uint32_t index) { return (uint64_t{kind} << 32) | index; }
WrKind KindOf(uint64_t wr_id) { return static_cast<WrKind>(wr_id >> 32); }
uint32_t IndexOf(uint64_t wr_id) { return static_cast<uint32_t>(wr_id); }

// The request id names the pool slot in its low 16 bits (the response is
// matched without a table lookup) and a per-connection counter above.
uint32_t SlotOfRequest(uint64_t req_id) { return static_cast<uint32_t>(req_id & 0xffff); }

// A connection that could not be set up. Tagged for DataPath's fallback to
// tcp when rdma itself cannot reach the peer (no address, route or device,
// resources, no answer: the peer's device may be gone); a peer that refuses
// (no listener: restarted or gone; a wrong token) would refuse tcp too.
absl::Status SetupError(int err, const std::string& what) {
  absl::Status st = ErrnoStatus(err, what);
  return err != ECONNREFUSED && err != EACCES ? SetupFailure(std::move(st)) : st;
}

// After a device removal, once this process no longer uses the device:
// librdmacm keeps a verbs context open per device and closes a removed one
// only when it re-reads the device list with nothing referencing it; until
// then a device without context disassociation (rxe) cannot finish going.
// The removal event may come before the device leaves the device list, so
// this is repeated for a while (RdmaTransport::ListenLoop, once a second).
void ReleaseRemovedDevices() {
  if (ibv_context** list = rdma_get_devices(nullptr)) rdma_free_devices(list);
}

// Until when ListenLoop keeps calling ReleaseRemovedDevices (ns since epoch).
std::atomic<int64_t> g_release_until_ns{0};
void NoteDeviceRemoval() {
  g_release_until_ns = absl::ToUnixNanos(absl::Now() + absl::Seconds(60));
  ReleaseRemovedDevices();
}

int EffectiveSpinUs(int configured) {
  if (configured >= 0) return configured;
  // Spinning only pays when another CPU runs the peer's side (or the NIC's
  // completion path); on one CPU it steals the time the peer needs.
  return sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 50 : 0;
}

// Waits (bounded) for the next rdma_cm event on `ch` and checks its type.
// The event is acked here; `status`/`private data` are not needed after.
absl::Status WaitCmEvent(rdma_event_channel* ch, rdma_cm_event_type want, int timeout_ms,
                         const std::string& what) {
  pollfd p{ch->fd, POLLIN, 0};
  int r = poll(&p, 1, timeout_ms);
  if (r == 0) return SetupError(ETIMEDOUT, absl::StrCat(what, ": timed out"));
  if (r < 0) return SetupError(errno, what);
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(ch, &ev) != 0) return SetupError(errno, what);
  rdma_cm_event_type got = ev->event;
  int status = ev->status;
  rdma_ack_cm_event(ev);
  if (got == want) return absl::OkStatus();
  int err = EPROTO;
  switch (got) {
    case RDMA_CM_EVENT_ADDR_ERROR: err = EADDRNOTAVAIL; break;
    case RDMA_CM_EVENT_ROUTE_ERROR: err = ENETUNREACH; break;
    case RDMA_CM_EVENT_UNREACHABLE: err = EHOSTUNREACH; break;
    case RDMA_CM_EVENT_CONNECT_ERROR: err = ECONNABORTED; break;
    // A consumer reject (status 28, IB_CM_REJ_CONSUMER_DEFINED) is the
    // home refusing our token; anything else is no listener there.
    case RDMA_CM_EVENT_REJECTED: err = status == 28 ? EACCES : ECONNREFUSED; break;
    default: break;
  }
  return SetupError(err, absl::StrCat(what, ": ", rdma_event_str(got), " (status ", status, ")"));
}

}  // namespace

// ---------------------------------------------------------------- Connection

struct RdmaTransport::Connection {
  enum class Role { kRequester, kHome };

  // A caller's request; split into chunks of at most one slot each.
  struct Op {
    bool is_read = true;
    uint64_t segid = 0, grant = 0, offset = 0;
    absl::Span<uint8_t> dst;
    absl::Span<const uint8_t> src;
    Done done;
    uint32_t chunks_left = 0;  // guarded by the connection's mu
    absl::Status status;       // first failure; guarded by mu
  };
  struct Chunk {
    std::shared_ptr<Op> op;
    uint64_t op_offset = 0;
    uint32_t length = 0;
  };

  Role role = Role::kRequester;
  uint32_t node = 0;  // the peer
  uint32_t depth = 0, slot_bytes = 0;
  bool use_inline = false;

  rdma_event_channel* cm = nullptr;  // this connection's own event channel
  rdma_cm_id* id = nullptr;
  ibv_pd* pd = nullptr;
  ibv_comp_channel* comp = nullptr;
  ibv_cq* cq = nullptr;
  bool qp_created = false;
  uint8_t* ctrl = nullptr;  // [depth receive messages][depth send messages]
  size_t ctrl_bytes = 0;
  ibv_mr* ctrl_mr = nullptr;
  std::optional<BufferPool> pool;
  ibv_mr* pool_mr = nullptr;
  int wake_fd = -1;
  unsigned unacked_cq_events = 0;

  BlockServer* server = nullptr;  // home side
  std::thread thread;
  std::atomic<bool> finished{false};

  absl::Mutex mu;
  bool dead ABSL_GUARDED_BY(mu) = false;
  std::string why ABSL_GUARDED_BY(mu);
  // Requester side.
  std::vector<std::optional<Chunk>> inflight ABSL_GUARDED_BY(mu);  // by slot
  std::vector<uint64_t> inflight_req ABSL_GUARDED_BY(mu);          // req id by slot
  std::deque<Chunk> waiting ABSL_GUARDED_BY(mu);
  uint64_t next_req ABSL_GUARDED_BY(mu) = 1;
  uint32_t unsignaled_sends ABSL_GUARDED_BY(mu) = 0;
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
  std::deque<uint32_t> unreleased;

  ~Connection() { Destroy(); }

  uint8_t* recv_msg(uint32_t i) const { return ctrl + static_cast<size_t>(i) * kRdmaMessageSize; }
  uint8_t* send_msg(uint32_t i) const {
    return ctrl + static_cast<size_t>(depth + i) * kRdmaMessageSize;
  }

  absl::Status CreateResources(const std::string& what);
  absl::Status PostRecv(uint32_t i);
  void Wake() {
    uint64_t one = 1;
    if (wake_fd >= 0) (void)!write(wake_fd, &one, sizeof(one));
  }
  // Marks the connection dead and returns every chunk it still owed (the
  // caller completes them outside mu).
  std::vector<Chunk> MarkDead(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Releases every verbs and rdma_cm object (the device can then go away:
  // librdmacm closes a removed device once nothing references it). Only
  // once the connection is dead and its thread is done with them.
  void DestroyVerbs();
  void Destroy() {
    DestroyVerbs();
    if (wake_fd >= 0) close(wake_fd);
    wake_fd = -1;
  }
};

absl::Status RdmaTransport::Connection::CreateResources(const std::string& what) {
  ibv_context* verbs = id->verbs;
  if (verbs == nullptr) return SetupError(ENODEV, absl::StrCat(what, ": no verbs device bound"));
  pd = ibv_alloc_pd(verbs);
  if (pd == nullptr) return SetupError(errno ? errno : ENOMEM, absl::StrCat(what, ": ibv_alloc_pd"));
  comp = ibv_create_comp_channel(verbs);
  if (comp == nullptr) return SetupError(errno, absl::StrCat(what, ": ibv_create_comp_channel"));
  fcntl(comp->fd, F_SETFL, fcntl(comp->fd, F_GETFL) | O_NONBLOCK);
  // Home: per slot an RDMA WRITE + SEND, or an RDMA READ then a SEND.
  uint32_t send_wr = 2 * depth + 4, recv_wr = depth + 4;
  cq = ibv_create_cq(verbs, static_cast<int>(send_wr + recv_wr), nullptr, comp, 0);
  if (cq == nullptr) return SetupError(errno ? errno : ENOMEM, absl::StrCat(what, ": ibv_create_cq"));
  ibv_qp_init_attr attr{};
  attr.send_cq = cq;
  attr.recv_cq = cq;
  attr.qp_type = IBV_QPT_RC;
  attr.cap.max_send_wr = send_wr;
  attr.cap.max_recv_wr = recv_wr;
  attr.cap.max_send_sge = 1;
  attr.cap.max_recv_sge = 1;
  attr.cap.max_inline_data = kMaxInline;
  use_inline = true;
  if (rdma_create_qp(id, pd, &attr) != 0) {
    // Devices without inline sends: the control ring's slot is held until
    // the response anyway, so inline is only an optimisation.
    attr.cap.max_inline_data = 0;
    use_inline = false;
    if (rdma_create_qp(id, pd, &attr) != 0)
      return SetupError(errno, absl::StrCat(what, ": rdma_create_qp"));
  }
  qp_created = true;
  ctrl_bytes = (2 * static_cast<size_t>(depth) * kRdmaMessageSize + 4095) & ~size_t{4095};
  void* p = mmap(nullptr, ctrl_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return SetupError(errno, absl::StrCat(what, ": mmap"));
  madvise(p, ctrl_bytes, MADV_DONTFORK);
  ctrl = static_cast<uint8_t*>(p);
  ctrl_mr = ibv_reg_mr(pd, ctrl, ctrl_bytes, IBV_ACCESS_LOCAL_WRITE);
  if (ctrl_mr == nullptr) return SetupError(errno, absl::StrCat(what, ": ibv_reg_mr (control)"));
  auto pool_or = BufferPool::Create(depth, slot_bytes);
  if (!pool_or.ok()) return SetupError(ToErrno(pool_or.status()), std::string(pool_or.status().message()));
  pool.emplace(*std::move(pool_or));
  // Only a requester's slots are remotely accessible (the home writes read
  // data into them and reads write data from them); the home's are not.
  int access = IBV_ACCESS_LOCAL_WRITE;
  if (role == Role::kRequester) access |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  pool_mr = ibv_reg_mr(pd, pool->base(), pool->size_bytes(), access);
  if (pool_mr == nullptr)
    return SetupError(errno, absl::StrCat(what, ": ibv_reg_mr (buffer pool, ",
                                          pool->size_bytes() >> 20,
                                          " MiB; check RLIMIT_MEMLOCK)"));
  wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) return SetupError(errno, "eventfd");
  inflight.assign(depth, std::nullopt);
  inflight_req.assign(depth, 0);
  serving.assign(depth, RdmaMessage{});
  for (uint32_t i = 0; i < depth; ++i) RETURN_IF_ERROR(PostRecv(i));
  return absl::OkStatus();
}

absl::Status RdmaTransport::Connection::PostRecv(uint32_t i) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(recv_msg(i)), kRdmaMessageSize, ctrl_mr->lkey};
  ibv_recv_wr wr{};
  wr.wr_id = WrId(kRecv, i);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  int err = ibv_post_recv(id->qp, &wr, &bad);
  return err == 0 ? absl::OkStatus() : SetupError(err, "ibv_post_recv");
}

std::vector<RdmaTransport::Connection::Chunk> RdmaTransport::Connection::MarkDead(
    const std::string& reason) {
  if (!dead) {
    dead = true;
    why = reason;
  }
  std::vector<Chunk> owed;
  for (auto& c : inflight) {
    if (c.has_value()) owed.push_back(std::move(*c));
    c.reset();
  }
  for (auto& c : waiting) owed.push_back(std::move(c));
  waiting.clear();
  return owed;
}

void RdmaTransport::Connection::DestroyVerbs() {
  if (id != nullptr && qp_created) rdma_disconnect(id);
  if (qp_created) {
    rdma_destroy_qp(id);
    qp_created = false;
  }
  if (pool_mr != nullptr && ibv_dereg_mr(pool_mr) != 0)
    TLOG_WARN("rdma: ibv_dereg_mr: %s", std::strerror(errno));
  pool_mr = nullptr;
  pool.reset();
  if (ctrl_mr != nullptr) ibv_dereg_mr(ctrl_mr);
  ctrl_mr = nullptr;
  if (ctrl != nullptr) munmap(ctrl, ctrl_bytes);
  ctrl = nullptr;
  if (cq != nullptr) {
    if (unacked_cq_events) ibv_ack_cq_events(cq, unacked_cq_events);
    unacked_cq_events = 0;
    if (int err = ibv_destroy_cq(cq); err != 0)
      TLOG_WARN("rdma: ibv_destroy_cq: %s", std::strerror(err));
    cq = nullptr;
  }
  if (comp != nullptr && ibv_destroy_comp_channel(comp) != 0)
    TLOG_WARN("rdma: ibv_destroy_comp_channel: %s", std::strerror(errno));
  comp = nullptr;
  if (pd != nullptr) {
    if (int err = ibv_dealloc_pd(pd); err != 0)
      TLOG_WARN("rdma: ibv_dealloc_pd: %s", std::strerror(err));
  }
  pd = nullptr;
  if (id != nullptr && rdma_destroy_id(id) != 0)
    TLOG_WARN("rdma: rdma_destroy_id: %s", std::strerror(errno));
  id = nullptr;
  if (cm != nullptr) rdma_destroy_event_channel(cm);
  cm = nullptr;
}

namespace {

using Conn = RdmaTransport::Connection;

// Completes chunks that will never be answered (outside the connection lock).
void FailChunks(Conn* c, std::vector<Conn::Chunk> owed, const std::string& why) {
  std::vector<std::shared_ptr<Conn::Op>> done;
  {
    absl::MutexLock lock(&c->mu);
    for (auto& ch : owed) {
      if (ch.op->status.ok())
        ch.op->status = absl::UnavailableError(
            absl::StrCat("rdma connection to node ", c->node, " lost: ", why));
      if (--ch.op->chunks_left == 0) done.push_back(ch.op);
    }
  }
  for (auto& op : done) std::move(op->done)(op->status);
}

// Posts as many waiting chunks as there are free slots, as one chained
// ibv_post_send (a read-ahead batch costs one doorbell).
void PumpLocked(Conn* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu) {
  if (c->dead || c->waiting.empty() || c->pool->free_slots() == 0) return;
  ibv_send_wr wrs[64];
  ibv_sge sges[64];
  int n = 0;
  while (!c->waiting.empty() && n < 64) {
    std::optional<uint32_t> slot = c->pool->Acquire();
    if (!slot) break;
    Conn::Chunk ch = std::move(c->waiting.front());
    c->waiting.pop_front();
    const Conn::Op& op = *ch.op;
    uint64_t req_id = (c->next_req++ << 16) | *slot;
    absl::Span<uint8_t> buf = c->pool->slot(*slot);
    if (!op.is_read) std::memcpy(buf.data(), op.src.data() + ch.op_offset, ch.length);
    RdmaMessage m;
    m.header.type = op.is_read ? FrameType::kReadReq : FrameType::kWriteReq;
    m.header.req_id = req_id;
    m.header.segid = op.segid;
    m.header.grant = op.grant;
    m.header.offset = op.offset + ch.op_offset;
    m.header.length = ch.length;
    m.addr = reinterpret_cast<uintptr_t>(buf.data());
    m.rkey = c->pool_mr->rkey;
    EncodeRdmaMessage(m, c->send_msg(*slot));
    c->inflight_req[*slot] = req_id;
    c->inflight[*slot] = std::move(ch);
    sges[n] = {reinterpret_cast<uintptr_t>(c->send_msg(*slot)), kRdmaMessageSize,
               c->ctrl_mr->lkey};
    ibv_send_wr& wr = wrs[n];
    wr = {};
    wr.wr_id = WrId(kSendRequest, *slot);
    wr.sg_list = &sges[n];
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    // The response proves the request arrived, so requests complete
    // unsignalled (a signalled one would wake this connection's thread once
    // more per request); one in every kSignalEvery frees the send queue.
    wr.send_flags = c->use_inline ? IBV_SEND_INLINE : 0;
    if (++c->unsignaled_sends >= std::min(kSignalEvery, c->depth)) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      c->unsignaled_sends = 0;
    }
    if (n > 0) wrs[n - 1].next = &wr;
    ++n;
  }
  if (n == 0) return;
  ibv_send_wr* bad = nullptr;
  int err = ibv_post_send(c->id->qp, wrs, &bad);
  if (err != 0) {
    // The QP is in error: the thread sees the flushed completions (or the
    // wake) and fails everything; make sure it does.
    TLOG_WARN("rdma: ibv_post_send to node %d failed: %s", c->node, std::strerror(err));
    rdma_disconnect(c->id);
    c->Wake();
  }
}

// Posts the response for a home slot: a read's `data_len` (> 0) bytes as
// one RDMA WRITE_WITH_IMM into the requester's slot, anything else (a
// refusal, a write's answer) as a SEND of the response message.
bool PostResponse(Conn* c, uint32_t slot, const RdmaMessage& req, uint32_t status,
                  uint32_t data_len) {
  ibv_sge sge;
  ibv_send_wr wr{};
  wr.wr_id = WrId(kSendResponse, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  if (data_len > 0) {
    // The data and the answer in one work request (rdma_wire.h): the
    // requester's receive completes when the bytes are in its slot.
    sge = {reinterpret_cast<uintptr_t>(c->pool->slot(slot).data()), data_len, c->pool_mr->lkey};
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = htonl(ImmOfRequest(req.header.req_id));
    wr.wr.rdma.remote_addr = req.addr;
    wr.wr.rdma.rkey = req.rkey;
  } else {
    RdmaMessage resp;
    resp.header = req.header;
    resp.header.type =
        req.header.type == FrameType::kReadReq ? FrameType::kReadResp : FrameType::kWriteResp;
    resp.header.status = status;
    resp.header.length = 0;
    EncodeRdmaMessage(resp, c->send_msg(slot));
    sge = {reinterpret_cast<uintptr_t>(c->send_msg(slot)), kRdmaMessageSize, c->ctrl_mr->lkey};
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = c->use_inline ? IBV_SEND_INLINE : 0;
  }
  c->unreleased.push_back(slot);
  bool pool_empty;
  {
    absl::MutexLock lock(&c->mu);
    pool_empty = c->pool->free_slots() == 0;
  }
  // An empty pool must see a completion soon (the backlog waits for it).
  if (pool_empty || c->unreleased.size() >= std::min(kSignalEvery, c->depth))
    wr.send_flags |= IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  int err = ibv_post_send(c->id->qp, &wr, &bad);
  if (err != 0) TLOG_WARN("rdma: response to node %d: ibv_post_send: %s", c->node, std::strerror(err));
  return err == 0;
}

// Home side: serves `m` from pool slot `slot`. False on a failure that
// drops the connection.
bool Serve(Conn* c, const RdmaMessage& m, uint32_t slot, std::string* why) {
  c->serving[slot] = m;
  const FrameHeader& h = m.header;
  if (h.type == FrameType::kReadReq) {
    absl::Status st = c->server->ReadBlocks(c->node, h.segid, h.grant, h.offset,
                                            c->pool->slot(slot).first(h.length));
    uint32_t status = ToWireStatus(st);
    if (!PostResponse(c, slot, m, status, st.ok() ? h.length : 0)) {
      *why = "cannot post a response";
      return false;
    }
    return true;
  }
  // Write: fetch the requester's bytes first (WriteBlocks on completion).
  ibv_sge sge{reinterpret_cast<uintptr_t>(c->pool->slot(slot).data()), h.length,
              c->pool_mr->lkey};
  ibv_send_wr wr{};
  wr.wr_id = WrId(kRdmaRead, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = m.addr;
  wr.wr.rdma.rkey = m.rkey;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(c->id->qp, &wr, &bad); err != 0) {
    *why = absl::StrCat("RDMA READ: ", std::strerror(err));
    return false;
  }
  return true;
}

// Home side: one request arrived in receive slot `i`.
bool ServeRequest(Conn* c, uint32_t i, uint32_t byte_len, std::string* why) {
  auto m = DecodeRdmaMessage(c->recv_msg(i), byte_len, c->slot_bytes);
  // The receive is reposted before the answer goes out: a requester that
  // gets its response may send again at once.
  if (!c->PostRecv(i).ok()) {
    *why = "cannot repost a receive";
    return false;
  }
  if (!m.ok() || (m->header.type != FrameType::kReadReq && m->header.type != FrameType::kWriteReq)) {
    *why = m.ok() ? "a response sent to the home" : std::string(m.status().message());
    return false;
  }
  std::optional<uint32_t> slot;
  {
    absl::MutexLock lock(&c->mu);
    slot = c->pool->Acquire();
  }
  if (!slot) {
    if (c->backlog.size() >= c->depth) {
      *why = "requester exceeded its window";
      return false;
    }
    c->backlog.push_back(*m);
    return true;
  }
  return Serve(c, *m, *slot, why);
}

// Home side: a signalled response completed: it and every response posted
// before it are out, their slots serve the backlog or return to the pool.
bool ResponseSent(Conn* c, uint32_t slot, std::string* why) {
  if (std::find(c->unreleased.begin(), c->unreleased.end(), slot) == c->unreleased.end()) {
    *why = "bad completion";
    return false;
  }
  while (true) {
    uint32_t done = c->unreleased.front();
    c->unreleased.pop_front();
    if (!c->backlog.empty()) {
      RdmaMessage m = c->backlog.front();
      c->backlog.pop_front();
      if (!Serve(c, m, done, why)) return false;
    } else {
      absl::MutexLock lock(&c->mu);
      if (!c->pool->Release(done)) {
        *why = "bad completion";
        return false;
      }
    }
    if (done == slot) return true;
  }
}

// Requester side: chunk `ch` of slot `slot` was answered with `status`
// (0: for a read, its bytes are in the slot). Frees the slot, sends what
// waits for one, and completes the operation with its last chunk.
void FinishChunk(Conn* c, uint32_t slot, Conn::Chunk ch, uint32_t status) {
  // The one copy on the fault path: registered slot -> caller's buffer
  // (outside the lock; the slot is still ours).
  if (status == 0 && ch.op->is_read)
    std::memcpy(ch.op->dst.data() + ch.op_offset, c->pool->slot(slot).data(), ch.length);
  std::shared_ptr<Conn::Op> finished;
  {
    absl::MutexLock lock(&c->mu);
    c->pool->Release(slot);
    if (status != 0 && ch.op->status.ok())
      ch.op->status =
          FromWireStatus(status, absl::StrCat("node ", c->node, " refused the request"));
    if (--ch.op->chunks_left == 0) finished = ch.op;
    PumpLocked(c);
  }
  if (finished) std::move(finished->done)(finished->status);
}

// Requester side: a response arrived in receive slot `i`.
bool CompleteRequest(Conn* c, uint32_t i, uint32_t byte_len, std::string* why) {
  auto m = DecodeRdmaMessage(c->recv_msg(i), byte_len, c->slot_bytes);
  if (!c->PostRecv(i).ok()) {
    *why = "cannot repost a receive";
    return false;
  }
  if (!m.ok() || (m->header.type != FrameType::kReadResp && m->header.type != FrameType::kWriteResp)) {
    *why = m.ok() ? "a request sent to the requester" : std::string(m.status().message());
    return false;
  }
  const FrameHeader& h = m->header;
  uint32_t slot = SlotOfRequest(h.req_id);
  Conn::Chunk ch;
  {
    absl::MutexLock lock(&c->mu);
    if (slot >= c->depth || c->inflight_req[slot] != h.req_id || !c->inflight[slot]) {
      *why = "response to an unknown request";
      return false;
    }
    bool read = c->inflight[slot]->op->is_read;
    if (read != (h.type == FrameType::kReadResp) ||
        (read && h.status == 0 && h.length != c->inflight[slot]->length)) {
      *why = "response of the wrong type or length";
      return false;
    }
    ch = std::move(*c->inflight[slot]);
    c->inflight[slot].reset();
    c->inflight_req[slot] = 0;
  }
  FinishChunk(c, slot, std::move(ch), h.status);
  return true;
}

// Requester side: a read's data and answer arrived in one WRITE_WITH_IMM
// (rdma_wire.h), consuming receive slot `i`; `byte_len` bytes were written.
bool CompleteRead(Conn* c, uint32_t i, uint32_t imm, uint32_t byte_len, std::string* why) {
  if (!c->PostRecv(i).ok()) {
    *why = "cannot repost a receive";
    return false;
  }
  uint32_t slot = SlotOfImm(imm);
  Conn::Chunk ch;
  {
    absl::MutexLock lock(&c->mu);
    if (slot >= c->depth || !c->inflight[slot] || !ImmAnswers(imm, c->inflight_req[slot])) {
      *why = "response to an unknown request";
      return false;
    }
    if (!c->inflight[slot]->op->is_read || byte_len != c->inflight[slot]->length) {
      *why = "response of the wrong type or length";
      return false;
    }
    ch = std::move(*c->inflight[slot]);
    c->inflight[slot].reset();
    c->inflight_req[slot] = 0;
  }
  FinishChunk(c, slot, std::move(ch), 0);
  return true;
}

}  // namespace

// ---------------------------------------------------------------- thread

namespace {

// The connection's thread: completions, rdma_cm events, wake-ups. Returns
// when the connection is dead; the caller tears it down.
void RunConnection(Conn* c, int spin_us, const std::atomic<bool>& shutting_down) {
  std::string why;
  ibv_wc wc[32];
  absl::Time last_completion = absl::Now();
  const absl::Duration spin = absl::Microseconds(spin_us);
  bool armed = false;
  while (why.empty()) {
    int n = ibv_poll_cq(c->cq, 32, wc);
    if (n < 0) {
      why = "ibv_poll_cq failed";
      break;
    }
    for (int k = 0; k < n && why.empty(); ++k) {
      const ibv_wc& w = wc[k];
      if (w.status != IBV_WC_SUCCESS) {
        why = absl::StrCat("work completion error: ", ibv_wc_status_str(w.status));
        break;
      }
      uint32_t idx = IndexOf(w.wr_id);
      switch (KindOf(w.wr_id)) {
        case kRecv:
          if (idx >= c->depth) { why = "bad completion"; break; }
          if (w.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
            // Only a home answers with a write: from a requester it is an
            // error (it wrote into our slot without asking).
            if (c->role == Conn::Role::kHome || !(w.wc_flags & IBV_WC_WITH_IMM)) {
              why = "unexpected write with immediate";
              break;
            }
            CompleteRead(c, idx, ntohl(w.imm_data), w.byte_len, &why);
          } else if (c->role == Conn::Role::kHome) {
            ServeRequest(c, idx, w.byte_len, &why);
          } else {
            CompleteRequest(c, idx, w.byte_len, &why);
          }
          break;
        case kSendRequest:
          break;  // the response completes the request
        case kSendResponse:
          if (idx >= c->depth) { why = "bad completion"; break; }
          ResponseSent(c, idx, &why);
          break;
        case kRdmaRead: {
          if (idx >= c->depth) { why = "bad completion"; break; }
          const RdmaMessage& req = c->serving[idx];
          absl::Status st = c->server->WriteBlocks(c->node, req.header.segid, req.header.grant,
                                                   req.header.offset,
                                                   c->pool->slot(idx).first(req.header.length));
          if (!PostResponse(c, idx, req, ToWireStatus(st), 0))
            why = "cannot post a response";
          break;
        }
        default:
          why = "completion of an unknown kind";
      }
    }
    if (!why.empty()) break;
    if (n > 0) {
      armed = false;
      if (spin_us > 0) last_completion = absl::Now();
      continue;
    }
    {
      absl::MutexLock lock(&c->mu);
      if (c->dead) {
        why = c->why;
        break;
      }
    }
    if (shutting_down.load()) {
      why = "transport shutting down";
      break;
    }
    if (spin_us > 0 && absl::Now() - last_completion < spin) continue;
    if (!armed) {
      // Arm, then poll once more before sleeping: a completion between the
      // last poll and the arming raises no event.
      ibv_req_notify_cq(c->cq, 0);
      armed = true;
      continue;
    }
    pollfd fds[3] = {{c->comp->fd, POLLIN, 0}, {c->cm->fd, POLLIN, 0}, {c->wake_fd, POLLIN, 0}};
    if (poll(fds, 3, 1000) < 0 && errno != EINTR) {
      why = "poll failed";
      break;
    }
    if (fds[0].revents & POLLIN) {
      ibv_cq* ev_cq = nullptr;
      void* ctx = nullptr;
      if (ibv_get_cq_event(c->comp, &ev_cq, &ctx) == 0) {
        armed = false;
        if (++c->unacked_cq_events >= 64) {
          ibv_ack_cq_events(c->cq, c->unacked_cq_events);
          c->unacked_cq_events = 0;
        }
      }
      last_completion = absl::Now();
    }
    if (fds[1].revents & POLLIN) {
      rdma_cm_event* ev = nullptr;
      if (rdma_get_cm_event(c->cm, &ev) == 0) {
        rdma_cm_event_type t = ev->event;
        rdma_ack_cm_event(ev);
        if (t == RDMA_CM_EVENT_DISCONNECTED) why = "the peer disconnected";
        else if (t == RDMA_CM_EVENT_DEVICE_REMOVAL) why = kDeviceRemoved;
      }
    }
    if (fds[2].revents & POLLIN) {
      uint64_t v;
      (void)!read(c->wake_fd, &v, sizeof(v));
    }
  }
  std::vector<Conn::Chunk> owed;
  {
    absl::MutexLock lock(&c->mu);
    owed = c->MarkDead(why);
    why = c->why;
  }
  FailChunks(c, std::move(owed), why);
  // Dead: nobody posts any more (Submit and PumpLocked check `dead` under
  // mu). Release the device now, not when the connection is reaped: a
  // removed device waits for its last user.
  c->DestroyVerbs();
  if (why == kDeviceRemoved) {
    TLOG_WARN("rdma: connection with node %d: %s", c->node, why);
    NoteDeviceRemoval();
  }
}

}  // namespace

// ---------------------------------------------------------------- transport

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

bool RdmaTransport::DeviceAvailable(std::string* why) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr || n == 0) {
    if (list != nullptr) ibv_free_device_list(list);
    if (why) *why = "no verbs device";
    return false;
  }
  bool active = false;
  std::string names;
  for (int i = 0; i < n && !active; ++i) {
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx == nullptr) continue;
    ibv_device_attr attr{};
    if (ibv_query_device(ctx, &attr) == 0) {
      for (uint8_t port = 1; port <= attr.phys_port_cnt; ++port) {
        ibv_port_attr pa{};
        if (ibv_query_port(ctx, port, &pa) == 0 && pa.state == IBV_PORT_ACTIVE) {
          active = true;
          names = absl::StrCat(ibv_get_device_name(list[i]), " port ", port);
          break;
        }
      }
    }
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
  if (why) *why = active ? names : absl::StrCat(n, " verbs device(s), no active port");
  return active;
}

RdmaTransport::RdmaTransport(uint32_t local_node) : RdmaTransport(local_node, Options()) {}

RdmaTransport::RdmaTransport(uint32_t local_node, Options options)
    : local_node_(local_node), options_(options) {}

RdmaTransport::~RdmaTransport() { Shutdown(); }

absl::Status RdmaTransport::Listen(const std::string& address, std::string secret,
                                   BlockServer* server, NoticeServer* /*notices: tcp only*/) {
  if (secret.size() < 16) return absl::InvalidArgumentError("data token secret too short");
  if (options_.queue_depth == 0 || options_.queue_depth > 1024 || options_.slot_bytes == 0 ||
      options_.slot_bytes % 4096 != 0 || options_.slot_bytes > kMaxPayload)
    return absl::InvalidArgumentError("rdma: bad queue depth or slot size");
  ASSIGN_OR_RETURN(sockaddr_storage ss, NumericSocketAddress(address));
  auto l = std::make_unique<Listener>();
  l->cm = rdma_create_event_channel();
  if (l->cm == nullptr) return ErrnoStatus(errno, "rdma_create_event_channel");
  if (rdma_create_id(l->cm, &l->id, nullptr, RDMA_PS_TCP) != 0)
    return ErrnoStatus(errno, "rdma_create_id");
  if (rdma_bind_addr(l->id, reinterpret_cast<sockaddr*>(&ss)) != 0)
    return ErrnoStatus(errno, absl::StrCat("rdma_bind_addr ", address,
                                           " (no rdma device on that address?)"));
  if (l->id->verbs == nullptr && reinterpret_cast<sockaddr_in*>(&ss)->sin_addr.s_addr != 0)
    return ErrnoStatus(ENODEV, absl::StrCat("no rdma device serves ", address));
  if (rdma_listen(l->id, 64) != 0) return ErrnoStatus(errno, "rdma_listen");
  l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (l->wake_fd < 0) return ErrnoStatus(errno, "eventfd");
  std::string host;
  uint16_t port = 0;
  RETURN_IF_ERROR(ParseHostPort(address, &host, &port));
  bound_address_ = absl::StrCat(host.find(':') != std::string::npos ? "[" + host + "]" : host,
                                ":", ntohs(rdma_get_src_port(l->id)));
  secret_ = std::move(secret);
  server_ = server;
  listener_ = std::move(l);
  listen_thread_ = std::thread([this] { ListenLoop(); });
  return absl::OkStatus();
}

std::string RdmaTransport::bound_address() const { return bound_address_; }

void RdmaTransport::ListenLoop() {
  const int spin_us = EffectiveSpinUs(options_.spin_us);
  absl::Time relisten_at = absl::InfiniteFuture();
  while (!shutting_down_) {
    pollfd fds[2] = {{listener_->cm->fd, POLLIN, 0}, {listener_->wake_fd, POLLIN, 0}};
    if (poll(fds, 2, 1000) < 0 && errno != EINTR) return;
    if (shutting_down_) return;
    if (absl::ToUnixNanos(absl::Now()) < g_release_until_ns.load()) ReleaseRemovedDevices();
    if (listener_->id == nullptr && absl::Now() >= relisten_at) {
      // The device was removed: listen again at the same address and port
      // (peers keep the address they learned from Hello) once it is back.
      relisten_at = absl::Now() + absl::Seconds(2);
      auto ss = NumericSocketAddress(bound_address_);
      rdma_cm_id* id = nullptr;
      if (ss.ok() && rdma_create_id(listener_->cm, &id, nullptr, RDMA_PS_TCP) == 0) {
        if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&*ss)) == 0 && id->verbs != nullptr &&
            rdma_listen(id, 64) == 0) {
          listener_->id = id;
          relisten_at = absl::InfiniteFuture();
          TLOG_INFO("rdma: listening again on %s (%s)", bound_address_,
                    ibv_get_device_name(id->verbs->device));
        } else {
          rdma_destroy_id(id);
        }
      }
    }
    if (!(fds[0].revents & POLLIN)) continue;
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(listener_->cm, &ev) != 0) continue;
    if (ev->event == RDMA_CM_EVENT_DEVICE_REMOVAL) {
      bool ours = ev->id == listener_->id;
      rdma_cm_id* id = ev->id;
      rdma_ack_cm_event(ev);
      if (ours) {
        TLOG_WARN("rdma: the device under %s was removed; not accepting rdma connections "
                  "until it returns", bound_address_);
        rdma_destroy_id(id);
        listener_->id = nullptr;
        NoteDeviceRemoval();
        relisten_at = absl::Now() + absl::Seconds(2);
      } else {
        rdma_destroy_id(id);  // a connect request not yet accepted
      }
      continue;
    }
    if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
      rdma_ack_cm_event(ev);
      continue;
    }
    rdma_cm_id* id = ev->id;
    auto data = DecodeRdmaConnectData(ev->param.conn.private_data, ev->param.conn.private_data_len);
    // Authenticate before anything is allocated for the peer.
    bool ok = data.ok() && DataTokenValid(secret_, data->node,
                                          reinterpret_cast<const uint8_t*>(data->token.data()));
    rdma_ack_cm_event(ev);
    if (!ok) {
      TLOG_WARN("rdma: rejected a connection: %s",
                data.ok() ? absl::StrCat("wrong token for node ", data->node)
                          : std::string(data.status().message()));
      rdma_reject(id, nullptr, 0);
      rdma_destroy_id(id);
      continue;
    }
    auto c = std::make_shared<Connection>();
    c->role = Connection::Role::kHome;
    c->node = data->node;
    c->depth = options_.queue_depth;
    c->slot_bytes = options_.slot_bytes;
    c->server = server_;
    c->id = id;
    absl::Status st;
    c->cm = rdma_create_event_channel();
    if (c->cm == nullptr || rdma_migrate_id(id, c->cm) != 0) {
      st = ErrnoStatus(errno, "rdma_migrate_id");
    } else {
      st = c->CreateResources(absl::StrCat("rdma connection from node ", c->node));
    }
    if (st.ok()) {
      ibv_device_attr attr{};
      ibv_query_device(id->verbs, &attr);
      rdma_conn_param param{};
      param.responder_resources = static_cast<uint8_t>(std::min(kMaxRdAtomic, attr.max_qp_rd_atom));
      param.initiator_depth = static_cast<uint8_t>(std::min(kMaxRdAtomic, attr.max_qp_init_rd_atom));
      param.rnr_retry_count = 7;
      if (rdma_accept(id, &param) != 0) st = ErrnoStatus(errno, "rdma_accept");
    }
    if (!st.ok()) {
      TLOG_WARN("rdma: connection from node %d failed: %s", c->node, st.message());
      rdma_reject(id, nullptr, 0);
      continue;  // ~Connection tears down what was built
    }
    TLOG_INFO("rdma: data connection from node %d on %s", c->node,
              ibv_get_device_name(id->verbs->device));
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    ReapLocked();
    Connection* raw = c.get();
    c->thread = std::thread([this, raw, spin_us] {
      RunConnection(raw, spin_us, shutting_down_);
      raw->finished = true;
    });
    all_conns_.push_back(std::move(c));
  }
}

void RdmaTransport::ReapLocked() {
  for (auto it = all_conns_.begin(); it != all_conns_.end();) {
    if ((*it)->finished.load()) {
      (*it)->thread.join();
      auto cit = conns_.find((*it)->node);
      if (cit != conns_.end() && cit->second == *it) conns_.erase(cit);
      it = all_conns_.erase(it);  // ~Connection destroys the verbs objects
    } else {
      ++it;
    }
  }
}

absl::StatusOr<std::shared_ptr<RdmaTransport::Connection>> RdmaTransport::GetConnection(
    const DataEndpoint& home) {
  {
    absl::MutexLock lock(&mu_);
    auto it = conns_.find(home.node_id);
    if (it != conns_.end()) {
      absl::MutexLock clock(&it->second->mu);
      if (!it->second->dead) return it->second;
    }
  }
  if (shutting_down_) return absl::UnavailableError("transport shutting down");
  if (home.rdma_address.empty())
    return SetupError(EHOSTUNREACH, absl::StrCat("node ", home.node_id, " has no rdma address"));
  if (home.token.size() != kDataTokenSize)
    return SetupError(EINVAL, absl::StrCat("no data token for node ", home.node_id));
  auto ss = NumericSocketAddress(home.rdma_address);
  if (!ss.ok()) return SetupError(EINVAL, std::string(ss.status().message()));
  const std::string what = absl::StrCat("rdma connect to node ", home.node_id, " at ",
                                        home.rdma_address);
  const int timeout = options_.connect_timeout_ms;
  auto c = std::make_shared<Connection>();
  c->role = Connection::Role::kRequester;
  c->node = home.node_id;
  c->depth = options_.queue_depth;
  c->slot_bytes = options_.slot_bytes;
  c->cm = rdma_create_event_channel();
  if (c->cm == nullptr) return SetupError(errno, "rdma_create_event_channel");
  if (rdma_create_id(c->cm, &c->id, nullptr, RDMA_PS_TCP) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_create_id"));
  if (rdma_resolve_addr(c->id, nullptr, reinterpret_cast<sockaddr*>(&*ss), timeout) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_resolve_addr"));
  RETURN_IF_ERROR(WaitCmEvent(c->cm, RDMA_CM_EVENT_ADDR_RESOLVED, timeout + 500, what));
  if (rdma_resolve_route(c->id, timeout) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_resolve_route"));
  RETURN_IF_ERROR(WaitCmEvent(c->cm, RDMA_CM_EVENT_ROUTE_RESOLVED, timeout + 500, what));
  RETURN_IF_ERROR(c->CreateResources(what));
  uint8_t priv[kRdmaPrivateDataSize];
  EncodeRdmaConnectData({local_node_, home.token}, priv);
  ibv_device_attr attr{};
  ibv_query_device(c->id->verbs, &attr);
  rdma_conn_param param{};
  param.private_data = priv;
  param.private_data_len = sizeof(priv);
  param.responder_resources = static_cast<uint8_t>(std::min(kMaxRdAtomic, attr.max_qp_rd_atom));
  param.initiator_depth = static_cast<uint8_t>(std::min(kMaxRdAtomic, attr.max_qp_init_rd_atom));
  param.retry_count = 7;
  param.rnr_retry_count = 7;
  if (rdma_connect(c->id, &param) != 0) return SetupError(errno, absl::StrCat(what, ": rdma_connect"));
  RETURN_IF_ERROR(WaitCmEvent(c->cm, RDMA_CM_EVENT_ESTABLISHED, timeout + 500, what));

  absl::MutexLock lock(&mu_);
  if (shutting_down_) return absl::UnavailableError("transport shutting down");
  ReapLocked();
  auto it = conns_.find(home.node_id);
  if (it != conns_.end()) {
    absl::MutexLock clock(&it->second->mu);
    if (!it->second->dead) return it->second;  // lost a race: use theirs, drop ours
  }
  TLOG_INFO("rdma: data connection to node %d at %s on %s", home.node_id, home.rdma_address,
            ibv_get_device_name(c->id->verbs->device));
  conns_[home.node_id] = c;
  Connection* raw = c.get();
  const int spin_us = EffectiveSpinUs(options_.spin_us);
  c->thread = std::thread([this, raw, spin_us] {
    RunConnection(raw, spin_us, shutting_down_);
    raw->finished = true;
  });
  all_conns_.push_back(c);
  return c;
}

void RdmaTransport::Submit(const DataEndpoint& home, bool is_read, uint64_t segid,
                           uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                           absl::Span<const uint8_t> src, Done done) {
  size_t len = is_read ? dst.size() : src.size();
  if (len == 0 || len > kMaxPayload) {
    std::move(done)(absl::InvalidArgumentError("transport request length out of range"));
    return;
  }
  auto conn_or = GetConnection(home);
  if (!conn_or.ok()) {
    std::move(done)(conn_or.status());
    return;
  }
  Connection* c = conn_or->get();
  auto op = std::make_shared<Connection::Op>();
  op->is_read = is_read;
  op->segid = segid;
  op->grant = grant;
  op->offset = offset;
  op->dst = dst;
  op->src = src;
  op->done = std::move(done);
  std::string why;
  {
    absl::MutexLock lock(&c->mu);
    if (!c->dead) {
      op->chunks_left = static_cast<uint32_t>((len + c->slot_bytes - 1) / c->slot_bytes);
      for (uint64_t off = 0; off < len; off += c->slot_bytes)
        c->waiting.push_back(
            {op, off, static_cast<uint32_t>(std::min<uint64_t>(c->slot_bytes, len - off))});
      PumpLocked(c);
      return;
    }
    why = c->why;
  }
  std::move(op->done)(absl::UnavailableError(
      absl::StrCat("rdma connection to node ", home.node_id, " lost: ", why)));
}

void RdmaTransport::Read(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                         uint64_t offset, absl::Span<uint8_t> dst, Done done) {
  Submit(home, true, segid, grant, offset, dst, {}, std::move(done));
}

void RdmaTransport::Write(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                          uint64_t offset, absl::Span<const uint8_t> src, Done done) {
  Submit(home, false, segid, grant, offset, {}, src, std::move(done));
}

void RdmaTransport::Disconnect(uint32_t node) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(node);
  if (it == conns_.end()) return;
  Connection* c = it->second.get();
  {
    absl::MutexLock clock(&c->mu);
    if (!c->dead) {
      // The thread fails what is owed once it sees `dead`.
      c->dead = true;
      c->why = "disconnected";
    }
  }
  c->Wake();
  conns_.erase(it);
}

void RdmaTransport::Shutdown() {
  if (shutting_down_.exchange(true)) return;
  if (listener_) {
    uint64_t one = 1;
    (void)!write(listener_->wake_fd, &one, sizeof(one));
  }
  if (listen_thread_.joinable()) listen_thread_.join();
  std::vector<std::shared_ptr<Connection>> conns;
  {
    absl::MutexLock lock(&mu_);
    conns.swap(all_conns_);
    conns_.clear();
  }
  for (auto& c : conns) c->Wake();
  for (auto& c : conns)
    if (c->thread.joinable()) c->thread.join();
  conns.clear();  // tears down QPs, MRs, ids
  listener_.reset();
}

}  // namespace tether
