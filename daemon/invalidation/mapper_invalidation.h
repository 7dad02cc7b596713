// MapperInvalidation: this node's side of the invalidation protocol. For
// every local attachment of the segment that overlaps the range: BEGIN
// blocks faults and drops copies (FaultService::BeginWindow) before the
// ack; END writes kept-aside dirty pages back and reopens the range;
// REVOKE makes the whole attachment raise SIGBUS.
#ifndef TETHER_DAEMON_INVALIDATION_MAPPER_INVALIDATION_H_
#define TETHER_DAEMON_INVALIDATION_MAPPER_INVALIDATION_H_

#include <functional>
#include <memory>
#include <vector>

#include "daemon/invalidation/notice.h"
#include "daemon/mapper/attachment.h"
#include "daemon/mapper/fault_service.h"

namespace tether {

class MapperInvalidation : public InvalidationTarget {
 public:
  using AttachmentsOf =
      std::function<std::vector<std::shared_ptr<Attachment>>(uint64_t segid)>;
  MapperInvalidation(FaultService* faults, AttachmentsOf attachments_of)
      : faults_(faults), attachments_of_(std::move(attachments_of)) {}

  absl::Status Handle(const InvalidationNotice& notice) override;

 private:
  FaultService* const faults_;
  AttachmentsOf attachments_of_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_INVALIDATION_MAPPER_INVALIDATION_H_
