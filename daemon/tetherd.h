// Tetherd: one node's daemon. It builds every part, wires interfaces to
// their implementations, then starts all threads in one pass, bottom layer
// first (docs/architecture.md has the layers and the threads):
//
//   LocalServer ── LocalApi ──┬── SegmentRegistry (home: exports, grants,
//   (clients)                 │     BlockServer for the data transport)
//                             ├── RemoteHomes = PeerDirectory (gRPC client)
//                             ├── AttachmentTable
//                             └── FaultService ── DataPath ── Transport
//   PeerServer (gRPC, peers) ── SegmentRegistry, MapperInvalidation
//   NotifierSource ── InvalidationCoordinator ── PeerInvalidationChannel
//                               └── HomeLeaseTable (PeerServer grants)
//   LeaseKeeper ── MapperLeaseTable, PeerDirectory (renewals),
//                  AttachmentTable, FaultService (self-revocation)
//   AdminServer (gRPC, tetherctl)
//
// Thread contract: Start() and Stop() from one thread (main); Stop() is
// also run by the destructor.
#ifndef TETHER_DAEMON_TETHERD_H_
#define TETHER_DAEMON_TETHERD_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/metrics_http.h"
#include "daemon/peer/peer_directory.h"
#include "daemon/peer/tls_identity.h"

namespace tether {

enum class RdmaMode { kAuto, kOn, kOff };
// The notifier source (--notifier): auto takes tether.ko where /dev/tether
// exists, else user space; kernel refuses to start without the module
// (an operator who relies on what only the module sees, mprotect and
// kernel-internal changes, would otherwise silently lose it after a
// kernel upgrade left the module unbuilt); user never opens /dev/tether.
enum class NotifierMode { kAuto, kKernel, kUser };

struct TetherdConfig {
  uint32_t node_id = 0;
  std::string local_socket;
  std::string admin_socket;
  // The Prometheus endpoint (GET /metrics), "host:port"; empty: none.
  std::string metrics_listen = "127.0.0.1:9640";
  std::string peer_listen;  // gRPC host:port
  std::string data_listen;  // tcp transport host:port
  // The rdma transport: used with peers that have one too (auto: when a
  // verbs device with an active port exists; on: required; off: never).
  RdmaMode rdma = RdmaMode::kAuto;
  // Encrypt tcp data and notice connections with kernel TLS
  // (transport/data_encryption.h); rdma is then not used (it has none).
  bool data_encryption = false;
  std::string rdma_listen;  // rdma_cm host:port
  uint32_t rdma_queue_depth = 32;
  uint32_t rdma_slot_kb = 256;
  int32_t rdma_heartbeat_ms = 1000;     // RdmaTransport::Options::heartbeat_interval_ms
  int32_t rdma_timeout_ms = 5000;       // RdmaTransport::Options::peer_timeout_ms
  int32_t data_retry_ms = 30000;        // DataPath::Options::retry_budget
  int32_t rdma_retry_after_ms = 30000;  // DataPath::Options::rdma_retry_after
  uint32_t rdma_max_connections = 256;
  int rdma_tos = -1;                       // -1: rdma_cm's default
  int rdma_ack_timeout = -1;               // -1: rdma_cm's default
  std::string rdma_source;                 // "host:0"; "" for the route's
  bool rdma_log_connect_requests = false;  // tests only: TETHER_TEST_HOOKS=1
  std::vector<PeerConfig> peers;
  uint64_t cache_budget_bytes = 256ull << 20;
  // false: write-backs carry whole pages (the benchmark's baseline).
  bool writeback_diffs = true;
  int rpc_timeout_ms = 5000;
  // How long a home waits for mappers to acknowledge a range_begin before
  // fencing them (G2 in docs/architecture.md).
  int invalidate_deadline_ms = 2000;
  // Leases (invalidation/lease_table.h): 0 turns them off.
  int lease_ms = 2000;
  int lease_margin_pct = 10;
  TlsConfig tls;
  // Bounds on local connections (local_server.h); 0: none.
  uint32_t local_max_connections_per_uid = 128;
  uint32_t local_max_connections = 1024;
  // Where the segment epoch and counter persist across restarts
  // (common/node_state.h); required.
  std::string state_dir;
  // How long after a start exporters' libraries may register segments of
  // the earlier run again, and mappers wait for a home to come back before
  // they revoke its attachments (docs/consistency.md, "When the home
  // daemon restarts").
  int restart_grace_ms = 30000;
  // Nodes whose remote root is not squashed (SegmentRegistry::SetTrustedPeers).
  std::vector<uint32_t> trusted_peers;
  NotifierMode notifier = NotifierMode::kAuto;
  // Reload(): the peer list the config file names now, checked as at start
  // (main reads the --flagfile again); null: the peers came from the
  // command line, and a reload leaves them as they are.
  std::function<absl::StatusOr<std::vector<PeerConfig>>()> read_peers;
};

class SegmentRegistry;
class NodeState;
class PeerServer;
class AdminServer;
class LocalServer;
class LocalApi;
class AttachmentTable;
class FaultService;
class DataPath;
class Transport;
class TcpTransport;
class InvalidationCoordinator;
class MapperInvalidation;
class NotifierSource;
class PeerInvalidationChannel;
class NoticeReceiver;
class HomeLeaseTable;
class MapperLeaseTable;
class LeaseKeeper;

class Tetherd {
 public:
  explicit Tetherd(TetherdConfig config);
  ~Tetherd();

  absl::Status Start();
  // Stops accepting work, writes attachments' dirty pages back, shuts down.
  void Stop();
  // SIGHUP and tetherctl reload: reads the peer list (read_peers) and the
  // TLS files again. Each part stays as it was if its new version does not
  // check out (a bad file, a dropped peer still in use: logged, and the
  // error returned); new connections use new TLS files (tls_identity.h).
  // Returns what changed, for tetherctl. Any thread, after Start()
  // succeeded; reloads are serialized.
  absl::StatusOr<std::string> Reload();
  // The TLS half of Reload().
  absl::Status ReloadTls();
  // The watchdog's probe (main, service_notify.h): OK if the admin server
  // answers an RPC, the segment registry's lock can be taken and the
  // notifier source's event thread comes round (NotifierSource::Ping).
  // Blocks while one is stuck (up to 5 s each for the last two), which is
  // what the watchdog is there to notice.
  // Any thread, after Start() succeeded.
  absl::Status CheckAlive();
  // Logs a warning when the certificate or the CA expires soon (main
  // calls it daily). Any thread, after Start() succeeded.
  void CheckTlsExpiry();

 private:
  // Start() in three steps: build and wire every part (no thread runs);
  // start the parts' threads, bottom layer first; start the servers that
  // let clients and peers in.
  absl::Status Build();
  absl::Status StartThreads(const std::string& token);
  absl::Status StartServers(const std::string& token);
  absl::Status MakeRdma();  // rdma_: null without a usable verbs device
  absl::Status StartRdma(const std::string& secret);
  // Stop's first step: every mapper of a live segment drops its clean
  // copies before this daemon goes (an upgrade, a restart).
  void SuspendMappers();
  // Why `node` must not leave the peer list ("" if it may): Reload().
  std::string PeerInUse(uint32_t node);
  TetherdConfig config_;
  absl::Mutex reload_mu_;             // one Reload() at a time
  uint32_t incarnation_ = 0;          // this run's (random): peers see restarts by it
  std::unique_ptr<NodeState> state_;  // the segment epoch, kept across runs
  absl::Time started_;
  std::unique_ptr<TlsIdentity> tls_;  // null with --insecure_peers
  std::unique_ptr<SegmentRegistry> registry_;
  std::unique_ptr<HomeLeaseTable> home_leases_;      // leases this home granted
  std::unique_ptr<MapperLeaseTable> mapper_leases_;  // leases this node holds
  // tcp: the data transport, and the NoticeTransport notices ride on.
  std::unique_ptr<TcpTransport> transport_;
  std::unique_ptr<Transport> rdma_;  // null without a usable verbs device
  std::string rdma_device_;          // what DeviceAvailable found
  std::string rdma_address_;         // where it listens; empty if it does not
  std::unique_ptr<PeerDirectory> peers_;
  std::unique_ptr<DataPath> data_path_;
  std::unique_ptr<AttachmentTable> attachments_;
  std::unique_ptr<FaultService> faults_;
  std::unique_ptr<LocalApi> local_api_;
  std::unique_ptr<MapperInvalidation> mapper_invalidation_;
  std::unique_ptr<LeaseKeeper> lease_keeper_;
  std::unique_ptr<NoticeReceiver> notice_receiver_;
  std::unique_ptr<PeerInvalidationChannel> channel_;
  std::unique_ptr<InvalidationCoordinator> coordinator_;
  std::unique_ptr<NotifierSource> notifier_;
  std::unique_ptr<LocalServer> local_server_;
  std::unique_ptr<PeerServer> peer_server_;
  std::unique_ptr<AdminServer> admin_server_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;  // null with --metrics_listen=""
  std::string notifier_name_;                        // "tether.ko" or "userfaultfd"
  // The daemon's gauges and counters kept elsewhere, in the registry
  // (docs/metrics.md); before the servers start.
  void RegisterMetrics();
  // tetherctl drain: Sync of every writable copy attachment.
  absl::StatusOr<uint64_t> WriteBackAll();
};

}  // namespace tether

#endif  // TETHER_DAEMON_TETHERD_H_
