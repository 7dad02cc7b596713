#include "daemon/common/interval_set.h"

#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace tether {
namespace {

TEST(IntervalSet, AddMergesTouchingAndOverlapping) {
  IntervalSet s;
  s.Add(10, 20);
  s.Add(20, 30);  // touching
  s.Add(5, 12);   // overlapping
  EXPECT_EQ(s.ToVector(), (std::vector<IntervalSet::Interval>{{5, 30}}));
  s.Add(40, 50);
  EXPECT_EQ(s.size(), 2u);
  s.Add(0, 100);
  EXPECT_EQ(s.ToVector(), (std::vector<IntervalSet::Interval>{{0, 100}}));
}

TEST(IntervalSet, EmptyRangesAreIgnored) {
  IntervalSet s;
  s.Add(5, 5);
  s.Add(9, 3);
  EXPECT_TRUE(s.empty());
  EXPECT_FALSE(s.Overlaps(0, 100));
}

TEST(IntervalSet, RemoveSplits) {
  IntervalSet s;
  s.Add(0, 100);
  s.Remove(40, 60);
  EXPECT_EQ(s.ToVector(), (std::vector<IntervalSet::Interval>{{0, 40}, {60, 100}}));
  s.Remove(0, 10);
  s.Remove(90, 200);
  EXPECT_EQ(s.ToVector(), (std::vector<IntervalSet::Interval>{{10, 40}, {60, 90}}));
  s.Remove(0, 1000);
  EXPECT_TRUE(s.empty());
}

TEST(IntervalSet, QueriesAtEdges) {
  IntervalSet s;
  s.Add(10, 20);
  EXPECT_TRUE(s.Overlaps(19, 25));
  EXPECT_FALSE(s.Overlaps(20, 25));
  EXPECT_FALSE(s.Overlaps(0, 10));
  EXPECT_TRUE(s.Contains(10, 20));
  EXPECT_FALSE(s.Contains(9, 20));
  EXPECT_EQ(s.Intersect(15, 100), (std::vector<IntervalSet::Interval>{{15, 20}}));
  EXPECT_EQ(s.TotalLength(), 10u);
}

// Compares against a bitmap model under random operations.
TEST(IntervalSet, MatchesBitmapModel) {
  std::mt19937 rng(42);
  IntervalSet s;
  std::vector<bool> model(256, false);
  for (int i = 0; i < 5000; ++i) {
    uint64_t a = rng() % 256, b = rng() % 256;
    if (a > b) std::swap(a, b);
    if (rng() % 2) {
      s.Add(a, b);
      for (uint64_t x = a; x < b; ++x) model[x] = true;
    } else {
      s.Remove(a, b);
      for (uint64_t x = a; x < b; ++x) model[x] = false;
    }
    uint64_t q0 = rng() % 256, q1 = rng() % 256;
    if (q0 > q1) std::swap(q0, q1);
    bool any = false, all = true;
    for (uint64_t x = q0; x < q1; ++x) {
      any |= model[x];
      all &= model[x];
    }
    ASSERT_EQ(s.Overlaps(q0, q1), any) << q0 << "," << q1;
    ASSERT_EQ(s.Contains(q0, q1), all) << q0 << "," << q1;
    // intervals stay disjoint and non-touching
    auto v = s.ToVector();
    for (size_t k = 1; k < v.size(); ++k) ASSERT_LT(v[k - 1].second, v[k].first);
  }
}

}  // namespace
}  // namespace tether
