#include "daemon/mapper/mapping_ops.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "daemon/common/log.h"

namespace tether {
namespace mapping_ops {

void Wake(int uffd, uint64_t start, uint64_t len) {
  uffdio_range r{start, len};
  ioctl(uffd, UFFDIO_WAKE, &r);
}

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

}  // namespace mapping_ops
}  // namespace tether
