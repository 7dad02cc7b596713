#include "daemon/mapper/twin_store.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "daemon/common/log.h"

namespace tether {
namespace {
std::shared_ptr<uint8_t[]> NewPage() { return std::shared_ptr<uint8_t[]>(new uint8_t[kPageSize]); }
}  // namespace

int TwinStore::Take(int memfd, off_t off, uint64_t p) {
  std::shared_ptr<uint8_t[]> page = NewPage();
  ssize_t n;
  do {
    n = pread(memfd, page.get(), kPageSize, off);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(kPageSize)) {
    TLOG_WARN("twin of page %d: %s; the page will be written back whole", p,
              n < 0 ? std::strerror(errno) : "short read");
    return Drop(p);
  }
  auto [it, inserted] = twins_.insert_or_assign(p, std::move(page));
  return inserted ? 1 : 0;
}

int TwinStore::Set(uint64_t p, const uint8_t* bytes) {
  std::shared_ptr<uint8_t[]> page = NewPage();
  std::memcpy(page.get(), bytes, kPageSize);
  auto [it, inserted] = twins_.insert_or_assign(p, std::move(page));
  return inserted ? 1 : 0;
}

int TwinStore::Drop(uint64_t p) { return twins_.erase(p) ? -1 : 0; }

uint64_t TwinStore::Clear() {
  uint64_t n = twins_.size();
  twins_.clear();
  return n;
}

TwinStore::Twin TwinStore::Get(uint64_t p) const {
  auto it = twins_.find(p);
  return it == twins_.end() ? nullptr : it->second;
}

}  // namespace tether
