// Node-to-node TLS settings (mutual TLS from a cluster CA; deploy/make-certs
// creates one). Plaintext only when asked for explicitly.
#ifndef TETHER_DAEMON_PEER_TLS_CONFIG_H_
#define TETHER_DAEMON_PEER_TLS_CONFIG_H_

#include <string>

namespace tether {

struct TlsConfig {
  bool insecure = false;  // plaintext gRPC between nodes (tests, demos)
  std::string ca_pem;     // contents, not paths
  std::string cert_pem;
  std::string key_pem;
};

// Every node certificate carries this DNS name; peers verify it instead of
// an address, so certificates survive address changes.
inline constexpr char kNodeCertName[] = "tether-node";

}  // namespace tether

#endif  // TETHER_DAEMON_PEER_TLS_CONFIG_H_
