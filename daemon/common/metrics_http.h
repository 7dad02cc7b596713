// MetricsHttpServer: the Prometheus scrape endpoint, GET /metrics over
// HTTP/1.1 (--metrics_listen, 127.0.0.1:9640 by default). Debian 12
// packages no Prometheus client library for C++, and a scrape needs very
// little: this is a minimal responder, not a web server.
//
// What it accepts. One connection at a time (a scraper makes one request
// every few seconds; a second client waits in the listen backlog). A
// request is read until its header ends (an empty line), at most
// kMaxRequest bytes and within kReadTimeout; a body is never read (GET and
// HEAD only). Anything else gets a short error response (400, 404, 405,
// 408, 413, 505) and the connection is closed after every response
// ("Connection: close"), so a client can hold the server no longer than
// the timeout. ParseHttpRequest is pure, for the unit tests and the fuzz
// target (tests/fuzz/metrics_http_fuzz.cc).
//
// Thread contract: Start binds and listens on the caller's thread (so a
// bad address fails tetherd's start), then serves on one thread of its
// own, which calls `render` per scrape (Registry::Render: thread-safe).
// Stop (or the destructor), from the owner: wakes and joins that thread.
#ifndef TETHER_DAEMON_COMMON_METRICS_HTTP_H_
#define TETHER_DAEMON_COMMON_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tether {

struct HttpRequest {
  enum class Result {
    kIncomplete,  // no end of header yet: read more
    kOk,
    kBadRequest,  // 400
    kBadMethod,   // 405
    kBadVersion,  // 505
    kTooLarge,    // 413
  };
  Result result = Result::kIncomplete;
  std::string method, path;  // path without the query string
};

inline constexpr size_t kMaxHttpRequest = 8192;

// Parses the request line of `buf` once its header is complete (CRLF CRLF,
// or LF LF). Never reads past `buf`; bounded work.
HttpRequest ParseHttpRequest(absl::string_view buf);

// The whole response (status line, headers, body) to `req`; `render` is
// called only for GET /metrics.
std::string HttpResponseFor(const HttpRequest& req, const std::function<std::string()>& render);

// Whether `address` is one MetricsHttpServer::Start accepts ("HOST:PORT",
// a numeric IPv4 address or [IPv6], port 0..65535): tetherd's flag check.
absl::Status CheckMetricsAddress(const std::string& address);

class MetricsHttpServer {
 public:
  static constexpr absl::Duration kReadTimeout = absl::Seconds(5);

  // `address`: "HOST:PORT" (IPv4, or [IPv6]); port 0 picks one.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::function<std::string()> render);
  ~MetricsHttpServer();
  void Stop();
  // "HOST:PORT" as bound (the port chosen for port 0).
  const std::string& bound_address() const { return bound_; }

 private:
  MetricsHttpServer(int listen_fd, int wake_fd, std::string bound,
                    std::function<std::string()> render);
  void Serve();
  void ServeConnection(int fd);

  const int listen_fd_, wake_fd_;
  const std::string bound_;
  const std::function<std::string()> render_;
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_METRICS_HTTP_H_
