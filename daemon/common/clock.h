// Clock: where protocol code reads the time, so that tests and the protocol
// simulation can run it on a clock they drive.
//
// Code whose correctness depends on time — ack deadlines, leases, retry
// budgets — takes a `Clock*` instead of calling absl::Now() itself. The
// daemon passes Clock::Real() (absl::Now()); a unit test or the simulation
// passes a FakeClock and moves time with Advance(), so "the lease expired"
// or "the deadline passed" is an explicit step of the test, never a sleep.
//
// Only reading the time goes through a Clock. A thread that must wait for
// a moment (a timed Mutex wait, a poll timeout) still waits in real time;
// code that can be driven by a FakeClock is written so that nothing it
// decides depends on how long such a wait really took: it re-reads Now()
// after waking and decides from that.
//
// Thread contract: Now() may be called from any thread. FakeClock's
// Advance/Set are for the test's threads; they are atomic with respect to
// Now() (a reader sees the old or the new time, never a torn one).
#ifndef TETHER_DAEMON_COMMON_CLOCK_H_
#define TETHER_DAEMON_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tether {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The wall clock (absl::Now()); lives for the whole process.
  static Clock* Real();
};

// A clock that moves only when told to. Starts at the Unix epoch plus one
// day unless given a start, so that "time zero" is never a valid moment.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24)) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_CLOCK_H_
