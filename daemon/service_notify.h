// ServiceNotifier: tetherd's side of systemd's Type=notify protocol
// (sd_notify(3)), through libsystemd. Outside systemd (no NOTIFY_SOCKET)
// every call is a no-op, so tests and hand-started daemons need nothing.
//
//  - Ready(): READY=1 and a STATUS= line, once every socket listens and the
//    notifier source runs (main, after Tetherd::Start): `systemctl start`
//    returns then, and units ordered after tetherd find it serving.
//  - Status(): a STATUS= line (`systemctl status` shows it).
//  - Reloading()/Ready() bracket a reload; Stopping() before Stop().
//  - StartWatchdog(): when the unit sets WatchdogSec= (WATCHDOG_USEC for
//    this pid, sd_watchdog_enabled(3)), a thread runs `probe` every half
//    interval and sends WATCHDOG=1 only when it succeeds. A probe that
//    fails is logged and sends nothing; one that hangs sends nothing
//    either: systemd then kills the daemon (SIGABRT) and restarts it
//    (Restart=on-failure), instead of leaving a wedged daemon whose
//    process merely exists.
//
// Thread contract: Ready/Status/Reloading/Stopping from main's thread;
// StartWatchdog once, StopWatchdog (joins the thread) from the thread that
// started it, before the probe's objects go away.
#ifndef TETHER_DAEMON_SERVICE_NOTIFY_H_
#define TETHER_DAEMON_SERVICE_NOTIFY_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tether {

class ServiceNotifier {
 public:
  ~ServiceNotifier();

  void Ready(const std::string& status);
  void Status(const std::string& status);
  void Reloading();
  void Stopping();

  // The watchdog interval systemd asked for; zero without one.
  static absl::Duration WatchdogInterval();
  void StartWatchdog(std::function<absl::Status()> probe);
  void StopWatchdog();

 private:
  void WatchdogLoop(absl::Duration period, std::function<absl::Status()> probe);
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_SERVICE_NOTIFY_H_
