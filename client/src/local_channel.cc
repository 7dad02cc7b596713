#include "client/src/local_channel.h"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace tether::client {

thread_local std::string g_last_error;

int SetError(int err, const std::string& message) {
  g_last_error = message;
  errno = err;
  return -1;
}

std::string SocketPath() {
  const char* env = std::getenv("TETHER_SOCKET");
  return env && *env ? env : "/run/tether/tetherd.sock";
}

int ConnectDaemon() {
  std::string path = SocketPath();
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

bool RoundTrip(int fd, const local::LocalRequest& req, const std::vector<int>& fds_out,
               local::LocalResponse* resp, std::vector<int>* fds_in, std::string* message) {
  std::string buf;
  req.SerializeToString(&buf);
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)] = {};
  if (!fds_out.empty()) {
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds_out.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds_out.size());
    std::memcpy(CMSG_DATA(c), fds_out.data(), sizeof(int) * fds_out.size());
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &mh, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  // A connection tetherd refused (over its bound of connections per uid or
  // in total) was answered with one frame (connection_closed, err EAGAIN)
  // and closed, before or after this request arrived: the send may fail,
  // or the first receive report the reset (a close with our request unread
  // in its queue); that frame is still to be read after either.
  int recv_flags = MSG_CMSG_CLOEXEC;
  if (n < 0) {
    if (errno != EPIPE && errno != ECONNRESET) {
      *message = std::string("send to tetherd: ") + std::strerror(errno);
      return false;
    }
    recv_flags |= MSG_DONTWAIT;
  }
  std::string in(64 * 1024, '\0');
  iovec riov{in.data(), in.size()};
  msghdr rmh{};
  rmh.msg_iov = &riov;
  rmh.msg_iovlen = 1;
  alignas(cmsghdr) char rcbuf[CMSG_SPACE(sizeof(int) * 4)];
  rmh.msg_control = rcbuf;
  rmh.msg_controllen = sizeof(rcbuf);
  do {
    n = recvmsg(fd, &rmh, recv_flags);
    if (n < 0 && errno == ECONNRESET && !(recv_flags & MSG_DONTWAIT)) {
      recv_flags |= MSG_DONTWAIT;  // the reset is reported once; the frame may follow
      errno = EINTR;
    }
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    if (n == 0 || errno == EAGAIN) errno = ECONNRESET;
    *message = std::string("tetherd closed the connection: ") + std::strerror(errno);
    return false;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&rmh); c; c = CMSG_NXTHDR(&rmh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
      for (size_t i = 0; i < count; ++i) {
        if (fds_in)
          fds_in->push_back(p[i]);
        else
          close(p[i]);
      }
    }
  }
  if (!resp->ParseFromArray(in.data(), static_cast<int>(n))) {
    errno = EPROTO;
    *message = "malformed response from tetherd";
    return false;
  }
  if (resp->connection_closed()) {  // the refusal: the connection is gone
    errno = resp->err() != 0 ? resp->err() : ECONNRESET;
    *message = "tetherd refused the connection: " + resp->message();
    return false;
  }
  return true;
}

LocalChannel::LocalChannel() {
  pthread_atfork(&LocalChannel::BeforeFork, &LocalChannel::AfterForkParent,
                 &LocalChannel::AfterForkChild);
}

void LocalChannel::BeforeFork() { Get().mu_.lock(); }
void LocalChannel::AfterForkParent() { Get().mu_.unlock(); }
void LocalChannel::AfterForkChild() {
  LocalChannel& c = Get();
  if (c.fd_ >= 0) close(c.fd_);
  c.fd_ = -1;
  c.mu_.unlock();
}

LocalChannel& LocalChannel::Get() {
  static LocalChannel* channel = new LocalChannel();  // never destroyed: safe at exit
  return *channel;
}

int LocalChannel::Call(const local::LocalRequest& req, const std::vector<int>& fds_out,
                       local::LocalResponse* resp, std::vector<int>* fds_in) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) {
    fd_ = ConnectDaemon();
    if (fd_ < 0)
      return SetError(errno == ENOENT || errno == ECONNREFUSED ? ENOTCONN : errno,
                      "cannot reach tetherd at " + SocketPath() + ": " + std::strerror(errno));
  }
  std::string message;
  if (!RoundTrip(fd_, req, fds_out, resp, fds_in, &message)) {
    int err = errno;
    close(fd_);
    fd_ = -1;  // the next call reconnects (the daemon may have restarted)
    return SetError(err == ECONNRESET || err == EPIPE ? ENOTCONN : err, message);
  }
  if (resp->err() != 0) {
    if (fds_in) {
      for (int fd : *fds_in) close(fd);
      fds_in->clear();
    }
    return SetError(resp->err(), resp->message());
  }
  g_last_error.clear();
  return 0;
}

}  // namespace tether::client
