// libFuzzer target for the /metrics request parser (common/metrics_http.h),
// what tetherd's Prometheus endpoint runs on the bytes any local process
// (or, with --metrics_listen on a network address, any host) sends it.
// Built only with clang (cmake -DCMAKE_CXX_COMPILER=clang++
// -DTETHER_FUZZ=ON). The gtest metrics_test also feeds it random bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/common/metrics_http.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  tether::HttpRequest req = tether::ParseHttpRequest(in);
  using R = tether::HttpRequest::Result;
  // Every prefix of a request the parser accepts is incomplete or an
  // answer, never more than the server reads (kMaxHttpRequest).
  if (req.result == R::kOk) {
    if (req.path.empty() || req.path[0] != '/') __builtin_trap();
    if (req.method != "GET" && req.method != "HEAD") __builtin_trap();
  }
  if (req.result == R::kIncomplete && size >= tether::kMaxHttpRequest) __builtin_trap();
  std::string resp = tether::HttpResponseFor(req, [] { return std::string("m 1\n"); });
  if (resp.compare(0, 9, "HTTP/1.1 ") != 0) __builtin_trap();
  return 0;
}
