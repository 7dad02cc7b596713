#include "daemon/notifier/uffd_notifier_source.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"
#include "daemon/common/poll_now.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"

namespace tether {
namespace {
// REMOVE arrives before the zap and nothing marks the zap's end: the home
// keeps the window open until pagemap shows the pages gone, at most this.
// Not a bound on the zap: a window closed at this limit with the old frames
// still there lets a mapper refetch them — a lapse of G1 that only
// tether.ko closes (it sees the zap's end).
constexpr absl::Duration kZapWait = absl::Milliseconds(50);
// Segments of one exporter whose range_begins run at once (one thread each).
constexpr size_t kMaxConcurrentBegins = 64;
// Segments up to this size get a pagemap snapshot before events are read.
constexpr uint64_t kSnapshotLimit = uint64_t{256} << 20;
// Segments up to this size are registered whole at their first read.
constexpr uint64_t kEagerRegisterLimit = uint64_t{64} << 30;
}  // namespace

UffdNotifierSource::Exporter::~Exporter() {
  for (int fd : {uffd, pidfd, pagemap, maps, stop_fd})
    if (fd >= 0) close(fd);
}

UffdNotifierSource::UffdNotifierSource(SegmentRegistry* registry,
                                       InvalidationCoordinator* coordinator)
    : registry_(registry), coordinator_(coordinator) {}

UffdNotifierSource::~UffdNotifierSource() { Stop(); }

void UffdNotifierSource::Stop() {
  if (stopping_.exchange(true)) return;
  absl::MutexLock lock(&mu_);
  for (auto& [pid, ex] : exporters_) {
    uint64_t one = 1;
    (void)!write(ex->stop_fd, &one, sizeof(one));
  }
  mu_.Await(absl::Condition(
      +[](int* r) { return *r == 0; }, &running_));
  exporters_.clear();
  segments_.clear();
}

absl::Status UffdNotifierSource::AddExporter(uint64_t segid, pid_t pid, int pidfd, int fd,
                                             uint64_t /*tether_range_id*/) {
  auto seg = registry_->Get(segid);
  if (!seg.ok()) {
    if (fd >= 0) close(fd);
    close(pidfd);
    return seg.status();
  }
  absl::MutexLock lock(&mu_);
  auto it = exporters_.find(pid);
  if (it != exporters_.end()) {
    // One userfaultfd per exporter mm: a range can be registered with one.
    if (fd >= 0) close(fd);
    close(pidfd);
    segments_[segid] = {it->second, seg->vaddr, seg->size};
    return absl::OkStatus();
  }
  if (fd < 0) {
    close(pidfd);
    TLOG_WARN(
        "segment %#x: exporter pid %d sent no userfaultfd: its memory events cannot be "
        "seen, so no copies of it will be handed out",
        segid, pid);
    return absl::OkStatus();
  }
  auto ex = std::make_shared<Exporter>();
  ex->pid = pid;
  ex->uffd = fd;
  ex->pidfd = pidfd;
  std::string path = absl::StrFormat("/proc/%d/pagemap", pid);
  ex->pagemap = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ex->maps = open(absl::StrFormat("/proc/%d/maps", pid).c_str(), O_RDONLY | O_CLOEXEC);
  ex->stop_fd = eventfd(0, EFD_CLOEXEC);
  pollfd p{pidfd, POLLIN, 0};
  if (ex->pagemap < 0 || ex->maps < 0 || ex->stop_fd < 0 || PollNow(&p, 1) != 0)
    return ErrnoStatus(ex->pagemap < 0 || ex->maps < 0 ? errno : ESRCH, "watch exporter " + path);
  exporters_[pid] = ex;
  segments_[segid] = {ex, seg->vaddr, seg->size};
  ++running_;
  std::thread([this, ex] {
    NameThisThread("tt-uffd");
    Run(ex);
  }).detach();
  return absl::OkStatus();
}

absl::Status UffdNotifierSource::Start() { return absl::OkStatus(); }  // threads: per exporter

void UffdNotifierSource::SegmentGone(uint64_t segid, const std::string& why) {
  coordinator_->RevokeAll(segid, why);
}

absl::StatusOr<int> UffdNotifierSource::DirectAttach(uint64_t segid, uint64_t, uint64_t, bool) {
  return absl::UnimplementedError(
      absl::StrFormat("segment %#x: direct attachments need tether.ko", segid));
}

absl::Status UffdNotifierSource::BeforeRead(uint64_t segid, uint64_t start, uint64_t end) {
  SegmentWatch w;
  {
    absl::MutexLock lock(&mu_);
    auto it = segments_.find(segid);
    if (it == segments_.end())
      return ErrnoStatus(EOPNOTSUPP,
                         absl::StrFormat("segment %#x: the exporter's memory events cannot be "
                                         "seen (it sent no userfaultfd and tether.ko is not "
                                         "loaded): refusing to hand out copies",
                                         segid));
    w = it->second;
  }
  Exporter& ex = *w.exporter;
  uint64_t a0 = w.vaddr + start, a1 = w.vaddr + end;
  absl::MutexLock lock(&ex.mu);
  if (ex.registered.Contains(a0, a1)) return absl::OkStatus();
  // Whole segment first; if part of it is unmapped now, just what is read.
  // A segment that spans much of the address space (XPMEM's whole-space
  // exports) gets only what is read: registering it all would fail on its
  // file and special mappings, and would turn every free of the exporter's
  // into an event.
  //
  // A registration skips holes, and nothing registers a mapping made in a
  // hole later. So only what was mapped before the registration and still
  // is after it counts as watched, and those parts are registered once
  // more (covering a mapping that replaced one in between). The read goes
  // on only if all of [a0, a1) is watched.
  std::pair<uint64_t, uint64_t> tries[2] = {{w.vaddr, w.vaddr + w.size}, {a0, a1}};
  int err = 0;
  for (size_t i = w.size <= kEagerRegisterLimit ? 0 : 1; i < 2; ++i) {
    auto [r0, r1] = tries[i];
    uffdio_register reg{};
    reg.range = {r0, r1 - r0};
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    IntervalSet before, after;
    if (!ReadMapped(ex, r0, r1, &before)) {
      err = EIO;
      break;
    }
    if (ioctl(ex.uffd, UFFDIO_REGISTER, &reg) != 0) {
      err = errno;
      continue;
    }
    if (!ReadMapped(ex, r0, r1, &after)) {
      err = EIO;
      break;
    }
    for (auto [m0, m1] : after.ToVector()) {
      for (auto [b0, b1] : before.Intersect(m0, m1)) {
        uffdio_register again{};
        again.range = {b0, b1 - b0};
        again.mode = UFFDIO_REGISTER_MODE_WP;
        if (ioctl(ex.uffd, UFFDIO_REGISTER, &again) == 0) ex.registered.Add(b0, b1);
      }
    }
    if (ex.registered.Contains(a0, a1)) return absl::OkStatus();
    return ErrnoStatus(EFAULT, absl::StrFormat("segment %#x: the exporter has no mapping at part "
                                               "of [%#x, %#x) (or it changed while being "
                                               "watched)",
                                               segid, a0, a1));
  }
  if (err == EIO)
    return ErrnoStatus(EIO, absl::StrFormat("segment %#x: cannot read the exporter's mappings "
                                            "(/proc/%d/maps)",
                                            segid, ex.pid));
  return ErrnoStatus(err,
                     absl::StrFormat("segment %#x: cannot watch exporter range [%#x, %#x) with "
                                     "userfaultfd (only anonymous, shmem and hugetlb memory can be "
                                     "watched without tether.ko)",
                                     segid, a0, a1));
}

absl::Status UffdNotifierSource::Ping(absl::Duration) {
  if (stopping_) return absl::UnavailableError("the userfaultfd notifier source is stopping");
  return absl::OkStatus();
}

void UffdNotifierSource::Run(std::shared_ptr<Exporter> ex) {
  while (!stopping_) {
    pollfd p[3] = {{ex->uffd, POLLIN, 0}, {ex->pidfd, POLLIN, 0}, {ex->stop_fd, POLLIN, 0}};
    int n = poll(p, 3, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || p[1].revents || p[2].revents) break;
    if (p[0].revents & (POLLERR | POLLHUP)) break;
    if (p[0].revents & POLLIN) HandleEvents(*ex);
  }
  absl::MutexLock lock(&mu_);
  auto it = exporters_.find(ex->pid);
  if (it != exporters_.end() && it->second == ex) exporters_.erase(it);
  for (auto s = segments_.begin(); s != segments_.end();) {
    if (s->second.exporter == ex)
      segments_.erase(s++);
    else
      ++s;
  }
  --running_;
}

void UffdNotifierSource::HandleEvents(Exporter& ex) {
  // The exporter's thread waits in the kernel until we read its event. We
  // cannot know the range before reading, so every segment of this
  // exporter gets a window first (segments nobody caches cost nothing).
  absl::Time t0 = absl::Now();
  std::vector<SegmentRange> segs = registry_->SegmentsOf(ex.pid, 0, uint64_t{1} << 62);
  std::vector<std::optional<InvalidationWindow>> opened(segs.size());
  // The segments' fan-outs run concurrently, so that a mapper frozen in
  // N of them costs the exporter one ack deadline, not N (issue 14, defect
  // 8): Begin waits, so each runs on a thread of its own (up to
  // kMaxConcurrentBegins; beyond that, one deadline per that many). One
  // segment, the usual case, starts no thread.
  std::atomic<size_t> next{0};
  auto begin_some = [&] {
    for (size_t i; (i = next.fetch_add(1)) < segs.size();) {
      const SegmentRange& s = segs[i];
      auto w = coordinator_->Begin(s.segid, s.start, s.end, "exporter memory event");
      if (w.ok()) opened[i] = *std::move(w);
    }
  };
  std::vector<std::thread> helpers;
  for (size_t i = 1; i < std::min(segs.size(), kMaxConcurrentBegins); ++i) {
    try {
      helpers.emplace_back([&] {
        NameThisThread("tt-uffd-begin");
        begin_some();
      });
    } catch (const std::system_error& e) {
      // Out of threads: the ones running take the rest (slower, not wrong).
      TLOG_WARN("pid %d: %d helper thread(s) to begin windows: %s", ex.pid, helpers.size(),
                e.what());
      break;
    }
  }
  begin_some();
  for (auto& t : helpers) t.join();
  std::vector<std::pair<SegmentRange, InvalidationWindow>> windows;
  for (size_t i = 0; i < segs.size(); ++i)
    if (opened[i]) windows.emplace_back(segs[i], *std::move(opened[i]));
  // Before the kernel goes on: which frames back the exporter's segments now
  // (small segments only), so that the end of a REMOVE's zap is recognised
  // even if the exporter touches the pages again at once.
  absl::Time t_acks = absl::Now();
  uint64_t snap_start = 0;
  std::vector<uint64_t> snapshot;
  if (segs.size() == 1 && segs[0].end - segs[0].start <= kSnapshotLimit) {
    snap_start = segs[0].vaddr + segs[0].start;
    if (!ReadPagemap(ex, snap_start, segs[0].vaddr + segs[0].end, &snapshot)) snapshot.clear();
  }
  std::vector<std::pair<uint64_t, uint64_t>> gone, removed;
  absl::Time t_snap = absl::Now();
  uffd_msg msgs[16];
  while (true) {
    ssize_t r = read(ex.uffd, msgs, sizeof(msgs));
    if (r <= 0) break;
    for (size_t i = 0; i < static_cast<size_t>(r) / sizeof(uffd_msg); ++i) {
      const uffd_msg& m = msgs[i];
      if (m.event == UFFD_EVENT_REMOVE) {
        removed.emplace_back(m.arg.remove.start, m.arg.remove.end);
      } else if (m.event == UFFD_EVENT_UNMAP) {
        gone.emplace_back(m.arg.remove.start, m.arg.remove.end);
      } else if (m.event == UFFD_EVENT_REMAP) {
        gone.emplace_back(m.arg.remap.from, m.arg.remap.from + m.arg.remap.len);
      }
    }
  }
  {
    absl::MutexLock lock(&ex.mu);
    for (const auto& [a, b] : gone) ex.registered.Remove(a, b);  // registration went with it
  }
  for (const auto& [a, b] : removed) WaitForZap(ex, a, b, snap_start, snapshot);
  absl::Time t_read = absl::Now();
  for (auto& [s, w] : windows) {
    std::vector<std::pair<uint64_t, uint64_t>> gone_offsets;
    for (const auto& [a, b] : gone) {
      uint64_t g0 = std::max(a, s.vaddr + s.start), g1 = std::min(b, s.vaddr + s.end);
      if (g0 < g1) gone_offsets.emplace_back(g0 - s.vaddr, g1 - s.vaddr);
    }
    coordinator_->End(w, gone_offsets);
  }
  TLOG_DEBUG(
      "pid %d: %d event window(s), %d node(s) asked: acks after %d us, pagemap %d us, "
      "read after %d us, %d us in all",
      ex.pid, windows.size(), windows.empty() ? 0 : windows[0].second.acked.size(),
      absl::ToInt64Microseconds(t_acks - t0), absl::ToInt64Microseconds(t_snap - t_acks),
      absl::ToInt64Microseconds(t_read - t0), absl::ToInt64Microseconds(absl::Now() - t0));
}

bool UffdNotifierSource::ReadMapped(Exporter& ex, uint64_t start, uint64_t end, IntervalSet* out) {
  // maps is a seq_file: read it whole from offset 0 each time.
  std::string text;
  char buf[16384];
  for (off_t off = 0;;) {
    ssize_t n = pread(ex.maps, buf, sizeof(buf), off);
    if (n < 0) return false;
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    off += n;
  }
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    // "start-end perms offset dev inode path", addresses in hex
    size_t dash = line.find('-'), space = line.find(' ');
    uint64_t lo = 0, hi = 0;
    if (dash == absl::string_view::npos || space == absl::string_view::npos || space < dash ||
        !absl::SimpleHexAtoi(line.substr(0, dash), &lo) ||
        !absl::SimpleHexAtoi(line.substr(dash + 1, space - dash - 1), &hi))
      return false;
    lo = std::max(lo, start);
    hi = std::min(hi, end);
    if (lo < hi) out->Add(lo, hi);
  }
  return true;
}

bool UffdNotifierSource::ReadPagemap(Exporter& ex, uint64_t start, uint64_t end,
                                     std::vector<uint64_t>* out) {
  uint64_t pages = (end - start) / kPageSize;
  out->resize(pages);
  ssize_t want = static_cast<ssize_t>(pages * 8);
  return ex.pagemap >= 0 && pread(ex.pagemap, out->data(), pages * 8,
                                  static_cast<off_t>(start / kPageSize * 8)) == want;
}

void UffdNotifierSource::WaitForZap(Exporter& ex, uint64_t start, uint64_t end, uint64_t snap_start,
                                    const std::vector<uint64_t>& snapshot) {
  constexpr uint64_t kPresentOrSwapped = uint64_t{3} << 62;
  constexpr uint64_t kFrame = (uint64_t{1} << 55) - 1;  // PFN or swap entry
  if (end <= start || ex.pagemap < 0) return;
  std::vector<uint64_t> now;
  absl::Time deadline = absl::Now() + kZapWait;
  while (true) {
    if (!ReadPagemap(ex, start, end, &now)) return;
    bool old_frame_left = false;
    for (size_t i = 0; i < now.size() && !old_frame_left; ++i) {
      if (!(now[i] & kPresentOrSwapped)) continue;
      uint64_t idx = (start - snap_start) / kPageSize + i;
      if (start >= snap_start && idx < snapshot.size()) {
        // Present again is fine if it is a new frame (touched after the zap).
        uint64_t before = snapshot[idx];
        old_frame_left = (before & kPresentOrSwapped) && (before & kFrame) == (now[i] & kFrame);
      } else {
        old_frame_left = true;  // no snapshot: only "not present" proves the zap
      }
    }
    if (!old_frame_left) return;
    if (absl::Now() > deadline) {
      TLOG_DEBUG("pid %d: frames of [%#x, %#x) still mapped %d ms after REMOVE", ex.pid, start, end,
                 absl::ToInt64Milliseconds(kZapWait));
      return;
    }
    absl::SleepFor(absl::Microseconds(50));
  }
}

}  // namespace tether
