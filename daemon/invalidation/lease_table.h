// Leases: how long a mapper node may go on serving copies of a home's
// pages without hearing from that home, and how long a home that fenced a
// silent mapper node must wait before it lets the exporter go on (G1 for
// partitioned, frozen and crashed mappers; docs/consistency.md, "When a
// node goes silent").
//
// A lease is node to node: mapper node M holds one from home node H while
// M has grants from H. H grants it by answering an Attach or a Renew; M
// renews it in the background every lease/3 (LeaseKeeper, mapper/).
// Both sides count conservatively, each on its own clock, so that M's
// lease always ends before H believes it does as long as the two clocks
// run at rates within `margin` of each other:
//
//   mapper: valid from when it SENT the request, for lease * (1 - margin)
//   home:   valid from when it GRANTED it,       for lease * (1 + margin)
//
// The request is sent before the home grants it, so M's start is never
// after H's. When a home fences M for a segment (M missed a range_begin
// deadline) it waits until M's lease as of the fence has run out, or M
// acknowledged the REVOKE, whichever comes first (InvalidationCoordinator).
// A renewal granted after the fence carries the fence with it (the home
// lists the segments M is fenced for, and M revokes them before it counts
// the new lease), so only the lease granted before the fence matters —
// and the home must record a grant BEFORE it reads the fences it sends
// back, while the coordinator reads the lease AFTER it fenced: whichever
// comes first, M either revokes or the home waits.
//
// A mapper that cannot renew in time stops serving that home's pages
// itself: it *suspends* the home's attachments (drops clean copies, keeps
// dirty pages aside, faults wait), and revokes them (its clients get
// SIGBUS, tether_sync reports the discarded writes) only if the home has
// not answered within the restart grace. A home that restarted answers
// with a new incarnation: with the same segment epoch (its state
// directory kept it) M suspends, reclaims its grants, and resumes the
// segments the home took back; with another epoch it revokes at once.
// The restarted home in turn lets no exporter's change return before
// every lease of its earlier run has run out (HomeLeaseTable::Restarted):
// by then every mapper either lapsed (and suspended) or renewed with it
// (and suspended first), so none serves a copy the new home cannot
// invalidate (docs/consistency.md, "When the home daemon restarts").
//
// These two classes are only the bookkeeping: a clock, a mutex, no thread
// and no I/O, so that unit tests and the protocol simulation (tests/sim)
// drive them with a FakeClock. Lease length zero means leases are off:
// nothing expires at the mapper, and the home never waits.
//
// Thread contract: every method may be called from any thread; one mutex
// per table guards its map and nothing is called under it (the clock's
// Now() is read before it is taken).
#ifndef TETHER_DAEMON_INVALIDATION_LEASE_TABLE_H_
#define TETHER_DAEMON_INVALIDATION_LEASE_TABLE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/clock.h"

namespace tether {

struct LeaseConfig {
  absl::Duration lease = absl::ZeroDuration();  // zero: leases off
  double margin = 0.1;                          // clock-rate margin, 0 <= margin < 1
  bool enabled() const { return lease > absl::ZeroDuration(); }
};

// The home's side: when it last granted each mapper node a lease.
class HomeLeaseTable {
 public:
  HomeLeaseTable(LeaseConfig config, Clock* clock) : config_(config), clock_(clock) {}

  // Records a grant to `node` now (an Attach or a Renew it is answering).
  // Call it before reading the fences the answer carries (see above).
  void Granted(uint32_t node);
  // When the lease `node` holds as of now ends, as this home counts it
  // (grant + lease * (1 + margin)); InfinitePast if it holds none or
  // leases are off. Read it after fencing the node.
  absl::Time ExpiresAt(uint32_t node) const;

  // This daemon restarted with the segment epoch of an earlier run: mapper
  // nodes may hold leases the earlier run granted, up to lease * (1 +
  // margin) from now. Every node counts as granted now.
  void Restarted();
  // Until when leases of the earlier run may last (InfinitePast if the
  // daemon did not restart so, or leases are off). The coordinator lets
  // no Begin return before (InvalidationCoordinator::FinishBegin).
  absl::Time QuietUntil() const;

  const LeaseConfig& config() const { return config_; }
  Clock* clock() const { return clock_; }

 private:
  const LeaseConfig config_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, absl::Time> granted_ ABSL_GUARDED_BY(mu_);
  absl::Time quiet_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// What a home answered a renewal with.
struct LeaseRenewal {
  uint64_t incarnation = 0;                              // the home daemon's, now
  uint32_t epoch = 0;                                    // its segment epoch (0: unknown)
  absl::Duration lease = absl::ZeroDuration();           // zero: the home has leases off
  std::vector<std::pair<uint64_t, std::string>> fenced;  // segids this node is fenced for, why
  // Answers to reclaimed grants (RenewReclaiming): segids the home could
  // not take back (why), and those of segments not registered again yet.
  std::vector<std::pair<uint64_t, std::string>> gone;
  std::vector<uint64_t> pending;
};

// A grant this node holds, sent again to a home that restarted.
struct HeldGrant {
  uint64_t segid = 0;
  uint64_t grant = 0;
  bool write = false;
  uint32_t uid = 0, gid = 0;
  std::vector<uint32_t> groups;
};

// How the mapper side reaches a home to renew (PeerDirectory implements it
// over gRPC). Renew does not block: `done` runs once, on another thread or
// inline if the request could not be sent.
class LeaseRenewer {
 public:
  using Done = absl::AnyInvocable<void(absl::StatusOr<LeaseRenewal>) &&>;
  virtual ~LeaseRenewer() = default;
  virtual void Renew(uint32_t home, absl::Duration timeout, Done done) = 0;
  // A renewal that also hands `grants` back to a home that restarted
  // (peer.proto, HeldGrant). A renewer that cannot sends a plain renewal.
  virtual void RenewReclaiming(uint32_t home, absl::Duration timeout, std::vector<HeldGrant> grants,
                               Done done) {
    Renew(home, timeout, std::move(done));
  }
};

// The mapper's side: for each home, until when its lease is good (on this
// node's clock), and when to renew.
class MapperLeaseTable {
 public:
  MapperLeaseTable(LeaseConfig config, Clock* clock) : config_(config), clock_(clock) {}

  // A request sent at `sent` (this node's clock, read before sending) was
  // granted with `lease` (the home's length; zero: that home has leases
  // off, and its lease never expires here).
  void Granted(uint32_t home, absl::Time sent, absl::Duration lease);

  // The homes among `homes` to renew now: their lease is a third used up
  // (or lapsed) and no renewal is in flight. Marks them in flight, sent
  // now; the caller sends and reports with Renewed or RenewFailed, passing
  // the `sent` time this returned.
  std::vector<std::pair<uint32_t, absl::Time>> StartRenewals(const std::vector<uint32_t>& homes);
  // Marks a renewal to `home` in flight now whether or not it is due, and
  // returns its send time; InfinitePast if one is in flight already.
  absl::Time StartRenewalNow(uint32_t home);
  void Renewed(uint32_t home, absl::Time sent, absl::Duration lease);
  void RenewFailed(uint32_t home);

  // Whether the lease from `home` has lapsed now. A home that never
  // granted one counts as lapsed: a node holds attachments only from
  // homes that granted it one at the attach. Entries are kept for good
  // (one per node of the cluster): forgetting one between an Attach's
  // grant and its attachment would revoke that attachment.
  bool Lapsed(uint32_t home) const;
  // When this node's lease from `home` ends; InfiniteFuture if that home
  // has leases off or leases are off here, InfinitePast if it has none.
  absl::Time ValidUntil(uint32_t home) const;
  // The earliest moment something is due for `homes` (a renewal or an
  // expiry still ahead): the keeper sleeps until then at most. A lease that
  // already lapsed is not an event (else the keeper would spin on it).
  absl::Time NextEvent(const std::vector<uint32_t>& homes) const;

  const LeaseConfig& config() const { return config_; }
  Clock* clock() const { return clock_; }

 private:
  struct Lease {
    absl::Time valid_until = absl::InfinitePast();
    absl::Time last_sent = absl::InfinitePast();
    absl::Duration lease = absl::ZeroDuration();  // the home's; zero: unbounded
    bool unbounded = false;                       // the home has leases off
    bool in_flight = false;
  };
  absl::Time RenewDue(const Lease& l) const;
  const LeaseConfig config_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_INVALIDATION_LEASE_TABLE_H_
