// Minimal leveled logging to stderr (Abseil 20220623 has no absl/log).
//
// Thread contract: TLOG_* and the setters may be called from any thread;
// each line is one write(2) under a mutex, so lines from different threads
// never interleave.
#ifndef TETHER_DAEMON_COMMON_LOG_H_
#define TETHER_DAEMON_COMMON_LOG_H_

#include <string>

#include "absl/strings/str_format.h"

namespace tether {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogPrefix(std::string prefix);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, const std::string& line);

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& fmt, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(fmt, args...));
}

#define TLOG_DEBUG(...) ::tether::Log(::tether::LogLevel::kDebug, __VA_ARGS__)
#define TLOG_INFO(...) ::tether::Log(::tether::LogLevel::kInfo, __VA_ARGS__)
#define TLOG_WARN(...) ::tether::Log(::tether::LogLevel::kWarning, __VA_ARGS__)
#define TLOG_ERROR(...) ::tether::Log(::tether::LogLevel::kError, __VA_ARGS__)

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_LOG_H_
