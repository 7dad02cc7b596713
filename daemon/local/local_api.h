// LocalApi: the client-request handler — what the local socket's requests
// do. Export-side requests go to the SegmentRegistry (and the exporter's
// event handle to the notifier source); map-side ones create grants
// (apids) at the home, this node's registry or another node's through
// RemoteHomes, and attachments (in the AttachmentTable) served by the
// FaultService. Same-node attachments may instead be direct attachments
// (tether.ko maps the exporter's pages themselves, see Attach): those are
// only recorded here (direct_), since nothing serves or writes them back.
// It owns the apids, the exporters' invalidation brackets and
// the clients' event connections (SIGBUS requests).
//
// Thread contract: Handle and Disconnected run on LocalServer's threads,
// one per client connection, concurrently; SendSigbus on FaultService's
// threads. One mutex guards the tables here; no call leaves this class
// under it except SendSigbus's frame (so that the connection cannot close
// underneath it) and the AttachmentTable's (Insert in Attach, UsesApid in
// Release: so that an apid is never released with an attachment being
// added through it). Lock order: LocalApi::mu_, then the table's.
#ifndef TETHER_DAEMON_LOCAL_LOCAL_API_H_
#define TETHER_DAEMON_LOCAL_LOCAL_API_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/home/remote_homes.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/invalidation_coordinator.h"
#include "daemon/local/local_server.h"
#include "daemon/mapper/attachment.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/mapper/fault_service.h"
#include "daemon/mapper/lease_keeper.h"
#include "daemon/notifier/notifier_source.h"

namespace tether {

class LocalApi : public LocalHandler {
 public:
  // Every pointer must outlive the LocalApi; `notifier` and `coordinator`
  // may be null in unit tests (exports then get no notifier, and
  // invalidation brackets answer EOPNOTSUPP); so may `leases` (attaches
  // then do not make sure of a lease from a remote home first).
  LocalApi(uint32_t node_id, uint32_t incarnation, SegmentRegistry* registry, RemoteHomes* remotes,
           FaultService* faults, AttachmentTable* attachments, NotifierSource* notifier,
           InvalidationCoordinator* coordinator, LeaseKeeper* leases = nullptr);

  void Handle(const LocalConnection& conn, const local::LocalRequest& req, std::vector<int>& fds_in,
              local::LocalResponse* resp, std::vector<int>* fds_out) override;
  void Disconnected(const LocalConnection& conn) override;

  // FaultService's SigbusSink.
  void SendSigbus(const Attachment& att, uint64_t offset, uint64_t len, const std::string& why);

  // Detaches everything (daemon shutdown), writing dirty pages back.
  void DetachAll();

  // The other nodes this node holds grants (apids) from: the lease keeper
  // renews their leases (mapper/lease_keeper.h). Any thread.
  std::vector<uint32_t> RemoteHomesInUse();
  // The grants this node holds from `home`, to hand back to it after it
  // restarted (LeaseKeeper::RestartHandling). Any thread.
  std::vector<HeldGrant> GrantsFrom(uint32_t home);
  // MakeResponse.hold_ms (lease * (1 + margin); 0 without leases). Before
  // the local server starts.
  void SetExporterHold(uint32_t ms) { hold_ms_ = ms; }

 private:
  struct Apid {
    uint64_t segid = 0;
    uint32_t home = 0;
    Grant grant;
    pid_t pid = 0;  // apids belong to the process that got them (XPMEM)
    uint64_t conn = 0;
    Credentials cred;  // as the home checked them (GrantsFrom sends them again)
  };

  absl::Status Make(const LocalConnection& c, const local::MakeRequest& r, std::vector<int>& fds,
                    local::LocalResponse* resp);
  absl::Status Get(const LocalConnection& c, const local::GetRequest& r,
                   local::LocalResponse* resp);
  absl::Status Release(const LocalConnection& c, uint64_t apid);
  absl::Status Attach(const LocalConnection& c, const local::AttachRequest& r,
                      std::vector<int>& fds, local::LocalResponse* resp, std::vector<int>* fds_out);
  // The direct branch of Attach: true if it answered with a direct
  // attachment, false if the copy should be made; an error refuses.
  absl::StatusOr<bool> AttachDirect(const LocalConnection& c, const local::AttachRequest& r,
                                    const Apid& a, local::LocalResponse* resp,
                                    std::vector<int>* fds_out);
  // Whether `id` is a direct attachment of process `pid`; `erase`: forget it.
  bool FindDirect(uint64_t id, pid_t pid, bool erase);
  absl::Status AttachMapped(const LocalConnection& c, const local::AttachMappedRequest& r);
  absl::Status Detach(const LocalConnection& c, uint64_t attach_id);
  absl::StatusOr<std::shared_ptr<Attachment>> FindAttachment(const LocalConnection& c, uint64_t id);
  absl::Status Lookup(const std::string& name, local::LocalResponse* resp);
  absl::Status DetachEntry(const std::shared_ptr<Attachment>& att);

  const uint32_t node_id_;
  const uint32_t incarnation_;
  uint32_t hold_ms_ = 0;  // set before the server starts, read-only after
  SegmentRegistry* const registry_;
  RemoteHomes* const remotes_;
  FaultService* const faults_;
  AttachmentTable* const atts_;
  NotifierSource* const notifier_;
  InvalidationCoordinator* const coordinator_;
  LeaseKeeper* const leases_;
  struct Bracket {
    pid_t pid = 0;
    std::vector<std::pair<SegmentRange, InvalidationWindow>> windows;
  };
  absl::Status InvalidateBegin(const LocalConnection& c, const local::InvalidateBeginRequest& r,
                               local::LocalResponse* resp);
  absl::Status InvalidateEnd(const LocalConnection& c, const local::InvalidateEndRequest& r);

  absl::Mutex mu_;
  uint64_t next_apid_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Apid> apids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<pid_t, int> event_fds_ ABSL_GUARDED_BY(mu_);  // pid -> conn fd
  absl::flat_hash_map<uint64_t, pid_t> event_conns_ ABSL_GUARDED_BY(mu_);
  uint64_t next_bracket_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Bracket> brackets_ ABSL_GUARDED_BY(mu_);
  // Direct attachments by id: (incarnation << 32) | 1 << 31 | counter, so
  // that they never collide with the AttachmentTable's ids (its counter
  // would need 2^31 attachments to reach bit 31).
  struct Direct {
    pid_t pid = 0;
    uint64_t conn = 0;
    uint64_t apid = 0;
  };
  uint32_t next_direct_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Direct> direct_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_LOCAL_LOCAL_API_H_
