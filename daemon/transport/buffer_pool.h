// BufferPool: fixed-size slots carved from one page-aligned allocation, so
// that the rdma transport registers its memory once, at connection set-up,
// and never on the fault path (registration pins pages and costs a system
// call per region).
//
// Thread contract: not thread-safe. The owning rdma connection serialises
// Acquire, Release and free_slots under its own mu (the pool is always
// touched together with the connection's in-flight table, so a second lock
// would only add cost; rdma_transport_internal.h). slot(), SlotOf(), base()
// and the sizes read what Create fixed: any thread, without the lock, while
// the pool lives.
#ifndef TETHER_DAEMON_TRANSPORT_BUFFER_POOL_H_
#define TETHER_DAEMON_TRANSPORT_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tether {

class BufferPool {
 public:
  // `slots` × `slot_bytes` bytes; slot_bytes must be a positive multiple of
  // 4096 and the total at most 1 GiB.
  static absl::StatusOr<BufferPool> Create(uint32_t slots, uint32_t slot_bytes);

  BufferPool(BufferPool&& other) noexcept;
  BufferPool& operator=(BufferPool&& other) noexcept;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  ~BufferPool();

  // A free slot's index, or nullopt when all are in use (the caller queues:
  // the pool is also the connection's flow-control window).
  std::optional<uint32_t> Acquire();
  // Returns a slot. Releasing a slot that is not in use is a caller bug:
  // it is refused (false) and the pool is unchanged.
  bool Release(uint32_t slot);

  absl::Span<uint8_t> slot(uint32_t i) const {
    return absl::Span<uint8_t>(base_ + static_cast<size_t>(i) * slot_bytes_, slot_bytes_);
  }
  // The slot holding `addr` (an address inside the pool), or nullopt.
  std::optional<uint32_t> SlotOf(const void* addr) const;

  uint8_t* base() const { return base_; }
  size_t size_bytes() const { return static_cast<size_t>(slots_) * slot_bytes_; }
  uint32_t slots() const { return slots_; }
  uint32_t slot_bytes() const { return slot_bytes_; }
  uint32_t free_slots() const { return static_cast<uint32_t>(free_.size()); }

 private:
  BufferPool(uint8_t* base, uint32_t slots, uint32_t slot_bytes);

  uint8_t* base_ = nullptr;
  uint32_t slots_ = 0;
  uint32_t slot_bytes_ = 0;
  std::vector<uint32_t> free_;  // stack of free slot indices
  std::vector<bool> in_use_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_BUFFER_POOL_H_
