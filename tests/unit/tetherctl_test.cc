// tetherctl prints segment names safely: a fake Admin service (as an older
// daemon, or one reporting another node's segments, might answer) lists a
// segment whose name carries terminal escape sequences; tetherctl's table
// must show them as \xNN, never write the control bytes (which would let
// whoever names a segment recolour, retitle or rewrite the operator's
// terminal). The JSON output must stay valid and show them escaped too.
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

TEST_F(TetherctlTest, ErrorMessagesAreEscaped) {
  int rc = 0;
  std::string out = RunTetherctl(socket_, "lookup db", &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_FALSE(HasControlBytes(out)) << out;
  EXPECT_NE(out.find("\\x1b[2J"), std::string::npos) << out;
}

}  // namespace
