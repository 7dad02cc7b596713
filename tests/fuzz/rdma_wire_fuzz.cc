// libFuzzer target for the rdma transport's control messages and connect
// private data (clang only: -DTETHER_FUZZ=ON). rdma_wire_test also feeds
// the message decoder random bytes on every run.
#include <cstddef>
#include <cstdint>

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
  if (d.ok() && (d->node == 0 || d->node > 0x7fff)) __builtin_trap();
  return 0;
}
