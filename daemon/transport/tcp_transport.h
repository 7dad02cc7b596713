// TcpTransport: the data transport over TCP, for nodes without a verbs
// device (and the host test tier).
//
// Client side: one connection per home node, created on first use. Any
// number of requests are in flight on it; a receiver thread matches
// responses by req_id and reads READ_RESP payloads straight into the
// caller's buffer (no intermediate copy). Server side: one thread per
// connection serves requests in order through the BlockServer.
//
// Notices (home -> mapper node) have connections of their own, opened by
// Connect: on the mapper node they are then served by a thread that
// serves nothing else, so a range_begin never waits behind a read blocked
// in an exporter's memory (with two homes mapping each other), and here a
// notice never waits behind a data request's send. Notify never waits at
// all: a frame that does not fit into the socket buffer whole (a frozen
// peer that stopped reading) is answered kUnavailable at once, and one
// cut mid-frame closes the connection (issue 14, defect 7).
//
// Thread contract:
// - Listen and Shutdown: the owner's thread (tetherd's start and stop),
//   once each; Shutdown joins every thread below. Read, Write, Notify,
//   Disconnect, Connect: any thread; bound_address once Listen returned.
//   Connect opens a missing notice connection on the caller's thread
//   (connect and hello: up to ~8 s); Read and Write never wait for the
//   network: a missing data connection is made on its own thread, and
//   requests wait in it until it is up (a failed set-up answers them);
//   Notify never connects.
// - Threads: one accept thread (AcceptLoop), one serving thread per
//   incoming connection (ServeLoop: BlockServer and NoticeServer calls, in
//   arrival order), one receiver thread per outgoing connection, data or
//   notice (ReceiveLoop: `done` callbacks; a data connection's thread
//   first connects, DialThenReceive). `done` also runs inline on the
//   caller's thread when a request fails before it is sent; if the
//   connection was already dead, with that connection's mu held (SendOn),
//   so a `done` must not issue a request on this transport inline.
// - mu_ guards the connection tables and the serving threads and fds. A
//   Connection's mu (tcp_transport.cc) guards its pending and queued
//   requests, `dead`, `connecting` and fd while it connects; its send_mu serialises writes on its
//   socket, one whole frame at a time (on a notice connection, only sends that do not wait). No two
//   of these locks are ever held together.
// - Listen writes listen_fd_, bound_address_, secret_, server_ and
//   notice_server_ before the accept thread starts; they are read-only
//   after.
#ifndef TETHER_DAEMON_TRANSPORT_TCP_TRANSPORT_H_
#define TETHER_DAEMON_TRANSPORT_TCP_TRANSPORT_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/transport/transport.h"

namespace tether {

class TcpTransport : public Transport, public NoticeTransport {
 public:
  using Done = Transport::Done;  // the same type in both bases

  explicit TcpTransport(uint32_t local_node);
  ~TcpTransport() override;

  const char* name() const override { return "tcp"; }
  // Encrypt every connection this transport makes or accepts
  // (data_encryption.h; a peer that asks gets it either way). Before
  // Listen and any request. The caller checked KtlsAvailable first:
  // without kernel TLS every connection would be refused.
  void SetEncryption(bool on) { encrypt_ = on; }
  absl::Status Listen(const std::string& address, std::string secret, BlockServer* server,
                      NoticeServer* notices) override;
  std::string bound_address() const override;
  void Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
            absl::Span<uint8_t> dst, Done done) override;
  void Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Done done) override;
  void WriteDiff(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                 absl::Span<const uint8_t> diff, Done done) override;
  void Disconnect(uint32_t node) override;
  void Shutdown() override;

  // Invalidation notices (home -> mapper node) on the notice connection
  // to `node`: one round trip of our own framing instead of a gRPC call
  // (whose thread hand-offs cost ~20x a TCP round trip on small
  // machines). `payload` is at most kMaxNoticePayload. Never blocks.
  void Notify(uint32_t node, absl::Span<const uint8_t> payload, Done done) override;
  // Opens the notice connection to `peer`. Blocks up to ~8 s. (Data
  // connections are made on their own thread: Read and Write never wait
  // for the network.)
  absl::Status Connect(const DataEndpoint& peer) override;

  // Serves one connected socket on the calling thread, as the thread of an
  // accepted connection does (hello first, then requests in arrival order),
  // until the peer closes it or breaks the protocol; closes `fd`. Only after
  // Listen (its secret and servers). For the fuzz target
  // (tests/fuzz/tcp_serve_fuzz.cc), which feeds it bytes over a socketpair:
  // the request loop, without a network.
  void ServeConnection(int fd) { ServeLoop(fd); }

 private:
  struct Connection;
  struct Pending {
    absl::Span<uint8_t> dst;
    Done done;
  };

  // Connects to `home` and exchanges the hello; the connected socket.
  // Blocks up to ~8 s (connect 3 s, hello answer 5 s). With `conn`, the
  // socket is published in conn->fd while it connects.
  absl::StatusOr<int> Dial(const DataEndpoint& home, bool notices, Connection* conn);
  // The handshake (wire_format.h) on a connected socket whose reads time
  // out: as the dialer, proving this node knows its token at `home` and
  // checking that `home` does; as the listener (AcceptHandshake), the
  // other half, returning the node the peer proved to be. Errors say why
  // (EACCES: a wrong proof or node id; Aborted: the stream ended).
  absl::Status DialHandshake(int fd, const DataEndpoint& home);
  absl::StatusOr<uint32_t> AcceptHandshake(int fd);
  // The notice connection to `home`, made on the calling thread if there
  // is none.
  absl::StatusOr<std::shared_ptr<Connection>> NoticeConnection(const DataEndpoint& home);
  // The data connection to `home`; if there is none, one is made on its
  // own thread (DialThenReceive) and requests wait in it until it is up.
  // Never blocks on the network.
  absl::StatusOr<std::shared_ptr<Connection>> DataConnection(const DataEndpoint& home);
  void DialThenReceive(std::shared_ptr<Connection> conn, DataEndpoint home);
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Send(const DataEndpoint& home, int type, uint64_t segid, uint64_t grant, uint64_t offset,
            absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Done done);
  // Sends on `conn`, or queues while it is set up (`flushing`: the set-up's
  // thread sending what queued).
  void SendOn(std::shared_ptr<Connection> conn, int type, uint64_t segid, uint64_t grant,
              uint64_t offset, absl::Span<uint8_t> dst, absl::Span<const uint8_t> src, Done done,
              bool flushing = false);
  void ReceiveLoop(std::shared_ptr<Connection> conn);
  void AcceptLoop();
  void ServeLoop(int fd);

  const uint32_t local_node_;
  bool encrypt_ = false;  // SetEncryption: written before any thread reads it
  std::atomic<uint64_t> next_req_id_{1};
  std::atomic<bool> shutting_down_{false};

  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Connection>> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::shared_ptr<Connection>> notice_conns_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Connection>> all_conns_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<int> server_fds_ ABSL_GUARDED_BY(mu_);

  // Set by Listen() before the accept thread starts; read by the accept and
  // serving threads.
  int listen_fd_ = -1;
  std::string bound_address_;
  std::string secret_;
  BlockServer* server_ = nullptr;
  NoticeServer* notice_server_ = nullptr;
  std::thread accept_thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_TCP_TRANSPORT_H_
