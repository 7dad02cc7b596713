#include "daemon/mapper/data_path.h"

#include <algorithm>
#include <atomic>
#include <memory>

#include "absl/synchronization/notification.h"
#include "daemon/transport/wire_format.h"

namespace tether {

void DataPath::Read(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                    absl::Span<uint8_t> dst, Transport::Done done) {
  if (node == local_node_) {
    std::move(done)(local_server_->ReadBlocks(node, segid, grant, offset, dst));
    return;
  }
  auto ep = resolve_(node);
  if (!ep.ok()) {
    std::move(done)(ep.status());
    return;
  }
  transport_->Read(*ep, segid, grant, offset, dst, std::move(done));
}

void DataPath::Write(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                     absl::Span<const uint8_t> src, Transport::Done done) {
  if (node == local_node_) {
    std::move(done)(local_server_->WriteBlocks(node, segid, grant, offset, src));
    return;
  }
  auto ep = resolve_(node);
  if (!ep.ok()) {
    std::move(done)(ep.status());
    return;
  }
  transport_->Write(*ep, segid, grant, offset, src, std::move(done));
}

absl::Status DataPath::WriteSync(uint32_t node, uint64_t segid, uint64_t grant,
                                 uint64_t offset, absl::Span<const uint8_t> src) {
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
