#include "daemon/common/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tether {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kPlain)};
absl::Mutex g_mu;
std::string* g_prefix = new std::string("tether");
constexpr const char* kLetters[] = {"D", "I", "W", "E"};
constexpr const char* kNames[] = {"debug", "info", "warning", "error"};
// syslog(3) priorities: LOG_DEBUG 7, LOG_INFO 6, LOG_WARNING 4, LOG_ERR 3.
constexpr int kPriorities[] = {7, 6, 4, 3};
}  // namespace

void SetLogPrefix(std::string prefix) {
  absl::MutexLock lock(&g_mu);
  *g_prefix = std::move(prefix);
}
void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }
bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

std::optional<LogLevel> ParseLogLevel(absl::string_view name) {
  for (int i = 0; i < 4; ++i)
    if (name == kNames[i]) return static_cast<LogLevel>(i);
  return std::nullopt;
}
const char* LogLevelName(LogLevel level) { return kNames[static_cast<int>(level)]; }

void SetLogFormat(LogFormat format) { g_format = static_cast<int>(format); }

LogFormat DetectLogFormat(int fd) {
  const char* js = getenv("JOURNAL_STREAM");
  if (js == nullptr) return LogFormat::kPlain;
  std::vector<absl::string_view> parts = absl::StrSplit(js, ':');
  uint64_t dev, ino;
  struct stat st;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &dev) || !absl::SimpleAtoi(parts[1], &ino) ||
      fstat(fd, &st) != 0)
    return LogFormat::kPlain;
  return static_cast<uint64_t>(st.st_dev) == dev && static_cast<uint64_t>(st.st_ino) == ino
             ? LogFormat::kJournal
             : LogFormat::kPlain;
}

void LogLine(LogLevel level, const std::string& line) {
  const int l = static_cast<int>(level);
  const bool journal = static_cast<LogFormat>(g_format.load()) == LogFormat::kJournal;
  std::string ts;
  if (!journal) ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  absl::MutexLock lock(&g_mu);
  std::string out = journal ? absl::StrFormat("<%d>%s: %s\n", kPriorities[l], *g_prefix, line)
                            : absl::StrFormat("%s %s %s: %s\n", ts, kLetters[l], *g_prefix, line);
  (void)!write(STDERR_FILENO, out.data(), out.size());
}

}  // namespace tether
