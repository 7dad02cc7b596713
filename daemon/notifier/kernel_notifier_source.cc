#include "daemon/notifier/kernel_notifier_source.h"

#include <fcntl.h>
#include <linux/tether.h>  // kernel/include/uapi: the tether.ko ioctl ABI
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "daemon/common/data_counters.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"
#include "daemon/common/poll_now.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"

namespace tether {
namespace {
// Workers for blockable BEGINs: each may wait up to the invalidation
// deadline for a frozen mapper; more exporters waiting at once than this
// wait for each other.
constexpr int kBeginWorkers = 4;
static_assert(sizeof(tether_event) == 72, "ABI 2 event record");

const char* TypeName(uint32_t type) {
  switch (type) {
    case TETHER_EV_UNMAP: return "unmap";
    case TETHER_EV_CLEAR: return "clear (madvise, COW, swap, THP, KSM)";
    case TETHER_EV_PROTECTION_VMA: return "protection change";
    case TETHER_EV_PROTECTION_PAGE: return "write-protect (fork)";
    case TETHER_EV_SOFT_DIRTY: return "soft-dirty";
    case TETHER_EV_RELEASE: return "release";
    case TETHER_EV_MIGRATE: return "migration";
    case TETHER_EV_EXCLUSIVE: return "exclusive access";
    default: return "kernel memory event";
  }
}

// Whether [start, end) of process `pid` is all anonymous private memory
// (what the module's direct attachments serve: vma_is_anonymous), from
// /proc/<pid>/maps: no path or [heap] / [stack] / [anon:name], inode 0. A
// hole, a file, a MAP_SHARED anonymous (shmem) or special mapping is not.
absl::StatusOr<bool> AllAnonymous(pid_t pid, uint64_t start, uint64_t end) {
  std::string path = absl::StrFormat("/proc/%d/maps", pid);
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return ErrnoStatus(errno, "open " + path);
  uint64_t covered = start;  // [start, covered) is known to be anonymous
  char line[4096];
  while (covered < end && fgets(line, sizeof(line), f)) {
    unsigned long long lo = 0, hi = 0, inode = 0;
    char perms[8] = {}, name[4096] = {};
    int consumed = 0;
    if (sscanf(line, "%llx-%llx %7s %*s %*s %llu%n", &lo, &hi, perms, &inode, &consumed) < 4)
      continue;
    if (hi <= covered) continue;
    if (lo > covered) break;  // a hole
    sscanf(line + consumed, " %4095[^\n]", name);
    std::string n(name);
    bool anon =
        inode == 0 && perms[3] == 'p' &&
        (n.empty() || n == "[heap]" || n.rfind("[stack", 0) == 0 || n.rfind("[anon:", 0) == 0);
    if (!anon) break;
    covered = hi;
  }
  fclose(f);
  return covered >= end;
}
}  // namespace

bool KernelNotifierSource::Available(const std::string& device) {
  struct stat st;
  return stat(device.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

absl::StatusOr<std::unique_ptr<KernelNotifierSource>> KernelNotifierSource::Open(
    SegmentRegistry* registry, InvalidationCoordinator* coordinator, const std::string& device) {
  int fd = open(device.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "open " + device);
  tether_version v{};
  if (ioctl(fd, TETHER_IOC_GET_VERSION, &v) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, device + ": GET_VERSION");
  }
  if (v.abi_version != TETHER_ABI_VERSION || v.event_size != sizeof(tether_event) ||
      !(v.features & TETHER_FEAT_SEQ)) {
    close(fd);
    return ErrnoStatus(EPROTO, absl::StrFormat("%s: module ABI %d, event size %d, features %#x; "
                                               "this daemon needs ABI %d, size %d, SEQ",
                                               device, v.abi_version, v.event_size, v.features,
                                               TETHER_ABI_VERSION, sizeof(tether_event)));
  }
  if (ioctl(fd, TETHER_IOC_CONTROL) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, device + ": CONTROL");
  }
  int stop_fd = eventfd(0, EFD_CLOEXEC);
  int ping_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0 || ping_fd < 0) {
    int err = errno;
    close(fd);
    if (stop_fd >= 0) close(stop_fd);
    if (ping_fd >= 0) close(ping_fd);
    return ErrnoStatus(err, "eventfd");
  }
  // The deadline (plus a fenced node's lease) against the module's
  // ack_timeout_ms is checked once, at start-up (main.cc), which refuses a
  // configuration the module would cut short.
  return std::unique_ptr<KernelNotifierSource>(new KernelNotifierSource(
      registry, coordinator, fd, stop_fd, ping_fd, (v.features & TETHER_FEAT_DIRECT) != 0,
      (v.features & TETHER_FEAT_WRITE) != 0));
}

KernelNotifierSource::KernelNotifierSource(SegmentRegistry* registry,
                                           InvalidationCoordinator* coordinator, int ctl_fd,
                                           int stop_fd, int ping_fd, bool direct, bool write)
    : registry_(registry),
      coordinator_(coordinator),
      ctl_fd_(ctl_fd),
      stop_fd_(stop_fd),
      ping_fd_(ping_fd),
      direct_(direct),
      write_(write),
      fallback_(registry, coordinator) {}

absl::Status KernelNotifierSource::Start() {
  RETURN_IF_ERROR(fallback_.Start());
  thread_ = std::thread([this] {
    NameThisThread("tt-kn-read");
    Run();
  });
  for (int i = 0; i < kBeginWorkers; ++i) {
    workers_.emplace_back([this] {
      NameThisThread("tt-kn-begin");
      BeginWorker();
    });
  }
  return absl::OkStatus();
}

void KernelNotifierSource::SegmentGone(uint64_t segid, const std::string& why) {
  coordinator_->RevokeAll(segid, why);
  // The module keeps the exporter's range while we hold its fd: close it.
  Forget(segid);
}

KernelNotifierSource::~KernelNotifierSource() {
  Stop();
  close(stop_fd_);
  close(ping_fd_);
}

void KernelNotifierSource::Stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  begins_.Stop();
  for (auto& w : workers_) w.join();
  workers_.clear();
  // BEGINs nobody handled: no window was opened for them, so revoke every
  // mapper of their segments before their exporters go on (closing the
  // control fd below would let them go on too).
  for (const auto& [ev, overflows] : begins_.TakeAll()) RevokeUnhandled(ev);
  fallback_.Stop();
  std::vector<Pending> pending = TakePending(0);
  for (const Pending& p : pending) EndWindow(p, false);
  absl::MutexLock lock(&mu_);
  for (auto& [segid, ex] : by_segid_)
    if (ex->fd >= 0) close(ex->fd);
  by_segid_.clear();
  by_range_.clear();
  // Closing the control fd releases every exporter still waiting on it.
  close(ctl_fd_);
}

absl::Status KernelNotifierSource::AddExporter(uint64_t segid, pid_t pid, int pidfd, int fd,
                                               uint64_t tether_range_id) {
  auto seg = registry_->Get(segid);
  if (!seg.ok()) {
    if (fd >= 0) close(fd);
    close(pidfd);
    return seg.status();
  }
  if (tether_range_id == 0 && fd >= 0) {
    // A userfaultfd (local_api checked the kind): the user-space source.
    {
      absl::MutexLock lock(&mu_);
      fallback_segids_.insert(segid);
    }
    TLOG_INFO(
        "segment %#x: exporter pid %d sent a userfaultfd, not a /dev/tether fd: watched "
        "by the user-space source",
        segid, pid);
    return fallback_.AddExporter(segid, pid, pidfd, fd, 0);
  }
  // The registry watches the exporter's exit through its own pidfd.
  close(pidfd);
  if (fd < 0) {
    TLOG_WARN(
        "segment %#x: exporter pid %d sent no event handle: its memory events cannot be "
        "seen, so no copies of it will be handed out",
        segid, pid);
    return absl::OkStatus();
  }
  // Held across ATTACH and the insertion so that the event thread, which
  // looks ranges up under mu_, cannot see (and drop) this exporter's
  // RELEASE before we know the range.
  absl::MutexLock lock(&mu_);
  tether_attach at{};
  at.fd = fd;
  if (ioctl(ctl_fd_, TETHER_IOC_ATTACH, &at) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, absl::StrFormat("segment %#x: attaching the exporter's /dev/tether "
                                            "fd",
                                            segid));
  }
  // Check what the exporter claims: its range, of the fd it sent, covering
  // the segment.
  tether_range_info info{};
  info.range_id = tether_range_id;
  if (ioctl(ctl_fd_, TETHER_IOC_RANGE_INFO, &info) != 0 || info.exporter_id != at.exporter_id ||
      info.start > seg->vaddr || seg->vaddr + seg->size > info.start + info.len) {
    int err = errno;
    close(fd);  // detaches it again
    return ErrnoStatus(err ? err : EINVAL,
                       absl::StrFormat("segment %#x: tether range %d does not cover the export "
                                       "[%#x, %#x) of this exporter fd",
                                       segid, tether_range_id, seg->vaddr, seg->vaddr + seg->size));
  }
  auto ex = std::make_shared<Export>();
  ex->segid = segid;
  ex->range_id = tether_range_id;
  ex->exporter_id = at.exporter_id;
  ex->fd = fd;
  ex->pid = pid;
  ex->size = seg->size;
  ex->delta = seg->vaddr - info.start;
  by_segid_[segid] = ex;
  by_range_[tether_range_id] = ex;
  TLOG_DEBUG("segment %#x: tether.ko range %d (exporter %d, pid %d)", segid, tether_range_id,
             at.exporter_id, pid);
  return absl::OkStatus();
}

KernelNotifierSource::Found KernelNotifierSource::Lookup(uint64_t segid) {
  Found f;
  absl::MutexLock lock(&mu_);
  f.fallback = fallback_segids_.contains(segid);
  auto it = by_segid_.find(segid);
  if (it != by_segid_.end()) f.ex = it->second;
  return f;
}

absl::StatusOr<std::shared_ptr<KernelNotifierSource::Export>> KernelNotifierSource::Watched(
    uint64_t segid, const Found& f) {
  if (f.ex && f.ex->released)
    return ErrnoStatus(ESRCH,
                       absl::StrFormat("segment %#x: the exporter's address space is gone", segid));
  if (!f.ex)
    return ErrnoStatus(EOPNOTSUPP, absl::StrFormat("segment %#x: the exporter's memory events "
                                                   "cannot be seen (no /dev/tether range "
                                                   "attached): refusing to hand out copies",
                                                   segid));
  return f.ex;
}

absl::Status KernelNotifierSource::BeforeRead(uint64_t segid, uint64_t start, uint64_t end) {
  Found f = Lookup(segid);
  if (f.fallback) return fallback_.BeforeRead(segid, start, end);
  ASSIGN_OR_RETURN(std::shared_ptr<Export> ex, Watched(segid, f));
  return Mark(*ex, segid, start, end, /*always=*/false).status();
}

absl::StatusOr<uint64_t> KernelNotifierSource::Mark(Export& ex, uint64_t segid, uint64_t start,
                                                    uint64_t end, bool always) {
  uint64_t s = start / kPageSize * kPageSize,
           e = std::min<uint64_t>((end + kPageSize - 1) / kPageSize * kPageSize, ex.size);
  if (s >= e) return ErrnoStatus(EINVAL, "empty watch range");
  tether_mark m{};
  m.range_id = ex.range_id;
  m.offset = s + ex.delta;
  m.len = e - s;
  // Marked before: the module forwards every event that overlaps it, so
  // the registry's windows cover this read (the fast path of every fault).
  uint64_t unmarks = 0;
  {
    absl::MutexLock lock(&ex.marks_mu);
    if (!always && ex.marked.Contains(m.offset, m.offset + m.len)) return 0;
    unmarks = ex.unmarks;
  }
  if (ioctl(ctl_fd_, TETHER_IOC_MARK_CACHED, &m) != 0) {
    int err = errno;
    return ErrnoStatus(
        err == ESRCH ? ESRCH : err,
        absl::StrFormat("segment %#x: marking [%#x, %#x) cached in tether.ko", segid, s, e));
  }
  // Odd: an invalidation of the exporter's mm started before the mark and is
  // still running; it was not forwarded and no END will tell us when it ends.
  if (m.seq & 1) return Retry("an invalidation of the exporter's memory is in progress");
  absl::MutexLock lock(&ex.marks_mu);
  if (ex.unmarks == unmarks) ex.marked.Add(m.offset, m.offset + m.len);
  return m.seq;
}

absl::StatusOr<SegmentObserver::WriteGuard> KernelNotifierSource::BeforeWrite(uint64_t segid,
                                                                              uint64_t start,
                                                                              uint64_t end) {
  Found f = Lookup(segid);
  if (f.fallback) return fallback_.BeforeWrite(segid, start, end);
  ASSIGN_OR_RETURN(std::shared_ptr<Export> ex, Watched(segid, f));
  if (!write_) {
    // A module without TETHER_IOC_WRITE: ExporterMemory writes (the gap
    // under MAP_FIXED / mremap stays, bounded; docs/architecture.md).
    RETURN_IF_ERROR(Mark(*ex, segid, start, end, /*always=*/false).status());
    return WriteGuard{};
  }
  // Always asked (one ioctl per write-back, never on the fault path): the
  // sequence the module checks the write against.
  ASSIGN_OR_RETURN(uint64_t seq, Mark(*ex, segid, start, end, /*always=*/true));
  RETURN_IF_ERROR(EventsSeen(*ex));
  return WriteGuard{true, seq};
}

absl::Status KernelNotifierSource::EventsSeen(const Export& ex) {
  // The module checks the write against changes after the MARK. A change
  // before it is the registry's to know (a window, or RecordChange), but
  // only once this daemon read and handled its BEGIN: one the module gave
  // up waiting for (LATE) may be complete already, the write-back checked
  // after it, and the MARK taken after it too. So every event queued
  // before the MARK must have been handled by now. In this order: an event
  // still queued makes the control fd readable; one read since is being
  // handled while reading_ is set (set before the read, cleared after the
  // batch was handled); a blockable BEGIN handed to a worker is in
  // in_flight_ until its window is open or the change recorded.
  // One poll(2) and one mutex per write-back (not the fault path); Retry
  // sends the mapper back, for the moment the event thread needs.
  pollfd p{ctl_fd_, POLLIN, 0};
  const int n = PollNow(&p, 1);
  if (n < 0 || (n > 0 && (p.revents & POLLIN)))  // queued, or cannot tell: later
    return Retry("tether.ko has events this daemon has not read yet");
  if (reading_) return Retry("this daemon is handling tether.ko events");
  absl::MutexLock lock(&mu_);
  for (const auto& [id, f] : in_flight_)
    if (f.range_id == ex.range_id) return Retry("a BEGIN of the range waits for a worker");
  return absl::OkStatus();
}

absl::Status KernelNotifierSource::GuardedWrite(uint64_t segid, const WriteGuard& guard,
                                                absl::Span<const WritePiece> pieces) {
  Found f = Lookup(segid);
  if (f.fallback || !write_ || !guard.guarded)
    return absl::InternalError("GuardedWrite without a guard from tether.ko");
  // Gone since the guard (the exporter fd was closed): checked again.
  if (!f.ex) return ErrnoStatus(ESTALE, "the segment's tether.ko range is gone");
  const Export& ex = *f.ex;
  std::vector<tether_write_seg> segs;
  segs.reserve(std::min<size_t>(pieces.size(), TETHER_WRITE_MAX_SEGS));
  size_t i = 0;
  while (i < pieces.size()) {
    segs.clear();
    for (; i < pieces.size() && segs.size() < TETHER_WRITE_MAX_SEGS; ++i) {
      tether_write_seg g{};
      g.offset = pieces[i].offset + ex.delta;
      g.len = pieces[i].data.size();
      g.buf = reinterpret_cast<uint64_t>(pieces[i].data.data());
      segs.push_back(g);
    }
    tether_write w{};
    w.range_id = ex.range_id;
    w.seq = guard.seq;
    w.segs = reinterpret_cast<uint64_t>(segs.data());
    w.nr_segs = static_cast<uint32_t>(segs.size());
    int rc = ioctl(ctl_fd_, TETHER_IOC_WRITE, &w);
    int err = rc != 0 ? errno : 0;
    CountBytes(Counters().exporter_copy_bytes, w.written);
    switch (err) {
      case 0: break;
      case ESTALE:
        return ErrnoStatus(ESTALE, "tether.ko: the exporter's memory changed since the check");
      case ENOENT: return ErrnoStatus(ESTALE, "the segment's tether.ko range is gone");
      case ESRCH: return ErrnoStatus(ESRCH, "the exporter exited or exec'd");
      case EACCES: return ErrnoStatus(EACCES, "exporter mapping is not writable");
      // Nothing mapped there (or nothing to be had): the write-back has
      // nowhere to go (ExporterMemory::Refused's answer).
      case EFAULT: return ErrnoStatus(ENXIO, "exporter address not mapped");
      default: return ErrnoStatus(err, "tether.ko: WRITE");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> KernelNotifierSource::DirectAttach(uint64_t segid, uint64_t offset,
                                                       uint64_t len, bool writable) {
  Found f = Lookup(segid);
  std::shared_ptr<Export> ex = f.ex;
  if (f.fallback) return fallback_.DirectAttach(segid, offset, len, writable);
  if (!direct_)
    return absl::UnimplementedError("tether.ko has no direct attachments (TETHER_FEAT_DIRECT)");
  if (!ex)
    return absl::UnimplementedError(
        absl::StrFormat("segment %#x: no /dev/tether range of its exporter", segid));
  if (ex->released)
    return ErrnoStatus(ESRCH,
                       absl::StrFormat("segment %#x: the exporter's address space is gone", segid));
  ASSIGN_OR_RETURN(auto seg, registry_->Get(segid));
  ASSIGN_OR_RETURN(bool anon, AllAnonymous(ex->pid, seg.vaddr + offset, seg.vaddr + offset + len));
  if (!anon)
    return absl::FailedPreconditionError(absl::StrFormat(
        "segment %#x: [%#x, +%#x) is not all anonymous private memory of the exporter", segid,
        offset, len));
  tether_direct d{};
  d.range_id = ex->range_id;
  d.offset = offset + ex->delta;
  d.len = len;
  d.flags = writable ? TETHER_DIRECT_WRITE : 0;
  d.fd = -1;
  if (ioctl(ctl_fd_, TETHER_IOC_DIRECT_ATTACH, &d) != 0) {
    int err = errno;
    // The exporter fd was closed meanwhile (segment gone): as a released one.
    return ErrnoStatus(
        err == ENOENT ? ESRCH : err,
        absl::StrFormat("segment %#x: DIRECT_ATTACH [%#x, +%#x)", segid, offset, len));
  }
  return d.fd;
}

void KernelNotifierSource::Forget(uint64_t segid) {
  std::shared_ptr<Export> ex;
  {
    absl::MutexLock lock(&mu_);
    fallback_segids_.erase(segid);
    auto it = by_segid_.find(segid);
    if (it == by_segid_.end()) return;
    ex = it->second;
    by_segid_.erase(it);
    by_range_.erase(ex->range_id);
  }
  for (const Pending& p : TakePending(ex->range_id)) EndWindow(p, true);
  {
    absl::MutexLock lock(&mu_);
    absl::erase_if(windowless_, [&](const auto& kv) { return kv.second == ex->range_id; });
  }
  // The module unregisters the range; its RELEASE (not waited for) finds no
  // range any more and is only acked.
  close(ex->fd);
}

std::shared_ptr<KernelNotifierSource::Export> KernelNotifierSource::FindRange(uint64_t range_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_range_.find(range_id);
  return it == by_range_.end() ? nullptr : it->second;
}

std::vector<KernelNotifierSource::Pending> KernelNotifierSource::TakePending(uint64_t range_id) {
  absl::MutexLock lock(&mu_);
  std::vector<Pending> out, keep;
  for (Pending& p : pending_) (range_id == 0 || p.range_id == range_id ? out : keep).push_back(p);
  pending_ = std::move(keep);
  return out;
}

absl::Status KernelNotifierSource::Ping(absl::Duration timeout) {
  uint64_t seen;
  {
    absl::MutexLock lock(&turns_mu_);
    if (!ended_.empty()) return absl::InternalError(ended_);
    seen = turns_;
  }
  uint64_t one = 1;
  (void)!write(ping_fd_, &one, sizeof(one));
  absl::MutexLock lock(&turns_mu_);
  auto turned = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(turns_mu_) {
    return turns_ != seen || !ended_.empty();
  };
  if (!turns_mu_.AwaitWithTimeout(absl::Condition(&turned), timeout))
    return absl::DeadlineExceededError(
        absl::StrCat("tether.ko events: the event thread has not come round its loop in ",
                     absl::FormatDuration(timeout), " (held in an event's handling)"));
  if (!ended_.empty()) return absl::InternalError(ended_);
  return absl::OkStatus();
}

void KernelNotifierSource::Run() {
  event_thread_.Bind();
  tether_event evs[16];
  auto end = [this](std::string why) {
    TLOG_ERROR("%s", why);
    absl::MutexLock lock(&turns_mu_);
    ended_ = std::move(why);
  };
  while (!stopping_) {
    pollfd p[3] = {{ctl_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}, {ping_fd_, POLLIN, 0}};
    int n = poll(p, 3, -1);
    if (n < 0 && errno == EINTR) continue;
    if (p[1].revents) break;
    if (n < 0) {
      end(absl::StrCat("tether.ko control fd: poll: ", strerror(errno),
                       "; kernel events are no longer seen"));
      break;
    }
    if (p[0].revents & (POLLERR | POLLNVAL)) {
      end(absl::StrFormat("tether.ko control fd: poll error %#x; kernel events are no longer seen",
                          p[0].revents));
      break;
    }
    if (p[2].revents) {  // a watchdog's Ping: this turn answers it
      uint64_t v;
      (void)!read(ping_fd_, &v, sizeof(v));
    }
    if (!(p[0].revents & POLLIN)) {
      absl::MutexLock lock(&turns_mu_);
      ++turns_;
      continue;
    }
    // Held here (tests), no lock held: events are queued and not read yet
    // (the module's wait for an ack runs out meanwhile: a LATE BEGIN).
    TETHER_FAULT_POINT("kernel_notifier.event_thread.before_read");
    while (!stopping_) {
      // Before the read, until the batch was handled (EventsSeen).
      reading_ = true;
      ssize_t r = read(ctl_fd_, evs, sizeof(evs));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;  // EAGAIN: drained
      for (size_t i = 0; i < static_cast<size_t>(r) / sizeof(tether_event); ++i)
        HandleEvent(evs[i]);
    }
    reading_ = false;
    absl::MutexLock lock(&turns_mu_);
    ++turns_;
  }
}

void KernelNotifierSource::HandleEvent(const tether_event& ev) {
  event_thread_.AssertHere();
  TLOG_DEBUG("tether.ko event %d: kind %d type %d flags %#x range %d [%#x, %#x) seq %d begin %d",
             ev.event_id, ev.kind, ev.type, ev.flags, ev.range_id, ev.start, ev.end, ev.seq,
             ev.begin_id);
  switch (ev.kind) {
    case TETHER_KIND_BEGIN: {
      BeginEvent b{ev.event_id, ev.range_id, ev.start, ev.end, ev.type, ev.flags, absl::Now()};
      uint64_t overflows;
      const bool blockable = ev.flags & TETHER_EVF_BLOCKABLE;
      {
        absl::MutexLock lock(&mu_);
        overflows = overflows_;
        // Before the queue: its END may be read while a worker still waits.
        if (blockable) in_flight_[ev.event_id] = InFlight{ev.range_id, false};
      }
      if (!blockable) {
        HandleBegin(b, overflows);  // never waits (G4, LATE)
      } else if (!begins_.Push({b, overflows})) {
        {
          absl::MutexLock lock(&mu_);
          in_flight_.erase(ev.event_id);
        }
        RevokeUnhandled(b);  // stopping: nobody will handle it
      }
      break;
    }
    case TETHER_KIND_END: HandleEnd(ev); break;
    case TETHER_KIND_RELEASE: HandleRelease(ev); break;
    case TETHER_KIND_OVERFLOW: HandleOverflow(ev); break;
    default: TLOG_WARN("tether.ko: unknown event kind %d", ev.kind);
  }
}

void KernelNotifierSource::Ack(uint64_t event_id) {
  tether_ack a{};
  a.event_id = event_id;
  // ENOENT: nobody waits any more (timed out, non-blockable): harmless.
  if (ioctl(ctl_fd_, TETHER_IOC_ACK, &a) != 0 && errno != ENOENT)
    TLOG_WARN("tether.ko: ACK of event %d: %s", event_id, strerror(errno));
}

void KernelNotifierSource::BeginWorker() {
  while (auto job = begins_.Pop()) HandleBegin(job->first, job->second);
}

void KernelNotifierSource::Windowless(uint64_t event_id, uint64_t range_id) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(event_id);
  bool ended = it != in_flight_.end() && it->second.ended;
  if (it != in_flight_.end()) in_flight_.erase(it);
  if (!ended) windowless_[event_id] = range_id;
}

void KernelNotifierSource::RevokeRange(Export& ex, uint64_t start, uint64_t end, uint32_t type,
                                       const std::string& why) {
  // No window covers it: reads must ask the module again (odd sequence)
  // instead of trusting the cached mark. The module's mark stays.
  ex.Forget(start / kPageSize * kPageSize, (end + kPageSize - 1) / kPageSize * kPageSize);
  // The change happened (or will) without a window: the registry records
  // it as one opened and closed, so that a write-back past its checks
  // before it is refused and checked again (issue 14: a LATE BEGIN), and
  // an unmap is recorded gone in every grant.
  uint64_t s = start > ex.delta ? start - ex.delta : 0;
  uint64_t e = end > ex.delta ? std::min<uint64_t>(end - ex.delta, ex.size) : 0;
  if (s < e) registry_->RecordChange(ex.segid, s, e, type == TETHER_EV_UNMAP);
  coordinator_->RevokeAll(ex.segid, why);
}

void KernelNotifierSource::RevokeUnhandled(const BeginEvent& ev) {
  std::shared_ptr<Export> ex = FindRange(ev.range_id);
  if (ex) {
    TLOG_WARN(
        "segment %#x: %s of [%#x, %#x) not handled before stopping: revoking all "
        "attachments",
        ex->segid, TypeName(ev.type), ev.start, ev.end);
    RevokeRange(*ex, ev.start, ev.end, ev.type, "home daemon stopped during an invalidation");
  }
  Ack(ev.event_id);
}

void KernelNotifierSource::HandleBegin(const BeginEvent& ev, uint64_t overflows) {
  std::shared_ptr<Export> ex = FindRange(ev.range_id);
  if (!ex) {
    Windowless(ev.event_id, ev.range_id);
    Ack(ev.event_id);
    return;
  }
  // Range offsets -> segment offsets, clamped to the segment.
  uint64_t s = ev.start > ex->delta ? ev.start - ex->delta : 0;
  uint64_t e = ev.end > ex->delta ? std::min<uint64_t>(ev.end - ex->delta, ex->size) : 0;
  if (s >= e) {
    Windowless(ev.event_id, ev.range_id);
    Ack(ev.event_id);
    return;
  }
  if (!(ev.flags & TETHER_EVF_BLOCKABLE)) {
    // G4 (or LATE): the kernel is not waiting and may already be freeing
    // the pages. Never wait here either: revoke every mapper, without a
    // window.
    const bool late = ev.flags & TETHER_EVF_LATE;
    TLOG_INFO("segment %#x: %s %s of [%#x, %#x) (%s): revoking all attachments asynchronously",
              ex->segid, late ? "late" : "non-blockable", TypeName(ev.type), s, e,
              late ? "the kernel stopped waiting before this daemon read it" : "OOM reaper");
    Windowless(ev.event_id, ev.range_id);
    RevokeRange(*ex, ev.start, ev.end, ev.type,
                late ? "exporter's memory changed without waiting for this node (late event)"
                     : "exporter's memory torn down (OOM)");
    // Held here (tests): the windowless BEGIN was handled.
    TETHER_FAULT_POINT("kernel_notifier.windowless_begin.handled");
    Ack(ev.event_id);
    return;
  }
  // The budget runs from when the event thread read the BEGIN: one that
  // waited in the queue behind windows held up by a frozen mapper gets only
  // what is left; if nothing is, the kernel is about to go on (or went on)
  // without us, so revoke instead of opening a window nobody may close.
  const absl::Time deadline = ev.read_at + coordinator_->ack_deadline();
  if (absl::Now() >= deadline) {
    TLOG_WARN("segment %#x: %s of [%#x, %#x) waited %d ms for a worker: revoking all attachments",
              ex->segid, TypeName(ev.type), s, e,
              absl::ToInt64Milliseconds(absl::Now() - ev.read_at));
    // Recorded before it leaves in_flight_ (EventsSeen).
    RevokeRange(*ex, ev.start, ev.end, ev.type, "invalidation not handled within the deadline");
    Windowless(ev.event_id, ev.range_id);
    Ack(ev.event_id);
    return;
  }
  // Only an UNMAP waits for write-backs in flight over the range: the
  // other types hold mmap_lock for write or come from the write itself
  // (a COW break); invalidation_coordinator.h, "Write-backs in flight".
  auto w = coordinator_->Begin(
      ex->segid, s, e, TypeName(ev.type), deadline,
      ev.type == TETHER_EV_UNMAP ? InFlightWrites::kAwait : InFlightWrites::kDoNotAwait);
  if (!w.ok()) {
    Windowless(ev.event_id, ev.range_id);
    Ack(ev.event_id);
    return;
  }
  Pending p{ev.event_id, ev.range_id, ev.start, ev.end, ev.type, s, e, *w};
  bool orphaned, ended;
  {
    // Under mu_, as HandleEnd/HandleRelease/HandleOverflow/Forget take the
    // pending windows and mark in-flight ones: either they see this window,
    // or we see what they did.
    absl::MutexLock lock(&mu_);
    auto f = in_flight_.find(ev.event_id);
    ended = f != in_flight_.end() && f->second.ended;
    if (f != in_flight_.end()) in_flight_.erase(f);
    auto it = by_range_.find(ev.range_id);
    orphaned = ex->released || overflows_ != overflows || it == by_range_.end() || it->second != ex;
    if (!orphaned && !ended) pending_.push_back(p);
    // Orphaned, END still to come: it finds the window gone and must not
    // take that for a lost event.
    if (orphaned && !ended) windowless_[ev.event_id] = ev.range_id;
  }
  // Released, forgotten or flushed while we waited, or the END came while
  // Begin() ran (the module stopped waiting): nobody else ends the window.
  if (orphaned || ended) EndWindow(p, ex->released || (ended && p.type == TETHER_EV_UNMAP));
  // The exporter's call goes on now: every mapper acked or was fenced.
  Ack(ev.event_id);
}

void KernelNotifierSource::HandleEnd(const tether_event& ev) {
  event_thread_.AssertHere();  // ENDs in the order the module queued them
  Pending p;
  bool found = false;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->begin_id == ev.begin_id) {
        p = std::move(*it);
        pending_.erase(it);
        found = true;
        break;
      }
    }
    if (!found) {
      auto f = in_flight_.find(ev.begin_id);
      if (f != in_flight_.end()) {
        f->second.ended = true;  // its worker ends the window after Begin()
        return;
      }
      if (windowless_.erase(ev.begin_id)) return;  // G4, LATE, revoked, no segment
    }
  }
  if (found) {
    EndWindow(p, p.type == TETHER_EV_UNMAP);
    return;
  }
  // This daemon never saw the BEGIN (or not as such): an event was lost.
  // The range may have changed under every mapper: revoke, never ignore.
  std::shared_ptr<Export> ex = FindRange(ev.range_id);
  if (!ex || ex->released) return;  // forgotten or gone: nothing is cached
  TLOG_WARN(
      "segment %#x: END of %s of [%#x, %#x) without its BEGIN (event %d): revoking all "
      "attachments",
      ex->segid, TypeName(ev.type), ev.start, ev.end, ev.begin_id);
  RevokeRange(*ex, ev.start, ev.end, ev.type, "lost kernel event");
}

std::vector<std::pair<uint64_t, uint64_t>> KernelNotifierSource::Unmarkable(const Export* ex,
                                                                            uint64_t start,
                                                                            uint64_t end) {
  IntervalSet out;
  out.Add(start, end);
  if (!ex) return out.ToVector();
  // Segment offsets of [start, end) (range offsets), clamped to the segment.
  uint64_t s = start > ex->delta ? start - ex->delta : 0;
  uint64_t e = end > ex->delta ? std::min<uint64_t>(end - ex->delta, ex->size) : 0;
  if (s >= e) return out.ToVector();
  for (const auto& [c0, c1] : registry_->WritableCopies(ex->segid, s, e))
    out.Remove(c0 / kPageSize * kPageSize + ex->delta,
               (c1 + kPageSize - 1) / kPageSize * kPageSize + ex->delta);
  return out.ToVector();
}

void KernelNotifierSource::EndWindow(const Pending& p, bool gone) {
  // Nobody caches the range any more (OpenWindow dropped every node's
  // marks): unmark it in the module (G3) while the window still refuses
  // reads, so that no read after End() loses its mark — except where a
  // writable grant may still hold a dirty copy (Unmarkable): a writer
  // keeps a page kept aside past the window when its write-back fails or
  // is on its way, and an unmarked range's later munmap / MAP_FIXED /
  // mremap would not be forwarded, so nothing would stop that write-back
  // landing in the new mapping (issue 14).
  if (!stopping_) {
    const uint64_t r0 = p.start / kPageSize * kPageSize,
                   r1 = (p.end + kPageSize - 1) / kPageSize * kPageSize;
    std::shared_ptr<Export> ex = FindRange(p.range_id);
    for (const auto& [u0, u1] : Unmarkable(ex.get(), r0, r1)) {
      tether_mark m{};
      m.range_id = p.range_id;
      m.offset = u0;
      m.len = u1 - u0;
      if (ex) ex->Forget(u0, u1);
      if (ioctl(ctl_fd_, TETHER_IOC_UNMARK_CACHED, &m) != 0 && errno != ENOENT && errno != ESRCH)
        TLOG_DEBUG("tether.ko: UNMARK range %d: %s", p.range_id, strerror(errno));
      // Bump again: a BeforeRead() that read the count between the two bumps may
      // have MARKed before this UNMARK, and must not cache its mark.
      if (ex) ex->Forget(u0, u1);
    }
  }
  std::vector<std::pair<uint64_t, uint64_t>> gone_offsets;
  if (gone) gone_offsets.emplace_back(p.seg_start, p.seg_end);
  coordinator_->End(p.window, gone_offsets);
}

void KernelNotifierSource::HandleRelease(const tether_event& ev) {
  event_thread_.AssertHere();
  std::shared_ptr<Export> ex = FindRange(ev.range_id);
  if (ex && !ex->released.exchange(true)) {
    // The exporter's address space is gone (exit, exec) or its fd closed:
    // revoke before acking, so that exit() returns after revocations went
    // out. The registry's exit path (pidfd) marks the segment gone too.
    coordinator_->RevokeAll(ex->segid, "exporter exited");
    for (const Pending& p : TakePending(ex->range_id)) EndWindow(p, true);
    absl::MutexLock lock(&mu_);
    absl::erase_if(windowless_, [&](const auto& kv) { return kv.second == ex->range_id; });
  }
  Ack(ev.event_id);
  // The exporter fd stays open until Forget() (the registry's gone callback,
  // after the pidfd reported the exit): closing it here, right after the
  // ack, would run mmu_notifier_unregister() while exit_mmap() is still
  // inside the module's release callback, which then runs twice.
}

void KernelNotifierSource::HandleOverflow(const tether_event& ev) {
  event_thread_.AssertHere();
  TLOG_WARN("tether.ko: events were lost (OVERFLOW): invalidating every exported range");
  // ENDs may be among the lost events: end every open window. Reads stay
  // refused while the kernel is still inside an invalidation (odd MARK seq).
  // A BEGIN still in a worker ends its own window (overflows_ changed).
  {
    absl::MutexLock lock(&mu_);
    ++overflows_;
  }
  for (const Pending& p : TakePending(0)) {
    {
      // Its END may still come: expected, not a lost event.
      absl::MutexLock lock(&mu_);
      windowless_[p.begin_id] = p.range_id;
    }
    EndWindow(p, false);
  }
  std::vector<std::shared_ptr<Export>> all;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [segid, ex] : by_segid_) all.push_back(ex);
  }
  for (auto& ex : all) {
    // Not waiting for write-backs: the lost events may include one that a
    // write-back in flight caused (a COW break) and waits for.
    auto w = coordinator_->Begin(ex->segid, 0, ex->size, "lost kernel events",
                                 absl::InfiniteFuture(), InFlightWrites::kDoNotAwait);
    if (!w.ok()) continue;
    Pending p{0, ex->range_id, ex->delta, ex->delta + ex->size, 0, 0, ex->size, *w};
    EndWindow(p, false);
  }
  // A BLOCKABLE OVERFLOW holds invalidations whose events were lost until
  // now, when every range has been invalidated (for others: ENOENT).
  Ack(ev.event_id);
}

}  // namespace tether
