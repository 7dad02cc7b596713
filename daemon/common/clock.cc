#include "daemon/common/clock.h"

namespace tether {
namespace {
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};
}  // namespace

Clock* Clock::Real() {
  static RealClock* const clock = new RealClock;  // never destroyed: used until exit
  return clock;
}

}  // namespace tether
