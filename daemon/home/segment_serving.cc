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
#include "daemon/common/fault_points.h"
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
  if (git == seg->grants.end() && (grant >> 32) != (grant_base_ >> 32))
    return ErrnoStatus(ENOENT, absl::StrFormat("segment %#x: grant %#x is of before this "
                                               "daemon's restart and was not handed back (the "
                                               "mapper node renews no lease: --lease_ms=0?)",
                                               segid, grant));
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
  // A copy through a writable grant may come back dirty, past any window:
  // its range stays watched while the grant lasts (WritableCopies). An
  // in-memory set under the lock taken anyway: no syscall on the fault
  // path.
  if (g.writable) g.copies.Add(offset, offset + len);
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
  // Guarded, in pieces the module takes at once (TETHER_WRITE_MAX_LEN).
  constexpr size_t kUnit = 1 << 20;
  std::vector<WriteUnit> units;
  for (size_t done = 0; done < src.size(); done += kUnit) {
    WriteUnit u;
    u.pieces.push_back({offset + done, src.subspan(done, std::min(kUnit, src.size() - done))});
    units.push_back(std::move(u));
  }
  return WriteBack(
      peer_node, segid, grant, offset, src.size(), units,
      [&](const ExporterMemory& memory, uint64_t addr) { return memory.Write(addr, src); });
}

absl::Status SegmentRegistry::WriteDiff(uint32_t peer_node, uint64_t segid, uint64_t grant,
                                        uint64_t offset, absl::Span<const uint8_t> diff) {
  auto pages = DecodeDiff(diff);
  if (!pages.ok())
    return WithErrno(EINVAL, absl::StrFormat("segment %#x: write-back from node %d: %s", segid,
                                             peer_node, pages.status().message()));
  const uint64_t len = DiffSpanPages(*pages) * kPageSize;
  // Guarded: a page at a time under its page lock, as ExporterMemory's.
  std::vector<WriteUnit> units;
  for (const DiffPage& page : *pages) {
    WriteUnit u;
    u.locked = true;
    u.page = offset + page.index * kPageSize;
    for (const DiffRun& run : page.runs) u.pieces.push_back({u.page + run.offset, run.data});
    if (!u.pieces.empty()) units.push_back(std::move(u));
  }
  return WriteBack(
      peer_node, segid, grant, offset, len, units,
      [&](const ExporterMemory& memory, uint64_t addr) { return memory.WriteDiff(addr, *pages); });
}

absl::Status SegmentRegistry::WriteBack(
    uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset, uint64_t len,
    const std::vector<WriteUnit>& units,
    const std::function<absl::Status(const ExporterMemory&, uint64_t)>& unguarded) {
  size_t next = 0;  // units written (kept across refusals: each lands once)
  for (int attempt = 1;; ++attempt) {
    uint64_t addr = 0, gen = 0, writing = 0;
    ASSIGN_OR_RETURN(auto memory,
                     Resolve(peer_node, segid, grant, offset, len, true, &addr, &gen, &writing));
    // Counted in flight until this attempt returns: a window opened
    // meanwhile waits (without the guard its token would stay in the set).
    WriteInFlight in_flight(this, segid, writing);
    // Held here (tests), no lock held: past the checks, before the
    // notifier source's guard (a change the notifier saw late happens here).
    TETHER_FAULT_POINT("segment_registry.write_back.before_guard");
    // The notifier source marks the range too (tether.ko forwards only
    // the invalidations of marked ranges, G3): a write-back leaves the
    // writer holding the page, as a read does. Off the fault path.
    SegmentObserver::WriteGuard guard;
    if (observer_) {
      ASSIGN_OR_RETURN(guard, observer_->BeforeWrite(segid, offset, offset + len));
    }
    if (!guard.guarded) {
      absl::Status st = unguarded(*memory, addr);
      TETHER_FAULT_POINT("segment_registry.write_back.after_write");  // as below
      return st;
    }
    // The guard was taken after Resolve: a window opened in between (its
    // change may even be over, its sequence moves already counted in the
    // guard) is caught here instead. From the guard on, the source refuses
    // the write if the exporter's memory there changes.
    absl::Status st;
    if (OpenedSince(segid, gen, offset, offset + len)) {
      st = ErrnoStatus(ESTALE, "an invalidation window opened since the checks");
    } else {
      // Held here (tests): the write is about to be made (the name of
      // ExporterMemory::Write's point: tests hold either path).
      TETHER_FAULT_POINT("exporter_memory.write.before_write");
      for (; next < units.size(); ++next) {
        const WriteUnit& u = units[next];
        if (u.locked) {
          absl::MutexLock lock(&memory->PageLock(addr - offset + u.page));
          st = observer_->GuardedWrite(segid, guard, u.pieces);
        } else {
          st = observer_->GuardedWrite(segid, guard, u.pieces);
        }
        if (!st.ok()) break;
      }
    }
    // Held here (tests): the write was made or refused, still in flight.
    TETHER_FAULT_POINT("segment_registry.write_back.after_write");
    if (ToErrno(st) != ESTALE) return st;
    if (attempt == kWriteAttempts)
      return Retry(
          absl::StrFormat("segment %#x: the exporter's memory at [%#x, +%#x) changed "
                          "during each of %d write attempts",
                          segid, offset, len, attempt));
    TLOG_DEBUG("segment %#x: write-back to [%#x, +%#x) refused (%s); checking again", segid, offset,
               len, st.message());
  }
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
