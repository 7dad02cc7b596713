#include "daemon/mapper/fault_service.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {
constexpr uint64_t kPage = 4096;
constexpr uint32_t kMaxReadahead = 64;    // pages: one 256 KiB transport request
constexpr uint32_t kMaxAheadPages = 256;  // pages requested ahead of a sequential reader
constexpr size_t kMaxAheadRequests = kMaxAheadPages / kMaxReadahead + 1;
constexpr size_t kBufferBytes = kMaxReadahead * kPage;

void Wake(int uffd, uint64_t start, uint64_t len) {
  uffdio_range r{start, len};
  ioctl(uffd, UFFDIO_WAKE, &r);
}

// Protects (wp=true) or unprotects (and wakes) a range of the client's mapping.
int WriteProtect(int uffd, uint64_t start, uint64_t len, bool wp) {
  uffdio_writeprotect w{};
  w.range = {start, len};
  w.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
  return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) == 0 ? 0 : errno;
}

void PunchHole(int memfd, uint64_t off, uint64_t len) {
  if (fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                static_cast<off_t>(len)) != 0)
    TLOG_WARN("punch hole in attachment memfd: %s", std::strerror(errno));
}
}  // namespace

FaultService::FaultService(DataPath* data, uint64_t budget_bytes, SigbusSink sigbus)
    : data_(data),
      budget_pages_(std::max<uint64_t>(budget_bytes / kPage, 4 * kMaxAheadPages)),
      sigbus_(std::move(sigbus)) {}

FaultService::~FaultService() {
  Stop();
  absl::MutexLock lock(&pool_mu_);
  for (uint8_t* b : pool_) std::free(b);
}

absl::Status FaultService::Start() {
  RETURN_IF_ERROR(faults_.Open());
  fault_thread_ = std::thread([this] { FaultLoop(); });
  evict_thread_ = std::thread([this] { EvictLoop(); });
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
    resident = att->resident;
    att->resident = 0;
    att->revoked = true;  // late completions install nothing
    if (att->revoke_reason.empty()) att->revoke_reason = "detached";
  }
  resident_pages_ -= resident;
  absl::MutexLock lock(&mu_);
  atts_.erase(att->id);
}

void FaultService::FaultLoop() {
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
          uint64_t addr = msgs[m].arg.pagefault.address & ~(kPage - 1);
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
  uint64_t base = att.vaddr.load();
  if (addr < base || addr >= base + att.size) return;
  uint64_t p = (addr - base) / kPage;
  absl::MutexLock lock(&att.mu);
  PageState& s = att.state[p];
  if (s == PageState::kClean || s == PageState::kWriteback) {
    s = PageState::kDirty;
    ++att.dirty;
  }
  if (s == PageState::kDirty) {
    WriteProtect(att.uffd, addr, kPage, false);  // also wakes the writer
  } else {
    Wake(att.uffd, addr, kPage);  // evicted meanwhile: it refaults as missing
  }
}

void FaultService::HandleMissing(const std::shared_ptr<Attachment>& att, uint64_t addr) {
  uint64_t base = att->vaddr.load();
  if (addr < base || addr >= base + att->size) return;
  uint64_t p = (addr - base) / kPage;
  // Up to kMaxAheadRequests requests of <= kMaxReadahead pages each.
  std::pair<uint64_t, uint64_t> requests[kMaxAheadRequests];
  size_t nreq = 0;
  uint64_t gen = 0;
  {
    absl::MutexLock lock(&att->mu);
    if (att->revoked) {
      // The memfd is truncated: the retry raises SIGBUS.
      Wake(att->uffd, addr, kPage);
      return;
    }
    if (att->InWindow(p)) return;  // range_end wakes it
    PageState s = att->state[p];
    if (s == PageState::kPoisoned) return;
    if (s != PageState::kAbsent && s != PageState::kFetching) {
      Wake(att->uffd, addr, kPage);
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
    data_->Read(att->home, att->segid, att->grant, att->seg_offset + first * kPage,
                absl::MakeSpan(buf, n * kPage), [this, att, first, n, buf, gen](absl::Status st) {
                  Install(att, first, n, buf, gen, st);
                });
  }
}

void FaultService::Install(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n,
                           uint8_t* buf, uint64_t gen, absl::Status st) {
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
  if (!st.ok() && n > 1 && ToErrno(st) == EFAULT) {
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
    Wake(att->uffd, base + first * kPage, n * kPage);
    return;
  }
  if (!st.ok()) {
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
    if (n > 1) Wake(att->uffd, base + (first + 1) * kPage, (n - 1) * kPage);
    sigbus_(*att, first * kPage, kPage, std::string(st.message()));
    return;
  }
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
      uint64_t done = 0;
      while (done < n) {
        uffdio_copy c{};
        c.dst = base + (first + done) * kPage;
        c.src = reinterpret_cast<uint64_t>(buf + done * kPage);
        c.len = (n - done) * kPage;
        c.mode = att->writable ? UFFDIO_COPY_MODE_WP : 0;
        int err = 0;
        uint64_t copied = n - done;
        if (ioctl(att->uffd, UFFDIO_COPY, &c) != 0) {
          err = errno;
          copied = c.copy > 0 ? static_cast<uint64_t>(c.copy) / kPage : 0;
        }
        for (uint64_t i = done; i < done + copied; ++i) {
          if (att->state[first + i] == PageState::kFetching) {
            att->state[first + i] = PageState::kClean;
            ++installed;
          }
        }
        done += copied;
        if (err == 0) break;
        if (err == EAGAIN) continue;
        if (err == EEXIST) {  // already in the page cache: keep it, wake faulters
          if (att->state[first + done] == PageState::kFetching) {
            att->state[first + done] = PageState::kClean;
            ++installed;
          }
          need_wake = true;
          ++done;
          continue;
        }
        // ENOENT/ESRCH/EFAULT: the client unmapped or exited.
        att->AbandonFetch(first + done, n - done);
        break;
      }
      att->resident += installed;
    }
  }
  PutBuffer(buf);
  if (need_wake) {
    absl::MutexLock lock(&att->mu);
    for (uint64_t i = 0; i < n; ++i)
      if (!att->InWindow(first + i)) Wake(att->uffd, base + (first + i) * kPage, kPage);
  }
  if (resident_pages_.fetch_add(installed) + installed > budget_pages_) {
    absl::MutexLock lock(&mu_);
    evict_wanted_ = true;
  }
}

void FaultService::RetryLater(const std::shared_ptr<Attachment>& att, uint64_t first, uint64_t n) {
  {
    absl::MutexLock lock(&retry_mu_);
    retries_.push_back({att, first, n, absl::Now() + absl::Milliseconds(1)});
  }
  faults_.Wake();  // the fault loop shortens its wait
}

void FaultService::RunDueRetries() {
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
      if (!att->InWindow(r.first + i)) Wake(att->uffd, base + (r.first + i) * kPage, kPage);
  }
}

void FaultService::BeginWindow(Attachment& att, uint64_t key, uint64_t p0, uint64_t p1) {
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&att.mu);
    p1 = std::min(p1, att.pages());
    if (att.revoked || p0 >= p1) return;
    att.windows[key] = {p0, p1};
    ++att.inval_gen;
    att.recent_begins.push_back({att.inval_gen, p0, p1});
    if (att.recent_begins.size() > Attachment::kRecentBegins) att.recent_begins.pop_front();
    std::string page(kPage, '\0');
    for (uint64_t p = p0; p < p1;) {
      PageState s = att.state[p];
      if (s != PageState::kClean && s != PageState::kDirty && s != PageState::kWriteback) {
        ++p;
        continue;
      }
      uint64_t q = p;
      while (q < p1 && (att.state[q] == PageState::kClean || att.state[q] == PageState::kDirty ||
                        att.state[q] == PageState::kWriteback)) {
        if (att.state[q] != PageState::kClean) {
          // Dirty data is never dropped while the address exists: keep it
          // aside, write it back after the window (G5: never inside it).
          if (pread(att.memfd, page.data(), kPage, static_cast<off_t>(q * kPage)) ==
              static_cast<ssize_t>(kPage))
            att.kept_aside[q] = page;
          if (att.state[q] == PageState::kDirty) --att.dirty;
        }
        att.state[q++] = PageState::kAbsent;
      }
      PunchHole(att.memfd, p * kPage, (q - p) * kPage);
      dropped += q - p;
      p = q;
    }
    att.resident -= dropped;
  }
  resident_pages_ -= dropped;
}

absl::Status FaultService::WriteBackPages(Attachment& att, uint64_t first,
                                          absl::Span<const uint8_t> data) {
  // The home refuses writes inside one of its windows (Retry): retry for
  // a bounded time, since windows close within the ack deadline.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    absl::Status st =
        data_->WriteSync(att.home, att.segid, att.grant, att.seg_offset + first * kPage, data);
    if (st.ok() || !IsRetry(st) || absl::Now() > deadline) return st;
    absl::SleepFor(absl::Milliseconds(1));
  }
}

absl::Status FaultService::EndWindow(Attachment& att, uint64_t key,
                                     const std::vector<std::pair<uint64_t, uint64_t>>& gone) {
  std::vector<std::pair<uint64_t, std::string>> writeback;
  uint64_t p0, p1;
  {
    absl::MutexLock lock(&att.mu);
    auto it = att.windows.find(key);
    if (it == att.windows.end()) return absl::OkStatus();  // duplicate or unknown
    p0 = it->second.first;
    p1 = it->second.second;
    for (auto k = att.kept_aside.lower_bound(p0); k != att.kept_aside.end() && k->first < p1;) {
      bool is_gone = false;
      for (const auto& g : gone) is_gone |= k->first >= g.first && k->first < g.second;
      if (is_gone) {
        ++att.lost_pages;
      } else if (att.InOtherWindow(k->first, key)) {
        // Another window over the page is still open (range_begin of a
        // later event came first): the home refuses writes there, and
        // that event may replace or unmap the page. Its range_end decides.
        ++k;
        continue;
      } else {
        writeback.emplace_back(k->first, std::move(k->second));
      }
      k = att.kept_aside.erase(k);
    }
  }
  // Written back before the range reopens, so that our next fault fetches
  // contents that include our own writes.
  absl::Status result;
  for (auto& [p, bytes] : writeback) {
    absl::Status st = WriteBackPages(
        att, p, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes.data()), kPage));
    if (!st.ok()) {
      absl::MutexLock lock(&att.mu);
      att.kept_aside[p] = std::move(bytes);  // a later sync retries
      if (result.ok()) result = st;
    }
  }
  absl::MutexLock lock(&att.mu);
  att.windows.erase(key);
  uint64_t base = att.vaddr.load();
  if (!base) return result;
  // One UFFDIO_WAKE per run of pages no other window still holds.
  for (uint64_t p = p0; p < p1;) {
    if (att.InWindow(p)) {
      ++p;
      continue;
    }
    uint64_t q = p + 1;
    while (q < p1 && !att.InWindow(q)) ++q;
    Wake(att.uffd, base + p * kPage, (q - p) * kPage);
    p = q;
  }
  return result;
}

absl::Status FaultService::Sync(Attachment& att, uint64_t offset, uint64_t len) {
  if (offset > att.size || len > att.size - offset)
    return ErrnoStatus(EINVAL, "sync range outside the attachment");
  if (!att.writable) return absl::OkStatus();
  uint64_t p0 = offset / kPage, p1 = (offset + len + kPage - 1) / kPage;
  uint64_t base = att.vaddr.load();
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // [first page, count)
  absl::Status lost;
  {
    absl::MutexLock lock(&att.mu);
    // Writes kept aside by an open window are written back (or found lost)
    // when it ends: wait for that, bounded, so that sync reports them.
    auto kept_in_window = [&att, p0, p1]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(att.mu) {
      auto k = att.kept_aside.lower_bound(p0);
      return !att.windows.empty() && k != att.kept_aside.end() && k->first < p1;
    };
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (kept_in_window() && absl::Now() < deadline) {
      att.mu.Unlock();
      absl::SleepFor(absl::Milliseconds(1));
      att.mu.Lock();
    }
    if (att.revoked) {
      std::string msg = "attachment revoked (" + att.revoke_reason + ")";
      if (att.lost_pages > 0)
        msg +=
            absl::StrFormat(": %d page(s) of writes not yet synced were discarded", att.lost_pages);
      att.lost_pages = 0;
      return ErrnoStatus(EIDRM, msg);
    }
    if (att.lost_pages > 0) {
      lost = ErrnoStatus(EIO,
                         absl::StrFormat("%d page(s) of writes not yet synced were discarded: the "
                                         "exporter unmapped that memory",
                                         att.lost_pages));
      att.lost_pages = 0;
    }
    for (uint64_t p = p0; p < p1;) {
      if (att.state[p] != PageState::kDirty) {
        ++p;
        continue;
      }
      uint64_t q = p;
      while (q < p1 && att.state[q] == PageState::kDirty) {
        att.state[q] = PageState::kWriteback;
        ++q;
      }
      // Protect before reading: a store from now on faults and re-dirties.
      WriteProtect(att.uffd, base + p * kPage, (q - p) * kPage, true);
      att.dirty -= q - p;
      runs.emplace_back(p, q - p);
      p = q;
    }
  }
  absl::Status result;
  std::vector<uint8_t> buf;
  std::vector<bool> ok(runs.size(), false);
  for (size_t r = 0; r < runs.size(); ++r) {
    auto [p, count] = runs[r];
    buf.resize(count * kPage);
    ssize_t got = pread(att.memfd, buf.data(), buf.size(), static_cast<off_t>(p * kPage));
    absl::Status st;
    if (got != static_cast<ssize_t>(buf.size())) {
      st = ErrnoStatus(got < 0 ? errno : EIO, "read back dirty pages");
    } else {
      st = WriteBackPages(att, p, buf);
    }
    ok[r] = st.ok();
    if (!st.ok() && result.ok()) result = st;
  }
  absl::MutexLock lock(&att.mu);
  for (size_t r = 0; r < runs.size(); ++r) {
    for (uint64_t p = runs[r].first; p < runs[r].first + runs[r].second; ++p) {
      if (att.state[p] != PageState::kWriteback) continue;  // re-dirtied
      if (ok[r]) {
        att.state[p] = PageState::kClean;
      } else {
        att.state[p] = PageState::kDirty;  // keep it: a later sync retries
        ++att.dirty;
      }
    }
  }
  return lost.ok() ? result : lost;
}

absl::Status FaultService::Acquire(Attachment& att, uint64_t offset, uint64_t len) {
  if (offset > att.size || len > att.size - offset)
    return ErrnoStatus(EINVAL, "acquire range outside the attachment");
  uint64_t p0 = offset / kPage, p1 = (offset + len + kPage - 1) / kPage;
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&att.mu);
    for (uint64_t p = p0; p < p1;) {
      if (att.state[p] != PageState::kClean) {
        ++p;
        continue;
      }
      uint64_t q = p;
      while (q < p1 && att.state[q] == PageState::kClean) att.state[q++] = PageState::kAbsent;
      PunchHole(att.memfd, p * kPage, (q - p) * kPage);
      dropped += q - p;
      p = q;
    }
    att.resident -= dropped;
  }
  resident_pages_ -= dropped;
  return absl::OkStatus();
}

void FaultService::Revoke(Attachment& att, const std::string& why) {
  uint64_t dropped;
  {
    absl::MutexLock lock(&att.mu);
    if (att.revoked) return;
    att.revoked = true;
    att.revoke_reason = why;
    for (PageState st : att.state)
      if (st == PageState::kDirty || st == PageState::kWriteback) ++att.lost_pages;
    att.lost_pages += att.kept_aside.size();
    att.kept_aside.clear();
    att.windows.clear();
    dropped = att.resident;
    att.resident = 0;
    att.dirty = 0;
    std::fill(att.state.begin(), att.state.end(), PageState::kAbsent);
    // Truncating the memfd makes every access raise SIGBUS, held pages too.
    if (ftruncate(att.memfd, 0) != 0) TLOG_WARN("revoke: ftruncate: %s", std::strerror(errno));
  }
  resident_pages_ -= dropped;
  uint64_t base = att.vaddr.load();
  if (base) Wake(att.uffd, base, att.size);
}

uint64_t FaultService::EvictClean(Attachment& att, uint64_t want) {
  uint64_t dropped = 0;
  absl::MutexLock lock(&att.mu);
  uint64_t pages = att.pages();
  for (uint64_t scanned = 0; scanned < pages && dropped < want;) {
    uint64_t p = att.evict_hand % pages;
    if (att.state[p] != PageState::kClean) {
      att.evict_hand = p + 1;
      ++scanned;
      continue;
    }
    uint64_t q = p;
    while (q < pages && dropped + (q - p) < want && att.state[q] == PageState::kClean)
      att.state[q++] = PageState::kAbsent;
    PunchHole(att.memfd, p * kPage, (q - p) * kPage);
    dropped += q - p;
    scanned += q - p;
    att.evict_hand = q;
  }
  att.resident -= dropped;
  return dropped;
}

void FaultService::EvictLoop() {
  const uint64_t low_water = budget_pages_ - budget_pages_ / 8;
  while (true) {
    std::vector<std::shared_ptr<Attachment>> atts;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&evict_wanted_));
      evict_wanted_ = false;
      if (stopping_) return;
      for (auto& [id, a] : atts_) atts.push_back(a);
    }
    for (int round = 0; round < 2 && resident_pages_.load() > low_water; ++round) {
      for (auto& a : atts) {
        uint64_t cur = resident_pages_.load();
        if (cur <= low_water) break;
        uint64_t want = std::min<uint64_t>(cur - low_water, a->pages());
        resident_pages_ -= EvictClean(*a, want);
      }
      if (resident_pages_.load() <= low_water) break;
      // Not enough clean pages: write dirty ones back so they become
      // evictable on the next round. Never drop them.
      for (auto& a : atts) {
        bool has_dirty;
        {
          absl::MutexLock lock(&a->mu);
          has_dirty = a->dirty > 0 && !a->revoked;
        }
        if (!has_dirty) continue;
        absl::Status st = Sync(*a, 0, a->size);
        if (!st.ok())
          TLOG_WARN("evictor: write-back of attachment %d failed: %s", a->id, st.ToString());
      }
    }
  }
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
  return static_cast<uint8_t*>(std::aligned_alloc(kPage, kBufferBytes));
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
