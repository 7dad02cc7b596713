// The rdma transport's control messages and connection private data.
//
// Page contents never travel in SEND/RECV messages: the requester names a
// slot of its registered buffer pool and the home moves the bytes with a
// one-sided RDMA WRITE (read requests) or RDMA READ (write requests). A
// control message is the tcp frame header (wire_format.h) plus where the
// requester's slot is:
//
//   off size field
//    0  48   FrameHeader (READ_REQ, READ_RESP, WRITE_REQ, WRITE_RESP)
//   48   8   addr      requester's slot address (requests; 0 in responses)
//   56   4   rkey      its remote key (requests; 0 in responses)
//   60   4   reserved  must be 0
//
// Responses carry no payload even for READ_RESP. A successful read is
// answered by one RDMA WRITE_WITH_IMM into the requester's slot, whose
// immediate names the request (ImmOfRequest: the low 32 bits of its id,
// slot in the low 16): the data and the completion arrive together, one
// work request instead of a WRITE and a SEND. Every other response (a
// refusal, a write's answer) is a SEND of the message above.
//
// Heartbeats are zero-length SENDs (no message at all): a requester sends
// one on a quiet connection, holding a slot as its credit, and the home
// answers with one (peer_liveness.h). Every other SEND carries at least a
// header, so a zero-length receive is always a heartbeat or its answer.
//
// Connection private data (rdma_connect → CONNECT_REQUEST), 44 bytes,
// within the 56 bytes rdma_cm allows for RC:
//
//    0   4   magic     "TTRD"
//    4   2   version   kRdmaWireVersion
//    6   2   reserved  0
//    8   4   node      the connecting node's id
//   12  32   token     the home's data token for that node (from Hello
//                      over the authenticated control plane)
//
// Decoders validate everything a peer could get wrong.
//
// Thread contract: none needed; functions of their arguments only, callable
// from any thread.
#ifndef TETHER_DAEMON_TRANSPORT_RDMA_WIRE_H_
#define TETHER_DAEMON_TRANSPORT_RDMA_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/transport/wire_format.h"

namespace tether {

constexpr size_t kRdmaMessageSize = 64;
constexpr uint32_t kRdmaConnectMagic = 0x44525454;  // "TTRD"
constexpr uint16_t kRdmaWireVersion = 3;  // 2: reads answered by WRITE_WITH_IMM; 3: kWireRetry
constexpr size_t kRdmaPrivateDataSize = 12 + kDataTokenSize;

struct RdmaMessage {
  FrameHeader header;
  uint64_t addr = 0;
  uint32_t rkey = 0;
};

void EncodeRdmaMessage(const RdmaMessage& m, uint8_t out[kRdmaMessageSize]);

// The immediate of a read's WRITE_WITH_IMM answer (host order; the verbs
// carry it big-endian), and whether one answers request `req_id`.
inline uint32_t ImmOfRequest(uint64_t req_id) { return static_cast<uint32_t>(req_id); }
inline bool ImmAnswers(uint32_t imm, uint64_t req_id) { return imm == ImmOfRequest(req_id); }
inline uint32_t SlotOfImm(uint32_t imm) { return imm & 0xffff; }
// `max_length`: the largest request the receiver accepts (its slot size).
absl::StatusOr<RdmaMessage> DecodeRdmaMessage(const uint8_t* buf, size_t len, uint32_t max_length);

struct RdmaConnectData {
  uint32_t node = 0;
  std::string token;  // kDataTokenSize bytes
};

void EncodeRdmaConnectData(const RdmaConnectData& d, uint8_t out[kRdmaPrivateDataSize]);
// rdma_cm may hand over more bytes than were sent (zero padding): `len` is
// allowed to exceed kRdmaPrivateDataSize.
absl::StatusOr<RdmaConnectData> DecodeRdmaConnectData(const void* buf, size_t len);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_RDMA_WIRE_H_
