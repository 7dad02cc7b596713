// The rdma transport's control messages and connection private data.
//
// Page contents never travel in SEND/RECV messages: the requester names a
// slot of its registered buffer pool and the home moves the bytes with a
// one-sided RDMA WRITE (read requests) or RDMA READ (write requests). A
// control message is the tcp frame header (wire_format.h) plus where the
// requester's slot is:
//
//   off size field
//    0  48   FrameHeader (READ_REQ, READ_RESP, WRITE_REQ, WRITE_DIFF_REQ,
//             WRITE_RESP)
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
// Connection private data. rdma_cm carries it in the IB CM's REQ, REP and
// REJ messages (at most 56, 196 and 148 bytes for RC over rdma_cm's port
// space). Together with the first SEND they are a challenge and response
// in both directions (data_token.h): the data token never crosses the
// fabric, and nothing recorded from one connect proves anything on
// another. rdma_cm's connect is one-shot (REQ, REP, RTU: the home cannot
// challenge the requester before it answers the REQ), so the requester's
// proof, which must cover the home's fresh nonce, comes after the accept:
// as the connection's first message (AUTH, below), before which the home
// serves nothing.
//
// Connect request (rdma_connect → CONNECT_REQUEST), 56 bytes, the REQ's
// whole private data:
//
//    0   4   magic     "TTRD"
//    4   2   version   kRdmaWireVersion
//    6   2   reserved  0
//    8   4   node      the connecting node's id (the dialer)
//   12   4   home      the node it means to reach (a home that is another
//                      node refuses: a stale address)
//   16  32   nonce     the dialer's fresh nonce (FreshNonce)
//   48   4   depth     the requester's queue depth (1..kRdmaMaxQueueDepth)
//   52   4   slot      the requester's slot size in bytes (a multiple of
//                      4096, at most kMaxPayload)
//
// Accept (rdma_accept → ESTABLISHED), 80 bytes: what both sides use, and
// the home's half of the handshake.
//
//    0   4   magic     "TTRA"
//    4   2   version   kRdmaWireVersion
//    6   2   reserved  0
//    8   4   depth     ≤ the request's depth and the home's own
//   12   4   slot      ≤ the request's slot size and the home's own
//   16  32   nonce     the home's fresh nonce
//   48  32   proof     DataAuthProof(token, "rdma", listener, dialer, home,
//                      dialer nonce, home nonce)
//
// The requester checks the proof on ESTABLISHED (wrong: it disconnects
// and sends nothing; an impostor, or a home that restarted with a new
// token), then sends AUTH as its first SEND, ahead of any request (RC
// delivers in order), kRdmaMessageSize bytes like every control message:
//
//    0   4   magic     "TTRU"
//    4   2   version   kRdmaWireVersion
//    6   2   reserved  0
//    8  32   proof     DataAuthProof(token, "rdma", dialer, ...) over the
//                      same fields
//   40  24   reserved  0
//
// The home serves nothing before AUTH arrived and checked out: any other
// first message, or a wrong proof, drops the connection; so does silence
// for kRdmaAuthTimeoutMs. AUTH is not answered (the requester's requests
// follow it at once). It takes one of the home's receives, which the home
// posts again as it reads it; a requester that fills its whole window at
// once may meet a receiver-not-ready retry for that moment (rnr_retry 7:
// retried, never an error).
//
// Reject (rdma_reject → REJECTED with status 28, IB_CM_REJ_CONSUMER_
// DEFINED), 8 bytes, the same in every version so that a peer of another
// version can read why:
//
//    0   4   magic     "TTRJ"
//    4   2   reason    RdmaRejectReason
//    6   2   version   the home's kRdmaWireVersion
//
// A REJECTED event with status 28 but without this (the kernel's rdma_cm
// rejects a request it cannot hand over with the same status, and so does
// a home of an older version) is a set-up failure, not a refusal.
//
// Negotiation (NegotiateRdma): the home answers min(request, its own) for
// both; a requester uses the answer, which it checks is no larger than
// what it asked. A pool built for the larger values serves the smaller
// ones (fewer slots in flight, shorter slots).
//
// Decoders validate everything a peer could get wrong.
//
// Thread contract: none needed; functions of their arguments only, callable
// from any thread.
#ifndef TETHER_DAEMON_TRANSPORT_RDMA_WIRE_H_
#define TETHER_DAEMON_TRANSPORT_RDMA_WIRE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/wire_format.h"

namespace tether {

constexpr size_t kRdmaMessageSize = 64;
constexpr uint32_t kRdmaConnectMagic = 0x44525454;  // "TTRD"
// 2: reads answered by WRITE_WITH_IMM; 3: kWireRetry; 4: negotiated queue
// depth and slot size, accept and reject private data; 5: WRITE_DIFF_REQ
// (a page diff in the requester's slot, fetched by RDMA READ as a write's
// bytes are); 6: the nonce handshake (no token in the connect request; the
// home's nonce and proof in the accept; the requester's AUTH first).
constexpr uint16_t kRdmaWireVersion = 6;
constexpr size_t kRdmaPrivateDataSize = 24 + kAuthNonceSize;
constexpr size_t kRdmaAcceptDataSize = 16 + kAuthNonceSize + kAuthProofSize;
constexpr size_t kRdmaRejectDataSize = 8;
constexpr uint32_t kRdmaAcceptMagic = 0x41525454;  // "TTRA"
constexpr uint32_t kRdmaRejectMagic = 0x4a525454;  // "TTRJ"
constexpr uint32_t kRdmaAuthMagic = 0x55525454;    // "TTRU"
// The transport named in the rdma handshake's proofs (DataAuthProof).
constexpr char kRdmaAuthTransport[] = "rdma";
// How long a home keeps an accepted connection whose AUTH has not come,
// and how many such connections it holds at once (each has its queue pair
// and pool pinned): a replayed connect request can hold neither memory
// nor a connection slot for long.
constexpr int kRdmaAuthTimeoutMs = 2000;
constexpr size_t kRdmaMaxUnauthenticated = 8;
static_assert(kRdmaPrivateDataSize <= 56, "the REQ's private data holds 56 bytes");
static_assert(kRdmaAcceptDataSize <= 196, "the REP's private data holds 196 bytes");
constexpr uint32_t kRdmaMaxQueueDepth = 1024;

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

using AuthNonce = std::array<uint8_t, kAuthNonceSize>;
using AuthProof = std::array<uint8_t, kAuthProofSize>;

struct RdmaConnectData {
  uint32_t node = 0;  // the dialer
  uint32_t home = 0;  // the node it means to reach
  AuthNonce nonce{};  // the dialer's
  uint32_t depth = 0, slot_bytes = 0;
};

void EncodeRdmaConnectData(const RdmaConnectData& d, uint8_t out[kRdmaPrivateDataSize]);
// rdma_cm may hand over more bytes than were sent (zero padding): `len` is
// allowed to exceed kRdmaPrivateDataSize. An error names what is wrong; its
// code picks the home's reject reason: kFailedPrecondition for another
// version (kVersionMismatch), kOutOfRange for a node id (either) outside
// 1..32767 (kUnknownNode), kInvalidArgument for anything else (kBadRequest).
absl::StatusOr<RdmaConnectData> DecodeRdmaConnectData(const void* buf, size_t len);

// Whether a queue depth and slot size are ones either side may use.
absl::Status CheckRdmaLimits(uint32_t depth, uint32_t slot_bytes);

// What a connection uses: the smaller of what the requester asked and what
// the home allows, for each. Both must pass CheckRdmaLimits (the result
// then does too).
struct RdmaNegotiated {
  uint32_t depth = 0, slot_bytes = 0;
};
RdmaNegotiated NegotiateRdma(uint32_t asked_depth, uint32_t asked_slot, uint32_t home_depth,
                             uint32_t home_slot);

struct RdmaAcceptData {
  RdmaNegotiated use;
  AuthNonce nonce{};  // the home's
  AuthProof proof{};  // the home's (listener role)
};

void EncodeRdmaAcceptData(const RdmaAcceptData& a, uint8_t out[kRdmaAcceptDataSize]);
// The home's answer to a request that asked for `asked`: refused unless it
// is well-formed and no larger than what was asked. The proof is not
// checked here (CheckRdmaHomeProof).
absl::StatusOr<RdmaAcceptData> DecodeRdmaAcceptData(const void* buf, size_t len,
                                                    const RdmaNegotiated& asked);

// The requester's first message.
void EncodeRdmaAuthMessage(const AuthProof& proof, uint8_t out[kRdmaMessageSize]);
// Its proof, or an error if `buf` is not an AUTH of this version (another
// message kind: a request sent before the proof).
absl::StatusOr<AuthProof> DecodeRdmaAuthMessage(const uint8_t* buf, size_t len);

// The two proofs of a connection (data_token.h): what the home puts in its
// accept and what the requester sends in AUTH. `token`: the home's data
// token for the dialer.
AuthProof RdmaProof(absl::string_view token, AuthRole role, const RdmaConnectData& req,
                    const AuthNonce& home_nonce);
// The requester's check of the accept (`dialer`: this node; `req` what it
// sent): OK, or PERMISSION_DENIED "node N's proof is wrong: ...", tagged
// StaleToken() (the requester learns the token again before it retries).
absl::Status CheckRdmaHomeProof(absl::string_view token, const RdmaConnectData& req,
                                const RdmaAcceptData& accept);
// The home's check of the connection's first message (`len` bytes): OK, or
// PERMISSION_DENIED "refused: claims node N but its proof is wrong (...)"
// for a wrong proof and for anything that is not an AUTH.
absl::Status CheckRdmaDialerAuth(absl::string_view token, const RdmaConnectData& req,
                                 const AuthNonce& home_nonce, const uint8_t* msg, size_t len);

// Why a home refused a connect request.
enum class RdmaRejectReason : uint16_t {
  kBadRequest = 1,          // malformed private data (or not tether's)
  kVersionMismatch = 2,     // another kRdmaWireVersion
  kUnknownNode = 3,         // a node id outside the cluster's range
  kBadToken = 4,            // (version 5 and before) the token did not match the node
  kNoResources = 5,         // the home could not set up its side (memlock, QP, CQ)
  kTooManyConnections = 6,  // the home is at its connection limit
  kShuttingDown = 7,        // the home is stopping
};
const char* RdmaRejectReasonName(RdmaRejectReason r);

void EncodeRdmaRejectData(RdmaRejectReason reason, uint8_t out[kRdmaRejectDataSize]);
// The reason in a REJECTED event's private data, or an error if it is not
// ours (missing, short, another magic, an unknown reason).
absl::StatusOr<RdmaRejectReason> DecodeRdmaRejectData(const void* buf, size_t len);

// What a refusal means to the requester: true for the reasons where the
// request may go over tcp instead (nothing was sent, and the home's tcp
// transport may well serve it: versions differ, the home is short of rdma
// resources, stopping, or at its limit), false where tcp would be refused
// as well (a bad token or node: the requester must learn a new token).
bool RdmaRejectIsSetupFailure(RdmaRejectReason r);

// What a REJECTED event (IB CM status `cm_status`, the REJ's private data)
// means for the connect `what`. A consumer reject (28, IB_CM_REJ_CONSUMER_
// DEFINED) carrying tether's reject data says why the home refused: a
// wrong token or node would be refused over tcp too (EACCES, not a set-up
// failure; a wrong token tagged StaleToken(): DataPath asks the home for
// a new one and retries once), every other reason is a set-up failure (transport.h), so
// DataPath sends the request over tcp. Status 28 without our data is the
// kernel's rdma_cm (a request it could not hand over) or a home of an older
// version; any other status is no listener on that port (the home
// restarted elsewhere), a timed-out or unreachable peer: set-up failures.
absl::Status RdmaRejectStatus(int cm_status, const void* data, size_t len, const std::string& what);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_RDMA_WIRE_H_
