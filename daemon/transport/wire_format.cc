#include "daemon/transport/wire_format.h"

#include <cstring>

#include "absl/strings/str_format.h"

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
}  // namespace

void EncodeHeader(const FrameHeader& h, uint8_t out[kFrameHeaderSize]) {
  Put<uint32_t>(out + 0, kWireMagic);
  Put<uint16_t>(out + 4, kWireVersion);
  Put<uint16_t>(out + 6, static_cast<uint16_t>(h.type));
  Put<uint64_t>(out + 8, h.req_id);
  Put<uint64_t>(out + 16, h.segid);
  Put<uint64_t>(out + 24, h.grant);
  Put<uint64_t>(out + 32, h.offset);
  Put<uint32_t>(out + 40, h.length);
  Put<uint32_t>(out + 44, h.status);
}

absl::StatusOr<FrameHeader> DecodeHeader(const uint8_t* buf, size_t len) {
  if (len < kFrameHeaderSize)
    return absl::InvalidArgumentError(absl::StrFormat("short frame header (%d bytes)", len));
  if (Get<uint32_t>(buf) != kWireMagic) return absl::InvalidArgumentError("bad frame magic");
  uint16_t version = Get<uint16_t>(buf + 4);
  if (version != kWireVersion)
    return absl::InvalidArgumentError(absl::StrFormat("unsupported wire version %d", version));
  FrameHeader h;
  uint16_t type = Get<uint16_t>(buf + 6);
  if (type < static_cast<uint16_t>(FrameType::kHello) ||
      type > static_cast<uint16_t>(FrameType::kAuthAck))
    return absl::InvalidArgumentError(absl::StrFormat("unknown frame type %d", type));
  h.type = static_cast<FrameType>(type);
  h.req_id = Get<uint64_t>(buf + 8);
  h.segid = Get<uint64_t>(buf + 16);
  h.grant = Get<uint64_t>(buf + 24);
  h.offset = Get<uint64_t>(buf + 32);
  h.length = Get<uint32_t>(buf + 40);
  h.status = Get<uint32_t>(buf + 44);
  if (h.length > kMaxPayload)
    return absl::InvalidArgumentError(absl::StrFormat("frame length %d over limit", h.length));
  if (h.offset + h.length < h.offset) return absl::InvalidArgumentError("offset overflow");
  if (h.type == FrameType::kHello && h.length != kHelloPayload)
    return absl::InvalidArgumentError("hello without a nonce");
  if (h.type == FrameType::kHelloAck && h.length != (h.status == 0 ? kHelloAckPayload : 0))
    return absl::InvalidArgumentError("hello ack without a nonce and proof");
  if (h.type == FrameType::kAuth && h.length != kAuthPayload)
    return absl::InvalidArgumentError("auth without a proof");
  if (h.type == FrameType::kNoticeReq && (h.length == 0 || h.length > kMaxNoticePayload))
    return absl::InvalidArgumentError(absl::StrFormat("notice of %d bytes", h.length));
  if (h.status > 4095) return absl::InvalidArgumentError("bad status value");
  return h;
}

size_t PayloadLength(const FrameHeader& h) {
  switch (h.type) {
    case FrameType::kHello:
    case FrameType::kHelloAck:
    case FrameType::kAuth:
    case FrameType::kWriteReq:
    case FrameType::kWriteDiffReq:
    case FrameType::kNoticeReq: return h.length;
    case FrameType::kReadResp: return h.status == 0 ? h.length : 0;
    default: return 0;
  }
}

}  // namespace tether
