#include "daemon/mapper/mapper_metrics.h"

#include "absl/strings/str_cat.h"

namespace tether {
namespace {

metrics::Labels DataLabels(uint64_t key) {
  static const char* const kVia[] = {"local", "tcp", "rdma", "other"};
  return {{"peer", absl::StrCat(key >> 2)}, {"transport", kVia[key & 3]}};
}

MapperMetrics Make() {
  metrics::Registry& r = metrics::Default();
  const auto bounds = metrics::Histogram::LatencyBounds();
  MapperMetrics m;
  const char* faults_help =
      "page faults of this node's attachments the daemon served, by kind (missing: a page not "
      "in the cache; write_protect: the first store to a clean page)";
  m.missing_faults = r.GetCounter("tether_faults_total", faults_help, {{"kind", "missing"}});
  m.write_protect_faults =
      r.GetCounter("tether_faults_total", faults_help, {{"kind", "write_protect"}});
  m.fetch_latency = r.GetHistogram(
      "tether_fault_fetch_seconds",
      "from a missing fault to the home's answer to the fetch it started (read-ahead included)",
      bounds);
  m.fetch_failures = r.GetCounter("tether_fetch_failures_total",
                                  "fetches that failed for good: the faulting client got SIGBUS");
  m.evicted_pages = r.GetCounter("tether_cache_evicted_pages_total",
                                 "clean cached pages dropped to stay within the cache budget");
  const char* notices_help = "invalidation notices from homes applied to this node's copies";
  m.notices_begin =
      r.GetCounter("tether_mapper_invalidations_total", notices_help, {{"kind", "begin"}});
  m.notices_end =
      r.GetCounter("tether_mapper_invalidations_total", notices_help, {{"kind", "end"}});
  m.notices_revoke =
      r.GetCounter("tether_mapper_invalidations_total", notices_help, {{"kind", "revoke"}});
  m.begin_latency = r.GetHistogram("tether_mapper_invalidation_seconds",
                                   "time to apply a range_begin to this node's copies", bounds);
  m.revoked_copies =
      r.GetCounter("tether_copies_revoked_total",
                   "segment copies (one per segment per node, shared by its attachments here) "
                   "revoked: home's REVOKE, fence, lease ran out, segment gone; their "
                   "attachments' next access raises SIGBUS");
  m.lease_expiries =
      r.GetCounter("tether_lease_expiries_total",
                   "attachments this node revoked itself because a home's lease ran out unrenewed");
  m.rdma_fallbacks =
      r.GetCounter("tether_rdma_fallbacks_total",
                   "rdma connection set-up failures after which requests went over tcp");
  m.fetched_bytes = std::make_unique<metrics::CounterTable>(
      &r, "tether_fetched_bytes_total",
      "page contents fetched from a home, by home node and transport", DataLabels);
  m.written_back_bytes = std::make_unique<metrics::CounterTable>(
      &r, "tether_written_back_bytes_total",
      "bytes written back to a home (page diffs as sent), by home node and transport", DataLabels);
  m.written_back_total = std::make_unique<metrics::Counter>();
  return m;
}

}  // namespace

const MapperMetrics& Mapper() {
  static const MapperMetrics* m = new MapperMetrics(Make());
  return *m;
}

}  // namespace tether
