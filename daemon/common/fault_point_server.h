// FaultPointServer: test-only remote control of FaultPoints (fault_points.h)
// for a real tetherd, so that the VM and host multi-node tiers can hold a
// named step of a running daemon as unit tests do — never a sleep that
// hopes for a race.
//
// tetherd starts one only with --test_fault_socket=PATH (empty, the
// default: none), and refuses that flag unless the environment has
// TETHER_TEST_HOOKS=1: a production start never listens for it. The
// socket (a Unix stream socket, mode 0600: the daemon's user and root)
// takes one command per line and answers one line each:
//   arm NAME                -> "ok"
//   wait NAME TIMEOUT_MS    -> "reached" or "timeout" (WaitUntilReached)
//   reached NAME            -> "yes" or "no"
//   release NAME            -> "ok"
//   release_all             -> "ok"
// anything else -> "error ...". A connection that closes releases
// nothing: a test that dies leaves the point held until release_all or
// the daemon's end (Stop() releases every point first).
//
// Thread contract: Start() and Stop() from one thread (main). One server
// thread accepts and serves one connection at a time; it is the only
// caller of FaultPoints' test-side methods in the daemon.
#ifndef TETHER_DAEMON_COMMON_FAULT_POINT_SERVER_H_
#define TETHER_DAEMON_COMMON_FAULT_POINT_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace tether {

class FaultPointServer {
 public:
  static absl::StatusOr<std::unique_ptr<FaultPointServer>> Start(const std::string& path);
  ~FaultPointServer();
  void Stop();

 private:
  FaultPointServer(std::string path, int listen_fd, int stop_fd);
  void Run();
  std::string Handle(const std::string& line);

  const std::string path_;
  const int listen_fd_;
  const int stop_fd_;  // eventfd: wakes Run()
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_FAULT_POINT_SERVER_H_
