// CheckConfig: the checks of a TetherdConfig that main() runs before the
// daemon starts, so that a bad flag is a clear message and exit status 2,
// not a daemon that runs wrong (docs/security.md, tests/unit/flags_test.py).
// The per-flag range checks live where each flag is parsed (main.cc); the
// ones here concern several flags at once, the peer list, and the files
// named by flags. The TLS files' contents are checked at start
// (TlsIdentity::Load), which needs the node id and the clock.
//
// Thread contract: a pure function; any thread.
#ifndef TETHER_DAEMON_CONFIG_CHECK_H_
#define TETHER_DAEMON_CONFIG_CHECK_H_

#include <string>

#include "absl/status/status.h"
#include "daemon/tetherd.h"

namespace tether {

// InvalidArgument naming the flag(s) at fault; OK if the configuration can
// run.
absl::Status CheckConfig(const TetherdConfig& config);

// The port of "host:port" or "[v6]:port", or -1 if `address` does not end
// in ":<number>". CheckConfig's address checks and main()'s choice of
// capabilities (a port below 1024 needs CAP_NET_BIND_SERVICE) both read
// ports through it.
int PortOf(const std::string& address);

}  // namespace tether

#endif  // TETHER_DAEMON_CONFIG_CHECK_H_
