// tether's errors: absl::Status everywhere in the daemon, with two things
// absl::Status alone does not say.
//
//  - The errno a C caller will see. libtether returns -1/errno, and the
//    errno must be the one the failing layer meant, on whichever node it
//    failed: a remote home's EPERM must reach the caller as EPERM, not as
//    the EACCES that kPermissionDenied would map back to. ErrnoStatus()
//    keeps the errno in a payload; every hop between nodes (the data wire,
//    gRPC) carries it (ToWireStatus/FromWireStatus here; peer/grpc_status.h)
//    and rebuilds it with WithErrno(), so ToErrno() is the same at both ends.
//
//  - "Retry": not an error but an outcome of the invalidation protocol. A
//    home answers a read that overlaps an open invalidation window, or one
//    that opened while it ran, with Retry(); the mapper waits a moment and
//    fetches again (docs/architecture.md, "The invalidation contract", G5).
//    It is its own kind, tested with IsRetry(), so that no real EAGAIN from
//    a system call is mistaken for it. On the data wire it travels as the
//    status kWireRetry; a Retry that reaches a C caller reads as EAGAIN.
//
// Thread safety: free functions on values; no state.
#ifndef TETHER_DAEMON_COMMON_ERRORS_H_
#define TETHER_DAEMON_COMMON_ERRORS_H_

#include <cerrno>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tether {

// "what: strerror(err)", with `err` kept for ToErrno().
absl::Status ErrnoStatus(int err, absl::string_view what);
// A status for `err` whose message is `message` as is (a peer's message,
// which already says what went wrong).
absl::Status WithErrno(int err, absl::string_view message);
// The errno a C caller should see: the kept one, else one for the code.
int ToErrno(const absl::Status& status);
// The canonical code for an errno (what ErrnoStatus uses).
absl::StatusCode CodeForErrno(int err);

// The retry outcome (see above). `why` says which window.
absl::Status Retry(absl::string_view why);
bool IsRetry(const absl::Status& status);

// The status field of data-wire answers (tcp frames, rdma answers):
// 0 for OK, kWireRetry for Retry(), else a positive errno.
inline constexpr uint32_t kWireRetry = 4095;  // MAX_ERRNO: no system call returns it
uint32_t ToWireStatus(const absl::Status& status);
// Rebuilds what ToWireStatus encoded; `context` says which request.
absl::Status FromWireStatus(uint32_t status, absl::string_view context);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_ERRORS_H_
