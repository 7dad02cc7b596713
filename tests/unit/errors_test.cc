#include "daemon/common/errors.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace tether {
namespace {

// Every errno the daemon produces or the C API documents.
constexpr int kErrnos[] = {
    EPERM,        ENOENT,    ESRCH,      EIO,       ENOMEM,        EACCES,     EFAULT,
    EBUSY,        EEXIST,    EINVAL,     ENOSPC,    EMFILE,        EPIPE,      ERANGE,
    EAGAIN,       ENOSYS,    EIDRM,      EPROTO,    ENOTCONN,      ECONNRESET, ECONNREFUSED,
    EHOSTUNREACH, ETIMEDOUT, EOPNOTSUPP, ESHUTDOWN, EADDRNOTAVAIL, ENODEV};

TEST(Errors, ErrnoSurvivesToErrno) {
  for (int err : kErrnos) {
    absl::Status st = ErrnoStatus(err, "what");
    EXPECT_EQ(ToErrno(st), err) << err;
    EXPECT_EQ(st.code(), CodeForErrno(err)) << err;
    EXPECT_FALSE(IsRetry(st)) << err;
  }
}

TEST(Errors, WithErrnoKeepsMessageVerbatim) {
  absl::Status st = WithErrno(EPERM, "node 2: only the owner may remove it");
  EXPECT_EQ(st.message(), "node 2: only the owner may remove it");
  EXPECT_EQ(ToErrno(st), EPERM);  // not the EACCES kPermissionDenied maps to
}

TEST(Errors, RetryIsItsOwnOutcome) {
  absl::Status r = Retry("a window is open");
  EXPECT_TRUE(IsRetry(r));
  EXPECT_EQ(ToErrno(r), EAGAIN);  // what a C caller would see if one leaked
  // A real EAGAIN from a system call is not a retry.
  EXPECT_FALSE(IsRetry(ErrnoStatus(EAGAIN, "read")));
  EXPECT_FALSE(IsRetry(absl::OkStatus()));
}

TEST(Errors, WireStatusRoundTrip) {
  EXPECT_EQ(ToWireStatus(absl::OkStatus()), 0u);
  EXPECT_TRUE(FromWireStatus(0, "x").ok());
  for (int err : kErrnos) {
    uint32_t wire = ToWireStatus(ErrnoStatus(err, "x"));
    EXPECT_EQ(wire, static_cast<uint32_t>(err));
    absl::Status back = FromWireStatus(wire, "node 2");
    EXPECT_EQ(ToErrno(back), err);
    EXPECT_FALSE(IsRetry(back)) << "errno " << err << " must not read as retry";
  }
  EXPECT_EQ(ToWireStatus(Retry("w")), kWireRetry);
  EXPECT_TRUE(IsRetry(FromWireStatus(kWireRetry, "node 2")));
  // Values no peer may send.
  EXPECT_EQ(ToErrno(FromWireStatus(kWireRetry + 1, "node 2")), EPROTO);
}

}  // namespace
}  // namespace tether
