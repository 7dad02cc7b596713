// tetherctl prints segment names safely: a fake Admin service (as an older
// daemon, or one reporting another node's segments, might answer) lists a
// segment whose name carries terminal escape sequences; tetherctl's table
// must show them as \xNN, never write the control bytes (which would let
// whoever names a segment recolour, retitle or rewrite the operator's
// terminal). The JSON output must stay valid and show them escaped too.
// The same for `status`: peer addresses and the errors peers answered.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "admin.grpc.pb.h"

namespace {

const char kEvil[] =
    "\x1b]0;pwned\x07\x1b[2J\xc2\x9b"
    "31mred";  // OSC title, clear, C1 CSI

class FakeAdmin : public tether::admin::Admin::Service {
  // A peer's address is the operator's (--peers), but its error is what the
  // peer (or anything on the path to it) answered: both may carry escapes.
  grpc::Status Status(grpc::ServerContext*, const tether::admin::StatusRequest*,
                      tether::admin::StatusResponse* resp) override {
    resp->set_node_id(1);
    auto* p = resp->add_peers();
    p->set_node_id(2);
    p->set_address(absl::StrCat("10.0.0.2:7600", kEvil));
    p->set_transport("tcp");
    p->set_error(absl::StrCat("node 2 refused: ", kEvil));
    return grpc::Status::OK;
  }
  grpc::Status List(grpc::ServerContext*, const tether::admin::ListRequest*,
                    tether::admin::ListResponse* resp) override {
    auto* s = resp->add_segments();
    s->set_segid(1);
    s->set_name(kEvil);
    s->set_state("live");
    return grpc::Status::OK;
  }
  grpc::Status Lookup(grpc::ServerContext*, const tether::admin::LookupRequest* req,
                      tether::admin::LookupResponse*) override {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no segment named '", req->name(), "' ", kEvil));
  }
};

std::string RunTetherctl(const std::string& socket, const std::string& args, int* rc) {
  std::string cmd = absl::StrCat(TETHERCTL_PATH, " --socket ", socket, " ", args, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *rc = WEXITSTATUS(pclose(p));
  return out;
}

bool HasControlBytes(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if ((c < 0x20 && c != '\n') || c == 0x7f) return true;
    if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) < 0xa0) return true;
  }
  return false;
}

class TetherctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = absl::StrCat("/tmp/tetherctl-test-", getpid(), ".sock");
    grpc::ServerBuilder b;
    b.AddListeningPort("unix:" + socket_, grpc::InsecureServerCredentials());
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_);
  }
  void TearDown() override {
    server_->Shutdown();
    unlink(socket_.c_str());
  }
  std::string socket_;
  FakeAdmin service_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(TetherctlTest, SegmentNamesAreEscapedInTheTable) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "segments", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  EXPECT_NE(out.find("\\x1b]0;pwned\\x07\\x1b[2J\\xc2\\x9b31mred"), std::string::npos) << out;
}

TEST_F(TetherctlTest, SegmentNamesAreEscapedInJson) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "--json segments", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  // In JSON the escape's backslash is itself escaped.
  EXPECT_NE(out.find(R"("name":"\\x1b]0;pwned)"), std::string::npos) << out;
}

TEST_F(TetherctlTest, PeerAddressesAndErrorsAreEscapedInStatus) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "status", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  EXPECT_NE(out.find("10.0.0.2:7600\\x1b]0;pwned"), std::string::npos) << out;
  EXPECT_NE(out.find("node 2 refused: \\x1b]0;pwned"), std::string::npos) << out;
}

TEST_F(TetherctlTest, PeerAddressesAndErrorsAreEscapedInStatusJson) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "--json status", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  EXPECT_NE(out.find(R"("error":"node 2 refused: \\x1b]0;pwned)"), std::string::npos) << out;
}

TEST_F(TetherctlTest, ErrorMessagesAreEscaped) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "lookup db", &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  EXPECT_NE(out.find("\\x1b[2J"), std::string::npos) << out;
}

// Errors under --json are one JSON object on stdout (error, errno), and a
// daemon that is not there gets exit 3 and a hint (issue 18).
TEST_F(TetherctlTest, ErrorsAreJsonUnderJson) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "--json lookup db", &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  EXPECT_EQ(out.rfind("{", 0), 0u) << out;
  EXPECT_NE(out.find(R"("error":"no segment named )"), std::string::npos) << out;
  // Escaped (\x1b), then JSON-escaped (\\x1b).
  EXPECT_NE(out.find(R"(\\x1b[2J)"), std::string::npos) << out;
}

TEST(Tetherctl, NoDaemonGivesAHintAndExit3) {
  int rc = 0;
  std::string out = RunTetherctl("/nonexistent/admin.sock", "status", &rc);
  EXPECT_EQ(rc, 3) << out;
  EXPECT_NE(out.find("tetherd is not running (no socket at /nonexistent/admin.sock)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("systemctl status tetherd"), std::string::npos) << out;
  out = RunTetherctl("/nonexistent/admin.sock", "--json status", &rc);
  EXPECT_EQ(rc, 3) << out;
  EXPECT_NE(out.find(R"("errno":2)"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("hint":"tetherd is not running)"), std::string::npos) << out;
}

TEST(Tetherctl, BadUsageIsExit2) {
  int rc = 0;
  RunTetherctl("/nonexistent/admin.sock", "frobnicate", &rc);
  EXPECT_EQ(rc, 2);
  RunTetherctl("/nonexistent/admin.sock", "revoke notasegid", &rc);
  EXPECT_EQ(rc, 2);
  RunTetherctl("/nonexistent/admin.sock", "status --bogus", &rc);
  EXPECT_EQ(rc, 2);
}

}  // namespace
