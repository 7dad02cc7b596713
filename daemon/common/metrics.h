// Metrics: the daemon's counters, gauges and histograms, and their
// Prometheus text exposition (format 0.0.4) for GET /metrics
// (metrics_http.h) and `tetherctl stats`. docs/metrics.md lists every
// metric the daemon registers, with its meaning and labels.
//
// Each metric is counted where the event happens, by the thread that sees
// it, and must cost no more than the event's own bookkeeping: Counter and
// Histogram are sharded (kShards cache-line-sized slots; a thread picks
// one once, round robin) and updated with relaxed atomic adds only — no
// lock, no syscall, no allocation — so they may sit on the fault path.
// Reading sums the shards: a scrape sees each metric as of some moment
// during the scrape, not one snapshot of all of them (Prometheus expects
// no more).
//
// Families. A metric has a name, a help line and a type; a family may have
// children told apart by labels (`tether_fetched_bytes_total{peer="2",
// transport="tcp"}`). Registry::Counter/Gauge/Histogram get or create a
// child under the registry's mutex: call them once, where a part is built,
// and keep the pointer (children live as long as the registry). A child
// whose labels are only known on the hot path (a peer, a transport) comes
// from a CounterTable: a lock-free lookup by an integer key, creating the
// child (under the registry's mutex) only the first time a key is seen.
//
// Thread contract: everything here is thread-safe. Counter::Add,
// Histogram::Observe, Gauge::Set/Add and CounterTable::Get (once the key
// exists) take no lock. Render takes the registry's mutex (not the
// metrics'), and calls the gauge functions under it: they must not call
// back into the registry.
#ifndef TETHER_DAEMON_COMMON_METRICS_H_
#define TETHER_DAEMON_COMMON_METRICS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tether {
namespace metrics {

inline constexpr size_t kShards = 8;
// The calling thread's shard (chosen at its first call, round robin).
size_t ShardIndex();

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Add(uint64_t n = 1) { shards_[ShardIndex()].v.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const;

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> v{0};
  };
  Slot shards_[kShards];
};

// A value that goes up and down (segments exported now). Not sharded:
// gauges are set where state changes, never per page.
class Gauge {
 public:
  void Set(int64_t v) { v_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d) { v_.fetch_add(d, std::memory_order_relaxed); }
  int64_t Value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Latencies, observed in nanoseconds, exposed in seconds. Bucket bounds
// are fixed at creation (upper bounds, inclusive, ascending; +Inf is
// implied).
class Histogram {
 public:
  static constexpr size_t kMaxBounds = 24;
  // Bounds in seconds; at most kMaxBounds.
  explicit Histogram(std::vector<double> bounds_seconds);

  void ObserveNanos(uint64_t ns);
  void Observe(absl::Duration d) {
    ObserveNanos(static_cast<uint64_t>(absl::ToInt64Nanoseconds(d)));
  }

  struct Snapshot {
    std::vector<double> bounds;     // seconds
    std::vector<uint64_t> buckets;  // per bucket (not cumulative), bounds.size() + 1
    uint64_t count = 0;
    uint64_t sum_nanos = 0;
  };
  Snapshot Read() const;

  // Latencies of a network round trip and of work around it: 50 us .. 10 s.
  static std::vector<double> LatencyBounds();

 private:
  std::vector<uint64_t> bounds_ns_;
  struct alignas(64) Slot {
    std::atomic<uint64_t> buckets[kMaxBounds + 1] = {};
    std::atomic<uint64_t> sum{0};
  };
  std::unique_ptr<Slot[]> shards_;
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Get or create the child of family `name` with `labels`. A name is one
  // type: asking for it as another type is a programming error (aborts).
  // Names: [a-zA-Z_:][a-zA-Z0-9_:]*; label names likewise, without ':'.
  Counter* GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge* GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram* GetHistogram(const std::string& name, const std::string& help,
                          const std::vector<double>& bounds_seconds, const Labels& labels = {});
  // A gauge read when rendered (cache use, the notifier source): `fn` runs
  // under the registry's mutex, on the scraping thread. Replaces an
  // earlier function of the same name and labels.
  void SetGaugeFunction(const std::string& name, const std::string& help, const Labels& labels,
                        std::function<double()> fn);
  // The same for a counter kept elsewhere (DataCounters, the
  // coordinator's InvalidationStats): read when rendered, typed counter.
  void SetCounterFunction(const std::string& name, const std::string& help, const Labels& labels,
                          std::function<double()> fn);

  // Forgets every gauge and counter function (they stop being rendered):
  // their owner is going away (tetherd's Stop).
  void ClearFunctions();

  // The Prometheus text exposition format 0.0.4: per family (sorted by
  // name) "# HELP", "# TYPE", then its samples; histograms as
  // name_bucket{le="..."} (cumulative, ending with le="+Inf"), name_sum
  // (seconds), name_count.
  std::string Render() const;

  // Every sample as (name with labels, value), as Render writes them, for
  // `tetherctl stats`.
  struct Sample {
    std::string family, help, type;
    Labels labels;
    double value = 0;
    // Histograms: the snapshot (value is its count).
    std::shared_ptr<Histogram::Snapshot> histogram;
  };
  std::vector<Sample> Samples() const;

 private:
  enum class Type { kCounter, kGauge, kGaugeFunction, kHistogram, kCounterFunction };
  struct Child {
    Labels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
    std::function<double()> fn;
  };
  struct Family {
    std::string help;
    Type type;
    std::vector<std::unique_ptr<Child>> children;
  };
  Child* GetChild(const std::string& name, const std::string& help, Type type, const Labels& labels)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::pair<std::string, std::unique_ptr<Family>>> families_ ABSL_GUARDED_BY(mu_);
};

// The daemon's registry (process-wide, as Counters() in data_counters.h).
Registry& Default();

// Children of one counter family keyed by a small integer the caller
// computes (a peer's node id and a transport), found without a lock.
// Up to kSlots keys; later keys share one child labelled "other".
class CounterTable {
 public:
  static constexpr size_t kSlots = 64;
  // `labels(key)` gives a new key's labels (called under a mutex, once
  // per key).
  CounterTable(Registry* registry, std::string name, std::string help,
               std::function<Labels(uint64_t key)> labels);
  Counter* Get(uint64_t key);

 private:
  Registry* const registry_;
  const std::string name_, help_;
  const std::function<Labels(uint64_t)> labels_;
  struct Slot {
    std::atomic<uint64_t> key{0};  // key + 1; 0: empty
    std::atomic<Counter*> counter{nullptr};
  };
  Slot slots_[kSlots];
  absl::Mutex mu_;  // creation only
  Counter* other_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// Label value escaping of the text format (\\, \", \n).
std::string EscapeLabelValue(const std::string& v);

}  // namespace metrics
}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_METRICS_H_
