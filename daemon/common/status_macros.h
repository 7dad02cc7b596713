// Status helpers. Abseil 20220623 ships no status macros, so these are ours.
#ifndef TETHER_DAEMON_COMMON_STATUS_MACROS_H_
#define TETHER_DAEMON_COMMON_STATUS_MACROS_H_

#include <cerrno>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define TETHER_CONCAT_INNER_(a, b) a##b
#define TETHER_CONCAT_(a, b) TETHER_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status _st = (expr);                   \
    if (!_st.ok()) return _st;                     \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr)                                  \
  auto TETHER_CONCAT_(_sor_, __LINE__) = (expr);                     \
  if (!TETHER_CONCAT_(_sor_, __LINE__).ok())                         \
    return TETHER_CONCAT_(_sor_, __LINE__).status();                 \
  lhs = std::move(TETHER_CONCAT_(_sor_, __LINE__)).value()

namespace tether {

// Builds a Status from an errno value, keeping the errno in a payload so
// that it can be handed back to C callers unchanged (see ToErrno()).
absl::Status ErrnoStatus(int err, absl::string_view what);

// Maps a status back to the errno a C caller should see.
int ToErrno(const absl::Status& status);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_STATUS_MACROS_H_
