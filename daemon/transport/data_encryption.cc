#include "daemon/transport/data_encryption.h"

#include <arpa/inet.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/base/call_once.h"
#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

namespace tether {
namespace {

void FillCrypto(const std::string& material, tls12_crypto_info_aes_gcm_128* ci) {
  static_assert(TLS_CIPHER_AES_GCM_128_KEY_SIZE + TLS_CIPHER_AES_GCM_128_SALT_SIZE +
                        TLS_CIPHER_AES_GCM_128_IV_SIZE <=
                    kDataKeyMaterialSize,
                "one HMAC-SHA256 output keys one direction");
  std::memset(ci, 0, sizeof(*ci));
  ci->info.version = TLS_1_3_VERSION;
  ci->info.cipher_type = TLS_CIPHER_AES_GCM_128;
  const auto* m = reinterpret_cast<const unsigned char*>(material.data());
  std::memcpy(ci->key, m, TLS_CIPHER_AES_GCM_128_KEY_SIZE);
  m += TLS_CIPHER_AES_GCM_128_KEY_SIZE;
  std::memcpy(ci->salt, m, TLS_CIPHER_AES_GCM_128_SALT_SIZE);
  m += TLS_CIPHER_AES_GCM_128_SALT_SIZE;
  std::memcpy(ci->iv, m, TLS_CIPHER_AES_GCM_128_IV_SIZE);
  // rec_seq 0: the keys are this connection's alone.
}

absl::Status Install(int fd, const tls12_crypto_info_aes_gcm_128& tx,
                     const tls12_crypto_info_aes_gcm_128& rx) {
  if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0)
    return ErrnoStatus(errno, "setsockopt(TCP_ULP, \"tls\")");
  if (setsockopt(fd, SOL_TLS, TLS_TX, &tx, sizeof(tx)) != 0)
    return ErrnoStatus(errno, "setsockopt(TLS_TX, TLS 1.3 AES-128-GCM)");
  if (setsockopt(fd, SOL_TLS, TLS_RX, &rx, sizeof(rx)) != 0)
    return ErrnoStatus(errno, "setsockopt(TLS_RX, TLS 1.3 AES-128-GCM)");
  return absl::OkStatus();
}

// A connected loopback TCP pair, kTLS on one end: what the kernel says.
absl::Status Probe() {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int afd = -1;
  absl::Status st;
  sockaddr_in sa{};
  socklen_t len = sizeof(sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (lfd < 0 || cfd < 0) {
    st = ErrnoStatus(errno, "socket");
  } else if (bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(lfd, 1) != 0 ||
             getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len) != 0 ||
             connect(cfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
             (afd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC)) < 0) {
    st = ErrnoStatus(errno, "a loopback TCP connection to try kTLS on");
  } else {
    tls12_crypto_info_aes_gcm_128 ci;
    FillCrypto(std::string(kDataKeyMaterialSize, '\x5a'), &ci);
    st = Install(cfd, ci, ci);
  }
  for (int fd : {afd, cfd, lfd})
    if (fd >= 0) close(fd);
  return st;
}

}  // namespace

absl::Status KtlsAvailable() {
  static absl::once_flag once;
  static absl::Status* answer;
  absl::call_once(once, [] {
    absl::Status st = Probe();
    if (!st.ok())
      st = absl::Status(st.code(),
                        absl::StrCat("this kernel cannot encrypt tcp connections (kernel TLS: "
                                     "CONFIG_TLS; `modprobe tls`, or at boot: `echo tls > "
                                     "/etc/modules-load.d/tls.conf`): ",
                                     st.message()));
    answer = new absl::Status(st);
  });
  return *answer;
}

absl::Status EncryptConnection(int fd, absl::string_view token, AuthRole self, uint32_t dialer,
                               uint32_t listener, const uint8_t* dialer_nonce,
                               const uint8_t* listener_nonce) {
  const AuthRole peer = self == AuthRole::kDialer ? AuthRole::kListener : AuthRole::kDialer;
  tls12_crypto_info_aes_gcm_128 tx, rx;
  FillCrypto(
      DataKeyMaterial(token, kEncryptedTcp, self, dialer, listener, dialer_nonce, listener_nonce),
      &tx);
  FillCrypto(
      DataKeyMaterial(token, kEncryptedTcp, peer, dialer, listener, dialer_nonce, listener_nonce),
      &rx);
  absl::Status st = Install(fd, tx, rx);
  OPENSSL_cleanse(&tx, sizeof(tx));
  OPENSSL_cleanse(&rx, sizeof(rx));
  return st;
}

bool IsEncrypted(int fd) {
  char ulp[16] = {};
  socklen_t len = sizeof(ulp);
  return getsockopt(fd, SOL_TCP, TCP_ULP, ulp, &len) == 0 && std::strcmp(ulp, "tls") == 0;
}

}  // namespace tether
