// libFuzzer target for the rdma transport's control messages and its
// connect, accept and reject private data and the requester's AUTH (clang only: -DTETHER_FUZZ=ON).
// rdma_wire_test also feeds the message decoder random bytes on every run.
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/transport/rdma_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr uint32_t kSlot = 256 * 1024;
  auto m = tether::DecodeRdmaMessage(data, size, kSlot);
  if (m.ok()) {
    if (m->header.length > kSlot) __builtin_trap();
    uint8_t out[tether::kRdmaMessageSize];
    tether::EncodeRdmaMessage(*m, out);
    auto again = tether::DecodeRdmaMessage(out, sizeof(out), kSlot);
    if (!again.ok() || again->addr != m->addr || again->header.req_id != m->header.req_id)
      __builtin_trap();
  }
  auto d = tether::DecodeRdmaConnectData(data, size);
  if (d.ok()) {
    if (d->node == 0 || d->node > 0x7fff) __builtin_trap();
    if (!tether::CheckRdmaLimits(d->depth, d->slot_bytes).ok()) __builtin_trap();
    uint8_t out[tether::kRdmaPrivateDataSize];
    tether::EncodeRdmaConnectData(*d, out);
    auto again = tether::DecodeRdmaConnectData(out, sizeof(out));
    if (!again.ok() || again->depth != d->depth || again->slot_bytes != d->slot_bytes ||
        again->home != d->home || again->nonce != d->nonce)
      __builtin_trap();
  }
  // The home's answer, against a request for the largest values.
  const tether::RdmaNegotiated asked{tether::kRdmaMaxQueueDepth, tether::kMaxPayload};
  auto a = tether::DecodeRdmaAcceptData(data, size, asked);
  if (a.ok()) {
    const tether::RdmaNegotiated& n = a->use;
    if (!tether::CheckRdmaLimits(n.depth, n.slot_bytes).ok() || n.depth > asked.depth ||
        n.slot_bytes > asked.slot_bytes)
      __builtin_trap();
    uint8_t out[tether::kRdmaAcceptDataSize];
    tether::EncodeRdmaAcceptData(*a, out);
    auto again = tether::DecodeRdmaAcceptData(out, sizeof(out), asked);
    if (!again.ok() || again->nonce != a->nonce || again->proof != a->proof) __builtin_trap();
  }
  // The requester's AUTH, the first message a home reads, and the home's
  // check of it (any bytes: refused unless they are the proof).
  auto proof = tether::DecodeRdmaAuthMessage(data, size);
  if (proof.ok()) {
    uint8_t out[tether::kRdmaMessageSize];
    tether::EncodeRdmaAuthMessage(*proof, out);
    auto again = tether::DecodeRdmaAuthMessage(out, sizeof(out));
    if (!again.ok() || *again != *proof) __builtin_trap();
  }
  const tether::RdmaConnectData req{2, 1, {}, 32, 256 * 1024};
  const std::string token(tether::kDataTokenSize, 't');
  if (tether::CheckRdmaDialerAuth(token, req, tether::AuthNonce{}, data, size).ok())
    __builtin_trap();  // a forged proof for a token nobody gave the input
  auto r = tether::DecodeRdmaRejectData(data, size);
  if (r.ok()) {
    uint8_t out[tether::kRdmaRejectDataSize];
    tether::EncodeRdmaRejectData(*r, out);
    auto again = tether::DecodeRdmaRejectData(out, sizeof(out));
    if (!again.ok() || *again != *r) __builtin_trap();
  }
  (void)tether::RdmaRejectStatus(28, data, size, "fuzz");
  return 0;
}
