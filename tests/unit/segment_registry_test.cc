// SegmentRegistry with real ExporterMemory: this test process and a forked
// child act as exporters.
#include "daemon/home/segment_registry.h"

#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include <gtest/gtest.h>

#include "tests/unit/kernel_feature.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "daemon/common/errors.h"
#include "daemon/common/fault_points.h"
#include "daemon/common/node_state.h"
#include "daemon/common/page_diff.h"
#include "daemon/common/poll_now.h"
#include "daemon/common/segid.h"
#include "daemon/common/segment_name.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

std::unique_ptr<ExporterMemory> Self() {
  auto m = ExporterMemory::Open(PidfdOpen(getpid()), getpid());
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
    mem_ = static_cast<uint8_t*>(
        mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    for (size_t i = 0; i < kSize; ++i) mem_[i] = static_cast<uint8_t>(i);
    ASSERT_TRUE(reg_.Start(nullptr).ok());
    owner_.uid = 1000;
    owner_.gid = 100;
  }
  void TearDown() override {
    FaultPoints::ReleaseAll();
    munmap(mem_, kSize);
  }

  static constexpr size_t kSize = 64 * 1024;
  SegmentRegistry reg_{3, 0x77};
  uint8_t* mem_ = nullptr;
  Credentials owner_;
};

TEST_F(RegistryTest, ExportGrantReadWrite) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0640, Self());
  ASSERT_TRUE(segid.ok()) << segid.status();
  SegidParts p;
  ASSERT_TRUE(ParseSegid(*segid, &p));
  EXPECT_EQ(p.node, 3u);
  EXPECT_EQ(p.incarnation, 0x77u);

  Credentials member{0, 2000, 100, {}};
  EXPECT_EQ(ToErrno(reg_.Attach(*segid, member, true, 5).status()), EACCES);
  auto ro = reg_.Attach(*segid, member, false, 5);
  ASSERT_TRUE(ro.ok());
  EXPECT_EQ(ro->segment_size, kSize);
  auto rw = reg_.Attach(*segid, owner_, true, 5);
  ASSERT_TRUE(rw.ok());

  uint8_t buf[4096];
  ASSERT_TRUE(reg_.ReadBlocks(5, *segid, ro->id, 4096, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(std::memcmp(buf, mem_ + 4096, sizeof(buf)), 0);
  // grants are bound to the node they were given to
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(6, *segid, ro->id, 0, absl::MakeSpan(buf))), EACCES);
  // bounds
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, ro->id, kSize - 100, absl::MakeSpan(buf))), EINVAL);
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, ro->id, ~0ull - 10, absl::MakeSpan(buf))), EINVAL);
  // writes need a writable grant
  std::memset(buf, 0xee, sizeof(buf));
  EXPECT_EQ(ToErrno(reg_.WriteBlocks(5, *segid, ro->id, 0, buf)), EACCES);
  ASSERT_TRUE(reg_.WriteBlocks(5, *segid, rw->id, 8192, buf).ok());
  EXPECT_EQ(mem_[8192], 0xee);
  EXPECT_EQ(mem_[8191], static_cast<uint8_t>(8191));
}

TEST_F(RegistryTest, WritesRespectExporterProtections) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto rw = reg_.Attach(*segid, owner_, true, 5);
  ASSERT_TRUE(rw.ok());
  ASSERT_EQ(mprotect(mem_ + 4096, 4096, PROT_READ), 0);
  uint8_t buf[4096] = {};
  EXPECT_EQ(ToErrno(reg_.WriteBlocks(5, *segid, rw->id, 4096, buf)), EACCES);
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096));
  ASSERT_EQ(munmap(mem_ + 8192, 4096), 0);
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, rw->id, 8192, absl::MakeSpan(buf))), EFAULT);
  mprotect(mem_ + 4096, 4096, PROT_READ | PROT_WRITE);
  mmap(mem_ + 8192, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
}

// An mprotect that lands while a write-back is on its way into the
// exporter: the write must not go through the new protection (issue 14,
// defect 5: /proc/<pid>/mem writes with FOLL_FORCE did, after a check of
// /proc/<pid>/maps that the mprotect had already made stale).
TEST_F(RegistryTest, WriteRacingMprotectDoesNotLand) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto rw = reg_.Attach(*segid, owner_, true, 5);
  ASSERT_TRUE(rw.ok());
  uint8_t buf[4096];
  std::memset(buf, 0xee, sizeof(buf));
  FaultPoints::Arm("exporter_memory.write.before_write");
  absl::Status st;
  std::thread writer([&] { st = reg_.WriteBlocks(5, *segid, rw->id, 4096, buf); });
  ASSERT_TRUE(
      FaultPoints::WaitUntilReached("exporter_memory.write.before_write", absl::Seconds(10)));
  ASSERT_EQ(mprotect(mem_ + 4096, 4096, PROT_READ), 0);
  FaultPoints::Release("exporter_memory.write.before_write");
  writer.join();
  EXPECT_EQ(ToErrno(st), EACCES) << st;
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096)) << "the write went through PROT_READ";
  EXPECT_EQ(mem_[8191], static_cast<uint8_t>(8191));
  mprotect(mem_ + 4096, 4096, PROT_READ | PROT_WRITE);
}

// Two writers of different bytes of one page, and the exporter itself,
// all survive: each write-back carries only the bytes its writer changed
// since it read the page (issue 16). Whole pages, as before, lost all but
// the last writer's.
TEST_F(RegistryTest, DiffWriteBacksOfOnePageKeepEveryWritersBytes) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto a = reg_.Attach(*segid, owner_, true, 5);
  auto b = reg_.Attach(*segid, owner_, true, 6);
  ASSERT_TRUE(a.ok() && b.ok());
  // Both read page 1 (their twins), then store: A the even bytes of the
  // first half, B the odd ones; the exporter the second half.
  std::vector<uint8_t> twin(mem_ + 4096, mem_ + 8192), pa = twin, pb = twin;
  for (size_t i = 0; i < 2048; ++i)
    (i % 2 ? pb : pa)[i] = static_cast<uint8_t>(i % 2 ? 0xbb : 0xaa);
  std::memset(mem_ + 4096 + 2048, 0xee, 2048);
  std::vector<uint8_t> da, db;
  ASSERT_GT(AppendPageDiff(0, twin.data(), pa.data(), &da), 0u);
  ASSERT_GT(AppendPageDiff(0, twin.data(), pb.data(), &db), 0u);
  ASSERT_TRUE(reg_.WriteDiff(5, *segid, a->id, 4096, da).ok());
  ASSERT_TRUE(reg_.WriteDiff(6, *segid, b->id, 4096, db).ok());
  for (size_t i = 0; i < 4096; ++i) {
    uint8_t want = i >= 2048 ? 0xee : i % 2 ? 0xbb : 0xaa;
    ASSERT_EQ(mem_[4096 + i], want) << "byte " << i << " of the page lost its write";
  }
  EXPECT_EQ(mem_[4095], static_cast<uint8_t>(4095));  // pages around it untouched
  EXPECT_EQ(mem_[8192], static_cast<uint8_t>(8192));
}

// A page of 2048 one-byte runs (more iovecs than one process_vm_writev
// takes, IOV_MAX) lands whole; a diff of several pages lands at their
// offsets.
TEST_F(RegistryTest, DiffWithManyRunsAndPages) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto rw = reg_.Attach(*segid, owner_, true, 5);
  ASSERT_TRUE(rw.ok());
  std::vector<uint8_t> diff;
  std::vector<uint8_t> t2(mem_ + 2 * 4096, mem_ + 3 * 4096), p2 = t2;
  for (size_t i = 1; i < 4096; i += 2) p2[i] = 0x11;
  std::vector<uint8_t> t4(mem_ + 4 * 4096, mem_ + 5 * 4096), p4(4096, 0x44);
  AppendPageDiff(1, t2.data(), p2.data(), &diff);  // offset 4096: page index 1 = page 2
  AppendPageDiff(3, t4.data(), p4.data(), &diff);
  ASSERT_TRUE(reg_.WriteDiff(5, *segid, rw->id, 4096, diff).ok());
  EXPECT_EQ(std::memcmp(mem_ + 2 * 4096, p2.data(), 4096), 0);
  EXPECT_EQ(std::memcmp(mem_ + 4 * 4096, p4.data(), 4096), 0);
  EXPECT_EQ(mem_[3 * 4096], static_cast<uint8_t>(3 * 4096));  // page 3 not in the diff
}

// A malformed diff is refused whole (EINVAL), even after a valid entry:
// nothing of it is written. So is one past the segment or on a read-only
// grant.
TEST_F(RegistryTest, BadDiffWritesNothing) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto rw = reg_.Attach(*segid, owner_, true, 5);
  auto ro = reg_.Attach(*segid, owner_, false, 5);
  ASSERT_TRUE(rw.ok() && ro.ok());
  std::vector<uint8_t> page(4096, 0x99), twin(4096, 0), diff;
  AppendPageDiff(0, twin.data(), page.data(), &diff);
  std::vector<uint8_t> bad = diff;
  bad.push_back(1);  // a cut entry after a valid one
  absl::Status st = reg_.WriteDiff(5, *segid, rw->id, 4096, bad);
  EXPECT_EQ(ToErrno(st), EINVAL) << st;
  EXPECT_NE(st.message().find("malformed page diff"), std::string::npos) << st;
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096)) << "written although refused";
  EXPECT_EQ(ToErrno(reg_.WriteDiff(5, *segid, rw->id, kSize, diff)), EINVAL);
  EXPECT_EQ(ToErrno(reg_.WriteDiff(5, *segid, ro->id, 4096, diff)), EACCES);
  EXPECT_EQ(ToErrno(reg_.WriteDiff(5, *segid, rw->id, 4096, {})), EINVAL);
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096));
}

// The notifier source is told of a write-back as of a read (tether.ko
// forwards only the invalidations of ranges marked cached, G3): the writer
// keeps the page it wrote, so later changes of it must reach the home's
// windows (issue 14, the protocol simulation's seed 137). Its refusal
// refuses the write.
TEST_F(RegistryTest, AWriteBackIsShownToTheNotifierSourceLikeARead) {
  struct Recorder : SegmentObserver {
    absl::Status BeforeRead(uint64_t, uint64_t start, uint64_t end) override {
      seen.emplace_back(start, end);
      return answer;
    }
    void SegmentGone(uint64_t, const std::string&) override {}
    std::vector<std::pair<uint64_t, uint64_t>> seen;
    absl::Status answer;
  } observer;
  SegmentRegistry reg(3, 0x78);
  ASSERT_TRUE(reg.Start(&observer).ok());
  auto segid = reg.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto rw = reg.Attach(*segid, owner_, true, 5);
  ASSERT_TRUE(rw.ok());
  uint8_t buf[4096];
  std::memset(buf, 0xee, sizeof(buf));
  ASSERT_TRUE(reg.WriteBlocks(5, *segid, rw->id, 4096, buf).ok());
  EXPECT_EQ(observer.seen, (std::vector<std::pair<uint64_t, uint64_t>>{{4096, 8192}}))
      << "the write-back was not marked in the notifier source";
  EXPECT_EQ(mem_[4096], 0xee);
  observer.answer = Retry("an invalidation of the exporter's memory is in progress");
  EXPECT_TRUE(IsRetry(reg.WriteBlocks(5, *segid, rw->id, 8192, buf)));
  EXPECT_EQ(mem_[8192], static_cast<uint8_t>(8192)) << "written though the source refused";
  reg.Stop();
}

// A notifier source that guards write-backs (tether.ko's TETHER_IOC_WRITE,
// scripted): BeforeWrite hands out a guard, GuardedWrite writes into this
// process's memory unless the script refuses it (ESTALE), after running
// the script's change (what the exporter does while the write is held).
struct GuardingSource : SegmentObserver {
  absl::Status BeforeRead(uint64_t, uint64_t, uint64_t) override { return absl::OkStatus(); }
  void SegmentGone(uint64_t, const std::string&) override {}
  absl::StatusOr<WriteGuard> BeforeWrite(uint64_t, uint64_t start, uint64_t end) override {
    ++guards;
    if (on_guard) on_guard();
    return WriteGuard{true, 2 * static_cast<uint64_t>(guards)};
  }
  absl::Status GuardedWrite(uint64_t, const WriteGuard& guard,
                            absl::Span<const WritePiece> pieces) override {
    ++writes;
    if (on_write) on_write();
    if (refusals > 0) {
      --refusals;
      return ErrnoStatus(ESTALE, "scripted: the exporter's memory changed");
    }
    for (const WritePiece& p : pieces) {
      std::memcpy(base + p.offset, p.data.data(), p.data.size());
      written.emplace_back(p.offset, p.data.size());
    }
    return absl::OkStatus();
  }
  uint8_t* base = nullptr;
  int guards = 0, writes = 0, refusals = 0;
  std::function<void()> on_guard, on_write;
  std::vector<std::pair<uint64_t, uint64_t>> written;
};

class GuardedWriteTest : public RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    src_.base = mem_;
    ASSERT_TRUE(reg_g_.Start(&src_).ok());
    auto segid = reg_g_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
    ASSERT_TRUE(segid.ok());
    segid_ = *segid;
    auto rw = reg_g_.Attach(segid_, owner_, true, 5);
    ASSERT_TRUE(rw.ok());
    grant_ = rw->id;
    std::memset(buf_, 0xee, sizeof(buf_));
  }
  void TearDown() override {
    reg_g_.Stop();
    RegistryTest::TearDown();
  }
  // What mmap(MAP_FIXED) over [start, end) does to the registry: a window
  // opens and closes with the range reported gone.
  void UnmapWindow(uint64_t start, uint64_t end) {
    auto w = reg_g_.OpenWindow(segid_, start, end);
    ASSERT_TRUE(w.ok());
    reg_g_.CloseWindow(segid_, w->id, {{start, end}});
  }

  GuardingSource src_;
  SegmentRegistry reg_g_{3, 0x79};
  uint64_t segid_ = 0, grant_ = 0;
  uint8_t buf_[4096];
};

// Issue 14: the write-back passed the checks; while it was held the
// exporter mapped something else over the page (MAP_FIXED: the change
// held mmap_lock for writing across the ack, so the home's wait for the
// write-back ran out). The source refuses the write; the registry checks
// again, finds the range unmapped since the writer read it, and answers
// ENXIO (the mapper counts the page lost) — never writes the old object's
// bytes into the new mapping.
TEST_F(GuardedWriteTest, ARefusedWriteBackIntoAReplacedMappingIsLost) {
  src_.on_write = [&] { UnmapWindow(4096, 8192); };
  src_.refusals = 1;
  absl::Status st = reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_);
  EXPECT_EQ(ToErrno(st), ENXIO) << st;
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096)) << "written into the new mapping";
  EXPECT_EQ(src_.writes, 1) << "tried again after the range was reported gone";
  EXPECT_EQ(src_.guards, 1);
}

// Refused while the change's window is still open: Retry (the mapper
// comes back after it closed, and then learns the range is gone).
TEST_F(GuardedWriteTest, ARefusalDuringAWindowIsRetry) {
  uint64_t window = 0;
  src_.on_write = [&] {
    auto w = reg_g_.OpenWindow(segid_, 4096, 8192);
    ASSERT_TRUE(w.ok());
    window = w->id;
  };
  src_.refusals = 1;
  absl::Status st = reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_);
  EXPECT_TRUE(IsRetry(st)) << st;
  EXPECT_EQ(src_.writes, 1);
  reg_g_.CloseWindow(segid_, window, {{4096, 8192}});
  src_.on_write = nullptr;
  EXPECT_EQ(ToErrno(reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_)), ENXIO);
  EXPECT_EQ(src_.writes, 1) << "written after the range was reported gone";
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096));
}

// Refused for a change that kept the mapping (madvise, a COW break,
// mprotect back and forth): checked again and written, once.
TEST_F(GuardedWriteTest, ARefusalForAChangeThatKeptTheMappingIsWrittenAgain) {
  src_.on_write = [&] {
    if (src_.writes > 1) return;
    auto w = reg_g_.OpenWindow(segid_, 4096, 8192);
    ASSERT_TRUE(w.ok());
    reg_g_.CloseWindow(segid_, w->id);
  };
  src_.refusals = 1;
  ASSERT_TRUE(reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_).ok());
  EXPECT_EQ(src_.writes, 2);
  EXPECT_EQ(src_.guards, 2) << "the second attempt needs a new guard";
  EXPECT_EQ(mem_[4096], 0xee);
}

// A source that refuses every time: bounded attempts, then Retry to the
// mapper — no loop at the home can spin.
TEST_F(GuardedWriteTest, EndlessRefusalsEndInRetry) {
  src_.refusals = 1000;
  absl::Status st = reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_);
  EXPECT_TRUE(IsRetry(st)) << st;
  EXPECT_EQ(src_.writes, SegmentRegistry::kWriteAttempts);
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096));
}

// The guard is taken after the checks: a window that opened (and even
// closed) between them is caught by the registry's second look, and the
// write is checked again instead of being made.
TEST_F(GuardedWriteTest, AWindowBetweenTheChecksAndTheGuardIsCaught) {
  src_.on_guard = [&] {
    if (src_.guards == 1) UnmapWindow(4096, 8192);
  };
  EXPECT_EQ(ToErrno(reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_)), ENXIO);
  EXPECT_EQ(src_.writes, 0);
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096));
}

// Issue 14, a LATE BEGIN: the notifier source learnt of an unmap only
// after the kernel made it, and recorded it without a window
// (RecordChange) between a write-back's checks and its guard. The second
// look sees it: checked again, refused as gone, nothing written.
TEST_F(GuardedWriteTest, AChangeRecordedWithoutAWindowIsCaught) {
  src_.on_guard = [&] {
    if (src_.guards == 1) reg_g_.RecordChange(segid_, 4096, 8192, /*gone=*/true);
  };
  EXPECT_EQ(ToErrno(reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_)), ENXIO);
  EXPECT_EQ(src_.writes, 0);
  EXPECT_EQ(mem_[4096], static_cast<uint8_t>(4096));
}

// The same for a change that kept the mapping (not gone): checked again
// and written, with a new guard.
TEST_F(GuardedWriteTest, AChangeRecordedWithoutAWindowThatKeptTheMappingIsWrittenAgain) {
  src_.on_guard = [&] {
    if (src_.guards == 1) reg_g_.RecordChange(segid_, 4096, 8192, /*gone=*/false);
  };
  ASSERT_TRUE(reg_g_.WriteBlocks(5, segid_, grant_, 4096, buf_).ok());
  EXPECT_EQ(src_.guards, 2);
  EXPECT_EQ(src_.writes, 1);
  EXPECT_EQ(mem_[4096], 0xee);
}

// Issue 14: what a writable grant read or wrote may come back dirty past
// any window, so it is reported (and kept marked in tether.ko) until the
// grant ends; read-only grants hold nothing dirty. Bad ranges: empty.
TEST_F(RegistryTest, WritableCopiesLastAsLongAsTheWritableGrant) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto ro = reg_.Attach(*segid, owner_, false, 6);
  auto rw = reg_.Attach(*segid, owner_, true, 5);
  auto rw7 = reg_.Attach(*segid, owner_, true, 7);
  ASSERT_TRUE(ro.ok() && rw.ok() && rw7.ok());
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  uint8_t buf[4096];
  ASSERT_TRUE(reg_.ReadBlocks(6, *segid, ro->id, 0, buf).ok());
  EXPECT_EQ(reg_.WritableCopies(*segid, 0, kSize), Ranges{}) << "a read-only copy counted";
  ASSERT_TRUE(reg_.ReadBlocks(5, *segid, rw->id, 8192, buf).ok());
  std::memset(buf, 0xee, sizeof(buf));
  ASSERT_TRUE(reg_.WriteBlocks(7, *segid, rw7->id, 16384, buf).ok());
  EXPECT_EQ(reg_.WritableCopies(*segid, 0, kSize), (Ranges{{8192, 12288}, {16384, 20480}}));
  EXPECT_EQ(reg_.WritableCopies(*segid, 10000, 17000), (Ranges{{10000, 12288}, {16384, 17000}}));
  // A window clears the cached marks (the node is asked), not this: a
  // dirty page kept aside may outlive it.
  auto w = reg_.OpenWindow(*segid, 0, kSize);
  ASSERT_TRUE(w.ok());
  reg_.CloseWindow(*segid, w->id);
  EXPECT_EQ(reg_.WritableCopies(*segid, 0, kSize), (Ranges{{8192, 12288}, {16384, 20480}}));
  ASSERT_TRUE(reg_.Detach(*segid, rw->id, 5).ok());
  EXPECT_EQ(reg_.WritableCopies(*segid, 0, kSize), (Ranges{{16384, 20480}}));
  reg_.FenceNode(*segid, 7, "test");
  EXPECT_EQ(reg_.WritableCopies(*segid, 0, kSize), Ranges{});
  EXPECT_EQ(reg_.WritableCopies(*segid, 8, 8), Ranges{});
  EXPECT_EQ(reg_.WritableCopies(*segid + 1, 0, kSize), Ranges{});
}

// Diff write-backs go through the source too, a page at a time (each
// page's runs in one call), and a refusal in the middle resumes with the
// page that was refused, not from the start.
TEST_F(GuardedWriteTest, DiffWriteBacksGoThroughTheSourceAPageAtATime) {
  std::vector<uint8_t> twin0(mem_ + 4096, mem_ + 8192), twin1(mem_ + 8192, mem_ + 12288);
  std::vector<uint8_t> cur0 = twin0, cur1 = twin1;
  cur0[10] = 0xa1;
  cur0[11] = 0xa2;
  cur1[4000] = 0xb1;
  std::vector<uint8_t> diff;
  AppendPageDiff(0, twin0.data(), cur0.data(), &diff);
  AppendPageDiff(1, twin1.data(), cur1.data(), &diff);
  src_.on_write = [&] {
    if (src_.writes == 2) src_.refusals = 1;  // the second page, once
  };
  ASSERT_TRUE(reg_g_.WriteDiff(5, segid_, grant_, 4096, diff).ok());
  EXPECT_EQ(src_.written,
            (std::vector<std::pair<uint64_t, uint64_t>>{{4096 + 10, 2}, {8192 + 4000, 1}}));
  EXPECT_EQ(src_.writes, 3);
  EXPECT_EQ(mem_[4096 + 10], 0xa1);
  EXPECT_EQ(mem_[8192 + 4000], 0xb1);
  EXPECT_EQ(mem_[4096 + 12], static_cast<uint8_t>(4096 + 12));
}

// Reads respect the exporter's protections too: a page it made PROT_NONE
// is not handed out (/proc/<pid>/mem, FOLL_FORCE, read it).
TEST_F(RegistryTest, ReadsRespectExporterProtections) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto g = reg_.Attach(*segid, owner_, false, 5);
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(mprotect(mem_ + 4096, 4096, PROT_NONE), 0);
  uint8_t buf[8192];
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, g->id, 4096, absl::MakeSpan(buf, 4096))), EACCES);
  // A batch that runs into it is refused whole.
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf))), EACCES);
  ASSERT_EQ(mprotect(mem_ + 4096, 4096, PROT_READ | PROT_WRITE), 0);
  ASSERT_TRUE(reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(std::memcmp(buf, mem_, sizeof(buf)), 0);
}

// An exporter that execs keeps its pid but not its memory: the home must
// not read (or write) the new program's memory at the exported address.
TEST_F(RegistryTest, AnExportersExecEndsItsMemory) {
  void* shared = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  std::memset(shared, 0x5a, 4096);
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  if (child == 0) {
    char c;
    if (read(go[0], &c, 1) == 1) execl("/bin/sleep", "sleep", "30", nullptr);
    _exit(1);
  }
  auto m = ExporterMemory::Open(PidfdOpen(child), child);
  ASSERT_TRUE(m.ok()) << m.status();
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(shared), 4096, 0600, std::move(*m));
  ASSERT_TRUE(segid.ok());
  auto g = reg_.Attach(*segid, owner_, true, 5);
  ASSERT_TRUE(g.ok());
  uint8_t buf[4096];
  ASSERT_TRUE(reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(buf[0], 0x5a);
  ASSERT_EQ(write(go[1], "x", 1), 1);
  // Until the exec is done (the child's comm changes): polling an event.
  std::string comm;
  for (int i = 0; i < 1000 && comm != "sleep\n"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    FILE* f = fopen(absl::StrCat("/proc/", child, "/comm").c_str(), "re");
    char line[64] = "";
    if (f && fgets(line, sizeof(line), f)) comm = line;
    if (f) fclose(f);
  }
  ASSERT_EQ(comm, "sleep\n");
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf))), ESRCH);
  EXPECT_EQ(ToErrno(reg_.WriteBlocks(5, *segid, g->id, 0, buf)), ESRCH);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  close(go[0]);
  close(go[1]);
  munmap(shared, 4096);
}

TEST_F(RegistryTest, BadExports) {
  uint64_t a = reinterpret_cast<uint64_t>(mem_);
  EXPECT_EQ(ToErrno(reg_.Make(owner_, a, 0, 0600, Self()).status()), EINVAL);
  EXPECT_EQ(ToErrno(reg_.Make(owner_, a + 1, 4096, 0600, Self()).status()), EINVAL);
  EXPECT_EQ(ToErrno(reg_.Make(owner_, a, 4095, 0600, Self()).status()), EINVAL);
  EXPECT_EQ(ToErrno(reg_.Make(owner_, ~0ull & ~4095ull, 8192, 0600, Self()).status()), EINVAL);
  EXPECT_EQ(ToErrno(reg_.Make(owner_, a, 4096, 01777, Self()).status()), EINVAL);
  // past the largest user address space there is (56 bits)
  EXPECT_EQ(ToErrno(reg_.Make(owner_, (1ull << 56) - 4096, 8192, 0600, Self()).status()), EINVAL);
  // a pidfd that names another process than the caller
  int other = PidfdOpen(getppid());
  EXPECT_EQ(ToErrno(ExporterMemory::Open(other, getpid()).status()), EACCES);
  EXPECT_TRUE(reg_.List().empty());
}

// A process with 5-level paging may map (and export) memory above 47 bits.
TEST_F(RegistryTest, ExportAbove47Bits) {
  auto segid = reg_.Make(owner_, 1ull << 47, 4096, 0600, Self());
  ASSERT_TRUE(segid.ok()) << segid.status();
  EXPECT_EQ(reg_.List().size(), 1u);
}

TEST_F(RegistryTest, RemovePublishLookup) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0644, Self());
  ASSERT_TRUE(segid.ok());
  Credentials stranger{0, 3000, 300, {}};
  EXPECT_EQ(ToErrno(reg_.Publish(*segid, "x", stranger)), EPERM);
  ASSERT_TRUE(reg_.Publish(*segid, "x", owner_).ok());
  EXPECT_EQ(reg_.Lookup("x")->segid, *segid);
  EXPECT_EQ(ToErrno(reg_.Publish(*segid, "", owner_)), EINVAL);
  auto g = reg_.Attach(*segid, stranger, false, 5);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(ToErrno(reg_.Remove(*segid, stranger)), EPERM);
  ASSERT_TRUE(reg_.Remove(*segid, owner_).ok());
  EXPECT_EQ(ToErrno(reg_.Remove(*segid, owner_)), ENOENT);  // double remove
  uint8_t buf[4096];
  EXPECT_EQ(ToErrno(reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf))), EIDRM);
  EXPECT_EQ(ToErrno(reg_.Attach(*segid, owner_, false, 5).status()), ENOENT);
  ASSERT_TRUE(reg_.Detach(*segid, g->id, 5).ok());
  EXPECT_TRUE(reg_.List().empty());  // forgotten once the last grant is gone
}

// Names are owned (segment_name.h): "OWNER/..." only by OWNER or root; a
// name held by a segment is not another segment's to take.
TEST_F(RegistryTest, NamesBelongToTheirOwner) {
  auto mine = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0644, Self());
  ASSERT_TRUE(mine.ok());
  Credentials stranger{0, 3000, 300, {}};
  auto theirs = reg_.Make(stranger, reinterpret_cast<uint64_t>(mem_), kSize, 0644, Self());
  ASSERT_TRUE(theirs.ok());
  // The stranger squats the owner's prefix first: refused.
  absl::Status st = reg_.Publish(*theirs, "1000/db", stranger);
  EXPECT_EQ(ToErrno(st), EPERM) << st;
  EXPECT_EQ(ToErrno(reg_.Publish(*theirs, "root/db", stranger)), EPERM);  // by user name
  ASSERT_TRUE(reg_.Publish(*mine, "1000/db", owner_).ok());
  EXPECT_EQ(reg_.Lookup("1000/db")->segid, *mine);
  // Its own prefix, by number or by name, is the stranger's.
  EXPECT_TRUE(reg_.Publish(*theirs, "3000/db", stranger).ok());
  // Root may publish any owner's name (here: taken, so EEXIST, not EPERM).
  EXPECT_EQ(ToErrno(reg_.Publish(*theirs, "1000/db", Credentials{0, 0, 0, {}})), EEXIST);
  // A name held by another segment: neither taken nor replaced.
  ASSERT_TRUE(reg_.Publish(*mine, "plain", owner_).ok());
  EXPECT_EQ(ToErrno(reg_.Publish(*theirs, "plain", stranger)), EEXIST);
  EXPECT_EQ(reg_.Lookup("plain")->segid, *mine);
  // An owner that is no user: refused, saying so.
  st = reg_.Publish(*mine, "no-such-user-zz9/db", owner_);
  EXPECT_EQ(ToErrno(st), EINVAL) << st;
  EXPECT_NE(st.message().find("no user"), std::string::npos) << st;
}

// Names are printable UTF-8: nothing a terminal would act on.
TEST_F(RegistryTest, NamesMustBePrintable) {
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(mem_), kSize, 0644, Self());
  ASSERT_TRUE(segid.ok());
  for (const std::string& bad :
       {std::string("\x1b[31mred"), std::string("a\nb"), std::string("del\x7f"),
        std::string("nul\0x", 5),
        std::string("c1\xc2\x9b"
                    "31m"),
        std::string("\xc0\xaf"), std::string("\xed\xa0\x80"), std::string("\xff"),
        std::string("cut\xe2\x82"), std::string("bidi\xe2\x80\xae"), std::string(256, 'a'),
        std::string()}) {
    absl::Status st = reg_.Publish(*segid, bad, owner_);
    EXPECT_EQ(ToErrno(st), EINVAL) << EscapeName(bad) << ": " << st;
    EXPECT_EQ(ToErrno(reg_.Lookup(bad).status()), EINVAL) << EscapeName(bad);
    // The message escapes what it quotes.
    EXPECT_EQ(st.message().find('\x1b'), absl::string_view::npos) << st;
  }
  EXPECT_TRUE(reg_.Publish(*segid, "caf\xc3\xa9 \xe6\x97\xa5\xf0\x9f\x98\x80", owner_).ok());
  EXPECT_TRUE(reg_.Publish(*segid, std::string(255, 'a'), owner_).ok());
  EXPECT_EQ(EscapeName("a\x1b[2J\\\xc2\x9b\xc3\xa9"), "a\\x1b[2J\\\\\\xc2\\x9b\xc3\xa9");
}

// A remote mapper's root acts as nobody unless its node is trusted; this
// node's own root is checked as itself.
TEST_F(RegistryTest, RemoteRootIsSquashed) {
  Credentials root{0, 0, 0, {0}};
  auto segid = reg_.Make(root, reinterpret_cast<uint64_t>(mem_), kSize, 0600, Self());
  ASSERT_TRUE(segid.ok());
  auto remote = reg_.Attach(*segid, root, true, 5);
  EXPECT_EQ(ToErrno(remote.status()), EACCES) << remote.status();
  EXPECT_NE(remote.status().message().find("squashed"), absl::string_view::npos) << remote.status();
  EXPECT_TRUE(reg_.Attach(*segid, root, true, 3).ok());  // node 3 is this node
  // Group 0 goes too: a remote non-root user in group 0 is in nogroup.
  auto g0 = reg_.Make(root, reinterpret_cast<uint64_t>(mem_), kSize, 0060, Self());
  ASSERT_TRUE(g0.ok());
  EXPECT_EQ(ToErrno(reg_.Attach(*g0, Credentials{0, 1000, 100, {0}}, true, 5).status()), EACCES);
  // A segment open to others is open to the squashed root too.
  auto open = reg_.Make(root, reinterpret_cast<uint64_t>(mem_), kSize, 0606, Self());
  ASSERT_TRUE(open.ok());
  EXPECT_TRUE(reg_.Attach(*open, root, true, 5).ok());
  reg_.SetTrustedPeers({5});
  EXPECT_TRUE(reg_.Attach(*segid, root, true, 5).ok());
  EXPECT_TRUE(reg_.Attach(*g0, Credentials{0, 1000, 100, {0}}, true, 5).ok());
  EXPECT_EQ(ToErrno(reg_.Attach(*segid, root, true, 6).status()), EACCES);  // 6 is not trusted
}

TEST_F(RegistryTest, ExporterExitIsNoticed) {
  void* shared = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  std::memset(shared, 0x5a, 4096);
  pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  auto m = ExporterMemory::Open(PidfdOpen(child), child);
  ASSERT_TRUE(m.ok()) << m.status();
  auto segid = reg_.Make(owner_, reinterpret_cast<uint64_t>(shared), 4096, 0600, std::move(*m));
  ASSERT_TRUE(segid.ok());
  auto g = reg_.Attach(*segid, owner_, false, 5);
  ASSERT_TRUE(g.ok());
  uint8_t buf[4096];
  ASSERT_TRUE(reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(buf[0], 0x5a);  // the child's copy
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  absl::Status st;
  for (int i = 0; i < 200; ++i) {
    st = reg_.ReadBlocks(5, *segid, g->id, 0, absl::MakeSpan(buf));
    if (ToErrno(st) == ESRCH) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ToErrno(st), ESRCH) << st;
  // A read of a dead process fails with ESRCH by itself
  // (process_vm_readv), possibly before the exit watcher's pidfd wake-up
  // marked the segment: wait (bounded) for that too.
  std::string state;
  for (int i = 0; i < 200; ++i) {
    state = reg_.List()[0].state;
    if (state == "exporter exited") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(state, "exporter exited");
}

// A restarted daemon (docs/consistency.md, "When the home daemon
// restarts") lets a segment of the earlier run be registered again under
// its segid only by its owner: otherwise a local user could claim the
// segid of another user's segment that has not come back yet, and the
// mappers handing their grants back would read the impostor's memory.
// Never-made and removed segids are not claimable either.
TEST_F(RegistryTest, OnlyTheOwnerMayRegisterASegmentAgainAfterARestart) {
  char tmpl[] = "/tmp/segment_registry_test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const uint64_t vaddr = reinterpret_cast<uint64_t>(mem_);
  uint64_t kept = 0, removed = 0;
  uint32_t epoch = 0;
  {
    auto state = NodeState::Open(dir, 3);
    ASSERT_TRUE(state.ok()) << state.status();
    epoch = (*state)->epoch();
    SegmentRegistry run1(3, state->get(), absl::InfinitePast());
    kept = *run1.Make(owner_, vaddr, kSize, 0600, Self());
    removed = *run1.Make(owner_, vaddr, kSize, 0600, Self());
    ASSERT_TRUE(run1.Remove(removed, owner_).ok());
  }
  auto restarted = [&](absl::Time grace_until) {
    auto state = NodeState::Open(dir, 3);
    EXPECT_TRUE(state.ok()) << state.status();
    return std::make_pair(std::move(*state), grace_until);
  };
  {
    auto [state, until] = restarted(absl::Now() + absl::Hours(1));
    ASSERT_EQ(state->epoch(), epoch);
    SegmentRegistry run2(3, state.get(), until);
    Credentials stranger{0, 1001, 100, {}};
    auto st = run2.Reregister(stranger, kept, vaddr, kSize, 0666, Self());
    EXPECT_EQ(ToErrno(st.status()), EACCES) << st.status();
    EXPECT_NE(st.status().message().find(absl::StrFormat("%#x", kept)), std::string::npos)
        << st.status();
    Credentials root{0, 0, 0, {}};
    EXPECT_EQ(ToErrno(run2.Reregister(root, kept, vaddr, kSize, 0666, Self()).status()), EACCES);
    EXPECT_EQ(ToErrno(run2.Reregister(owner_, removed, vaddr, kSize, 0600, Self()).status()),
              ENOENT);
    const uint64_t never = MakeSegid(3, epoch, state->first_local() - 1);
    EXPECT_EQ(ToErrno(run2.Reregister(owner_, never, vaddr, kSize, 0600, Self()).status()), ENOENT);
    EXPECT_TRUE(run2.List().empty());  // the refusals registered nothing
    auto ok = run2.Reregister(owner_, kept, vaddr, kSize, 0600, Self());
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ(*ok, kept);
  }
  {
    // Registered again, it is persisted again: the next restart keeps it.
    auto [state, until] = restarted(absl::Now() + absl::Hours(1));
    SegmentRegistry run3(3, state.get(), until);
    EXPECT_EQ(
        ToErrno(run3.Reregister(Credentials{0, 1001, 100, {}}, kept, vaddr, kSize, 0666, Self())
                    .status()),
        EACCES);
    EXPECT_TRUE(run3.Reregister(owner_, kept, vaddr, kSize, 0600, Self()).ok());
  }
  unlink((dir + "/node.state").c_str());
  rmdir(dir.c_str());
}

// A zero-timeout poll(2) answers -1/EINTR when a signal arrives with
// nothing ready: read as "the pidfd is not quiet", a live exporter looked
// exited (the fuzzer found it: libFuzzer's SIGALRM). The poll fails with
// EINTR here on purpose, once.
int interrupted_polls = 0;
int PollInterruptedOnce(pollfd* fds, nfds_t n, int timeout_ms) {
  if (interrupted_polls++ == 0) {
    errno = EINTR;
    return -1;
  }
  return ::poll(fds, n, timeout_ms);
}

TEST(ExporterMemoryTest, ASignalDoesNotMakeALiveExporterLookExited) {
  TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
  interrupted_polls = 0;
  poll_now_syscall_for_test = PollInterruptedOnce;
  auto m = ExporterMemory::Open(PidfdOpen(getpid()), getpid());
  poll_now_syscall_for_test = ::poll;
  EXPECT_EQ(interrupted_polls, 2);  // interrupted, then asked again
  EXPECT_TRUE(m.ok()) << m.status();
}

}  // namespace
}  // namespace tether
