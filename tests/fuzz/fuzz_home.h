// FuzzHome: a home for the fuzz targets and the seed generator
// (make_corpus.cc). A real SegmentRegistry (node kFuzzNode, incarnation
// kFuzzIncarnation) exports kFuzzSegSize bytes of this very process (its
// pidfd, /proc/self/mem, as an exporter's), published as kFuzzName, with one
// grant to node kFuzzPeer. It is made the same way every time, so the segid
// and the grant are the same numbers in the generator's seeds and in every
// run of a target: the fuzzer starts from requests that name a live segment
// and reaches the serving code, not only the "no such segment" answers.
//
// Thread contract: one thread (a target's LLVMFuzzerTestOneInput).
#ifndef TETHER_TESTS_FUZZ_FUZZ_HOME_H_
#define TETHER_TESTS_FUZZ_FUZZ_HOME_H_

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <google/protobuf/stubs/logging.h>

#include "daemon/common/credentials.h"
#include "daemon/common/log.h"
#include "daemon/home/exporter_memory.h"
#include "daemon/home/segment_registry.h"

namespace tether {

constexpr uint32_t kFuzzNode = 1, kFuzzPeer = 2;
constexpr uint32_t kFuzzIncarnation = 0x5eed;
constexpr uint64_t kFuzzSegSize = 64 * 1024;
constexpr const char* kFuzzName = "fuzz";

// The exported memory: static, so that it outlives every registry.
inline uint8_t* FuzzSegmentMemory() {
  alignas(4096) static uint8_t mem[kFuzzSegSize];
  return mem;
}

inline Credentials FuzzOwner() {
  Credentials c;
  c.pid = getpid();
  c.uid = getuid();
  c.gid = getgid();
  return c;
}

struct FuzzHome {
  SegmentRegistry registry{kFuzzNode, kFuzzIncarnation};
  uint64_t segid = 0;
  uint64_t grant = 0;

  // Exports, publishes and grants; aborts if it cannot (a target that
  // cannot set up must fail loudly, not fuzz nothing).
  FuzzHome() {
    // Millions of inputs: only errors (TETHER_FUZZ_VERBOSE=1: everything).
    // Protobuf's complaints about fuzzed strings (invalid UTF-8) too.
    if (!std::getenv("TETHER_FUZZ_VERBOSE")) {
      SetLogLevel(LogLevel::kError);
      google::protobuf::SetLogHandler(nullptr);
    }
    int pidfd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
    if (pidfd < 0) Die("pidfd_open");
    auto memory = ExporterMemory::Open(pidfd, getpid());
    if (!memory.ok()) Die(memory.status().ToString().c_str());
    auto s = registry.Make(FuzzOwner(), reinterpret_cast<uint64_t>(FuzzSegmentMemory()),
                           kFuzzSegSize, 0666, std::move(*memory));
    if (!s.ok()) Die(s.status().ToString().c_str());
    segid = *s;
    if (!registry.Publish(segid, kFuzzName, FuzzOwner()).ok()) Die("publish");
    auto g = registry.Attach(segid, FuzzOwner(), true, kFuzzPeer);
    if (!g.ok()) Die(g.status().ToString().c_str());
    grant = g->id;
  }

  [[noreturn]] static void Die(const char* what) {
    std::fprintf(stderr, "FuzzHome: cannot set up: %s\n", what);
    std::abort();
  }
};

}  // namespace tether

#endif  // TETHER_TESTS_FUZZ_FUZZ_HOME_H_
