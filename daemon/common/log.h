// Leveled logging to stderr (Abseil 20220623 has no absl/log), in one of
// two formats:
//
//  - journal: when stderr is the systemd journal (systemd sets
//    JOURNAL_STREAM to stderr's "device:inode"), each line starts with its
//    syslog priority, "<3>" (error) .. "<7>" (debug), as sd-daemon(3)
//    describes; journald stamps the time itself, and `journalctl -p
//    warning` filters by it.
//  - plain: anywhere else, an ISO 8601 UTC time with milliseconds and a
//    level letter: "2026-12-07T08:01:02.345Z W tetherd[node 1]: ...".
//
// main() picks the format once (DetectLogFormat) before any thread logs.
// The level is one atomic, so an operator can change it at run time
// (tetherctl log-level, Admin.SetLogLevel) without a lock on the callers'
// path: a disabled TLOG_DEBUG costs one relaxed load.
//
// Thread contract: TLOG_*, SetLogLevel/GetLogLevel and SetLogPrefix may be
// called from any thread; each line is one write(2) under a mutex, so lines
// from different threads never interleave. SetLogFormat: before threads log
// (main, tests).
#ifndef TETHER_DAEMON_COMMON_LOG_H_
#define TETHER_DAEMON_COMMON_LOG_H_

#include <optional>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace tether {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kPlain, kJournal };

void SetLogPrefix(std::string prefix);
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, const std::string& line);

// "debug", "info", "warning", "error" (and back); nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(absl::string_view name);
const char* LogLevelName(LogLevel level);

void SetLogFormat(LogFormat format);
// kJournal iff JOURNAL_STREAM names the device and inode of `fd` (stderr):
// a daemon started by systemd whose stderr is still the journal. A child
// whose stderr was redirected elsewhere inherits the variable but not the
// stream, hence the check.
LogFormat DetectLogFormat(int fd = 2);

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
