// EventChannel: the attachments this process holds, and a thread that
// listens to the daemon for the events that only this process can act on.
//
// A page the daemon cannot fetch (home gone, segment removed) must raise
// SIGBUS in this process; Linux 6.1 has no UFFDIO_POISON, so we map an
// empty memfd over the page (any access to it raises SIGBUS) and wake the
// threads blocked on it. If the daemon itself goes away, faults on our
// mappings would block forever (we hold our own uffd reference so that
// they never silently read zeros): we turn every attachment into SIGBUS.
#ifndef TETHER_CLIENT_SRC_EVENT_CHANNEL_H_
#define TETHER_CLIENT_SRC_EVENT_CHANNEL_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <thread>

namespace tether::client {

struct ClientAttachment {
  uint64_t id = 0;
  uintptr_t addr = 0;
  size_t size = 0;
  int uffd = -1;
  bool writable = false;
  // A tether.ko direct attachment (the exporter's own pages; uffd -1): the
  // module keeps it coherent without the daemon, so it is never poisoned.
  bool direct = false;
  bool dead = false;  // made SIGBUS: the daemon is gone
};

class EventChannel {
 public:
  static EventChannel& Get();
  EventChannel();

  // Starts the listener (once per daemon connection); -1/errno on failure.
  int Ensure();
  void Add(const ClientAttachment& att);
  // Finds the attachment containing [addr, addr+len); false if none.
  bool Find(uintptr_t addr, size_t len, ClientAttachment* out);
  // Removes the attachment starting at addr.
  bool Take(uintptr_t addr, ClientAttachment* out);

 private:
  void Listen(int fd);
  void Poison(const ClientAttachment& att, uint64_t offset, uint64_t len);

  // fork(): attachments are MADV_DONTFORK (a child touching one gets
  // SIGSEGV, never a silent zero page); the child starts with none.
  static void BeforeFork();
  static void AfterForkParent();
  static void AfterForkChild();

  std::mutex mu_;
  std::map<uintptr_t, ClientAttachment> atts_;  // by address
  int fd_ = -1;
  int empty_memfd_ = -1;
  bool running_ = false;
};

}  // namespace tether::client

#endif  // TETHER_CLIENT_SRC_EVENT_CHANNEL_H_
