#include "daemon/common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tether {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
absl::Mutex g_mu;
std::string* g_prefix = new std::string("tether");
constexpr const char* kNames[] = {"D", "I", "W", "E"};
}  // namespace

void SetLogPrefix(std::string prefix) {
  absl::MutexLock lock(&g_mu);
  *g_prefix = std::move(prefix);
}
void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

void LogLine(LogLevel level, const std::string& line) {
  std::string ts = absl::FormatTime("%H:%M:%E3S", absl::Now(), absl::LocalTimeZone());
  absl::MutexLock lock(&g_mu);
  std::string out =
      absl::StrFormat("%s %s %s: %s\n", kNames[static_cast<int>(level)], ts, *g_prefix, line);
  (void)!write(STDERR_FILENO, out.data(), out.size());
}

}  // namespace tether
