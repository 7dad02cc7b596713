#include "daemon/common/page_diff.h"

#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace tether {
namespace {

std::vector<uint8_t> Page(uint8_t fill) { return std::vector<uint8_t>(kPageSize, fill); }

// Encodes `page` against `twin`, decodes, applies to a copy of `twin`:
// the result must be `page`.
std::vector<uint8_t> RoundTrip(const std::vector<uint8_t>& twin, const std::vector<uint8_t>& page,
                               size_t* encoded = nullptr) {
  std::vector<uint8_t> diff;
  size_t n = AppendPageDiff(3, twin.data(), page.data(), &diff);
  EXPECT_EQ(n, diff.size());
  if (encoded) *encoded = n;
  std::vector<uint8_t> out(4 * kPageSize, 0xee);
  std::memcpy(out.data() + 3 * kPageSize, twin.data(), kPageSize);
  if (n == 0) return twin;
  auto pages = DecodeDiff(diff);
  EXPECT_TRUE(pages.ok()) << pages.status();
  if (!pages.ok()) return {};
  EXPECT_EQ(DiffSpanPages(*pages), 4u);
  ApplyDiff(*pages, absl::MakeSpan(out));
  for (size_t i = 0; i < 3 * kPageSize; ++i)
    if (out[i] != 0xee) ADD_FAILURE() << "wrote outside its page at " << i;
  return std::vector<uint8_t>(out.begin() + 3 * kPageSize, out.begin() + 4 * kPageSize);
}

TEST(PageDiff, UnchangedPageSendsNothing) {
  auto twin = Page(7);
  std::vector<uint8_t> diff;
  EXPECT_EQ(AppendPageDiff(0, twin.data(), twin.data(), &diff), 0u);
  EXPECT_TRUE(diff.empty());
  EXPECT_FALSE(DecodeDiff(diff).ok());  // an empty diff is malformed
}

TEST(PageDiff, OneByteIsOneSmallRun) {
  auto twin = Page(0), page = Page(0);
  page[4095] = 1;  // the last byte: bounds
  size_t n = 0;
  EXPECT_EQ(RoundTrip(twin, page, &n), page);
  EXPECT_EQ(n, kDiffEntryHeader + kDiffRunHeader + 1);
  page[0] = 2;  // and the first
  EXPECT_EQ(RoundTrip(twin, page, &n), page);
  EXPECT_EQ(n, kDiffEntryHeader + 2 * (kDiffRunHeader + 1));
}

TEST(PageDiff, EveryByteIsTheWholePage) {
  auto twin = Page(0), page = Page(1);
  size_t n = 0;
  EXPECT_EQ(RoundTrip(twin, page, &n), page);
  EXPECT_EQ(n, kDiffEntryHeader + kPageSize);
}

TEST(PageDiff, ScatteredBytesUseTheMaskAndLeaveTheOthers) {
  // Even bytes changed: 2048 runs; the mask is smaller, and the odd bytes
  // (another writer's) are not sent.
  auto twin = Page(0), page = Page(0);
  for (size_t i = 0; i < kPageSize; i += 2) page[i] = static_cast<uint8_t>(i | 1);
  size_t n = 0;
  EXPECT_EQ(RoundTrip(twin, page, &n), page);
  EXPECT_EQ(n, kDiffEntryHeader + kDiffMaskBytes + kPageSize / 2);
  std::vector<uint8_t> diff;
  AppendPageDiff(0, twin.data(), page.data(), &diff);
  auto pages = DecodeDiff(diff);
  ASSERT_TRUE(pages.ok());
  std::vector<uint8_t> other = Page(0x55);  // the home's page, odd bytes from elsewhere
  ApplyDiff(*pages, absl::MakeSpan(other));
  for (size_t i = 0; i < kPageSize; ++i)
    ASSERT_EQ(other[i], i % 2 ? 0x55 : page[i]) << "byte " << i;
}

TEST(PageDiff, AllButOneByteNeverSendsTheUnchangedByte) {
  auto twin = Page(0), page = Page(9);
  page[100] = 0;  // unchanged: must not be in the diff
  std::vector<uint8_t> diff;
  AppendPageDiff(0, twin.data(), page.data(), &diff);
  EXPECT_LE(diff.size(), kMaxDiffEntry);
  auto pages = DecodeDiff(diff);
  ASSERT_TRUE(pages.ok());
  auto home = Page(0x42);
  ApplyDiff(*pages, absl::MakeSpan(home));
  EXPECT_EQ(home[100], 0x42);
  EXPECT_EQ(home[99], 9);
  EXPECT_EQ(home[101], 9);
}

TEST(PageDiff, RandomPagesRoundTrip) {
  std::mt19937 rng(1);
  for (int iter = 0; iter < 300; ++iter) {
    auto twin = Page(0);
    for (auto& b : twin) b = static_cast<uint8_t>(rng());
    auto page = twin;
    int density = static_cast<int>(rng() % 100);
    for (auto& b : page)
      if (static_cast<int>(rng() % 100) < density) b = static_cast<uint8_t>(b + 1 + rng() % 255);
    size_t n = 0;
    ASSERT_EQ(RoundTrip(twin, page, &n), page) << "iteration " << iter;
    ASSERT_LE(n, kMaxDiffEntry);
  }
}

TEST(PageDiff, SeveralPagesAndSplit) {
  std::vector<uint8_t> diff;
  auto twin = Page(0);
  std::vector<uint8_t> want(10 * kPageSize, 0);
  for (uint32_t p = 0; p < 10; p += 3) {
    auto page = Page(0);
    for (size_t i = p; i < kPageSize; i += 5 + p) page[i] = static_cast<uint8_t>(p + 1);
    AppendPageDiff(p, twin.data(), page.data(), &diff);
    std::memcpy(want.data() + p * kPageSize, page.data(), kPageSize);
  }
  // Entries of 1340, 1032, 893 and 813 bytes (masks): cut at 2000.
  auto pieces = SplitDiff(diff, 2000);
  EXPECT_EQ(pieces.size(), 3u);
  std::vector<uint8_t> got(10 * kPageSize, 0);
  size_t covered = 0;
  for (auto [off, len] : pieces) {
    EXPECT_EQ(off, covered);
    covered += len;
    EXPECT_LE(len, 2000u);
    auto pages = DecodeDiff(absl::MakeConstSpan(diff).subspan(off, len));
    ASSERT_TRUE(pages.ok()) << pages.status();
    ApplyDiff(*pages, absl::MakeSpan(got));
  }
  EXPECT_EQ(covered, diff.size());
  EXPECT_EQ(got, want);
  EXPECT_EQ(SplitDiff(diff, 1 << 20).size(), 1u);
}

// Malformed diffs are refused with what is wrong.
std::string Refusal(std::vector<uint8_t> diff) {
  auto d = DecodeDiff(diff);
  EXPECT_FALSE(d.ok());
  if (d.ok()) return "";
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(d.status().message());
}

std::vector<uint8_t> Entry(uint32_t index, uint8_t kind, uint16_t count) {
  std::vector<uint8_t> e(8, 0);
  std::memcpy(e.data(), &index, 4);
  e[4] = kind;
  std::memcpy(e.data() + 6, &count, 2);
  return e;
}
void AddRun(std::vector<uint8_t>* d, uint16_t off, uint16_t len, size_t bytes) {
  d->push_back(static_cast<uint8_t>(off));
  d->push_back(static_cast<uint8_t>(off >> 8));
  d->push_back(static_cast<uint8_t>(len));
  d->push_back(static_cast<uint8_t>(len >> 8));
  d->insert(d->end(), bytes, 0xab);
}

TEST(PageDiff, RefusesMalformed) {
  EXPECT_NE(Refusal({1, 2, 3}).find("cut short"), std::string::npos);
  EXPECT_NE(Refusal(Entry(0, 9, 0)).find("unknown entry kind"), std::string::npos);
  EXPECT_NE(Refusal(Entry(kMaxDiffPages, 3, 0)).find("past"), std::string::npos);
  EXPECT_NE(Refusal(Entry(0, 3, 0)).find("whole page cut short"), std::string::npos);
  EXPECT_NE(Refusal(Entry(0, 1, 0)).find("no runs"), std::string::npos);
  auto d = Entry(0, 1, 1);
  AddRun(&d, 4095, 2, 2);  // past the page
  EXPECT_NE(Refusal(d).find("past the page"), std::string::npos);
  d = Entry(0, 1, 1);
  AddRun(&d, 0, 0, 0);
  EXPECT_NE(Refusal(d).find("empty run"), std::string::npos);
  d = Entry(0, 1, 2);
  AddRun(&d, 10, 5, 5);
  AddRun(&d, 12, 1, 1);  // overlaps
  EXPECT_NE(Refusal(d).find("overlaps"), std::string::npos);
  d = Entry(0, 1, 1);
  AddRun(&d, 0, 100, 99);  // bytes missing
  EXPECT_NE(Refusal(d).find("cut short"), std::string::npos);
  d = Entry(0, 2, 0);
  d.resize(d.size() + kDiffMaskBytes, 0);  // no byte set
  EXPECT_NE(Refusal(d).find("no byte set"), std::string::npos);
  d[8] = 0xff;  // 8 bytes set, none sent
  EXPECT_NE(Refusal(d).find("cut short"), std::string::npos);
  d = Entry(5, 1, 1);
  AddRun(&d, 0, 1, 1);
  auto e = Entry(5, 1, 1);  // the same page twice
  AddRun(&e, 1, 1, 1);
  d.insert(d.end(), e.begin(), e.end());
  EXPECT_NE(Refusal(d).find("after page"), std::string::npos);
  d = Entry(0, 3, 0);
  d[5] = 1;
  EXPECT_NE(Refusal(d).find("reserved"), std::string::npos);
}

TEST(PageDiff, RandomBytesNeverCrash) {
  std::mt19937 rng(2);
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> d(rng() % 64);
    for (auto& b : d) b = static_cast<uint8_t>(rng() % 4);  // small values: plausible headers
    auto pages = DecodeDiff(d);
    if (!pages.ok()) continue;
    std::vector<uint8_t> base(DiffSpanPages(*pages) * kPageSize);
    ApplyDiff(*pages, absl::MakeSpan(base));
  }
}

}  // namespace
}  // namespace tether
