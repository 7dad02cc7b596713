#include "daemon/home/exporter_memory.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "daemon/common/data_counters.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/poll_now.h"

namespace tether {

pid_t PidOfPidfd(int pidfd) {
  std::string path = absl::StrCat("/proc/self/fdinfo/", pidfd);
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return -1;
  char line[256];
  pid_t pid = -1;
  while (fgets(line, sizeof(line), f)) {
    if (sscanf(line, "Pid:\t%d", &pid) == 1) break;
  }
  fclose(f);
  return pid;
}

absl::StatusOr<std::unique_ptr<ExporterMemory>> ExporterMemory::Open(int pidfd,
                                                                     pid_t expected_pid) {
  pid_t pid = PidOfPidfd(pidfd);
  if (pid <= 0 || pid != expected_pid) {
    close(pidfd);
    return absl::PermissionDeniedError(
        "the pidfd sent with the export does not name the calling process");
  }
  // Opening /proc/<pid>/mem is the ptrace-attach check process_vm_readv and
  // _writev make on every call: fail the export now, with a clear error,
  // rather than every read later. The fd stays bound to this mm: MmGone.
  std::string mem_path = absl::StrCat("/proc/", pid, "/mem");
  int mem_fd = open(mem_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (mem_fd < 0) {
    int err = errno;
    close(pidfd);
    return ErrnoStatus(err, absl::StrCat("open ", mem_path));
  }
  std::string maps_path = absl::StrCat("/proc/", pid, "/maps");
  int maps_fd = open(maps_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (maps_fd < 0) {
    int err = errno;
    close(mem_fd);
    close(pidfd);
    return ErrnoStatus(err, absl::StrCat("open ", maps_path));
  }
  std::unique_ptr<ExporterMemory> m(new ExporterMemory(pid, pidfd, mem_fd, maps_fd));
  // Alive after the opens: the checks were of the process the pidfd pins.
  if (!m->Alive()) return absl::NotFoundError("the exporting process exited during export");
  return m;
}

ExporterMemory::~ExporterMemory() {
  close(maps_fd_);
  close(mem_fd_);
  close(pidfd_);
}

bool ExporterMemory::MmGone(uint64_t addr) const {
  // A read through /proc/<pid>/mem finds nothing (0) once the mm it was
  // opened on has no users: the exporter exited or exec'd. An address
  // unmapped in that mm fails instead (EIO): not gone.
  uint8_t byte;
  ssize_t n;
  do {
    n = pread(mem_fd_, &byte, 1, static_cast<off_t>(addr));
  } while (n < 0 && errno == EINTR);
  return n == 0;
}

bool ExporterMemory::Alive() const {
  pollfd p{pidfd_, POLLIN, 0};
  return PollNow(&p, 1) == 0;  // POLLIN: the process exited
}

namespace {

// Repeats `io(done)` (a process_vm_readv or _writev of what is left at
// `addr + done`; it stops short at the first page it may not access)
// until `len` bytes have moved. On EFAULT, *failed_at is the address.
template <typename Io>
absl::Status Transfer(uint64_t addr, size_t len, const char* what, uint64_t* failed_at, Io io) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = io(done);
    if (n > 0) {
      done += static_cast<size_t>(n);
      CountBytes(Counters().exporter_copy_bytes, static_cast<uint64_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == ESRCH) {
      return ErrnoStatus(ESRCH, "the exporter exited");
    } else if (n < 0 && errno != EFAULT) {
      return ErrnoStatus(errno, what);
    } else {
      *failed_at = addr + done;
      return ErrnoStatus(EFAULT, what);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExporterMemory::Read(uint64_t addr, absl::Span<uint8_t> dst) const {
  uint64_t failed_at = 0;
  absl::Status st =
      Transfer(addr, dst.size(), "read exporter memory", &failed_at, [&](size_t done) {
        iovec local{dst.data() + done, dst.size() - done};
        iovec remote{reinterpret_cast<void*>(addr + done), dst.size() - done};
        return process_vm_readv(pid_, &local, 1, &remote, 1, 0);
      });
  // After the read: if the export's mm is still there, the pid named it
  // during the read (see the header).
  if (MmGone(addr)) return ErrnoStatus(ESRCH, "the exporter exited or exec'd");
  if (ToErrno(st) == EFAULT) return Refused(failed_at, 'r');
  return st;
}

absl::Status ExporterMemory::Write(uint64_t addr, absl::Span<const uint8_t> src) const {
  if (MmGone(addr)) return ErrnoStatus(ESRCH, "the exporter exited or exec'd");
  // Held here (tests): the write is about to be made.
  TETHER_FAULT_POINT("exporter_memory.write.before_write");
  uint64_t failed_at = 0;
  absl::Status st =
      Transfer(addr, src.size(), "write exporter memory", &failed_at, [&](size_t done) {
        iovec local{const_cast<uint8_t*>(src.data()) + done, src.size() - done};
        iovec remote{reinterpret_cast<void*>(addr + done), src.size() - done};
        return process_vm_writev(pid_, &local, 1, &remote, 1, 0);
      });
  if (ToErrno(st) == EFAULT) return Refused(failed_at, 'w');
  return st;
}

absl::Status ExporterMemory::WriteDiff(uint64_t addr, const std::vector<DiffPage>& pages) const {
  if (pages.empty()) return absl::OkStatus();
  if (MmGone(addr)) return ErrnoStatus(ESRCH, "the exporter exited or exec'd");
  // Held here (tests), as Write's: a write-back (a diff, now) is about to
  // be made; tests that hold a write-back in flight hold either kind.
  TETHER_FAULT_POINT("exporter_memory.write.before_write");
  std::vector<iovec> local, remote;
  for (const DiffPage& page : pages) {
    const uint64_t page_addr = addr + page.index * kPageSize;
    local.clear();
    remote.clear();
    for (const DiffRun& run : page.runs) {
      local.push_back({const_cast<uint8_t*>(run.data.data()), run.data.size()});
      remote.push_back({reinterpret_cast<void*>(page_addr + run.offset), run.data.size()});
    }
    absl::MutexLock lock(&PageLock(page_addr));
    // Held here (tests), with this page's lock held: a diff is about to be
    // written.
    TETHER_FAULT_POINT("exporter_memory.write_diff.before_page");
    // local[i] and remote[i] have the same length: a partial write ends at
    // the same place in both.
    size_t i = 0;
    while (i < local.size()) {
      size_t n = std::min<size_t>(local.size() - i, IOV_MAX);
      ssize_t done = process_vm_writev(pid_, &local[i], n, &remote[i], n, 0);
      if (done < 0 && errno == EINTR) continue;
      if (done < 0 && errno == ESRCH) return ErrnoStatus(ESRCH, "the exporter exited");
      if (done < 0 && errno != EFAULT) return ErrnoStatus(errno, "write exporter memory");
      if (done <= 0) return Refused(reinterpret_cast<uint64_t>(remote[i].iov_base), 'w');
      CountBytes(Counters().exporter_copy_bytes, static_cast<uint64_t>(done));
      auto left = static_cast<size_t>(done);
      while (left > 0 && left >= local[i].iov_len) left -= local[i++].iov_len;
      if (left > 0) {
        local[i].iov_base = static_cast<uint8_t*>(local[i].iov_base) + left;
        local[i].iov_len -= left;
        remote[i].iov_base = static_cast<uint8_t*>(remote[i].iov_base) + left;
        remote[i].iov_len -= left;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ExporterMemory::Refused(uint64_t addr, char perm) const {
  // /proc/<pid>/maps through the pinned fd: the exporter's current VMAs.
  std::string text;
  char buf[8192];
  ssize_t n;
  off_t off = 0;
  while ((n = pread(maps_fd_, buf, sizeof(buf), off)) > 0) {
    text.append(buf, static_cast<size_t>(n));
    off += n;
  }
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    // "start-end perms ..."
    size_t dash = line.find('-'), sp = line.find(' ');
    if (dash == absl::string_view::npos || sp == absl::string_view::npos || sp < dash) continue;
    uint64_t s = 0, e = 0;
    if (!absl::SimpleHexAtoi(line.substr(0, dash), &s) ||
        !absl::SimpleHexAtoi(line.substr(dash + 1, sp - dash - 1), &e))
      continue;
    if (addr < s || addr >= e) continue;
    bool has = line.size() > sp + 2 && line[sp + (perm == 'r' ? 1 : 2)] == perm;
    if (!has) {
      return ErrnoStatus(EACCES, perm == 'w' ? "exporter mapping is not writable"
                                             : "exporter mapping is not readable");
    }
    // Mapped with the permission, yet refused: the protection changed back
    // meanwhile, or the page cannot be had (a file mapping past its end).
    return ErrnoStatus(EFAULT, absl::StrFormat("exporter memory at %#x could not be %s", addr,
                                               perm == 'w' ? "written" : "read"));
  }
  // Nothing mapped there: the exporter unmapped it and the notifier did
  // not report it gone (a write-back), or a read past what it maps. A
  // write-back gets ENXIO, as one refused because a window reported the
  // address gone (segment_serving.cc): the mapper counts its pages lost
  // (there is nothing left to write to) instead of keeping them dirty
  // for a sync that can never succeed. A read keeps EFAULT (a hole in a
  // read-ahead, fault_install.cc).
  if (perm == 'w') return ErrnoStatus(ENXIO, "exporter address not mapped");
  return ErrnoStatus(EFAULT, "exporter address not mapped");
}

}  // namespace tether
