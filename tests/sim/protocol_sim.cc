// The protocol simulation (protocol_sim.h): the event loop, the simulated
// network, the mapper model and the oracle. Every model step cites the
// daemon function it follows; where it departs from it, a comment says
// how and why.
#include "tests/sim/protocol_sim.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "daemon/common/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/page.h"
#include "daemon/common/segid.h"
#include "daemon/home/exporter_memory.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/invalidation_coordinator.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/invalidation/notice.h"
#include "daemon/mapper/attachment.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/mapper/lease_keeper.h"

namespace tether {
namespace sim {

const char* MutationName(Mutation m) {
  switch (m) {
    case Mutation::kNone: return "none";
    case Mutation::kAckBeforeDrop: return "ack-before-drop";
    case Mutation::kInstallStale: return "install-stale";
    case Mutation::kDropDirtyAtBegin: return "drop-dirty-at-begin";
    case Mutation::kForgeAck: return "forge-ack";
    case Mutation::kIgnoreDeadline: return "ignore-deadline";
    case Mutation::kForgetEnd: return "forget-end";
    case Mutation::kSyncIgnoresWritingBack: return "sync-ignores-writing-back";
    case Mutation::kSyncOkPastBudget: return "sync-ok-past-budget";
  }
  return "?";
}

namespace {

constexpr uint32_t kHome = 1;
constexpr uint32_t kProbe = 99;  // reads the home at the end: is a window left open?
constexpr uint64_t kPage = kPageSize;
// The model's polling period where the daemon sleeps 1 ms and looks again
// (a home's "retry", Sync waiting for kept-aside pages). Coarser than the
// daemon's so that a window held open for seconds costs hundreds of
// events, not thousands; no decision depends on the period, only on the
// 10 s budgets, which are the daemon's.
constexpr absl::Duration kPoll = absl::Milliseconds(5);
// The longest a write-back runs at the home (BeforeRead); below the
// coordinator's kWriteBackWait and the shortest ack deadline (200 ms).
constexpr absl::Duration kWriteInFlight = absl::Milliseconds(50);
static_assert(kWriteInFlight < InvalidationCoordinator::kWriteBackWait);
constexpr absl::Duration kWriteBudget = absl::Seconds(10);  // WriteBackPages, Sync
constexpr absl::Duration kRun = absl::Seconds(20);          // random activity, then quiet
// With leases: tetherd's margin, and a lease of 3 s (tetherd's default is
// 2 s): longer than the longest ack deadline drawn (2 s), as tetherd
// requires of its flags.
constexpr LeaseConfig kLeases{absl::Seconds(3), 0.1};
constexpr uint64_t kMaxEvents = 3'000'000;

// What a page holds: the stamp of the exporter change that wrote it and
// the id of the last store a mapper made to it (0: none). The rest of the
// page is zero. Every exporter change and every store is unique, so the
// pair names one version of the page.
struct Content {
  uint64_t stamp = 0, wid = 0;
  bool operator<(const Content& o) const {
    return stamp != o.stamp ? stamp < o.stamp : wid < o.wid;
  }
};

Content ReadContent(const uint8_t* page) {
  Content c;
  std::memcpy(&c.stamp, page, 8);
  std::memcpy(&c.wid, page + 8, 8);
  return c;
}
void WriteContent(uint8_t* page, Content c) {
  std::memset(page, 0, kPage);
  std::memcpy(page, &c.stamp, 8);
  std::memcpy(page + 8, &c.wid, 8);
}

// Ranges derived by hand from the generator: std::uniform_*_distribution
// is implementation-defined, and a seed must mean the same run anywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed * 0x9e3779b97f4a7c15ull + 1) {}
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : g_() % n; }
  bool Permille(uint64_t k) { return Below(1000) < k; }
  absl::Duration Us(uint64_t lo, uint64_t hi) {
    return absl::Microseconds(static_cast<int64_t>(lo + Below(hi - lo + 1)));
  }
  absl::Duration Ms(uint64_t lo, uint64_t hi) { return Us(lo * 1000, hi * 1000); }

 private:
  std::mt19937_64 g_;
};

struct Node {
  uint32_t id = 0;
  uint32_t index = 0;  // owns the pages p with p % nodes == index
  bool up = true;
  uint32_t inc = 1;  // incarnation: events of an older one are dropped
  absl::Time frozen_until, cut_until;
  std::shared_ptr<Attachment> att;  // null: none (crashed, or attach refused)
  // The memfd, modelled: what each installed page holds, and the home
  // generation of the copy it was fetched as.
  std::vector<Content> data;
  std::vector<uint64_t> base_gen;
  std::map<uint64_t, uint64_t> kept_gen;  // kept-aside page -> its base_gen
  // Kept-aside pages whose write-back failed, put back dirty: the client
  // reads its own writes over the page as it was before the window — by
  // design (G1 in docs/architecture.md), so the oracle excuses them.
  std::set<uint64_t> put_back;
  std::map<uint64_t, int> readers;       // page -> client reads waiting for it
  std::deque<InvalidationNotice> inbox;  // END and REVOKE, for the notice receiver
  bool inbox_busy = false;
  bool syncing = false;
  absl::Status sync_lost, sync_still_kept;  // the sync in progress's EIO, EAGAIN
  // Oracle: the last store acknowledged to a client, per owned page.
  std::map<uint64_t, uint64_t> last_write;
  // With leases, the daemon's own (new at every restart): its lease table,
  // its attachment table (the keeper finds the attachment there), the
  // renewer (the simulated network) and the keeper, whose passes the
  // simulation runs as its thread would (KeeperPass).
  std::unique_ptr<MapperLeaseTable> leases;
  std::unique_ptr<AttachmentTable> atts;
  std::unique_ptr<LeaseRenewer> renewer;
  std::unique_ptr<LeaseKeeper> keeper;  // last: destroyed first
  uint64_t pass_token = 0;              // the keeper's pending pass; a wake-up replaces it
  bool pass_overdue = false;            // a pass came due while the daemon was frozen
};

// A line of the run's trace, with the virtual time; its arguments are
// evaluated only when tracing (most runs do not).
#define TRACE(...)                                           \
  do {                                                       \
    if (opt_.trace) TraceLine(absl::StrFormat(__VA_ARGS__)); \
  } while (0)

class Simulation final : public InvalidationChannel, public SegmentObserver {
 public:
  explicit Simulation(const SimOptions& o) : opt_(o), rng_(o.seed) {
    if (o.leases) home_leases_ = std::make_unique<HomeLeaseTable>(kLeases, &clock_);
  }
  ~Simulation() override {
    nodes_.clear();
    coord_.reset();
    reg_.reset();
    if (mem_) munmap(mem_, npages_ * kPage);
  }

  SimResult Run();

  // InvalidationChannel: the home's notices, over the simulated network.
  void Send(uint32_t node, const InvalidationNotice& n, absl::Duration timeout, Done done) override;
  void TryNotice(Node& n, const InvalidationNotice& notice,
                 std::function<void(absl::Status)> finish, absl::Time give_up);
  // SegmentObserver: called by ReadBlocks between its window check and its
  // read of the exporter; other events may run "while the read is in
  // flight", which is how the simulation reaches the bracketing (G5).
  absl::Status BeforeRead(uint64_t segid, uint64_t start, uint64_t end) override;
  void SegmentGone(uint64_t, const std::string&) override {}

 private:
  // The queue orders small keys; the functions wait in slots, so that
  // the heap moves 24 bytes, not a std::function (ASan makes each move
  // of one costly).
  struct Event {
    absl::Time at;
    uint64_t seq;
    uint32_t slot;
  };
  struct Later {
    bool operator()(const Event& a, const Event& b) const {
      return a.at != b.at ? a.at > b.at : a.seq > b.seq;
    }
  };
  struct Change {
    std::optional<InvalidationCoordinator::PendingBegin> pending;
    InvalidationWindow window;      // once the fan-out ended (FenceUnanswered)
    uint64_t wait_token = 0;        // the pending FencesHeldUntil re-check
    bool write_wait = false;        // fan-out ended, waiting for write-backs in flight
    bool lease_wait = false;        // fan-out ended, waiting out fenced nodes' leases
    bool waited = false;            // it did wait
    bool fenced_meanwhile = false;  // a node was fenced while it waited
    absl::Time t0;
    uint64_t p0 = 0, p1 = 0;
    std::vector<std::pair<uint64_t, uint64_t>> gone;  // segment offsets
    std::vector<uint64_t> gens;                       // what it wrote, per page
    bool finished = false;
  };

  absl::Time Now() const { return clock_.Now(); }
  std::string When() const {
    return absl::StrFormat("t=%.3fms", absl::ToDoubleMilliseconds(Now() - start_));
  }
  void TraceLine(std::string line) {
    trace_.push_back(absl::StrCat(When(), " ", line));
    if (trace_.size() > opt_.trace_lines) trace_.pop_front();
  }
  template <typename... Args>
  void Fail(const absl::FormatSpec<Args...>& fmt, const Args&... args) {
    if (!result_.ok) return;
    result_.ok = false;
    result_.violation = absl::StrCat(When(), ": ", absl::StrFormat(fmt, args...));
    TRACE("VIOLATION: %s", result_.violation);
  }

  // --- events ---
  void Push(absl::Time at, std::function<void()> fn) {
    uint32_t slot;
    if (free_slots_.empty()) {
      slot = static_cast<uint32_t>(slots_.size());
      slots_.push_back(std::move(fn));
    } else {
      slot = free_slots_.back();
      free_slots_.pop_back();
      slots_[slot] = std::move(fn);
    }
    queue_.push({at, seq_++, slot});
  }
  void At(absl::Duration after, std::function<void()> fn) { Push(Now() + after, std::move(fn)); }
  // An event of node `n`'s daemon: dropped if the node crashed since,
  // postponed while it is frozen.
  void NodeAt(Node& n, absl::Duration after, std::function<void()> fn) {
    uint32_t inc = n.inc;
    At(after, [this, &n, inc, fn = std::move(fn)]() mutable { RunOnNode(n, inc, std::move(fn)); });
  }
  // `gone` (if any) runs instead of `fn` if the node crashed since.
  void RunOnNode(Node& n, uint32_t inc, std::function<void()> fn,
                 std::function<void()> gone = nullptr) {
    if (!n.up || n.inc != inc) {
      if (gone) gone();
      return;
    }
    if (Now() < n.frozen_until) {
      Push(n.frozen_until, [this, &n, inc, fn = std::move(fn), gone = std::move(gone)]() mutable {
        RunOnNode(n, inc, std::move(fn), std::move(gone));
      });
      return;
    }
    fn();
  }
  bool Step();
  void FinishAnswered();

  // --- network ---
  bool Cut(const Node& n) const { return Now() < n.cut_until; }
  absl::Duration Delay(uint32_t from, uint32_t to);
  // A message between the home and node `n`: `deliver` runs at the far
  // end after a delay, or the message is lost (dropped, link cut) and
  // `lost` runs after a delay at the near end: a lost connection.
  void Message(Node& n, bool to_node, std::function<void()> deliver, std::function<void()> lost);

  // --- the home ---
  void StartChange();
  void FinishChange(uint64_t id);
  void CheckLeaseWait(uint64_t id);
  void CheckLeaseWaits();
  void CheckWriteWaits();
  void BeginReturned(uint64_t id);
  // `gone_before`: gone_gen_[p] when a node's write-back reached the
  // home's checks (a change may unmap the page while it is in flight).
  void Landed(uint64_t p, Content c, uint32_t node, uint64_t gone_before = 0);
  uint64_t GenOf(uint64_t p, Content c);

  // --- mapper nodes (model of FaultService, MapperInvalidation) ---
  void HandleNotice(Node& n, const InvalidationNotice& notice,
                    std::function<void(absl::Status)> reply);
  void BeginWindow(Node& n, uint64_t key, uint64_t p0, uint64_t p1);
  void PumpInbox(Node& n);
  bool EndIfNothingToWriteBack(Node& n, uint64_t key);
  void EndWindow(Node& n, uint64_t key, std::vector<std::pair<uint64_t, uint64_t>> gone,
                 std::function<void()> done);
  void Revoke(Node& n, const std::string& why);
  void ClientRead(Node& n, uint64_t p);
  void ClientWrite(Node& n, uint64_t p);
  void Fault(Node& n, uint64_t p);
  void Install(Node& n, uint64_t p, uint64_t gen, absl::Status st, Content c, uint64_t home_gen);
  void WakeReaders(Node& n, uint64_t p0, uint64_t p1);
  void Observe(Node& n, uint64_t p);
  void WriteBack(Node& n, uint64_t p, Content c, absl::Time deadline, std::optional<uint64_t> epoch,
                 std::function<void(absl::Status, bool, uint64_t)> done);
  void StartSync(Node& n);
  void SyncRound(Node& n, absl::Time deadline, std::map<uint64_t, uint64_t> snapshot);
  void SyncDone(Node& n, absl::Status st, const std::map<uint64_t, uint64_t>& snapshot);
  void Crash(Node& n);
  void Restart(Node& n);
  void Attach(Node& n);
  void ReportLoss(Node& n);

  // --- leases (the daemon's LeaseKeeper, driven) ---
  friend class SimRenewer;
  void NewDaemon(Node& n);
  void SchedulePass(Node& n, absl::Duration after);
  void KeeperPass(Node& n, uint32_t inc, uint64_t token);
  void KeeperRevoke(Node& n, Attachment& att, const std::string& why);
  void RenewRequest(Node& n, absl::Duration timeout, LeaseRenewer::Done done);

  void RandomAction();
  void Quiesce();
  void FinalChecks();

  const SimOptions opt_;
  Rng rng_;
  FakeClock clock_;
  std::unique_ptr<HomeLeaseTable> home_leases_;  // with leases
  absl::Time start_ = clock_.Now();
  std::priority_queue<Event, std::vector<Event>, Later> queue_;
  std::vector<std::function<void()>> slots_;
  std::vector<uint32_t> free_slots_;
  uint64_t seq_ = 0;
  bool stop_ = false;
  bool quiet_ = false;  // the random activity is over
  int nesting_ = 0;     // inside BeforeRead's events
  // Set while the home serves a write-back (WriteBlocks): when it started.
  std::optional<absl::Time> writing_since_;
  SimResult result_;
  std::deque<std::string> trace_;
  std::vector<uint8_t> page_buf_[2] = {std::vector<uint8_t>(kPage), std::vector<uint8_t>(kPage)};

  // The scenario, drawn from the seed.
  uint64_t npages_ = 0;
  absl::Duration deadline_;
  uint64_t drop_permille_ = 0;
  uint64_t max_delay_us_ = 0;
  bool fifo_ = false;
  uint64_t interleave_permille_ = 0;
  uint64_t gone_permille_ = 0;

  // The home: real.
  uint8_t* mem_ = nullptr;
  std::unique_ptr<SegmentRegistry> reg_;
  std::unique_ptr<InvalidationCoordinator> coord_;
  uint64_t segid_ = 0;
  uint32_t home_incarnation_ = 0;  // the segid's
  uint64_t probe_grant_ = 0;
  std::map<uint64_t, Change> changes_;  // not yet completed
  uint64_t next_change_ = 1;
  std::map<std::pair<uint32_t, uint32_t>, absl::Time> link_last_;  // fifo links

  std::vector<std::unique_ptr<Node>> nodes_;

  // The oracle's view of the home's page versions.
  uint64_t next_stamp_ = 1, next_wid_ = 1;
  std::vector<uint64_t> home_gen_;                   // per page: versions landed so far
  std::vector<std::map<Content, uint64_t>> gen_of_;  // per page: version -> generation
  std::vector<uint64_t> floor_;       // per page: generation of the last completed change
  std::vector<uint64_t> max_landed_;  // per page: the newest store landed
  // Per page: the home generation a change that unmapped it (`gone`) left;
  // per store: the generation of the copy it was made on. A store landing
  // on a copy older than the page's last unmap would be written into
  // whatever the exporter mapped there since (issue 14).
  std::vector<uint64_t> gone_gen_;
  std::map<uint64_t, uint64_t> store_base_;
  std::set<uint64_t> landed_, reported_;  // store ids
  std::set<uint32_t> fenced_;             // nodes the home fenced
};

// --- the event loop -----------------------------------------------------------

bool Simulation::Step() {
  if (queue_.empty() || stop_) return false;
  Event e = queue_.top();
  queue_.pop();
  std::function<void()> fn = std::move(slots_[e.slot]);
  slots_[e.slot] = nullptr;
  free_slots_.push_back(e.slot);
  clock_.Set(e.at);
  fn();
  if (++result_.stats.events > kMaxEvents) {
    Fail("no quiescence after %d events", kMaxEvents);
  }
  if (!result_.ok) stop_ = true;
  FinishAnswered();
  return !stop_;
}

// A fan-out whose nodes have all answered ends now: Begin would return as
// soon as its condition holds.
void Simulation::FinishAnswered() {
  std::vector<uint64_t> ready;
  for (auto& [id, c] : changes_)
    if (!c.finished && c.pending->answered()) ready.push_back(id);
  for (uint64_t id : ready) FinishChange(id);
}

absl::Status Simulation::BeforeRead(uint64_t, uint64_t, uint64_t) {
  if (nesting_ > 0 || quiet_ || !rng_.Permille(interleave_permille_)) return absl::OkStatus();
  ++result_.stats.interleaved_reads;
  ++nesting_;
  TRACE("home: read in flight; running events inside it");
  // A write-back (past the checks, counted in flight: BeforeRead runs
  // between Resolve and the write) is one process_vm_writev: it returns
  // well within the bound of a Begin's wait for it (the coordinator's
  // write_back_wait, 100 ms; the model has no exporter mmap_lock to block
  // it longer), so only events due within kWriteInFlight run inside it.
  const bool writing = writing_since_.has_value();
  for (uint64_t i = 1 + rng_.Below(4);
       i > 0 && !queue_.empty() && !stop_ &&
       (!writing || queue_.top().at <= *writing_since_ + kWriteInFlight);
       --i)
    Step();
  --nesting_;
  return absl::OkStatus();
}

// --- the network --------------------------------------------------------------

absl::Duration Simulation::Delay(uint32_t from, uint32_t to) {
  absl::Duration d = rng_.Us(20, max_delay_us_);
  if (!fifo_) return d;
  absl::Time& last = link_last_[{from, to}];
  absl::Time at = std::max(Now() + d, last);
  last = at;
  return at - Now();
}

void Simulation::Message(Node& n, bool to_node, std::function<void()> deliver,
                         std::function<void()> lost) {
  uint32_t from = to_node ? kHome : n.id, to = to_node ? n.id : kHome;
  bool drop = Cut(n) || (!quiet_ && rng_.Permille(drop_permille_));
  absl::Duration d = Delay(from, to);
  if (drop) {
    if (lost) At(d + rng_.Ms(1, 20), std::move(lost));
    return;
  }
  At(d, [this, &n, deliver = std::move(deliver), lost = std::move(lost)]() mutable {
    if (Cut(n)) {  // cut while in flight
      if (lost) At(rng_.Ms(1, 20), std::move(lost));
      return;
    }
    deliver();
  });
}

void Simulation::Send(uint32_t node, const InvalidationNotice& notice, absl::Duration timeout,
                      Done done) {
  // `done` runs exactly once: the answer, or the connection's failure.
  auto once = std::make_shared<Done>(std::move(done));
  bool revoke = notice.kind == InvalidationNotice::Kind::kRevoke;
  std::function<void(absl::Status)> finish = [this, once, node, revoke](absl::Status st) {
    if (!*once) return;
    Done d = std::move(*once);
    *once = nullptr;
    TRACE("home: answer from node %d: %s", node, st.ToString());
    std::move(d)(std::move(st));
    // A REVOKE's ack wakes the coordinator's lease waits
    // (WaitOutFences): they ask FencesHeldUntil again.
    if (revoke) CheckLeaseWaits();
  };
  Node* target = nullptr;
  for (auto& n : nodes_)
    if (n->id == node) target = n.get();
  if (!target) {
    At(rng_.Ms(1, 5), [finish] { finish(absl::UnavailableError("unknown node")); });
    return;
  }
  if (notice.kind == InvalidationNotice::Kind::kRevoke) {
    // Only FenceAndHold sends revocations here (a missed range_begin, or a
    // range_end never delivered): the oracle's record of fenced nodes.
    if (fenced_.insert(node).second) ++result_.stats.fenced;
    for (auto& [id, c] : changes_)
      if (c.lease_wait) c.fenced_meanwhile = true;
  }
  if (opt_.mutation == Mutation::kForgeAck && notice.kind == InvalidationNotice::Kind::kBegin)
    At(deadline_ - absl::Milliseconds(1), [finish] { finish(absl::OkStatus()); });
  // PeerInvalidationChannel: a notice whose connection fails is resent by
  // gRPC, which waits for the peer to be reachable again (wait_for_ready:
  // a cut link, a frozen or restarting daemon) up to the timeout the
  // coordinator gave — the ack deadline for range_begin, minutes for
  // range_end and revocations. A drop is TCP's to retransmit; the model
  // resends until the timeout, whichever way the notice or its answer was
  // lost.
  TryNotice(*target, notice, finish, Now() + timeout);
}

void Simulation::TryNotice(Node& n, const InvalidationNotice& notice,
                           std::function<void(absl::Status)> finish, absl::Time give_up) {
  auto resend = [this, &n, notice, finish, give_up] {
    // A daemon that is down is polled as gRPC reconnects; a cut link is
    // tried again once it heals.
    absl::Time retry = std::max(Now(), n.cut_until) + (n.up ? rng_.Ms(1, 20) : rng_.Ms(20, 60));
    if (retry > give_up) {
      At(std::max(give_up - Now(), absl::ZeroDuration()),
         [finish] { finish(absl::DeadlineExceededError("notice not delivered in time")); });
      return;
    }
    ++result_.stats.notices_resent;
    if (notice.kind == InvalidationNotice::Kind::kEnd) ++result_.stats.ends_resent;
    TRACE("home: notice to node %d lost; resent by gRPC", n.id);
    At(retry - Now(),
       [this, &n, notice, finish, give_up] { TryNotice(n, notice, finish, give_up); });
  };
  if (!n.up) return resend();
  uint32_t inc = n.inc;
  Message(
      n, /*to_node=*/true,
      [this, &n, inc, notice, finish, resend] {
        if (!n.up || n.inc != inc) return resend();  // the connection died with the daemon
        RunOnNode(
            n, inc,
            [this, &n, notice, finish, resend] {
              HandleNotice(n, notice, [this, &n, finish, resend](absl::Status st) {
                Message(
                    n, /*to_node=*/false, [finish, st] { finish(st); },
                    resend);  // the answer lost: the notice again (a duplicate is harmless)
              });
            },
            resend);  // it crashed while frozen, the notice unread
      },
      resend);
}

// --- the home -------------------------------------------------------------------

uint64_t Simulation::GenOf(uint64_t p, Content c) {
  auto it = gen_of_[p].find(c);
  if (it == gen_of_[p].end()) {
    Fail("page %d holds a version the home never had (stamp %d, store %d)", p, c.stamp, c.wid);
    return 0;
  }
  return it->second;
}

void Simulation::Landed(uint64_t p, Content c, uint32_t node, uint64_t gone_before) {
  // The same version may land twice (a sync's write, then the same bytes
  // kept aside by a window and written after it): it is as new as its
  // last landing.
  gen_of_[p][c] = ++home_gen_[p];
  ++result_.stats.landed;
  if (c.wid != 0) {
    auto base = store_base_.find(c.wid);
    if (base != store_base_.end() && base->second < gone_before) {
      Fail(
          "node %d's write-back of store %d (made on a copy of generation %d) landed on page %d, "
          "which a change unmapped at generation %d: into whatever is mapped there now",
          node, c.wid, base->second, p, gone_before);
    } else if (base != store_base_.end() && base->second < gone_gen_[p]) {
      // Past the home's checks before the window opened, landed after the
      // change unmapped the page: the change's Begin did not wait for the
      // write-back in flight (issue 14; excused before Begin waited).
      Fail(
          "node %d's write-back of store %d (made on a copy of generation %d) was in flight at "
          "the home while a change unmapped page %d (generation %d) and landed after it",
          node, c.wid, base->second, p, gone_gen_[p]);
    }
    if (c.wid < max_landed_[p])
      Fail("node %d's write-back of store %d landed on page %d over the newer store %d", node,
           c.wid, p, max_landed_[p]);
    max_landed_[p] = std::max(max_landed_[p], c.wid);
    landed_.insert(c.wid);
  }
  TRACE("home: page %d now holds stamp %d store %d (generation %d)", p, c.stamp, c.wid,
        gen_of_[p][c]);
}

// An exporter call that changes [p0, p1): the kernel's range_begin, the
// coordinator's Begin (in its steps), the change of contents, End, the
// call's return. Overlapping changes run independently, as tether.ko's
// begin workers do.
void Simulation::StartChange() {
  uint64_t p0 = rng_.Below(npages_);
  uint64_t p1 = p0 + 1 + rng_.Below(std::min<uint64_t>(3, npages_ - p0));
  auto pending = coord_->StartBegin(segid_, p0 * kPage, p1 * kPage, "simulated change");
  if (!pending.ok()) {
    Fail("StartBegin: %s", pending.status().ToString());
    return;
  }
  uint64_t id = next_change_++;
  Change& c = changes_[id];
  c.t0 = Now();
  c.p0 = p0;
  c.p1 = p1;
  for (uint64_t p = p0; p < p1; ++p)
    if (rng_.Permille(gone_permille_)) c.gone.emplace_back(p * kPage, (p + 1) * kPage);
  TRACE("exporter: change %d of pages [%d, %d) begins: window %d", id, p0, p1,
        pending->window().id);
  c.pending.emplace(*std::move(pending));
  if (opt_.mutation != Mutation::kIgnoreDeadline) At(deadline_, [this, id] { FinishChange(id); });
}

void Simulation::FinishChange(uint64_t id) {
  auto it = changes_.find(id);
  if (it == changes_.end() || it->second.finished) return;
  Change& c = it->second;
  c.finished = true;
  // Begin's steps after the fan-out (FinishBegin): fence who did not
  // answer, then wait out the fenced nodes' leases on the simulated clock.
  c.window = coord_->FenceUnanswered(*std::move(c.pending));
  c.pending.reset();
  absl::Duration fanout = Now() - c.t0;
  TRACE("home: change %d: fan-out ends after %dus: acked %s fenced %s", id,
        absl::ToInt64Microseconds(fanout), absl::StrJoin(c.window.acked, ","),
        absl::StrJoin(c.window.fenced, ","));
  if (fanout > deadline_)
    Fail("change %d: Begin's fan-out ended after %dms, past the %dms deadline (G2)", id,
         absl::ToInt64Milliseconds(fanout), absl::ToInt64Milliseconds(deadline_));
  // AwaitWriteBacks, in steps: asked again when a write-back returns
  // (CheckWriteWaits).
  if (!coord_->WriteBacksLanded(c.window)) {
    c.write_wait = true;
    ++result_.stats.write_back_waits;
    TRACE("home: change %d waits for a write-back in flight over its range", id);
    return;
  }
  c.lease_wait = true;
  CheckLeaseWait(id);
}

void Simulation::CheckWriteWaits() {
  std::vector<uint64_t> ready;
  for (const auto& [id, c] : changes_)
    if (c.write_wait && coord_->WriteBacksLanded(c.window)) ready.push_back(id);
  for (uint64_t id : ready) {
    Change& c = changes_[id];
    c.write_wait = false;
    c.lease_wait = true;
    CheckLeaseWait(id);
  }
}

// WaitOutFences, in steps: Begin returns once FencesHeldUntil has passed;
// until then it is asked again when the clock reaches the moment it gave
// (the daemon's paced wait) or when a REVOKE is acknowledged (CheckLeaseWaits:
// the daemon's wake-up).
void Simulation::CheckLeaseWait(uint64_t id) {
  auto it = changes_.find(id);
  if (it == changes_.end() || !it->second.lease_wait) return;
  Change& c = it->second;
  absl::Time until = coord_->FencesHeldUntil(c.window);
  if (until <= Now()) {
    c.lease_wait = false;
    return BeginReturned(id);
  }
  if (!c.waited) {
    c.waited = true;
    TRACE("home: change %d waits out fenced nodes' leases, until %s", id,
          absl::StrFormat("t=%.3fms", absl::ToDoubleMilliseconds(until - start_)));
  }
  uint64_t token = ++c.wait_token;
  At(until - Now(), [this, id, token] {
    auto it = changes_.find(id);
    if (it != changes_.end() && it->second.wait_token == token) CheckLeaseWait(id);
  });
}

void Simulation::CheckLeaseWaits() {
  std::vector<uint64_t> waiting;
  for (const auto& [id, c] : changes_)
    if (c.lease_wait) waiting.push_back(id);
  for (uint64_t id : waiting) CheckLeaseWait(id);
}

void Simulation::BeginReturned(uint64_t id) {
  Change& c = changes_[id];
  InvalidationWindow w = c.window;
  absl::Duration stall = Now() - c.t0;
  result_.stats.max_stall = std::max(result_.stats.max_stall, stall);
  if (c.waited) {
    ++result_.stats.lease_waits;
    if (w.fenced.empty()) ++result_.stats.lease_waits_for_others;
    if (c.fenced_meanwhile) ++result_.stats.fenced_during_lease_wait;
  }
  TRACE("home: change %d: Begin returns after %dus", id, absl::ToInt64Microseconds(stall));
  // Every node fenced on the segment may hold what it read until its
  // lease, as the home counts it as of the fence, ran out: at most one
  // lease (with the margin) after the fan-out ended.
  absl::Duration bound =
      deadline_ + (opt_.leases ? kLeases.lease * (1 + kLeases.margin) : absl::ZeroDuration());
  if (stall > bound)
    Fail(
        "change %d: Begin returned after %dms, past the deadline plus a fenced node's lease "
        "(%dms) (G2)",
        id, absl::ToInt64Milliseconds(stall), absl::ToInt64Milliseconds(bound));
  // The kernel changes the pages once Begin returned; an exporter's own
  // bracket (tether_invalidate_begin/end) may hold them for seconds.
  absl::Duration work = rng_.Permille(15) ? rng_.Ms(9000, 14000) : rng_.Us(0, 3000);
  At(work, [this, id, w] {
    Change& c = changes_[id];
    for (uint64_t p = c.p0; p < c.p1; ++p) {
      Content v{next_stamp_++, 0};
      WriteContent(mem_ + p * kPage, v);
      Landed(p, v, kHome);
      c.gens.push_back(home_gen_[p]);
      for (const auto& [g0, g1] : c.gone)
        if (p * kPage >= g0 && p * kPage < g1) gone_gen_[p] = home_gen_[p];
    }
    TRACE("exporter: change %d rewrote pages [%d, %d)%s", id, c.p0, c.p1,
          c.gone.empty() ? "" : " (some gone)");
    if (opt_.mutation == Mutation::kForgetEnd && rng_.Permille(300)) {
      TRACE("exporter: change %d never ends (mutation)", id);
      changes_.erase(id);
      return;
    }
    coord_->End(w, c.gone);
    // The call returns: from now on no read may see a version older than
    // what the change wrote.
    for (uint64_t p = c.p0; p < c.p1; ++p) floor_[p] = std::max(floor_[p], c.gens[p - c.p0]);
    ++result_.stats.changes;
    TRACE("exporter: change %d returns", id);
    changes_.erase(id);
  });
}

// --- mapper nodes ---------------------------------------------------------------

// MapperInvalidation::Handle and the serving thread: range_begin is handled
// before it is answered; range_end and revocations are answered at once;
// a range_end whose window has nothing to write back ends there and then
// (FaultService::EndWindowIfNothingToWriteBack), the others and
// revocations are queued for the node's ordered thread.
void Simulation::HandleNotice(Node& n, const InvalidationNotice& notice,
                              std::function<void(absl::Status)> reply) {
  uint64_t key = (notice.segid * 0x9e3779b97f4a7c15ull) ^ notice.window;
  if (notice.kind == InvalidationNotice::Kind::kBegin) {
    uint64_t p0 = notice.start / kPage, p1 = (notice.end + kPage - 1) / kPage;
    TRACE("node %d: range_begin [%d, %d) window %d", n.id, p0, p1, notice.window);
    if (opt_.mutation == Mutation::kAckBeforeDrop) {
      reply(absl::OkStatus());
      NodeAt(n, rng_.Ms(1, 30), [this, &n, key, p0, p1] { BeginWindow(n, key, p0, p1); });
      return;
    }
    BeginWindow(n, key, p0, p1);
    reply(absl::OkStatus());
    return;
  }
  reply(absl::OkStatus());
  if (notice.kind == InvalidationNotice::Kind::kEnd && EndIfNothingToWriteBack(n, key)) return;
  n.inbox.push_back(notice);
  PumpInbox(n);
}

// FaultService::EndWindowIfNothingToWriteBack.
bool Simulation::EndIfNothingToWriteBack(Node& n, uint64_t key) {
  if (!n.att) return true;
  uint64_t p0, p1;
  {
    absl::MutexLock lock(&n.att->cache->mu);
    SegmentCache& c = *n.att->cache;
    auto it = c.windows.find(key);
    if (it == c.windows.end()) return true;
    p0 = it->second.first;
    p1 = it->second.second;
    auto aside = c.kept_aside.lower_bound(p0);
    if (aside != c.kept_aside.end() && aside->first < p1) return false;
    auto writing = c.kept_writing.lower_bound(p0);
    if (writing != c.kept_writing.end() && *writing < p1) return false;
    c.windows.erase(it);
  }
  TRACE("node %d: range_end window ended at once (nothing to write back)", n.id);
  WakeReaders(n, p0, p1);
  return true;
}

// FaultService::BeginWindow.
void Simulation::BeginWindow(Node& n, uint64_t key, uint64_t p0, uint64_t p1) {
  if (!n.att) return;
  Attachment& att = *n.att;
  absl::MutexLock lock(&att.cache->mu);
  p1 = std::min(p1, att.pages());
  if (att.cache->revoked || p0 >= p1) return;
  att.cache->windows[key] = {p0, p1};
  ++att.cache->inval_gen;
  att.cache->recent_begins.push_back({att.cache->inval_gen, p0, p1});
  if (att.cache->recent_begins.size() > SegmentCache::kRecentBegins)
    att.cache->recent_begins.pop_front();
  for (uint64_t p = p0; p < p1; ++p) {
    PageState s = att.cache->state[p];
    if (s != PageState::kClean && s != PageState::kDirty && s != PageState::kWriteback) continue;
    if (s != PageState::kClean) {
      if (opt_.mutation == Mutation::kDropDirtyAtBegin) {
        TRACE("node %d: dirty page %d dropped (mutation)", n.id, p);
      } else {
        att.cache->kept_aside[p] =
            std::string(reinterpret_cast<const char*>(&n.data[p]), sizeof(Content));
        n.kept_gen[p] = n.base_gen[p];
        TRACE("node %d: dirty page %d (store %d) kept aside", n.id, p, n.data[p].wid);
      }
      if (s == PageState::kDirty) --att.cache->dirty;
      if (s == PageState::kWriteback) ++att.cache->wb_epoch;
    }
    att.cache->state[p] = PageState::kAbsent;
    --att.cache->resident;
  }
}

void Simulation::PumpInbox(Node& n) {
  if (n.inbox_busy || n.inbox.empty()) return;
  InvalidationNotice notice = n.inbox.front();
  n.inbox.pop_front();
  n.inbox_busy = true;
  uint32_t inc = n.inc;
  auto next = [this, &n, inc] {
    if (n.inc != inc) return;
    n.inbox_busy = false;
    PumpInbox(n);
  };
  if (notice.kind == InvalidationNotice::Kind::kRevoke) {
    Revoke(n, notice.reason);
    NodeAt(n, absl::ZeroDuration(), next);
    return;
  }
  uint64_t key = (notice.segid * 0x9e3779b97f4a7c15ull) ^ notice.window;
  std::vector<std::pair<uint64_t, uint64_t>> gone;  // pages (one attachment at offset 0)
  for (const auto& [g0, g1] : notice.gone) gone.emplace_back(g0 / kPage, (g1 + kPage - 1) / kPage);
  TRACE("node %d: range_end window %d", n.id, notice.window);
  EndWindow(n, key, std::move(gone), next);
}

// FaultService::EndWindow: kept-aside pages are written back one by one
// (blocking the notice receiver, as the daemon's does), then the range
// reopens.
void Simulation::EndWindow(Node& n, uint64_t key, std::vector<std::pair<uint64_t, uint64_t>> gone,
                           std::function<void()> done) {
  if (!n.att) return done();
  std::shared_ptr<Attachment> att = n.att;
  struct Page {
    uint64_t p;
    Content c;
    uint64_t gen;
  };
  auto writeback = std::make_shared<std::vector<Page>>();
  uint64_t p0 = 0, p1 = 0;
  bool unknown = false;
  {
    absl::MutexLock lock(&att->cache->mu);
    auto it = att->cache->windows.find(key);
    unknown = it == att->cache->windows.end();  // duplicate, or revoked since
    if (!unknown) p0 = it->second.first;
    if (!unknown) p1 = it->second.second;
    for (auto k = att->cache->kept_aside.lower_bound(p0);
         !unknown && k != att->cache->kept_aside.end() && k->first < p1;) {
      bool is_gone = false;
      for (const auto& g : gone) is_gone |= k->first >= g.first && k->first < g.second;
      Content c;
      std::memcpy(&c, k->second.data(), sizeof(c));
      if (is_gone) {
        ++att->cache->lost_pages;
        TRACE("node %d: kept-aside page %d (store %d) discarded: address gone", n.id, k->first,
              c.wid);
      } else if (att->cache->InOtherWindow(k->first, key)) {
        ++k;
        continue;
      } else {
        att->cache->kept_writing.insert(k->first);
        writeback->push_back({k->first, c, n.kept_gen[k->first]});
      }
      n.kept_gen.erase(k->first);
      k = att->cache->kept_aside.erase(k);
    }
  }
  if (unknown) return done();
  auto failed = std::make_shared<std::vector<Page>>();
  auto index = std::make_shared<size_t>(0);
  // The steps of this write-back, one per answer. Each pending answer
  // holds the chain; the chain holds itself only weakly, so that a chain
  // a crash abandons is freed with the events that would have run it.
  auto step = std::make_shared<std::function<void()>>();
  std::weak_ptr<std::function<void()>> weak = step;
  *step = [this, &n, att, key, p0, p1, writeback, failed, index, weak, done] {
    if (*index < writeback->size()) {
      Page pg = (*writeback)[(*index)++];
      WriteBack(
          n, pg.p, pg.c, Now() + kWriteBudget, std::nullopt,
          [this, &n, att, pg, failed, self = weak.lock()](absl::Status st, bool, uint64_t gen) {
            if (ToErrno(st) == ENXIO) {
              // FaultService::EndWindow: the address is gone at the
              // home; counted lost, not put back.
              TRACE("node %d: kept-aside page %d refused: address gone", n.id, pg.p);
              ++result_.stats.refused_gone;
              absl::MutexLock lock(&att->cache->mu);
              ++att->cache->lost_pages;
            } else if (!st.ok()) {
              TRACE("node %d: write-back of kept-aside page %d failed: %s", n.id, pg.p,
                    st.ToString());
              failed->push_back(pg);
            }
            (*self)();
          });
      return;
    }
    {
      absl::MutexLock lock(&att->cache->mu);
      for (const Page& pg : *writeback) att->cache->kept_writing.erase(pg.p);
      for (const Page& pg : *failed) {
        if (att->cache->revoked) {
          ++att->cache->lost_pages;
        } else if (att->cache->InOtherWindow(pg.p, key)) {
          att->cache->kept_aside[pg.p] =
              std::string(reinterpret_cast<const char*>(&pg.c), sizeof(pg.c));
          n.kept_gen[pg.p] = pg.gen;
        } else if (att->cache->state[pg.p] == PageState::kAbsent) {
          att->cache->state[pg.p] = PageState::kDirty;
          n.data[pg.p] = pg.c;
          n.base_gen[pg.p] = pg.gen;
          ++att->cache->dirty;
          ++att->cache->resident;
          n.put_back.insert(pg.p);
          ++result_.stats.put_back;
          TRACE("node %d: kept-aside page %d put back dirty", n.id, pg.p);
        } else {
          ++att->cache->lost_pages;
        }
      }
      att->cache->windows.erase(key);
    }
    WakeReaders(n, p0, p1);
    done();
  };
  (*step)();
}

// FaultService::Revoke.
void Simulation::Revoke(Node& n, const std::string& why) {
  if (!n.att) return;
  Attachment& att = *n.att;
  absl::MutexLock lock(&att.cache->mu);
  if (att.cache->revoked) return;
  att.cache->revoked = true;
  att.cache->revoke_reason = why;
  for (PageState st : att.cache->state)
    if (st == PageState::kDirty || st == PageState::kWriteback) ++att.cache->lost_pages;
  att.cache->lost_pages += att.cache->kept_aside.size();
  att.cache->kept_aside.clear();
  n.kept_gen.clear();
  att.cache->windows.clear();
  att.cache->resident = 0;
  att.cache->dirty = 0;
  std::fill(att.cache->state.begin(), att.cache->state.end(), PageState::kAbsent);
  n.readers.clear();  // they get SIGBUS
  TRACE("node %d: revoked (%s)", n.id, why);
}

void Simulation::Observe(Node& n, uint64_t p) {
  ++result_.stats.reads;
  uint64_t g = n.base_gen[p];
  TRACE("node %d: client reads page %d: stamp %d store %d (generation %d, floor %d)", n.id, p,
        n.data[p].stamp, n.data[p].wid, g, floor_[p]);
  if (g >= floor_[p]) return;
  if (n.put_back.count(p)) {
    ++result_.stats.put_back_reads;
    return;
  }
  bool revoked;
  {
    absl::MutexLock lock(&n.att->cache->mu);
    revoked = n.att->cache->revoked;
  }
  if (fenced_.count(n.id) && !revoked && !opt_.leases) {
    ++result_.stats.stale_excused;  // the documented gap (G2) with leases off
    return;
  }
  if (opt_.leases && n.pass_overdue && n.leases->Lapsed(kHome)) {
    // The daemon is frozen past its lease: its keeper would have revoked,
    // but does not run; its clients read what they hold until it runs
    // again (docs/consistency.md, "When a node goes silent": documented).
    ++result_.stats.frozen_excused;
    return;
  }
  Fail(
      "node %d read page %d as of home generation %d, older than the completed change to "
      "generation %d (G1)%s",
      n.id, p, g, floor_[p], fenced_.count(n.id) ? " (node fenced)" : "");
}

// A client's load: from its copy if it holds one (no daemon involved,
// even when the daemon is frozen), else a fault.
void Simulation::ClientRead(Node& n, uint64_t p) {
  if (!n.up || !n.att) return;
  PageState s;
  {
    absl::MutexLock lock(&n.att->cache->mu);
    if (n.att->cache->revoked) return;  // SIGBUS
    s = n.att->cache->state[p];
  }
  if (s == PageState::kClean || s == PageState::kDirty || s == PageState::kWriteback) {
    Observe(n, p);  // nothing checks a lease here: the keeper revokes
    return;
  }
  if (Now() < n.frozen_until) return;  // the fault would wait for the daemon
  ++n.readers[p];
  Fault(n, p);
}

// A client's store to a page it owns: to a dirty page directly; a clean
// one takes a write-protect fault first (HandleWriteProtect); an absent
// one is faulted in (the store is tried again later).
void Simulation::ClientWrite(Node& n, uint64_t p) {
  if (!n.up || !n.att) return;
  Attachment& att = *n.att;
  {
    absl::MutexLock lock(&att.cache->mu);
    if (att.cache->revoked) return;
    PageState& s = att.cache->state[p];
    bool frozen = Now() < n.frozen_until;
    if (s == PageState::kClean || s == PageState::kWriteback) {
      if (frozen) return;
      if (s == PageState::kWriteback) ++att.cache->wb_epoch;
      s = PageState::kDirty;
      ++att.cache->dirty;
    }
    if (s == PageState::kDirty) {
      n.data[p].wid = next_wid_++;
      n.last_write[p] = n.data[p].wid;
      store_base_[n.data[p].wid] = n.base_gen[p];
      ++result_.stats.writes;
      TRACE("node %d: client stores store %d to page %d", n.id, n.data[p].wid, p);
      return;
    }
  }
  ClientRead(n, p);
}

// FaultService::HandleMissing for one page (no read-ahead).
void Simulation::Fault(Node& n, uint64_t p) {
  if (!n.att || n.readers[p] == 0) return;
  std::shared_ptr<Attachment> att = n.att;
  uint64_t gen, grant;
  {
    absl::ReleasableMutexLock lock(&att->cache->mu);
    if (att->cache->revoked) {
      n.readers.erase(p);
      return;
    }
    if (att->cache->InWindow(p)) return;  // range_end wakes it
    PageState s = att->cache->state[p];
    if (s == PageState::kPoisoned) {
      n.readers.erase(p);  // SIGBUS
      return;
    }
    if (s == PageState::kFetching) return;  // its install wakes us
    if (s != PageState::kAbsent) {
      lock.Release();
      WakeReaders(n, p, p + 1);
      return;
    }
    s = att->cache->state[p] = PageState::kFetching;
    gen = att->cache->inval_gen;
    grant = att->grant;
  }
  TRACE("node %d: fetch page %d (inval_gen %d)", n.id, p, gen);
  uint32_t inc = n.inc;
  Message(
      n, /*to_node=*/false,
      [this, &n, inc, p, gen, grant] {
        // One buffer per nesting level (BeforeRead may run a read inside
        // this one), reused: a page-sized allocation per request costs
        // ASan more than the rest of the request.
        std::vector<uint8_t>& buf = page_buf_[nesting_];
        uint32_t node = n.id;
        absl::Status st = reg_->ReadBlocks(node, segid_, grant, p * kPage, absl::MakeSpan(buf));
        Content c = ReadContent(buf.data());
        // The version's generation as of the read (what it was when read).
        uint64_t home_gen = st.ok() ? GenOf(p, c) : 0;
        TRACE("home: read of page %d for node %d: %s (stamp %d store %d)", p, node, st.ToString(),
              c.stamp, c.wid);
        if (!n.up || n.inc != inc) return;
        Message(
            n, /*to_node=*/true,
            [this, &n, inc, p, gen, st, c, home_gen] {
              RunOnNode(n, inc, [this, &n, p, gen, st, c, home_gen] {
                Install(n, p, gen, st, c, home_gen);
              });
            },
            [this, &n, p, gen] {
              NodeAt(n, absl::ZeroDuration(), [this, &n, p, gen] {
                Install(n, p, gen, absl::UnavailableError("connection lost"), Content{}, 0);
              });
            });
      },
      [this, &n, p, gen] {
        NodeAt(n, absl::ZeroDuration(), [this, &n, p, gen] {
          Install(n, p, gen, absl::UnavailableError("connection lost"), Content{}, 0);
        });
      });
}

// FaultService::Install and FetchFailed, for one page.
void Simulation::Install(Node& n, uint64_t p, uint64_t gen, absl::Status st, Content c,
                         uint64_t home_gen) {
  if (!n.att) return;
  std::shared_ptr<Attachment> att = n.att;
  if (!st.ok()) {
    {
      absl::MutexLock lock(&att->cache->mu);
      if (IsRetry(st)) {
        att->cache->AbandonFetch(p, 1);
      } else if (att->cache->state[p] == PageState::kFetching) {
        att->cache->state[p] = PageState::kPoisoned;
      }
    }
    if (IsRetry(st)) {
      NodeAt(n, kPoll, [this, &n, p] {
        if (!quiet_) Fault(n, p);
      });
    } else {
      TRACE("node %d: fetch of page %d failed: %s (SIGBUS)", n.id, p, st.ToString());
      n.readers.erase(p);
    }
    return;
  }
  bool installed = false;
  {
    absl::MutexLock lock(&att->cache->mu);
    bool overtaken = att->cache->BegunSince(gen, p, 1) && opt_.mutation != Mutation::kInstallStale;
    if (overtaken || att->cache->revoked) {
      att->cache->AbandonFetch(p, 1);
      TRACE("node %d: fetch of page %d discarded (%s)", n.id, p,
            att->cache->revoked ? "revoked" : "a range_begin overtook it");
    } else if (att->cache->state[p] == PageState::kFetching) {
      att->cache->state[p] = PageState::kClean;
      ++att->cache->resident;
      n.data[p] = c;
      n.base_gen[p] = home_gen;
      n.put_back.erase(p);
      installed = true;
      TRACE("node %d: installed page %d (stamp %d store %d)", n.id, p, c.stamp, c.wid);
    }
  }
  if (installed) {
    WakeReaders(n, p, p + 1);
  } else {
    NodeAt(n, absl::ZeroDuration(), [this, &n, p] {
      if (!quiet_) Fault(n, p);
    });
  }
}

// Faulting threads waiting on [p0, p1) wake: those on installed pages
// read, the others fault again (unless still in a window).
void Simulation::WakeReaders(Node& n, uint64_t p0, uint64_t p1) {
  if (!n.att) return;
  for (uint64_t p = p0; p < p1; ++p) {
    auto it = n.readers.find(p);
    if (it == n.readers.end() || it->second == 0) continue;
    PageState s;
    bool in_window;
    {
      absl::MutexLock lock(&n.att->cache->mu);
      s = n.att->cache->state[p];
      in_window = n.att->cache->InWindow(p);
    }
    if (s == PageState::kClean || s == PageState::kDirty || s == PageState::kWriteback) {
      int count = it->second;
      n.readers.erase(it);
      for (int i = 0; i < count; ++i) Observe(n, p);
    } else if (!in_window && !quiet_) {
      Fault(n, p);
    }
  }
}

// FaultService::WriteBackPages for one page: a home's "retry" is retried
// until the deadline, or (a sync's copy, `epoch`) until a newer copy
// supersedes it.
void Simulation::WriteBack(Node& n, uint64_t p, Content c, absl::Time deadline,
                           std::optional<uint64_t> epoch,
                           std::function<void(absl::Status, bool, uint64_t)> done) {
  std::shared_ptr<Attachment> att = n.att;
  uint64_t grant = att->grant;
  uint32_t inc = n.inc;
  auto answer = [this, &n, att, p, c, deadline, epoch, done](absl::Status st, uint64_t gen) {
    if (st.ok() || !IsRetry(st) || Now() > deadline) return done(st, false, gen);
    if (epoch) {
      bool superseded;
      {
        absl::MutexLock lock(&att->cache->mu);
        superseded = att->cache->wb_epoch != *epoch;
      }
      if (superseded) return done(st, true, 0);
    }
    NodeAt(n, kPoll,
           [this, &n, p, c, deadline, epoch, done] { WriteBack(n, p, c, deadline, epoch, done); });
  };
  Message(
      n, /*to_node=*/false,
      [this, &n, inc, p, c, grant, answer] {
        std::vector<uint8_t>& buf = page_buf_[nesting_];
        WriteContent(buf.data(), c);
        uint32_t node = n.id;
        uint64_t gone_before = gone_gen_[p];
        std::optional<absl::Time> outer = writing_since_;
        writing_since_ = Now();
        absl::Status st = reg_->WriteBlocks(node, segid_, grant, p * kPage, buf);
        writing_since_ = outer;
        TRACE("home: write-back of page %d (store %d) from node %d: %s", p, c.wid, node,
              st.ToString());
        uint64_t gen = 0;
        if (st.ok()) {
          Landed(p, c, node, gone_before);
          gen = home_gen_[p];
        }
        // It returned: Begins waiting for it go on (after it landed).
        CheckWriteWaits();
        if (!n.up || n.inc != inc) return;
        Message(
            n, /*to_node=*/true,
            [this, &n, inc, st, gen, answer] {
              RunOnNode(n, inc, [st, gen, answer] { answer(st, gen); });
            },
            [this, &n, answer] {
              NodeAt(n, absl::ZeroDuration(),
                     [answer] { answer(absl::UnavailableError("connection lost"), 0); });
            });
      },
      [this, &n, answer] {
        NodeAt(n, absl::ZeroDuration(),
               [answer] { answer(absl::UnavailableError("connection lost"), 0); });
      });
}

// FaultService::Sync over the whole attachment, in rounds.
void Simulation::StartSync(Node& n) {
  if (!n.up || !n.att || n.syncing || Now() < n.frozen_until) return;
  n.syncing = true;
  n.sync_lost = n.sync_still_kept = absl::OkStatus();
  TRACE("node %d: client syncs", n.id);
  SyncRound(n, Now() + kWriteBudget, n.last_write);
}

void Simulation::SyncRound(Node& n, absl::Time deadline, std::map<uint64_t, uint64_t> snapshot) {
  std::shared_ptr<Attachment> att = n.att;
  std::vector<std::pair<uint64_t, Content>> pages;
  uint64_t epoch;
  {
    absl::ReleasableMutexLock lock(&att->cache->mu);
    bool kept_in_window =
        !att->cache->windows.empty() &&
        (!att->cache->kept_aside.empty() ||
         (!att->cache->kept_writing.empty() && opt_.mutation != Mutation::kSyncIgnoresWritingBack));
    if (kept_in_window && Now() < deadline) {
      lock.Release();
      NodeAt(n, kPoll, [this, &n, deadline, snapshot] { SyncRound(n, deadline, snapshot); });
      return;
    }
    if (kept_in_window && n.sync_still_kept.ok() && opt_.mutation != Mutation::kSyncOkPastBudget)
      n.sync_still_kept = ErrnoStatus(EAGAIN, "kept aside by a window open past the budget");
    if (att->cache->revoked) {
      att->cache->lost_pages = 0;
      lock.Release();
      return SyncDone(n, ErrnoStatus(EIDRM, "attachment revoked"), snapshot);
    }
    if (att->cache->lost_pages > 0) {
      n.sync_lost =
          ErrnoStatus(EIO, absl::StrFormat("%d page(s) discarded", att->cache->lost_pages));
      att->cache->lost_pages = 0;
    }
    for (uint64_t p = 0; p < att->pages(); ++p) {
      if (att->cache->state[p] != PageState::kDirty) continue;
      att->cache->state[p] = PageState::kWriteback;
      --att->cache->dirty;
      pages.emplace_back(p, n.data[p]);
    }
    epoch = att->cache->wb_epoch;
  }
  struct Round {
    std::vector<std::pair<uint64_t, Content>> pages;
    std::vector<bool> ok, gone;
    size_t next = 0;
    bool superseded = false;
    absl::Status result;
  };
  auto r = std::make_shared<Round>();
  r->pages = std::move(pages);
  r->ok.assign(r->pages.size(), false);
  r->gone.assign(r->pages.size(), false);
  auto step = std::make_shared<std::function<void()>>();  // as in EndWindow
  std::weak_ptr<std::function<void()>> weak = step;
  *step = [this, &n, att, r, weak, epoch, deadline, snapshot] {
    if (r->next < r->pages.size()) {
      size_t i = r->next++;
      WriteBack(
          n, r->pages[i].first, r->pages[i].second, Now() + kWriteBudget, epoch,
          [this, &n, r, i, self = weak.lock()](absl::Status st, bool superseded, uint64_t gen) {
            r->ok[i] = st.ok();
            r->gone[i] = ToErrno(st) == ENXIO;
            if (r->gone[i]) {
              ++result_.stats.refused_gone;
              TRACE("node %d: write-back of page %d refused: address gone", n.id,
                    r->pages[i].first);
              return (*self)();  // counted lost below, not an error of the sync
            }
            if (st.ok()) {
              // The copy is what the home now holds (with any store
              // made since on top).
              uint64_t p = r->pages[i].first;
              n.base_gen[p] = gen;
              if (n.put_back.erase(p)) ++result_.stats.put_back_synced;
            }
            if (superseded) {
              r->superseded = true;
            } else if (!st.ok() && r->result.ok()) {
              r->result = st;
            }
            (*self)();
          });
      return;
    }
    {
      absl::MutexLock lock(&att->cache->mu);
      for (size_t i = 0; i < r->pages.size(); ++i) {
        uint64_t p = r->pages[i].first;
        if (r->gone[i] && att->cache->state[p] == PageState::kDirty) {
          att->cache->state[p] = PageState::kWriteback;  // as WriteBackRuns: dropped too
          --att->cache->dirty;
        }
        if (att->cache->state[p] != PageState::kWriteback) continue;
        if (r->gone[i]) {
          // FaultService::WriteBackRuns: dropped, counted lost.
          att->cache->state[p] = PageState::kAbsent;
          --att->cache->resident;
          ++att->cache->lost_pages;
          n.put_back.erase(p);
        } else if (r->ok[i]) {
          att->cache->state[p] = PageState::kClean;
        } else {
          att->cache->state[p] = PageState::kDirty;
          ++att->cache->dirty;
        }
      }
    }
    if (r->superseded && r->result.ok() && Now() < deadline) {
      NodeAt(n, absl::ZeroDuration(),
             [this, &n, deadline, snapshot] { SyncRound(n, deadline, snapshot); });
      return;
    }
    absl::Status result = r->result;
    if (r->superseded && result.ok()) result = ErrnoStatus(EAGAIN, "superseded");
    {
      absl::MutexLock lock(&att->cache->mu);
      if (att->cache->lost_pages > 0 && n.sync_lost.ok()) {
        n.sync_lost =
            ErrnoStatus(EIO, absl::StrFormat("%d page(s) discarded", att->cache->lost_pages));
        att->cache->lost_pages = 0;
      }
    }
    if (!n.sync_lost.ok()) result = n.sync_lost;
    if (result.ok()) result = n.sync_still_kept;
    SyncDone(n, result, snapshot);
  };
  (*step)();
}

void Simulation::SyncDone(Node& n, absl::Status st, const std::map<uint64_t, uint64_t>& snapshot) {
  n.syncing = false;
  TRACE("node %d: sync returns %s", n.id, st.ToString());
  if (!st.ok()) {
    ++result_.stats.syncs_failed;
    ReportLoss(n);
    return;
  }
  ++result_.stats.syncs_ok;
  // tether_sync returned OK: every store the client made before it is at
  // the home (or a newer store to the page is), or its loss was reported.
  for (const auto& [p, w] : snapshot) {
    if (landed_.count(w) || max_landed_[p] > w || reported_.count(w)) continue;
    Fail(
        "node %d: sync returned OK, but store %d to page %d (acknowledged before the sync) is "
        "not at the home",
        n.id, w, p);
  }
}

// The writer learns that its unsynced stores may be gone (a failed sync,
// or its daemon crashed under it).
void Simulation::ReportLoss(Node& n) {
  for (const auto& [p, w] : n.last_write)
    if (!landed_.count(w)) reported_.insert(w);
}

void Simulation::Attach(Node& n) {
  Credentials cred{0, 1000, 1000, {}};  // the owner: not root, which would be squashed
  // PeerServer::Attach: the grant of a lease is recorded before the
  // registry's fence check; PeerDirectory counts it from the request's
  // sending (here: now, the attach being one step).
  absl::Time sent = Now();
  if (home_leases_) home_leases_->Granted(n.id);
  auto g = reg_->Attach(segid_, cred, /*write=*/true, n.id);
  if (!g.ok()) {
    TRACE("node %d: attach refused: %s", n.id, g.status().ToString());
    n.att = nullptr;
    return;
  }
  auto att = std::make_shared<Attachment>();
  att->id = n.id;
  att->segid = segid_;
  att->home = kHome;
  att->grant = g->id;
  att->size = npages_ * kPage;
  att->writable = true;
  att->cache = std::make_shared<SegmentCache>();  // the node's copy of the segment
  att->cache->home = kHome;
  att->cache->segid = segid_;
  att->cache->seg_pages = npages_;
  {
    absl::MutexLock lock(&att->cache->mu);
    att->cache->state.Reset(0, npages_);
  }
  n.att = att;
  if (n.leases) {
    n.leases->Granted(kHome, sent, kLeases.lease);
    n.atts->Insert(att, /*owner=*/1, /*apid=*/1);
  }
  n.data.assign(npages_, Content{});
  n.base_gen.assign(npages_, 0);
  n.kept_gen.clear();
  n.readers.clear();
  n.inbox.clear();
  n.inbox_busy = false;
  n.syncing = false;
}

void Simulation::Crash(Node& n) {
  if (!n.up) return;
  ++result_.stats.crashes;
  TRACE("node %d: daemon crashes (its clients' attachments are lost)", n.id);
  n.up = false;
  ++n.inc;
  n.att = nullptr;
  n.keeper.reset();  // the daemon's lease state dies with it
  n.renewer.reset();
  n.atts.reset();
  n.leases.reset();
  ReportLoss(n);  // the clients see ENOTCONN
  At(rng_.Ms(100, 3000), [this, &n] { Restart(n); });
}

void Simulation::Restart(Node& n) {
  n.up = true;
  n.frozen_until = Now();
  TRACE("node %d: daemon restarts", n.id);
  NewDaemon(n);
  Attach(n);
  SchedulePass(n, absl::ZeroDuration());
}

// --- leases: the daemon's LeaseKeeper, driven --------------------------------

// The keeper's LeaseRenewer (PeerDirectory::Renew): the simulated network.
class SimRenewer final : public LeaseRenewer {
 public:
  SimRenewer(Simulation* sim, Node* n) : sim_(sim), n_(n) {}
  void Renew(uint32_t, absl::Duration timeout, Done done) override {
    sim_->RenewRequest(*n_, timeout, std::move(done));
  }

 private:
  Simulation* const sim_;
  Node* const n_;
};

// A daemon starts on node `n` (at the beginning, or after a crash): with
// leases, its tables and keeper are new, as Tetherd makes them.
void Simulation::NewDaemon(Node& n) {
  if (!opt_.leases) return;
  n.leases = std::make_unique<MapperLeaseTable>(kLeases, &clock_);
  n.atts = std::make_unique<AttachmentTable>(n.inc);
  n.renewer = std::make_unique<SimRenewer>(this, &n);
  n.keeper = std::make_unique<LeaseKeeper>(
      n.id, n.leases.get(), n.renewer.get(), n.atts.get(),
      [this, &n](Attachment& att, const std::string& why) { KeeperRevoke(n, att, why); },
      /*homes=*/nullptr);
  n.pass_overdue = false;
}

// The keeper's thread (LeaseKeeper::Loop): a pass, a sleep of SleepAfter
// unless a renewal's answer wakes it, and again. Stopped with its daemon
// (a pass due while the daemon is frozen runs when it thaws: the
// documented gap, which Observe excuses only then) and, like the other
// activity, once the run is quiet.
void Simulation::SchedulePass(Node& n, absl::Duration after) {
  if (!n.keeper) return;
  uint64_t token = ++n.pass_token;
  uint32_t inc = n.inc;
  At(after, [this, &n, inc, token] { KeeperPass(n, inc, token); });
}

void Simulation::KeeperPass(Node& n, uint32_t inc, uint64_t token) {
  if (!n.up || n.inc != inc || n.pass_token != token || quiet_) return;
  if (Now() < n.frozen_until) {
    n.pass_overdue = true;
    Push(n.frozen_until, [this, &n, inc, token] { KeeperPass(n, inc, token); });
    return;
  }
  n.pass_overdue = false;
  absl::Time next = n.keeper->Tick();
  SchedulePass(n, n.keeper->SleepAfter(next));
}

// The keeper's Revoker (FaultService::Revoke in the daemon).
void Simulation::KeeperRevoke(Node& n, Attachment& att, const std::string& why) {
  if (!n.att || n.att.get() != &att) {
    Fail("node %d: the keeper revoked an attachment the node does not hold", n.id);
    return;
  }
  {
    absl::MutexLock lock(&att.cache->mu);
    if (att.cache->revoked) return;
  }
  if (absl::StartsWith(why, "fenced:")) {
    ++result_.stats.renewal_revoked;
  } else {
    ++result_.stats.lapse_revoked;
  }
  TRACE("node %d: lease keeper revokes", n.id);
  Revoke(n, why);
}

// PeerDirectory::Renew and PeerServer::Renew over the simulated network:
// the home records the grant, then reads the node's fences (in that
// order, lease_table.h) and answers; `done` runs on the node's daemon
// (postponed while it is frozen, dropped if it crashed), once: the answer,
// a lost connection, or the call's deadline.
void Simulation::RenewRequest(Node& n, absl::Duration timeout, LeaseRenewer::Done done) {
  ++result_.stats.renewals;
  auto once = std::make_shared<LeaseRenewer::Done>(std::move(done));
  uint32_t inc = n.inc;
  auto finish = [this, &n, inc, once](absl::StatusOr<LeaseRenewal> r) {
    RunOnNode(n, inc, [this, &n, once, r] {
      if (!*once) return;
      LeaseRenewer::Done d = std::move(*once);
      *once = nullptr;
      if (!r.ok()) ++result_.stats.renewals_failed;
      TRACE("node %d: renewal %s", n.id,
            r.ok() ? absl::StrFormat("answered (%d fence(s))", r->fenced.size())
                   : r.status().ToString());
      std::move(d)(r);
      if (n.keeper && n.keeper->TakeWakeUp()) SchedulePass(n, absl::ZeroDuration());
    });
  };
  At(timeout, [finish] { finish(absl::DeadlineExceededError("renewal: deadline")); });
  Message(
      n, /*to_node=*/false,
      [this, &n, finish] {
        home_leases_->Granted(n.id);
        LeaseRenewal r;
        r.incarnation = home_incarnation_;
        r.lease = kLeases.lease;
        r.fenced = reg_->FencedSegments(n.id);
        Message(
            n, /*to_node=*/true, [finish, r] { finish(r); },
            [finish] { finish(absl::UnavailableError("renewal: connection lost")); });
      },
      [finish] { finish(absl::UnavailableError("renewal: connection lost")); });
}

// --- the scenario -------------------------------------------------------------

void Simulation::RandomAction() {
  if (quiet_ || stop_) return;
  Node& n = *nodes_[rng_.Below(nodes_.size())];
  uint64_t p = rng_.Below(npages_);
  uint64_t dice = rng_.Below(1000);
  if (dice < 380) {
    ClientRead(n, p);
  } else if (dice < 620) {
    // Stores go to the pages this node owns: page-sized write-backs from
    // two writers would overwrite each other by design.
    uint64_t owned = p - p % nodes_.size() + n.index;
    if (owned >= npages_) owned = n.index;
    if (owned < npages_) ClientWrite(n, owned);
  } else if (dice < 720) {
    StartSync(n);
  } else if (dice < 900) {
    StartChange();
  } else if (dice < 940) {
    if (n.up && Now() >= n.frozen_until) {
      absl::Duration d = rng_.Permille(500) ? rng_.Ms(10, 500) : rng_.Ms(500, 6000);
      n.frozen_until = Now() + d;
      ++result_.stats.freezes;
      TRACE("node %d: daemon frozen for %dms", n.id, absl::ToInt64Milliseconds(d));
    }
  } else if (dice < 960) {
    absl::Duration d = rng_.Ms(10, 4000);
    n.cut_until = std::max(n.cut_until, Now() + d);
    TRACE("node %d: link to the home cut for %dms", n.id, absl::ToInt64Milliseconds(d));
  } else if (dice < 975) {
    Crash(n);
  }
}

void Simulation::Quiesce() {
  quiet_ = true;
  TRACE("quiet: no more activity; links heal, nodes thaw");
  for (auto& n : nodes_) {
    n->frozen_until = std::min(n->frozen_until, Now());
    n->cut_until = std::min(n->cut_until, Now());
    n->readers.clear();
  }
}

void Simulation::FinalChecks() {
  // 4. Every window ends: at the home (a read of every page is served,
  // not refused with "retry") and at every node.
  for (uint64_t p = 0; p < npages_; ++p) {
    std::vector<uint8_t> buf(kPage);
    absl::Status st =
        reg_->ReadBlocks(kProbe, segid_, probe_grant_, p * kPage, absl::MakeSpan(buf));
    if (IsRetry(st)) Fail("a window over page %d is still open at the home at quiescence", p);
    if (!st.ok() && !IsRetry(st)) Fail("probe read of page %d: %s", p, st.ToString());
  }
  for (auto& n : nodes_) {
    if (!n->up || !n->att) continue;
    absl::MutexLock lock(&n->att->cache->mu);
    if (!n->att->cache->windows.empty())
      Fail("node %d still has %d window(s) open at quiescence", n->id,
           n->att->cache->windows.size());
    if (!n->att->cache->kept_aside.empty())
      Fail("node %d still keeps %d page(s) aside at quiescence", n->id,
           n->att->cache->kept_aside.size());
  }
  // 2. No acknowledged store is lost while its address exists: each
  // owner's last store reached the home, or the writer was told.
  for (auto& n : nodes_) {
    for (const auto& [p, w] : n->last_write) {
      if (landed_.count(w) || reported_.count(w)) continue;
      Fail(
          "node %d: store %d to page %d was acknowledged, never reached the home, and its loss "
          "was never reported",
          n->id, w, p);
    }
  }
}

SimResult Simulation::Run() {
  // The scenario.
  const uint64_t nnodes = 2 + rng_.Below(3);
  npages_ = 3 + rng_.Below(6);
  deadline_ = rng_.Permille(500) ? absl::Milliseconds(2000) : rng_.Ms(200, 2000);
  drop_permille_ = rng_.Below(4) * 10;
  max_delay_us_ = rng_.Permille(500) ? 2000 : 50'000;
  fifo_ = rng_.Permille(500);
  interleave_permille_ = rng_.Below(3) * 150;
  gone_permille_ = rng_.Permille(500) ? 0 : 250;
  TRACE("seed %d: %d nodes, %d pages, deadline %dms, drops %d/1000, delays <= %dus%s", opt_.seed,
        nnodes, npages_, absl::ToInt64Milliseconds(deadline_), drop_permille_, max_delay_us_,
        fifo_ ? ", fifo links" : ", reordering links");

  // The home: this process exports npages_ of its own memory.
  mem_ = static_cast<uint8_t*>(
      mmap(nullptr, npages_ * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (mem_ == MAP_FAILED) {
    mem_ = nullptr;
    Fail("mmap: %s", std::strerror(errno));
    return result_;
  }
  home_gen_.assign(npages_, 0);
  gen_of_.assign(npages_, {});
  floor_.assign(npages_, 0);
  max_landed_.assign(npages_, 0);
  gone_gen_.assign(npages_, 0);
  for (uint64_t p = 0; p < npages_; ++p) {
    Content v{next_stamp_++, 0};
    WriteContent(mem_ + p * kPage, v);
    Landed(p, v, kHome);
  }
  reg_ = std::make_unique<SegmentRegistry>(kHome, 1);
  if (absl::Status st = reg_->Start(this); !st.ok()) {
    Fail("registry start: %s", st.ToString());
    return result_;
  }
  coord_ = std::make_unique<InvalidationCoordinator>(kHome, reg_.get(), this, deadline_,
                                                     home_leases_.get());
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  auto memory = ExporterMemory::Open(pidfd, getpid());
  if (!memory.ok()) {
    Fail("exporter memory: %s", memory.status().ToString());
    return result_;
  }
  Credentials owner{getpid(), 1000, 1000, {}};
  auto segid = reg_->Make(owner, reinterpret_cast<uint64_t>(mem_), npages_ * kPage, 0600,
                          *std::move(memory));
  if (!segid.ok()) {
    Fail("export: %s", segid.status().ToString());
    return result_;
  }
  segid_ = *segid;
  SegidParts parts;
  if (!ParseSegid(segid_, &parts)) {
    Fail("segid %#x does not parse", segid_);
    return result_;
  }
  home_incarnation_ = parts.incarnation;
  probe_grant_ = reg_->Attach(segid_, owner, false, kProbe)->id;
  for (uint32_t i = 0; i < nnodes; ++i) {
    auto n = std::make_unique<Node>();
    n->id = 2 + i;
    n->index = i;
    n->frozen_until = n->cut_until = Now();
    nodes_.push_back(std::move(n));
  }
  for (auto& n : nodes_) {
    NewDaemon(*n);
    Attach(*n);
    SchedulePass(*n, absl::ZeroDuration());
  }

  // Random activity over kRun, then quiet; then every live node syncs.
  uint64_t actions = 60 + rng_.Below(120);
  for (uint64_t i = 0; i < actions; ++i)
    At(absl::Microseconds(static_cast<int64_t>(rng_.Below(absl::ToInt64Microseconds(kRun)))),
       [this] { RandomAction(); });
  At(kRun, [this] { Quiesce(); });
  while (Step()) {
  }
  for (int round = 0; round < 2 && result_.ok; ++round) {
    for (auto& n : nodes_) StartSync(*n);
    while (Step()) {
    }
  }
  if (result_.ok) FinalChecks();
  result_.trace.assign(trace_.begin(), trace_.end());
  return result_;
}

}  // namespace

SimResult RunSimulation(const SimOptions& options) {
  Simulation sim(options);
  return sim.Run();
}

}  // namespace sim
}  // namespace tether
