// AdminServer: the gRPC Admin service tetherctl talks to, on the daemon's
// admin Unix socket (local administration only; never on the network).
// The socket is root's alone (mode 0600 from its creation): the service
// lists every user's segments and attachments and has no per-caller
// check, so only root may connect (docs/security.md, "Local users").
//
// Besides looking (Status, List, Lookup, Stats: the metrics registry),
// an operator acts through it: Reload (the peer list and TLS files), LogLevel, Drain (refuse new
// exports and attachments: common/drain.h; write back this node's dirty
// copies) and Revoke (an operator's fence of every mapper of a segment
// homed here: InvalidationCoordinator::RevokeGrants). Drain and Revoke
// reach the parts they act on through DaemonInfo's functions, which
// tetherd wires: admin links no layer above those it reads.
//
// Thread contract: Start() builds and starts the gRPC server, on the
// daemon's start-up thread (it sets the process's umask for a moment); requests run
// on gRPC's pool, concurrently (the registry, peers, attachment table,
// metrics and drain state are thread-safe; LogLevel sets common/log.h's
// atomic level; DaemonInfo's functions must
// be). Shutdown() waits for them.
#ifndef TETHER_DAEMON_ADMIN_ADMIN_SERVER_H_
#define TETHER_DAEMON_ADMIN_ADMIN_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/home/segment_registry.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/peer/peer_directory.h"
#include "daemon/peer/tls_identity.h"

namespace tether {

struct DaemonInfo {
  uint32_t node_id = 0;
  uint64_t incarnation = 0;
  std::string local_socket, peer_address, data_address, rdma_address;
  std::function<uint64_t()> budget_bytes, resident_bytes, uptime_ms;
  // Null with --insecure_peers; else it outlives the server.
  const TlsIdentity* tls = nullptr;
  // tetherctl reload: Tetherd::Reload (what changed in the peer list).
  std::function<absl::StatusOr<std::string>()> reload;
  // tetherctl drain: writes back every dirty page of this node's copies;
  // returns the bytes written, or the first failure.
  std::function<absl::StatusOr<uint64_t>()> write_back_all;
  // tetherctl revoke: the nodes fenced (RevokeGrants), or ENOENT when the
  // segment is not homed here.
  std::function<absl::StatusOr<std::vector<uint32_t>>(uint64_t segid, const std::string& why)>
      revoke;
  std::string notifier_source;  // "tether.ko" or "userfaultfd"
  std::string metrics_address;  // empty: no Prometheus endpoint
};

class AdminServer {
 public:
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& socket_path,
                                                            DaemonInfo info,
                                                            SegmentRegistry* registry,
                                                            PeerDirectory* peers,
                                                            AttachmentTable* attachments);
  ~AdminServer();
  void Shutdown();
  // Asks the server, through its socket, for the log level: OK if it
  // answers within `timeout` (tetherd's watchdog probe). Any thread.
  absl::Status Ping(absl::Duration timeout);

 private:
  struct Impl;
  explicit AdminServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_ADMIN_ADMIN_SERVER_H_
