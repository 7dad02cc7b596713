// The protocol simulation as a unit test (tests/sim/README.md).
//
//   Seeds              TETHER_SIM_SEEDS seeds (10000) from TETHER_SIM_FIRST (1);
//                      a failure prints its seed, the violation, the run's
//                      last lines and the command that replays it. With
//                      TETHER_SIM_SEED=N: that seed alone, with its trace
//                      (TETHER_SIM_TRACE=1 prints it even when it passes).
//   Leases             tetherd's leases (the daemon's lease tables, the
//                      coordinator's lease wait, each node's LeaseKeeper):
//                      no stale read of a fenced node is excused.
//   ReplayIsExact      a seed's run is the same run twice.
//   MutationsAreCaught each deliberately broken variant fails the oracle
//                      within a few seeds: the oracle can fail.
//   DefectSeedsTest    the first seeds, which found the defects fixed
//                      last (README), still reach their scenarios; and
//                      with leases, the lease machinery's own.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "tests/unit/kernel_feature.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/common/log.h"
#include "tests/sim/protocol_sim.h"

namespace tether {
namespace sim {
namespace {

uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* v = getenv(name);
  uint64_t out;
  return v && absl::SimpleAtoi(v, &out) ? out : fallback;
}

// The options the environment asks for (README): leases or not.
SimOptions FromEnv(uint64_t seed) {
  SimOptions o;
  o.seed = seed;
  o.leases = EnvU64("TETHER_SIM_LEASES", 0) != 0;
  return o;
}

std::string Describe(const SimOptions& o, const SimResult& r) {
  std::string replay = absl::StrFormat("TETHER_SIM_SEED=%d%s build/asan/tests/protocol_sim_test",
                                       o.seed, o.leases ? " TETHER_SIM_LEASES=1" : "");
  return absl::StrFormat(
      "seed %d (mutation %s%s): %s\n--- the run's last lines ---\n%s\n"
      "--- replay: %s",
      o.seed, MutationName(o.mutation), o.leases ? ", leases" : "", r.violation,
      absl::StrJoin(r.trace, "\n"), replay);
}

void Add(SimStats& total, const SimStats& s) {
  total.events += s.events;
  total.reads += s.reads;
  total.stale_excused += s.stale_excused;
  total.frozen_excused += s.frozen_excused;
  total.put_back_reads += s.put_back_reads;
  total.put_back += s.put_back;
  total.put_back_synced += s.put_back_synced;
  total.notices_resent += s.notices_resent;
  total.ends_resent += s.ends_resent;
  total.changes += s.changes;
  total.fenced += s.fenced;
  total.writes += s.writes;
  total.landed += s.landed;
  total.syncs_ok += s.syncs_ok;
  total.syncs_failed += s.syncs_failed;
  total.crashes += s.crashes;
  total.freezes += s.freezes;
  total.interleaved_reads += s.interleaved_reads;
  total.refused_gone += s.refused_gone;
  total.write_back_waits += s.write_back_waits;
  total.renewals += s.renewals;
  total.renewals_failed += s.renewals_failed;
  total.lapse_revoked += s.lapse_revoked;
  total.renewal_revoked += s.renewal_revoked;
  total.lease_waits += s.lease_waits;
  total.lease_waits_for_others += s.lease_waits_for_others;
  total.fenced_during_lease_wait += s.fenced_during_lease_wait;
  total.max_stall = std::max(total.max_stall, s.max_stall);
}

class ProtocolSimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
    SetLogLevel(LogLevel::kError);  // fencing logs a warning per fenced node
  }

  // Runs seeds [first, first + count); on the first failure, replays it
  // with a trace and fails the test with its description.
  void RunSeeds(uint64_t first, uint64_t count, bool leases) {
    SimStats total;
    absl::Time t0 = absl::Now();
    for (uint64_t seed = first; seed < first + count; ++seed) {
      SimOptions o = FromEnv(seed);
      o.leases = leases;
      SimResult r = RunSimulation(o);
      Add(total, r.stats);
      if (!r.ok) {
        o.trace = true;
        SimResult again = RunSimulation(o);
        EXPECT_EQ(again.violation, r.violation)
            << "the replay differs: the run is not deterministic";
        FAIL() << Describe(o, again);
      }
    }
    absl::PrintF(
        "%d seeds in %.1f s: %d events, %d reads (%d stale reads excused as the documented "
        "fencing gap, %d of own writes put back), %d changes, %d nodes fenced, %d stores, %d "
        "write-backs landed, %d pages put back, syncs %d ok / %d failed, %d notices resent (%d "
        "range_ends), %d crashes, %d freezes, %d reads with events inside, %d write-backs refused "
        "(address unmapped since read), %d Begins waited for a write-back in flight, longest stall "
        "%d "
        "ms\n",
        count, absl::ToDoubleSeconds(absl::Now() - t0), total.events, total.reads,
        total.stale_excused, total.put_back_reads, total.changes, total.fenced, total.writes,
        total.landed, total.put_back, total.syncs_ok, total.syncs_failed, total.notices_resent,
        total.ends_resent, total.crashes, total.freezes, total.interleaved_reads,
        total.refused_gone, total.write_back_waits, absl::ToInt64Milliseconds(total.max_stall));
    if (leases)
      absl::PrintF(
          "leases: %d renewals (%d failed), %d attachments revoked by a lapsed lease, %d by a "
          "renewal naming a fence, %d Begins waited out a fenced node's lease (%d for a fence "
          "not their own, %d while another node was fenced), %d stale reads excused on a "
          "daemon frozen past its lease\n",
          total.renewals, total.renewals_failed, total.lapse_revoked, total.renewal_revoked,
          total.lease_waits, total.lease_waits_for_others, total.fenced_during_lease_wait,
          total.frozen_excused);
  }
};

// Many seeds, or with TETHER_SIM_SEED=N that seed alone with its trace
// (TETHER_SIM_TRACE=1 prints the trace even when it passes).
TEST_F(ProtocolSimTest, Seeds) {
  if (getenv("TETHER_SIM_SEED")) {
    SimOptions o = FromEnv(EnvU64("TETHER_SIM_SEED", 1));
    o.trace = true;
    if (EnvU64("TETHER_SIM_TRACE", 0) != 0) o.trace_lines = size_t{1} << 30;  // all of it
    SimResult r = RunSimulation(o);
    if (EnvU64("TETHER_SIM_TRACE", 0) != 0) absl::PrintF("%s\n", absl::StrJoin(r.trace, "\n"));
    EXPECT_TRUE(r.ok) << Describe(o, r);
    return;
  }
  RunSeeds(EnvU64("TETHER_SIM_FIRST", 1), EnvU64("TETHER_SIM_SEEDS", 10000),
           EnvU64("TETHER_SIM_LEASES", 0) != 0);
}

// tetherd's leases, the daemon's own machinery: no stale read by a fenced
// node is excused (only those of a daemon frozen past its lease, the
// documented gap).
TEST_F(ProtocolSimTest, Leases) {
  if (getenv("TETHER_SIM_SEED")) return;  // Seeds replays it (TETHER_SIM_LEASES=1)
  RunSeeds(EnvU64("TETHER_SIM_FIRST", 1), EnvU64("TETHER_SIM_LEASE_SEEDS", 1000), true);
}

TEST_F(ProtocolSimTest, ReplayIsExact) {
  for (bool leases : {false, true}) {
    for (uint64_t seed : {3u, 77u}) {
      SimOptions o;
      o.seed = seed;
      o.leases = leases;
      o.trace = true;
      SimResult a = RunSimulation(o), b = RunSimulation(o);
      EXPECT_EQ(a.stats.events, b.stats.events) << "seed " << seed << " leases " << leases;
      EXPECT_EQ(a.trace, b.trace) << "seed " << seed << " leases " << leases;
      EXPECT_GT(a.stats.events, 100u) << "seed " << seed << " did nothing";
    }
  }
}

TEST_F(ProtocolSimTest, MutationsAreCaught) {
  // Most are caught within a few seeds; a sync outlived by a window needs
  // a rare long bracket and a sync during it (seed 617; 267 until write-backs
  // in flight at the home were bounded to the model's kWriteInFlight).
  constexpr uint64_t kWithin = 700;
  for (Mutation m : {Mutation::kAckBeforeDrop, Mutation::kInstallStale, Mutation::kDropDirtyAtBegin,
                     Mutation::kForgeAck, Mutation::kIgnoreDeadline, Mutation::kForgetEnd,
                     Mutation::kSyncIgnoresWritingBack, Mutation::kSyncOkPastBudget}) {
    uint64_t caught = 0;
    std::string violation;
    for (uint64_t seed = 1; seed <= kWithin && !caught; ++seed) {
      SimOptions o;
      o.seed = seed;
      o.mutation = m;
      SimResult r = RunSimulation(o);
      if (!r.ok) {
        caught = seed;
        violation = r.violation;
      }
    }
    EXPECT_NE(caught, 0u) << "mutation " << MutationName(m) << " survived " << kWithin
                          << " seeds: the oracle cannot see it";
    absl::PrintF("mutation %-20s caught at seed %d: %s\n", MutationName(m), caught,
                 violation.c_str());
  }
}

// Defects the simulation found (README, "Defects it found"): each test runs
// the first seeds, which reached the defect before its fix (the unit tests
// over the real classes are named in the README), and checks that they
// still reach its scenario: otherwise they could not fail.
class DefectSeedsTest : public ProtocolSimTest {
 protected:
  // Seeds 1..kSeeds; the sum of their stats.
  SimStats RunFirstSeeds(bool leases = false) {
    std::vector<uint64_t> seeds;
    for (uint64_t seed = 1; seed <= kSeeds; ++seed) seeds.push_back(seed);
    return RunSeedList(seeds, leases);
  }
  SimStats RunSeedList(const std::vector<uint64_t>& seeds, bool leases = false) {
    SimStats total;
    for (uint64_t seed : seeds) {
      SimOptions o;
      o.seed = seed;
      o.leases = leases;
      SimResult r = RunSimulation(o);
      Add(total, r.stats);
      if (!r.ok) {
        o.trace = true;
        ADD_FAILURE() << Describe(o, RunSimulation(o));
        break;
      }
    }
    return total;
  }
  static constexpr uint64_t kSeeds = 100;
};

// A range_end lost to a cut link that outlasted its timeout (then the ack
// deadline) left the mapper's window open for good: faults in the range
// waited forever and pages kept aside were never written back (seed 49
// before the fix: "node 3 still has 2 window(s) open at quiescence"). It
// now goes as reliably as a revocation, and a node it misses is fenced.
TEST_F(DefectSeedsTest, ALostRangeEndIsResentSoTheMappersWindowEnds) {
  EXPECT_GT(RunFirstSeeds().ends_resent, 0u) << "no range_end was lost in these seeds";
}

// A kept-aside page put back dirty after its write-back failed had no
// cached mark at the home (its window cleared it; no fetch set it again),
// so once a later sync wrote it back, later windows skipped the node and
// it read its copy after the change (seed 31 before the fix: "node 3 read
// page 1 as of home generation 5, older than the completed change to
// generation 6"). A write-back marks the page now.
TEST_F(DefectSeedsTest, APutBackPageIsInvalidatedLikeAFetchedOne) {
  EXPECT_GT(RunFirstSeeds().put_back_synced, 0u)
      << "no page put back after a window was written back by a sync in these seeds";
}

// Issue 14 (session 9's note, item 1): a write-back held back past a
// change that unmapped its page — a put-back page the change did not ask
// about, a kept-aside write retried through the window — landed in
// whatever the exporter mapped there next (seed 260 before the fix:
// "node 3's write-back of store 7 (made on a copy of generation 4) landed
// on page 4, which a change unmapped at generation 7"). The home refuses
// it (ENXIO) and the node counts the page lost; the oracle checks every
// landing against the page's last unmap. Seeds 1-100 do not reach it;
// seed 601 does since a write-back's time at the home is bounded
// (kWriteInFlight, issue 14's in-flight item), which moved seed 260's run.
TEST_F(DefectSeedsTest, AWriteBackHeldPastAnUnmapIsRefused) {
  EXPECT_GT(RunSeedList({601}).refused_gone, 0u)
      << "seed 601 no longer has a write-back refused as unmapped";
}

// Issue 14's last item: a change whose window opened while a write-back
// of its range was past the home's checks (in flight) waits for it before
// it goes on (seed 1754; 10 of seeds 1-10,000 reach it). The model rarely
// unmaps the page in such a change within a write's time at the home, so
// these seeds pass without the wait too; the unit test
// WriteBackInFlightTest.AnUnmapWaitsForAWriteBackAlreadyPastTheChecks is
// the one that fails without it. This keeps the scenario reached.
TEST_F(DefectSeedsTest, ABeginWaitsForAWriteBackInFlight) {
  EXPECT_GT(RunSeedList({1754}).write_back_waits, 0u)
      << "seed 1754 no longer has a Begin wait for a write-back in flight";
}

// With leases, a Begin waited for every node fenced on the segment until
// its lease ran out — also nodes fenced after its own fan-out had ended,
// by later Begins: a string of nodes going silent one after the other
// held the exporter's call past the documented bound, deadline + lease x
// (1 + margin) (seed 58 before the fix: "change 14: Begin returned after
// 3988ms, past the deadline plus a fenced node's lease (3893ms) (G2)").
// A Begin now waits only for the fences made up to the end of its fan-out.
TEST_F(DefectSeedsTest, ABeginWaitsOnlyForFencesMadeBeforeItsFanOutEnded) {
  SimStats s = RunFirstSeeds(/*leases=*/true);
  EXPECT_GT(s.fenced_during_lease_wait, 0u)
      << "no node was fenced while a Begin waited out a lease in these seeds";
}

// The mapper's own revocation when its lease runs out (LeaseKeeper::Tick),
// which the simulation modelled before it drove the keeper: a node cut off
// from the home cannot get its REVOKE, and the home lets the exporter go
// on once the node's lease has run out, so the node must have stopped
// serving its pages by then (with Tick's revocation removed, a stale read
// by a cut-off node follows within these seeds). Checks that the keeper
// did revoke on a lapsed lease in them.
TEST_F(DefectSeedsTest, ANodeWhoseLeaseRunsOutRevokesItself) {
  EXPECT_GT(RunFirstSeeds(/*leases=*/true).lapse_revoked, 0u)
      << "no lease ran out with attachments held in these seeds";
}

}  // namespace
}  // namespace sim
}  // namespace tether
