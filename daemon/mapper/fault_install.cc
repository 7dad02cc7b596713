// FaultService, faults and installs: the fault thread's loop over the
// attachments' userfaultfds, missing faults (read-ahead, fetches) and
// write-protect faults (dirty tracking), the completion that installs
// fetched pages, and refetches after a home's "retry".
#include "daemon/mapper/fault_service.h"

#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "daemon/common/data_counters.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/mapper/mapping_ops.h"

namespace tether {

using mapping_ops::Wake;
using mapping_ops::WriteProtect;

void FaultService::FaultLoop() {
  fault_role_.AssertHere();
  epoll_event events[32];
  uffd_msg msgs[32];
  while (!stopping_) {
    bool pending_retries;
    {
      absl::MutexLock lock(&retry_mu_);
      pending_retries = !retries_.empty();
    }
    int n = faults_.Wait(events, 32, pending_retries ? 1 : -1);
    if (pending_retries) RunDueRetries();
    for (int i = 0; i < n; ++i) {
      uint64_t id = events[i].data.u64;
      std::shared_ptr<Attachment> att;
      {
        absl::MutexLock lock(&mu_);
        auto it = atts_.find(id);
        if (it != atts_.end()) att = it->second;
      }
      if (!att) continue;
      if (events[i].events & (EPOLLERR | EPOLLHUP)) {
        // The client's mm is gone; nothing more will fault here.
        faults_.Remove(att->uffd);
        continue;
      }
      while (true) {
        ssize_t r = read(att->uffd, msgs, sizeof(msgs));
        if (r <= 0) break;
        size_t count = static_cast<size_t>(r) / sizeof(uffd_msg);
        for (size_t m = 0; m < count; ++m) {
          if (msgs[m].event != UFFD_EVENT_PAGEFAULT) continue;
          uint64_t addr = msgs[m].arg.pagefault.address & ~(kPageSize - 1);
          att->faults.fetch_add(1, std::memory_order_relaxed);
          if (msgs[m].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
            HandleWriteProtect(*att, addr);
          else
            HandleMissing(att, addr);
        }
        if (count < 32) break;
      }
    }
  }
}

void FaultService::HandleWriteProtect(Attachment& att, uint64_t addr) {
  fault_role_.AssertHere();
  uint64_t base = att.vaddr.load();
  if (addr < base || addr >= base + att.size) return;
  uint64_t p = (addr - base) / kPageSize;
  // Held here (tests), no lock held: the fault is read, att.mu not taken.
  TETHER_FAULT_POINT("fault_service.write_protect.before_lock");
  int twins = 0;
  {
    absl::MutexLock lock(&att.mu);
    PageState& s = att.state[p];
    if (s == PageState::kClean) {
      // The twin, before the protection is lifted: the page as the home
      // has it, without this store (twin_store.h). One 4 KiB pread on the
      // first store to a clean page only — not on missing faults, not on
      // later stores — which a write-back's diff needs.
      twins = att.twins.Take(att.memfd, p);
    }
    if (s == PageState::kClean || s == PageState::kWriteback) {
      // (kWriteback keeps its twin: the base of the write-back in flight,
      // replaced by what it sent once that lands.)
      if (s == PageState::kWriteback) ++att.wb_epoch;  // the write-back in flight is older now
      s = PageState::kDirty;
      ++att.dirty;
    }
    if (s == PageState::kDirty) {
      WriteProtect(att.uffd, addr, kPageSize, false);  // also wakes the writer
    } else {
      Wake(att.uffd, addr, kPageSize);  // evicted meanwhile: it refaults as missing
    }
  }
  // Twins count against the cache budget (twin_store.h).
  if (twins > 0 && resident_pages_.fetch_add(1) + 1 > budget_pages_) {
    absl::MutexLock lock(&mu_);
    evict_wanted_ = true;
  }
}

void FaultService::HandleMissing(const std::shared_ptr<Attachment>& att, uint64_t addr) {
  fault_role_.AssertHere();
  uint64_t base = att->vaddr.load();
  if (addr < base || addr >= base + att->size) return;
  uint64_t p = (addr - base) / kPageSize;
  // Up to kMaxAheadRequests requests of <= kMaxReadahead pages each.
  std::pair<uint64_t, uint64_t> requests[kMaxAheadRequests];
  size_t nreq = 0;
  uint64_t gen = 0;
  {
    absl::MutexLock lock(&att->mu);
    if (att->revoked) {
      // The memfd is truncated: the retry raises SIGBUS.
      Wake(att->uffd, addr, kPageSize);
      return;
    }
    if (att->InWindow(p)) return;  // range_end wakes it
    PageState s = att->state[p];
    if (s == PageState::kPoisoned) return;
    if (s != PageState::kAbsent && s != PageState::kFetching) {
      Wake(att->uffd, addr, kPageSize);
      return;
    }
    // A fault inside (or at the end of) the stream we are reading ahead
    // for: keep kMaxAheadPages requested beyond it, so that the client
    // mostly finds pages installed and the network stays busy.
    bool sequential = att->seq_lo != ~uint64_t{0} && p >= att->seq_lo && p <= att->next_seq_page;
    att->readahead = sequential ? std::min<uint32_t>(att->readahead * 2, kMaxAheadPages) : 1;
    if (!sequential && s == PageState::kFetching) return;  // its install wakes us
    uint64_t limit = std::min<uint64_t>(att->pages(), p + att->readahead);
    for (uint64_t q = p; q < limit && nreq < kMaxAheadRequests;) {
      if (att->state[q] != PageState::kAbsent) {
        ++q;
        continue;
      }
      uint64_t n = 0;
      while (q + n < limit && n < kMaxReadahead && att->state[q + n] == PageState::kAbsent &&
             !att->InWindow(q + n)) {
        att->state[q + n] = PageState::kFetching;
        ++n;
      }
      if (n == 0) break;  // the next page is in a window
      requests[nreq++] = {q, n};
      q += n;
    }
    att->seq_lo = p;
    att->next_seq_page = std::max<uint64_t>(sequential ? att->next_seq_page : 0, limit);
    gen = att->inval_gen;
  }
  for (size_t i = 0; i < nreq; ++i) {
    const uint64_t first = requests[i].first, n = requests[i].second;
    uint8_t* buf = GetBuffer();
    // In place: over rdma the pages are installed straight from the
    // registered slot the home wrote them into (one copy, UFFDIO_COPY's);
    // `buf` is where other transports put them.
    data_->ReadInPlace(
        att->home, att->segid, att->grant, att->seg_offset + first * kPageSize,
        absl::MakeSpan(buf, n * kPageSize),
        [this, att, first, n, buf, gen](absl::Status st, absl::Span<const uint8_t> data) {
          Install(att, first, n, buf, data.data(), gen, st);
        });
  }
}

void FaultService::Install(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n,
                           uint8_t* buf, const uint8_t* data, uint64_t gen, absl::Status st) {
  if (!st.ok()) {
    FetchFailed(att, first, n, buf, st);
    return;
  }
  CountBytes(Counters().fetched_bytes, n * kPageSize);
  uint64_t base = att->vaddr.load();
  uint64_t installed = 0;
  bool need_wake = false;
  {
    // Installed under the attachment lock, so that a range_begin cannot
    // zap between our generation check and the copy (stale install).
    absl::MutexLock lock(&att->mu);
    if (att->BegunSince(gen, first, n) || att->revoked) {
      // A window over these pages opened while this fetch was in flight:
      // its data may predate it. Drop it; faulters outside windows fetch
      // again now.
      att->AbandonFetch(first, n);
      need_wake = true;
    } else {
      installed = CopyIn(*att, base, first, n, data, &need_wake);
      att->resident += installed;
    }
  }
  PutBuffer(buf);
  if (need_wake) {
    absl::MutexLock lock(&att->mu);
    for (uint64_t i = 0; i < n; ++i)
      if (!att->InWindow(first + i)) Wake(att->uffd, base + (first + i) * kPageSize, kPageSize);
  }
  if (resident_pages_.fetch_add(installed) + installed > budget_pages_) {
    absl::MutexLock lock(&mu_);
    evict_wanted_ = true;
  }
}

void FaultService::FetchFailed(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n,
                               uint8_t* buf, const absl::Status& st) {
  uint64_t base = att->vaddr.load();
  if (IsRetry(st)) {
    // The home has a window open over the range: fetch again shortly (or
    // at range_end, if this node is being invalidated too).
    {
      absl::MutexLock lock(&att->mu);
      att->AbandonFetch(first, n);
    }
    PutBuffer(buf);
    RetryLater(att, first, n);
    return;
  }
  if (n > 1 && ToErrno(st) == EFAULT) {
    // Part of a read-ahead request is not mapped at the home (a hole in
    // the exporter's range): that says nothing about the page that
    // faulted. Forget the request and the stream; the faulter refaults
    // and fetches its page alone, and read-ahead starts again from there.
    {
      absl::MutexLock lock(&att->mu);
      att->AbandonFetch(first, n);
      att->seq_lo = ~uint64_t{0};
      att->readahead = 1;
    }
    PutBuffer(buf);
    Wake(att->uffd, base + first * kPageSize, n * kPageSize);
    return;
  }
  {
    absl::MutexLock lock(&att->mu);
    for (uint64_t i = 0; i < n; ++i)
      if (att->state[first + i] == PageState::kFetching)
        att->state[first + i] = i == 0 ? PageState::kPoisoned : PageState::kAbsent;
  }
  PutBuffer(buf);
  TLOG_WARN("attachment %#x: fetch of page %d failed: %s", att->id, first, st.ToString());
  // Faulters on the read-ahead pages retry on their own; the first page
  // is made to raise SIGBUS by the client library.
  if (n > 1) Wake(att->uffd, base + (first + 1) * kPageSize, (n - 1) * kPageSize);
  sigbus_(*att, first * kPageSize, kPageSize, std::string(st.message()));
}

uint64_t FaultService::CopyIn(Attachment& att, uint64_t base, uint64_t first, uint64_t n,
                              const uint8_t* buf, bool* need_wake) {
  uint64_t installed = 0;
  uint64_t done = 0;
  while (done < n) {
    uffdio_copy c{};
    c.dst = base + (first + done) * kPageSize;
    c.src = reinterpret_cast<uint64_t>(buf + done * kPageSize);
    c.len = (n - done) * kPageSize;
    c.mode = att.writable ? UFFDIO_COPY_MODE_WP : 0;
    int err = 0;
    uint64_t copied = n - done;
    if (ioctl(att.uffd, UFFDIO_COPY, &c) != 0) {
      err = errno;
      copied = c.copy > 0 ? static_cast<uint64_t>(c.copy) / kPageSize : 0;
    }
    CountBytes(Counters().install_copy_bytes, copied * kPageSize);
    for (uint64_t i = done; i < done + copied; ++i) {
      if (att.state[first + i] == PageState::kFetching) {
        att.state[first + i] = PageState::kClean;
        ++installed;
      }
    }
    done += copied;
    if (err == 0) break;
    if (err == EAGAIN) continue;
    if (err == EEXIST) {  // already in the page cache: keep it, wake faulters
      if (att.state[first + done] == PageState::kFetching) {
        att.state[first + done] = PageState::kClean;
        ++installed;
      }
      *need_wake = true;
      ++done;
      continue;
    }
    // ENOENT/ESRCH/EFAULT: the client unmapped or exited.
    att.AbandonFetch(first + done, n - done);
    break;
  }
  return installed;
}

void FaultService::RetryLater(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n) {
  {
    absl::MutexLock lock(&retry_mu_);
    retries_.push_back({att, first, n, absl::Now() + absl::Milliseconds(1)});
  }
  faults_.Wake();  // the fault loop shortens its wait
}

void FaultService::RunDueRetries() {
  fault_role_.AssertHere();
  std::vector<Retry> due;
  {
    absl::MutexLock lock(&retry_mu_);
    absl::Time now = absl::Now();
    for (auto it = retries_.begin(); it != retries_.end();) {
      if (it->due <= now) {
        due.push_back(std::move(*it));
        it = retries_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& r : due) {
    auto att = r.att.lock();
    if (!att) continue;
    absl::MutexLock lock(&att->mu);
    uint64_t base = att->vaddr.load();
    for (uint64_t i = 0; i < r.n; ++i)
      if (!att->InWindow(r.first + i)) Wake(att->uffd, base + (r.first + i) * kPageSize, kPageSize);
  }
}

}  // namespace tether
