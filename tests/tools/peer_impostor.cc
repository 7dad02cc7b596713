// peer_impostor: a node that lies about who it is, for the identity tests
// (tests/multinode/test_identity.py). It holds a real certificate of the
// cluster (another node's: a stolen key) and claims a node id that is not
// the one its certificate names.
//
//   peer_impostor serve LISTEN CA CERT KEY CLAIM_ID
//       A Peer service (mutual TLS) that answers Hello as node CLAIM_ID and
//       prints "served METHOD from PEER cert=PEM" for every call that
//       reaches it: a call that reaches it is a handshake the caller should
//       have refused (or, with the real node's certificate, a recorder of
//       which certificate the caller presents). Prints "ready" once
//       listening; runs until killed.
//   peer_impostor call TARGET CA CERT KEY SERVER_ID AS_ID
//       Calls Hello on node SERVER_ID at TARGET (checking the server's
//       certificate names tether-node-SERVER_ID), speaking for node AS_ID;
//       prints "ok node_id=N" or "error code=C: MESSAGE".
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "peer.grpc.pb.h"

namespace {

std::string Read(const char* path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class Impostor final : public tether::peer::Peer::Service {
 public:
  explicit Impostor(uint32_t claim) : claim_(claim) {}

  grpc::Status Hello(grpc::ServerContext* ctx, const tether::peer::HelloRequest*,
                     tether::peer::HelloResponse* resp) override {
    Served("Hello", ctx);
    resp->set_node_id(claim_);
    resp->set_incarnation(1);
    resp->set_data_address("127.0.0.1:1");
    resp->set_data_token(std::string(32, 'x'));
    return grpc::Status::OK;
  }
  grpc::Status Lookup(grpc::ServerContext* ctx, const tether::peer::LookupRequest*,
                      tether::peer::LookupResponse*) override {
    Served("Lookup", ctx);
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such name", "2");
  }
  grpc::Status ListSegments(grpc::ServerContext* ctx, const tether::peer::ListSegmentsRequest*,
                            tether::peer::ListSegmentsResponse*) override {
    Served("ListSegments", ctx);
    return grpc::Status::OK;
  }

 private:
  // Also prints the caller's certificate (PEM, its newlines as '|'): the
  // rotation test reads which certificate a node presents as a client.
  static void Served(const char* method, grpc::ServerContext* ctx) {
    std::string pem;
    if (auto auth = ctx->auth_context()) {
      for (const auto& v : auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME))
        pem.assign(v.data(), v.size());
    }
    for (char& ch : pem)
      if (ch == '\n') ch = '|';
    std::printf("served %s from %s cert=%s\n", method, ctx->peer().c_str(), pem.c_str());
    std::fflush(stdout);
  }
  const uint32_t claim_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "serve" && argc == 7) {
    grpc::SslServerCredentialsOptions opts(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    opts.pem_root_certs = Read(argv[3]);
    opts.pem_key_cert_pairs.push_back({Read(argv[5]), Read(argv[4])});
    Impostor service(static_cast<uint32_t>(std::stoul(argv[6])));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(argv[2], grpc::SslServerCredentials(opts), &port);
    builder.RegisterService(&service);
    auto server = builder.BuildAndStart();
    if (!server || port == 0) {
      std::fprintf(stderr, "peer_impostor: cannot listen on %s\n", argv[2]);
      return 1;
    }
    std::printf("ready\n");
    std::fflush(stdout);
    server->Wait();
    return 0;
  }
  if (mode == "call" && argc == 8) {
    grpc::SslCredentialsOptions opts;
    opts.pem_root_certs = Read(argv[3]);
    opts.pem_cert_chain = Read(argv[4]);
    opts.pem_private_key = Read(argv[5]);
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(std::string("tether-node-") + argv[6]);
    auto stub = tether::peer::Peer::NewStub(
        grpc::CreateCustomChannel(argv[2], grpc::SslCredentials(opts), args));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    tether::peer::HelloRequest req;
    req.set_node_id(static_cast<uint32_t>(std::stoul(argv[7])));
    req.set_incarnation(1);
    tether::peer::HelloResponse resp;
    grpc::Status st = stub->Hello(&ctx, req, &resp);
    if (st.ok()) {
      std::printf("ok node_id=%u token_bytes=%zu\n", resp.node_id(), resp.data_token().size());
    } else {
      std::printf("error code=%d: %s\n", static_cast<int>(st.error_code()),
                  st.error_message().c_str());
    }
    return 0;
  }
  std::fprintf(stderr,
               "usage: peer_impostor serve LISTEN CA CERT KEY CLAIM_ID\n"
               "       peer_impostor call TARGET CA CERT KEY SERVER_ID AS_ID\n");
  return 2;
}
