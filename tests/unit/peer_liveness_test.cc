// PeerLiveness (transport/peer_liveness.h): when a requester sends a
// heartbeat, when it gives a silent home up, and when a home gives a
// silent requester up. Times come from a FakeClock the test moves: every
// "the timeout passed" is an explicit step.
#include "daemon/transport/peer_liveness.h"

#include <gtest/gtest.h>

#include "daemon/common/clock.h"

namespace tether {
namespace {

using Action = PeerLiveness::Action;
using Role = PeerLiveness::Role;

constexpr absl::Duration kInterval = absl::Seconds(1), kTimeout = absl::Seconds(5);

class PeerLivenessTest : public ::testing::Test {
 protected:
  PeerLiveness Make(Role role) { return PeerLiveness(role, {kInterval, kTimeout}, clock_.Now()); }
  FakeClock clock_;
};

TEST_F(PeerLivenessTest, AQuietRequesterSendsAHeartbeatAfterTheInterval) {
  PeerLiveness l = Make(Role::kRequester);
  clock_.Advance(kInterval - absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kNone);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kSendHeartbeat);
  l.HeartbeatSent(clock_.Now());
  EXPECT_TRUE(l.heartbeat_outstanding());
  // Answered: quiet again, the next one an interval later.
  clock_.Advance(absl::Milliseconds(30));
  l.HeartbeatAnswered(clock_.Now());
  EXPECT_FALSE(l.heartbeat_outstanding());
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kNone);
  clock_.Advance(kInterval);
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kSendHeartbeat);
}

// A home that stopped answering (its daemon crashed or was stopped while
// its adapter still acknowledges): the unanswered heartbeat kills the
// connection at the timeout, counted from when it was sent.
TEST_F(PeerLivenessTest, AnUnansweredHeartbeatMakesTheHomeDeadAtTheTimeout) {
  PeerLiveness l = Make(Role::kRequester);
  clock_.Advance(kInterval);
  ASSERT_EQ(l.Check(clock_.Now(), false), Action::kSendHeartbeat);
  l.HeartbeatSent(clock_.Now());
  clock_.Advance(kTimeout - absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kNone);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kDead);
  EXPECT_NE(l.DeadReason(clock_.Now()).find("heartbeat unanswered"), std::string::npos)
      << l.DeadReason(clock_.Now());
}

// A request posted after a long quiet spell gets its full timeout: the
// deadline counts from when it was seen outstanding, not from the last
// answer heard long before.
TEST_F(PeerLivenessTest, ARequestsDeadlineCountsFromItsPosting) {
  PeerLiveness l = Make(Role::kRequester);
  l.Heard(clock_.Now());
  clock_.Advance(10 * kTimeout);  // quiet (heartbeats aside)
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone) << "just posted";
  clock_.Advance(kTimeout - absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kDead);
}

// A busy connection whose home keeps answering lives however long the
// requests keep coming; one silent stretch of `timeout` kills it.
TEST_F(PeerLivenessTest, AnswersKeepABusyConnectionAlive) {
  PeerLiveness l = Make(Role::kRequester);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone) << i;
    clock_.Advance(kTimeout / 2);
    l.Heard(clock_.Now());
  }
  clock_.Advance(kTimeout);
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kDead);
}

// No heartbeat while requests are outstanding (they are the probe), and
// the deadline of requests that became outstanding again restarts.
TEST_F(PeerLivenessTest, NoHeartbeatWhileBusyAndTheDeadlineRestartsAfterQuiet) {
  PeerLiveness l = Make(Role::kRequester);
  clock_.Advance(3 * kInterval);
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone);
  clock_.Advance(kTimeout - absl::Seconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone);
  l.Heard(clock_.Now());
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kNone) << "answered: quiet";
  clock_.Advance(absl::Milliseconds(500));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone);
  clock_.Advance(kTimeout - absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kDead);
}

// A home hears a live requester at least every interval (requests,
// heartbeats, completions); a crashed or cut-off one is dead at the
// timeout, and the home never sends heartbeats itself.
TEST_F(PeerLivenessTest, AHomeGivesASilentRequesterUpAtTheTimeout) {
  PeerLiveness l = Make(Role::kHome);
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(kInterval);
    EXPECT_EQ(l.Check(clock_.Now(), false), Action::kNone);
    l.Heard(clock_.Now());
  }
  clock_.Advance(kTimeout - absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), true), Action::kNone);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(l.Check(clock_.Now(), false), Action::kDead);
  EXPECT_NE(l.DeadReason(clock_.Now()).find("requester was silent"), std::string::npos);
}

TEST_F(PeerLivenessTest, PollTimeoutSeesDeadlinesInTimeAndIsNeverBusy) {
  PeerLiveness l = Make(Role::kRequester);
  EXPECT_EQ(l.PollTimeout(clock_.Now()), kInterval);
  PeerLiveness fast(Role::kHome, {absl::Milliseconds(1), absl::Milliseconds(4)}, clock_.Now());
  EXPECT_EQ(fast.PollTimeout(clock_.Now()), absl::Milliseconds(10));
  PeerLiveness tight(Role::kHome, {absl::Seconds(2), absl::Seconds(4)}, clock_.Now());
  EXPECT_EQ(tight.PollTimeout(clock_.Now()), absl::Seconds(1));
}

}  // namespace
}  // namespace tether
