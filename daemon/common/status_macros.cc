#include "daemon/common/status_macros.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace tether {
namespace {
constexpr char kErrnoPayload[] = "tether.errno";

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case ENOENT: case ESRCH: return absl::StatusCode::kNotFound;
    case EEXIST: return absl::StatusCode::kAlreadyExists;
    case EPERM: case EACCES: return absl::StatusCode::kPermissionDenied;
    case EINVAL: case EFAULT: case ERANGE: return absl::StatusCode::kInvalidArgument;
    case ENOMEM: case ENOSPC: case EMFILE: return absl::StatusCode::kResourceExhausted;
    case ETIMEDOUT: return absl::StatusCode::kDeadlineExceeded;
    case ECONNREFUSED: case EHOSTUNREACH: case ENOTCONN: case ECONNRESET:
    case EPIPE: case EAGAIN: return absl::StatusCode::kUnavailable;
    case ENOSYS: case EOPNOTSUPP: return absl::StatusCode::kUnimplemented;
    case EIDRM: return absl::StatusCode::kAborted;
    default: return absl::StatusCode::kInternal;
  }
}
}  // namespace

absl::Status ErrnoStatus(int err, absl::string_view what) {
  absl::Status st(CodeForErrno(err), absl::StrCat(what, ": ", std::strerror(err)));
  st.SetPayload(kErrnoPayload, absl::Cord(std::to_string(err)));
  return st;
}

int ToErrno(const absl::Status& status) {
  if (status.ok()) return 0;
  if (auto p = status.GetPayload(kErrnoPayload)) {
    int err = 0;
    if (absl::SimpleAtoi(std::string(*p), &err) && err > 0) return err;
  }
  switch (status.code()) {
    case absl::StatusCode::kNotFound: return ENOENT;
    case absl::StatusCode::kAlreadyExists: return EEXIST;
    case absl::StatusCode::kPermissionDenied: return EACCES;
    case absl::StatusCode::kInvalidArgument: return EINVAL;
    case absl::StatusCode::kOutOfRange: return EINVAL;
    case absl::StatusCode::kResourceExhausted: return ENOMEM;
    case absl::StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case absl::StatusCode::kUnavailable: return EHOSTUNREACH;
    case absl::StatusCode::kUnimplemented: return EOPNOTSUPP;
    case absl::StatusCode::kFailedPrecondition: return EIDRM;
    case absl::StatusCode::kAborted: return EIDRM;
    default: return EIO;
  }
}

}  // namespace tether
