#include "daemon/transport/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/common/data_counters.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"
#include "daemon/transport/data_encryption.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/socket_address.h"
#include "daemon/transport/wire_format.h"

namespace tether {

// An outgoing connection: for data requests (conns_) or for a home's
// invalidation notices (notice_conns_). node, fd and notices are set
// before it is shared.
//
// A data connection is made on its own thread (DialThenReceive), not on the
// caller's, which is often the node's one fault thread: a home that does
// not answer would otherwise stall every fault of the node for the
// connect and hello timeouts (~8 s). Requests sent meanwhile wait in
// `queued` and go out, in order, once the hello is answered; a failed
// set-up answers them with its status. fd is written under mu by that
// thread while `connecting` (so that Disconnect and Shutdown can cut a
// set-up short) and fixed once `connecting` is false.
struct TcpTransport::Connection {
  struct Queued {
    int type;
    uint64_t segid, grant, offset;
    absl::Span<uint8_t> dst;
    absl::Span<const uint8_t> src;
    Done done;
  };
  uint32_t node = 0;
  int fd = -1;
  bool notices = false;
  absl::Mutex send_mu;  // held while one frame is written to fd
  absl::Mutex mu;
  absl::flat_hash_map<uint64_t, Pending> pending ABSL_GUARDED_BY(mu);
  bool dead ABSL_GUARDED_BY(mu) = false;
  // Why the set-up failed, when it did: a request that finds the
  // connection dead before it left conns_ gets this answer too (refused
  // stays refused), not "lost".
  absl::Status setup_failure ABSL_GUARDED_BY(mu);
  bool connecting ABSL_GUARDED_BY(mu) = false;
  std::vector<Queued> queued ABSL_GUARDED_BY(mu);
  // Started under the transport's mu_; joined under it (GetConnection's
  // reaping) or by Shutdown once it took the connection out of all_conns_.
  std::thread receiver;
};

namespace {

// Reads exactly len bytes; false on EOF or error (errno set, 0 on EOF).
bool ReadFull(int fd, void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n > 0) {
      p += n;
      len -= static_cast<size_t>(n);
    } else if (n == 0) {
      errno = 0;
      return false;
    } else if (errno != EINTR) {
      return false;
    }
  }
  return true;
}

bool WriteFullV(int fd, struct iovec* iov, int iovcnt) {
  while (iovcnt > 0) {
    ssize_t n = ::writev(fd, iov, iovcnt);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    while (iovcnt > 0 && static_cast<size_t>(n) >= iov->iov_len) {
      n -= static_cast<ssize_t>(iov->iov_len);
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + n;
      iov->iov_len -= static_cast<size_t>(n);
    }
  }
  return true;
}

// What a send that must not wait did.
enum class SendResult { kSent, kWouldBlock, kBroken };

// Writes a whole frame without waiting: nothing (kWouldBlock: the socket
// buffer has no room, the peer is not reading), all of it (kSent), or part
// of it or an error (kBroken: the stream is cut mid-frame, the connection
// must go).
SendResult SendFrameNow(int fd, const FrameHeader& h, absl::Span<const uint8_t> payload) {
  uint8_t hdr[kFrameHeaderSize];
  EncodeHeader(h, hdr);
  struct iovec iov[2] = {{hdr, sizeof(hdr)},
                         {const_cast<uint8_t*>(payload.data()), payload.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = payload.empty() ? 1 : 2;
  const size_t total = sizeof(hdr) + payload.size();
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return SendResult::kWouldBlock;
  return n == static_cast<ssize_t>(total) ? SendResult::kSent : SendResult::kBroken;
}

bool SendFrame(int fd, const FrameHeader& h, absl::Span<const uint8_t> payload) {
  uint8_t hdr[kFrameHeaderSize];
  EncodeHeader(h, hdr);
  struct iovec iov[2] = {{hdr, sizeof(hdr)},
                         {const_cast<uint8_t*>(payload.data()), payload.size()}};
  return WriteFullV(fd, iov, payload.empty() ? 1 : 2);
}

// "host:port" of the socket's peer, for log lines.
std::string PeerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  char host[INET6_ADDRSTRLEN] = "?";
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return absl::StrCat(host, ":", ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return absl::StrCat("[", host, "]:", ntohs(a->sin6_port));
  }
  return "a local socket";
}

void TuneSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  // A peer that vanishes without a FIN fails requests within ~15 s instead
  // of the kernel's default of many minutes.
  unsigned int user_timeout_ms = 15000;
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
}

}  // namespace

TcpTransport::TcpTransport(uint32_t local_node) : local_node_(local_node) {}

TcpTransport::~TcpTransport() { Shutdown(); }

absl::Status TcpTransport::Listen(const std::string& address, std::string secret,
                                  BlockServer* server, NoticeServer* notices) {
  if (secret.size() < 16) return absl::InvalidArgumentError("data token secret too short");
  socklen_t len = 0;
  ASSIGN_OR_RETURN(sockaddr_storage ss, NumericSocketAddress(address, &len));
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, absl::StrCat("bind data transport to ", address));
  }
  if (listen(fd, 64) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "listen");
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  char host[INET6_ADDRSTRLEN] = {};
  uint16_t port = 0;
  if (bound.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&bound);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
    bound_address_ = absl::StrCat(host, ":", port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&bound);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
    bound_address_ = absl::StrCat("[", host, "]:", port);
  }
  listen_fd_ = fd;
  secret_ = std::move(secret);
  server_ = server;
  notice_server_ = notices;
  accept_thread_ = std::thread([this] {
    NameThisThread("tt-tcp-accept");
    AcceptLoop();
  });
  return absl::OkStatus();
}

std::string TcpTransport::bound_address() const { return bound_address_; }

void TcpTransport::AcceptLoop() {
  while (!shutting_down_) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (shutting_down_) return;
      if (errno == EMFILE || errno == ENFILE) {
        usleep(10000);
        continue;
      }
      return;  // listen socket shut down
    }
    TuneSocket(fd);
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      close(fd);
      return;
    }
    server_fds_.push_back(fd);
    threads_.emplace_back([this, fd] {
      NameThisThread("tt-tcp-serve");
      ServeLoop(fd);
    });
  }
}

void TcpTransport::ServeLoop(int fd) {
  uint8_t buf[kFrameHeaderSize];
  std::vector<uint8_t> data;
  uint32_t peer = 0;
  // Authenticate first: nothing else is read from an unauthenticated peer.
  // A bounded wait so that a silent connection cannot hold a thread forever.
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  {
    absl::StatusOr<uint32_t> authed = AcceptHandshake(fd);
    if (!authed.ok()) {
      // Said once per connection: the reason, and who connected. A
      // wrong proof is answered (AUTH_ACK EACCES) so that an honest
      // peer with a stale token hears why; a broken stream is not.
      if (!absl::IsAborted(authed.status()))
        TLOG_WARN("data connection from %s: %s", PeerAddress(fd),
                  std::string(authed.status().message()));
      goto out;
    }
    peer = *authed;
  }
  tv = {0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  while (!shutting_down_) {
    if (!ReadFull(fd, buf, sizeof(buf))) break;
    auto h = DecodeHeader(buf, sizeof(buf));
    if (!h.ok() || (h->type != FrameType::kReadReq && h->type != FrameType::kWriteReq &&
                    h->type != FrameType::kWriteDiffReq && h->type != FrameType::kNoticeReq)) {
      TLOG_WARN("data connection from node %d: protocol error (%s); closing", peer,
                h.ok() ? "unexpected frame type" : std::string(h.status().message()));
      break;
    }
    FrameHeader resp = *h;
    resp.status = 0;
    data.resize(h->length);
    if (h->type == FrameType::kReadReq) {
      resp.type = FrameType::kReadResp;
      absl::Status st =
          server_->ReadBlocks(peer, h->segid, h->grant, h->offset, absl::MakeSpan(data));
      if (!st.ok()) resp.status = ToWireStatus(st);
      if (!SendFrame(fd, resp,
                     st.ok() ? absl::Span<const uint8_t>(data) : absl::Span<const uint8_t>()))
        break;
      // The payload's copy into the socket (data_counters.h).
      if (st.ok()) CountBytes(Counters().serve_copy_bytes, data.size());
    } else if (h->type == FrameType::kNoticeReq) {
      resp.type = FrameType::kNoticeResp;
      if (!ReadFull(fd, data.data(), data.size())) break;
      NoticeServer* notices = notice_server_;
      absl::Status st = notices ? notices->Notice(peer, data)
                                : ErrnoStatus(EOPNOTSUPP, "this node takes no notices");
      if (!st.ok()) resp.status = ToWireStatus(st);
      resp.length = 0;
      if (!SendFrame(fd, resp, {})) break;
    } else {
      resp.type = FrameType::kWriteResp;
      if (!ReadFull(fd, data.data(), data.size())) break;
      // A diff is decoded and checked whole by the home before anything of
      // it is written (a malformed one is refused: EINVAL).
      absl::Status st = h->type == FrameType::kWriteDiffReq
                            ? server_->WriteDiff(peer, h->segid, h->grant, h->offset, data)
                            : server_->WriteBlocks(peer, h->segid, h->grant, h->offset, data);
      if (!st.ok()) resp.status = ToWireStatus(st);
      resp.length = 0;
      if (!SendFrame(fd, resp, {})) break;
    }
  }
out:
  shutdown(fd, SHUT_RDWR);
  absl::MutexLock lock(&mu_);
  for (auto& f : server_fds_) {
    if (f == fd) f = -1;
  }
  close(fd);
}

absl::StatusOr<uint32_t> TcpTransport::AcceptHandshake(int fd) {
  // A stream that ends or times out mid-handshake is Aborted (not logged:
  // port scanners and peers shutting down do that).
  auto cut = [] { return absl::AbortedError("connection closed during the handshake"); };
  uint8_t buf[kFrameHeaderSize];
  uint8_t dialer_nonce[kAuthNonceSize], listener_nonce[kAuthNonceSize];
  uint8_t proof[kAuthProofSize];
  if (!ReadFull(fd, buf, sizeof(buf))) return cut();
  auto h = DecodeHeader(buf, sizeof(buf));
  if (!h.ok() || h->type != FrameType::kHello)
    return ErrnoStatus(EPROTO,
                       absl::StrCat("bad hello: ", h.ok() ? "not a hello" : h.status().message()));
  static_assert(kHelloPayload == kAuthNonceSize && kAuthPayload == kAuthProofSize &&
                    kHelloAckPayload == kAuthNonceSize + kAuthProofSize,
                "handshake payloads");
  if (!ReadFull(fd, dialer_nonce, sizeof(dialer_nonce))) return cut();
  auto refuse = [&](FrameType type, uint64_t req_id, std::string why, int err = EACCES) {
    FrameHeader nack{type, req_id, 0, 0, 0, 0, static_cast<uint32_t>(err)};
    SendFrame(fd, nack, {});
    return ErrnoStatus(err, std::move(why));
  };
  if ((h->offset & ~kHelloEncrypt) != 0)
    return refuse(FrameType::kHelloAck, h->req_id,
                  absl::StrCat("refused: unknown hello flags ", absl::Hex(h->offset)), EPROTO);
  if (h->segid == 0 || h->segid > 0x7fff)
    return refuse(FrameType::kHelloAck, h->req_id,
                  absl::StrCat("refused: claims node id ", h->segid, ", not a node id"));
  const uint32_t claimed = static_cast<uint32_t>(h->segid);
  if (h->grant != local_node_)
    return refuse(FrameType::kHelloAck, h->req_id,
                  absl::StrCat("refused: node ", claimed, " meant to reach node ", h->grant,
                               ", this is node ", local_node_, " (a stale address?)"));
  // Encrypted when either side asks (data_encryption.h): a cluster turns
  // it on one node at a time. Both proofs sign the answer.
  const bool encrypted = encrypt_ || (h->offset & kHelloEncrypt) != 0;
  if (encrypted) {
    if (absl::Status can = KtlsAvailable(); !can.ok())
      return refuse(
          FrameType::kHelloAck, h->req_id,
          absl::StrCat("refused: ",
                       encrypt_ ? std::string("data encryption is on here")
                                : absl::StrCat("node ", claimed, " asks for data encryption"),
                       ", which this node cannot do: ", can.message()),
          EPROTONOSUPPORT);
  }
  const absl::string_view transport = encrypted ? kEncryptedTcp : "tcp";
  const std::string token = DataTokenFor(secret_, claimed);
  RETURN_IF_ERROR(FreshNonce(listener_nonce));
  std::string mine = DataAuthProof(token, transport, AuthRole::kListener, claimed, local_node_,
                                   dialer_nonce, listener_nonce);
  // Holds the answer to a hello (no lock held): a test's requester is
  // then waiting for it.
  TETHER_FAULT_POINT("tcp.serve.before_hello_ack");
  uint8_t ack_payload[kHelloAckPayload];
  std::memcpy(ack_payload, listener_nonce, kAuthNonceSize);
  std::memcpy(ack_payload + kAuthNonceSize, mine.data(), kAuthProofSize);
  FrameHeader ack{FrameType::kHelloAck, h->req_id, local_node_, 0, 0, kHelloAckPayload, 0};
  ack.offset = encrypted ? kHelloEncrypt : 0;
  if (!SendFrame(fd, ack, ack_payload)) return cut();
  if (!ReadFull(fd, buf, sizeof(buf))) return cut();
  auto a = DecodeHeader(buf, sizeof(buf));
  if (!a.ok() || a->type != FrameType::kAuth)
    return ErrnoStatus(EPROTO, absl::StrCat("node ", claimed, ": bad auth: ",
                                            a.ok() ? "not an auth" : a.status().message()));
  if (!ReadFull(fd, proof, sizeof(proof))) return cut();
  if (!DataAuthProofValid(token, transport, AuthRole::kDialer, claimed, local_node_, dialer_nonce,
                          listener_nonce, proof))
    return refuse(FrameType::kAuthAck, a->req_id,
                  absl::StrCat("refused: claims node ", claimed,
                               " but its proof is wrong (a wrong or stale data token, or a "
                               "replayed handshake)"));
  FrameHeader done{FrameType::kAuthAck, a->req_id, local_node_, 0, 0, 0, 0};
  if (!SendFrame(fd, done, {})) return cut();
  // The last plaintext byte either way has crossed: from here on, records.
  if (encrypted) {
    absl::Status st = EncryptConnection(fd, token, AuthRole::kListener, claimed, local_node_,
                                        dialer_nonce, listener_nonce);
    if (!st.ok())
      return ErrnoStatus(ToErrno(st), absl::StrCat("node ", claimed,
                                                   ": encrypting the connection: ", st.message()));
  }
  return claimed;
}

absl::Status TcpTransport::DialHandshake(int fd, const DataEndpoint& home) {
  uint8_t dialer_nonce[kAuthNonceSize];
  RETURN_IF_ERROR(FreshNonce(dialer_nonce));
  FrameHeader hello{FrameType::kHello, 0, local_node_, home.node_id, 0, kHelloPayload, 0};
  hello.offset = encrypt_ ? kHelloEncrypt : 0;  // the flags
  if (!SendFrame(fd, hello, dialer_nonce)) return ErrnoStatus(errno, "hello to");
  uint8_t buf[kFrameHeaderSize];
  if (!ReadFull(fd, buf, sizeof(buf))) return ErrnoStatus(errno ? errno : ECONNRESET, "hello from");
  auto ack = DecodeHeader(buf, sizeof(buf));
  if (!ack.ok() || ack->type != FrameType::kHelloAck)
    return ErrnoStatus(EPROTO, "bad hello ack from");
  if (ack->status == EPROTONOSUPPORT)
    return ErrnoStatus(EPROTONOSUPPORT,
                       "data encryption asked for, and not possible (no kernel TLS: see "
                       "its log) at");
  if (ack->status != 0) return ErrnoStatus(static_cast<int>(ack->status), "hello rejected by");
  const bool encrypted = (ack->offset & kHelloEncrypt) != 0;
  if (encrypt_ && !encrypted)
    return ErrnoStatus(EPROTO, "data encryption asked for, a plaintext connection offered by");
  if (encrypted && !encrypt_) {
    // The home asks for it: we follow if this kernel can.
    if (absl::Status can = KtlsAvailable(); !can.ok())
      return ErrnoStatus(EPROTONOSUPPORT, absl::StrCat("this node cannot encrypt (", can.message(),
                                                       ") as data encryption is asked for by"));
  }
  const absl::string_view transport = encrypted ? kEncryptedTcp : "tcp";
  uint8_t payload[kHelloAckPayload];
  if (!ReadFull(fd, payload, sizeof(payload)))
    return ErrnoStatus(errno ? errno : ECONNRESET, "hello from");
  const uint8_t* listener_nonce = payload;
  if (ack->segid != home.node_id)
    return ErrnoStatus(EACCES, absl::StrCat("wrong node (it says it is node ", ack->segid,
                                            ") answered the hello at"));
  if (!DataAuthProofValid(home.token, transport, AuthRole::kListener, local_node_, home.node_id,
                          dialer_nonce, listener_nonce, payload + kAuthNonceSize)) {
    // Not the home we got the token from: an impostor, or a home that
    // restarted since its Hello (a new secret). Nothing of ours went out.
    TLOG_WARN(
        "data connection to node %d at %s: its proof is wrong (an impostor, or it "
        "restarted since its Hello): refused",
        home.node_id, home.address);
    return ErrnoStatus(EACCES, "failed authentication (wrong proof) of");
  }
  std::string proof = DataAuthProof(home.token, transport, AuthRole::kDialer, local_node_,
                                    home.node_id, dialer_nonce, listener_nonce);
  FrameHeader auth{FrameType::kAuth, 1, local_node_, 0, 0, kAuthPayload, 0};
  if (!SendFrame(fd, auth,
                 absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(proof.data()), proof.size())))
    return ErrnoStatus(errno, "auth to");
  if (!ReadFull(fd, buf, sizeof(buf)))
    return ErrnoStatus(errno ? errno : ECONNRESET, "auth answer from");
  auto done = DecodeHeader(buf, sizeof(buf));
  if (!done.ok() || done->type != FrameType::kAuthAck)
    return ErrnoStatus(EPROTO, "bad auth answer from");
  if (done->status != 0) return ErrnoStatus(static_cast<int>(done->status), "rejected by");
  if (encrypted) {
    absl::Status st = EncryptConnection(fd, home.token, AuthRole::kDialer, local_node_,
                                        home.node_id, dialer_nonce, listener_nonce);
    if (!st.ok())
      return ErrnoStatus(ToErrno(st),
                         absl::StrCat("encrypting (", st.message(), ") the connection to"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> TcpTransport::Dial(const DataEndpoint& home, bool notices, Connection* conn) {
  if (home.address.empty())
    return absl::UnavailableError(absl::StrCat("node ", home.node_id, " has no data address"));
  if (home.token.size() != kDataTokenSize)
    return ErrnoStatus(EINVAL, absl::StrCat("no data token for node ", home.node_id));
  socklen_t len = 0;
  ASSIGN_OR_RETURN(sockaddr_storage ss, NumericSocketAddress(home.address, &len));
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  if (conn != nullptr) {
    // Visible to Disconnect and Shutdown, which shut it down to cut the
    // set-up short (poll and read below then return at once).
    absl::MutexLock lock(&conn->mu);
    if (conn->dead) {
      close(fd);
      return absl::UnavailableError(absl::StrCat("connection to node ", home.node_id, " closed"));
    }
    conn->fd = fd;
  }
  auto fail = [&](int err, const std::string& what) {
    if (conn != nullptr) {
      absl::MutexLock lock(&conn->mu);
      conn->fd = -1;
    }
    close(fd);
    return ErrnoStatus(err, absl::StrCat(what, " node ", home.node_id, " at ", home.address));
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) return fail(errno, "connect to");
    pollfd p{fd, POLLOUT, 0};
    const absl::Time give_up = absl::Now() + absl::Seconds(3);
    int n;
    do {  // a signal is not a timeout
      n = poll(
          &p, 1,
          static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(give_up - absl::Now()))));
    } while (n < 0 && errno == EINTR);
    if (n != 1) return fail(n == 0 ? ETIMEDOUT : errno, "connect to");
    int err = 0;
    socklen_t elen = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) return fail(err, "connect to");
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  TuneSocket(fd);
  if (notices) {
    // Room for a few of the largest notices: Notify sends only whole
    // frames that fit now, so a peer that reads must never be short of it
    // (the kernel caps this at net.core.wmem_max).
    int bytes = static_cast<int>(8 * (kMaxNoticePayload + kFrameHeaderSize));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  }
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (absl::Status st = DialHandshake(fd, home); !st.ok())
    return fail(ToErrno(st), std::string(st.message()));
  tv = {0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

void TcpTransport::ReapLocked() {
  // Connections whose thread has finished (only this list still holds
  // them).
  for (auto rit = all_conns_.begin(); rit != all_conns_.end();) {
    if (rit->use_count() == 1) {
      (*rit)->receiver.join();
      close((*rit)->fd);
      rit = all_conns_.erase(rit);
    } else {
      ++rit;
    }
  }
}

absl::StatusOr<std::shared_ptr<TcpTransport::Connection>> TcpTransport::NoticeConnection(
    const DataEndpoint& home) {
  {
    absl::MutexLock lock(&mu_);
    auto it = notice_conns_.find(home.node_id);
    if (it != notice_conns_.end()) return it->second;
  }
  ASSIGN_OR_RETURN(int fd, Dial(home, /*notices=*/true, nullptr));
  auto conn = std::make_shared<Connection>();
  conn->node = home.node_id;
  conn->fd = fd;
  conn->notices = true;
  absl::MutexLock lock(&mu_);
  if (shutting_down_) {
    close(fd);
    return absl::UnavailableError("transport shutting down");
  }
  auto [it, inserted] = notice_conns_.emplace(home.node_id, conn);
  if (!inserted) {  // lost a race with another connector: use theirs
    close(fd);
    return it->second;
  }
  conn->receiver = std::thread([this, conn] {
    NameThisThread("tt-tcp-notice");
    ReceiveLoop(conn);
  });
  ReapLocked();
  all_conns_.push_back(conn);
  return conn;
}

absl::StatusOr<std::shared_ptr<TcpTransport::Connection>> TcpTransport::DataConnection(
    const DataEndpoint& home) {
  if (home.address.empty())
    return absl::UnavailableError(absl::StrCat("node ", home.node_id, " has no data address"));
  auto conn = std::make_shared<Connection>();
  conn->node = home.node_id;
  {
    absl::MutexLock clock(&conn->mu);  // not shared yet (no two locks held)
    conn->connecting = true;
  }
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return absl::UnavailableError("transport shutting down");
  auto it = conns_.find(home.node_id);
  if (it != conns_.end()) return it->second;  // live, or being set up: one per node
  conns_.emplace(home.node_id, conn);
  conn->receiver = std::thread([this, conn, home] {
    NameThisThread("tt-tcp-data");
    DialThenReceive(conn, home);
  });
  ReapLocked();
  all_conns_.push_back(conn);
  return conn;
}

void TcpTransport::DialThenReceive(std::shared_ptr<Connection> conn, DataEndpoint home) {
  TETHER_FAULT_POINT("tcp.dial.before_connect");
  absl::StatusOr<int> fd = Dial(home, /*notices=*/false, conn.get());
  if (fd.ok()) {
    // What queued goes out in the order it was sent; `connecting` stays
    // set (later sends queue behind) until the queue is empty.
    while (true) {
      std::vector<Connection::Queued> batch;
      {
        absl::MutexLock lock(&conn->mu);
        batch.swap(conn->queued);
        if (batch.empty()) {
          conn->connecting = false;
          break;
        }
      }
      for (auto& q : batch)
        SendOn(conn, q.type, q.segid, q.grant, q.offset, q.dst, q.src, std::move(q.done),
               /*flushing=*/true);
    }
    ReceiveLoop(conn);
    return;
  }
  // Nothing was sent (DataPath may send it again), unless the home said
  // no: refused (no listener) or rejected our hello; a retry would only
  // hear that again.
  absl::Status st = fd.status();
  int err = ToErrno(st);
  bool refused = err == ECONNREFUSED || err == EACCES || err == EPERM ||
                 absl::StrContains(st.message(), "rejected by");
  if (!refused && !absl::IsInvalidArgument(st)) st = NotSent(st);
  std::vector<Connection::Queued> queued;
  {
    absl::MutexLock lock(&conn->mu);
    conn->connecting = false;
    conn->dead = true;
    conn->setup_failure = st;
    queued.swap(conn->queued);
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = conns_.find(conn->node);
    if (it != conns_.end() && it->second == conn) conns_.erase(it);
  }
  for (auto& q : queued) std::move(q.done)(st);
}

void TcpTransport::Send(const DataEndpoint& home, int type, uint64_t segid, uint64_t grant,
                        uint64_t offset, absl::Span<uint8_t> dst, absl::Span<const uint8_t> src,
                        Done done) {
  size_t len = type == static_cast<int>(FrameType::kReadReq) ? dst.size() : src.size();
  if (len == 0 || len > kMaxPayload) {
    std::move(done)(absl::InvalidArgumentError("transport request length out of range"));
    return;
  }
  auto conn_or = DataConnection(home);
  if (!conn_or.ok()) {
    std::move(done)(NotSent(conn_or.status()));
    return;
  }
  SendOn(*std::move(conn_or), type, segid, grant, offset, dst, src, std::move(done));
}

void TcpTransport::SendOn(std::shared_ptr<Connection> conn, int type, uint64_t segid,
                          uint64_t grant, uint64_t offset, absl::Span<uint8_t> dst,
                          absl::Span<const uint8_t> src, Done done, bool flushing) {
  size_t len = type == static_cast<int>(FrameType::kReadReq) ? dst.size() : src.size();
  uint64_t id = next_req_id_.fetch_add(1, std::memory_order_relaxed);
  {
    absl::MutexLock lock(&conn->mu);
    if (conn->dead) {
      // Found in conns_ between its failed set-up and its removal: that
      // set-up's answer (tests: AFailedSetUpAnswersTheQueuedRequests).
      std::move(done)(!conn->setup_failure.ok()
                          ? conn->setup_failure
                          : NotSent(absl::UnavailableError(
                                absl::StrCat("connection to node ", conn->node, " lost"))));
      return;
    }
    if (conn->connecting && !flushing) {
      conn->queued.push_back({type, segid, grant, offset, dst, src, std::move(done)});
      return;
    }
    conn->pending.emplace(id, Pending{dst, std::move(done)});
  }
  FrameHeader h{static_cast<FrameType>(type), id, segid, grant, offset,
                static_cast<uint32_t>(len),   0};
  bool ok;
  {
    absl::MutexLock lock(&conn->send_mu);
    ok = SendFrame(conn->fd, h, src);
  }
  // On failure the receiver sees the shutdown and fails every pending
  // request, this one included: exactly one completion either way.
  if (!ok) shutdown(conn->fd, SHUT_RDWR);
}

void TcpTransport::Notify(uint32_t node, absl::Span<const uint8_t> payload, Done done) {
  if (payload.empty() || payload.size() > kMaxNoticePayload) {
    std::move(done)(absl::InvalidArgumentError("notice length out of range"));
    return;
  }
  std::shared_ptr<Connection> conn;
  {
    absl::MutexLock lock(&mu_);
    auto it = notice_conns_.find(node);
    if (it != notice_conns_.end()) conn = it->second;
  }
  if (!conn) {
    std::move(done)(absl::UnavailableError(absl::StrCat("no notice connection to node ", node)));
    return;
  }
  // Never waits (it runs inside ack deadlines, on the caller's thread, once
  // per node of a fan-out): the connection carries nothing but notices, so
  // send_mu is only ever held for a send that does not wait either, and a
  // frame that does not fit into the socket buffer whole is not sent.
  uint64_t id = next_req_id_.fetch_add(1, std::memory_order_relaxed);
  {
    absl::MutexLock lock(&conn->mu);
    if (conn->dead) {
      std::move(done)(
          absl::UnavailableError(absl::StrCat("notice connection to node ", node, " lost")));
      return;
    }
    conn->pending.emplace(id, Pending{{}, std::move(done)});
  }
  FrameHeader h{FrameType::kNoticeReq, id, 0, 0, 0, static_cast<uint32_t>(payload.size()), 0};
  SendResult sent;
  {
    absl::MutexLock lock(&conn->send_mu);
    sent = SendFrameNow(conn->fd, h, payload);
  }
  if (sent == SendResult::kSent) return;
  if (sent == SendResult::kBroken) {
    // The receiver fails every pending notice, this one included.
    shutdown(conn->fd, SHUT_RDWR);
    return;
  }
  // Nothing sent, the connection is intact: answer this one now (unless
  // the receiver, seeing the connection die meanwhile, already did).
  Pending p;
  {
    absl::MutexLock lock(&conn->mu);
    auto it = conn->pending.find(id);
    if (it == conn->pending.end()) return;
    p = std::move(it->second);
    conn->pending.erase(it);
  }
  std::move(p.done)(absl::UnavailableError(
      absl::StrCat("node ", node, " is not reading its notices (the send would wait for it)")));
}

absl::Status TcpTransport::Connect(const DataEndpoint& peer) {
  return NoticeConnection(peer).status();
}

void TcpTransport::Read(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                        absl::Span<uint8_t> dst, Done done) {
  Send(home, static_cast<int>(FrameType::kReadReq), segid, grant, offset, dst, {}, std::move(done));
}

void TcpTransport::Write(const DataEndpoint& home, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> src, Done done) {
  Send(home, static_cast<int>(FrameType::kWriteReq), segid, grant, offset, {}, src,
       std::move(done));
}

void TcpTransport::WriteDiff(const DataEndpoint& home, uint64_t segid, uint64_t grant,
                             uint64_t offset, absl::Span<const uint8_t> diff, Done done) {
  Send(home, static_cast<int>(FrameType::kWriteDiffReq), segid, grant, offset, {}, diff,
       std::move(done));
}

void TcpTransport::ReceiveLoop(std::shared_ptr<Connection> conn) {
  uint8_t buf[kFrameHeaderSize];
  std::string why = "connection closed";
  while (true) {
    if (!ReadFull(conn->fd, buf, sizeof(buf))) {
      if (errno) why = std::strerror(errno);
      break;
    }
    auto h = DecodeHeader(buf, sizeof(buf));
    if (!h.ok()) {
      why = std::string(h.status().message());
      break;
    }
    Pending p;
    {
      absl::MutexLock lock(&conn->mu);
      auto it = conn->pending.find(h->req_id);
      if (it == conn->pending.end()) {
        why = "response to an unknown request";
        break;
      }
      p = std::move(it->second);
      conn->pending.erase(it);
    }
    absl::Status st;
    if (h->status != 0) {
      st = FromWireStatus(h->status, absl::StrCat("node ", conn->node, " refused the request"));
    } else if (h->type == FrameType::kReadResp) {
      if (h->length != p.dst.size()) {
        std::move(p.done)(absl::DataLossError("read response of the wrong length"));
        why = "read response of the wrong length";
        break;
      }
      // The payload's copy out of the socket (data_counters.h).
      CountBytes(Counters().fetch_copy_bytes, p.dst.size());
      if (!ReadFull(conn->fd, p.dst.data(), p.dst.size())) {
        std::move(p.done)(absl::UnavailableError("connection lost mid-response"));
        break;
      }
    } else if (h->type != FrameType::kWriteResp && h->type != FrameType::kNoticeResp) {
      std::move(p.done)(absl::DataLossError("unexpected frame type"));
      why = "unexpected frame type";
      break;
    }
    std::move(p.done)(st);
  }
  absl::flat_hash_map<uint64_t, Pending> orphans;
  {
    absl::MutexLock lock(&conn->mu);
    conn->dead = true;
    orphans.swap(conn->pending);
  }
  shutdown(conn->fd, SHUT_RDWR);
  {
    absl::MutexLock lock(&mu_);
    auto& table = conn->notices ? notice_conns_ : conns_;
    auto it = table.find(conn->node);
    if (it != table.end() && it->second == conn) table.erase(it);
  }
  if (!shutting_down_)
    TLOG_INFO("%s connection to node %d closed: %s (%d requests failed)",
              conn->notices ? "notice" : "data", conn->node, why, orphans.size());
  for (auto& [id, p] : orphans)
    std::move(p.done)(LostInFlight(
        absl::UnavailableError(absl::StrCat("connection to node ", conn->node, " lost: ", why))));
}

void TcpTransport::Disconnect(uint32_t node) {
  std::vector<std::shared_ptr<Connection>> conns;
  {
    absl::MutexLock lock(&mu_);
    for (auto* table : {&conns_, &notice_conns_}) {
      auto it = table->find(node);
      if (it != table->end()) conns.push_back(it->second);
    }
  }
  for (auto& c : conns) {
    absl::MutexLock lock(&c->mu);  // fd changes under it while connecting
    if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
  }
}

void TcpTransport::Shutdown() {
  if (shutting_down_.exchange(true)) return;
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  std::vector<std::thread> threads;
  std::vector<std::shared_ptr<Connection>> conns;
  {
    absl::MutexLock lock(&mu_);
    for (int fd : server_fds_)
      if (fd >= 0) shutdown(fd, SHUT_RDWR);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
  {
    absl::MutexLock lock(&mu_);
    conns.swap(all_conns_);
  }
  for (auto& c : conns) {
    absl::MutexLock lock(&c->mu);
    c->dead = true;  // a set-up not begun yet does not begin
    if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
  }
  for (auto& c : conns) {
    if (c->receiver.joinable()) c->receiver.join();
    close(c->fd);
  }
}

}  // namespace tether
