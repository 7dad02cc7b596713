// AdminServer: the gRPC Admin service tetherctl talks to, on the daemon's
// admin Unix socket (local administration only; never on the network).
//
// Thread contract: Start() builds and starts the gRPC server; requests run
// on gRPC's pool, concurrently, and only read (the registry, peers and
// attachment table are thread-safe; Reload calls the daemon's
// thread-safe ReloadTls). Shutdown() waits for them.
#ifndef TETHER_DAEMON_ADMIN_ADMIN_SERVER_H_
#define TETHER_DAEMON_ADMIN_ADMIN_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
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
  // tetherctl reload: Tetherd::ReloadTls.
  std::function<absl::Status()> reload_tls;
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

 private:
  struct Impl;
  explicit AdminServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_ADMIN_ADMIN_SERVER_H_
