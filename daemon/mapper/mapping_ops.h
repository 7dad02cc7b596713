// The system calls FaultService's files share on an attachment's pages:
// through the client's userfaultfd, waking the threads that fault on a
// range and write-protecting (or unprotecting) it; in the memfd behind
// the mapping, punching pages out. Internal to daemon/mapper/.
//
// Thread contract: each is one system call on fds the attachment owns;
// callable from any thread, with or without the attachment's lock.
#ifndef TETHER_DAEMON_MAPPER_MAPPING_OPS_H_
#define TETHER_DAEMON_MAPPER_MAPPING_OPS_H_

#include <cstdint>

namespace tether {
namespace mapping_ops {

// Wakes the threads faulting on [start, start+len) of the client's mapping.
void Wake(int uffd, uint64_t start, uint64_t len);
// Protects (wp=true) or unprotects (and wakes) a range of the client's mapping.
int WriteProtect(int uffd, uint64_t start, uint64_t len, bool wp);
// Drops [off, off+len) of the memfd: the client's next access faults.
void PunchHole(int memfd, uint64_t off, uint64_t len);

}  // namespace mapping_ops
}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_MAPPING_OPS_H_
