// tether_bench: the measuring half of tests/bench/run. Each mode prints one
// line of key=value figures; the runner pairs each figure with its baseline
// measured in the same run over the same link.
//
//   uffd-null N              null userfaultfd fault: a handler thread
//                            resolves each fault at once (UFFDIO_ZEROPAGE)
//   uffd-install N           the same as tether serves faults: a shared memfd
//                            mapping (read-only, as map-random's), the handler
//                            in another process, each fault resolved by
//                            UFFDIO_COPY of a 4 KiB page
//   uffd-seq MB              the local floor of a sequential read through a
//                            mapping: as uffd-install, but from the first
//                            fault on the handler installs the whole range
//                            in order in 256 KiB UFFDIO_COPYs (no network,
//                            no home: the data is there before it is asked)
//   zap-floor N              the local floor of a mapper's range_begin: punch
//                            a 1 MiB hole in a memfd that another process has
//                            mapped and read (p50 of N, each after 2 ms idle)
//   tcp-serve PORT           echo-style server: 4 KiB request/response and
//                            a bulk stream sink/source
//   tcp-rr HOST:PORT N [GAP] 4 KiB request -> 4 KiB response round trips
//                            (back to back, or each after GAP us idle)
//   tcp-stream HOST:PORT MB  raw TCP stream, server to client
//   map-random SEGID LEN N   N random 4 KiB page faults through a mapping
//   map-seq SEGID LEN        sequential read of a whole mapping
//   map-sync SEGID LEN STRIDE N
//                            write-back bandwidth: a writable mapping, every
//                            page fetched first; then N rounds of a store to
//                            every STRIDE-th byte (4096: one byte per page;
//                            1: every byte) and a timed tether_sync of it all
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <tether/tether.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
using Clock = std::chrono::steady_clock;

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

void PrintLatencies(const char* prefix, std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) { return v[std::min(v.size() - 1, size_t(p * v.size()))]; };
  // p99.9 means something only from ~10000 samples on (docs/rdma.md's
  // hardware runbook asks for it; the VM figures use p50 and p99).
  std::printf("%s_p50_us=%.2f %s_p99_us=%.2f %s_p999_us=%.2f %s_n=%zu\n", prefix, pct(0.5), prefix,
              pct(0.99), prefix, pct(0.999), prefix, v.size());
}

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "tether_bench: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// Serves every fault of `uffd` at once until `stop` (UFFDIO_ZEROPAGE, or
// UFFDIO_COPY of a 4 KiB page when `install`).
void ServeNullFaults(int uffd, bool install, const std::atomic<bool>& stop) {
  std::vector<uint8_t> page(kPage, 0x5a);
  uffd_msg msg;
  while (!stop) {
    pollfd p{uffd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    if (read(uffd, &msg, sizeof(msg)) != sizeof(msg)) continue;
    uint64_t at = msg.arg.pagefault.address & ~(kPage - 1);
    if (install) {
      uffdio_copy c{};
      c.dst = at;
      c.src = reinterpret_cast<uint64_t>(page.data());
      c.len = kPage;
      ioctl(uffd, UFFDIO_COPY, &c);
    } else {
      uffdio_zeropage z{};
      z.range = {at, kPage};
      ioctl(uffd, UFFDIO_ZEROPAGE, &z);
    }
  }
}

// A fresh memfd of `len` bytes mapped shared and read-only, as a client
// maps a read-only tether attachment.
uint8_t* MapMemfd(const char* name, size_t len) {
  int memfd = static_cast<int>(syscall(SYS_memfd_create, name, 0));
  if (memfd < 0 || ftruncate(memfd, static_cast<off_t>(len)) != 0) Die("memfd");
  void* mem = mmap(nullptr, len, PROT_READ, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) Die("mmap");
  close(memfd);  // the mapping keeps it
  return static_cast<uint8_t*>(mem);
}

// A new userfaultfd (with `features`) on which [mem, mem + len)'s missing
// faults arrive.
int RegisterMissing(void* mem, size_t len, uint64_t features) {
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) Die("userfaultfd");
  uffdio_api api{UFFD_API, features, 0};
  if (ioctl(uffd, UFFDIO_API, &api)) Die("UFFDIO_API");
  uffdio_register reg{};
  reg.range = {reinterpret_cast<uint64_t>(mem), len};
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) Die("UFFDIO_REGISTER");
  return uffd;
}

// A fault served without any fetch, N random pages.
//   null:    anonymous memory, a thread of the same process maps the zero
//            page (UFFDIO_ZEROPAGE: nothing allocated or copied).
//   install: as tether's mappings are served — a shared memfd mapping,
//            read-only like map-random's, the handler in another process
//            (as tetherd is), each fault resolved by UFFDIO_COPY of a 4 KiB
//            page. (Read-only matters on shadow-paging guests: reading a
//            page that UFFDIO_COPY mapped writable costs ~7 us more per page
//            there; tether maps writable attachments' pages write-protected.)
int UffdNull(int n, bool install) {
  size_t len = size_t(n) * kPage;
  auto* mem = static_cast<volatile uint8_t*>(
      install ? MapMemfd("uffd-null", len)
              : mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (mem == MAP_FAILED) Die("mmap");
  int uffd = RegisterMissing(const_cast<uint8_t*>(mem), len,
                             install ? uint64_t{UFFD_FEATURE_MISSING_SHMEM} : 0);
  std::atomic<bool> stop{false};
  std::thread handler;
  pid_t child = -1;
  if (install) {
    child = fork();
    if (child < 0) Die("fork");
    if (child == 0) {  // the handler process; killed when the faults are done
      ServeNullFaults(uffd, true, stop);
      _exit(0);
    }
  } else {
    handler = std::thread([&] { ServeNullFaults(uffd, false, stop); });
  }
  std::vector<double> lat;
  std::mt19937 rng(1);
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (int i : order) {
    auto t0 = Clock::now();
    (void)mem[size_t(i) * kPage];
    lat.push_back(Us(Clock::now() - t0));
  }
  stop = true;
  if (handler.joinable()) handler.join();
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
  }
  PrintLatencies(install ? "uffd_install" : "uffd_null", lat);
  return 0;
}

// uffd-seq: see the header. Every cache line is read, as map-seq does.
int UffdSeq(size_t mb) {
  const size_t len = mb << 20, chunk = 64 * kPage;
  uint8_t* mem = MapMemfd("uffd-seq", len);
  int uffd = RegisterMissing(mem, len, UFFD_FEATURE_MISSING_SHMEM);
  pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    // From the first fault on, install everything in order as fast as
    // possible: a faulter waits until a copy covers its page (UFFDIO_COPY
    // wakes it). No pipeline with a fetch in it can be faster.
    std::vector<uint8_t> src(chunk, 0x5a);
    pollfd p{uffd, POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0) _exit(1);
    const uint64_t base = reinterpret_cast<uint64_t>(mem);
    for (uint64_t d = base; d < base + len; d += chunk) {
      uffdio_copy c{};
      c.dst = d;
      c.src = reinterpret_cast<uint64_t>(src.data());
      c.len = std::min<uint64_t>(chunk, base + len - d);
      ioctl(uffd, UFFDIO_COPY, &c);
    }
    pause();
  }
  auto t0 = Clock::now();
  uint64_t sum = 0;
  const auto* w = reinterpret_cast<const uint64_t*>(mem);
  for (size_t i = 0; i < len / 8; i += 8) sum += w[i];
  double s = Us(Clock::now() - t0) / 1e6;
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  std::printf("uffd_seq_mbps=%.1f checksum=%llu\n", len / 1e6 / s,
              static_cast<unsigned long long>(sum & 0xff));
  return 0;
}

// zap-floor: see the header.
int ZapFloor(int n) {
  const size_t len = 1 << 20;
  int memfd = static_cast<int>(syscall(SYS_memfd_create, "zap-floor", 0));
  if (memfd < 0 || ftruncate(memfd, static_cast<off_t>(len)) != 0) Die("memfd");
  int to_child[2], to_parent[2];
  if (pipe(to_child) || pipe(to_parent)) Die("pipe");
  pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    close(to_child[1]);  // so that the parent's close ends the loop
    auto* mem = static_cast<volatile uint8_t*>(mmap(nullptr, len, PROT_READ, MAP_SHARED, memfd, 0));
    if (mem == MAP_FAILED) _exit(1);
    char c;
    while (read(to_child[0], &c, 1) == 1) {
      for (size_t i = 0; i < len; i += kPage) (void)mem[i];
      if (write(to_parent[1], &c, 1) != 1) break;
    }
    _exit(0);
  }
  std::vector<uint8_t> fill(len, 0x5a);
  std::vector<double> lat;
  for (int i = 0; i < n; ++i) {
    if (pwrite(memfd, fill.data(), len, 0) != static_cast<ssize_t>(len)) Die("pwrite");
    char c = 'r';
    if (write(to_child[1], &c, 1) != 1 || read(to_parent[0], &c, 1) != 1) Die("child");
    usleep(2000);
    auto t0 = Clock::now();
    if (fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, len) != 0) Die("fallocate");
    lat.push_back(Us(Clock::now() - t0));
  }
  close(to_child[1]);
  waitpid(child, nullptr, 0);
  PrintLatencies("zap_floor", lat);
  return 0;
}

int Connect(const std::string& hostport) {
  auto colon = hostport.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(hostport.c_str() + colon + 1)));
  inet_pton(AF_INET, hostport.substr(0, colon).c_str(), &a.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  for (int i = 0; i < 100; ++i) {
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    usleep(50000);
  }
  Die("connect");
}

bool Full(int fd, void* buf, size_t len, bool wr) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len) {
    ssize_t n = wr ? write(fd, p, len) : read(fd, p, len);
    if (n <= 0) return false;
    p += n;
    len -= size_t(n);
  }
  return true;
}

// Protocol: 1 byte command ('r' = 4 KiB rr, 's' = stream N MiB), then data.
int TcpServe(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof(a)) || listen(ls, 8)) Die("bind");
  std::printf("listening\n");
  std::fflush(stdout);
  for (int conns = 0; conns < 256; ++conns) {  // bounded: the runner uses ~30
    int fd = accept(ls, nullptr, nullptr);
    if (fd < 0) break;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::vector<uint8_t> buf(1 << 20, 0x5a);
    char cmd;
    while (Full(fd, &cmd, 1, false)) {
      if (cmd == 'r') {
        uint8_t req[64];
        if (!Full(fd, req, sizeof(req), false) || !Full(fd, buf.data(), kPage, true)) break;
      } else if (cmd == 's') {
        uint32_t mb;
        if (!Full(fd, &mb, 4, false)) break;
        for (uint32_t i = 0; i < mb; ++i)
          if (!Full(fd, buf.data(), buf.size(), true)) break;
      }
    }
    close(fd);
  }
  return 0;
}

// `gap_us` > 0: each round trip after that long idle, as a one-shot
// operation (an exporter's munmap) meets the link and the CPUs: on
// virtualised machines, waking an idle CPU costs more than the message.
int TcpRr(const std::string& hp, int n, int gap_us) {
  int fd = Connect(hp);
  std::vector<double> lat;
  uint8_t req[65] = {'r'}, resp[kPage];
  for (int i = 0; i < n + 50; ++i) {
    if (gap_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
    auto t0 = Clock::now();
    if (!Full(fd, req, sizeof(req), true) || !Full(fd, resp, sizeof(resp), false)) Die("rr");
    if (i >= 50) lat.push_back(Us(Clock::now() - t0));  // warm-up excluded
  }
  PrintLatencies(gap_us > 0 ? "tcp_rr_idle" : "tcp_rr", lat);
  return 0;
}

int TcpStream(const std::string& hp, uint32_t mb) {
  int fd = Connect(hp);
  std::vector<uint8_t> buf(1 << 20);
  uint8_t cmd[5] = {'s'};
  std::memcpy(cmd + 1, &mb, 4);
  auto t0 = Clock::now();
  Full(fd, cmd, 5, true);
  for (uint32_t i = 0; i < mb; ++i)
    if (!Full(fd, buf.data(), buf.size(), false)) Die("stream");
  double s = Us(Clock::now() - t0) / 1e6;
  std::printf("tcp_stream_mbps=%.1f\n", mb * 1.048576 / s);
  return 0;
}

uint8_t* Attach(int64_t segid, size_t* len, tether_apid_t* apid) {
  *apid = tether_get(segid, TETHER_RDONLY, TETHER_PERMIT_MODE, nullptr);
  if (*apid < 0) {
    std::fprintf(stderr, "tether_get: %s\n", tether_strerror());
    std::exit(1);
  }
  void* p = tether_attach(*apid, 0, *len, nullptr);
  if (p == TETHER_ATTACH_FAILED) {
    std::fprintf(stderr, "tether_attach: %s\n", tether_strerror());
    std::exit(1);
  }
  return static_cast<uint8_t*>(p);
}

int MapRandom(int64_t segid, size_t len, int n) {
  tether_apid_t apid;
  auto* p = Attach(segid, &len, &apid);
  size_t pages = len / kPage;
  std::mt19937 rng(7);
  std::vector<size_t> order(pages);
  for (size_t i = 0; i < pages; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<double> lat;
  volatile uint8_t sink = 0;
  for (int i = 0; i < n && i < int(pages); ++i) {
    auto t0 = Clock::now();
    sink = sink + p[order[i] * kPage];
    lat.push_back(Us(Clock::now() - t0));
  }
  PrintLatencies("map_fault", lat);
  tether_detach(p);
  tether_release(apid);
  return 0;
}

int MapSeq(int64_t segid, size_t len) {
  tether_apid_t apid;
  auto* p = Attach(segid, &len, &apid);
  auto t0 = Clock::now();
  uint64_t sum = 0;
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < len / 8; i += 8) sum += w[i];  // every cache line
  double s = Us(Clock::now() - t0) / 1e6;
  std::printf("map_seq_mbps=%.1f checksum=%llu\n", len / 1e6 / s,
              static_cast<unsigned long long>(sum & 0xff));
  tether_detach(p);
  tether_release(apid);
  return 0;
}

int MapSync(int64_t segid, size_t len, size_t stride, int rounds) {
  tether_apid_t apid = tether_get(segid, TETHER_RDWR, TETHER_PERMIT_MODE, nullptr);
  if (apid < 0) Die("tether_get");
  void* v = tether_attach(apid, 0, len, nullptr);
  if (v == TETHER_ATTACH_FAILED) Die("tether_attach");
  auto* p = static_cast<volatile uint8_t*>(v);
  uint64_t sum = 0;
  for (size_t i = 0; i < len; i += kPage) sum += p[i];  // fetched: twins taken from these
  std::vector<double> mbps;
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < len; i += stride) p[i] = static_cast<uint8_t>(p[i] + 1 + r);
    auto t0 = Clock::now();
    if (tether_sync(v, len) != 0) Die("tether_sync");
    mbps.push_back(len / Us(Clock::now() - t0));
  }
  std::sort(mbps.begin(), mbps.end());
  std::printf("map_sync_mbps=%.1f checksum=%llu\n", mbps[mbps.size() / 2],
              static_cast<unsigned long long>(sum & 0xff));
  tether_detach(v);
  tether_release(apid);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "see the header comment of tests/bench/tether_bench.cc\n");
    return 2;
  }
  std::string mode = argv[1];
  if (mode == "uffd-null") return UffdNull(std::atoi(argv[2]), false);
  if (mode == "uffd-install") return UffdNull(std::atoi(argv[2]), true);
  if (mode == "uffd-seq") return UffdSeq(std::strtoull(argv[2], nullptr, 0));
  if (mode == "zap-floor") return ZapFloor(std::atoi(argv[2]));
  if (mode == "tcp-serve") return TcpServe(std::atoi(argv[2]));
  if (mode == "tcp-rr" && argc >= 4)
    return TcpRr(argv[2], std::atoi(argv[3]), argc >= 5 ? std::atoi(argv[4]) : 0);
  if (mode == "tcp-stream" && argc >= 4) return TcpStream(argv[2], std::atoi(argv[3]));
  if (mode == "map-random" && argc >= 5)
    return MapRandom(std::atoll(argv[2]), std::strtoull(argv[3], nullptr, 0), std::atoi(argv[4]));
  if (mode == "map-sync" && argc >= 6)
    return MapSync(std::atoll(argv[2]), std::strtoull(argv[3], nullptr, 0),
                   std::strtoull(argv[4], nullptr, 0), std::atoi(argv[5]));
  if (mode == "map-seq" && argc >= 4)
    return MapSeq(std::atoll(argv[2]), std::strtoull(argv[3], nullptr, 0));
  return 2;
}
