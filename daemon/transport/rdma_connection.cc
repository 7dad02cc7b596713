// RdmaTransport, connection management (rdma_transport.h has the shape;
// rdma_transport_internal.h the thread contract): device discovery, the
// listener thread (connect requests, device removal, listening again),
// connecting to a home, a connection's verbs resources and their teardown,
// and the connection's thread, which polls completions and hands them to
// the requester (rdma_requester.cc) or the responder (rdma_responder.cc).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/poll_now.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/rdma_transport_internal.h"
#include "daemon/transport/rdma_wire.h"
#include "daemon/transport/socket_address.h"

namespace tether {
namespace {

constexpr char kDeviceRemoved[] = "the rdma device was removed";
constexpr uint32_t kMaxInline = kRdmaMessageSize;
constexpr int kMaxRdAtomic = 16;

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

// How long a requester polls after its last post while answers are due,
// in units of the spin time: a round trip with the home's exporter read
// in it takes longer than the gap between completions.
constexpr int kInFlightSpinFactor = 4;

PeerLiveness::Options LivenessOptions(const RdmaTransport::Options& o) {
  PeerLiveness::Options l;
  l.interval = absl::Milliseconds(o.heartbeat_interval_ms);
  l.timeout = absl::Milliseconds(o.peer_timeout_ms);
  return l;
}

// The fabric options (--rdma_tos, --rdma_ack_timeout) on an id: before
// rdma_resolve_route on the active side (the ToS picks the path's traffic
// class, hence the RoCE priority and its PFC class), before rdma_accept on
// the passive side (the ACK timeout is the QP's own: the home's answers
// are retransmitted on it too).
absl::Status ApplyFabricOptions(rdma_cm_id* id, const RdmaTransport::Options& o,
                                const std::string& what) {
  if (o.tos >= 0) {
    uint8_t tos = static_cast<uint8_t>(o.tos);
    if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, sizeof(tos)) != 0)
      return SetupError(errno, absl::StrCat(what, ": rdma_set_option(TOS ", o.tos, ")"));
  }
  if (o.ack_timeout >= 0) {
    uint8_t t = static_cast<uint8_t>(o.ack_timeout);
    if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof(t)) != 0)
      return SetupError(errno,
                        absl::StrCat(what, ": rdma_set_option(ACK_TIMEOUT ", o.ack_timeout, ")"));
  }
  return absl::OkStatus();
}

// RDMA READs one side may have outstanding towards the other (initiator
// depth) and serve for it (responder resources): at most kMaxRdAtomic,
// what the device allows, and, on the home, what the request offered (the
// CONNECT_REQUEST event carries the requester's values already turned
// round: its responder_resources is the requester's initiator depth).
// Only the home reads (a write's bytes), so the requester needs no
// initiator depth and the home no responder resources, but both are
// offered as the device allows: a peer that asks for them gets them.
void ClampRdAtomic(ibv_context* verbs, const rdma_conn_param* offered, rdma_conn_param* param) {
  ibv_device_attr attr{};
  if (ibv_query_device(verbs, &attr) != 0) attr.max_qp_rd_atom = attr.max_qp_init_rd_atom = 1;
  int responder = std::min(kMaxRdAtomic, attr.max_qp_rd_atom);
  int initiator = std::min(kMaxRdAtomic, attr.max_qp_init_rd_atom);
  if (offered != nullptr) {
    responder = std::min<int>(responder, offered->responder_resources);
    initiator = std::min<int>(initiator, offered->initiator_depth);
  }
  param->responder_resources = static_cast<uint8_t>(std::max(responder, 0));
  param->initiator_depth = static_cast<uint8_t>(std::max(initiator, 0));
}

int EffectiveSpinUs(int configured) {
  if (configured >= 0) return configured;
  // Spinning only pays when another CPU runs the peer's side (or the NIC's
  // completion path); on one CPU it steals the time the peer needs.
  return sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 50 : 0;
}

// Waits (bounded) for the next rdma_cm event on `ch` and checks its type.
// The event is acked here; `priv` (if not null) gets a copy of its private
// data (the home's accept). A REJECTED event becomes RejectStatus's error.
// A wake-up on `wake_fd` (Disconnect, a replacement, Shutdown) abandons
// the connect.
absl::Status WaitCmEvent(rdma_event_channel* ch, int wake_fd, rdma_cm_event_type want,
                         int timeout_ms, const std::string& what, std::string* priv = nullptr) {
  pollfd p[2] = {{ch->fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  int r = poll(p, 2, timeout_ms);
  if (r == 0) return SetupError(ETIMEDOUT, absl::StrCat(what, ": timed out"));
  if (r < 0) return SetupError(errno, what);
  if (!(p[0].revents & POLLIN)) return absl::UnavailableError(absl::StrCat(what, ": abandoned"));
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(ch, &ev) != 0) return SetupError(errno, what);
  rdma_cm_event_type got = ev->event;
  int status = ev->status;
  const auto* pd = static_cast<const char*>(ev->param.conn.private_data);
  std::string data = pd != nullptr ? std::string(pd, ev->param.conn.private_data_len) : "";
  rdma_ack_cm_event(ev);
  if (got == want) {
    if (priv != nullptr) *priv = std::move(data);
    return absl::OkStatus();
  }
  if (got == RDMA_CM_EVENT_REJECTED)
    return RdmaRejectStatus(status, data.data(), data.size(), what);
  int err = EPROTO;
  switch (got) {
    case RDMA_CM_EVENT_ADDR_ERROR: err = EADDRNOTAVAIL; break;
    case RDMA_CM_EVENT_ROUTE_ERROR: err = ENETUNREACH; break;
    case RDMA_CM_EVENT_UNREACHABLE: err = EHOSTUNREACH; break;
    case RDMA_CM_EVENT_CONNECT_ERROR: err = ECONNABORTED; break;
    default: break;
  }
  return SetupError(err, absl::StrCat(what, ": ", rdma_event_str(got), " (status ", status, ")"));
}

}  // namespace

// ---------------------------------------------------------------- set-up and teardown

absl::Status RdmaTransport::Connection::CreateResources(const std::string& what) {
  RETURN_IF_ERROR(CreateQueuePair(what));
  return CreateBuffers(what);
}

absl::Status RdmaTransport::Connection::CreateQueuePair(const std::string& what) {
  ibv_context* verbs = id->verbs;
  if (verbs == nullptr) return SetupError(ENODEV, absl::StrCat(what, ": no verbs device bound"));
  pd = ibv_alloc_pd(verbs);
  if (pd == nullptr)
    return SetupError(errno ? errno : ENOMEM, absl::StrCat(what, ": ibv_alloc_pd"));
  comp = ibv_create_comp_channel(verbs);
  if (comp == nullptr) return SetupError(errno, absl::StrCat(what, ": ibv_create_comp_channel"));
  fcntl(comp->fd, F_SETFL, fcntl(comp->fd, F_GETFL) | O_NONBLOCK);
  // Every thread that polls the device's async fd reads it without waiting
  // (one of them gets each event: ReadAsyncEvents).
  fcntl(verbs->async_fd, F_SETFL, fcntl(verbs->async_fd, F_GETFL) | O_NONBLOCK);
  // Home: per slot an RDMA WRITE + SEND, or an RDMA READ then a SEND.
  uint32_t send_wr = 2 * depth + 4, recv_wr = depth + 4;
  cq = ibv_create_cq(verbs, static_cast<int>(send_wr + recv_wr), nullptr, comp, 0);
  if (cq == nullptr)
    return SetupError(errno ? errno : ENOMEM, absl::StrCat(what, ": ibv_create_cq"));
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
  this->verbs = verbs;
  port = id->port_num;
  qp = id->qp;
  return absl::OkStatus();
}

absl::Status RdmaTransport::Connection::CreateBuffers(const std::string& what) {
  // [depth receives][depth sends][the requester's AUTH]
  ctrl_bytes = ((2 * static_cast<size_t>(depth) + 1) * kRdmaMessageSize + 4095) & ~size_t{4095};
  void* p = mmap(nullptr, ctrl_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return SetupError(errno, absl::StrCat(what, ": mmap"));
  madvise(p, ctrl_bytes, MADV_DONTFORK);
  ctrl = static_cast<uint8_t*>(p);
  ctrl_mr = ibv_reg_mr(pd, ctrl, ctrl_bytes, IBV_ACCESS_LOCAL_WRITE);
  if (ctrl_mr == nullptr) return SetupError(errno, absl::StrCat(what, ": ibv_reg_mr (control)"));
  auto pool_or = BufferPool::Create(depth, slot_bytes);
  if (!pool_or.ok())
    return SetupError(ToErrno(pool_or.status()), std::string(pool_or.status().message()));
  pool.emplace(*std::move(pool_or));
  // Only a requester's slots are remotely accessible (the home writes read
  // data into them and reads write data from them); the home's are not.
  int access = IBV_ACCESS_LOCAL_WRITE;
  if (role == Role::kRequester) access |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  pool_mr = ibv_reg_mr(pd, pool->base(), pool->size_bytes(), access);
  if (pool_mr == nullptr)
    return SetupError(errno, absl::StrCat(what, ": ibv_reg_mr (buffer pool, ",
                                          pool->size_bytes() >> 20, " MiB; check RLIMIT_MEMLOCK)"));
  if (wake_fd < 0) wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
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
    if (c.has_value()) {
      c->sent = true;
      owed.push_back(std::move(*c));
    }
    c.reset();
  }
  for (auto& c : waiting) owed.push_back(std::move(c));
  waiting.clear();
  heartbeat_slot.reset();  // the pool goes with the connection
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

// ---------------------------------------------------------------- thread

namespace {

// One work completion, on the connection's thread: receives go to the
// responder (home) or the requester, a home's sends and RDMA READs to the
// responder. Sets `why` when the connection must end.
void HandleCompletion(Conn* c, const ibv_wc& w, std::string* why) {
  if (w.status != IBV_WC_SUCCESS) {
    *why = absl::StrCat("work completion error: ", ibv_wc_status_str(w.status));
    return;
  }
  ++c->completions;  // the peer (or its adapter) answered: alive
  uint32_t idx = IndexOf(w.wr_id);
  switch (KindOf(w.wr_id)) {
    case kRecv:
      if (idx >= c->depth) {
        *why = "bad completion";
        break;
      }
      if (c->role == Conn::Role::kHome && !c->authenticated.load(std::memory_order_relaxed)) {
        // Nothing is served before the dialer's proof: its first message
        // must be AUTH (a heartbeat, a request or a write is refused).
        const uint32_t len = w.opcode == IBV_WC_RECV ? w.byte_len : 0;
        if (c->CheckAuth(idx, len, why)) c->Authenticated();
        break;
      }
      if (w.opcode == IBV_WC_RECV && w.byte_len == 0) {
        // A heartbeat (home) or its answer (requester): every message
        // carries at least a header, so nothing else is empty.
        if (c->role == Conn::Role::kHome)
          AnswerHeartbeat(c, idx, why);
        else
          HeartbeatAnswered(c, idx, why);
      } else if (w.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
        // Only a home answers with a write: from a requester it is an
        // error (it wrote into our slot without asking).
        if (c->role == Conn::Role::kHome || !(w.wc_flags & IBV_WC_WITH_IMM)) {
          *why = "unexpected write with immediate";
          break;
        }
        CompleteRead(c, idx, ntohl(w.imm_data), w.byte_len, why);
      } else if (c->role == Conn::Role::kHome) {
        ServeRequest(c, idx, w.byte_len, why);
      } else {
        CompleteRequest(c, idx, w.byte_len, why);
      }
      break;
    case kSendRequest: break;  // the response completes the request
    case kSendAuth: break;     // not answered: the requests behind it are
    case kHeartbeat: break;    // a heartbeat's answer went out
    case kSendResponse:
      if (idx >= c->depth) {
        *why = "bad completion";
        break;
      }
      ResponseSent(c, idx, why);
      break;
    case kRdmaRead:
      if (idx >= c->depth) {
        *why = "bad completion";
        break;
      }
      WriteFetched(c, idx, why);
      break;
    default: *why = "completion of an unknown kind";
  }
}

// Sleeps (up to a second) on the completion channel, the connection's
// rdma_cm events and its wake fd, on the connection's thread, with the CQ
// armed. Sets `why` when the connection must end.
void SleepUntilEvent(Conn* c, bool* armed, absl::Time* last_completion, int timeout_ms,
                     std::string* why) {
  // The device's async events too (shared by every connection on it and the
  // listener: whoever reads one acts for all, RdmaTransport::ReadAsyncEvents).
  pollfd fds[4] = {{c->comp->fd, POLLIN, 0},
                   {c->cm->fd, POLLIN, 0},
                   {c->wake_fd, POLLIN, 0},
                   {c->id->verbs->async_fd, POLLIN, 0}};
  // A requester's post while we sleep wakes us to poll for its answer
  // (PumpLocked).
  c->sleeping.store(true, std::memory_order_relaxed);
  int r = poll(fds, 4, timeout_ms);
  c->sleeping.store(false, std::memory_order_relaxed);
  if (r < 0 && errno != EINTR) {
    *why = "poll failed";
    return;
  }
  if (fds[0].revents & POLLIN) {
    ibv_cq* ev_cq = nullptr;
    void* ctx = nullptr;
    if (ibv_get_cq_event(c->comp, &ev_cq, &ctx) == 0) {
      *armed = false;
      if (++c->unacked_cq_events >= 64) {
        ibv_ack_cq_events(c->cq, c->unacked_cq_events);
        c->unacked_cq_events = 0;
      }
    }
    *last_completion = absl::Now();
  }
  if (fds[1].revents & POLLIN) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(c->cm, &ev) == 0) {
      rdma_cm_event_type t = ev->event;
      rdma_ack_cm_event(ev);
      if (t == RDMA_CM_EVENT_DISCONNECTED)
        *why = "the peer disconnected";
      else if (t == RDMA_CM_EVENT_DEVICE_REMOVAL)
        *why = kDeviceRemoved;
      else if (t == RDMA_CM_EVENT_UNREACHABLE || t == RDMA_CM_EVENT_CONNECT_ERROR ||
               t == RDMA_CM_EVENT_REJECTED)
        // A home's accepted connection that never became established (the
        // requester went away meanwhile), or a connection the CM gave up.
        *why = absl::StrCat("rdma_cm: ", rdma_event_str(t));
    }
  }
  if (fds[2].revents & POLLIN) {
    uint64_t v;
    (void)!read(c->wake_fd, &v, sizeof(v));
  }
  if (fds[3].revents & POLLIN) c->AsyncEventsReady(c->id->verbs);
}

bool NoExporterJobs(Conn* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu) { return c->exporter_jobs == 0; }

// Before the connection's thread sleeps: tells PeerLiveness what it saw
// since the last time, sends a heartbeat it asks for, and sets `why` if the
// peer is dead. Returns how long the thread may sleep (ms).
int CheckLiveness(Conn* c, uint64_t* seen_completions, std::string* why)
    ABSL_LOCKS_EXCLUDED(c->mu) {
  c->thread_role.AssertHere();
  absl::Time now = absl::Now();
  PeerLiveness& l = *c->liveness;
  if (c->completions != *seen_completions) {
    *seen_completions = c->completions;
    l.Heard(now);
  }
  if (c->heartbeat_answered) {
    c->heartbeat_answered = false;
    l.HeartbeatAnswered(now);
  }
  if (c->role == Conn::Role::kHome && !c->authenticated.load(std::memory_order_relaxed)) {
    // A dialer that does not prove itself (a replayed connect request has
    // nothing to prove it with) holds its queue pair and pool only briefly.
    if (now >= c->auth_deadline) {
      *why = absl::StrCat("no proof (AUTH) within ", kRdmaAuthTimeoutMs,
                          " ms of the accept: dropped (a replayed connect request?)");
      return 0;
    }
    return static_cast<int>(
        std::min<int64_t>(1000, absl::ToInt64Milliseconds(c->auth_deadline - now) + 1));
  }
  bool outstanding = false;
  if (c->role == Conn::Role::kRequester) {
    absl::MutexLock lock(&c->mu);
    // Not yet set up: the connect's own timeouts apply.
    if (!c->connected) return 1000;
    for (const auto& ch : c->inflight) outstanding |= ch.has_value();
  }
  switch (l.Check(now, outstanding)) {
    case PeerLiveness::Action::kDead: *why = l.DeadReason(now); break;
    case PeerLiveness::Action::kSendHeartbeat:
      if (SendHeartbeat(c)) l.HeartbeatSent(now);
      break;
    case PeerLiveness::Action::kNone: break;
  }
  return static_cast<int>(absl::ToInt64Milliseconds(l.PollTimeout(now)));
}

// The connection's thread: completions, rdma_cm events, wake-ups, liveness.
// Returns when the connection is dead; the caller tears it down.
void RunConnection(Conn* c, int spin_us, PeerLiveness::Options live,
                   const std::atomic<bool>& shutting_down) ABSL_LOCKS_EXCLUDED(c->mu) {
  c->thread_role.Bind();
  c->liveness.emplace(
      c->role == Conn::Role::kHome ? PeerLiveness::Role::kHome : PeerLiveness::Role::kRequester,
      live, absl::Now());
  uint64_t seen_completions = 0;
  std::string why;
  ibv_wc wc[32];
  absl::Time last_completion = absl::Now();
  const absl::Duration spin = absl::Microseconds(spin_us);
  const absl::Duration spin_posted = kInFlightSpinFactor * spin;
  bool armed = false;
  while (why.empty()) {
    int n = ibv_poll_cq(c->cq, 32, wc);
    if (n < 0) {
      why = "ibv_poll_cq failed";
      break;
    }
    for (int k = 0; k < n && why.empty(); ++k) HandleCompletion(c, wc[k], &why);
    if (!why.empty()) break;
    if (n > 0) {
      armed = false;
      if (spin_us > 0) last_completion = absl::Now();
      continue;
    }
    bool in_flight;
    {
      absl::MutexLock lock(&c->mu);
      if (c->dead) {
        why = c->why;
        break;
      }
      in_flight = c->role == Conn::Role::kRequester && c->pool->free_slots() < c->depth;
    }
    if (shutting_down.load()) {
      why = "transport shutting down";
      break;
    }
    if (spin_us > 0) {
      // Keep polling a while after the last completion (more may follow),
      // and while requests are in flight for a while after the last post
      // (its answer is on the way: polling for it saves the interrupt
      // and the wake-up); bounded both, then sleep on the channel.
      absl::Time now = absl::Now();
      if (now - last_completion < spin) continue;
      if (in_flight &&
          now - absl::FromUnixNanos(c->last_post_ns.load(std::memory_order_relaxed)) < spin_posted)
        continue;
    }
    if (!armed) {
      // Arm, then poll once more before sleeping: a completion between the
      // last poll and the arming raises no event.
      ibv_req_notify_cq(c->cq, 0);
      armed = true;
      continue;
    }
    // Only on the way to sleep: a busy connection is a live one, and the
    // fast path reads no clock for it.
    int timeout_ms = CheckLiveness(c, &seen_completions, &why);
    if (!why.empty()) break;
    SleepUntilEvent(c, &armed, &last_completion, timeout_ms, &why);
  }
  std::vector<Conn::Chunk> owed;
  {
    absl::MutexLock lock(&c->mu);
    owed = c->MarkDead(why);
    why = c->why;
    // A requester copying write data into slots outside mu (PumpLocked)
    // still reads its caller's buffer and writes the pool: failing its
    // chunks (their `done` may free the buffer) or destroying the pool must
    // wait for it. It posts nothing once it sees `dead`.
    auto copied = [c]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->copying == 0; };
    c->mu.Await(absl::Condition(&copied));
  }
  if (!shutting_down.load())
    TLOG_WARN("rdma: %s node %d closed: %s (%d request(s) owed)",
              c->role == Conn::Role::kHome ? "connection from" : "connection to", c->node, why,
              owed.size());
  FailChunks(c, std::move(owed), why);
  // Dead: nobody posts any more (Submit, PumpLocked and PostResponse check
  // `dead` under mu). The exporter workers may still be in a job of ours,
  // writing into the pool: wait for them (a queued job sees `dead` and
  // returns at once; a running one ends with its exporter access).
  {
    absl::MutexLock lock(&c->mu);
    c->mu.Await(absl::Condition(&NoExporterJobs, c));
  }
  // Release the device now, not when the connection is reaped: a removed
  // device waits for its last user; and a dead mapper's pinned pool and
  // queue pair go now, not when the next connection is reaped.
  c->DestroyVerbs();
  if (why == kDeviceRemoved) NoteDeviceRemoval();
}

}  // namespace

// ---------------------------------------------------------------- device discovery

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

namespace {
void Reject(rdma_cm_id* id, RdmaRejectReason reason);
}  // namespace

// ---------------------------------------------------------------- async events

void RdmaTransport::ReadAsyncEvents(ibv_context* verbs) {
  ibv_async_event ev;
  while (ibv_get_async_event(verbs, &ev) == 0) {
    const ibv_event_type type = ev.event_type;
    const char* dev = ibv_get_device_name(verbs->device);
    // Which connections it ends, and how.
    const ibv_qp* qp = nullptr;
    int port = -1;  // 0: every port of the device
    bool device_failed = false;
    switch (type) {
      case IBV_EVENT_PORT_ERR:
        port = ev.element.port_num;
        device_failed = true;
        break;
      case IBV_EVENT_DEVICE_FATAL:
        port = 0;
        device_failed = true;
        break;
      case IBV_EVENT_QP_FATAL:
      case IBV_EVENT_QP_REQ_ERR:
      case IBV_EVENT_QP_ACCESS_ERR:
      case IBV_EVENT_PATH_MIG_ERR: qp = ev.element.qp; break;
      default: break;
    }
    std::string what = absl::StrCat(dev, ": ", ibv_event_type_str(type));
    if (type == IBV_EVENT_PORT_ERR || type == IBV_EVENT_PORT_ACTIVE ||
        type == IBV_EVENT_LID_CHANGE || type == IBV_EVENT_GID_CHANGE ||
        type == IBV_EVENT_CLIENT_REREGISTER || type == IBV_EVENT_SM_CHANGE)
      absl::StrAppend(&what, " (port ", ev.element.port_num, ")");
    ibv_ack_async_event(&ev);
    int ended = 0;
    std::vector<uint32_t> nodes;
    if (qp != nullptr || port >= 0) {
      absl::MutexLock lock(&mu_);
      for (auto& c : all_conns_) {
        if (c->verbs != verbs) continue;
        if (qp != nullptr ? c->qp != qp : port != 0 && c->port != port) continue;
        {
          absl::MutexLock clock(&c->mu);
          if (c->dead) continue;
          c->dead = true;
          c->why = absl::StrCat("async event ", what);
          c->device_failed = device_failed;
        }
        c->Wake();
        ++ended;
        nodes.push_back(c->node);
        // The requester side: the next request connects again (and fails
        // over to tcp while the port stays down).
        auto it = conns_.find(c->node);
        if (it != conns_.end() && it->second == c) conns_.erase(it);
      }
    }
    if (type == IBV_EVENT_PORT_ACTIVE) {
      TLOG_INFO("rdma: %s; new connections may use it again", what);
    } else if (port >= 0) {
      TLOG_WARN("rdma: %s: %d connection(s) failed over (reads and unsent requests go over tcp)",
                what, ended);
    } else if (qp != nullptr) {
      TLOG_WARN("rdma: %s: dropped the connection with node %s", what,
                nodes.empty() ? std::string("(none)") : absl::StrCat(nodes[0]));
    } else {
      TLOG_INFO("rdma: %s", what);
    }
  }
}

// ---------------------------------------------------------------- listener

void RdmaTransport::ListenLoop() {
  const int spin_us = EffectiveSpinUs(options_.spin_us);
  absl::Time relisten_at = absl::InfiniteFuture();
  const ibv_context* nonblocking = nullptr;
  while (!shutting_down_) {
    // The listener's device's async events too (a home without connections
    // still logs its port going down and up); a wildcard listener has none.
    ibv_context* verbs = listener_->id != nullptr ? listener_->id->verbs : nullptr;
    if (verbs != nullptr && verbs != nonblocking) {
      fcntl(verbs->async_fd, F_SETFL, fcntl(verbs->async_fd, F_GETFL) | O_NONBLOCK);
      nonblocking = verbs;
    }
    pollfd fds[3] = {{listener_->cm->fd, POLLIN, 0},
                     {listener_->wake_fd, POLLIN, 0},
                     {verbs != nullptr ? verbs->async_fd : -1, POLLIN, 0}};
    if (poll(fds, 3, 1000) < 0 && errno != EINTR) break;
    if (shutting_down_) break;
    if (fds[2].revents & POLLIN) ReadAsyncEvents(verbs);
    if (absl::ToUnixNanos(absl::Now()) < g_release_until_ns.load()) ReleaseRemovedDevices();
    if (listener_->id == nullptr && absl::Now() >= relisten_at) Relisten(&relisten_at);
    if (!(fds[0].revents & POLLIN)) continue;
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(listener_->cm, &ev) != 0) continue;
    if (ev->event == RDMA_CM_EVENT_DEVICE_REMOVAL) {
      bool ours = ev->id == listener_->id;
      rdma_cm_id* id = ev->id;
      rdma_ack_cm_event(ev);
      if (ours) {
        TLOG_WARN(
            "rdma: the device under %s was removed; not accepting rdma connections "
            "until it returns",
            bound_address_);
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
    if (!Accept(ev, spin_us)) break;
  }
  // Stopping: connect requests already queued are refused with a reason,
  // so their requesters go over tcp at once instead of timing out.
  if (listener_->id == nullptr) return;
  pollfd p{listener_->cm->fd, POLLIN, 0};
  rdma_cm_event* ev = nullptr;
  while (PollNow(&p, 1) == 1 && rdma_get_cm_event(listener_->cm, &ev) == 0) {
    rdma_cm_id* id = ev->id;
    bool request = ev->event == RDMA_CM_EVENT_CONNECT_REQUEST;
    rdma_ack_cm_event(ev);
    if (request) {
      Reject(id, RdmaRejectReason::kShuttingDown);
      rdma_destroy_id(id);
    }
  }
}

void RdmaTransport::Relisten(absl::Time* relisten_at) {
  // The device was removed: listen again at the same address and port
  // (peers keep the address they learned from Hello) once it is back.
  *relisten_at = absl::Now() + absl::Seconds(2);
  auto ss = NumericSocketAddress(bound_address_);
  rdma_cm_id* id = nullptr;
  if (ss.ok() && rdma_create_id(listener_->cm, &id, nullptr, RDMA_PS_TCP) == 0) {
    if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&*ss)) == 0 && id->verbs != nullptr &&
        ApplyFabricOptions(id, options_, "rdma listen").ok() && rdma_listen(id, 64) == 0) {
      listener_->id = id;
      *relisten_at = absl::InfiniteFuture();
      TLOG_INFO("rdma: listening again on %s (%s)", bound_address_,
                ibv_get_device_name(id->verbs->device));
    } else {
      rdma_destroy_id(id);
    }
  }
}

namespace {

// Refuses a connect request, saying why in the reject's private data.
void Reject(rdma_cm_id* id, RdmaRejectReason reason) {
  uint8_t priv[kRdmaRejectDataSize];
  EncodeRdmaRejectData(reason, priv);
  rdma_reject(id, priv, sizeof(priv));
}

// The reason for a connect request DecodeRdmaConnectData refused.
RdmaRejectReason ReasonFor(const absl::Status& st) {
  if (absl::IsFailedPrecondition(st)) return RdmaRejectReason::kVersionMismatch;
  if (absl::IsOutOfRange(st)) return RdmaRejectReason::kUnknownNode;
  return RdmaRejectReason::kBadRequest;
}

}  // namespace

bool RdmaTransport::Accept(rdma_cm_event* ev, int spin_us) {
  rdma_cm_id* id = ev->id;
  auto data = DecodeRdmaConnectData(ev->param.conn.private_data, ev->param.conn.private_data_len);
  const rdma_conn_param offered = ev->param.conn;  // the pointers in it die with the ack
  // The connect request proves nothing yet (it is a nonce and a claim,
  // and may be a recorded one): the dialer proves itself in its AUTH, the
  // connection's first message, after our accept carried our nonce and
  // proof (rdma_wire.h). Until then the connection serves nothing, lives
  // kRdmaAuthTimeoutMs at most, and counts against
  // kRdmaMaxUnauthenticated, so replayed requests cannot pin memory.
  std::optional<RdmaRejectReason> refuse;
  std::string refusal;
  if (!data.ok()) {
    refuse = ReasonFor(data.status());
    refusal = std::string(data.status().message());
  } else if (data->home != local_node_) {
    refuse = RdmaRejectReason::kUnknownNode;
    refusal = absl::StrCat("it meant node ", data->home, ", this is node ", local_node_,
                           " (a stale address?)");
  } else if (shutting_down_) {
    refuse = RdmaRejectReason::kShuttingDown;
  } else {
    absl::MutexLock lock(&mu_);
    ReapLocked();
    size_t homes = 0, unauthenticated = 0;
    for (const auto& c : all_conns_) {
      if (c->role != Connection::Role::kHome) continue;
      ++homes;
      if (!c->authenticated.load() && !c->finished.load()) ++unauthenticated;
    }
    if (homes >= options_.max_connections) {
      refuse = RdmaRejectReason::kTooManyConnections;
    } else if (unauthenticated >= kRdmaMaxUnauthenticated) {
      refuse = RdmaRejectReason::kTooManyConnections;
      refusal = absl::StrCat(unauthenticated, " connections are still waiting for their proof");
    }
  }
  rdma_ack_cm_event(ev);
  if (refuse) {
    TLOG_WARN("rdma: refused a connection%s: %s%s",
              data.ok() ? absl::StrCat(" from node ", data->node) : std::string(),
              RdmaRejectReasonName(*refuse), refusal.empty() ? "" : ": " + refusal);
    Reject(id, *refuse);
    rdma_destroy_id(id);
    return true;
  }
  auto c = std::make_shared<Connection>();
  c->role = Connection::Role::kHome;
  c->owner = this;
  c->node = data->node;
  // What both sides use: the requester sized its queue pair for what it
  // asked and builds its pool for this answer (rdma_wire.h).
  RdmaNegotiated use =
      NegotiateRdma(data->depth, data->slot_bytes, options_.queue_depth, options_.slot_bytes);
  c->depth = use.depth;
  c->slot_bytes = use.slot_bytes;
  c->server = server_;
  c->exporter = exporter_.get();
  c->id = id;
  c->auth_request = *data;
  c->auth_token = DataTokenFor(secret_, data->node);
  if (const sockaddr* peer = rdma_get_peer_addr(id); peer != nullptr)
    c->peer_address = SocketAddressString(peer);
  absl::Status st = FreshNonce(c->home_nonce.data());
  if (st.ok()) {
    c->cm = rdma_create_event_channel();
    if (c->cm == nullptr || rdma_migrate_id(id, c->cm) != 0)
      st = ErrnoStatus(errno, "rdma_migrate_id");
    else
      st = c->CreateResources(absl::StrCat("rdma connection from node ", c->node));
  }
  if (st.ok()) st = ApplyFabricOptions(id, options_, "rdma accept");
  if (st.ok()) {
    RdmaAcceptData answer{use, c->home_nonce, {}};
    answer.proof = RdmaProof(c->auth_token, AuthRole::kListener, c->auth_request, c->home_nonce);
    uint8_t priv[kRdmaAcceptDataSize];
    EncodeRdmaAcceptData(answer, priv);
    rdma_conn_param param{};
    param.private_data = priv;
    param.private_data_len = sizeof(priv);
    ClampRdAtomic(id->verbs, &offered, &param);
    param.rnr_retry_count = 7;
    if (rdma_accept(id, &param) != 0) st = ErrnoStatus(errno, "rdma_accept");
  }
  if (!st.ok()) {
    TLOG_WARN("rdma: connection from node %d failed: %s", c->node, st.message());
    Reject(id, RdmaRejectReason::kNoResources);
    return true;  // ~Connection tears down what was built
  }
  if (use.depth != data->depth || use.slot_bytes != data->slot_bytes)
    TLOG_INFO("rdma: node %d asked for queue depth %d and %d KiB slots; using %d and %d KiB",
              c->node, data->depth, data->slot_bytes / 1024, use.depth, use.slot_bytes / 1024);
  TLOG_INFO("rdma: data connection from node %d on %s (%s), waiting for its proof", c->node,
            ibv_get_device_name(id->verbs->device), c->peer_address);
  c->auth_deadline = absl::Now() + absl::Milliseconds(kRdmaAuthTimeoutMs);
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return false;
  ReapLocked();
  // Its place among the node's connections; it fences off and replaces
  // the older ones only once it proved itself (Authenticated).
  std::shared_ptr<NodeFence>& fence = fences_[c->node];
  if (!fence) fence = std::make_shared<NodeFence>();
  c->fence = fence;
  c->generation = next_generation_++;
  Connection* raw = c.get();
  const PeerLiveness::Options live = LivenessOptions(options_);
  c->thread = std::thread([this, raw, spin_us, live] {
    NameThisThread("tt-rdma-serve");
    RunConnection(raw, spin_us, live, shutting_down_);
    raw->finished = true;
  });
  all_conns_.push_back(std::move(c));
  return true;
}

bool RdmaTransport::Connection::CheckAuth(uint32_t i, uint32_t byte_len, std::string* why) {
  thread_role.AssertHere();
  absl::Status st =
      CheckRdmaDialerAuth(auth_token, auth_request, home_nonce, recv_msg(i), byte_len);
  auth_token.clear();  // one try: a wrong first message ends the connection
  if (!st.ok()) {
    TLOG_WARN("rdma: data connection from %s: %s", peer_address, st.message());
    *why = std::string(st.message());
    return false;
  }
  if (absl::Status posted = PostRecv(i); !posted.ok()) {
    *why = std::string(posted.message());
    return false;
  }
  return true;
}

void RdmaTransport::Connection::Authenticated() {
  authenticated.store(true);
  TLOG_INFO("rdma: node %d at %s proved itself; serving its connection", node, peer_address);
  if (fence) {
    // Newer than every connection from this node before it: from now on
    // their write-backs are refused (WriteFetched), after any one that is
    // being written now.
    absl::MutexLock lock(&fence->mu);
    fence->current = std::max(fence->current, generation);
  }
  // One connection per requester node: a node connects again only when it
  // gave up its connection (lost, timed out, or it restarted), so the old
  // one is dead from its side; free it now instead of after our timeout.
  absl::MutexLock lock(&owner->mu_);
  for (const auto& old : owner->all_conns_) {
    if (old.get() == this || old->role != Role::kHome || old->node != node) continue;
    if (old->generation > generation) continue;  // a newer one proved itself first
    {
      absl::MutexLock clock(&old->mu);
      if (old->dead) continue;
      old->dead = true;
      old->why = absl::StrCat("replaced by a new connection from node ", node);
    }
    old->Wake();
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

// ---------------------------------------------------------------- connect

absl::StatusOr<std::shared_ptr<RdmaTransport::Connection>> RdmaTransport::GetConnection(
    const DataEndpoint& home) {
  if (home.rdma_address.empty())
    return SetupError(EHOSTUNREACH, absl::StrCat("node ", home.node_id, " has no rdma address"));
  if (home.token.size() != kDataTokenSize)
    return SetupError(EINVAL, absl::StrCat("no data token for node ", home.node_id));
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return absl::UnavailableError("transport shutting down");
  ReapLocked();
  if (auto it = conns_.find(home.node_id); it != conns_.end()) {
    Connection* old = it->second.get();
    absl::MutexLock clock(&old->mu);
    if (!old->dead) {
      // Live or being set up: theirs (one connection per node pair). A home
      // that restarted is another peer: the old queue pair would only find
      // out by timing out.
      if (home.incarnation == 0 || old->incarnation == home.incarnation) return it->second;
      old->dead = true;
      old->why =
          absl::StrCat("node ", home.node_id, " restarted (incarnation ",
                       absl::Hex(home.incarnation), ", was ", absl::Hex(old->incarnation), ")");
      old->Wake();
    }
  }
  auto c = std::make_shared<Connection>();
  c->role = Connection::Role::kRequester;
  c->owner = this;
  c->node = home.node_id;
  c->incarnation = home.incarnation;
  c->depth = options_.queue_depth;
  c->slot_bytes = options_.slot_bytes;
  c->spin_us = EffectiveSpinUs(options_.spin_us);  // before it is shared: PumpLocked reads it
  c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->wake_fd < 0) return SetupError(errno, "eventfd");
  conns_[home.node_id] = c;
  Connection* raw = c.get();
  c->thread = std::thread([this, raw, home] {
    NameThisThread("tt-rdma-dial");
    ConnectAndRun(raw, home);
    raw->finished = true;
  });
  all_conns_.push_back(c);
  return c;
}

void RdmaTransport::ConnectAndRun(Connection* c, const DataEndpoint& home) {
  c->thread_role.Bind();
  // Holds the set-up before it starts (no lock held): a test queues
  // requests that must wait for the negotiation's answer.
  TETHER_FAULT_POINT("rdma.connect.before_connect");
  absl::Status st = Connect(c, home);
  std::vector<Connection::Chunk> owed;
  std::string why;
  {
    absl::MutexLock lock(&c->mu);
    if (st.ok() && !c->dead) {
      c->connected = true;
      // Requests queued while we connected were cut to the slot size we
      // asked for; the home may have allowed smaller slots: a chunk must
      // never be longer than the slot it is answered into.
      std::deque<Connection::Chunk> cut;
      for (Connection::Chunk& ch : c->waiting) {
        if (ch.length <= c->slot_bytes) {
          cut.push_back(std::move(ch));
          continue;
        }
        ch.op->chunks_left += (ch.length + c->slot_bytes - 1) / c->slot_bytes - 1;
        // An in-place read is answered from its one slot; cut, it is
        // copied into its buffer chunk by chunk as Submit does.
        if (ch.op->in_place) Connection::CopyInsteadOfInPlace(*ch.op);
        for (uint64_t off = 0; off < ch.length; off += c->slot_bytes)
          cut.push_back(
              {ch.op, ch.op_offset + off,
               static_cast<uint32_t>(std::min<uint64_t>(c->slot_bytes, ch.length - off))});
      }
      c->waiting.swap(cut);
      PumpLocked(c);  // what queued while we connected
    } else {
      // A set-up that failed on its own is the requests' answer (tcp may
      // serve them); one abandoned (Disconnect, a replacement, Shutdown)
      // leaves them NotSent: DataPath sends them again.
      if (!c->dead) c->setup_status = st;
      if (st.ok()) st = absl::UnavailableError(c->why);
      owed = c->MarkDead(std::string(st.message()));
      why = c->why;
    }
  }
  if (!st.ok()) {
    // Nothing was sent: the requests get the set-up's status (a
    // SetupFailure goes over tcp in DataPath).
    TLOG_WARN("rdma: %s", st.message());
    FailChunks(c, std::move(owed), why);
    c->DestroyVerbs();
    return;
  }
  TLOG_INFO("rdma: data connection to node %d at %s on %s", home.node_id, home.rdma_address,
            ibv_get_device_name(c->id->verbs->device));
  RunConnection(c, c->spin_us, LivenessOptions(options_), shutting_down_);
}

absl::Status RdmaTransport::Connect(Connection* c, const DataEndpoint& home) {
  auto ss = NumericSocketAddress(home.rdma_address);
  if (!ss.ok()) return SetupError(EINVAL, std::string(ss.status().message()));
  const std::string what =
      absl::StrCat("rdma connect to node ", home.node_id, " at ", home.rdma_address);
  const int timeout = options_.connect_timeout_ms;
  c->cm = rdma_create_event_channel();
  if (c->cm == nullptr) return SetupError(errno, "rdma_create_event_channel");
  if (rdma_create_id(c->cm, &c->id, nullptr, RDMA_PS_TCP) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_create_id"));
  RETURN_IF_ERROR(ApplyFabricOptions(c->id, options_, what));
  std::optional<sockaddr_storage> src;
  if (!options_.source.empty()) {
    auto s = NumericSocketAddress(options_.source);
    if (!s.ok()) return SetupError(EINVAL, std::string(s.status().message()));
    src = *s;
  }
  if (rdma_resolve_addr(c->id, src ? reinterpret_cast<sockaddr*>(&*src) : nullptr,
                        reinterpret_cast<sockaddr*>(&*ss), timeout) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_resolve_addr"));
  RETURN_IF_ERROR(WaitCmEvent(c->cm, c->wake_fd, RDMA_CM_EVENT_ADDR_RESOLVED, timeout + 500, what));
  if (rdma_resolve_route(c->id, timeout) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_resolve_route"));
  RETURN_IF_ERROR(
      WaitCmEvent(c->cm, c->wake_fd, RDMA_CM_EVENT_ROUTE_RESOLVED, timeout + 500, what));
  // The queue pair is sized for what we ask; the buffers for the home's
  // answer (below).
  RETURN_IF_ERROR(c->CreateQueuePair(what));
  const RdmaNegotiated asked{c->depth, c->slot_bytes};
  RdmaConnectData req{local_node_, home.node_id, {}, asked.depth, asked.slot_bytes};
  RETURN_IF_ERROR(FreshNonce(req.nonce.data()));
  uint8_t priv[kRdmaPrivateDataSize];
  EncodeRdmaConnectData(req, priv);
  if (options_.log_connect_requests)
    TLOG_INFO("rdma: test hook: connect request to node %d: private data %s", home.node_id,
              absl::BytesToHexString(
                  absl::string_view(reinterpret_cast<const char*>(priv), sizeof(priv))));
  rdma_conn_param param{};
  param.private_data = priv;
  param.private_data_len = sizeof(priv);
  ClampRdAtomic(c->id->verbs, nullptr, &param);
  param.retry_count = 7;
  param.rnr_retry_count = 7;
  if (rdma_connect(c->id, &param) != 0)
    return SetupError(errno, absl::StrCat(what, ": rdma_connect"));
  std::string answer;
  RETURN_IF_ERROR(
      WaitCmEvent(c->cm, c->wake_fd, RDMA_CM_EVENT_ESTABLISHED, timeout + 500, what, &answer));
  // The home said what to use (rdma_wire.h); an answer we cannot use is a
  // set-up failure (tcp serves the request; the caller tears down). depth
  // and slot_bytes change here, on the connection's thread, under mu:
  // Submit cuts requests queued meanwhile to slot_bytes under mu, and
  // ConnectAndRun cuts them again if the home allowed smaller slots.
  auto accept = DecodeRdmaAcceptData(answer.data(), answer.size(), asked);
  if (!accept.ok()) return SetupError(EPROTO, absl::StrCat(what, ": ", accept.status().message()));
  // The home proves it knows our token before we send it anything but our
  // nonce; the caller disconnects (DestroyVerbs) on a wrong proof.
  if (absl::Status proof = CheckRdmaHomeProof(home.token, req, *accept); !proof.ok()) {
    TLOG_WARN("rdma: data connection to node %d at %s: %s: refused", home.node_id,
              home.rdma_address, proof.message());
    return proof;
  }
  const RdmaNegotiated* use = &accept->use;
  {
    absl::MutexLock lock(&c->mu);
    c->depth = use->depth;
    c->slot_bytes = use->slot_bytes;
  }
  RETURN_IF_ERROR(c->CreateBuffers(what));
  // Our proof, as the connection's first message: the home serves nothing
  // before it. Posted before `connected` (ConnectAndRun), so no request
  // can overtake it; RC delivers in order.
  EncodeRdmaAuthMessage(RdmaProof(home.token, AuthRole::kDialer, req, accept->nonce),
                        c->auth_msg());
  ibv_sge sge{reinterpret_cast<uintptr_t>(c->auth_msg()), kRdmaMessageSize, c->ctrl_mr->lkey};
  ibv_send_wr wr{};
  wr.wr_id = WrId(kSendAuth, 0);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED | (c->use_inline ? IBV_SEND_INLINE : 0);
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(c->id->qp, &wr, &bad); err != 0)
    return SetupError(err, absl::StrCat(what, ": ibv_post_send (auth)"));
  if (use->depth != asked.depth || use->slot_bytes != asked.slot_bytes)
    TLOG_INFO("rdma: node %d allows queue depth %d and %d KiB slots (we asked for %d and %d KiB)",
              home.node_id, use->depth, use->slot_bytes / 1024, asked.depth,
              asked.slot_bytes / 1024);
  return absl::OkStatus();
}

}  // namespace tether
