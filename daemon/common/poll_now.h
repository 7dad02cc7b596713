// PollNow: poll(2) with a zero timeout — "is anything ready right now?" —
// that never answers "no" because a signal arrived. A zero-timeout poll
// returns -1/EINTR when an unblocked signal is pending and nothing is
// ready; callers that read the answer as "nothing ready" (an exporter
// still alive, no tether.ko event queued) would then be wrong. The
// protocol simulation found none of this; the fuzzer did (libFuzzer's
// SIGALRM made a live exporter look exited).
//
// Thread contract: any thread. poll_now_syscall_for_test is for unit tests
// only (set it before, reset it after; not concurrently with callers).
#ifndef TETHER_DAEMON_COMMON_POLL_NOW_H_
#define TETHER_DAEMON_COMMON_POLL_NOW_H_

#include <poll.h>

namespace tether {

// What poll(2) returns, retried while it fails with EINTR.
int PollNow(pollfd* fds, nfds_t n);

// The poll(2) PollNow calls: tests make it fail with EINTR.
extern int (*poll_now_syscall_for_test)(pollfd* fds, nfds_t n, int timeout_ms);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_POLL_NOW_H_
