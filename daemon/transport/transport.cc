#include "daemon/transport/transport.h"

#include "absl/strings/cord.h"
#include "daemon/common/errors.h"
#include "daemon/common/page.h"
#include "daemon/common/page_diff.h"

namespace tether {
namespace {
constexpr char kSetupPayload[] = "tether.transport/setup-failed";
constexpr char kNotSentPayload[] = "tether.transport/not-sent";
constexpr char kLostPayload[] = "tether.transport/lost-in-flight";
constexpr char kStaleTokenPayload[] = "tether.transport/stale-token";

absl::Status Tag(absl::Status status, const char* payload) {
  if (!status.ok()) status.SetPayload(payload, absl::Cord("1"));
  return status;
}
bool Tagged(const absl::Status& status, const char* payload) {
  return !status.ok() && status.GetPayload(payload).has_value();
}
}  // namespace

absl::Status BlockServer::WriteDiff(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                    uint64_t offset, absl::Span<const uint8_t> diff) {
  auto pages = DecodeDiff(diff);
  if (!pages.ok()) return WithErrno(EINVAL, pages.status().message());
  for (const DiffPage& page : *pages) {
    for (const DiffRun& run : page.runs) {
      absl::Status st = WriteBlocks(peer_node, segid, grant,
                                    offset + page.index * kPageSize + run.offset, run.data);
      if (!st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

void Transport::ReadInPlace(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                            uint64_t offset, absl::Span<uint8_t> dst, ReadDone done) {
  Read(home, segid, grant, offset, dst, [dst, done = std::move(done)](absl::Status st) mutable {
    absl::Span<const uint8_t> data;
    if (st.ok()) data = dst;
    std::move(done)(std::move(st), data);
  });
}

absl::Status SetupFailure(absl::Status status) { return Tag(std::move(status), kSetupPayload); }
bool IsSetupFailure(const absl::Status& status) { return Tagged(status, kSetupPayload); }
absl::Status StaleToken(absl::Status status) { return Tag(std::move(status), kStaleTokenPayload); }
bool IsStaleToken(const absl::Status& status) { return Tagged(status, kStaleTokenPayload); }
absl::Status NotSent(absl::Status status) { return Tag(std::move(status), kNotSentPayload); }
bool IsNotSent(const absl::Status& status) { return Tagged(status, kNotSentPayload); }
absl::Status LostInFlight(absl::Status status) { return Tag(std::move(status), kLostPayload); }
bool IsLostInFlight(const absl::Status& status) { return Tagged(status, kLostPayload); }

}  // namespace tether
