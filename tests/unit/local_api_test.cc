// The client-request handler (local/local_api.h) with the real
// SegmentRegistry, AttachmentTable and FaultService, a DataPath over a fake
// tcp transport (fake_transport.h) and a fake RemoteHomes for the homes on
// other nodes. Requests are local::LocalRequest protos handled as
// LocalServer would hand them over (a LocalConnection with the caller's
// credentials; fds the handler did not take are closed after the call).
//
// What is checked is what a C caller sees: resp.err() (the errno libtether
// returns) and what changed in the tables, for gets, releases, attaches
// and lookups on this node and on others, and an export's round trip on
// this very process (its pidfd, /proc/self/mem).
#include "daemon/local/local_api.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/errors.h"
#include "daemon/common/segid.h"
#include "tests/unit/fake_transport.h"
#include "tests/unit/kernel_feature.h"

namespace tether {
namespace {

constexpr uint32_t kSelf = 1, kPeer = 2, kStranger = 4;  // kStranger: not in the cluster
constexpr uint32_t kIncarnation = 0x77;
constexpr uint64_t kSegSize = 64 * 1024;
const uint64_t kRemoteSegid = MakeSegid(kPeer, 9, 1);

// The homes on other nodes: knows kPeer; answers as scripted; records calls.
class FakeRemoteHomes : public RemoteHomes {
 public:
  struct AttachCall {
    uint32_t node;
    uint64_t segid;
    uint32_t uid;
    pid_t pid;
    bool write;
  };
  struct DetachCall {
    uint32_t node;
    uint64_t segid, grant;
  };

  bool Knows(uint32_t node) const override { return node == kPeer; }
  absl::StatusOr<Grant> Attach(uint32_t node, uint64_t segid, const Credentials& cred,
                               bool write) override {
    absl::MutexLock lock(&mu);
    attaches.push_back({node, segid, cred.uid, cred.pid, write});
    if (!attach_error.ok()) return attach_error;
    Grant g;
    g.id = next_grant++;
    g.segment_size = kSegSize;
    g.writable = write;
    return g;
  }
  absl::Status Detach(uint32_t node, uint64_t segid, uint64_t grant) override {
    absl::MutexLock lock(&mu);
    detaches.push_back({node, segid, grant});
    return absl::OkStatus();
  }
  absl::StatusOr<SegmentSummary> Lookup(const std::string& name) override {
    absl::MutexLock lock(&mu);
    lookups.push_back(name);
    return lookup_answer;
  }

  absl::Mutex mu;
  absl::Status attach_error;
  uint64_t next_grant = 55;
  absl::StatusOr<SegmentSummary> lookup_answer = ErrnoStatus(ENOENT, "no segment on any node");
  std::vector<AttachCall> attaches;
  std::vector<DetachCall> detaches;
  std::vector<std::string> lookups;
};

// The peer's BlockServer behind the fake tcp transport: records writes.
class RemoteHome : public BlockServer {
 public:
  absl::Status ReadBlocks(uint32_t, uint64_t, uint64_t, uint64_t, absl::Span<uint8_t>) override {
    return ErrnoStatus(EOPNOTSUPP, "not in this test");
  }
  absl::Status WriteBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset,
                           absl::Span<const uint8_t> src) override {
    absl::MutexLock lock(&mu);
    writes.push_back({peer_node, segid, grant, offset, std::string(src.begin(), src.end())});
    return absl::OkStatus();
  }
  struct Write {
    uint32_t peer_node;
    uint64_t segid, grant, offset;
    std::string bytes;
  };
  absl::Mutex mu;
  std::vector<Write> writes;
};

local::LocalRequest GetReq(uint64_t segid, bool write = true) {
  local::LocalRequest r;
  r.mutable_get()->set_segid(segid);
  r.mutable_get()->set_write(write);
  return r;
}
local::LocalRequest ReleaseReq(uint64_t apid) {
  local::LocalRequest r;
  r.mutable_release()->set_apid(apid);
  return r;
}
local::LocalRequest AttachReq(uint64_t apid, uint64_t offset, uint64_t size) {
  local::LocalRequest r;
  r.mutable_attach()->set_apid(apid);
  r.mutable_attach()->set_offset(offset);
  r.mutable_attach()->set_size(size);
  return r;
}
local::LocalRequest DetachReq(uint64_t id) {
  local::LocalRequest r;
  r.mutable_detach()->set_attach_id(id);
  return r;
}
local::LocalRequest LookupReq(const std::string& name) {
  local::LocalRequest r;
  r.mutable_lookup()->set_name(name);
  return r;
}

// A userfaultfd as libtether makes one (UFFDIO_API done), or -1 (errno
// set). Without privilege (vm.unprivileged_userfaultfd=0), a user-mode-only
// one will do: these tests never fault on it.
int NewUffd() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
#ifdef UFFD_USER_MODE_ONLY
  if (fd < 0 && errno == EPERM)
    fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
#endif
  if (fd < 0) return -1;
  uffdio_api api{UFFD_API, 0, 0};
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// For TETHER_REQUIRE_KERNEL_FEATURE (kernel_feature.h): empty if `fd` is
// a userfaultfd, else why NewUffd() failed.
std::string MissingUserfaultfd(int fd) {
  return fd >= 0 ? "" : std::string("userfaultfd(2): ") + std::strerror(errno);
}

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

class LocalApiTest : public ::testing::Test {
 protected:
  LocalApiTest() {
    tcp_.ServeBlocks(&remote_home_);
    me_.id = 1;
    me_.cred.pid = getpid();
    me_.cred.uid = getuid();
    me_.cred.gid = getgid();
    other_ = me_;
    other_.id = 2;
    other_.cred.pid = getpid() + 1;  // another process (never asked about: only its pid)
    other_.cred.uid = 1234;
  }

  // As LocalServer: the handler gets the fds, whatever it did not take is
  // closed after the call; fds of the answer go to `fds_out` (else closed).
  local::LocalResponse Call(const LocalConnection& c, const local::LocalRequest& req,
                            std::vector<int> fds = {}, std::vector<int>* fds_out = nullptr) {
    local::LocalResponse resp;
    std::vector<int> out;
    Api().Handle(c, req, fds, &resp, &out);
    for (int fd : fds)
      if (fd >= 0) close(fd);
    if (fds_out) {
      *fds_out = out;
    } else {
      for (int fd : out) close(fd);
    }
    return resp;
  }
  // A get of the peer's segment that must succeed: its apid.
  uint64_t GetRemote(const LocalConnection& c, bool write = true) {
    local::LocalResponse resp = Call(c, GetReq(kRemoteSegid, write));
    EXPECT_EQ(resp.err(), 0) << resp.message();
    return resp.get().apid();
  }

  FakeRemoteHomes remotes_;
  RemoteHome remote_home_;
  FakeTransport tcp_{"tcp", kSelf};
  SegmentRegistry registry_{kSelf, kIncarnation};
  AttachmentTable atts_{kIncarnation};
  DataPath data_{kSelf, &registry_, &tcp_, nullptr,
                 [](uint32_t node) -> absl::StatusOr<std::shared_ptr<const DataEndpoint>> {
                   if (node != kPeer) return ErrnoStatus(EHOSTUNREACH, "not a peer");
                   auto ep = std::make_shared<DataEndpoint>();
                   ep->node_id = node;
                   ep->address = "10.0.0.2:7000";
                   return ep;
                 }};
  FaultService faults_{&data_, 64 << 20,
                       [](const Attachment&, uint64_t, uint64_t, const std::string&) {}};
  LocalApi api_{kSelf, kIncarnation, &registry_, &remotes_, &faults_, &atts_, nullptr, nullptr};
  LocalConnection me_, other_;

  // The LocalApi that Call asks (a fixture with a notifier has its own).
  virtual LocalApi& Api() { return api_; }
};

TEST_F(LocalApiTest, GetOfAnotherNodesSegmentAsksItsHome) {
  local::LocalResponse resp = Call(me_, GetReq(kRemoteSegid, /*write=*/true));
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_NE(resp.get().apid(), 0u);
  EXPECT_EQ(resp.get().size(), kSegSize);
  ASSERT_EQ(remotes_.attaches.size(), 1u);
  EXPECT_EQ(remotes_.attaches[0].node, kPeer);
  EXPECT_EQ(remotes_.attaches[0].segid, kRemoteSegid);
  EXPECT_EQ(remotes_.attaches[0].uid, me_.cred.uid) << "the caller's credentials go along";
  EXPECT_TRUE(remotes_.attaches[0].write);
  EXPECT_TRUE(registry_.List().empty()) << "this node's registry is not involved";
}

// The home's errno, whatever it is, reaches the C caller unchanged — in
// particular EPERM, which the status code alone (kPermissionDenied) would
// turn into EACCES.
TEST_F(LocalApiTest, TheRemoteHomesErrnoReachesTheCallerUnchanged) {
  for (int err : {EPERM, ENOENT, EACCES, EHOSTUNREACH, EIDRM}) {
    remotes_.attach_error = WithErrno(err, absl::StrCat("attach at node 2: said ", err));
    local::LocalResponse resp = Call(me_, GetReq(kRemoteSegid));
    EXPECT_EQ(resp.err(), err) << resp.message();
    EXPECT_NE(resp.message().find(absl::StrCat("said ", err)), std::string::npos)
        << "the home's message too: " << resp.message();
    EXPECT_FALSE(resp.has_get()) << "no apid for a refused get";
  }
  EXPECT_EQ(remotes_.attaches.size(), 5u);
}

TEST_F(LocalApiTest, GetOfANodeNotInTheClusterIsENOENT) {
  local::LocalResponse resp = Call(me_, GetReq(MakeSegid(kStranger, 3, 1)));
  EXPECT_EQ(resp.err(), ENOENT) << resp.message();
  EXPECT_TRUE(remotes_.attaches.empty()) << "not asked";
}

TEST_F(LocalApiTest, GetOfWhatIsNotASegidIsEINVAL) {
  const uint64_t not_segids[] = {
      0,
      ~uint64_t{0},                                   // negative as xpmem_segid_t
      (uint64_t{kPeer} << 48) | 1,                    // incarnation 0
      (uint64_t{kPeer} << 48) | (uint64_t{9} << 32),  // counter 0
      (uint64_t{1} << 63) | MakeSegid(kPeer, 9, 1),   // bit 63
  };
  for (uint64_t segid : not_segids) {
    local::LocalResponse resp = Call(me_, GetReq(segid));
    EXPECT_EQ(resp.err(), EINVAL) << std::hex << segid << ": " << resp.message();
  }
  EXPECT_TRUE(remotes_.attaches.empty());
  // A segid of this node from before its restart: ENOENT, not someone else's segment.
  local::LocalResponse stale = Call(me_, GetReq(MakeSegid(kSelf, kIncarnation + 1, 1)));
  EXPECT_EQ(stale.err(), ENOENT) << stale.message();
}

TEST_F(LocalApiTest, ReleaseOfAnotherProcesssApidIsEINVAL) {
  uint64_t apid = GetRemote(me_);
  local::LocalResponse resp = Call(other_, ReleaseReq(apid));
  EXPECT_EQ(resp.err(), EINVAL) << resp.message();
  EXPECT_TRUE(remotes_.detaches.empty()) << "the grant stays";
  EXPECT_EQ(Call(me_, ReleaseReq(apid + 1000)).err(), EINVAL) << "no such apid";
  // The owner may; the grant is given back to its home, once.
  resp = Call(me_, ReleaseReq(apid));
  EXPECT_EQ(resp.err(), 0) << resp.message();
  ASSERT_EQ(remotes_.detaches.size(), 1u);
  EXPECT_EQ(remotes_.detaches[0].node, kPeer);
  EXPECT_EQ(remotes_.detaches[0].segid, kRemoteSegid);
  EXPECT_EQ(remotes_.detaches[0].grant, 55u);
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), EINVAL) << "released already";
  EXPECT_EQ(remotes_.detaches.size(), 1u);
}

TEST_F(LocalApiTest, ReleaseWithAttachmentsIsEBUSY) {
  int uffd = NewUffd();
  TETHER_REQUIRE_KERNEL_FEATURE(MissingUserfaultfd(uffd));
  uint64_t apid = GetRemote(me_);
  std::vector<int> memfd;
  local::LocalResponse att = Call(me_, AttachReq(apid, 0, kSegSize), {uffd}, &memfd);
  ASSERT_EQ(att.err(), 0) << att.message();
  ASSERT_EQ(memfd.size(), 1u);
  struct stat st;
  ASSERT_EQ(fstat(memfd[0], &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kSegSize);
  close(memfd[0]);
  ASSERT_EQ(atts_.Summaries().size(), 1u);

  local::LocalResponse resp = Call(me_, ReleaseReq(apid));
  EXPECT_EQ(resp.err(), EBUSY) << resp.message();
  EXPECT_TRUE(remotes_.detaches.empty());
  // Detached (nothing dirty: nothing written back), then it may go.
  resp = Call(me_, DetachReq(att.attach().attach_id()));
  EXPECT_EQ(resp.err(), 0) << resp.message();
  EXPECT_TRUE(atts_.Summaries().empty());
  EXPECT_EQ(tcp_.count(), 0u);
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), 0);
  EXPECT_EQ(remotes_.detaches.size(), 1u);
}

// Detach writes what the client dirtied back to the home over the data
// path (here the fake tcp transport), with the grant, at the segment
// offset; the home's refusal reaches the caller.
TEST_F(LocalApiTest, DetachWritesDirtyPagesBackToTheRemoteHome) {
  int uffd = NewUffd();
  TETHER_REQUIRE_KERNEL_FEATURE(MissingUserfaultfd(uffd));
  int uffd2 = NewUffd();
  ASSERT_GE(uffd2, 0);
  uint64_t apid = GetRemote(me_);
  // Attachments of pages [1, 5) of the segment.
  local::LocalResponse a1 = Call(me_, AttachReq(apid, 4096, 4 * 4096), {uffd});
  local::LocalResponse a2 = Call(me_, AttachReq(apid, 4096, 4 * 4096), {uffd2});
  ASSERT_EQ(a1.err(), 0) << a1.message();
  ASSERT_EQ(a2.err(), 0) << a2.message();
  // The client stored into page 2 of each (as FaultService's write-protect
  // fault would have recorded it).
  auto dirty = [&](uint64_t id, char fill) {
    std::shared_ptr<Attachment> att = atts_.Find(id, me_.cred.pid);
    ASSERT_NE(att, nullptr);
    std::string page(4096, fill);
    // The attachment's page 2, in its cache's memfd.
    const uint64_t p = att->first_page() + 2;
    ASSERT_EQ(pwrite(att->cache->memfd, page.data(), page.size(), att->cache->Off(p)), 4096);
    absl::MutexLock lock(&att->cache->mu);
    att->cache->state[p] = PageState::kDirty;
    att->cache->dirty = 1;
  };
  dirty(a1.attach().attach_id(), 'x');
  dirty(a2.attach().attach_id(), 'y');

  local::LocalResponse resp = Call(me_, DetachReq(a1.attach().attach_id()));
  EXPECT_EQ(resp.err(), 0) << resp.message();
  ASSERT_EQ(tcp_.count(FakeRequest::Kind::kWrite), 1u);
  {
    absl::MutexLock lock(&remote_home_.mu);
    ASSERT_EQ(remote_home_.writes.size(), 1u);
    const RemoteHome::Write& w = remote_home_.writes[0];
    EXPECT_EQ(w.peer_node, kSelf);
    EXPECT_EQ(w.segid, kRemoteSegid);
    EXPECT_EQ(w.grant, 55u);
    EXPECT_EQ(w.offset, 4096u + 2 * 4096) << "segment offset of the attachment's page 2";
    EXPECT_EQ(w.bytes, std::string(4096, 'x'));
  }
  // The home refuses the second write-back (it fenced us): the caller
  // hears EIDRM, and the attachment is gone all the same.
  tcp_.ScriptNext(FakeTransport::Refused(EIDRM, "revoked for node 1"));
  resp = Call(me_, DetachReq(a2.attach().attach_id()));
  EXPECT_EQ(resp.err(), EIDRM) << resp.message();
  EXPECT_TRUE(atts_.Summaries().empty());
  EXPECT_EQ(tcp_.count(FakeRequest::Kind::kWrite), 2u);
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), 0);
}

TEST_F(LocalApiTest, AttachWithABadRangeIsEINVALAndAddsNothing) {
  int uffd = NewUffd();
  TETHER_REQUIRE_KERNEL_FEATURE(MissingUserfaultfd(uffd));
  uint64_t apid = GetRemote(me_);
  struct Range {
    uint64_t offset, size;
  };
  const Range bad[] = {
      {0, 0},                                  // empty
      {100, 4096},                             // unaligned offset
      {0, 100},                                // unaligned size
      {kSegSize, 4096},                        // starts at the end
      {kSegSize - 4096, 2 * 4096},             // runs past the end
      {4096, ~uint64_t{0} & ~uint64_t{4095}},  // offset + size overflows
      {uint64_t{1} << 62, 4096},               // far beyond
  };
  for (const Range& r : bad) {
    // With a valid userfaultfd: the range alone is the reason.
    int fd = fcntl(uffd, F_DUPFD_CLOEXEC, 0);
    std::vector<int> out;
    local::LocalResponse resp = Call(me_, AttachReq(apid, r.offset, r.size), {fd}, &out);
    EXPECT_EQ(resp.err(), EINVAL) << r.offset << "+" << r.size << ": " << resp.message();
    EXPECT_FALSE(resp.has_attach());
    EXPECT_TRUE(out.empty()) << "no memfd for a refused attach";
  }
  // A good range without a userfaultfd, or with something else.
  EXPECT_EQ(Call(me_, AttachReq(apid, 0, kSegSize)).err(), EINVAL);
  int not_uffd = memfd_create("not-a-uffd", MFD_CLOEXEC);
  EXPECT_EQ(Call(me_, AttachReq(apid, 0, kSegSize), {not_uffd}).err(), EINVAL);
  // Another process's apid.
  EXPECT_EQ(Call(other_, AttachReq(apid, 0, kSegSize), {fcntl(uffd, F_DUPFD_CLOEXEC, 0)}).err(),
            EINVAL);
  EXPECT_TRUE(atts_.Summaries().empty());
  EXPECT_FALSE(atts_.UsesApid(apid));
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), 0) << "no attachment was left behind";
  close(uffd);
}

TEST_F(LocalApiTest, LookupFallsBackToTheRemoteHomes) {
  SegmentSummary hit;
  hit.segid = kRemoteSegid;
  hit.size = kSegSize;
  remotes_.lookup_answer = hit;
  local::LocalResponse resp = Call(me_, LookupReq("matrix"));
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.lookup().segid(), kRemoteSegid);
  EXPECT_EQ(resp.lookup().size(), kSegSize);
  ASSERT_EQ(remotes_.lookups.size(), 1u);
  EXPECT_EQ(remotes_.lookups[0], "matrix");

  remotes_.lookup_answer = ErrnoStatus(ENOENT, "no segment named 'matrix' on any node");
  EXPECT_EQ(Call(me_, LookupReq("matrix")).err(), ENOENT);
  remotes_.lookup_answer = WithErrno(EHOSTUNREACH, "node 2 unreachable");
  EXPECT_EQ(Call(me_, LookupReq("matrix")).err(), EHOSTUNREACH);
  // Names no node could have: refused here.
  EXPECT_EQ(Call(me_, LookupReq("")).err(), EINVAL);
  EXPECT_EQ(Call(me_, LookupReq(std::string(256, 'n'))).err(), EINVAL);
  EXPECT_EQ(remotes_.lookups.size(), 3u);
}

TEST_F(LocalApiTest, AnUnknownRequestIsEOPNOTSUPP) {
  local::LocalRequest empty;  // no body: what a newer client's request looks like
  local::LocalResponse resp = Call(me_, empty);
  EXPECT_EQ(resp.err(), EOPNOTSUPP) << resp.message();
}

TEST_F(LocalApiTest, InvalidationBracketsWithoutACoordinatorAreEOPNOTSUPP) {
  local::LocalRequest begin;
  begin.mutable_invalidate_begin()->set_vaddr(0x10000);
  begin.mutable_invalidate_begin()->set_size(4096);
  local::LocalResponse resp = Call(me_, begin);
  EXPECT_EQ(resp.err(), EOPNOTSUPP) << resp.message();
  EXPECT_FALSE(resp.has_invalidate_begin());
  local::LocalRequest end;
  end.mutable_invalidate_end()->set_handle(1);
  EXPECT_EQ(Call(me_, end).err(), EINVAL) << "no bracket was opened";
}

TEST_F(LocalApiTest, ADisconnectedClientsGrantsGoBackToTheirHomes) {
  uint64_t apid = GetRemote(me_);
  GetRemote(other_);
  api_.Disconnected(me_);
  ASSERT_EQ(remotes_.detaches.size(), 1u) << "only the disconnected connection's";
  EXPECT_EQ(remotes_.detaches[0].grant, 55u);
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), EINVAL) << "released with its connection";
}

// An export on this process: make (with its pidfd), publish, lookup (found
// here: the other nodes are not asked), get and release through the local
// registry, remove; then the name is gone here.
TEST_F(LocalApiTest, MakePublishLookupRemoveRoundTrip) {
  TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
  int pidfd = PidfdOpen(getpid());
  ASSERT_GE(pidfd, 0) << std::strerror(errno);
  void* mem = mmap(nullptr, kSegSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  std::memset(mem, 0x42, kSegSize);
  const uint64_t vaddr = reinterpret_cast<uint64_t>(mem);

  local::LocalRequest make;
  make.mutable_make()->set_vaddr(vaddr);
  make.mutable_make()->set_size(kSegSize);
  make.mutable_make()->set_permit_mode(0600);
  local::LocalResponse resp = Call(me_, make, {pidfd});
  ASSERT_EQ(resp.err(), 0) << resp.message();
  const uint64_t segid = resp.make().segid();
  SegidParts parts;
  ASSERT_TRUE(ParseSegid(segid, &parts));
  EXPECT_EQ(parts.node, kSelf);
  EXPECT_EQ(parts.incarnation, kIncarnation);

  const std::string name = absl::StrCat("local-api-test-", getpid());
  local::LocalRequest publish;
  publish.mutable_publish()->set_segid(segid);
  publish.mutable_publish()->set_name(name);
  EXPECT_EQ(Call(other_, publish).err(), EPERM) << "only the owner publishes";
  resp = Call(me_, publish);
  ASSERT_EQ(resp.err(), 0) << resp.message();

  resp = Call(me_, LookupReq(name));
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.lookup().segid(), segid);
  EXPECT_EQ(resp.lookup().size(), kSegSize);
  EXPECT_TRUE(remotes_.lookups.empty()) << "found on this node: nobody else asked";

  resp = Call(me_, GetReq(segid));
  ASSERT_EQ(resp.err(), 0) << resp.message();
  const uint64_t apid = resp.get().apid();
  EXPECT_EQ(resp.get().size(), kSegSize);
  EXPECT_TRUE(remotes_.attaches.empty());
  ASSERT_EQ(registry_.List().size(), 1u);
  EXPECT_EQ(registry_.List()[0].grants, 1u);
  // The mode is the owner's only: another uid may not map it.
  EXPECT_EQ(Call(other_, GetReq(segid)).err(), EACCES);
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), 0);
  EXPECT_EQ(registry_.List()[0].grants, 0u);
  EXPECT_TRUE(remotes_.detaches.empty());

  local::LocalRequest remove;
  remove.mutable_remove()->set_segid(segid);
  EXPECT_EQ(Call(other_, remove).err(), EPERM);
  resp = Call(me_, remove);
  EXPECT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(Call(me_, remove).err(), ENOENT) << "removed already";
  EXPECT_EQ(Call(me_, LookupReq(name)).err(), ENOENT);
  EXPECT_EQ(remotes_.lookups.size(), 1u) << "not here any more: the other nodes were asked";
  EXPECT_EQ(Call(me_, GetReq(segid)).err(), ENOENT);
  munmap(mem, kSegSize);
}

TEST_F(LocalApiTest, AnExportNeedsTheCallersOwnPidfd) {
  local::LocalRequest make;
  make.mutable_make()->set_vaddr(0x10000);
  make.mutable_make()->set_size(kSegSize);
  make.mutable_make()->set_permit_mode(0600);
  EXPECT_EQ(Call(me_, make).err(), EINVAL) << "no pidfd";
  TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
  int parent = PidfdOpen(getppid());
  ASSERT_GE(parent, 0) << std::strerror(errno);
  EXPECT_EQ(Call(me_, make, {parent}).err(), EACCES) << "a pidfd of another process";
  int self = PidfdOpen(getpid());
  ASSERT_GE(self, 0);
  int not_events = memfd_create("not-an-event-fd", MFD_CLOEXEC);
  EXPECT_EQ(Call(me_, make, {self, not_events}).err(), EINVAL)
      << "the second fd must be a userfaultfd or /dev/tether";
  make.mutable_make()->set_size(0);
  EXPECT_EQ(Call(me_, make, {PidfdOpen(getpid())}).err(), EINVAL) << "size zero";
  EXPECT_TRUE(registry_.List().empty());
}

// Same-node attachments and tether.ko's direct attachments
// (docs/architecture.md, "Same-node attachments and direct attachments"):
// the notifier source is scripted; its "direct attachment" is a memfd.
class FakeNotifier : public NotifierSource {
 public:
  absl::Status Start() override { return absl::OkStatus(); }
  absl::Status AddExporter(uint64_t, pid_t, int pidfd, int fd, uint64_t) override {
    close(pidfd);
    if (fd >= 0) close(fd);
    return absl::OkStatus();
  }
  void Stop() override {}
  absl::Status Ping(absl::Duration) override { return absl::OkStatus(); }
  absl::Status BeforeRead(uint64_t, uint64_t, uint64_t) override { return absl::OkStatus(); }
  void SegmentGone(uint64_t, const std::string&) override {}
  absl::StatusOr<int> DirectAttach(uint64_t segid, uint64_t offset, uint64_t len,
                                   bool writable) override {
    calls.push_back({segid, offset, len, writable});
    if (!answer.ok()) return answer;
    return memfd_create("fake-direct", MFD_CLOEXEC);
  }
  struct CallArgs {
    uint64_t segid, offset, len;
    bool writable;
  };
  absl::Status answer;
  std::vector<CallArgs> calls;
};

class LocalApiDirectTest : public LocalApiTest {
 protected:
  LocalApiDirectTest() {
    peer_ = me_;  // same uid, another process of this node
    peer_.id = 3;
    peer_.cred.pid = getpid() + 2;  // not other_'s
  }
  // Exports [mem_, +kSegSize) of this process (me_): its segid.
  uint64_t Export() {
    int pidfd = PidfdOpen(getpid());
    EXPECT_GE(pidfd, 0) << std::strerror(errno);
    local::LocalRequest make;
    make.mutable_make()->set_vaddr(reinterpret_cast<uint64_t>(mem_));
    make.mutable_make()->set_size(kSegSize);
    make.mutable_make()->set_permit_mode(0600);
    local::LocalResponse resp = Call(me_, make, {pidfd});
    EXPECT_EQ(resp.err(), 0) << resp.message();
    return resp.make().segid();
  }
  uint64_t GetLocal(const LocalConnection& c, uint64_t segid, bool write) {
    local::LocalResponse resp = Call(c, GetReq(segid, write));
    EXPECT_EQ(resp.err(), 0) << resp.message();
    return resp.get().apid();
  }
  static local::LocalRequest DirectReq(uint64_t apid, uint64_t off, uint64_t len,
                                       bool direct_ok = true) {
    local::LocalRequest r = AttachReq(apid, off, len);
    r.mutable_attach()->set_direct_ok(direct_ok);
    return r;
  }
  ~LocalApiDirectTest() override { munmap(mem_, kSegSize); }

  void* mem_ = mmap(nullptr, kSegSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  FakeNotifier notifier_;
  LocalApi api_{kSelf, kIncarnation, &registry_, &remotes_, &faults_, &atts_, &notifier_, nullptr};
  LocalConnection peer_;

  LocalApi& Api() override { return api_; }
};

// Another process of the home node gets the module's fd, with the grant's
// permission; nothing is served or written back (the AttachmentTable only
// lists it, for tetherctl, with its kind): sync and acquire answer at once,
// release waits for the detach.
TEST_F(LocalApiDirectTest, ASameNodeAttachmentIsDirect) {
  TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
  const uint64_t segid = Export();
  const uint64_t apid = GetLocal(peer_, segid, /*write=*/true);
  std::vector<int> fds;
  local::LocalResponse resp = Call(peer_, DirectReq(apid, 4096, 8192), {}, &fds);
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.attach().kind(), local::AttachResponse::DIRECT);
  EXPECT_TRUE(resp.attach().writable());
  ASSERT_EQ(fds.size(), 1u) << "the direct attachment's fd";
  close(fds[0]);
  ASSERT_EQ(notifier_.calls.size(), 1u);
  EXPECT_EQ(notifier_.calls[0].segid, segid);
  EXPECT_EQ(notifier_.calls[0].offset, 4096u);
  EXPECT_EQ(notifier_.calls[0].len, 8192u);
  EXPECT_TRUE(notifier_.calls[0].writable);
  const uint64_t id = resp.attach().attach_id();
  std::vector<AttachmentSummary> listed = atts_.Summaries();
  ASSERT_EQ(listed.size(), 1u) << "tetherctl attachments does not list the direct attachment";
  EXPECT_EQ(listed[0].kind, "direct");
  EXPECT_EQ(listed[0].id, id);
  EXPECT_EQ(listed[0].segid, segid);
  EXPECT_EQ(listed[0].offset, 4096u);
  EXPECT_EQ(listed[0].size, 8192u);
  EXPECT_EQ(listed[0].pid, peer_.cred.pid);
  EXPECT_TRUE(listed[0].writable);
  EXPECT_FALSE(atts_.UsesApid(apid)) << "nothing the mapper serves";

  local::LocalRequest sync;
  sync.mutable_sync()->set_attach_id(id);
  sync.mutable_sync()->set_size(8192);
  EXPECT_EQ(Call(peer_, sync).err(), 0) << "nothing to write back";
  local::LocalRequest acquire;
  acquire.mutable_acquire()->set_attach_id(id);
  acquire.mutable_acquire()->set_size(8192);
  EXPECT_EQ(Call(peer_, acquire).err(), 0);
  EXPECT_EQ(Call(other_, sync).err(), EINVAL) << "another process's attachment";
  local::LocalRequest mapped;
  mapped.mutable_attach_mapped()->set_attach_id(id);
  mapped.mutable_attach_mapped()->set_vaddr(0x100000);
  EXPECT_EQ(Call(peer_, mapped).err(), EINVAL) << "a direct attachment is not registered";
  EXPECT_EQ(Call(peer_, ReleaseReq(apid)).err(), EBUSY) << "the apid still has an attachment";
  EXPECT_EQ(Call(me_, DetachReq(id)).err(), EINVAL) << "not the exporter's attachment";
  EXPECT_EQ(Call(peer_, DetachReq(id)).err(), 0);
  EXPECT_EQ(Call(peer_, DetachReq(id)).err(), EINVAL) << "detached already";
  EXPECT_TRUE(atts_.Summaries().empty()) << "listed after its detach";
  EXPECT_EQ(Call(peer_, ReleaseReq(apid)).err(), 0);
  EXPECT_EQ(tcp_.count(), 0u);

  // A read-only permit: the module is asked for a read-only attachment.
  const uint64_t ro = GetLocal(peer_, segid, /*write=*/false);
  resp = Call(peer_, DirectReq(ro, 0, kSegSize));
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.attach().kind(), local::AttachResponse::DIRECT);
  EXPECT_FALSE(resp.attach().writable());
  ASSERT_EQ(notifier_.calls.size(), 2u);
  EXPECT_FALSE(notifier_.calls[1].writable);
  // The client's exit drops it, and its apid.
  EXPECT_EQ(atts_.Summaries().size(), 1u);
  api_.Disconnected(peer_);
  EXPECT_EQ(Call(peer_, DetachReq(resp.attach().attach_id())).err(), EINVAL);
  EXPECT_TRUE(atts_.Summaries().empty()) << "listed after its client's exit";
}

// Where the module cannot (no module: Unimplemented; not all anonymous:
// FailedPrecondition) or the client did not ask, another process gets the
// copy, as before.
TEST_F(LocalApiDirectTest, OtherwiseAnotherProcessGetsACopy) {
  TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
  int probe = NewUffd();
  TETHER_REQUIRE_KERNEL_FEATURE(MissingUserfaultfd(probe));
  close(probe);
  const uint64_t segid = Export();
  const uint64_t apid = GetLocal(peer_, segid, true);
  const absl::Status answers[] = {absl::UnimplementedError("no tether.ko"),
                                  absl::FailedPreconditionError("a file mapping")};
  for (const absl::Status& answer : answers) {
    notifier_.answer = answer;
    local::LocalResponse resp = Call(peer_, DirectReq(apid, 0, kSegSize), {NewUffd()});
    ASSERT_EQ(resp.err(), 0) << answer << ": " << resp.message();
    EXPECT_EQ(resp.attach().kind(), local::AttachResponse::COPY) << answer;
    EXPECT_EQ(atts_.Summaries().size(), 1u) << answer;
    EXPECT_EQ(Call(peer_, DetachReq(resp.attach().attach_id())).err(), 0);
  }
  notifier_.answer = absl::OkStatus();
  size_t asked = notifier_.calls.size();
  local::LocalResponse resp =
      Call(peer_, DirectReq(apid, 0, kSegSize, /*direct_ok=*/false), {NewUffd()});
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.attach().kind(), local::AttachResponse::COPY);
  EXPECT_EQ(notifier_.calls.size(), asked) << "a client that cannot map one is not given one";
  EXPECT_EQ(Call(peer_, DetachReq(resp.attach().attach_id())).err(), 0);
  // Any other error of the module is the attach's.
  notifier_.answer = ErrnoStatus(ESRCH, "the exporter exited");
  EXPECT_EQ(Call(peer_, DirectReq(apid, 0, kSegSize), {NewUffd()}).err(), ESRCH);
  EXPECT_TRUE(atts_.Summaries().empty());
}

// Issue 16: the exporter's copy of its own segment stalls its mprotect
// with tether.ko (its mmap_lock is held while the module waits for the
// daemon's window over that copy). So with the module watching it: a
// direct attachment, or EOPNOTSUPP; without the module, the copy.
TEST_F(LocalApiDirectTest, TheExportersOwnSegmentIsDirectOrRefused) {
  TETHER_REQUIRE_KERNEL_FEATURE(testing_support::MissingPidfdOpen());
  int probe = NewUffd();
  TETHER_REQUIRE_KERNEL_FEATURE(MissingUserfaultfd(probe));
  close(probe);
  const uint64_t segid = Export();
  const uint64_t apid = GetLocal(me_, segid, true);
  local::LocalResponse resp = Call(me_, DirectReq(apid, 0, kSegSize), {NewUffd()});
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.attach().kind(), local::AttachResponse::DIRECT);
  EXPECT_EQ(Call(me_, DetachReq(resp.attach().attach_id())).err(), 0);

  resp = Call(me_, DirectReq(apid, 0, kSegSize, /*direct_ok=*/false), {NewUffd()});
  EXPECT_EQ(resp.err(), EOPNOTSUPP) << "a copy was asked for: " << resp.message();
  EXPECT_NE(resp.message().find("own segment"), std::string::npos) << resp.message();
  notifier_.answer = absl::FailedPreconditionError("not all anonymous");
  resp = Call(me_, DirectReq(apid, 0, kSegSize), {NewUffd()});
  EXPECT_EQ(resp.err(), EOPNOTSUPP) << resp.message();
  EXPECT_NE(resp.message().find("not all anonymous"), std::string::npos) << resp.message();
  EXPECT_TRUE(atts_.Summaries().empty()) << "a refused attach adds nothing";

  notifier_.answer = absl::UnimplementedError("no tether.ko");
  resp = Call(me_, DirectReq(apid, 0, kSegSize), {NewUffd()});
  ASSERT_EQ(resp.err(), 0) << resp.message();
  EXPECT_EQ(resp.attach().kind(), local::AttachResponse::COPY) << "without the module: a copy";
  EXPECT_EQ(Call(me_, DetachReq(resp.attach().attach_id())).err(), 0);
  EXPECT_EQ(Call(me_, ReleaseReq(apid)).err(), 0);
}

}  // namespace
}  // namespace tether
