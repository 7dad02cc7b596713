// PeerDirectory: this node's view of the other nodes, and the client side
// of the Peer service (gRPC hidden behind a pimpl: including this header
// costs nothing). It is the RemoteHomes that local/ uses, and where
// DataPath resolves a home's data endpoint. It is also the LeaseRenewer
// that this node's LeaseKeeper (mapper/) renews its leases through, and
// it records the lease an Attach grants in the mapper's lease table.
//
// Thread contract: every method may be called from any thread; one mutex
// guards the peer table and the Hello cache, never held across an RPC.
// Synchronous calls (Attach, Detach, Lookup, Endpoint's first Hello) block
// for up to the RPC timeout; Invalidate, Renew and Connect never block
// (their callbacks run on gRPC's threads).
#ifndef TETHER_DAEMON_PEER_PEER_DIRECTORY_H_
#define TETHER_DAEMON_PEER_PEER_DIRECTORY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/common/credentials.h"
#include "daemon/home/remote_homes.h"
#include "daemon/home/segment_types.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/invalidation/notice.h"
#include "daemon/peer/tls_identity.h"
#include "daemon/transport/transport.h"

namespace tether {

struct PeerConfig {
  uint32_t node_id = 0;
  std::string address;  // gRPC host:port
};

struct PeerState {
  uint32_t node_id = 0;
  std::string address;
  std::string transport;
  bool reachable = false;
  std::string error;
};

class PeerDirectory : public RemoteHomes, public LeaseRenewer {
 public:
  // Names the transport requests to a peer use ("rdma", "tcp"; tetherctl
  // status): DataPath::TransportFor.
  using TransportNamer = std::function<std::string(uint32_t node, const DataEndpoint& ep)>;

  // `leases` (may be null: no leases) records the lease each Attach
  // grants; it must outlive the directory. `tls` null: plaintext
  // (--insecure_peers); else it outlives the directory, and each peer's
  // channel accepts only that peer's certificate.
  PeerDirectory(uint32_t local_node, uint64_t incarnation, std::vector<PeerConfig> peers,
                const TlsIdentity* tls, int rpc_timeout_ms, TransportNamer namer,
                MapperLeaseTable* leases = nullptr);
  ~PeerDirectory() override;

  bool Knows(uint32_t node) const override;
  std::vector<uint32_t> Nodes() const;

  // The peer's data endpoint (Hello, cached until Forget()). Shared and
  // immutable: every fetch asks for it, and copying its strings there cost
  // allocations on the fault path; a new Hello makes a new one.
  absl::StatusOr<std::shared_ptr<const DataEndpoint>> Endpoint(uint32_t node);
  void Forget(uint32_t node);

  absl::StatusOr<Grant> Attach(uint32_t node, uint64_t segid, const Credentials& cred,
                               bool write) override;
  absl::Status Detach(uint32_t node, uint64_t segid, uint64_t grant) override;
  // Asks every peer; first match wins.
  absl::StatusOr<SegmentSummary> Lookup(const std::string& name) override;
  absl::StatusOr<std::vector<SegmentSummary>> ListSegments(uint32_t node);
  std::vector<PeerState> States();

  // What a reload changed (Reconfigure): node ids, each list sorted.
  struct Change {
    std::vector<uint32_t> added, removed, moved;  // moved: a new address
  };
  // Replaces the peer list (SIGHUP, tetherctl reload). Added peers are
  // reachable at once. A peer dropped or given a new address must not be in
  // use: `in_use(node)` says why it is ("this node maps 2 segments it
  // homes"), or "" if not; the first one in use refuses the whole reload
  // with EBUSY and keeps the old list. Calls in flight to a dropped peer
  // finish on their own channel. Any thread.
  absl::StatusOr<Change> Reconfigure(const std::vector<PeerConfig>& peers,
                                     const std::function<std::string(uint32_t node)>& in_use);

  // Starts connecting to the peer (TCP and TLS) if not connected; does not
  // wait.
  void Connect(uint32_t node);
  // Sends an invalidation notice (async, parallel: gRPC callback API);
  // `done` runs once with the peer's answer.
  void Invalidate(uint32_t node, const InvalidationNotice& notice, absl::Duration timeout,
                  InvalidationChannel::Done done);
  // LeaseRenewer: asks `home` to renew this node's lease (async).
  void Renew(uint32_t home, absl::Duration timeout, LeaseRenewer::Done done) override;
  // The same, handing `grants` back to a home that restarted (peer.proto).
  void RenewReclaiming(uint32_t home, absl::Duration timeout, std::vector<HeldGrant> grants,
                       LeaseRenewer::Done done) override;
  // Cancels in-flight notices and renewals and waits until their callbacks ran: no gRPC
  // call may outlive the daemon (its threads would run during exit).
  void Shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_PEER_DIRECTORY_H_
