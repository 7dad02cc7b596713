// NameThisThread: gives the calling thread a name the kernel shows
// (/proc/PID/task/TID/comm, top -H, gdb, perf), so an operator can tell
// tetherd's threads apart and a benchmark can count one kind's context
// switches. Every thread tetherd starts calls it first thing with a name
// starting "tt-"; Linux keeps 15 bytes, longer names are cut.
//
// Thread contract: names only the calling thread; safe from any thread.
#ifndef TETHER_DAEMON_COMMON_THREAD_NAME_H_
#define TETHER_DAEMON_COMMON_THREAD_NAME_H_

namespace tether {

void NameThisThread(const char* name);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_THREAD_NAME_H_
