// The log's two formats (common/log.h): journal priorities when stderr is
// the journal, an ISO 8601 UTC date otherwise; the level changes at run
// time.
#include "daemon/common/log.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <regex>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tether {
namespace {

// Captures what is written to fd 2 while it lives.
class StderrCapture {
 public:
  StderrCapture() {
    char path[] = "/tmp/tether-log-test-XXXXXX";
    fd_ = mkstemp(path);
    unlink(path);
    saved_ = dup(2);
    dup2(fd_, 2);
  }
  ~StderrCapture() {
    dup2(saved_, 2);
    close(saved_);
    close(fd_);
  }
  int fd() const { return fd_; }
  std::string Text() {
    std::string out;
    char buf[4096];
    ssize_t n;
    for (off_t off = 0; (n = pread(fd_, buf, sizeof(buf), off)) > 0; off += n) out.append(buf, n);
    return out;
  }

 private:
  int fd_ = -1;
  int saved_ = -1;
};

class LogTest : public ::testing::Test {
 protected:
  void TearDown() override {
    SetLogFormat(LogFormat::kPlain);
    SetLogLevel(LogLevel::kInfo);
    unsetenv("JOURNAL_STREAM");
  }
};

TEST_F(LogTest, JournalStreamMatchingStderrSelectsJournalFormat) {
  StderrCapture cap;
  struct stat st;
  ASSERT_EQ(fstat(cap.fd(), &st), 0);
  setenv("JOURNAL_STREAM", absl::StrCat(st.st_dev, ":", st.st_ino).c_str(), 1);
  EXPECT_EQ(DetectLogFormat(2), LogFormat::kJournal);
  // Inherited by a process whose stderr went elsewhere: not the journal.
  setenv("JOURNAL_STREAM", absl::StrCat(st.st_dev, ":", st.st_ino + 1).c_str(), 1);
  EXPECT_EQ(DetectLogFormat(2), LogFormat::kPlain);
  setenv("JOURNAL_STREAM", "garbage", 1);
  EXPECT_EQ(DetectLogFormat(2), LogFormat::kPlain);
  unsetenv("JOURNAL_STREAM");
  EXPECT_EQ(DetectLogFormat(2), LogFormat::kPlain);
}

TEST_F(LogTest, JournalLinesCarrySyslogPriorities) {
  StderrCapture cap;
  SetLogFormat(LogFormat::kJournal);
  SetLogLevel(LogLevel::kDebug);
  TLOG_DEBUG("d%d", 1);
  TLOG_INFO("i");
  TLOG_WARN("w");
  TLOG_ERROR("e");
  EXPECT_EQ(cap.Text(), "<7>tether: d1\n<6>tether: i\n<4>tether: w\n<3>tether: e\n");
}

TEST_F(LogTest, PlainLinesCarryAnIsoUtcDateAndTheLevel) {
  StderrCapture cap;
  SetLogFormat(LogFormat::kPlain);
  TLOG_WARN("careful");
  std::string text = cap.Text();
  EXPECT_TRUE(std::regex_match(
      text, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z W tether: careful\n)")))
      << text;
}

TEST_F(LogTest, LevelChangesAtRunTime) {
  StderrCapture cap;
  SetLogFormat(LogFormat::kJournal);
  TLOG_DEBUG("hidden");
  SetLogLevel(LogLevel::kDebug);
  EXPECT_EQ(GetLogLevel(), LogLevel::kDebug);
  TLOG_DEBUG("shown");
  SetLogLevel(LogLevel::kError);
  TLOG_WARN("hidden too");
  EXPECT_EQ(cap.Text(), "<7>tether: shown\n");
}

TEST_F(LogTest, LevelNames) {
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError})
    EXPECT_EQ(ParseLogLevel(LogLevelName(l)), l);
  EXPECT_FALSE(ParseLogLevel("verbose").has_value());
  EXPECT_FALSE(ParseLogLevel("").has_value());
}

}  // namespace
}  // namespace tether
