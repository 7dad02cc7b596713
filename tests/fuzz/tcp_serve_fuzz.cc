// libFuzzer target for the tcp data transport's server side: the request
// loop each accepted connection runs (TcpTransport::ServeConnection), fed
// the fuzzer's bytes over a socketpair, against a real home (FuzzHome: a
// SegmentRegistry exporting this process's memory). Reaches the hello and
// its token check, the frame decoder, and READ, WRITE, WRITE_DIFF and
// NOTICE requests served by the registry, with no network.
//
// Input: byte 0 bit 0 set: the harness first sends a valid hello (node
// kFuzzPeer, its real token), so that the fuzzer spends its time behind
// authentication; the rest is written to the socket as it is. A helper
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

// Writes `in`, reads until the server closes; one thread, poll-driven.
void Drive(int fd, std::vector<uint8_t> in) {
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
  if (data[0] & 1) {
    FrameHeader hello{FrameType::kHello, 1, kFuzzPeer, 0, 0, kDataTokenSize, 0};
    uint8_t h[kFrameHeaderSize];
    EncodeHeader(hello, h);
    in.insert(in.end(), h, h + sizeof(h));
    std::string token = DataTokenFor(kSecret, kFuzzPeer);
    in.insert(in.end(), token.begin(), token.end());
  }
  in.insert(in.end(), data + 1, data + size);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) FuzzHome::Die("socketpair");
  std::thread peer(Drive, sv[1], std::move(in));
  tcp->ServeConnection(sv[0]);
  peer.join();
  return 0;
}
