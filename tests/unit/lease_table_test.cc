// The lease bookkeeping on both sides (daemon/invalidation/lease_table.h),
// driven by a FakeClock: when a mapper's lease ends, when a home believes
// it ends, when renewals are due.
#include "daemon/invalidation/lease_table.h"

#include <gtest/gtest.h>

namespace tether {
namespace {

constexpr absl::Duration kLease = absl::Milliseconds(900);
const LeaseConfig kConfig{kLease, 0.1};

TEST(HomeLeaseTableTest, ALeaseEndsLeaseTimesOnePlusMarginAfterTheGrant) {
  FakeClock clock;
  HomeLeaseTable home(kConfig, &clock);
  EXPECT_EQ(home.ExpiresAt(2), absl::InfinitePast());  // never granted: nothing to wait for
  absl::Time t0 = clock.Now();
  home.Granted(2);
  EXPECT_EQ(home.ExpiresAt(2), t0 + absl::Milliseconds(990));
  clock.Advance(absl::Milliseconds(300));
  home.Granted(2);
  EXPECT_EQ(home.ExpiresAt(2), t0 + absl::Milliseconds(1290));
  EXPECT_EQ(home.ExpiresAt(3), absl::InfinitePast());
}

TEST(HomeLeaseTableTest, LeasesOffNeverMakeTheHomeWait) {
  FakeClock clock;
  HomeLeaseTable home(LeaseConfig{}, &clock);
  home.Granted(2);
  EXPECT_EQ(home.ExpiresAt(2), absl::InfinitePast());
}

TEST(MapperLeaseTableTest, ALeaseRunsLeaseTimesOneMinusMarginFromTheSend) {
  FakeClock clock;
  MapperLeaseTable m(kConfig, &clock);
  EXPECT_TRUE(m.Lapsed(1));  // never granted
  absl::Time sent = clock.Now();
  clock.Advance(absl::Milliseconds(200));  // the answer took this long
  m.Granted(1, sent, kLease);
  EXPECT_EQ(m.ValidUntil(1), sent + absl::Milliseconds(810));
  clock.Set(sent + absl::Milliseconds(809));
  EXPECT_FALSE(m.Lapsed(1));
  clock.Set(sent + absl::Milliseconds(810));
  EXPECT_TRUE(m.Lapsed(1));
}

// The safety argument: the request leaves before the home grants it, so
// whatever the delays, the mapper's lease ends before the home's.
TEST(MapperLeaseTableTest, TheMappersLeaseEndsBeforeTheHomesForAnyDelay) {
  for (int delay_ms : {0, 1, 50, 400, 899}) {
    FakeClock clock;
    MapperLeaseTable m(kConfig, &clock);
    HomeLeaseTable home(kConfig, &clock);
    absl::Time sent = clock.Now();
    clock.Advance(absl::Milliseconds(delay_ms));
    home.Granted(2);
    clock.Advance(absl::Milliseconds(delay_ms));
    m.Granted(1, sent, kLease);
    EXPECT_LT(m.ValidUntil(1), home.ExpiresAt(2)) << delay_ms;
    // ... by at least the margins, even if the home's clock ran 10% slow
    EXPECT_LE(m.ValidUntil(1) - sent, (home.ExpiresAt(2) - sent) * (1 - 0.1)) << delay_ms;
  }
}

TEST(MapperLeaseTableTest, RenewalsAreDueAThirdInAndOneAtATime) {
  FakeClock clock;
  MapperLeaseTable m(kConfig, &clock);
  absl::Time t0 = clock.Now();
  m.Granted(1, t0, kLease);
  EXPECT_TRUE(m.StartRenewals({1}).empty());
  EXPECT_EQ(m.NextEvent({1}), t0 + absl::Milliseconds(300));
  clock.Advance(absl::Milliseconds(300));
  auto due = m.StartRenewals({1});
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].first, 1u);
  EXPECT_EQ(due[0].second, t0 + absl::Milliseconds(300));
  EXPECT_TRUE(m.StartRenewals({1}).empty());  // in flight
  m.Renewed(1, due[0].second, kLease);
  EXPECT_EQ(m.ValidUntil(1), t0 + absl::Milliseconds(300 + 810));
  EXPECT_TRUE(m.StartRenewals({1}).empty());  // not due again yet
}

TEST(MapperLeaseTableTest, AFailedRenewalIsRetriedAndTheLeaseLapsesWithoutOne) {
  FakeClock clock;
  MapperLeaseTable m(kConfig, &clock);
  absl::Time t0 = clock.Now();
  m.Granted(1, t0, kLease);
  clock.Advance(absl::Milliseconds(300));
  ASSERT_EQ(m.StartRenewals({1}).size(), 1u);
  m.RenewFailed(1);
  EXPECT_EQ(m.StartRenewals({1}).size(), 1u);  // at once: it is overdue
  m.RenewFailed(1);
  clock.Set(t0 + absl::Milliseconds(810));
  EXPECT_TRUE(m.Lapsed(1));
  // a renewal answered late counts from its own send, not from the answer
  m.Renewed(1, t0 + absl::Milliseconds(300), kLease);
  EXPECT_EQ(m.ValidUntil(1), t0 + absl::Milliseconds(1110));
}

TEST(MapperLeaseTableTest, AHomeWithLeasesOffNeverLapses) {
  FakeClock clock;
  MapperLeaseTable m(kConfig, &clock);
  m.Granted(1, clock.Now(), absl::ZeroDuration());
  clock.Advance(absl::Hours(1));
  EXPECT_FALSE(m.Lapsed(1));
  EXPECT_EQ(m.StartRenewals({1}).size(), 1u);  // still renewed: a restart is noticed
}

TEST(MapperLeaseTableTest, LeasesOffHereMeanNothingLapsesAndNothingIsSent) {
  FakeClock clock;
  MapperLeaseTable m(LeaseConfig{}, &clock);
  m.Granted(1, clock.Now(), kLease);
  clock.Advance(absl::Hours(1));
  EXPECT_FALSE(m.Lapsed(1));
  EXPECT_TRUE(m.StartRenewals({1}).empty());
  EXPECT_EQ(m.NextEvent({1}), absl::InfiniteFuture());
}

TEST(MapperLeaseTableTest, NextEventIsTheEarliestRenewalOrExpiry) {
  FakeClock clock;
  MapperLeaseTable m(kConfig, &clock);
  absl::Time t0 = clock.Now();
  m.Granted(1, t0, kLease);
  m.Granted(2, t0 + absl::Milliseconds(100), kLease);
  EXPECT_EQ(m.NextEvent({1, 2}), t0 + absl::Milliseconds(300));
  EXPECT_EQ(m.NextEvent({2}), t0 + absl::Milliseconds(400));
  clock.Advance(absl::Milliseconds(300));
  ASSERT_EQ(m.StartRenewals({1}).size(), 1u);  // in flight: only its expiry is due
  EXPECT_EQ(m.NextEvent({1}), t0 + absl::Milliseconds(810));
  EXPECT_EQ(m.NextEvent({3}), absl::InfinitePast());  // never granted: due now
  // lapsed with its renewal in flight: nothing is due (the keeper must not
  // spin on an expiry that has passed)
  clock.Advance(absl::Milliseconds(600));
  EXPECT_TRUE(m.Lapsed(1));
  EXPECT_EQ(m.NextEvent({1}), absl::InfiniteFuture());
}

}  // namespace
}  // namespace tether
