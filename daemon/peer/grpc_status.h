// absl::Status <-> grpc::Status across nodes, keeping what the daemon's
// errors carry (common/errors.h): the errno a C caller will see, and the
// retry outcome. Only for files that already include gRPC (peer/, admin/).
//
// The errno travels in the gRPC status's error_details as a decimal string
// ("13"), a retry as "retry"; FromGrpc rebuilds both, so a remote home's
// EPERM reaches the C caller as EPERM (not as the EACCES that
// PERMISSION_DENIED alone would give). A status from gRPC itself (no
// details: the peer is down, the deadline passed) is the node being
// unreachable: EHOSTUNREACH.
#ifndef TETHER_DAEMON_PEER_GRPC_STATUS_H_
#define TETHER_DAEMON_PEER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"

namespace tether {

inline constexpr char kGrpcRetryDetail[] = "retry";

inline grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  std::string details = IsRetry(st) ? kGrpcRetryDetail : std::to_string(ToErrno(st));
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()), details);
}

inline absl::Status FromGrpc(const grpc::Status& st, const std::string& context) {
  if (st.ok()) return absl::OkStatus();
  if (st.error_details() == kGrpcRetryDetail)
    return Retry(absl::StrCat(context, ": ", st.error_message()));
  int err = 0;
  if (absl::SimpleAtoi(st.error_details(), &err) && err > 0 && err < static_cast<int>(kWireRetry))
    return WithErrno(err, absl::StrCat(context, ": ", st.error_message()));
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE ||
      st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return WithErrno(EHOSTUNREACH,
                     absl::StrCat(context, ": node unreachable (", st.error_message(), ")"));
  }
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                      absl::StrCat(context, ": ", st.error_message()));
}

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_GRPC_STATUS_H_
