#include "client/src/event_channel.h"

#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "client/src/local_channel.h"
#include "local.pb.h"

namespace tether::client {

EventChannel::EventChannel() {
  pthread_atfork(&EventChannel::BeforeFork, &EventChannel::AfterForkParent,
                 &EventChannel::AfterForkChild);
}

void EventChannel::BeforeFork() { Get().mu_.lock(); }
void EventChannel::AfterForkParent() { Get().mu_.unlock(); }
void EventChannel::AfterForkChild() {
  EventChannel& c = Get();
  for (auto& [addr, att] : c.atts_) close(att.uffd);
  c.atts_.clear();
  if (c.fd_ >= 0) close(c.fd_);  // the parent's listener thread is not in the child
  c.fd_ = -1;
  c.running_ = false;
  c.mu_.unlock();
}

EventChannel& EventChannel::Get() {
  static EventChannel* channel = new EventChannel();
  return *channel;
}

int EventChannel::Ensure() {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_) return 0;
  if (empty_memfd_ < 0) {
    empty_memfd_ = memfd_create("tether-sigbus", MFD_CLOEXEC);
    if (empty_memfd_ < 0) return SetError(errno, "memfd_create for SIGBUS pages failed");
  }
  int fd = ConnectDaemon();
  if (fd < 0) return SetError(ENOTCONN, "cannot reach tetherd at " + SocketPath());
  local::LocalRequest req;
  req.mutable_events();
  local::LocalResponse resp;
  std::string message;
  if (!RoundTrip(fd, req, {}, &resp, nullptr, &message) || resp.err() != 0) {
    // RoundTrip failed with EAGAIN: tetherd refused the connection, over
    // its bound of connections (local_server.h).
    bool over_bound = !message.empty() && errno == EAGAIN;
    close(fd);
    return SetError(over_bound ? EAGAIN : ENOTCONN,
                    "tetherd refused the event channel: " + message + resp.message());
  }
  fd_ = fd;
  running_ = true;
  std::thread([this, fd] { Listen(fd); }).detach();
  return 0;
}

void EventChannel::Add(const ClientAttachment& att) {
  std::lock_guard<std::mutex> lock(mu_);
  atts_[att.addr] = att;
}

bool EventChannel::Find(uintptr_t addr, size_t len, ClientAttachment* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = atts_.upper_bound(addr);
  if (it == atts_.begin()) return false;
  --it;
  const ClientAttachment& a = it->second;
  if (addr < a.addr || addr + len > a.addr + a.size || addr + len < addr) return false;
  *out = a;
  return true;
}

bool EventChannel::Take(uintptr_t addr, ClientAttachment* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = atts_.find(addr);
  if (it == atts_.end()) return false;
  *out = it->second;
  atts_.erase(it);
  return true;
}

// Caller holds mu_.
void EventChannel::Poison(const ClientAttachment& att, uint64_t offset, uint64_t len) {
  if (offset >= att.size) return;
  if (len > att.size - offset) len = att.size - offset;
  void* at = reinterpret_cast<void*>(att.addr + offset);
  // An empty shared file mapping: every access raises SIGBUS, as a
  // truncated file does. Neighbouring pages keep what they hold.
  mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, empty_memfd_, 0);
  uffdio_range r{att.addr + offset, len};
  ioctl(att.uffd, UFFDIO_WAKE, &r);
}

void EventChannel::Listen(int fd) {
  std::vector<char> buf(64 * 1024);
  while (true) {
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    local::LocalEvent ev;
    if (!ev.ParseFromArray(buf.data(), static_cast<int>(n))) continue;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [addr, att] : atts_) {
      if (att.id != ev.attach_id() || att.direct) continue;
      if (ev.kind() == local::LocalEvent::SIGBUS_RANGE)
        Poison(att, ev.offset(), ev.length());
      else
        Poison(att, 0, att.size);
    }
  }
  // The daemon is gone: nobody will serve our faults any more.
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [addr, att] : atts_) {
    if (att.direct) continue;  // needs no daemon (kernel/README.md)
    if (!att.dead) Poison(att, 0, att.size);
    att.dead = true;
  }
  close(fd);
  if (fd_ == fd) fd_ = -1;
  running_ = false;
}

}  // namespace tether::client
