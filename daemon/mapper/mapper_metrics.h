// MapperMetrics: the mapper side's metrics (docs/metrics.md), registered
// once in metrics::Default() at first use and counted where each event
// happens: faults and the fetch latency (the fault thread), bytes per home
// and transport (DataPath's completions), evictions (the evictor), notices
// applied and their latency (MapperInvalidation), attachments revoked and
// lease expiries.
//
// Thread contract: Mapper() is thread-safe (a function-local static); the
// metrics are common/metrics.h's (relaxed, sharded, no lock).
#ifndef TETHER_DAEMON_MAPPER_MAPPER_METRICS_H_
#define TETHER_DAEMON_MAPPER_MAPPER_METRICS_H_

#include <cstdint>
#include <memory>

#include "daemon/common/metrics.h"

namespace tether {

struct MapperMetrics {
  metrics::Counter* missing_faults;
  metrics::Counter* write_protect_faults;
  metrics::Histogram* fetch_latency;  // a fault's fetch: request to answer
  metrics::Counter* fetch_failures;   // fetches that raised SIGBUS
  metrics::Counter* evicted_pages;
  metrics::Counter* notices_begin;
  metrics::Counter* notices_end;
  metrics::Counter* notices_revoke;
  metrics::Histogram* begin_latency;  // a range_begin applied here
  metrics::Counter* revoked_copies;
  metrics::Counter* lease_expiries;
  metrics::Counter* rdma_fallbacks;
  // Keyed by DataKey(node, transport).
  std::unique_ptr<metrics::CounterTable> fetched_bytes;
  std::unique_ptr<metrics::CounterTable> written_back_bytes;
  // Their sum over every home (not exposed; what a drain wrote back is
  // read from it: admin's Drain).
  std::unique_ptr<metrics::Counter> written_back_total;

  enum Via : uint8_t { kLocal = 0, kTcp = 1, kRdma = 2 };
  static uint64_t DataKey(uint32_t node, Via via) { return (uint64_t{node} << 2) | via; }
};

const MapperMetrics& Mapper();

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_MAPPER_METRICS_H_
