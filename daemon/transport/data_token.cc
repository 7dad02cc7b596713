#include "daemon/transport/data_token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "daemon/transport/wire_format.h"

namespace tether {

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

}  // namespace tether
