#include "daemon/transport/rdma_wire.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/transport.h"

namespace tether {
namespace {
template <typename T>
void Put(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
template <typename T>
T Get(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}
bool IsRequest(FrameType t) {
  return t == FrameType::kReadReq || t == FrameType::kWriteReq || t == FrameType::kWriteDiffReq;
}
// The first 6 bytes of every tether rdma message but a reject: its magic
// and the wire version. Checked before its length, so that a peer of
// another version (which may send fewer bytes) hears "version", not
// "short". `buf` holds at least 6 bytes.
absl::Status CheckMagicAndVersion(const uint8_t* buf, uint32_t magic, const char* what,
                                  const char* bad_magic) {
  if (Get<uint32_t>(buf) != magic) return absl::InvalidArgumentError(bad_magic);
  uint16_t version = Get<uint16_t>(buf + 4);
  if (version != kRdmaWireVersion)
    return absl::FailedPreconditionError(absl::StrFormat("%s: wire version %d, this node speaks %d",
                                                         what, version, kRdmaWireVersion));
  return absl::OkStatus();
}

}  // namespace

void EncodeRdmaMessage(const RdmaMessage& m, uint8_t out[kRdmaMessageSize]) {
  EncodeHeader(m.header, out);
  Put<uint64_t>(out + 48, m.addr);
  Put<uint32_t>(out + 56, m.rkey);
  Put<uint32_t>(out + 60, 0);
}

absl::StatusOr<RdmaMessage> DecodeRdmaMessage(const uint8_t* buf, size_t len, uint32_t max_length) {
  if (len != kRdmaMessageSize)
    return absl::InvalidArgumentError(absl::StrFormat("rdma message of %d bytes", len));
  absl::StatusOr<FrameHeader> h = DecodeHeader(buf, len);
  if (!h.ok()) return h.status();
  RdmaMessage m;
  m.header = *h;
  m.addr = Get<uint64_t>(buf + 48);
  m.rkey = Get<uint32_t>(buf + 56);
  if (Get<uint32_t>(buf + 60) != 0) return absl::InvalidArgumentError("reserved bits set");
  FrameType t = m.header.type;
  if (t == FrameType::kHello || t == FrameType::kHelloAck || t == FrameType::kAuth ||
      t == FrameType::kAuthAck)
    return absl::InvalidArgumentError("handshake frames are not used over rdma");
  if (IsRequest(t)) {
    if (m.header.length == 0 || m.header.length > max_length)
      return absl::InvalidArgumentError(
          absl::StrFormat("request length %d outside 1..%d", m.header.length, max_length));
    if (m.header.status != 0) return absl::InvalidArgumentError("request with a status");
    if (m.addr == 0 || m.addr + m.header.length < m.addr)
      return absl::InvalidArgumentError("request without a valid buffer address");
  } else {
    if (m.addr != 0 || m.rkey != 0)
      return absl::InvalidArgumentError("response carrying a buffer address");
    if (m.header.length > max_length)
      return absl::InvalidArgumentError("response length over the slot size");
  }
  return m;
}

void EncodeRdmaConnectData(const RdmaConnectData& d, uint8_t out[kRdmaPrivateDataSize]) {
  Put<uint32_t>(out + 0, kRdmaConnectMagic);
  Put<uint16_t>(out + 4, kRdmaWireVersion);
  Put<uint16_t>(out + 6, 0);
  Put<uint32_t>(out + 8, d.node);
  Put<uint32_t>(out + 12, d.home);
  std::memcpy(out + 16, d.nonce.data(), kAuthNonceSize);
  Put<uint32_t>(out + 16 + kAuthNonceSize, d.depth);
  Put<uint32_t>(out + 20 + kAuthNonceSize, d.slot_bytes);
}

absl::Status CheckRdmaLimits(uint32_t depth, uint32_t slot_bytes) {
  if (depth == 0 || depth > kRdmaMaxQueueDepth)
    return absl::InvalidArgumentError(
        absl::StrFormat("queue depth %d outside 1..%d", depth, kRdmaMaxQueueDepth));
  if (slot_bytes == 0 || slot_bytes % 4096 != 0 || slot_bytes > kMaxPayload)
    return absl::InvalidArgumentError(absl::StrFormat(
        "slot size %d is not a multiple of 4096 in 4096..%d", slot_bytes, kMaxPayload));
  return absl::OkStatus();
}

absl::StatusOr<RdmaConnectData> DecodeRdmaConnectData(const void* data, size_t len) {
  const auto* buf = static_cast<const uint8_t*>(data);
  // The magic and version first: a peer of another version may send fewer
  // bytes, and must hear "version" rather than "short".
  if (buf == nullptr || len < 8)
    return absl::InvalidArgumentError(
        absl::StrFormat("connect request without tether's private data (%d bytes)", len));
  RETURN_IF_ERROR(CheckMagicAndVersion(buf, kRdmaConnectMagic, "connect request",
                                       "connect request: bad magic"));
  if (len < kRdmaPrivateDataSize)
    return absl::InvalidArgumentError(absl::StrFormat(
        "connect request: %d bytes of private data, want %d", len, kRdmaPrivateDataSize));
  if (Get<uint16_t>(buf + 6) != 0)
    return absl::InvalidArgumentError("connect request: reserved bits set");
  RdmaConnectData d;
  d.node = Get<uint32_t>(buf + 8);
  d.home = Get<uint32_t>(buf + 12);
  if (d.node == 0 || d.node > 0x7fff)
    return absl::OutOfRangeError(absl::StrFormat("connect request: bad node id %d", d.node));
  if (d.home == 0 || d.home > 0x7fff)
    return absl::OutOfRangeError(absl::StrFormat("connect request: bad home node id %d", d.home));
  std::memcpy(d.nonce.data(), buf + 16, kAuthNonceSize);
  d.depth = Get<uint32_t>(buf + 16 + kAuthNonceSize);
  d.slot_bytes = Get<uint32_t>(buf + 20 + kAuthNonceSize);
  if (absl::Status st = CheckRdmaLimits(d.depth, d.slot_bytes); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat("connect request: ", st.message()));
  return d;
}

RdmaNegotiated NegotiateRdma(uint32_t asked_depth, uint32_t asked_slot, uint32_t home_depth,
                             uint32_t home_slot) {
  return {std::min(asked_depth, home_depth), std::min(asked_slot, home_slot)};
}

void EncodeRdmaAcceptData(const RdmaAcceptData& a, uint8_t out[kRdmaAcceptDataSize]) {
  Put<uint32_t>(out + 0, kRdmaAcceptMagic);
  Put<uint16_t>(out + 4, kRdmaWireVersion);
  Put<uint16_t>(out + 6, 0);
  Put<uint32_t>(out + 8, a.use.depth);
  Put<uint32_t>(out + 12, a.use.slot_bytes);
  std::memcpy(out + 16, a.nonce.data(), kAuthNonceSize);
  std::memcpy(out + 16 + kAuthNonceSize, a.proof.data(), kAuthProofSize);
}

absl::StatusOr<RdmaAcceptData> DecodeRdmaAcceptData(const void* data, size_t len,
                                                    const RdmaNegotiated& asked) {
  const auto* buf = static_cast<const uint8_t*>(data);
  // The magic and version first: a home of another version must read as
  // "version", not "short".
  if (buf == nullptr || len < 8)
    return absl::InvalidArgumentError(
        absl::StrFormat("accept without tether's private data (%d bytes)", len));
  RETURN_IF_ERROR(CheckMagicAndVersion(buf, kRdmaAcceptMagic, "accept", "accept: bad magic"));
  if (len < kRdmaAcceptDataSize)
    return absl::InvalidArgumentError(
        absl::StrFormat("accept: %d bytes of private data, want %d", len, kRdmaAcceptDataSize));
  if (Get<uint16_t>(buf + 6) != 0) return absl::InvalidArgumentError("accept: reserved bits set");
  RdmaAcceptData a;
  a.use = {Get<uint32_t>(buf + 8), Get<uint32_t>(buf + 12)};
  if (absl::Status st = CheckRdmaLimits(a.use.depth, a.use.slot_bytes); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat("accept: ", st.message()));
  // Our pool was built for what we asked: more would overrun it.
  if (a.use.depth > asked.depth || a.use.slot_bytes > asked.slot_bytes)
    return absl::InvalidArgumentError(
        absl::StrFormat("accept: depth %d and slot %d exceed the %d and %d asked for", a.use.depth,
                        a.use.slot_bytes, asked.depth, asked.slot_bytes));
  std::memcpy(a.nonce.data(), buf + 16, kAuthNonceSize);
  std::memcpy(a.proof.data(), buf + 16 + kAuthNonceSize, kAuthProofSize);
  return a;
}

void EncodeRdmaAuthMessage(const AuthProof& proof, uint8_t out[kRdmaMessageSize]) {
  std::memset(out, 0, kRdmaMessageSize);
  Put<uint32_t>(out + 0, kRdmaAuthMagic);
  Put<uint16_t>(out + 4, kRdmaWireVersion);
  std::memcpy(out + 8, proof.data(), kAuthProofSize);
}

absl::StatusOr<AuthProof> DecodeRdmaAuthMessage(const uint8_t* buf, size_t len) {
  if (buf == nullptr || len != kRdmaMessageSize)
    return absl::InvalidArgumentError(absl::StrFormat("auth message of %d bytes", len));
  RETURN_IF_ERROR(CheckMagicAndVersion(buf, kRdmaAuthMagic, "auth message",
                                       "not an auth message (a request before the proof?)"));
  for (size_t i : {size_t{6}, size_t{7}})
    if (buf[i] != 0) return absl::InvalidArgumentError("auth message: reserved bits set");
  for (size_t i = 8 + kAuthProofSize; i < kRdmaMessageSize; ++i)
    if (buf[i] != 0) return absl::InvalidArgumentError("auth message: reserved bits set");
  AuthProof p;
  std::memcpy(p.data(), buf + 8, kAuthProofSize);
  return p;
}

AuthProof RdmaProof(absl::string_view token, AuthRole role, const RdmaConnectData& req,
                    const AuthNonce& home_nonce) {
  std::string p = DataAuthProof(token, kRdmaAuthTransport, role, req.node, req.home,
                                req.nonce.data(), home_nonce.data());
  AuthProof out{};
  std::memcpy(out.data(), p.data(), std::min(p.size(), out.size()));
  return out;
}

absl::Status CheckRdmaHomeProof(absl::string_view token, const RdmaConnectData& req,
                                const RdmaAcceptData& accept) {
  if (DataAuthProofValid(token, kRdmaAuthTransport, AuthRole::kListener, req.node, req.home,
                         req.nonce.data(), accept.nonce.data(), accept.proof.data()))
    return absl::OkStatus();
  // Not the home we got the token from. Nothing of ours went out but the
  // nonce; the requester learns the token again (Hello) before it retries.
  return StaleToken(WithErrno(
      EACCES, absl::StrCat("node ", req.home,
                           "'s proof is wrong: an impostor, or a home that restarted with a "
                           "new token")));
}

absl::Status CheckRdmaDialerAuth(absl::string_view token, const RdmaConnectData& req,
                                 const AuthNonce& home_nonce, const uint8_t* msg, size_t len) {
  const std::string refused = absl::StrCat(
      "refused: claims node ", req.node,
      " but its proof is wrong (a wrong or stale data token, or a replayed handshake)");
  absl::StatusOr<AuthProof> proof = DecodeRdmaAuthMessage(msg, len);
  if (!proof.ok()) return WithErrno(EACCES, absl::StrCat(refused, ": ", proof.status().message()));
  if (!DataAuthProofValid(token, kRdmaAuthTransport, AuthRole::kDialer, req.node, req.home,
                          req.nonce.data(), home_nonce.data(), proof->data()))
    return WithErrno(EACCES, refused);
  return absl::OkStatus();
}

const char* RdmaRejectReasonName(RdmaRejectReason r) {
  switch (r) {
    case RdmaRejectReason::kBadRequest: return "bad connect request";
    case RdmaRejectReason::kVersionMismatch: return "wire version mismatch";
    case RdmaRejectReason::kUnknownNode: return "unknown node";
    case RdmaRejectReason::kBadToken: return "wrong data token";
    case RdmaRejectReason::kNoResources: return "no resources";
    case RdmaRejectReason::kTooManyConnections: return "at its connection limit";
    case RdmaRejectReason::kShuttingDown: return "shutting down";
  }
  return "unknown reason";
}

void EncodeRdmaRejectData(RdmaRejectReason reason, uint8_t out[kRdmaRejectDataSize]) {
  Put<uint32_t>(out + 0, kRdmaRejectMagic);
  Put<uint16_t>(out + 4, static_cast<uint16_t>(reason));
  Put<uint16_t>(out + 6, kRdmaWireVersion);
}

absl::StatusOr<RdmaRejectReason> DecodeRdmaRejectData(const void* data, size_t len) {
  const auto* buf = static_cast<const uint8_t*>(data);
  if (buf == nullptr || len < kRdmaRejectDataSize)
    return absl::InvalidArgumentError(
        absl::StrFormat("reject without tether's private data (%d bytes)", len));
  if (Get<uint32_t>(buf) != kRdmaRejectMagic)
    return absl::InvalidArgumentError("reject: bad magic");
  uint16_t r = Get<uint16_t>(buf + 4);
  if (r < static_cast<uint16_t>(RdmaRejectReason::kBadRequest) ||
      r > static_cast<uint16_t>(RdmaRejectReason::kShuttingDown))
    return absl::InvalidArgumentError(absl::StrFormat("reject: unknown reason %d", r));
  return static_cast<RdmaRejectReason>(r);
}

absl::Status RdmaRejectStatus(int cm_status, const void* data, size_t len,
                              const std::string& what) {
  constexpr int kConsumerReject = 28;  // IB_CM_REJ_CONSUMER_DEFINED
  auto reason =
      cm_status == kConsumerReject
          ? DecodeRdmaRejectData(data, len)
          : absl::StatusOr<RdmaRejectReason>(absl::NotFoundError("not a consumer reject"));
  if (!reason.ok())
    return SetupFailure(ErrnoStatus(
        ECONNREFUSED,
        absl::StrCat(what, ": rejected (status ", cm_status,
                     cm_status == kConsumerReject ? ", without tether's reason" : "", ")")));
  std::string msg = absl::StrCat(what, ": the home refused: ", RdmaRejectReasonName(*reason));
  if (*reason == RdmaRejectReason::kBadToken)
    absl::StrAppend(&msg, " (it restarted since our Hello? the token is learned again with it)");
  if (*reason == RdmaRejectReason::kBadToken) return StaleToken(ErrnoStatus(EACCES, msg));
  if (!RdmaRejectIsSetupFailure(*reason)) return ErrnoStatus(EACCES, msg);
  return SetupFailure(ErrnoStatus(ECONNREFUSED, msg));
}

bool RdmaRejectIsSetupFailure(RdmaRejectReason r) {
  switch (r) {
    case RdmaRejectReason::kBadToken:
    case RdmaRejectReason::kUnknownNode: return false;
    default: return true;
  }
}

}  // namespace tether
