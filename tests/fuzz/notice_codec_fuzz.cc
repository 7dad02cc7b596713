// libFuzzer target for the invalidation notice decoder: the payload of a
// NOTICE_REQ frame, from a peer (built only with clang: cmake
// -DCMAKE_CXX_COMPILER=clang++ -DTETHER_FUZZ=ON). The gtest
// notice_receiver_test also feeds it random bytes on every run.
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/peer/notice_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto n = tether::DecodeNotice(absl::MakeConstSpan(data, size));
  if (n.ok()) {
    // What is accepted is what a home can send: aligned, ordered, paired.
    if (n->start > n->end || n->start % 4096 || n->end % 4096 || n->gone.size() > 1024)
      __builtin_trap();
    std::string bytes = tether::EncodeNotice(*n);
    auto back = tether::DecodeNotice(
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    if (!back.ok() || back->segid != n->segid || back->gone != n->gone) __builtin_trap();
  }
  return 0;
}
