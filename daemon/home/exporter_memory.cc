#include "daemon/home/exporter_memory.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"

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
  std::string mem_path = absl::StrCat("/proc/", pid, "/mem");
  int mem_fd = open(mem_path.c_str(), O_RDWR | O_CLOEXEC);
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
  // Alive after the opens: the files belong to the process the pidfd pins.
  if (!m->Alive()) return absl::NotFoundError("the exporting process exited during export");
  return m;
}

ExporterMemory::~ExporterMemory() {
  close(maps_fd_);
  close(mem_fd_);
  close(pidfd_);
}

bool ExporterMemory::Alive() const {
  pollfd p{pidfd_, POLLIN, 0};
  return poll(&p, 1, 0) == 0;
}

namespace {

// Repeats `io(done)` (a pread or pwrite of what is left at `addr + done`)
// until `len` bytes have moved.
template <typename Io>
absl::Status Transfer(size_t len, const char* what, Io io) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = io(done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0) {
      return absl::NotFoundError("the exporter is gone");
    } else if (errno != EINTR) {
      // EIO: the address is not mapped in the exporter (any more).
      if (errno == EIO) return ErrnoStatus(EFAULT, "exporter address not mapped");
      return ErrnoStatus(errno, what);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExporterMemory::Read(uint64_t addr, absl::Span<uint8_t> dst) const {
  return Transfer(dst.size(), "read exporter memory", [&](size_t done) {
    return pread(mem_fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(addr + done));
  });
}

absl::Status ExporterMemory::CheckWritable(uint64_t addr, uint64_t len) const {
  // /proc/<pid>/maps through the pinned fd: the exporter's current VMAs.
  std::string text;
  char buf[8192];
  ssize_t n;
  off_t off = 0;
  while ((n = pread(maps_fd_, buf, sizeof(buf), off)) > 0) {
    text.append(buf, static_cast<size_t>(n));
    off += n;
  }
  uint64_t cur = addr, end = addr + len;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (cur >= end) break;
    // "start-end perms ..."
    size_t dash = line.find('-'), sp = line.find(' ');
    if (dash == absl::string_view::npos || sp == absl::string_view::npos || sp < dash) continue;
    uint64_t s = 0, e = 0;
    if (!absl::SimpleHexAtoi(line.substr(0, dash), &s) ||
        !absl::SimpleHexAtoi(line.substr(dash + 1, sp - dash - 1), &e))
      continue;
    if (e <= cur || s > cur) continue;
    if (line.size() < sp + 3 || line[sp + 2] != 'w')
      return ErrnoStatus(EACCES, "exporter mapping is not writable");
    cur = e;
  }
  if (cur < end) return ErrnoStatus(EFAULT, "exporter address not mapped");
  return absl::OkStatus();
}

absl::Status ExporterMemory::Write(uint64_t addr, absl::Span<const uint8_t> src) const {
  RETURN_IF_ERROR(CheckWritable(addr, src.size()));
  return Transfer(src.size(), "write exporter memory", [&](size_t done) {
    return pwrite(mem_fd_, src.data() + done, src.size() - done, static_cast<off_t>(addr + done));
  });
}

}  // namespace tether
