// The admin socket is root's: the Admin service lists every segment and
// attachment of the node (and tells tetherd to reload its TLS files), so a
// caller of any other uid must not even connect. tetherd runs as root and
// the socket's mode is 0600 — from the moment it exists, not from a chmod
// after the listener is up: a tetherd started under a permissive umask
// (0000) would otherwise serve, in between, anyone who connects.
//
// The callers are forked children that become nobody (65534) and try a
// plain connect(2) (a Unix socket's connect needs write permission on it):
// the test must run as root, and skips otherwise. The in-between moment is
// held with the fault point "admin_server.start.listening".
#include "daemon/admin/admin_server.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "daemon/common/fault_points.h"

namespace tether {
namespace {

constexpr uid_t kNobody = 65534;

class AdminServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (the caller is a child that becomes nobody)";
    // A directory anyone may enter, as /run/tether is: only the socket's
    // own mode stands between another user and the service.
    dir_ = absl::StrCat("/tmp/tether-admin-server-test-", getpid());
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0) << strerror(errno);
    ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
    path_ = dir_ + "/admin.sock";
    // The most permissive umask a daemon could inherit.
    old_umask_ = umask(0);
  }
  void TearDown() override {
    FaultPoints::ReleaseAll();
    if (starter_.joinable()) starter_.join();
    server_.reset();
    if (!dir_.empty()) {
      umask(old_umask_);
      unlink(path_.c_str());
      rmdir(dir_.c_str());
    }
  }

  void StartServer() {
    DaemonInfo info;
    info.node_id = 1;
    info.budget_bytes = [] { return uint64_t{0}; };
    info.resident_bytes = [] { return uint64_t{0}; };
    info.uptime_ms = [] { return uint64_t{0}; };
    info.reload = [] { return absl::StatusOr<std::string>(std::string()); };
    auto s = AdminServer::Start(path_, std::move(info), &registry_, &peers_, &attachments_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }

  // connect(2) to the admin socket as nobody, in a child: 0 if it
  // connected, else the errno (255: the child could not become nobody).
  int ConnectAsNobody() {
    pid_t pid = fork();
    if (pid == 0) {
      if (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) != 0 ||
          setresuid(kNobody, kNobody, kNobody) != 0)
        _exit(255);
      int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, path_.data(), path_.size());
      _exit(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 ? 0 : errno);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 254;
  }

  mode_t SocketMode() {
    struct stat st {};
    if (stat(path_.c_str(), &st) != 0) return 07777;
    return st.st_mode & 07777;
  }

  std::string dir_, path_;
  mode_t old_umask_ = 022;
  SegmentRegistry registry_{1, 5};
  PeerDirectory peers_{1, 5, {}, nullptr, 1000, nullptr};
  AttachmentTable attachments_{5};
  std::unique_ptr<AdminServer> server_;
  std::thread starter_;
};

TEST_F(AdminServerTest, OtherUsersCannotConnectOnceStarted) {
  StartServer();
  EXPECT_EQ(SocketMode(), 0600u);
  EXPECT_EQ(ConnectAsNobody(), EACCES);
}

// Held right after the listener is up, before Start returns: the socket
// must be root's alone already.
TEST_F(AdminServerTest, OtherUsersCannotConnectWhileStarting) {
  FaultPoints::Arm("admin_server.start.listening");
  starter_ = std::thread([this] { StartServer(); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached("admin_server.start.listening", absl::Seconds(30)));
  EXPECT_EQ(SocketMode() & 077, 0u) << std::oct << SocketMode();
  EXPECT_EQ(ConnectAsNobody(), EACCES);
  FaultPoints::Release("admin_server.start.listening");
  starter_.join();
  EXPECT_EQ(SocketMode(), 0600u);
}

}  // namespace
}  // namespace tether
