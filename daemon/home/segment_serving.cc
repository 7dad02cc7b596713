// SegmentRegistry, its serving side: the BlockServer the data transports
// call. Every request is checked (grant, node, bounds, fencing, open
// windows) under the lock; the exporter's memory is read or written
// outside it, bracketed by the window generation.
#include "daemon/home/segment_registry.h"

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_format.h"
#include "daemon/common/data_counters.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/page_diff.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {
bool Overlap(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1) { return a0 < b1 && b0 < a1; }
}  // namespace

absl::StatusOr<std::shared_ptr<ExporterMemory>> SegmentRegistry::Resolve(
    uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset, uint64_t len, bool write,
    uint64_t* addr, uint64_t* gen, uint64_t* writing) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it == segments_.end()) return ErrnoStatus(ENOENT, absl::StrFormat("no segment %#x", segid));
  Segment* seg = it->second.get();
  auto fit = seg->fenced.find(peer_node);
  if (fit != seg->fenced.end())
    return ErrnoStatus(EIDRM, absl::StrFormat("segment %#x: revoked for node %d (%s)", segid,
                                              peer_node, fit->second));
  auto git = seg->grants.find(grant);
  if (git == seg->grants.end() || git->second.node != peer_node)
    return ErrnoStatus(EACCES, "no grant for this node");
  if (write && !git->second.writable) return ErrnoStatus(EACCES, "read-only grant");
  GrantRecord& g = git->second;
  if (!seg->memory) {
    return ErrnoStatus(seg->state == "removed" ? EIDRM : ESRCH,
                       absl::StrFormat("segment %#x: %s", segid, seg->state));
  }
  if (len == 0 || offset >= seg->size || len > seg->size - offset)
    return ErrnoStatus(EINVAL, "request past the end of the segment");
  for (const auto& [id, w] : seg->windows) {
    if (Overlap(offset, offset + len, w.start, w.end))
      return Retry("an invalidation window is open over this range");
  }
  // A write-back carries a copy read through this grant. If the exporter
  // unmapped the range since (a window's `gone`), that copy belongs to a
  // mapping that no longer exists: landing it would write into whatever
  // is mapped there now. The mapper counts the pages lost, as it does
  // those a window's end reports gone (issue 14: a write-back held back
  // past an unmap that did not ask its node, because a failed or retried
  // write-back had left the page unmarked).
  if (write && g.unmapped.Overlaps(offset, offset + len))
    return ErrnoStatus(ENXIO, absl::StrFormat("segment %#x: the exporter unmapped [%#x, +%#x) "
                                              "since this node read it; the write-back has "
                                              "nowhere to go",
                                              segid, offset, len));
  if (!write && !g.unmapped.empty()) g.unmapped.Remove(offset, offset + len);
  // Before the read (G3), and before a write-back too: the writer keeps
  // the page it wrote (clean after a sync; or put back dirty when a
  // window's write-back failed and a later one succeeds), and a node that
  // holds a page must be asked by every window over it. A window clears
  // the marks of the nodes it asks, and a page a node put back after it
  // was fetched by nobody: without this mark later windows would skip
  // the node while it reads (and may write back over) a page whose
  // contents changed (issue 14, the protocol simulation's seed 137).
  seg->cached[peer_node].Add(offset, offset + len);
  *addr = seg->vaddr + offset;
  *gen = seg->gen;
  if (writing) {
    // In flight from here on: a window opened from now on waits for it
    // (segment_registry.h, "Write-backs in flight").
    *writing = next_write_++;
    seg->writing.emplace(*writing, std::make_pair(offset, offset + len));
  }
  return seg->memory;
}

absl::Status SegmentRegistry::ReadBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                         uint64_t offset, absl::Span<uint8_t> dst) {
  uint64_t addr = 0, gen = 0;
  ASSIGN_OR_RETURN(auto memory,
                   Resolve(peer_node, segid, grant, offset, dst.size(), false, &addr, &gen));
  // Events on the range must be seen before a copy of it leaves (G1, G3).
  if (observer_) RETURN_IF_ERROR(observer_->BeforeRead(segid, offset, offset + dst.size()));
  RETURN_IF_ERROR(memory->Read(addr, dst));
  // A window opened while we read: what we read may predate it (G5).
  if (OpenedSince(segid, gen, offset, offset + dst.size()))
    return Retry("an invalidation window opened during the read");
  CountBytes(Counters().served_bytes, dst.size());
  return absl::OkStatus();
}

absl::Status SegmentRegistry::WriteBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                          uint64_t offset, absl::Span<const uint8_t> src) {
  uint64_t addr = 0, gen = 0, writing = 0;
  ASSIGN_OR_RETURN(auto memory, Resolve(peer_node, segid, grant, offset, src.size(), true, &addr,
                                        &gen, &writing));
  // Counted in flight until this returns: a window opened meanwhile waits.
  WriteInFlight in_flight(this, segid, writing);
  // The notifier source marks the range too (tether.ko forwards only the
  // invalidations of marked ranges, G3): a write-back leaves the writer
  // holding the page, as a read does. Off the fault path (write-backs
  // only); already-marked ranges cost no ioctl.
  if (observer_) RETURN_IF_ERROR(observer_->BeforeRead(segid, offset, offset + src.size()));
  return memory->Write(addr, src);
}

absl::Status SegmentRegistry::WriteDiff(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                        uint64_t offset, absl::Span<const uint8_t> diff) {
  auto pages = DecodeDiff(diff);
  if (!pages.ok())
    return WithErrno(EINVAL, absl::StrFormat("segment %#x: write-back from node %d: %s", segid,
                                             peer_node, pages.status().message()));
  const uint64_t len = DiffSpanPages(*pages) * kPageSize;
  uint64_t addr = 0, gen = 0, writing = 0;
  ASSIGN_OR_RETURN(auto memory,
                   Resolve(peer_node, segid, grant, offset, len, true, &addr, &gen, &writing));
  // In flight until this returns, as WriteBlocks' (a window opened
  // meanwhile waits; without the guard its token would stay in the set).
  WriteInFlight in_flight(this, segid, writing);
  if (observer_) RETURN_IF_ERROR(observer_->BeforeRead(segid, offset, offset + len));
  return memory->WriteDiff(addr, *pages);
}

void SegmentRegistry::WriteLanded(uint64_t segid, uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(segid);
  if (it != segments_.end()) it->second->writing.erase(token);
  // One more lock round per write-back (off the fault path); the signal
  // costs a load when no Begin waits.
  write_landed_.SignalAll();
}

}  // namespace tether
