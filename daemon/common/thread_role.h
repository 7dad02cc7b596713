// ThreadRole: names the one thread allowed to run some functions (an event
// loop, a fault loop) and checks it. The thread calls Bind() first thing;
// the functions that must run only there start with AssertHere().
//
// Checked in Debug builds (the unit and multinode tiers run Debug with
// ASan), compiled out with NDEBUG (Release, the VM tier and production):
// a check on every event would cost nothing measurable, but its job is to
// catch a wrong caller while testing, like lockdep.
//
// Thread contract: Bind() from the owning thread before any AssertHere();
// AssertHere() from anywhere (it fails off that thread).
#ifndef TETHER_DAEMON_COMMON_THREAD_ROLE_H_
#define TETHER_DAEMON_COMMON_THREAD_ROLE_H_

#include <atomic>
#include <cassert>
#include <thread>

namespace tether {

class ThreadRole {
 public:
  void Bind() { owner_.store(std::this_thread::get_id(), std::memory_order_release); }
  void AssertHere() const {
    assert(owner_.load(std::memory_order_acquire) == std::this_thread::get_id() &&
           "called off the thread this function must run on");
  }

 private:
  std::atomic<std::thread::id> owner_{};
};

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_THREAD_ROLE_H_
