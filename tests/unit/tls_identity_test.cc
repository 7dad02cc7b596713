// TlsIdentity's private staging directories (tls-staged.XXXXXX beside the
// admin socket): one a tetherd killed with SIGKILL left behind (it never
// ran its destructor) is removed at the next start; those of a tetherd
// that still runs (several share a directory: the test clusters' a1.sock,
// a2.sock, ...), of another owner, or of another name are left alone.
//
// The leftover is made by a real Load in a child process killed with
// SIGKILL once Load returned. The certificates come from deploy/make-certs
// (openssl).
#include "daemon/peer/tls_identity.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace tether {
namespace {

namespace fs = std::filesystem;

class TlsIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("TETHER_TEST_STAGING_CHILD")) return;  // StagingChild: the parent's files
    root_ = absl::StrCat("/tmp/tether-tls-identity-test-", getpid());
    fs::remove_all(root_);
    fs::create_directories(root_ + "/run");
    std::string make = absl::StrCat(TETHER_SOURCE_DIR, "/deploy/make-certs");
    std::string cmd = absl::StrCat(make, " ca ", root_, "/ca >/dev/null 2>&1 && ", make, " node ",
                                   root_, "/ca ", root_, "/certs 1 >/dev/null 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    config_.ca_path = root_ + "/certs/ca.pem";
    config_.cert_path = root_ + "/certs/node-1.pem";
    config_.key_path = root_ + "/certs/node-1.key";
  }
  void TearDown() override {
    if (!root_.empty()) fs::remove_all(root_);
  }

  // The tls-staged.* entries in the runtime directory.
  std::set<std::string> Staged() {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(root_ + "/run")) {
      std::string name = e.path().filename();
      if (name.rfind("tls-staged", 0) == 0) out.insert(name);
    }
    return out;
  }

  std::string root_;
  TlsConfig config_;
};

TEST_F(TlsIdentityTest, RemovesItsDirectoryAtExit) {
  {
    auto id = TlsIdentity::Load(config_, 1, root_ + "/run");
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(Staged().size(), 1u);
  }
  EXPECT_TRUE(Staged().empty());
}

TEST_F(TlsIdentityTest, StartRemovesOnlyStaleDirectoriesOfOurs) {
  // A tetherd that is still running, in the same directory.
  auto live = TlsIdentity::Load(config_, 1, root_ + "/run");
  ASSERT_TRUE(live.ok()) << live.status();
  std::set<std::string> live_dirs = Staged();
  ASSERT_EQ(live_dirs.size(), 1u);

  // A tetherd killed with SIGKILL once it is up (Load returned): this test
  // binary again, exec'd (no fork of a process with gRPC's threads), which
  // runs only DISABLED_StagingChild.
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    setenv("TETHER_TEST_STAGING_CHILD", absl::StrCat(pipefd[1], " ", root_).c_str(), 1);
    execl("/proc/self/exe", "tls_identity_test",
          "--gtest_filter=TlsIdentityTest.DISABLED_StagingChild", "--gtest_also_run_disabled_tests",
          nullptr);
    _exit(127);
  }
  close(pipefd[1]);
  char up = 0;
  ASSERT_EQ(read(pipefd[0], &up, 1), 1) << "the child did not come up";
  close(pipefd[0]);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  std::set<std::string> before = Staged();
  ASSERT_EQ(before.size(), 2u);
  std::string stale;
  for (const auto& d : before)
    if (!live_dirs.count(d)) stale = d;

  // Not ours: another owner's, and a name of another pattern.
  std::string foreign = root_ + "/run/tls-staged.Foreig";
  fs::create_directory(foreign);
  ASSERT_EQ(chown(foreign.c_str(), 65534, 65534), 0);
  fs::create_directory(root_ + "/run/tls-staged.x");
  fs::create_directory(root_ + "/run/tls-staged-keep");

  auto next = TlsIdentity::Load(config_, 1, root_ + "/run");
  ASSERT_TRUE(next.ok()) << next.status();
  std::set<std::string> after = Staged();
  EXPECT_FALSE(after.count(stale)) << stale << " (left by the killed tetherd) is still there";
  for (const auto& d : live_dirs) EXPECT_TRUE(after.count(d)) << "removed the live " << d;
  EXPECT_TRUE(after.count("tls-staged.Foreig")) << "removed another owner's directory";
  EXPECT_TRUE(after.count("tls-staged.x"));
  EXPECT_TRUE(after.count("tls-staged-keep"));
  EXPECT_EQ(after.size(), 5u);  // live, next's own, the three not ours
}

// Not a test of its own (disabled: it runs only in the child that
// StartRemovesOnlyStaleDirectoriesOfOurs execs and kills): Loads, says so
// on the fd the parent gave, and waits to be killed.
TEST_F(TlsIdentityTest, DISABLED_StagingChild) {
  const char* env = std::getenv("TETHER_TEST_STAGING_CHILD");
  ASSERT_NE(env, nullptr) << "run by StartRemovesOnlyStaleDirectoriesOfOurs only";
  int fd = std::atoi(env);
  std::string root = std::strchr(env, ' ') + 1;
  config_.ca_path = root + "/certs/ca.pem";
  config_.cert_path = root + "/certs/node-1.pem";
  config_.key_path = root + "/certs/node-1.key";
  auto id = TlsIdentity::Load(config_, 1, root + "/run");
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(write(fd, "u", 1), 1);
  for (;;) pause();
}

}  // namespace
}  // namespace tether
