// NodeState (common/node_state.h): the segment epoch and counter kept
// across restarts; a missing file is a fresh start, a bad one an error.
#include "daemon/common/node_state.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "daemon/common/errors.h"

namespace tether {
namespace {

class NodeStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/node_state_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    unlink((dir_ + "/node.state").c_str());
    unlink((dir_ + "/node.state.tmp").c_str());
    rmdir(dir_.c_str());
  }
  std::string File() const { return dir_ + "/node.state"; }
  std::string Read() const {
    std::ifstream in(File());
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void WriteFile(const std::string& text) const { std::ofstream(File()) << text; }
  std::string dir_;
};

TEST_F(NodeStateTest, MissingFileStartsFreshAndPersists) {
  auto s = NodeState::Open(dir_, 3);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE((*s)->fresh());
  EXPECT_NE((*s)->epoch(), 0u);
  EXPECT_LE((*s)->epoch(), 0xffffu);
  EXPECT_EQ((*s)->first_local(), 1u);
  EXPECT_EQ(*(*s)->NextLocal(), 1u);
  EXPECT_EQ(*(*s)->NextLocal(), 2u);
  EXPECT_NE(Read().find("node 3\n"), std::string::npos) << Read();
}

TEST_F(NodeStateTest, RestartKeepsTheEpochAndNeverReusesIds) {
  uint32_t epoch;
  uint32_t last = 0;
  {
    auto s = NodeState::Open(dir_, 7);
    ASSERT_TRUE(s.ok()) << s.status();
    epoch = (*s)->epoch();
    for (int i = 0; i < 5; ++i) last = *(*s)->NextLocal();
  }
  // A restart (orderly or not: the reservation was written before any id
  // was handed out).
  auto s = NodeState::Open(dir_, 7);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE((*s)->fresh());
  EXPECT_EQ((*s)->epoch(), epoch);
  EXPECT_GT((*s)->first_local(), last);
  EXPECT_EQ(*(*s)->NextLocal(), (*s)->first_local());
}

TEST_F(NodeStateTest, CrossingTheReservationWritesTheNextOne) {
  auto s = NodeState::Open(dir_, 1);
  ASSERT_TRUE(s.ok()) << s.status();
  uint32_t id = 0;
  for (uint32_t i = 0; i <= NodeState::kReserveBlock; ++i) id = *(*s)->NextLocal();
  EXPECT_EQ(id, NodeState::kReserveBlock + 1);
  auto again = NodeState::Open(dir_, 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_GT((*again)->first_local(), id);
}

TEST_F(NodeStateTest, CorruptFileIsAClearError) {
  WriteFile("tether-state 1\nnode 1\nepoch banana\nreserved 5\n");
  auto s = NodeState::Open(dir_, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(ToErrno(s.status()), EINVAL);
  EXPECT_NE(s.status().message().find("corrupt"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find(File()), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("remove it"), std::string::npos) << s.status();
  // Nothing changed: the operator decides.
  EXPECT_EQ(Read(), "tether-state 1\nnode 1\nepoch banana\nreserved 5\n");
}

TEST_F(NodeStateTest, TruncatedAndOutOfRangeFilesAreErrors) {
  for (const char* text :
       {"", "tether-state 1\nnode 1\n", "tether-state 3\nnode 1\nepoch 0x1\nreserved 1\n",
        "tether-state 1\nnode 1\nepoch 0x0\nreserved 1\n",
        "tether-state 1\nnode 1\nepoch 0x10000\nreserved 1\n",
        "tether-state 1\nnode 1\nepoch 0x5\nreserved 0\n"}) {
    WriteFile(text);
    auto s = NodeState::Open(dir_, 1);
    EXPECT_FALSE(s.ok()) << "accepted: " << text;
  }
}

// The segment table (issue 18/17): what a registration again after a
// restart must match, a line per live segment, written when it changes.
TEST_F(NodeStateTest, SegmentTableRoundTrips) {
  uint32_t a, b, c;
  {
    auto s = NodeState::Open(dir_, 4);
    ASSERT_TRUE(s.ok()) << s.status();
    a = *(*s)->NextLocal();
    b = *(*s)->NextLocal();
    c = *(*s)->NextLocal();
    ASSERT_TRUE((*s)->AddSegment(a, {1000, 100, 0600}).ok());
    ASSERT_TRUE((*s)->AddSegment(b, {0, 0, 0644}).ok());
    ASSERT_TRUE((*s)->AddSegment(c, {1001, 101, 0666}).ok());
    ASSERT_TRUE((*s)->RemoveSegment(c).ok());  // removed: not claimable later
    EXPECT_FALSE((*s)->Earlier(a));            // this run's, not an earlier one's
  }
  EXPECT_NE(Read().find("tether-state 2\n"), std::string::npos) << Read();
  EXPECT_NE(Read().find("segment 1 1000 100 0600\n"), std::string::npos) << Read();
  auto s = NodeState::Open(dir_, 4);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Earlier(a));
  EXPECT_EQ(*(*s)->Earlier(a), (NodeState::SegmentOwner{1000, 100, 0600}));
  EXPECT_EQ(*(*s)->Earlier(b), (NodeState::SegmentOwner{0, 0, 0644}));
  EXPECT_FALSE((*s)->Earlier(c));
  EXPECT_EQ((*s)->Segments().size(), 2u);
  // Registered again: live in this run, still in the file.
  ASSERT_TRUE((*s)->AddSegment(a, {1000, 100, 0640}).ok());
  EXPECT_FALSE((*s)->Earlier(a));
  // The grace ran out: b did not come back and goes with the next write.
  (*s)->DropEarlier();
  uint32_t d = *(*s)->NextLocal();
  ASSERT_TRUE((*s)->AddSegment(d, {7, 7, 0600}).ok());
  auto again = NodeState::Open(dir_, 4);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->Segments(), (std::map<uint32_t, NodeState::SegmentOwner>{
                                      {a, {1000, 100, 0640}}, {d, {7, 7, 0600}}}));
}

TEST_F(NodeStateTest, AVersion1FileHasNoSegments) {
  WriteFile("tether-state 1\nnode 1\nepoch 0x5\nreserved 9\n");
  auto s = NodeState::Open(dir_, 1);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->epoch(), 5u);
  EXPECT_EQ((*s)->first_local(), 9u);
  EXPECT_TRUE((*s)->Segments().empty());
  EXPECT_FALSE((*s)->Earlier(3));
}

TEST_F(NodeStateTest, ACorruptSegmentTableIsAClearError) {
  const std::string head = "tether-state 2\nnode 1\nepoch 0x5\nreserved 9\n";
  for (const std::string bad :
       {"segment 3 1000 100\n", "segment 3 1000 100 0600 x\n", "segment x 1000 100 0600\n",
        "segment 3 1000 100 0800\n", "segment 3 1000 100 01777\n", "segment 0 1000 100 0600\n",
        "segment 9 1000 100 0600\n",  // not below the reservation: never made
        "segment 3 4294967296 100 0600\n", "segment 3 1000 100 0600\nsegment 3 1 1 0600\n",
        "segmnt 3 1000 100 0600\n"}) {
    WriteFile(head + bad);
    auto s = NodeState::Open(dir_, 1);
    ASSERT_FALSE(s.ok()) << "accepted: " << bad;
    EXPECT_EQ(ToErrno(s.status()), EINVAL);
    EXPECT_NE(s.status().message().find("corrupt"), std::string::npos) << s.status();
    EXPECT_NE(s.status().message().find("is not \"segment LOCAL"), std::string::npos) << s.status();
    EXPECT_EQ(Read(), head + bad);  // nothing changed: the operator decides
  }
  // A version-1 file has no table.
  WriteFile("tether-state 1\nnode 1\nepoch 0x5\nreserved 9\nsegment 3 1000 100 0600\n");
  EXPECT_FALSE(NodeState::Open(dir_, 1).ok());
}

TEST_F(NodeStateTest, AnotherNodesFileIsRefused) {
  ASSERT_TRUE(NodeState::Open(dir_, 2).ok());
  auto s = NodeState::Open(dir_, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("belongs to node 2"), std::string::npos) << s.status();
}

TEST_F(NodeStateTest, MissingDirectoryIsAnError) {
  auto s = NodeState::Open(dir_ + "/nope", 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("state file"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace tether
