// The data transport's frame format (tcp; the rdma transport reuses the
// header for its send/recv control messages).
//
// Every frame is a fixed 48-byte little-endian header, followed by
// `length` payload bytes for READ_RESP (status 0) and WRITE_REQ:
//
//   off size field
//    0   4   magic     "TTHR" (0x52485454)
//    4   2   version   kWireVersion
//    6   2   type      FrameType
//    8   8   req_id    chosen by the requester, echoed in the response
//   16   8   segid
//   24   8   grant     home-side grant id from Peer.Attach
//   32   8   offset    byte offset within the segment
//   40   4   length    payload length (<= kMaxPayload)
//   44   4   status    0, a positive errno, or kWireRetry (errors.h; responses only)
//
// A connection opens with a handshake in which each side proves it knows
// the dialer's data token (data_token.h) without sending it:
//   dialer   -> HELLO      segid = dialer node, grant = the listener node it
//                          means, offset = flags (kHelloEncrypt: the dialer
//                          asks for encryption); payload: the dialer's
//                          nonce (32 bytes)
//   listener -> HELLO_ACK  status 0: segid = listener node, offset =
//                          kHelloEncrypt if the connection is to be
//                          encrypted (either side asked); payload: the
//                          listener's nonce, then its proof (64 bytes);
//                          else a status (EACCES: bad node id;
//                          EPROTONOSUPPORT: encryption asked for, and this
//                          kernel has no TLS; EPROTO: unknown flags), no
//                          payload
//   dialer   -> AUTH       payload: the dialer's proof (32 bytes)
//   listener -> AUTH_ACK   status 0, or EACCES (wrong proof); no payload
// Both proofs sign whether the connection is encrypted. If it is, every
// byte after AUTH_ACK, both ways, is a kernel TLS record
// (data_encryption.h). Nothing else is read from, or sent to, a peer
// before that. NOTICE_REQ (home -> mapper node, on a
// connection the home opened to the mapper's listener) carries an encoded invalidation notice
// (daemon/peer/notice_codec.h, <= kMaxNoticePayload bytes); NOTICE_RESP
// answers it with a status and no payload. WRITE_DIFF_REQ carries a page
// diff (common/page_diff.h) of the pages from `offset`, which the home
// decodes and checks before it writes anything; WRITE_RESP answers it. Decode validates everything
// a peer could get wrong; nothing past the header is trusted before that.
//
// Thread contract: none needed; functions of their arguments only, callable
// from any thread.
#ifndef TETHER_DAEMON_TRANSPORT_WIRE_FORMAT_H_
#define TETHER_DAEMON_TRANSPORT_WIRE_FORMAT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tether {

constexpr uint32_t kWireMagic = 0x52485454;  // "TTHR"
// 2: "retry" is kWireRetry, not EAGAIN; 3: WRITE_DIFF_REQ (a node of
// version 2 would refuse it, so it refuses the hello instead); 4: the
// nonce handshake (HELLO no longer carries the token; AUTH, AUTH_ACK); 5:
// HELLO flags (kHelloEncrypt), signed into the proofs.
constexpr uint16_t kWireVersion = 5;
// HELLO and HELLO_ACK `offset`: encrypt the connection.
constexpr uint64_t kHelloEncrypt = 1;
constexpr size_t kFrameHeaderSize = 48;
constexpr uint32_t kMaxPayload = 4u << 20;
constexpr size_t kDataTokenSize = 32;
constexpr uint32_t kMaxNoticePayload = 64u << 10;

enum class FrameType : uint16_t {
  kHello = 1,
  kHelloAck = 2,
  kReadReq = 3,
  kReadResp = 4,
  kWriteReq = 5,
  kWriteResp = 6,
  kNoticeReq = 7,
  kNoticeResp = 8,
  kWriteDiffReq = 9,  // answered by WRITE_RESP
  kAuth = 10,
  kAuthAck = 11,
};
// The handshake's payloads (kAuthNonceSize and kAuthProofSize, data_token.h,
// are both 32).
constexpr uint32_t kHelloPayload = 32;
constexpr uint32_t kHelloAckPayload = 64;
constexpr uint32_t kAuthPayload = 32;

struct FrameHeader {
  FrameType type = FrameType::kHello;
  uint64_t req_id = 0;
  uint64_t segid = 0;
  uint64_t grant = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint32_t status = 0;
};

void EncodeHeader(const FrameHeader& h, uint8_t out[kFrameHeaderSize]);
absl::StatusOr<FrameHeader> DecodeHeader(const uint8_t* buf, size_t len);
// Bytes of payload that follow a header of this type and status.
size_t PayloadLength(const FrameHeader& h);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_WIRE_FORMAT_H_
