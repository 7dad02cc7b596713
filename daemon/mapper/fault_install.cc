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
#include "daemon/mapper/mapper_metrics.h"
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
          if (msgs[m].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
            Mapper().write_protect_faults->Add();
            HandleWriteProtect(*att, addr);
          } else {
            Mapper().missing_faults->Add();
            HandleMissing(att, addr);
          }
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
  SegmentCache& c = *att.cache;
  uint64_t p = att.first_page() + (addr - base) / kPageSize;
  // Held here (tests), no lock held: the fault is read, the cache's mu not taken.
  TETHER_FAULT_POINT("fault_service.write_protect.before_lock");
  int twins = 0;
  {
    absl::MutexLock lock(&c.mu);
    PageState& s = c.state[p];
    if (s == PageState::kClean) {
      // The twin, before the protection is lifted in any mapping: the page
      // as the home has it, without this store (twin_store.h). One 4 KiB
      // pread on the first store to a clean page only — not on missing
      // faults, not on later stores, not on a store through another
      // mapping of a page already dirty — which a write-back's diff needs.
      twins = c.twins.Take(c.memfd, c.Off(p), p);
    }
    if (s == PageState::kClean || s == PageState::kWriteback) {
      // (kWriteback keeps its twin: the base of the write-back in flight,
      // replaced by what it sent once that lands.)
      if (s == PageState::kWriteback) ++c.wb_epoch;  // the write-back in flight is older now
      s = PageState::kDirty;
      ++c.dirty;
    }
    if (s == PageState::kDirty) {
      // Unprotected in this mm only: a store through another mapping of the
      // page still faults here (and finds it dirty already).
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
  SegmentCache& c = *att->cache;
  const uint64_t off = att->first_page();
  uint64_t p = (addr - base) / kPageSize;  // the attachment's page
  // Up to kMaxAheadRequests requests of <= kMaxReadahead pages each, in
  // segment pages.
  std::pair<uint64_t, uint64_t> requests[kMaxAheadRequests];
  size_t nreq = 0;
  uint64_t gen = 0;
  {
    absl::MutexLock lock(&c.mu);
    if (c.revoked) {
      // The memfd is truncated: the retry raises SIGBUS.
      Wake(att->uffd, addr, kPageSize);
      return;
    }
    if (c.InWindow(off + p)) return;  // range_end wakes it
    PageState s = c.state[off + p];
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
    // Its install wakes us (another attachment's fetch too: it wakes
    // every mapping of the pages).
    if (!sequential && s == PageState::kFetching) return;
    uint64_t limit = std::min<uint64_t>(att->pages(), p + att->readahead);
    for (uint64_t q = p; q < limit && nreq < kMaxAheadRequests;) {
      if (c.state[off + q] != PageState::kAbsent) {
        ++q;
        continue;
      }
      uint64_t n = 0;
      while (q + n < limit && n < kMaxReadahead && c.state[off + q + n] == PageState::kAbsent &&
             !c.InWindow(off + q + n)) {
        c.state[off + q + n] = PageState::kFetching;
        ++n;
      }
      if (n == 0) break;  // the next page is in a window
      requests[nreq++] = {off + q, n};
      q += n;
    }
    att->seq_lo = p;
    att->next_seq_page = std::max<uint64_t>(sequential ? att->next_seq_page : 0, limit);
    gen = c.inval_gen;
  }
  // For the fetch latency histogram: absl's clock reads the vDSO (no
  // syscall), once per fault that fetches.
  const int64_t started = nreq > 0 ? absl::GetCurrentTimeNanos() : 0;
  for (size_t i = 0; i < nreq; ++i) {
    const uint64_t first = requests[i].first, n = requests[i].second;
    uint8_t* buf = GetBuffer();
    // In place: over rdma the pages are installed straight from the
    // registered slot the home wrote them into (one copy, UFFDIO_COPY's);
    // `buf` is where other transports put them.
    data_->ReadInPlace(
        att->home, att->segid, att->grant, first * kPageSize, absl::MakeSpan(buf, n * kPageSize),
        [this, att, first, n, buf, gen, started](absl::Status st, absl::Span<const uint8_t> data) {
          Mapper().fetch_latency->ObserveNanos(
              static_cast<uint64_t>(std::max<int64_t>(0, absl::GetCurrentTimeNanos() - started)));
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
  SegmentCache& c = *att->cache;
  uint64_t installed = 0;
  {
    // Installed under the cache's lock, so that a range_begin cannot zap
    // between our generation check and the copy (stale install).
    absl::MutexLock lock(&c.mu);
    bool need_wake = false;
    if (c.BegunSince(gen, first, n) || c.revoked) {
      // A window over these pages opened while this fetch was in flight:
      // its data may predate it. Drop it; faulters outside windows fetch
      // again now.
      c.AbandonFetch(first, n);
      need_wake = true;
    } else {
      installed = CopyIn(c, *att, first, n, data, &need_wake);
      c.resident += installed;
    }
    // The copy woke att's faulters; other attachments' faulters on these
    // pages (they found them kFetching) are woken here — only when there
    // are others, so the one-attachment path makes no extra call.
    if (need_wake)
      WakeEverywhere(c, first, first + n, nullptr);
    else if (c.mappings.size() > 1)
      WakeEverywhere(c, first, first + n, att.get());
  }
  PutBuffer(buf);
  if (resident_pages_.fetch_add(installed) + installed > budget_pages_) {
    absl::MutexLock lock(&mu_);
    evict_wanted_ = true;
  }
}

void FaultService::FetchFailed(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n,
                               uint8_t* buf, const absl::Status& st) {
  SegmentCache& c = *att->cache;
  if (IsRetry(st)) {
    // The home has a window open over the range: fetch again shortly (or
    // at range_end, if this node is being invalidated too).
    {
      absl::MutexLock lock(&c.mu);
      c.AbandonFetch(first, n);
    }
    PutBuffer(buf);
    RetryLater(att, first, n);
    return;
  }
  if (n > 1 && ToErrno(st) == EFAULT) {
    // Part of a read-ahead request is not mapped at the home (a hole in
    // the exporter's range): that says nothing about the page that
    // faulted. Forget the request and the stream; the faulters refault
    // and fetch their page alone, and read-ahead starts again from there.
    {
      absl::MutexLock lock(&c.mu);
      c.AbandonFetch(first, n);
      att->seq_lo = ~uint64_t{0};
      att->readahead = 1;
      WakeEverywhere(c, first, first + n, nullptr);
    }
    PutBuffer(buf);
    return;
  }
  // The first page is made to raise SIGBUS by the client library, in the
  // attachment that fetched it (its faulter waits for that). In the cache
  // it goes back to absent, not kPoisoned: other attachments of the cache
  // (another process, or this one attaching again after the SIGBUS) must
  // not find a page that never answers; their faulters are woken and fetch
  // it themselves (and get their own SIGBUS, or the page if the home has
  // one again). Faulters on the read-ahead pages retry on their own.
  {
    absl::MutexLock lock(&c.mu);
    c.AbandonFetch(first, n);
    if (n > 1) WakeEverywhere(c, first + 1, first + n, nullptr);
    WakeEverywhere(c, first, first + 1, att.get());
  }
  PutBuffer(buf);
  Mapper().fetch_failures->Add();
  TLOG_WARN("attachment %#x: fetch of segment page %d failed: %s", att->id, first, st.ToString());
  sigbus_(*att, (first - att->first_page()) * kPageSize, kPageSize, std::string(st.message()));
}

uint64_t FaultService::CopyIn(SegmentCache& c, Attachment& att, uint64_t first, uint64_t n,
                              const uint8_t* buf, bool* need_wake) {
  uint64_t installed = 0;
  uint64_t done = 0;
  while (done < n) {
    uffdio_copy cp{};
    cp.dst = att.AddrOf(first + done);
    cp.src = reinterpret_cast<uint64_t>(buf + done * kPageSize);
    cp.len = (n - done) * kPageSize;
    cp.mode = att.writable ? UFFDIO_COPY_MODE_WP : 0;
    int err = 0;
    uint64_t copied = n - done;
    if (ioctl(att.uffd, UFFDIO_COPY, &cp) != 0) {
      err = errno;
      copied = cp.copy > 0 ? static_cast<uint64_t>(cp.copy) / kPageSize : 0;
    }
    CountBytes(Counters().install_copy_bytes, copied * kPageSize);
    for (uint64_t i = done; i < done + copied; ++i) {
      if (c.state[first + i] == PageState::kFetching) {
        c.state[first + i] = PageState::kClean;
        ++installed;
      }
    }
    done += copied;
    if (err == 0) break;
    if (err == EAGAIN) continue;
    if (err == EEXIST) {  // already in the page cache: keep it, wake faulters
      if (c.state[first + done] == PageState::kFetching) {
        c.state[first + done] = PageState::kClean;
        ++installed;
      }
      *need_wake = true;
      ++done;
      continue;
    }
    // ENOENT/ESRCH/EFAULT: the client unmapped or exited. Other
    // attachments waiting on these pages refault and fetch them.
    c.AbandonFetch(first + done, n - done);
    *need_wake = true;
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
    SegmentCache& c = *att->cache;
    absl::MutexLock lock(&c.mu);
    WakeEverywhere(c, r.first, r.first + r.n, nullptr);
  }
}

}  // namespace tether
