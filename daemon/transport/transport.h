// The data transport: moves a segment's bytes between a mapper's daemon and
// the home's. One interface, two implementations (TcpTransport,
// RdmaTransport); the control plane (gRPC) never carries page contents.
// The layers above (mapper/, peer/) use only the interfaces in this file:
// which transport a request takes is DataPath's choice, made through
// Transport pointers and IsSetupFailure(), never by naming tcp or rdma.
//
// Thread contract: every method may be called from any thread; `Done`
// callbacks run on a transport's own threads (or inline, on failure before
// anything was sent) and must not block on the network.
#ifndef TETHER_DAEMON_TRANSPORT_TRANSPORT_H_
#define TETHER_DAEMON_TRANSPORT_TRANSPORT_H_

#include <cstdint>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tether {

// Implemented by the home (SegmentRegistry). Called on transport threads,
// never on the thread that answers invalidation events (G5 in
// docs/architecture.md, "The invalidation contract").
class BlockServer {
 public:
  virtual ~BlockServer() = default;
  // `peer_node` is the node the connection authenticated as; the grant
  // must belong to it. Bounds and permissions are checked here.
  virtual absl::Status ReadBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                  uint64_t offset, absl::Span<uint8_t> dst) = 0;
  virtual absl::Status WriteBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                   uint64_t offset, absl::Span<const uint8_t> src) = 0;
  // A write-back as a page diff (common/page_diff.h) of the pages from
  // `offset`: only the changed bytes are written, each page's at once with
  // respect to other write-backs. A malformed diff is refused (EINVAL)
  // and nothing of it is written. This default (the unit tests' in-memory
  // homes) decodes it and writes each run with WriteBlocks; SegmentRegistry
  // applies it a page at a time (ExporterMemory::WriteDiff).
  virtual absl::Status WriteDiff(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                 uint64_t offset, absl::Span<const uint8_t> diff);
};

// Implemented by every node for the invalidation notices a home sends over
// a data connection (NoticeTransport::Notify): `payload` is an encoded notice,
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
  // The peer daemon's incarnation (from the same Hello; 0: unknown). A
  // transport keeps one connection per (node, incarnation): an endpoint
  // with a new incarnation (the peer restarted) replaces the connection
  // to the old one instead of waiting for it to time out.
  uint64_t incarnation = 0;
};

class Transport {
 public:
  // Runs exactly once, possibly on a transport thread; must not block long.
  using Done = absl::AnyInvocable<void(absl::Status) &&>;
  // A read's completion that is handed the bytes where they are (ReadInPlace):
  // `data` (empty unless the status is OK) is valid only while it runs.
  using ReadDone = absl::AnyInvocable<void(absl::Status, absl::Span<const uint8_t> data) &&>;

  virtual ~Transport() = default;
  virtual const char* name() const = 0;

  // Server side: accept data connections at `address` (host:port; port 0
  // picks one). A connection must first present the token that `secret`
  // derives for the node it claims to be (data_token.h). Requests go to
  // `server`; invalidation notices, on a transport that carries them, to
  // `notices` (null: refused with EOPNOTSUPP). Both must outlive Shutdown().
  virtual absl::Status Listen(const std::string& address, std::string secret, BlockServer* server,
                              NoticeServer* notices) = 0;
  virtual std::string bound_address() const = 0;

  // Client side. `dst`/`src` must stay valid until `done` runs.
  virtual void Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                    absl::Span<uint8_t> dst, Done done) = 0;
  virtual void Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                     absl::Span<const uint8_t> src, Done done) = 0;
  // A write-back as a page diff of the pages from `offset` (page_diff.h;
  // at most kMaxPayload bytes, this node's own encoding): the home's
  // BlockServer::WriteDiff. tcp sends it as one WRITE_DIFF_REQ; rdma cuts
  // it at entry boundaries into slot-sized WRITE_DIFF_REQs (SplitDiff).
  virtual void WriteDiff(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> diff, Done done) = 0;
  // A read whose completion may be handed the bytes where the transport
  // received them (rdma: its registered slot, held until `done` returns)
  // instead of in `dst`: a caller that only copies them on (the mapper's
  // UFFDIO_COPY) saves a copy. `dst` (dst.size() bytes, valid until `done`
  // ran) is used when the transport cannot do that; `data` is then `dst`.
  // This default: Read into `dst`.
  virtual void ReadInPlace(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                           uint64_t offset, absl::Span<uint8_t> dst, ReadDone done);

  // Fails every request in flight to `node` and drops its connection (the
  // peer restarted or was fenced).
  virtual void Disconnect(uint32_t node) = 0;
  virtual void Shutdown() = 0;
};

// A transport that also carries invalidation notices from a home to mapper
// nodes (TcpTransport): one round trip of the transport's own framing
// instead of a gRPC call, on a connection that carries only notices.
class NoticeTransport {
 public:
  using Done = Transport::Done;
  virtual ~NoticeTransport() = default;
  // Sends `payload` to `node`'s NoticeServer on an existing connection;
  // `done` gets its answer, or kUnavailable if there is no connection
  // (never connects: that could block), it was lost, or the frame cannot
  // be sent without waiting. Never blocks: it runs inside ack deadlines.
  virtual void Notify(uint32_t node, absl::Span<const uint8_t> payload, Done done) = 0;
  // Opens the notice connection to `peer` if there is none. Blocks
  // (seconds): call it on a thread that may wait.
  virtual absl::Status Connect(const DataEndpoint& peer) = 0;
};

// A request failed because its connection could not be set up: nothing was
// sent, so the caller may issue it again on another transport (DataPath
// falls back from rdma to tcp). Transports tag such failures with
// SetupFailure(); everything else (the peer refused, the connection was
// lost with the request in flight) is not one.
absl::Status SetupFailure(absl::Status status);
bool IsSetupFailure(const absl::Status& status);

// A request that never left this node: it was queued behind a connection
// that was lost (or never came up) before it could be sent. Nothing of it
// reached the home, so it may be issued again, read or write (DataPath
// does, within its retry budget).
absl::Status NotSent(absl::Status status);
bool IsNotSent(const absl::Status& status);

// A request that was in flight when its connection was lost (a dead or
// silent peer, a work completion error, a disconnect): the home may or
// may not have served it. A read may be repeated; a write only by a caller
// that knows that no newer write of its range went out since (DataPath
// hands it back as Retry(): the write-back loop re-checks that).
absl::Status LostInFlight(absl::Status status);
bool IsLostInFlight(const absl::Status& status);

// A request refused because the home did not accept the data token it was
// sent with (the home restarted, with a new secret, since the Hello that
// gave it): nothing was sent, and the caller may learn the token again
// and retry (DataPath does, once). Transports tag such refusals with
// StaleToken().
absl::Status StaleToken(absl::Status status);
bool IsStaleToken(const absl::Status& status);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_TRANSPORT_H_
