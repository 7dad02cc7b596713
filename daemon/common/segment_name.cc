#include "daemon/common/segment_name.h"

#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/common/errors.h"

namespace tether {
namespace {

// The length of the printable character at s[i] (1..4 bytes), or 0 if the
// bytes there are not one: a control character, a malformed, overlong or
// surrogate UTF-8 sequence, a code point past U+10FFFF, or one that
// reorders or breaks lines on a terminal.
size_t PrintableAt(absl::string_view s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return c >= 0x20 && c != 0x7f ? 1 : 0;
  size_t len;
  uint32_t cp;
  if ((c & 0xe0) == 0xc0) {
    len = 2;
    cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3;
    cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;  // a continuation byte, or 0xf8..0xff
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  if (cp < 0xa0) return 0;                     // C1 controls (0x9b is CSI)
  if (cp == 0x2028 || cp == 0x2029) return 0;  // line, paragraph separators
  if ((cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e ||
      cp == 0x200f || cp == 0x061c)
    return 0;  // bidirectional controls ("Trojan Source")
  return len;
}

}  // namespace

absl::Status ValidateSegmentName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxSegmentNameLength)
    return ErrnoStatus(EINVAL, absl::StrCat("segment names are 1..", kMaxSegmentNameLength,
                                            " bytes (this one is ", name.size(), ")"));
  for (size_t i = 0; i < name.size();) {
    size_t n = PrintableAt(name, i);
    if (n == 0)
      return ErrnoStatus(EINVAL, absl::StrFormat("segment name '%s' has a control character or "
                                                 "invalid UTF-8 at byte %d: names must be "
                                                 "printable UTF-8",
                                                 EscapeName(name), i));
    i += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<uint32_t>> NameOwner(absl::string_view name) {
  size_t slash = name.find('/');
  if (slash == absl::string_view::npos) return std::optional<uint32_t>();
  std::string owner(name.substr(0, slash));
  uint32_t uid;
  if (!owner.empty() && absl::SimpleAtoi(owner, &uid)) return std::optional<uint32_t>(uid);
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(size > 0 ? static_cast<size_t>(size) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  int err;
  while ((err = getpwnam_r(owner.c_str(), &pw, buf.data(), buf.size(), &found)) == ERANGE &&
         buf.size() < (1u << 20))
    buf.resize(buf.size() * 2);
  if (found == nullptr)
    return ErrnoStatus(EINVAL,
                       absl::StrFormat("segment name '%s': names with a '/' belong to the user "
                                       "before it, and '%s' is no user here%s",
                                       EscapeName(name), EscapeName(owner),
                                       err != 0 ? absl::StrCat(" (", strerror(err), ")") : ""));
  return std::optional<uint32_t>(pw.pw_uid);
}

std::string EscapeName(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    size_t n = PrintableAt(s, i);
    if (n == 0) {
      absl::StrAppendFormat(&out, "\\x%02x", static_cast<unsigned char>(s[i]));
      ++i;
    } else if (s[i] == '\\') {
      out += "\\\\";
      ++i;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  return out;
}

}  // namespace tether
