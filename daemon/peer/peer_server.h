// PeerServer: the gRPC Peer service other nodes call (Hello, Attach,
// Detach, Lookup, ListSegments, Invalidate, Renew), backed by the
// SegmentRegistry, this node's InvalidationTarget and the home's lease
// table (Attach and Renew grant the caller a lease: lease_table.h).
//
// Thread contract: Start() builds and starts the gRPC server; calls run on
// gRPC's pool, concurrently (every object they use is thread-safe). An
// Invalidate call blocks its pool thread while the target handles the
// notice (a range_begin: until copies are dropped). Shutdown() waits for
// calls in flight.
#ifndef TETHER_DAEMON_PEER_PEER_SERVER_H_
#define TETHER_DAEMON_PEER_PEER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/invalidation/notice.h"
#include "daemon/peer/tls_identity.h"

namespace grpc {
class Service;
}

namespace tether {

struct HelloInfo {
  uint32_t node_id = 0;
  uint64_t incarnation = 0;
  uint32_t segment_epoch = 0;  // common/node_state.h
  std::string data_address;    // tcp transport
  std::string rdma_address;    // rdma transport; empty without a verbs device
  std::string data_secret;     // derives each caller's data token
};

// The Peer service without a server (its methods called directly, with a
// default grpc::ServerContext: no peer certificate to check, as with
// --insecure_peers): for the fuzz
// target tests/fuzz/peer_service_fuzz.cc. A peer::Peer::Service.
std::unique_ptr<grpc::Service> NewPeerService(SegmentRegistry* registry, InvalidationTarget* mapper,
                                              InvalidationChannel* notices, HelloInfo hello,
                                              HomeLeaseTable* leases);

class PeerServer {
 public:
  // `tls` null: plaintext (--insecure_peers); else it outlives the server.
  static absl::StatusOr<std::unique_ptr<PeerServer>> Start(const std::string& address,
                                                           const TlsIdentity* tls,
                                                           SegmentRegistry* registry,
                                                           InvalidationTarget* mapper,
                                                           InvalidationChannel* notices,
                                                           HelloInfo hello, HomeLeaseTable* leases);
  ~PeerServer();
  void Shutdown();

 private:
  struct Impl;
  explicit PeerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_PEER_SERVER_H_
