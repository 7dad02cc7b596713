// WorkQueue<T>: a queue that worker threads block on. Pop() waits for an
// item or for Stop(); after Stop() it returns nothing at once, and what was
// never popped stays for TakeAll() — an owner that must answer every item
// (an exporter waiting on its range_begin) answers the rest itself.
#ifndef TETHER_DAEMON_COMMON_WORK_QUEUE_H_
#define TETHER_DAEMON_COMMON_WORK_QUEUE_H_

#include <deque>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tether {

template <typename T>
class WorkQueue {
 public:
  // False (and `item` dropped) once stopped.
  bool Push(T item) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return false;
    items_.push_back(std::move(item));
    return true;
  }

  // The oldest item; nullopt once stopped (even if items are left).
  std::optional<T> Pop() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &WorkQueue::Ready));
    if (stopped_) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    return item;
  }

  // Wakes every Pop(); later Pushes are refused.
  void Stop() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }

  std::deque<T> TakeAll() {
    absl::MutexLock lock(&mu_);
    std::deque<T> all;
    all.swap(items_);
    return all;
  }

 private:
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_ || !items_.empty(); }

  absl::Mutex mu_;
  std::deque<T> items_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_WORK_QUEUE_H_
