#include "daemon/common/fault_points.h"

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace tether {

std::atomic<bool> FaultPoints::any_armed_{false};

namespace {

// One Arm(): shared by the held thread and the test, so that a Release
// (which forgets the name) still wakes the thread that holds it.
struct Point {
  bool reached = false;
  bool released = false;
};

struct Registry {
  absl::Mutex mu;
  // Armed or held points, by name; Release and ReleaseAll remove them.
  absl::flat_hash_map<std::string, std::shared_ptr<Point>> points ABSL_GUARDED_BY(mu);
};

Registry& Reg() {
  static Registry* reg = new Registry;  // never destroyed: threads may hold points at exit
  return *reg;
}

}  // namespace

void FaultPoints::Hit(absl::string_view name) {
  Registry& r = Reg();
  absl::MutexLock lock(&r.mu);
  auto it = r.points.find(name);
  if (it == r.points.end() || it->second->reached) return;  // not armed, or one is held
  std::shared_ptr<Point> p = it->second;
  p->reached = true;
  r.mu.Await(absl::Condition(
      +[](Point* p) { return p->released; }, p.get()));
}

void FaultPoints::Arm(absl::string_view name) {
  Registry& r = Reg();
  absl::MutexLock lock(&r.mu);
  r.points[name] = std::make_shared<Point>();
  any_armed_.store(true, std::memory_order_relaxed);
}

bool FaultPoints::WaitUntilReached(absl::string_view name, absl::Duration timeout) {
  Registry& r = Reg();
  absl::MutexLock lock(&r.mu);
  auto it = r.points.find(name);
  if (it == r.points.end()) return false;  // never armed, or released already
  std::shared_ptr<Point> p = it->second;
  return r.mu.AwaitWithTimeout(absl::Condition(
                                   +[](Point* p) { return p->reached; }, p.get()),
                               timeout);
}

bool FaultPoints::Reached(absl::string_view name) {
  Registry& r = Reg();
  absl::MutexLock lock(&r.mu);
  auto it = r.points.find(name);
  return it != r.points.end() && it->second->reached;
}

void FaultPoints::Release(absl::string_view name) {
  Registry& r = Reg();
  absl::MutexLock lock(&r.mu);
  auto it = r.points.find(name);
  if (it == r.points.end()) return;
  it->second->released = true;
  r.points.erase(it);
  any_armed_.store(!r.points.empty(), std::memory_order_relaxed);
}

void FaultPoints::ReleaseAll() {
  Registry& r = Reg();
  absl::MutexLock lock(&r.mu);
  for (auto& [name, p] : r.points) p->released = true;
  r.points.clear();
  any_armed_.store(false, std::memory_order_relaxed);
}

}  // namespace tether
