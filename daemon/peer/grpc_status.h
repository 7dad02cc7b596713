// absl::Status <-> grpc::Status, keeping the errno that C callers see.
// Only for files that already include gRPC.
#ifndef TETHER_DAEMON_PEER_GRPC_STATUS_H_
#define TETHER_DAEMON_PEER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "daemon/common/status_macros.h"

namespace tether {

inline grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()),
                      std::to_string(ToErrno(st)));
}

inline absl::Status FromGrpc(const grpc::Status& st, const std::string& context) {
  if (st.ok()) return absl::OkStatus();
  int err = 0;
  if (absl::SimpleAtoi(st.error_details(), &err) && err > 0) {
    absl::Status out = ErrnoStatus(err, "");
    return absl::Status(out.code(), context + ": " + st.error_message());
  }
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE ||
      st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    absl::Status out = ErrnoStatus(EHOSTUNREACH, context);
    return absl::Status(out.code(), context + ": node unreachable (" + st.error_message() + ")");
  }
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                      context + ": " + st.error_message());
}

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_GRPC_STATUS_H_
