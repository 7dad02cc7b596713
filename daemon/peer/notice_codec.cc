#include "daemon/peer/notice_codec.h"

#include <cerrno>

#include "daemon/common/errors.h"
#include "daemon/common/page.h"
#include "daemon/common/segid.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {
constexpr int kMaxGoneBounds = 2048;
}

void ToProto(const InvalidationNotice& n, peer::InvalidateRequest* out) {
  switch (n.kind) {
    case InvalidationNotice::Kind::kBegin: out->set_kind(peer::InvalidateRequest::BEGIN); break;
    case InvalidationNotice::Kind::kEnd: out->set_kind(peer::InvalidateRequest::END); break;
    case InvalidationNotice::Kind::kRevoke: out->set_kind(peer::InvalidateRequest::REVOKE); break;
  }
  out->set_segid(n.segid);
  out->set_start(n.start);
  out->set_end(n.end);
  out->set_window(n.window);
  for (const auto& [a, b] : n.gone) {
    out->add_gone(a);
    out->add_gone(b);
  }
  out->set_reason(n.reason);
  out->set_home_node(n.home_node);
}

absl::StatusOr<InvalidationNotice> FromProto(const peer::InvalidateRequest& req) {
  InvalidationNotice n;
  switch (req.kind()) {
    case peer::InvalidateRequest::BEGIN: n.kind = InvalidationNotice::Kind::kBegin; break;
    case peer::InvalidateRequest::END: n.kind = InvalidationNotice::Kind::kEnd; break;
    case peer::InvalidateRequest::REVOKE: n.kind = InvalidationNotice::Kind::kRevoke; break;
    default: return ErrnoStatus(EINVAL, "unknown notice kind");
  }
  SegidParts parts;
  if (!ParseSegid(req.segid(), &parts) || parts.node != req.home_node() ||
      req.start() > req.end() || req.start() % kPageSize || req.end() % kPageSize)
    return ErrnoStatus(EINVAL, "malformed invalidation");
  if (req.gone_size() % 2 != 0 || req.gone_size() > kMaxGoneBounds)
    return ErrnoStatus(EINVAL, "malformed gone ranges");
  n.segid = req.segid();
  n.start = req.start();
  n.end = req.end();
  n.window = req.window();
  for (int i = 0; i + 1 < req.gone_size(); i += 2)
    n.gone.emplace_back(req.gone(i), req.gone(i + 1));
  n.reason = req.reason();
  n.home_node = req.home_node();
  return n;
}

std::string EncodeNotice(const InvalidationNotice& n) {
  peer::InvalidateRequest req;
  ToProto(n, &req);
  return req.SerializeAsString();
}

absl::StatusOr<InvalidationNotice> DecodeNotice(absl::Span<const uint8_t> bytes) {
  peer::InvalidateRequest req;
  if (!req.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    return ErrnoStatus(EINVAL, "undecodable notice");
  return FromProto(req);
}

}  // namespace tether
