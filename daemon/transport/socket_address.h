// Numeric "host:port" addresses of data endpoints, shared by both
// transports. Never resolves names: endpoints come from the config and
// from peers' Hello, and a lookup on the connect path could block.
//
// Thread contract: none needed; functions of their arguments only, callable
// from any thread.
#ifndef TETHER_DAEMON_TRANSPORT_SOCKET_ADDRESS_H_
#define TETHER_DAEMON_TRANSPORT_SOCKET_ADDRESS_H_

#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tether {

// Splits "host:port" / "[v6]:port".
absl::Status ParseHostPort(const std::string& address, std::string* host, uint16_t* port);

// The socket address of a numeric IPv4 or IPv6 "host:port"; `len` (if not
// null) gets the length to pass to bind/connect.
absl::StatusOr<sockaddr_storage> NumericSocketAddress(const std::string& address,
                                                      socklen_t* len = nullptr);

// "host:port" / "[v6]:port" of an IPv4 or IPv6 address, for log lines
// ("?" for another family or null).
std::string SocketAddressString(const sockaddr* addr);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_SOCKET_ADDRESS_H_
