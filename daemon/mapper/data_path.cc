#include "daemon/mapper/data_path.h"

#include <algorithm>
#include <atomic>
#include <memory>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/common/log.h"
#include "daemon/transport/wire_format.h"

namespace tether {

bool DataPath::UseRdma(uint32_t node, const DataEndpoint& ep) {
  if (rdma_ == nullptr || ep.rdma_address.empty()) return false;
  absl::MutexLock lock(&mu_);
  auto it = tcp_until_.find(node);
  if (it == tcp_until_.end()) return true;
  if (absl::Now() < it->second) return false;
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
                                   Transport::Done done, bool token_retried) {
  return [this, ep = std::move(ep), is_read, segid, grant, offset, dst, src, done = std::move(done),
          token_retried](absl::Status st) mutable {
    if (IsStaleToken(st) && forget_ && !token_retried) {
      // Refused at connect, before anything was sent, and on the caller's
      // thread with no transport lock held (rdma_transport.h): learn the
      // token again (the resolver's Hello) and reissue, once.
      TLOG_WARN("node %d: %s; asking it for a new token", ep->node_id, st.message());
      forget_(ep->node_id);
      Submit(is_read, ep->node_id, segid, grant, offset, dst, src, std::move(done), true);
      return;
    }
    if (st.ok() || !IsSetupFailure(st)) {
      std::move(done)(std::move(st));
      return;
    }
    bool first;
    {
      absl::MutexLock lock(&mu_);
      first = tcp_until_.find(ep->node_id) == tcp_until_.end();
      tcp_until_[ep->node_id] = absl::Now() + kRdmaRetryAfter;
    }
    if (first)
      TLOG_WARN("node %d: %s; using tcp for %d s", ep->node_id, st.message(),
                absl::ToInt64Seconds(kRdmaRetryAfter));
    SubmitOn(tcp_, *ep, is_read, segid, grant, offset, dst, src, std::move(done));
  };
}

void DataPath::Read(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                    absl::Span<uint8_t> dst, Transport::Done done) {
  Submit(true, node, segid, grant, offset, dst, {}, std::move(done));
}

void DataPath::Write(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                     absl::Span<const uint8_t> src, Transport::Done done) {
  Submit(false, node, segid, grant, offset, {}, src, std::move(done));
}

void DataPath::Submit(bool is_read, uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                      absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Transport::Done done,
                      bool token_retried) {
  if (node == local_node_) {
    std::move(done)(is_read ? local_server_->ReadBlocks(node, segid, grant, offset, dst)
                            : local_server_->WriteBlocks(node, segid, grant, offset, src));
    return;
  }
  auto ep_or = resolve_(node);
  if (!ep_or.ok()) {
    std::move(done)(ep_or.status());
    return;
  }
  // Held here too: `done` (and the fallback's reference) may go first.
  std::shared_ptr<const DataEndpoint> ep = *std::move(ep_or);
  Transport* transport = tcp_;
  if (UseRdma(node, *ep)) {
    transport = rdma_;
    done = FallBack(ep, is_read, segid, grant, offset, dst, src, std::move(done), token_retried);
  }
  SubmitOn(transport, *ep, is_read, segid, grant, offset, dst, src, std::move(done));
}

void DataPath::SubmitOn(Transport* transport, const DataEndpoint& ep, bool is_read, uint64_t segid,
                        uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                        absl::Span<const uint8_t> src, Transport::Done done) {
  if (is_read) {
    transport->Read(ep, segid, grant, offset, dst, std::move(done));
  } else {
    transport->Write(ep, segid, grant, offset, src, std::move(done));
  }
}

absl::Status DataPath::WriteSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                                 absl::Span<const uint8_t> src) {
  // All pieces in flight at once; the first error wins.
  struct State {
    absl::Mutex mu;
    absl::Status status;
    size_t left;
    absl::Notification done;
  };
  size_t pieces = (src.size() + kMaxPayload - 1) / kMaxPayload;
  if (pieces == 0) return absl::OkStatus();
  auto st = std::make_shared<State>();
  st->left = pieces;
  for (size_t off = 0; off < src.size(); off += kMaxPayload) {
    size_t len = std::min<size_t>(kMaxPayload, src.size() - off);
    Write(node, segid, grant, offset + off, src.subspan(off, len), [st](absl::Status s) {
      absl::MutexLock lock(&st->mu);
      if (!s.ok() && st->status.ok()) st->status = s;
      if (--st->left == 0) st->done.Notify();
    });
  }
  st->done.WaitForNotification();
  absl::MutexLock lock(&st->mu);
  return st->status;
}

}  // namespace tether
