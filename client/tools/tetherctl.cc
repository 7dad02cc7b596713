// tetherctl: look at a node's tetherd (status, segments, attachments,
// name lookup) and have it reload its TLS files, over its admin socket
// ($TETHER_ADMIN_SOCKET or /run/tether/admin.sock). Tables by default,
// --json for scripts.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "admin.grpc.pb.h"
#include "daemon/common/segment_name.h"

namespace {

using tether::admin::Admin;

void Usage() {
  std::fprintf(stderr,
               "usage: tetherctl [--socket PATH] [--json] COMMAND\n"
               "  status                 daemon, cache and peers\n"
               "  segments [--cluster]   exported segments (this node, or all nodes)\n"
               "  attachments            this node's mappings of segments\n"
               "  lookup NAME            segid of a published name\n"
               "  reload                 read the TLS certificate, key and CA again (as SIGHUP)\n");
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

// A segment name as a terminal may show it: names come from daemons that
// may be older than the rule that they be printable (segment_name.h), or
// from another node's, so anything not printable is written as \xNN.
std::string Printable(const std::string& name) { return tether::EscapeName(name); }

// In JSON: the name itself when it is printable (it round-trips), else its
// escaped form (a script sees the backslashes rather than the bytes).
std::string JsonName(const std::string& name) {
  return JsonEscape(tether::ValidateSegmentName(name).ok() ? name : Printable(name));
}

int Fail(const grpc::Status& st, const std::string& socket) {
  std::fprintf(stderr, "tetherctl: %s (daemon admin socket %s)\n",
               Printable(st.error_message()).c_str(), socket.c_str());
  return 1;
}

std::string Date(int64_t unix_seconds) {
  return absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::FromUnixSeconds(unix_seconds),
                          absl::UTCTimeZone());
}

std::string TlsJson(const tether::admin::StatusResponse& r) {
  if (!r.has_tls()) return "null";
  const auto& t = r.tls();
  return absl::StrFormat(
      R"({"serial":"%s","sha256":"%s","not_after":%d,"ca_not_after":%d,"days_left":%d})",
      t.serial(), t.sha256(), t.not_after_unix(), t.ca_not_after_unix(),
      (t.not_after_unix() - absl::ToUnixSeconds(absl::Now())) / 86400);
}

void PrintStatus(const tether::admin::StatusResponse& r, bool json) {
  if (json) {
    std::vector<std::string> peers;
    for (const auto& p : r.peers())
      peers.push_back(absl::StrFormat(
          R"({"node_id":%d,"address":"%s","transport":"%s","reachable":%s,"error":"%s"})",
          p.node_id(), JsonEscape(p.address()), p.transport(), p.reachable() ? "true" : "false",
          JsonEscape(p.error())));
    const auto& c = r.counters();
    std::string counters =
        absl::StrFormat(R"({"fetched_bytes":%d,"fetch_copy_bytes":%d,"install_copy_bytes":%d,)"
                        R"("served_bytes":%d,"exporter_copy_bytes":%d,"serve_copy_bytes":%d})",
                        c.fetched_bytes(), c.fetch_copy_bytes(), c.install_copy_bytes(),
                        c.served_bytes(), c.exporter_copy_bytes(), c.serve_copy_bytes());
    absl::PrintF(R"({"node_id":%d,"incarnation":%d,"local_socket":"%s","peer_address":"%s",)"
                 R"("data_address":"%s","rdma_address":"%s","cache_budget_bytes":%d,)"
                 R"("cache_resident_bytes":%d,"uptime_ms":%d,"peers":[%s],"counters":%s,"tls":%s})"
                 "\n",
                 r.node_id(), r.incarnation(), JsonEscape(r.local_socket()),
                 JsonEscape(r.peer_address()), JsonEscape(r.data_address()),
                 JsonEscape(r.rdma_address()), r.cache_budget_bytes(), r.cache_resident_bytes(),
                 r.uptime_ms(), absl::StrJoin(peers, ","), counters, TlsJson(r));
    return;
  }
  absl::PrintF("node %u (incarnation %#lx), up %.1f s\n", r.node_id(),
               static_cast<unsigned long>(r.incarnation()), r.uptime_ms() / 1000.0);
  absl::PrintF("  local socket  %s\n  peer service  %s\n  data (tcp)    %s\n",
               r.local_socket().c_str(), r.peer_address().c_str(), r.data_address().c_str());
  absl::PrintF("  data (rdma)   %s\n", r.rdma_address().empty()
                                           ? "- (no usable verbs device, or --rdma=off)"
                                           : r.rdma_address().c_str());
  absl::PrintF("  cache         %.1f of %.1f MiB\n", r.cache_resident_bytes() / 1048576.0,
               r.cache_budget_bytes() / 1048576.0);
  if (r.has_tls()) {
    const auto& t = r.tls();
    absl::PrintF("  certificate   serial %s, expires %s (%d days)\n  cluster CA    expires %s\n",
                 t.serial(), Date(t.not_after_unix()),
                 (t.not_after_unix() - absl::ToUnixSeconds(absl::Now())) / 86400,
                 Date(t.ca_not_after_unix()));
  } else {
    absl::PrintF("  certificate   - (plaintext between nodes: --insecure_peers)\n");
  }
  absl::PrintF("\n%-6s %-24s %-9s %-10s %s\n", "PEER", "ADDRESS", "TRANSPORT", "STATE", "ERROR");
  for (const auto& p : r.peers())
    absl::PrintF("%-6u %-24s %-9s %-10s %s\n", p.node_id(), p.address().c_str(),
                 p.transport().c_str(), p.reachable() ? "up" : "down", p.error().c_str());
}

void PrintSegments(const tether::admin::ListResponse& r, bool json) {
  if (json) {
    for (const auto& s : r.segments())
      absl::PrintF(R"({"segid":%d,"node":%d,"size":%d,"vaddr":%d,"pid":%d,"uid":%d,"gid":%d,)"
                   R"("mode":%d,"name":"%s","attachments":%d,"state":"%s"})"
                   "\n",
                   s.segid(), (s.segid() >> 48) & 0x7fff, s.size(), s.vaddr(), s.pid(), s.uid(),
                   s.gid(), s.mode(), JsonName(s.name()), s.attachments(), JsonEscape(s.state()));
    return;
  }
  absl::PrintF("%-20s %-5s %-12s %-8s %-6s %-6s %-16s %s\n", "SEGID", "NODE", "SIZE", "PID", "MODE",
               "GRANTS", "NAME", "STATE");
  for (const auto& s : r.segments())
    absl::PrintF("%-20ld %-5lu %-12lu %-8d %-6o %-6u %-16s %s\n", static_cast<long>(s.segid()),
                 static_cast<unsigned long>((s.segid() >> 48) & 0x7fff),
                 static_cast<unsigned long>(s.size()), s.pid(), s.mode(), s.attachments(),
                 s.name().empty() ? "-" : Printable(s.name()).c_str(),
                 Printable(s.state()).c_str());
}

// An older daemon sends no kind: its attachments are all copies.
std::string Kind(const tether::admin::AttachmentInfo& a) {
  return a.kind().empty() ? "copy" : a.kind();
}

void PrintAttachments(const tether::admin::ListResponse& r, bool json) {
  if (json) {
    for (const auto& a : r.attachments())
      absl::PrintF(R"({"attach_id":%d,"segid":%d,"offset":%d,"size":%d,"pid":%d,"writable":%s,)"
                   R"("kind":"%s","resident_bytes":%d,"dirty_bytes":%d,"faults":%d,"state":"%s"})"
                   "\n",
                   a.attach_id(), a.segid(), a.offset(), a.size(), a.pid(),
                   a.writable() ? "true" : "false", JsonEscape(Kind(a)), a.resident_bytes(),
                   a.dirty_bytes(), a.faults(), JsonEscape(a.state()));
    return;
  }
  absl::PrintF("%-20s %-20s %-8s %-12s %-3s %-6s %-10s %-10s %-8s %s\n", "ATTACHMENT", "SEGID",
               "PID", "SIZE", "RW", "KIND", "RESIDENT", "DIRTY", "FAULTS", "STATE");
  for (const auto& a : r.attachments())
    absl::PrintF("%-20lu %-20ld %-8d %-12lu %-3s %-6s %-10lu %-10lu %-8lu %s\n",
                 static_cast<unsigned long>(a.attach_id()), static_cast<long>(a.segid()), a.pid(),
                 static_cast<unsigned long>(a.size()), a.writable() ? "rw" : "r", Kind(a).c_str(),
                 static_cast<unsigned long>(a.resident_bytes()),
                 static_cast<unsigned long>(a.dirty_bytes()),
                 static_cast<unsigned long>(a.faults()), a.state().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("TETHER_ADMIN_SOCKET");
  std::string socket = env && *env ? env : "/run/tether/admin.sock";
  bool json = false, cluster = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json")
      json = true;
    else if (a == "--cluster")
      cluster = true;
    else if (a == "--socket" && i + 1 < argc)
      socket = argv[++i];
    else if (a == "-h" || a == "--help") {
      Usage();
      return 0;
    } else
      args.push_back(a);
  }
  if (args.empty()) {
    Usage();
    return 2;
  }
  auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  auto stub = Admin::NewStub(channel);
  auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(10); };
  const std::string& cmd = args[0];
  if (cmd == "status") {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    tether::admin::StatusRequest req;
    tether::admin::StatusResponse r;
    auto st = stub->Status(&ctx, req, &r);
    if (!st.ok()) return Fail(st, socket);
    PrintStatus(r, json);
    return 0;
  }
  if (cmd == "segments" || cmd == "attachments") {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    tether::admin::ListRequest req;
    req.set_cluster(cluster);
    tether::admin::ListResponse r;
    auto st = stub->List(&ctx, req, &r);
    if (!st.ok()) return Fail(st, socket);
    if (cmd == "segments") {
      PrintSegments(r, json);
    } else {
      PrintAttachments(r, json);
    }
    return 0;
  }
  if (cmd == "reload" && args.size() == 1) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    tether::admin::ReloadRequest req;
    tether::admin::ReloadResponse r;
    auto st = stub->Reload(&ctx, req, &r);
    if (!st.ok()) return Fail(st, socket);
    absl::PrintF("reloaded: certificate serial %s, expires %s\n", r.tls().serial(),
                 Date(r.tls().not_after_unix()));
    return 0;
  }
  if (cmd == "lookup" && args.size() == 2) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    tether::admin::LookupRequest req;
    req.set_name(args[1]);
    tether::admin::LookupResponse r;
    auto st = stub->Lookup(&ctx, req, &r);
    if (!st.ok()) return Fail(st, socket);
    if (json)
      absl::PrintF(R"({"name":"%s","segid":%d,"size":%d})"
                   "\n",
                   JsonName(args[1]), r.segid(), r.size());
    else
      absl::PrintF("%s: segid %ld, %lu bytes\n", Printable(args[1]), static_cast<long>(r.segid()),
                   static_cast<unsigned long>(r.size()));
    return 0;
  }
  Usage();
  return 2;
}
