// libFuzzer target for the tcp data transport's server side: the request
// loop each accepted connection runs (TcpTransport::ServeConnection), fed
// the fuzzer's bytes over a socketpair, against a real home (FuzzHome: a
// SegmentRegistry exporting this process's memory). Reaches the hello and
// the handshake's checks (wire_format.h: HELLO, AUTH), the frame decoder,
// and READ, WRITE, WRITE_DIFF and NOTICE requests served by the registry,
// with no network.
//
// Input: byte 0 bit 0 set: the harness first plays an honest dialer's
// handshake (node kFuzzPeer, its real token: HELLO, then AUTH with the
// proof for the home's fresh nonce), so that the fuzzer spends its time
// behind authentication; the rest is written to the socket as it is. A
// helper
// thread writes the input and reads (discards) every answer, so the server
// never blocks on a full socket; then it closes its end, and the loop must
// return.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "daemon/transport/data_token.h"
#include "daemon/transport/tcp_transport.h"
#include "daemon/transport/wire_format.h"
#include "tests/fuzz/fuzz_home.h"

namespace {

const std::string kSecret = "tether-fuzz-data-secret-0123456789";

bool ReadAll(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The dialer's half of the handshake as node kFuzzPeer: false if the home
// did not take it (then the input goes in as it is anyway).
bool Handshake(int fd) {
  using namespace tether;
  uint8_t nonce[kAuthNonceSize] = {};
  FrameHeader hello{FrameType::kHello, 1, kFuzzPeer, kFuzzNode, 0, kHelloPayload, 0};
  uint8_t h[kFrameHeaderSize];
  EncodeHeader(hello, h);
  if (write(fd, h, sizeof(h)) != ssize_t(sizeof(h)) ||
      write(fd, nonce, sizeof(nonce)) != ssize_t(sizeof(nonce)))
    return false;
  uint8_t ack[kFrameHeaderSize + kHelloAckPayload];
  if (!ReadAll(fd, ack, kFrameHeaderSize)) return false;
  auto a = DecodeHeader(ack, kFrameHeaderSize);
  if (!a.ok() || a->status != 0 || !ReadAll(fd, ack + kFrameHeaderSize, kHelloAckPayload))
    return false;
  std::string proof = DataAuthProof(DataTokenFor(kSecret, kFuzzPeer), "tcp", AuthRole::kDialer,
                                    kFuzzPeer, kFuzzNode, nonce, ack + kFrameHeaderSize);
  FrameHeader auth{FrameType::kAuth, 2, kFuzzPeer, 0, 0, kAuthPayload, 0};
  EncodeHeader(auth, h);
  if (write(fd, h, sizeof(h)) != ssize_t(sizeof(h)) ||
      write(fd, proof.data(), proof.size()) != ssize_t(proof.size()))
    return false;
  return ReadAll(fd, h, sizeof(h));  // AUTH_ACK
}

// Writes `in`, reads until the server closes; one thread, poll-driven.
void Drive(int fd, bool handshake, std::vector<uint8_t> in) {
  if (handshake) Handshake(fd);
  size_t off = 0;
  std::vector<uint8_t> sink(1 << 16);
  bool wr_open = true;
  while (true) {
    pollfd p{fd, static_cast<short>(POLLIN | (wr_open ? POLLOUT : 0)), 0};
    if (poll(&p, 1, -1) < 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(fd, sink.data(), sink.size());
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
    }
    if (wr_open && (p.revents & POLLOUT)) {
      ssize_t n = off < in.size() ? send(fd, in.data() + off, in.size() - off, MSG_NOSIGNAL) : 0;
      if (n > 0) off += static_cast<size_t>(n);
      if (off >= in.size() || n < 0) {
        shutdown(fd, SHUT_WR);
        wr_open = false;
      }
    }
  }
  close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tether;
  static FuzzHome* home = new FuzzHome();
  static TcpTransport* tcp = [] {
    auto* t = new TcpTransport(kFuzzNode);
    // Loopback, port 0: Listen sets the secret and servers ServeConnection
    // uses; nothing connects to it.
    if (!t->Listen("127.0.0.1:0", kSecret, &home->registry, nullptr).ok())
      FuzzHome::Die("tcp listen");
    return t;
  }();
  if (size == 0) return 0;
  std::vector<uint8_t> in;
  in.insert(in.end(), data + 1, data + size);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) FuzzHome::Die("socketpair");
  std::thread peer(Drive, sv[1], (data[0] & 1) != 0, std::move(in));
  tcp->ServeConnection(sv[0]);
  peer.join();
  return 0;
}
