#include "daemon/common/segid.h"

#include <gtest/gtest.h>

#include "daemon/common/credentials.h"

namespace tether {
namespace {

TEST(Segid, RoundTrips) {
  uint64_t id = MakeSegid(3, 0xbeef, 17);
  ASSERT_NE(id, 0u);
  EXPECT_LT(static_cast<int64_t>(id), INT64_MAX);
  EXPECT_GT(static_cast<int64_t>(id), 0);
  SegidParts p;
  ASSERT_TRUE(ParseSegid(id, &p));
  EXPECT_EQ(p.node, 3u);
  EXPECT_EQ(p.incarnation, 0xbeefu);
  EXPECT_EQ(p.local, 17u);
}

TEST(Segid, RejectsOutOfRangeParts) {
  EXPECT_EQ(MakeSegid(0, 1, 1), 0u);
  EXPECT_EQ(MakeSegid(kMaxNodeId + 1, 1, 1), 0u);
  EXPECT_EQ(MakeSegid(1, 0, 1), 0u);
  EXPECT_EQ(MakeSegid(1, 0x10000, 1), 0u);
  EXPECT_EQ(MakeSegid(1, 1, 0), 0u);
  EXPECT_NE(MakeSegid(kMaxNodeId, 0xffff, 0xffffffff), 0u);
}

TEST(Segid, ParseRejectsNonSegids) {
  SegidParts p;
  EXPECT_FALSE(ParseSegid(0, &p));
  EXPECT_FALSE(ParseSegid(12345, &p));                                // no node, no incarnation
  EXPECT_FALSE(ParseSegid(uint64_t{1} << 63, &p));                    // negative as int64
  EXPECT_FALSE(ParseSegid(MakeSegid(1, 1, 1) & ~0xffffffffull, &p));  // local 0
}

TEST(Permit, OwnerGroupOther) {
  Credentials owner{0, 1000, 100, {}};
  Credentials member{0, 1001, 100, {}};
  Credentials supplementary{0, 1002, 5, {7, 100}};
  Credentials other{0, 1003, 5, {}};
  EXPECT_TRUE(PermitAllows(0640, 1000, 100, owner, 6));
  EXPECT_TRUE(PermitAllows(0640, 1000, 100, member, 4));
  EXPECT_FALSE(PermitAllows(0640, 1000, 100, member, 6));
  EXPECT_TRUE(PermitAllows(0640, 1000, 100, supplementary, 4));
  EXPECT_FALSE(PermitAllows(0640, 1000, 100, other, 4));
  EXPECT_FALSE(PermitAllows(0066, 1000, 100, owner, 4));  // owner bits decide for the owner
  Credentials root{0, 0, 0, {}};
  EXPECT_FALSE(PermitAllows(0600, 1000, 100, root, 4));  // no root override
}

}  // namespace
}  // namespace tether
