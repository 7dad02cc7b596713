#include "daemon/transport/buffer_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <utility>

#include "daemon/common/errors.h"
#include "daemon/common/page.h"
#include "daemon/common/status_macros.h"

namespace tether {

absl::StatusOr<BufferPool> BufferPool::Create(uint32_t slots, uint32_t slot_bytes) {
  if (slots == 0 || slot_bytes == 0 || slot_bytes % kPageSize != 0)
    return ErrnoStatus(EINVAL, "buffer pool: slots and a page-multiple slot size are required");
  size_t total = static_cast<size_t>(slots) * slot_bytes;
  if (total > (size_t{1} << 30)) return ErrnoStatus(EINVAL, "buffer pool larger than 1 GiB");
  // mmap, not new[]: page-aligned (registration pins whole pages) and
  // zero-filled, so a slot never leaks old daemon memory to a peer.
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "buffer pool mmap");
  // Registered memory must not be shared with a forked child (copy-on-write
  // would move the pages under the device).
  madvise(p, total, MADV_DONTFORK);
  return BufferPool(static_cast<uint8_t*>(p), slots, slot_bytes);
}

BufferPool::BufferPool(uint8_t* base, uint32_t slots, uint32_t slot_bytes)
    : base_(base), slots_(slots), slot_bytes_(slot_bytes), in_use_(slots, false) {
  free_.reserve(slots);
  for (uint32_t i = slots; i > 0; --i) free_.push_back(i - 1);  // slot 0 first
}

BufferPool::BufferPool(BufferPool&& other) noexcept { *this = std::move(other); }

BufferPool& BufferPool::operator=(BufferPool&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) munmap(base_, size_bytes());
    base_ = std::exchange(other.base_, nullptr);
    slots_ = std::exchange(other.slots_, 0);
    slot_bytes_ = std::exchange(other.slot_bytes_, 0);
    free_ = std::move(other.free_);
    in_use_ = std::move(other.in_use_);
  }
  return *this;
}

BufferPool::~BufferPool() {
  if (base_ != nullptr) munmap(base_, size_bytes());
}

std::optional<uint32_t> BufferPool::Acquire() {
  if (free_.empty()) return std::nullopt;
  uint32_t i = free_.back();
  free_.pop_back();
  in_use_[i] = true;
  return i;
}

bool BufferPool::Release(uint32_t i) {
  if (i >= slots_ || !in_use_[i]) return false;
  in_use_[i] = false;
  free_.push_back(i);
  return true;
}

std::optional<uint32_t> BufferPool::SlotOf(const void* addr) const {
  auto a = reinterpret_cast<uintptr_t>(addr);
  auto b = reinterpret_cast<uintptr_t>(base_);
  if (base_ == nullptr || a < b || a >= b + size_bytes()) return std::nullopt;
  return static_cast<uint32_t>((a - b) / slot_bytes_);
}

}  // namespace tether
