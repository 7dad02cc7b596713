// libFuzzer target for the peer handlers' message checks: the gRPC Peer
// service's methods (peer/peer_server.cc, NewPeerService) called directly
// with requests parsed from the fuzzer's bytes, as another node's gRPC
// calls would arrive, against a real home (FuzzHome) and lease table. The
// context is a default grpc::ServerContext: no certificate, the plaintext
// (--insecure_peers) case, where only the message checks stand between a
// peer and the registry.
//
// Input: byte 0 picks the method (mod 7), the rest is the request message
// (protobuf wire format). An unparsable message is what gRPC would refuse
// before the handler: skipped.
#include <cstddef>
#include <cstdint>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "daemon/common/clock.h"
#include "daemon/invalidation/lease_table.h"
#include "daemon/peer/peer_server.h"
#include "peer.grpc.pb.h"
#include "tests/fuzz/fuzz_home.h"

namespace {

// This node's mapper side: takes every notice (what it does with one is
// fuzzed elsewhere: notice_codec_fuzz; here, that only checked notices reach it).
class AcceptAll : public tether::InvalidationTarget {
 public:
  absl::Status Handle(const tether::InvalidationNotice& n) override {
    if (n.start > n.end) __builtin_trap();
    return absl::OkStatus();
  }
};

class NoChannel : public tether::InvalidationChannel {
 public:
  void Send(uint32_t, const tether::InvalidationNotice&, absl::Duration, Done done) override {
    std::move(done)(absl::OkStatus());
  }
};

template <typename Req, typename Resp, typename Method>
void Call(tether::peer::Peer::Service* svc, Method m, const uint8_t* data, size_t size) {
  Req req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  Resp resp;
  grpc::ServerContext ctx;
  (void)(svc->*m)(&ctx, &req, &resp);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tether;
  if (size == 0) return 0;
  // A fresh home per input: what one input attached or detached does not
  // change what the next one finds (a crash reproduces from its input alone).
  FuzzHome home;
  AcceptAll target;
  NoChannel channel;
  LeaseConfig config;
  config.lease = absl::Seconds(10);
  HomeLeaseTable leases(config, Clock::Real());
  HelloInfo hello;
  hello.node_id = kFuzzNode;
  hello.incarnation = kFuzzIncarnation;
  hello.data_address = "127.0.0.1:7000";
  hello.data_secret = "fuzz-data-secret-0123456789";
  std::unique_ptr<grpc::Service> base =
      NewPeerService(&home.registry, &target, &channel, hello, &leases);
  auto* svc = static_cast<peer::Peer::Service*>(base.get());
  const uint8_t* msg = data + 1;
  size_t len = size - 1;
  using S = peer::Peer::Service;
  switch (data[0] % 7) {
    case 0:
      Call<peer::InvalidateRequest, peer::InvalidateResponse>(svc, &S::Invalidate, msg, len);
      break;
    case 1: Call<peer::HelloRequest, peer::HelloResponse>(svc, &S::Hello, msg, len); break;
    case 2: Call<peer::AttachRequest, peer::AttachResponse>(svc, &S::Attach, msg, len); break;
    case 3: Call<peer::DetachRequest, peer::DetachResponse>(svc, &S::Detach, msg, len); break;
    case 4: Call<peer::LookupRequest, peer::LookupResponse>(svc, &S::Lookup, msg, len); break;
    case 5:
      Call<peer::ListSegmentsRequest, peer::ListSegmentsResponse>(svc, &S::ListSegments, msg, len);
      break;
    case 6: Call<peer::RenewRequest, peer::RenewResponse>(svc, &S::Renew, msg, len); break;
  }
  return 0;
}
