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
#include "absl/synchronization/notification.h"
#include "daemon/common/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/status_macros.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/mapper/data_path.h"
#include "daemon/mapper/fault_service.h"
#include "daemon/mapper/mapper_invalidation.h"

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
    if (refuse_writes) return Retry("window");
    if (fail_writes) return ErrnoStatus(EIO, "the home failed the write");
    if (off < gone_end && gone_start < off + src.size())
      return ErrnoStatus(ENXIO, "the exporter unmapped that range");
    std::memcpy(mem.data() + off, src.data(), src.size());
    ++writes;
    return absl::OkStatus();
  }
  absl::Mutex mu;
  std::vector<uint8_t> mem;
  int reads = 0, writes = 0;
  bool refuse = false;
  bool refuse_writes = false;  // writes answer "retry" (a window at the home)
  bool fail_writes = false;    // writes fail (EIO)
  bool hold = false;           // read data waits (in flight) until it is cleared
  // Writes overlapping [gone_start, gone_end) are refused as gone (ENXIO:
  // the exporter unmapped that address since the mapper read it).
  uint64_t gone_start = 0, gone_end = 0;
};

// Whether this process's page at `addr` is write-protected by userfaultfd
// (pagemap bit 57, PM_UFFD_WP): a store to it would wait in a fault.
bool UffdWriteProtected(const void* addr) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t e = 0;
  bool ok =
      fd >= 0 &&
      pread(fd, &e, sizeof(e),
            static_cast<off_t>(reinterpret_cast<uintptr_t>(addr) / kPage * sizeof(e))) == sizeof(e);
  if (fd >= 0) close(fd);
  EXPECT_TRUE(ok) << "read /proc/self/pagemap";
  return (e >> 57) & 1;
}

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
    ASSERT_TRUE(faults_.Join(att_, att_->size).ok());  // its cache: the memfd
    att_->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    ASSERT_GE(att_->uffd, 0);
    uffdio_api api{UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
    ASSERT_EQ(ioctl(att_->uffd, UFFDIO_API, &api), 0);
    map_ = static_cast<uint8_t*>(
        mmap(nullptr, att_->size, PROT_READ | PROT_WRITE, MAP_SHARED, att_->cache->memfd, 0));
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(map_), att_->size};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
    ASSERT_EQ(ioctl(att_->uffd, UFFDIO_REGISTER, &reg), 0);
    att_->vaddr = reinterpret_cast<uint64_t>(map_);
    ASSERT_TRUE(faults_.Add(att_).ok());
  }
  void TearDown() override {
    FaultPoints::ReleaseAll();  // a failed test leaves no thread held
    faults_.Remove(att_);
    faults_.Stop();
    munmap(map_, kPages * kPage);
  }
  PageState State(uint64_t p) {
    absl::MutexLock lock(&att_->cache->mu);
    return att_->cache->state[p];
  }
  uint8_t HomeByte(uint64_t off) {
    absl::MutexLock lock(&home_.mu);
    return home_.mem[off];
  }
  void SetHome(bool FakeHome::*knob, bool v) {
    absl::MutexLock lock(&home_.mu);
    home_.*knob = v;
  }

  // A second attachment of the same segment in this process (issue 16:
  // it shares att_'s cache), over `pages` pages from segment page `first`.
  // Returns its mapping; RemoveSecond undoes it.
  uint8_t* AddSecond(bool writable, uint64_t first = 0, uint64_t pages = kPages) {
    second_ = std::make_shared<Attachment>();
    second_->id = 8;
    second_->segid = att_->segid;
    second_->home = att_->home;
    second_->seg_offset = first * kPage;
    second_->size = pages * kPage;
    second_->writable = writable;
    second_->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    uffdio_api api{UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
    if (second_->uffd < 0 || ioctl(second_->uffd, UFFDIO_API, &api) != 0) return nullptr;
    if (!faults_.Join(second_, second_->size).ok()) return nullptr;
    auto* m = static_cast<uint8_t*>(
        mmap(nullptr, second_->size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED,
             second_->cache->memfd, static_cast<off_t>(second_->seg_offset)));
    if (m == MAP_FAILED) return nullptr;
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(m), second_->size};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | (writable ? UFFDIO_REGISTER_MODE_WP : 0);
    if (ioctl(second_->uffd, UFFDIO_REGISTER, &reg) != 0) return nullptr;
    second_->vaddr = reinterpret_cast<uint64_t>(m);
    if (!faults_.Add(second_).ok()) return nullptr;
    second_map_ = m;
    return m;
  }
  void RemoveSecond() {
    faults_.Remove(second_);
    munmap(second_map_, second_->size);
    second_map_ = nullptr;
  }

  // Issue 14 (syncwait): the last detach of the cache — a read-only
  // attachment of pages 0-3 — while a window's end is writing back page 9,
  // which only att_ (detached before, its write-back failed) covered. The
  // detach must return only after that write settled: landed (OK), or
  // failed (`fail`), then reported (EIO).
  void LastDetachDuringAWindowsWriteBack(bool fail) {
    const char* kBeforeSend = "fault_service.writeback.before_send";
    const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
    ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
    ASSERT_NE(AddSecond(false, 0, 4), nullptr);  // read-only, pages 0-3: keeps the cache
    map_[9 * kPage] = 9;                         // dirty, only att_ covers it
    SetHome(&FakeHome::fail_writes, true);
    ASSERT_EQ(ToErrno(faults_.Detach(att_)), EIO);  // reported; page 9 stays dirty
    SetHome(&FakeHome::fail_writes, false);
    faults_.BeginWindow(*att_->cache, 5, 0, kPages);  // page 9 kept aside
    SetHome(&FakeHome::fail_writes, fail);
    FaultPoints::Arm(kBeforeSend);
    absl::Status end_st;
    std::thread end([&] { end_st = faults_.EndWindow(*att_->cache, 5, {}); });
    ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
    FaultPoints::Arm(kSyncWaits);
    std::atomic<bool> returned{false};
    absl::Status st;
    uint8_t home_at_return = 0;
    std::thread detach([&] {
      st = faults_.Detach(second_);
      home_at_return = HomeByte(9 * kPage);
      returned = true;
    });
    bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
    EXPECT_FALSE(returned.load()) << "the last detach returned while a write-back was held";
    FaultPoints::Release(kBeforeSend);
    FaultPoints::Release(kSyncWaits);
    end.join();
    detach.join();
    munmap(second_map_, second_->size);
    second_map_ = nullptr;
    EXPECT_TRUE(waited) << "the last detach did not wait for the window's write-back";
    if (fail) {
      EXPECT_EQ(ToErrno(st), EIO) << "a failed write-back was reported as " << st;
    } else {
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_EQ(home_at_return, 9) << "the last detach returned before the write landed";
    }
  }

  FakeHome home_;
  DataPath data_{1, &home_, nullptr, nullptr, &NoPeers};
  std::atomic<int> sigbus_{0};
  FakeClock clock_;  // Sync's 10 s budget passes when a test says so
  FaultService faults_{
      &data_, 64 << 20,
      [this](const Attachment&, uint64_t, uint64_t, const std::string&) { ++sigbus_; }, &clock_};
  std::shared_ptr<Attachment> att_;
  std::shared_ptr<Attachment> second_;  // AddSecond's
  uint8_t* second_map_ = nullptr;
  uint8_t* map_ = nullptr;
};

TEST_F(MapperWindowsTest, FaultsFetchAndWindowsZap) {
  EXPECT_EQ(map_[0], 1);  // fault -> fetch -> install
  EXPECT_EQ(State(0), PageState::kClean);
  home_.Fill(2);
  EXPECT_EQ(map_[0], 1);  // cached copy (no coherence without a window)
  faults_.BeginWindow(*att_->cache, 100, 0, 4);
  EXPECT_EQ(State(0), PageState::kAbsent);
  // A read inside the window blocks until range_end.
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = map_[1]; });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(seen.load(), -1) << "a fault inside a window must wait";
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 100, {}).ok());
  reader.join();
  EXPECT_EQ(seen.load(), 2);  // fetched after the window: the new contents
  EXPECT_EQ(map_[0], 2);
}

TEST_F(MapperWindowsTest, DirtyPagesAreKeptAsideAndWrittenBackAfterTheWindow) {
  map_[4 * kPage] = 9;  // missing fault, then write-protect fault: dirty
  EXPECT_EQ(State(4), PageState::kDirty);
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);
  EXPECT_EQ(State(4), PageState::kAbsent);
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.writes, 0) << "never written back inside the window (G5)";
  }
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.mem[4 * kPage], 9);
  }
  EXPECT_EQ(map_[4 * kPage], 9);  // refetched, with our own write in it
}

TEST_F(MapperWindowsTest, DirtyPagesOfAGoneAddressAreReportedLost) {
  map_[2 * kPage] = 7;
  faults_.BeginWindow(*att_->cache, 6, 2, 3);
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 6, {{2, 3}}).ok());
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.mem[2 * kPage], 1) << "discarded, not written over the gone address";
  }
  absl::Status st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_EQ(ToErrno(st), EIO) << st;
  EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok()) << "reported once";
}

TEST_F(MapperWindowsTest, OverlappingWindowsKeepTheUnionBlocked) {
  faults_.BeginWindow(*att_->cache, 1, 0, 4);
  faults_.BeginWindow(*att_->cache, 2, 2, 6);
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 1, {}).ok());
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = map_[3 * kPage]; });  // still in window 2
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(seen.load(), -1);
  EXPECT_EQ(map_[0], 1);  // page 0 is open again
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 2, {}).ok());
  reader.join();
  EXPECT_EQ(seen.load(), 1);
  // duplicate or unknown END: nothing happens
  EXPECT_TRUE(faults_.EndWindow(*att_->cache, 2, {}).ok());
}

TEST_F(MapperWindowsTest, KeptAsidePagesWaitForTheLastWindowOverThem) {
  // Window 1 keeps a dirty page aside; a later event's window 2 opens over
  // it before window 1's range_end is handled (notices are handled in
  // parallel). Window 1's end must not write the page back (the home is in
  // window 2, which may unmap or replace it): window 2's end decides.
  map_[3 * kPage] = 5;
  EXPECT_EQ(State(3), PageState::kDirty);
  faults_.BeginWindow(*att_->cache, 1, 0, 4);
  faults_.BeginWindow(*att_->cache, 2, 2, 6);
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 1, {}).ok());
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.writes, 0) << "written back while another window was open";
  }
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 2, {{3, 4}}).ok());  // window 2 unmapped it
  {
    absl::MutexLock lock(&home_.mu);
    EXPECT_EQ(home_.writes, 0);
    EXPECT_EQ(home_.mem[3 * kPage], 1);
  }
  EXPECT_EQ(ToErrno(faults_.Sync(*att_, 0, att_->size)), EIO) << "reported lost";

  // The same with window 2 ending without unmapping: written back then.
  map_[8 * kPage] = 6;
  faults_.BeginWindow(*att_->cache, 3, 8, 9);
  faults_.BeginWindow(*att_->cache, 4, 8, 10);
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 3, {}).ok());
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 4, {}).ok());
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
  faults_.BeginWindow(*att_->cache, 1, 0, 4);  // pages 0-3: not page 8
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = false;
  }
  reader.join();
  EXPECT_EQ(seen.load(), 1);
  EXPECT_EQ(reads(), 1) << "installed as fetched, not fetched twice";
  EXPECT_EQ(State(8), PageState::kClean);
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 1, {}).ok());

  // Now a window over the page in flight: its data may predate the window.
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = true;
  }
  std::thread reader2([&] { seen = map_[12 * kPage]; });
  for (int i = 0; i < 200 && reads() == 1; ++i) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(reads(), 2) << "the fetch of page 12 is in flight";
  faults_.BeginWindow(*att_->cache, 2, 10, 14);
  home_.Fill(7);  // what the exporter holds after the event
  {
    absl::MutexLock lock(&home_.mu);
    home_.hold = false;  // the old contents (1) arrive inside the window
  }
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_NE(State(12), PageState::kClean) << "a fetch that the window overlapped was installed";
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 2, {}).ok());
  reader2.join();
  EXPECT_EQ(seen.load(), 7) << "fetched again after the window: the new contents";
  EXPECT_EQ(reads(), 3);
}

// Issue 14, defect 3: range_begin reads a dirty page and then punches it
// out. A store between the two must not be lost: the page is
// write-protected before it is read, so the store faults, waits for the
// window, and lands on the page fetched after it (which holds the
// kept-aside bytes, written back before the range reopens).
TEST_F(MapperWindowsTest, AStoreRacingRangeBeginIsNotLost) {
  const char* kAfterRead = "fault_service.begin_window.after_read";
  const char* kWpFault = "fault_service.write_protect.before_lock";
  map_[4 * kPage] = 9;  // dirty
  ASSERT_EQ(State(4), PageState::kDirty);
  FaultPoints::Arm(kAfterRead);
  std::thread begin([&] { faults_.BeginWindow(*att_->cache, 5, 0, kPages); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kAfterRead, absl::Seconds(10)));
  // range_begin has read page 4 (with att.mu held) and not punched it yet.
  std::thread store;
  if (UffdWriteProtected(map_ + 4 * kPage)) {
    // Protected before the read: the store faults. Hold the fault thread
    // until it has the fault in hand (it then waits for att.mu, which
    // range_begin holds), so the store races exactly this step.
    FaultPoints::Arm(kWpFault);
    store = std::thread([&] { map_[4 * kPage + 1] = 10; });
    ASSERT_TRUE(FaultPoints::WaitUntilReached(kWpFault, absl::Seconds(10)));
    FaultPoints::Release(kWpFault);
  } else {
    map_[4 * kPage + 1] = 10;  // not protected: lands now, after the read
  }
  FaultPoints::Release(kAfterRead);
  begin.join();
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  if (store.joinable()) store.join();
  EXPECT_EQ(map_[4 * kPage], 9);
  EXPECT_EQ(map_[4 * kPage + 1], 10) << "the client's store was lost";
  ASSERT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9);
  EXPECT_EQ(HomeByte(4 * kPage + 1), 10) << "the client's store never reached the home";
}

// Issue 14, defect 4: the write-back of a kept-aside page after the window
// fails. It must be neither dropped nor hidden: the client still reads its
// write, the next sync reports the failure, a later one writes it back.
TEST_F(MapperWindowsTest, AFailedWriteBackAfterAWindowIsReportedAndRetried) {
  map_[4 * kPage] = 9;  // dirty
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);
  SetHome(&FakeHome::fail_writes, true);
  EXPECT_FALSE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  EXPECT_EQ(map_[4 * kPage], 9) << "the client reads the home's older copy, not its own write";
  absl::Status st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_FALSE(st.ok()) << "sync says OK while a write it covers never reached the home";
  SetHome(&FakeHome::fail_writes, false);
  st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(HomeByte(4 * kPage), 9) << "the kept-aside write was dropped";
  EXPECT_EQ(map_[4 * kPage], 9);
}

// Issue 14, defect 4 (ordering): a sync refused by the home (a window
// there) retries; meanwhile the client stores again and this mapper's
// range_begin keeps the newer page aside, written back at range_end. The
// sync's retry must not land its older copy over it afterwards.
TEST_F(MapperWindowsTest, ASyncRetryDoesNotLandAnOlderCopyAfterTheWindow) {
  const char* kBeforeRetry = "fault_service.writeback.before_retry";
  map_[4 * kPage] = 9;  // dirty
  SetHome(&FakeHome::refuse_writes, true);
  FaultPoints::Arm(kBeforeRetry);
  absl::Status sync_st;
  std::thread sync([&] { sync_st = faults_.Sync(*att_, 0, att_->size); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeRetry, absl::Seconds(10)));
  // The sync sent [9, 0] and was refused. The client stores again (a
  // write-protect fault: the page is dirty again).
  map_[4 * kPage + 1] = 10;
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);  // keeps [9, 10] aside
  SetHome(&FakeHome::refuse_writes, false);         // the home's window ends
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  EXPECT_EQ(HomeByte(4 * kPage + 1), 10);
  FaultPoints::Release(kBeforeRetry);
  sync.join();
  EXPECT_EQ(HomeByte(4 * kPage + 1), 10) << "the sync's retry landed an older copy";
  EXPECT_EQ(map_[4 * kPage + 1], 10) << "the client's store was lost";
  EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
  EXPECT_EQ(HomeByte(4 * kPage + 1), 10);
}

// Issue 14, defect 6 (G5): range_end for this node's own mappers is a
// direct call on whichever thread ends the window at the home — for
// tether.ko, the thread that reads the module's events. Its kept-aside
// write-backs must not run there: a write into the exporter can itself
// start an invalidation that waits for an event only that thread would
// read. End returns at once; the write-back follows on the mapper's own
// thread, and lands.
TEST_F(MapperWindowsTest, RangeEndReturnsWhileItsWriteBackIsBlocked) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  AttachmentTable table(1);
  table.Insert(att_, 1, 1);
  MapperInvalidation inval(&faults_, &table);
  inval.Start();
  map_[4 * kPage] = 9;  // dirty
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kBegin;
  n.segid = att_->segid;
  n.start = 0;
  n.end = att_->size;
  n.window = 5;
  n.home_node = 1;
  ASSERT_TRUE(inval.Handle(n).ok());
  FaultPoints::Arm(kBeforeSend);
  n.kind = InvalidationNotice::Kind::kEnd;
  absl::Notification ended;
  std::thread ender([&] {
    EXPECT_TRUE(inval.Handle(n).ok());
    ended.Notify();
  });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  EXPECT_TRUE(ended.WaitForNotificationWithTimeout(absl::Seconds(2)))
      << "range_end waited for its write-back on the delivering thread";
  EXPECT_EQ(HomeByte(4 * kPage), 1) << "held: not written yet";
  FaultPoints::Release(kBeforeSend);
  ender.join();
  inval.Stop();  // drains: every queued range_end is written back
  EXPECT_EQ(HomeByte(4 * kPage), 9) << "the kept-aside write was lost";
  EXPECT_EQ(map_[4 * kPage], 9);
}

// A range_end with nothing to write back (no page of its range kept aside
// or still being written back) ends on the delivering thread — the common
// case costs no thread hop — while one with a kept-aside page is left for
// EndWindow on a thread that may wait, and changes nothing meanwhile.
TEST_F(MapperWindowsTest, ARangeEndWithNothingToWriteBackEndsAtOnce) {
  SegmentCache& c = *att_->cache;
  map_[4 * kPage] = 9;              // dirty: kept aside by window 5
  faults_.BeginWindow(c, 5, 4, 5);  // page 4
  faults_.BeginWindow(c, 6, 0, 2);  // pages 0..1, clean
  EXPECT_FALSE(faults_.EndWindowIfNothingToWriteBack(c, 5));
  EXPECT_TRUE(faults_.EndWindowIfNothingToWriteBack(c, 6));
  EXPECT_TRUE(faults_.EndWindowIfNothingToWriteBack(c, 77));  // unknown: nothing to do
  {
    absl::MutexLock lock(&c.mu);
    EXPECT_EQ(c.windows.count(5), 1u) << "a window with a kept-aside page was ended";
    EXPECT_EQ(c.windows.count(6), 0u);
    EXPECT_EQ(c.kept_aside.count(4), 1u);
  }
  EXPECT_EQ(map_[0], 1) << "the clean range did not reopen";  // refetched
  // Through MapperInvalidation, started: the clean window's END has ended
  // it when Handle returns; the dirty one's is queued and lands.
  AttachmentTable table(1);
  table.Insert(att_, 1, 1);
  MapperInvalidation inval(&faults_, &table);
  inval.Start();
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kBegin;
  n.segid = att_->segid;
  n.start = 8 * kPage;
  n.end = 10 * kPage;
  n.window = 7;
  n.home_node = 1;
  ASSERT_TRUE(inval.Handle(n).ok());
  n.kind = InvalidationNotice::Kind::kEnd;
  ASSERT_TRUE(inval.Handle(n).ok());
  {
    absl::MutexLock lock(&c.mu);
    EXPECT_EQ(c.windows.size(), 1u) << "the clean window was not ended on the delivering thread";
  }
  inval.Stop();
  ASSERT_TRUE(faults_.EndWindow(c, 5, {}).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9) << "the kept-aside write was lost";
}

// Found by the protocol simulation (tests/sim/README.md, seed 6 before the
// fix): range_end takes a kept-aside page out of kept_aside, then writes
// it back. A sync that looked in between saw nothing kept aside and
// returned OK while the page was still on its way to the home (or about
// to fail and be put back dirty). It must wait until the window's end has
// settled the page.
TEST_F(MapperWindowsTest, ASyncWaitsForAWindowsEndStillWritingBack) {
  const char* kBeforeRetry = "fault_service.writeback.before_retry";
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  map_[4 * kPage] = 9;                              // dirty
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);  // kept aside
  // range_end's write-back is refused once (a window at the home) and held
  // before its retry: out of kept_aside, not yet at the home.
  SetHome(&FakeHome::refuse_writes, true);
  FaultPoints::Arm(kBeforeRetry);
  absl::Status end_st;
  std::thread end([&] { end_st = faults_.EndWindow(*att_->cache, 5, {}); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeRetry, absl::Seconds(10)));
  FaultPoints::Arm(kSyncWaits);
  absl::Status sync_st;
  uint8_t home_at_return = 0;
  std::thread sync([&] {
    sync_st = faults_.Sync(*att_, 0, att_->size);
    home_at_return = HomeByte(4 * kPage);
  });
  bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
  SetHome(&FakeHome::refuse_writes, false);
  FaultPoints::Release(kBeforeRetry);
  FaultPoints::Release(kSyncWaits);
  end.join();
  sync.join();
  EXPECT_TRUE(waited) << "the sync did not wait for the window's end";
  EXPECT_TRUE(end_st.ok()) << end_st;
  EXPECT_TRUE(sync_st.ok()) << sync_st;
  EXPECT_EQ(home_at_return, 9) << "sync returned OK before the kept-aside write reached the home";
}

// Found by the protocol simulation (tests/sim/README.md, seed 267 before
// the fix): a window held open longer than Sync's 10 s budget (an
// exporter's own bracket) keeps a dirty page aside. The sync waited 10 s
// and then said OK, though that write was not at the home. It says EAGAIN
// (docs/consistency.md); the window's end writes the page back.
TEST_F(MapperWindowsTest, ASyncOutlivedByAWindowSaysEagainNotOk) {
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  map_[4 * kPage] = 9;                              // dirty
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);  // kept aside; the window stays open
  FaultPoints::Arm(kSyncWaits);
  absl::Status sync_st;
  std::thread sync([&] { sync_st = faults_.Sync(*att_, 0, att_->size); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(10)));
  clock_.Advance(absl::Seconds(11));  // the sync's budget passes
  FaultPoints::Release(kSyncWaits);
  sync.join();
  EXPECT_EQ(ToErrno(sync_st), EAGAIN)
      << "sync said " << sync_st << " while a write it covers is kept aside, not at the home";
  EXPECT_EQ(HomeByte(4 * kPage), 1);
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9);
  EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
}

// Issue 16: a write-back could land after tether_detach returned. Two
// syncs of one attachment run at once (the evictor's and the detach's, or
// two client threads): the first takes the dirty page (kWriteback) and is
// held before it sends it. The second found nothing dirty — it skipped
// pages in write-back — and returned OK, so detach returned while the
// byte was not at the home yet. It must wait for that write-back to
// settle (land, or fail and be taken again and reported).
TEST_F(MapperWindowsTest, ASyncWaitsForAnotherSyncsWriteBackInFlight) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  map_[4 * kPage] = 9;  // dirty
  FaultPoints::Arm(kBeforeSend);
  absl::Status first_st;
  std::thread first([&] { first_st = faults_.Sync(*att_, 0, att_->size); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  ASSERT_EQ(State(4), PageState::kWriteback);
  FaultPoints::Arm(kSyncWaits);
  absl::Status detach_st;
  uint8_t home_at_return = 0;
  std::thread detach([&] {
    detach_st = faults_.Sync(*att_, 0, att_->size);  // what DetachEntry runs
    home_at_return = HomeByte(4 * kPage);
  });
  bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
  FaultPoints::Release(kBeforeSend);
  FaultPoints::Release(kSyncWaits);
  first.join();
  detach.join();
  EXPECT_TRUE(waited) << "the second sync did not wait for the first one's write-back";
  EXPECT_TRUE(first_st.ok()) << first_st;
  EXPECT_TRUE(detach_st.ok()) << detach_st;
  EXPECT_EQ(home_at_return, 9)
      << "sync (detach) returned OK before the write-back reached the home";
}

// The same when the write-back in flight fails: the waiting sync takes the
// page again (it is dirty once more) and reports the failure, never OK.
TEST_F(MapperWindowsTest, ASyncWaitingForAFailedWriteBackReportsIt) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  map_[4 * kPage] = 9;  // dirty
  SetHome(&FakeHome::fail_writes, true);
  FaultPoints::Arm(kBeforeSend);
  absl::Status first_st;
  std::thread first([&] { first_st = faults_.Sync(*att_, 0, att_->size); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  FaultPoints::Arm(kSyncWaits);
  absl::Status detach_st;
  std::thread detach([&] { detach_st = faults_.Sync(*att_, 0, att_->size); });
  bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
  FaultPoints::Release(kBeforeSend);
  FaultPoints::Release(kSyncWaits);
  first.join();
  detach.join();
  EXPECT_TRUE(waited) << "the second sync did not wait for the first one's write-back";
  EXPECT_EQ(ToErrno(first_st), EIO) << first_st;
  EXPECT_EQ(ToErrno(detach_st), EIO) << "a failed write-back was reported OK: " << detach_st;
  EXPECT_EQ(State(4), PageState::kDirty) << "kept for a later sync";
}

// Issue 14 (syncwait): a tether_sync issued right after a window's END
// has been handed over — the END queued, its kept-aside write-back on its
// way to the home, held before it is sent — must not answer OK before that
// write lands: another node that reads after the sync returned would see
// the home's older bytes. (Reported as: the sync checked kept_writing only
// while a window was open. EndWindow keeps its window open until the
// write-back settled, so the sync waits; this pins that down.)
TEST_F(MapperWindowsTest, ASyncAfterRangeEndWaitsForItsWriteBackInFlight) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  AttachmentTable table(1);
  table.Insert(att_, 1, 1);
  MapperInvalidation inval(&faults_, &table);
  inval.Start();
  map_[4 * kPage] = 9;  // dirty
  InvalidationNotice n;
  n.kind = InvalidationNotice::Kind::kBegin;
  n.segid = att_->segid;
  n.start = 0;
  n.end = att_->size;
  n.window = 5;
  n.home_node = 1;
  ASSERT_TRUE(inval.Handle(n).ok());  // kept aside
  FaultPoints::Arm(kBeforeSend);
  n.kind = InvalidationNotice::Kind::kEnd;
  ASSERT_TRUE(inval.Handle(n).ok());  // queued: returns at once
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  FaultPoints::Arm(kSyncWaits);
  std::atomic<bool> returned{false};
  absl::Status sync_st;
  uint8_t home_at_return = 0;
  std::thread sync([&] {
    sync_st = faults_.Sync(*att_, 0, att_->size);
    home_at_return = HomeByte(4 * kPage);
    returned = true;
  });
  bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
  EXPECT_FALSE(returned.load()) << "sync returned while the window's write-back was held";
  FaultPoints::Release(kBeforeSend);
  FaultPoints::Release(kSyncWaits);
  sync.join();
  inval.Stop();
  EXPECT_TRUE(waited) << "the sync did not wait for the window's write-back";
  EXPECT_TRUE(sync_st.ok()) << sync_st;
  EXPECT_EQ(home_at_return, 9) << "sync returned OK before the kept-aside write reached the home";
}

// The same when that write-back fails: the window's end puts the page
// back dirty, and the waiting sync takes it and reports the failure (EIO)
// — never an OK for a write that is not at the home.
TEST_F(MapperWindowsTest, ASyncAfterRangeEndReportsItsFailedWriteBack) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  map_[4 * kPage] = 9;                              // dirty
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);  // kept aside
  SetHome(&FakeHome::fail_writes, true);
  FaultPoints::Arm(kBeforeSend);
  absl::Status end_st;
  std::thread end([&] { end_st = faults_.EndWindow(*att_->cache, 5, {}); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  FaultPoints::Arm(kSyncWaits);
  std::atomic<bool> returned{false};
  absl::Status sync_st;
  std::thread sync([&] {
    sync_st = faults_.Sync(*att_, 0, att_->size);
    returned = true;
  });
  bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
  EXPECT_FALSE(returned.load()) << "sync returned while the window's write-back was held";
  FaultPoints::Release(kBeforeSend);
  FaultPoints::Release(kSyncWaits);
  end.join();
  sync.join();
  EXPECT_TRUE(waited) << "the sync did not wait for the window's write-back";
  EXPECT_EQ(ToErrno(end_st), EIO) << end_st;
  EXPECT_EQ(ToErrno(sync_st), EIO) << "a failed write-back was reported as " << sync_st;
  EXPECT_EQ(State(4), PageState::kDirty) << "kept for a later sync";
  SetHome(&FakeHome::fail_writes, false);
  EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9);
}

// Issue 14 / 16: the home refuses a write-back because the exporter
// unmapped the address since the page was read (ENXIO). There is nothing
// to write it to: the page is counted lost and reported once (EIO, as for
// pages a window's end reports gone), not kept dirty for syncs that can
// never succeed; pages of the same run whose address exists are written.
TEST_F(MapperWindowsTest, AWriteBackTheHomeFindsGoneIsReportedLostNotKeptDirty) {
  map_[4 * kPage] = 9;  // pages 4 and 5 dirty: one run
  map_[5 * kPage] = 8;
  {
    absl::MutexLock lock(&home_.mu);
    home_.gone_start = 4 * kPage;
    home_.gone_end = 5 * kPage;
  }
  absl::Status st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_EQ(ToErrno(st), EIO) << st;
  EXPECT_NE(std::string(st.message()).find("unmapped"), std::string::npos) << st;
  EXPECT_EQ(HomeByte(5 * kPage), 8) << "the page whose address exists was not written";
  EXPECT_EQ(State(4), PageState::kAbsent) << "the gone page was kept";
  st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_TRUE(st.ok()) << "reported once, then nothing is left to write: " << st;

  // A kept-aside page whose write-back after the window finds it gone.
  map_[4 * kPage] = 7;
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);
  (void)faults_.EndWindow(*att_->cache, 5, {});
  EXPECT_EQ(State(4), PageState::kAbsent) << "put back dirty, for syncs that can never succeed";
  st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_EQ(ToErrno(st), EIO) << st;
  EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
}

TEST_F(MapperWindowsTest, RevokeDropsEverything) {
  map_[0] = 3;  // dirty
  faults_.Revoke(*att_, "fenced: test");
  absl::Status st = faults_.Sync(*att_, 0, att_->size);
  EXPECT_EQ(ToErrno(st), EIDRM) << st;
  EXPECT_NE(std::string(st.message()).find("fenced: test"), std::string::npos);
  struct stat sb;
  ASSERT_EQ(fstat(att_->cache->memfd, &sb), 0);
  EXPECT_EQ(sb.st_size, 0) << "truncated: every access raises SIGBUS";
}

// Issue 16: a second attachment of the segment maps the same cache. A page
// installed through the first (its uffd's UFFDIO_COPY) appears in the
// second without a missing fault; a store through the second must still
// fault first (the arming's uffd-wp marker), so that the page is dirty
// and written back — else the store lands unseen and is never synced.
TEST_F(MapperWindowsTest, AStoreThroughASecondAttachmentToAPageTheFirstInstalledIsTracked) {
  ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
  uint8_t* second = AddSecond(true);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second_->cache, att_->cache) << "one cache per segment";
  EXPECT_EQ(map_[0], 1);  // fetched and installed through att_
  EXPECT_EQ(second[0], 1) << "the same page, no second fetch";
  second[100] = 7;
  EXPECT_EQ(map_[100], 7) << "seen through the first at once";
  EXPECT_EQ(State(0), PageState::kDirty) << "the store through the second was not tracked";
  ASSERT_TRUE(faults_.Sync(*second_, 0, second_->size).ok());
  EXPECT_EQ(HomeByte(100), 7);
  RemoveSecond();
  EXPECT_EQ(map_[100], 7) << "the first keeps working after the second's detach";
}

// Issue 16: a write-back protects the page again in every writable
// attachment before it reads it. A store through the second attachment
// while the first's sync is on its way must re-dirty the page (and reach
// the home at the next sync); protecting only the syncing attachment's
// mapping would leave the second's PTE writable, and the store would be
// lost.
TEST_F(MapperWindowsTest, AStoreThroughTheOtherAttachmentDuringAWriteBackIsNotLost) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
  uint8_t* second = AddSecond(true);
  ASSERT_NE(second, nullptr);
  map_[0] = 3;    // dirty through the first
  second[0] = 4;  // and stored through the second (its PTE now writable)
  FaultPoints::Arm(kBeforeSend);
  std::thread syncer([&] { EXPECT_TRUE(faults_.Sync(*att_, 0, att_->size).ok()); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  second[200] = 9;  // the page was read for the write-back: this store is newer
  FaultPoints::Release(kBeforeSend);
  syncer.join();
  EXPECT_EQ(State(0), PageState::kDirty) << "the racing store did not re-dirty the page";
  ASSERT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
  EXPECT_EQ(HomeByte(0), 4);
  EXPECT_EQ(HomeByte(200), 9) << "the store during the write-back was lost";
  RemoveSecond();
}

// Issue 16: a read-only attachment shares the cache but never stores; a
// page it installed is still tracked for the writable one.
TEST_F(MapperWindowsTest, APageAReadOnlyAttachmentInstalledIsTrackedForTheWritableOne) {
  ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
  uint8_t* second = AddSecond(false);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second[5 * kPage], 1);  // installed through the read-only attachment
  map_[5 * kPage + 1] = 6;
  EXPECT_EQ(second[5 * kPage + 1], 6);
  EXPECT_EQ(State(5), PageState::kDirty);
  ASSERT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
  EXPECT_EQ(HomeByte(5 * kPage + 1), 6);
  RemoveSecond();
}

// Issue 16: one cache serves every attachment of the segment on this node,
// so a detach that writes back only its own range leaves dirty pages no
// remaining attachment covers (here: its write-back failed, and was
// reported) with nobody to write them back — and the cache's last detach
// dropped them while their address exists. The last detach writes back
// every dirty page of the cache first.
TEST_F(MapperWindowsTest, TheLastDetachWritesBackPagesAnEarlierDetachLeftDirty) {
  ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
  ASSERT_NE(AddSecond(false, 0, 4), nullptr);  // read-only, pages 0-3: keeps the cache
  map_[9 * kPage] = 9;                         // dirty, only att_ covers it
  SetHome(&FakeHome::fail_writes, true);
  absl::Status st = faults_.Detach(att_);
  EXPECT_EQ(ToErrno(st), EIO) << "the failed write-back was not reported: " << st;
  SetHome(&FakeHome::fail_writes, false);
  st = faults_.Detach(second_);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(HomeByte(9 * kPage), 9)
      << "the last detach dropped a dirty page an earlier detach could not write back";
  munmap(second_map_, second_->size);
  second_map_ = nullptr;
}

// Issue 16: detach returns only after every write-back of its attachment
// landed, with another attachment of the segment keeping the cache open;
// a store through it after its range was synced (a thread racing the
// detach) is written back too, not left in the cache for nobody.
TEST_F(MapperWindowsTest, ADetachReturnsOnlyAfterItsWriteBacksLanded) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  const char* kAfterSync = "fault_service.detach.after_sync";
  ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
  ASSERT_NE(AddSecond(true, 0, 4), nullptr);  // writable, pages 0-3 only
  map_[9 * kPage] = 9;
  FaultPoints::Arm(kBeforeSend);
  FaultPoints::Arm(kAfterSync);
  std::atomic<bool> returned{false};
  absl::Status st;
  uint8_t home_at_return[2] = {0, 0};
  std::thread detach([&] {
    st = faults_.Detach(att_);
    home_at_return[0] = HomeByte(9 * kPage);
    home_at_return[1] = HomeByte(9 * kPage + 1);
    returned = true;
  });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  EXPECT_FALSE(returned.load()) << "detach returned while its write-back was held";
  FaultPoints::Release(kBeforeSend);
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kAfterSync, absl::Seconds(10)));
  map_[9 * kPage + 1] = 10;  // through the detaching attachment, after its sync
  FaultPoints::Arm(kBeforeSend);
  FaultPoints::Release(kAfterSync);
  bool sent_again = FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(5));
  EXPECT_FALSE(returned.load() && sent_again) << "detach returned while its write-back was held";
  FaultPoints::Release(kBeforeSend);
  detach.join();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(home_at_return[0], 9) << "detach returned before its write-back landed";
  EXPECT_EQ(home_at_return[1], 10)
      << "a store through the detaching attachment after its sync was left in the cache";
  RemoveSecond();
}

// Issue 14 (syncwait), detach: the cache's last detach writes back the
// dirty pages nobody else would — but it looked at kDirty pages only. A
// page a window kept aside (or whose write-back after the window is on
// its way) is kAbsent, so a last detach whose own range does not hold it
// (here: a read-only attachment of pages 0-3; the writer of page 9 left
// earlier, its write-back failed and reported) returned OK before that
// write landed, and closed the cache: a failure after that was counted
// lost for nobody. It must wait for it, and report its failure.
TEST_F(MapperWindowsTest, TheLastDetachWaitsForAWindowsWriteBackOutsideItsRange) {
  LastDetachDuringAWindowsWriteBack(/*fail=*/false);
}

TEST_F(MapperWindowsTest, TheLastDetachReportsAWindowsFailedWriteBackOutsideItsRange) {
  LastDetachDuringAWindowsWriteBack(/*fail=*/true);
}

// The same for a page another write-back has in flight (kWriteback) when
// the last detach looks: the evictor's sync of the whole cache, which
// takes the pages an earlier detach left dirty. (SyncCache through the
// detached writer's attachment stands for the evictor's call here: the
// same function over the same cache.)
TEST_F(MapperWindowsTest, TheLastDetachWaitsForAnotherWriteBackOutsideItsRange) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  const char* kSyncWaits = "fault_service.sync.wait_kept_aside";
  ASSERT_TRUE(faults_.shares_caches()) << "this kernel cannot share caches";
  ASSERT_NE(AddSecond(false, 0, 4), nullptr);  // read-only, pages 0-3: keeps the cache
  map_[9 * kPage] = 9;                         // dirty, only att_ covers it
  SetHome(&FakeHome::fail_writes, true);
  ASSERT_EQ(ToErrno(faults_.Detach(att_)), EIO);  // reported; page 9 stays dirty
  SetHome(&FakeHome::fail_writes, false);
  FaultPoints::Arm(kBeforeSend);
  absl::Status evict_st;
  std::thread evictor([&] { evict_st = faults_.Sync(*att_, 0, att_->size); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  ASSERT_EQ(State(9), PageState::kWriteback);
  FaultPoints::Arm(kSyncWaits);
  std::atomic<bool> returned{false};
  absl::Status st;
  uint8_t home_at_return = 0;
  std::thread detach([&] {
    st = faults_.Detach(second_);
    home_at_return = HomeByte(9 * kPage);
    returned = true;
  });
  bool waited = FaultPoints::WaitUntilReached(kSyncWaits, absl::Seconds(5));
  EXPECT_FALSE(returned.load()) << "the last detach returned while a write-back was held";
  FaultPoints::Release(kBeforeSend);
  FaultPoints::Release(kSyncWaits);
  evictor.join();
  detach.join();
  munmap(second_map_, second_->size);
  second_map_ = nullptr;
  EXPECT_TRUE(waited) << "the last detach did not wait for the write-back in flight";
  EXPECT_TRUE(evict_st.ok()) << evict_st;
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(home_at_return, 9) << "the last detach returned before the write landed";
}

// Issue 16: a page a window caught dirty (kept aside) is written back as a
// diff against its twin, not whole: another writer's bytes of the page
// stored at the home meanwhile (the exporter's, another node's) survive.
TEST_F(MapperWindowsTest, AKeptAsidePageGoesBackAsADiff) {
  map_[4 * kPage] = 9;  // fetched (all 1s: the twin), then stored: dirty
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);
  {
    absl::MutexLock lock(&home_.mu);
    home_.mem[4 * kPage + 100] = 5;  // another writer's byte of the page
  }
  ASSERT_TRUE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9) << "our store";
  EXPECT_EQ(HomeByte(4 * kPage + 100), 5)
      << "the kept-aside write-back carried bytes we never stored (whole page)";
  EXPECT_EQ(map_[4 * kPage + 100], 5) << "refetched after the window";
}

// Issue 16: a kept-aside page whose write-back after the window failed is
// put back dirty with its twin: the next sync's diff holds every byte this
// node changed since the fetch (before and after the window) and nothing
// else, so another writer's byte stored at the home meanwhile survives.
TEST_F(MapperWindowsTest, APagePutBackDirtyKeepsTheTwinItWasFetchedWith) {
  map_[4 * kPage] = 9;  // twin: all 1s
  faults_.BeginWindow(*att_->cache, 5, 0, kPages);
  SetHome(&FakeHome::fail_writes, true);
  EXPECT_FALSE(faults_.EndWindow(*att_->cache, 5, {}).ok());
  ASSERT_EQ(State(4), PageState::kDirty) << "put back dirty";
  SetHome(&FakeHome::fail_writes, false);
  {
    absl::MutexLock lock(&home_.mu);
    home_.mem[4 * kPage + 100] = 5;  // another writer's byte
  }
  map_[4 * kPage + 200] = 7;  // stored after the window
  ASSERT_TRUE(faults_.Sync(*att_, 0, att_->size).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9) << "a byte stored before the window was not sent";
  EXPECT_EQ(HomeByte(4 * kPage + 200), 7) << "a byte stored after the window was not sent";
  EXPECT_EQ(HomeByte(4 * kPage + 100), 5) << "the diff carried a byte this node never changed";
}

// Issue 16: a revocation while a sync's write-back is on its way discards
// the pages; the sync reports the revocation and its reason (EIDRM), not
// "the exporter unmapped that memory" — which detach would forgive.
TEST_F(MapperWindowsTest, PagesLostToARevocationDuringASyncAreReportedAsRevoked) {
  const char* kBeforeSend = "fault_service.writeback.before_send";
  map_[4 * kPage] = 9;
  FaultPoints::Arm(kBeforeSend);
  absl::Status st;
  std::thread syncer([&] { st = faults_.Sync(*att_, 0, att_->size); });
  ASSERT_TRUE(FaultPoints::WaitUntilReached(kBeforeSend, absl::Seconds(10)));
  faults_.Revoke(*att_, "fenced: test");
  FaultPoints::Release(kBeforeSend);
  syncer.join();
  EXPECT_EQ(ToErrno(st), EIDRM) << st;
  EXPECT_NE(std::string(st.message()).find("revoked (fenced: test)"), std::string::npos) << st;
  EXPECT_EQ(std::string(st.message()).find("unmapped"), std::string::npos) << st;
  EXPECT_FALSE(FaultService::IsOnlyLostUnmapped(st)) << "detach would call this a success";
}

// A cache over part of a segment too large to share (XPMEM's whole address
// space) starts at the attachment's first segment page (base_page), not at
// memfd offset 0's segment page: the twin of segment page p is read at the
// cache's offset of p. Read at p * kPage instead, it is some other page
// (here a hole: zeros), every byte of the page differs from it, and the
// write-back overwrites what another writer stored in the page's other
// bytes at the home meanwhile.
TEST_F(MapperWindowsTest, ATwinInACacheOverPartOfAHugeSegmentIsThatPages) {
  auto big = std::make_shared<Attachment>();
  big->id = 9;
  big->segid = 2;  // its own cache
  big->home = 1;
  big->seg_offset = 4 * kPage;
  big->size = 8 * kPage;
  big->writable = true;
  big->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  ASSERT_GE(big->uffd, 0);
  uffdio_api api{UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
  ASSERT_EQ(ioctl(big->uffd, UFFDIO_API, &api), 0);
  ASSERT_TRUE(faults_.Join(big, SegmentCache::kMaxSharedBytes * 2).ok());
  ASSERT_EQ(big->cache->first(), 4u) << "a cache over the attachment's range only";
  auto* m = static_cast<uint8_t*>(
      mmap(nullptr, big->size, PROT_READ | PROT_WRITE, MAP_SHARED, big->cache->memfd, 0));
  ASSERT_NE(m, MAP_FAILED);
  uffdio_register reg{};
  reg.range = {reinterpret_cast<uint64_t>(m), big->size};
  reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
  ASSERT_EQ(ioctl(big->uffd, UFFDIO_REGISTER, &reg), 0);
  big->vaddr = reinterpret_cast<uint64_t>(m);
  ASSERT_TRUE(faults_.Add(big).ok());
  m[0] = 9;  // segment page 4: fetched (all 1s), then its twin taken, then dirty
  {
    absl::MutexLock lock(&home_.mu);
    home_.mem[4 * kPage + 100] = 5;  // another writer's byte of that page
  }
  EXPECT_TRUE(faults_.Sync(*big, 0, big->size).ok());
  EXPECT_EQ(HomeByte(4 * kPage), 9) << "our store";
  EXPECT_EQ(HomeByte(4 * kPage + 100), 5)
      << "the write-back carried bytes we never stored (a twin of the wrong page)";
  faults_.Remove(big);
  munmap(m, big->size);
}

}  // namespace
}  // namespace tether
