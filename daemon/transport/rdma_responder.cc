// RdmaTransport, home side (rdma_transport.h has the shape;
// rdma_transport_internal.h the thread contract): serves the requests a
// peer posts — reads through BlockServer::ReadBlocks into a home slot and
// RDMA WRITE_WITH_IMM into the requester's slot; writes by RDMA READ of the
// requester's slot, then BlockServer::WriteBlocks — and recycles home slots
// as signalled responses complete. The connection's thread receives,
// acquires slots, posts RDMA READs and handles completions; the
// BlockServer calls and the responses after them run on the transport's
// exporter workers (RunExporterJob), so a slow exporter page holds up only
// its own request.
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
// refusal, a write's answer) as a SEND of the response message. On an
// exporter worker. False if it could not be posted (the connection is
// dead, or the post failed).
bool PostResponse(Conn* c, uint32_t slot, const RdmaMessage& req, uint32_t status,
                  uint32_t data_len) ABSL_LOCKS_EXCLUDED(c->mu) {
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
  // Under mu: `unreleased` must list the slots in posting order (a
  // signalled completion retires every response posted before it).
  absl::MutexLock lock(&c->mu);
  if (c->dead) return false;
  c->unreleased.push_back(slot);
  // An empty pool must see a completion soon (the backlog waits for it).
  if (c->pool->free_slots() == 0 || c->unreleased.size() >= std::min(kSignalEvery, c->depth))
    wr.send_flags |= IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  int err = ibv_post_send(c->id->qp, &wr, &bad);
  if (err != 0) {
    c->unreleased.pop_back();
    TLOG_WARN("rdma: response to node %d: ibv_post_send: %s", c->node, std::strerror(err));
  }
  return err == 0;
}

// Hands slot `slot`'s request to the exporter workers (or, without any,
// runs it here). On the connection's thread.
void QueueExporterJob(Conn* c, uint32_t slot, const RdmaMessage& m) ABSL_LOCKS_EXCLUDED(c->mu) {
  if (c->exporter == nullptr) {  // no workers (one CPU): here
    {
      absl::MutexLock lock(&c->mu);
      ++c->exporter_jobs;
    }
    RunExporterJob({c, slot, m});
    return;
  }
  {
    absl::MutexLock lock(&c->mu);
    ++c->exporter_jobs;
  }
  if (!c->exporter->jobs.Push({c, slot, m})) {
    // Stopped: only after every connection's thread was joined.
    absl::MutexLock lock(&c->mu);
    --c->exporter_jobs;
  }
}

// Home side: serves `m` from pool slot `slot`. False on a failure that
// drops the connection. On the connection's thread.
bool Serve(Conn* c, const RdmaMessage& m, uint32_t slot, std::string* why) {
  c->serving[slot] = m;
  const FrameHeader& h = m.header;
  if (h.type == FrameType::kReadReq) {
    QueueExporterJob(c, slot, m);
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

void RunExporterJob(const ExporterJob& job) {
  Conn* c = job.c;
  bool dead;
  {
    absl::MutexLock lock(&c->mu);
    dead = c->dead;
  }
  if (!dead) {
    const FrameHeader& h = job.m.header;
    absl::Span<uint8_t> buf = c->pool->slot(job.slot).first(h.length);
    absl::Status st;
    uint32_t data_len = 0;
    std::string why;
    if (h.type == FrameType::kReadReq) {
      // Straight into the slot the response is sent from (one copy:
      // process_vm_readv's).
      st = c->server->ReadBlocks(c->node, h.segid, h.grant, h.offset, buf);
      if (st.ok()) data_len = h.length;
    } else {
      // Held across the write: a newer connection from this node (its
      // requester gave this one up and may have sent this write again, and
      // newer ones after it) must not be served until this write is in, and
      // this connection's later writes (queued here, on any worker) must
      // not land after that one's. Uncontended but at a replacement; not on
      // the read path.
      absl::MutexLock lock(&c->fence->mu);
      if (c->fence->current != c->generation) {
        why = absl::StrCat("replaced by a newer connection from node ", c->node);
      } else {
        // A diff is decoded and checked whole before anything is written.
        st = h.type == FrameType::kWriteDiffReq
                 ? c->server->WriteDiff(c->node, h.segid, h.grant, h.offset, buf)
                 : c->server->WriteBlocks(c->node, h.segid, h.grant, h.offset, buf);
      }
    }
    if (why.empty() && !PostResponse(c, job.slot, job.m, ToWireStatus(st), data_len))
      why = "cannot post a response";
    if (!why.empty()) {
      {
        absl::MutexLock lock(&c->mu);
        if (!c->dead) {
          c->dead = true;
          c->why = why;
        }
      }
      c->Wake();
    }
  }
  absl::MutexLock lock(&c->mu);
  --c->exporter_jobs;
}

// Home side: a heartbeat arrived in receive slot `i`: answered with a
// zero-length SEND, signalled (its completion retires it from the send
// queue; heartbeats come only while the requester has nothing in flight,
// so there is room). Posted without mu: verbs serialise it with the
// exporter workers' responses, and it is not one of `unreleased`.
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
  if (!m.ok() || (m->header.type != FrameType::kReadReq && m->header.type != FrameType::kWriteReq &&
                  m->header.type != FrameType::kWriteDiffReq)) {
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
  std::vector<uint32_t> done;
  {
    absl::MutexLock lock(&c->mu);
    auto it = std::find(c->unreleased.begin(), c->unreleased.end(), slot);
    if (it == c->unreleased.end()) {
      *why = "bad completion";
      return false;
    }
    done.assign(c->unreleased.begin(), it + 1);
    c->unreleased.erase(c->unreleased.begin(), it + 1);
  }
  for (uint32_t freed : done) {
    if (!c->backlog.empty()) {
      RdmaMessage m = c->backlog.front();
      c->backlog.pop_front();
      if (!Serve(c, m, freed, why)) return false;
    } else {
      absl::MutexLock lock(&c->mu);
      if (!c->pool->Release(freed)) {
        *why = "bad completion";
        return false;
      }
    }
  }
  return true;
}

// Home side: the RDMA READ of a write's bytes into pool slot `slot`
// completed: the workers hand them to WriteBlocks, then answer.
bool WriteFetched(Conn* c, uint32_t slot, std::string* /*why*/) {
  QueueExporterJob(c, slot, c->serving[slot]);
  return true;
}

}  // namespace tether
