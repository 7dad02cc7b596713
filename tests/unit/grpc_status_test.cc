// Errors across nodes over gRPC: a remote home's errno reaches this node's
// C caller unchanged (EPERM stays EPERM, ESRCH stays ESRCH, ...), a retry
// stays a retry, and gRPC's own failures read as the node being unreachable.
#include "daemon/peer/grpc_status.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace tether {
namespace {

constexpr int kErrnos[] = {EPERM,  ENOENT,   ESRCH,        EIO,       ENOMEM,     EACCES,
                           EFAULT, EBUSY,    EEXIST,       EINVAL,    ENOSPC,     EAGAIN,
                           EIDRM,  ENOTCONN, EHOSTUNREACH, ETIMEDOUT, EOPNOTSUPP, ESHUTDOWN};

TEST(GrpcStatus, EveryErrnoCrossesUnchanged) {
  for (int err : kErrnos) {
    absl::Status remote = ErrnoStatus(err, "at the home");
    absl::Status here = FromGrpc(ToGrpc(remote), "node 2");
    EXPECT_EQ(ToErrno(here), err) << "errno " << err;
    EXPECT_EQ(here.code(), remote.code()) << "errno " << err;
    EXPECT_NE(here.message().find("at the home"), absl::string_view::npos);
    EXPECT_FALSE(IsRetry(here));
  }
}

TEST(GrpcStatus, RetryCrossesAsRetry) {
  absl::Status here = FromGrpc(ToGrpc(Retry("window open")), "node 2");
  EXPECT_TRUE(IsRetry(here));
  EXPECT_FALSE(IsRetry(FromGrpc(ToGrpc(ErrnoStatus(EAGAIN, "x")), "node 2")));
}

TEST(GrpcStatus, TransportFailuresAreUnreachable) {
  grpc::Status down(grpc::StatusCode::UNAVAILABLE, "connection refused");
  EXPECT_EQ(ToErrno(FromGrpc(down, "node 3")), EHOSTUNREACH);
  grpc::Status late(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline");
  EXPECT_EQ(ToErrno(FromGrpc(late, "node 3")), EHOSTUNREACH);
  EXPECT_TRUE(FromGrpc(grpc::Status::OK, "node 3").ok());
}

TEST(GrpcStatus, GarbageDetailsAreNotTrusted) {
  grpc::Status odd(grpc::StatusCode::PERMISSION_DENIED, "no", "99999");
  EXPECT_EQ(ToErrno(FromGrpc(odd, "node 3")), EACCES);  // from the code alone
}

}  // namespace
}  // namespace tether
