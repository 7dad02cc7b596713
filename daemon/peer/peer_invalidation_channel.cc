#include "daemon/peer/peer_invalidation_channel.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "daemon/common/log.h"
#include "daemon/common/thread_name.h"
#include "daemon/peer/notice_codec.h"
#include "daemon/peer/peer_directory.h"
#include "daemon/transport/transport.h"

namespace tether {
namespace {
constexpr absl::Duration kRetryAfter = absl::Seconds(5);
}  // namespace

PeerInvalidationChannel::PeerInvalidationChannel(uint32_t self, PeerDirectory* peers,
                                                 NoticeTransport* fast, InvalidationTarget* local)
    : self_(self), peers_(peers), fast_(fast), local_(local) {}

void PeerInvalidationChannel::Start() {
  thread_ = std::thread([this] {
    NameThisThread("tt-peer-inval");
    Run();
  });
}

PeerInvalidationChannel::~PeerInvalidationChannel() { Stop(); }

void PeerInvalidationChannel::Stop() {
  to_connect_.Stop();
  if (thread_.joinable()) thread_.join();
}

bool PeerInvalidationChannel::TakesSlowPath(uint32_t node, const InvalidationNotice& n) const {
  return node == self_ || fast_ == nullptr || n.kind == InvalidationNotice::Kind::kRevoke;
}

void PeerInvalidationChannel::Slow(uint32_t node, const InvalidationNotice& n,
                                   absl::Duration timeout, Done done) {
  if (node == self_) {
    std::move(done)(local_->Handle(n));
    return;
  }
  peers_->Invalidate(node, n, timeout, std::move(done));
}

void PeerInvalidationChannel::Notify(uint32_t node, std::shared_ptr<const InvalidationNotice> n,
                                     const std::string& payload, absl::Duration timeout,
                                     Done done) {
  fast_->Notify(
      node, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
      [this, node, n = std::move(n), timeout, done = std::move(done)](absl::Status st) mutable {
        // kUnavailable: no connection (yet), or lost with the notice
        // in flight; the receiver never answers with it.
        if (!absl::IsUnavailable(st)) {
          std::move(done)(st);
          return;
        }
        Connect(node);
        peers_->Invalidate(node, *n, timeout, std::move(done));
      });
}

void PeerInvalidationChannel::Send(uint32_t node, const InvalidationNotice& n,
                                   absl::Duration timeout, Done done) {
  if (TakesSlowPath(node, n)) {
    Slow(node, n, timeout, std::move(done));
    return;
  }
  Notify(node, std::make_shared<const InvalidationNotice>(n), EncodeNotice(n), timeout,
         std::move(done));
}

void PeerInvalidationChannel::SendToAll(const std::vector<uint32_t>& nodes,
                                        const InvalidationNotice& n, absl::Duration timeout,
                                        NodeDone done) {
  // One encoding and one copy (kept for a gRPC resend) per fan-out.
  std::shared_ptr<const InvalidationNotice> shared;
  std::string payload;
  for (uint32_t node : nodes) {
    Done one = [done, node](absl::Status st) { done(node, std::move(st)); };
    if (TakesSlowPath(node, n)) {
      Slow(node, n, timeout, std::move(one));
      continue;
    }
    if (!shared) {
      shared = std::make_shared<const InvalidationNotice>(n);
      payload = EncodeNotice(n);
    }
    Notify(node, shared, payload, timeout, std::move(one));
  }
}

void PeerInvalidationChannel::Prepare(uint32_t node) {
  if (node == self_) return;
  peers_->Connect(node);
  Connect(node);
}

void PeerInvalidationChannel::Connect(uint32_t node) {
  if (fast_ == nullptr) return;
  absl::MutexLock lock(&mu_);
  auto it = retry_after_.find(node);
  if (it != retry_after_.end() && absl::Now() < it->second) return;
  if (!queued_.insert(node).second) return;
  if (!to_connect_.Push(node)) queued_.erase(node);  // stopped
}

void PeerInvalidationChannel::Run() {
  while (std::optional<uint32_t> next = to_connect_.Pop()) {
    const uint32_t node = *next;
    // Twice: a token cached from before the peer restarted is refused once.
    absl::Status st;
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto ep = peers_->Endpoint(node);
      st = ep.ok() ? fast_->Connect(**ep) : ep.status();
      if (st.ok()) break;
      peers_->Forget(node);
    }
    if (!st.ok())
      TLOG_INFO("notice connection to node %d: %s (its notices go by gRPC; next try in %d s)", node,
                st.ToString(), absl::ToInt64Seconds(kRetryAfter));
    absl::MutexLock lock(&mu_);
    queued_.erase(node);
    if (st.ok())
      retry_after_.erase(node);
    else
      retry_after_[node] = absl::Now() + kRetryAfter;
  }
}

}  // namespace tether
