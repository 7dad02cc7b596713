// The notice channel (peer/peer_invalidation_channel.h) with a fake fast
// path (fake_transport.h, as NoticeTransport) and a real PeerDirectory as
// the slow path. The directory's peer list is empty (or names a node that
// does not answer), so a notice that takes the slow path fails with
// EHOSTUNREACH ("... not in this node's peer list"): that answer is how
// these tests see which path a notice took.
//
//   this node            -> the local InvalidationTarget, inline
//   range_begin/_end     -> Notify on the fake, payload = EncodeNotice
//   revocation           -> gRPC (slow)
//   fast path kUnavailable -> gRPC (slow), once
//   SendToAll            -> one encoding; `done` once per node
#include "daemon/peer/peer_invalidation_channel.h"

#include <cerrno>
#include <map>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "daemon/common/errors.h"
#include "daemon/common/segid.h"
#include "daemon/peer/notice_codec.h"
#include "daemon/peer/notice_receiver.h"
#include "daemon/peer/peer_directory.h"
#include "daemon/peer/tls_config.h"
#include "tests/unit/fake_transport.h"

namespace tether {
namespace {

constexpr uint32_t kHome = 3;  // this node: the home that sends notices
constexpr absl::Duration kTimeout = absl::Seconds(2);

InvalidationNotice Notice(InvalidationNotice::Kind kind) {
  InvalidationNotice n;
  n.kind = kind;
  n.segid = MakeSegid(kHome, 5, 9);
  n.start = 4096;
  n.end = 5 * 4096;
  n.window = 17;
  n.home_node = kHome;
  n.reason = "exporter munmap";
  if (kind == InvalidationNotice::Kind::kEnd) n.gone = {{4096, 8192}};
  return n;
}

void ExpectSameNotice(const InvalidationNotice& got, const InvalidationNotice& want) {
  EXPECT_EQ(got.kind, want.kind);
  EXPECT_EQ(got.segid, want.segid);
  EXPECT_EQ(got.start, want.start);
  EXPECT_EQ(got.end, want.end);
  EXPECT_EQ(got.window, want.window);
  EXPECT_EQ(got.gone, want.gone);
  EXPECT_EQ(got.reason, want.reason);
  EXPECT_EQ(got.home_node, want.home_node);
}

// A node's InvalidationTarget: records what it handled, answers `answer`.
class RecordingTarget : public InvalidationTarget {
 public:
  absl::Status Handle(const InvalidationNotice& n) override {
    absl::MutexLock lock(&mu);
    handled.push_back(n);
    return answer;
  }
  std::vector<InvalidationNotice> Handled() {
    absl::MutexLock lock(&mu);
    return handled;
  }
  absl::Mutex mu;
  std::vector<InvalidationNotice> handled;
  absl::Status answer;
};

// The slow path's answer in these tests: PeerDirectory has no such peer.
// (Its errno alone would not do: a fast path's kUnavailable reads as
// EHOSTUNREACH too.)
::testing::AssertionResult WentByGrpc(const absl::Status& st) {
  if (ToErrno(st) == EHOSTUNREACH && absl::StrContains(st.message(), "peer list"))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "not PeerDirectory's answer: " << st;
}

// A Done that records how often it ran and with what.
struct Answer {
  int calls = 0;
  absl::Status status = absl::UnknownError("never answered");
  InvalidationChannel::Done Done() {
    return [this](absl::Status st) {
      ++calls;
      status = std::move(st);
    };
  }
};

// SendToAll's answers, by node.
struct NodeAnswers {
  absl::Mutex mu;
  std::map<uint32_t, std::vector<absl::Status>> by_node;
  InvalidationChannel::NodeDone Done() {
    return [this](uint32_t node, absl::Status st) {
      absl::MutexLock lock(&mu);
      by_node[node].push_back(std::move(st));
    };
  }
  std::map<uint32_t, std::vector<absl::Status>> Get() {
    absl::MutexLock lock(&mu);
    return by_node;
  }
};

// Plaintext gRPC: no TlsIdentity.
const TlsIdentity* Insecure() { return nullptr; }

class ChannelTest : public ::testing::Test {
 protected:
  RecordingTarget local_;
  FakeTransport fast_{"tcp", kHome};
  // No peers: every gRPC notice fails at once with EHOSTUNREACH.
  PeerDirectory peers_{kHome, 5, {}, Insecure(), 1000, nullptr};
  PeerInvalidationChannel channel_{kHome, &peers_, &fast_, &local_};
};

TEST_F(ChannelTest, ANoticeToThisNodeGoesToTheLocalTarget) {
  for (auto kind : {InvalidationNotice::Kind::kBegin, InvalidationNotice::Kind::kEnd,
                    InvalidationNotice::Kind::kRevoke}) {
    Answer a;
    channel_.Send(kHome, Notice(kind), kTimeout, a.Done());
    EXPECT_EQ(a.calls, 1) << "inline";
    EXPECT_TRUE(a.status.ok()) << a.status;
  }
  auto handled = local_.Handled();
  ASSERT_EQ(handled.size(), 3u);
  ExpectSameNotice(handled[0], Notice(InvalidationNotice::Kind::kBegin));
  ExpectSameNotice(handled[2], Notice(InvalidationNotice::Kind::kRevoke));
  EXPECT_EQ(fast_.count(), 0u) << "never over the transport";
  // The target's answer is the answer.
  local_.answer = ErrnoStatus(EIO, "write-back of kept-aside pages");
  Answer a;
  channel_.Send(kHome, Notice(InvalidationNotice::Kind::kBegin), kTimeout, a.Done());
  EXPECT_EQ(ToErrno(a.status), EIO);
}

TEST_F(ChannelTest, RangeBeginAndEndToAPeerGoAsNotices) {
  for (auto kind : {InvalidationNotice::Kind::kBegin, InvalidationNotice::Kind::kEnd}) {
    SCOPED_TRACE(static_cast<int>(kind));
    size_t before = fast_.count();
    Answer a;
    const InvalidationNotice n = Notice(kind);
    channel_.Send(2, n, kTimeout, a.Done());
    EXPECT_EQ(a.calls, 1);
    EXPECT_TRUE(a.status.ok()) << "the fast path's answer, not gRPC's: " << a.status;
    ASSERT_EQ(fast_.count(), before + 1);
    FakeRequest r = fast_.requests().back();
    EXPECT_EQ(r.kind, FakeRequest::Kind::kNotify);
    EXPECT_EQ(r.node, 2u);
    EXPECT_EQ(r.payload, EncodeNotice(n));
    auto decoded = DecodeNotice(
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(r.payload.data()), r.payload.size()));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    ExpectSameNotice(*decoded, n);
  }
  EXPECT_TRUE(local_.Handled().empty());
}

// The peer's own refusal (not kUnavailable) is its answer: not resent by gRPC.
TEST_F(ChannelTest, APeersRefusalOnTheFastPathIsTheAnswer) {
  fast_.ScriptNext(FakeTransport::Refused(EINVAL, "undecodable notice"));
  fast_.ScriptNext(FakeTransport::Refused(EACCES, "notice names another home"));
  Answer a, b;
  channel_.Send(2, Notice(InvalidationNotice::Kind::kBegin), kTimeout, a.Done());
  channel_.Send(2, Notice(InvalidationNotice::Kind::kEnd), kTimeout, b.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_EQ(ToErrno(a.status), EINVAL) << a.status;
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(ToErrno(b.status), EACCES) << b.status;
  EXPECT_EQ(fast_.count(), 2u);
}

TEST_F(ChannelTest, ARevocationGoesTheSlowPath) {
  Answer a;
  channel_.Send(2, Notice(InvalidationNotice::Kind::kRevoke), kTimeout, a.Done());
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(WentByGrpc(a.status)) << "gRPC, to a node not in the list";
  EXPECT_EQ(fast_.count(), 0u) << "revocations never go as a NOTICE frame";
}

TEST_F(ChannelTest, AnUnavailableFastPathFallsBackToTheSlowPath) {
  fast_.HoldCompletions();
  fast_.FailNode(2, FakeTransport::ConnectionLost());
  Answer a;
  channel_.Send(2, Notice(InvalidationNotice::Kind::kBegin), kTimeout, a.Done());
  EXPECT_EQ(a.calls, 0) << "waits for the fast path's answer";
  EXPECT_EQ(fast_.count(), 1u);
  fast_.ReleaseAll();
  EXPECT_EQ(a.calls, 1);
  EXPECT_TRUE(WentByGrpc(a.status)) << "resent by gRPC";
  EXPECT_EQ(fast_.count(), 1u) << "not resent on the fast path";

  // No connection at all (the transport answers kUnavailable at once).
  fast_.CompleteSynchronously();
  fast_.FailNode(4, absl::UnavailableError("no data connection to node 4"));
  Answer b;
  channel_.Send(4, Notice(InvalidationNotice::Kind::kEnd), kTimeout, b.Done());
  EXPECT_EQ(b.calls, 1);
  EXPECT_TRUE(WentByGrpc(b.status));
}

TEST_F(ChannelTest, WithoutAFastPathEveryNoticeToAPeerGoesByGrpc) {
  PeerInvalidationChannel slow_only(kHome, &peers_, nullptr, &local_);
  Answer a;
  slow_only.Send(2, Notice(InvalidationNotice::Kind::kBegin), kTimeout, a.Done());
  EXPECT_TRUE(WentByGrpc(a.status));
  Answer self;
  slow_only.Send(kHome, Notice(InvalidationNotice::Kind::kBegin), kTimeout, self.Done());
  EXPECT_TRUE(self.status.ok());
  EXPECT_EQ(local_.Handled().size(), 1u);
  EXPECT_EQ(fast_.count(), 0u);
}

TEST_F(ChannelTest, SendToAllEncodesOnceAndAnswersOncePerNode) {
  fast_.HoldCompletions();
  fast_.FailNode(5, FakeTransport::ConnectionLost());
  NodeAnswers answers;
  const InvalidationNotice n = Notice(InvalidationNotice::Kind::kBegin);
  channel_.SendToAll({2, kHome, 4, 5}, n, kTimeout, answers.Done());
  // This node answered inline; the peers' notices are on the wire.
  EXPECT_EQ(answers.Get().size(), 1u);
  EXPECT_EQ(local_.Handled().size(), 1u);
  auto reqs = fast_.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].node, 2u);
  EXPECT_EQ(reqs[1].node, 4u);
  EXPECT_EQ(reqs[2].node, 5u);
  for (const FakeRequest& r : reqs) {
    EXPECT_EQ(r.payload, EncodeNotice(n));
    // One encoding: every Notify was handed the same buffer. (Under ASan,
    // which CI runs, a freed buffer is quarantined, so encoding per node
    // could not hand out the same address twice.)
    EXPECT_EQ(r.data, reqs[0].data);
  }
  fast_.ReleaseAll();
  auto got = answers.Get();
  ASSERT_EQ(got.size(), 4u);
  for (uint32_t node : {2u, kHome, 4u, 5u}) ASSERT_EQ(got[node].size(), 1u) << node;
  EXPECT_TRUE(got[2][0].ok()) << got[2][0];
  EXPECT_TRUE(got[kHome][0].ok()) << got[kHome][0];
  EXPECT_TRUE(got[4][0].ok()) << got[4][0];
  EXPECT_TRUE(WentByGrpc(got[5][0])) << "node 5 fell back to gRPC";
  EXPECT_EQ(fast_.count(), 3u);

  // A revocation to all: nothing on the fast path, one answer per node.
  NodeAnswers revoked;
  channel_.SendToAll({2, kHome, 4}, Notice(InvalidationNotice::Kind::kRevoke), kTimeout,
                     revoked.Done());
  got = revoked.Get();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(WentByGrpc(got[2].at(0)));
  EXPECT_TRUE(WentByGrpc(got[4].at(0)));
  EXPECT_TRUE(got[kHome].at(0).ok());
  EXPECT_EQ(fast_.count(), 3u);
}

// End to end over the fake: the mapper node's NoticeReceiver (real) decodes
// what the channel encoded and hands it to that node's target; the fake's
// connection authenticates as the home, as the receiver checks.
TEST_F(ChannelTest, ANoticeReachesThePeersTargetThroughItsReceiver) {
  RecordingTarget mapper;
  NoticeReceiver receiver(&mapper);
  receiver.Start();
  fast_.ServeNotices(&receiver);
  const InvalidationNotice n = Notice(InvalidationNotice::Kind::kBegin);
  Answer a;
  channel_.Send(2, n, kTimeout, a.Done());
  EXPECT_TRUE(a.status.ok()) << a.status;
  auto handled = mapper.Handled();  // range_begin: handled before the answer
  ASSERT_EQ(handled.size(), 1u);
  ExpectSameNotice(handled[0], n);
  // The mapper's own failure is the answer, not a reason to resend by gRPC.
  mapper.answer = ErrnoStatus(ENOMEM, "zap");
  Answer b;
  channel_.Send(2, n, kTimeout, b.Done());
  EXPECT_EQ(ToErrno(b.status), ENOMEM) << b.status;
  receiver.Stop();
}

// A peer that is in the list but does not answer: the slow path waits for
// it within the notice's deadline, then fails as unreachable.
TEST(ChannelSlowPath, APeerThatDoesNotAnswerFailsWithinTheDeadline) {
  RecordingTarget local;
  FakeTransport fast("tcp", kHome);
  // Port 1 on loopback: nothing listens, connections are refused.
  PeerDirectory peers(kHome, 5, {{2, "127.0.0.1:1"}}, Insecure(), 500, nullptr);
  PeerInvalidationChannel channel(kHome, &peers, &fast, &local);
  absl::Notification answered;
  absl::Status status;
  channel.Send(2, Notice(InvalidationNotice::Kind::kRevoke), absl::Milliseconds(300),
               [&](absl::Status st) {
                 status = std::move(st);
                 answered.Notify();
               });
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(ToErrno(status), EHOSTUNREACH) << status;
  EXPECT_EQ(fast.count(), 0u);
  peers.Shutdown();
}

}  // namespace
}  // namespace tether
