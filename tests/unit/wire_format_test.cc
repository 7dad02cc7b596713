#include "daemon/transport/wire_format.h"

#include <cstring>
#include <random>

#include <gtest/gtest.h>

namespace tether {
namespace {

TEST(WireFormat, RoundTrip) {
  FrameHeader h{FrameType::kReadReq, 77, 0x1234567890ull, 9, 4096 * 3, 8192, 0};
  uint8_t buf[kFrameHeaderSize];
  EncodeHeader(h, buf);
  auto d = DecodeHeader(buf, sizeof(buf));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->type, FrameType::kReadReq);
  EXPECT_EQ(d->req_id, 77u);
  EXPECT_EQ(d->segid, 0x1234567890ull);
  EXPECT_EQ(d->grant, 9u);
  EXPECT_EQ(d->offset, 4096u * 3);
  EXPECT_EQ(d->length, 8192u);
  EXPECT_EQ(PayloadLength(*d), 0u);
  h.type = FrameType::kWriteReq;
  EncodeHeader(h, buf);
  EXPECT_EQ(PayloadLength(*DecodeHeader(buf, sizeof(buf))), 8192u);
  h.type = FrameType::kWriteDiffReq;
  EncodeHeader(h, buf);
  EXPECT_EQ(PayloadLength(*DecodeHeader(buf, sizeof(buf))), 8192u);
}

TEST(WireFormat, LittleEndianLayout) {
  FrameHeader h{FrameType::kHello, 1, 2, 3, 4, kHelloPayload, 0};
  uint8_t buf[kFrameHeaderSize];
  EncodeHeader(h, buf);
  EXPECT_EQ(std::memcmp(buf, "TTHR", 4), 0);
  EXPECT_EQ(buf[4], kWireVersion);
  EXPECT_EQ(buf[6], 1);
  EXPECT_EQ(buf[40], kHelloPayload);
}

TEST(WireFormat, RejectsBadHeaders) {
  FrameHeader h{FrameType::kReadResp, 1, 1, 1, 0, 4096, 0};
  uint8_t buf[kFrameHeaderSize];
  EncodeHeader(h, buf);
  EXPECT_FALSE(DecodeHeader(buf, kFrameHeaderSize - 1).ok());  // short
  uint8_t bad[kFrameHeaderSize];
  std::memcpy(bad, buf, sizeof(bad));
  bad[0] ^= 1;
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // magic
  std::memcpy(bad, buf, sizeof(bad));
  bad[4] = 9;
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // version
  std::memcpy(bad, buf, sizeof(bad));
  bad[6] = 0;
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // type 0
  bad[6] = 12;
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // type past the last
  h.length = kMaxPayload + 1;
  EncodeHeader(h, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // too long
  h.length = 4096;
  h.offset = ~uint64_t{0} - 10;
  EncodeHeader(h, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // offset overflow
  FrameHeader hello{FrameType::kHello, 1, 1, 0, 0, 16, 0};
  EncodeHeader(hello, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // hello with a short nonce
  FrameHeader hello_ack{FrameType::kHelloAck, 1, 1, 0, 0, 32, 0};
  EncodeHeader(hello_ack, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // accepting ack without nonce and proof
  hello_ack.length = kHelloAckPayload;
  hello_ack.status = EACCES;
  EncodeHeader(hello_ack, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // refusing ack with a payload
  hello_ack.status = 0;
  EncodeHeader(hello_ack, bad);
  EXPECT_EQ(PayloadLength(*DecodeHeader(bad, sizeof(bad))), kHelloAckPayload);
  FrameHeader auth{FrameType::kAuth, 1, 1, 0, 0, 31, 0};
  EncodeHeader(auth, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // auth with a short proof
  FrameHeader notice{FrameType::kNoticeReq, 1, 0, 0, 0, kMaxNoticePayload + 1, 0};
  EncodeHeader(notice, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // notice over its limit
  notice.length = 0;
  EncodeHeader(notice, bad);
  EXPECT_FALSE(DecodeHeader(bad, sizeof(bad)).ok());  // empty notice
  notice.length = 100;
  EncodeHeader(notice, bad);
  auto ok = DecodeHeader(bad, sizeof(bad));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(PayloadLength(*ok), 100u);
  FrameHeader resp{FrameType::kNoticeResp, 1, 0, 0, 0, 0, 22};
  EncodeHeader(resp, bad);
  ok = DecodeHeader(bad, sizeof(bad));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(PayloadLength(*ok), 0u);
}

TEST(WireFormat, RandomBytesNeverCrash) {
  std::mt19937_64 rng(7);
  uint8_t buf[kFrameHeaderSize];
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    for (auto& b : buf) b = static_cast<uint8_t>(rng());
    if (i % 2) {  // plausible headers: get past magic, version, type and limits
      std::memcpy(buf, "TTHR", 4);
      buf[4] = static_cast<uint8_t>(kWireVersion);
      buf[5] = 0;
      buf[6] = static_cast<uint8_t>(2 + rng() % 5);
      buf[7] = 0;
      buf[42] = buf[43] = 0;
      buf[45] &= 0x0f;
      buf[46] = buf[47] = 0;
      buf[39] &= 0x7f;  // keep offset + length from wrapping most of the time
    }
    auto d = DecodeHeader(buf, sizeof(buf));
    if (d.ok()) {
      ++accepted;
      EXPECT_LE(d->length, kMaxPayload);
      EXPECT_GE(d->offset + d->length, d->offset);
    }
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace tether
