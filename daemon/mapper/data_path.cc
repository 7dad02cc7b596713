#include "daemon/mapper/data_path.h"

#include <algorithm>
#include <atomic>
#include <memory>

#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page_diff.h"
#include "daemon/common/thread_name.h"
#include "daemon/mapper/mapper_metrics.h"
#include "daemon/transport/wire_format.h"

namespace tether {

std::optional<absl::Duration> RetryPolicy::Next(const absl::Status& status, bool is_read,
                                                int attempts, absl::Duration elapsed) const {
  if (status.ok()) return std::nullopt;
  // Nothing reached the home, or a read (repeating one changes nothing).
  if (!IsNotSent(status) && !(is_read && IsLostInFlight(status))) return std::nullopt;
  absl::Duration delay = absl::Milliseconds(50) * (int64_t{1} << std::min(attempts, 5));
  delay = std::min(delay, absl::Seconds(1));
  if (elapsed + delay > budget) return std::nullopt;
  return delay;
}

// A request and what its tries so far learned.
struct DataPath::Attempt {
  Attempt(bool is_read, uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
          absl::Span<uint8_t> dst, absl::Span<const uint8_t> src)
      : is_read(is_read),
        node(node),
        segid(segid),
        grant(grant),
        offset(offset),
        dst(dst),
        src(src) {}
  const bool is_read;
  const uint32_t node;
  const uint64_t segid, grant, offset;
  const absl::Span<uint8_t> dst;
  const absl::Span<const uint8_t> src;
  Transport::Done done;
  // Set instead of `done` by ReadInPlace: handed the bytes where the
  // transport has them (`data`, set by the try that succeeded; valid only
  // until read_done returns, so Finished calls it inline on success).
  Transport::ReadDone read_done;
  absl::Span<const uint8_t> data;
  int failures = 0;
  absl::Time first_failure;
  bool token_retried = false;  // a stale-token refusal was answered with a new Hello
  bool diff = false;           // a write whose `src` is a page diff (WriteDiff)
  // The transport of the try that completed (the metrics' label). Set by
  // Try before submitting, and by the fallback to tcp — which runs before
  // that try's completion, on the same chain — read in Finished.
  MapperMetrics::Via via = MapperMetrics::kTcp;
};

namespace {
// Bytes moved by a request that succeeded, by home and transport: two
// relaxed adds on a lock-free table (mapper_metrics.h), per request.
void CountMoved(bool is_read, uint32_t node, MapperMetrics::Via via, size_t bytes) {
  const MapperMetrics& m = Mapper();
  (is_read ? m.fetched_bytes : m.written_back_bytes)
      ->Get(MapperMetrics::DataKey(node, via))
      ->Add(bytes);
  if (!is_read) m.written_back_total->Add(bytes);
}
}  // namespace

// Runs scheduled retries at their time on one thread (the default
// Scheduler). Thread contract: Schedule from any thread; Stop once.
class DataPath::Timer {
 public:
  Timer()
      : thread_([this] {
          NameThisThread("tt-retry");
          Loop();
        }) {}
  ~Timer() { Stop(); }
  void Schedule(absl::Duration delay, absl::AnyInvocable<void(bool)> fn) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        due_.emplace(absl::Now() + delay, std::move(fn));
        cv_.Signal();
        return;
      }
    }
    fn(true);  // too late: as if Stop had found it
  }
  // Cancels what is pending (each gets fn(true), here) and joins.
  void Stop() {
    std::multimap<absl::Time, absl::AnyInvocable<void(bool)>> left;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      stopping_ = true;
      cv_.Signal();
    }
    thread_.join();
    {
      absl::MutexLock lock(&mu_);
      left.swap(due_);
    }
    for (auto& [t, fn] : left) fn(true);
  }

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      absl::Time now = absl::Now();
      if (!due_.empty() && due_.begin()->first <= now) {
        auto fn = std::move(due_.begin()->second);
        due_.erase(due_.begin());
        mu_.Unlock();
        fn(false);
        mu_.Lock();
        continue;
      }
      absl::Time until = due_.empty() ? now + absl::Seconds(1) : due_.begin()->first;
      cv_.WaitWithDeadline(&mu_, until);
    }
  }

  absl::Mutex mu_;
  absl::CondVar cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::multimap<absl::Time, absl::AnyInvocable<void(bool)>> due_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: starts after the fields above exist
};

DataPath::DataPath(uint32_t local_node, BlockServer* local_server, Transport* tcp, Transport* rdma,
                   EndpointResolver resolve)
    : DataPath(local_node, local_server, tcp, rdma, std::move(resolve), Options()) {}

DataPath::DataPath(uint32_t local_node, BlockServer* local_server, Transport* tcp, Transport* rdma,
                   EndpointResolver resolve, Options options)
    : local_node_(local_node),
      local_server_(local_server),
      tcp_(tcp),
      rdma_(rdma),
      resolve_(std::move(resolve)),
      forget_(std::move(options.forget)),
      policy_{options.retry_budget},
      rdma_retry_after_(options.rdma_retry_after),
      clock_(options.clock),
      schedule_(std::move(options.schedule)) {
  if (!schedule_) {
    timer_ = std::make_unique<Timer>();
    schedule_ = [timer = timer_.get()](absl::Duration d, absl::AnyInvocable<void(bool)> fn) {
      timer->Schedule(d, std::move(fn));
    };
  }
}

DataPath::~DataPath() { Shutdown(); }

void DataPath::Shutdown() {
  if (shut_down_.exchange(true)) return;
  if (timer_) timer_->Stop();
}

bool DataPath::UseRdma(uint32_t node, const DataEndpoint& ep) {
  if (rdma_ == nullptr || ep.rdma_address.empty()) return false;
  absl::MutexLock lock(&mu_);
  auto it = tcp_until_.find(node);
  if (it == tcp_until_.end()) return true;
  // A restarted peer is another daemon: what its predecessor's rdma set-up
  // did (typically "no listener" while it was down) says nothing about it.
  const bool restarted = ep.incarnation != 0 && ep.incarnation != it->second.incarnation;
  if (!restarted && clock_->Now() < it->second.until) return false;
  tcp_until_.erase(it);
  return true;
}

std::string DataPath::TransportFor(uint32_t node, const DataEndpoint& ep) {
  if (node == local_node_) return "local";
  return UseRdma(node, ep) ? "rdma" : "tcp";
}

Transport::Done DataPath::FallBack(std::shared_ptr<const DataEndpoint> ep, bool is_read,
                                   uint64_t segid, uint64_t grant, uint64_t offset,
                                   absl::Span<uint8_t> dst, absl::Span<const uint8_t> src,
                                   Transport::Done done, bool diff, MapperMetrics::Via* via) {
  return [this, ep = std::move(ep), is_read, segid, grant, offset, dst, src, diff, via,
          done = std::move(done)](absl::Status st) mutable {
    if (st.ok() || !IsSetupFailure(st)) {
      std::move(done)(std::move(st));
      return;
    }
    NoteRdmaSetupFailure(*ep, st);
    if (via) *via = MapperMetrics::kTcp;
    SubmitOn(tcp_, *ep, is_read, segid, grant, offset, dst, src, std::move(done), diff);
  };
}

void DataPath::NoteRdmaSetupFailure(const DataEndpoint& ep, const absl::Status& st) {
  bool first;
  {
    absl::MutexLock lock(&mu_);
    first = tcp_until_.find(ep.node_id) == tcp_until_.end();
    tcp_until_[ep.node_id] = {clock_->Now() + rdma_retry_after_, ep.incarnation};
  }
  Mapper().rdma_fallbacks->Add();
  if (first)
    TLOG_WARN("node %d: %s; using tcp for %s", ep.node_id, st.message(),
              absl::FormatDuration(rdma_retry_after_));
}

void DataPath::ReadInPlace(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                           absl::Span<uint8_t> dst, Transport::ReadDone done) {
  if (node == local_node_) {
    // This node's own home: read straight into `dst`.
    absl::Status st = local_server_->ReadBlocks(node, segid, grant, offset, dst);
    absl::Span<const uint8_t> data;
    if (st.ok()) data = dst;
    if (st.ok()) CountMoved(true, node, MapperMetrics::kLocal, dst.size());
    std::move(done)(std::move(st), data);
    return;
  }
  // The same retries as Read (Finished): only the submission differs (Try).
  auto a =
      std::make_shared<Attempt>(true, node, segid, grant, offset, dst, absl::Span<const uint8_t>());
  a->read_done = std::move(done);
  Try(std::move(a));
}

void DataPath::Read(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                    absl::Span<uint8_t> dst, Transport::Done done) {
  Submit(true, node, segid, grant, offset, dst, {}, std::move(done));
}

void DataPath::Write(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                     absl::Span<const uint8_t> src, Transport::Done done) {
  Submit(false, node, segid, grant, offset, {}, src, std::move(done));
}

void DataPath::WriteDiff(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> diff, Transport::Done done) {
  Submit(false, node, segid, grant, offset, {}, diff, std::move(done), true);
}

void DataPath::Submit(bool is_read, uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                      absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Transport::Done done,
                      bool diff) {
  if (node == local_node_) {
    // This node's own home: the registry applies a diff as it does one
    // from another node (page by page, under its page locks).
    absl::Status st = is_read ? local_server_->ReadBlocks(node, segid, grant, offset, dst)
                      : diff  ? local_server_->WriteDiff(node, segid, grant, offset, src)
                              : local_server_->WriteBlocks(node, segid, grant, offset, src);
    if (st.ok())
      CountMoved(is_read, node, MapperMetrics::kLocal, is_read ? dst.size() : src.size());
    std::move(done)(std::move(st));
    return;
  }
  auto a = std::make_shared<Attempt>(is_read, node, segid, grant, offset, dst, src);
  a->diff = diff;
  a->done = std::move(done);
  Try(std::move(a));
}

void DataPath::Finished(std::shared_ptr<Attempt> a, absl::Status st) {
  if (IsStaleToken(st) && forget_ && !a->token_retried && !shut_down_.load()) {
    // Refused at connect, before anything was sent: the home restarted with
    // a new secret since its Hello. Learn the token again (the resolver's
    // next Hello) and reissue, once — from the timer, never inline: this
    // may run on a transport's thread, and the Hello waits.
    TLOG_WARN("node %d: %s; asking it for a new token", a->node, st.message());
    forget_(a->node);
    a->token_retried = true;
    schedule_(absl::ZeroDuration(), [this, a, st](bool cancelled) mutable {
      if (cancelled) {
        Finished(std::move(a), std::move(st));
        return;
      }
      Try(std::move(a));
    });
    return;
  }
  absl::Time now = clock_->Now();
  if (!st.ok() && a->failures == 0) a->first_failure = now;
  std::optional<absl::Duration> delay;
  if (!shut_down_.load())
    delay = policy_.Next(st, a->is_read, a->failures,
                         st.ok() ? absl::ZeroDuration() : now - a->first_failure);
  if (delay) {
    int n;
    {
      absl::MutexLock lock(&mu_);
      n = a->failures == 0 ? ++retrying_[a->node] : retrying_[a->node];
    }
    if (a->failures == 0 && n == 1)
      TLOG_WARN("node %d: %s; sending again for up to %s", a->node, st.message(),
                absl::FormatDuration(policy_.budget));
    ++a->failures;
    // Never inline: `done` may run on a transport's thread, which must not
    // wait, and a lost connection fails every request it held at once.
    schedule_(*delay, [this, a, st](bool cancelled) mutable {
      if (cancelled) {
        Finished(std::move(a), std::move(st));  // shut down: no retry now
        return;
      }
      Try(std::move(a));
    });
    return;
  }
  if (a->failures > 0) {
    absl::MutexLock lock(&mu_);
    if (auto it = retrying_.find(a->node); it != retrying_.end() && --it->second == 0) {
      retrying_.erase(it);
      if (st.ok()) TLOG_INFO("node %d: requests answered again", a->node);
    }
  }
  if (!st.ok() && !a->is_read && IsLostInFlight(st)) {
    // It may have been applied: only the caller knows whether this copy is
    // still the newest (fault_writeback.cc re-checks before re-sending).
    st = Retry(absl::StrCat("write-back lost in flight: ", st.message()));
  } else if (!st.ok() && a->failures > 0) {
    TLOG_WARN("node %d: gave up after %d retries in %s: %s", a->node, a->failures,
              absl::FormatDuration(absl::Floor(now - a->first_failure, absl::Milliseconds(1))),
              st.message());
  }
  if (st.ok()) CountMoved(a->is_read, a->node, a->via, a->is_read ? a->dst.size() : a->src.size());
  if (a->read_done) {
    absl::Span<const uint8_t> data = st.ok() ? a->data : absl::Span<const uint8_t>();
    std::move(a->read_done)(std::move(st), data);
    return;
  }
  std::move(a->done)(std::move(st));
}

void DataPath::Try(std::shared_ptr<Attempt> a) {
  const bool is_read = a->is_read;
  const uint32_t node = a->node;
  const uint64_t segid = a->segid, grant = a->grant, offset = a->offset;
  const absl::Span<uint8_t> dst = a->dst;
  const absl::Span<const uint8_t> src = a->src;
  Transport::Done done = [this, a](absl::Status st) mutable {
    Finished(std::move(a), std::move(st));
  };
  auto ep_or = resolve_(node);
  if (!ep_or.ok()) {
    std::move(done)(ep_or.status());
    return;
  }
  // Held here too: `done` (and the fallback's reference) may go first.
  std::shared_ptr<const DataEndpoint> ep = *std::move(ep_or);
  if (a->read_done) {
    TryInPlace(std::move(a), std::move(ep));
    return;
  }
  Transport* transport = tcp_;
  a->via = MapperMetrics::kTcp;
  if (UseRdma(node, *ep)) {
    transport = rdma_;
    a->via = MapperMetrics::kRdma;
    done = FallBack(ep, is_read, segid, grant, offset, dst, src, std::move(done), a->diff, &a->via);
  }
  SubmitOn(transport, *ep, is_read, segid, grant, offset, dst, src, std::move(done), a->diff);
}

void DataPath::TryInPlace(std::shared_ptr<Attempt> a, std::shared_ptr<const DataEndpoint> ep) {
  // tcp (or after an rdma set-up failure, as FallBack): a plain Read into
  // `dst`, whose bytes are then the answer.
  auto by_tcp = [this](std::shared_ptr<Attempt> a, const DataEndpoint& ep) {
    a->via = MapperMetrics::kTcp;
    tcp_->Read(ep, a->segid, a->grant, a->offset, a->dst, [this, a](absl::Status st) mutable {
      if (st.ok()) a->data = a->dst;
      Finished(std::move(a), std::move(st));
    });
  };
  if (!UseRdma(a->node, *ep)) {
    by_tcp(std::move(a), *ep);
    return;
  }
  const uint64_t segid = a->segid, grant = a->grant, offset = a->offset;
  const absl::Span<uint8_t> dst = a->dst;
  a->via = MapperMetrics::kRdma;
  rdma_->ReadInPlace(
      *ep, segid, grant, offset, dst,
      [this, a, ep, by_tcp](absl::Status st, absl::Span<const uint8_t> data) mutable {
        if (!st.ok() && IsSetupFailure(st)) {
          NoteRdmaSetupFailure(*ep, st);
          by_tcp(std::move(a), *ep);
          return;
        }
        // On success Finished hands `data` on inline, while
        // it is still valid.
        if (st.ok()) a->data = data;
        Finished(std::move(a), std::move(st));
      });
}

void DataPath::SubmitOn(Transport* transport, const DataEndpoint& ep, bool is_read, uint64_t segid,
                        uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                        absl::Span<const uint8_t> src, Transport::Done done, bool diff) {
  if (is_read) {
    transport->Read(ep, segid, grant, offset, dst, std::move(done));
  } else if (diff) {
    transport->WriteDiff(ep, segid, grant, offset, src, std::move(done));
  } else {
    transport->Write(ep, segid, grant, offset, src, std::move(done));
  }
}

namespace {
// Sends `n` pieces all at once (`send(i, done)` issues piece i) and waits
// until every one is answered; the first error wins. WriteSync's and
// WriteDiffSync's wait: the pieces' answers arrive on transport threads
// in any order.
absl::Status AllInFlight(size_t n, absl::FunctionRef<void(size_t, Transport::Done)> send) {
  struct State {
    absl::Mutex mu;
    absl::Status status;
    size_t left;
    absl::Notification done;
  };
  if (n == 0) return absl::OkStatus();
  auto st = std::make_shared<State>();
  st->left = n;
  for (size_t i = 0; i < n; ++i) {
    send(i, [st](absl::Status s) {
      absl::MutexLock lock(&st->mu);
      if (!s.ok() && st->status.ok()) st->status = s;
      if (--st->left == 0) st->done.Notify();
    });
  }
  st->done.WaitForNotification();
  absl::MutexLock lock(&st->mu);
  return st->status;
}
}  // namespace

absl::Status DataPath::WriteSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                                 absl::Span<const uint8_t> src) {
  // Pieces of at most kMaxPayload.
  const size_t pieces = (src.size() + kMaxPayload - 1) / kMaxPayload;
  return AllInFlight(pieces, [&](size_t i, Transport::Done done) {
    const size_t off = i * kMaxPayload;
    Write(node, segid, grant, offset + off,
          src.subspan(off, std::min<size_t>(kMaxPayload, src.size() - off)), std::move(done));
  });
}

absl::Status DataPath::WriteDiffSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                                     absl::Span<const uint8_t> diff) {
  // Pieces cut at page entries, each a diff of the same base offset.
  const std::vector<std::pair<size_t, size_t>> pieces = SplitDiff(diff, kMaxPayload);
  return AllInFlight(pieces.size(), [&](size_t i, Transport::Done done) {
    WriteDiff(node, segid, grant, offset, diff.subspan(pieces[i].first, pieces[i].second),
              std::move(done));
  });
}

}  // namespace tether
