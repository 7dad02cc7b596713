#include "daemon/local/local_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"

namespace tether {

LocalServer::~LocalServer() { Stop(); }

absl::Status LocalServer::Start(const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return ErrnoStatus(ENAMETOOLONG, absl::StrCat("local socket path '", path, "'"));
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket(AF_UNIX)");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, absl::StrCat("bind ", path));
  }
  chmod(path.c_str(), 0666);
  if (listen(fd, 128) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "listen");
  }
  path_ = path;
  listen_fd_ = fd;
  accept_thread_ = std::thread([this] {
    NameThisThread("tt-local-accept");
    AcceptLoop();
  });
  return absl::OkStatus();
}

void LocalServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    unlink(path_.c_str());
  }
  absl::MutexLock lock(&mu_);
  for (auto& [id, c] : conns_) shutdown(c->fd, SHUT_RDWR);
  mu_.Await(absl::Condition(
      +[](decltype(conns_)* c) { return c->empty(); }, &conns_));
}

void LocalServer::AcceptLoop() {
  while (!stopping_) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        usleep(10000);
        continue;
      }
      return;
    }
    auto cred = PeerCredentials(fd);
    if (!cred.ok()) {
      TLOG_WARN("local connection refused: %s", cred.status().ToString());
      close(fd);
      continue;
    }
    auto conn = std::make_shared<LocalConnection>();
    conn->id = next_id_++;
    conn->fd = fd;
    conn->cred = std::move(*cred);
    std::string refused;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        close(fd);
        return;
      }
      uint32_t& mine = per_uid_[conn->cred.uid];
      if (limits_.max_connections && conns_.size() >= limits_.max_connections) {
        refused = absl::StrCat("tetherd has ", conns_.size(),
                               " local connections, its bound (--local_max_connections)");
      } else if (limits_.max_connections_per_uid && mine >= limits_.max_connections_per_uid) {
        refused = absl::StrCat("uid ", conn->cred.uid, " has ", mine,
                               " connections to tetherd, its bound "
                               "(--local_max_connections_per_uid)");
      } else {
        ++mine;
        conns_[conn->id] = conn;
        // Detached: Stop() waits for conns_ to drain instead of joining.
        std::thread([this, conn] {
          NameThisThread("tt-local");
          Serve(conn);
        }).detach();
      }
      if (mine == 0) per_uid_.erase(conn->cred.uid);
    }
    if (!refused.empty()) Refuse(fd, conn->cred, refused);
  }
}

void LocalServer::Refuse(int fd, const Credentials& cred, const std::string& why) {
  local::LocalResponse resp;
  resp.set_version(1);
  resp.set_err(EAGAIN);
  resp.set_message(why);
  resp.set_connection_closed(true);
  // Non-blocking: a client that never reads must not stall the accept loop
  // (a fresh connection's queue has room for this one frame anyway).
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  (void)SendFrame(fd, resp);
  close(fd);
  int64_t now = absl::ToUnixSeconds(absl::Now());
  int64_t& last = refusal_logged_[cred.uid];
  if (last == 0 || now - last >= 10) {
    last = now;
    TLOG_WARN(
        "local connection of pid %d (uid %u) refused: %s (logged at most once per 10 s "
        "per uid)",
        cred.pid, cred.uid, why);
  }
  if (refusal_logged_.size() > 4096) refusal_logged_.clear();  // bounded
}

bool LocalServer::SendFrame(int fd, const google::protobuf::Message& msg,
                            const std::vector<int>& fds) {
  std::string buf;
  if (!msg.SerializeToString(&buf) || buf.size() > kMaxLocalFrame) return false;
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxLocalFds)] = {};
  if (!fds.empty()) {
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  while (true) {
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n >= 0) return true;
    if (errno != EINTR) return false;
  }
}

void LocalServer::Serve(std::shared_ptr<LocalConnection> conn) {
  std::string buf(kMaxLocalFrame + 1, '\0');
  while (!stopping_) {
    iovec iov{buf.data(), buf.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    ssize_t n = recvmsg(conn->fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
        fds.insert(fds.end(), p, p + count);
      }
    }
    local::LocalRequest req;
    local::LocalResponse resp;
    std::vector<int> out_fds;
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || static_cast<size_t>(n) > kMaxLocalFrame) {
      resp.set_err(EMSGSIZE);
      resp.set_message("request frame too large or too many descriptors");
    } else if (!req.ParseFromArray(buf.data(), static_cast<int>(n)) ||
               req.body_case() == local::LocalRequest::BODY_NOT_SET) {
      resp.set_err(EBADMSG);
      resp.set_message("malformed request frame");
    } else if (fds.size() > kMaxLocalFds) {
      resp.set_err(EINVAL);
      resp.set_message("too many file descriptors with the request");
    } else {
      handler_->Handle(*conn, req, fds, &resp, &out_fds);
    }
    resp.set_version(1);
    for (int fd : fds)
      if (fd >= 0) close(fd);  // whatever the handler did not take (-1)
    bool sent = SendFrame(conn->fd, resp, out_fds);
    for (int fd : out_fds) close(fd);
    if (!sent) break;
  }
  handler_->Disconnected(*conn);
  absl::MutexLock lock(&mu_);
  conns_.erase(conn->id);
  auto it = per_uid_.find(conn->cred.uid);
  if (it != per_uid_.end() && --it->second == 0) per_uid_.erase(it);
  close(conn->fd);
}

}  // namespace tether
