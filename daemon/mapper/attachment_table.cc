#include "daemon/mapper/attachment_table.h"

#include <algorithm>
#include <utility>

#include "daemon/common/page.h"

namespace tether {

uint64_t AttachmentTable::Insert(std::shared_ptr<Attachment> att, uint64_t owner, uint64_t apid) {
  absl::MutexLock lock(&mu_);
  uint64_t id = (uint64_t{incarnation_} << 32) | next_++;
  att->id = id;
  entries_[id] = Entry{std::move(att), owner, apid};
  return id;
}

std::shared_ptr<Attachment> AttachmentTable::Find(uint64_t id, pid_t pid) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.att->pid != pid) return nullptr;
  return it->second.att;
}

std::shared_ptr<Attachment> AttachmentTable::Take(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return nullptr;
  std::shared_ptr<Attachment> att = std::move(it->second.att);
  entries_.erase(it);
  detaching_[id] = att;
  return att;
}

void AttachmentTable::Detached(uint64_t id) {
  absl::MutexLock lock(&mu_);
  detaching_.erase(id);
}

std::vector<std::shared_ptr<Attachment>> AttachmentTable::TakeOwnedBy(uint64_t owner) {
  std::vector<std::shared_ptr<Attachment>> out;
  absl::MutexLock lock(&mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.owner == owner) {
      detaching_[it->first] = it->second.att;
      out.push_back(std::move(it->second.att));
      entries_.erase(it++);
    } else {
      ++it;
    }
  }
  return out;
}

std::vector<std::shared_ptr<Attachment>> AttachmentTable::TakeAll() {
  std::vector<std::shared_ptr<Attachment>> out;
  absl::MutexLock lock(&mu_);
  for (auto& [id, e] : entries_) {
    detaching_[id] = e.att;
    out.push_back(std::move(e.att));
  }
  entries_.clear();
  return out;
}

std::vector<std::shared_ptr<Attachment>> AttachmentTable::Of(uint64_t segid) {
  std::vector<std::shared_ptr<Attachment>> out;
  absl::MutexLock lock(&mu_);
  for (auto& [id, e] : entries_)
    if (e.att->segid == segid) out.push_back(e.att);
  for (auto& [id, a] : detaching_)
    if (a->segid == segid) out.push_back(a);
  return out;
}

std::vector<std::shared_ptr<Attachment>> AttachmentTable::FromHome(uint32_t home) {
  std::vector<std::shared_ptr<Attachment>> out;
  absl::MutexLock lock(&mu_);
  for (auto& [id, e] : entries_)
    if (e.att->home == home) out.push_back(e.att);
  for (auto& [id, a] : detaching_)
    if (a->home == home) out.push_back(a);
  return out;
}

std::vector<uint32_t> AttachmentTable::Homes() {
  std::vector<uint32_t> out;
  absl::MutexLock lock(&mu_);
  for (auto& [id, e] : entries_)
    if (std::find(out.begin(), out.end(), e.att->home) == out.end()) out.push_back(e.att->home);
  return out;
}

bool AttachmentTable::UsesApid(uint64_t apid) {
  absl::MutexLock lock(&mu_);
  for (auto& [id, e] : entries_)
    if (e.apid == apid) return true;
  return false;
}

void AttachmentTable::NoteDirect(const AttachmentSummary& s) {
  absl::MutexLock lock(&mu_);
  AttachmentSummary& d = direct_[s.id];
  d = s;
  d.kind = "direct";
}

void AttachmentTable::ForgetDirect(uint64_t id) {
  absl::MutexLock lock(&mu_);
  direct_.erase(id);
}

std::vector<AttachmentSummary> AttachmentTable::Summaries() {
  std::vector<std::shared_ptr<Attachment>> atts;
  std::vector<AttachmentSummary> out;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, e] : entries_) atts.push_back(e.att);
    for (auto& [id, d] : direct_) out.push_back(d);
  }
  for (auto& a : atts) {
    AttachmentSummary s;
    s.id = a->id;
    s.segid = a->segid;
    s.offset = a->seg_offset;
    s.size = a->size;
    s.pid = a->pid;
    s.writable = a->writable;
    s.faults = a->faults.load();
    // The cache's pages inside this attachment's range (shared with the
    // segment's other attachments on this node: attachment.h).
    SegmentCache& c = *a->cache;
    absl::MutexLock lock(&c.mu);
    for (uint64_t p = a->first_page(); p < a->first_page() + a->pages(); ++p) {
      PageState st = c.state[p];
      s.resident_bytes +=
          st == PageState::kClean || st == PageState::kDirty || st == PageState::kWriteback
              ? kPageSize
              : 0;
      s.dirty_bytes += st == PageState::kDirty ? kPageSize : 0;
    }
    s.state = c.revoked ? "revoked: " + c.revoke_reason : "mapped";
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace tether
