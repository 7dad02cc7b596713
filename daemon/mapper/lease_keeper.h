// LeaseKeeper: the mapper side of leases (invalidation/lease_table.h).
// This node serves its clients the pages they hold from a home only while
// it holds a lease from that home. The keeper renews the lease of every
// home this node holds grants or attachments from, every lease/3, with one
// small RPC per home (LeaseRenewer: PeerDirectory's Renew, on gRPC, never
// behind a data transfer). Grants count, not only attachments: tether_attach
// does not ask the home, so an attachment made long after its tether_get
// must still find the lease valid. And it revokes every attachment from a
// home whose lease has lapsed — its clients get SIGBUS on every access, and
// tether_sync reports the writes discarded (EIDRM). A renewal's answer
// revokes, before the new lease counts, the attachments of segments the
// home has fenced this node for (a REVOKE that never arrived) and, at
// once, those of segments from an older incarnation of a home that
// restarted.
//
// With restart handling (SetRestartHandling; tetherd always sets it) a
// lapsed lease first *suspends* the home's attachments instead: clean
// copies dropped, dirty pages kept aside, faults wait (a window over the
// whole cache, FaultService::kSuspendWindow). The home may be restarting:
// if it answers within the grace with the same incarnation (it was frozen
// or cut off), the keeper revokes what it fenced and resumes the rest; with
// a new incarnation and the same segment epoch (restarted, state kept), it
// suspends (if the lease had not lapsed yet), hands its grants back
// (LeaseRenewer::RenewReclaiming) and resumes each segment the home took
// back — the kept-aside dirty pages are written back, faults fetch the
// new home's contents — and revokes those the home says are gone. A home
// still silent after the grace: revoked as above. Resuming writes back, so
// it runs on the keeper's thread (Tick), never on a renewal's.
//
// What it cannot do: a keeper that does not run (the daemon stopped or
// paused) revokes nothing; its clients go on reading what they hold until
// it runs again, and then it revokes at its first pass
// (docs/consistency.md, "When a node goes silent").
//
// Thread contract: Start() and Stop() from the owner (Tetherd's main
// thread). Start runs a thread that calls Tick() whenever something is
// due and at least every 100 ms (to see new homes). Tick() may also be
// called from any other thread (unit tests call it with a FakeClock and
// no thread started; the protocol simulation paces it as the thread does,
// with SleepAfter and TakeWakeUp). Renewal answers arrive on the renewer's threads
// (gRPC's) and revoke there. EnsureLease runs on local client threads.
// mu_ guards only the keeper's own wake-up and log state and the count of
// answers EnsureLease waits on; nothing is called under it. Revocations go through
// FaultService::Revoke (takes the attachment's lock; never the network).
#ifndef TETHER_DAEMON_MAPPER_LEASE_KEEPER_H_
#define TETHER_DAEMON_MAPPER_LEASE_KEEPER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/mapper/attachment_table.h"

namespace tether {

class LeaseKeeper {
 public:
  // The homes this node holds grants (apids) from: LocalApi's, wired by
  // Tetherd. A lease is renewed while any grant or attachment exists.
  using HomesInUse = std::function<std::vector<uint32_t>()>;
  // Revokes one attachment (FaultService::Revoke in the daemon).
  using Revoker = std::function<void(Attachment&, const std::string& why)>;

  // What the keeper does to a home's attachments around a restart
  // (tetherd: FaultService windows, LocalApi's grants, PeerDirectory).
  struct RestartHandling {
    absl::Duration grace = absl::ZeroDuration();  // --restart_grace_ms
    std::function<std::vector<HeldGrant>(uint32_t home)> held_grants;
    std::function<void(Attachment&)> suspend;
    // `restarted`: also end every window the old home left open (its
    // range_ends will never come).
    std::function<void(Attachment&, bool restarted)> resume;
    std::function<void(uint32_t home)> forget_endpoint;
  };

  // Every pointer must outlive the keeper.
  LeaseKeeper(uint32_t self, MapperLeaseTable* leases, LeaseRenewer* renewer,
              AttachmentTable* attachments, Revoker revoke, HomesInUse homes);
  ~LeaseKeeper();

  // Before Start. Without it a lapsed lease revokes at once (the unit
  // tests' and the protocol simulation's keeper).
  void SetRestartHandling(RestartHandling h) { restart_ = std::move(h); }

  void Start();
  void Stop();

  // One pass: revokes the attachments of every home whose lease lapsed,
  // sends the renewals that are due. Returns when something is next due
  // (on the lease table's clock).
  absl::Time Tick();
  // The keeper's thread is Tick, a sleep of SleepAfter(Tick's answer)
  // unless woken, and again; it is woken when a renewal is answered (the
  // next renewal is due later). A caller that runs the passes itself on a
  // FakeClock (the protocol simulation, tests/sim/) paces them with these
  // two instead of Start(): after each pass it sleeps SleepAfter, and it
  // runs the next pass at once when TakeWakeUp (which clears the wake-up)
  // says the thread would have been woken. Any thread.
  absl::Duration SleepAfter(absl::Time next) const;
  bool TakeWakeUp();

  // Before a new attachment from `home` is added (LocalApi::Attach, on a
  // local client's thread; blocks up to one lease of real time): OK once
  // this node holds a lease from `home` with more than a third of it left,
  // renewing at once if it does not; EHOSTUNREACH if no renewal was
  // answered in time. Without this, a grant whose tether_get took most of
  // a lease (a home reconnecting after a partition) would give an
  // attachment that the next pass revokes at once.
  absl::Status EnsureLease(uint32_t home);
  // The incarnation of the home run that granted this node a grant (an
  // Attach's answer), if none is known yet: a later renewal answered by
  // another run shows the home restarted. Any thread.
  void NoteIncarnation(uint32_t home, uint64_t incarnation);

 private:
  std::vector<uint32_t> Homes();
  void OnRenewal(uint32_t home, absl::Time sent, bool reclaimed, absl::StatusOr<LeaseRenewal> r);
  void SendRenewal(uint32_t home, absl::Time sent);
  // Tick's part with restart handling: suspends a lapsed home's
  // attachments, revokes them after the grace; resumes what renewals let.
  void SuspendLapsed(uint32_t home, const std::vector<std::shared_ptr<Attachment>>& atts);
  void RunResumes();
  bool Fresh(uint32_t home) const;
  void Loop();

  const uint32_t self_;
  MapperLeaseTable* const leases_;
  LeaseRenewer* const renewer_;
  AttachmentTable* const attachments_;
  const Revoker revoke_;
  const HomesInUse homes_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t answers_ ABSL_GUARDED_BY(mu_) = 0;                   // renewals answered or failed
  absl::flat_hash_set<uint32_t> lapsed_ ABSL_GUARDED_BY(mu_);   // logged as lapsed
  absl::flat_hash_set<uint32_t> failing_ ABSL_GUARDED_BY(mu_);  // logged as failing
  RestartHandling restart_;                                     // set before Start, read-only after
  // Restart handling's state, per home.
  absl::flat_hash_map<uint32_t, uint64_t> incarnation_ ABSL_GUARDED_BY(mu_);  // last answered
  absl::flat_hash_map<uint32_t, absl::Time> suspended_ ABSL_GUARDED_BY(mu_);  // since (clock)
  absl::flat_hash_set<uint32_t> reclaiming_ ABSL_GUARDED_BY(mu_);  // restarted, grants to send
  // Segments to resume on the keeper's thread, and whether their home
  // restarted (end the old home's windows too).
  std::vector<std::pair<uint64_t, bool>> resume_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_LEASE_KEEPER_H_
