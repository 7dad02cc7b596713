// DataPath: where a mapper's fetches and write-backs go. The home may be
// this node (a mapper beside its exporter: served straight from the
// BlockServer) or another node (its data endpoint, learned from the peer's
// Hello, over the transport chosen for it).
//
// Transport choice: rdma when this node runs an rdma transport and the
// peer advertised an rdma address (both have a usable verbs device), tcp
// otherwise. If an rdma connection cannot be set up (no route between the
// devices, a device gone), the request goes over tcp instead and the peer
// stays on tcp for kRdmaRetryAfter (Options::rdma_retry_after), or until
// an endpoint of a new incarnation shows it restarted, before rdma is
// tried again: set-up failures never reach a faulting client, and no
// request is sent twice.
// A home that refuses the data token (StaleToken(): it restarted since the
// Hello that gave it) gets the request once more, after the endpoint is
// forgotten and resolved again (a new Hello, on DataPath's timer thread).
// Both transports are used through the Transport interface only; what
// counts as a set-up failure is the transport's to say (IsSetupFailure).
//
// Retries (RetryPolicy). A request that failed without leaving this node
// (NotSent: queued behind a connection that was lost or never came up)
// and a read that was in flight when its connection was lost
// (LostInFlight) are sent again — on a new connection, or over tcp after
// a set-up failure as above — after a short back-off (50 ms doubling to
// 1 s), until the retry budget (Options::retry_budget, --data_retry_ms,
// counted from the first failure) runs out; then the last error reaches
// `done` as before (SIGBUS for a fetch, a failed sync). So a link flap, a
// dead or restarted home costs the faulting client a pause first. A write
// lost in flight is not re-sent here: it may have been applied, and a
// concurrent sync may have sent newer bytes of the same pages since; it
// goes back to the caller as Retry(), and the write-back loop
// (fault_writeback.cc) re-sends it only if its copy is still the newest.
// The home fences a replaced rdma connection's writes (NodeFence,
// rdma_transport_internal.h), so the first copy cannot land after the
// re-sent one.
//
// Thread contract.
// - Read, Write and WriteDiff: any thread (the fault thread's fetches, write-back
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
// - WriteSync and WriteDiffSync block until every piece is answered: never on a transport's
//   thread (its own completion would wait behind it), nor on the fault
//   thread (it never waits for the network).
// - TransportFor: any thread (PeerDirectory asks it for tetherctl status).
// - Retries run on the scheduler's thread (Options::schedule; by default
//   DataPath's own timer thread, which does nothing else): a transport's
//   `done` only schedules one, so no transport thread re-sends inline.
// - Shutdown: once, from the owner (tetherd's Stop, after the transports
//   shut down, before the fault service is destroyed): it completes every
//   request still waiting for a retry with its last error, joins the timer
//   thread, and from then on failures go straight to `done`.
// - mu_ guards tcp_until_ (which nodes are on tcp after an rdma failure,
//   until when) and retrying_ (nodes with requests being retried, for the
//   log); nothing is called under it. The rest is set at construction and
//   never changes.
#ifndef TETHER_DAEMON_MAPPER_DATA_PATH_H_
#define TETHER_DAEMON_MAPPER_DATA_PATH_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/clock.h"
#include "daemon/mapper/mapper_metrics.h"
#include "daemon/transport/transport.h"

namespace tether {

// Which failed requests are sent again, and when. Pure: unit-tested with
// the times it is given.
struct RetryPolicy {
  absl::Duration budget = absl::Seconds(30);  // from the first failure
  // The wait before attempt `attempts + 1` of a request that failed with
  // `status` `elapsed` after its first failure; nullopt: give `status` to
  // the caller.
  std::optional<absl::Duration> Next(const absl::Status& status, bool is_read, int attempts,
                                     absl::Duration elapsed) const;
};

class DataPath {
 public:
  using EndpointResolver =
      absl::AnyInvocable<absl::StatusOr<std::shared_ptr<const DataEndpoint>>(uint32_t node)>;
  // Runs `fn(false)` after `delay` on a thread that may send requests, or
  // `fn(true)` at Shutdown if it has not run by then.
  using Scheduler =
      absl::AnyInvocable<void(absl::Duration delay, absl::AnyInvocable<void(bool cancelled)> fn)>;

  static constexpr absl::Duration kRdmaRetryAfter = absl::Seconds(30);

  // Drops what the resolver knows of a node (its next call asks the node
  // again): PeerDirectory::Forget.
  using EndpointForgetter = absl::AnyInvocable<void(uint32_t node)>;

  struct Options {
    absl::Duration retry_budget = absl::Seconds(30);
    absl::Duration rdma_retry_after = kRdmaRetryAfter;  // on tcp after an rdma set-up failure
    Clock* clock = Clock::Real();                       // for the retry budget
    Scheduler schedule;                                 // null: DataPath's own timer thread
    // null: a stale-token refusal fails the request instead of being
    // answered with a new Hello and one more try.
    EndpointForgetter forget;
  };

  // `rdma` may be null (tcp only).
  DataPath(uint32_t local_node, BlockServer* local_server, Transport* tcp, Transport* rdma,
           EndpointResolver resolve);
  DataPath(uint32_t local_node, BlockServer* local_server, Transport* tcp, Transport* rdma,
           EndpointResolver resolve, Options options);
  ~DataPath();
  DataPath(const DataPath&) = delete;
  DataPath& operator=(const DataPath&) = delete;

  void Shutdown();

  // "local", "rdma" or "tcp": what requests to `node` use now.
  std::string TransportFor(uint32_t node, const DataEndpoint& ep);

  void Read(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
            Transport::Done done);
  void Write(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Transport::Done done);
  // Read, but `done` may be handed the bytes where the transport received
  // them (Transport::ReadInPlace: rdma's registered slot), else `dst`.
  void ReadInPlace(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                   absl::Span<uint8_t> dst, Transport::ReadDone done);
  // Synchronous write-back helper: splits into transport-sized pieces.
  absl::Status WriteSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> src);
  // A write-back as a page diff of the pages from `offset` (common/
  // page_diff.h): to this node's BlockServer::WriteDiff inline, or
  // Transport::WriteDiff; retried as Write is.
  void WriteDiff(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                 absl::Span<const uint8_t> diff, Transport::Done done);
  // WriteSync for a diff: cut at page entries into pieces of at most
  // kMaxPayload, all in flight at once.
  absl::Status WriteDiffSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                             absl::Span<const uint8_t> diff);

 private:
  bool UseRdma(uint32_t node, const DataEndpoint& ep);
  // Read (`dst`) or write (`src`): to the local BlockServer, or over the
  // transport chosen for `node`.
  // `diff`: a write whose `src` is a page diff.
  void Submit(bool is_read, uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
              absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Transport::Done done,
              bool diff = false);
  struct Attempt;
  class Timer;
  // One try of `a` (the first, or a retry), with its result to Finished.
  void Try(std::shared_ptr<Attempt> a);
  // A try of `a` ended: retry it (RetryPolicy; a stale token: once, after
  // forgetting the endpoint, so the next try carries the token the home's
  // Hello gives now) or complete it.
  void Finished(std::shared_ptr<Attempt> a, absl::Status status);
  // Try for ReadInPlace: Transport::ReadInPlace on rdma, a Read into `dst`
  // on tcp (and after an rdma set-up failure, as FallBack).
  void TryInPlace(std::shared_ptr<Attempt> a, std::shared_ptr<const DataEndpoint> ep);
  static void SubmitOn(Transport* transport, const DataEndpoint& ep, bool is_read, uint64_t segid,
                       uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                       absl::Span<const uint8_t> src, Transport::Done done, bool diff);
  // After an rdma set-up failure: `node` uses tcp for kRdmaRetryAfter.
  void NoteRdmaSetupFailure(const DataEndpoint& ep, const absl::Status& st);
  // Wraps `done`: an rdma set-up failure reissues the request over tcp.
  Transport::Done FallBack(std::shared_ptr<const DataEndpoint> ep, bool is_read, uint64_t segid,
                           uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                           absl::Span<const uint8_t> src, Transport::Done done, bool diff,
                           MapperMetrics::Via* via);

  const uint32_t local_node_;
  BlockServer* const local_server_;
  Transport* const tcp_;
  Transport* const rdma_;
  EndpointResolver resolve_;  // never reassigned; called without mu_
  EndpointForgetter forget_;  // likewise
  const RetryPolicy policy_;
  const absl::Duration rdma_retry_after_;
  Clock* const clock_;
  std::unique_ptr<Timer> timer_;  // when no scheduler was given
  Scheduler schedule_;
  std::atomic<bool> shut_down_{false};
  absl::Mutex mu_;
  // Nodes on tcp after an rdma set-up failure: until when, and the
  // incarnation that failed (a restarted node gets rdma again at once).
  struct OnTcp {
    absl::Time until;
    uint64_t incarnation = 0;
  };
  absl::flat_hash_map<uint32_t, OnTcp> tcp_until_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, int> retrying_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_DATA_PATH_H_
