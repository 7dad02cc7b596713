#include "daemon/home/segment_registry.h"

#include <sys/epoll.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page.h"
#include "daemon/common/segid.h"
#include "daemon/common/segment_name.h"
#include "daemon/common/status_macros.h"
#include "daemon/common/thread_name.h"

namespace tether {
namespace {
// The largest user address space Linux gives a process: 56 bits (x86-64
// with 5-level paging, for a process that maps above 47 bits; arm64 stops
// at 52). Only a bound against overflow: a range beyond what the exporter
// really has fails its first read (EFAULT), or tether.ko's check against
// the process's own limit.
constexpr uint64_t kUserAddressLimit = uint64_t{1} << 56;
}  // namespace

SegmentRegistry::SegmentRegistry(uint32_t node_id, uint32_t epoch)
    : node_id_(node_id),
      own_state_(NodeState::Ephemeral(node_id, epoch)),
      state_(own_state_.get()),
      reregister_until_(absl::InfinitePast()) {}

SegmentRegistry::SegmentRegistry(uint32_t node_id, NodeState* state, absl::Time reregister_until)
    : node_id_(node_id), state_(state), reregister_until_(reregister_until) {
  uint32_t base = 0;
  while (base == 0)
    if (getrandom(&base, sizeof(base), 0) != sizeof(base)) base = static_cast<uint32_t>(getpid());
  grant_base_ = uint64_t{base} << 32;
  next_grant_ = grant_base_ | 1;
}

SegmentRegistry::~SegmentRegistry() { Stop(); }

absl::Status SegmentRegistry::Start(SegmentObserver* observer) {
  observer_ = observer;
  RETURN_IF_ERROR(exits_.Open());
  watcher_ = std::thread([this] {
    NameThisThread("tt-exits");
    WatchExits();
  });
  return absl::OkStatus();
}

void SegmentRegistry::Stop() {
  if (stopping_.exchange(true)) return;
  exits_.Wake();
  if (watcher_.joinable()) watcher_.join();
  exits_.Close();
}

void SegmentRegistry::WatchExits() {
  epoll_event events[16];
  while (!stopping_) {
    int n = exits_.Wait(events, 16, -1);
    for (int i = 0; i < n; ++i) ExporterExited(events[i].data.u64);
  }
}

void SegmentRegistry::ExporterExited(uint64_t segid) {
  std::shared_ptr<ExporterMemory> memory;
  bool notify = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = segments_.find(segid);
    if (it == segments_.end()) return;
    Segment* seg = it->second.get();
    if (seg->memory) {
      exits_.Remove(seg->memory->pidfd());
      memory = std::move(seg->memory);
    }
    if (seg->state == "live") {
      seg->state = "exporter exited";
      Unpersist(segid);
      notify = true;
      TLOG_INFO("segment %#x: exporter pid %d exited; %d grants revoked", segid, seg->pid,
                seg->grants.size());
    }
    if (!notify) MaybeForget(seg);  // after the callback has seen the grants
  }
  if (notify) Gone(segid, "exporter exited");
  if (notify) {
    absl::MutexLock lock(&mu_);
    auto it = segments_.find(segid);
    if (it != segments_.end()) MaybeForget(it->second.get());
  }
}

void SegmentRegistry::Gone(uint64_t segid, const std::string& why) {
  if (observer_) observer_->SegmentGone(segid, why);
}

// A segment that is no longer live stays listed while grants refer to it,
// so that mappers get a precise error ("exporter exited") instead of ENOENT.
void SegmentRegistry::MaybeForget(Segment* seg) {
  if (seg->state == "live" || !seg->grants.empty()) return;
  if (!seg->name.empty()) names_.erase(seg->name);
  segments_.erase(seg->segid);
}

absl::StatusOr<uint64_t> SegmentRegistry::Make(const Credentials& owner, uint64_t vaddr,
                                               uint64_t size, uint32_t mode,
                                               std::unique_ptr<ExporterMemory> memory) {
  if (size == 0) return ErrnoStatus(EINVAL, "export size is zero");
  if (vaddr % kPageSize != 0 || size % kPageSize != 0)
    return ErrnoStatus(EINVAL, "export address and size must be page aligned");
  if (vaddr + size < vaddr || vaddr + size > kUserAddressLimit)
    return ErrnoStatus(EINVAL, "export range overflows the user address space");
  if (mode & ~0777u) return ErrnoStatus(EINVAL, "permit mode has bits beyond 0777");
  if (!memory) return ErrnoStatus(EINVAL, "no exporter memory");
  auto seg = std::make_unique<Segment>();
  seg->vaddr = vaddr;
  seg->size = size;
  seg->pid = memory->pid();
  seg->uid = owner.uid;
  seg->gid = owner.gid;
  seg->mode = mode;
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(uint32_t local, state_->NextLocal());
  seg->segid = MakeSegid(node_id_, state_->epoch(), local);
  // Recorded before the segid is handed out: a restart after this point
  // lets only this owner register it again (Reregister). One file write
  // per export, under mu_ as NextLocal's: a Make stalls this node's
  // reads for an fsync of a small file (exports are rare; the table must
  // be on disk before the exporter can hold the segid).
  DropEarlierIfLate();
  RETURN_IF_ERROR(state_->AddSegment(local, {owner.uid, owner.gid, mode}));
  auto segid = Insert(std::move(seg), std::move(memory), "exported");
  if (!segid.ok()) Unpersist(MakeSegid(node_id_, state_->epoch(), local));
  return segid;
}

void SegmentRegistry::DropEarlierIfLate() {
  if (absl::Now() >= reregister_until_) state_->DropEarlier();
}

void SegmentRegistry::Unpersist(uint64_t segid) {
  SegidParts parts;
  if (!ParseSegid(segid, &parts)) return;
  DropEarlierIfLate();
  // A failed write leaves the line in the file until the next write; it
  // lets at most this segment's owner register a dead segment again.
  absl::Status st = state_->RemoveSegment(parts.local);
  if (!st.ok()) TLOG_WARN("segment %#x: %s", segid, st.ToString());
}

absl::StatusOr<uint64_t> SegmentRegistry::Insert(std::unique_ptr<Segment> seg,
                                                 std::unique_ptr<ExporterMemory> memory,
                                                 const char* how) {
  if (exits_.is_open()) {  // not in unit tests that never Start()
    absl::Status st = exits_.Add(memory->pidfd(), seg->segid);
    if (!st.ok()) return ErrnoStatus(ToErrno(st), "watch exporter pidfd");
  }
  seg->memory = std::move(memory);
  uint64_t segid = seg->segid;
  TLOG_INFO("segment %#x: %s [%#x, +%d) of pid %d, mode %o", segid, how, seg->vaddr, seg->size,
            seg->pid, seg->mode);
  segments_.emplace(segid, std::move(seg));
  return segid;
}

absl::StatusOr<uint64_t> SegmentRegistry::Reregister(const Credentials& owner, uint64_t segid,
                                                     uint64_t vaddr, uint64_t size, uint32_t mode,
                                                     std::unique_ptr<ExporterMemory> memory) {
  SegidParts parts;
  if (!ParseSegid(segid, &parts))
    return ErrnoStatus(EINVAL, absl::StrFormat("%#x is not a segid", segid));
  if (parts.node != node_id_ || parts.incarnation != state_->epoch() ||
      parts.local >= state_->first_local())
    return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x was not made by an earlier run of "
                                               "this node's daemon (node %d, epoch %#x)",
                                               segid, node_id_, state_->epoch()));
  if (absl::Now() >= reregister_until_)
    return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x: too late to register it again (the "
                                               "grace after the daemon's restart ran out)",
                                               segid));
  // The same checks as a new export (Make), on a copy of the arguments.
  if (size == 0 || vaddr % kPageSize != 0 || size % kPageSize != 0 || vaddr + size < vaddr ||
      vaddr + size > kUserAddressLimit || (mode & ~0777u) || !memory)
    return ErrnoStatus(EINVAL, "bad export range, mode or memory");
  auto seg = std::make_unique<Segment>();
  seg->segid = segid;
  seg->vaddr = vaddr;
  seg->size = size;
  seg->pid = memory->pid();
  seg->uid = owner.uid;
  seg->gid = owner.gid;
  seg->mode = mode;
  absl::MutexLock lock(&mu_);
  if (segments_.contains(segid))
    return ErrnoStatus(EEXIST, absl::StrFormat("segment %#x is registered already", segid));
  // Only what node.state recorded as live when the earlier run stopped,
  // and only by the uid that made it: mappers hand their grants of this
  // segid back to whatever is registered under it (issue 18/17).
  std::optional<NodeState::SegmentOwner> was = state_->Earlier(parts.local);
  if (!was)
    return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x was not live when this node's "
                                               "daemon stopped (removed, or its exporter exited)",
                                               segid));
  if (was->uid != owner.uid)
    return ErrnoStatus(EACCES, absl::StrFormat("segment %#x belongs to uid %d; uid %d may not "
                                               "register it again",
                                               segid, was->uid, owner.uid));
  ASSIGN_OR_RETURN(uint64_t id, Insert(std::move(seg), std::move(memory),
                                       "registered again after the restart:"));
  // Recorded again for the next restart; on failure undone, so that the
  // exporter's library sees the error (and no segid outlives what the
  // file says).
  absl::Status st = state_->AddSegment(parts.local, {owner.uid, owner.gid, mode});
  if (!st.ok()) {
    auto it = segments_.find(id);
    if (it->second->memory) exits_.Remove(it->second->memory->pidfd());
    segments_.erase(it);
    return st;
  }
  return id;
}

absl::Status SegmentRegistry::ReclaimGrant(uint64_t segid, uint64_t grant, const Credentials& cred,
                                           bool write, uint32_t mapper_node) {
  absl::MutexLock lock(&mu_);
  if (!segments_.contains(segid)) {
    SegidParts parts;
    if (ParseSegid(segid, &parts) && parts.node == node_id_ &&
        parts.incarnation == state_->epoch() && parts.local < state_->first_local() &&
        absl::Now() < reregister_until_)
      return ErrnoStatus(EAGAIN, absl::StrFormat("segment %#x is not registered again yet", segid));
  }
  ASSIGN_OR_RETURN(Segment * seg, CheckGrant(segid, cred, write, mapper_node));
  auto it = seg->grants.find(grant);
  if (it != seg->grants.end()) {
    if (it->second.node != mapper_node || it->second.writable != write)
      return ErrnoStatus(EINVAL, absl::StrFormat("grant %#x is another one", grant));
    return absl::OkStatus();  // reclaimed before (a renewal sent twice)
  }
  // What the node held before the restart is not known here: a writable
  // grant may hold a dirty copy of any page of the segment, so all of it
  // stays marked in tether.ko until the grant ends (GrantRecord::copies).
  GrantRecord record{mapper_node, write, {}, {}};
  if (write) record.copies.Add(0, seg->size);
  seg->grants.emplace(grant, std::move(record));
  return absl::OkStatus();
}

absl::Status SegmentRegistry::Remove(uint64_t segid, const Credentials& caller) {
  {
    std::shared_ptr<ExporterMemory> memory;
    absl::MutexLock lock(&mu_);
    auto it = segments_.find(segid);
    if (it == segments_.end() || it->second->state == "removed")
      return ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x", segid));
    Segment* seg = it->second.get();
    if (caller.uid != seg->uid && caller.uid != 0)
      return ErrnoStatus(EPERM, "only the segment's owner may remove it");
    if (seg->memory) {
      exits_.Remove(seg->memory->pidfd());
      memory = std::move(seg->memory);
    }
    seg->state = "removed";
    Unpersist(segid);
    TLOG_INFO("segment %#x: removed (%d grants revoked)", segid, seg->grants.size());
  }
  Gone(segid, "segment removed by its exporter");
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it != segments_.end()) MaybeForget(it->second.get());
  return absl::OkStatus();
}

absl::Status SegmentRegistry::Publish(uint64_t segid, const std::string& name,
                                      const Credentials& caller) {
  RETURN_IF_ERROR(ValidateSegmentName(name));
  // "OWNER/..." is OWNER's (segment_name.h): resolved before the lock, as
  // it may ask NSS.
  ASSIGN_OR_RETURN(std::optional<uint32_t> name_owner, NameOwner(name));
  if (name_owner && *name_owner != caller.uid && caller.uid != 0)
    return ErrnoStatus(EPERM, absl::StrFormat("segment name '%s' belongs to uid %d (the part "
                                              "before '/'); uid %d may not publish it",
                                              EscapeName(name), *name_owner, caller.uid));
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end() || it->second->state != "live")
    return ErrnoStatus(ENOENT, absl::StrFormat("no live segment %#x", segid));
  Segment* seg = it->second.get();
  if (caller.uid != seg->uid && caller.uid != 0)
    return ErrnoStatus(EPERM, "only the segment's owner may publish it");
  auto [nit, inserted] = names_.emplace(name, segid);
  if (!inserted && nit->second != segid)
    return ErrnoStatus(EEXIST, absl::StrCat("name '", EscapeName(name), "' is taken"));
  if (!seg->name.empty() && seg->name != name) names_.erase(seg->name);
  seg->name = name;
  return absl::OkStatus();
}

absl::StatusOr<SegmentSummary> SegmentRegistry::Lookup(const std::string& name) const {
  RETURN_IF_ERROR(ValidateSegmentName(name));
  absl::MutexLock lock(&mu_);
  auto it = names_.find(name);
  if (it == names_.end())
    return ErrnoStatus(ENOENT, absl::StrCat("no segment named '", EscapeName(name), "'"));
  const Segment& s = *segments_.at(it->second);
  SegmentSummary out;
  out.segid = s.segid;
  out.size = s.size;
  out.name = s.name;
  out.state = s.state;
  return out;
}

void SegmentRegistry::SetTrustedPeers(std::vector<uint32_t> nodes) {
  absl::MutexLock lock(&mu_);
  trusted_peers_ = std::move(nodes);
}

absl::StatusOr<Grant> SegmentRegistry::Attach(uint64_t segid, const Credentials& caller, bool write,
                                              uint32_t mapper_node) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Segment * seg, CheckGrant(segid, caller, write, mapper_node));
  Grant g;
  g.id = next_grant_++;
  g.segment_size = seg->size;
  g.writable = write;
  seg->grants.emplace(g.id, GrantRecord{mapper_node, write, {}, {}});
  return g;
}

absl::StatusOr<SegmentRegistry::Segment*> SegmentRegistry::CheckGrant(uint64_t segid,
                                                                      const Credentials& caller,
                                                                      bool write,
                                                                      uint32_t mapper_node) {
  // A mapper on another node is who its daemon says it is; its root is
  // anyone's root, so it acts as nobody unless its node is trusted
  // (--trusted_peers, docs/security.md). This node's own callers are
  // checked as SO_PEERCRED says.
  const bool squash =
      mapper_node != node_id_ &&
      std::find(trusted_peers_.begin(), trusted_peers_.end(), mapper_node) == trusted_peers_.end();
  const Credentials cred = squash ? SquashRoot(caller) : caller;
  auto it = segments_.find(segid);
  if (it == segments_.end()) return ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x", segid));
  Segment* seg = it->second.get();
  if (seg->state != "live")
    return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x: %s", segid, seg->state));
  auto fit = seg->fenced.find(mapper_node);
  if (fit != seg->fenced.end())
    return ErrnoStatus(EIDRM, absl::StrFormat("segment %#x: revoked for node %d (%s)", segid,
                                              mapper_node, fit->second));
  if (!PermitAllows(seg->mode, seg->uid, seg->gid, cred, write ? 6 : 4))
    return ErrnoStatus(
        EACCES, absl::StrFormat(
                    "segment %#x (mode %o, owner %d:%d) does not "
                    "permit %s by uid %d%s",
                    segid, seg->mode, seg->uid, seg->gid, write ? "read-write" : "read", cred.uid,
                    cred.uid != caller.uid ? absl::StrFormat(" (root of node %d, squashed: it is "
                                                             "not in --trusted_peers)",
                                                             mapper_node)
                                           : ""));
  return seg;
}

absl::Status SegmentRegistry::Detach(uint64_t segid, uint64_t grant, uint32_t mapper_node) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x", segid));
  Segment* seg = it->second.get();
  auto git = seg->grants.find(grant);
  if (git == seg->grants.end() || git->second.node != mapper_node)
    return ErrnoStatus(ENOENT, "no such grant");
  seg->grants.erase(git);
  MaybeForget(seg);
  return absl::OkStatus();
}

std::vector<SegmentSummary> SegmentRegistry::List() const {
  std::vector<SegmentSummary> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, s] : segments_) {
    SegmentSummary x;
    x.segid = s->segid;
    x.vaddr = s->vaddr;
    x.size = s->size;
    x.pid = s->pid;
    x.uid = s->uid;
    x.gid = s->gid;
    x.mode = s->mode;
    x.name = s->name;
    x.grants = static_cast<uint32_t>(s->grants.size());
    x.state = s->state;
    out.push_back(std::move(x));
  }
  return out;
}

std::vector<uint32_t> SegmentRegistry::GrantNodes(uint64_t segid) const {
  std::vector<uint32_t> out;
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return out;
  for (const auto& [id, g] : it->second->grants) out.push_back(g.node);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<SegmentRange> SegmentRegistry::SegmentsOf(pid_t pid, uint64_t addr,
                                                      uint64_t len) const {
  std::vector<SegmentRange> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, s] : segments_) {
    if (s->pid != pid || s->state != "live") continue;
    uint64_t a0 = std::max(addr, s->vaddr), a1 = std::min(addr + len, s->vaddr + s->size);
    if (a0 < a1) out.push_back({s->segid, s->vaddr, a0 - s->vaddr, a1 - s->vaddr});
  }
  return out;
}

absl::StatusOr<SegmentSummary> SegmentRegistry::Get(uint64_t segid) const {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x", segid));
  SegmentSummary x;
  x.segid = segid;
  x.vaddr = it->second->vaddr;
  x.size = it->second->size;
  x.pid = it->second->pid;
  x.state = it->second->state;
  return x;
}

}  // namespace tether
