#include "daemon/common/fault_point_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/thread_name.h"

namespace tether {

absl::StatusOr<std::unique_ptr<FaultPointServer>> FaultPointServer::Start(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return ErrnoStatus(EINVAL, "fault point socket path empty or too long");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  unlink(path.c_str());
  mode_t old = umask(0077);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old);
  if (rc != 0 || listen(fd, 4) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "bind/listen " + path);
  }
  int stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "eventfd");
  }
  std::unique_ptr<FaultPointServer> s(new FaultPointServer(path, fd, stop_fd));
  s->thread_ = std::thread([p = s.get()] {
    NameThisThread("tt-faultpoints");
    p->Run();
  });
  TLOG_WARN("test fault points: listening on %s (tests only)", path);
  return s;
}

FaultPointServer::FaultPointServer(std::string path, int listen_fd, int stop_fd)
    : path_(std::move(path)), listen_fd_(listen_fd), stop_fd_(stop_fd) {}

FaultPointServer::~FaultPointServer() {
  Stop();
  close(stop_fd_);
  close(listen_fd_);
}

void FaultPointServer::Stop() {
  if (stopping_.exchange(true)) return;
  // Held daemon threads must not outlive the shutdown waiting for a test.
  FaultPoints::ReleaseAll();
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  unlink(path_.c_str());
}

std::string FaultPointServer::Handle(const std::string& line) {
  std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
  if (w.size() == 2 && w[0] == "arm") {
    FaultPoints::Arm(w[1]);
    return "ok";
  }
  int64_t ms = 0;
  if (w.size() == 3 && w[0] == "wait" && absl::SimpleAtoi(w[2], &ms) && ms >= 0)
    return FaultPoints::WaitUntilReached(w[1], absl::Milliseconds(ms)) ? "reached" : "timeout";
  if (w.size() == 2 && w[0] == "reached") return FaultPoints::Reached(w[1]) ? "yes" : "no";
  if (w.size() == 2 && w[0] == "release") {
    FaultPoints::Release(w[1]);
    return "ok";
  }
  if (w.size() == 1 && w[0] == "release_all") {
    FaultPoints::ReleaseAll();
    return "ok";
  }
  return "error: want arm NAME | wait NAME MS | reached NAME | release NAME | release_all";
}

void FaultPointServer::Run() {
  while (!stopping_) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(p, 2, -1) < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    if (!(p[0].revents & POLLIN)) continue;
    int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::string buf;
    char chunk[512];
    while (!stopping_) {
      pollfd q[2] = {{c, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (poll(q, 2, -1) < 0 && errno != EINTR) break;
      if (q[1].revents) break;
      ssize_t n = read(c, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      buf.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        std::string reply = Handle(buf.substr(0, nl)) + "\n";
        buf.erase(0, nl + 1);
        (void)!write(c, reply.data(), reply.size());
      }
    }
    close(c);
  }
}

}  // namespace tether
