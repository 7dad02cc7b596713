#include "daemon/admin/admin_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.grpc.pb.h"
#include "daemon/common/data_counters.h"
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
        if (!segs.ok()) continue;  // unreachable peers show in `status`
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
    return grpc::Status::OK;
  }

  grpc::Status Reload(grpc::ServerContext*, const admin::ReloadRequest*,
                      admin::ReloadResponse* resp) override {
    absl::Status st = info_.reload_tls();
    if (!st.ok()) return ToGrpc(st);
    if (info_.tls) TlsToProto(info_.tls->Info(), resp->mutable_tls());
    return grpc::Status::OK;
  }

 private:
  static void TlsToProto(const CertInfo& c, admin::TlsStatus* out) {
    out->set_serial(c.serial);
    out->set_sha256(c.sha256);
    out->set_not_after_unix(absl::ToUnixSeconds(c.not_after));
    out->set_ca_not_after_unix(absl::ToUnixSeconds(c.ca_not_after));
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
};

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
  impl->server = builder.BuildAndStart();
  if (!impl->server) return ErrnoStatus(EADDRNOTAVAIL, "start the Admin service on " + socket_path);
  // Admin shows every segment and attachment of the node: root only.
  chmod(socket_path.c_str(), 0600);
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

}  // namespace tether
