// Data tokens: what binds a data connection to a node identity.
//
// Each daemon draws a random secret at start. Over the mutually
// authenticated control plane (gRPC Peer.Hello, where the caller's
// certificate names its node) it hands node N the token
// HMAC-SHA256(secret, "tether data token" || N). A data connection (tcp
// hello, rdma connect private data) claims a node id and presents a token;
// the home recomputes the token for the claimed id, so a node can only
// speak for itself on the data path, as on the control plane.
//
// Thread contract: functions of their arguments only (OpenSSL's HMAC keeps
// no shared state), callable from any thread: the tcp serving threads and
// the rdma listener thread check tokens, gRPC's threads make them.
#ifndef TETHER_DAEMON_TRANSPORT_DATA_TOKEN_H_
#define TETHER_DAEMON_TRANSPORT_DATA_TOKEN_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace tether {

// kDataTokenSize (32) bytes.
std::string DataTokenFor(absl::string_view secret, uint32_t node);
// Constant-time comparison of `token` (kDataTokenSize bytes) with node's token.
bool DataTokenValid(absl::string_view secret, uint32_t node, const uint8_t* token);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_DATA_TOKEN_H_
