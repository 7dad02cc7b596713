// The C API (tether.h) on top of LocalChannel and EventChannel.
#include "tether/tether.h"

#include <fcntl.h>
#include <linux/tether.h>  // kernel/include/uapi (tether.ko ABI)
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "client/src/event_channel.h"
#include "client/src/export_keeper.h"
#include "client/src/local_channel.h"
#include "local.pb.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define TETHER_EXPORT __attribute__((visibility("default")))

namespace tc = tether::client;

namespace tether::client {
extern thread_local std::string g_last_error;
}

namespace {
constexpr uint64_t kPage = 4096;

int PidfdOpenSelf() { return static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0)); }

// A non-blocking userfaultfd for this process's mm with `features`, or -1
// with errno. /dev/userfaultfd first (it handles kernel-mode faults too,
// unlike UFFD_USER_MODE_ONLY), the syscall second.
int NewUserfaultfd(uint64_t features) {
  int uffd = -1;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    close(dev);
  }
  if (uffd < 0) uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) return -1;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = features;
  if (ioctl(uffd, UFFDIO_API, &api) != 0) {
    int err = errno;
    close(uffd);
    errno = err;
    return -1;
  }
  return uffd;
}

// The uffd an attachment's faults arrive on (sent to the daemon, which
// serves them; we keep our own reference: see event_channel.h).
int OpenUserfaultfd(bool writable) {
  int uffd =
      NewUserfaultfd(UFFD_FEATURE_MISSING_SHMEM | (writable ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0));
  if (uffd < 0)
    return tc::SetError(errno, std::string("no usable userfaultfd: ") + std::strerror(errno) +
                                   " (grant access to /dev/userfaultfd, see deploy/)");
  return uffd;
}

// The uffd through which an exporter's daemon sees munmap/madvise/mremap
// of exported memory (the user-space notifier source).
int OpenEventsUserfaultfd() {
  return NewUserfaultfd(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
                        UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
}

// Where tether.ko is loaded: a fresh /dev/tether exporter fd with
// [vaddr, vaddr + size) of this mm registered on it (one fd per export, so
// that the daemon can attach each to its control fd and closing it ends
// that export; the module shares one notifier among all fds of this mm, so
// one munmap over many exports still waits for one deadline). -1 if there
// is no module or it refuses; the caller then falls back to the userfaultfd.
int OpenTetherExporterFd(void* vaddr, size_t size, uint64_t* range_id) {
  int fd = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  tether_range_reg reg{};
  reg.start = reinterpret_cast<uint64_t>(vaddr);
  reg.len = size;
  if (ioctl(fd, TETHER_IOC_REGISTER_RANGE, &reg) != 0) {
    close(fd);
    return -1;
  }
  *range_id = reg.range_id;
  return fd;
}

// Maps a direct attachment's fd (the exporter's own pages, tether.ko):
// MAP_SHARED as is, read-only unless writable. No uffd, nothing for the
// daemon to serve; detach just unmaps (and tells the daemon).
void* AttachDirect(const tether::local::AttachResponse& r, std::vector<int>& fds, size_t size,
                   void* vaddr) {
  auto fail = [&](int err, const std::string& msg) {
    tether::local::LocalRequest d;
    d.mutable_detach()->set_attach_id(r.attach_id());
    tether::local::LocalResponse dr;
    tc::LocalChannel::Get().Call(d, {}, &dr);
    for (int fd : fds) close(fd);
    tc::SetError(err, msg);
    return TETHER_ATTACH_FAILED;
  };
  if (fds.size() != 1) return fail(EPROTO, "tetherd sent no direct attachment fd");
  int prot = PROT_READ | (r.writable() ? PROT_WRITE : 0);
  int flags = MAP_SHARED | (vaddr ? MAP_FIXED : 0);
  void* p = mmap(vaddr, size, prot, flags, fds[0], 0);
  if (p == MAP_FAILED) return fail(errno, std::string("mmap: ") + std::strerror(errno));
  // As XPMEM's attachments (VM_DONTCOPY), and as a copy here: a fork child
  // inherits no attachment.
  madvise(p, size, MADV_DONTFORK);
  close(fds[0]);  // the mapping keeps the file
  tc::ClientAttachment ca;
  ca.id = r.attach_id();
  ca.addr = reinterpret_cast<uintptr_t>(p);
  ca.size = size;
  ca.writable = r.writable();
  ca.direct = true;
  tc::EventChannel::Get().Add(ca);
  return p;
}

// ExportKeeper's Reopen: a new event handle for an export registered again
// after the old one was closed (export_keeper.h).
int ReopenEvents(tc::ClientExport* e) {
  uint64_t range_id = 0;
  int fd = e->tether_range_id != 0
               ? OpenTetherExporterFd(reinterpret_cast<void*>(e->vaddr), e->size, &range_id)
               : -1;
  if (fd < 0) {
    range_id = 0;
    fd = OpenEventsUserfaultfd();
  }
  e->events_fd = fd;
  e->tether_range_id = range_id;
  return fd;
}

bool Aligned(const void* p, size_t n) {
  return (reinterpret_cast<uintptr_t>(p) % kPage) == 0 && n % kPage == 0;
}
}  // namespace

extern "C" {

TETHER_EXPORT int tether_version(void) { return TETHER_API_VERSION; }

TETHER_EXPORT const char* tether_strerror(void) {
  if (tc::g_last_error.empty()) return std::strerror(errno);
  return tc::g_last_error.c_str();
}

TETHER_EXPORT tether_segid_t tether_make(void* vaddr, size_t size, int permit_type,
                                         void* permit_value) {
  if (permit_type != TETHER_PERMIT_MODE)
    return tc::SetError(EINVAL, "permit_type must be TETHER_PERMIT_MODE");
  uintptr_t mode = reinterpret_cast<uintptr_t>(permit_value);
  if (mode & ~uintptr_t{0777}) return tc::SetError(EINVAL, "permit mode has bits beyond 0777");
  if (size == 0 || !Aligned(vaddr, size))
    return tc::SetError(EINVAL, "address and size must be page aligned, size non-zero");
  if (reinterpret_cast<uintptr_t>(vaddr) + size < reinterpret_cast<uintptr_t>(vaddr))
    return tc::SetError(EINVAL, "range overflows");
  int pidfd = PidfdOpenSelf();
  if (pidfd < 0) return tc::SetError(errno, "pidfd_open failed");
  tether::local::LocalRequest req;
  auto* m = req.mutable_make();
  m->set_vaddr(reinterpret_cast<uint64_t>(vaddr));
  m->set_size(size);
  m->set_permit_mode(static_cast<uint32_t>(mode));
  tether::local::LocalResponse resp;
  // The daemon's event handle for this mm: a /dev/tether fd with the
  // range registered where tether.ko is loaded, else a userfaultfd
  // (munmap/madvise/mremap events). We keep a copy (ExportKeeper): if the
  // daemon restarts, the new one gets the same handle with the export
  // registered again, and meanwhile no unmap goes on unseen; the copy is
  // closed by tether_remove, or once no daemon came back within the grace
  // (export_keeper.h).
  uint64_t range_id = 0;
  int events = OpenTetherExporterFd(vaddr, size, &range_id);
  if (events >= 0)
    m->set_tether_range_id(range_id);
  else
    events = OpenEventsUserfaultfd();
  std::vector<int> fds{pidfd};
  if (events >= 0) fds.push_back(events);
  int rc = tc::LocalChannel::Get().Call(req, fds, &resp);
  close(pidfd);
  if (rc != 0) {
    if (events >= 0) close(events);
    return -1;
  }
  tc::ClientExport exp;
  exp.segid = resp.make().segid();
  exp.vaddr = reinterpret_cast<uint64_t>(vaddr);
  exp.size = size;
  exp.mode = static_cast<uint32_t>(mode);
  exp.events_fd = events;
  exp.tether_range_id = range_id;
  tc::ExportKeeper::Get().SetReopen(&ReopenEvents);
  tc::ExportKeeper::Get().SetHold(resp.make().hold_ms());
  tc::ExportKeeper::Get().Add(exp);
  return static_cast<tether_segid_t>(resp.make().segid());
}

TETHER_EXPORT int tether_remove(tether_segid_t segid) {
  if (segid <= 0) return tc::SetError(EINVAL, "segids are positive");
  tether::local::LocalRequest req;
  req.mutable_remove()->set_segid(static_cast<uint64_t>(segid));
  tether::local::LocalResponse resp;
  int rc = tc::LocalChannel::Get().Call(req, {}, &resp);
  if (rc == 0) tc::ExportKeeper::Get().Forget(static_cast<uint64_t>(segid));
  return rc;
}

TETHER_EXPORT tether_apid_t tether_get(tether_segid_t segid, int flags, int permit_type,
                                       void* permit_value) {
  if (segid <= 0) return tc::SetError(EINVAL, "segids are positive");
  if (flags != TETHER_RDONLY && flags != TETHER_RDWR)
    return tc::SetError(EINVAL, "flags must be TETHER_RDONLY or TETHER_RDWR");
  if (permit_type != TETHER_PERMIT_MODE)
    return tc::SetError(EINVAL, "permit_type must be TETHER_PERMIT_MODE");
  tether::local::LocalRequest req;
  req.mutable_get()->set_segid(static_cast<uint64_t>(segid));
  req.mutable_get()->set_write(flags == TETHER_RDWR);
  tether::local::LocalResponse resp;
  if (tc::LocalChannel::Get().Call(req, {}, &resp) != 0) return -1;
  return static_cast<tether_apid_t>(resp.get().apid());
}

TETHER_EXPORT int tether_release(tether_apid_t apid) {
  if (apid <= 0) return tc::SetError(EINVAL, "apids are positive");
  tether::local::LocalRequest req;
  req.mutable_release()->set_apid(static_cast<uint64_t>(apid));
  tether::local::LocalResponse resp;
  return tc::LocalChannel::Get().Call(req, {}, &resp);
}

TETHER_EXPORT void* tether_attach(tether_apid_t apid, off_t offset, size_t size, void* vaddr) {
  if (apid <= 0) {
    tc::SetError(EINVAL, "apids are positive");
    return TETHER_ATTACH_FAILED;
  }
  if (offset < 0 || size == 0 || offset % static_cast<off_t>(kPage) || size % kPage ||
      (vaddr && reinterpret_cast<uintptr_t>(vaddr) % kPage)) {
    tc::SetError(EINVAL, "offset, size and address must be page aligned, size non-zero");
    return TETHER_ATTACH_FAILED;
  }
  if (tc::EventChannel::Get().Ensure() != 0) return TETHER_ATTACH_FAILED;
  // Same-node attachments may come back as tether.ko direct attachments
  // (no uffd needed); TETHER_ATTACH_COPY=1 asks for a copy always.
  const char* force_copy = getenv("TETHER_ATTACH_COPY");
  bool direct_ok = !(force_copy && force_copy[0] && std::strcmp(force_copy, "0") != 0);
  // We do not know writability until the daemon answers; ask for WP support
  // always (the feature is only used on writable attachments). Without a
  // usable uffd only a direct attachment can be made: ask anyway.
  int uffd = OpenUserfaultfd(true);
  if (uffd < 0 && !direct_ok) return TETHER_ATTACH_FAILED;
  int uffd_errno = errno;
  std::string uffd_error = tc::g_last_error;
  tether::local::LocalRequest req;
  auto* a = req.mutable_attach();
  a->set_apid(static_cast<uint64_t>(apid));
  a->set_offset(static_cast<uint64_t>(offset));
  a->set_size(size);
  a->set_direct_ok(direct_ok);
  tether::local::LocalResponse resp;
  std::vector<int> fds;
  std::vector<int> fds_sent;
  if (uffd >= 0) fds_sent.push_back(uffd);
  if (tc::LocalChannel::Get().Call(req, fds_sent, &resp, &fds) != 0) {
    if (uffd >= 0)
      close(uffd);
    else if (tc::g_last_error.find("userfaultfd") != std::string::npos)
      tc::SetError(uffd_errno, uffd_error);  // a copy was needed: say why we have no uffd
    return TETHER_ATTACH_FAILED;
  }
  if (resp.attach().kind() == tether::local::AttachResponse::DIRECT) {
    if (uffd >= 0) close(uffd);
    return AttachDirect(resp.attach(), fds, size, vaddr);
  }
  uint64_t id = resp.attach().attach_id();
  bool writable = resp.attach().writable();
  auto undo = [&](int err, const std::string& msg, void* mapped) {
    if (mapped && mapped != MAP_FAILED) munmap(mapped, size);
    tether::local::LocalRequest d;
    d.mutable_detach()->set_attach_id(id);
    tether::local::LocalResponse r;
    std::string saved = msg;
    tc::LocalChannel::Get().Call(d, {}, &r);
    close(uffd);
    for (int fd : fds) close(fd);
    tc::SetError(err, saved);
    return TETHER_ATTACH_FAILED;
  };
  if (fds.size() != 1) return undo(EPROTO, "tetherd sent no memfd", nullptr);
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  int flags = MAP_SHARED | (vaddr ? MAP_FIXED : 0);
  // The memfd is the segment's cache on this node, shared by every
  // attachment of the segment here: map our part of it.
  void* p = mmap(vaddr, size, prot, flags, fds[0], static_cast<off_t>(resp.attach().map_offset()));
  if (p == MAP_FAILED) return undo(errno, std::string("mmap: ") + std::strerror(errno), nullptr);
  // Not inherited by fork(): the child would see the memfd without our
  // uffd behind it, i.e. silent zero pages for everything not fetched.
  madvise(p, size, MADV_DONTFORK);
  uffdio_register reg{};
  reg.range = {reinterpret_cast<uint64_t>(p), size};
  reg.mode = UFFDIO_REGISTER_MODE_MISSING | (writable ? UFFDIO_REGISTER_MODE_WP : 0);
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0)
    return undo(errno, std::string("UFFDIO_REGISTER: ") + std::strerror(errno), p);
  tether::local::LocalRequest mapped;
  mapped.mutable_attach_mapped()->set_attach_id(id);
  mapped.mutable_attach_mapped()->set_vaddr(reinterpret_cast<uint64_t>(p));
  if (tc::LocalChannel::Get().Call(mapped, {}, &resp) != 0)
    return undo(errno, tether_strerror(), p);
  close(fds[0]);  // the mapping keeps the memfd
  tc::ClientAttachment ca;
  ca.id = id;
  ca.addr = reinterpret_cast<uintptr_t>(p);
  ca.size = size;
  ca.uffd = uffd;  // our own reference: see event_channel.h
  ca.writable = writable;
  tc::EventChannel::Get().Add(ca);
  return p;
}

TETHER_EXPORT int tether_detach(void* vaddr) {
  tc::ClientAttachment ca;
  if (!tc::EventChannel::Get().Take(reinterpret_cast<uintptr_t>(vaddr), &ca))
    return tc::SetError(EINVAL, "no attachment starts at this address");
  if (ca.direct) {
    // The mapping is the exporter's memory: nothing to write back. The
    // daemon only forgets its record (gone with it, if it went away).
    munmap(vaddr, ca.size);
    tether::local::LocalRequest req;
    req.mutable_detach()->set_attach_id(ca.id);
    tether::local::LocalResponse resp;
    (void)tc::LocalChannel::Get().Call(req, {}, &resp);
    return 0;
  }
  int rc = 0;
  if (!ca.dead) {
    tether::local::LocalRequest req;
    req.mutable_detach()->set_attach_id(ca.id);
    tether::local::LocalResponse resp;
    rc = tc::LocalChannel::Get().Call(req, {}, &resp);
  }
  int err = errno;
  std::string msg = tc::g_last_error;
  munmap(vaddr, ca.size);
  close(ca.uffd);
  if (rc != 0) return tc::SetError(err, msg);
  return 0;
}

static int RangeRequest(void* addr, size_t size, bool sync) {
  if (size == 0) return 0;
  tc::ClientAttachment ca;
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (!tc::EventChannel::Get().Find(a, size, &ca))
    return tc::SetError(EINVAL, "range is not inside one attachment");
  // A direct attachment's stores are in the exporter's memory, and it
  // always shows the exporter's current contents.
  if (ca.direct) return 0;
  if (ca.dead) return tc::SetError(ENOTCONN, "tetherd went away: the attachment is lost");
  uint64_t off = (a - ca.addr) & ~(kPage - 1);
  uint64_t end = a - ca.addr + size;
  tether::local::LocalRequest req;
  if (sync) {
    req.mutable_sync()->set_attach_id(ca.id);
    req.mutable_sync()->set_offset(off);
    req.mutable_sync()->set_size(end - off);
  } else {
    req.mutable_acquire()->set_attach_id(ca.id);
    req.mutable_acquire()->set_offset(off);
    req.mutable_acquire()->set_size(end - off);
  }
  tether::local::LocalResponse resp;
  return tc::LocalChannel::Get().Call(req, {}, &resp);
}

TETHER_EXPORT int tether_sync(void* addr, size_t size) { return RangeRequest(addr, size, true); }

TETHER_EXPORT int tether_acquire(void* addr, size_t size) {
  return RangeRequest(addr, size, false);
}

TETHER_EXPORT int64_t tether_invalidate_begin(void* addr, size_t size) {
  if (size == 0 || !Aligned(addr, size))
    return tc::SetError(EINVAL, "address and size must be page aligned, size non-zero");
  tether::local::LocalRequest req;
  req.mutable_invalidate_begin()->set_vaddr(reinterpret_cast<uint64_t>(addr));
  req.mutable_invalidate_begin()->set_size(size);
  tether::local::LocalResponse resp;
  if (tc::LocalChannel::Get().Call(req, {}, &resp) != 0) return -1;
  return static_cast<int64_t>(resp.invalidate_begin().handle());
}

TETHER_EXPORT int tether_invalidate_end(int64_t handle, int gone) {
  if (handle <= 0) return tc::SetError(EINVAL, "handles are positive");
  tether::local::LocalRequest req;
  req.mutable_invalidate_end()->set_handle(static_cast<uint64_t>(handle));
  req.mutable_invalidate_end()->set_gone(gone != 0);
  tether::local::LocalResponse resp;
  return tc::LocalChannel::Get().Call(req, {}, &resp);
}

TETHER_EXPORT int tether_munmap(void* addr, size_t size) {
  int64_t h = tether_invalidate_begin(addr, size);
  if (h < 0) return -1;
  int rc = munmap(addr, size);
  int err = errno;
  if (tether_invalidate_end(h, rc == 0) != 0) return -1;
  if (rc != 0) return tc::SetError(err, std::string("munmap: ") + std::strerror(err));
  return 0;
}

TETHER_EXPORT int tether_publish(tether_segid_t segid, const char* name) {
  if (segid <= 0 || !name) return tc::SetError(EINVAL, "bad segid or name");
  tether::local::LocalRequest req;
  req.mutable_publish()->set_segid(static_cast<uint64_t>(segid));
  req.mutable_publish()->set_name(name);
  tether::local::LocalResponse resp;
  int rc = tc::LocalChannel::Get().Call(req, {}, &resp);
  // Published again by the library after a daemon restart (export_keeper.h).
  if (rc == 0) tc::ExportKeeper::Get().AddName(static_cast<uint64_t>(segid), name);
  return rc;
}

TETHER_EXPORT tether_segid_t tether_lookup(const char* name, size_t* size_out) {
  if (!name) return tc::SetError(EINVAL, "name is NULL");
  tether::local::LocalRequest req;
  req.mutable_lookup()->set_name(name);
  tether::local::LocalResponse resp;
  if (tc::LocalChannel::Get().Call(req, {}, &resp) != 0) return -1;
  if (size_out) *size_out = resp.lookup().size();
  return static_cast<tether_segid_t>(resp.lookup().segid());
}

}  // extern "C"
