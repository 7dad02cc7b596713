// WakeableEpoll: an epoll set with its own wake-up, for a thread that
// waits on many fds (exporters' pidfds, clients' userfaultfds) and must
// also be woken by other threads: to stop, or to look at a queue again.
#ifndef TETHER_DAEMON_COMMON_WAKEABLE_EPOLL_H_
#define TETHER_DAEMON_COMMON_WAKEABLE_EPOLL_H_

#include <sys/epoll.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tether {

class WakeableEpoll {
 public:
  WakeableEpoll() = default;
  ~WakeableEpoll() { Close(); }
  WakeableEpoll(const WakeableEpoll&) = delete;
  WakeableEpoll& operator=(const WakeableEpoll&) = delete;

  absl::Status Open();
  // Closes both fds; only once the waiting thread has stopped.
  void Close();
  bool is_open() const { return epoll_fd_ >= 0; }

  // Watches `fd` for reading; its events carry `key`, which must not be 0
  // (the wake-up's own). Thread-safe, as are Remove and Wake.
  absl::Status Add(int fd, uint64_t key);
  void Remove(int fd);
  // Makes a Wait() in progress (or the next one) return.
  void Wake();

  // Up to `max` events, waiting up to `timeout_ms` (-1: until an event or
  // a wake-up). Returns how many were stored in `events`: 0 after a
  // wake-up (consumed here, never reported), a timeout or a signal.
  int Wait(epoll_event* events, int max, int timeout_ms);

 private:
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_WAKEABLE_EPOLL_H_
