#include "daemon/peer/peer_server.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

#include "daemon/common/drain.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/segid.h"
#include "daemon/peer/grpc_status.h"
#include "daemon/peer/notice_codec.h"
#include "daemon/peer/tls_identity.h"
#include "daemon/transport/data_token.h"
#include "peer.grpc.pb.h"

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

// With mutual TLS, a request that speaks for node N must come from node N's
// certificate (DNS SAN "tether-node-N", tls_config.h): a node cannot attach
// in another's name, nor invalidate or revoke another home's segments.
// Plaintext mode (--insecure_peers) has no identity to check; with TLS a
// call without a verified certificate is refused.
bool CallerIsNode(bool tls, grpc::ServerContext* ctx, uint32_t node, const char* what) {
  if (!tls) return true;
  auto auth = ctx->auth_context();
  if (auth && auth->IsPeerAuthenticated() && CallerNamesNode(*auth, node)) return true;
  std::string names = auth ? CallerNames(*auth) : std::string("nothing");
  if (ShouldLogRefusal(absl::StrCat(what, " ", node, " ", names)))
    TLOG_WARN("TLS: refused %s from %s speaking for node %d: its certificate names %s, not %s",
              what, ctx->peer(), node, names, NodeCertName(node));
  return false;
}

grpc::Status NotThatNode(uint32_t node) {
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      "the caller's certificate is not node " + std::to_string(node) + "'s (" +
                          NodeCertName(node) + ")",
                      "13");
}

class PeerServiceImpl final : public peer::Peer::Service {
 public:
  PeerServiceImpl(bool tls, SegmentRegistry* registry, InvalidationTarget* mapper,
                  InvalidationChannel* notices, HelloInfo hello, HomeLeaseTable* leases)
      : tls_(tls),
        registry_(registry),
        mapper_(mapper),
        notices_(notices),
        hello_(std::move(hello)),
        leases_(leases) {}

  grpc::Status Invalidate(grpc::ServerContext* ctx, const peer::InvalidateRequest* req,
                          peer::InvalidateResponse*) override {
    if (!CallerIsNode(tls_, ctx, req->home_node(), "Invalidate"))
      return NotThatNode(req->home_node());
    auto n = FromProto(*req);
    if (!n.ok()) return ToGrpc(n.status());
    return ToGrpc(mapper_->Handle(*n));
  }

  grpc::Status Hello(grpc::ServerContext* ctx, const peer::HelloRequest* req,
                     peer::HelloResponse* resp) override {
    // The data token is the caller's own (data_token.h): with TLS only the
    // holder of node N's certificate learns node N's token.
    if (req->node_id() == 0 || req->node_id() > 0x7fff || req->node_id() == hello_.node_id)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad caller node id", "22");
    if (!CallerIsNode(tls_, ctx, req->node_id(), "Hello")) return NotThatNode(req->node_id());
    resp->set_node_id(hello_.node_id);
    resp->set_incarnation(hello_.incarnation);
    resp->set_segment_epoch(hello_.segment_epoch);
    resp->set_data_address(hello_.data_address);
    resp->set_rdma_address(hello_.rdma_address);
    resp->set_data_token(DataTokenFor(hello_.data_secret, req->node_id()));
    return grpc::Status::OK;
  }

  grpc::Status Attach(grpc::ServerContext* ctx, const peer::AttachRequest* req,
                      peer::AttachResponse* resp) override {
    if (!CallerIsNode(tls_, ctx, req->mapper_node(), "Attach"))
      return NotThatNode(req->mapper_node());
    Credentials cred;
    cred.uid = req->cred().uid();
    cred.gid = req->cred().gid();
    cred.groups.assign(req->cred().groups().begin(), req->cred().groups().end());
    if (req->mapper_node() == 0 || req->mapper_node() == hello_.node_id)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad mapper node id", "22");
    // A draining home grants nothing new (common/drain.h).
    if (absl::Status st = Drain().Accepting(hello_.node_id, "attachments"); !st.ok())
      return ToGrpc(st);
    // The grant is recorded before the registry's fence check (lease_table.h).
    leases_->Granted(req->mapper_node());
    auto g = registry_->Attach(req->segid(), cred, req->write(), req->mapper_node());
    if (!g.ok()) return ToGrpc(g.status());
    notices_->Prepare(req->mapper_node());
    resp->set_remote_attach_id(g->id);
    resp->set_segment_size(g->segment_size);
    resp->set_writable(g->writable);
    resp->set_lease_ms(LeaseMs());
    resp->set_incarnation(hello_.incarnation);
    return grpc::Status::OK;
  }

  grpc::Status Renew(grpc::ServerContext* ctx, const peer::RenewRequest* req,
                     peer::RenewResponse* resp) override {
    if (req->mapper_node() == 0 || req->mapper_node() > 0x7fff ||
        req->mapper_node() == hello_.node_id)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad mapper node id", "22");
    if (!CallerIsNode(tls_, ctx, req->mapper_node(), "Renew"))
      return NotThatNode(req->mapper_node());
    // Grant first, then read the fences: a fence that the answer misses
    // was made after this grant, and its coordinator waits for this lease.
    leases_->Granted(req->mapper_node());
    resp->set_incarnation(hello_.incarnation);
    resp->set_segment_epoch(hello_.segment_epoch);
    resp->set_lease_ms(LeaseMs());
    // Grants of before this daemon's restart (peer.proto, HeldGrant): the
    // mapper dropped its clean copies of them before it sent them.
    for (const auto& h : req->reclaim()) {
      Credentials cred;
      cred.uid = h.cred().uid();
      cred.gid = h.cred().gid();
      cred.groups.assign(h.cred().groups().begin(), h.cred().groups().end());
      absl::Status st =
          registry_->ReclaimGrant(h.segid(), h.grant(), cred, h.write(), req->mapper_node());
      if (st.ok()) continue;
      if (ToErrno(st) == EAGAIN) {
        resp->add_pending(h.segid());
        continue;
      }
      auto* g = resp->add_gone();
      g->set_segid(h.segid());
      g->set_reason(std::string(st.message()));
    }
    if (req->reclaim_size() > 0) notices_->Prepare(req->mapper_node());
    for (auto& [segid, why] : registry_->FencedSegments(req->mapper_node())) {
      auto* f = resp->add_fenced();
      f->set_segid(segid);
      f->set_reason(why);
    }
    return grpc::Status::OK;
  }

  grpc::Status Detach(grpc::ServerContext* ctx, const peer::DetachRequest* req,
                      peer::DetachResponse*) override {
    if (!CallerIsNode(tls_, ctx, req->mapper_node(), "Detach"))
      return NotThatNode(req->mapper_node());
    // Grants are bound to the node id recorded at Attach.
    return ToGrpc(registry_->Detach(req->segid(), req->remote_attach_id(), req->mapper_node()));
  }

  grpc::Status Lookup(grpc::ServerContext*, const peer::LookupRequest* req,
                      peer::LookupResponse* resp) override {
    auto s = registry_->Lookup(req->name());
    if (!s.ok()) return ToGrpc(s.status());
    resp->set_segid(s->segid);
    resp->set_size(s->size);
    return grpc::Status::OK;
  }

  grpc::Status ListSegments(grpc::ServerContext*, const peer::ListSegmentsRequest*,
                            peer::ListSegmentsResponse* resp) override {
    for (const auto& s : registry_->List()) ToProto(s, resp->add_segments());
    return grpc::Status::OK;
  }

 private:
  const bool tls_;
  SegmentRegistry* registry_;
  InvalidationTarget* mapper_;
  InvalidationChannel* notices_;
  HelloInfo hello_;
  HomeLeaseTable* leases_;

  uint32_t LeaseMs() const {
    return static_cast<uint32_t>(absl::ToInt64Milliseconds(leases_->config().lease));
  }
};

}  // namespace

std::unique_ptr<grpc::Service> NewPeerService(SegmentRegistry* registry, InvalidationTarget* mapper,
                                              InvalidationChannel* notices, HelloInfo hello,
                                              HomeLeaseTable* leases) {
  return std::make_unique<PeerServiceImpl>(/*tls=*/false, registry, mapper, notices,
                                           std::move(hello), leases);
}

struct PeerServer::Impl {
  std::unique_ptr<PeerServiceImpl> service;
  std::unique_ptr<grpc::Server> server;
};

PeerServer::PeerServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PeerServer::~PeerServer() { Shutdown(); }

void PeerServer::Shutdown() {
  if (impl_ && impl_->server) {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    impl_->server->Wait();
    impl_->server.reset();
  }
}

absl::StatusOr<std::unique_ptr<PeerServer>> PeerServer::Start(
    const std::string& address, const TlsIdentity* tls, SegmentRegistry* registry,
    InvalidationTarget* mapper, InvalidationChannel* notices, HelloInfo hello,
    HomeLeaseTable* leases) {
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<PeerServiceImpl>(tls != nullptr, registry, mapper, notices,
                                                    std::move(hello), leases);
  std::shared_ptr<grpc::ServerCredentials> creds =
      tls ? tls->ServerCredentials() : grpc::InsecureServerCredentials();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, creds, &port);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || port == 0)
    return ErrnoStatus(EADDRNOTAVAIL, "start the Peer service on " + address);
  return std::unique_ptr<PeerServer>(new PeerServer(std::move(impl)));
}

}  // namespace tether
