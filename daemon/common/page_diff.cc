#include "daemon/common/page_diff.h"

#include <cstring>

#include "absl/numeric/bits.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tether {
namespace {

template <typename T>
void Put(std::vector<uint8_t>* out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
template <typename T>
T Get(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

void PutEntryHeader(std::vector<uint8_t>* out, uint32_t index, DiffKind kind, uint16_t count) {
  Put<uint32_t>(out, index);
  out->push_back(static_cast<uint8_t>(kind));
  out->push_back(0);
  Put<uint16_t>(out, count);
}

// Size of the entry at `p` (`left` bytes available), trusting an entry
// this node encoded; 0 if it does not fit.
size_t TrustedEntrySize(const uint8_t* p, size_t left) {
  if (left < kDiffEntryHeader) return 0;
  auto kind = static_cast<DiffKind>(p[4]);
  uint16_t count = Get<uint16_t>(p + 6);
  size_t n = kDiffEntryHeader;
  if (kind == DiffKind::kWhole) return n + kPageSize;
  if (kind == DiffKind::kMask) {
    if (left < n + kDiffMaskBytes) return 0;
    size_t changed = 0;
    for (size_t i = 0; i < kDiffMaskBytes; ++i) changed += absl::popcount(p[n + i]);
    return n + kDiffMaskBytes + changed;
  }
  for (uint16_t r = 0; r < count; ++r) {
    if (left < n + kDiffRunHeader) return 0;
    n += kDiffRunHeader + Get<uint16_t>(p + n + 2);
  }
  return n;
}

}  // namespace

size_t AppendPageDiff(uint32_t index, const uint8_t* twin, const uint8_t* page,
                      std::vector<uint8_t>* out) {
  // The changed runs: compare a word at a time, bytes only where a word
  // differs (a store to a few bytes leaves most words equal).
  struct Run {
    uint16_t offset, length;
  };
  Run runs[kPageSize / 2];  // at most every other byte starts a run
  size_t nruns = 0, changed = 0;
  int64_t open = -1;  // start of the run being extended
  for (size_t w = 0; w < kPageSize; w += 8) {
    uint64_t a, b;
    std::memcpy(&a, twin + w, 8);
    std::memcpy(&b, page + w, 8);
    if (a == b) {
      if (open >= 0) {
        runs[nruns++] = {static_cast<uint16_t>(open), static_cast<uint16_t>(w - open)};
        open = -1;
      }
      continue;
    }
    for (size_t i = w; i < w + 8; ++i) {
      if (twin[i] != page[i]) {
        ++changed;
        if (open < 0) open = static_cast<int64_t>(i);
      } else if (open >= 0) {
        runs[nruns++] = {static_cast<uint16_t>(open), static_cast<uint16_t>(i - open)};
        open = -1;
      }
    }
  }
  if (open >= 0)
    runs[nruns++] = {static_cast<uint16_t>(open), static_cast<uint16_t>(kPageSize - open)};
  if (changed == 0) return 0;
  const size_t before = out->size();
  if (changed == kPageSize) {
    AppendWholePage(index, page, out);
  } else if (kDiffRunHeader * nruns <= kDiffMaskBytes) {
    PutEntryHeader(out, index, DiffKind::kRuns, static_cast<uint16_t>(nruns));
    for (size_t r = 0; r < nruns; ++r) {
      Put<uint16_t>(out, runs[r].offset);
      Put<uint16_t>(out, runs[r].length);
      out->insert(out->end(), page + runs[r].offset, page + runs[r].offset + runs[r].length);
    }
  } else {
    PutEntryHeader(out, index, DiffKind::kMask, 0);
    size_t mask_at = out->size();
    out->resize(mask_at + kDiffMaskBytes, 0);
    for (size_t r = 0; r < nruns; ++r) {
      for (size_t i = runs[r].offset; i < size_t{runs[r].offset} + runs[r].length; ++i) {
        (*out)[mask_at + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        out->push_back(page[i]);
      }
    }
  }
  return out->size() - before;
}

void AppendWholePage(uint32_t index, const uint8_t* page, std::vector<uint8_t>* out) {
  PutEntryHeader(out, index, DiffKind::kWhole, 0);
  out->insert(out->end(), page, page + kPageSize);
}

absl::StatusOr<std::vector<DiffPage>> DecodeDiff(absl::Span<const uint8_t> payload) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("malformed page diff: ", what));
  };
  if (payload.empty()) return bad("empty");
  std::vector<DiffPage> pages;
  const uint8_t* p = payload.data();
  size_t left = payload.size();
  while (left > 0) {
    if (left < kDiffEntryHeader)
      return bad(absl::StrFormat("entry header cut short (%d bytes)", left));
    DiffPage page;
    page.index = Get<uint32_t>(p);
    uint8_t kind = p[4];
    uint16_t count = Get<uint16_t>(p + 6);
    if (page.index >= kMaxDiffPages)
      return bad(absl::StrFormat("page %d past the %d a diff may span", page.index, kMaxDiffPages));
    if (!pages.empty() && page.index <= pages.back().index)
      return bad(absl::StrFormat("page %d after page %d", page.index, pages.back().index));
    if (p[5] != 0) return bad("reserved byte set");
    p += kDiffEntryHeader;
    left -= kDiffEntryHeader;
    switch (static_cast<DiffKind>(kind)) {
      case DiffKind::kWhole:
        if (count != 0) return bad("whole page with a run count");
        if (left < kPageSize) return bad("whole page cut short");
        page.runs.push_back({0, absl::MakeConstSpan(p, kPageSize)});
        p += kPageSize;
        left -= kPageSize;
        break;
      case DiffKind::kMask: {
        if (count != 0) return bad("mask with a run count");
        if (left < kDiffMaskBytes) return bad("mask cut short");
        const uint8_t* mask = p;
        p += kDiffMaskBytes;
        left -= kDiffMaskBytes;
        size_t changed = 0;
        for (size_t i = 0; i < kDiffMaskBytes; ++i) changed += absl::popcount(mask[i]);
        if (changed == 0) return bad("mask with no byte set");
        if (left < changed) return bad("mask's bytes cut short");
        int64_t open = -1;
        const uint8_t* data = p;
        for (size_t i = 0; i <= kPageSize; ++i) {
          bool set = i < kPageSize && (mask[i / 8] >> (i % 8)) & 1;
          if (set && open < 0) open = static_cast<int64_t>(i);
          if (!set && open >= 0) {
            size_t len = i - static_cast<size_t>(open);
            page.runs.push_back({static_cast<uint32_t>(open), absl::MakeConstSpan(data, len)});
            data += len;
            open = -1;
          }
        }
        p += changed;
        left -= changed;
        break;
      }
      case DiffKind::kRuns: {
        if (count == 0) return bad("no runs");
        uint32_t end = 0;
        for (uint16_t r = 0; r < count; ++r) {
          if (left < kDiffRunHeader) return bad("run header cut short");
          uint32_t off = Get<uint16_t>(p), len = Get<uint16_t>(p + 2);
          p += kDiffRunHeader;
          left -= kDiffRunHeader;
          if (len == 0) return bad("empty run");
          if (off < end) return bad(absl::StrFormat("run at %d overlaps or precedes", off));
          if (off + len > kPageSize)
            return bad(absl::StrFormat("run [%d, +%d) past the page", off, len));
          if (left < len) return bad("run's bytes cut short");
          page.runs.push_back({off, absl::MakeConstSpan(p, len)});
          end = off + len;
          p += len;
          left -= len;
        }
        break;
      }
      default: return bad(absl::StrFormat("unknown entry kind %d", kind));
    }
    pages.push_back(std::move(page));
  }
  return pages;
}

void ApplyDiff(const std::vector<DiffPage>& pages, absl::Span<uint8_t> base) {
  for (const DiffPage& page : pages)
    for (const DiffRun& run : page.runs)
      std::memcpy(base.data() + page.index * kPageSize + run.offset, run.data.data(),
                  run.data.size());
}

std::vector<std::pair<size_t, size_t>> SplitDiff(absl::Span<const uint8_t> payload,
                                                 size_t max_bytes) {
  std::vector<std::pair<size_t, size_t>> pieces;
  size_t start = 0, at = 0;
  while (at < payload.size()) {
    size_t n = TrustedEntrySize(payload.data() + at, payload.size() - at);
    if (n == 0) n = payload.size() - at;  // not ours: one piece, the home refuses it
    if (at > start && at + n - start > max_bytes) {
      pieces.emplace_back(start, at - start);
      start = at;
    }
    at += n;
  }
  if (at > start) pieces.emplace_back(start, at - start);
  return pieces;
}

}  // namespace tether
