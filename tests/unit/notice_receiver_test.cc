// The invalidation notices' wire encoding (notice_codec) and a mapper
// node's receiver of the fast path (NoticeReceiver): what is accepted,
// what is refused, and on which thread each kind is handled.
#include "daemon/peer/notice_receiver.h"

#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/segid.h"
#include "daemon/common/status_macros.h"
#include "daemon/peer/notice_codec.h"

namespace tether {
namespace {

InvalidationNotice Begin(uint32_t home = 3) {
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kBegin;
  n.segid = MakeSegid(home, 7, 1);
  n.start = 4096;
  n.end = 3 * 4096;
  n.window = 42;
  n.home_node = home;
  return n;
}

absl::Span<const uint8_t> Bytes(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(NoticeCodec, RoundTrip) {
  InvalidationNotice n = Begin();
  n.kind = InvalidationNotice::Kind::kEnd;
  n.gone = {{4096, 8192}, {12288, 16384}};
  n.reason = "why";
  auto back = DecodeNotice(Bytes(EncodeNotice(n)));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, n.kind);
  EXPECT_EQ(back->segid, n.segid);
  EXPECT_EQ(back->start, n.start);
  EXPECT_EQ(back->end, n.end);
  EXPECT_EQ(back->window, n.window);
  EXPECT_EQ(back->gone, n.gone);
  EXPECT_EQ(back->reason, n.reason);
  EXPECT_EQ(back->home_node, n.home_node);
}

TEST(NoticeCodec, RefusesWhatNoHomeSends) {
  auto refused = [](const peer::InvalidateRequest& r) {
    return ToErrno(DecodeNotice(Bytes(r.SerializeAsString())).status()) == EINVAL;
  };
  peer::InvalidateRequest good;
  ToProto(Begin(), &good);
  EXPECT_FALSE(refused(good));
  peer::InvalidateRequest r = good;
  r.set_kind(static_cast<peer::InvalidateRequest::Kind>(9));
  EXPECT_TRUE(refused(r));
  r = good;
  r.set_home_node(4);  // the segid is node 3's
  EXPECT_TRUE(refused(r));
  r = good;
  r.set_start(100);  // unaligned
  EXPECT_TRUE(refused(r));
  r = good;
  r.set_start(8 * 4096);  // inverted
  EXPECT_TRUE(refused(r));
  r = good;
  r.add_gone(4096);  // an odd number of bounds
  EXPECT_TRUE(refused(r));
  r = good;
  for (int i = 0; i < 2050; ++i) r.add_gone(4096);
  EXPECT_TRUE(refused(r));
  const std::string garbage = "\xff\xff\xff\xff\x0f not a message";
  EXPECT_EQ(ToErrno(DecodeNotice(Bytes(garbage)).status()), EINVAL);
}

TEST(NoticeCodec, RandomBytesNeverCrash) {
  // As tests/fuzz/notice_codec_fuzz.cc, a few thousand inputs on every run:
  // random bytes, and valid encodings with bytes flipped.
  std::mt19937 rng(7);
  InvalidationNotice base = Begin();
  base.gone = {{0, 4096}};
  const std::string good = EncodeNotice(base);
  for (int i = 0; i < 5000; ++i) {
    std::string bytes;
    if (i % 2) {
      bytes.resize(rng() % 96);
      for (char& c : bytes) c = static_cast<char>(rng());
    } else {
      bytes = good;
      for (int k = 0; k < 3; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    auto n = DecodeNotice(Bytes(bytes));
    if (n.ok()) {
      EXPECT_LE(n->start, n->end);
      EXPECT_EQ(n->start % 4096, 0u);
      EXPECT_EQ(n->end % 4096, 0u);
    } else {
      EXPECT_EQ(ToErrno(n.status()), EINVAL);
    }
  }
}

// Records which notices it handled, on which thread; BEGIN answers `answer`.
class FakeTarget : public InvalidationTarget {
 public:
  absl::Status Handle(const InvalidationNotice& n) override {
    absl::MutexLock lock(&mu);
    kinds.push_back(n.kind);
    threads.push_back(std::this_thread::get_id());
    return n.kind == InvalidationNotice::Kind::kBegin ? answer : absl::OkStatus();
  }
  size_t handled() {
    absl::MutexLock lock(&mu);
    return kinds.size();
  }
  absl::Mutex mu;
  std::vector<InvalidationNotice::Kind> kinds;
  std::vector<std::thread::id> threads;
  absl::Status answer;
};

// BEGIN and END are handed to the target on the serving thread (the target
// queues an END: notice.h), REVOKE on the receiver's own thread, in order.
TEST(NoticeReceiver, BeginAndEndInlineRevokeOnItsOwnThread) {
  FakeTarget target;
  NoticeReceiver rx(&target);
  rx.Start();
  InvalidationNotice b = Begin(), e = Begin(), r = Begin();
  e.kind = InvalidationNotice::Kind::kEnd;
  r.kind = InvalidationNotice::Kind::kRevoke;
  ASSERT_TRUE(rx.Notice(3, Bytes(EncodeNotice(b))).ok());
  ASSERT_EQ(target.handled(), 1u);  // before the answer: the ack means it
  EXPECT_EQ(target.threads[0], std::this_thread::get_id());
  ASSERT_TRUE(rx.Notice(3, Bytes(EncodeNotice(e))).ok());
  ASSERT_EQ(target.handled(), 2u);  // handed over before the answer
  EXPECT_EQ(target.kinds[1], InvalidationNotice::Kind::kEnd);
  EXPECT_EQ(target.threads[1], std::this_thread::get_id());
  ASSERT_TRUE(rx.Notice(3, Bytes(EncodeNotice(r))).ok());
  rx.Stop();  // handles what is queued first
  ASSERT_EQ(target.handled(), 3u);
  EXPECT_EQ(target.kinds[2], InvalidationNotice::Kind::kRevoke);
  EXPECT_NE(target.threads[2], std::this_thread::get_id());
  // Stopped: no revocation is queued any more.
  EXPECT_FALSE(rx.Notice(3, Bytes(EncodeNotice(r))).ok());
}

TEST(NoticeReceiver, RefusalsChangeNothing) {
  FakeTarget target;
  NoticeReceiver rx(&target);
  rx.Start();
  // A node speaks only for itself: node 5's connection cannot send node 3's.
  EXPECT_EQ(ToErrno(rx.Notice(5, Bytes(EncodeNotice(Begin())))), EACCES);
  EXPECT_EQ(ToErrno(rx.Notice(3, Bytes(std::string("\x08\xff\xff", 3)))), EINVAL);
  EXPECT_EQ(target.handled(), 0u);
  // The target's own failure never reads as a lost connection (which the
  // home would answer by sending the notice again by gRPC).
  target.answer = ErrnoStatus(ECONNRESET, "write-back");
  absl::Status st = rx.Notice(3, Bytes(EncodeNotice(Begin())));
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(absl::IsUnavailable(st)) << st;
}

}  // namespace
}  // namespace tether
