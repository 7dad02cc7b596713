// LocalChannel: the library's connection to its node's tetherd (a
// SOCK_SEQPACKET Unix socket; one request frame, one response frame). One
// per process, shared by all threads (a mutex serializes round trips). It
// reconnects on the next call after the daemon went away.
#ifndef TETHER_CLIENT_SRC_LOCAL_CHANNEL_H_
#define TETHER_CLIENT_SRC_LOCAL_CHANNEL_H_

#include <mutex>
#include <string>
#include <vector>

#include "local.pb.h"

namespace tether::client {

// The socket path: $TETHER_SOCKET or /run/tether/tetherd.sock.
std::string SocketPath();
// Connects a new SEQPACKET socket to the daemon; -1 with errno on failure.
int ConnectDaemon();
// One round trip on `fd`. On failure returns false with errno set and
// *message filled in.
bool RoundTrip(int fd, const local::LocalRequest& req, const std::vector<int>& fds_out,
               local::LocalResponse* resp, std::vector<int>* fds_in, std::string* message);

class LocalChannel {
 public:
  static LocalChannel& Get();
  LocalChannel();
  // Sends req; returns 0, or -1 with errno and the message for tether_strerror.
  int Call(const local::LocalRequest& req, const std::vector<int>& fds_out,
           local::LocalResponse* resp, std::vector<int>* fds_in = nullptr);

 private:
  // fork(): the child must not share the parent's connection (the daemon
  // knows it by the parent's SO_PEERCRED); it reconnects on first use.
  static void BeforeFork();
  static void AfterForkParent();
  static void AfterForkChild();

  std::mutex mu_;
  int fd_ = -1;
};

// Records the message tether_strerror() returns for this thread; sets errno.
int SetError(int err, const std::string& message);

}  // namespace tether::client

#endif  // TETHER_CLIENT_SRC_LOCAL_CHANNEL_H_
