// Segment names (tether_publish / tether_lookup): what a name may contain
// and who may publish it.
//
// A name is 1..255 bytes of valid UTF-8 with no control characters (C0,
// DEL, C1) and no bidirectional-override or line/paragraph separator code
// points: names are printed by tetherctl and in logs, and must not be able
// to move a terminal's cursor, change its colours or reorder what is shown.
//
// Ownership (against squatting, docs/security.md): a name of the form
// "OWNER/rest" belongs to OWNER, a user name or a decimal uid; only that
// uid (or root) may publish it, on any node, and everyone may look it up.
// A name without '/' is first come, first served on its node, as before.
// Once published, a name is held by its segment: another segment cannot
// take it, and it goes only with the segment or when its owner renames it.
//
// Thread contract: pure functions; NameOwner reads the user database
// (getpwnam_r, NSS) and may block on it. Any thread.
#ifndef TETHER_DAEMON_COMMON_SEGMENT_NAME_H_
#define TETHER_DAEMON_COMMON_SEGMENT_NAME_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tether {

constexpr size_t kMaxSegmentNameLength = 255;

// OK, or EINVAL saying what is wrong with the name (its bytes escaped).
absl::Status ValidateSegmentName(absl::string_view name);

// The uid a name belongs to ("OWNER/..."), nullopt for an unowned name;
// EINVAL if OWNER is neither a decimal uid nor a known user.
absl::StatusOr<std::optional<uint32_t>> NameOwner(absl::string_view name);

// `s` with every byte that is not printable ASCII or part of a printable
// UTF-8 character (as ValidateSegmentName decides) written as \xNN, and
// '\' as "\\": safe to print anywhere.
std::string EscapeName(absl::string_view s);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_SEGMENT_NAME_H_
