// KernelNotifierSource: the notifier source backed by tether.ko (used when
// /dev/tether exists; kernel/README.md describes the ABI and the module's
// side of the protocol).
//
// Set-up. The daemon opens its own control fd on /dev/tether (waiters belong
// to it, never to an exporter's fd, which forked children inherit). With
// each export, libtether opens a fresh /dev/tether fd, registers the
// segment's range of its own mm on it (REGISTER_RANGE) and sends that fd
// and the range id with the export. AddExporter() ATTACHes the fd to the
// control fd and checks the claim with RANGE_INFO (same exporter, range
// covers the segment). One fd per export: the module binds an exporter fd
// to one control fd, and closing it ends exactly that export. The exporter
// fds of one process share the module's one notifier on its mm, so one
// munmap over N of its segments reaches us as N BEGINs queued together
// (the exporter waits for all of their acks at once: one deadline).
//
// G3 - cheap when unshared. BeforeRead() runs before the home reads the exporter
// for a mapper: it MARKs the sub-range cached in the module, so from then on
// invalidations overlapping it are forwarded; all others never reach us.
// MARK returns the range's sequence; an odd one means an invalidation of
// the exporter's mm is in progress that started before the mark and was not
// forwarded, so BeforeRead() answers Retry() (the mapper refetches
// shortly) instead of letting the read run. READ_RETRY is not used: a
// forwarded invalidation opens a registry window before it is acked, and the
// registry already brackets every read with its window generation
// (SegmentRegistry::ReadBlocks answers Retry() when one opened during the
// read), so a read that raced a forwarded BEGIN is discarded there.
//
// One event thread reads the control fd (poll + read, O_NONBLOCK) and
// handles everything but blockable BEGINs, which it hands to a few workers:
// a window waiting for a frozen mapper holds up its own exporter's call
// only, not the events of other exporters or ranges (windows on disjoint
// ranges do not serialize).
//   BEGIN, BLOCKABLE  -> the event thread records it in in_flight_ (by event
//                        id) and queues it; (worker) coordinator->Begin() on
//                        the segment's offsets (fan-out, mapper acks or
//                        fencing), then ACK: the exporter's munmap / madvise /
//                        mremap / mprotect returns only now (G1). Its budget
//                        is the coordinator's deadline counted from when the
//                        event thread READ it, not from when a worker got to
//                        it: one munmap over many cached segments with a
//                        frozen mapper queues more BEGINs than there are
//                        workers, and the module stops waiting after
//                        ack_timeout_ms (which must stay above the
//                        deadline). A BEGIN whose budget ran out in the
//                        queue revokes every mapper of its segment instead of
//                        opening a window.
//                        An UNMAP's Begin also waits (bounded) for the
//                        home's write-backs in flight over the range; other
//                        types do not (invalidation_coordinator.h,
//                        "Write-backs in flight").
//   END               -> carries the event id of its BEGIN (begin_id; two
//                        identical concurrent invalidations differ only in
//                        it). Its window: UNMARK the range (the registry
//                        dropped every node's cached marks when the window
//                        opened, so nobody caches it any more) but for what
//                        a writable grant read or wrote (a writer may keep a
//                        dirty page past the window, and a later change of
//                        it must still open a window: Unmarkable), and then
//                        coordinator->End(), with the range reported gone for
//                        UNMAP events (mappers discard dirty data kept aside
//                        for it). UNMARK comes first: a read that starts after
//                        End() must find no stale mark to be removed under it.
//                        If its BEGIN is still in_flight_ (queued, or its
//                        worker inside Begin(): the module timed out), the END
//                        marks the record and the worker ends the window
//                        itself when Begin() returns. If its BEGIN was taken
//                        without a window (windowless_: non-blockable, LATE,
//                        budget gone, no segment), nothing more to do. If
//                        this daemon never saw its BEGIN, an event was lost:
//                        every mapper of the segment is revoked, never
//                        ignored.
//                        A worker whose range was released, forgotten or
//                        flushed by an OVERFLOW while Begin() ran ends its
//                        window at once: nothing else would (checked under
//                        mu_, as those take the pending windows).
//   BEGIN, not BLOCKABLE (G4), or LATE -> see below.
//   RELEASE           -> the range is gone for good (exit, exec, fd closed):
//                        coordinator->RevokeAll(), end any window still open on
//                        it, ACK (exit() waits for this ack, so it returns after
//                        revocations were sent). The exporter fd is closed
//                        later, by Forget() (see HandleRelease for why).
//   OVERFLOW          -> events were lost: every open window is ended (the
//                        MARK sequence still refuses reads while the kernel is
//                        inside an invalidation) and every segment gets a
//                        Begin/End over its whole range; then ACK (a
//                        BLOCKABLE OVERFLOW holds the invalidations whose
//                        events could not be allocated until this ack).
//
// Stop() answers every BEGIN still queued for the workers by revoking every
// mapper of its segment, then ACKs it: nobody opened a window for it, and
// the exporter goes on once acked.
//
// G4 - non-blockable BEGIN (no TETHER_EVF_BLOCKABLE: today only the OOM
// reaper tearing down a dying exporter). The module does not wait for it
// (classic start/end ops, start never fails; kernel/README.md "G4"), and
// neither do we: we do not open a window and wait for mapper acks, we call
// coordinator->RevokeAll() (which only sends revocations), ACK (harmless: no
// waiter), and ignore the matching END. Safe because remote copies are
// copies, not references to the exporter's pages; for a moment a mapper may
// still read what the dying process held. Its RELEASE revokes again.
// A LATE BEGIN (TETHER_EVF_LATE: the module gave up waiting before we read
// it, so the kernel already went on) is handled the same way. Both (and
// every other revocation instead of a window) are recorded in the
// registry as a window opened and closed at once (RecordChange; the range
// gone for an UNMAP) before the revocations go: a write-back that passed
// the registry's checks before the change is refused by its second look
// and checked again, never landed in what the change mapped there.
//
// G5 - the event thread never touches the exporter's memory and never waits
// for reads in flight: Begin() only opens a registry window and waits for
// mapper acks; the reads themselves run on transport threads.
//
// Direct attachments (DirectAttach, on local client threads): where the
// module announced TETHER_FEAT_DIRECT, DIRECT_ATTACH on the control fd
// makes a file that maps the exporter's pages themselves; the module keeps
// it coherent alone (it zaps it in invalidate_range_start), so nothing here
// tracks it, and closing the exporter fd (Forget: the segment is gone)
// makes it SIGBUS. The module serves only the exporter's anonymous memory:
// a range that is not all anonymous private memory when asked (a file or
// shared mapping, a hole) answers FailedPrecondition, and the caller serves
// a copy instead. mu_ is not held across the ioctl (it allocates; reclaim
// could wait for the event thread, which takes mu_).
//
// Write-backs (issue 14; BeforeWrite and GuardedWrite, on the threads that
// serve write-backs): where the module announced TETHER_FEAT_WRITE, the
// home writes a mapper's write-back through TETHER_IOC_WRITE instead of
// process_vm_writev. BeforeWrite, after the registry's checks, MARKs the
// range (always: the ioctl's sequence is the guard; one per write-back,
// none on the fault path) and returns the sequence; GuardedWrite passes it
// with the pieces. The module checks it under the exporter's mmap_lock and
// refuses the write (ESTALE, nothing written) if the range changed since:
// an mmap(MAP_FIXED) or mremap that held mmap_lock for writing across our
// ack cannot have a write that was waiting for it land in the new mapping
// (the registry then checks the request again: SegmentRegistry::WriteBack).
// A change the module made before the MARK is the registry's to know,
// once this daemon handled its BEGIN: BeforeWrite answers Retry() while
// events queued before its MARK are unread, being handled, or a BEGIN of
// the range waits for a worker (EventsSeen), so a write-back checked after
// a LATE BEGIN's change is refused once that BEGIN is recorded, never
// landed in what the change mapped there.
// Errors are ExporterMemory::Write's (EACCES not writable, ENXIO nothing
// mapped, ESRCH exited); ENOENT (the exporter fd was closed meanwhile)
// becomes ESTALE, so the registry finds out why. A module without the
// feature: BeforeRead's mark, unguarded (ExporterMemory writes).
//
// Exporters that sent a userfaultfd instead (no /dev/tether access in their
// mount namespace, old libtether) are handed to an embedded
// UffdNotifierSource, so a mixed node still watches everything it can.
#ifndef TETHER_DAEMON_NOTIFIER_KERNEL_NOTIFIER_SOURCE_H_
#define TETHER_DAEMON_NOTIFIER_KERNEL_NOTIFIER_SOURCE_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/interval_set.h"
#include "daemon/common/thread_role.h"
#include "daemon/common/work_queue.h"
#include "daemon/home/segment_registry.h"
#include "daemon/invalidation/invalidation_coordinator.h"
#include "daemon/notifier/notifier_source.h"
#include "daemon/notifier/uffd_notifier_source.h"

struct tether_event;  // kernel/include/uapi/linux/tether.h

namespace tether {

class KernelNotifierSource : public NotifierSource {
 public:
  static constexpr const char* kDevice = "/dev/tether";

  // True if `device` exists and is a character device (the module is loaded).
  static bool Available(const std::string& device = kDevice);

  // Opens the control fd on `device` (TETHER_IOC_CONTROL), checks the ABI
  // (version, event record size, TETHER_FEAT_SEQ). Start() starts the event
  // thread and the begin workers.
  static absl::StatusOr<std::unique_ptr<KernelNotifierSource>> Open(
      SegmentRegistry* registry, InvalidationCoordinator* coordinator,
      const std::string& device = kDevice);

  ~KernelNotifierSource() override;

  absl::Status AddExporter(uint64_t segid, pid_t pid, int pidfd, int fd,
                           uint64_t tether_range_id) override;
  absl::Status Start() override;
  absl::Status BeforeRead(uint64_t segid, uint64_t start, uint64_t end) override;
  // Revokes every mapper of the segment (the coordinator's RevokeAll), then
  // Forget()s it.
  void SegmentGone(uint64_t segid, const std::string& why) override;
  void Stop() override;
  // Wakes the event thread (ping_fd_) and waits until it came round its
  // loop: a thread held in an event's handling, or one that stopped on an
  // error of the control fd, fails the watchdog, which is what it is for.
  absl::Status Ping(absl::Duration timeout) override;
  absl::StatusOr<int> DirectAttach(uint64_t segid, uint64_t offset, uint64_t len,
                                   bool writable) override;
  // Write-backs through TETHER_IOC_WRITE where the module has it
  // (TETHER_FEAT_WRITE); see "Write-backs" above.
  absl::StatusOr<WriteGuard> BeforeWrite(uint64_t segid, uint64_t start, uint64_t end) override;
  absl::Status GuardedWrite(uint64_t segid, const WriteGuard& guard,
                            absl::Span<const WritePiece> pieces) override;

 private:
  struct Export;
  // Retry() unless every event the module queued before now was handled
  // (BeforeWrite, after its MARK): see "Write-backs" above.
  absl::Status EventsSeen(const Export& ex);
  // The segment is gone (removed, or its exporter exited): closes its
  // exporter fd (the module unregisters the range) and ends windows still
  // open on it.
  void Forget(uint64_t segid);
  // One export: one exporter fd with (at least) the segment's range on it.
  struct Export {
    uint64_t segid = 0;
    uint64_t range_id = 0;
    uint64_t exporter_id = 0;
    int fd = -1;
    pid_t pid = 0;
    uint64_t size = 0;   // segment size
    uint64_t delta = 0;  // segment start - range start (range offset = segment offset + delta)
    std::atomic<bool> released{false};  // RELEASE seen: the address space is gone
    // What this daemon has marked cached in the module (range offsets), so
    // that a read of a marked range costs no ioctl. Never held across an
    // ioctl (MARK allocates; reclaim of the exporter's pages would wait for
    // our event thread). Instead every forgetting bumps `unmarks` before and
    // after its UNMARK, and BeforeRead() caches a MARK only if no forgetting
    // overlapped it. Forgotten: at END (UNMARK while the window still
    // refuses reads; what stays marked for writable copies stays here
    // too) and at a non-blockable BEGIN (no window covers it).
    absl::Mutex marks_mu;
    IntervalSet marked ABSL_GUARDED_BY(marks_mu);
    uint64_t unmarks ABSL_GUARDED_BY(marks_mu) = 0;
    void Forget(uint64_t start, uint64_t end) {
      absl::MutexLock lock(&marks_mu);
      marked.Remove(start, end);
      ++unmarks;
    }
  };
  struct Pending {          // a window opened for a forwarded blockable BEGIN
    uint64_t begin_id = 0;  // the BEGIN's event id (its END names it)
    uint64_t range_id = 0;
    uint64_t start = 0, end = 0;  // range offsets, as in the event
    uint32_t type = 0;
    uint64_t seg_start = 0, seg_end = 0;
    InvalidationWindow window;
  };

  KernelNotifierSource(SegmentRegistry* registry, InvalidationCoordinator* coordinator, int ctl_fd,
                       int stop_fd, int ping_fd, bool direct, bool write);
  // A segment's export and whether the user-space source watches it
  // instead, looked up together under mu_ (BeforeRead, BeforeWrite,
  // GuardedWrite, DirectAttach).
  struct Found {
    std::shared_ptr<Export> ex;
    bool fallback = false;
  };
  Found Lookup(uint64_t segid);
  // f.ex, or why its memory cannot be watched (released, no range).
  absl::StatusOr<std::shared_ptr<Export>> Watched(uint64_t segid, const Found& f);
  // MARKs [start, end) (segment offsets) cached in the module, unless
  // already marked and not `always`; the sequence MARK returned (0 when
  // it was not asked), Retry() when odd.
  absl::StatusOr<uint64_t> Mark(Export& ex, uint64_t segid, uint64_t start, uint64_t end,
                                bool always);
  // The event thread: reads the control fd; HandleEvent, HandleEnd,
  // HandleRelease and HandleOverflow run only there (asserted). Blockable
  // BEGINs go to the workers (HandleBegin, BeginWorker).
  void Run();
  void HandleEvent(const tether_event& ev);
  // What HandleBegin needs of a BEGIN record (queued for the workers).
  struct BeginEvent {
    uint64_t event_id = 0, range_id = 0, start = 0, end = 0;
    uint32_t type = 0, flags = 0;
    absl::Time read_at;  // when the event thread read it: its budget starts here
  };
  void HandleBegin(const BeginEvent& ev, uint64_t overflows);
  void BeginWorker();
  void HandleEnd(const tether_event& ev);
  void HandleRelease(const tether_event& ev);
  void HandleOverflow(const tether_event& ev);
  // A BEGIN that gets no window: no longer in flight; unless its END came
  // already, remember it so that the END is expected.
  void Windowless(uint64_t event_id, uint64_t range_id);
  // Revokes every mapper of `ex`'s segment and forgets the cached marks of
  // [start, end) (range offsets): no window covers the range, so reads must
  // ask the module again. The registry records the change
  // (SegmentRegistry::RecordChange; gone if `type` is an UNMAP).
  void RevokeRange(Export& ex, uint64_t start, uint64_t end, uint32_t type, const std::string& why);
  // The parts of [start, end) (range offsets, page aligned) a window's end
  // may unmark in the module: all but what a writable grant may hold dirty
  // (SegmentRegistry::WritableCopies). `ex` null: all of it.
  std::vector<std::pair<uint64_t, uint64_t>> Unmarkable(const Export* ex, uint64_t start,
                                                        uint64_t end);
  // A blockable BEGIN nobody will handle (stopping): revoke, then ACK.
  void RevokeUnhandled(const BeginEvent& ev);
  void Ack(uint64_t event_id);
  // Ends `p`'s window; `gone`: report its range as unmapped.
  void EndWindow(const Pending& p, bool gone);
  // Removes and returns the pending windows of `range_id` (all if 0).
  std::vector<Pending> TakePending(uint64_t range_id);
  std::shared_ptr<Export> FindRange(uint64_t range_id);

  SegmentRegistry* const registry_;
  InvalidationCoordinator* const coordinator_;
  const int ctl_fd_;
  const int stop_fd_;
  const int ping_fd_;            // Ping() wakes the event thread through it
  const bool direct_;            // the module has DIRECT_ATTACH (TETHER_FEAT_DIRECT)
  const bool write_;             // the module has WRITE (TETHER_FEAT_WRITE)
  UffdNotifierSource fallback_;  // exporters that sent a userfaultfd
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Export>> by_segid_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<Export>> by_range_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> fallback_segids_ ABSL_GUARDED_BY(mu_);
  std::vector<Pending> pending_ ABSL_GUARDED_BY(mu_);
  // Blockable BEGINs read but without a window yet (queued, or a worker in
  // Begin()), by event id; `ended`: their END was read meanwhile.
  struct InFlight {
    uint64_t range_id = 0;
    bool ended = false;
  };
  absl::flat_hash_map<uint64_t, InFlight> in_flight_ ABSL_GUARDED_BY(mu_);
  // BEGINs taken without a window whose END has not come yet: event id ->
  // range id (entries of a forgotten or released range are dropped).
  absl::flat_hash_map<uint64_t, uint64_t> windowless_ ABSL_GUARDED_BY(mu_);
  uint64_t overflows_ ABSL_GUARDED_BY(mu_) = 0;  // OVERFLOWs handled
  // Blockable BEGINs for the workers, with overflows_ when read.
  WorkQueue<std::pair<BeginEvent, uint64_t>> begins_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stopping_{false};
  // The event thread read (or is about to read) events it has not handled
  // yet (EventsSeen).
  std::atomic<bool> reading_{false};
  ThreadRole event_thread_;
  std::thread thread_;
  // The event thread's turns of its loop (Ping waits for one), and why it
  // ended if it did so on its own (an error of the control fd).
  absl::Mutex turns_mu_;
  uint64_t turns_ ABSL_GUARDED_BY(turns_mu_) = 0;
  std::string ended_ ABSL_GUARDED_BY(turns_mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_NOTIFIER_KERNEL_NOTIFIER_SOURCE_H_
