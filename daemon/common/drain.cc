#include "daemon/common/drain.h"

namespace tether {

DrainState& Drain() {
  static DrainState state;
  return state;
}

}  // namespace tether
