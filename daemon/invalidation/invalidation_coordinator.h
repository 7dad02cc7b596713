// InvalidationCoordinator: the home side of the invalidation contract
// (G1–G5 in docs/architecture.md, "The invalidation contract").
//
// Begin(): opens a window in the SegmentRegistry (from then on no read of
// the range is served), fans range_begin out in parallel to every node
// that may cache part of the range, and waits for their acks until the
// deadline. A node that misses it, or answers with an error, is fenced:
// its grants are revoked (later requests and write-backs refused) and a
// REVOKE is sent to it. A fenced node may still be serving its clients
// the copies they hold (it is cut off, frozen, or just late), so with
// leases (lease_table.h) Begin() then waits until each node fenced on the
// segment by the end of its fan-out (by it or by an earlier change) has
// acknowledged the REVOKE or its lease, as this home counts it, has run
// out — after which a node that could not renew has revoked them itself.
// Begin() returns when every node has acked, or been fenced and is known
// to hold no copy: the caller (a notifier source) then lets the kernel go
// on. The exporter waits at most the ack deadline plus lease * (1 +
// margin). End() closes the window and sends range_end to the nodes
// that acked, as reliably as a REVOKE (resent for minutes); a node it
// does not reach is fenced, so that every window a mapper opened ends.
// Nothing here touches the exporter's memory (G5).
//
// Write-backs in flight (issue 14). A mapper's write-back that passed the
// registry's checks before the window opened may still be inside
// process_vm_writev: if the change went on, it would land after it — in
// the mapping an munmap and a new mmap put at the address, or after the
// change returned. So Begin, after the fan-out, waits until those
// overlapping its range returned (SegmentRegistry::AwaitWriteBacks: they
// land in the old mapping, or are refused because it is gone), for at most
// `write_back_wait` counted from the window's opening and never past the
// fan-out's own deadline, so the exporter's bound above does not grow. The
// wait must not deadlock against the exporter's mmap_lock, which
// process_vm_writev takes for reading while it pins the pages (it copies
// with the lock dropped). Which changes can wait, by notifier source:
//  - user-space source: every event is read after the kernel dropped
//    mmap_lock (UNMAP and REMAP after the unmap / move, REMOVE after
//    userfaultfd_remove released it): waiting is safe (kAwait).
//  - tether.ko, UNMAP: munmap calls the notifier after it detached the
//    VMAs and downgraded mmap_lock to read (6.1 and 6.12): a write-back
//    not yet pinned takes the lock, finds nothing mapped and is refused
//    (ENXIO); one already pinned finishes its copy into the old pages.
//    kAwait. An mmap(MAP_FIXED) over the range, an mremap, or an munmap
//    that cannot downgrade call it with mmap_lock held for write: a
//    write-back not yet pinned is blocked on that lock until the ack, so
//    the wait runs to its bound (a deadlock otherwise). The write then
//    comes after the change: a module with TETHER_FEAT_WRITE refuses it
//    (the home writes through TETHER_IOC_WRITE, which checks the range's
//    sequence under mmap_lock: SegmentRegistry::WriteBack); with an older
//    module it lands in the new mapping, for MAP_FIXED.
//  - tether.ko, every other type (kDoNotAwait): CLEAR includes the
//    copy-on-write break and THP split that process_vm_writev itself
//    causes (its own BEGIN: waiting would deadlock until the bound on every
//    such write-back); a write racing a PROTECTION change is pinned after
//    it (refused if read-only) or lands during it, as any write concurrent
//    with mprotect; OVERFLOW may hold such a write's own event.
// At the bound Begin goes on (the kernel is let go), logs a warning and
// counts stats().write_backs_outlasted; the late write lands as any write
// racing the change.
//
// Windows on disjoint ranges, or on other segments, proceed concurrently:
// no lock is held while waiting.
//
// Begin() is three steps, also public for a caller that runs time itself
// (the protocol simulation, tests/sim/, which must interleave other events
// with a fan-out on one thread): StartBegin opens the window and sends
// range_begin; the channel's replies arrive (PendingBegin::answered());
// FinishBegin, once every node has answered or at the deadline, fences
// the rest, waits for write-backs in flight and, with leases, waits out
// the fences. Begin() is exactly StartBegin, a wait of up to the fan-out's
// timeout (the ack deadline, or what is left of the caller's budget), and
// FinishBegin. FinishBegin is in turn three steps, for the same caller:
// FenceUnanswered (fences, no wait), AwaitWriteBacks (WriteBacksLanded is
// its condition, for a caller that runs time itself), then WaitOutFences,
// which blocks until FencesHeldUntil(window) — a
// moment on the lease table's clock, which a REVOKE's ack moves back — has
// passed; a caller that runs time itself asks FencesHeldUntil again when
// its clock reaches that moment or a REVOKE is acknowledged.
//
// Thread contract: Begin, End and RevokeAll may be called from any thread,
// concurrently (the notifier source's workers, local clients' brackets,
// the registry's exit watcher). Begin blocks its caller up to the ack
// deadline plus a fenced node's lease; it must not be called on a thread that the fan-out's answers
// need (a transport's serving thread). The object itself holds no lock
// while waiting: the registry and the channel are thread-safe, stats are
// atomics; a range_end that failed fences its node on the channel's
// thread, under the lifeline's mutex, which the destructor takes too.
#ifndef TETHER_DAEMON_INVALIDATION_INVALIDATION_COORDINATOR_H_
#define TETHER_DAEMON_INVALIDATION_INVALIDATION_COORDINATOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/invalidation/notice.h"

namespace tether {

struct InvalidationWindow {
  uint64_t segid = 0;
  uint64_t id = 0;
  uint64_t start = 0, end = 0;
  std::vector<uint32_t> acked;  // to send range_end to
  std::vector<uint32_t> fenced;
  // How many fences this coordinator had made when the fan-out ended
  // (FenceUnanswered): the window waits out those, not later ones.
  uint64_t fences_before = 0;
  // Whether FinishBegin waits for write-backs in flight over the range
  // (InFlightWrites), and until when at most (real time).
  bool await_write_backs = true;
  absl::Time write_backs_until = absl::InfinitePast();
};

// Whether a change's Begin waits for write-backs in flight over its range
// (see InvalidationCoordinator: only where the change does not hold the
// exporter's mmap_lock in a way that write-back needs, and is not caused
// by the write-back itself).
enum class InFlightWrites { kAwait, kDoNotAwait };

struct InvalidationStats {
  std::atomic<uint64_t> windows{0};
  std::atomic<uint64_t> notices_sent{0};
  std::atomic<uint64_t> fenced{0};
  // Begins that waited for a fenced node's lease to run out (not for a
  // REVOKE's ack).
  std::atomic<uint64_t> lease_waits{0};
  // Begins that found a write-back in flight over their range and waited
  // for it; those whose wait ran to its bound (the write lands after the
  // change).
  std::atomic<uint64_t> write_back_waits{0};
  std::atomic<uint64_t> write_backs_outlasted{0};
};

class InvalidationCoordinator {
 public:
  // A range_begin fan-out in flight (StartBegin), until FinishBegin. Any
  // thread; answered() may run concurrently with the channel's replies.
  class PendingBegin {
   public:
    // Every node asked has replied (acked or failed); true when nobody was
    // asked.
    bool answered() const;
    const InvalidationWindow& window() const { return window_; }

   private:
    friend class InvalidationCoordinator;
    struct Replies;
    std::shared_ptr<Replies> replies_;  // null: nobody was asked
    InvalidationWindow window_;
    std::string why_;
    absl::Duration wait_;  // the fan-out's timeout
    absl::Time opened_;    // for the latency histogram (docs/metrics.md)
  };

  // A write-back is one process_vm_writev of a batch of pages: µs, a few
  // ms when the exporter's pages must be faulted in. Longer means it is
  // blocked on the exporter's mmap_lock, which the change holds (see
  // above): waiting more would only hold the exporter.
  static constexpr absl::Duration kWriteBackWait = absl::Milliseconds(100);

  // `leases` (null: no leases, fenced nodes are not waited for) must
  // outlive the coordinator; its clock is the one Begin's lease wait reads.
  // `write_back_wait`: how long Begin waits at most for write-backs in
  // flight, from the window's opening (tests set it long).
  InvalidationCoordinator(uint32_t home_node, SegmentRegistry* registry,
                          InvalidationChannel* channel, absl::Duration ack_deadline,
                          const HomeLeaseTable* leases = nullptr,
                          absl::Duration write_back_wait = kWriteBackWait);
  ~InvalidationCoordinator();

  // Waits for mapper acks until the ack deadline or `deadline`, whichever
  // comes first (a caller whose event waited in a queue passes what is left
  // of its budget).
  // `writes`: whether to wait for write-backs in flight (see above).
  absl::StatusOr<InvalidationWindow> Begin(uint64_t segid, uint64_t start, uint64_t end,
                                           const std::string& why,
                                           absl::Time deadline = absl::InfiniteFuture(),
                                           InFlightWrites writes = InFlightWrites::kAwait);
  // Begin's steps (see above). StartBegin's `deadline` is Begin's: the
  // fan-out's timeout is what is left of it, at most the ack deadline.
  // FinishBegin takes what has been answered by now: a node still waiting
  // is fenced, and with leases FinishBegin waits as Begin does (real time,
  // paced; WaitOutFences) until each fenced node's lease ran out or it
  // acknowledged the REVOKE. It is FenceUnanswered, AwaitWriteBacks, then
  // (with leases) WaitOutFences(window).
  absl::StatusOr<PendingBegin> StartBegin(uint64_t segid, uint64_t start, uint64_t end,
                                          const std::string& why,
                                          absl::Time deadline = absl::InfiniteFuture(),
                                          InFlightWrites writes = InFlightWrites::kAwait);
  InvalidationWindow FinishBegin(PendingBegin pending);
  // FinishBegin's first step: fences every node that has not answered by
  // now (FenceAndHold) and returns the window; never waits. The caller
  // must not let the exporter go on before FencesHeldUntil has passed.
  InvalidationWindow FenceUnanswered(PendingBegin pending);
  // AwaitWriteBacks' condition: every write-back that had passed the
  // registry's checks when the window opened and overlaps its range has
  // returned (or the window does not wait for them). Never waits.
  bool WriteBacksLanded(const InvalidationWindow& window) const;
  // Blocks until WriteBacksLanded(window) or window.write_backs_until;
  // at the bound, logs and counts (stats().write_backs_outlasted) and
  // returns: the change goes on. Takes no lock while waiting but the
  // registry's, in a condition wait.
  void AwaitWriteBacks(const InvalidationWindow& window);
  // WaitOutFences' step: until when a node fenced for the window's
  // segment (by any Begin or End) before the window's fan-out ended may
  // still serve copies of it, on the lease table's clock: the latest
  // lease, as the home counts it, of those fenced nodes that have not
  // acknowledged their REVOKE. InfinitePast when none may (and always
  // without leases). Forgets the fences that no longer hold. Any thread;
  // takes the fences' mutex, never waits.
  absl::Time FencesHeldUntil(const InvalidationWindow& window);
  // Blocks (real time, paced; the decision is FencesHeldUntil's, re-read
  // after every wake-up) until FencesHeldUntil(window) is not after the
  // lease table's Now(). Returns at once without leases.
  void WaitOutFences(const InvalidationWindow& window);
  // After a restart that kept the segment epoch: blocks until every lease
  // of the earlier run has run out (HomeLeaseTable::QuietUntil). FinishBegin.
  void WaitOutRestart(const InvalidationWindow& window);
  // `gone`: sub-ranges (segment offsets) that no longer exist in the
  // exporter (unmap): mappers discard dirty data kept aside for them
  // instead of writing it back over whatever is mapped there later.
  void End(const InvalidationWindow& window,
           const std::vector<std::pair<uint64_t, uint64_t>>& gone = {});
  // The segment is gone (removed, exporter exited): every node holding a
  // grant revokes its attachments. Does not wait.
  void RevokeAll(uint64_t segid, const std::string& why);
  // An operator's revoke (`tetherctl revoke`): every node holding a grant
  // on the segment is fenced for it, as a node that missed a range_begin
  // is — its grants go, its later requests are refused, it is sent REVOKE
  // (its attachments' next access raises SIGBUS) and it may not attach
  // the segment again (EIDRM) — with `why` as the reason. The segment and
  // the exporter's memory are untouched. Returns the nodes fenced. Does
  // not wait.
  std::vector<uint32_t> RevokeGrants(uint64_t segid, const std::string& why);

  const InvalidationStats& stats() const { return stats_; }
  absl::Duration ack_deadline() const { return ack_deadline_; }

 private:
  const uint32_t home_node_;
  SegmentRegistry* const registry_;
  InvalidationChannel* const channel_;
  // Fences `nodes` for the segment and sends them REVOKE; with leases,
  // records until when each may still serve the segment (its lease as of
  // the fence, unless it acknowledges the REVOKE first: FencesHeldUntil).
  // `what` says what the node did not do (the reason, after "node N ").
  void FenceAndHold(uint64_t segid, const std::vector<uint32_t>& nodes, const std::string& what);
  // Records in `w` the fences made so far (fences_before).
  InvalidationWindow Snapshot(InvalidationWindow w);

  const absl::Duration ack_deadline_;
  const HomeLeaseTable* const leases_;
  const absl::Duration write_back_wait_;
  InvalidationStats stats_;

  // A fenced node that may still serve a segment until `expires`.
  struct FenceHold {
    absl::Time expires;
    uint64_t seq = 0;           // FenceHolds::fences when it was made (1, 2, ...)
    bool revoke_acked = false;  // guarded by FenceHolds::mu
  };
  // Shared with REVOKE callbacks, which may outlive the coordinator.
  struct FenceHolds {
    absl::Mutex mu;
    absl::flat_hash_map<uint64_t, std::vector<std::shared_ptr<FenceHold>>> by_segid
        ABSL_GUARDED_BY(mu);
    uint64_t revoke_acks ABSL_GUARDED_BY(mu) = 0;  // wakes WaitOutFences
    uint64_t fences ABSL_GUARDED_BY(mu) = 0;       // holds made so far
  };
  const std::shared_ptr<FenceHolds> holds_ = std::make_shared<FenceHolds>();
  // How a range_end's callback, which may run minutes after End() (on the
  // channel's threads), reaches this object: null once it is destroyed.
  struct Lifeline {
    explicit Lifeline(InvalidationCoordinator* c) : self(c) {}
    absl::Mutex mu;
    InvalidationCoordinator* self ABSL_GUARDED_BY(mu);
  };
  const std::shared_ptr<Lifeline> lifeline_ = std::make_shared<Lifeline>(this);
};

}  // namespace tether

#endif  // TETHER_DAEMON_INVALIDATION_INVALIDATION_COORDINATOR_H_
