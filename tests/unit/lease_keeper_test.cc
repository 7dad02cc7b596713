// LeaseKeeper (mapper/lease_keeper.h) with a FakeClock, a fake renewer
// whose answers the test gives, and a real AttachmentTable: which homes it
// renews and when, and which attachments it revokes — on a lapse, on a
// renewal from a restarted home, on a renewal that lists a fence.
#include "daemon/mapper/lease_keeper.h"

#include <algorithm>
#include <map>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "daemon/common/segid.h"

namespace tether {
namespace {

constexpr absl::Duration kLease = absl::Milliseconds(900);
constexpr uint32_t kSelf = 1;
constexpr uint32_t kIncarnation = 0x42;

// Renewals wait here until the test answers them. Thread-safe: EnsureLease
// sends from another thread than the test's.
class FakeRenewer : public LeaseRenewer {
 public:
  void Renew(uint32_t home, absl::Duration, Done done) override {
    absl::MutexLock lock(&mu);
    calls.emplace_back(home, std::move(done));
  }
  void RenewReclaiming(uint32_t home, absl::Duration d, std::vector<HeldGrant> grants,
                       Done done) override {
    {
      absl::MutexLock lock(&mu);
      reclaimed.push_back(grants);
    }
    Renew(home, d, std::move(done));
  }
  std::vector<std::vector<HeldGrant>> reclaimed ABSL_GUARDED_BY(mu);
  // Answers the oldest pending renewal to `home`.
  void Answer(uint32_t home, absl::StatusOr<LeaseRenewal> r) {
    Done d;
    {
      absl::MutexLock lock(&mu);
      for (auto it = calls.begin(); it != calls.end(); ++it) {
        if (it->first != home) continue;
        d = std::move(it->second);
        calls.erase(it);
        break;
      }
    }
    if (!d) {
      ADD_FAILURE() << "no renewal to node " << home << " pending";
      return;
    }
    std::move(d)(std::move(r));
  }
  int Pending(uint32_t home) {
    absl::MutexLock lock(&mu);
    int n = 0;
    for (const auto& c : calls) n += c.first == home;
    return n;
  }
  bool WaitForCall(uint32_t home) {
    absl::MutexLock lock(&mu);
    auto has = [this, home]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      for (const auto& c : calls)
        if (c.first == home) return true;
      return false;
    };
    return mu.AwaitWithTimeout(absl::Condition(&has), absl::Seconds(10));
  }
  size_t Calls() {
    absl::MutexLock lock(&mu);
    return calls.size();
  }
  absl::Mutex mu;
  std::vector<std::pair<uint32_t, Done>> calls ABSL_GUARDED_BY(mu);
};

class LeaseKeeperTest : public ::testing::Test {
 protected:
  std::shared_ptr<Attachment> Attach(uint32_t home, uint32_t local,
                                     uint32_t incarnation = kIncarnation) {
    auto att = std::make_shared<Attachment>();
    att->home = home;
    att->segid = MakeSegid(home, incarnation, local);
    atts_.Insert(att, /*owner=*/1, /*apid=*/local);
    return att;
  }
  LeaseRenewal Answer(uint64_t incarnation = kIncarnation) {
    LeaseRenewal r;
    r.incarnation = incarnation;
    r.lease = kLease;
    return r;
  }
  std::string Why(const std::shared_ptr<Attachment>& att) {
    auto it = revoked_.find(att->id);
    return it == revoked_.end() ? "" : it->second;
  }

  FakeClock clock_;
  MapperLeaseTable leases_{LeaseConfig{kLease, 0.1}, &clock_};
  FakeRenewer renewer_;
  AttachmentTable atts_{7};
  std::map<uint64_t, std::string> revoked_;
  std::vector<uint32_t> homes_in_use_;
  LeaseKeeper keeper_{
      kSelf,
      &leases_,
      &renewer_,
      &atts_,
      [this](Attachment& att, const std::string& why) { revoked_.emplace(att.id, why); },
      [this] { return homes_in_use_; }};
};

TEST_F(LeaseKeeperTest, RenewsEachHomeInUseEveryThirdOfTheLease) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);  // the attach's grant
  leases_.Granted(3, t0, kLease);
  Attach(2, 1);
  homes_in_use_ = {3, kSelf};  // a grant without attachments; this node's own is no lease
  EXPECT_EQ(keeper_.Tick(), t0 + absl::Milliseconds(300));
  EXPECT_EQ(renewer_.Calls(), 0u);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  EXPECT_EQ(renewer_.Pending(2), 1);
  EXPECT_EQ(renewer_.Pending(3), 1);
  EXPECT_EQ(renewer_.Pending(kSelf), 0);
  keeper_.Tick();  // one at a time
  EXPECT_EQ(renewer_.Calls(), 2u);
  renewer_.Answer(2, Answer());
  renewer_.Answer(3, Answer());
  EXPECT_EQ(leases_.ValidUntil(2), t0 + absl::Milliseconds(300 + 810));
  // a home nobody uses any more is not renewed
  homes_in_use_.clear();
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  EXPECT_EQ(renewer_.Pending(2), 1);
  EXPECT_EQ(renewer_.Pending(3), 0);
  EXPECT_TRUE(revoked_.empty());
}

TEST_F(LeaseKeeperTest, ALapsedLeaseRevokesEveryAttachmentFromThatHome) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  leases_.Granted(3, t0, kLease);
  auto a = Attach(2, 1), b = Attach(2, 2), c = Attach(3, 3);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  renewer_.Answer(2, absl::UnavailableError("cut off"));
  renewer_.Answer(3, Answer());
  clock_.Set(t0 + absl::Milliseconds(809));
  keeper_.Tick();  // node 2: retried, still unanswered; its lease still runs
  ASSERT_EQ(renewer_.Pending(2), 1);
  EXPECT_TRUE(revoked_.empty());
  clock_.Set(t0 + absl::Milliseconds(810));
  keeper_.Tick();
  EXPECT_NE(Why(a).find("lease from node 2 ran out"), std::string::npos) << Why(a);
  EXPECT_NE(Why(b).find("lease from node 2 ran out"), std::string::npos) << Why(b);
  EXPECT_EQ(Why(c), "");  // node 3 answered
  // an answer that comes after the lapse does not bring them back; a new
  // attach (which grants a lease) is not revoked
  renewer_.Answer(2, Answer());
  revoked_.clear();
  leases_.Granted(2, clock_.Now(), kLease);
  auto d = Attach(2, 4);
  keeper_.Tick();
  EXPECT_EQ(Why(d), "");
}

TEST_F(LeaseKeeperTest, ARestartedHomeRevokesItsOldSegmentsAtOnce) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  auto a = Attach(2, 1);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  renewer_.Answer(2, Answer(kIncarnation + 1));  // long before the lease ends
  EXPECT_NE(Why(a).find("node 2 restarted"), std::string::npos) << Why(a);
}

TEST_F(LeaseKeeperTest, ARenewalListingAFenceRevokesThatSegmentBeforeTheLeaseCounts) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  auto a = Attach(2, 1), b = Attach(2, 2);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  LeaseRenewal r = Answer();
  r.fenced.emplace_back(a->segid, "node 1 did not acknowledge");
  renewer_.Answer(2, r);
  EXPECT_EQ(Why(a), "fenced: node 1 did not acknowledge");
  EXPECT_EQ(Why(b), "");
  EXPECT_EQ(leases_.ValidUntil(2), t0 + absl::Milliseconds(300 + 810));
}

TEST_F(LeaseKeeperTest, LeasesOffRevokeNothingAndSendNothing) {
  MapperLeaseTable off(LeaseConfig{}, &clock_);
  LeaseKeeper keeper(
      kSelf, &off, &renewer_, &atts_,
      [this](Attachment& att, const std::string& why) { revoked_.emplace(att.id, why); }, nullptr);
  Attach(2, 1);
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(keeper.Tick(), absl::InfiniteFuture());
  EXPECT_EQ(renewer_.Calls(), 0u);
  EXPECT_TRUE(revoked_.empty());
  EXPECT_TRUE(keeper.EnsureLease(2).ok());
}

// Restart handling (what tetherd wires): the keeper's decisions, with the
// suspension, resumption and grants as recorded calls.
class RestartKeeperTest : public LeaseKeeperTest {
 protected:
  void SetUp() override {
    LeaseKeeper::RestartHandling h;
    h.grace = absl::Seconds(2);
    h.held_grants = [this](uint32_t home) {
      std::vector<HeldGrant> v;
      for (const auto& att : atts_.FromHome(home)) v.push_back(HeldGrant{att->segid, 77, true});
      return v;
    };
    h.suspend = [this](Attachment& att) { suspended_.push_back(att.id); };
    h.resume = [this](Attachment& att, bool restarted) {
      resumed_.emplace_back(att.id, restarted);
    };
    h.forget_endpoint = [this](uint32_t home) { forgotten_.push_back(home); };
    keeper_.SetRestartHandling(std::move(h));
  }
  LeaseRenewal Answer(uint64_t incarnation, uint32_t epoch) {
    LeaseRenewal r = LeaseKeeperTest::Answer(incarnation);
    r.epoch = epoch;
    return r;
  }
  size_t Reclaims() {
    absl::MutexLock lock(&renewer_.mu);
    return renewer_.reclaimed.size();
  }
  std::vector<uint64_t> suspended_;
  std::vector<std::pair<uint64_t, bool>> resumed_;
  std::vector<uint32_t> forgotten_;
};

TEST_F(RestartKeeperTest, ALapsedLeaseSuspendsAndRevokesOnlyAfterTheGrace) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  auto a = Attach(2, 1);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  renewer_.Answer(2, absl::UnavailableError("home down"));
  clock_.Set(t0 + absl::Milliseconds(810));
  keeper_.Tick();
  EXPECT_EQ(suspended_, std::vector<uint64_t>{a->id});  // no copy served any more
  EXPECT_EQ(Why(a), "");                                // but not revoked: it may be restarting
  clock_.Set(t0 + absl::Milliseconds(810 + 1999));
  keeper_.Tick();
  EXPECT_EQ(Why(a), "");
  clock_.Set(t0 + absl::Milliseconds(810 + 2000));
  keeper_.Tick();
  EXPECT_NE(Why(a).find("restart grace"), std::string::npos) << Why(a);
  EXPECT_TRUE(resumed_.empty());
}

TEST_F(RestartKeeperTest, TheSameHomeAnsweringAgainResumesWhatItDidNotFence) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  auto a = Attach(2, 1), b = Attach(2, 2);
  keeper_.NoteIncarnation(2, kIncarnation);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  renewer_.Answer(2, absl::UnavailableError("cut off"));
  clock_.Set(t0 + absl::Milliseconds(810));
  keeper_.Tick();
  ASSERT_EQ(suspended_.size(), 2u);
  ASSERT_TRUE(renewer_.WaitForCall(2));
  LeaseRenewal r = Answer(kIncarnation, kIncarnation);
  r.fenced.emplace_back(a->segid, "missed a range_begin");
  renewer_.Answer(2, r);
  EXPECT_EQ(Why(a), "fenced: missed a range_begin");
  keeper_.Tick();  // the resumes run on the keeper's thread
  EXPECT_EQ(Why(b), "");
  std::vector<std::pair<uint64_t, bool>> want{{b->id, false}};
  EXPECT_EQ(resumed_, want);
  EXPECT_EQ(Reclaims(), 0u);  // not restarted: its grants are still there
}

TEST_F(RestartKeeperTest, ARestartedHomeWithItsEpochIsSuspendedReclaimedAndResumed) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  auto a = Attach(2, 1), b = Attach(2, 2);
  keeper_.NoteIncarnation(2, kIncarnation);  // the attach's answer
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  // Answered by a new run with the same segment epoch, long before the
  // lease ends: suspended before the new lease counts, grants handed back.
  renewer_.Answer(2, Answer(kIncarnation + 7, kIncarnation));
  EXPECT_EQ(Why(a), "");
  EXPECT_EQ(Why(b), "");
  EXPECT_EQ(suspended_.size(), 2u);
  EXPECT_EQ(forgotten_, std::vector<uint32_t>{2});  // its data port and token are new
  ASSERT_EQ(Reclaims(), 1u);
  {
    absl::MutexLock lock(&renewer_.mu);
    EXPECT_EQ(renewer_.reclaimed[0].size(), 2u);
  }
  // The home has b back already; a's exporter has not registered it yet.
  LeaseRenewal r = Answer(kIncarnation + 7, kIncarnation);
  r.pending.push_back(a->segid);
  renewer_.Answer(2, r);
  keeper_.Tick();
  std::vector<std::pair<uint64_t, bool>> want{{b->id, true}};
  EXPECT_EQ(resumed_, want);
  // The next renewal hands a's grant back again; now the home has it.
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  ASSERT_EQ(Reclaims(), 2u);
  renewer_.Answer(2, Answer(kIncarnation + 7, kIncarnation));
  keeper_.Tick();
  // a resumed now (b again too: harmless, its suspension has ended)
  ASSERT_EQ(resumed_.size(), 3u);
  EXPECT_EQ(std::count(resumed_.begin(), resumed_.end(), std::make_pair(a->id, true)), 1);
  // Reclaimed: the renewals after are plain ones.
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  renewer_.Answer(2, Answer(kIncarnation + 7, kIncarnation));
  EXPECT_EQ(Reclaims(), 2u);
  EXPECT_TRUE(revoked_.empty());
}

TEST_F(RestartKeeperTest, ARestartedHomeThatDoesNotTakeASegmentBackRevokesIt) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  auto a = Attach(2, 1);
  keeper_.NoteIncarnation(2, kIncarnation);
  clock_.Advance(absl::Milliseconds(300));
  keeper_.Tick();
  renewer_.Answer(2, Answer(kIncarnation + 7, kIncarnation));
  LeaseRenewal r = Answer(kIncarnation + 7, kIncarnation);
  r.gone.emplace_back(a->segid, "no segment");
  renewer_.Answer(2, r);
  EXPECT_NE(Why(a).find("did not take the segment back: no segment"), std::string::npos) << Why(a);
}

// A grant whose tether_get took most of the lease (a home reconnecting
// after a partition): the attach renews first instead of handing out an
// attachment that the next pass would revoke.
TEST_F(LeaseKeeperTest, AnAttachWaitsForARenewalWhenLittleOfTheLeaseIsLeft) {
  absl::Time t0 = clock_.Now();
  leases_.Granted(2, t0, kLease);
  EXPECT_TRUE(keeper_.EnsureLease(2).ok());  // fresh: no renewal
  EXPECT_EQ(renewer_.Calls(), 0u);
  EXPECT_TRUE(keeper_.EnsureLease(kSelf).ok());  // this node's own segments need none
  clock_.Advance(absl::Milliseconds(600));       // 210 ms left: less than a third
  absl::Status st;
  std::thread attach([&] { st = keeper_.EnsureLease(2); });
  ASSERT_TRUE(renewer_.WaitForCall(2));
  renewer_.Answer(2, Answer());
  attach.join();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(leases_.ValidUntil(2), t0 + absl::Milliseconds(600 + 810));
}

TEST_F(LeaseKeeperTest, AnAttachFailsWhenTheHomeDoesNotRenew) {
  leases_.Granted(2, clock_.Now(), kLease);
  clock_.Advance(absl::Milliseconds(900));  // lapsed
  absl::Status st;
  std::thread attach([&] { st = keeper_.EnsureLease(2); });
  // Every renewal fails; EnsureLease retries until one lease of real time.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(renewer_.WaitForCall(2));
    renewer_.Answer(2, absl::UnavailableError("cut off"));
  }
  attach.join();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("no lease from node 2"), std::string::npos) << st;
}

}  // namespace
}  // namespace tether
