// MapperInvalidation: this node's side of the invalidation protocol. For
// every local attachment of the segment that overlaps the range: BEGIN
// blocks faults and drops copies (FaultService::BeginWindow) before the
// ack; END writes kept-aside dirty pages back and reopens the range;
// REVOKE makes the whole attachment raise SIGBUS.
//
// Thread contract: Handle() runs on whichever thread delivers the notice,
// concurrently for different windows: BEGIN on a notice connection's
// serving thread (the fast path, answered after Handle returns), gRPC's
// pool, or the home's own coordinator for this node's mappers (a
// tether.ko begin worker, a user-space source's thread, a local client
// thread bracketing its own export); END and REVOKE on the notice
// receiver's thread, gRPC's pool or, for this node's mappers, whichever
// thread called the coordinator (tether.ko's event thread, the exporter
// exit watcher, a notifier source's thread, a local client). BEGIN must
// not block on the network; END may (its write-backs), so it is delivered
// on threads that may wait. No mutex here: faults_ and attachments_ are
// set at construction and are thread-safe themselves, and Handle holds no
// lock while it calls them.
#ifndef TETHER_DAEMON_MAPPER_MAPPER_INVALIDATION_H_
#define TETHER_DAEMON_MAPPER_MAPPER_INVALIDATION_H_

#include "daemon/invalidation/notice.h"
#include "daemon/mapper/attachment_table.h"
#include "daemon/mapper/fault_service.h"

namespace tether {

class MapperInvalidation : public InvalidationTarget {
 public:
  MapperInvalidation(FaultService* faults, AttachmentTable* attachments)
      : faults_(faults), attachments_(attachments) {}

  absl::Status Handle(const InvalidationNotice& notice) override;

 private:
  FaultService* const faults_;
  AttachmentTable* const attachments_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_MAPPER_INVALIDATION_H_
