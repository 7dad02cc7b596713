#include "daemon/common/node_state.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "daemon/common/errors.h"
#include "daemon/common/segid.h"

namespace tether {
namespace {

constexpr uint64_t kLocalLimit = uint64_t{1} << 32;  // locals are 1..2^32-1

absl::Status WriteAll(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "write");
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// A file larger than this is not one tetherd wrote (kMaxSegments lines of
// at most 50 bytes, and the header).
constexpr size_t kMaxFileBytes = 64u << 20;

bool ParseNumber(const std::string& text, int base, uint64_t* out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out, base);
  return ec == std::errc() && end == text.data() + text.size();
}

// Parses the file's text; a message saying what is wrong otherwise.
// Version 1 has no segment table.
absl::Status Parse(const std::string& text, uint32_t* node, uint32_t* epoch, uint64_t* reserved,
                   std::map<uint32_t, NodeState::SegmentOwner>* segments) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  const bool v1 = !lines.empty() && lines[0] == "tether-state 1";
  if (lines.size() < 4 || (!v1 && lines[0] != "tether-state 2") || (v1 && lines.size() != 4))
    return absl::InvalidArgumentError("not a tether state file (version 2, or 1 of 4 lines)");
  if (lines.size() - 4 > NodeState::kMaxSegments)
    return absl::InvalidArgumentError("more segment lines than kMaxSegments");
  auto field = [&](int i, const char* key, uint64_t* out) -> absl::Status {
    std::vector<std::string> kv = absl::StrSplit(lines[i], ' ');
    bool ok = kv.size() == 2 && kv[0] == key;
    if (ok) {
      if (kv[1].rfind("0x", 0) == 0)
        ok = absl::SimpleHexAtoi(kv[1].substr(2), out);
      else
        ok = absl::SimpleAtoi(kv[1], out);
    }
    if (!ok)
      return absl::InvalidArgumentError(absl::StrFormat("line %d is not \"%s N\"", i + 1, key));
    return absl::OkStatus();
  };
  uint64_t n = 0, e = 0;
  if (absl::Status st = field(1, "node", &n); !st.ok()) return st;
  if (absl::Status st = field(2, "epoch", &e); !st.ok()) return st;
  if (absl::Status st = field(3, "reserved", reserved); !st.ok()) return st;
  if (n == 0 || n > kMaxNodeId) return absl::InvalidArgumentError("node id out of range");
  if (e == 0 || e > 0xffff) return absl::InvalidArgumentError("epoch out of range (1..0xffff)");
  if (*reserved == 0 || *reserved > kLocalLimit)
    return absl::InvalidArgumentError("reservation out of range");
  for (size_t i = 4; i < lines.size(); ++i) {
    // "segment LOCAL UID GID MODE" (mode in octal): a segment made below
    // the reservation, recorded once.
    std::vector<std::string> f = absl::StrSplit(lines[i], ' ');
    uint64_t local = 0, uid = 0, gid = 0, mode = 0;
    if (f.size() != 5 || f[0] != "segment" || !ParseNumber(f[1], 10, &local) ||
        !ParseNumber(f[2], 10, &uid) || !ParseNumber(f[3], 10, &gid) ||
        !ParseNumber(f[4], 8, &mode) || local == 0 || local >= *reserved || uid > UINT32_MAX ||
        gid > UINT32_MAX || mode > 0777 ||
        !segments
             ->emplace(
                 static_cast<uint32_t>(local),
                 NodeState::SegmentOwner{static_cast<uint32_t>(uid), static_cast<uint32_t>(gid),
                                         static_cast<uint32_t>(mode)})
             .second)
      return absl::InvalidArgumentError(absl::StrFormat(
          "line %d is not \"segment LOCAL UID GID MODE\" of a segment below the reservation, "
          "listed once",
          i + 1));
  }
  *node = static_cast<uint32_t>(n);
  *epoch = static_cast<uint32_t>(e);
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<NodeState> NodeState::Ephemeral(uint32_t node_id, uint32_t epoch) {
  std::unique_ptr<NodeState> s(new NodeState());
  s->node_id_ = node_id;
  s->epoch_ = epoch;
  s->fresh_ = true;
  s->reserved_ = kLocalLimit;
  return s;
}

absl::StatusOr<std::unique_ptr<NodeState>> NodeState::Open(const std::string& dir,
                                                           uint32_t node_id) {
  if (dir.empty()) return ErrnoStatus(EINVAL, "no state directory (--state_dir)");
  std::unique_ptr<NodeState> s(new NodeState());
  s->dir_ = dir;
  s->path_ = dir + "/" + kFileName;
  s->node_id_ = node_id;
  FILE* f = fopen(s->path_.c_str(), "re");
  if (f == nullptr && errno != ENOENT)
    return ErrnoStatus(errno, absl::StrCat("cannot read the state file ", s->path_));
  if (f == nullptr) {
    // A fresh start: a new epoch, so no segid of an earlier run of this
    // node (whose state was lost) can name a new segment by accident.
    uint16_t e = 0;
    while (e == 0)
      if (getrandom(&e, sizeof(e), 0) != sizeof(e)) return ErrnoStatus(errno, "getrandom");
    s->epoch_ = e;
    s->fresh_ = true;
    s->next_ = 1;
  } else {
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0 && text.size() <= kMaxFileBytes)
      text.append(buf, n);
    bool err = ferror(f);
    fclose(f);
    if (err) return ErrnoStatus(EIO, absl::StrCat("cannot read the state file ", s->path_));
    uint32_t file_node = 0;
    uint64_t reserved = 0;
    absl::Status st = text.size() > kMaxFileBytes
                          ? absl::InvalidArgumentError("larger than 64 MiB")
                          : Parse(text, &file_node, &s->epoch_, &reserved, &s->earlier_);
    if (!st.ok())
      return ErrnoStatus(
          EINVAL, absl::StrFormat("the state file %s is corrupt (%s); remove it to start "
                                  "fresh (segments exported before this restart are then lost)",
                                  s->path_, st.message()));
    if (file_node != node_id)
      return ErrnoStatus(
          EINVAL, absl::StrFormat("the state file %s belongs to node %d, this is node %d: give "
                                  "each node its own --state_dir (or remove the file)",
                                  s->path_, file_node, node_id));
    if (reserved >= kLocalLimit) return ErrnoStatus(ENOSPC, "segment ids of this epoch exhausted");
    s->next_ = reserved;  // ids below may be held by segments of earlier runs
  }
  s->first_local_ = static_cast<uint32_t>(s->next_);
  s->reserved_ = s->next_;
  uint64_t want = std::min(s->next_ + kReserveBlock, kLocalLimit);
  if (absl::Status st = s->Write(want); !st.ok()) return st;
  return s;
}

absl::Status NodeState::Write(uint64_t reserved) {
  if (path_.empty()) {
    reserved_ = reserved;
    return absl::OkStatus();
  }
  std::string tmp = path_ + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot write the state file ", tmp));
  std::string text = absl::StrFormat("tether-state 2\nnode %d\nepoch %#x\nreserved %d\n", node_id_,
                                     epoch_, reserved);
  for (const auto* table : {&earlier_, &live_})
    for (const auto& [local, o] : *table)
      absl::StrAppendFormat(&text, "segment %d %d %d %#o\n", local, o.uid, o.gid, o.mode);
  absl::Status st = WriteAll(fd, text);
  if (st.ok() && fsync(fd) != 0) st = ErrnoStatus(errno, "fsync");
  close(fd);
  if (st.ok() && rename(tmp.c_str(), path_.c_str()) != 0) st = ErrnoStatus(errno, "rename");
  if (st.ok()) {
    // The rename itself must survive a crash too.
    int d = open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d >= 0) {
      fsync(d);
      close(d);
    }
  }
  if (!st.ok()) {
    unlink(tmp.c_str());
    return ErrnoStatus(ToErrno(st),
                       absl::StrCat("cannot write the state file ", path_, ": ", st.message()));
  }
  reserved_ = reserved;
  return absl::OkStatus();
}

std::optional<NodeState::SegmentOwner> NodeState::Earlier(uint32_t local) const {
  auto it = earlier_.find(local);
  if (it == earlier_.end()) return std::nullopt;
  return it->second;
}

std::map<uint32_t, NodeState::SegmentOwner> NodeState::Segments() const {
  std::map<uint32_t, SegmentOwner> all = earlier_;
  all.insert(live_.begin(), live_.end());
  return all;
}

absl::Status NodeState::AddSegment(uint32_t local, const SegmentOwner& owner) {
  std::optional<SegmentOwner> was = Earlier(local);
  earlier_.erase(local);
  live_[local] = owner;
  absl::Status st = Write(reserved_);
  if (!st.ok()) {  // as before: the file still says so
    live_.erase(local);
    if (was) earlier_[local] = *was;
  }
  return st;
}

absl::Status NodeState::RemoveSegment(uint32_t local) {
  if (live_.erase(local) + earlier_.erase(local) == 0) return absl::OkStatus();
  return Write(reserved_);
}

absl::StatusOr<uint32_t> NodeState::NextLocal() {
  if (next_ >= kLocalLimit) return ErrnoStatus(ENOSPC, "segment ids exhausted");
  if (next_ >= reserved_) {
    absl::Status st = Write(std::min(next_ + kReserveBlock, kLocalLimit));
    if (!st.ok()) return st;
  }
  return static_cast<uint32_t>(next_++);
}

}  // namespace tether
