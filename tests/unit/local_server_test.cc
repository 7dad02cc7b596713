// The local socket itself (local/local_server.h), with a handler that only
// records who asked: the caller's identity as SO_PEERCRED / SO_PEERGROUPS
// give it (groups beyond 64), and the bounds on connections per uid and in
// total, seen as a C caller sees them (libtether's -1/EAGAIN).
//
// The callers are forked children that take another identity first
// (setgroups/setresgid/setresuid): the test must run as root, and skips
// otherwise. A child reports through its exit status only.
#include "daemon/local/local_server.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tether/tether.h"

namespace tether {
namespace {

// Answers every request ENOENT; records the credentials of each.
class RecordingHandler : public LocalHandler {
 public:
  void Handle(const LocalConnection& conn, const local::LocalRequest&, std::vector<int>&,
              local::LocalResponse* resp, std::vector<int>*) override {
    absl::MutexLock lock(&mu);
    seen.push_back(conn.cred);
    resp->set_err(ENOENT);
    resp->set_message("recorded");
  }
  void Disconnected(const LocalConnection&) override {}

  absl::Mutex mu;
  std::vector<Credentials> seen ABSL_GUARDED_BY(mu);
};

class LocalServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (children take other uids and groups)";
    path_ = absl::StrCat("/tmp/tether-local-server-test-", getpid(), ".sock");
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }
  void Start(LocalLimits limits) {
    server_ = std::make_unique<LocalServer>(&handler_, limits);
    ASSERT_TRUE(server_->Start(path_).ok());
    setenv("TETHER_SOCKET", path_.c_str(), 1);
  }

  // Runs `body` in a child as uid/gid with `groups`; its exit status.
  int AsUser(uint32_t uid, std::vector<gid_t> groups, const std::function<int()>& body) {
    pid_t pid = fork();
    if (pid == 0) {
      if (setgroups(groups.size(), groups.data()) != 0 || setresgid(uid, uid, uid) != 0 ||
          setresuid(uid, uid, uid) != 0)
        _exit(100);
      _exit(body());
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 200;
  }

  // A raw connection and one round trip on it (so that the server has
  // accepted it): the fd, -1 if the connection was refused (the frame's
  // errno in *err).
  int Connect(int* err) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      *err = errno;
      close(fd);
      return -1;
    }
    local::LocalRequest req;
    req.mutable_lookup()->set_name("x");
    std::string buf = req.SerializeAsString();
    (void)send(fd, buf.data(), buf.size(), MSG_NOSIGNAL);
    char in[4096];
    ssize_t n = recv(fd, in, sizeof(in), 0);
    // Refused with our request unread: the reset comes first, then the frame.
    if (n < 0 && errno == ECONNRESET) n = recv(fd, in, sizeof(in), MSG_DONTWAIT);
    local::LocalResponse resp;
    if (n <= 0 || !resp.ParseFromArray(in, static_cast<int>(n))) {
      *err = EPROTO;
      close(fd);
      return -1;
    }
    *err = resp.err();
    if (resp.err() == ENOENT && !resp.connection_closed()) return fd;  // the handler's answer
    close(fd);
    return -1;
  }

  std::string path_;
  RecordingHandler handler_;
  std::unique_ptr<LocalServer> server_;
};

// Linux allows NGROUPS_MAX (65536) supplementary groups; a caller in more
// than 64 must still be checked with all of them (a segment's group may be
// any of them), not with none.
TEST_F(LocalServerTest, CallerWithManyGroupsKeepsThemAll) {
  Start({});
  std::vector<gid_t> groups;
  for (gid_t g = 20000; g < 20000 + 1000; ++g) groups.push_back(g);
  EXPECT_EQ(AsUser(1000, groups,
                   [&] {
                     int err = 0;
                     int fd = Connect(&err);
                     return fd >= 0 ? 0 : 10 + err;
                   }),
            0);
  absl::MutexLock lock(&handler_.mu);
  ASSERT_EQ(handler_.seen.size(), 1u);
  EXPECT_EQ(handler_.seen[0].uid, 1000u);
  ASSERT_EQ(handler_.seen[0].groups.size(), groups.size());
  EXPECT_EQ(handler_.seen[0].groups.back(), groups.back());
}

// A uid at its bound gets EAGAIN from libtether (with the daemon's reason);
// another uid still connects.
TEST_F(LocalServerTest, ConnectionsAreBoundedPerUid) {
  Start({/*max_connections_per_uid=*/2, /*max_connections=*/0});
  EXPECT_EQ(AsUser(1000, {1000},
                   [&] {
                     int err = 0;
                     if (Connect(&err) < 0) return 10;
                     if (Connect(&err) < 0) return 11;
                     int third = Connect(&err);
                     if (third >= 0) return 12;  // over the bound, accepted
                     if (err != EAGAIN) return 13;
                     // The C API: a new connection, refused, as -1/EAGAIN.
                     if (tether_lookup("x", nullptr) != -1 || errno != EAGAIN) return 14;
                     if (!strstr(tether_strerror(), "--local_max_connections_per_uid")) return 15;
                     return 0;
                   }),
            0);
  // The children's connections are gone with them; hold two as uid 1000
  // in one child while another uid connects.
  EXPECT_EQ(AsUser(1001, {1001},
                   [&] {
                     int err = 0;
                     int a = Connect(&err), b = Connect(&err);
                     if (a < 0 || b < 0) return 20;
                     return Connect(&err) < 0 && err == EAGAIN ? 0 : 21;
                   }),
            0);
  int err = 0;
  int fd = Connect(&err);  // root, meanwhile: its own count
  EXPECT_GE(fd, 0) << "errno " << err;
  if (fd >= 0) close(fd);
}

// The total bound: once reached, every uid is refused, with EAGAIN.
TEST_F(LocalServerTest, ConnectionsAreBoundedInTotal) {
  Start({/*max_connections_per_uid=*/0, /*max_connections=*/2});
  int err = 0;
  int a = Connect(&err), b = Connect(&err);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  EXPECT_EQ(AsUser(1002, {1002},
                   [&] {
                     int e = 0;
                     if (Connect(&e) >= 0) return 30;
                     if (e != EAGAIN) return 31;
                     if (tether_lookup("x", nullptr) != -1 || errno != EAGAIN) return 32;
                     return strstr(tether_strerror(), "--local_max_connections") ? 0 : 33;
                   }),
            0);
  close(a);
  close(b);
}

}  // namespace
}  // namespace tether
