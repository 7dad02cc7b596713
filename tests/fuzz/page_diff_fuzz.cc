// libFuzzer target for the page diff decoder a home runs on every diff
// write-back a peer sends (built only with clang: cmake
// -DCMAKE_CXX_COMPILER=clang++ -DTETHER_FUZZ=ON). The gtest page_diff_test
// also feeds it random bytes on every run.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/common/page_diff.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto pages = tether::DecodeDiff(absl::MakeConstSpan(data, size));
  if (!pages.ok()) return 0;
  uint64_t span = tether::DiffSpanPages(*pages);
  if (span == 0 || span > tether::kMaxDiffPages) __builtin_trap();
  for (const auto& p : *pages) {
    for (const auto& r : p.runs) {
      if (r.data.empty() || r.offset + r.data.size() > tether::kPageSize) __builtin_trap();
      if (r.data.data() < data || r.data.data() + r.data.size() > data + size) __builtin_trap();
    }
  }
  std::vector<uint8_t> base(span * tether::kPageSize);
  tether::ApplyDiff(*pages, absl::MakeSpan(base));
  return 0;
}
