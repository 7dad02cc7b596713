#include "daemon/peer/peer_directory.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/log.h"
#include "daemon/common/segid.h"
#include "daemon/common/status_macros.h"
#include "daemon/peer/grpc_status.h"
#include "daemon/peer/notice_codec.h"
#include "peer.grpc.pb.h"

namespace tether {

namespace {

// "0.0.0.0:p" / "[::]:p" -> "<host of via>:p"; anything else unchanged.
std::string ReplaceWildcardHost(const std::string& addr, const std::string& via) {
  size_t colon = addr.rfind(':');
  size_t vcolon = via.rfind(':');
  if (colon == std::string::npos || vcolon == std::string::npos) return addr;
  std::string host = addr.substr(0, colon);
  if (host != "0.0.0.0" && host != "[::]" && host != "::") return addr;
  return via.substr(0, vcolon) + addr.substr(colon);
}

}  // namespace

struct PeerDirectory::Impl {
  struct Peer {
    PeerConfig config;
    std::shared_ptr<grpc::Channel> channel;
    // Shared: a call in flight keeps its stub (and channel) alive after a
    // reload dropped the peer (Reconfigure).
    std::shared_ptr<peer::Peer::Stub> stub;
    std::shared_ptr<const DataEndpoint> endpoint;  // null until Hello
    uint64_t incarnation = 0;
    std::string last_error;
  };

  uint32_t local_node;
  uint64_t incarnation;
  MapperLeaseTable* leases = nullptr;
  absl::Mutex calls_mu;
  absl::flat_hash_set<grpc::ClientContext*> calls ABSL_GUARDED_BY(calls_mu);
  bool shut_down ABSL_GUARDED_BY(calls_mu) = false;
  int rpc_timeout_ms;
  TransportNamer namer;
  mutable absl::Mutex mu;
  absl::flat_hash_map<uint32_t, std::unique_ptr<Peer>> peers ABSL_GUARDED_BY(mu);

  // Async calls in flight, so that Shutdown() can cancel them and wait.
  // Track() refuses (false) once shutting down; the callback Untrack()s.
  bool Track(grpc::ClientContext* ctx) {
    absl::MutexLock lock(&calls_mu);
    if (shut_down) return false;
    calls.insert(ctx);
    return true;
  }
  void Untrack(grpc::ClientContext* ctx) {
    absl::MutexLock lock(&calls_mu);
    calls.erase(ctx);
  }

  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(rpc_timeout_ms));
  }

  absl::StatusOr<std::shared_ptr<peer::Peer::Stub>> Stub(uint32_t node) {
    absl::MutexLock lock(&mu);
    auto it = peers.find(node);
    if (it == peers.end())
      return ErrnoStatus(EHOSTUNREACH,
                         absl::StrCat("node ", node, " is not in this node's peer list"));
    return it->second->stub;
  }

  std::unique_ptr<Peer> MakePeer(const PeerConfig& pc) const {
    grpc::ChannelArguments args;
    // Reconnect quickly after a peer restarts (default backoff reaches 2 min).
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    // The handshake must present this peer's certificate, not any
    // node's: a node's answer about its own id proves nothing.
    if (tls) TlsIdentity::SetTargetNode(pc.node_id, &args);
    auto p = std::make_unique<Peer>();
    p->config = pc;
    p->channel = grpc::CreateCustomChannel(pc.address, creds, args);
    p->stub = peer::Peer::NewStub(p->channel);
    return p;
  }

  const TlsIdentity* tls = nullptr;
  std::shared_ptr<grpc::ChannelCredentials> creds;
};

PeerDirectory::PeerDirectory(uint32_t local_node, uint64_t incarnation,
                             std::vector<PeerConfig> peers, const TlsIdentity* tls,
                             int rpc_timeout_ms, TransportNamer namer, MapperLeaseTable* leases)
    : impl_(std::make_unique<Impl>()) {
  impl_->leases = leases;
  impl_->namer = std::move(namer);
  impl_->local_node = local_node;
  impl_->incarnation = incarnation;
  impl_->rpc_timeout_ms = rpc_timeout_ms;
  impl_->tls = tls;
  impl_->creds = tls ? tls->ChannelCredentials() : grpc::InsecureChannelCredentials();
  absl::MutexLock lock(&impl_->mu);
  for (auto& pc : peers) {
    if (pc.node_id == local_node) continue;
    impl_->peers.emplace(pc.node_id, impl_->MakePeer(pc));
  }
}

absl::StatusOr<PeerDirectory::Change> PeerDirectory::Reconfigure(
    const std::vector<PeerConfig>& peers, const std::function<std::string(uint32_t)>& in_use) {
  absl::flat_hash_map<uint32_t, const PeerConfig*> want;
  for (const PeerConfig& pc : peers)
    if (pc.node_id != impl_->local_node) want[pc.node_id] = &pc;
  Change change;
  {
    absl::MutexLock lock(&impl_->mu);
    for (auto& [id, p] : impl_->peers) {
      auto it = want.find(id);
      if (it == want.end())
        change.removed.push_back(id);
      else if (it->second->address != p->config.address)
        change.moved.push_back(id);
    }
    for (auto& [id, pc] : want)
      if (!impl_->peers.contains(id)) change.added.push_back(id);
  }
  std::sort(change.added.begin(), change.added.end());
  std::sort(change.removed.begin(), change.removed.end());
  std::sort(change.moved.begin(), change.moved.end());
  // Checked outside mu (in_use takes other parts' locks). A segment that
  // comes into use between the check and the swap below fails as it would
  // with an unreachable peer; the operator's reload raced their own users.
  for (const std::vector<uint32_t>* ids : {&change.removed, &change.moved}) {
    for (uint32_t id : *ids) {
      std::string why = in_use ? in_use(id) : "";
      if (!why.empty())
        return ErrnoStatus(
            EBUSY,
            absl::StrCat("node ", id, ids == &change.moved ? " would move" : " would be dropped",
                         " but ", why, "; detach those first (the old peer list stays)"));
    }
  }
  absl::MutexLock lock(&impl_->mu);
  for (uint32_t id : change.removed) impl_->peers.erase(id);
  for (uint32_t id : change.moved) impl_->peers[id] = impl_->MakePeer(*want.at(id));
  for (uint32_t id : change.added) impl_->peers.emplace(id, impl_->MakePeer(*want.at(id)));
  return change;
}

PeerDirectory::~PeerDirectory() { Shutdown(); }

void PeerDirectory::Shutdown() {
  absl::MutexLock lock(&impl_->calls_mu);
  impl_->shut_down = true;
  for (grpc::ClientContext* ctx : impl_->calls) ctx->TryCancel();
  impl_->calls_mu.Await(absl::Condition(
      +[](absl::flat_hash_set<grpc::ClientContext*>* c) { return c->empty(); }, &impl_->calls));
}

bool PeerDirectory::Knows(uint32_t node) const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->peers.contains(node);
}

std::vector<uint32_t> PeerDirectory::Nodes() const {
  std::vector<uint32_t> out;
  absl::MutexLock lock(&impl_->mu);
  for (auto& [id, p] : impl_->peers) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::shared_ptr<const DataEndpoint>> PeerDirectory::Endpoint(uint32_t node) {
  {
    absl::MutexLock lock(&impl_->mu);
    auto it = impl_->peers.find(node);
    if (it == impl_->peers.end())
      return ErrnoStatus(EHOSTUNREACH, absl::StrCat("node ", node, " is not in the peer list"));
    if (it->second->endpoint) return it->second->endpoint;
  }
  ASSIGN_OR_RETURN(auto stub, impl_->Stub(node));
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  peer::HelloRequest req;
  req.set_node_id(impl_->local_node);
  req.set_incarnation(impl_->incarnation);
  peer::HelloResponse resp;
  grpc::Status st = stub->Hello(&ctx, req, &resp);
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->peers.find(node);
  // Dropped (or given a new address) by a reload during the call.
  if (it == impl_->peers.end() || it->second->stub != stub)
    return ErrnoStatus(EHOSTUNREACH, absl::StrCat("node ", node, " left the peer list"));
  auto& p = *it->second;
  if (!st.ok()) {
    p.last_error = st.error_message();
    return FromGrpc(st, absl::StrCat("hello to node ", node));
  }
  if (resp.node_id() != node) {
    p.last_error = absl::StrCat("answers as node ", resp.node_id());
    return ErrnoStatus(EHOSTUNREACH, absl::StrCat("node ", node, " ", p.last_error));
  }
  auto ep = std::make_shared<DataEndpoint>();
  ep->node_id = node;
  // A daemon listening on a wildcard address advertises it as such: reach
  // it at the host we reach its control plane on.
  ep->address = ReplaceWildcardHost(resp.data_address(), p.config.address);
  ep->rdma_address = ReplaceWildcardHost(resp.rdma_address(), p.config.address);
  ep->token = resp.data_token();
  ep->incarnation = resp.incarnation();
  p.endpoint = std::move(ep);
  p.incarnation = resp.incarnation();
  p.last_error.clear();
  return p.endpoint;
}

void PeerDirectory::Forget(uint32_t node) {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->peers.find(node);
  if (it != impl_->peers.end()) it->second->endpoint.reset();
}

absl::StatusOr<Grant> PeerDirectory::Attach(uint32_t node, uint64_t segid, const Credentials& cred,
                                            bool write) {
  ASSIGN_OR_RETURN(auto stub, impl_->Stub(node));
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  peer::AttachRequest req;
  req.set_segid(segid);
  req.mutable_cred()->set_uid(cred.uid);
  req.mutable_cred()->set_gid(cred.gid);
  for (uint32_t g : cred.groups) req.mutable_cred()->add_groups(g);
  req.set_write(write);
  req.set_mapper_node(impl_->local_node);
  peer::AttachResponse resp;
  // The lease counts from before the request left (lease_table.h).
  absl::Time sent = impl_->leases ? impl_->leases->clock()->Now() : absl::InfinitePast();
  grpc::Status st = stub->Attach(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st, absl::StrFormat("attach segment %#x at node %d", segid, node));
  if (impl_->leases) impl_->leases->Granted(node, sent, absl::Milliseconds(resp.lease_ms()));
  // A peer that restarted since we said Hello listens on new data ports
  // with a new secret: the answer names its run's incarnation; Hello again.
  {
    absl::MutexLock lock(&impl_->mu);
    auto it = impl_->peers.find(node);
    if (it != impl_->peers.end() && it->second->endpoint && resp.incarnation() != 0 &&
        it->second->incarnation != resp.incarnation()) {
      TLOG_INFO("node %d restarted (incarnation %#x, was %#x): new data endpoint", node,
                resp.incarnation(), it->second->incarnation);
      it->second->endpoint.reset();
    }
  }
  Grant g;
  g.id = resp.remote_attach_id();
  g.incarnation = resp.incarnation();
  g.segment_size = resp.segment_size();
  g.writable = resp.writable();
  return g;
}

absl::Status PeerDirectory::Detach(uint32_t node, uint64_t segid, uint64_t grant) {
  ASSIGN_OR_RETURN(auto stub, impl_->Stub(node));
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  peer::DetachRequest req;
  req.set_segid(segid);
  req.set_remote_attach_id(grant);
  req.set_mapper_node(impl_->local_node);
  peer::DetachResponse resp;
  return FromGrpc(stub->Detach(&ctx, req, &resp),
                  absl::StrFormat("detach segment %#x at node %d", segid, node));
}

absl::StatusOr<SegmentSummary> PeerDirectory::Lookup(const std::string& name) {
  for (uint32_t node : Nodes()) {
    auto stub_or = impl_->Stub(node);
    if (!stub_or.ok()) continue;  // dropped by a reload meanwhile
    auto stub = *std::move(stub_or);
    grpc::ClientContext ctx;
    impl_->SetDeadline(&ctx);
    peer::LookupRequest req;
    req.set_name(name);
    peer::LookupResponse resp;
    grpc::Status st = stub->Lookup(&ctx, req, &resp);
    if (st.ok()) {
      SegmentSummary s;
      s.segid = resp.segid();
      s.size = resp.size();
      s.name = name;
      return s;
    }
  }
  return ErrnoStatus(ENOENT, absl::StrCat("no segment named '", name, "' on any node"));
}

absl::StatusOr<std::vector<SegmentSummary>> PeerDirectory::ListSegments(uint32_t node) {
  ASSIGN_OR_RETURN(auto stub, impl_->Stub(node));
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  peer::ListSegmentsRequest req;
  peer::ListSegmentsResponse resp;
  grpc::Status st = stub->ListSegments(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st, absl::StrCat("list segments at node ", node));
  std::vector<SegmentSummary> out;
  for (const auto& s : resp.segments()) {
    SegmentSummary x;
    x.segid = s.segid();
    x.size = s.size();
    x.vaddr = s.vaddr();
    x.pid = s.pid();
    x.uid = s.uid();
    x.gid = s.gid();
    x.mode = s.mode();
    x.name = s.name();
    x.grants = s.attachments();
    x.state = s.state();
    out.push_back(std::move(x));
  }
  return out;
}

std::vector<PeerState> PeerDirectory::States() {
  std::vector<PeerState> out;
  for (uint32_t node : Nodes()) {
    // Hello afresh: status should say whether the peer answers now.
    Forget(node);
    auto ep = Endpoint(node);
    PeerState s;
    s.node_id = node;
    absl::MutexLock lock(&impl_->mu);
    auto it = impl_->peers.find(node);
    if (it == impl_->peers.end()) continue;  // dropped by a reload meanwhile
    s.address = it->second->config.address;
    s.transport = !ep.ok() ? "" : impl_->namer ? impl_->namer(node, **ep) : "tcp";
    s.reachable = ep.ok();
    if (!ep.ok()) s.error = std::string(ep.status().message());
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace tether

namespace tether {

void PeerDirectory::Connect(uint32_t node) {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->peers.find(node);
  if (it != impl_->peers.end()) it->second->channel->GetState(/*try_to_connect=*/true);
}

void PeerDirectory::Invalidate(uint32_t node, const InvalidationNotice& n, absl::Duration timeout,
                               InvalidationChannel::Done done) {
  auto stub = impl_->Stub(node);
  if (!stub.ok()) {
    std::move(done)(stub.status());
    return;
  }
  struct Call {
    grpc::ClientContext ctx;
    peer::InvalidateRequest req;
    peer::InvalidateResponse resp;
    InvalidationChannel::Done done;
  };
  auto* call = new Call;
  call->ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(absl::ToInt64Microseconds(timeout)));
  // Wait for a connection within the deadline rather than failing fast:
  // a peer that restarts its channel still gets the notice.
  call->ctx.set_wait_for_ready(true);
  ToProto(n, &call->req);
  call->done = std::move(done);
  if (!impl_->Track(&call->ctx)) {
    std::move(call->done)(absl::UnavailableError("daemon shutting down"));
    delete call;
    return;
  }
  Impl* impl = impl_.get();
  (*stub)->async()->Invalidate(
      &call->ctx, &call->req, &call->resp, [call, node, impl](grpc::Status st) {
        std::move(call->done)(FromGrpc(st, absl::StrCat("invalidate at node ", node)));
        impl->Untrack(&call->ctx);
        delete call;
      });
}

void PeerDirectory::Renew(uint32_t home, absl::Duration timeout, LeaseRenewer::Done done) {
  RenewReclaiming(home, timeout, {}, std::move(done));
}

void PeerDirectory::RenewReclaiming(uint32_t home, absl::Duration timeout,
                                    std::vector<HeldGrant> grants, LeaseRenewer::Done done) {
  auto stub = impl_->Stub(home);
  if (!stub.ok()) {
    std::move(done)(stub.status());
    return;
  }
  struct Call {
    grpc::ClientContext ctx;
    peer::RenewRequest req;
    peer::RenewResponse resp;
    LeaseRenewer::Done done;
  };
  auto* call = new Call;
  call->ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(absl::ToInt64Microseconds(timeout)));
  // Fail fast when the home is unreachable: the next renewal retries, and
  // the lease keeper's expiry does not depend on this call returning.
  call->req.set_mapper_node(impl_->local_node);
  for (const HeldGrant& g : grants) {
    auto* h = call->req.add_reclaim();
    h->set_segid(g.segid);
    h->set_grant(g.grant);
    h->set_write(g.write);
    h->mutable_cred()->set_uid(g.uid);
    h->mutable_cred()->set_gid(g.gid);
    for (uint32_t x : g.groups) h->mutable_cred()->add_groups(x);
  }
  call->done = std::move(done);
  if (!impl_->Track(&call->ctx)) {
    std::move(call->done)(absl::UnavailableError("daemon shutting down"));
    delete call;
    return;
  }
  Impl* impl = impl_.get();
  (*stub)->async()->Renew(&call->ctx, &call->req, &call->resp, [call, home, impl](grpc::Status st) {
    if (st.ok()) {
      LeaseRenewal r;
      r.incarnation = call->resp.incarnation();
      r.epoch = call->resp.segment_epoch();
      r.lease = absl::Milliseconds(call->resp.lease_ms());
      for (const auto& f : call->resp.fenced()) r.fenced.emplace_back(f.segid(), f.reason());
      for (const auto& f : call->resp.gone()) r.gone.emplace_back(f.segid(), f.reason());
      r.pending.assign(call->resp.pending().begin(), call->resp.pending().end());
      std::move(call->done)(std::move(r));
    } else {
      std::move(call->done)(FromGrpc(st, absl::StrCat("renew the lease at node ", home)));
    }
    impl->Untrack(&call->ctx);
    delete call;
  });
}

}  // namespace tether
