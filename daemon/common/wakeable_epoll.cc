#include "daemon/common/wakeable_epoll.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"

namespace tether {

absl::Status WakeableEpoll::Open() {
  if (epoll_fd_ >= 0) return absl::FailedPreconditionError("epoll set already open");
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int err = errno;
    Close();
    return ErrnoStatus(err, "eventfd");
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
    int err = errno;
    Close();
    return ErrnoStatus(err, "epoll_ctl(wake-up)");
  }
  return absl::OkStatus();
}

void WakeableEpoll::Close() {
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  epoll_fd_ = wake_fd_ = -1;
}

absl::Status WakeableEpoll::Add(int fd, uint64_t key) {
  if (key == 0) return absl::InvalidArgumentError("epoll key 0 is the wake-up's");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = key;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return ErrnoStatus(errno, "epoll_ctl");
  return absl::OkStatus();
}

void WakeableEpoll::Remove(int fd) { epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr); }

void WakeableEpoll::Wake() {
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof(one));
}

int WakeableEpoll::Wait(epoll_event* events, int max, int timeout_ms) {
  int n = epoll_wait(epoll_fd_, events, max, timeout_ms);
  if (n <= 0) return 0;
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    if (events[i].data.u64 == 0) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof(v));
      continue;
    }
    events[kept++] = events[i];
  }
  return kept;
}

}  // namespace tether
