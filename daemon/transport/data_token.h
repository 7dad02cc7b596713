// Data tokens and the data connections' handshake proofs: what binds a data
// connection to a node identity.
//
// Each daemon draws a random secret at start. Over the mutually
// authenticated control plane (gRPC Peer.Hello, where the caller's
// certificate names its node) it hands node N the token
// HMAC-SHA256(secret, "tether data token" || N): a secret the two nodes
// share and nobody else knows. The token itself never crosses a data link.
// A data connection (tcp HELLO/AUTH, rdma connect private data and the
// first control message) is a challenge and response in both directions:
// each side sends a fresh random nonce, and each proves it knows the token
// with DataAuthProof over both nonces, both node ids, its role (dialer or
// listener) and the transport. The listener recomputes the token for the
// node the dialer claims, so a node can only speak for itself on the data
// path, as on the control plane; and since every connection has new nonces
// on both sides, nothing a wire tap recorded proves anything on another
// connection (docs/security.md, "Data plane").
//
// Thread contract: functions of their arguments only (OpenSSL's HMAC and
// RAND_bytes keep no state of ours), callable from any thread: the tcp
// serving and dialing threads and the rdma listener and connection threads
// make and check proofs, gRPC's threads make tokens.
#ifndef TETHER_DAEMON_TRANSPORT_DATA_TOKEN_H_
#define TETHER_DAEMON_TRANSPORT_DATA_TOKEN_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tether {

constexpr size_t kAuthNonceSize = 32;
constexpr size_t kAuthProofSize = 32;
constexpr size_t kDataKeyMaterialSize = 32;

// kDataTokenSize (32) bytes.
std::string DataTokenFor(absl::string_view secret, uint32_t node);
// Constant-time comparison of `token` (kDataTokenSize bytes) with node's token.
bool DataTokenValid(absl::string_view secret, uint32_t node, const uint8_t* token);

// Fills `out` with kAuthNonceSize bytes from OpenSSL's CSPRNG.
absl::Status FreshNonce(uint8_t* out);

// Who a proof speaks for: the side that connected (the mapper for data, the
// home for notice connections) or the side that accepted. Part of what is
// signed, so that one side's proof is never the other's.
enum class AuthRole : uint8_t { kDialer = 1, kListener = 2 };

// HMAC-SHA256(token, "tether data auth v1" || transport || role || dialer
// node || listener node || dialer nonce || listener nonce), kAuthProofSize
// bytes. `transport` is "tcp" or "rdma".
std::string DataAuthProof(absl::string_view token, absl::string_view transport, AuthRole role,
                          uint32_t dialer, uint32_t listener, const uint8_t* dialer_nonce,
                          const uint8_t* listener_nonce);
// Constant-time check of `proof` (kAuthProofSize bytes) against the above.
bool DataAuthProofValid(absl::string_view token, absl::string_view transport, AuthRole role,
                        uint32_t dialer, uint32_t listener, const uint8_t* dialer_nonce,
                        const uint8_t* listener_nonce, const uint8_t* proof);

// Key material for one direction of an encrypted data connection
// (data_encryption.h): HMAC-SHA256(token, "tether data key v1" || the same
// fields as a proof, with `sender` the side that encrypts with it),
// kDataKeyMaterialSize bytes. Its own label, so no proof that crossed the
// wire is ever a key; fresh nonces on both sides make every connection's
// keys new, so a record sequence number is never used twice under a key.
std::string DataKeyMaterial(absl::string_view token, absl::string_view transport, AuthRole sender,
                            uint32_t dialer, uint32_t listener, const uint8_t* dialer_nonce,
                            const uint8_t* listener_nonce);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_DATA_TOKEN_H_
