#include "daemon/tetherd.h"

#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/admin/admin_server.h"
#include "daemon/common/clock.h"
#include "daemon/common/data_counters.h"
#include "daemon/common/drain.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/node_state.h"
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
#include "daemon/mapper/mapper_metrics.h"
#include "daemon/notifier/kernel_notifier_source.h"
#include "daemon/notifier/uffd_notifier_source.h"
#include "daemon/peer/notice_receiver.h"
#include "daemon/peer/peer_invalidation_channel.h"
#include "daemon/peer/peer_server.h"
#include "daemon/transport/data_encryption.h"
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
  // The unit's StateDirectory exists; a hand-started daemon may name a
  // directory whose parent does.
  if (!config_.state_dir.empty() && mkdir(config_.state_dir.c_str(), 0700) != 0 && errno != EEXIST)
    return ErrnoStatus(errno,
                       absl::StrCat("cannot create the state directory ", config_.state_dir));
  ASSIGN_OR_RETURN(state_, NodeState::Open(config_.state_dir, config_.node_id));
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
      "up: incarnation %#x, segment epoch %#x (%s), peers on %s, data on %s (tcp)%s, local socket "
      "%s, cache "
      "budget %d MiB",
      incarnation_, state_->epoch(),
      state_->fresh() ? absl::StrCat("new: ", state_->path())
                      : absl::StrFormat("kept from %s; segments of the earlier run may register "
                                        "again for %d ms",
                                        state_->path(), config_.restart_grace_ms),
      config_.peer_listen, transport_->bound_address(),
      rdma_address_.empty() ? "" : absl::StrCat(" and ", rdma_address_, " (rdma)"),
      config_.local_socket, config_.cache_budget_bytes >> 20);
  return absl::OkStatus();
}

// Parts that call each other both ways (the registry and the notifier
// source; the peer directory and the data path) are wired through
// interfaces or through this object, never through setters on running parts.
absl::Status Tetherd::Build() {
  registry_ = std::make_unique<SegmentRegistry>(
      config_.node_id, state_.get(),
      state_->fresh() ? absl::InfinitePast()
                      : started_ + absl::Milliseconds(config_.restart_grace_ms));
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
  if (config_.data_encryption) {
    if (absl::Status can = KtlsAvailable(); !can.ok())
      return absl::Status(can.code(), absl::StrCat("--data_encryption=on: ", can.message()));
    transport_->SetEncryption(true);
    TLOG_INFO(
        "data connections: encrypted (kernel TLS 1.3, AES-128-GCM, keys from each connection's "
        "handshake)");
  }
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
  // --notifier=kernel insists on the module, --notifier=user never uses it.
  const bool kernel = config_.notifier != NotifierMode::kUser && KernelNotifierSource::Available();
  if (config_.notifier == NotifierMode::kKernel && !kernel)
    return ErrnoStatus(ENODEV, absl::StrCat("--notifier=kernel but ", KernelNotifierSource::kDevice,
                                            " does not exist: load tether.ko (modprobe tether; "
                                            "tether-dkms builds it for the running kernel)"));
  if (kernel) {
    ASSIGN_OR_RETURN(notifier_, KernelNotifierSource::Open(registry_.get(), coordinator_.get()));
    TLOG_INFO("notifier source: tether.ko (%s)", KernelNotifierSource::kDevice);
    notifier_name_ = "tether.ko";
  } else {
    notifier_ = std::make_unique<UffdNotifierSource>(registry_.get(), coordinator_.get());
    notifier_name_ = "userfaultfd";
    TLOG_INFO("notifier source: user space (userfaultfd; %s)",
              config_.notifier == NotifierMode::kUser
                  ? "--notifier=user"
                  : absl::StrCat(KernelNotifierSource::kDevice, " absent"));
  }
  lease_keeper_ = std::make_unique<LeaseKeeper>(
      config_.node_id, mapper_leases_.get(), peers_.get(), attachments_.get(),
      [this](Attachment& att, const std::string& why) { faults_->Revoke(att, why); },
      [this] { return local_api_->RemoteHomesInUse(); });
  local_api_ = std::make_unique<LocalApi>(config_.node_id, incarnation_, registry_.get(),
                                          peers_.get(), faults_.get(), attachments_.get(),
                                          notifier_.get(), coordinator_.get(), lease_keeper_.get());
  // A home that goes silent or restarts: suspend, hand grants back, resume
  // (mapper/lease_keeper.h; docs/consistency.md, "When the home daemon
  // restarts").
  LeaseKeeper::RestartHandling rh;
  rh.grace = absl::Milliseconds(config_.restart_grace_ms);
  rh.held_grants = [this](uint32_t home) { return local_api_->GrantsFrom(home); };
  rh.suspend = [this](Attachment& att) { faults_->Suspend(*att.cache); };
  rh.resume = [this](Attachment& att, bool restarted) {
    absl::Status st = faults_->Resume(*att.cache, restarted);
    if (!st.ok())
      TLOG_WARN("segment %#x: write-back on resuming it failed (the pages stay dirty): %s",
                att.segid, st.ToString());
  };
  rh.forget_endpoint = [this](uint32_t home) { peers_->Forget(home); };
  lease_keeper_->SetRestartHandling(std::move(rh));
  local_api_->SetExporterHold(
      static_cast<uint32_t>(int64_t{config_.lease_ms} * (100 + config_.lease_margin_pct) / 100));
  // Restarted with the segment epoch of an earlier run: until that run's
  // leases ran out, no exporter's change returns (lease_table.h).
  if (!state_->fresh()) home_leases_->Restarted();
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
  hello.segment_epoch = state_->epoch();
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
  info.reload = [this] { return Reload(); };
  info.uptime_ms = [this] {
    return static_cast<uint64_t>(absl::ToInt64Milliseconds(absl::Now() - started_));
  };
  info.write_back_all = [this] { return WriteBackAll(); };
  info.revoke = [this](uint64_t segid, const std::string& why) {
    return absl::StatusOr<std::vector<uint32_t>>(coordinator_->RevokeGrants(segid, why));
  };
  info.notifier_source = notifier_name_;
  RegisterMetrics();
  if (!config_.metrics_listen.empty()) {
    ASSIGN_OR_RETURN(metrics_http_, MetricsHttpServer::Start(config_.metrics_listen, [] {
                       return metrics::Default().Render();
                     }));
    info.metrics_address = metrics_http_->bound_address();
    TLOG_INFO("metrics: http://%s/metrics", metrics_http_->bound_address());
  }
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
  if (config_.data_encryption) {  // main.cc refused --rdma=on with it
    TLOG_INFO("rdma transport: not used (--data_encryption=on: rdma moves pages unencrypted)");
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
  opts.log_connect_requests = config_.rdma_log_connect_requests;
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
  SuspendMappers();
  if (local_server_) local_server_->Stop();  // clients' attachments detach
  if (local_api_) local_api_->DetachAll();
  if (admin_server_) admin_server_->Shutdown();
  if (metrics_http_) metrics_http_->Stop();
  // The registry outlives this daemon: forget what reads its parts.
  metrics::Default().ClearFunctions();
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
  metrics_http_.reset();
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
  state_.reset();
  TLOG_INFO("stopped");
}

std::string Tetherd::PeerInUse(uint32_t node) {
  std::vector<uint32_t> homes = local_api_->RemoteHomesInUse();
  if (std::find(homes.begin(), homes.end(), node) != homes.end())
    return "this node maps segments it homes";
  for (const SegmentSummary& seg : registry_->List()) {
    std::vector<uint32_t> mappers = registry_->GrantNodes(seg.segid);
    if (std::find(mappers.begin(), mappers.end(), node) != mappers.end())
      return absl::StrFormat("it maps segment %#x homed here", seg.segid);
  }
  return "";
}

absl::StatusOr<std::string> Tetherd::Reload() {
  absl::MutexLock lock(&reload_mu_);
  absl::Status first;
  std::string summary = "peers: unchanged (given on the command line, not in a --flagfile)";
  if (config_.read_peers) {
    absl::StatusOr<std::vector<PeerConfig>> peers = config_.read_peers();
    absl::StatusOr<PeerDirectory::Change> change =
        peers.ok() ? peers_->Reconfigure(*peers, [this](uint32_t n) { return PeerInUse(n); })
                   : peers.status();
    if (!change.ok()) {
      TLOG_ERROR("reload: %s; the peer list in use stays", change.status().message());
      first = WithErrno(ToErrno(change.status()),
                        absl::StrCat("peers not reloaded: ", change.status().message()));
      summary = "peers: not reloaded";
    } else {
      auto ids = [](const std::vector<uint32_t>& v) {
        return v.empty() ? std::string("none") : absl::StrJoin(v, ",");
      };
      summary = absl::StrCat("peers: added ", ids(change->added), "; removed ",
                             ids(change->removed), "; new address ", ids(change->moved));
      TLOG_INFO("reload: %s (now %s)", summary, absl::StrJoin(peers_->Nodes(), ","));
    }
  }
  if (tls_) {
    absl::Status st = ReloadTls();
    if (!st.ok() && first.ok()) first = st;
  }
  if (!first.ok()) return first;
  return summary;
}

absl::Status Tetherd::CheckAlive() {
  // Takes the registry's lock; a deadlock there blocks this call, and the
  // watchdog's silence gets the daemon restarted.
  registry_->List();
  RETURN_IF_ERROR(admin_server_->Ping(absl::Seconds(5)));
  // The notifier source's event thread: wedged, or stopped on an error,
  // exporters' changes are no longer forwarded (their calls wait out the
  // module's ack timeout and mappers are revoked): a restart is better.
  return notifier_->Ping(absl::Seconds(5));
}

void Tetherd::RegisterMetrics() {
  metrics::Registry& r = metrics::Default();
  Mapper();  // the mapper side's metrics exist (at 0) from the start
  auto gauge = [&r](const char* name, const char* help, std::function<double()> fn,
                    metrics::Labels labels = {}) {
    r.SetGaugeFunction(name, help, labels, std::move(fn));
  };
  auto counter = [&r](const char* name, const char* help, const std::atomic<uint64_t>& v,
                      metrics::Labels labels = {}) {
    r.SetCounterFunction(name, help, labels,
                         [&v] { return static_cast<double>(v.load(std::memory_order_relaxed)); });
  };
  gauge("tether_info", "this daemon: node id and incarnation (value 1)", [] { return 1.0; },
        {{"node", absl::StrCat(config_.node_id)},
         {"incarnation", absl::StrFormat("%#x", incarnation_)}});
  gauge("tether_uptime_seconds", "since the daemon started",
        [this] { return absl::ToDoubleSeconds(absl::Now() - started_); });
  gauge("tether_notifier_source",
        "the notifier source in use (value 1): tether.ko, or userfaultfd without the module",
        [] { return 1.0; }, {{"source", notifier_name_}});
  gauge("tether_draining", "1 while the node drains (tetherctl drain)",
        [] { return Drain().draining() ? 1.0 : 0.0; });
  gauge("tether_cache_budget_bytes", "the cache budget (--cache_budget_mb)",
        [this] { return static_cast<double>(faults_->budget_bytes()); });
  gauge("tether_cache_resident_bytes", "pages cached on this node now (copies and twins)",
        [this] { return static_cast<double>(faults_->resident_bytes()); });
  gauge("tether_segments_exported", "segments homed on this node now",
        [this] { return static_cast<double>(registry_->List().size()); });
  gauge("tether_attachments", "attachments on this node now (copies and direct)",
        [this] { return static_cast<double>(attachments_->Summaries().size()); });
  gauge("tether_fenced_nodes",
        "nodes fenced now for at least one segment homed here (they may not attach it again)",
        [this] {
          std::vector<uint32_t> nodes = peers_->Nodes();
          nodes.push_back(config_.node_id);
          double n = 0;
          for (uint32_t node : nodes) n += registry_->FencedSegments(node).empty() ? 0 : 1;
          return n;
        });
  const InvalidationStats& s = coordinator_->stats();
  counter("tether_home_invalidations_total",
          "invalidation windows opened on segments homed here (one per range_begin fan-out)",
          s.windows);
  counter("tether_invalidation_notices_sent_total",
          "range_begin, range_end and REVOKE notices sent to mapper nodes", s.notices_sent);
  counter("tether_fences_total",
          "(segment, node) fences: a mapper node missed a range_begin's deadline, or an operator "
          "revoked the segment",
          s.fenced);
  counter("tether_fence_lease_waits_total",
          "range_begins that waited for a fenced node's lease to run out", s.lease_waits);
  const DataCounters& d = Counters();
  counter("tether_served_bytes_total",
          "page contents this home read for mappers' requests (this node's own included)",
          d.served_bytes);
  const char* copies = "CPU copies of page contents, in bytes, by where they are made";
  counter("tether_copied_bytes_total", copies, d.fetch_copy_bytes, {{"where", "fetch"}});
  counter("tether_copied_bytes_total", copies, d.install_copy_bytes, {{"where", "install"}});
  counter("tether_copied_bytes_total", copies, d.exporter_copy_bytes, {{"where", "exporter"}});
  counter("tether_copied_bytes_total", copies, d.serve_copy_bytes, {{"where", "serve"}});
}

absl::StatusOr<uint64_t> Tetherd::WriteBackAll() {
  const uint64_t before = Mapper().written_back_total->Value();
  absl::Status first;
  for (uint32_t home : attachments_->Homes()) {
    for (const auto& att : attachments_->FromHome(home)) {
      if (!att->writable) continue;
      absl::Status st = faults_->Sync(*att, 0, att->size);
      if (!st.ok() && first.ok()) first = st;
    }
  }
  if (!first.ok()) return first;
  return Mapper().written_back_total->Value() - before;
}

void Tetherd::SuspendMappers() {
  if (!coordinator_ || !peer_server_) return;  // never started
  // Without leases mappers renew nothing and so never learn that a new
  // daemon took the segments back: suspended, they would wait for good.
  if (config_.lease_ms == 0) return;
  // Once this daemon is gone nobody can invalidate mappers' copies, and a
  // restarted one does not know who holds them: every node that may cache
  // part of a live segment drops its clean copies now (a range_begin over
  // the whole segment; dirty pages kept aside, faults wait) and holds them
  // until this node's next run answers its renewal, or its grace runs out
  // (mapper/lease_keeper.h). No range_end follows. All segments at once,
  // for at most the ack deadline: a node that does not answer by then
  // (cut off, frozen, down) is not fenced or waited for — its own lease
  // runs out and it suspends by itself (docs/consistency.md says what it
  // may read meanwhile).
  std::vector<InvalidationCoordinator::PendingBegin> pending;
  for (const SegmentSummary& s : registry_->List()) {
    if (s.state != "live" || s.grants == 0) continue;
    auto p = coordinator_->StartBegin(s.segid, 0, s.size, "the home daemon is stopping",
                                      absl::InfiniteFuture(), InFlightWrites::kDoNotAwait);
    if (p.ok()) pending.push_back(std::move(*p));
  }
  if (pending.empty()) return;
  // Every fan-out runs at once; their answers are awaited up to the ack
  // deadline together (polled: shutdown, not a hot path).
  const absl::Time until = absl::Now() + absl::Milliseconds(config_.invalidate_deadline_ms);
  while (absl::Now() < until &&
         !std::all_of(pending.begin(), pending.end(),
                      [](const InvalidationCoordinator::PendingBegin& p) { return p.answered(); }))
    absl::SleepFor(absl::Milliseconds(5));
  TLOG_INFO("mappers of %d segment(s) suspended until this node's daemon is back", pending.size());
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
