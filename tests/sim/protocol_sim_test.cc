// The protocol simulation as a unit test (tests/sim/README.md).
//
//   Seeds              TETHER_SIM_SEEDS seeds (10000) from TETHER_SIM_FIRST (1);
//                      a failure prints its seed, the violation, the run's
//                      last lines and the command that replays it. With
//                      TETHER_SIM_SEED=N: that seed alone, with its trace
//                      (TETHER_SIM_TRACE=1 prints it even when it passes).
//   ModelLeases        the lease model: the oracle excuses no stale read.
//   ReplayIsExact      a seed's run is the same run twice.
//   MutationsAreCaught each deliberately broken variant fails the oracle
//                      within a few seeds: the oracle can fail.
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

// The options the environment asks for (README): the known defects made
// strict, the lease model.
SimOptions FromEnv(uint64_t seed) {
  SimOptions o;
  o.seed = seed;
  o.model_leases = EnvU64("TETHER_SIM_LEASES", 0) != 0;
  o.lossy_range_end = EnvU64("TETHER_SIM_LOSSY_END", 0) != 0;
  o.strict_unmarked_copies = EnvU64("TETHER_SIM_STRICT_UNMARKED", 0) != 0;
  return o;
}

std::string Describe(const SimOptions& o, const SimResult& r) {
  std::string replay =
      absl::StrFormat("TETHER_SIM_SEED=%d%s%s%s build/asan/tests/protocol_sim_test", o.seed,
                      o.model_leases ? " TETHER_SIM_LEASES=1" : "",
                      o.lossy_range_end ? " TETHER_SIM_LOSSY_END=1" : "",
                      o.strict_unmarked_copies ? " TETHER_SIM_STRICT_UNMARKED=1" : "");
  return absl::StrFormat(
      "seed %d (mutation %s%s): %s\n--- the run's last lines ---\n%s\n"
      "--- replay: %s",
      o.seed, MutationName(o.mutation), o.model_leases ? ", lease model" : "", r.violation,
      absl::StrJoin(r.trace, "\n"), replay);
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
      o.model_leases = leases;
      SimResult r = RunSimulation(o);
      total.events += r.stats.events;
      total.reads += r.stats.reads;
      total.stale_excused += r.stats.stale_excused;
      total.put_back_reads += r.stats.put_back_reads;
      total.unmarked_stale_reads += r.stats.unmarked_stale_reads;
      total.changes += r.stats.changes;
      total.fenced += r.stats.fenced;
      total.writes += r.stats.writes;
      total.landed += r.stats.landed;
      total.syncs_ok += r.stats.syncs_ok;
      total.syncs_failed += r.stats.syncs_failed;
      total.crashes += r.stats.crashes;
      total.freezes += r.stats.freezes;
      total.interleaved_reads += r.stats.interleaved_reads;
      total.max_stall = std::max(total.max_stall, r.stats.max_stall);
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
        "fencing gap, %d of own writes put back, %d stale reads of unmarked put-back copies: "
        "known defect), %d changes, %d nodes fenced, %d stores, %d "
        "write-backs landed, syncs %d ok / %d failed, %d crashes, %d freezes, %d reads with "
        "events inside, longest stall %d ms\n",
        count, absl::ToDoubleSeconds(absl::Now() - t0), total.events, total.reads,
        total.stale_excused, total.put_back_reads, total.unmarked_stale_reads, total.changes,
        total.fenced, total.writes, total.landed, total.syncs_ok, total.syncs_failed, total.crashes,
        total.freezes, total.interleaved_reads, absl::ToInt64Milliseconds(total.max_stall));
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

// The lease model: no stale read is excused.
TEST_F(ProtocolSimTest, ModelLeases) {
  if (getenv("TETHER_SIM_SEED")) return;  // Seeds replays it
  RunSeeds(EnvU64("TETHER_SIM_FIRST", 1), EnvU64("TETHER_SIM_LEASE_SEEDS", 1000), true);
}

TEST_F(ProtocolSimTest, ReplayIsExact) {
  for (uint64_t seed : {3u, 77u}) {
    SimOptions o;
    o.seed = seed;
    o.trace = true;
    SimResult a = RunSimulation(o), b = RunSimulation(o);
    EXPECT_EQ(a.stats.events, b.stats.events) << "seed " << seed;
    EXPECT_EQ(a.trace, b.trace) << "seed " << seed;
    EXPECT_GT(a.stats.events, 100u) << "seed " << seed << " did nothing";
  }
}

TEST_F(ProtocolSimTest, MutationsAreCaught) {
  // Most are caught within a few seeds; a sync outlived by a window needs
  // a rare long bracket and a sync during it (seed 267).
  constexpr uint64_t kWithin = 400;
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

// Known defects the simulation finds (README, "Known defects"), not fixed
// on this branch. Each test fails today and names the seed; run with
// --gtest_also_run_disabled_tests. When a defect is fixed, its test is
// enabled and its SimOptions knob becomes the default.

// A range_end lost to a cut link that outlasts its timeout (the ack
// deadline) leaves the mapper's window open for good: faults in the range
// wait forever and pages kept aside are never written back.
TEST_F(ProtocolSimTest, DISABLED_ALostRangeEndLeavesTheMapperWindowOpen) {
  uint64_t failed = 0;
  for (uint64_t seed = 1; seed <= 400 && !failed; ++seed) {
    SimOptions o;
    o.seed = seed;
    o.lossy_range_end = true;
    SimResult r = RunSimulation(o);
    if (!r.ok) {
      failed = seed;
      o.trace = true;
      ADD_FAILURE() << Describe(o, RunSimulation(o));
    }
  }
  EXPECT_EQ(failed, 0u);
}

// A kept-aside page put back dirty after its write-back failed has no
// cached mark at the home (its window cleared it; no fetch set it again),
// so later windows skip the node and it reads its copy after the change.
TEST_F(ProtocolSimTest, DISABLED_APutBackPageIsInvalidatedLikeAFetchedOne) {
  uint64_t failed = 0;
  for (uint64_t seed = 1; seed <= 2000 && !failed; ++seed) {
    SimOptions o;
    o.seed = seed;
    o.strict_unmarked_copies = true;
    SimResult r = RunSimulation(o);
    if (!r.ok) {
      failed = seed;
      o.trace = true;
      ADD_FAILURE() << Describe(o, RunSimulation(o));
    }
  }
  EXPECT_EQ(failed, 0u);
}

}  // namespace
}  // namespace sim
}  // namespace tether
