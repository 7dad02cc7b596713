#include "daemon/common/metrics_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/thread_name.h"

namespace tether {
namespace {

std::string Response(int code, absl::string_view reason, absl::string_view content_type,
                     absl::string_view body, bool head = false) {
  return absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                      head ? absl::string_view() : body);
}

std::string Error(int code, absl::string_view reason) {
  return Response(code, reason, "text/plain; charset=utf-8", absl::StrCat(reason, "\n"));
}

bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c <= ' ' || c >= 0x7f) return false;
  return true;
}

}  // namespace

HttpRequest ParseHttpRequest(absl::string_view buf) {
  HttpRequest req;
  size_t end = buf.find("\r\n\r\n");
  size_t lf_end = buf.find("\n\n");
  if (end == absl::string_view::npos && lf_end == absl::string_view::npos) {
    req.result = buf.size() >= kMaxHttpRequest ? HttpRequest::Result::kTooLarge
                                               : HttpRequest::Result::kIncomplete;
    return req;
  }
  size_t header_end = std::min(end == absl::string_view::npos ? buf.size() : end + 4,
                               lf_end == absl::string_view::npos ? buf.size() : lf_end + 2);
  if (header_end > kMaxHttpRequest) {
    req.result = HttpRequest::Result::kTooLarge;
    return req;
  }
  absl::string_view line = buf.substr(0, buf.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // METHOD SP TARGET SP HTTP/1.x, single spaces (RFC 9112 3).
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == absl::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == absl::string_view::npos || line.find(' ', sp2 + 1) != absl::string_view::npos) {
    req.result = HttpRequest::Result::kBadRequest;
    return req;
  }
  absl::string_view method = line.substr(0, sp1);
  absl::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  absl::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method) || !IsToken(target) || target[0] != '/') {
    req.result = HttpRequest::Result::kBadRequest;
    return req;
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    req.result = version.substr(0, 5) == "HTTP/" ? HttpRequest::Result::kBadVersion
                                                 : HttpRequest::Result::kBadRequest;
    return req;
  }
  req.method = std::string(method);
  req.path = std::string(target.substr(0, target.find('?')));
  req.result = (method == "GET" || method == "HEAD") ? HttpRequest::Result::kOk
                                                     : HttpRequest::Result::kBadMethod;
  return req;
}

std::string HttpResponseFor(const HttpRequest& req, const std::function<std::string()>& render) {
  switch (req.result) {
    case HttpRequest::Result::kIncomplete: return Error(408, "Request Timeout");
    case HttpRequest::Result::kBadRequest: return Error(400, "Bad Request");
    case HttpRequest::Result::kBadMethod: return Error(405, "Method Not Allowed");
    case HttpRequest::Result::kBadVersion: return Error(505, "HTTP Version Not Supported");
    case HttpRequest::Result::kTooLarge: return Error(413, "Content Too Large");
    case HttpRequest::Result::kOk: break;
  }
  if (req.path != "/metrics") return Error(404, "Not Found");
  return Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", render(),
                  req.method == "HEAD");
}

namespace {

absl::Status ParseAddress(const std::string& address, sockaddr_storage* out, socklen_t* out_len,
                          int* out_family, std::string* out_host) {
  sockaddr_storage& ss = *out;
  socklen_t& len = *out_len;
  int& family = *out_family;
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) return ErrnoStatus(EINVAL, "metrics address " + address);
  std::string host = address.substr(0, colon);
  uint32_t port;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port > 65535)
    return ErrnoStatus(EINVAL, "metrics address " + address + ": bad port");
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
    a6->sin6_family = family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1)
      return ErrnoStatus(EINVAL, "metrics address " + address + ": bad IPv6 address");
    len = sizeof(*a6);
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
    a4->sin_family = family = AF_INET;
    a4->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1)
      return ErrnoStatus(EINVAL, "metrics address " + address + ": bad IPv4 address");
    len = sizeof(*a4);
  }
  *out_host = host;
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckMetricsAddress(const std::string& address) {
  sockaddr_storage ss{};
  socklen_t len;
  int family;
  std::string host;
  return ParseAddress(address, &ss, &len, &family, &host);
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::function<std::string()> render) {
  sockaddr_storage ss{};
  socklen_t len;
  int family;
  std::string host;
  if (absl::Status st = ParseAddress(address, &ss, &len, &family, &host); !st.ok()) return st;
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "metrics socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 16) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "metrics endpoint: listen on " + address);
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  uint16_t bound_port = family == AF_INET
                            ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                            : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "metrics eventfd");
  }
  auto server = std::unique_ptr<MetricsHttpServer>(
      new MetricsHttpServer(fd, wake, absl::StrCat(host, ":", bound_port), std::move(render)));
  server->thread_ = std::thread([s = server.get()] {
    NameThisThread("tt-metrics");
    s->Serve();
  });
  return server;
}

MetricsHttpServer::MetricsHttpServer(int listen_fd, int wake_fd, std::string bound,
                                     std::function<std::string()> render)
    : listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      bound_(std::move(bound)),
      render_(std::move(render)) {}

MetricsHttpServer::~MetricsHttpServer() {
  Stop();
  close(listen_fd_);
  close(wake_fd_);
}

void MetricsHttpServer::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  thread_.join();
}

void MetricsHttpServer::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      TLOG_ERROR("metrics endpoint: poll: %s", strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue;  // the client gave up already, or EMFILE: try the next
    ServeConnection(fd);
    close(fd);
  }
}

void MetricsHttpServer::ServeConnection(int fd) {
  // Read the header within kReadTimeout overall (not per read: a client
  // sending a byte a second does not hold the server longer), bounded.
  const absl::Time deadline = absl::Now() + kReadTimeout;
  std::string buf;
  HttpRequest req;
  char chunk[1024];
  while (true) {
    req = ParseHttpRequest(buf);
    if (req.result != HttpRequest::Result::kIncomplete) break;
    int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) break;  // 408
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = poll(fds, 2, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || fds[1].revents) return;  // stopping
    if (n == 0) continue;                 // the deadline check answers
    ssize_t r = read(fd, chunk, std::min(sizeof(chunk), kMaxHttpRequest + 1 - buf.size()));
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (r <= 0) return;  // closed or reset before a whole request: no answer
    buf.append(chunk, static_cast<size_t>(r));
  }
  std::string resp = HttpResponseFor(req, render_);
  size_t off = 0;
  while (off < resp.size()) {
    int64_t left = absl::ToInt64Milliseconds(deadline + kReadTimeout - absl::Now());
    if (left <= 0) return;  // the client stopped reading
    pollfd fds[2] = {{fd, POLLOUT, 0}, {wake_fd_, POLLIN, 0}};
    int n = poll(fds, 2, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || fds[1].revents) return;
    if (n == 0) continue;
    ssize_t w = send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (w <= 0) return;
    off += static_cast<size_t>(w);
  }
}

}  // namespace tether
