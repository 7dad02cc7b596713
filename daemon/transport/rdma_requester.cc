// RdmaTransport, requester side (rdma_transport.h has the shape;
// rdma_transport_internal.h the thread contract): a caller's Read/Write
// becomes an Op split into slot-sized chunks (Submit), chunks are posted as
// slots free (PumpLocked), and responses complete them on the connection's
// thread (CompleteRequest, CompleteRead, FinishChunk) or fail them when the
// connection ends (FailChunks).
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/common/data_counters.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page_diff.h"
#include "daemon/transport/rdma_transport_internal.h"
#include "daemon/transport/rdma_wire.h"

namespace tether {
namespace {

// The request id names the pool slot in its low 16 bits (the response is
// matched without a table lookup) and a per-connection counter above.
uint32_t SlotOfRequest(uint64_t req_id) { return static_cast<uint32_t>(req_id & 0xffff); }

}  // namespace

// Completes chunks that will never be answered (outside the connection lock).
// An op is LostInFlight if any of its chunks was sent (the home may have
// served part of it), NotSent if none was, or gets the set-up's failure if
// the connection never came up. After a port or device failure
// (ReadAsyncEvents) an op never sent, or a read (repeating one is harmless:
// its late answer lands in our pool, not in the caller's buffer), fails as
// a set-up failure instead, so DataPath reissues it over tcp at once; a
// write that may have reached the home does not (DataPath hands it back
// as Retry()). The op's first failure stays.
void FailChunks(Conn* c, std::vector<Conn::Chunk> owed, const std::string& why) {
  std::vector<std::shared_ptr<Conn::Op>> done;
  {
    absl::MutexLock lock(&c->mu);
    const std::string lost = absl::StrCat("rdma connection to node ", c->node, " lost: ", why);
    for (auto& ch : owed) {
      if (ch.op->status.ok()) {
        if (c->device_failed && (!ch.op->sent || ch.op->is_read)) {
          ch.op->status = SetupFailure(absl::UnavailableError(lost));
        } else if (ch.op->sent) {
          ch.op->status = LostInFlight(absl::UnavailableError(lost));
        } else if (!c->setup_status.ok()) {
          ch.op->status = c->setup_status;
        } else {
          ch.op->status = NotSent(absl::UnavailableError(lost));
        }
      }
      if (--ch.op->chunks_left == 0) done.push_back(ch.op);
    }
  }
  for (auto& op : done) Conn::Complete(*op, {});
}

// Posts as many waiting chunks as there are free slots, as one chained
// ibv_post_send (a read-ahead batch costs one doorbell). A write's bytes
// are copied into its slot with mu released (a 4 MiB write-back would
// otherwise hold mu, and the completions that need it, for the whole
// copy): the slots are already ours (in `inflight`, not yet posted, so
// nothing answers them), `copying` keeps the pool and the callers' buffers
// alive (RunConnection waits for it before it fails chunks or destroys the
// pool), and batches post in the order they left `waiting`, so a later
// write-back of a page never overtakes an earlier one.
void PumpLocked(Conn* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu) {
  // Not connected yet: the connection's thread pumps once it is.
  if (c->dead || !c->connected || c->waiting.empty() || c->pool->free_slots() == 0) return;
  ibv_send_wr wrs[64];
  ibv_sge sges[64];
  struct Copy {
    uint8_t* to;
    const uint8_t* from;
    uint32_t length;
  } copies[64];
  int n = 0, ncopies = 0;
  while (!c->waiting.empty() && n < 64) {
    std::optional<uint32_t> slot = c->pool->Acquire();
    if (!slot) break;
    Conn::Chunk ch = std::move(c->waiting.front());
    c->waiting.pop_front();
    ch.op->sent = true;
    const Conn::Op& op = *ch.op;
    uint64_t req_id = (c->next_req++ << 16) | *slot;
    absl::Span<uint8_t> buf = c->pool->slot(*slot);
    if (!op.is_read) copies[ncopies++] = {buf.data(), op.src.data() + ch.op_offset, ch.length};
    RdmaMessage m;
    m.header.type = op.is_read ? FrameType::kReadReq
                    : op.diff  ? FrameType::kWriteDiffReq
                               : FrameType::kWriteReq;
    m.header.req_id = req_id;
    m.header.segid = op.segid;
    m.header.grant = op.grant;
    m.header.offset = op.diff ? op.offset : op.offset + ch.op_offset;
    m.header.length = ch.length;
    m.addr = reinterpret_cast<uintptr_t>(buf.data());
    m.rkey = c->pool_mr->rkey;
    EncodeRdmaMessage(m, c->send_msg(*slot));
    c->inflight_req[*slot] = req_id;
    c->inflight[*slot] = std::move(ch);
    sges[n] = {reinterpret_cast<uintptr_t>(c->send_msg(*slot)), kRdmaMessageSize, c->ctrl_mr->lkey};
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
  const uint64_t ticket = c->next_batch++;
  if (ncopies > 0) {
    ++c->copying;
    c->mu.Unlock();
    for (int i = 0; i < ncopies; ++i) std::memcpy(copies[i].to, copies[i].from, copies[i].length);
    c->mu.Lock();
    --c->copying;
  }
  auto turn = [c, ticket]()
                  ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->dead || c->posted_batches == ticket; };
  c->mu.Await(absl::Condition(&turn));
  c->posted_batches = ticket + 1;
  // Dead meanwhile: the connection's thread took these chunks (MarkDead)
  // and fails them; the QP may be gone.
  if (c->dead) return;
  ibv_send_wr* bad = nullptr;
  int err = ibv_post_send(c->id->qp, wrs, &bad);
  if (err != 0) {
    // The QP is in error: the thread sees the flushed completions (or the
    // wake) and fails everything; make sure it does.
    TLOG_WARN("rdma: ibv_post_send to node %d failed: %s", c->node, std::strerror(err));
    rdma_disconnect(c->id);
    c->Wake();
    return;
  }
  // Poll while requests are in flight (RunConnection): timed from now. A
  // thread asleep since a quiet spell is woken now, while the request
  // travels, rather than by the completion interrupt after the answer
  // (one eventfd write here instead of a CQ event read there; only when
  // spinning is on, i.e. more than one CPU).
  c->last_post_ns.store(absl::GetCurrentTimeNanos(), std::memory_order_relaxed);
  if (c->spin_us > 0 && c->sleeping.load(std::memory_order_relaxed)) c->Wake();
}

bool SendHeartbeat(Conn* c) {
  c->thread_role.AssertHere();
  absl::MutexLock lock(&c->mu);
  if (c->dead || !c->connected || c->heartbeat_slot) return false;
  // A slot is the heartbeat's credit: the home has a receive for it.
  std::optional<uint32_t> slot = c->pool->Acquire();
  if (!slot) return false;
  ibv_send_wr wr{};
  wr.wr_id = WrId(kSendRequest, *slot);
  wr.num_sge = 0;  // zero-length: nothing else is (rdma_wire.h)
  wr.opcode = IBV_WR_SEND;
  if (++c->unsignaled_sends >= std::min(kSignalEvery, c->depth)) {
    wr.send_flags |= IBV_SEND_SIGNALED;
    c->unsignaled_sends = 0;
  }
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(c->id->qp, &wr, &bad); err != 0) {
    c->pool->Release(*slot);
    TLOG_WARN("rdma: heartbeat to node %d: ibv_post_send: %s", c->node, std::strerror(err));
    return false;
  }
  c->heartbeat_slot = slot;
  return true;
}

bool HeartbeatAnswered(Conn* c, uint32_t i, std::string* why) {
  c->thread_role.AssertHere();
  if (!c->PostRecv(i).ok()) {
    *why = "cannot repost a receive";
    return false;
  }
  absl::MutexLock lock(&c->mu);
  if (!c->heartbeat_slot) {
    *why = "a heartbeat answer without a heartbeat";
    return false;
  }
  c->pool->Release(*c->heartbeat_slot);
  c->heartbeat_slot.reset();
  c->heartbeat_answered = true;
  PumpLocked(c);
  return true;
}

namespace {

// Requester side: chunk `ch` of slot `slot` was answered with `status`
// (0: for a read, its bytes are in the slot). Frees the slot, sends what
// waits for one, and completes the operation with its last chunk. On the
// connection's thread.
void FinishChunk(Conn* c, uint32_t slot, Conn::Chunk ch, uint32_t status) {
  // An in-place read (one chunk) is handed the slot itself, which stays
  // ours until its completion returned; any other read's bytes are copied
  // out of the slot into the caller's buffer first (outside the lock; the
  // slot is still ours).
  const bool in_place = static_cast<bool>(ch.op->in_place);
  if (status == 0 && ch.op->is_read && !in_place) {
    std::memcpy(ch.op->dst.data() + ch.op_offset, c->pool->slot(slot).data(), ch.length);
    CountBytes(Counters().fetch_copy_bytes, ch.length);
  }
  std::shared_ptr<Conn::Op> finished;
  {
    absl::MutexLock lock(&c->mu);
    if (!in_place) c->pool->Release(slot);
    if (status != 0 && ch.op->status.ok())
      ch.op->status =
          FromWireStatus(status, absl::StrCat("node ", c->node, " refused the request"));
    if (--ch.op->chunks_left == 0) finished = ch.op;
    if (!in_place) PumpLocked(c);
  }
  if (finished) Conn::Complete(*finished, c->pool->slot(slot).first(ch.length));
  if (in_place) {
    absl::MutexLock lock(&c->mu);
    c->pool->Release(slot);
    PumpLocked(c);
  }
}

}  // namespace

// Requester side: a response arrived in receive slot `i`.
bool CompleteRequest(Conn* c, uint32_t i, uint32_t byte_len, std::string* why) {
  auto m = DecodeRdmaMessage(c->recv_msg(i), byte_len, c->slot_bytes);
  if (!c->PostRecv(i).ok()) {
    *why = "cannot repost a receive";
    return false;
  }
  if (!m.ok() ||
      (m->header.type != FrameType::kReadResp && m->header.type != FrameType::kWriteResp)) {
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

void RdmaTransport::Submit(const DataEndpoint& home, bool is_read, uint64_t segid, uint64_t grant,
                           uint64_t offset, absl::Span<uint8_t> dst, absl::Span<const uint8_t> src,
                           Done done, ReadDone in_place, bool diff) {
  size_t len = is_read ? dst.size() : src.size();
  auto fail = [&](absl::Status st) {
    if (in_place) {
      std::move(in_place)(std::move(st), {});
    } else {
      std::move(done)(std::move(st));
    }
  };
  if (len == 0 || len > kMaxPayload) {
    fail(absl::InvalidArgumentError("transport request length out of range"));
    return;
  }
  auto conn_or = GetConnection(home);
  if (!conn_or.ok()) {
    fail(conn_or.status());
    return;
  }
  Connection* c = conn_or->get();
  auto op = std::make_shared<Connection::Op>();
  op->is_read = is_read;
  op->diff = diff;
  op->segid = segid;
  op->grant = grant;
  op->offset = offset;
  op->dst = dst;
  op->src = src;
  op->done = std::move(done);
  op->in_place = std::move(in_place);
  std::string why;
  bool too_small = false;
  {
    absl::MutexLock lock(&c->mu);
    // Queued (and posted at once if connected and a slot is free; else by
    // the connection's thread once it is up, or as slots free).
    if (!c->dead) {
      // More than one slot: the chunks are copied into `dst` as they
      // arrive. (slot_bytes under mu, as for the chunks below.)
      if (op->in_place && len > c->slot_bytes) Connection::CopyInsteadOfInPlace(*op);
      std::vector<std::pair<size_t, size_t>> pieces;
      if (diff) {
        // A diff is cut only between page entries: each piece must be a
        // diff the home can decode alone.
        pieces = SplitDiff(src, c->slot_bytes);
        for (auto [off, n] : pieces) too_small |= n > c->slot_bytes;
      } else {
        for (uint64_t off = 0; off < len; off += c->slot_bytes)
          pieces.emplace_back(off, std::min<uint64_t>(c->slot_bytes, len - off));
      }
      if (!too_small) {
        op->chunks_left = static_cast<uint32_t>(pieces.size());
        for (auto [off, n] : pieces) c->waiting.push_back({op, off, static_cast<uint32_t>(n)});
        PumpLocked(c);
        return;
      }
    }
    why = c->why;
  }
  if (too_small) {
    // Nothing sent: DataPath sends it over tcp (a set-up failure).
    op->status = SetupFailure(ErrnoStatus(
        EMSGSIZE, absl::StrCat("rdma slots to node ", home.node_id,
                               " are smaller than a page's "
                               "diff (--rdma_slot_kb); a diff write-back goes over tcp")));
    Connection::Complete(*op, {});
    return;
  }
  op->status = NotSent(absl::UnavailableError(
      absl::StrCat("rdma connection to node ", home.node_id, " lost: ", why)));
  Connection::Complete(*op, {});
}

}  // namespace tether
