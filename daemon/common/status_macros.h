// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Abseil 20220623 ships no status
// macros, so these are ours. The errors themselves (errno kept for C
// callers, the retry outcome) are in errors.h.
#ifndef TETHER_DAEMON_COMMON_STATUS_MACROS_H_
#define TETHER_DAEMON_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TETHER_CONCAT_INNER_(a, b) a##b
#define TETHER_CONCAT_(a, b) TETHER_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)    \
  do {                           \
    ::absl::Status _st = (expr); \
    if (!_st.ok()) return _st;   \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr)                                                           \
  auto TETHER_CONCAT_(_sor_, __LINE__) = (expr);                                              \
  if (!TETHER_CONCAT_(_sor_, __LINE__).ok()) return TETHER_CONCAT_(_sor_, __LINE__).status(); \
  lhs = std::move(TETHER_CONCAT_(_sor_, __LINE__)).value()

#endif  // TETHER_DAEMON_COMMON_STATUS_MACROS_H_
