#include "daemon/common/data_counters.h"

namespace tether {

DataCounters& Counters() {
  static DataCounters counters;
  return counters;
}

}  // namespace tether
