// MapperInvalidation: this node's side of the invalidation protocol. For
// every local attachment of the segment that overlaps the range: BEGIN
// blocks faults and drops copies (FaultService::BeginWindow) before the
// ack; END writes kept-aside dirty pages back and reopens the range;
// REVOKE makes the whole attachment raise SIGBUS.
//
// An END with write-backs to do (a page was dirty: kept aside at its
// BEGIN) is not applied on the thread that delivers it but queued for this
// class's own thread, in arrival order; one without (the common case) ends
// at once on the delivering thread, since it waits for nothing
// (FaultService::EndWindowIfNothingToWriteBack). A queued END's write-backs wait for the home,
// and for this node's own mappers the home is this daemon, reached by a
// direct call on whichever thread ended the window — for tether.ko, the
// thread that reads the module's events: a write into the exporter that
// starts an invalidation of its own (a copy-on-write break) would wait
// there for an event only that thread reads (G5, docs/architecture.md;
// issue 14, defect 6). Nothing is lost by answering at once: faults in
// the range keep waiting, and a sync keeps waiting for the kept-aside
// pages, until the queued END has run; one thread, in order, so an older
// window's write-back of a page never lands after a newer one's. Stop()
// applies what is still queued.
//
// Thread contract: Handle() runs on whichever thread delivers the notice,
// concurrently for different windows: BEGIN on a notice connection's
// serving thread (the fast path, answered after Handle returns), gRPC's
// pool, or the home's own coordinator for this node's mappers (a
// tether.ko begin worker, a user-space source's thread, a local client
// thread bracketing its own export); END on a notice connection's serving
// thread, REVOKE on the notice receiver's thread, either on gRPC's pool
// or, for this node's mappers, whichever
// thread called the coordinator (tether.ko's event thread, the exporter
// exit watcher, a notifier source's thread, a local client). BEGIN must
// not block on the network; END only queues (before Start and after Stop
// it is applied on the caller's thread). Start and Stop: the owner
// (Tetherd), once each; the END thread is the only one that pops the
// queue. No mutex here: faults_ and attachments_ are set at construction
// and are thread-safe themselves, and the queue is.
#ifndef TETHER_DAEMON_MAPPER_MAPPER_INVALIDATION_H_
#define TETHER_DAEMON_MAPPER_MAPPER_INVALIDATION_H_

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "daemon/common/work_queue.h"
#include "daemon/invalidation/notice.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/mapper/fault_service.h"

namespace tether {

class MapperInvalidation : public InvalidationTarget {
 public:
  MapperInvalidation(FaultService* faults, AttachmentTable* attachments)
      : faults_(faults), attachments_(attachments) {}
  ~MapperInvalidation() override;

  absl::Status Handle(const InvalidationNotice& notice) override;
  // Starts the thread that applies END notices.
  void Start();
  // Applies what is queued, then joins the thread. Before FaultService::Stop.
  void Stop();

 private:
  absl::Status Apply(const InvalidationNotice& notice);
  // An END whose every cache has nothing to write back, ended on the
  // calling thread; false if some cache has (left for Apply).
  bool EndWithoutWriteBack(const InvalidationNotice& notice);
  static uint64_t WindowKey(const InvalidationNotice& notice);
  // The segment's caches on this node, each once (held: an attachment may
  // go meanwhile).
  std::vector<std::shared_ptr<SegmentCache>> CachesOf(uint64_t segid);
  void RunEnds();

  FaultService* const faults_;
  AttachmentTable* const attachments_;
  std::atomic<bool> queueing_{false};  // between Start and Stop
  WorkQueue<InvalidationNotice> ends_;
  std::thread thread_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_MAPPER_INVALIDATION_H_
