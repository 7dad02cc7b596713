// TcpTransport over loopback with an in-memory BlockServer: framing,
// many requests in flight, token authentication, errors, peer loss.
#include "daemon/transport/tcp_transport.h"

#include <netinet/in.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/status_macros.h"
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
