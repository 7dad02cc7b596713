// TlsIdentity: this node's certificate, key and cluster CA, checked before
// use, reloadable without a restart, and the gRPC credentials built on
// them (docs/security.md).
//
// Check: a set of files is taken only if every file parses, the key is the
// certificate's, the certificate chains to the CA and is in its validity
// period, and it names this node (DNS SAN "tether-node-<id>",
// tls_config.h). At start a bad set is a start-up error; at a reload it is
// logged and the set in use stays.
//
// Reload: gRPC's FileWatcherCertificateProvider (library code) feeds every
// server and channel credential built here. It does not watch the
// operator's files: it would take a half-written or mismatched set, and
// an unreadable file would leave no certificate at all. It watches checked
// copies in a private directory (0700, under the admin socket's directory,
// removed on exit; one a killed tetherd left is removed at the next Load,
// which tells it from a running tetherd's by the flock each holds on its
// own), which Reload() replaces in one rename of a symlink, so
// the provider sees the old set or the new one, never a mix; it picks the
// change up within kRefreshSeconds. Connections made before keep their
// handshake; new ones present the new certificate.
//
// Identity checks: the credentials carry a certificate verifier that
// refuses, at the handshake, a server whose certificate does not name the
// node the channel was made for (ChannelArgsFor sets that name as the TLS
// target) and a client whose certificate names no node; the Peer service
// then compares the node a request speaks for with the caller's
// certificate (CallerNamesNode).
//
// Thread contract: Load from one thread; Reload, Info and WarnIfExpiring
// from any thread (one mutex; Reload also serialises on it). The
// credentials and the verifiers run on gRPC's threads.
#ifndef TETHER_DAEMON_PEER_TLS_IDENTITY_H_
#define TETHER_DAEMON_PEER_TLS_IDENTITY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/peer/tls_config.h"

namespace grpc {
class ServerCredentials;
class ChannelCredentials;
class ChannelArguments;
class AuthContext;
namespace experimental {
class FileWatcherCertificateProvider;
class CertificateVerifier;
}  // namespace experimental
}  // namespace grpc

namespace tether {

// What a checked set holds (tetherctl status, the log).
struct CertInfo {
  std::string serial;       // hex, as openssl x509 -serial prints it
  std::string sha256;       // fingerprint of the certificate (DER), hex
  absl::Time not_after;     // the certificate's
  absl::Time ca_not_after;  // the earliest of the CA certificates'
};

// Checks PEM contents for node `node` at time `now` (see above); the error
// says what is wrong in the words of the file it concerns.
absl::StatusOr<CertInfo> CheckTlsMaterial(const std::string& ca_pem, const std::string& cert_pem,
                                          const std::string& key_pem, uint32_t node,
                                          absl::Time now);

class TlsIdentity {
 public:
  // The provider looks at its files this often.
  static constexpr int kRefreshSeconds = 1;

  // Reads and checks config's files, stages them under `runtime_dir`
  // (first removing the staging directories of ours there that no live
  // TlsIdentity holds: left by a tetherd killed before its destructor).
  static absl::StatusOr<std::unique_ptr<TlsIdentity>> Load(const TlsConfig& config, uint32_t node,
                                                           const std::string& runtime_dir);
  ~TlsIdentity();
  TlsIdentity(const TlsIdentity&) = delete;
  TlsIdentity& operator=(const TlsIdentity&) = delete;

  // Reads the configured files again; takes them if they pass the check,
  // else keeps the set in use. Logs either way.
  absl::Status Reload();
  CertInfo Info() const;
  // Logs a warning when the certificate or the CA expires within the
  // configured number of days (or has expired).
  void WarnIfExpiring() const;

  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;
  std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() const;
  // Channel arguments for a channel to `node`: the handshake must present
  // node's certificate.
  static void SetTargetNode(uint32_t node, grpc::ChannelArguments* args);

 private:
  TlsIdentity(TlsConfig config, uint32_t node, std::string dir, int lock_fd);
  absl::StatusOr<CertInfo> ReadAndCheck(std::string* ca, std::string* cert, std::string* key) const;
  absl::Status Stage(const std::string& ca, const std::string& cert, const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TlsConfig config_;
  const uint32_t node_;
  const std::string dir_;  // private staging directory
  // dir_ opened and flock-ed while this lives: a start of another tetherd
  // in the same directory takes only unlocked ones for stale (Load).
  const int lock_fd_;
  mutable absl::Mutex mu_;
  CertInfo info_ ABSL_GUARDED_BY(mu_);
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
  std::shared_ptr<grpc::experimental::CertificateVerifier> server_verifier_;
  std::shared_ptr<grpc::experimental::CertificateVerifier> client_verifier_;
};

// With TLS: whether the caller's certificate names node `node`.
bool CallerNamesNode(const grpc::AuthContext& auth, uint32_t node);
// The tether node names a caller's certificate carries, for messages.
std::string CallerNames(const grpc::AuthContext& auth);
// Whether to log a refusal described by `key` now: the first time, then at
// most once a minute (a refused peer retries every second).
bool ShouldLogRefusal(const std::string& key);

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_TLS_IDENTITY_H_
