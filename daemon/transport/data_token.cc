#include "daemon/transport/data_token.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"
#include "daemon/transport/wire_format.h"

namespace tether {
namespace {

void PutU32(std::vector<uint8_t>& msg, uint32_t v) {
  for (int i = 0; i < 4; ++i) msg.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

}  // namespace

std::string DataTokenFor(absl::string_view secret, uint32_t node) {
  static constexpr char kLabel[] = "tether data token";
  uint8_t msg[sizeof(kLabel) - 1 + 4];
  for (size_t i = 0; i < sizeof(kLabel) - 1; ++i) msg[i] = static_cast<uint8_t>(kLabel[i]);
  for (int i = 0; i < 4; ++i) msg[sizeof(kLabel) - 1 + i] = static_cast<uint8_t>(node >> (8 * i));
  uint8_t out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), msg, sizeof(msg), out, &len);
  static_assert(kDataTokenSize == 32, "SHA-256 output is the token");
  return std::string(reinterpret_cast<const char*>(out), kDataTokenSize);
}

bool DataTokenValid(absl::string_view secret, uint32_t node, const uint8_t* token) {
  if (secret.empty() || node == 0 || node > 0x7fff) return false;
  std::string want = DataTokenFor(secret, node);
  return CRYPTO_memcmp(want.data(), token, kDataTokenSize) == 0;
}

absl::Status FreshNonce(uint8_t* out) {
  if (RAND_bytes(out, static_cast<int>(kAuthNonceSize)) != 1)
    return ErrnoStatus(EIO, absl::StrCat("RAND_bytes failed: openssl error ", ERR_get_error()));
  return absl::OkStatus();
}

namespace {

// HMAC-SHA256(token, label || transport || role || dialer node || listener
// node || dialer nonce || listener nonce): the proofs and the key material
// differ only in their label.
std::string HandshakeMac(absl::string_view label, absl::string_view token,
                         absl::string_view transport, AuthRole role, uint32_t dialer,
                         uint32_t listener, const uint8_t* dialer_nonce,
                         const uint8_t* listener_nonce) {
  // Every field has a fixed size or a length before it, so no two
  // different inputs make the same message.
  std::vector<uint8_t> msg(label.begin(), label.end());
  msg.push_back(static_cast<uint8_t>(transport.size()));
  msg.insert(msg.end(), transport.begin(), transport.end());
  msg.push_back(static_cast<uint8_t>(role));
  PutU32(msg, dialer);
  PutU32(msg, listener);
  msg.insert(msg.end(), dialer_nonce, dialer_nonce + kAuthNonceSize);
  msg.insert(msg.end(), listener_nonce, listener_nonce + kAuthNonceSize);
  uint8_t out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), msg.data(), msg.size(), out,
       &len);
  static_assert(kAuthProofSize == 32 && kDataKeyMaterialSize == 32, "SHA-256 output");
  return std::string(reinterpret_cast<const char*>(out), 32);
}

}  // namespace

std::string DataAuthProof(absl::string_view token, absl::string_view transport, AuthRole role,
                          uint32_t dialer, uint32_t listener, const uint8_t* dialer_nonce,
                          const uint8_t* listener_nonce) {
  return HandshakeMac("tether data auth v1", token, transport, role, dialer, listener, dialer_nonce,
                      listener_nonce);
}

std::string DataKeyMaterial(absl::string_view token, absl::string_view transport, AuthRole sender,
                            uint32_t dialer, uint32_t listener, const uint8_t* dialer_nonce,
                            const uint8_t* listener_nonce) {
  return HandshakeMac("tether data key v1", token, transport, sender, dialer, listener,
                      dialer_nonce, listener_nonce);
}

bool DataAuthProofValid(absl::string_view token, absl::string_view transport, AuthRole role,
                        uint32_t dialer, uint32_t listener, const uint8_t* dialer_nonce,
                        const uint8_t* listener_nonce, const uint8_t* proof) {
  if (token.size() != kDataTokenSize) return false;
  std::string want =
      DataAuthProof(token, transport, role, dialer, listener, dialer_nonce, listener_nonce);
  return CRYPTO_memcmp(want.data(), proof, kAuthProofSize) == 0;
}

}  // namespace tether
