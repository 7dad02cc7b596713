#include "daemon/config_check.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/common/segid.h"

namespace tether {
namespace {

absl::Status Bad(const std::string& msg) { return absl::InvalidArgumentError(msg); }

// "host:port" or "[v6]:port" with a port in [min_port, 65535].
bool HostPort(const std::string& s, int min_port) {
  if (s.rfind(':') == 0) return false;  // no host
  int port = PortOf(s);
  return port >= min_port && port <= 65535;
}

absl::Status Readable(const char* flag, const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Bad(absl::StrCat("cannot read ", flag, " ", path, ": ", strerror(errno)));
  close(fd);
  return absl::OkStatus();
}

}  // namespace

int PortOf(const std::string& address) {
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return -1;
  return port;
}

absl::Status CheckConfig(const TetherdConfig& c) {
  if (c.node_id == 0 || c.node_id > kMaxNodeId)
    return Bad(absl::StrCat("--node_id must be 1..32767 (got ", c.node_id, ")"));
  if (c.local_socket.empty() || c.admin_socket.empty())
    return Bad("--local_socket and --admin_socket must not be empty");
  if (c.local_socket == c.admin_socket)
    return Bad("--local_socket and --admin_socket must be different paths");
  if (!HostPort(c.peer_listen, 0))
    return Bad("--peer_listen must be host:port (got '" + c.peer_listen + "')");
  if (!HostPort(c.data_listen, 0))
    return Bad("--data_listen must be host:port (got '" + c.data_listen + "')");
  absl::flat_hash_map<uint32_t, std::string> ids;
  absl::flat_hash_map<std::string, uint32_t> addresses;
  for (const PeerConfig& p : c.peers) {
    if (p.node_id == 0 || p.node_id > kMaxNodeId)
      return Bad(absl::StrCat("--peers: node id ", p.node_id, " is not in 1..32767"));
    if (p.node_id == c.node_id)
      return Bad(absl::StrCat("--peers names this node's own id (", p.node_id, "=", p.address,
                              "); list the other nodes only"));
    if (!HostPort(p.address, 1))
      return Bad(absl::StrCat("--peers: node ", p.node_id, "'s address '", p.address,
                              "' is not host:port"));
    auto [it, fresh] = ids.try_emplace(p.node_id, p.address);
    if (!fresh)
      return Bad(absl::StrCat("--peers names node ", p.node_id, " twice (", it->second, " and ",
                              p.address, ")"));
    auto [at, new_address] = addresses.try_emplace(p.address, p.node_id);
    if (!new_address)
      return Bad(absl::StrCat("--peers gives nodes ", at->second, " and ", p.node_id,
                              " the same address ", p.address));
  }
  if (c.cache_budget_bytes == 0) return Bad("--cache_budget_mb must be at least 1");
  if (c.rpc_timeout_ms <= 0 || c.rpc_timeout_ms > 600000)
    return Bad(absl::StrCat("--rpc_timeout_ms must be 1..600000 (got ", c.rpc_timeout_ms, ")"));
  if (c.invalidate_deadline_ms <= 0 || c.invalidate_deadline_ms > 600000)
    return Bad(absl::StrCat("--invalidate_deadline_ms must be 1..600000 (got ",
                            c.invalidate_deadline_ms, ")"));
  const TlsConfig& t = c.tls;
  if (t.insecure) {
    if (!t.ca_path.empty() || !t.cert_path.empty() || !t.key_path.empty())
      return Bad(
          "--insecure_peers (plaintext) together with --tls_ca/--tls_cert/--tls_key: choose "
          "one");
  } else {
    if (t.ca_path.empty() || t.cert_path.empty() || t.key_path.empty())
      return Bad(
          "node-to-node TLS needs --tls_ca, --tls_cert and --tls_key (deploy/make-certs makes "
          "them), or --insecure_peers for plaintext");
    if (absl::Status st = Readable("--tls_ca", t.ca_path); !st.ok()) return st;
    if (absl::Status st = Readable("--tls_cert", t.cert_path); !st.ok()) return st;
    if (absl::Status st = Readable("--tls_key", t.key_path); !st.ok()) return st;
  }
  if (t.expiry_warn_days < 0 || t.expiry_warn_days > 3650)
    return Bad(
        absl::StrCat("--tls_expiry_warn_days must be 0..3650 (got ", t.expiry_warn_days, ")"));
  return absl::OkStatus();
}

}  // namespace tether
