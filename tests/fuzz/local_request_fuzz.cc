// libFuzzer target for the local request handler (local/local_api.cc): a
// client's requests, with file descriptors, handled as LocalServer hands
// them over (local_server.cc, Serve: a frame of at most kMaxLocalFrame
// bytes parsed as a LocalRequest with a body, at most kMaxLocalFds fds, the
// fds the handler did not take closed after the call, the connection's
// Disconnected at the end). Not the socket or the accept loop: the
// handler's parsing and checks, against a real home (FuzzHome: a
// SegmentRegistry exporting this process's memory), AttachmentTable,
// FaultService and DataPath (over the in-memory FakeTransport), with a
// RemoteHomes that knows node kFuzzPeer.
//
// Input: up to 8 records, each a 4-byte header and a request frame:
//   byte 0: bits 0-1: how many fds come with it (3 is one too many);
//           bits 2-4, 5-7: the kinds of the first two (the third a memfd):
//           0 the client's pidfd, 1 memfd, 2 pipe, 3 the client's uffd,
//           4 eventfd, 5 unix socket, 6 /dev/tether, 7 /dev/null (a kind
//           this machine lacks becomes /dev/null)
//   byte 1: bit 0: the caller is another process of another uid
//   bytes 2-3: frame length (little endian), then the frame.
// Every fd is one the target makes: the handler must neither hang on one
// (a pipe nobody writes, a socket) nor leak it (LeakSanitizer, and a count
// of open fds after each input).
//
// The client is a helper process (forked at start, kClientMemory mapped in
// it): its pidfd, its userfaultfds. What a request makes the daemon do to
// the client's own memory (export it, write-protect it through its uffd at
// an address the request names) then happens to the helper, as it would to
// a real client that asked for it, and not to the fuzzer's own memory.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "daemon/common/errors.h"
#include "daemon/local/local_api.h"
#include "tests/fuzz/fuzz_home.h"
#include "tests/unit/fake_transport.h"

namespace tether {
namespace {

class FuzzRemoteHomes : public RemoteHomes {
 public:
  bool Knows(uint32_t node) const override { return node == kFuzzPeer; }
  absl::StatusOr<Grant> Attach(uint32_t node, uint64_t segid, const Credentials&,
                               bool write) override {
    Grant g;
    g.id = next_grant_++;
    g.segment_size = kFuzzSegSize;
    g.writable = write;
    return g;
  }
  absl::Status Detach(uint32_t, uint64_t, uint64_t) override { return absl::OkStatus(); }
  absl::StatusOr<SegmentSummary> Lookup(const std::string&) override {
    return ErrnoStatus(ENOENT, "no segment on any node");
  }

 private:
  uint64_t next_grant_ = 7;
};

// The client: a helper process that makes userfaultfds on request.
constexpr uint64_t kClientMemory = 0x7e0000000000;
pid_t client_pid = -1;
int client_sock = -1;

void StartClient() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) FuzzHome::Die("socketpair");
  pid_t pid = fork();
  if (pid < 0) FuzzHome::Die("fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(sv[0]);
    void* m = mmap(reinterpret_cast<void*>(kClientMemory), kFuzzSegSize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (m == MAP_FAILED) _exit(1);
    char c;
    ssize_t got;
    // Exits only when the fuzzer is gone (its exit status says why
    // otherwise: 100 + errno).
    while ((got = read(sv[1], &c, 1)) == 1 || (got < 0 && errno == EINTR)) {
      if (got != 1) continue;
      int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
      uffdio_api api{UFFD_API, 0, 0};
      if (fd >= 0 && ioctl(fd, UFFDIO_API, &api) != 0) {
        close(fd);
        fd = -1;
      }
      if (fd < 0) fd = open("/dev/null", O_RDWR | O_CLOEXEC);
      char b = 'u';
      iovec iov{&b, 1};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof(cbuf);
      cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
      ssize_t sent;
      while ((sent = sendmsg(sv[1], &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
      }
      if (sent != 1) _exit(100 + errno);
      close(fd);
    }
    _exit(0);
  }
  close(sv[1]);
  client_pid = pid;
  client_sock = sv[0];
}

// A userfaultfd of the client process.
int ClientUffd() {
  char c = 'u';
  if (write(client_sock, &c, 1) != 1) FuzzHome::Die("client helper gone");
  iovec iov{&c, 1};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof(cbuf);
  ssize_t n;
  while ((n = recvmsg(client_sock, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (n != 1) FuzzHome::Die("client helper gone");
  cmsghdr* cm = CMSG_FIRSTHDR(&mh);
  if (!cm || cm->cmsg_type != SCM_RIGHTS) FuzzHome::Die("client helper sent no fd");
  int fd;
  std::memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  return fd;
}

int MakeFd(int kind) {
  int fd = -1;
  switch (kind) {
    case 0: fd = static_cast<int>(syscall(SYS_pidfd_open, client_pid, 0)); break;
    case 1:
      fd = memfd_create("fuzz", MFD_CLOEXEC);
      if (fd >= 0 && ftruncate(fd, kFuzzSegSize) != 0) {
        close(fd);
        fd = -1;
      }
      break;
    case 2: {
      int p[2];
      if (pipe2(p, O_CLOEXEC) == 0) {
        close(p[1]);
        fd = p[0];
      }
      break;
    }
    case 3: fd = ClientUffd(); break;
    case 4: fd = eventfd(0, EFD_CLOEXEC); break;
    case 5: {
      int s[2];
      if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s) == 0) {
        close(s[1]);
        fd = s[0];
      }
      break;
    }
    case 6: fd = open("/dev/tether", O_RDWR | O_CLOEXEC); break;
    default: break;
  }
  if (fd < 0) fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  return fd;
}

int OpenFds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d)) n++;
    closedir(d);
  }
  return n;
}

struct Daemon {
  FuzzHome home;
  FuzzRemoteHomes remotes;
  FakeTransport tcp{"tcp", kFuzzNode};
  AttachmentTable atts{kFuzzIncarnation};
  DataPath data{kFuzzNode, &home.registry, &tcp, nullptr,
                [](uint32_t node) -> absl::StatusOr<std::shared_ptr<const DataEndpoint>> {
                  if (node != kFuzzPeer) return ErrnoStatus(EHOSTUNREACH, "not a peer");
                  auto ep = std::make_shared<DataEndpoint>();
                  ep->node_id = node;
                  ep->address = "10.0.0.2:7000";
                  return ep;
                }};
  FaultService faults{&data, 64 << 20,
                      [](const Attachment&, uint64_t, uint64_t, const std::string&) {}};
  LocalApi api{kFuzzNode, kFuzzIncarnation, &home.registry, &remotes, &faults,
               &atts,     nullptr,          nullptr};
};

}  // namespace
}  // namespace tether

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tether::StartClient();  // before libFuzzer starts threads
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tether;
  static int baseline_fds = -1;
  {
    auto d = std::make_unique<Daemon>();
    LocalConnection me, other;
    me.id = 1;
    me.fd = -1;  // no event channel: SendSigbus finds no socket
    me.cred = FuzzOwner();
    me.cred.pid = client_pid;
    other = me;
    other.id = 2;
    other.cred.pid = client_pid + 1;
    other.cred.uid = 1234;
    other.cred.gid = 1234;
    bool used_other = false;
    size_t off = 0;
    for (int rec = 0; rec < 8 && off + 4 <= size; rec++) {
      uint8_t spec = data[off], misc = data[off + 1];
      size_t len = data[off + 2] | (size_t{data[off + 3]} << 8);
      off += 4;
      if (len > size - off) len = size - off;
      const uint8_t* frame = data + off;
      off += len;
      const LocalConnection& c = (misc & 1) ? other : me;
      used_other |= (misc & 1) != 0;
      std::vector<int> fds;
      int nfds = spec & 3;
      for (int i = 0; i < nfds; i++)
        fds.push_back(MakeFd(i == 0 ? (spec >> 2) & 7 : i == 1 ? (spec >> 5) & 7 : 1));
      // As LocalServer::Serve.
      local::LocalRequest req;
      local::LocalResponse resp;
      std::vector<int> out_fds;
      if (len > kMaxLocalFrame) {
        resp.set_err(EMSGSIZE);
      } else if (!req.ParseFromArray(frame, static_cast<int>(len)) ||
                 req.body_case() == local::LocalRequest::BODY_NOT_SET) {
        resp.set_err(EBADMSG);
      } else if (fds.size() > static_cast<size_t>(kMaxLocalFds)) {
        resp.set_err(EINVAL);
      } else {
        d->api.Handle(c, req, fds, &resp, &out_fds);
      }
      for (int fd : fds)
        if (fd >= 0) close(fd);
      // What would be sent must serialize within a frame.
      std::string buf;
      if (!resp.SerializeToString(&buf) || buf.size() > kMaxLocalFrame) __builtin_trap();
      if (resp.err() == 0 && out_fds.size() > static_cast<size_t>(kMaxLocalFds)) __builtin_trap();
      for (int fd : out_fds) close(fd);
    }
    d->api.Disconnected(me);
    if (used_other) d->api.Disconnected(other);
    d->api.DetachAll();
  }
  // The client is alive: nothing the daemon did to its memory or through
  // its fds killed it.
  int st = 0;
  if (waitpid(client_pid, &st, WNOHANG) == client_pid) {
    fprintf(stderr, "local_request_fuzz: the client process died (%s %d)\n",
            WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    __builtin_trap();
  }
  // Every fd the handler took is closed once its daemon is gone.
  int now = OpenFds();
  if (baseline_fds < 0) baseline_fds = now;
  if (now > baseline_fds + 4) {
    fprintf(stderr, "local_request_fuzz: %d fds open after the input, %d before\n", now,
            baseline_fds);
    __builtin_trap();
  }
  return 0;
}
