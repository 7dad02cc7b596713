// Invalidation notices on the wire: the Peer service's InvalidateRequest
// message, whether it travels as a gRPC call or as the payload of a data
// connection's NOTICE_REQ frame (TcpTransport::Notify). Both receivers
// validate with FromProto, so a notice is accepted or refused the same way
// whichever path brought it.
//
// Thread contract: pure functions on values.
#ifndef TETHER_DAEMON_PEER_NOTICE_CODEC_H_
#define TETHER_DAEMON_PEER_NOTICE_CODEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/invalidation/notice.h"
#include "peer.pb.h"

namespace tether {

void ToProto(const InvalidationNotice& n, peer::InvalidateRequest* out);
// EINVAL for anything a well-behaved home never sends: unknown kind, a
// segid that is not the home's, unaligned or inverted ranges, odd or too
// many gone bounds.
absl::StatusOr<InvalidationNotice> FromProto(const peer::InvalidateRequest& req);

std::string EncodeNotice(const InvalidationNotice& n);
absl::StatusOr<InvalidationNotice> DecodeNotice(absl::Span<const uint8_t> bytes);

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_NOTICE_CODEC_H_
