// RdmaTransport, home side (rdma_transport.h has the shape;
// rdma_transport_internal.h the thread contract): serves the requests a
// peer posts — reads through BlockServer::ReadBlocks into a home slot and
// RDMA WRITE_WITH_IMM into the requester's slot; writes by RDMA READ of the
// requester's slot, then BlockServer::WriteBlocks — and recycles home slots
// as signalled responses complete. Everything here runs on the home
// connection's thread.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/transport/rdma_transport_internal.h"
#include "daemon/transport/rdma_wire.h"

namespace tether {
namespace {

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
  if (err != 0)
    TLOG_WARN("rdma: response to node %d: ibv_post_send: %s", c->node, std::strerror(err));
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
  ibv_sge sge{reinterpret_cast<uintptr_t>(c->pool->slot(slot).data()), h.length, c->pool_mr->lkey};
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

}  // namespace

// Home side: a heartbeat arrived in receive slot `i`: answered with a
// zero-length SEND, signalled (its completion retires it from the send
// queue; heartbeats come only while the requester has nothing in flight,
// so there is room).
bool AnswerHeartbeat(Conn* c, uint32_t i, std::string* why) {
  c->thread_role.AssertHere();
  if (!c->PostRecv(i).ok()) {
    *why = "cannot repost a receive";
    return false;
  }
  ibv_send_wr wr{};
  wr.wr_id = WrId(kHeartbeat, 0);
  wr.num_sge = 0;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(c->id->qp, &wr, &bad); err != 0) {
    *why = absl::StrCat("heartbeat answer: ", std::strerror(err));
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
  if (!m.ok() ||
      (m->header.type != FrameType::kReadReq && m->header.type != FrameType::kWriteReq)) {
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

// Home side: the RDMA READ of a write's bytes into pool slot `slot`
// completed: hand them to WriteBlocks, then answer.
bool WriteFetched(Conn* c, uint32_t slot, std::string* why) {
  const RdmaMessage& req = c->serving[slot];
  absl::Status st;
  {
    // Held across the write: a newer connection from this node (its
    // requester gave this one up and may have sent this write again, and
    // newer ones after it) must not be served until this write is in, and
    // this connection's later writes must not land after that one's.
    // Uncontended but at a replacement; not on the read path.
    absl::MutexLock lock(&c->fence->mu);
    if (c->fence->current != c->generation) {
      *why = absl::StrCat("replaced by a newer connection from node ", c->node);
      return false;
    }
    st = c->server->WriteBlocks(c->node, req.header.segid, req.header.grant, req.header.offset,
                                c->pool->slot(slot).first(req.header.length));
  }
  if (!PostResponse(c, slot, req, ToWireStatus(st), 0)) {
    *why = "cannot post a response";
    return false;
  }
  return true;
}

}  // namespace tether
