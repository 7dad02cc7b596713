#include "client/src/export_keeper.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "client/src/local_channel.h"
#include "local.pb.h"

namespace tether::client {
namespace {

std::chrono::milliseconds Grace() {
  const char* env = std::getenv("TETHER_RESTART_GRACE_MS");
  long ms = env && *env ? std::strtol(env, nullptr, 10) : 30000;
  return std::chrono::milliseconds(ms > 0 ? ms : 30000);
}

}  // namespace

ExportKeeper::ExportKeeper() {
  pthread_atfork(&ExportKeeper::BeforeFork, &ExportKeeper::AfterForkParent,
                 &ExportKeeper::AfterForkChild);
}

ExportKeeper& ExportKeeper::Get() {
  static ExportKeeper* keeper = new ExportKeeper();  // never destroyed: safe at exit
  return *keeper;
}

void ExportKeeper::BeforeFork() { Get().mu_.lock(); }
void ExportKeeper::AfterForkParent() { Get().mu_.unlock(); }
void ExportKeeper::AfterForkChild() {
  ExportKeeper& k = Get();
  for (auto& [segid, e] : k.exports_)
    if (e.events_fd >= 0) close(e.events_fd);
  k.exports_.clear();
  k.watching_ = false;  // the parent's watcher thread is not in the child
  k.mu_.unlock();
}

void ExportKeeper::Add(const ClientExport& exp) {
  std::lock_guard<std::mutex> lock(mu_);
  exports_[exp.segid] = exp;
  if (watching_) return;
  watching_ = StartWatcher();
}

bool ExportKeeper::StartWatcher() {
  // The watcher's stack is ours, with an inaccessible page on each side.
  // A default thread stack is mapped next to whatever the process mapped
  // last — typically the memory it just exported — with a guard page at
  // its bottom only, so its top merges into the exported memory's VMA;
  // stack activity in that VMA then reaches the kernel's notifier as
  // changes of exported pages (tests/vm/daemon_test.py caught mappers
  // dropping pages no call of the exporter touched). The guards keep the
  // stack a mapping of its own. Never unmapped: the thread lives as long
  // as the process, or returns when nothing is exported (and a later
  // export starts a new one; a few such stacks at most).
  constexpr size_t kStack = 256 << 10, kGuard = 4096;
  void* region = mmap(nullptr, kStack + 2 * kGuard, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) return false;
  char* stack = static_cast<char*>(region) + kGuard;
  if (mprotect(stack, kStack, PROT_READ | PROT_WRITE) != 0) {
    munmap(region, kStack + 2 * kGuard);
    return false;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstack(&attr, stack, kStack);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t tid;
  int rc = pthread_create(
      &tid, &attr,
      [](void* self) -> void* {
        static_cast<ExportKeeper*>(self)->Watch();
        return nullptr;
      },
      this);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    munmap(region, kStack + 2 * kGuard);
    return false;
  }
  return true;
}

void ExportKeeper::Forget(uint64_t segid) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = exports_.find(segid);
  if (it == exports_.end()) return;
  if (it->second.events_fd >= 0) close(it->second.events_fd);
  exports_.erase(it);
}

void ExportKeeper::AddName(uint64_t segid, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = exports_.find(segid);
  if (it != exports_.end() &&
      std::find(it->second.names.begin(), it->second.names.end(), name) == it->second.names.end())
    it->second.names.push_back(name);
}

void ExportKeeper::ReleaseHandles() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [segid, e] : exports_) {
    if (e.events_fd >= 0) close(e.events_fd);
    e.events_fd = -1;
  }
}

void ExportKeeper::ForgetAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [segid, e] : exports_)
    if (e.events_fd >= 0) close(e.events_fd);
  exports_.clear();
}

bool ExportKeeper::Reregister(int fd) {
  std::vector<ClientExport> todo;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [segid, e] : exports_) todo.push_back(e);
  }
  for (ClientExport& e : todo) {
    Reopen reopen = reopen_.load();
    if (e.events_fd < 0 && reopen && reopen(&e) >= 0) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = exports_.find(e.segid);
      if (it == exports_.end()) {
        close(e.events_fd);
        continue;
      }
      it->second.events_fd = e.events_fd;
      it->second.tether_range_id = e.tether_range_id;
    }
    int pidfd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
    if (pidfd < 0) continue;  // tried again at the next restart; nothing else to do
    local::LocalRequest req;
    auto* m = req.mutable_make();
    m->set_vaddr(e.vaddr);
    m->set_size(e.size);
    m->set_permit_mode(e.mode);
    m->set_segid(e.segid);
    m->set_tether_range_id(e.tether_range_id);
    std::vector<int> fds{pidfd};
    if (e.events_fd >= 0) fds.push_back(e.events_fd);  // SCM_RIGHTS copies it
    local::LocalResponse resp;
    std::string message;
    bool sent = RoundTrip(fd, req, fds, &resp, nullptr, &message);
    close(pidfd);
    if (!sent) return false;  // the daemon went away again
    if (resp.err() != 0 && resp.err() != EEXIST) {
      // Refused for good (its state was lost, or too late): mappers get
      // ENOENT/EIDRM for it, as for a segment whose exporter exited.
      Forget(e.segid);
      continue;
    }
    for (const std::string& name : e.names) {
      local::LocalRequest p;
      p.mutable_publish()->set_segid(e.segid);
      p.mutable_publish()->set_name(name);
      local::LocalResponse pr;
      if (!RoundTrip(fd, p, {}, &pr, nullptr, &message)) return false;
    }
  }
  return true;
}

void ExportKeeper::Watch() {
  bool recovering = false, held = false;
  auto deadline = std::chrono::steady_clock::now();
  auto hold_until = deadline;
  auto backoff = std::chrono::milliseconds(50);
  for (;;) {
    int fd = ConnectDaemon();
    if (fd < 0 || (recovering && !Reregister(fd))) {
      if (fd >= 0) close(fd);
      if (!recovering) {
        recovering = true;
        deadline = std::chrono::steady_clock::now() + Grace();
        backoff = std::chrono::milliseconds(50);
      }
      if (held && std::chrono::steady_clock::now() >= hold_until) {
        ReleaseHandles();  // mappers stopped serving by now: the unmap may go on
        held = false;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        // No daemon within the grace: the exports are gone for good; our
        // handles must not hold the exporter's munmap any longer.
        ForgetAll();
        recovering = false;
        std::lock_guard<std::mutex> lock(mu_);
        if (exports_.empty()) {
          watching_ = false;
          return;
        }
        continue;
      }
      auto nap = backoff;
      if (held)
        nap = std::min(nap, std::chrono::duration_cast<std::chrono::milliseconds>(
                                hold_until - std::chrono::steady_clock::now()) +
                                std::chrono::milliseconds(1));
      std::this_thread::sleep_for(std::max(nap, std::chrono::milliseconds(1)));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
      continue;
    }
    recovering = false;
    // Idle: the daemon sends nothing on a request connection, so recv
    // returns only when it closes (stopped, crashed, restarting).
    char b;
    for (;;) {
      ssize_t n = recv(fd, &b, 1, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) continue;
      break;
    }
    close(fd);
    recovering = true;
    held = true;
    hold_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(hold_ms_.load());
    deadline = std::chrono::steady_clock::now() + Grace();
    backoff = std::chrono::milliseconds(50);
    std::lock_guard<std::mutex> lock(mu_);
    if (exports_.empty()) {  // nothing to keep: stop (the next export starts us again)
      watching_ = false;
      return;
    }
  }
}

}  // namespace tether::client
