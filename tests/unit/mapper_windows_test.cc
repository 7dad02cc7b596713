// The mapper-side state machine (FaultService windows) with a fake home:
// this test process is the client (its own memfd mapping and userfaultfd)
// and the home is an in-memory BlockServer reached through DataPath's
// same-node path, with requests it can hold back or refuse.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "tests/unit/kernel_feature.h"

#include "absl/synchronization/mutex.h"
#include "daemon/common/errors.h"
#include "daemon/common/status_macros.h"
#include "daemon/mapper/data_path.h"
#include "daemon/mapper/fault_service.h"

namespace tether {
namespace {

constexpr uint64_t kPages = 16, kPage = 4096;

class FakeHome : public BlockServer {
 public:
  FakeHome() : mem(kPages * kPage, 0) { Fill(1); }
  void Fill(uint8_t v) {
    absl::MutexLock lock(&mu);
    std::fill(mem.begin(), mem.end(), v);
  }
  absl::Status ReadBlocks(uint32_t, uint64_t, uint64_t, uint64_t off,
                          absl::Span<uint8_t> dst) override {
    absl::MutexLock lock(&mu);
    ++reads;
    if (refuse) return Retry("window");
    std::memcpy(dst.data(), mem.data() + off, dst.size());
    // Read, then "on the wire" until the test lets it arrive.
    mu.Await(absl::Condition(
        +[](bool* h) { return !*h; }, &hold));
    return absl::OkStatus();
  }
  absl::Status WriteBlocks(uint32_t, uint64_t, uint64_t, uint64_t off,
                           absl::Span<const uint8_t> src) override {
    absl::MutexLock lock(&mu);
    std::memcpy(mem.data() + off, src.data(), src.size());
    ++writes;
    return absl::OkStatus();
  }
  absl::Mutex mu;
  std::vector<uint8_t> mem;
  int reads = 0, writes = 0;
  bool refuse = false;
  bool hold = false;  // read data waits (in flight) until it is cleared
};

// The resolver for remote homes: this test has none.
absl::StatusOr<std::shared_ptr<const DataEndpoint>> NoPeers(uint32_t) {
  return absl::UnavailableError("no peers in this test");
}

class MapperWindowsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(faults_.Start().ok());
    att_ = std::make_shared<Attachment>();
    att_->id = 7;
    att_->segid = 1;
    att_->home = 1;  // this node: DataPath calls FakeHome directly
    att_->size = kPages * kPage;
    att_->writable = true;
    TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingUserfaultfdWp());
    att_->memfd = memfd_create("t", MFD_CLOEXEC);
    ASSERT_EQ(ftruncate(att_->memfd, att_->size), 0);
    att_->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    ASSERT_GE(att_->uffd, 0);
    uffdio_api api{UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
    ASSERT_EQ(ioctl(att_->uffd, UFFDIO_API, &api), 0);
    map_ = static_cast<uint8_t*>(
        mmap(nullptr, att_->size, PROT_READ | PROT_WRITE, MAP_SHARED, att_->memfd, 0));
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(map_), att_->size};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
    ASSERT_EQ(ioctl(att_->uffd, UFFDIO_REGISTER, &reg), 0);
    {
      absl::MutexLock lock(&att_->mu);
      att_->state.assign(kPages, PageState::kAbsent);
    }
    att_->vaddr = reinterpret_cast<uint64_t>(map_);
    ASSERT_TRUE(faults_.Add(att_).ok());
  }
  void TearDown() override {
    faults_.Remove(att_);
    faults_.Stop();
    munmap(map_, kPages * kPage);
  }
  PageState State(uint64_t p) {
    absl::MutexLock lock(&att_->mu);
    return att_->state[p];
  }

  FakeHome home_;
  DataPath data_{1, &home_, nullptr, nullptr, &NoPeers};
  std::atomic<int> sigbus_{0};
  FaultService faults_{
      &data_, 64 << 20,
      [this](const Attachment&, uint64_t, uint64_t, const std::string&) { ++sigbus_; }};
  std::shared_ptr<Attachment> att_;
  uint8_t* map_ = nullptr;
};

TEST_F(MapperWindowsTest, FaultsFetchAndWindowsZap) {
  EXPECT_EQ(map_[0], 1);  // fault -> fetch -> install
  EXPECT_EQ(State(0), PageState::kClean);
  home_.Fill(2);
  EXPECT_EQ(map_[0], 1);  // cached copy (no coherence without a window)
  faults_.BeginWindow(*att_, 100, 0, 4);
  EXPECT_EQ(State(0), PageState::kAbsent);
  // A read inside the window blocks until range_end.
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = map_[1]; });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(seen.load(), -1) << "a fault inside a window must wait";
  ASSERT_TRUE(faults_.EndWindow(*att_, 100, {}).ok());
  reader.join();
  EXPECT_EQ(seen.load(), 2);  // fetched after the window: the new contents
  EXPECT_EQ(map_[0], 2);
}

TEST_F(MapperWindowsTest, DirtyPagesAreKeptAsideAndWrittenBackAfterTheWindow) {
  map_[4 * kPage] = 9;  // missing fault, then write-protect fault: dirty
  EXPECT_EQ(State(4), PageState::kDirty);
  faults_.BeginWindow(*att_, 5, 0, kPages);
  EXPECT_EQ(State(4), PageState::kAbsent);
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.writes, 0) << "never written back inside the window (G5)";
  }
  ASSERT_TRUE(faults_.EndWindow(*att_, 5, {}).ok());
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.mem[4 * kPage], 9);
  }
  EXPECT_EQ(map_[4 * kPage], 9);  // refetched, with our own write in it
}

TEST_F(MapperWindowsTest, DirtyPagesOfAGoneAddressAreReportedLost) {
  map_[2 * kPage] = 7;
  faults_.BeginWindow(*att_, 6, 2, 3);
  ASSERT_TRUE(faults_.EndWindow(*att_, 6, {{2, 3}}).ok());
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.mem[2 * kPage], 1) << "discarded, not written over the gone address";
  }
  absl::Status st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_EQ(ToErrno(st), EIO) << st;
  EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok()) << "reported once";
}

TEST_F(MapperWindowsTest, OverlappingWindowsKeepTheUnionBlocked) {
  faults_.BeginWindow(*att_, 1, 0, 4);
  faults_.BeginWindow(*att_, 2, 2, 6);
  ASSERT_TRUE(faults_.EndWindow(*att_, 1, {}).ok());
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = map_[3 * kPage]; });  // still in window 2
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(seen.load(), -1);
  EXPECT_EQ(map_[0], 1);  // page 0 is open again
  ASSERT_TRUE(faults_.EndWindow(*att_, 2, {}).ok());
  reader.join();
  EXPECT_EQ(seen.load(), 1);
  // duplicate or unknown END: nothing happens
  EXPECT_TRUE(faults_.EndWindow(*att_, 2, {}).ok());
}

TEST_F(MapperWindowsTest, KeptAsidePagesWaitForTheLastWindowOverThem) {
  // Window 1 keeps a dirty page aside; a later event's window 2 opens over
  // it before window 1's range_end is handled (notices are handled in
  // parallel). Window 1's end must not write the page back (the home is in
  // window 2, which may unmap or replace it): window 2's end decides.
  map_[3 * kPage] = 5;
  EXPECT_EQ(State(3), PageState::kDirty);
  faults_.BeginWindow(*att_, 1, 0, 4);
  faults_.BeginWindow(*att_, 2, 2, 6);
  ASSERT_TRUE(faults_.EndWindow(*att_, 1, {}).ok());
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.writes, 0) << "written back while another window was open";
  }
  ASSERT_TRUE(faults_.EndWindow(*att_, 2, {{3, 4}}).ok());  // window 2 unmapped it
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.writes, 0);
    EXPECT_EQ(home_.mem[3 * kPage], 1);
  }
  EXPECT_EQ(ToErrno(faults_.Sync(*att_, 0, att_->size)), EIO) << "reported lost";

  // The same with window 2 ending without unmapping: written back then.
  map_[8 * kPage] = 6;
  faults_.BeginWindow(*att_, 3, 8, 9);
  faults_.BeginWindow(*att_, 4, 8, 10);
  ASSERT_TRUE(faults_.EndWindow(*att_, 3, {}).ok());
  ASSERT_TRUE(faults_.EndWindow(*att_, 4, {}).ok());
  absl::MutexLock lock(&home_.mu);
  EXPECT_EQ(home_.writes, 1);
  EXPECT_EQ(home_.mem[8 * kPage], 6);
}

TEST_F(MapperWindowsTest, HomeRetryIsRetriedNotPoisoned) {
  {
    absl::MutexLock lock(&home_.mu);
    home_.refuse = true;
  }
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = map_[5 * kPage]; });
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(seen.load(), -1);
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_GE(home_.reads, 2) << "EAGAIN must be retried";
    home_.refuse = false;
  }
  reader.join();
  EXPECT_EQ(seen.load(), 1);
  EXPECT_EQ(sigbus_.load(), 0);
}

// A fetch in flight while a window opens elsewhere in the attachment is
// installed, not thrown away and fetched again (under frequent windows a
// slow fetch would never land); one the window overlaps is discarded.
TEST_F(MapperWindowsTest, AWindowDiscardsOnlyTheFetchesItOverlaps) {
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = true;
  }
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = map_[8 * kPage]; });
  auto reads = [&] {
    absl::MutexLock lock(&home_.mu);
    return home_.reads;
  };
  for (int i = 0; i < 200 && reads() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(reads(), 1) << "the fetch of page 8 is in flight";
  faults_.BeginWindow(*att_, 1, 0, 4);  // pages 0-3: not page 8
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = false;
  }
  reader.join();
  EXPECT_EQ(seen.load(), 1);
  EXPECT_EQ(reads(), 1) << "installed as fetched, not fetched twice";
  EXPECT_EQ(State(8), PageState::kClean);
  ASSERT_TRUE(faults_.EndWindow(*att_, 1, {}).ok());

  // Now a window over the page in flight: its data may predate the window.
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = true;
  }
  std::thread reader2([&] { seen = map_[12 * kPage]; });
  for (int i = 0; i < 200 && reads() == 1; ++i) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(reads(), 2) << "the fetch of page 12 is in flight";
  faults_.BeginWindow(*att_, 2, 10, 14);
  home_.Fill(7);  // what the exporter holds after the event
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = false;  // the old contents (1) arrive inside the window
  }
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_NE(State(12), PageState::kClean) << "a fetch that the window overlapped was installed";
  ASSERT_TRUE(faults_.EndWindow(*att_, 2, {}).ok());
  reader2.join();
  EXPECT_EQ(seen.load(), 7) << "fetched again after the window: the new contents";
  EXPECT_EQ(reads(), 3);
}

TEST_F(MapperWindowsTest, RevokeDropsEverything) {
  map_[0] = 3;  // dirty
  faults_.Revoke(*att_, "fenced: test");
  absl::Status st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_EQ(ToErrno(st), EIDRM) << st;
  EXPECT_NE(std::string(st.message()).find("fenced: test"), std::string::npos);
  struct stat sb;
  ASSERT_EQ(fstat(att_->memfd, &sb), 0);
  EXPECT_EQ(sb.st_size, 0) << "truncated: every access raises SIGBUS";
}

}  // namespace
}  // namespace tether
