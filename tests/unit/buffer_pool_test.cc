// BufferPool: the rdma transport's registered slots (and flow-control
// window): bounds, exhaustion, double release, slot lookup, moves.
#include "daemon/transport/buffer_pool.h"

#include <set>

#include <gtest/gtest.h>

namespace tether {
namespace {

TEST(BufferPool, RejectsBadShapes) {
  EXPECT_FALSE(BufferPool::Create(0, 4096).ok());
  EXPECT_FALSE(BufferPool::Create(4, 0).ok());
  EXPECT_FALSE(BufferPool::Create(4, 1000).ok());             // not page-sized
  EXPECT_FALSE(BufferPool::Create(1u << 20, 1u << 20).ok());  // over 1 GiB
}

TEST(BufferPool, HandsOutEverySlotOnceThenRunsDry) {
  auto pool = BufferPool::Create(8, 8192);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->base()) % 4096, 0u);
  EXPECT_EQ(pool->size_bytes(), 8u * 8192);
  std::set<uint32_t> got;
  for (int i = 0; i < 8; ++i) {
    auto s = pool->Acquire();
    ASSERT_TRUE(s.has_value());
    EXPECT_LT(*s, 8u);
    EXPECT_TRUE(got.insert(*s).second) << "slot handed out twice";
    auto span = pool->slot(*s);
    EXPECT_EQ(span.size(), 8192u);
    EXPECT_EQ(span.data(), pool->base() + *s * 8192);
    EXPECT_EQ(span[0], 0);  // zero-filled: no stale daemon memory to a peer
  }
  EXPECT_FALSE(pool->Acquire().has_value());
  EXPECT_EQ(pool->free_slots(), 0u);
  EXPECT_TRUE(pool->Release(3));
  EXPECT_EQ(pool->free_slots(), 1u);
  EXPECT_EQ(pool->Acquire(), std::optional<uint32_t>(3));
}

TEST(BufferPool, RefusesDoubleAndForeignRelease) {
  auto pool = BufferPool::Create(2, 4096);
  ASSERT_TRUE(pool.ok());
  EXPECT_FALSE(pool->Release(0));  // never acquired
  auto s = pool->Acquire();
  ASSERT_TRUE(s);
  EXPECT_TRUE(pool->Release(*s));
  EXPECT_FALSE(pool->Release(*s));  // twice
  EXPECT_FALSE(pool->Release(2));   // out of range
  EXPECT_EQ(pool->free_slots(), 2u);
}

TEST(BufferPool, SlotOfMapsAddressesBack) {
  auto pool = BufferPool::Create(4, 4096);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->SlotOf(pool->base()), std::optional<uint32_t>(0));
  EXPECT_EQ(pool->SlotOf(pool->base() + 3 * 4096 + 17), std::optional<uint32_t>(3));
  EXPECT_FALSE(pool->SlotOf(pool->base() + 4 * 4096).has_value());
  int local = 0;
  EXPECT_FALSE(pool->SlotOf(&local).has_value());
}

TEST(BufferPool, MoveKeepsOwnership) {
  auto pool = BufferPool::Create(2, 4096);
  ASSERT_TRUE(pool.ok());
  uint8_t* base = pool->base();
  auto s = pool->Acquire();
  BufferPool moved = *std::move(pool);
  EXPECT_EQ(moved.base(), base);
  EXPECT_EQ(moved.free_slots(), 1u);
  EXPECT_TRUE(moved.Release(*s));
  moved.slot(1)[4095] = 7;  // still mapped
}

}  // namespace
}  // namespace tether
