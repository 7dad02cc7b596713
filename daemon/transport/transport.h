// The data transport: moves a segment's bytes between a mapper's daemon and
// the home's. One interface, two implementations (tcp now, rdma later);
// the control plane (gRPC) never carries page contents.
#ifndef TETHER_DAEMON_TRANSPORT_TRANSPORT_H_
#define TETHER_DAEMON_TRANSPORT_TRANSPORT_H_

#include <cstdint>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tether {

// Implemented by the home (SegmentRegistry). Called on transport threads,
// never on the thread that answers invalidation events (DESIGN.md G5).
class BlockServer {
 public:
  virtual ~BlockServer() = default;
  // `peer_node` is the node the connection authenticated as; the grant
  // must belong to it. Bounds and permissions are checked here.
  virtual absl::Status ReadBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                  uint64_t offset, absl::Span<uint8_t> dst) = 0;
  virtual absl::Status WriteBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                   uint64_t offset, absl::Span<const uint8_t> src) = 0;
};

// Implemented by every node for the invalidation notices a home sends over
// a data connection (TcpTransport::Notify): `payload` is an encoded notice,
// `peer_node` the node the connection authenticated as. Called on the
// connection's serving thread, in arrival order: must not block on the
// network.
class NoticeServer {
 public:
  virtual ~NoticeServer() = default;
  virtual absl::Status Notice(uint32_t peer_node, absl::Span<const uint8_t> payload) = 0;
};

// Where a peer's data endpoint is, and the token it expects (learned from
// the peer's Hello over the authenticated control plane).
struct DataEndpoint {
  uint32_t node_id = 0;
  std::string address;       // tcp: host:port
  std::string rdma_address;  // rdma_cm: host:port, empty if the peer has no verbs device
  std::string token;         // kDataTokenSize bytes: this node's token at the peer
};

class Transport {
 public:
  // Runs exactly once, possibly on a transport thread; must not block long.
  using Done = absl::AnyInvocable<void(absl::Status) &&>;

  virtual ~Transport() = default;
  virtual const char* name() const = 0;

  // Server side: accept data connections at `address` (host:port; port 0
  // picks one). A connection must first present the token that `secret`
  // derives for the node it claims to be (data_token.h).
  virtual absl::Status Listen(const std::string& address, std::string secret,
                              BlockServer* server) = 0;
  virtual std::string bound_address() const = 0;

  // Client side. `dst`/`src` must stay valid until `done` runs.
  virtual void Read(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                    uint64_t offset, absl::Span<uint8_t> dst, Done done) = 0;
  virtual void Write(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                     uint64_t offset, absl::Span<const uint8_t> src, Done done) = 0;

  // Fails every request in flight to `node` and drops its connection (the
  // peer restarted or was fenced).
  virtual void Disconnect(uint32_t node) = 0;
  virtual void Shutdown() = 0;
};

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_TRANSPORT_H_
