// FakeTransport: an in-memory Transport and NoticeTransport for unit tests.
//
// Why. Everything above the transports — DataPath's choice between this
// node, rdma and tcp and its fall back from rdma, the notice channel's fast
// path and its fall back to gRPC, the client-request handler's data path —
// is protocol logic: which request goes where, what happens when an answer
// is an error, that nothing is sent twice, that every `done` runs exactly
// once. None of it needs bytes on a socket to be tested, and a socket makes
// each such test slow (connection set-up), flaky (timing) and unable to
// produce the failures that matter most (an rdma connection that cannot be
// set up, a connection lost with a request in flight) on demand. eRPC
// tests its protocol code the same way, over a fake transport; here the
// fake is the other side of the `Transport` interface (transport.h), so
// the code under test is exactly what tetherd runs.
//
// What it does.
//   - Serves. Read/Write go to the BlockServer it is given (ServeBlocks),
//     as the node given at construction (what a real connection would
//     have authenticated as); notices (Notify) go to a NoticeServer
//     (ServeNotices). Without one, requests answer OK.
//   - Fails on script. ScriptNext(status) answers the next request with
//     `status` instead of serving it (FIFO; an OK entry means "serve it");
//     FailNode/FailAll answer every request to a node / every request
//     until Heal(); FailConnect for NoticeTransport::Connect. The statuses
//     a real transport produces are spelled once, below: SetupFailed()
//     (nothing was sent: IsSetupFailure() is true), Refused(errno) (the
//     home said no), ConnectionLost() (in flight when the connection
//     went: kUnavailable tagged LostInFlight, not a set-up failure),
//     NeverSent() (queued when it went: tagged NotSent).
//   - Records. Every request it saw, with a process-wide sequence number,
//     so a test can say which transport a request went over, in which
//     order across transports, and that no request was sent twice.
//   - Completes synchronously (the default: `done` runs inline, on the
//     caller's thread, before Read/Write/Notify return), or holds every
//     completion after HoldCompletions() until the test releases it
//     (Release(i), ReleaseAll()), in any order. A held request reaches the
//     BlockServer/NoticeServer only when released — "the answer arrives
//     now". A test that needs another thread (a blocking WriteSync) waits
//     with WaitForHeld(n), a condition wait, never a sleep: every test
//     built on it is deterministic.
//
// The rules it keeps, as the real transports do: `done` runs exactly once,
// and never under the fake's own lock (a `done` may call back into it, as
// DataPath's fall back does into the other transport). Disconnect(node)
// and Shutdown() fail the held requests they concern, as a lost connection
// does. A test that ends with completions still held has a bug (the code
// under test waits for an answer that never comes): the destructor reports
// it as a test failure instead of running them against destroyed objects.
//
// Thread safety: every method may be called from any thread.
#ifndef TETHER_TESTS_UNIT_FAKE_TRANSPORT_H_
#define TETHER_TESTS_UNIT_FAKE_TRANSPORT_H_

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "daemon/common/errors.h"
#include "daemon/transport/transport.h"

namespace tether {

// One request a FakeTransport saw.
struct FakeRequest {
  enum class Kind { kRead, kWrite, kNotify };
  Kind kind = Kind::kRead;
  bool diff = false;      // kWrite: a page diff (WriteDiff; `size` is its encoded size)
  std::string transport;  // the fake's name(): which transport it went over
  uint64_t seq = 0;       // order among all fakes' requests in this process
  uint32_t node = 0;      // the home (Read/Write) or the mapper node (Notify)
  std::string token;      // Read/Write: the endpoint's token, as given
  uint64_t segid = 0, grant = 0, offset = 0;
  uint64_t size = 0;           // bytes to read, write or notify
  std::string payload;         // Notify: a copy of the bytes
  const void* data = nullptr;  // the caller's buffer (identity, not contents)
};

class FakeTransport : public Transport, public NoticeTransport {
 public:
  using Done = Transport::Done;

  // Statuses as the real transports produce them.
  static absl::Status SetupFailed(absl::string_view why = "rdma_connect: no route") {
    return SetupFailure(ErrnoStatus(EHOSTUNREACH, why));
  }
  static absl::Status Refused(int err, absl::string_view why = "refused by the home") {
    return ErrnoStatus(err, why);
  }
  static absl::Status ConnectionLost() {
    return LostInFlight(absl::UnavailableError("connection lost with the request in flight"));
  }
  // Queued behind a connection that went (or never came up): never sent.
  static absl::Status NeverSent() {
    return NotSent(absl::UnavailableError("connection lost before the request was sent"));
  }

  // `name` is what name() says ("rdma", "tcp"); `local_node` the node its
  // connections authenticate as (BlockServer/NoticeServer see it).
  FakeTransport(std::string name, uint32_t local_node)
      : name_(std::move(name)), local_node_(local_node) {}

  ~FakeTransport() override {
    absl::MutexLock lock(&mu_);
    if (!held_.empty())
      ADD_FAILURE() << "FakeTransport '" << name_ << "' destroyed with " << held_.size()
                    << " completion(s) still held: the code under test never got its answer";
  }

  // --- What answers ---------------------------------------------------

  void ServeBlocks(BlockServer* server) {
    absl::MutexLock lock(&mu_);
    blocks_ = server;
  }
  void ServeNotices(NoticeServer* server) {
    absl::MutexLock lock(&mu_);
    notices_ = server;
  }
  // The next request (Read, Write or Notify) answers `status` without
  // being served; an OK `status` means "serve it as usual". FIFO, before
  // FailNode/FailAll.
  void ScriptNext(absl::Status status) {
    absl::MutexLock lock(&mu_);
    script_.push_back(std::move(status));
  }
  // Every request to `node` answers `status` until Heal().
  void FailNode(uint32_t node, absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_node_[node] = std::move(status);
  }
  // Every request answers `status` until Heal().
  void FailAll(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_all_ = std::move(status);
  }
  void Heal() {
    absl::MutexLock lock(&mu_);
    script_.clear();
    fail_node_.clear();
    fail_all_.reset();
  }
  // NoticeTransport::Connect answers `status` (OK by default).
  void FailConnect(absl::Status status) {
    absl::MutexLock lock(&mu_);
    connect_status_ = std::move(status);
  }

  // --- When it answers ------------------------------------------------

  // From now on completions wait for Release()/ReleaseAll().
  void HoldCompletions() {
    absl::MutexLock lock(&mu_);
    holding_ = true;
  }
  // From now on completions run inline (held ones stay held).
  void CompleteSynchronously() {
    absl::MutexLock lock(&mu_);
    holding_ = false;
  }
  size_t held() const {
    absl::MutexLock lock(&mu_);
    return held_.size();
  }
  // Blocks until at least `n` completions are held (a condition wait, for
  // code under test that runs on another thread). False on `timeout`,
  // which only a broken test reaches.
  bool WaitForHeld(size_t n, absl::Duration timeout = absl::Seconds(60)) const {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return held_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }
  // Delivers the `i`-th held completion (0: the oldest still held).
  void Release(size_t i = 0) {
    std::optional<Pending> p;
    {
      absl::MutexLock lock(&mu_);
      if (i >= held_.size()) {
        ADD_FAILURE() << "FakeTransport '" << name_ << "': no held completion #" << i << " (of "
                      << held_.size() << ")";
        return;
      }
      p.emplace(std::move(held_[i]));
      held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    Deliver(std::move(*p));
  }
  // Delivers every held completion, oldest first (including any that the
  // delivered ones cause to be held).
  void ReleaseAll() {
    while (held() > 0) Release(0);
  }

  // --- What it saw ----------------------------------------------------

  std::vector<FakeRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  size_t count(FakeRequest::Kind kind) const {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    for (const FakeRequest& r : requests_) n += r.kind == kind;
    return n;
  }
  size_t count() const {
    absl::MutexLock lock(&mu_);
    return requests_.size();
  }
  std::vector<uint32_t> connects() const {
    absl::MutexLock lock(&mu_);
    return connects_;
  }
  std::vector<uint32_t> disconnects() const {
    absl::MutexLock lock(&mu_);
    return disconnects_;
  }
  bool shut_down() const {
    absl::MutexLock lock(&mu_);
    return shut_down_;
  }

  // --- Transport ------------------------------------------------------

  const char* name() const override { return name_.c_str(); }
  absl::Status Listen(const std::string& address, std::string secret, BlockServer* server,
                      NoticeServer* notices) override {
    absl::MutexLock lock(&mu_);
    listening_ = address;
    return absl::OkStatus();
  }
  std::string bound_address() const override {
    absl::MutexLock lock(&mu_);
    return listening_;
  }
  void Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
            absl::Span<uint8_t> dst, Done done) override {
    Pending p;
    p.req = Describe(FakeRequest::Kind::kRead, home.node_id, segid, grant, offset, dst.size(),
                     dst.data());
    p.req.token = home.token;
    p.dst = dst;
    Submit(std::move(p), std::move(done));
  }
  void Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Done done) override {
    Pending p;
    p.req = Describe(FakeRequest::Kind::kWrite, home.node_id, segid, grant, offset, src.size(),
                     src.data());
    p.req.token = home.token;
    p.src = src;
    Submit(std::move(p), std::move(done));
  }
  void WriteDiff(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                 absl::Span<const uint8_t> diff, Done done) override {
    Pending p;
    p.req = Describe(FakeRequest::Kind::kWrite, home.node_id, segid, grant, offset, diff.size(),
                     diff.data());
    p.req.diff = true;
    p.req.token = home.token;
    p.src = diff;
    Submit(std::move(p), std::move(done));
  }
  // Fails the held requests to `node` with ConnectionLost().
  void Disconnect(uint32_t node) override {
    std::vector<Pending> lost;
    {
      absl::MutexLock lock(&mu_);
      disconnects_.push_back(node);
      for (auto it = held_.begin(); it != held_.end();) {
        if (it->req.node == node) {
          lost.push_back(std::move(*it));
          it = held_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (Pending& p : lost) std::move(p.done)(ConnectionLost());
  }
  // Fails every held request; later ones answer kUnavailable at once.
  void Shutdown() override {
    std::deque<Pending> lost;
    {
      absl::MutexLock lock(&mu_);
      shut_down_ = true;
      lost.swap(held_);
    }
    for (Pending& p : lost) std::move(p.done)(absl::UnavailableError("transport shutting down"));
  }

  // --- NoticeTransport ------------------------------------------------

  void Notify(uint32_t node, absl::Span<const uint8_t> payload, Done done) override {
    Pending p;
    p.req = Describe(FakeRequest::Kind::kNotify, node, 0, 0, 0, payload.size(), payload.data());
    // A real transport copies the payload into its frame before returning.
    p.req.payload.assign(reinterpret_cast<const char*>(payload.data()), payload.size());
    Submit(std::move(p), std::move(done));
  }
  absl::Status Connect(const DataEndpoint& peer) override {
    absl::MutexLock lock(&mu_);
    connects_.push_back(peer.node_id);
    return connect_status_;
  }

 private:
  struct Pending {
    FakeRequest req;
    bool serve = true;  // false: answer `status` without serving
    absl::Status status;
    absl::Span<uint8_t> dst;
    absl::Span<const uint8_t> src;
    Done done;
  };

  static uint64_t NextSeq() {
    static std::atomic<uint64_t> seq{0};
    return ++seq;
  }

  FakeRequest Describe(FakeRequest::Kind kind, uint32_t node, uint64_t segid, uint64_t grant,
                       uint64_t offset, uint64_t size, const void* data) const {
    FakeRequest r;
    r.kind = kind;
    r.transport = name_;
    r.node = node;
    r.segid = segid;
    r.grant = grant;
    r.offset = offset;
    r.size = size;
    r.data = data;
    return r;
  }

  // Records the request, decides its answer (script, then failures, else
  // serve), then holds it or delivers it at once (outside the lock).
  void Submit(Pending p, Done done) {
    p.done = std::move(done);
    {
      absl::MutexLock lock(&mu_);
      p.req.seq = NextSeq();
      requests_.push_back(p.req);
      if (shut_down_) {
        p.serve = false;
        p.status = absl::UnavailableError("transport shutting down");
      } else if (!script_.empty()) {
        p.status = std::move(script_.front());
        script_.pop_front();
        p.serve = p.status.ok();
      } else if (auto it = fail_node_.find(p.req.node); it != fail_node_.end()) {
        p.serve = false;
        p.status = it->second;
      } else if (fail_all_.has_value()) {
        p.serve = false;
        p.status = *fail_all_;
      }
      if (holding_ && !shut_down_) {
        held_.push_back(std::move(p));
        return;
      }
    }
    Deliver(std::move(p));
  }

  void Deliver(Pending p) {
    absl::Status st = p.status;
    if (p.serve) {
      BlockServer* blocks;
      NoticeServer* notices;
      {
        absl::MutexLock lock(&mu_);
        blocks = blocks_;
        notices = notices_;
      }
      const FakeRequest& r = p.req;
      switch (r.kind) {
        case FakeRequest::Kind::kRead:
          st = blocks ? blocks->ReadBlocks(local_node_, r.segid, r.grant, r.offset, p.dst)
                      : absl::OkStatus();
          break;
        case FakeRequest::Kind::kWrite:
          st = !blocks  ? absl::OkStatus()
               : r.diff ? blocks->WriteDiff(local_node_, r.segid, r.grant, r.offset, p.src)
                        : blocks->WriteBlocks(local_node_, r.segid, r.grant, r.offset, p.src);
          break;
        case FakeRequest::Kind::kNotify:
          st = notices ? notices->Notice(
                             local_node_,
                             absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(r.payload.data()),
                                                 r.payload.size()))
                       : absl::OkStatus();
          break;
      }
    }
    std::move(p.done)(std::move(st));
  }

  const std::string name_;
  const uint32_t local_node_;

  mutable absl::Mutex mu_;
  BlockServer* blocks_ ABSL_GUARDED_BY(mu_) = nullptr;
  NoticeServer* notices_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::deque<absl::Status> script_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, absl::Status> fail_node_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> fail_all_ ABSL_GUARDED_BY(mu_);
  absl::Status connect_status_ ABSL_GUARDED_BY(mu_);
  bool holding_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Pending> held_ ABSL_GUARDED_BY(mu_);
  std::vector<FakeRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> connects_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> disconnects_ ABSL_GUARDED_BY(mu_);
  std::string listening_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_TESTS_UNIT_FAKE_TRANSPORT_H_
