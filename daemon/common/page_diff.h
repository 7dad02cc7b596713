// Page diffs: what a write-back carries instead of whole pages, so that
// writers of different bytes of one page (several mapper nodes, or a
// mapper and the exporter itself) do not lose each other's stores
// (issue 16; TreadMarks' and Munin's twins and diffs).
//
// A mapper keeps a twin of each page it dirties (the page as fetched, or
// as last written back; mapper/twin_store.h). At write-back it encodes,
// page by page, only the bytes that differ from the twin; the home applies
// them to the exporter's memory and leaves every other byte of the page as
// it is. Bytes written by two writers between their syncs are
// last-writer-wins (whichever diff the home applies last).
//
// Encoding: a sequence of entries, one per page that changed, in
// ascending page order; no header, so that a diff may be cut at any entry
// boundary into smaller diffs of the same base offset (the rdma requester
// cuts at its slot size, SplitDiff). Little-endian. An entry:
//
//   off size field
//    0   4   page      page index from the request's offset (< kMaxDiffPages)
//    4   1   kind      DiffKind
//    5   1   reserved  0
//    6   2   count     kRuns: number of runs (>= 1); otherwise 0
//    8   ...           kRuns:  count x { u16 offset, u16 length (>= 1), bytes }
//                               (offsets ascending, runs not overlapping,
//                               each inside the page)
//                      kMask:  kPageSize / 8 bytes, bit i = byte i changed
//                               (at least one), then the changed bytes in
//                               order
//                      kWhole: kPageSize bytes
//
// The encoder picks per page the smallest encoding that writes only the
// changed bytes: runs for a few runs, the mask for scattered bytes, the
// whole page only when every byte changed (sending unchanged bytes would
// write the twin's old values over another writer's newer ones: the lost
// update this exists to prevent). So a diff is never more than
// kDiffEntryHeader + kPageSize / 8 bytes per page larger than the page
// (about 13%), and a page whose bytes were stored back unchanged sends
// nothing.
//
// DecodeDiff validates everything a peer could get wrong (fuzzed:
// tests/fuzz/page_diff_fuzz.cc); a malformed diff is refused whole, before
// anything of it is written.
//
// Thread contract: none needed; functions of their arguments only, callable
// from any thread.
#ifndef TETHER_DAEMON_COMMON_PAGE_DIFF_H_
#define TETHER_DAEMON_COMMON_PAGE_DIFF_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/common/page.h"

namespace tether {

enum class DiffKind : uint8_t {
  kRuns = 1,
  kMask = 2,
  kWhole = 3,
};

inline constexpr size_t kDiffEntryHeader = 8;
inline constexpr size_t kDiffRunHeader = 4;
inline constexpr size_t kDiffMaskBytes = kPageSize / 8;
// The largest entry: a mask with all but one byte changed.
inline constexpr size_t kMaxDiffEntry = kDiffEntryHeader + kDiffMaskBytes + kPageSize - 1;
// Pages one diff may span (from its offset): as many as a 4 MiB write.
inline constexpr uint32_t kMaxDiffPages = 1024;

// Appends the entry for page `index` (< kMaxDiffPages): the bytes of `page`
// that differ from `twin` (both kPageSize bytes). Returns the bytes
// appended: 0 if nothing differs.
size_t AppendPageDiff(uint32_t index, const uint8_t* twin, const uint8_t* page,
                      std::vector<uint8_t>* out);
// Appends page `index` whole (no twin: every byte counts as changed).
void AppendWholePage(uint32_t index, const uint8_t* page, std::vector<uint8_t>* out);

// One run of changed bytes of a decoded page: `offset` in the page,
// `data` (non-empty) points into the decoded payload.
struct DiffRun {
  uint32_t offset = 0;
  absl::Span<const uint8_t> data;
};
struct DiffPage {
  uint32_t index = 0;         // from the diff's offset, in pages
  std::vector<DiffRun> runs;  // ascending, disjoint, non-empty
};

// Decodes and checks a diff (at least one entry). The runs point into
// `payload`, which must outlive them. An error (kInvalidArgument) says
// what is wrong.
absl::StatusOr<std::vector<DiffPage>> DecodeDiff(absl::Span<const uint8_t> payload);

// Pages a decoded diff spans from its offset: last index + 1.
inline uint64_t DiffSpanPages(const std::vector<DiffPage>& pages) {
  return pages.empty() ? 0 : uint64_t{pages.back().index} + 1;
}

// Applies decoded runs to `base` (DiffSpanPages() pages at least): tests
// and the in-memory homes of unit tests.
void ApplyDiff(const std::vector<DiffPage>& pages, absl::Span<uint8_t> base);

// Cuts a diff this node encoded into pieces of at most `max_bytes` (at
// least kMaxDiffEntry) at entry boundaries: [offset, length) in `payload`.
// Each piece is a diff of the same base offset.
std::vector<std::pair<size_t, size_t>> SplitDiff(absl::Span<const uint8_t> payload,
                                                 size_t max_bytes);

}  // namespace tether

#endif  // TETHER_DAEMON_COMMON_PAGE_DIFF_H_
