// FaultService's lifecycle: construction, Start/Stop of its two threads,
// the attachments it serves (Add/Remove), and the read-ahead buffers that
// fetches land in. The rest lives in fault_install.cc, fault_windows.cc,
// fault_writeback.cc and fault_eviction.cc (fault_service.h has the map).
#include "daemon/mapper/fault_service.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"
#include "daemon/mapper/mapping_ops.h"

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
  share_caches_ = ProbeSharing();
  if (!share_caches_)
    TLOG_WARN(
        "this kernel leaves no uffd-wp marker on an unpopulated shmem PTE: attachments "
        "of one segment on this node get a cache each (stores through one are not seen "
        "through another until written back)");
  fault_thread_ = std::thread([this] {
    NameThisThread("tt-fault");
    fault_role_.Bind();
    FaultLoop();
  });
  evict_thread_ = std::thread([this] {
    NameThisThread("tt-evict");
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

bool FaultService::ProbeSharing() {
  // The question (attachment.h, "Dirty tracking across mappings"): after
  // UFFDIO_WRITEPROTECT over a shmem mapping that maps nothing yet, does a
  // page that enters the page cache later map write-protected? Two
  // mappings of a one-page memfd; the second is registered and protected
  // while empty; the page is written through the first; a read through the
  // second maps it, and pagemap says whether that PTE is uffd-wp (bit 57).
  // A kernel without uffd-wp on shmem fails the register (also "no").
  bool ok = false;
  int memfd = memfd_create("tether-probe", MFD_CLOEXEC);
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  void* a = MAP_FAILED;
  void* b = MAP_FAILED;
  int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  do {
    if (memfd < 0 || uffd < 0 || pm < 0 || ftruncate(memfd, kPageSize) != 0) break;
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    if (ioctl(uffd, UFFDIO_API, &api) != 0) break;
    a = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    b = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) break;
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(b), kPageSize};
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) break;
    if (mapping_ops::WriteProtect(uffd, reinterpret_cast<uint64_t>(b), kPageSize, true) != 0) break;
    static_cast<volatile char*>(a)[0] = 1;    // the page enters the cache through the other mapping
    (void)static_cast<volatile char*>(b)[0];  // mapped from the marker, if there is one
    uint64_t entry = 0;
    off_t off = static_cast<off_t>(reinterpret_cast<uint64_t>(b) / kPageSize * sizeof(entry));
    if (pread(pm, &entry, sizeof(entry), off) != sizeof(entry)) break;
    ok = (entry >> 57) & 1;
  } while (false);
  if (a != MAP_FAILED) munmap(a, kPageSize);
  if (b != MAP_FAILED) munmap(b, kPageSize);
  for (int fd : {memfd, uffd, pm})
    if (fd >= 0) close(fd);
  return ok;
}

absl::Status FaultService::Join(const std::shared_ptr<Attachment>& att, uint64_t segment_size) {
  // Shared: the whole segment, by segid. Private (a kernel that cannot
  // share, or a segment too large to hold a state per page of): the
  // attachment's range only.
  const bool shared = share_caches_ && segment_size <= SegmentCache::kMaxSharedBytes;
  while (true) {
    std::shared_ptr<SegmentCache> c;
    if (shared) {
      absl::MutexLock lock(&mu_);
      auto it = caches_.find(att->segid);
      if (it != caches_.end()) c = it->second;
    }
    if (c) {
      absl::MutexLock lock(&c->mu);
      if (!c->revoked && c->home == att->home &&
          c->Off(att->first_page() + att->pages()) <=
              static_cast<off_t>(c->seg_pages * kPageSize)) {
        c->mappings.push_back(att);
        if (att->writable) c->write_grant = att->grant;
        att->cache = std::move(c);
        return absl::OkStatus();
      }
    }
    // None open (or it was closed or revoked meanwhile): a new one, which
    // replaces it — unless another attach put a new one in first.
    auto fresh = std::make_shared<SegmentCache>();
    fresh->home = att->home;
    fresh->segid = att->segid;
    fresh->shared = shared;
    fresh->base_page = shared ? 0 : att->first_page();
    fresh->seg_pages = shared ? segment_size / kPageSize : att->pages();
    fresh->memfd = memfd_create("tether-cache", MFD_CLOEXEC);
    if (fresh->memfd < 0) return ErrnoStatus(errno, "memfd_create");
    if (ftruncate(fresh->memfd, static_cast<off_t>(fresh->seg_pages * kPageSize)) != 0)
      return ErrnoStatus(errno, "size the cache memfd");
    {
      absl::MutexLock lock(&fresh->mu);
      fresh->state.Reset(fresh->base_page, fresh->seg_pages);
      fresh->mappings.push_back(att);
      if (att->writable) fresh->write_grant = att->grant;
    }
    if (shared) {
      absl::MutexLock lock(&mu_);
      auto& slot = caches_[att->segid];
      if (slot != c) continue;  // another attach made one: join that
      slot = fresh;
    }
    att->cache = std::move(fresh);
    return absl::OkStatus();
  }
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
  SegmentCache& c = *att->cache;
  absl::MutexLock lock(&c.mu);
  // Arm every writable mapping once the cache has two: from now on pages
  // one mapping installs appear in the others without a missing fault
  // (attachment.h). Under the lock: no install runs meanwhile.
  size_t mapped = 0;
  for (const auto& m : c.mappings) mapped += m->vaddr.load() != 0;
  if (mapped < 2) return absl::OkStatus();
  for (const auto& m : c.mappings) {
    if (!m->writable || m->armed || m->vaddr.load() == 0) continue;
    if (int err = mapping_ops::WriteProtect(m->uffd, m->vaddr.load(), m->size, true); err != 0) {
      // Only a client that unmapped or exited fails here; it faults no more.
      TLOG_WARN("attachment %#x: arming its mapping: %s", m->id, std::strerror(err));
    }
    m->armed = true;
  }
  return absl::OkStatus();
}

absl::Status FaultService::Detach(const std::shared_ptr<Attachment>& att) {
  SegmentCache& c = *att->cache;
  bool revoked;
  {
    absl::MutexLock lock(&c.mu);
    revoked = c.revoked;
  }
  if (revoked) {
    // Nothing can be written any more (a sync reports the revocation).
    Remove(att);
    return absl::OkStatus();
  }
  absl::Status st = Sync(*att, 0, att->size);
  // Held here (tests), no lock held: its range is synced, it still maps
  // the cache (a store through it now dirties a page again).
  TETHER_FAULT_POINT("fault_service.detach.after_sync");
  // The dirty pages nobody else would write back once it is gone: runs of
  // kDirty pages that no other writable mapping covers, in its range or,
  // for the last mapping, the whole cache. So are the pages there that
  // another write-back has in flight (kWriteback: the evictor's), that a
  // window keeps aside or that its end is writing back (kAbsent
  // meanwhile): no later sync would wait for them, and a last detach
  // closes the cache — it returned while such a write was on its way,
  // and a failure after that was reported to nobody (issue 14). SyncCache
  // over them waits until they settle, and takes and reports a page put
  // back dirty.
  std::vector<std::pair<uint64_t, uint64_t>> orphans;  // [p0, p1)
  uint64_t grant;
  {
    absl::MutexLock lock(&c.mu);
    grant = att->writable ? att->grant : c.write_grant;
    bool last = true;
    for (const auto& m : c.mappings) last &= m == att;
    const uint64_t p0 = last ? c.first() : att->first_page();
    const uint64_t p1 = last ? c.end() : att->first_page() + att->pages();
    // Its own range was just tried if it is writable: after a failure
    // (reported) not again — only what lies outside it.
    const bool skip_own = att->writable && !st.ok();
    const bool any_kept = !c.kept_aside.empty() || !c.kept_writing.empty();
    auto orphan = [&](uint64_t p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu) {
      const bool kept = any_kept && (c.kept_aside.contains(p) || c.kept_writing.contains(p));
      const bool pending =
          c.state[p] == PageState::kDirty || c.state[p] == PageState::kWriteback || kept;
      if (!pending || (skip_own && att->Covers(p))) return false;
      for (const auto& m : c.mappings)
        if (m != att && m->writable && m->Covers(p)) return false;
      return true;
    };
    // O(pages) under the lock, as Sync's scan: detach is not the fault path.
    for (uint64_t p = p0; p < p1;) {
      if (!orphan(p)) {
        ++p;
        continue;
      }
      uint64_t q = p + 1;
      while (q < p1 && orphan(q)) ++q;
      orphans.emplace_back(p, q);
      p = q;
    }
  }
  for (auto [p0, p1] : orphans) {
    absl::Status o = SyncCache(c, grant, p0, p1);
    if (o.ok()) continue;
    // Writes lost only to an unmap keep their mark (detach forgives them:
    // LocalApi); any other failure says which pages.
    if (!IsOnlyLostUnmapped(o))
      o = WithErrno(ToErrno(o), absl::StrFormat("write-back of segment pages [%d, %d), which no "
                                                "other attachment covers: %s",
                                                p0, p1, o.message()));
    if (st.ok()) {
      st = o;
      continue;
    }
    // Both failed: the one the caller must act on leads, the other is
    // reported in the same message.
    const absl::Status& first = IsOnlyLostUnmapped(st) ? o : st;
    const absl::Status& then = IsOnlyLostUnmapped(st) ? st : o;
    if (!IsOnlyLostUnmapped(first))
      st = WithErrno(ToErrno(first), absl::StrCat(first.message(), "; also ", then.message()));
  }
  {
    // Revoked while it wrote back: as a detach of a revoked attachment,
    // it succeeds (docs/consistency.md: EIDRM); a sync reports the loss.
    absl::MutexLock lock(&c.mu);
    revoked = c.revoked;
  }
  Remove(att);
  if (revoked && !st.ok()) {
    TLOG_INFO("detach of attachment %#x: %s", att->id, st.message());
    return absl::OkStatus();
  }
  return st;
}

void FaultService::Remove(const std::shared_ptr<Attachment>& att) {
  faults_.Remove(att->uffd);
  {
    absl::MutexLock lock(&mu_);
    atts_.erase(att->id);
  }
  std::shared_ptr<SegmentCache> cache = att->cache;
  if (!cache) return;
  SegmentCache& c = *cache;
  uint64_t dropped = 0;
  bool closed = false;
  {
    absl::MutexLock lock(&c.mu);
    auto it = std::find(c.mappings.begin(), c.mappings.end(), att);
    if (it == c.mappings.end()) return;  // removed before
    c.mappings.erase(it);
    // Write-backs made for no attachment (the evictor's, a window's
    // kept-aside pages) use a grant a remaining writable attachment holds:
    // this one's may be released at the home next.
    if (att->writable && c.write_grant == att->grant)
      for (const auto& m : c.mappings)
        if (m->writable) c.write_grant = m->grant;
    if (c.mappings.empty()) {
      // The last one: late completions install nothing, and the next
      // attach of the segment makes a new cache.
      dropped = c.resident + c.twins.Clear();  // twins count too (twin_store.h)
      c.resident = 0;
      closed = true;
      if (!c.revoked) {
        c.revoked = true;
        c.revoke_reason = "detached";
      }
    } else {
      // Clean pages only this attachment covered: nobody maps them now.
      // (Dirty ones stay, written back by a later sync or the evictor.)
      const uint64_t p0 = att->first_page(), p1 = p0 + att->pages();
      for (uint64_t p = p0; p < p1;) {
        bool covered = false;
        for (const auto& m : c.mappings) covered |= m->Covers(p);
        if (covered || c.state[p] != PageState::kClean) {
          ++p;
          continue;
        }
        c.state[p] = PageState::kAbsent;
        mapping_ops::PunchHole(c.memfd, c.Off(p), kPageSize);
        --c.resident;
        ++dropped;
        ++p;
      }
    }
  }
  resident_pages_ -= dropped;
  if (closed && c.shared) {
    absl::MutexLock lock(&mu_);
    auto it = caches_.find(c.segid);
    if (it != caches_.end() && it->second == cache) caches_.erase(it);
  }
}

void FaultService::ProtectEverywhere(SegmentCache& c, uint64_t p0, uint64_t p1) {
  for (const auto& m : c.mappings) {
    if (!m->writable || m->vaddr.load() == 0) continue;
    uint64_t a = std::max(p0, m->first_page()), b = std::min(p1, m->first_page() + m->pages());
    if (a < b) mapping_ops::WriteProtect(m->uffd, m->AddrOf(a), (b - a) * kPageSize, true);
  }
}

void FaultService::WakeEverywhere(SegmentCache& c, uint64_t p0, uint64_t p1,
                                  const Attachment* except) {
  for (const auto& m : c.mappings) {
    if (m.get() == except || m->vaddr.load() == 0) continue;
    uint64_t a = std::max(p0, m->first_page()), b = std::min(p1, m->first_page() + m->pages());
    // One UFFDIO_WAKE per run of pages no window holds.
    for (uint64_t p = a; p < b;) {
      if (c.InWindow(p)) {
        ++p;
        continue;
      }
      uint64_t q = p + 1;
      while (q < b && !c.InWindow(q)) ++q;
      mapping_ops::Wake(m->uffd, m->AddrOf(p), (q - p) * kPageSize);
      p = q;
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
