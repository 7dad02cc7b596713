#include "daemon/tetherd.h"

#include <sys/random.h>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "daemon/admin/admin_server.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/invalidation_coordinator.h"
#include "daemon/invalidation/mapper_invalidation.h"
#include "daemon/local/local_api.h"
#include "daemon/notifier/kernel_notifier_source.h"
#include "daemon/notifier/uffd_notifier_source.h"
#include "daemon/local/local_server.h"
#include "daemon/mapper/data_path.h"
#include "daemon/mapper/fault_service.h"
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

  registry_ = std::make_unique<SegmentRegistry>(config_.node_id, incarnation_);
  RETURN_IF_ERROR(registry_->Start());

  auto tcp = std::make_unique<TcpTransport>(config_.node_id);
  TcpTransport* tcp_transport = tcp.get();
  transport_ = std::move(tcp);
  RETURN_IF_ERROR(transport_->Listen(config_.data_listen, token, registry_.get()));
  RETURN_IF_ERROR(StartRdma(token));

  peers_ = std::make_unique<PeerDirectory>(config_.node_id, incarnation_, config_.peers,
                                           config_.tls, config_.rpc_timeout_ms);
  data_path_ = std::make_unique<DataPath>(
      config_.node_id, registry_.get(), transport_.get(), rdma_.get(),
      [this](uint32_t node) { return peers_->Endpoint(node); });
  peers_->SetTransportNamer([this](uint32_t node, const DataEndpoint& ep) {
    return data_path_->TransportFor(node, ep);
  });
  faults_ = std::make_unique<FaultService>(
      data_path_.get(), config_.cache_budget_bytes,
      [this](const Attachment& att, uint64_t off, uint64_t len, const std::string& why) {
        local_api_->SendSigbus(att, off, len, why);
      });
  RETURN_IF_ERROR(faults_->Start());
  local_api_ = std::make_unique<LocalApi>(config_.node_id, incarnation_, registry_.get(),
                                          peers_.get(), faults_.get());
  mapper_invalidation_ = std::make_unique<MapperInvalidation>(
      faults_.get(), [this](uint64_t segid) { return local_api_->AttachmentsOf(segid); });
  // Homes' range_begin/range_end come on our data listener (the fast path)
  // or by gRPC; ours go out the same two ways.
  notice_receiver_ = std::make_unique<NoticeReceiver>(mapper_invalidation_.get());
  tcp_transport->SetNoticeServer(notice_receiver_.get());
  channel_ = std::make_unique<PeerInvalidationChannel>(config_.node_id, peers_.get(),
                                                       tcp_transport, mapper_invalidation_.get());
  coordinator_ = std::make_unique<InvalidationCoordinator>(
      config_.node_id, registry_.get(), channel_.get(),
      absl::Milliseconds(config_.invalidate_deadline_ms));
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
  registry_->SetGoneCallback([this](uint64_t segid, const std::string& why) {
    coordinator_->RevokeAll(segid, why);
    // The kernel source keeps the exporter's /dev/tether fd: close it.
    if (auto* k = dynamic_cast<KernelNotifierSource*>(notifier_.get())) k->Forget(segid);
  });
  registry_->SetNotifierSource(notifier_.get());
  local_api_->SetNotifierSource(notifier_.get());
  local_api_->SetCoordinator(coordinator_.get());

  HelloInfo hello;
  hello.node_id = config_.node_id;
  hello.incarnation = incarnation_;
  hello.data_address = transport_->bound_address();
  hello.rdma_address = rdma_ ? rdma_->bound_address() : "";
  hello.data_secret = token;
  ASSIGN_OR_RETURN(peer_server_,
                   PeerServer::Start(config_.peer_listen, config_.tls, registry_.get(),
                                     mapper_invalidation_.get(), channel_.get(), hello));
  DaemonInfo info;
  info.node_id = config_.node_id;
  info.incarnation = incarnation_;
  info.local_socket = config_.local_socket;
  info.peer_address = config_.peer_listen;
  info.data_address = transport_->bound_address();
  info.rdma_address = rdma_ ? rdma_->bound_address() : "";
  info.budget_bytes = [this] { return faults_->budget_bytes(); };
  info.resident_bytes = [this] { return faults_->resident_bytes(); };
  info.uptime_ms = [this] {
    return static_cast<uint64_t>(absl::ToInt64Milliseconds(absl::Now() - started_));
  };
  ASSIGN_OR_RETURN(admin_server_, AdminServer::Start(config_.admin_socket, std::move(info),
                                                     registry_.get(), peers_.get(),
                                                     local_api_.get()));
  local_server_ = std::make_unique<LocalServer>(local_api_.get());
  RETURN_IF_ERROR(local_server_->Start(config_.local_socket));
  TLOG_INFO("up: incarnation %#x, peers on %s, data on %s (tcp)%s, local socket %s, cache "
            "budget %d MiB",
            incarnation_, config_.peer_listen, transport_->bound_address(),
            rdma_ ? absl::StrCat(" and ", rdma_->bound_address(), " (rdma)") : "",
            config_.local_socket, config_.cache_budget_bytes >> 20);
  return absl::OkStatus();
}

absl::Status Tetherd::StartRdma(const std::string& secret) {
  if (config_.rdma == RdmaMode::kOff) {
    TLOG_INFO("rdma transport: off (--rdma=off)");
    return absl::OkStatus();
  }
  std::string found;
  if (!RdmaTransport::DeviceAvailable(&found)) {
    if (config_.rdma == RdmaMode::kOn)
      return ErrnoStatus(ENODEV, absl::StrCat("--rdma=on but ", found));
    TLOG_INFO("rdma transport: not used (%s); tcp only", found);
    return absl::OkStatus();
  }
  RdmaTransport::Options opts;
  opts.queue_depth = config_.rdma_queue_depth;
  opts.slot_bytes = config_.rdma_slot_kb * 1024;
  auto rdma = std::make_unique<RdmaTransport>(config_.node_id, opts);
  absl::Status st = rdma->Listen(config_.rdma_listen, secret, registry_.get());
  if (!st.ok()) {
    if (config_.rdma == RdmaMode::kOn) return st;
    TLOG_WARN("rdma transport: cannot listen on %s (%s); tcp only", config_.rdma_listen,
              st.message());
    return absl::OkStatus();
  }
  TLOG_INFO("rdma transport: %s, listening on %s", found, rdma->bound_address());
  rdma_ = std::move(rdma);
  return absl::OkStatus();
}

void Tetherd::Stop() {
  if (!registry_) return;
  TLOG_INFO("shutting down");
  if (local_server_) local_server_->Stop();  // clients' attachments detach
  if (local_api_) local_api_->DetachAll();
  if (admin_server_) admin_server_->Shutdown();
  if (peer_server_) peer_server_->Shutdown();
  if (notifier_) notifier_->Stop();
  if (faults_) faults_->Stop();
  if (channel_) channel_->Stop();
  if (peers_) peers_->Shutdown();
  if (rdma_) rdma_->Shutdown();
  if (transport_) transport_->Shutdown();  // no more notices come in
  if (notice_receiver_) notice_receiver_->Stop();
  registry_->Stop();
  local_server_.reset();
  admin_server_.reset();
  peer_server_.reset();
  registry_->SetNotifierSource(nullptr);
  notifier_.reset();
  coordinator_.reset();
  channel_.reset();
  notice_receiver_.reset();
  mapper_invalidation_.reset();
  local_api_.reset();
  faults_.reset();
  data_path_.reset();
  peers_.reset();
  rdma_.reset();
  transport_.reset();
  registry_.reset();
  TLOG_INFO("stopped");
}

}  // namespace tether
