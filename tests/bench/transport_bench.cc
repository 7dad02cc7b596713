// transport_bench: what a tcp data connection's handshake costs (issue 17),
// measured on the daemon's own TcpTransport between two network namespaces.
// One line of key=value figures for tests/bench/run.py.
//
//   serve HOST:PORT        a home: TcpTransport listening at HOST:PORT with a
//                          fixed bench secret and an in-memory BlockServer,
//                          and a raw TCP echo of 48-byte frames at PORT+1
//   handshake HOST:PORT N  the mapper: N times a new connection (a new
//                          transport's first 4 KiB Read: connect, the nonce
//                          handshake, the read), a read on it, and N
//                          raw TCP connects with one 48-byte round trip (the
//                          shape of the old token hello: connect + 1 RTT)
//
//   crypto HOST:PORT N MIB the cost of --data_encryption (kernel TLS), in
//                          rounds alternating plaintext and encrypted: a
//                          new connection's first 4 KiB read, N 4 KiB
//                          reads on it, and MIB MiB read 1 MiB at a time;
//                          with this process's CPU time per MiB received
//                          (the kernel decrypts on the reading thread)
//
// handshake prints conn_read_p50_us, read_p50_us, raw_connect_rr_p50_us,
// handshake_p50_us (conn_read minus read: connect plus handshake); crypto
// prints ktls=yes|no, cipher_seal_mbps and cipher_open_mbps (AES-128-GCM
// with OpenSSL on this CPU, 16 KiB records: the cipher's own cost), and for
// plain_ and (with kernel TLS) enc_: conn_read_p50_us, read_p50_us,
// stream_mbps, cpu_us_per_mib (medians over 5 rounds); without kernel TLS
// a second line "why: ...".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <openssl/evp.h>

#include "absl/synchronization/notification.h"
#include "daemon/common/errors.h"
#include "daemon/transport/data_encryption.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/socket_address.h"
#include "daemon/transport/tcp_transport.h"

namespace {

using Clock = std::chrono::steady_clock;
const std::string kSecret = "tether-bench-data-secret-0123456789";

class Memory : public tether::BlockServer {
 public:
  absl::Status ReadBlocks(uint32_t, uint64_t, uint64_t, uint64_t off,
                          absl::Span<uint8_t> dst) override {
    std::memset(dst.data(), static_cast<int>(off & 0xff), dst.size());
    return absl::OkStatus();
  }
  absl::Status WriteBlocks(uint32_t, uint64_t, uint64_t, uint64_t,
                           absl::Span<const uint8_t>) override {
    return absl::OkStatus();
  }
};

double P50(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double Us(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

std::string WithPort(const std::string& hp, int delta) {
  size_t colon = hp.rfind(':');
  return hp.substr(0, colon + 1) + std::to_string(std::stoi(hp.substr(colon + 1)) + delta);
}

int Serve(const std::string& hp) {
  Memory mem;
  tether::TcpTransport home(1);
  absl::Status st = home.Listen(hp, kSecret, &mem, nullptr);
  if (!st.ok()) {
    fprintf(stderr, "listen: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  socklen_t len = 0;
  auto ss = tether::NumericSocketAddress(WithPort(hp, 1), &len);
  int lfd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(lfd, reinterpret_cast<sockaddr*>(&*ss), len) != 0 || listen(lfd, 64) != 0) {
    perror("echo listen");
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  while (true) {
    int c = accept(lfd, nullptr, nullptr);
    if (c < 0) continue;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint8_t buf[48];
    size_t got = 0;
    while (got < sizeof(buf)) {
      ssize_t n = read(c, buf + got, sizeof(buf) - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    if (got == sizeof(buf)) (void)!write(c, buf, sizeof(buf));
    close(c);
  }
}

absl::Status ReadSync(tether::TcpTransport& t, const tether::DataEndpoint& ep,
                      std::vector<uint8_t>& buf) {
  absl::Notification n;
  absl::Status result;
  t.Read(ep, 1, 1, 0, absl::MakeSpan(buf), [&](absl::Status st) {
    result = st;
    n.Notify();
  });
  n.WaitForNotification();
  return result;
}

int Handshake(const std::string& hp, int n) {
  tether::DataEndpoint ep;
  ep.node_id = 1;
  ep.address = hp;
  ep.token = tether::DataTokenFor(kSecret, 2);
  std::vector<uint8_t> buf(4096);
  std::vector<double> conn, reads, raw;
  for (int i = 0; i < n; ++i) {
    // A new transport each time: a new connection (Disconnect would leave
    // the old one to finish closing under the next Read).
    tether::TcpTransport mapper(2);
    auto t0 = Clock::now();
    absl::Status st = ReadSync(mapper, ep, buf);
    auto t1 = Clock::now();
    if (!st.ok()) {
      fprintf(stderr, "read: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    conn.push_back(Us(t0, t1));
    t0 = Clock::now();
    st = ReadSync(mapper, ep, buf);
    reads.push_back(Us(t0, Clock::now()));
    // The old hello's shape: connect, one 48-byte frame each way.
    socklen_t len = 0;
    auto ss = tether::NumericSocketAddress(WithPort(hp, 1), &len);
    t0 = Clock::now();
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, reinterpret_cast<sockaddr*>(&*ss), len) != 0) {
      perror("connect");
      return 1;
    }
    uint8_t frame[48] = {};
    (void)!write(fd, frame, sizeof(frame));
    size_t got = 0;
    while (got < sizeof(frame)) {
      ssize_t r = read(fd, frame + got, sizeof(frame) - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    raw.push_back(Us(t0, Clock::now()));
    close(fd);
  }
  double c = P50(conn), r = P50(reads);
  printf(
      "conn_read_p50_us=%.1f read_p50_us=%.1f raw_connect_rr_p50_us=%.1f handshake_p50_us=%.1f\n",
      c, r, P50(raw), c - r);
  return 0;
}

double CpuUs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1e6 +
         ru.ru_stime.tv_usec;
}

// MB/s of AES-128-GCM over 16 KiB records (kernel TLS's record size) with
// OpenSSL on this CPU: sealing (`seal`) or opening. The cipher kernel TLS
// runs, in user space: what encrypting a MiB costs a CPU here, where the
// kernel has no TLS to measure.
double CipherMbps(bool seal) {
  const int kRecord = 16384, kRecords = 2048;  // 32 MiB
  unsigned char key[16] = {1}, iv[12] = {2}, tag[16];
  std::vector<unsigned char> in(kRecord, 0x5a), out(kRecord + 16);
  // Opening needs a record sealed with the same key and IV, and its tag.
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, key, iv);
  EVP_EncryptUpdate(ctx, out.data(), &len, in.data(), kRecord);
  EVP_EncryptFinal_ex(ctx, out.data() + len, &len);
  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
  std::vector<unsigned char> sealed(out.begin(), out.begin() + kRecord);
  auto t0 = Clock::now();
  for (int i = 0; i < kRecords; ++i) {
    if (seal) {
      EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, iv);
      EVP_EncryptUpdate(ctx, out.data(), &len, in.data(), kRecord);
      EVP_EncryptFinal_ex(ctx, out.data() + len, &len);
    } else {
      EVP_DecryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, key, iv);
      EVP_DecryptUpdate(ctx, out.data(), &len, sealed.data(), kRecord);
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag);
      if (EVP_DecryptFinal_ex(ctx, out.data() + len, &len) != 1) {
        fprintf(stderr, "AES-GCM open failed\n");
        exit(1);
      }
    }
  }
  double us = Us(t0, Clock::now());
  EVP_CIPHER_CTX_free(ctx);
  return double(kRecord) * kRecords / us;  // bytes per us = MB/s
}

int Crypto(const std::string& hp, int n, int mib) {
  const absl::Status can = tether::KtlsAvailable();
  tether::DataEndpoint ep;
  ep.node_id = 1;
  ep.address = hp;
  ep.token = tether::DataTokenFor(kSecret, 2);
  struct Figures {
    std::vector<double> conn, read, mbps, cpu;
  } fig[2];
  std::vector<uint8_t> page(4096), block(1 << 20);
  const int kRounds = 5;
  const int modes = can.ok() ? 2 : 1;  // plaintext only where the kernel has no TLS
  for (int r = 0; r < kRounds; ++r) {
    for (int enc = 0; enc < modes; ++enc) {
      int mode = (r % 2 && modes == 2) ? 1 - enc : enc;  // alternate which goes first
      tether::TcpTransport mapper(2);
      mapper.SetEncryption(mode == 1);
      auto t0 = Clock::now();
      absl::Status st = ReadSync(mapper, ep, page);
      fig[mode].conn.push_back(Us(t0, Clock::now()));
      std::vector<double> reads;
      for (int i = 0; st.ok() && i < n; ++i) {
        t0 = Clock::now();
        st = ReadSync(mapper, ep, page);
        reads.push_back(Us(t0, Clock::now()));
      }
      double c0 = CpuUs();
      t0 = Clock::now();
      for (int i = 0; st.ok() && i < mib; ++i) st = ReadSync(mapper, ep, block);
      double us = Us(t0, Clock::now());
      if (!st.ok()) {
        fprintf(stderr, "read (%s): %s\n", mode ? "encrypted" : "plaintext",
                std::string(st.message()).c_str());
        return 1;
      }
      fig[mode].cpu.push_back((CpuUs() - c0) / mib);
      fig[mode].read.push_back(P50(reads));
      fig[mode].mbps.push_back(mib * 1.048576 / (us / 1e6));
    }
  }
  printf("ktls=%s cipher_seal_mbps=%.1f cipher_open_mbps=%.1f", can.ok() ? "yes" : "no",
         CipherMbps(true), CipherMbps(false));
  for (int mode = 0; mode < modes; ++mode) {
    const char* p = mode ? "enc" : "plain";
    printf(
        " %s_conn_read_p50_us=%.1f %s_read_p50_us=%.1f %s_stream_mbps=%.1f %s_cpu_us_per_mib=%.1f",
        p, P50(fig[mode].conn), p, P50(fig[mode].read), p, P50(fig[mode].mbps), p,
        P50(fig[mode].cpu));
  }
  printf("\n");
  if (!can.ok()) printf("why: %s\n", std::string(can.message()).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);  // as tetherd: a peer that goes is an error return, not a signal
  if (argc >= 3 && std::string(argv[1]) == "serve") return Serve(argv[2]);
  if (argc >= 4 && std::string(argv[1]) == "handshake")
    return Handshake(argv[2], std::atoi(argv[3]));
  if (argc >= 5 && std::string(argv[1]) == "crypto")
    return Crypto(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  fprintf(stderr,
          "usage: transport_bench serve HOST:PORT | handshake HOST:PORT N | crypto HOST:PORT N "
          "MIB\n");
  return 2;
}
