#include "daemon/transport/rdma_wire.h"

#include <algorithm>
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
bool IsRequest(FrameType t) { return t == FrameType::kReadReq || t == FrameType::kWriteReq; }
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
  if (t == FrameType::kHello || t == FrameType::kHelloAck)
    return absl::InvalidArgumentError("hello frames are not used over rdma");
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
  std::memset(out + 12, 0, kDataTokenSize);
  std::memcpy(out + 12, d.token.data(), std::min(d.token.size(), kDataTokenSize));
}

absl::StatusOr<RdmaConnectData> DecodeRdmaConnectData(const void* data, size_t len) {
  const auto* buf = static_cast<const uint8_t*>(data);
  if (buf == nullptr || len < kRdmaPrivateDataSize)
    return absl::InvalidArgumentError(
        absl::StrFormat("connect request without tether's private data (%d bytes)", len));
  if (Get<uint32_t>(buf) != kRdmaConnectMagic)
    return absl::InvalidArgumentError("connect request: bad magic");
  uint16_t version = Get<uint16_t>(buf + 4);
  if (version != kRdmaWireVersion)
    return absl::InvalidArgumentError(
        absl::StrFormat("connect request: unsupported version %d", version));
  RdmaConnectData d;
  d.node = Get<uint32_t>(buf + 8);
  if (d.node == 0 || d.node > 0x7fff)
    return absl::InvalidArgumentError(absl::StrFormat("connect request: bad node id %d", d.node));
  d.token.assign(reinterpret_cast<const char*>(buf + 12), kDataTokenSize);
  return d;
}

}  // namespace tether
