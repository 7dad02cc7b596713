#include "daemon/common/metrics.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tether {
namespace metrics {
namespace {

bool ValidName(const std::string& n, bool colon) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// A number as the text format writes it: integers without a fraction,
// others with enough digits to round-trip.
std::string Number(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v)) && v < 9e15 && v > -9e15)
    return absl::StrCat(static_cast<int64_t>(v));
  return absl::StrFormat("%.17g", v);
}

std::string LabelText(const Labels& labels, const std::string& extra_name = "",
                      const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    absl::StrAppend(&out, first ? "" : ",", k, "=\"", EscapeLabelValue(v), "\"");
    first = false;
  }
  if (!extra_name.empty())
    absl::StrAppend(&out, first ? "" : ",", extra_name, "=\"", extra_value, "\"");
  out += "}";
  return out;
}

// HELP text escaping (\\ and \n; quotes stay).
std::string EscapeHelp(const std::string& h) {
  std::string out;
  for (char c : h) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

const char* TypeName(int t) {
  switch (t) {
    case 0:
    case 4: return "counter";
    case 3: return "histogram";
    default: return "gauge";
  }
}

}  // namespace

size_t ShardIndex() {
  static std::atomic<size_t> next{0};
  thread_local size_t index = next.fetch_add(1, std::memory_order_relaxed) % kShards;
  return index;
}

uint64_t Counter::Value() const {
  uint64_t sum = 0;
  for (const auto& s : shards_) sum += s.v.load(std::memory_order_relaxed);
  return sum;
}

Histogram::Histogram(std::vector<double> bounds_seconds) : shards_(new Slot[kShards]) {
  if (bounds_seconds.size() > kMaxBounds) bounds_seconds.resize(kMaxBounds);
  std::sort(bounds_seconds.begin(), bounds_seconds.end());
  for (double b : bounds_seconds) bounds_ns_.push_back(static_cast<uint64_t>(b * 1e9 + 0.5));
}

void Histogram::ObserveNanos(uint64_t ns) {
  // A linear scan: a dozen or two compares, no branch mispredicted much
  // (latencies cluster), cheaper than the fault it measures by far.
  size_t b = 0;
  while (b < bounds_ns_.size() && ns > bounds_ns_[b]) ++b;
  Slot& s = shards_[ShardIndex()];
  s.buckets[b].fetch_add(1, std::memory_order_relaxed);
  s.sum.fetch_add(ns, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snap;
  for (uint64_t b : bounds_ns_) snap.bounds.push_back(static_cast<double>(b) / 1e9);
  snap.buckets.assign(bounds_ns_.size() + 1, 0);
  for (size_t i = 0; i < kShards; ++i) {
    for (size_t b = 0; b <= bounds_ns_.size(); ++b)
      snap.buckets[b] += shards_[i].buckets[b].load(std::memory_order_relaxed);
    snap.sum_nanos += shards_[i].sum.load(std::memory_order_relaxed);
  }
  for (uint64_t n : snap.buckets) snap.count += n;
  return snap;
}

std::vector<double> Histogram::LatencyBounds() {
  return {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

Registry::Child* Registry::GetChild(const std::string& name, const std::string& help, Type type,
                                    const Labels& labels) {
  bool valid = ValidName(name, true);
  for (const auto& [k, v] : labels) valid = valid && ValidName(k, false) && k != "le";
  if (!valid) {
    std::fprintf(stderr, "metrics: invalid metric or label name in %s\n", name.c_str());
    std::abort();
  }
  auto it = std::find_if(families_.begin(), families_.end(),
                         [&](const auto& f) { return f.first == name; });
  Family* family;
  if (it == families_.end()) {
    auto f = std::make_unique<Family>();
    f->help = help;
    f->type = type;
    family = f.get();
    auto pos = std::lower_bound(families_.begin(), families_.end(), name,
                                [](const auto& f, const std::string& n) { return f.first < n; });
    families_.insert(pos, {name, std::move(f)});
  } else {
    family = it->second.get();
    auto kind = [](Type t) {
      return t == Type::kGaugeFunction     ? Type::kGauge
             : t == Type::kCounterFunction ? Type::kCounter
                                           : t;
    };
    if (kind(family->type) != kind(type)) {
      std::fprintf(stderr, "metrics: %s registered with two types\n", name.c_str());
      std::abort();
    }
  }
  for (auto& c : family->children)
    if (c->labels == labels) return c.get();
  family->children.push_back(std::make_unique<Child>());
  Child* c = family->children.back().get();
  c->labels = labels;
  return c;
}

Counter* Registry::GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Child* c = GetChild(name, help, Type::kCounter, labels);
  if (!c->counter) c->counter = std::make_unique<Counter>();
  return c->counter.get();
}

Gauge* Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Child* c = GetChild(name, help, Type::kGauge, labels);
  if (!c->gauge) c->gauge = std::make_unique<Gauge>();
  return c->gauge.get();
}

Histogram* Registry::GetHistogram(const std::string& name, const std::string& help,
                                  const std::vector<double>& bounds_seconds, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Child* c = GetChild(name, help, Type::kHistogram, labels);
  if (!c->histogram) c->histogram = std::make_unique<Histogram>(bounds_seconds);
  return c->histogram.get();
}

void Registry::SetGaugeFunction(const std::string& name, const std::string& help,
                                const Labels& labels, std::function<double()> fn) {
  absl::MutexLock lock(&mu_);
  Child* c = GetChild(name, help, Type::kGaugeFunction, labels);
  c->fn = std::move(fn);
}

void Registry::SetCounterFunction(const std::string& name, const std::string& help,
                                  const Labels& labels, std::function<double()> fn) {
  absl::MutexLock lock(&mu_);
  Child* c = GetChild(name, help, Type::kCounterFunction, labels);
  c->fn = std::move(fn);
}

void Registry::ClearFunctions() {
  absl::MutexLock lock(&mu_);
  for (auto& [name, f] : families_)
    for (auto& c : f->children) c->fn = nullptr;
}

std::vector<Registry::Sample> Registry::Samples() const {
  absl::MutexLock lock(&mu_);
  std::vector<Sample> out;
  for (const auto& [name, f] : families_) {
    for (const auto& c : f->children) {
      Sample s;
      s.family = name;
      s.help = f->help;
      s.type = TypeName(static_cast<int>(f->type));
      if (f->type == Type::kGauge && c->fn) s.type = "gauge";
      s.labels = c->labels;
      if (c->counter) {
        s.value = static_cast<double>(c->counter->Value());
      } else if (c->gauge) {
        s.value = static_cast<double>(c->gauge->Value());
      } else if (c->fn) {
        s.value = c->fn();
      } else if (c->histogram) {
        s.histogram = std::make_shared<Histogram::Snapshot>(c->histogram->Read());
        s.value = static_cast<double>(s.histogram->count);
      } else {
        continue;  // a gauge function not set yet
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::string Registry::Render() const {
  std::string out;
  std::string last;
  for (const Sample& s : Samples()) {
    if (s.family != last) {
      absl::StrAppend(&out, "# HELP ", s.family, " ", EscapeHelp(s.help), "\n# TYPE ", s.family,
                      " ", s.type, "\n");
      last = s.family;
    }
    if (!s.histogram) {
      absl::StrAppend(&out, s.family, LabelText(s.labels), " ", Number(s.value), "\n");
      continue;
    }
    const Histogram::Snapshot& h = *s.histogram;
    uint64_t cumulative = 0;
    for (size_t b = 0; b < h.buckets.size(); ++b) {
      cumulative += h.buckets[b];
      std::string le = b < h.bounds.size() ? absl::StrFormat("%g", h.bounds[b]) : "+Inf";
      absl::StrAppend(&out, s.family, "_bucket", LabelText(s.labels, "le", le), " ", cumulative,
                      "\n");
    }
    absl::StrAppend(&out, s.family, "_sum", LabelText(s.labels), " ",
                    Number(static_cast<double>(h.sum_nanos) / 1e9), "\n");
    absl::StrAppend(&out, s.family, "_count", LabelText(s.labels), " ", h.count, "\n");
  }
  return out;
}

Registry& Default() {
  static Registry* registry = new Registry;  // never destroyed: threads may count at exit
  return *registry;
}

CounterTable::CounterTable(Registry* registry, std::string name, std::string help,
                           std::function<Labels(uint64_t)> labels)
    : registry_(registry),
      name_(std::move(name)),
      help_(std::move(help)),
      labels_(std::move(labels)) {}

Counter* CounterTable::Get(uint64_t key) {
  const uint64_t tagged = key + 1;
  for (Slot& s : slots_) {
    uint64_t k = s.key.load(std::memory_order_acquire);
    if (k == tagged) {
      Counter* c = s.counter.load(std::memory_order_acquire);
      if (c) return c;
      break;  // being published: take the slow path
    }
    if (k == 0) break;
  }
  absl::MutexLock lock(&mu_);
  for (Slot& s : slots_) {
    uint64_t k = s.key.load(std::memory_order_relaxed);
    if (k == tagged) return s.counter.load(std::memory_order_relaxed);
    if (k == 0) {
      Counter* c = registry_->GetCounter(name_, help_, labels_(key));
      // Counter first: a reader that sees the key and a null counter
      // takes this lock and finds both.
      s.counter.store(c, std::memory_order_release);
      s.key.store(tagged, std::memory_order_release);
      return c;
    }
  }
  if (!other_) {
    Labels l = labels_(key);
    for (auto& [k, v] : l) v = "other";
    other_ = registry_->GetCounter(name_, help_, l);
  }
  return other_;
}

}  // namespace metrics
}  // namespace tether
