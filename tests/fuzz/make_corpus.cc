// Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/)
// from what the encoders produce: real frames, requests and messages, not
// hand-made bytes. Seeds are named after what they are; running it again
// rewrites the same files (the output is deterministic: FuzzHome's segid
// and grant are the same every time). Regression seeds of defects found
// by fuzzing are committed beside them as regress-* and never rewritten.
//   build/fuzz/tests/fuzz/make_corpus tests/fuzz/corpus
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon/common/errors.h"
#include "daemon/common/page_diff.h"
#include "daemon/peer/notice_codec.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/rdma_wire.h"
#include "daemon/transport/wire_format.h"
#include "local.pb.h"
#include "peer.pb.h"
#include "tests/fuzz/fuzz_home.h"

namespace tether {
namespace {

std::string root;

void Put(const std::string& target, const std::string& name, const std::string& bytes) {
  std::string dir = root + "/" + target;
  mkdir(root.c_str(), 0755);
  mkdir(dir.c_str(), 0755);
  std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f)) {
    std::perror(path.c_str());
    std::exit(1);
  }
}
template <typename T>
std::string Bytes(const T* p, size_t n) {
  return std::string(reinterpret_cast<const char*>(p), n);
}
std::string Header(FrameType type, uint64_t req_id, uint64_t segid, uint64_t grant, uint64_t offset,
                   uint32_t length, uint32_t status = 0) {
  uint8_t h[kFrameHeaderSize];
  EncodeHeader(FrameHeader{type, req_id, segid, grant, offset, length, status}, h);
  return Bytes(h, sizeof(h));
}
InvalidationNotice Notice(InvalidationNotice::Kind kind, uint64_t segid) {
  InvalidationNotice n;
  n.kind = kind;
  n.segid = segid;
  n.start = 0;
  n.end = 2 * kPageSize;
  n.window = 3;
  n.home_node = kFuzzNode;
  if (kind == InvalidationNotice::Kind::kEnd) n.gone = {{0, kPageSize}};
  if (kind == InvalidationNotice::Kind::kRevoke) n.reason = "removed";
  return n;
}
std::string Diff(bool whole) {
  std::vector<uint8_t> twin(kPageSize, 0), page(kPageSize, 0), out;
  page[10] = 1;
  page[4000] = 2;
  if (whole) {
    AppendWholePage(1, page.data(), &out);
  } else {
    AppendPageDiff(0, twin.data(), page.data(), &out);
    for (size_t i = 0; i < kPageSize; i += 2) page[i] = 7;  // dense: a mask
    AppendPageDiff(2, twin.data(), page.data(), &out);
  }
  return Bytes(out.data(), out.size());
}

void WireAndCodecs(uint64_t segid) {
  Put("wire_format_fuzz", "read_req", Header(FrameType::kReadReq, 1, segid, 1, 0, 4096));
  Put("wire_format_fuzz", "hello", Header(FrameType::kHello, 0, kFuzzPeer, 1, 0, kHelloPayload));
  Put("wire_format_fuzz", "hello_ack",
      Header(FrameType::kHelloAck, 0, kFuzzPeer, 0, 0, kHelloAckPayload));
  Put("wire_format_fuzz", "auth", Header(FrameType::kAuth, 0, kFuzzPeer, 0, 0, kAuthPayload));
  Put("wire_format_fuzz", "write_resp_retry",
      Header(FrameType::kWriteResp, 9, segid, 1, 0, 0, kWireRetry));
  RdmaMessage m;
  m.header = FrameHeader{FrameType::kWriteReq, 5, segid, 1, 8192, 4096, 0};
  m.addr = 0x7f0000001000;
  m.rkey = 0x1234;
  uint8_t buf[kRdmaMessageSize];
  EncodeRdmaMessage(m, buf);
  Put("rdma_wire_fuzz", "write_req", Bytes(buf, sizeof(buf)));
  RdmaConnectData cd{kFuzzPeer, 1, {}, 64, 256 * 1024};
  cd.nonce.fill(0x11);
  uint8_t pd[kRdmaPrivateDataSize];
  EncodeRdmaConnectData(cd, pd);
  Put("rdma_wire_fuzz", "connect_data", Bytes(pd, sizeof(pd)));
  const std::string rdma_token = DataTokenFor("secret-secret-secret", kFuzzPeer);
  AuthNonce home_nonce;
  home_nonce.fill(0x22);
  RdmaAcceptData accept{RdmaNegotiated{64, 256 * 1024}, home_nonce,
                        RdmaProof(rdma_token, AuthRole::kListener, cd, home_nonce)};
  uint8_t ad[kRdmaAcceptDataSize];
  EncodeRdmaAcceptData(accept, ad);
  Put("rdma_wire_fuzz", "accept_data", Bytes(ad, sizeof(ad)));
  uint8_t auth[kRdmaMessageSize];
  EncodeRdmaAuthMessage(RdmaProof(rdma_token, AuthRole::kDialer, cd, home_nonce), auth);
  Put("rdma_wire_fuzz", "auth", Bytes(auth, sizeof(auth)));
  uint8_t rd[kRdmaRejectDataSize];
  EncodeRdmaRejectData(RdmaRejectReason::kBadToken, rd);
  Put("rdma_wire_fuzz", "reject_data", Bytes(rd, sizeof(rd)));
  Put("notice_codec_fuzz", "begin", EncodeNotice(Notice(InvalidationNotice::Kind::kBegin, segid)));
  Put("notice_codec_fuzz", "end", EncodeNotice(Notice(InvalidationNotice::Kind::kEnd, segid)));
  Put("notice_codec_fuzz", "revoke",
      EncodeNotice(Notice(InvalidationNotice::Kind::kRevoke, segid)));
  Put("page_diff_fuzz", "runs_and_mask", Diff(false));
  Put("page_diff_fuzz", "whole", Diff(true));
}

// tcp_serve_fuzz: byte 0 bit 0 = "play an honest handshake first".
void TcpServe(const FuzzHome& home) {
  const std::string payload(4096, 'x');
  std::string diff = Diff(false);
  std::string notice = EncodeNotice(Notice(InvalidationNotice::Kind::kBegin, home.segid));
  Put("tcp_serve_fuzz", "read",
      "\x01" + Header(FrameType::kReadReq, 1, home.segid, home.grant, 0, 4096));
  Put("tcp_serve_fuzz", "write_then_read",
      "\x01" + Header(FrameType::kWriteReq, 2, home.segid, home.grant, 4096, 4096) + payload +
          Header(FrameType::kReadReq, 3, home.segid, home.grant, 4096, 4096));
  Put("tcp_serve_fuzz", "write_diff",
      "\x01" +
          Header(FrameType::kWriteDiffReq, 4, home.segid, home.grant, 0,
                 static_cast<uint32_t>(diff.size())) +
          diff);
  Put("tcp_serve_fuzz", "notice",
      "\x01" + Header(FrameType::kNoticeReq, 5, 0, 0, 0, static_cast<uint32_t>(notice.size())) +
          notice);
  // Unauthenticated: a hello and an auth whose proof is wrong (any proof
  // sent blind is: the home's nonce is fresh), a hello for another node,
  // and a request first.
  Put("tcp_serve_fuzz", "bad_proof",
      std::string("\x00", 1) +
          Header(FrameType::kHello, 0, kFuzzPeer, kFuzzNode, 0, kHelloPayload) +
          std::string(kHelloPayload, 'N') +
          Header(FrameType::kAuth, 1, kFuzzPeer, 0, 0, kAuthPayload) +
          std::string(kAuthPayload, 'P'));
  Put("tcp_serve_fuzz", "hello_for_another_node",
      std::string("\x00", 1) +
          Header(FrameType::kHello, 0, kFuzzPeer, kFuzzNode + 1, 0, kHelloPayload) +
          std::string(kHelloPayload, 'N'));
  // A hello that asks for encryption (refused where the kernel has no
  // TLS; answered with the flag where it has), and one with flags this
  // version does not know.
  Put("tcp_serve_fuzz", "hello_encrypt",
      std::string("\x00", 1) +
          Header(FrameType::kHello, 0, kFuzzPeer, kFuzzNode, kHelloEncrypt, kHelloPayload) +
          std::string(kHelloPayload, 'N'));
  Put("tcp_serve_fuzz", "hello_unknown_flags",
      std::string("\x00", 1) +
          Header(FrameType::kHello, 0, kFuzzPeer, kFuzzNode, 6, kHelloPayload) +
          std::string(kHelloPayload, 'N'));
  Put("tcp_serve_fuzz", "no_hello",
      std::string("\x00", 1) + Header(FrameType::kReadReq, 1, home.segid, home.grant, 0, 4096));
}

template <typename M>
void PutPeer(const std::string& name, int method, const M& msg) {
  Put("peer_service_fuzz", name,
      std::string(1, static_cast<char>(method)) + msg.SerializeAsString());
}

void PeerService(const FuzzHome& home) {
  peer::InvalidateRequest inv;
  ToProto(Notice(InvalidationNotice::Kind::kEnd, home.segid), &inv);
  inv.set_home_node(kFuzzPeer);
  PutPeer("invalidate_end", 0, inv);
  peer::HelloRequest hello;
  hello.set_node_id(kFuzzPeer);
  hello.set_incarnation(5);
  PutPeer("hello", 1, hello);
  peer::AttachRequest attach;
  attach.set_segid(home.segid);
  attach.mutable_cred()->set_uid(1000);
  attach.mutable_cred()->set_gid(1000);
  attach.mutable_cred()->add_groups(27);
  attach.set_write(true);
  attach.set_mapper_node(kFuzzPeer);
  attach.set_size(kFuzzSegSize);
  PutPeer("attach", 2, attach);
  peer::DetachRequest detach;
  detach.set_segid(home.segid);
  detach.set_remote_attach_id(home.grant);
  detach.set_mapper_node(kFuzzPeer);
  PutPeer("detach", 3, detach);
  peer::LookupRequest lookup;
  lookup.set_name(kFuzzName);
  PutPeer("lookup", 4, lookup);
  PutPeer("list", 5, peer::ListSegmentsRequest());
  peer::RenewRequest renew;
  renew.set_mapper_node(kFuzzPeer);
  PutPeer("renew", 6, renew);
}

// local_request_fuzz: records of [fd spec][misc][u16 length][frame].
std::string Rec(const local::LocalRequest& r, uint8_t fds = 0, uint8_t misc = 0) {
  std::string f = r.SerializeAsString();
  std::string h = {static_cast<char>(fds), static_cast<char>(misc),
                   static_cast<char>(f.size() & 0xff), static_cast<char>(f.size() >> 8)};
  return h + f;
}
// fd spec: count in bits 0-1, kinds in 2-4 and 5-7 (local_request_fuzz.cc).
constexpr uint8_t Fds(int n, int k0 = 7, int k1 = 7) { return n | k0 << 2 | k1 << 5; }

void LocalRequests(const FuzzHome& home) {
  local::LocalRequest get, attach, mapped, sync, detach, release, lookup, make, publish, remove,
      begin, end, events;
  get.mutable_get()->set_segid(home.segid);
  get.mutable_get()->set_write(true);
  // The first apid of a LocalApi of incarnation kFuzzIncarnation.
  const uint64_t apid = (uint64_t{kFuzzIncarnation} << 32) | 1;
  attach.mutable_attach()->set_apid(apid);
  attach.mutable_attach()->set_size(kFuzzSegSize);
  attach.mutable_attach()->set_direct_ok(true);
  mapped.mutable_attach_mapped()->set_attach_id((uint64_t{kFuzzIncarnation} << 32) | 1);
  mapped.mutable_attach_mapped()->set_vaddr(0x7e0000000000);
  sync.mutable_sync()->set_attach_id((uint64_t{kFuzzIncarnation} << 32) | 1);
  sync.mutable_sync()->set_size(4096);
  detach.mutable_detach()->set_attach_id((uint64_t{kFuzzIncarnation} << 32) | 1);
  release.mutable_release()->set_apid(apid);
  lookup.mutable_lookup()->set_name(kFuzzName);
  // kClientMemory in local_request_fuzz.cc: the client helper's mapping.
  const uint64_t client_memory = 0x7e0000000000;
  make.mutable_make()->set_vaddr(client_memory);
  make.mutable_make()->set_size(kPageSize);
  make.mutable_make()->set_permit_mode(0600);
  publish.mutable_publish()->set_segid(home.segid);
  publish.mutable_publish()->set_name("other-name");
  remove.mutable_remove()->set_segid(home.segid);
  begin.mutable_invalidate_begin()->set_vaddr(client_memory);
  begin.mutable_invalidate_begin()->set_size(kPageSize);
  end.mutable_invalidate_end()->set_handle(1);
  events.mutable_events();
  Put("local_request_fuzz", "get_attach_sync_detach_release",
      Rec(get) + Rec(attach, Fds(1, 3)) + Rec(mapped) + Rec(sync) + Rec(detach) + Rec(release));
  Put("local_request_fuzz", "attach_with_a_pipe", Rec(get) + Rec(attach, Fds(1, 2)));
  Put("local_request_fuzz", "make_with_pidfd_and_uffd", Rec(make, Fds(2, 0, 3)) + Rec(lookup));
  Put("local_request_fuzz", "make_with_memfd", Rec(make, Fds(2, 1, 1)));
  Put("local_request_fuzz", "three_fds", Rec(get, Fds(3, 4, 5)));
  Put("local_request_fuzz", "publish_remove_other", Rec(publish, 0, 1) + Rec(remove, 0, 1));
  Put("local_request_fuzz", "brackets_events", Rec(begin) + Rec(end) + Rec(events));
}

}  // namespace
}  // namespace tether

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  tether::root = argv[1];
  tether::FuzzHome home;
  tether::WireAndCodecs(home.segid);
  tether::TcpServe(home);
  tether::PeerService(home);
  tether::LocalRequests(home);
  std::printf("make_corpus: seeds written under %s\n", argv[1]);
  return 0;
}
