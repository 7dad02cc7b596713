// DataPath: where a mapper's fetches and write-backs go. The home may be
// this node (a mapper beside its exporter: served straight from the
// BlockServer) or another node (its data endpoint, learned from the peer's
// Hello, over the transport chosen for it).
//
// Transport choice: rdma when this node runs an rdma transport and the
// peer advertised an rdma address (both have a usable verbs device), tcp
// otherwise. If an rdma connection cannot be set up (no route between the
// devices, a device gone), the request goes over tcp instead and the peer
// stays on tcp for kRdmaRetryAfter before rdma is tried again: set-up
// failures never reach a faulting client, and no request is sent twice.
// A home that refuses the data token (StaleToken(): it restarted since the
// Hello that gave it) gets the request once more, after the endpoint is
// forgotten and resolved again (a new Hello, on the calling thread).
// Both transports are used through the Transport interface only; what
// counts as a set-up failure is the transport's to say (IsSetupFailure).
//
// Thread contract.
// - Read and Write: any thread (the fault thread's fetches, write-back
//   callers); they do not wait for the transfer. For this node's own home
//   they call its BlockServer inline (a read or write of the exporter's
//   memory). On the calling thread, without a lock held, they may also
//   wait for set-up: the resolver (thread-safe; for a node whose endpoint
//   it does not know yet, that node's Hello, which PeerDirectory keeps)
//   and the transport's connect to a home it has no connection to yet
//   (tcp_transport.h, rdma_transport.h: bounded, seconds).
// - `done` runs on the transport's thread that completes the request (a
//   tcp receiver, an rdma connection's thread), or inline on the calling
//   thread: for this node's own home, and on a failure before anything was
//   sent (no endpoint, no connection; tcp may then hold a dead
//   connection's lock, so `done` must not issue a request on the same
//   transport inline). After an rdma set-up failure, FallBack's wrapper
//   reissues the request over tcp from the thread that reported the
//   failure, and `done` runs where tcp completes it.
// - WriteSync blocks until every piece is answered: never on a transport's
//   thread (its own completion would wait behind it), nor on the fault
//   thread (it never waits for the network).
// - TransportFor: any thread (PeerDirectory asks it for tetherctl status).
// - mu_ guards tcp_until_ (which nodes are on tcp after an rdma failure,
//   until when); nothing is called under it. The rest is set at
//   construction and never changes.
#ifndef TETHER_DAEMON_MAPPER_DATA_PATH_H_
#define TETHER_DAEMON_MAPPER_DATA_PATH_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/transport/transport.h"

namespace tether {

class DataPath {
 public:
  using EndpointResolver =
      absl::AnyInvocable<absl::StatusOr<std::shared_ptr<const DataEndpoint>>(uint32_t node)>;

  static constexpr absl::Duration kRdmaRetryAfter = absl::Seconds(30);

  // Drops what the resolver knows of a node (its next call asks the node
  // again): PeerDirectory::Forget.
  using EndpointForgetter = absl::AnyInvocable<void(uint32_t node)>;

  // `rdma` may be null (tcp only); `forget` may be null (a stale token then
  // fails the request).
  DataPath(uint32_t local_node, BlockServer* local_server, Transport* tcp, Transport* rdma,
           EndpointResolver resolve, EndpointForgetter forget = nullptr)
      : local_node_(local_node),
        local_server_(local_server),
        tcp_(tcp),
        rdma_(rdma),
        resolve_(std::move(resolve)),
        forget_(std::move(forget)) {}

  // "local", "rdma" or "tcp": what requests to `node` use now.
  std::string TransportFor(uint32_t node, const DataEndpoint& ep);

  void Read(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
            Transport::Done done);
  void Write(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Transport::Done done);
  // Synchronous write-back helper: splits into transport-sized pieces.
  absl::Status WriteSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> src);

 private:
  bool UseRdma(uint32_t node, const DataEndpoint& ep);
  // Read (`dst`) or write (`src`): to the local BlockServer, or over the
  // transport chosen for `node`.
  // `token_retried`: this is the retry after a stale token (FallBack).
  void Submit(bool is_read, uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
              absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Transport::Done done,
              bool token_retried = false);
  static void SubmitOn(Transport* transport, const DataEndpoint& ep, bool is_read, uint64_t segid,
                       uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                       absl::Span<const uint8_t> src, Transport::Done done);
  // Wraps `done`: an rdma set-up failure reissues the request over tcp; a
  // stale token (the home restarted) forgets the endpoint and reissues it
  // once, with the token the home's Hello gives now.
  Transport::Done FallBack(std::shared_ptr<const DataEndpoint> ep, bool is_read, uint64_t segid,
                           uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                           absl::Span<const uint8_t> src, Transport::Done done, bool token_retried);

  const uint32_t local_node_;
  BlockServer* const local_server_;
  Transport* const tcp_;
  Transport* const rdma_;
  EndpointResolver resolve_;  // never reassigned; called without mu_
  EndpointForgetter forget_;  // likewise
  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, absl::Time> tcp_until_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_DATA_PATH_H_
