#include "daemon/common/poll_now.h"

#include <errno.h>

namespace tether {

int (*poll_now_syscall_for_test)(pollfd* fds, nfds_t n, int timeout_ms) = ::poll;

int PollNow(pollfd* fds, nfds_t n) {
  int r;
  do {
    r = poll_now_syscall_for_test(fds, n, 0);
  } while (r < 0 && errno == EINTR);
  return r;
}

}  // namespace tether
