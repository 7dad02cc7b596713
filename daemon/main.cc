// tetherd: the tether node daemon. Configuration by flags, or a config file
// of the same flags (--flagfile=/etc/tether/tetherd.conf, one per line;
// docs/man/tetherd.8, docs/man/tetherd.conf.5).
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpc/support/log.h>
#include <linux/tether.h>  // kernel/include/uapi: TETHER_ABI_VERSION

#include "absl/container/flat_hash_set.h"
#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"  // FindCommandLineFlag
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/capabilities.h"
#include "daemon/common/fault_point_server.h"
#include "daemon/common/log.h"
#include "daemon/common/segid.h"
#include "daemon/common/status_macros.h"
#include "daemon/config_check.h"
#include "daemon/notifier/kernel_notifier_source.h"
#include "daemon/service_notify.h"
#include "daemon/tetherd.h"
#include "daemon/transport/data_encryption.h"
#include "tetherd_version.h"

ABSL_FLAG(uint32_t, node_id, 0, "this node's id, 1..32767, unique in the cluster");
ABSL_FLAG(std::string, local_socket, "/run/tether/tetherd.sock",
          "client socket path (clients: TETHER_SOCKET)");
ABSL_FLAG(std::string, admin_socket, "/run/tether/admin.sock",
          "tetherctl socket path (tetherctl: TETHER_ADMIN_SOCKET)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9640",
          "Prometheus endpoint (GET /metrics) host:port, localhost by default; \"\" disables "
          "(docs/metrics.md)");
ABSL_FLAG(std::string, peer_listen, "0.0.0.0:7600", "gRPC Peer service address host:port");
ABSL_FLAG(std::string, data_listen, "",
          "tcp data transport address host:port (default: the --peer_listen host, port 7601; "
          "port 0: any)");
ABSL_FLAG(std::string, data_encryption, "off",
          "encrypt tcp data connections: on (kernel TLS 1.3, AES-128-GCM, keyed by the data "
          "handshake; needs the kernel's TLS, `modprobe tls`; rdma, which has no encryption, is "
          "then not used) or off (a peer that asks for encryption still gets it)");
ABSL_FLAG(std::string, rdma, "auto",
          "rdma data transport: auto (when a verbs device has an active port), on "
          "(required), off");
ABSL_FLAG(std::string, rdma_listen, "",
          "rdma_cm address host:port (default: the --data_listen host, port 7602; port 0: "
          "any); the host must be an "
          "address of the RDMA device's netdev (RoCE) or its IPoIB interface");
ABSL_FLAG(uint32_t, rdma_queue_depth, 32, "rdma requests in flight per peer (1..1024)");
ABSL_FLAG(uint32_t, rdma_slot_kb, 256,
          "rdma registered buffer slot size in KiB (a multiple of 4, at most 4096); the "
          "pool registers queue_depth x slot per peer connection");
ABSL_FLAG(int32_t, rdma_heartbeat_ms, 1000,
          "an idle rdma connection's requester sends a heartbeat (answered by the home) after "
          "this much quiet (10..60000)");
ABSL_FLAG(int32_t, rdma_timeout_ms, 5000,
          "an rdma peer silent this long while it owes an answer (a request, a heartbeat) is "
          "dead: its connection is dropped and what it owed fails over (at least 2 x "
          "--rdma_heartbeat_ms)");
ABSL_FLAG(int32_t, data_retry_ms, 30000,
          "how long a fetch (or a request that never left) is sent again after its connection "
          "was lost or could not be set up, before the error reaches the client (SIGBUS, a "
          "failed sync); 0: no retries");
ABSL_FLAG(int32_t, rdma_retry_after_ms, 30000,
          "after an rdma connection to a peer could not be set up, requests to it go over tcp "
          "for this long before rdma is tried again (100..3600000)");
ABSL_FLAG(uint32_t, rdma_max_connections, 256,
          "rdma connections a home accepts at once (each pins queue_depth x slot); more are "
          "refused and their requests go over tcp");
ABSL_FLAG(int32_t, rdma_tos, -1,
          "IP ToS/traffic class of rdma connections (0..255; RoCE maps it to a priority, which "
          "must be the fabric's lossless class); -1: rdma_cm's default");
ABSL_FLAG(int32_t, rdma_ack_timeout, -1,
          "rdma ACK timeout exponent: a lost packet is retransmitted after 4.096 us x 2^n "
          "(1..31, e.g. 14 = 67 ms); -1: rdma_cm's default");
ABSL_FLAG(std::string, rdma_source, "",
          "numeric IP address outgoing rdma connections start from (multi-NIC hosts); must be "
          "an address of an RDMA device's netdev or IPoIB interface. Default: the route's");
ABSL_FLAG(std::string, peers, "", "other nodes: id=host:port,id=host:port (their peer_listen)");
ABSL_FLAG(uint64_t, cache_budget_mb, 256, "bytes of remote pages this node may hold, in MiB");
ABSL_FLAG(bool, writeback_diffs, true,
          "write back only the bytes a mapper changed (page diffs); false: whole pages, which "
          "loses other writers' stores to the same page (benchmarks only: tests/bench)");
ABSL_FLAG(int32_t, rpc_timeout_ms, 5000, "deadline of node-to-node control calls");
ABSL_FLAG(int32_t, invalidate_deadline_ms, 2000,
          "how long a home waits for mappers to acknowledge an invalidation before fencing "
          "them");
ABSL_FLAG(int32_t, lease_ms, 2000,
          "how long a mapper node may serve pages it holds from a home without hearing from it "
          "(renewed every third of it); a home that fences a silent node waits this long (plus "
          "the margin) before it lets the exporter go on. 0: no leases (a cut-off or crashed "
          "mapper's clients keep reading what they hold). 100..60000");
ABSL_FLAG(int32_t, lease_margin_pct, 10,
          "clock-rate margin of leases, percent (1..50): a mapper counts its lease as "
          "lease * (1 - margin) from when it asked, a home as lease * (1 + margin) from when "
          "it granted");
ABSL_FLAG(std::string, state_dir, "/var/lib/tether",
          "where this node's segment epoch and counter persist, so that a restarted tetherd "
          "keeps its exporters' segids (node.state; the unit's StateDirectory). One per node");
ABSL_FLAG(int32_t, restart_grace_ms, 30000,
          "after a restart, how long exporters' libraries may register their segments again; "
          "a mapper node waits as long for a silent home before it revokes its attachments "
          "(1000..600000)");
ABSL_FLAG(bool, insecure_peers, false, "plaintext gRPC between nodes (no TLS): tests only");
ABSL_FLAG(std::string, tls_ca, "",
          "cluster CA certificate(s) (PEM file); read again on SIGHUP and tetherctl reload");
ABSL_FLAG(std::string, tls_cert, "",
          "this node's certificate (PEM file; its DNS SAN must be tether-node-<node_id>)");
ABSL_FLAG(std::string, tls_key, "", "this node's private key (PEM file)");
ABSL_FLAG(int32_t, tls_expiry_warn_days, 30,
          "warn in the log (at start, on reload, daily) when this node's certificate or the CA "
          "expires within this many days (0..3650; 0: never)");
ABSL_FLAG(bool, verbose, false, "debug logging (the same as --log_level=debug)");
ABSL_FLAG(std::string, log_level, "info",
          "debug, info, warning or error; changeable at run time: tetherctl log-level");
ABSL_FLAG(std::string, notifier, "auto",
          "the notifier source: auto (tether.ko where /dev/tether exists, else user space), "
          "kernel (refuse to start without tether.ko), user (userfaultfd only)");
ABSL_FLAG(bool, check_config, false,
          "check the flags and the files they name, print the result and exit (0: good, 2: "
          "bad) without starting anything; also spelled --check-config");
ABSL_FLAG(uint32_t, local_max_connections_per_uid, 128,
          "local client connections (one daemon thread each) one uid may hold; over it a "
          "connection is refused with EAGAIN (0: no bound)");
ABSL_FLAG(uint32_t, local_max_connections, 1024,
          "local client connections of all users together (0: no bound)");
ABSL_FLAG(std::string, trusted_peers, "",
          "node ids (1,3) whose root is root here; a remote uid/gid 0 from any other node acts "
          "as nobody (65534)");
ABSL_FLAG(std::string, test_fault_socket, "",
          "TESTS ONLY: a Unix socket through which a test arms and releases the daemon's fault "
          "points (daemon/common/fault_point_server.h); refused unless TETHER_TEST_HOOKS=1");

namespace {

// tether.ko's default ack_timeout_ms (kernel/README.md), used when the
// module is not loaded.
constexpr int64_t kModuleAckTimeoutMs = 5000;

// The data ports' defaults: fixed, so that a firewall rule can name them
// (docs/man/tetherd.8, docs/operations.md). --peer_listen's is 7600.
constexpr int kDataPort = 7601;
constexpr int kRdmaPort = 7602;

int Fail(const std::string& msg) {
  std::fprintf(stderr, "tetherd: %s\n", msg.c_str());
  return 2;
}

// --peers' value: id=host:port,... (CheckConfig checks the ids and addresses).
absl::StatusOr<std::vector<tether::PeerConfig>> ParsePeers(const std::string& value) {
  std::vector<tether::PeerConfig> peers;
  for (absl::string_view item : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    tether::PeerConfig pc;
    if (kv.size() != 2 || !absl::SimpleAtoi(kv[0], &pc.node_id) || pc.node_id == 0 || kv[1].empty())
      return absl::InvalidArgumentError("bad --peers entry '" + std::string(item) +
                                        "' (want id=host:port)");
    pc.address = kv[1];
    peers.push_back(pc);
  }
  return peers;
}

// The daemon's configuration from the flags; an error names the bad flag.
absl::StatusOr<tether::TetherdConfig> ConfigFromFlags() {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError(msg); };
  tether::TetherdConfig cfg;
  cfg.node_id = absl::GetFlag(FLAGS_node_id);
  cfg.local_socket = absl::GetFlag(FLAGS_local_socket);
  cfg.admin_socket = absl::GetFlag(FLAGS_admin_socket);
  cfg.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!cfg.metrics_listen.empty()) {
    if (absl::Status st = tether::CheckMetricsAddress(cfg.metrics_listen); !st.ok())
      return bad(absl::StrCat("--metrics_listen: ", st.message(),
                              " (HOST:PORT with a numeric address, or \"\" for none)"));
  }
  cfg.peer_listen = absl::GetFlag(FLAGS_peer_listen);
  cfg.data_listen = absl::GetFlag(FLAGS_data_listen);
  if (cfg.data_listen.empty()) {
    size_t colon = cfg.peer_listen.rfind(':');
    cfg.data_listen = cfg.peer_listen.substr(0, colon) + ":" + std::to_string(kDataPort);
  }
  ASSIGN_OR_RETURN(cfg.peers, ParsePeers(absl::GetFlag(FLAGS_peers)));
  const std::string encryption = absl::GetFlag(FLAGS_data_encryption);
  if (encryption != "on" && encryption != "off") return bad("--data_encryption must be on or off");
  cfg.data_encryption = encryption == "on";
  const std::string rdma = absl::GetFlag(FLAGS_rdma);
  if (cfg.data_encryption && rdma == "on")
    return bad(
        "--data_encryption=on and --rdma=on: rdma moves pages unencrypted; use --rdma=auto or off");
  if (rdma == "auto") {
    cfg.rdma = tether::RdmaMode::kAuto;
  } else if (rdma == "on") {
    cfg.rdma = tether::RdmaMode::kOn;
  } else if (rdma == "off") {
    cfg.rdma = tether::RdmaMode::kOff;
  } else {
    return bad("--rdma must be auto, on or off");
  }
  cfg.rdma_listen = absl::GetFlag(FLAGS_rdma_listen);
  if (cfg.rdma_listen.empty()) {
    size_t colon = cfg.data_listen.rfind(':');
    cfg.rdma_listen = cfg.data_listen.substr(0, colon) + ":" + std::to_string(kRdmaPort);
  }
  cfg.rdma_queue_depth = absl::GetFlag(FLAGS_rdma_queue_depth);
  cfg.rdma_slot_kb = absl::GetFlag(FLAGS_rdma_slot_kb);
  if (cfg.rdma_queue_depth == 0 || cfg.rdma_queue_depth > 1024)
    return bad("--rdma_queue_depth must be 1..1024");
  if (cfg.rdma_slot_kb == 0 || cfg.rdma_slot_kb % 4 != 0 || cfg.rdma_slot_kb > 4096)
    return bad("--rdma_slot_kb must be a multiple of 4 in 4..4096");
  cfg.rdma_heartbeat_ms = absl::GetFlag(FLAGS_rdma_heartbeat_ms);
  cfg.rdma_timeout_ms = absl::GetFlag(FLAGS_rdma_timeout_ms);
  if (cfg.rdma_heartbeat_ms < 10 || cfg.rdma_heartbeat_ms > 60000)
    return bad("--rdma_heartbeat_ms must be 10..60000");
  if (cfg.rdma_timeout_ms < 2 * cfg.rdma_heartbeat_ms || cfg.rdma_timeout_ms > 600000)
    return bad("--rdma_timeout_ms must be at least 2 x --rdma_heartbeat_ms (and at most 600000)");
  cfg.data_retry_ms = absl::GetFlag(FLAGS_data_retry_ms);
  if (cfg.data_retry_ms < 0 || cfg.data_retry_ms > 3600000)
    return bad("--data_retry_ms must be 0..3600000");
  cfg.rdma_retry_after_ms = absl::GetFlag(FLAGS_rdma_retry_after_ms);
  if (cfg.rdma_retry_after_ms < 100 || cfg.rdma_retry_after_ms > 3600000)
    return bad("--rdma_retry_after_ms must be 100..3600000");
  cfg.rdma_max_connections = absl::GetFlag(FLAGS_rdma_max_connections);
  if (cfg.rdma_max_connections == 0 || cfg.rdma_max_connections > 4096)
    return bad("--rdma_max_connections must be 1..4096");
  cfg.rdma_tos = absl::GetFlag(FLAGS_rdma_tos);
  if (cfg.rdma_tos < -1 || cfg.rdma_tos > 255) return bad("--rdma_tos must be 0..255 (or -1)");
  cfg.rdma_ack_timeout = absl::GetFlag(FLAGS_rdma_ack_timeout);
  if (cfg.rdma_ack_timeout != -1 && (cfg.rdma_ack_timeout < 1 || cfg.rdma_ack_timeout > 31))
    return bad("--rdma_ack_timeout must be 1..31 (or -1)");
  cfg.rdma_source = absl::GetFlag(FLAGS_rdma_source);
  // Tests replay a genuine rdma connect request (tests/vm/rdma_test.py):
  // under the test hooks only, the requester logs the bytes it sends.
  if (const char* hooks = getenv("TETHER_TEST_HOOKS"); hooks && std::string(hooks) == "1")
    cfg.rdma_log_connect_requests = true;
  if (!cfg.rdma_source.empty()) {
    // A host only: rdma_cm picks the port.
    in6_addr a6;
    in_addr a4;
    std::string host = cfg.rdma_source;
    if (host.size() > 2 && host.front() == '[' && host.back() == ']')
      host = host.substr(1, host.size() - 2);
    if (inet_pton(AF_INET, host.c_str(), &a4) == 1) {
      cfg.rdma_source = host + ":0";
    } else if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
      cfg.rdma_source = "[" + host + "]:0";
    } else {
      return bad("--rdma_source must be a numeric IPv4 or IPv6 address");
    }
  }
  cfg.local_max_connections_per_uid = absl::GetFlag(FLAGS_local_max_connections_per_uid);
  cfg.local_max_connections = absl::GetFlag(FLAGS_local_max_connections);
  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_trusted_peers), ',', absl::SkipWhitespace())) {
    uint32_t node;
    if (!absl::SimpleAtoi(item, &node) || node == 0 || node > tether::kMaxNodeId)
      return bad("bad --trusted_peers entry '" + std::string(item) + "' (want node ids 1..32767)");
    cfg.trusted_peers.push_back(node);
  }
  // Up to 16 TiB: more would overflow in bytes long before any host has it.
  const uint64_t budget_mb = absl::GetFlag(FLAGS_cache_budget_mb);
  if (budget_mb == 0 || budget_mb > (uint64_t{1} << 24))
    return bad(
        absl::StrFormat("--cache_budget_mb must be 1..%d (got %d)", uint64_t{1} << 24, budget_mb));
  cfg.cache_budget_bytes = budget_mb << 20;
  cfg.writeback_diffs = absl::GetFlag(FLAGS_writeback_diffs);
  cfg.rpc_timeout_ms = absl::GetFlag(FLAGS_rpc_timeout_ms);
  cfg.invalidate_deadline_ms = absl::GetFlag(FLAGS_invalidate_deadline_ms);
  if (cfg.invalidate_deadline_ms <= 0) return bad("--invalidate_deadline_ms must be positive");
  cfg.lease_ms = absl::GetFlag(FLAGS_lease_ms);
  cfg.lease_margin_pct = absl::GetFlag(FLAGS_lease_margin_pct);
  if (cfg.lease_ms != 0 && (cfg.lease_ms < 100 || cfg.lease_ms > 60000))
    return bad("--lease_ms must be 0 (no leases) or 100..60000");
  if (cfg.lease_margin_pct < 1 || cfg.lease_margin_pct > 50)
    return bad("--lease_margin_pct must be 1..50");
  // An exporter waits for a silent mapper node for the deadline plus its
  // lease; tether.ko stops waiting for this daemon's ACK after its
  // ack_timeout_ms, and then the exporter goes on before the mapper
  // revoked: refuse a configuration that cannot keep G1.
  int64_t ack_timeout_ms = kModuleAckTimeoutMs;
  std::ifstream param("/sys/module/tether/parameters/ack_timeout_ms");
  int64_t loaded = 0;
  if (param >> loaded && loaded > 0) ack_timeout_ms = loaded;
  int64_t worst = cfg.invalidate_deadline_ms +
                  static_cast<int64_t>(cfg.lease_ms) * (100 + cfg.lease_margin_pct) / 100;
  if (worst >= ack_timeout_ms)
    return bad(absl::StrFormat(
        "--invalidate_deadline_ms (%d) + --lease_ms (%d) * (1 + %d%%) = %d ms must stay below "
        "tether.ko's ack_timeout_ms (%d ms): the module would let the exporter go on while a "
        "silent mapper node still serves old pages. Shorten the deadline or the lease",
        cfg.invalidate_deadline_ms, cfg.lease_ms, cfg.lease_margin_pct, worst, ack_timeout_ms));
  cfg.state_dir = absl::GetFlag(FLAGS_state_dir);
  if (cfg.state_dir.empty()) return bad("--state_dir must name a directory");
  cfg.restart_grace_ms = absl::GetFlag(FLAGS_restart_grace_ms);
  if (cfg.restart_grace_ms < 1000 || cfg.restart_grace_ms > 600000)
    return bad("--restart_grace_ms must be 1000..600000");
  cfg.tls.insecure = absl::GetFlag(FLAGS_insecure_peers);
  cfg.tls.ca_path = absl::GetFlag(FLAGS_tls_ca);
  cfg.tls.cert_path = absl::GetFlag(FLAGS_tls_cert);
  cfg.tls.key_path = absl::GetFlag(FLAGS_tls_key);
  cfg.tls.expiry_warn_days = absl::GetFlag(FLAGS_tls_expiry_warn_days);
  const std::string notifier = absl::GetFlag(FLAGS_notifier);
  if (notifier == "auto") {
    cfg.notifier = tether::NotifierMode::kAuto;
  } else if (notifier == "kernel") {
    cfg.notifier = tether::NotifierMode::kKernel;
  } else if (notifier == "user") {
    cfg.notifier = tether::NotifierMode::kUser;
  } else {
    return bad("--notifier must be auto, kernel or user");
  }
  if (!tether::ParseLogLevel(absl::GetFlag(FLAGS_log_level)))
    return bad("--log_level must be debug, info, warning or error");
  // What concerns several flags, the peer list and the files.
  if (absl::Status st = tether::CheckConfig(cfg); !st.ok()) return st;
  return cfg;
}

std::string VersionString() {
  return absl::StrFormat(
      "tetherd %s (git %s), tether.ko ABI %d (linux/tether.h TETHER_ABI_VERSION)\n",
      TETHERD_VERSION, TETHERD_GIT_REVISION, TETHER_ABI_VERSION);
}

// gRPC's own log lines (gpr_log) go through tether's sink: the same format
// and journal priorities as the daemon's. gRPC filters by its own
// verbosity first (GRPC_VERBOSITY, default ERROR).
void GrpcLogToSink(gpr_log_func_args* args) {
  tether::LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR  ? tether::LogLevel::kError
                           : args->severity == GPR_LOG_SEVERITY_INFO ? tether::LogLevel::kInfo
                                                                     : tether::LogLevel::kDebug;
  const char* file = args->file ? strrchr(args->file, '/') : nullptr;
  if (tether::LogEnabled(level))
    tether::LogLine(
        level, absl::StrFormat("grpc %s:%d: %s", file ? file + 1 : (args->file ? args->file : "?"),
                               args->line, args->message ? args->message : ""));
}

// The --flagfile values on the command line (absl reads them and keeps
// no list): a reload reads them again. "--check-config" is rewritten to
// absl's spelling, --check_config, on the way.
std::vector<std::string> ScanArgs(int argc, char** argv, bool* peers_on_command_line) {
  std::vector<std::string> files;
  *peers_on_command_line = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (a == "--check-config") {
      static char spelled[] = "--check_config";
      argv[i] = spelled;
      continue;
    }
    if (absl::ConsumePrefix(&a, "--") || absl::ConsumePrefix(&a, "-")) {
      if (absl::ConsumePrefix(&a, "flagfile=")) {
        files.emplace_back(a);
      } else if (a == "flagfile" && i + 1 < argc) {
        files.emplace_back(argv[++i]);
      } else if (a == "peers" || absl::StartsWith(a, "peers=")) {
        *peers_on_command_line = true;
      }
    }
  }
  return files;
}

// absl's parser exits with status 1, in its own words, on an unknown flag
// or a value its type cannot take; tetherd's contract is status 2 with the
// flag named for every bad flag (tetherd(8)). So the command line and the
// flag files are read once first, with absl's own registry and parsers.
// This sets each flag it reads, in the order ParseCommandLine will (a flag
// file's lines where its --flagfile is), so ParseCommandLine sets the same
// values again; a FlagSaver would log every restored flag to stderr.
// Forms as absl takes them: --name=value, -name=value, --name value
// (not for a bool), --name / --noname (a bool), "--" ends the flags; a
// flag file holds one --name=value per line, # comments and blank lines.
class FlagSyntaxCheck {
 public:
  absl::Status Check(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    for (const std::string& a : args) {  // --undefok=a,b names flags absl lets pass
      absl::string_view v = a;
      if ((absl::ConsumePrefix(&v, "--undefok=") || absl::ConsumePrefix(&v, "-undefok=")))
        for (absl::string_view n : absl::StrSplit(v, ',', absl::SkipEmpty()))
          undefok_.insert(std::string(n));
    }
    return CheckList(args, "the command line", /*from_file=*/false, 0);
  }

 private:
  absl::Status CheckList(const std::vector<std::string>& args, const std::string& where,
                         bool from_file, int depth) {
    for (size_t i = 0; i < args.size(); ++i) {
      absl::string_view a = args[i];
      if (a == "--") break;  // the rest is not flags
      if (!absl::ConsumePrefix(&a, "--") && !absl::ConsumePrefix(&a, "-")) {
        if (from_file)
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": '", args[i], "' is not a flag (--name=value)"));
        continue;  // a positional argument: tetherd takes none, absl ignores them
      }
      const size_t eq = a.find('=');
      const std::string name(a.substr(0, eq));
      const bool has_value = eq != absl::string_view::npos;
      std::string value = has_value ? std::string(a.substr(eq + 1)) : "";
      // absl's usage flags, which its registry does not list: absl handles them.
      if (name == "help" || name == "helpfull" || name == "helpshort" || name == "helppackage" ||
          name == "helpon" || name == "helpmatch" || name == "version" || name == "only_check_args")
        continue;
      absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      if (flag == nullptr && !has_value && absl::StartsWith(name, "no")) {
        absl::CommandLineFlag* b = absl::FindCommandLineFlag(name.substr(2));
        if (b != nullptr && b->IsOfType<bool>()) continue;  // --nofoo
      }
      if (flag == nullptr) {
        if (undefok_.contains(name) ||
            (absl::StartsWith(name, "no") && undefok_.contains(name.substr(2))))
          continue;
        return absl::InvalidArgumentError(
            absl::StrCat("unknown flag --", name, " (", where, "; tetherd --help lists them)"));
      }
      if (flag->IsRetired()) continue;  // absl warns and goes on
      if (!has_value) {
        if (flag->IsOfType<bool>()) continue;
        if (from_file || i + 1 >= args.size())
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, " needs a value (--", name, "=VALUE; ", where, ")"));
        value = args[++i];
      }
      if (name == "flagfile") {
        for (absl::string_view file : absl::StrSplit(value, ',', absl::SkipEmpty()))
          RETURN_IF_ERROR(CheckFile(std::string(file), depth + 1));
        continue;
      }
      if (name == "fromenv" || name == "tryfromenv" || name == "undefok") continue;
      std::string error;
      if (!flag->ParseFrom(value, &error))
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, "=", value, ": ", error, " (", where, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status CheckFile(const std::string& file, int depth) {
    if (depth > 8) return absl::InvalidArgumentError("flag files nest deeper than 8: " + file);
    std::ifstream in(file);
    if (!in)
      return absl::NotFoundError(
          absl::StrCat("cannot read flag file ", file, ": ", strerror(errno)));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      absl::string_view l = absl::StripAsciiWhitespace(line);
      if (l.empty() || l[0] == '#') continue;
      RETURN_IF_ERROR(CheckList({std::string(l)}, absl::StrCat(file, " line ", n),
                                /*from_file=*/true, depth));
    }
    return absl::OkStatus();
  }

  absl::flat_hash_set<std::string> undefok_;
};

// The --peers value the flag files hold now (the last one wins, as when
// absl read them); "" if none names it.
absl::StatusOr<std::string> PeersInFiles(const std::vector<std::string>& files) {
  std::string value;
  for (const std::string& f : files) {
    std::ifstream in(f);
    if (!in) return absl::NotFoundError("cannot read " + f + ": " + strerror(errno));
    std::string line;
    while (std::getline(in, line)) {
      absl::string_view l = absl::StripAsciiWhitespace(line);
      if (absl::ConsumePrefix(&l, "--peers=") || absl::ConsumePrefix(&l, "-peers="))
        value = std::string(l);
    }
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
#ifdef NDEBUG
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles
  // (a global graph behind one spin lock, shared by all threads): 3.5x the
  // cost of a nested lock here, on the fault and invalidation paths. The
  // Debug/sanitizer build that the tests run under keeps the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // A crash (SIGSEGV, SIGBUS, SIGABRT, ...) writes the faulting thread's
  // stack to stderr (the journal) before the default action; the
  // sanitizer builds keep their own, fuller reports.
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());
#endif
  absl::SetProgramUsageMessage(
      "the tether node daemon.\n"
      "Usage: tetherd [--flagfile=/etc/tether/tetherd.conf] [--FLAG=VALUE ...]\n"
      "       tetherd --check-config [--flagfile=F] | --version | --help\n"
      "See tetherd(8) and tetherd.conf(5).");
  absl::FlagsUsageConfig usage;
  // absl lists only flags defined in a file named after the program
  // (tetherd.cc); ours are here.
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "daemon/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = VersionString;
  usage.normalize_filename = [](absl::string_view f) { return std::string(f); };
  absl::SetFlagsUsageConfig(usage);
  bool peers_on_command_line = false;
  const std::vector<std::string> flagfiles = ScanArgs(argc, argv, &peers_on_command_line);
  if (absl::Status syntax = FlagSyntaxCheck().Check(argc, argv); !syntax.ok())
    return Fail(std::string(syntax.message()));
  absl::ParseCommandLine(argc, argv);
  tether::SetLogFormat(tether::DetectLogFormat(STDERR_FILENO));
  gpr_set_log_function(GrpcLogToSink);
  tether::SetLogLevel(
      tether::ParseLogLevel(absl::GetFlag(FLAGS_log_level)).value_or(tether::LogLevel::kInfo));
  if (absl::GetFlag(FLAGS_verbose)) tether::SetLogLevel(tether::LogLevel::kDebug);

  absl::StatusOr<tether::TetherdConfig> cfg = ConfigFromFlags();
  // Asked for encryption: try kernel TLS now, while we may still hold
  // CAP_NET_ADMIN, with which the kernel loads the tls module on first use
  // (after the capabilities are dropped it would not). The answer is kept.
  if (cfg.ok() && cfg->data_encryption) (void)tether::KtlsAvailable();
  if (absl::GetFlag(FLAGS_check_config)) {
    if (cfg.ok() && cfg->notifier == tether::NotifierMode::kKernel &&
        !tether::KernelNotifierSource::Available())
      cfg = absl::FailedPreconditionError(
          absl::StrCat("--notifier=kernel but ", tether::KernelNotifierSource::kDevice,
                       " does not exist: load tether.ko (modprobe tether)"));
    if (cfg.ok() && cfg->data_encryption) {
      if (absl::Status can = tether::KtlsAvailable(); !can.ok())
        cfg = absl::FailedPreconditionError(absl::StrCat("--data_encryption=on: ", can.message()));
    }
    if (!cfg.ok()) return Fail("config: " + std::string(cfg.status().message()));
    std::printf("tetherd: config OK: node %u, peers on %s, data on %s (tcp), %zu peer(s)%s\n",
                cfg->node_id, cfg->peer_listen.c_str(), cfg->data_listen.c_str(), cfg->peers.size(),
                flagfiles.empty() ? "" : (", from " + absl::StrJoin(flagfiles, ",")).c_str());
    return 0;
  }
  if (!cfg.ok()) return Fail(std::string(cfg.status().message()));
  tether::SetLogPrefix(absl::StrFormat("tetherd[node %d]", cfg->node_id));
  if (!flagfiles.empty() && !peers_on_command_line) {
    // A reload reads the peers from the files again, checked as at start.
    cfg->read_peers = [files = flagfiles,
                       base = *cfg]() -> absl::StatusOr<std::vector<tether::PeerConfig>> {
      ASSIGN_OR_RETURN(std::string value, PeersInFiles(files));
      tether::TetherdConfig next = base;
      ASSIGN_OR_RETURN(next.peers, ParsePeers(value));
      RETURN_IF_ERROR(tether::CheckConfig(next));
      return next.peers;
    };
  }

  // Least privilege (common/capabilities.h): before any thread exists, as
  // capabilities are per thread and inherited by the threads made later.
  {
    bool low_port = false;
    for (const std::string* addr :
         {&cfg->peer_listen, &cfg->data_listen, &cfg->rdma_listen, &cfg->metrics_listen}) {
      int port = tether::PortOf(*addr);
      if (port > 0 && port < 1024) low_port = true;
    }
    auto kept = tether::DropCapabilities(
        tether::NeededCapabilities(cfg->rdma != tether::RdmaMode::kOff, low_port));
    if (!kept.ok()) return Fail("dropping capabilities: " + kept.status().ToString());
    // The bounding set as it is now, not as hoped: narrowing it needs
    // CAP_SETPCAP, which the unit's CapabilityBoundingSet= does not give.
    std::vector<std::string> bounding = tether::BoundingSet();
    TLOG_INFO("capabilities: kept %s, every other one dropped; bounding set: %s",
              kept->empty() ? "none" : absl::StrJoin(*kept, ","),
              bounding.empty() ? "empty" : absl::StrJoin(bounding, ","));
  }

  // Signals are taken synchronously by this thread; every other thread
  // inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Test-only remote control of fault points: never in a normal start.
  std::unique_ptr<tether::FaultPointServer> fault_points;
  if (!absl::GetFlag(FLAGS_test_fault_socket).empty()) {
    const char* hooks = getenv("TETHER_TEST_HOOKS");
    if (!hooks || std::string(hooks) != "1")
      return Fail(
          "--test_fault_socket is for tests only (it lets a local user hold the daemon's "
          "threads): refused unless TETHER_TEST_HOOKS=1 is set");
    auto s = tether::FaultPointServer::Start(absl::GetFlag(FLAGS_test_fault_socket));
    if (!s.ok()) return Fail(std::string(s.status().message()));
    fault_points = std::move(*s);
  }

  tether::Tetherd daemon(*std::move(cfg));
  tether::ServiceNotifier service;
  service.Status("starting");
  absl::Status st = daemon.Start();
  if (!st.ok()) {
    if (fault_points) fault_points->Stop();
    daemon.Stop();
    return Fail(std::string(st.message()));
  }
  // Every socket listens and the notifier source runs: systemctl start
  // returns now.
  service.Ready("serving");
  service.StartWatchdog([&daemon] { return daemon.CheckAlive(); });
  // SIGHUP: read the peer list and the TLS files again (a bad set is
  // logged and the one in use stays). Once a day: warn if the certificate
  // or CA expires soon.
  for (;;) {
    timespec day = {24 * 3600, 0};
    int sig = sigtimedwait(&set, nullptr, &day);
    if (sig == SIGHUP) {
      TLOG_INFO("SIGHUP: reloading the peer list and the TLS files");
      service.Reloading();
      absl::StatusOr<std::string> r = daemon.Reload();  // failures logged by Reload
      service.Ready(r.ok() ? "serving; reloaded"
                           : "serving; last reload failed: " + std::string(r.status().message()));
    } else if (sig < 0 && errno == EAGAIN) {
      daemon.CheckTlsExpiry();
    } else if (sig == SIGTERM || sig == SIGINT) {
      break;
    }
  }
  service.Stopping();
  service.StopWatchdog();
  // Held threads first: the daemon's Stop() joins them.
  if (fault_points) fault_points->Stop();
  daemon.Stop();
  return 0;
}
