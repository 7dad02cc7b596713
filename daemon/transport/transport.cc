#include "daemon/transport/transport.h"

#include "absl/strings/cord.h"

namespace tether {
namespace {
constexpr char kSetupPayload[] = "tether.transport/setup-failed";
}  // namespace

absl::Status SetupFailure(absl::Status status) {
  if (!status.ok()) status.SetPayload(kSetupPayload, absl::Cord("1"));
  return status;
}

void Transport::ReadInPlace(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                            uint64_t offset, absl::Span<uint8_t> dst, ReadDone done) {
  Read(home, segid, grant, offset, dst, [dst, done = std::move(done)](absl::Status st) mutable {
    absl::Span<const uint8_t> data;
    if (st.ok()) data = dst;
    std::move(done)(std::move(st), data);
  });
}

bool IsSetupFailure(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kSetupPayload).has_value();
}

}  // namespace tether
