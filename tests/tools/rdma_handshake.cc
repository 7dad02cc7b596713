// rdma_handshake: an rdma_cm peer that plays connect requests of its own
// against a home's rdma listener, for the data-plane tests of issue 17
// (tests/vm/rdma_test.py). Page contents are never its business: it only
// shows whether the home serves a connection it should refuse.
//
//   rdma_handshake replay ADDR:PORT REQ_HEX
//       Connects with REQ_HEX as the connect request's private data (one a
//       genuine mapper sent, as its tetherd logged it under
//       TETHER_TEST_HOOKS=1), then sends a READ_REQ as its first message,
//       as a replayer without the token can only do (--silent: sends
//       nothing, and waits to be dropped).
//   rdma_handshake dial ADDR:PORT NODE HOME TOKEN_HEX
//       The handshake of wire version 6 as node NODE to node HOME with
//       TOKEN_HEX (32 bytes) as the data token: a fresh nonce, the home's
//       proof checked (and reported, not acted on), then AUTH with a proof
//       made from TOKEN_HEX, then a READ_REQ.
//
// Prints one line per step: "rejected status=S reason=R" (and exits),
// "established", "home proof ok|wrong" (dial), then, within --wait_ms
// (default 5000) of its request, "answered type=T status=S" if the home
// served it (a response of any status is a request that was served),
// "disconnected" if the home dropped the connection, or "silent".
// Exit status 0 unless the tool itself failed (2).
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <rdma/rdma_cma.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/rdma_wire.h"
#include "daemon/transport/socket_address.h"

namespace {

using namespace tether;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "rdma_handshake: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(2);
}

std::string Unhex(const std::string& hex) {
  if (hex.size() % 2 != 0) Die("odd hex string");
  return absl::HexStringToBytes(hex);
}

// The next rdma_cm event (acked; its private data copied), or nullopt
// when none came within `ms`.
struct Event {
  rdma_cm_event_type type;
  int status;
  std::string data;
};
bool NextEvent(rdma_event_channel* ch, int ms, Event* out) {
  pollfd p{ch->fd, POLLIN, 0};
  if (poll(&p, 1, ms) <= 0) return false;
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(ch, &ev) != 0) Die("rdma_get_cm_event");
  out->type = ev->event;
  out->status = ev->status;
  out->data.assign(static_cast<const char*>(ev->param.conn.private_data),
                   ev->param.conn.private_data_len);
  rdma_ack_cm_event(ev);
  return true;
}

Event Expect(rdma_event_channel* ch, rdma_cm_event_type want, const char* what) {
  Event e{};
  if (!NextEvent(ch, 10000, &e)) Die(std::string(what) + ": no event");
  if (e.type != want) {
    errno = 0;
    Die(std::string(what) + ": " + rdma_event_str(e.type));
  }
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: rdma_handshake replay ADDR:PORT REQ_HEX [--silent] [--wait_ms N]\n"
                 "       rdma_handshake dial ADDR:PORT NODE HOME TOKEN_HEX [--wait_ms N]\n");
    return 2;
  }
  const std::string mode = argv[1];
  int wait_ms = 5000;
  bool silent = false;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--wait_ms" && i + 1 < argc) wait_ms = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--silent") silent = true;
  }
  std::string req_bytes, token;
  RdmaConnectData req;
  if (mode == "replay") {
    req_bytes = Unhex(argv[3]);
  } else if (mode == "dial" && argc >= 6) {
    if (!absl::SimpleAtoi(argv[3], &req.node) || !absl::SimpleAtoi(argv[4], &req.home))
      Die("bad node id");
    token = Unhex(argv[5]);
    if (!FreshNonce(req.nonce.data()).ok()) Die("nonce");
    req.depth = 4;
    req.slot_bytes = 4096;
    req_bytes.resize(kRdmaPrivateDataSize);
    EncodeRdmaConnectData(req, reinterpret_cast<uint8_t*>(req_bytes.data()));
  } else {
    errno = EINVAL;
    Die("unknown mode " + mode);
  }
  auto dst = NumericSocketAddress(argv[2]);
  if (!dst.ok()) Die(std::string(dst.status().message()));

  rdma_event_channel* ch = rdma_create_event_channel();
  rdma_cm_id* id = nullptr;
  if (ch == nullptr || rdma_create_id(ch, &id, nullptr, RDMA_PS_TCP) != 0) Die("rdma_create_id");
  if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(&*dst), 5000) != 0)
    Die("rdma_resolve_addr");
  Expect(ch, RDMA_CM_EVENT_ADDR_RESOLVED, "resolve address");
  if (rdma_resolve_route(id, 5000) != 0) Die("rdma_resolve_route");
  Expect(ch, RDMA_CM_EVENT_ROUTE_RESOLVED, "resolve route");

  ibv_pd* pd = ibv_alloc_pd(id->verbs);
  ibv_cq* cq = pd ? ibv_create_cq(id->verbs, 16, nullptr, nullptr, 0) : nullptr;
  if (cq == nullptr) Die("ibv_create_cq");
  ibv_qp_init_attr attr{};
  attr.send_cq = attr.recv_cq = cq;
  attr.qp_type = IBV_QPT_RC;
  attr.cap.max_send_wr = attr.cap.max_recv_wr = 4;
  attr.cap.max_send_sge = attr.cap.max_recv_sge = 1;
  if (rdma_create_qp(id, pd, &attr) != 0) Die("rdma_create_qp");
  // [2 receives][1 send][1 send][a page the home may write into]
  std::vector<uint8_t> mem(4 * kRdmaMessageSize + 4096);
  ibv_mr* mr =
      ibv_reg_mr(pd, mem.data(), mem.size(),
                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
  if (mr == nullptr) Die("ibv_reg_mr");
  for (uint32_t i = 0; i < 2; ++i) {
    ibv_sge sge{reinterpret_cast<uintptr_t>(&mem[i * kRdmaMessageSize]), kRdmaMessageSize,
                mr->lkey};
    ibv_recv_wr wr{};
    wr.wr_id = i;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    ibv_recv_wr* bad = nullptr;
    if (ibv_post_recv(id->qp, &wr, &bad) != 0) Die("ibv_post_recv");
  }
  rdma_conn_param param{};
  param.private_data = req_bytes.data();
  param.private_data_len = static_cast<uint8_t>(req_bytes.size());
  param.responder_resources = param.initiator_depth = 1;
  param.retry_count = param.rnr_retry_count = 7;
  if (rdma_connect(id, &param) != 0) Die("rdma_connect");
  Event e{};
  if (!NextEvent(ch, 10000, &e)) Die("connect: no answer");
  if (e.type == RDMA_CM_EVENT_REJECTED) {
    auto reason = DecodeRdmaRejectData(e.data.data(), e.data.size());
    std::printf("rejected status=%d reason=%s\n", e.status,
                reason.ok() ? RdmaRejectReasonName(*reason) : "none");
    return 0;
  }
  if (e.type != RDMA_CM_EVENT_ESTABLISHED) {
    errno = 0;
    Die(std::string("connect: ") + rdma_event_str(e.type));
  }
  std::printf("established\n");
  std::fflush(stdout);

  auto post_send = [&](const uint8_t* msg, uint32_t slot) {
    uint8_t* buf = &mem[(2 + slot) * kRdmaMessageSize];
    std::memcpy(buf, msg, kRdmaMessageSize);
    ibv_sge sge{reinterpret_cast<uintptr_t>(buf), kRdmaMessageSize, mr->lkey};
    ibv_send_wr wr{};
    wr.wr_id = 100 + slot;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(id->qp, &wr, &bad) != 0) Die("ibv_post_send");
  };
  if (mode == "dial") {
    RdmaNegotiated asked{req.depth, req.slot_bytes};
    auto accept = DecodeRdmaAcceptData(e.data.data(), e.data.size(), asked);
    if (!accept.ok()) {
      std::printf("bad accept: %s\n", std::string(accept.status().message()).c_str());
      return 0;
    }
    std::printf("home proof %s\n", CheckRdmaHomeProof(token, req, *accept).ok() ? "ok" : "wrong");
    uint8_t auth[kRdmaMessageSize];
    EncodeRdmaAuthMessage(RdmaProof(token, AuthRole::kDialer, req, accept->nonce), auth);
    post_send(auth, 0);
  }
  // A read of one page of some segment: any answer (even a refusal) is a
  // request the home served. --silent: nothing at all (a replayer that
  // holds the connection open).
  RdmaMessage read;
  read.header = FrameHeader{FrameType::kReadReq, 1, 0x1000100000001ull, 1, 0, 4096, 0};
  read.addr = reinterpret_cast<uintptr_t>(&mem[4 * kRdmaMessageSize]);
  read.rkey = mr->rkey;
  uint8_t msg[kRdmaMessageSize];
  EncodeRdmaMessage(read, msg);
  if (!silent) post_send(msg, 1);

  const absl::Time deadline = absl::Now() + absl::Milliseconds(wait_ms);
  while (absl::Now() < deadline) {
    ibv_wc wc{};
    while (ibv_poll_cq(cq, 1, &wc) == 1) {
      if (wc.status != IBV_WC_SUCCESS) {
        std::printf("completion error: %s\n", ibv_wc_status_str(wc.status));
        continue;
      }
      if (wc.opcode == IBV_WC_RECV || wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
        auto m = DecodeRdmaMessage(&mem[wc.wr_id * kRdmaMessageSize], wc.byte_len, 4096);
        std::printf("answered type=%d status=%d\n", m.ok() ? static_cast<int>(m->header.type) : -1,
                    m.ok() ? static_cast<int>(m->header.status) : -1);
        return 0;
      }
    }
    Event d{};
    if (NextEvent(ch, 20, &d) &&
        (d.type == RDMA_CM_EVENT_DISCONNECTED || d.type == RDMA_CM_EVENT_TIMEWAIT_EXIT)) {
      std::printf("disconnected\n");
      return 0;
    }
  }
  std::printf("silent\n");
  return 0;
}
