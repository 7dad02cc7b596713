// libFuzzer target for the data transport's frame header decoder (built
// only with clang: cmake -DCMAKE_CXX_COMPILER=clang++ -DTETHER_FUZZ=ON).
// The gtest wire_format_test also feeds it random bytes on every run.
#include <cstddef>
#include <cstdint>

#include "daemon/transport/wire_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto h = tether::DecodeHeader(data, size);
  if (h.ok()) {
    if (h->length > tether::kMaxPayload) __builtin_trap();
    uint8_t out[tether::kFrameHeaderSize];
    tether::EncodeHeader(*h, out);
    auto again = tether::DecodeHeader(out, sizeof(out));
    if (!again.ok() || again->req_id != h->req_id || again->length != h->length) __builtin_trap();
  }
  return 0;
}
