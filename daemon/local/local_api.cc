#include "daemon/local/local_api.h"

#include <fcntl.h>
#include <linux/tether.h>  // kernel/include/uapi: TETHER_DEVICE
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/common/drain.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"
#include "daemon/common/segid.h"
#include "daemon/common/segment_name.h"
#include "daemon/common/status_macros.h"
#include "daemon/home/exporter_memory.h"

namespace tether {
namespace {
bool IsUserfaultfd(int fd) {
  if (fd < 0) return false;
  char target[64] = {};
  std::string link = absl::StrCat("/proc/self/fd/", fd);
  ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
  return n > 0 && std::string(target, static_cast<size_t>(n)) == "anon_inode:[userfaultfd]";
}

// A descriptor of the tether.ko character device (same device number as
// /dev/tether). What it is attached to is checked by the module (ATTACH,
// RANGE_INFO) in KernelNotifierSource.
bool IsTetherDevice(int fd) {
  struct stat st, dev;
  return fd >= 0 && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && stat(TETHER_DEVICE, &dev) == 0 &&
         S_ISCHR(dev.st_mode) && st.st_rdev == dev.st_rdev;
}

int TakeFd(std::vector<int>& fds, size_t i) {
  if (i >= fds.size()) return -1;
  int fd = fds[i];
  fds[i] = -1;
  return fd;
}
}  // namespace

LocalApi::LocalApi(uint32_t node_id, uint32_t incarnation, SegmentRegistry* registry,
                   RemoteHomes* remotes, FaultService* faults, AttachmentTable* attachments,
                   NotifierSource* notifier, InvalidationCoordinator* coordinator,
                   LeaseKeeper* leases)
    : node_id_(node_id),
      incarnation_(incarnation),
      registry_(registry),
      remotes_(remotes),
      faults_(faults),
      atts_(attachments),
      notifier_(notifier),
      coordinator_(coordinator),
      leases_(leases) {}

void LocalApi::Handle(const LocalConnection& conn, const local::LocalRequest& req,
                      std::vector<int>& fds_in, local::LocalResponse* resp,
                      std::vector<int>* fds_out) {
  absl::Status st;
  switch (req.body_case()) {
    case local::LocalRequest::kMake: st = Make(conn, req.make(), fds_in, resp); break;
    case local::LocalRequest::kRemove:
      st = registry_->Remove(req.remove().segid(), conn.cred);
      break;
    case local::LocalRequest::kGet: st = Get(conn, req.get(), resp); break;
    case local::LocalRequest::kRelease: st = Release(conn, req.release().apid()); break;
    case local::LocalRequest::kAttach:
      st = Attach(conn, req.attach(), fds_in, resp, fds_out);
      break;
    case local::LocalRequest::kAttachMapped: st = AttachMapped(conn, req.attach_mapped()); break;
    case local::LocalRequest::kDetach: st = Detach(conn, req.detach().attach_id()); break;
    case local::LocalRequest::kSync: {
      // A direct attachment has nothing to write back: its stores are in
      // the exporter's memory already.
      if (FindDirect(req.sync().attach_id(), conn.cred.pid, false)) break;
      auto att = FindAttachment(conn, req.sync().attach_id());
      st = att.ok() ? faults_->Sync(**att, req.sync().offset(), req.sync().size()) : att.status();
      break;
    }
    case local::LocalRequest::kAcquire: {
      if (FindDirect(req.acquire().attach_id(), conn.cred.pid, false)) break;
      auto att = FindAttachment(conn, req.acquire().attach_id());
      st = att.ok() ? faults_->Acquire(**att, req.acquire().offset(), req.acquire().size())
                    : att.status();
      break;
    }
    case local::LocalRequest::kLookup: st = Lookup(req.lookup().name(), resp); break;
    case local::LocalRequest::kPublish:
      st = registry_->Publish(req.publish().segid(), req.publish().name(), conn.cred);
      break;
    case local::LocalRequest::kInvalidateBegin:
      st = InvalidateBegin(conn, req.invalidate_begin(), resp);
      break;
    case local::LocalRequest::kInvalidateEnd: st = InvalidateEnd(conn, req.invalidate_end()); break;
    case local::LocalRequest::kEvents: {
      absl::MutexLock lock(&mu_);
      event_fds_[conn.cred.pid] = conn.fd;
      event_conns_[conn.id] = conn.cred.pid;
      break;
    }
    default: st = ErrnoStatus(EOPNOTSUPP, "unknown request");
  }
  if (!st.ok()) {
    resp->Clear();
    resp->set_err(ToErrno(st));
    resp->set_message(std::string(st.message()));
    for (int fd : *fds_out) close(fd);
    fds_out->clear();
  }
}

absl::Status LocalApi::Make(const LocalConnection& c, const local::MakeRequest& r,
                            std::vector<int>& fds, local::LocalResponse* resp) {
  // (Descriptors not taken are closed by the caller.)
  RETURN_IF_ERROR(Drain().Accepting(node_id_, "exports"));
  int pidfd = TakeFd(fds, 0);
  if (pidfd < 0) return ErrnoStatus(EINVAL, "export needs the caller's pidfd");
  if (r.size() == 0) {
    close(pidfd);
    return ErrnoStatus(EINVAL, "export size is zero");
  }
  // The exporter's event handle, if it sent one: its userfaultfd, or its
  // /dev/tether fd with the range registered (tether.ko).
  int events_fd = TakeFd(fds, 1);
  if (events_fd >= 0 && !IsUserfaultfd(events_fd) && !IsTetherDevice(events_fd)) {
    close(events_fd);
    close(pidfd);
    return ErrnoStatus(EINVAL,
                       "the second descriptor of an export must be a userfaultfd or a "
                       "/dev/tether fd");
  }
  auto memory = ExporterMemory::Open(pidfd, c.cred.pid);
  if (!memory.ok()) {
    if (events_fd >= 0) close(events_fd);
    return memory.status();
  }
  int pidfd_copy = fcntl((*memory)->pidfd(), F_DUPFD_CLOEXEC, 0);
  if (pidfd_copy < 0) {
    int err = errno;
    if (events_fd >= 0) close(events_fd);
    return ErrnoStatus(err, "dup the exporter's pidfd");
  }
  // segid set: the exporter's library registers an export of before this
  // daemon's restart again (SegmentRegistry::Reregister).
  auto segid = r.segid() != 0 ? registry_->Reregister(c.cred, r.segid(), r.vaddr(), r.size(),
                                                      r.permit_mode(), std::move(*memory))
                              : registry_->Make(c.cred, r.vaddr(), r.size(), r.permit_mode(),
                                                std::move(*memory));
  if (!segid.ok()) {
    if (events_fd >= 0) close(events_fd);
    close(pidfd_copy);
    return segid.status();
  }
  if (notifier_) {
    absl::Status st =
        notifier_->AddExporter(*segid, c.cred.pid, pidfd_copy, events_fd, r.tether_range_id());
    if (!st.ok()) TLOG_WARN("segment %#x: notifier: %s", *segid, st.ToString());
  } else {
    if (events_fd >= 0) close(events_fd);
    close(pidfd_copy);
  }
  resp->mutable_make()->set_segid(*segid);
  resp->mutable_make()->set_hold_ms(hold_ms_);
  return absl::OkStatus();
}

absl::Status LocalApi::Get(const LocalConnection& c, const local::GetRequest& r,
                           local::LocalResponse* resp) {
  SegidParts parts;
  if (!ParseSegid(r.segid(), &parts))
    return ErrnoStatus(EINVAL, absl::StrFormat("%#x is not a segid", r.segid()));
  RETURN_IF_ERROR(Drain().Accepting(node_id_, "attachments"));
  Grant grant;
  if (parts.node == node_id_) {
    if (parts.incarnation != registry_->epoch())
      return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x is of another segment epoch of "
                                                 "this node (its state was lost)",
                                                 r.segid()));
    ASSIGN_OR_RETURN(grant, registry_->Attach(r.segid(), c.cred, r.write(), node_id_));
  } else {
    if (!remotes_->Knows(parts.node))
      return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x: node %d is not in this "
                                                 "cluster",
                                                 r.segid(), parts.node));
    ASSIGN_OR_RETURN(grant, remotes_->Attach(parts.node, r.segid(), c.cred, r.write()));
    // Which run of the home granted it: a renewal answered by another one
    // shows the home restarted (LeaseKeeper).
    if (leases_) leases_->NoteIncarnation(parts.node, grant.incarnation);
  }
  absl::MutexLock lock(&mu_);
  uint64_t apid = (uint64_t{incarnation_} << 32) | next_apid_++;
  apids_[apid] = Apid{r.segid(), parts.node, grant, c.cred.pid, c.id, c.cred};
  resp->mutable_get()->set_apid(apid);
  resp->mutable_get()->set_size(grant.segment_size);
  return absl::OkStatus();
}

absl::Status LocalApi::Release(const LocalConnection& c, uint64_t apid) {
  Apid a;
  {
    absl::MutexLock lock(&mu_);
    auto it = apids_.find(apid);
    if (it == apids_.end() || it->second.pid != c.cred.pid)
      return ErrnoStatus(EINVAL, absl::StrFormat("no apid %#x in this process", apid));
    if (atts_->UsesApid(apid)) return ErrnoStatus(EBUSY, "apid still has attachments");
    for (const auto& [id, d] : direct_)
      if (d.apid == apid) return ErrnoStatus(EBUSY, "apid still has attachments");
    a = it->second;
    apids_.erase(it);
  }
  absl::Status st = a.home == node_id_ ? registry_->Detach(a.segid, a.grant.id, node_id_)
                                       : remotes_->Detach(a.home, a.segid, a.grant.id);
  // The grant is gone locally either way; a home that is unreachable or
  // restarted has dropped it already.
  if (!st.ok()) TLOG_INFO("release apid %#x: %s", apid, st.ToString());
  return absl::OkStatus();
}

absl::Status LocalApi::Attach(const LocalConnection& c, const local::AttachRequest& r,
                              std::vector<int>& fds, local::LocalResponse* resp,
                              std::vector<int>* fds_out) {
  RETURN_IF_ERROR(Drain().Accepting(node_id_, "attachments"));
  Apid a;
  {
    absl::MutexLock lock(&mu_);
    auto it = apids_.find(r.apid());
    if (it == apids_.end() || it->second.pid != c.cred.pid)
      return ErrnoStatus(EINVAL, absl::StrFormat("no apid %#x in this process", r.apid()));
    a = it->second;
  }
  if (r.size() == 0) return ErrnoStatus(EINVAL, "attach size is zero");
  if (r.offset() % kPageSize || r.size() % kPageSize)
    return ErrnoStatus(EINVAL, "attach offset and size must be page aligned");
  if (r.offset() >= a.grant.segment_size || r.size() > a.grant.segment_size - r.offset())
    return ErrnoStatus(EINVAL, absl::StrFormat("attach range [%#x, +%#x) is outside the "
                                               "segment (size %#x)",
                                               r.offset(), r.size(), a.grant.segment_size));
  // Pages of a remote home are served only under a lease from it: make
  // sure of one before the attachment exists (lease_keeper.h).
  if (leases_ && a.home != node_id_) RETURN_IF_ERROR(leases_->EnsureLease(a.home));
  // The home is this node: tether.ko may map the exporter's pages
  // themselves (AttachDirect); otherwise, or where it cannot, a copy.
  if (a.home == node_id_ && notifier_) {
    ASSIGN_OR_RETURN(bool direct, AttachDirect(c, r, a, resp, fds_out));
    if (direct) return absl::OkStatus();
  }
  int uffd = TakeFd(fds, 0);
  if (uffd < 0 || !IsUserfaultfd(uffd)) {
    if (uffd >= 0) close(uffd);
    return ErrnoStatus(EINVAL, "attach needs the caller's userfaultfd");
  }
  auto att = std::make_shared<Attachment>();
  att->segid = a.segid;
  att->home = a.home;
  att->grant = a.grant.id;
  att->seg_offset = r.offset();
  att->size = r.size();
  att->writable = a.grant.writable;
  att->pid = c.cred.pid;
  att->uffd = uffd;  // closed by ~Attachment from here on
  // The segment's cache on this node: shared with its other attachments
  // here, in any process (mapper/attachment.h).
  RETURN_IF_ERROR(faults_->Join(att, a.grant.segment_size));
  int memfd_copy = fcntl(att->cache->memfd, F_DUPFD_CLOEXEC, 0);
  if (memfd_copy < 0) {
    int err = errno;
    faults_->Remove(att);
    return ErrnoStatus(err, "dup memfd");
  }
  {
    // Under mu_, with the apid checked again: a Release of the same apid
    // meanwhile (another thread of the client) either saw this attachment
    // and answered EBUSY, or released the grant first and we refuse here.
    absl::MutexLock lock(&mu_);
    auto it = apids_.find(r.apid());
    if (it == apids_.end() || it->second.pid != c.cred.pid) {
      close(memfd_copy);
      faults_->Remove(att);
      return ErrnoStatus(EINVAL, absl::StrFormat("apid %#x was released meanwhile", r.apid()));
    }
    atts_->Insert(att, c.id, r.apid());
  }
  resp->mutable_attach()->set_attach_id(att->id);
  resp->mutable_attach()->set_writable(att->writable);
  // Where the attachment's first page is in the cache's memfd.
  resp->mutable_attach()->set_map_offset(static_cast<uint64_t>(att->cache->Off(att->first_page())));
  fds_out->push_back(memfd_copy);
  return absl::OkStatus();
}

absl::StatusOr<bool> LocalApi::AttachDirect(const LocalConnection& c, const local::AttachRequest& r,
                                            const Apid& a, local::LocalResponse* resp,
                                            std::vector<int>* fds_out) {
  // The exporter attaching its own segment: a copy in its own mm would
  // deadlock its mprotect (and munmap) with tether.ko for the module's ack
  // timeout: the call holds this mm's mmap_lock for writing while it waits
  // for our window, and the window's work on the copy (write-protecting,
  // dropping pages) needs that lock. So it gets a direct attachment, or a
  // refusal; never a copy while the module watches the segment.
  auto seg = registry_->Get(a.segid);
  bool same_mm = seg.ok() && seg->pid == c.cred.pid;
  if (!r.direct_ok() && !same_mm) return false;
  absl::StatusOr<int> fd = notifier_->DirectAttach(a.segid, r.offset(), r.size(), a.grant.writable);
  // No module (or one without direct attachments, or an exporter watched
  // through a userfaultfd, which cannot see mprotect): a copy, as before.
  if (absl::IsUnimplemented(fd.status())) return false;
  if (absl::IsFailedPrecondition(fd.status())) {
    if (!same_mm) return false;  // not all anonymous: the copy serves it
    return ErrnoStatus(EOPNOTSUPP,
                       absl::StrCat("attaching one's own segment needs a direct attachment with "
                                    "tether.ko (a copy in the exporter's own address space "
                                    "would stall its mprotect and munmap): ",
                                    fd.status().message()));
  }
  if (!fd.ok()) return fd.status();
  if (!r.direct_ok()) {
    close(*fd);
    return ErrnoStatus(EOPNOTSUPP,
                       "attaching one's own segment needs a direct attachment with tether.ko, and "
                       "this client asked for a copy (TETHER_ATTACH_COPY, or an old libtether)");
  }
  uint64_t id;
  {
    // As for a copy: the apid checked again under mu_ (Release).
    absl::MutexLock lock(&mu_);
    auto it = apids_.find(r.apid());
    if (it == apids_.end() || it->second.pid != c.cred.pid) {
      close(*fd);
      return ErrnoStatus(EINVAL, absl::StrFormat("apid %#x was released meanwhile", r.apid()));
    }
    id = (uint64_t{incarnation_} << 32) | (uint64_t{1} << 31) | next_direct_++;
    direct_[id] = Direct{c.cred.pid, c.id, r.apid()};
    AttachmentSummary listed;  // for tetherctl (AttachmentTable::Summaries)
    listed.id = id;
    listed.segid = a.segid;
    listed.offset = r.offset();
    listed.size = r.size();
    listed.pid = c.cred.pid;
    listed.writable = a.grant.writable;
    listed.state = "mapped (the exporter's pages)";
    atts_->NoteDirect(listed);
  }
  resp->mutable_attach()->set_attach_id(id);
  resp->mutable_attach()->set_writable(a.grant.writable);
  resp->mutable_attach()->set_kind(local::AttachResponse::DIRECT);
  fds_out->push_back(*fd);
  TLOG_DEBUG("segment %#x: direct attachment %#x [%#x, +%#x) for pid %d%s", a.segid, id, r.offset(),
             r.size(), c.cred.pid, a.grant.writable ? ", writable" : "");
  return true;
}

bool LocalApi::FindDirect(uint64_t id, pid_t pid, bool erase) {
  absl::MutexLock lock(&mu_);
  auto it = direct_.find(id);
  if (it == direct_.end() || it->second.pid != pid) return false;
  if (erase) {
    direct_.erase(it);
    atts_->ForgetDirect(id);
  }
  return true;
}

absl::Status LocalApi::AttachMapped(const LocalConnection& c, const local::AttachMappedRequest& r) {
  ASSIGN_OR_RETURN(auto att, FindAttachment(c, r.attach_id()));
  if (r.vaddr() == 0 || r.vaddr() % kPageSize) return ErrnoStatus(EINVAL, "bad mapping address");
  uint64_t expected = 0;
  if (!att->vaddr.compare_exchange_strong(expected, r.vaddr()))
    return ErrnoStatus(EBUSY, "attachment already mapped");
  return faults_->Add(att);
}

absl::StatusOr<std::shared_ptr<Attachment>> LocalApi::FindAttachment(const LocalConnection& c,
                                                                     uint64_t id) {
  std::shared_ptr<Attachment> att = atts_->Find(id, c.cred.pid);
  if (!att) return ErrnoStatus(EINVAL, absl::StrFormat("no attachment %#x", id));
  return att;
}

absl::Status LocalApi::DetachEntry(const std::shared_ptr<Attachment>& att) {
  // Writes back the range's dirty pages and those no other attachment of
  // the shared cache would write back, waits for them, and stops serving.
  absl::Status st = faults_->Detach(att);
  // Until here invalidation notices still reached it (AttachmentTable::
  // Take): the sync may wait for a window's end to write kept-aside pages.
  atts_->Detached(att->id);
  // Writes lost only because the exporter unmapped their memory: there is
  // nothing left to write them to, and XPMEM's detach of such a range
  // succeeds, as a detach of a revoked attachment does here. tether_sync
  // reports them (EIO); the log does here. Any other failure is returned.
  if (FaultService::IsOnlyLostUnmapped(st)) {
    TLOG_INFO("detach of attachment %#x: %s", att->id, st.message());
    return absl::OkStatus();
  }
  return st;
}

absl::Status LocalApi::Detach(const LocalConnection& c, uint64_t attach_id) {
  // Direct: the client unmaps it; nothing was cached, nothing to write.
  if (FindDirect(attach_id, c.cred.pid, true)) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto att, FindAttachment(c, attach_id));
  // A concurrent detach of the same id (another thread) got it first.
  if (!atts_->Take(attach_id)) return ErrnoStatus(EINVAL, "attachment is being detached");
  return DetachEntry(att);
}

absl::Status LocalApi::Lookup(const std::string& name, local::LocalResponse* resp) {
  RETURN_IF_ERROR(ValidateSegmentName(name));
  auto local_hit = registry_->Lookup(name);
  if (local_hit.ok()) {
    resp->mutable_lookup()->set_segid(local_hit->segid);
    resp->mutable_lookup()->set_size(local_hit->size);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(auto hit, remotes_->Lookup(name));
  resp->mutable_lookup()->set_segid(hit.segid);
  resp->mutable_lookup()->set_size(hit.size);
  return absl::OkStatus();
}

void LocalApi::Disconnected(const LocalConnection& conn) {
  std::vector<std::shared_ptr<Attachment>> atts = atts_->TakeOwnedBy(conn.id);
  std::vector<std::pair<uint64_t, Apid>> apids;
  std::vector<Bracket> open_brackets;
  {
    absl::MutexLock lock(&mu_);
    auto ev = event_conns_.find(conn.id);
    if (ev != event_conns_.end()) {
      auto fit = event_fds_.find(ev->second);
      if (fit != event_fds_.end() && fit->second == conn.fd) event_fds_.erase(fit);
      event_conns_.erase(ev);
    }
    for (auto it = brackets_.begin(); it != brackets_.end();) {
      if (it->second.pid == conn.cred.pid) {
        open_brackets.push_back(std::move(it->second));
        brackets_.erase(it++);
      } else {
        ++it;
      }
    }
    for (auto it = direct_.begin(); it != direct_.end();) {
      if (it->second.conn == conn.id) {
        atts_->ForgetDirect(it->first);
        direct_.erase(it++);
      } else
        ++it;
    }
    for (auto it = apids_.begin(); it != apids_.end();) {
      if (it->second.conn == conn.id) {
        apids.emplace_back(it->first, it->second);
        apids_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  // A bracket its exporter never ended: end it (conservatively: not gone).
  for (auto& b : open_brackets)
    for (auto& [s, w] : b.windows) coordinator_->End(w);
  // The client is gone (or closed its library): its writes still sit in
  // the memfds, so write them back as detach would.
  for (auto& att : atts) {
    absl::Status st = DetachEntry(att);
    if (!st.ok())
      TLOG_WARN("attachment %#x of exited pid %d: write-back failed: %s", att->id, att->pid,
                st.ToString());
  }
  for (auto& [id, a] : apids) {
    absl::Status st = a.home == node_id_ ? registry_->Detach(a.segid, a.grant.id, node_id_)
                                         : remotes_->Detach(a.home, a.segid, a.grant.id);
    (void)st;
  }
}

void LocalApi::SendSigbus(const Attachment& att, uint64_t offset, uint64_t len,
                          const std::string& why) {
  local::LocalEvent ev;
  ev.set_kind(local::LocalEvent::SIGBUS_RANGE);
  ev.set_attach_id(att.id);
  ev.set_offset(offset);
  ev.set_length(len);
  ev.set_reason(why);
  ev.set_version(1);
  int fd = -1;
  {
    absl::MutexLock lock(&mu_);
    auto it = event_fds_.find(att.pid);
    if (it != event_fds_.end()) fd = it->second;
    // Sent under the lock: the connection cannot close underneath us.
    if (fd >= 0 && LocalServer::SendFrame(fd, ev)) return;
  }
  TLOG_WARN("attachment %#x: cannot tell pid %d to raise SIGBUS (%s)", att.id, att.pid, why);
}

absl::Status LocalApi::InvalidateBegin(const LocalConnection& c,
                                       const local::InvalidateBeginRequest& r,
                                       local::LocalResponse* resp) {
  if (!coordinator_) return ErrnoStatus(EOPNOTSUPP, "invalidation is not available");
  if (r.size() == 0 || r.vaddr() % kPageSize || r.size() % kPageSize ||
      r.vaddr() + r.size() < r.vaddr())
    return ErrnoStatus(EINVAL, "range must be page aligned and non-empty");
  Bracket b;
  b.pid = c.cred.pid;
  // Only the caller's own segments: SO_PEERCRED's pid is the exporter's.
  for (const auto& s : registry_->SegmentsOf(c.cred.pid, r.vaddr(), r.size())) {
    auto w = coordinator_->Begin(s.segid, s.start, s.end, "exporter's own bracket");
    if (w.ok()) b.windows.emplace_back(s, *w);
  }
  absl::MutexLock lock(&mu_);
  uint64_t handle = next_bracket_++;
  brackets_[handle] = std::move(b);
  resp->mutable_invalidate_begin()->set_handle(handle);
  return absl::OkStatus();
}

absl::Status LocalApi::InvalidateEnd(const LocalConnection& c,
                                     const local::InvalidateEndRequest& r) {
  Bracket b;
  {
    absl::MutexLock lock(&mu_);
    auto it = brackets_.find(r.handle());
    if (it == brackets_.end() || it->second.pid != c.cred.pid)
      return ErrnoStatus(EINVAL, "no such invalidation handle in this process");
    b = std::move(it->second);
    brackets_.erase(it);
  }
  for (auto& [s, w] : b.windows) {
    std::vector<std::pair<uint64_t, uint64_t>> gone;
    if (r.gone()) gone.emplace_back(s.start, s.end);
    coordinator_->End(w, gone);
  }
  return absl::OkStatus();
}

void LocalApi::DetachAll() {
  for (auto& att : atts_->TakeAll()) (void)DetachEntry(att);
}

std::vector<uint32_t> LocalApi::RemoteHomesInUse() {
  std::vector<uint32_t> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, a] : apids_)
    if (a.home != node_id_ && std::find(out.begin(), out.end(), a.home) == out.end())
      out.push_back(a.home);
  return out;
}

std::vector<HeldGrant> LocalApi::GrantsFrom(uint32_t home) {
  std::vector<HeldGrant> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, a] : apids_) {
    if (a.home != home || a.home == node_id_) continue;
    HeldGrant g;
    g.segid = a.segid;
    g.grant = a.grant.id;
    g.write = a.grant.writable;
    g.uid = a.cred.uid;
    g.gid = a.cred.gid;
    g.groups = a.cred.groups;
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace tether
