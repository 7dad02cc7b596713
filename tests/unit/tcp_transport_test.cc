// TcpTransport over loopback with an in-memory BlockServer: framing,
// many requests in flight, token authentication, errors, peer loss.
#include "daemon/transport/tcp_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/status_macros.h"
#include "daemon/transport/data_encryption.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/socket_address.h"
#include "daemon/transport/wire_format.h"

namespace tether {
namespace {

class MemoryServer : public BlockServer {
 public:
  explicit MemoryServer(size_t size) : mem(size) {
    for (size_t i = 0; i < size; ++i) mem[i] = static_cast<uint8_t>(i * 7 + 1);
  }
  absl::Status ReadBlocks(uint32_t peer, uint64_t segid, uint64_t grant, uint64_t off,
                          absl::Span<uint8_t> dst) override {
    last_peer = peer;
    if (segid != 1) return ErrnoStatus(ENOENT, "no segment");
    if (off > mem.size() || dst.size() > mem.size() - off) return ErrnoStatus(EINVAL, "range");
    std::memcpy(dst.data(), mem.data() + off, dst.size());
    return absl::OkStatus();
  }
  absl::Status WriteBlocks(uint32_t peer, uint64_t segid, uint64_t grant, uint64_t off,
                           absl::Span<const uint8_t> src) override {
    if (grant != 5) return ErrnoStatus(EACCES, "read-only");
    if (off > mem.size() || src.size() > mem.size() - off) return ErrnoStatus(EINVAL, "range");
    std::memcpy(mem.data() + off, src.data(), src.size());
    return absl::OkStatus();
  }
  std::vector<uint8_t> mem;
  std::atomic<uint32_t> last_peer{0};
};

const std::string kToken(kDataTokenSize, 'k');  // the home's secret

// Where node 2 (every mapper here) finds home node 1, with node 2's token.
DataEndpoint Ep(const std::string& addr, std::string token = DataTokenFor(kToken, 2)) {
  DataEndpoint e;
  e.node_id = 1;
  e.address = addr;
  e.token = std::move(token);
  return e;
}

absl::Status ReadSync(Transport& t, const DataEndpoint& ep, uint64_t segid, uint64_t off,
                      absl::Span<uint8_t> dst) {
  absl::Notification n;
  absl::Status result;
  t.Read(ep, segid, 1, off, dst, [&](absl::Status st) {
    result = st;
    n.Notify();
  });
  n.WaitForNotification();
  return result;
}

TEST(TcpTransport, ReadsWritesAndErrors) {
  MemoryServer server(1 << 20);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  DataEndpoint ep = Ep(home.bound_address());
  std::vector<uint8_t> buf(8192);
  ASSERT_TRUE(ReadSync(mapper, ep, 1, 4096, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(std::memcmp(buf.data(), server.mem.data() + 4096, buf.size()), 0);
  EXPECT_EQ(server.last_peer.load(), 2u);  // the node id from the hello

  absl::Status st = ReadSync(mapper, ep, 2, 0, absl::MakeSpan(buf));
  EXPECT_EQ(ToErrno(st), ENOENT) << st;
  st = ReadSync(mapper, ep, 1, (1 << 20) - 4096, absl::MakeSpan(buf));
  EXPECT_EQ(ToErrno(st), EINVAL) << st;

  std::vector<uint8_t> data(4096, 0xab);
  absl::Notification n;
  mapper.Write(ep, 1, 5, 0, data, [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    n.Notify();
  });
  n.WaitForNotification();
  EXPECT_EQ(server.mem[0], 0xab);
  absl::Notification n2;
  mapper.Write(ep, 1, 6, 0, data, [&](absl::Status s) {
    EXPECT_EQ(ToErrno(s), EACCES);
    n2.Notify();
  });
  n2.WaitForNotification();
  // the connection survived the refused requests
  EXPECT_TRUE(ReadSync(mapper, ep, 1, 0, absl::MakeSpan(buf)).ok());
}

// A data connection is made on its own thread: a Read returns at once
// while the home has not answered the hello yet (held at
// tcp.serve.before_hello_ack), so the caller (the node's one fault
// thread) never waits for the network; a second Read meanwhile waits in
// the same connection, and both are answered, in order, once it is up.
TEST(TcpTransport, ReadsDoNotWaitForTheConnectionsSetUp) {
  MemoryServer server(1 << 20);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  DataEndpoint ep = Ep(home.bound_address());
  FaultPoints::Arm("tcp.serve.before_hello_ack");
  std::vector<uint8_t> a(4096), b(4096);
  absl::Notification returned, a_done, b_done;
  absl::Status a_st, b_st;
  std::thread caller([&] {
    mapper.Read(ep, 1, 1, 0, absl::MakeSpan(a), [&](absl::Status st) {
      a_st = st;
      a_done.Notify();
    });
    returned.Notify();
  });
  ASSERT_TRUE(FaultPoints::WaitUntilReached("tcp.serve.before_hello_ack", absl::Seconds(10)));
  EXPECT_TRUE(returned.WaitForNotificationWithTimeout(absl::Seconds(3)))
      << "Read waited on the caller's thread for the home's answer to the hello";
  mapper.Read(ep, 1, 1, 8192, absl::MakeSpan(b), [&](absl::Status st) {
    b_st = st;
    b_done.Notify();
  });
  EXPECT_FALSE(a_done.HasBeenNotified());
  EXPECT_FALSE(b_done.HasBeenNotified());
  FaultPoints::Release("tcp.serve.before_hello_ack");
  ASSERT_TRUE(a_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(b_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  caller.join();
  FaultPoints::ReleaseAll();
  EXPECT_TRUE(a_st.ok()) << a_st;
  EXPECT_TRUE(b_st.ok()) << b_st;
  EXPECT_EQ(std::memcmp(a.data(), server.mem.data(), 4096), 0);
  EXPECT_EQ(std::memcmp(b.data(), server.mem.data() + 8192, 4096), 0);
}

// A set-up that fails answers what waited for it: refused (no listener)
// as such, so DataPath does not send it again.
TEST(TcpTransport, AFailedSetUpAnswersTheQueuedRequests) {
  TcpTransport mapper(2);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sa), len), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  close(fd);  // a port with no listener
  DataEndpoint ep = Ep("127.0.0.1:" + std::to_string(ntohs(sa.sin_port)));
  std::vector<uint8_t> buf(4096);
  constexpr int kRequests = 3;
  std::atomic<int> refused{0}, answered{0};
  absl::Notification all;
  for (int i = 0; i < kRequests; ++i)
    mapper.Read(ep, 1, 1, 0, absl::MakeSpan(buf), [&](absl::Status st) {
      if (ToErrno(st) == ECONNREFUSED && !IsNotSent(st)) ++refused;
      if (++answered == kRequests) all.Notify();
    });
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(refused.load(), kRequests);
}

TEST(TcpTransport, ManyRequestsInFlight) {
  MemoryServer server(4 << 20);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  DataEndpoint ep = Ep(home.bound_address());
  constexpr int kRequests = 512;
  std::vector<std::vector<uint8_t>> bufs(kRequests, std::vector<uint8_t>(8192));
  std::atomic<int> done{0}, ok{0};
  absl::Notification all;
  for (int i = 0; i < kRequests; ++i) {
    mapper.Read(ep, 1, 1, uint64_t(i) * 8192, absl::MakeSpan(bufs[i]), [&, i](absl::Status s) {
      if (s.ok() && std::memcmp(bufs[i].data(), server.mem.data() + i * 8192, 8192) == 0) ++ok;
      if (++done == kRequests) all.Notify();
    });
  }
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(ok.load(), kRequests);
}

TEST(TcpTransport, WrongTokenIsRefused) {
  MemoryServer server(1 << 16);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  DataEndpoint ep = Ep(home.bound_address(), std::string(kDataTokenSize, 'x'));
  std::vector<uint8_t> buf(4096);
  absl::Status st = ReadSync(mapper, ep, 1, 0, absl::MakeSpan(buf));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(ToErrno(st), EACCES) << st;
}

TEST(TcpTransport, AnotherNodesTokenIsRefused) {
  // Node 3's token presented by a connection claiming node 2: the data
  // path binds the token to the node the control plane authenticated.
  MemoryServer server(1 << 16);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  std::vector<uint8_t> buf(4096);
  absl::Status st = ReadSync(mapper, Ep(home.bound_address(), DataTokenFor(kToken, 3)), 1, 0,
                             absl::MakeSpan(buf));
  EXPECT_EQ(ToErrno(st), EACCES) << st;
  EXPECT_TRUE(ReadSync(mapper, Ep(home.bound_address()), 1, 0, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(server.last_peer.load(), 2u);
}

// A raw client socket to `addr` (blocking, 5 s read timeout).
int RawConnect(const std::string& addr) {
  socklen_t len = 0;
  auto ss = NumericSocketAddress(addr, &len);
  if (!ss.ok()) return -1;
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&*ss), len) != 0) {
    close(fd);
    return -1;
  }
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

bool RawRead(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

std::vector<uint8_t> Frame(FrameType type, uint64_t segid, uint64_t grant, uint32_t status,
                           const std::string& payload) {
  FrameHeader h{type, 1, segid, grant, 0, static_cast<uint32_t>(payload.size()), status};
  std::vector<uint8_t> out(kFrameHeaderSize);
  EncodeHeader(h, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// The listener's answer to a header; its payload in *payload.
FrameHeader ReadAnswer(int fd, std::string* payload) {
  uint8_t buf[kFrameHeaderSize];
  EXPECT_TRUE(RawRead(fd, buf, sizeof(buf)));
  auto h = DecodeHeader(buf, sizeof(buf));
  EXPECT_TRUE(h.ok()) << h.status();
  if (!h.ok()) return FrameHeader{};
  payload->assign(PayloadLength(*h), '\0');
  EXPECT_TRUE(RawRead(fd, reinterpret_cast<uint8_t*>(payload->data()), payload->size()));
  return *h;
}

// What node 2 sends home node 1 in an honest handshake (HELLO, then AUTH
// with the proof for the listener's nonce), recorded; and the answer.
struct Recorded {
  std::vector<uint8_t> sent;
  uint32_t auth_status = ~0u;
};
Recorded HonestHandshake(const std::string& addr, const std::string& token) {
  Recorded r;
  int fd = RawConnect(addr);
  EXPECT_GE(fd, 0);
  std::string nonce(kAuthNonceSize, '\0');
  EXPECT_TRUE(FreshNonce(reinterpret_cast<uint8_t*>(nonce.data())).ok());
  auto hello = Frame(FrameType::kHello, 2, 1, 0, nonce);
  EXPECT_EQ(write(fd, hello.data(), hello.size()), ssize_t(hello.size()));
  r.sent = hello;
  std::string ack_payload;
  FrameHeader ack = ReadAnswer(fd, &ack_payload);
  EXPECT_EQ(ack.type, FrameType::kHelloAck);
  EXPECT_EQ(ack.status, 0u);
  EXPECT_EQ(ack_payload.size(), kHelloAckPayload);
  if (ack_payload.size() != kHelloAckPayload) {
    close(fd);
    return r;
  }
  auto* ln = reinterpret_cast<const uint8_t*>(ack_payload.data());
  auto* dn = reinterpret_cast<const uint8_t*>(nonce.data());
  // The home proves itself first.
  EXPECT_TRUE(
      DataAuthProofValid(token, "tcp", AuthRole::kListener, 2, 1, dn, ln, ln + kAuthNonceSize));
  std::string proof = DataAuthProof(token, "tcp", AuthRole::kDialer, 2, 1, dn, ln);
  auto auth = Frame(FrameType::kAuth, 2, 0, 0, proof);
  EXPECT_EQ(write(fd, auth.data(), auth.size()), ssize_t(auth.size()));
  r.sent.insert(r.sent.end(), auth.begin(), auth.end());
  std::string none;
  FrameHeader done = ReadAnswer(fd, &none);
  EXPECT_EQ(done.type, FrameType::kAuthAck);
  r.auth_status = done.status;
  close(fd);
  return r;
}

// Nothing of a recorded handshake is any use on a new connection: the
// home's nonce is new, so the recorded proof is wrong (EACCES), and the
// token itself never crossed the wire.
TEST(TcpTransport, AReplayedHandshakeIsRefused) {
  MemoryServer server(1 << 16);
  TcpTransport home(1);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  const std::string token = DataTokenFor(kToken, 2);
  Recorded honest = HonestHandshake(home.bound_address(), token);
  ASSERT_EQ(honest.auth_status, 0u);  // the recording is of a good handshake
  std::string sent(honest.sent.begin(), honest.sent.end());
  EXPECT_EQ(sent.find(token), std::string::npos) << "the token crossed the wire";

  int fd = RawConnect(home.bound_address());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, honest.sent.data(), honest.sent.size()), ssize_t(honest.sent.size()));
  std::string payload;
  FrameHeader ack = ReadAnswer(fd, &payload);
  EXPECT_EQ(ack.type, FrameType::kHelloAck);
  FrameHeader verdict = ReadAnswer(fd, &payload);
  EXPECT_EQ(verdict.type, FrameType::kAuthAck);
  EXPECT_EQ(verdict.status, uint32_t(EACCES)) << "a replayed handshake was accepted";
  // And nothing is served on it.
  auto req = Frame(FrameType::kReadReq, 1, 1, 0, "");
  FrameHeader r{FrameType::kReadReq, 7, 1, 1, 0, 4096, 0};
  EncodeHeader(r, req.data());
  (void)!write(fd, req.data(), kFrameHeaderSize);
  uint8_t byte;
  EXPECT_LE(read(fd, &byte, 1), 0);
  close(fd);
}

// The mapper checks the home too: a listener that answers the hello with
// an acknowledgement recorded from the real home (a replayed HELLO_ACK)
// fails the mapper's check, and the mapper sends no proof of its own.
TEST(TcpTransport, AReplayedHelloAckIsRefusedByTheMapper) {
  MemoryServer server(1 << 16);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  // Record a real HELLO_ACK.
  int fd = RawConnect(home.bound_address());
  ASSERT_GE(fd, 0);
  auto hello = Frame(FrameType::kHello, 2, 1, 0, std::string(kAuthNonceSize, 'n'));
  ASSERT_EQ(write(fd, hello.data(), hello.size()), ssize_t(hello.size()));
  std::string ack_payload;
  FrameHeader ack = ReadAnswer(fd, &ack_payload);
  ASSERT_EQ(ack.status, 0u);
  close(fd);
  // A fake home that plays it back to whoever connects.
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  socklen_t slen = sizeof(sa);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &slen);
  std::atomic<bool> got_auth{false};
  std::thread fake([&] {
    int c = accept(lfd, nullptr, nullptr);
    uint8_t buf[kFrameHeaderSize + kHelloPayload];
    if (!RawRead(c, buf, sizeof(buf))) return;
    auto replay = Frame(FrameType::kHelloAck, 1, 0, 0, ack_payload);
    (void)!write(c, replay.data(), replay.size());
    uint8_t more;
    if (read(c, &more, 1) > 0) got_auth = true;
    close(c);
  });
  std::vector<uint8_t> buf(4096);
  absl::Status st = ReadSync(mapper, Ep(absl::StrCat("127.0.0.1:", ntohs(sa.sin_port))), 1, 0,
                             absl::MakeSpan(buf));
  EXPECT_EQ(ToErrno(st), EACCES) << st;
  fake.join();
  close(lfd);
  EXPECT_FALSE(got_auth.load()) << "the mapper answered an unproven home";
}

// Whether a connection is encrypted is asked in HELLO's flags, answered in
// HELLO_ACK's and signed into both proofs ("tcp+ktls" instead of "tcp"),
// so a flag flipped on the wire (a downgrade) fails the proofs. Unknown
// flags are refused.
TEST(TcpTransport, HelloFlagsAreSignedIntoTheProofs) {
  MemoryServer server(1 << 16);
  TcpTransport home(1);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  const std::string token = DataTokenFor(kToken, 2);
  int fd = RawConnect(home.bound_address());
  ASSERT_GE(fd, 0);
  const std::string nonce(kAuthNonceSize, 'n');
  auto hello = Frame(FrameType::kHello, 2, 1, 0, nonce);
  ASSERT_EQ(write(fd, hello.data(), hello.size()), ssize_t(hello.size()));
  std::string payload;
  FrameHeader ack = ReadAnswer(fd, &payload);
  close(fd);
  ASSERT_EQ(ack.status, 0u);
  ASSERT_EQ(payload.size(), kHelloAckPayload);
  EXPECT_EQ(ack.offset, 0u) << "a plaintext hello to a plaintext home: not encrypted";
  auto* dn = reinterpret_cast<const uint8_t*>(nonce.data());
  auto* ln = reinterpret_cast<const uint8_t*>(payload.data());
  EXPECT_TRUE(
      DataAuthProofValid(token, "tcp", AuthRole::kListener, 2, 1, dn, ln, ln + kAuthNonceSize));
  EXPECT_FALSE(
      DataAuthProofValid(token, "tcp+ktls", AuthRole::kListener, 2, 1, dn, ln, ln + kAuthNonceSize))
      << "the proof does not sign the encryption answer";
  // A flag this version does not know: refused, with EPROTO.
  fd = RawConnect(home.bound_address());
  ASSERT_GE(fd, 0);
  std::vector<uint8_t> odd(kFrameHeaderSize);
  EncodeHeader(FrameHeader{FrameType::kHello, 1, 2, 1, kHelloEncrypt << 1, kHelloPayload, 0},
               odd.data());
  odd.insert(odd.end(), nonce.begin(), nonce.end());
  ASSERT_EQ(write(fd, odd.data(), odd.size()), ssize_t(odd.size()));
  FrameHeader refused = ReadAnswer(fd, &payload);
  close(fd);
  EXPECT_EQ(refused.type, FrameType::kHelloAck);
  EXPECT_EQ(refused.status, uint32_t(EPROTO));
}

// --data_encryption on either side. Where this kernel has TLS (the VM
// tier's Debian kernels), the connection carries reads and writes
// encrypted whichever side asked; where it has none (this CI host), a
// connection that asks is refused with the reason, never made in
// plaintext, and plaintext connections go on working. Each branch checks
// what this kernel must do; the VM tier's daemon suite checks the wire.
TEST(TcpTransport, EncryptedWhereTheKernelCanRefusedWhereNot) {
  MemoryServer server(1 << 16);
  TcpTransport home(1), asking(2), plain(2);
  asking.SetEncryption(true);
  ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  TcpTransport asking_home(1), follower(2);
  asking_home.SetEncryption(true);
  ASSERT_TRUE(asking_home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  std::vector<uint8_t> buf(8192);
  const absl::Status can = KtlsAvailable();
  if (std::getenv("TETHER_REQUIRE_KTLS") != nullptr) ASSERT_TRUE(can.ok()) << can;  // the VM tier
  absl::Status by_mapper = ReadSync(asking, Ep(home.bound_address()), 1, 4096, absl::MakeSpan(buf));
  absl::Status by_home =
      ReadSync(follower, Ep(asking_home.bound_address()), 1, 0, absl::MakeSpan(buf));
  if (can.ok()) {
    ASSERT_TRUE(by_mapper.ok()) << by_mapper;
    ASSERT_TRUE(by_home.ok()) << by_home;
    EXPECT_EQ(std::memcmp(buf.data(), server.mem.data(), buf.size()), 0);
    std::vector<uint8_t> data(12288, 0x3c);
    absl::Notification n;
    absl::Status wst;
    asking.Write(Ep(home.bound_address()), 1, 5, 8192, data, [&](absl::Status st) {
      wst = st;
      n.Notify();
    });
    n.WaitForNotification();
    ASSERT_TRUE(wst.ok()) << wst;
    EXPECT_EQ(std::memcmp(server.mem.data() + 8192, data.data(), data.size()), 0);
  } else {
    EXPECT_NE(std::string(can.message()).find("modprobe tls"), std::string::npos) << can;
    EXPECT_EQ(ToErrno(by_mapper), EPROTONOSUPPORT) << by_mapper;
    EXPECT_NE(std::string(by_mapper.message()).find("data encryption"), std::string::npos)
        << by_mapper;
    EXPECT_EQ(ToErrno(by_home), EPROTONOSUPPORT) << by_home;
    EXPECT_TRUE(ReadSync(plain, Ep(home.bound_address()), 1, 0, absl::MakeSpan(buf)).ok());
  }
}

// EncryptConnection seals what crosses the socket: with kernel TLS on one
// end of a loopback pair only, the other end reads TLS 1.3 records
// (application data, 0x17 0x03 0x03), never the plaintext; with it on both
// ends, the plaintext arrives. Where the kernel has no TLS, it says so.
TEST(DataEncryption, RecordsOnTheWire) {
  if (std::getenv("TETHER_REQUIRE_KTLS") != nullptr) ASSERT_TRUE(KtlsAvailable().ok());
  if (absl::Status can = KtlsAvailable(); !can.ok()) {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    uint8_t n[kAuthNonceSize] = {};
    EXPECT_FALSE(EncryptConnection(fds[0], kToken, AuthRole::kDialer, 2, 1, n, n).ok());  // not tcp
    close(fds[0]);
    close(fds[1]);
    EXPECT_NE(std::string(can.message()).find("CONFIG_TLS"), std::string::npos) << can;
    return;
  }
  auto pair = [](int* a, int* b) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    ASSERT_EQ(listen(l, 1), 0);
    getsockname(l, reinterpret_cast<sockaddr*>(&sa), &len);
    *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(connect(*a, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    *b = accept(l, nullptr, nullptr);
    close(l);
    struct timeval tv = {5, 0};
    setsockopt(*b, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(*a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  };
  uint8_t dn[kAuthNonceSize], ln[kAuthNonceSize];
  ASSERT_TRUE(FreshNonce(dn).ok());
  ASSERT_TRUE(FreshNonce(ln).ok());
  const std::string token = DataTokenFor(kToken, 2);
  const std::string secret = "page contents nobody on the wire may read";
  int a, b;
  pair(&a, &b);
  ASSERT_TRUE(EncryptConnection(a, token, AuthRole::kDialer, 2, 1, dn, ln).ok());
  EXPECT_TRUE(IsEncrypted(a));
  EXPECT_FALSE(IsEncrypted(b));
  ASSERT_EQ(write(a, secret.data(), secret.size()), ssize_t(secret.size()));
  std::string wire(5 + secret.size() + 1 + 16, '\0');  // header, text, type, tag
  ASSERT_TRUE(RawRead(b, reinterpret_cast<uint8_t*>(wire.data()), wire.size()));
  EXPECT_EQ(wire.substr(0, 3), std::string("\x17\x03\x03"));
  EXPECT_EQ(wire.find(secret), std::string::npos) << "plaintext on the wire";
  close(a);
  close(b);
  pair(&a, &b);
  ASSERT_TRUE(EncryptConnection(a, token, AuthRole::kDialer, 2, 1, dn, ln).ok());
  ASSERT_TRUE(EncryptConnection(b, token, AuthRole::kListener, 2, 1, dn, ln).ok());
  ASSERT_EQ(write(a, secret.data(), secret.size()), ssize_t(secret.size()));
  std::string got(secret.size(), '\0');
  ASSERT_TRUE(RawRead(b, reinterpret_cast<uint8_t*>(got.data()), got.size()));
  EXPECT_EQ(got, secret);
  ASSERT_EQ(write(b, "ok", 2), 2);  // and back, under the other direction's key
  char two[2];
  ASSERT_TRUE(RawRead(a, reinterpret_cast<uint8_t*>(two), 2));
  EXPECT_EQ(std::string(two, 2), "ok");
  close(a);
  close(b);
}

TEST(TcpTransport, PeerLossFailsPendingAndReconnects) {
  MemoryServer server(1 << 16);
  TcpTransport mapper(2);
  std::string addr;
  {
    TcpTransport home(1);
    ASSERT_TRUE(home.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
    addr = home.bound_address();
    std::vector<uint8_t> buf(4096);
    ASSERT_TRUE(ReadSync(mapper, Ep(addr), 1, 0, absl::MakeSpan(buf)).ok());
  }  // home shuts down
  std::vector<uint8_t> buf(4096);
  absl::Status st = ReadSync(mapper, Ep(addr), 1, 0, absl::MakeSpan(buf));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  // a new home on another port: the mapper connects afresh
  TcpTransport home2(1);
  ASSERT_TRUE(home2.Listen("127.0.0.1:0", kToken, &server, nullptr).ok());
  EXPECT_TRUE(ReadSync(mapper, Ep(home2.bound_address()), 1, 0, absl::MakeSpan(buf)).ok());
}

// Records notices; answers with `answer`.
class RecordingNotices : public NoticeServer {
 public:
  absl::Status Notice(uint32_t peer, absl::Span<const uint8_t> payload) override {
    absl::MutexLock lock(&mu);
    peers.push_back(peer);
    payloads.emplace_back(payload.begin(), payload.end());
    return answer;
  }
  absl::Mutex mu;
  std::vector<uint32_t> peers;
  std::vector<std::string> payloads;
  absl::Status answer;
};

absl::Status NotifySync(TcpTransport& t, uint32_t node, const std::string& payload) {
  absl::Notification n;
  absl::Status result;
  t.Notify(node,
           absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
           [&](absl::Status st) {
             result = st;
             n.Notify();
           });
  n.WaitForNotification();
  return result;
}

TEST(TcpTransport, NoticesGoOnAnExistingConnectionOnly) {
  // Node 1 is the home and sends notices to node 2, a mapper, whose data
  // listener takes them; the connection is node 1's, with node 1's token at 2.
  MemoryServer blocks(4096);
  RecordingNotices notices;
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(mapper.Listen("127.0.0.1:0", kToken, &blocks, &notices).ok());
  DataEndpoint ep;
  ep.node_id = 2;
  ep.address = mapper.bound_address();
  ep.token = DataTokenFor(kToken, 1);

  // No connection yet: Notify never connects (it runs inside ack deadlines).
  absl::Status st = NotifySync(home, 2, "begin");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(notices.payloads.empty());

  ASSERT_TRUE(home.Connect(ep).ok());
  EXPECT_TRUE(NotifySync(home, 2, "begin").ok());
  notices.answer = ErrnoStatus(EINVAL, "malformed");
  st = NotifySync(home, 2, "junk");
  EXPECT_EQ(ToErrno(st), EINVAL) << st;
  {
    absl::MutexLock lock(&notices.mu);
    ASSERT_EQ(notices.payloads.size(), 2u);
    EXPECT_EQ(notices.payloads[0], "begin");
    EXPECT_EQ(notices.peers[0], 1u);  // the node the connection authenticated as
  }
  // Empty and oversized notices are refused before anything is sent.
  EXPECT_EQ(NotifySync(home, 2, "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NotifySync(home, 2, std::string(kMaxNoticePayload + 1, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  // A notice of the largest size passes.
  notices.answer = absl::OkStatus();
  EXPECT_TRUE(NotifySync(home, 2, std::string(kMaxNoticePayload, 'y')).ok());
}

// A BlockServer whose reads wait until released: an exporter's memory
// blocked under an mprotect or munmap that waits for an invalidation.
class BlockedReads : public MemoryServer {
 public:
  BlockedReads() : MemoryServer(4096) {}
  absl::Status ReadBlocks(uint32_t peer, uint64_t segid, uint64_t grant, uint64_t off,
                          absl::Span<uint8_t> dst) override {
    entered.Notify();
    release.WaitForNotification();
    return MemoryServer::ReadBlocks(peer, segid, grant, off, dst);
  }
  absl::Notification entered, release;
};

// Two homes mapping each other (issue 14, defect 7): node 1 reads from
// node 2, and node 2's serving thread is stuck in that read. A range_begin
// from node 1 must still be answered at once, not served behind the read
// (node 1 would fence node 2, a healthy node, after its deadline).
TEST(TcpTransport, ANoticeIsNotServedBehindABlockedRead) {
  BlockedReads blocks;
  RecordingNotices notices;
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(mapper.Listen("127.0.0.1:0", kToken, &blocks, &notices).ok());
  DataEndpoint ep;
  ep.node_id = 2;
  ep.address = mapper.bound_address();
  ep.token = DataTokenFor(kToken, 1);
  uint8_t buf[4096];
  absl::Notification read_done;
  home.Read(ep, 1, 1, 0, absl::MakeSpan(buf), [&](absl::Status) { read_done.Notify(); });
  ASSERT_TRUE(blocks.entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(home.Connect(ep).ok());
  absl::Notification answered;
  absl::Status st;
  const std::string begin = "begin";
  home.Notify(2, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(begin.data()), begin.size()),
              [&](absl::Status s) {
                st = s;
                answered.Notify();
              });
  bool in_time = answered.WaitForNotificationWithTimeout(absl::Seconds(2));
  blocks.release.Notify();
  EXPECT_TRUE(in_time) << "the notice waited behind the blocked read";
  answered.WaitForNotification();
  EXPECT_TRUE(st.ok()) << st;
  read_done.WaitForNotification();
}

// A NoticeServer that blocks in its first call until released: a peer
// that stopped reading its notices (SIGSTOPped), so that the home's
// notices fill the socket buffers.
class StuckNotices : public NoticeServer {
 public:
  absl::Status Notice(uint32_t, absl::Span<const uint8_t>) override {
    if (!first.exchange(false)) return absl::OkStatus();
    release.WaitForNotification();
    return absl::OkStatus();
  }
  std::atomic<bool> first{true};
  absl::Notification release;
};

// The fan-out deadline holds even when a peer's TCP window is full
// (issue 14, defect 7): Notify never blocks its caller (the coordinator's
// Begin, once per node of the fan-out) — a notice that cannot be sent now
// is answered kUnavailable at once (the channel then tries gRPC, and the
// coordinator fences the node at its deadline).
TEST(TcpTransport, NotifyNeverBlocksOnAPeerThatStoppedReading) {
  signal(SIGPIPE, SIG_IGN);  // as tetherd does: a send on a cut connection fails, no more
  MemoryServer blocks(4096);
  StuckNotices notices;
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(mapper.Listen("127.0.0.1:0", kToken, &blocks, &notices).ok());
  DataEndpoint ep;
  ep.node_id = 2;
  ep.address = mapper.bound_address();
  ep.token = DataTokenFor(kToken, 1);
  ASSERT_TRUE(home.Connect(ep).ok());
  const std::string payload(kMaxNoticePayload, 'n');
  std::atomic<int> refused{0}, answered{0};
  absl::Duration slowest;
  absl::Notification loop_done;
  std::thread sender([&] {
    // Enough to fill both sides' socket buffers many times over.
    for (int i = 0; i < 2000 && refused == 0; ++i) {
      absl::Time t0 = absl::Now();
      home.Notify(
          2, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
          [&](absl::Status st) {
            if (absl::IsUnavailable(st)) ++refused;
            ++answered;
          });
      slowest = std::max(slowest, absl::Now() - t0);
    }
    loop_done.Notify();
  });
  // Well within TCP_USER_TIMEOUT (15 s), which would end a blocked send.
  bool finished = loop_done.WaitForNotificationWithTimeout(absl::Seconds(5));
  EXPECT_TRUE(finished) << "Notify blocked on a peer that does not read";
  EXPECT_GT(refused.load(), 0) << "the peer's window never filled";
  EXPECT_LT(slowest, absl::Milliseconds(200));
  notices.release.Notify();  // lets a blocked sender (before the fix) go on
  sender.join();
  home.Shutdown();
}

TEST(TcpTransport, NoticesWithoutAServerAreRefused) {
  MemoryServer blocks(4096);
  TcpTransport home(1), mapper(2);
  ASSERT_TRUE(mapper.Listen("127.0.0.1:0", kToken, &blocks, nullptr).ok());
  DataEndpoint ep;
  ep.node_id = 2;
  ep.address = mapper.bound_address();
  ep.token = DataTokenFor(kToken, 1);
  ASSERT_TRUE(home.Connect(ep).ok());
  EXPECT_EQ(ToErrno(NotifySync(home, 2, "begin")), EOPNOTSUPP);
}

TEST(TcpTransport, BadAddresses) {
  std::string host;
  uint16_t port;
  EXPECT_FALSE(ParseHostPort("nohost", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("1.2.3.4:99999", &host, &port).ok());
  EXPECT_TRUE(ParseHostPort("[::1]:80", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  socklen_t len = 0;
  auto v4 = NumericSocketAddress("10.0.0.7:9", &len);
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->ss_family, AF_INET);
  EXPECT_EQ(len, sizeof(sockaddr_in));
  auto v6 = NumericSocketAddress("[fe80::1]:9", &len);
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->ss_family, AF_INET6);
  EXPECT_EQ(len, sizeof(sockaddr_in6));
  EXPECT_EQ(ToErrno(NumericSocketAddress("node2:9").status()), EINVAL);
  MemoryServer server(4096);
  TcpTransport t(1);
  EXPECT_FALSE(t.Listen("localhost:0", kToken, &server, nullptr).ok());  // numeric only
}

}  // namespace
}  // namespace tether
