// DataCounters: process-wide counts of the page contents this daemon moves
// and of the CPU copies it makes of them, for the benchmarks' structural
// rows (tests/bench/run.py: copies per 4 KiB fault and per MiB, beside the
// syscalls and context switches it measures from outside). They are read by
// `tetherctl status --json` ("counters"), before and after a run.
//
// A copy is counted where the code makes it, by the bytes it copies: a
// memcpy, or a syscall that copies page contents between user memory and
// the kernel or another process (send/recv of payload, process_vm_readv/
// writev, UFFDIO_COPY). The NIC's DMA is not a CPU copy. Dividing a side's
// copies by the bytes it moved gives its copies per page:
//
//   mapper: (fetch_copy + install_copy) / fetched
//   home:   (serve_copy + exporter_copy) / served
//
// Thread contract: any thread; every field is a relaxed atomic counter
// (one uncontended add per request or batch on the data path: no lock, no
// syscall). Values only grow; readers take differences.
#ifndef TETHER_DAEMON_COMMON_DATA_COUNTERS_H_
#define TETHER_DAEMON_COMMON_DATA_COUNTERS_H_

#include <atomic>
#include <cstdint>

namespace tether {

struct DataCounters {
  // Mapper side (reads from a home).
  std::atomic<uint64_t> fetched_bytes{0};       // page contents a home answered, installed or not
  std::atomic<uint64_t> fetch_copy_bytes{0};    // transport copies of them (slot -> buffer, recv)
  std::atomic<uint64_t> install_copy_bytes{0};  // UFFDIO_COPY into the attachment
  // Home side (reads served to mappers, this node's own included).
  std::atomic<uint64_t> served_bytes{0};         // page contents read for a request
  std::atomic<uint64_t> exporter_copy_bytes{0};  // process_vm_readv/writev of the exporter
  std::atomic<uint64_t> serve_copy_bytes{0};     // transport copies of them (send)
};

// The process's counters.
DataCounters& Counters();

inline void CountBytes(std::atomic<uint64_t>& counter, uint64_t n) {
  counter.fetch_add(n, std::memory_order_relaxed);
}

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_DATA_COUNTERS_H_
