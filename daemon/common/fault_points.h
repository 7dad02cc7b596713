// FaultPoints: test-only hooks that hold a named step of daemon code, so
// that a test can make a race happen in exactly one order — never a sleep
// that hopes for it.
//
// Daemon code marks a step with
//   TETHER_FAULT_POINT("fault_service.begin_window.after_read");
// A test arms it, triggers the code, waits until a thread is held there,
// does what must happen "in between", and releases it:
//   FaultPoints::Arm("fault_service.begin_window.after_read");
//   std::thread t([&] { faults.BeginWindow(...); });
//   ASSERT_TRUE(FaultPoints::WaitUntilReached("fault_service.begin_window.after_read"));
//   ... the racing store ...
//   FaultPoints::Release("fault_service.begin_window.after_read");
//
// Semantics. Arm(name) is one-shot: the next thread that reaches the point
// blocks there until Release(name); threads reaching it after that one
// (while it is held, or after the release) pass. Release(name) also
// disarms a point nobody reached. ReleaseAll() releases and disarms every
// point: call it in a test's TearDown, so that a failing test never leaves
// a daemon thread blocked. A held thread keeps every lock it holds at the
// point: name the locks in a comment where the point is placed, and do not
// take them in the test while it is held.
//
// Cost. Compiled into every build (Release too): these sit on hot paths,
// so an unarmed point costs one relaxed load of a process-wide "anything
// armed" flag and a predictable branch; names are string literals, not
// built unless something is armed. Only when a point is armed does a
// thread reaching any point take the registry's mutex and look its name up.
//
// Thread contract.
// - TETHER_FAULT_POINT: any daemon thread, with any locks held (the
//   registry's mutex is a leaf: nothing else is taken under it).
// - Arm, Release, ReleaseAll, WaitUntilReached, Reached: the test's threads
//   only (never daemon code). Arm must happen-before the action that makes
//   the daemon thread reach the point (a thread start, a call, a request
//   through a queue or a lock): the fast path's relaxed load sees the flag
//   through that edge, not otherwise.
// - WaitUntilReached blocks on a condition (absl::Mutex::Await) until a
//   thread is held at the point, or the timeout passes (then false: the
//   test fails instead of hanging).
#ifndef TETHER_DAEMON_COMMON_FAULT_POINTS_H_
#define TETHER_DAEMON_COMMON_FAULT_POINTS_H_

#include <atomic>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tether {

class FaultPoints {
 public:
  // The fast path of TETHER_FAULT_POINT.
  static bool AnyArmed() { return any_armed_.load(std::memory_order_relaxed); }
  // The slow path: holds the calling thread if `name` is armed.
  static void Hit(absl::string_view name);

  static void Arm(absl::string_view name);
  static bool WaitUntilReached(absl::string_view name,
                               absl::Duration timeout = absl::InfiniteDuration());
  // Whether a thread is held at `name` now.
  static bool Reached(absl::string_view name);
  static void Release(absl::string_view name);
  static void ReleaseAll();

 private:
  static std::atomic<bool> any_armed_;
};

}  // namespace tether

#define TETHER_FAULT_POINT(name)                                                                  \
  do {                                                                                            \
    if (__builtin_expect(::tether::FaultPoints::AnyArmed(), 0)) ::tether::FaultPoints::Hit(name); \
  } while (0)

#endif  // TETHER_DAEMON_COMMON_FAULT_POINTS_H_
