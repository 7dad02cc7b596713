#include "daemon/common/thread_name.h"

#include <pthread.h>

#include <cstring>

namespace tether {

void NameThisThread(const char* name) {
  char buf[16];  // the kernel's TASK_COMM_LEN, with the terminating NUL
  std::strncpy(buf, name, sizeof(buf) - 1);
  buf[sizeof(buf) - 1] = '\0';
  // Fails only for a name too long, which buf rules out; a name is a
  // convenience, so there is nothing to report either way.
  (void)pthread_setname_np(pthread_self(), buf);
}

}  // namespace tether
