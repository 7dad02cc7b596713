// tetherctl: look at a node's tetherd (status, metrics, segments,
// attachments, name lookup) and act on it (reload its peer list and TLS
// files, set its log level, drain it before maintenance, revoke a
// segment's grants), over its admin socket
// ($TETHER_ADMIN_SOCKET or /run/tether/admin.sock). Tables by default;
// --json prints the daemon's answer as protobuf's JSON mapping
// (google::protobuf::util::MessageToJsonString: field names as in
// proto/admin.proto, 64-bit integers as strings), errors too. The manual
// is docs/man/tetherctl.8.
//
// Each subcommand is one row of kCommands and one function: add one
// there, and to the man page.
//
// Exit codes: 0 done; 1 the daemon refused or failed the request; 2 bad
// usage; 3 the daemon could not be reached (not running, no permission).
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "admin.grpc.pb.h"
#include "daemon/common/segment_name.h"

namespace {

namespace admin = tether::admin;

constexpr int kExitOk = 0, kExitFailed = 1, kExitUsage = 2, kExitUnreachable = 3;

struct Ctl {
  std::string socket;
  bool json = false;
  bool cluster = false;
  std::vector<std::string> args;  // after the subcommand
  std::unique_ptr<admin::Admin::Stub> stub;
};

// A segment name as a terminal may show it: names come from daemons that
// may be older than the rule that they be printable (segment_name.h), or
// from another node's, so anything not printable is written as \xNN.
std::string Printable(const std::string& s) { return tether::EscapeName(s); }

// In JSON: the name itself when it is printable (it round-trips), else its
// escaped form (a script sees the backslashes rather than the bytes).
std::string JsonName(const std::string& name) {
  return tether::ValidateSegmentName(name).ok() ? name : Printable(name);
}

void PrintJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opt;
  opt.preserve_proto_field_names = true;
  opt.always_print_primitive_fields = true;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(m, &out, opt);
  if (!st.ok()) {
    std::fprintf(stderr, "tetherctl: cannot print JSON: %s\n", st.ToString().c_str());
    return;
  }
  std::printf("%s\n", out.c_str());
}

// Why the admin socket cannot be reached, found by connecting to it
// ourselves: gRPC says only "unavailable". 0 if it can be.
int ProbeSocket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) {
    close(fd);
    return ENAMETOOLONG;
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  int err = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 ? 0 : errno;
  close(fd);
  return err;
}

// A failed call: the message (printable), the errno the daemon gave
// (its status details, common/errors.h) or the socket's, and for an
// unreachable daemon a hint. Under --json an object on stdout:
// {"error", "errno", "socket", "hint"}.
int Fail(const Ctl& ctl, const grpc::Status& st) {
  int err = 0;
  std::string hint;
  int rc = kExitFailed;
  const bool unreachable = st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  if (!absl::SimpleAtoi(st.error_details(), &err) && unreachable) {
    rc = kExitUnreachable;
    err = ProbeSocket(ctl.socket);
    if (err == ENOENT || err == ECONNREFUSED) {
      hint = absl::StrCat("tetherd is not running (",
                          err == ENOENT ? "no socket at " : "nothing listens on ", ctl.socket,
                          "); see `systemctl status tetherd`, or pass --socket PATH / set "
                          "TETHER_ADMIN_SOCKET for another daemon");
    } else if (err == EACCES || err == EPERM) {
      hint = absl::StrCat("no permission on ", ctl.socket,
                          " (the admin socket is root's, mode 0600): run tetherctl as root");
    } else if (err == 0) {
      err = st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? ETIMEDOUT : EHOSTUNREACH;
      hint = "tetherd accepted the connection but did not answer; see `systemctl status tetherd`";
    }
  }
  std::string message = Printable(st.error_message());
  if (ctl.json) {
    google::protobuf::Struct out;
    auto& f = *out.mutable_fields();
    f["error"].set_string_value(message);
    f["errno"].set_number_value(err);
    f["socket"].set_string_value(ctl.socket);
    if (!hint.empty()) f["hint"].set_string_value(hint);
    PrintJson(out);
  } else {
    std::fprintf(stderr, "tetherctl: %s (daemon admin socket %s)\n", message.c_str(),
                 ctl.socket.c_str());
    if (!hint.empty()) std::fprintf(stderr, "tetherctl: %s\n", hint.c_str());
  }
  return rc;
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return ctx;
}

// A drain writes back every dirty page the node holds: give it longer.
std::unique_ptr<grpc::ClientContext> LongContext() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  return ctx;
}

std::string Date(int64_t unix_seconds) {
  return absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::FromUnixSeconds(unix_seconds),
                          absl::UTCTimeZone());
}

std::string Bytes(uint64_t n) {
  if (n >= (1ull << 30)) return absl::StrFormat("%.1f GiB", n / 1073741824.0);
  if (n >= (1ull << 20)) return absl::StrFormat("%.1f MiB", n / 1048576.0);
  if (n >= (1ull << 10)) return absl::StrFormat("%.1f KiB", n / 1024.0);
  return absl::StrFormat("%d B", n);
}

// ------------------------------------------------------------------ status

int CmdStatus(Ctl& ctl) {
  admin::StatusResponse r;
  auto st = ctl.stub->Status(Context().get(), admin::StatusRequest(), &r);
  if (!st.ok()) return Fail(ctl, st);
  // What a peer (or anything on the way to it) answered: printable only,
  // in the table and the JSON alike.
  for (auto& p : *r.mutable_peers()) {
    p.set_address(Printable(p.address()));
    p.set_transport(Printable(p.transport()));
    p.set_error(Printable(p.error()));
  }
  if (ctl.json) {
    PrintJson(r);
    return kExitOk;
  }
  absl::PrintF("node %u (incarnation %#lx), up %.1f s%s\n", r.node_id(),
               static_cast<unsigned long>(r.incarnation()), r.uptime_ms() / 1000.0,
               r.draining() ? ", DRAINING (new exports and attachments refused)" : "");
  absl::PrintF("  local socket  %s\n  peer service  %s\n  data (tcp)    %s\n",
               r.local_socket().c_str(), r.peer_address().c_str(), r.data_address().c_str());
  absl::PrintF("  data (rdma)   %s\n", r.rdma_address().empty()
                                           ? "- (no usable verbs device, or --rdma=off)"
                                           : r.rdma_address().c_str());
  absl::PrintF("  cache         %.1f of %.1f MiB\n", r.cache_resident_bytes() / 1048576.0,
               r.cache_budget_bytes() / 1048576.0);
  absl::PrintF("  segments      %u exported, %u attachments\n", r.segments_exported(),
               r.attachments());
  if (!r.notifier_source().empty())
    absl::PrintF("  notifier      %s\n", r.notifier_source() == "tether.ko"
                                             ? "tether.ko"
                                             : r.notifier_source() + " (tether.ko not loaded)");
  absl::PrintF("  metrics       %s\n", r.metrics_address().empty()
                                           ? "- (--metrics_listen=\"\")"
                                           : "http://" + r.metrics_address() + "/metrics");
  if (r.has_tls()) {
    const auto& t = r.tls();
    absl::PrintF("  certificate   serial %s, expires %s (%d days)\n  cluster CA    expires %s\n",
                 t.serial(), Date(t.not_after_unix()), t.days_left(), Date(t.ca_not_after_unix()));
  } else {
    absl::PrintF("  certificate   - (plaintext between nodes: --insecure_peers)\n");
  }
  absl::PrintF("\n%-6s %-24s %-9s %-10s %s\n", "PEER", "ADDRESS", "TRANSPORT", "STATE", "ERROR");
  // A peer's error is what it (or anything on the way to it) answered.
  for (const auto& p : r.peers())
    absl::PrintF("%-6u %-24s %-9s %-10s %s\n", p.node_id(), p.address().c_str(),
                 p.transport().c_str(), p.reachable() ? "up" : "down", p.error().c_str());
  return kExitOk;
}

// ------------------------------------------------------------------- stats

// An estimate of quantile q from cumulative buckets: the upper bound of
// the bucket it falls in (what a table needs: an order of magnitude).
std::string Quantile(const admin::Metric& m, double q) {
  auto count = static_cast<uint64_t>(m.value());
  if (count == 0) return "-";
  auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count)));
  for (const auto& b : m.buckets())
    if (b.count() >= rank) return absl::StrFormat("<=%gs", b.le());
  return m.buckets().empty() ? "-" : absl::StrFormat(">%gs", m.buckets().rbegin()->le());
}

int CmdStats(Ctl& ctl) {
  admin::StatsResponse r;
  auto st = ctl.stub->Stats(Context().get(), admin::StatsRequest(), &r);
  if (!st.ok()) return Fail(ctl, st);
  if (ctl.json) {
    PrintJson(r);
    return kExitOk;
  }
  absl::PrintF("%-64s %s\n", "METRIC", "VALUE");
  for (const auto& m : r.metrics()) {
    std::map<std::string, std::string> labels(m.labels().begin(), m.labels().end());
    std::vector<std::string> parts;
    for (const auto& [k, v] : labels) parts.push_back(absl::StrCat(k, "=", Printable(v)));
    std::string name =
        parts.empty() ? m.name() : absl::StrCat(m.name(), "{", absl::StrJoin(parts, ","), "}");
    if (m.type() == "histogram") {
      absl::PrintF("%-64s count %d, mean %s, p50 %s, p99 %s\n", name,
                   static_cast<uint64_t>(m.value()),
                   m.value() > 0 ? absl::StrFormat("%.6fs", m.sum() / m.value()) : "-",
                   Quantile(m, 0.5), Quantile(m, 0.99));
    } else {
      absl::PrintF("%-64s %s\n", name,
                   m.value() == std::floor(m.value()) && std::fabs(m.value()) < 1e15
                       ? absl::StrCat(static_cast<int64_t>(m.value()))
                       : absl::StrFormat("%g", m.value()));
    }
  }
  return kExitOk;
}

// ------------------------------------------------------- segments, attachments

int CmdSegments(Ctl& ctl) {
  admin::ListRequest req;
  req.set_cluster(ctl.cluster);
  admin::ListResponse r;
  auto st = ctl.stub->List(Context().get(), req, &r);
  if (!st.ok()) return Fail(ctl, st);
  admin::SegmentList list;
  for (auto& s : *r.mutable_segments()) {
    s.set_name(JsonName(s.name()));  // printable from here on
    s.set_state(Printable(s.state()));
  }
  list.mutable_segments()->Swap(r.mutable_segments());
  for (auto& p : *r.mutable_unreachable()) {
    p.set_address(Printable(p.address()));
    p.set_error(Printable(p.error()));
  }
  list.mutable_unreachable()->Swap(r.mutable_unreachable());
  if (ctl.json) {
    PrintJson(list);
  } else {
    absl::PrintF("%-20s %-5s %-12s %-8s %-6s %-6s %-16s %s\n", "SEGID", "NODE", "SIZE", "PID",
                 "MODE", "GRANTS", "NAME", "STATE");
    for (const auto& s : list.segments())
      absl::PrintF("%-20ld %-5lu %-12lu %-8d %-6o %-6u %-16s %s\n", static_cast<long>(s.segid()),
                   static_cast<unsigned long>((s.segid() >> 48) & 0x7fff),
                   static_cast<unsigned long>(s.size()), s.pid(), s.mode(), s.attachments(),
                   s.name().empty() ? "-" : s.name().c_str(), s.state().c_str());
  }
  // Never a partial list taken for the cluster's: name who is missing
  // (stderr, so the table stays parseable; in the JSON as "unreachable").
  for (const auto& p : list.unreachable())
    std::fprintf(stderr, "tetherctl: node %u (%s) not reached, its segments are not listed: %s\n",
                 p.node_id(), p.address().c_str(), p.error().c_str());
  return kExitOk;
}

// An older daemon sends no kind: its attachments are all copies.
std::string Kind(const admin::AttachmentInfo& a) { return a.kind().empty() ? "copy" : a.kind(); }

int CmdAttachments(Ctl& ctl) {
  admin::ListResponse r;
  auto st = ctl.stub->List(Context().get(), admin::ListRequest(), &r);
  if (!st.ok()) return Fail(ctl, st);
  admin::AttachmentList list;
  for (auto& a : *r.mutable_attachments()) {
    a.set_kind(Printable(Kind(a)));
    a.set_state(Printable(a.state()));  // may carry a home's revocation reason
  }
  list.mutable_attachments()->Swap(r.mutable_attachments());
  if (ctl.json) {
    PrintJson(list);
    return kExitOk;
  }
  absl::PrintF("%-20s %-20s %-8s %-12s %-3s %-6s %-10s %-10s %-8s %s\n", "ATTACHMENT", "SEGID",
               "PID", "SIZE", "RW", "KIND", "RESIDENT", "DIRTY", "FAULTS", "STATE");
  for (const auto& a : list.attachments())
    absl::PrintF("%-20lu %-20ld %-8d %-12lu %-3s %-6s %-10lu %-10lu %-8lu %s\n",
                 static_cast<unsigned long>(a.attach_id()), static_cast<long>(a.segid()), a.pid(),
                 static_cast<unsigned long>(a.size()), a.writable() ? "rw" : "r", a.kind().c_str(),
                 static_cast<unsigned long>(a.resident_bytes()),
                 static_cast<unsigned long>(a.dirty_bytes()),
                 static_cast<unsigned long>(a.faults()), a.state().c_str());
  return kExitOk;
}

// ------------------------------------------------------------ lookup, reload

int CmdLookup(Ctl& ctl) {
  admin::LookupRequest req;
  req.set_name(ctl.args[0]);
  admin::LookupResponse r;
  auto st = ctl.stub->Lookup(Context().get(), req, &r);
  if (!st.ok()) return Fail(ctl, st);
  r.set_name(JsonName(ctl.args[0]));  // (an older daemon does not echo it)
  if (ctl.json) {
    PrintJson(r);
  } else {
    absl::PrintF("%s: segid %ld, %lu bytes\n", Printable(ctl.args[0]), static_cast<long>(r.segid()),
                 static_cast<unsigned long>(r.size()));
  }
  return kExitOk;
}

int CmdReload(Ctl& ctl) {
  admin::ReloadResponse r;
  auto st = ctl.stub->Reload(Context().get(), admin::ReloadRequest(), &r);
  if (!st.ok()) return Fail(ctl, st);
  if (ctl.json) {
    PrintJson(r);
  } else {
    absl::PrintF("reloaded: %s\n", Printable(r.peers()));
    if (r.has_tls())
      absl::PrintF("reloaded: certificate serial %s, expires %s\n", r.tls().serial(),
                   Date(r.tls().not_after_unix()));
  }
  return kExitOk;
}

int CmdLogLevel(Ctl& ctl) {
  admin::LogLevelRequest req;
  if (!ctl.args.empty()) req.set_level(ctl.args[0]);
  admin::LogLevelResponse r;
  auto st = ctl.stub->LogLevel(Context().get(), req, &r);
  if (!st.ok()) return Fail(ctl, st);
  if (ctl.json) {
    PrintJson(r);
  } else {
    absl::PrintF("log level: %s\n", r.level());
  }
  return kExitOk;
}

// ------------------------------------------------------------ drain, revoke

int Drain(Ctl& ctl, bool undrain) {
  admin::DrainRequest req;
  req.set_undrain(undrain);
  admin::DrainResponse r;
  auto st = ctl.stub->Drain(LongContext().get(), req, &r);
  if (!st.ok()) return Fail(ctl, st);
  if (ctl.json) {
    PrintJson(r);
  } else if (r.draining()) {
    absl::PrintF(
        "draining: new exports and attachments are refused; %u segments exported and %u "
        "attachments remain\n",
        r.segments_exported(), r.attachments());
    if (r.write_back_error().empty())
      absl::PrintF("dirty pages written back: %s\n", Bytes(r.written_back_bytes()));
  } else {
    absl::PrintF("not draining: new exports and attachments are accepted\n");
  }
  if (!r.write_back_error().empty()) {
    if (!ctl.json)
      std::fprintf(stderr, "tetherctl: write-back failed: %s\n",
                   Printable(r.write_back_error()).c_str());
    return kExitFailed;
  }
  return kExitOk;
}

int CmdDrain(Ctl& ctl) { return Drain(ctl, false); }
int CmdUndrain(Ctl& ctl) { return Drain(ctl, true); }

int CmdRevoke(Ctl& ctl) {
  admin::RevokeRequest req;
  uint64_t segid = 0;
  const std::string& arg = ctl.args[0];
  bool ok = arg.size() > 2 && (arg[1] == 'x' || arg[1] == 'X') && arg[0] == '0'
                ? absl::SimpleHexAtoi(arg.substr(2), &segid)
                : absl::SimpleAtoi(arg, &segid);
  if (!ok || segid == 0) {
    std::fprintf(stderr, "tetherctl: revoke: %s is not a segid (decimal, or hex with 0x)\n",
                 Printable(arg).c_str());
    return kExitUsage;
  }
  req.set_segid(segid);
  if (ctl.args.size() > 1) req.set_reason(ctl.args[1]);
  admin::RevokeResponse r;
  auto st = ctl.stub->Revoke(Context().get(), req, &r);
  if (!st.ok()) return Fail(ctl, st);
  if (ctl.json) {
    PrintJson(r);
  } else if (r.nodes().empty()) {
    absl::PrintF("segment %#lx: no node held a grant\n", static_cast<unsigned long>(segid));
  } else {
    absl::PrintF("segment %#lx: grants revoked, node(s) %s fenced\n",
                 static_cast<unsigned long>(segid), absl::StrJoin(r.nodes(), ", "));
  }
  return kExitOk;
}

// --------------------------------------------------------------- the table

struct Command {
  const char* name;
  const char* args;  // for the usage line
  const char* what;
  size_t min_args, max_args;
  int (*run)(Ctl&);
};

const Command kCommands[] = {
    {"status", "", "daemon, cache, peers, drain state", 0, 0, CmdStatus},
    {"stats", "", "the daemon's metrics (as GET /metrics)", 0, 0, CmdStats},
    {"segments", "[--cluster]", "exported segments (this node, or all nodes)", 0, 0, CmdSegments},
    {"attachments", "", "this node's mappings of segments", 0, 0, CmdAttachments},
    {"lookup", "NAME", "segid of a published name", 1, 1, CmdLookup},
    {"reload", "", "read the peer list and the TLS certificate, key and CA again (as SIGHUP)", 0, 0,
     CmdReload},
    {"log-level", "[LEVEL]", "the daemon's log level; set it: debug|info|warning|error", 0, 1,
     CmdLogLevel},
    {"drain", "", "refuse new exports and attachments; write back dirty pages", 0, 0, CmdDrain},
    {"undrain", "", "accept new exports and attachments again", 0, 0, CmdUndrain},
    {"revoke", "SEGID [REASON]", "revoke every grant of a segment homed here", 1, 2, CmdRevoke},
};

void Usage(FILE* out) {
  std::fprintf(out, "usage: tetherctl [--socket PATH] [--json] COMMAND [ARGS]\n");
  for (const Command& c : kCommands) {
    std::string head = absl::StrCat(c.name, *c.args ? " " : "", c.args);
    std::fprintf(out, "  %-26s %s\n", head.c_str(), c.what);
  }
  std::fprintf(out, "exit: 0 done, 1 refused or failed, 2 usage, 3 tetherd not reachable\n");
}

}  // namespace

int main(int argc, char** argv) {
  Ctl ctl;
  const char* env = std::getenv("TETHER_ADMIN_SOCKET");
  ctl.socket = env && *env ? env : "/run/tether/admin.sock";
  std::vector<std::string> words;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") {
      ctl.json = true;
    } else if (a == "--cluster") {
      ctl.cluster = true;
    } else if (a == "--socket" && i + 1 < argc) {
      ctl.socket = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      ctl.socket = a.substr(9);
    } else if (a == "-h" || a == "--help") {
      Usage(stdout);
      return kExitOk;
    } else if (a.size() > 1 && a[0] == '-' && !(words.size() >= 1 && words[0] == "revoke")) {
      std::fprintf(stderr, "tetherctl: unknown option %s\n", Printable(a).c_str());
      Usage(stderr);
      return kExitUsage;
    } else {
      words.push_back(a);
    }
  }
  if (words.empty()) {
    Usage(stderr);
    return kExitUsage;
  }
  const Command* cmd = nullptr;
  for (const Command& c : kCommands)
    if (words[0] == c.name) cmd = &c;
  ctl.args.assign(words.begin() + 1, words.end());
  if (!cmd || ctl.args.size() < cmd->min_args || ctl.args.size() > cmd->max_args ||
      (ctl.cluster && std::string(cmd->name) != "segments")) {
    if (!cmd) std::fprintf(stderr, "tetherctl: unknown command %s\n", Printable(words[0]).c_str());
    Usage(stderr);
    return kExitUsage;
  }
  ctl.stub = admin::Admin::NewStub(
      grpc::CreateChannel("unix:" + ctl.socket, grpc::InsecureChannelCredentials()));
  return cmd->run(ctl);
}
