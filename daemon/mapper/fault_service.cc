// FaultService's lifecycle: construction, Start/Stop of its two threads,
// the attachments it serves (Add/Remove), and the read-ahead buffers that
// fetches land in. The rest lives in fault_install.cc, fault_windows.cc,
// fault_writeback.cc and fault_eviction.cc (fault_service.h has the map).
#include "daemon/mapper/fault_service.h"

#include <algorithm>
#include <cstdlib>

#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"

namespace tether {

FaultService::FaultService(DataPath* data, uint64_t budget_bytes, SigbusSink sigbus, Clock* clock)
    : data_(data),
      budget_pages_(std::max<uint64_t>(budget_bytes / kPageSize, 4 * kMaxAheadPages)),
      sigbus_(std::move(sigbus)),
      clock_(clock) {}

FaultService::~FaultService() {
  Stop();
  absl::MutexLock lock(&pool_mu_);
  for (uint8_t* b : pool_) std::free(b);
}

absl::Status FaultService::Start() {
  RETURN_IF_ERROR(faults_.Open());
  fault_thread_ = std::thread([this] {
    fault_role_.Bind();
    FaultLoop();
  });
  evict_thread_ = std::thread([this] {
    evictor_role_.Bind();
    EvictLoop();
  });
  return absl::OkStatus();
}

void FaultService::Stop() {
  if (stopping_.exchange(true)) return;
  faults_.Wake();
  {
    absl::MutexLock lock(&mu_);
    evict_wanted_ = true;
  }
  if (fault_thread_.joinable()) fault_thread_.join();
  if (evict_thread_.joinable()) evict_thread_.join();
  faults_.Close();
}

absl::Status FaultService::Add(std::shared_ptr<Attachment> att) {
  {
    absl::MutexLock lock(&mu_);
    atts_[att->id] = att;
  }
  if (absl::Status st = faults_.Add(att->uffd, att->id); !st.ok()) {
    absl::MutexLock lock(&mu_);
    atts_.erase(att->id);
    return ErrnoStatus(ToErrno(st), "watch attachment uffd");
  }
  return absl::OkStatus();
}

void FaultService::Remove(const std::shared_ptr<Attachment>& att) {
  faults_.Remove(att->uffd);
  uint64_t resident;
  {
    absl::MutexLock lock(&att->mu);
    resident = att->resident + att->twins.Clear();  // twins count too (twin_store.h)
    att->resident = 0;
    att->revoked = true;  // late completions install nothing
    if (att->revoke_reason.empty()) att->revoke_reason = "detached";
  }
  resident_pages_ -= resident;
  absl::MutexLock lock(&mu_);
  atts_.erase(att->id);
}

uint8_t* FaultService::GetBuffer() {
  {
    absl::MutexLock lock(&pool_mu_);
    if (!pool_.empty()) {
      uint8_t* b = pool_.back();
      pool_.pop_back();
      return b;
    }
  }
  return static_cast<uint8_t*>(std::aligned_alloc(kPageSize, kBufferBytes));
}

void FaultService::PutBuffer(uint8_t* buf) {
  absl::MutexLock lock(&pool_mu_);
  if (pool_.size() < 256) {
    pool_.push_back(buf);
    return;
  }
  std::free(buf);
}

}  // namespace tether
