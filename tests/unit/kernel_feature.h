// Kernel features unit tests need (userfaultfd with write-protect on
// shmem, pidfd_open), probed once, and the rule for a machine that lacks
// one: the test skips and says which feature and why — unless
// TETHER_REQUIRE_KERNEL_FEATURES is set (tests/run-all sets it, so CI
// fails instead of passing with a tier that did not run). ctest reports
// such skips as "Skipped" (SKIP_REGULAR_EXPRESSION in tests/CMakeLists.txt).
#ifndef TETHER_TESTS_UNIT_KERNEL_FEATURE_H_
#define TETHER_TESTS_UNIT_KERNEL_FEATURE_H_

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace tether::testing_support {

// Empty if the feature is there, else why not.
inline std::string MissingUserfaultfdWp() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0)
    return std::string("userfaultfd(2): ") + std::strerror(errno) +
           (errno == EPERM ? " (vm.unprivileged_userfaultfd=0 and not root?)" : "");
  uffdio_api api{UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
  int rc = ioctl(fd, UFFDIO_API, &api);
  int err = errno;
  close(fd);
  if (rc != 0)
    return std::string("UFFDIO_API with MISSING_SHMEM|WP_HUGETLBFS_SHMEM (Linux >= 6.1): ") +
           std::strerror(err);
  return "";
}

inline std::string MissingPidfdOpen() {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (fd < 0) return std::string("pidfd_open(2) (Linux >= 5.3): ") + std::strerror(errno);
  close(fd);
  return "";
}

}  // namespace tether::testing_support

// In a test body or SetUp(): skip (or fail, under TETHER_REQUIRE_KERNEL_FEATURES)
// when `missing` (one of the probes above) is not empty.
#define TETHER_REQUIRE_KERNEL_FEATURE(missing)                                                \
  do {                                                                                        \
    std::string why_ = (missing);                                                             \
    if (!why_.empty()) {                                                                      \
      if (std::getenv("TETHER_REQUIRE_KERNEL_FEATURES"))                                      \
        FAIL() << "kernel feature missing (TETHER_REQUIRE_KERNEL_FEATURES is set): " << why_; \
      GTEST_SKIP() << "kernel feature missing: " << why_;                                     \
    }                                                                                         \
  } while (0)

#endif  // TETHER_TESTS_UNIT_KERNEL_FEATURE_H_
