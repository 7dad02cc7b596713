#include "daemon/local/local_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"

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
  accept_thread_ = std::thread([this] { AcceptLoop(); });
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
    auto conn = std::make_shared<LocalConnection>();
    conn->id = next_id_++;
    conn->fd = fd;
    ucred uc{};
    socklen_t len = sizeof(uc);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) {
      close(fd);
      continue;
    }
    conn->cred.pid = uc.pid;
    conn->cred.uid = uc.uid;
    conn->cred.gid = uc.gid;
    gid_t groups[64];
    len = sizeof(groups);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
      conn->cred.groups.assign(groups, groups + len / sizeof(gid_t));
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      close(fd);
      return;
    }
    conns_[conn->id] = conn;
    // Detached: Stop() waits for conns_ to drain instead of joining.
    std::thread([this, conn] { Serve(conn); }).detach();
  }
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
  close(conn->fd);
}

}  // namespace tether
