// The metrics registry and its Prometheus text exposition (format 0.0.4),
// the /metrics request parser and the HTTP responder
// (daemon/common/metrics.h, metrics_http.h).
#include "daemon/common/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "daemon/common/metrics_http.h"

namespace tether::metrics {
namespace {

TEST(Metrics, CounterSumsItsShardsAcrossThreads) {
  Registry r;
  Counter* c = r.GetCounter("t_events_total", "events");
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t)
    threads.emplace_back([c] {
      for (int i = 0; i < 1000; ++i) c->Add();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(c->Value(), 16000u);
  EXPECT_EQ(r.GetCounter("t_events_total", "events"), c) << "the same name and labels: one child";
}

TEST(Metrics, RendersCountersAndGaugesWithHelpTypeAndEscapedLabels) {
  Registry r;
  r.GetCounter("t_bytes_total", "bytes\nmoved \\ here", {{"peer", "2"}, {"transport", "tcp"}})
      ->Add(4096);
  r.GetCounter("t_bytes_total", "bytes", {{"peer", "3"}, {"transport", "rdma"}})->Add(1);
  r.GetGauge("t_segments", "segments exported now")->Set(-3);
  r.SetGaugeFunction("t_source", "source in use", {{"source", "a\"b\\c\nd"}}, [] { return 1.5; });
  EXPECT_EQ(r.Render(),
            "# HELP t_bytes_total bytes\\nmoved \\\\ here\n"
            "# TYPE t_bytes_total counter\n"
            "t_bytes_total{peer=\"2\",transport=\"tcp\"} 4096\n"
            "t_bytes_total{peer=\"3\",transport=\"rdma\"} 1\n"
            "# HELP t_segments segments exported now\n"
            "# TYPE t_segments gauge\n"
            "t_segments -3\n"
            "# HELP t_source source in use\n"
            "# TYPE t_source gauge\n"
            "t_source{source=\"a\\\"b\\\\c\\nd\"} 1.5\n");
}

TEST(Metrics, RendersHistogramBucketsCumulativeWithSumAndCount) {
  Registry r;
  Histogram* h = r.GetHistogram("t_latency_seconds", "latency", {0.001, 0.01}, {{"op", "read"}});
  h->ObserveNanos(500'000);        // 0.5 ms: first bucket
  h->ObserveNanos(1'000'000);      // exactly 1 ms: le is inclusive
  h->ObserveNanos(5'000'000);      // second
  h->ObserveNanos(2'000'000'000);  // +Inf
  EXPECT_EQ(r.Render(),
            "# HELP t_latency_seconds latency\n"
            "# TYPE t_latency_seconds histogram\n"
            "t_latency_seconds_bucket{op=\"read\",le=\"0.001\"} 2\n"
            "t_latency_seconds_bucket{op=\"read\",le=\"0.01\"} 3\n"
            "t_latency_seconds_bucket{op=\"read\",le=\"+Inf\"} 4\n"
            "t_latency_seconds_sum{op=\"read\"} 2.0065\n"
            "t_latency_seconds_count{op=\"read\"} 4\n");
}

// Every line of a rendering is a comment or "name{labels} value" whose
// value parses: what a Prometheus scraper needs of it.
TEST(Metrics, EveryRenderedLineParses) {
  Registry r;
  r.GetHistogram("t_h_seconds", "h", Histogram::LatencyBounds())->ObserveNanos(123456);
  r.GetCounter("t_c_total", "c", {{"x", "y"}})->Add(7);
  for (absl::string_view line : absl::StrSplit(r.Render(), '\n', absl::SkipEmpty())) {
    if (line[0] == '#') {
      EXPECT_TRUE(absl::StartsWith(line, "# HELP ") || absl::StartsWith(line, "# TYPE ")) << line;
      continue;
    }
    size_t sp = line.rfind(' ');
    ASSERT_NE(sp, absl::string_view::npos) << line;
    double v;
    EXPECT_TRUE(absl::SimpleAtod(line.substr(sp + 1), &v)) << line;
  }
}

TEST(Metrics, CounterTableFindsEachKeysChildAndSpillsIntoOther) {
  Registry r;
  CounterTable t(&r, "t_per_peer_total", "per peer", [](uint64_t key) {
    return Labels{{"peer", absl::StrCat(key)}};
  });
  Counter* a = t.Get(2);
  EXPECT_EQ(t.Get(2), a);
  EXPECT_NE(t.Get(3), a);
  for (uint64_t k = 10; k < 10 + CounterTable::kSlots; ++k) t.Get(k)->Add();
  EXPECT_NE(r.Render().find("t_per_peer_total{peer=\"other\"} 2\n"), std::string::npos)
      << r.Render();
}

using tether::HttpRequest;
using tether::ParseHttpRequest;

TEST(MetricsHttp, ParsesTheRequestLineOnceTheHeaderIsComplete) {
  EXPECT_EQ(ParseHttpRequest("GET /metrics HTTP/1.1\r\nHost: x\r\n").result,
            HttpRequest::Result::kIncomplete);
  HttpRequest r = ParseHttpRequest("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.result, HttpRequest::Result::kOk);
  EXPECT_EQ(r.path, "/metrics");
  EXPECT_EQ(ParseHttpRequest("HEAD /metrics HTTP/1.0\n\n").result, HttpRequest::Result::kOk);
  EXPECT_EQ(ParseHttpRequest("POST /metrics HTTP/1.1\r\n\r\n").result,
            HttpRequest::Result::kBadMethod);
  EXPECT_EQ(ParseHttpRequest("GET /metrics HTTP/2.0\r\n\r\n").result,
            HttpRequest::Result::kBadVersion);
  EXPECT_EQ(ParseHttpRequest("GET  /metrics HTTP/1.1\r\n\r\n").result,
            HttpRequest::Result::kBadRequest);
  EXPECT_EQ(ParseHttpRequest("GET metrics HTTP/1.1\r\n\r\n").result,
            HttpRequest::Result::kBadRequest);
  EXPECT_EQ(ParseHttpRequest("\r\n\r\n").result, HttpRequest::Result::kBadRequest);
  EXPECT_EQ(ParseHttpRequest(std::string(tether::kMaxHttpRequest, 'a')).result,
            HttpRequest::Result::kTooLarge);
  std::string big = "GET /" + std::string(tether::kMaxHttpRequest, 'a') + " HTTP/1.1\r\n\r\n";
  EXPECT_EQ(ParseHttpRequest(big).result, HttpRequest::Result::kTooLarge);
}

TEST(MetricsHttp, AnswersOnlyGetMetrics) {
  auto render = [] { return std::string("m 1\n"); };
  std::string ok =
      tether::HttpResponseFor(ParseHttpRequest("GET /metrics HTTP/1.1\r\n\r\n"), render);
  EXPECT_EQ(ok,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: 4\r\nConnection: close\r\n\r\nm 1\n");
  EXPECT_EQ(
      tether::HttpResponseFor(ParseHttpRequest("GET / HTTP/1.1\r\n\r\n"), render).substr(0, 12),
      "HTTP/1.1 404");
  std::string head =
      tether::HttpResponseFor(ParseHttpRequest("HEAD /metrics HTTP/1.1\r\n\r\n"), render);
  EXPECT_NE(head.find("Content-Length: 4\r\n"), std::string::npos);
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n") << "HEAD has no body";
}

// Random bytes never crash the parser, and it never says OK for a request
// whose first line is not METHOD SP /PATH SP HTTP/1.x (the fuzz target
// does more, with clang).
TEST(MetricsHttp, RandomBytesAreRefusedOrIncomplete) {
  std::mt19937 rng(18);
  for (int i = 0; i < 20000; ++i) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = "GET /m HTP1.\r\n\0x"[rng() % 16];
    HttpRequest r = ParseHttpRequest(s);
    if (r.result == HttpRequest::Result::kOk) EXPECT_EQ(r.path[0], '/') << s;
  }
}

// A real server on a loopback port: a scrape, a bad request, a client that
// hangs up early and one that sends too much each get their answer and the
// server goes on serving.
std::string Exchange(uint16_t port, const std::string& request, bool shut_write = true) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  size_t off = 0;
  while (off < request.size()) {
    ssize_t w = send(fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  if (shut_write) shutdown(fd, SHUT_WR);
  std::string out;
  char buf[4096];
  ssize_t r;
  while ((r = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(r));
  close(fd);
  return out;
}

TEST(MetricsHttp, ServerAnswersScrapesAndSurvivesBadClients) {
  auto server =
      tether::MetricsHttpServer::Start("127.0.0.1:0", [] { return std::string("up 1\n"); });
  ASSERT_TRUE(server.ok()) << server.status();
  uint32_t port;
  const std::string& b = (*server)->bound_address();
  ASSERT_TRUE(absl::SimpleAtoi(b.substr(b.rfind(':') + 1), &port)) << b;
  EXPECT_EQ(Exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").substr(0, 15),
            "HTTP/1.1 200 OK");
  EXPECT_EQ(Exchange(port, "BREW /pot HTCPCP/1.0\r\n\r\n").substr(0, 12), "HTTP/1.1 400");
  EXPECT_EQ(Exchange(port, std::string(tether::kMaxHttpRequest, 'x'), false).substr(0, 12),
            "HTTP/1.1 413");
  EXPECT_EQ(Exchange(port, "GET /metr"), "") << "closed before a whole request: no answer";
  std::string again = Exchange(port, "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_NE(again.find("\r\n\r\nup 1\n"), std::string::npos) << again;
  EXPECT_FALSE(tether::MetricsHttpServer::Start("localhost:80", [] { return std::string(); }).ok());
  EXPECT_FALSE(
      tether::MetricsHttpServer::Start("127.0.0.1:99999", [] { return std::string(); }).ok());
}

}  // namespace
}  // namespace tether::metrics
