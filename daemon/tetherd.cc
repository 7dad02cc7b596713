#include "daemon/tetherd.h"

#include <sys/random.h>
#include <unistd.h>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "daemon/admin/admin_server.h"
#include "daemon/common/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"
#include "daemon/common/status_macros.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/invalidation_coordinator.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/local/local_api.h"
#include "daemon/local/local_server.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/mapper/data_path.h"
#include "daemon/mapper/fault_service.h"
#include "daemon/mapper/lease_keeper.h"
#include "daemon/mapper/mapper_invalidation.h"
#include "daemon/notifier/kernel_notifier_source.h"
#include "daemon/notifier/uffd_notifier_source.h"
#include "daemon/peer/notice_receiver.h"
#include "daemon/peer/peer_invalidation_channel.h"
#include "daemon/peer/peer_server.h"
#include "daemon/transport/rdma_transport.h"
#include "daemon/transport/tcp_transport.h"
#include "daemon/transport/wire_format.h"

namespace tether {

Tetherd::Tetherd(TetherdConfig config) : config_(std::move(config)) {}

Tetherd::~Tetherd() { Stop(); }

absl::Status Tetherd::Start() {
  if (config_.node_id == 0 || config_.node_id > 0x7fff)
    return ErrnoStatus(EINVAL, "node id must be 1..32767");
  if (config_.local_socket.empty() || config_.admin_socket.empty())
    return ErrnoStatus(EINVAL, "local and admin socket paths are required");
  if (sysconf(_SC_PAGESIZE) != static_cast<long>(kPageSize))
    return ErrnoStatus(EOPNOTSUPP, absl::StrFormat("this kernel's pages are %d bytes; tether "
                                                   "works in %d-byte pages (common/page.h)",
                                                   sysconf(_SC_PAGESIZE), kPageSize));
  started_ = absl::Now();
  // The incarnation makes segids from before a restart recognisably stale.
  uint16_t inc = 0;
  while (inc == 0) {
    if (getrandom(&inc, sizeof(inc), 0) != sizeof(inc)) return ErrnoStatus(errno, "getrandom");
  }
  incarnation_ = inc;
  std::string token(kDataTokenSize, '\0');
  if (getrandom(token.data(), token.size(), 0) != static_cast<ssize_t>(token.size()))
    return ErrnoStatus(errno, "getrandom");
  SetLogPrefix(absl::StrFormat("tetherd[node %d]", config_.node_id));
  if (!config_.tls.insecure) {
    // The checked copies live next to the admin socket (/run/tether).
    size_t slash = config_.admin_socket.rfind('/');
    std::string dir = slash == std::string::npos ? "."
                      : slash == 0               ? "/"
                                                 : config_.admin_socket.substr(0, slash);
    ASSIGN_OR_RETURN(tls_, TlsIdentity::Load(config_.tls, config_.node_id, dir));
  }
  RETURN_IF_ERROR(Build());
  RETURN_IF_ERROR(StartThreads(token));
  RETURN_IF_ERROR(StartServers(token));
  TLOG_INFO(
      "up: incarnation %#x, peers on %s, data on %s (tcp)%s, local socket %s, cache "
      "budget %d MiB",
      incarnation_, config_.peer_listen, transport_->bound_address(),
      rdma_address_.empty() ? "" : absl::StrCat(" and ", rdma_address_, " (rdma)"),
      config_.local_socket, config_.cache_budget_bytes >> 20);
  return absl::OkStatus();
}

// Parts that call each other both ways (the registry and the notifier
// source; the peer directory and the data path) are wired through
// interfaces or through this object, never through setters on running parts.
absl::Status Tetherd::Build() {
  registry_ = std::make_unique<SegmentRegistry>(config_.node_id, incarnation_);
  registry_->SetTrustedPeers(config_.trusted_peers);
  LeaseConfig leases;
  leases.lease = absl::Milliseconds(config_.lease_ms);
  leases.margin = config_.lease_margin_pct / 100.0;
  home_leases_ = std::make_unique<HomeLeaseTable>(leases, Clock::Real());
  mapper_leases_ = std::make_unique<MapperLeaseTable>(leases, Clock::Real());
  if (!leases.enabled())
    TLOG_WARN(
        "leases off (--lease_ms=0): a mapper node that is cut off or crashed keeps serving "
        "its clients the pages they hold after the exporter changed them");
  transport_ = std::make_unique<TcpTransport>(config_.node_id);
  RETURN_IF_ERROR(MakeRdma());
  peers_ = std::make_unique<PeerDirectory>(
      config_.node_id, incarnation_, config_.peers, tls_.get(), config_.rpc_timeout_ms,
      [this](uint32_t node, const DataEndpoint& ep) { return data_path_->TransportFor(node, ep); },
      mapper_leases_.get());
  DataPath::Options data_opts;
  data_opts.retry_budget = absl::Milliseconds(config_.data_retry_ms);
  data_opts.rdma_retry_after = absl::Milliseconds(config_.rdma_retry_after_ms);
  data_opts.forget = [this](uint32_t node) { peers_->Forget(node); };
  data_path_ = std::make_unique<DataPath>(
      config_.node_id, registry_.get(), transport_.get(), rdma_.get(),
      [this](uint32_t node) { return peers_->Endpoint(node); }, std::move(data_opts));
  attachments_ = std::make_unique<AttachmentTable>(incarnation_);
  faults_ = std::make_unique<FaultService>(
      data_path_.get(), config_.cache_budget_bytes,
      [this](const Attachment& att, uint64_t off, uint64_t len, const std::string& why) {
        local_api_->SendSigbus(att, off, len, why);
      });
  faults_->SetWholePageWriteBack(!config_.writeback_diffs);
  mapper_invalidation_ = std::make_unique<MapperInvalidation>(faults_.get(), attachments_.get());
  // Homes' range_begin/range_end come on our data listener (the fast path)
  // or by gRPC; ours go out the same two ways.
  notice_receiver_ = std::make_unique<NoticeReceiver>(mapper_invalidation_.get());
  channel_ = std::make_unique<PeerInvalidationChannel>(
      config_.node_id, peers_.get(), transport_.get(), mapper_invalidation_.get());
  coordinator_ = std::make_unique<InvalidationCoordinator>(
      config_.node_id, registry_.get(), channel_.get(),
      absl::Milliseconds(config_.invalidate_deadline_ms), home_leases_.get());
  // The notifier source: tether.ko where /dev/tether exists (every kernel
  // memory event, mprotect and kernel-internal ones included), else the
  // user-space one (userfaultfd events; see the table in daemon/README.md).
  if (KernelNotifierSource::Available()) {
    ASSIGN_OR_RETURN(notifier_, KernelNotifierSource::Open(registry_.get(), coordinator_.get()));
    TLOG_INFO("notifier source: tether.ko (%s)", KernelNotifierSource::kDevice);
  } else {
    notifier_ = std::make_unique<UffdNotifierSource>(registry_.get(), coordinator_.get());
    TLOG_INFO("notifier source: user space (userfaultfd; %s absent)",
              KernelNotifierSource::kDevice);
  }
  lease_keeper_ = std::make_unique<LeaseKeeper>(
      config_.node_id, mapper_leases_.get(), peers_.get(), attachments_.get(),
      [this](Attachment& att, const std::string& why) { faults_->Revoke(att, why); },
      [this] { return local_api_->RemoteHomesInUse(); });
  local_api_ = std::make_unique<LocalApi>(config_.node_id, incarnation_, registry_.get(),
                                          peers_.get(), faults_.get(), attachments_.get(),
                                          notifier_.get(), coordinator_.get(), lease_keeper_.get());
  return absl::OkStatus();
}

// From the bottom layer up: a part starts after everything it calls into
// is running.
absl::Status Tetherd::StartThreads(const std::string& token) {
  RETURN_IF_ERROR(registry_->Start(notifier_.get()));
  RETURN_IF_ERROR(notifier_->Start());
  mapper_invalidation_->Start();
  notice_receiver_->Start();
  RETURN_IF_ERROR(
      transport_->Listen(config_.data_listen, token, registry_.get(), notice_receiver_.get()));
  RETURN_IF_ERROR(StartRdma(token));
  RETURN_IF_ERROR(faults_->Start());
  channel_->Start();
  lease_keeper_->Start();
  return absl::OkStatus();
}

// The servers go last: nothing reaches this node before every part runs.
absl::Status Tetherd::StartServers(const std::string& token) {
  HelloInfo hello;
  hello.node_id = config_.node_id;
  hello.incarnation = incarnation_;
  hello.data_address = transport_->bound_address();
  hello.rdma_address = rdma_address_;
  hello.data_secret = token;
  ASSIGN_OR_RETURN(peer_server_, PeerServer::Start(config_.peer_listen, tls_.get(), registry_.get(),
                                                   mapper_invalidation_.get(), channel_.get(),
                                                   hello, home_leases_.get()));
  DaemonInfo info;
  info.node_id = config_.node_id;
  info.incarnation = incarnation_;
  info.local_socket = config_.local_socket;
  info.peer_address = config_.peer_listen;
  info.data_address = transport_->bound_address();
  info.rdma_address = rdma_address_;
  info.budget_bytes = [this] { return faults_->budget_bytes(); };
  info.resident_bytes = [this] { return faults_->resident_bytes(); };
  info.tls = tls_.get();
  info.reload_tls = [this] { return ReloadTls(); };
  info.uptime_ms = [this] {
    return static_cast<uint64_t>(absl::ToInt64Milliseconds(absl::Now() - started_));
  };
  ASSIGN_OR_RETURN(admin_server_,
                   AdminServer::Start(config_.admin_socket, std::move(info), registry_.get(),
                                      peers_.get(), attachments_.get()));
  LocalLimits limits;
  limits.max_connections_per_uid = config_.local_max_connections_per_uid;
  limits.max_connections = config_.local_max_connections;
  local_server_ = std::make_unique<LocalServer>(local_api_.get(), limits);
  return local_server_->Start(config_.local_socket);
}

absl::Status Tetherd::MakeRdma() {
  if (config_.rdma == RdmaMode::kOff) {
    TLOG_INFO("rdma transport: off (--rdma=off)");
    return absl::OkStatus();
  }
  if (!RdmaTransport::DeviceAvailable(&rdma_device_)) {
    if (config_.rdma == RdmaMode::kOn)
      return ErrnoStatus(ENODEV, absl::StrCat("--rdma=on but ", rdma_device_));
    TLOG_INFO("rdma transport: not used (%s); tcp only", rdma_device_);
    return absl::OkStatus();
  }
  RdmaTransport::Options opts;
  opts.queue_depth = config_.rdma_queue_depth;
  opts.slot_bytes = config_.rdma_slot_kb * 1024;
  opts.heartbeat_interval_ms = config_.rdma_heartbeat_ms;
  opts.peer_timeout_ms = config_.rdma_timeout_ms;
  opts.max_connections = config_.rdma_max_connections;
  opts.tos = config_.rdma_tos;
  opts.ack_timeout = config_.rdma_ack_timeout;
  opts.source = config_.rdma_source;
  // A bad value is a start-up error even with --rdma=auto: the operator
  // asked for it, and quietly running without it (a ToS outside the
  // lossless class) would hurt later.
  RETURN_IF_ERROR(RdmaTransport::CheckOptions(opts));
  rdma_ = std::make_unique<RdmaTransport>(config_.node_id, opts);
  return absl::OkStatus();
}

absl::Status Tetherd::StartRdma(const std::string& secret) {
  if (!rdma_) return absl::OkStatus();
  absl::Status st = rdma_->Listen(config_.rdma_listen, secret, registry_.get(), nullptr);
  if (!st.ok()) {
    if (config_.rdma == RdmaMode::kOn) return st;
    // Peers reach us by tcp (our Hello advertises no rdma address); we
    // still try rdma to peers that listen, and fall back to tcp where the
    // device cannot reach them (DataPath).
    TLOG_WARN("rdma transport: cannot listen on %s (%s); peers reach this node by tcp",
              config_.rdma_listen, st.message());
    return absl::OkStatus();
  }
  rdma_address_ = rdma_->bound_address();
  TLOG_INFO("rdma transport: %s, listening on %s", rdma_device_, rdma_->bound_address());
  return absl::OkStatus();
}

void Tetherd::Stop() {
  if (!registry_) return;
  TLOG_INFO("shutting down");
  if (local_server_) local_server_->Stop();  // clients' attachments detach
  if (local_api_) local_api_->DetachAll();
  if (admin_server_) admin_server_->Shutdown();
  if (peer_server_) peer_server_->Shutdown();
  if (lease_keeper_) lease_keeper_->Stop();
  if (notifier_) notifier_->Stop();
  // Queued range_ends write back before the fault service stops; one that
  // comes in later (a peer's) is applied on the thread that delivers it.
  if (mapper_invalidation_) mapper_invalidation_->Stop();
  if (faults_) faults_->Stop();
  if (channel_) channel_->Stop();
  if (peers_) peers_->Shutdown();
  if (rdma_) rdma_->Shutdown();
  if (transport_) transport_->Shutdown();  // no more notices come in
  // Requests waiting for a retry fail now, while the fault service they
  // report to still exists.
  if (data_path_) data_path_->Shutdown();
  if (notice_receiver_) notice_receiver_->Stop();
  registry_->Stop();
  local_server_.reset();
  admin_server_.reset();
  peer_server_.reset();
  notifier_.reset();
  coordinator_.reset();
  channel_.reset();
  notice_receiver_.reset();
  mapper_invalidation_.reset();
  local_api_.reset();
  lease_keeper_.reset();
  faults_.reset();
  attachments_.reset();
  data_path_.reset();
  peers_.reset();
  rdma_.reset();
  transport_.reset();
  registry_.reset();
  mapper_leases_.reset();
  home_leases_.reset();
  tls_.reset();
  TLOG_INFO("stopped");
}

absl::Status Tetherd::ReloadTls() {
  if (!tls_) {
    TLOG_INFO("reload: nothing to reload (--insecure_peers)");
    return ErrnoStatus(EINVAL, "this node runs without TLS (--insecure_peers)");
  }
  return tls_->Reload();
}

void Tetherd::CheckTlsExpiry() {
  if (tls_) tls_->WarnIfExpiring();
}

}  // namespace tether
