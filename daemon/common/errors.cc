#include "daemon/common/errors.h"

#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tether {
namespace {
constexpr char kErrnoPayload[] = "tether.errno";
constexpr char kRetryPayload[] = "tether.retry";
}  // namespace

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case ENOENT:
    case ESRCH: return absl::StatusCode::kNotFound;
    case EEXIST: return absl::StatusCode::kAlreadyExists;
    case EPERM:
    case EACCES: return absl::StatusCode::kPermissionDenied;
    case EINVAL:
    case EFAULT:
    case ERANGE: return absl::StatusCode::kInvalidArgument;
    case ENOMEM:
    case ENOSPC:
    case EMFILE: return absl::StatusCode::kResourceExhausted;
    case ETIMEDOUT: return absl::StatusCode::kDeadlineExceeded;
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENOTCONN:
    case ECONNRESET:
    case EPIPE:
    case EAGAIN: return absl::StatusCode::kUnavailable;
    case ENOSYS:
    case EOPNOTSUPP: return absl::StatusCode::kUnimplemented;
    case EIDRM: return absl::StatusCode::kAborted;
    case EBUSY: return absl::StatusCode::kFailedPrecondition;
    default: return absl::StatusCode::kInternal;
  }
}

absl::Status WithErrno(int err, absl::string_view message) {
  absl::Status st(CodeForErrno(err), message);
  st.SetPayload(kErrnoPayload, absl::Cord(std::to_string(err)));
  return st;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  return WithErrno(err, absl::StrCat(what, ": ", std::strerror(err)));
}

int ToErrno(const absl::Status& status) {
  if (status.ok()) return 0;
  if (auto p = status.GetPayload(kErrnoPayload)) {
    int err = 0;
    if (absl::SimpleAtoi(std::string(*p), &err) && err > 0) return err;
  }
  if (IsRetry(status)) return EAGAIN;
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

absl::Status Retry(absl::string_view why) {
  absl::Status st(absl::StatusCode::kUnavailable, absl::StrCat("retry: ", why));
  st.SetPayload(kRetryPayload, absl::Cord("1"));
  return st;
}

bool IsRetry(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kRetryPayload).has_value();
}

uint32_t ToWireStatus(const absl::Status& status) {
  if (status.ok()) return 0;
  if (IsRetry(status)) return kWireRetry;
  return static_cast<uint32_t>(ToErrno(status));
}

absl::Status FromWireStatus(uint32_t status, absl::string_view context) {
  if (status == 0) return absl::OkStatus();
  if (status == kWireRetry) return Retry(context);
  if (status > kWireRetry)
    return ErrnoStatus(EPROTO, absl::StrCat(context, ": bad status ", status));
  return ErrnoStatus(static_cast<int>(status), context);
}

}  // namespace tether
