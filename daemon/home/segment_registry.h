// SegmentRegistry: the home node's exported segments and the grants
// (permissions to map) it handed out for them. It is also the BlockServer
// through which the data transport reads and writes exporters' memory.
//
// Its jobs, and the file each lives in:
//   segment_registry.cc   segments, names, grants (export-side requests)
//   segment_windows.cc    invalidation windows, cached marks, fencing
//   segment_serving.cc    serving reads and writes (BlockServer)
//   exit watching         the exporters' pidfds, on one thread (below)
//
// Thread contract: every public method may be called from any thread.
// One mutex guards the maps; memory accesses run outside it on a
// shared_ptr to the segment's ExporterMemory, so a slow read never blocks
// an export, a lookup or another segment's traffic. The observer is called
// outside the lock. Start() starts the exit-watcher thread, which calls
// SegmentGone() for exporters that exit; Stop() joins it. A write-back
// is counted in flight from its checks until it returned; AwaitWriteBacks
// blocks its caller (a Begin, never a thread that writes) until those
// overlapping a range returned or a deadline.
#ifndef TETHER_DAEMON_HOME_SEGMENT_REGISTRY_H_
#define TETHER_DAEMON_HOME_SEGMENT_REGISTRY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/common/credentials.h"
#include "daemon/common/interval_set.h"
#include "daemon/common/node_state.h"
#include "daemon/common/wakeable_epoll.h"
#include "daemon/home/exporter_memory.h"
#include "daemon/home/segment_observer.h"
#include "daemon/home/segment_types.h"
#include "daemon/transport/transport.h"

namespace tether {

struct OpenedWindow {
  uint64_t id = 0;
  std::vector<uint32_t> nodes;  // nodes that may cache part of the range
};

class SegmentRegistry : public BlockServer {
 public:
  // Segids of segment epoch `epoch`, nothing persisted (unit tests).
  SegmentRegistry(uint32_t node_id, uint32_t epoch);
  // The daemon's: segids of `state`'s epoch and counter (node_state.h;
  // must outlive the registry). Segments of an earlier run may be
  // registered again (Reregister) until `reregister_until`.
  SegmentRegistry(uint32_t node_id, NodeState* state, absl::Time reregister_until);
  ~SegmentRegistry() override;

  // The segment epoch of this node's segids (segid.h's incarnation field).
  uint32_t epoch() const { return state_->epoch(); }

  // Starts the thread that notices exporters exiting (pidfd poll).
  // `observer` (may be null in unit tests) is asked before every read and
  // told when a segment stops being live; it must outlive Stop().
  absl::Status Start(SegmentObserver* observer);
  void Stop();

  absl::StatusOr<uint64_t> Make(const Credentials& owner, uint64_t vaddr, uint64_t size,
                                uint32_t mode, std::unique_ptr<ExporterMemory> memory);
  // A restarted daemon: the exporter's library registers a segment of an
  // earlier run again under its segid (docs/consistency.md, "When the
  // home daemon restarts"). ENOENT unless the segid is this node's, of
  // this epoch, made by an earlier run (below NodeState::first_local),
  // live when that run stopped (node.state's segment table: not removed,
  // its exporter had not exited) and the grace since the start has not
  // run out; EACCES unless `owner` has the uid that made it (root too:
  // only the original owner); EEXIST if it is live.
  // Every mapper node that held grants before the restart reclaims them
  // (ReclaimGrant) after it dropped its clean copies.
  absl::StatusOr<uint64_t> Reregister(const Credentials& owner, uint64_t segid, uint64_t vaddr,
                                      uint64_t size, uint32_t mode,
                                      std::unique_ptr<ExporterMemory> memory);
  // A mapper node's grant from before the restart, taken back under its
  // id (a lease renewal carries it: peer.proto's HeldGrant): the permit is
  // checked again as Attach does. ENOENT if the segment is not live (or
  // from another epoch), EAGAIN if it is one of an earlier run not (yet)
  // registered again within the grace; EACCES, EIDRM as Attach.
  absl::Status ReclaimGrant(uint64_t segid, uint64_t grant, const Credentials& cred, bool write,
                            uint32_t mapper_node);
  absl::Status Remove(uint64_t segid, const Credentials& caller);
  absl::Status Publish(uint64_t segid, const std::string& name, const Credentials& caller);
  absl::StatusOr<SegmentSummary> Lookup(const std::string& name) const;

  // The other nodes whose root is root here (--trusted_peers); a remote
  // mapper's uid 0 and gid 0 from any other node are squashed to nobody
  // before the permit check (credentials.h, SquashRoot). Empty by default.
  void SetTrustedPeers(std::vector<uint32_t> nodes);
  // Permission to map: checks the permit with `cred`; the grant is bound to
  // `mapper_node` (data requests from other nodes are refused).
  absl::StatusOr<Grant> Attach(uint64_t segid, const Credentials& cred, bool write,
                               uint32_t mapper_node);
  absl::Status Detach(uint64_t segid, uint64_t grant, uint32_t mapper_node);

  std::vector<SegmentSummary> List() const;

  // --- Invalidation support (G1, G3, G5 in docs/architecture.md) ---
  //
  // Every read of a segment marks the range cached by the reading node
  // *before* it reads the exporter, under the same lock and sequence as the
  // window check (G3); so does every write-back (the writer keeps the page
  // it wrote, see segment_serving.cc). A read is bracketed: one that overlaps an open
  // window, or one opened while it ran, is answered Retry() (common/errors.h),
  // never with contents from before the window (G5: the home never waits
  // for in-flight reads).
  //
  // Opens a window over [start, end) (segment offsets): no read or write
  // of the range is served until CloseWindow(). Returns the nodes whose
  // cached marks overlap; the marks are cleared (those nodes drop their
  // copies, or are fenced). Also the unfenced nodes that an overlapping
  // window still open asked: their marks are gone, but they may hold
  // copies until they answer that window, so this one must ask them too.
  absl::StatusOr<OpenedWindow> OpenWindow(uint64_t segid, uint64_t start, uint64_t end);
  // Closes the window. `gone`: sub-ranges (segment offsets) whose address
  // the change unmapped. Every grant records them (GrantRecord::unmapped):
  // a write-back of a copy read before — held back by a failure, a retry
  // or a put-back page that no later window asked about — is refused
  // from now on (ENXIO), never landed in whatever the exporter maps there
  // next. Under the same lock as the close: no write-back slips between.
  void CloseWindow(uint64_t segid, uint64_t window,
                   const std::vector<std::pair<uint64_t, uint64_t>>& gone = {});
  // The parts of [start, end) (segment offsets) where a node may hold a
  // dirty copy: read or written through a writable grant that still
  // exists. A notifier source that forwards only the changes of marked
  // ranges (tether.ko) keeps these marked across a window's end, so that
  // a later change of them opens a window (and an unmap reports them
  // gone) instead of passing unseen under a write-back kept past the end
  // (issue 14). Sorted, disjoint.
  std::vector<std::pair<uint64_t, uint64_t>> WritableCopies(uint64_t segid, uint64_t start,
                                                            uint64_t end) const;
  // A change of [start, end) (segment offsets) that no window covered: the
  // notifier source learnt of it after the kernel had made it (tether.ko's
  // LATE BEGIN), or not as a window at all (the OOM reaper's, a lost
  // event). Recorded as a window opened and closed at once: a write-back
  // that passed its checks before is refused by its second look
  // (OpenedSince) and checked again; `gone` (the change unmapped the range)
  // records it in every grant, as CloseWindow's `gone` does. Nobody is
  // asked: the caller revokes every mapper of the segment.
  void RecordChange(uint64_t segid, uint64_t start, uint64_t end, bool gone);
  // Write-backs in flight (issue 14): WriteBlocks enters a write-back in
  // the segment's count once it has passed the checks (grant, fence, no
  // window over the range, not unmapped since read), under mu_ — the lock
  // OpenWindow takes — and leaves it when its write (ExporterMemory, or
  // the notifier source's GuardedWrite) returned.
  // So when a window opens, every write-back of its range that could
  // still land is in the count, and no new one gets past the checks. A
  // Begin waits for those before the change goes on
  // (InvalidationCoordinator::AwaitWriteBacks): otherwise a write already
  // past the checks lands after the change — in the mapping an munmap
  // and a new mmap put at the address, or after the change returned.
  //
  // True when no write-back in flight overlaps [start, end) (segment
  // offsets). Never waits.
  bool WriteBacksLanded(uint64_t segid, uint64_t start, uint64_t end) const;
  // Blocks until WriteBacksLanded or `deadline`; returns which. The wait
  // holds no lock (a condition variable on mu_); the writers it waits for
  // need none of the caller's. See the coordinator for why it is bounded.
  bool AwaitWriteBacks(uint64_t segid, uint64_t start, uint64_t end, absl::Time deadline);
  // Revokes every grant `node` holds on the segment: its later requests
  // and write-backs are refused ("revoked"), never applied.
  void FenceNode(uint64_t segid, uint32_t node, const std::string& why);
  // The segments `node` is fenced for, and why: a lease renewal carries
  // them back to it (invalidation/lease_table.h), so that a node that
  // missed its REVOKE drops them before it counts a new lease.
  std::vector<std::pair<uint64_t, std::string>> FencedSegments(uint32_t node) const;
  // Nodes holding grants on the segment.
  std::vector<uint32_t> GrantNodes(uint64_t segid) const;
  // Live segments of exporter `pid` overlapping [addr, addr + len).
  std::vector<SegmentRange> SegmentsOf(pid_t pid, uint64_t addr, uint64_t len) const;
  // A segment's exporter range (for notifier sources).
  absl::StatusOr<SegmentSummary> Get(uint64_t segid) const;

  absl::Status ReadBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset,
                          absl::Span<uint8_t> dst) override;
  absl::Status WriteBlocks(uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset,
                           absl::Span<const uint8_t> src) override;
  // The diff is decoded (and refused whole if malformed) before anything
  // is checked or written; the range checked (grant, bounds, windows,
  // unmapped since read) is the pages it spans.
  absl::Status WriteDiff(uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> diff) override;
  // A refused guarded write is checked and tried again at most this many
  // times in one request; then the mapper gets Retry() (its own retries
  // are bounded and spaced): no loop here can spin.
  static constexpr int kWriteAttempts = 3;

 private:
  struct GrantRecord {
    uint32_t node = 0;
    bool writable = false;
    // Ranges reported gone (CloseWindow's `gone`: the exporter unmapped
    // them) and not read through this grant since. A write-back into them
    // carries a copy of a mapping that no longer exists: refused (ENXIO).
    // A read takes its range out (the copy it returns is of the mapping
    // there now). Empty unless an unmap happened: a read then costs one
    // empty() check under the lock it takes anyway.
    IntervalSet unmapped;
    // What the node read or wrote through this grant while it is
    // writable: there it may hold a dirty copy (kept aside by a window and
    // put back after a failed write-back, or a write-back on its way)
    // until the grant ends (Detach, FenceNode). WritableCopies() answers
    // from it; empty for read-only grants.
    IntervalSet copies;
  };
  struct RecentWindow {
    uint64_t gen, start, end;
  };
  struct Window {
    uint64_t start = 0, end = 0;
    std::vector<uint32_t> nodes;  // asked to drop their copies (OpenWindow's answer)
  };
  struct Segment {
    uint64_t segid = 0;
    // Invalidation state.
    uint64_t gen = 0;                                   // windows opened so far
    absl::flat_hash_map<uint64_t, Window> windows;      // open
    std::vector<RecentWindow> recent;                   // last kRecentWindows opened
    absl::flat_hash_map<uint32_t, IntervalSet> cached;  // by node
    absl::flat_hash_map<uint32_t, std::string> fenced;  // node -> why
    uint64_t vaddr = 0, size = 0;
    pid_t pid = 0;
    uint32_t uid = 0, gid = 0, mode = 0;
    std::string name;
    std::string state = "live";
    std::shared_ptr<ExporterMemory> memory;  // null once removed or exited
    absl::flat_hash_map<uint64_t, GrantRecord> grants;
    // Write-backs past Resolve's checks that have not returned yet:
    // token -> [start, end) (segment offsets). Empty but for the
    // microseconds a write-back runs.
    absl::flat_hash_map<uint64_t, std::pair<uint64_t, uint64_t>> writing;
  };
  // Leaves a write-back's entry in Segment::writing when it goes out of
  // scope (WriteBlocks: every return after Resolve).
  class WriteInFlight {
   public:
    WriteInFlight(SegmentRegistry* reg, uint64_t segid, uint64_t token)
        : reg_(reg), segid_(segid), token_(token) {}
    ~WriteInFlight() { reg_->WriteLanded(segid_, token_); }
    WriteInFlight(const WriteInFlight&) = delete;
    WriteInFlight& operator=(const WriteInFlight&) = delete;

   private:
    SegmentRegistry* const reg_;
    const uint64_t segid_, token_;
  };

  // One unit of a write-back written through a guarding notifier source
  // (SegmentObserver::GuardedWrite): its pieces in one call, under the
  // exporter's page lock of segment offset `page` when `locked` (a diff's
  // page: ExporterMemory::WriteDiff's rule, two diffs of a page never
  // interleave). A unit is written whole or refused whole.
  struct WriteUnit {
    bool locked = false;
    uint64_t page = 0;
    std::vector<SegmentObserver::WritePiece> pieces;
  };
  // The write-back protocol of WriteBlocks and WriteDiff: the checks
  // (Resolve, entering it in flight), BeforeWrite; then `unguarded`
  // (ExporterMemory) at the address Resolve gave, or, where the source
  // guards writes (tether.ko), the registry's windows once more and
  // `units` through the source. A refusal (ESTALE: the exporter's memory
  // there changed since the guard) is checked again from the start: a
  // window still open is Retry(), a range the exporter unmapped ENXIO,
  // otherwise the units not yet written are tried again.
  absl::Status WriteBack(
      uint32_t peer_node, uint64_t segid, uint64_t grant, uint64_t offset, uint64_t len,
      const std::vector<WriteUnit>& units,
      const std::function<absl::Status(const ExporterMemory&, uint64_t)>& unguarded);
  // Checks a data request and returns the memory to use and the address.
  // A write (`writing` not null) that passes is entered in the segment's
  // write-backs in flight, under the same lock as the checks; *writing is
  // its token for WriteLanded.
  absl::StatusOr<std::shared_ptr<ExporterMemory>> Resolve(uint32_t peer_node, uint64_t segid,
                                                          uint64_t grant, uint64_t offset,
                                                          uint64_t len, bool write, uint64_t* addr,
                                                          uint64_t* gen,
                                                          uint64_t* writing = nullptr);
  // The write-back `token` returned (landed, or failed): wakes Begins
  // waiting in AwaitWriteBacks.
  void WriteLanded(uint64_t segid, uint64_t token);
  bool WritingOverlaps(const Segment& seg, uint64_t start, uint64_t end) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True if a window overlapping [start, end) opened after `gen`.
  bool OpenedSince(uint64_t segid, uint64_t gen, uint64_t start, uint64_t end);
  void WatchExits();
  void ExporterExited(uint64_t segid);
  void MaybeForget(Segment* seg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Segment `segid` is no longer live: drops it from node.state's table,
  // so that no later run lets it be registered again.
  void Unpersist(uint64_t segid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Before a change of node.state's table: once the grace ran out, the
  // earlier run's segments that did not come back are dropped with it.
  void DropEarlierIfLate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The checks Attach and ReclaimGrant share: the segment, live, not
  // fenced for the node, its permit.
  absl::StatusOr<Segment*> CheckGrant(uint64_t segid, const Credentials& caller, bool write,
                                      uint32_t mapper_node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> Insert(std::unique_ptr<Segment> seg,
                                  std::unique_ptr<ExporterMemory> memory, const char* how)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint32_t node_id_;
  std::unique_ptr<NodeState> own_state_;  // the unit tests' (ephemeral)
  NodeState* const state_;                // guarded by mu_ (every call)
  const absl::Time reregister_until_;

  mutable absl::Mutex mu_;
  // Grant ids start at a random multiple of 2^32 each run, so that the
  // grants mappers reclaim after a restart never collide with new ones.
  uint64_t next_grant_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t grant_base_ = 0;  // this run's (set at construction)
  uint64_t next_window_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_write_ ABSL_GUARDED_BY(mu_) = 1;
  absl::CondVar write_landed_;  // signalled by WriteLanded
  absl::flat_hash_map<uint64_t, std::unique_ptr<Segment>> segments_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> names_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> trusted_peers_ ABSL_GUARDED_BY(mu_);

  // Tells the observer (outside mu_) that the segment stopped being live.
  void Gone(uint64_t segid, const std::string& why);

  // Set by Start() before the watcher thread starts; read-only after.
  SegmentObserver* observer_ = nullptr;
  WakeableEpoll exits_;  // the exporters' pidfds, keyed by segid
  std::atomic<bool> stopping_{false};
  std::thread watcher_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_HOME_SEGMENT_REGISTRY_H_
