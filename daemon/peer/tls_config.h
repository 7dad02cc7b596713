// Node-to-node TLS settings (mutual TLS from a cluster CA; deploy/make-certs
// creates one). Plaintext only when asked for explicitly.
#ifndef TETHER_DAEMON_PEER_TLS_CONFIG_H_
#define TETHER_DAEMON_PEER_TLS_CONFIG_H_

#include <cstdint>
#include <string>

namespace tether {

struct TlsConfig {
  bool insecure = false;  // plaintext gRPC between nodes (tests, demos)
  // Paths, read at start and again on every reload (SIGHUP, tetherctl
  // reload): tls_identity.h.
  std::string ca_path;
  std::string cert_path;
  std::string key_path;
  // The log warns when this node's certificate or the CA expires within
  // this many days (0: never).
  int expiry_warn_days = 30;
};

// Node N's certificate carries the DNS name "tether-node-N" (a SAN; the
// CN is for people). Both ends of a connection check that name: the
// client asks for the node it meant (the channel's TLS target name), the
// server compares the name with the node id each request speaks for.
// Names, not addresses: certificates survive address changes.
inline constexpr char kNodeCertNamePrefix[] = "tether-node-";
inline std::string NodeCertName(uint32_t node) {
  return kNodeCertNamePrefix + std::to_string(node);
}

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_TLS_CONFIG_H_
