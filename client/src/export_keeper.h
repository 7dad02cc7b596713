// ExportKeeper: this process's exports, kept so that they survive a
// restart of the node's tetherd (an upgrade, a crash).
//
// The daemon keeps a segment only while the exporter's registration is
// with it; a restarted daemon starts with none. So the library remembers
// each export (segid, range, mode, published names) and the event handle
// it gave the daemon — the exporter's /dev/tether fd (tether.ko) or its
// userfaultfd — keeping its own copy of that handle. A thread holds one
// idle connection to the daemon; when the daemon goes away the connection
// closes, and the thread reconnects (backoff from 50 ms to 1 s, for up to
// $TETHER_RESTART_GRACE_MS, default 30000, the daemon's
// --restart_grace_ms) and registers every export again under its segid
// (MakeRequest.segid) with the same handle, then publishes its names again.
// An export the new daemon refuses (ENOENT: its state directory was lost,
// or the grace ran out) is forgotten; so is every export when the thread
// gives up: the handles are closed.
//
// Why our own copy of the handle: while no daemon holds it, the exporter's
// munmap/madvise of exported memory must not go on before mappers stopped
// serving copies. With a userfaultfd, an unmap event waits until someone
// reads it: held by us, it waits until the new daemon (which receives the
// same fd) reads it and invalidates — or until the hold the daemon named
// (MakeResponse.hold_ms: its lease * (1 + margin), by when every mapper's
// lease from it has run out and it suspended) has passed since the daemon
// went; then we close our copies (the unmap goes on) and register again
// later with a new handle. With tether.ko nothing waits without a daemon
// (docs/consistency.md, "When the home daemon restarts"); the same rule
// keeps the code one.
//
// Thread contract: Add/Forget/AddName from any thread (one mutex); the
// watcher thread is started by the first Add and runs for the process's
// life. It never holds the mutex across a call to the daemon. fork(): the
// child keeps no export (its exports are the parent's); it closes the
// copies of the handles.
#ifndef TETHER_CLIENT_SRC_EXPORT_KEEPER_H_
#define TETHER_CLIENT_SRC_EXPORT_KEEPER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tether::client {

struct ClientExport {
  uint64_t segid = 0;
  uint64_t vaddr = 0;
  uint64_t size = 0;
  uint32_t mode = 0;
  int events_fd = -1;  // our copy of the handle the daemon got; -1: none
  uint64_t tether_range_id = 0;
  std::vector<std::string> names;
};

class ExportKeeper {
 public:
  static ExportKeeper& Get();
  ExportKeeper();

  // Takes ownership of exp.events_fd.
  void Add(const ClientExport& exp);
  // tether_remove succeeded: forget it (closes our handle, so that a later
  // munmap never waits on it).
  void Forget(uint64_t segid);
  void AddName(uint64_t segid, const std::string& name);
  // Opens a new event handle for an export whose old one was closed (the
  // hold passed): sets events_fd and tether_range_id; -1 on failure.
  // tether.cc's (it knows /dev/tether and userfaultfd); set once.
  using Reopen = int (*)(ClientExport* exp);
  void SetReopen(Reopen fn) { reopen_.store(fn); }
  void SetHold(uint32_t ms) { hold_ms_.store(ms); }

 private:
  // Starts the watcher thread (Watch) on its own guarded stack; false if
  // it could not (the exports then do not survive a daemon restart).
  bool StartWatcher();
  void Watch();
  // Registers every export with a daemon that just answered; false if the
  // daemon went away meanwhile.
  bool Reregister(int fd);
  void ForgetAll();
  // The hold passed with no daemon: closes our copies of the handles.
  void ReleaseHandles();
  static void BeforeFork();
  static void AfterForkParent();
  static void AfterForkChild();

  std::mutex mu_;
  std::map<uint64_t, ClientExport> exports_;  // by segid
  bool watching_ = false;
  std::atomic<Reopen> reopen_{nullptr};
  std::atomic<uint32_t> hold_ms_{0};
};

}  // namespace tether::client

#endif  // TETHER_CLIENT_SRC_EXPORT_KEEPER_H_
