// RdmaTransport's public API (rdma_transport.h): construction, Listen,
// Read/Write (handed to the requester, rdma_requester.cc), Disconnect and
// Shutdown. Connections: rdma_connection.cc; the home side:
// rdma_responder.cc; shared state: rdma_transport_internal.h.
#include "daemon/transport/rdma_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"
#include "daemon/transport/rdma_transport_internal.h"
#include "daemon/transport/socket_address.h"

namespace tether {

RdmaTransport::RdmaTransport(uint32_t local_node) : RdmaTransport(local_node, Options()) {}

RdmaTransport::RdmaTransport(uint32_t local_node, Options options)
    : local_node_(local_node), options_(options) {}

RdmaTransport::~RdmaTransport() { Shutdown(); }

absl::Status RdmaTransport::CheckOptions(const Options& o) {
  RETURN_IF_ERROR(CheckRdmaLimits(o.queue_depth, o.slot_bytes));
  if (o.max_connections == 0) return absl::InvalidArgumentError("rdma: max_connections is 0");
  if (o.tos < -1 || o.tos > 255)
    return absl::InvalidArgumentError(absl::StrCat("rdma: ToS ", o.tos, " outside 0..255"));
  // 0 would mean "wait for ever" on InfiniBand; over 31 the kernel refuses.
  if (o.ack_timeout != -1 && (o.ack_timeout < 1 || o.ack_timeout > 31))
    return absl::InvalidArgumentError(
        absl::StrCat("rdma: ACK timeout exponent ", o.ack_timeout, " outside 1..31"));
  if (o.source.empty()) return absl::OkStatus();
  // A source address must be one a verbs device serves: bind an id to it.
  ASSIGN_OR_RETURN(sockaddr_storage ss, NumericSocketAddress(o.source));
  rdma_event_channel* ch = rdma_create_event_channel();
  if (ch == nullptr) return ErrnoStatus(errno, "rdma_create_event_channel");
  rdma_cm_id* id = nullptr;
  absl::Status st;
  if (rdma_create_id(ch, &id, nullptr, RDMA_PS_TCP) != 0) {
    st = ErrnoStatus(errno, "rdma_create_id");
  } else if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&ss)) != 0) {
    st =
        ErrnoStatus(errno, absl::StrCat("rdma source ", o.source, ": not an address of this host"));
  } else if (id->verbs == nullptr) {
    st = ErrnoStatus(ENODEV, absl::StrCat("rdma source ", o.source, ": no rdma device serves it"));
  }
  if (id != nullptr) rdma_destroy_id(id);
  rdma_destroy_event_channel(ch);
  return st;
}

absl::Status RdmaTransport::Listen(const std::string& address, std::string secret,
                                   BlockServer* server, NoticeServer* /*notices: tcp only*/) {
  if (secret.size() < 16) return absl::InvalidArgumentError("data token secret too short");
  RETURN_IF_ERROR(CheckRdmaLimits(options_.queue_depth, options_.slot_bytes));
  ASSIGN_OR_RETURN(sockaddr_storage ss, NumericSocketAddress(address));
  auto l = std::make_unique<Listener>();
  l->cm = rdma_create_event_channel();
  if (l->cm == nullptr) return ErrnoStatus(errno, "rdma_create_event_channel");
  if (rdma_create_id(l->cm, &l->id, nullptr, RDMA_PS_TCP) != 0)
    return ErrnoStatus(errno, "rdma_create_id");
  if (rdma_bind_addr(l->id, reinterpret_cast<sockaddr*>(&ss)) != 0)
    return ErrnoStatus(
        errno, absl::StrCat("rdma_bind_addr ", address, " (no rdma device on that address?)"));
  if (l->id->verbs == nullptr && reinterpret_cast<sockaddr_in*>(&ss)->sin_addr.s_addr != 0)
    return ErrnoStatus(ENODEV, absl::StrCat("no rdma device serves ", address));
  if (options_.tos >= 0) {
    // Connections accepted on it start with this ToS (the home's answers
    // leave in the same class as the requests).
    uint8_t tos = static_cast<uint8_t>(options_.tos);
    if (rdma_set_option(l->id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, sizeof(tos)) != 0)
      return ErrnoStatus(errno, "rdma_set_option(TOS) on the listener");
  }
  if (rdma_listen(l->id, 64) != 0) return ErrnoStatus(errno, "rdma_listen");
  l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (l->wake_fd < 0) return ErrnoStatus(errno, "eventfd");
  std::string host;
  uint16_t port = 0;
  RETURN_IF_ERROR(ParseHostPort(address, &host, &port));
  bound_address_ = absl::StrCat(host.find(':') != std::string::npos ? "[" + host + "]" : host, ":",
                                ntohs(rdma_get_src_port(l->id)));
  secret_ = std::move(secret);
  server_ = server;
  // With one CPU online the connection's thread serves the exporter
  // itself: a hand-off to a worker would only add a switch per request
  // (measured under the VM tier: tests/bench/README.md).
  int workers = options_.exporter_workers;
  if (workers < 0) workers = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? ExporterPool::kWorkers : 0;
  if (workers > 0) {
    exporter_ = std::make_unique<ExporterPool>();
    for (int i = 0; i < workers; ++i) {
      exporter_->threads.emplace_back([pool = exporter_.get()] {
        NameThisThread("tt-rdma-export");
        while (auto job = pool->jobs.Pop()) RunExporterJob(*job);
      });
    }
  }
  listener_ = std::move(l);
  listen_thread_ = std::thread([this] {
    NameThisThread("tt-rdma-listen");
    ListenLoop();
  });
  return absl::OkStatus();
}

std::string RdmaTransport::bound_address() const { return bound_address_; }

void RdmaTransport::Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<uint8_t> dst, Done done) {
  Submit(home, true, segid, grant, offset, dst, {}, std::move(done));
}

void RdmaTransport::Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                          absl::Span<const uint8_t> src, Done done) {
  Submit(home, false, segid, grant, offset, {}, src, std::move(done));
}

void RdmaTransport::WriteDiff(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                              uint64_t offset, absl::Span<const uint8_t> diff, Done done) {
  Submit(home, false, segid, grant, offset, {}, diff, std::move(done), nullptr, true);
}

void RdmaTransport::ReadInPlace(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                                uint64_t offset, absl::Span<uint8_t> dst, ReadDone done) {
  Submit(home, true, segid, grant, offset, dst, {}, nullptr, std::move(done));
}

void RdmaTransport::Disconnect(uint32_t node) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(node);
  if (it == conns_.end()) return;
  Connection* c = it->second.get();
  {
    absl::MutexLock clock(&c->mu);
    if (!c->dead) {
      // The thread fails what is owed once it sees `dead`.
      c->dead = true;
      c->why = "disconnected";
    }
  }
  c->Wake();
  conns_.erase(it);
}

void RdmaTransport::Shutdown() {
  if (shutting_down_.exchange(true)) return;
  if (listener_) {
    uint64_t one = 1;
    (void)!write(listener_->wake_fd, &one, sizeof(one));
  }
  if (listen_thread_.joinable()) listen_thread_.join();
  std::vector<std::shared_ptr<Connection>> conns;
  {
    absl::MutexLock lock(&mu_);
    conns.swap(all_conns_);
    conns_.clear();
  }
  for (auto& c : conns) c->Wake();
  for (auto& c : conns)
    if (c->thread.joinable()) c->thread.join();
  conns.clear();  // tears down QPs, MRs, ids
  // Every connection's thread waited for its exporter jobs: none is left.
  if (exporter_) {
    exporter_->jobs.Stop();
    for (auto& t : exporter_->threads) t.join();
  }
  listener_.reset();
}

}  // namespace tether
