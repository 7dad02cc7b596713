// LocalServer: the daemon's local socket (SOCK_SEQPACKET, one protobuf
// frame per datagram, file descriptors as SCM_RIGHTS, the caller's identity
// from SO_PEERCRED / SO_PEERGROUPS). One thread per client connection; the
// requests themselves are handled by a LocalHandler (LocalApi).
//
// Connections (and so threads) are bounded per uid and in total
// (LocalLimits): any local user may connect, and without a bound one user
// could starve the daemon of threads and descriptors. A connection over a
// bound is answered at once with one frame, err EAGAIN and the reason, and
// closed; libtether returns that as -1/EAGAIN (tether.h). Refusals are
// logged at most once per uid every 10 s.
//
// Thread contract: Start and Stop on one thread (the daemon's); the accept
// loop on its own thread; Serve on one thread per connection. mu_ guards
// the connection table and the per-uid counts.
#ifndef TETHER_DAEMON_LOCAL_LOCAL_SERVER_H_
#define TETHER_DAEMON_LOCAL_LOCAL_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/credentials.h"
#include "local.pb.h"

namespace tether {

constexpr size_t kMaxLocalFrame = 64 * 1024;
constexpr int kMaxLocalFds = 2;

// Bounds on connections; 0 means no bound.
struct LocalLimits {
  uint32_t max_connections_per_uid = 128;
  uint32_t max_connections = 1024;
};

struct LocalConnection {
  uint64_t id = 0;
  int fd = -1;
  Credentials cred;
};

// Owns the fds in `fds_in` (close what you do not keep); fds put in
// `fds_out` are sent with the response and then closed.
class LocalHandler {
 public:
  virtual ~LocalHandler() = default;
  virtual void Handle(const LocalConnection& conn, const local::LocalRequest& req,
                      std::vector<int>& fds_in, local::LocalResponse* resp,
                      std::vector<int>* fds_out) = 0;
  virtual void Disconnected(const LocalConnection& conn) = 0;
};

class LocalServer {
 public:
  explicit LocalServer(LocalHandler* handler, LocalLimits limits = {})
      : handler_(handler), limits_(limits) {}
  ~LocalServer();

  // Binds `path` (an old socket file there is replaced) with mode 0666:
  // who may do what is decided per request from SO_PEERCRED and permits.
  absl::Status Start(const std::string& path);
  void Stop();

  // Sends one frame on a connection (event channel); false if it is gone.
  static bool SendFrame(int fd, const google::protobuf::Message& msg,
                        const std::vector<int>& fds = {});

 private:
  void AcceptLoop();
  void Serve(std::shared_ptr<LocalConnection> conn);
  // Answers a connection over a bound with EAGAIN and closes it.
  void Refuse(int fd, const Credentials& cred, const std::string& why);

  LocalHandler* const handler_;
  const LocalLimits limits_;
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_id_{1};
  std::thread accept_thread_;
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<LocalConnection>> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, uint32_t> per_uid_ ABSL_GUARDED_BY(mu_);  // uid -> connections
  // uid -> when a refusal of it was last logged (the accept thread's only).
  absl::flat_hash_map<uint32_t, int64_t> refusal_logged_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_LOCAL_LOCAL_SERVER_H_
