#include "daemon/peer/notice_receiver.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"
#include "daemon/peer/notice_codec.h"

namespace tether {

NoticeReceiver::NoticeReceiver(InvalidationTarget* target) : target_(target) {}

void NoticeReceiver::Start() {
  thread_ = std::thread([this] {
    NameThisThread("tt-notice-rx");
    Run();
  });
}

NoticeReceiver::~NoticeReceiver() { Stop(); }

void NoticeReceiver::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status NoticeReceiver::Notice(uint32_t peer_node, absl::Span<const uint8_t> payload) {
  auto n = DecodeNotice(payload);
  if (!n.ok()) return n.status();
  // As CallerIsNode on the gRPC path: a node speaks only for itself.
  if (n->home_node != peer_node)
    return ErrnoStatus(
        EACCES, absl::StrFormat("node %d sent a notice as node %d", peer_node, n->home_node));
  if (n->kind == InvalidationNotice::Kind::kBegin) {
    absl::Status st = target_->Handle(*n);
    // Keep the codes the sender could mistake for a lost connection out.
    if (!st.ok() && absl::IsUnavailable(st)) return ErrnoStatus(EIO, st.message());
    return st;
  }
  if (n->kind == InvalidationNotice::Kind::kEnd) {
    // The target only queues an END (notice.h), in arrival order: handing
    // it over here saves a thread hop per window on the exporter's path.
    absl::Status st = target_->Handle(*n);
    if (!st.ok())
      TLOG_WARN("range_end for segment %#x from node %d: %s", n->segid, n->home_node,
                st.ToString());
    return absl::OkStatus();
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return ErrnoStatus(ESHUTDOWN, "shutting down");
  queue_.push_back(*std::move(n));
  return absl::OkStatus();
}

void NoticeReceiver::Run() {
  while (true) {
    InvalidationNotice n;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](NoticeReceiver* r)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) { return r->stopping_ || !r->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping, nothing left
      n = std::move(queue_.front());
      queue_.pop_front();
    }
    absl::Status st = target_->Handle(n);
    if (!st.ok())
      TLOG_WARN("notice kind %d for segment %#x from node %d: %s", static_cast<int>(n.kind),
                n.segid, n.home_node, st.ToString());
  }
}

}  // namespace tether
