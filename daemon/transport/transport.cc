#include "daemon/transport/transport.h"

#include "absl/strings/cord.h"

namespace tether {
namespace {
constexpr char kSetupPayload[] = "tether.transport/setup-failed";
constexpr char kStaleTokenPayload[] = "tether.transport/stale-token";
}  // namespace

absl::Status StaleToken(absl::Status status) {
  if (!status.ok()) status.SetPayload(kStaleTokenPayload, absl::Cord("1"));
  return status;
}

bool IsStaleToken(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kStaleTokenPayload).has_value();
}

absl::Status SetupFailure(absl::Status status) {
  if (!status.ok()) status.SetPayload(kSetupPayload, absl::Cord("1"));
  return status;
}

bool IsSetupFailure(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kSetupPayload).has_value();
}

}  // namespace tether
