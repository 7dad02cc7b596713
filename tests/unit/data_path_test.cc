// DataPath (mapper/data_path.h) over two fake transports, "rdma" and
// "tcp" (fake_transport.h): which transport a request takes, the fall back
// from rdma to tcp on a set-up failure (exactly once, and the node stays
// on tcp), errors that are not set-up failures reaching the caller
// untouched, this node's own home, endpoint resolution, and WriteSync's
// pieces. Everything completes inline or when the test releases it: no
// sockets, no sleeps.
//
// Retries (DataPathRetryTest): DataPath runs on a FakeClock and a
// scheduler the test drives, so "the back-off passed" and "the budget ran
// out" are explicit steps, never sleeps; RetryPolicy is checked on its own.
#include "daemon/mapper/data_path.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "daemon/common/clock.h"
#include "daemon/common/errors.h"
#include "daemon/transport/wire_format.h"
#include "tests/unit/fake_transport.h"

namespace tether {
namespace {

constexpr uint32_t kSelf = 1, kPeer = 2, kTcpOnlyPeer = 3, kUnknown = 9;
constexpr uint64_t kSegid = 0x2000100000001, kGrant = 77;

// A home's BlockServer in memory: what a read returns, where writes land,
// and who asked.
class MemoryHome : public BlockServer {
 public:
  explicit MemoryHome(size_t size) : mem(size) {
    for (size_t i = 0; i < size; ++i) mem[i] = static_cast<uint8_t>(i * 7 + 3);
  }
  absl::Status ReadBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset,
                          absl::Span<uint8_t> dst) override {
    absl::MutexLock lock(&mu);
    calls.push_back({peer_node, segid, grant, offset, dst.size(), false});
    if (offset + dst.size() > mem.size()) return ErrnoStatus(EINVAL, "beyond the segment");
    std::memcpy(dst.data(), mem.data() + offset, dst.size());
    return absl::OkStatus();
  }
  absl::Status WriteBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset,
                           absl::Span<const uint8_t> src) override {
    absl::MutexLock lock(&mu);
    calls.push_back({peer_node, segid, grant, offset, src.size(), true});
    if (offset + src.size() > mem.size()) return ErrnoStatus(EINVAL, "beyond the segment");
    std::memcpy(mem.data() + offset, src.data(), src.size());
    return absl::OkStatus();
  }
  struct Call {
    uint32_t peer_node;
    uint64_t segid, grant, offset, size;
    bool write;
  };
  std::vector<Call> Calls() {
    absl::MutexLock lock(&mu);
    return calls;
  }

  absl::Mutex mu;
  std::vector<uint8_t> mem;
  std::vector<Call> calls;
};

// A `done` that records how often it ran and with what.
struct Answer {
  int calls = 0;
  absl::Status status = absl::UnknownError("never answered");
  Transport::Done Done() {
    return [this](absl::Status st) {
      ++calls;
      status = std::move(st);
    };
  }
};

class DataPathTest : public ::testing::Test {
 protected:
  DataPathTest() {
    rdma_.ServeBlocks(&remote_);
    tcp_.ServeBlocks(&remote_);
  }

  // The peers' endpoints, as PeerDirectory would resolve them: kPeer has
  // an rdma address, kTcpOnlyPeer has none, kUnknown is not in the list.
  absl::StatusOr<std::shared_ptr<const DataEndpoint>> Resolve(uint32_t node) {
    ++resolves_;
    if (node != kPeer && node != kTcpOnlyPeer)
      return ErrnoStatus(EHOSTUNREACH, "node is not in the peer list");
    auto ep = std::make_shared<DataEndpoint>();
    ep->node_id = node;
    ep->address = "10.0.0.2:7000";
    if (node == kPeer) ep->rdma_address = "10.0.0.2:7001";
    ep->token = token_;
    ep->incarnation = incarnation_;
    return ep;
  }
  DataEndpoint Endpoint(uint32_t node) { return **Resolve(node); }

  absl::Span<uint8_t> Buf(size_t n) {
    buf_.assign(n, 0);
    return absl::MakeSpan(buf_);
  }
  bool BufIsHome(uint64_t offset) {
    return std::memcmp(buf_.data(), remote_.mem.data() + offset, buf_.size()) == 0;
  }

  MemoryHome local_{1 << 20};
  MemoryHome remote_{1 << 20};
  FakeTransport rdma_{"rdma", kSelf};
  FakeTransport tcp_{"tcp", kSelf};
  int resolves_ = 0;
  std::vector<uint8_t> buf_;
  int forgets_ = 0;
  uint64_t incarnation_ = 0x1234;  // the peer daemon's, from its Hello
  std::string token_ = "token-of-node-1-at-the-peer";
  DataPath path_{kSelf, &local_, &tcp_, &rdma_, [this](uint32_t node) { return Resolve(node); }};
};

TEST_F(DataPathTest, RequestsGoOverRdmaWhenThePeerHasAnRdmaAddress) {
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "rdma");
  Answer a;
  path_.Read(kPeer, kSegid, kGrant, 8192, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_TRUE(BufIsHome(8192));
  ASSERT_EQ(rdma_.count(), 1u);
  EXPECT_EQ(tcp_.count(), 0u);
  FakeRequest r = rdma_.requests()[0];
  EXPECT_EQ(r.kind, FakeRequest::Kind::kRead);
  EXPECT_EQ(r.node, kPeer);
  EXPECT_EQ(r.segid, kSegid);
  EXPECT_EQ(r.grant, kGrant);
  EXPECT_EQ(r.offset, 8192u);
  EXPECT_EQ(r.size, 4096u);
  EXPECT_EQ(r.token, "token-of-node-1-at-the-peer");
  EXPECT_EQ(r.data, buf_.data()) << "read straight into the caller's buffer";
  // The home saw it from this node (the connection's identity).
  ASSERT_EQ(remote_.Calls().size(), 1u);
  EXPECT_EQ(remote_.Calls()[0].peer_node, kSelf);

  std::vector<uint8_t> src(4096, 0xab);
  Answer w;
  path_.Write(kPeer, kSegid, kGrant, 0, src, w.Done());
  EXPECT_EQ(w.calls, 1);
  EXPECT_TRUE(w.status.ok()) << w.status;
  EXPECT_EQ(rdma_.count(FakeRequest::Kind::kWrite), 1u);
  EXPECT_EQ(tcp_.count(), 0u);
  EXPECT_EQ(remote_.mem[0], 0xab);
}

TEST_F(DataPathTest, RequestsGoOverTcpWithoutAnRdmaAddressOrTransport) {
  EXPECT_EQ(path_.TransportFor(kTcpOnlyPeer, Endpoint(kTcpOnlyPeer)), "tcp");
  Answer a;
  path_.Read(kTcpOnlyPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(rdma_.count(), 0u);
  EXPECT_EQ(tcp_.count(), 1u);

  // A node without an rdma transport: tcp even to a peer with an rdma address.
  DataPath tcp_only(kSelf, &local_, &tcp_, nullptr,
                    [this](uint32_t node) { return Resolve(node); });
  EXPECT_EQ(tcp_only.TransportFor(kPeer, Endpoint(kPeer)), "tcp");
  Answer b;
  tcp_only.Read(kPeer, kSegid, kGrant, 0, Buf(4096), b.Done());
  EXPECT_EQ(b.calls, 1);
  EXPECT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(rdma_.count(), 0u);
  EXPECT_EQ(tcp_.count(), 2u);
}

// Issue 15: a home that refuses our token (it restarted with a new secret
// since our Hello) is asked for a new one (the endpoint is forgotten and
// resolved again) and the request goes once more, over rdma, with the new
// token; a second refusal reaches the caller. Before, the refusal failed
// the fetch at once (SIGBUS in the faulting client).
// The heart of it: an rdma connection that cannot be set up sends the
// request over tcp instead, once; the node then stays on tcp.
TEST_F(DataPathTest, SetupFailureOnRdmaReissuesOverTcpOnceAndTheNodeStaysOnTcp) {
  rdma_.FailAll(FakeTransport::SetupFailed());
  Answer a;
  path_.Read(kPeer, kSegid, kGrant, 4096, Buf(8192), a.Done());
  EXPECT_EQ(a.calls, 1) << "done runs once, with the tcp answer";
  EXPECT_TRUE(a.status.ok()) << "a set-up failure never reaches the caller: " << a.status;
  EXPECT_TRUE(BufIsHome(4096)) << "the data came over tcp";
  ASSERT_EQ(rdma_.count(), 1u);
  ASSERT_EQ(tcp_.count(), 1u) << "reissued over tcp exactly once";
  FakeRequest over_rdma = rdma_.requests()[0], over_tcp = tcp_.requests()[0];
  EXPECT_LT(over_rdma.seq, over_tcp.seq) << "tcp only after rdma failed";
  // The same request: same home, segment, grant, range and buffer.
  EXPECT_EQ(over_tcp.kind, FakeRequest::Kind::kRead);
  EXPECT_EQ(over_tcp.node, kPeer);
  EXPECT_EQ(over_tcp.segid, kSegid);
  EXPECT_EQ(over_tcp.grant, kGrant);
  EXPECT_EQ(over_tcp.offset, 4096u);
  EXPECT_EQ(over_tcp.size, 8192u);
  EXPECT_EQ(over_tcp.data, over_rdma.data);
  EXPECT_EQ(remote_.Calls().size(), 1u) << "the home served it once";

  // The node stays on tcp: the next requests do not try rdma.
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "tcp");
  Answer b;
  path_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), b.Done());
  std::vector<uint8_t> src(4096, 0x5a);
  Answer w;
  path_.Write(kPeer, kSegid, kGrant, 0, src, w.Done());
  EXPECT_TRUE(b.status.ok()) << b.status;
  EXPECT_TRUE(w.status.ok()) << w.status;
  EXPECT_EQ(rdma_.count(), 1u);
  EXPECT_EQ(tcp_.count(), 3u);
  // ... and only that node: a fresh DataPath still picks rdma for it
  // (the choice is per DataPath and node, not global).
  DataPath other(kSelf, &local_, &tcp_, &rdma_, [this](uint32_t node) { return Resolve(node); });
  EXPECT_EQ(other.TransportFor(kPeer, Endpoint(kPeer)), "rdma");
}

// ReadInPlace (the fault path's fetch): the same choice and fall back as
// Read; `done` gets the bytes, once, in `dst` for a transport that has no
// registered buffer of its own to hand over (the fakes, tcp, this node).
struct InPlaceAnswer {
  int calls = 0;
  absl::Status status = absl::UnknownError("never answered");
  const uint8_t* data = nullptr;
  size_t size = 0;
  Transport::ReadDone Done() {
    return [this](absl::Status st, absl::Span<const uint8_t> d) {
      ++calls;
      status = std::move(st);
      data = d.data();
      size = d.size();
    };
  }
};

TEST_F(DataPathTest, ReadInPlaceHandsTheBytesOverAndFallsBackOnce) {
  InPlaceAnswer a;
  path_.ReadInPlace(kPeer, kSegid, kGrant, 8192, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.data, buf_.data());
  EXPECT_EQ(a.size, 4096u);
  EXPECT_TRUE(BufIsHome(8192));
  EXPECT_EQ(rdma_.count(), 1u);
  EXPECT_EQ(tcp_.count(), 0u);

  rdma_.ScriptNext(FakeTransport::SetupFailed());
  InPlaceAnswer b;
  path_.ReadInPlace(kPeer, kSegid, kGrant, 4096, Buf(8192), b.Done());
  EXPECT_EQ(b.calls, 1) << "done runs once, with the tcp answer";
  EXPECT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(b.data, buf_.data());
  EXPECT_EQ(b.size, 8192u);
  EXPECT_TRUE(BufIsHome(4096));
  EXPECT_EQ(rdma_.count(), 2u);
  EXPECT_EQ(tcp_.count(), 1u) << "reissued over tcp exactly once";
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "tcp");

  // A failure that is not a set-up failure reaches `done` with no bytes.
  tcp_.ScriptNext(FakeTransport::Refused(EACCES));
  InPlaceAnswer c;
  path_.ReadInPlace(kPeer, kSegid, kGrant, 0, Buf(4096), c.Done());
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(ToErrno(c.status), EACCES) << c.status;
  EXPECT_EQ(c.size, 0u);

  // This node's own home: read straight into `dst`.
  InPlaceAnswer d;
  path_.ReadInPlace(kSelf, kSegid, kGrant, 0, Buf(4096), d.Done());
  EXPECT_EQ(d.calls, 1);
  EXPECT_TRUE(d.status.ok()) << d.status;
  EXPECT_EQ(d.data, buf_.data());
  EXPECT_EQ(std::memcmp(buf_.data(), local_.mem.data(), 4096), 0);
}

TEST_F(DataPathTest, AWriteFallsBackWithItsBytes) {
  rdma_.ScriptNext(FakeTransport::SetupFailed());
  std::vector<uint8_t> src(3 * 4096);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i ^ 0x33);
  Answer w;
  path_.Write(kPeer, kSegid, kGrant, 4096, src, w.Done());
  EXPECT_EQ(w.calls, 1);
  EXPECT_TRUE(w.status.ok()) << w.status;
  EXPECT_EQ(rdma_.count(FakeRequest::Kind::kWrite), 1u);
  EXPECT_EQ(tcp_.count(FakeRequest::Kind::kWrite), 1u);
  EXPECT_EQ(std::memcmp(remote_.mem.data() + 4096, src.data(), src.size()), 0);
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "tcp");
}

// Completions that arrive later (as from a real transport's thread): the
// fall back happens when the failure arrives, not before; two requests in
// flight when rdma fails are each reissued once.
TEST_F(DataPathTest, FallBackWhenTheFailureArrivesLater) {
  rdma_.HoldCompletions();
  rdma_.FailAll(FakeTransport::SetupFailed());
  Answer a, b;
  path_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  std::vector<uint8_t> other(4096);
  path_.Read(kPeer, kSegid, kGrant, 4096, absl::MakeSpan(other), b.Done());
  EXPECT_EQ(rdma_.held(), 2u);
  EXPECT_EQ(tcp_.count(), 0u) << "nothing over tcp while rdma has not answered";
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "rdma");
  EXPECT_EQ(a.calls + b.calls, 0);

  rdma_.Release(1);  // the second answers first
  EXPECT_EQ(b.calls, 1);
  EXPECT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(a.calls, 0);
  ASSERT_EQ(tcp_.count(), 1u);
  EXPECT_EQ(tcp_.requests()[0].offset, 4096u);
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "tcp");

  rdma_.Release(0);
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_TRUE(BufIsHome(0));
  EXPECT_EQ(rdma_.count(), 2u);
  ASSERT_EQ(tcp_.count(), 2u) << "each request reissued once, none twice";
  EXPECT_EQ(tcp_.requests()[1].offset, 0u);
}

// The reissued request is not reissued again: tcp's own failure (even one
// tagged as a set-up failure) is the answer.
TEST_F(DataPathTest, TheTcpAnswerToAReissuedRequestIsFinal) {
  rdma_.FailAll(FakeTransport::SetupFailed());
  tcp_.FailAll(SetupFailure(ErrnoStatus(ENETUNREACH, "tcp connect")));
  Answer a;
  path_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_EQ(ToErrno(a.status), ENETUNREACH);
  EXPECT_EQ(rdma_.count(), 1u);
  EXPECT_EQ(tcp_.count(), 1u);
}

// Only set-up failures fall back. Anything else (the home refused, or the
// connection was lost with the request in flight: it may have been
// applied) reaches the caller with its errno, and rdma stays chosen.
TEST_F(DataPathTest, OtherFailuresAreNotRetriedOverTcp) {
  const int errnos[] = {EACCES, EPERM, EIDRM, EINVAL, ECONNREFUSED, EFAULT};
  for (int err : errnos) {
    rdma_.ScriptNext(FakeTransport::Refused(err));
    Answer a;
    path_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
    EXPECT_EQ(a.calls, 1);
    EXPECT_EQ(ToErrno(a.status), err) << a.status;
    EXPECT_FALSE(IsSetupFailure(a.status));
  }
  // A write lost in flight may have been applied: handed back as Retry()
  // (the write-back loop decides), never re-sent here.
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  std::vector<uint8_t> src(4096, 1);
  Answer w;
  path_.Write(kPeer, kSegid, kGrant, 0, src, w.Done());
  EXPECT_EQ(w.calls, 1);
  EXPECT_TRUE(IsRetry(w.status)) << w.status;

  EXPECT_EQ(rdma_.count(), std::size(errnos) + 1);
  EXPECT_EQ(tcp_.count(), 0u) << "no failure but a set-up failure goes over tcp";
  EXPECT_EQ(path_.TransportFor(kPeer, Endpoint(kPeer)), "rdma");

  // The same over tcp: its errors reach the caller too.
  tcp_.ScriptNext(FakeTransport::Refused(EPERM));
  Answer t;
  path_.Read(kTcpOnlyPeer, kSegid, kGrant, 0, Buf(4096), t.Done());
  EXPECT_EQ(t.calls, 1);
  EXPECT_EQ(ToErrno(t.status), EPERM);
  // A Retry() (the home's window) is an answer, not a set-up failure.
  rdma_.ScriptNext(Retry("window 3"));
  Answer r;
  path_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), r.Done());
  EXPECT_TRUE(IsRetry(r.status)) << r.status;
  EXPECT_EQ(tcp_.count(), 1u);
}

TEST_F(DataPathTest, ThisNodesHomeIsCalledDirectly) {
  EXPECT_EQ(path_.TransportFor(kSelf, DataEndpoint{}), "local");
  Answer a;
  path_.Read(kSelf, kSegid, kGrant, 12288, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1) << "inline";
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(std::memcmp(buf_.data(), local_.mem.data() + 12288, 4096), 0);
  std::vector<uint8_t> src(4096, 0xee);
  Answer w;
  path_.Write(kSelf, kSegid, kGrant, 0, src, w.Done());
  EXPECT_TRUE(w.status.ok()) << w.status;
  EXPECT_EQ(local_.mem[0], 0xee);
  auto calls = local_.Calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].peer_node, kSelf);
  EXPECT_EQ(calls[0].grant, kGrant);
  EXPECT_TRUE(calls[1].write);
  // Its errors unchanged.
  Answer bad;
  path_.Read(kSelf, kSegid, kGrant, 1 << 20, Buf(4096), bad.Done());
  EXPECT_EQ(ToErrno(bad.status), EINVAL);
  EXPECT_EQ(rdma_.count() + tcp_.count(), 0u);
  EXPECT_EQ(resolves_, 0) << "no endpoint needed for this node";
}

TEST_F(DataPathTest, AnEndpointThatCannotBeResolvedReachesDone) {
  Answer a;
  path_.Read(kUnknown, kSegid, kGrant, 0, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_EQ(ToErrno(a.status), EHOSTUNREACH) << a.status;
  std::vector<uint8_t> src(4096);
  Answer w;
  path_.Write(kUnknown, kSegid, kGrant, 0, src, w.Done());
  EXPECT_EQ(w.calls, 1);
  EXPECT_EQ(ToErrno(w.status), EHOSTUNREACH) << w.status;
  EXPECT_EQ(ToErrno(path_.WriteSync(kUnknown, kSegid, kGrant, 0, src)), EHOSTUNREACH);
  EXPECT_EQ(rdma_.count() + tcp_.count(), 0u);
}

TEST_F(DataPathTest, WriteSyncSplitsIntoTransportSizedPieces) {
  std::vector<uint8_t> src(2 * kMaxPayload + 4096);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i / 4096);
  MemoryHome big(3 * kMaxPayload);
  tcp_.ServeBlocks(&big);
  ASSERT_TRUE(path_.WriteSync(kTcpOnlyPeer, kSegid, kGrant, 4096, src).ok());
  auto reqs = tcp_.requests();
  ASSERT_EQ(reqs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(reqs[i].kind, FakeRequest::Kind::kWrite);
    EXPECT_EQ(reqs[i].offset, 4096 + i * kMaxPayload);
    EXPECT_EQ(reqs[i].data, src.data() + i * kMaxPayload);
    EXPECT_LE(reqs[i].size, kMaxPayload);
  }
  EXPECT_EQ(reqs[0].size, kMaxPayload);
  EXPECT_EQ(reqs[1].size, kMaxPayload);
  EXPECT_EQ(reqs[2].size, 4096u);
  EXPECT_EQ(std::memcmp(big.mem.data() + 4096, src.data(), src.size()), 0);
  // Nothing to write: no request.
  EXPECT_TRUE(path_.WriteSync(kTcpOnlyPeer, kSegid, kGrant, 0, {}).ok());
  EXPECT_EQ(tcp_.count(), 3u);
  EXPECT_EQ(rdma_.count(), 0u);
}

TEST_F(DataPathTest, WriteSyncReportsTheFirstError) {
  std::vector<uint8_t> src(3 * kMaxPayload);
  tcp_.ServeBlocks(nullptr);  // pieces that are not refused succeed
  // Pieces answered inline, in order: the second piece's error wins over
  // the third's, and the first piece's success does not hide either.
  tcp_.ScriptNext(absl::OkStatus());
  tcp_.ScriptNext(FakeTransport::Refused(EIO));
  tcp_.ScriptNext(FakeTransport::Refused(EACCES));
  EXPECT_EQ(ToErrno(path_.WriteSync(kTcpOnlyPeer, kSegid, kGrant, 0, src)), EIO);
  EXPECT_EQ(tcp_.count(), 3u) << "every piece is sent, even after an error";
}

// "First" is the first to be answered, whatever its place in the range:
// pieces are in flight together, WriteSync waits for all of them.
TEST_F(DataPathTest, WriteSyncWaitsForEveryPieceAndKeepsTheFirstAnsweredError) {
  std::vector<uint8_t> src(3 * kMaxPayload);
  tcp_.ServeBlocks(nullptr);
  tcp_.HoldCompletions();
  tcp_.ScriptNext(absl::OkStatus());
  tcp_.ScriptNext(FakeTransport::Refused(EIO));
  tcp_.ScriptNext(FakeTransport::Refused(EACCES));
  absl::Status result = absl::UnknownError("WriteSync has not returned");
  std::atomic<bool> returned{false};
  std::thread writer([&] {
    result = path_.WriteSync(kTcpOnlyPeer, kSegid, kGrant, 0, src);
    returned = true;
  });
  ASSERT_TRUE(tcp_.WaitForHeld(3)) << "all pieces in flight at once";
  tcp_.Release(2);  // EACCES, the last piece, answers first
  tcp_.Release(1);  // EIO
  EXPECT_FALSE(returned.load()) << "one piece still in flight";
  tcp_.Release(0);  // OK
  writer.join();
  EXPECT_EQ(ToErrno(result), EACCES);
}

// ---------------------------------------------------------------- retries

TEST(RetryPolicyTest, WhatIsSentAgain) {
  RetryPolicy p{absl::Seconds(30)};
  const absl::Duration t = absl::ZeroDuration();
  EXPECT_FALSE(p.Next(absl::OkStatus(), true, 0, t));
  // Never sent: read or write.
  EXPECT_EQ(p.Next(FakeTransport::NeverSent(), true, 0, t), absl::Milliseconds(50));
  EXPECT_EQ(p.Next(FakeTransport::NeverSent(), false, 0, t), absl::Milliseconds(50));
  // Lost in flight: a read only.
  EXPECT_TRUE(p.Next(FakeTransport::ConnectionLost(), true, 0, t));
  EXPECT_FALSE(p.Next(FakeTransport::ConnectionLost(), false, 0, t));
  // The home's answers, untagged failures, set-up failures (FallBack's).
  EXPECT_FALSE(p.Next(FakeTransport::Refused(EACCES), true, 0, t));
  EXPECT_FALSE(p.Next(Retry("window"), true, 0, t));
  EXPECT_FALSE(p.Next(absl::UnavailableError("lost"), true, 0, t));
  EXPECT_FALSE(p.Next(FakeTransport::SetupFailed(), true, 0, t));
}

TEST(RetryPolicyTest, BackOffDoublesToASecondWithinTheBudget) {
  RetryPolicy p{absl::Seconds(3)};
  const absl::Status lost = FakeTransport::ConnectionLost();
  EXPECT_EQ(p.Next(lost, true, 0, absl::ZeroDuration()), absl::Milliseconds(50));
  EXPECT_EQ(p.Next(lost, true, 1, absl::ZeroDuration()), absl::Milliseconds(100));
  EXPECT_EQ(p.Next(lost, true, 4, absl::ZeroDuration()), absl::Milliseconds(800));
  EXPECT_EQ(p.Next(lost, true, 5, absl::ZeroDuration()), absl::Seconds(1));
  EXPECT_EQ(p.Next(lost, true, 40, absl::ZeroDuration()), absl::Seconds(1));
  EXPECT_EQ(p.Next(lost, true, 40, absl::Seconds(2)), absl::Seconds(1));
  EXPECT_FALSE(p.Next(lost, true, 40, absl::Milliseconds(2001))) << "past the budget";
  EXPECT_FALSE(RetryPolicy{absl::ZeroDuration()}.Next(lost, true, 0, absl::ZeroDuration()))
      << "budget 0: no retries";
}

// DataPath with retries the test drives: Due() lists what waits, RunNext()
// moves the clock to it and runs it.
class DataPathRetryTest : public DataPathTest {
 protected:
  struct Scheduled {
    absl::Time at;
    absl::AnyInvocable<void(bool)> fn;
  };
  DataPath::Options Opts() {
    DataPath::Options o;
    o.retry_budget = absl::Seconds(5);
    o.rdma_retry_after = absl::Seconds(2);
    o.clock = &clock_;
    o.schedule = [this](absl::Duration d, absl::AnyInvocable<void(bool)> fn) {
      absl::MutexLock lock(&mu_);
      due_.push_back({clock_.Now() + d, std::move(fn)});
    };
    o.forget = [this](uint32_t) {
      ++forgets_;
      token_ = "the-new-token";  // as if the home had restarted
    };
    return o;
  }
  size_t Due() {
    absl::MutexLock lock(&mu_);
    return due_.size();
  }
  // Runs the oldest scheduled retry at its time (`cancelled`: as Shutdown).
  void RunNext(bool cancelled = false) {
    Scheduled s;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(due_.empty());
      s = std::move(due_.front());
      due_.erase(due_.begin());
    }
    if (!cancelled && s.at > clock_.Now()) clock_.Set(s.at);
    s.fn(cancelled);
  }

  FakeClock clock_;
  absl::Mutex mu_;
  std::vector<Scheduled> due_;
  DataPath retrying_{kSelf, &local_, &tcp_, &rdma_, [this](uint32_t node) { return Resolve(node); },
                     Opts()};
};

// A link flap: the read was in flight when the connection went. It is sent
// again after the back-off (not inline, not at once) and the client gets
// the data, not an error.
TEST_F(DataPathRetryTest, AReadLostInFlightIsSentAgainAndAnswered) {
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  Answer a;
  retrying_.Read(kPeer, kSegid, kGrant, 8192, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 0) << "a lost read is not the client's error";
  EXPECT_EQ(rdma_.count(), 1u) << "not re-sent inline, from the transport's thread";
  ASSERT_EQ(Due(), 1u);
  absl::Time before = clock_.Now();
  RunNext();
  EXPECT_EQ(clock_.Now() - before, absl::Milliseconds(50));
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_TRUE(BufIsHome(8192));
  EXPECT_EQ(rdma_.count(), 2u);
  EXPECT_EQ(tcp_.count(), 0u) << "a new rdma connection, not tcp";
}

// A home that restarted refuses the token it gave before: the endpoint is
// learned again (a new Hello) and the request sent once more, from the
// retry timer (the refusal may be reported on a transport's thread, and a
// Hello waits), with the new token; a second refusal reaches the caller.
TEST_F(DataPathRetryTest, StaleTokenIsLearnedAgainAndTheRequestRetriedOnce) {
  rdma_.ScriptNext(StaleToken(FakeTransport::Refused(EACCES)));
  token_ = "the-old-token";
  Answer a;
  retrying_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 0) << "not the caller's error";
  EXPECT_EQ(forgets_, 1);
  ASSERT_EQ(Due(), 1u) << "sent again from the timer, not inline";
  RunNext();
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_TRUE(BufIsHome(0));
  ASSERT_EQ(rdma_.count(), 2u) << "retried over rdma, once";
  EXPECT_EQ(rdma_.requests()[0].token, "the-old-token");
  EXPECT_EQ(rdma_.requests()[1].token, "the-new-token") << "with the token learned again";
  EXPECT_EQ(tcp_.count(), 0u) << "a stale token is not a set-up failure";

  // Refused again after the retry: the caller hears it (no loop).
  rdma_.ScriptNext(StaleToken(FakeTransport::Refused(EACCES)));
  rdma_.ScriptNext(StaleToken(FakeTransport::Refused(EACCES)));
  Answer b;
  retrying_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), b.Done());
  ASSERT_EQ(Due(), 1u);
  RunNext();
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(ToErrno(b.status), EACCES) << b.status;
  EXPECT_EQ(forgets_, 2);
  EXPECT_EQ(rdma_.count(), 4u);
  EXPECT_EQ(tcp_.count(), 0u);
  EXPECT_EQ(Due(), 0u);
}

// ReadInPlace goes through the same retries as Read: a read lost in flight
// or never sent is sent again from the timer (the caller hears nothing
// until it is answered), a stale token once after learning it again, and
// the answer carries the bytes.
TEST_F(DataPathRetryTest, AnInPlaceReadIsRetriedAsAReadIs) {
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  rdma_.ScriptNext(FakeTransport::NeverSent());
  InPlaceAnswer a;
  retrying_.ReadInPlace(kPeer, kSegid, kGrant, 8192, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 0) << "a lost in-place read is not the client's error";
  ASSERT_EQ(Due(), 1u) << "sent again from the timer, not inline";
  RunNext();
  EXPECT_EQ(a.calls, 0) << "never sent: sent again too";
  ASSERT_EQ(Due(), 1u);
  RunNext();
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.data, buf_.data());
  EXPECT_EQ(a.size, 4096u);
  EXPECT_TRUE(BufIsHome(8192));
  EXPECT_EQ(rdma_.count(), 3u);
  EXPECT_EQ(tcp_.count(), 0u);

  rdma_.ScriptNext(StaleToken(FakeTransport::Refused(EACCES)));
  InPlaceAnswer b;
  retrying_.ReadInPlace(kPeer, kSegid, kGrant, 0, Buf(4096), b.Done());
  EXPECT_EQ(b.calls, 0);
  EXPECT_EQ(forgets_, 1);
  ASSERT_EQ(Due(), 1u);
  RunNext();
  EXPECT_EQ(b.calls, 1);
  EXPECT_TRUE(b.status.ok()) << b.status;
  EXPECT_TRUE(BufIsHome(0));
  EXPECT_EQ(rdma_.requests().back().token, "the-new-token");
}

// A write that never left is sent again, once; the home sees it once.
TEST_F(DataPathRetryTest, AWriteThatNeverLeftIsSentAgain) {
  rdma_.ScriptNext(FakeTransport::NeverSent());
  std::vector<uint8_t> src(4096, 0x5a);
  Answer w;
  retrying_.Write(kPeer, kSegid, kGrant, 4096, src, w.Done());
  EXPECT_EQ(w.calls, 0);
  RunNext();
  EXPECT_EQ(w.calls, 1);
  EXPECT_TRUE(w.status.ok()) << w.status;
  EXPECT_EQ(remote_.Calls().size(), 1u) << "applied once";
  EXPECT_EQ(remote_.mem[4096], 0x5a);
}

// A write lost in flight may have been applied: never re-sent by DataPath.
TEST_F(DataPathRetryTest, AWriteLostInFlightGoesBackAsRetry) {
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  std::vector<uint8_t> src(4096, 1);
  Answer w;
  retrying_.Write(kPeer, kSegid, kGrant, 0, src, w.Done());
  EXPECT_EQ(w.calls, 1);
  EXPECT_TRUE(IsRetry(w.status)) << w.status;
  EXPECT_EQ(Due(), 0u);
  EXPECT_EQ(rdma_.count(), 1u);
}

// The home is gone (the link stays down): the read is sent again with a
// growing back-off until the budget runs out, then the error reaches the
// client (SIGBUS) — bounded, never a hang. A retry whose new rdma
// connection cannot be set up goes over tcp, as a first try would.
TEST_F(DataPathRetryTest, RetriesEndWithTheErrorWhenTheBudgetRunsOut) {
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  rdma_.FailAll(FakeTransport::SetupFailed());
  tcp_.FailAll(FakeTransport::NeverSent());  // tcp's connect fails too
  Answer a;
  absl::Time start = clock_.Now();
  retrying_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  int runs = 0;
  while (a.calls == 0 && Due() > 0 && runs < 100) {
    RunNext();
    ++runs;
  }
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(absl::IsUnavailable(a.status)) << a.status;
  EXPECT_EQ(Due(), 0u);
  EXPECT_LE(clock_.Now() - start, absl::Seconds(5)) << "within the budget";
  EXPECT_GT(clock_.Now() - start, absl::Seconds(4)) << "the budget was used";
  // 50+100+...+800 ms, then 1 s steps: 8 retries fit in 5 s.
  EXPECT_EQ(runs, 8);
  EXPECT_GE(tcp_.count(), 1u) << "after the set-up failure, over tcp";
}

// The link comes back while retries go on: the next retry is answered, and
// after rdma_retry_after rdma is chosen again.
TEST_F(DataPathRetryTest, ReadsResumeAndRdmaComesBack) {
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  rdma_.FailAll(FakeTransport::SetupFailed());
  tcp_.FailAll(FakeTransport::NeverSent());
  Answer a;
  retrying_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  RunNext();
  RunNext();
  EXPECT_EQ(a.calls, 0);
  rdma_.Heal();
  tcp_.Heal();
  RunNext();  // over tcp: rdma could not be set up a moment ago
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_TRUE(BufIsHome(0));
  EXPECT_EQ(retrying_.TransportFor(kPeer, Endpoint(kPeer)), "tcp");
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(retrying_.TransportFor(kPeer, Endpoint(kPeer)), "rdma");
}

// A home that restarted is another daemon: an rdma set-up failure of the
// old one (no listener while it was down) keeps the node on tcp only until
// an endpoint of the new incarnation is seen (before: for the whole
// rdma_retry_after, so a restarted home was read over tcp).
TEST_F(DataPathRetryTest, ARestartedHomeIsTriedOverRdmaAtOnce) {
  rdma_.ScriptNext(FakeTransport::SetupFailed());
  Answer a;
  retrying_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(tcp_.count(), 1u) << "the set-up failure went over tcp";
  EXPECT_EQ(retrying_.TransportFor(kPeer, Endpoint(kPeer)), "tcp") << "same incarnation";
  incarnation_ = 0x5678;  // the home restarted: its new Hello
  EXPECT_EQ(retrying_.TransportFor(kPeer, Endpoint(kPeer)), "rdma");
  Answer b;
  retrying_.Read(kPeer, kSegid, kGrant, 4096, Buf(4096), b.Done());
  EXPECT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(rdma_.count(), 2u) << "over rdma again";
  EXPECT_EQ(tcp_.count(), 1u);
}

// Shutdown (or a scheduler that cancels) completes a waiting request with
// its last error, once.
TEST_F(DataPathRetryTest, ACancelledRetryCompletesWithTheLastError) {
  rdma_.ScriptNext(FakeTransport::ConnectionLost());
  Answer a;
  retrying_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), a.Done());
  retrying_.Shutdown();
  RunNext(/*cancelled=*/true);
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(IsLostInFlight(a.status)) << a.status;
  EXPECT_EQ(rdma_.count(), 1u);
}

// The default scheduler (DataPath's timer thread): Shutdown completes what
// waits, exactly once, and joins.
TEST_F(DataPathTest, ShutdownCompletesRequestsWaitingForARetry) {
  rdma_.FailAll(FakeTransport::ConnectionLost());
  absl::Notification answered;
  absl::Status status;
  path_.Read(kPeer, kSegid, kGrant, 0, Buf(4096), [&](absl::Status st) {
    status = st;
    answered.Notify();
  });
  path_.Shutdown();
  EXPECT_TRUE(answered.HasBeenNotified());
  EXPECT_TRUE(IsLostInFlight(status)) << status;
}

}  // namespace
}  // namespace tether
