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

  // Every pointer must outlive the keeper.
  LeaseKeeper(uint32_t self, MapperLeaseTable* leases, LeaseRenewer* renewer,
              AttachmentTable* attachments, Revoker revoke, HomesInUse homes);
  ~LeaseKeeper();

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

 private:
  std::vector<uint32_t> Homes();
  void OnRenewal(uint32_t home, absl::Time sent, absl::StatusOr<LeaseRenewal> r);
  void SendRenewal(uint32_t home, absl::Time sent);
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
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_LEASE_KEEPER_H_
