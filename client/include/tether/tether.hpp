// tether.hpp — a thin RAII wrapper over tether.h. Errors are returned, not
// thrown: each factory returns an object whose ok() says whether it worked
// and error() says why (errno and the daemon's message).
#ifndef TETHER_TETHER_HPP_
#define TETHER_TETHER_HPP_

#include <tether/tether.h>

#include <cerrno>
#include <string>
#include <utility>

namespace tether {

struct Error {
  int code = 0;
  std::string message;
  static Error Last() { return Error{errno, tether_strerror()}; }
};

// An exported range; removed when destroyed.
class Segment {
 public:
  static Segment Make(void* addr, size_t size, unsigned mode = 0600) {
    Segment s;
    s.id_ = tether_make(addr, size, TETHER_PERMIT_MODE,
                        reinterpret_cast<void*>(static_cast<uintptr_t>(mode)));
    if (s.id_ < 0) s.error_ = Error::Last();
    return s;
  }
  Segment() = default;
  Segment(Segment&& o) noexcept { *this = std::move(o); }
  Segment& operator=(Segment&& o) noexcept {
    std::swap(id_, o.id_);
    std::swap(error_, o.error_);
    return *this;
  }
  ~Segment() {
    if (id_ > 0) tether_remove(id_);
  }
  bool ok() const { return id_ > 0; }
  tether_segid_t id() const { return id_; }
  const Error& error() const { return error_; }
  bool Publish(const std::string& name) { return tether_publish(id_, name.c_str()) == 0; }

 private:
  tether_segid_t id_ = -1;
  Error error_;
};

// A mapping of a (possibly remote) segment: get + attach, detach + release.
class Mapping {
 public:
  static Mapping Attach(tether_segid_t segid, size_t offset, size_t size, bool writable) {
    Mapping m;
    m.apid_ = tether_get(segid, writable ? TETHER_RDWR : TETHER_RDONLY, TETHER_PERMIT_MODE,
                         nullptr);
    if (m.apid_ < 0) {
      m.error_ = Error::Last();
      return m;
    }
    void* p = tether_attach(m.apid_, static_cast<off_t>(offset), size, nullptr);
    if (p == TETHER_ATTACH_FAILED) {
      m.error_ = Error::Last();
      return m;
    }
    m.addr_ = p;
    m.size_ = size;
    return m;
  }
  Mapping() = default;
  Mapping(Mapping&& o) noexcept { *this = std::move(o); }
  Mapping& operator=(Mapping&& o) noexcept {
    std::swap(apid_, o.apid_);
    std::swap(addr_, o.addr_);
    std::swap(size_, o.size_);
    std::swap(error_, o.error_);
    return *this;
  }
  ~Mapping() {
    if (addr_) tether_detach(addr_);
    if (apid_ > 0) tether_release(apid_);
  }
  bool ok() const { return addr_ != nullptr; }
  template <typename T = void>
  T* data() const { return static_cast<T*>(addr_); }
  size_t size() const { return size_; }
  const Error& error() const { return error_; }
  bool Sync() { return tether_sync(addr_, size_) == 0; }
  bool Acquire() { return tether_acquire(addr_, size_) == 0; }

 private:
  tether_apid_t apid_ = -1;
  void* addr_ = nullptr;
  size_t size_ = 0;
  Error error_;
};

}  // namespace tether

#endif  // TETHER_TETHER_HPP_
