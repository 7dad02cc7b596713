// The home's fan-out state machine, driven by explicit events (replies in
// any order, duplicates, late replies, peer death; the deadline is an
// explicit Expire()).
#include "daemon/invalidation/ack_collector.h"

#include <gtest/gtest.h>

namespace tether {
namespace {

using V = std::vector<uint32_t>;

TEST(AckCollector, AllAckInAnyOrder) {
  AckCollector c({2, 3, 4});
  EXPECT_FALSE(c.complete());
  EXPECT_FALSE(c.OnReply(4, absl::OkStatus()));
  EXPECT_FALSE(c.OnReply(2, absl::OkStatus()));
  EXPECT_TRUE(c.OnReply(3, absl::OkStatus()));
  EXPECT_TRUE(c.complete());
  EXPECT_EQ(c.acked(), (V{2, 3, 4}));
  EXPECT_TRUE(c.failed().empty());
}

TEST(AckCollector, DuplicatesAndStrangersChangeNothing) {
  AckCollector c({2, 3});
  EXPECT_FALSE(c.OnReply(2, absl::OkStatus()));
  EXPECT_FALSE(c.OnReply(2, absl::OkStatus()));             // duplicate
  EXPECT_FALSE(c.OnReply(2, absl::UnavailableError("x")));  // duplicate, now an error
  EXPECT_FALSE(c.OnReply(9, absl::OkStatus()));             // never asked
  EXPECT_FALSE(c.complete());
  EXPECT_TRUE(c.OnReply(3, absl::OkStatus()));
  EXPECT_EQ(c.acked(), (V{2, 3}));
}

TEST(AckCollector, SilentNodesAreFencedAtTheDeadline) {
  AckCollector c({2, 3, 4});
  c.OnReply(3, absl::OkStatus());
  c.Expire();
  EXPECT_TRUE(c.complete());
  EXPECT_EQ(c.acked(), (V{3}));
  EXPECT_EQ(c.failed(), (V{2, 4}));
  // a late ack does not un-fence
  EXPECT_FALSE(c.OnReply(2, absl::OkStatus()));
  EXPECT_EQ(c.failed(), (V{2, 4}));
}

TEST(AckCollector, PeerDeathMidWindowIsAFailure) {
  AckCollector c({2, 3});
  EXPECT_FALSE(c.OnReply(2, absl::UnavailableError("connection reset")));
  EXPECT_TRUE(c.OnReply(3, absl::OkStatus()));
  EXPECT_EQ(c.failed(), (V{2}));
  EXPECT_EQ(c.acked(), (V{3}));
}

TEST(AckCollector, EmptyAndRepeatedNodes) {
  AckCollector empty({});
  EXPECT_TRUE(empty.complete());
  AckCollector twice({5, 5});
  EXPECT_TRUE(twice.OnReply(5, absl::OkStatus()));
}

}  // namespace
}  // namespace tether
