#include "daemon/common/wakeable_epoll.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {

TEST(WakeableEpoll, ReportsWatchedFdsAndSwallowsWakeUps) {
  WakeableEpoll ep;
  ASSERT_TRUE(ep.Open().ok());
  EXPECT_TRUE(ep.is_open());
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ToErrno(ep.Add(fd, 0)), EINVAL);  // 0 is the wake-up's key
  ASSERT_TRUE(ep.Add(fd, 7).ok());
  epoll_event ev[4];
  EXPECT_EQ(ep.Wait(ev, 4, 0), 0);  // nothing yet

  uint64_t one = 1;
  ASSERT_EQ(write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  ep.Wake();
  ASSERT_EQ(ep.Wait(ev, 4, 1000), 1);  // the fd; the wake-up is not reported
  EXPECT_EQ(ev[0].data.u64, 7u);

  ep.Remove(fd);
  EXPECT_EQ(ep.Wait(ev, 4, 0), 0);  // removed, and the wake-up was consumed
  close(fd);
}

TEST(WakeableEpoll, WakeEndsAWaitOnAnotherThread) {
  WakeableEpoll ep;
  ASSERT_TRUE(ep.Open().ok());
  std::thread waker([&] {
    usleep(20000);
    ep.Wake();
  });
  epoll_event ev[1];
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(ep.Wait(ev, 1, 10000), 0);
  // At the wake-up, not at the timeout.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  waker.join();
  ep.Close();
  EXPECT_FALSE(ep.is_open());
}

}  // namespace
}  // namespace tether
