#include "daemon/admin/admin_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <optional>
#include "absl/strings/str_format.h"
#include "admin.grpc.pb.h"

#include "daemon/common/data_counters.h"
#include "daemon/common/drain.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/metrics.h"
#include "daemon/common/segid.h"
#include "daemon/peer/grpc_status.h"

namespace tether {
namespace {

void ToProto(const SegmentSummary& s, peer::SegmentInfo* out) {
  out->set_segid(s.segid);
  out->set_size(s.size);
  out->set_vaddr(s.vaddr);
  out->set_pid(s.pid);
  out->set_uid(s.uid);
  out->set_gid(s.gid);
  out->set_mode(s.mode);
  out->set_name(s.name);
  out->set_attachments(s.grants);
  out->set_state(s.state);
}

class AdminServiceImpl final : public admin::Admin::Service {
 public:
  AdminServiceImpl(DaemonInfo info, SegmentRegistry* registry, PeerDirectory* peers,
                   AttachmentTable* attachments)
      : info_(std::move(info)), registry_(registry), peers_(peers), attachments_(attachments) {}

  grpc::Status Status(grpc::ServerContext*, const admin::StatusRequest*,
                      admin::StatusResponse* resp) override {
    resp->set_node_id(info_.node_id);
    resp->set_incarnation(info_.incarnation);
    resp->set_local_socket(info_.local_socket);
    resp->set_peer_address(info_.peer_address);
    resp->set_data_address(info_.data_address);
    resp->set_rdma_address(info_.rdma_address);
    resp->set_cache_budget_bytes(info_.budget_bytes());
    resp->set_cache_resident_bytes(info_.resident_bytes());
    resp->set_uptime_ms(info_.uptime_ms());
    if (info_.tls) TlsToProto(info_.tls->Info(), resp->mutable_tls());
    const DataCounters& c = Counters();
    auto* counters = resp->mutable_counters();
    counters->set_fetched_bytes(c.fetched_bytes.load(std::memory_order_relaxed));
    counters->set_fetch_copy_bytes(c.fetch_copy_bytes.load(std::memory_order_relaxed));
    counters->set_install_copy_bytes(c.install_copy_bytes.load(std::memory_order_relaxed));
    counters->set_served_bytes(c.served_bytes.load(std::memory_order_relaxed));
    counters->set_exporter_copy_bytes(c.exporter_copy_bytes.load(std::memory_order_relaxed));
    counters->set_serve_copy_bytes(c.serve_copy_bytes.load(std::memory_order_relaxed));
    resp->set_draining(tether::Drain().draining());
    resp->set_segments_exported(static_cast<uint32_t>(registry_->List().size()));
    resp->set_attachments(static_cast<uint32_t>(attachments_->Summaries().size()));
    resp->set_notifier_source(info_.notifier_source);
    resp->set_metrics_address(info_.metrics_address);
    for (const auto& p : peers_->States()) {
      auto* out = resp->add_peers();
      out->set_node_id(p.node_id);
      out->set_address(p.address);
      out->set_transport(p.transport);
      out->set_reachable(p.reachable);
      out->set_error(p.error);
    }
    return grpc::Status::OK;
  }

  grpc::Status List(grpc::ServerContext*, const admin::ListRequest* req,
                    admin::ListResponse* resp) override {
    for (const auto& s : registry_->List()) ToProto(s, resp->add_segments());
    if (req->cluster()) {
      for (uint32_t node : peers_->Nodes()) {
        auto segs = peers_->ListSegments(node);
        if (!segs.ok()) {
          // Named, so that nobody takes a partial list for the cluster's.
          auto* out = resp->add_unreachable();
          out->set_node_id(node);
          for (const auto& p : peers_->States())
            if (p.node_id == node) out->set_address(p.address);
          out->set_error(std::string(segs.status().message()));
          continue;
        }
        for (const auto& s : *segs) ToProto(s, resp->add_segments());
      }
    }
    for (const auto& a : attachments_->Summaries()) {
      auto* out = resp->add_attachments();
      out->set_attach_id(a.id);
      out->set_segid(a.segid);
      out->set_offset(a.offset);
      out->set_size(a.size);
      out->set_pid(a.pid);
      out->set_writable(a.writable);
      out->set_resident_bytes(a.resident_bytes);
      out->set_dirty_bytes(a.dirty_bytes);
      out->set_faults(a.faults);
      out->set_state(a.state);
      out->set_kind(a.kind);
    }
    return grpc::Status::OK;
  }

  grpc::Status Lookup(grpc::ServerContext*, const admin::LookupRequest* req,
                      admin::LookupResponse* resp) override {
    auto hit = registry_->Lookup(req->name());
    if (!hit.ok()) hit = peers_->Lookup(req->name());
    if (!hit.ok()) return ToGrpc(hit.status());
    resp->set_segid(hit->segid);
    resp->set_size(hit->size);
    resp->set_name(req->name());
    return grpc::Status::OK;
  }

  grpc::Status Stats(grpc::ServerContext*, const admin::StatsRequest*,
                     admin::StatsResponse* resp) override {
    for (const auto& s : metrics::Default().Samples()) {
      auto* m = resp->add_metrics();
      m->set_name(s.family);
      m->set_type(s.type);
      m->set_help(s.help);
      for (const auto& [k, v] : s.labels) (*m->mutable_labels())[k] = v;
      m->set_value(s.value);
      if (s.histogram) {
        uint64_t cumulative = 0;
        for (size_t b = 0; b < s.histogram->bounds.size(); ++b) {
          cumulative += s.histogram->buckets[b];
          auto* out = m->add_buckets();
          out->set_le(s.histogram->bounds[b]);
          out->set_count(cumulative);
        }
        m->set_sum(static_cast<double>(s.histogram->sum_nanos) / 1e9);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status Drain(grpc::ServerContext*, const admin::DrainRequest* req,
                     admin::DrainResponse* resp) override {
    const bool on = !req->undrain();
    if (tether::Drain().draining() != on)
      TLOG_WARN("%s", on ? "draining (tetherctl drain): new exports and attachments are refused"
                         : "drain ended (tetherctl undrain): new exports and attachments accepted");
    tether::Drain().Set(on);
    if (on && info_.write_back_all) {
      auto written = info_.write_back_all();
      if (written.ok()) {
        resp->set_written_back_bytes(*written);
      } else {
        resp->set_write_back_error(std::string(written.status().message()));
      }
    }
    resp->set_draining(tether::Drain().draining());
    resp->set_segments_exported(static_cast<uint32_t>(registry_->List().size()));
    resp->set_attachments(static_cast<uint32_t>(attachments_->Summaries().size()));
    return grpc::Status::OK;
  }

  grpc::Status Revoke(grpc::ServerContext*, const admin::RevokeRequest* req,
                      admin::RevokeResponse* resp) override {
    SegidParts parts;
    if (!ParseSegid(req->segid(), &parts))
      return ToGrpc(ErrnoStatus(EINVAL, absl::StrFormat("%#x is not a segid", req->segid())));
    if (parts.node != info_.node_id)
      return ToGrpc(ErrnoStatus(
          EINVAL, absl::StrFormat("segment %#x is homed on node %d, not here (node %d): revoke "
                                  "it there",
                                  req->segid(), parts.node, info_.node_id)));
    if (!registry_->Get(req->segid()).ok())
      return ToGrpc(
          ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x on this node", req->segid())));
    if (!info_.revoke) return ToGrpc(ErrnoStatus(ENOSYS, "revoke is not wired in this daemon"));
    std::string why = req->reason().empty() ? "revoked by the operator (tetherctl revoke)"
                                            : "revoked by the operator: " + req->reason();
    auto nodes = info_.revoke(req->segid(), why);
    if (!nodes.ok()) return ToGrpc(nodes.status());
    for (uint32_t n : *nodes) resp->add_nodes(n);
    TLOG_WARN("segment %#x: %s; %d node(s) fenced", req->segid(), why, nodes->size());
    return grpc::Status::OK;
  }

  grpc::Status Reload(grpc::ServerContext*, const admin::ReloadRequest*,
                      admin::ReloadResponse* resp) override {
    absl::StatusOr<std::string> st = info_.reload();
    if (!st.ok()) return ToGrpc(st.status());
    resp->set_peers(*st);
    if (info_.tls) TlsToProto(info_.tls->Info(), resp->mutable_tls());
    return grpc::Status::OK;
  }

  grpc::Status LogLevel(grpc::ServerContext*, const admin::LogLevelRequest* req,
                        admin::LogLevelResponse* resp) override {
    if (!req->level().empty()) {
      std::optional<tether::LogLevel> level = ParseLogLevel(req->level());
      if (!level)
        return grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            "log level must be debug, info, warning or error (got '" + req->level() + "')");
      if (*level != GetLogLevel())
        TLOG_WARN("log level: %s (was %s; tetherctl log-level)", LogLevelName(*level),
                  LogLevelName(GetLogLevel()));
      SetLogLevel(*level);
    }
    resp->set_level(LogLevelName(GetLogLevel()));
    return grpc::Status::OK;
  }

 private:
  static void TlsToProto(const CertInfo& c, admin::TlsStatus* out) {
    out->set_serial(c.serial);
    out->set_sha256(c.sha256);
    out->set_not_after_unix(absl::ToUnixSeconds(c.not_after));
    out->set_ca_not_after_unix(absl::ToUnixSeconds(c.ca_not_after));
    out->set_days_left(
        static_cast<int32_t>(absl::ToInt64Seconds(c.not_after - absl::Now()) / 86400));
  }

  DaemonInfo info_;
  SegmentRegistry* registry_;
  PeerDirectory* peers_;
  AttachmentTable* const attachments_;
};

}  // namespace

struct AdminServer::Impl {
  std::unique_ptr<AdminServiceImpl> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<admin::Admin::Stub> self;  // Ping's client, through the socket
};

absl::Status AdminServer::Ping(absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  admin::LogLevelRequest req;
  admin::LogLevelResponse resp;
  return FromGrpc(impl_->self->LogLevel(&ctx, req, &resp), "the admin server");
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AdminServer::~AdminServer() { Shutdown(); }

void AdminServer::Shutdown() {
  if (impl_ && impl_->server) {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    impl_->server->Wait();
    impl_->server.reset();
  }
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& socket_path,
                                                                DaemonInfo info,
                                                                SegmentRegistry* registry,
                                                                PeerDirectory* peers,
                                                                AttachmentTable* attachments) {
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<AdminServiceImpl>(std::move(info), registry, peers, attachments);
  unlink(socket_path.c_str());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(impl->service.get());
  // Admin shows every segment and attachment of the node and reloads its
  // TLS files: root's only (tetherd runs as root), from the moment the
  // socket exists. gRPC binds it with the mode the umask leaves, so it is
  // made under umask 077 rather than only chmod-ed once listening, which
  // left it as open as the umask tetherd inherited (0000: anyone) until
  // then. The umask is process-wide: Start runs on the start-up thread
  // (Tetherd::StartServers), and 077 only takes permissions away from a
  // file another thread makes meanwhile (a TLS reload's 0700/0600 copies
  // keep theirs).
  mode_t old_umask = umask(0077);
  impl->server = builder.BuildAndStart();
  umask(old_umask);
  if (!impl->server) return ErrnoStatus(EADDRNOTAVAIL, "start the Admin service on " + socket_path);
  // Listening already: a test holds here to connect as another user.
  TETHER_FAULT_POINT("admin_server.start.listening");
  if (chmod(socket_path.c_str(), 0600) != 0)
    return ErrnoStatus(errno, "chmod 0600 the Admin socket " + socket_path);
  impl->self = admin::Admin::NewStub(
      grpc::CreateChannel("unix:" + socket_path, grpc::InsecureChannelCredentials()));
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

}  // namespace tether
