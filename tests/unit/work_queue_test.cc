#include "daemon/common/work_queue.h"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace tether {
namespace {

TEST(WorkQueue, PopsInOrderAndStopEndsWaiters) {
  WorkQueue<std::string> q;
  ASSERT_TRUE(q.Push("a"));
  ASSERT_TRUE(q.Push("b"));
  EXPECT_EQ(q.Pop(), "a");
  EXPECT_EQ(q.Pop(), "b");

  // Two workers block on the empty queue; Stop() releases both.
  std::vector<std::thread> workers;
  std::atomic<int> ended{0};
  for (int i = 0; i < 2; ++i)
    workers.emplace_back([&] {
      EXPECT_FALSE(q.Pop().has_value());
      ++ended;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(ended.load(), 0);
  q.Stop();
  for (auto& w : workers) w.join();
  EXPECT_EQ(ended.load(), 2);
}

TEST(WorkQueue, WhatIsLeftAfterStopIsTakenNotPopped) {
  WorkQueue<int> q;
  ASSERT_TRUE(q.Push(1));
  ASSERT_TRUE(q.Push(2));
  q.Stop();
  EXPECT_FALSE(q.Pop().has_value());  // stopped: workers end even with items left
  EXPECT_FALSE(q.Push(3));            // refused: its owner must answer it itself
  auto left = q.TakeAll();
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0], 1);
  EXPECT_EQ(left[1], 2);
  EXPECT_TRUE(q.TakeAll().empty());
}

}  // namespace
}  // namespace tether
