#include "daemon/service_notify.h"

#include <systemd/sd-daemon.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/common/log.h"
#include "daemon/common/thread_name.h"

namespace tether {
namespace {

void Notify(const std::string& state) {
  // 0: keep NOTIFY_SOCKET, the watchdog thread sends on it later.
  int r = sd_notify(0, state.c_str());
  if (r < 0) TLOG_WARN("sd_notify(%s): %s", state, strerror(-r));
}

}  // namespace

ServiceNotifier::~ServiceNotifier() { StopWatchdog(); }

void ServiceNotifier::Ready(const std::string& status) {
  Notify(absl::StrCat("READY=1\nSTATUS=", status));
}
void ServiceNotifier::Status(const std::string& status) { Notify("STATUS=" + status); }
void ServiceNotifier::Reloading() { Notify("RELOADING=1\nSTATUS=reloading"); }
void ServiceNotifier::Stopping() { Notify("STOPPING=1\nSTATUS=stopping"); }

absl::Duration ServiceNotifier::WatchdogInterval() {
  uint64_t usec = 0;
  // > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID (if set) is ours.
  if (sd_watchdog_enabled(0, &usec) <= 0) return absl::ZeroDuration();
  return absl::Microseconds(usec);
}

void ServiceNotifier::StartWatchdog(std::function<absl::Status()> probe) {
  absl::Duration interval = WatchdogInterval();
  if (interval == absl::ZeroDuration()) return;
  // Half the interval (sd_watchdog_enabled(3)): one late ping is not a kill.
  TLOG_INFO("watchdog: every %s (WatchdogSec=%s)", absl::FormatDuration(interval / 2),
            absl::FormatDuration(interval));
  watchdog_ = std::thread([this, period = interval / 2, probe = std::move(probe)] {
    NameThisThread("tt-watchdog");
    WatchdogLoop(period, probe);
  });
}

void ServiceNotifier::WatchdogLoop(absl::Duration period, std::function<absl::Status()> probe) {
  bool failing = false;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), period)) return;
    }
    absl::Status st = probe();
    if (st.ok()) {
      if (failing) TLOG_INFO("watchdog: the daemon answers again");
      failing = false;
      Notify("WATCHDOG=1");
    } else if (!failing) {
      failing = true;
      TLOG_ERROR("watchdog: %s; not telling systemd the daemon is alive", st.message());
      Notify("STATUS=watchdog probe failing: " + std::string(st.message()));
    }
  }
}

void ServiceNotifier::StopWatchdog() {
  if (!watchdog_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  watchdog_.join();
}

}  // namespace tether
