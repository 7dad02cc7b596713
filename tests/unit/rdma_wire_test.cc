// The rdma transport's framing: control messages and connect private data
// (round trips, every field a peer could get wrong, random bytes), and the
// data tokens that bind a data connection to a node.
#include "daemon/transport/rdma_wire.h"

#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "daemon/transport/data_token.h"

namespace tether {
namespace {

constexpr uint32_t kSlot = 256 * 1024;

RdmaMessage Request() {
  RdmaMessage m;
  m.header.type = FrameType::kReadReq;
  m.header.req_id = (7ull << 16) | 5;
  m.header.segid = 0x0001000200000003ull;
  m.header.grant = 9;
  m.header.offset = 1 << 20;
  m.header.length = kSlot;
  m.addr = 0x7f0000001000ull;
  m.rkey = 0xabcd;
  return m;
}

TEST(RdmaWire, RoundTrips) {
  uint8_t buf[kRdmaMessageSize];
  EncodeRdmaMessage(Request(), buf);
  auto m = DecodeRdmaMessage(buf, sizeof(buf), kSlot);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->header.req_id, Request().header.req_id);
  EXPECT_EQ(m->header.segid, Request().header.segid);
  EXPECT_EQ(m->header.offset, Request().header.offset);
  EXPECT_EQ(m->header.length, kSlot);
  EXPECT_EQ(m->addr, Request().addr);
  EXPECT_EQ(m->rkey, Request().rkey);

  RdmaMessage resp;
  resp.header = Request().header;
  resp.header.type = FrameType::kWriteResp;
  resp.header.length = 0;
  resp.header.status = 13;
  EncodeRdmaMessage(resp, buf);
  auto r = DecodeRdmaMessage(buf, sizeof(buf), kSlot);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->header.status, 13u);
}

TEST(RdmaWire, RejectsWhatAPeerCouldGetWrong) {
  uint8_t buf[kRdmaMessageSize];
  auto bad = [&](auto mutate) {
    RdmaMessage m = Request();
    mutate(m);
    EncodeRdmaMessage(m, buf);
    return !DecodeRdmaMessage(buf, sizeof(buf), kSlot).ok();
  };
  EXPECT_TRUE(bad([](RdmaMessage& m) { m.header.length = kSlot + 4096; }));  // over the slot
  EXPECT_TRUE(bad([](RdmaMessage& m) { m.header.length = 0; }));
  EXPECT_TRUE(bad([](RdmaMessage& m) { m.addr = 0; }));
  EXPECT_TRUE(bad([](RdmaMessage& m) { m.addr = ~0ull - 10; }));  // wraps
  EXPECT_TRUE(bad([](RdmaMessage& m) { m.header.status = 5; }));  // request with a status
  EXPECT_TRUE(bad([](RdmaMessage& m) { m.header.type = FrameType::kHello; }));
  EXPECT_TRUE(bad([](RdmaMessage& m) {  // a response naming a buffer
    m.header.type = FrameType::kReadResp;
  }));
  EncodeRdmaMessage(Request(), buf);
  EXPECT_FALSE(DecodeRdmaMessage(buf, sizeof(buf) - 1, kSlot).ok());  // short
  buf[61] = 1;                                                        // reserved
  EXPECT_FALSE(DecodeRdmaMessage(buf, sizeof(buf), kSlot).ok());
  EncodeRdmaMessage(Request(), buf);
  buf[0] ^= 1;  // magic
  EXPECT_FALSE(DecodeRdmaMessage(buf, sizeof(buf), kSlot).ok());
}

TEST(RdmaWire, RandomBytesNeverDecodeToSomethingUnsafe) {
  std::mt19937_64 rng(42);
  uint8_t buf[kRdmaMessageSize];
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    for (auto& b : buf) b = static_cast<uint8_t>(rng());
    if (i % 2) {  // half with a valid magic/version so deeper checks run
      RdmaMessage m = Request();
      uint8_t good[kRdmaMessageSize];
      EncodeRdmaMessage(m, good);
      std::memcpy(buf, good, 8);
    }
    auto m = DecodeRdmaMessage(buf, sizeof(buf), kSlot);
    if (!m.ok()) continue;
    ++accepted;
    EXPECT_LE(m->header.length, kSlot);
    if (m->header.type == FrameType::kReadReq || m->header.type == FrameType::kWriteReq) {
      EXPECT_NE(m->addr, 0u);
      EXPECT_GE(m->addr + m->header.length, m->addr);
    }
  }
  SUCCEED() << accepted << " accepted";
}

TEST(RdmaWire, ConnectDataRoundTripsAndRejectsGarbage) {
  std::string token(kDataTokenSize, 't');
  uint8_t buf[56] = {};  // rdma_cm hands over zero-padded private data
  EncodeRdmaConnectData({42, token}, buf);
  auto d = DecodeRdmaConnectData(buf, sizeof(buf));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->node, 42u);
  EXPECT_EQ(d->token, token);
  EXPECT_FALSE(DecodeRdmaConnectData(buf, kRdmaPrivateDataSize - 1).ok());
  EXPECT_FALSE(DecodeRdmaConnectData(nullptr, 0).ok());
  uint8_t zero[56] = {};  // another rdma_cm application connecting
  EXPECT_FALSE(DecodeRdmaConnectData(zero, sizeof(zero)).ok());
  EncodeRdmaConnectData({0, token}, buf);
  EXPECT_FALSE(DecodeRdmaConnectData(buf, sizeof(buf)).ok());  // node 0
  EncodeRdmaConnectData({0x8000, token}, buf);
  EXPECT_FALSE(DecodeRdmaConnectData(buf, sizeof(buf)).ok());  // over 15 bits
  EncodeRdmaConnectData({1, token}, buf);
  buf[4] = 9;  // version
  EXPECT_FALSE(DecodeRdmaConnectData(buf, sizeof(buf)).ok());
}

TEST(RdmaWire, AReadsImmediateNamesItsRequestAndSlot) {
  // Request ids are (sequence << 16) | slot.
  const uint64_t id = (uint64_t{0x12345} << 16) | 7;
  uint32_t imm = ImmOfRequest(id);
  EXPECT_EQ(SlotOfImm(imm), 7u);
  EXPECT_TRUE(ImmAnswers(imm, id));
  EXPECT_FALSE(ImmAnswers(imm, (uint64_t{0x12346} << 16) | 7));  // a later request, same slot
  EXPECT_FALSE(ImmAnswers(imm, (uint64_t{0x12345} << 16) | 8));  // another slot
  EXPECT_FALSE(ImmAnswers(imm, 0));                              // a free slot
  // A peer from before WRITE_WITH_IMM answers is refused at connect.
  std::string token(kDataTokenSize, 't');
  uint8_t buf[kRdmaPrivateDataSize];
  EncodeRdmaConnectData({1, token}, buf);
  buf[4] = 1;
  EXPECT_FALSE(DecodeRdmaConnectData(buf, sizeof(buf)).ok());
}

TEST(DataToken, BindsTheTokenToANodeAndASecret) {
  std::string secret(32, 's');
  std::string t2 = DataTokenFor(secret, 2);
  ASSERT_EQ(t2.size(), kDataTokenSize);
  EXPECT_EQ(t2, DataTokenFor(secret, 2));  // deterministic
  EXPECT_NE(t2, DataTokenFor(secret, 3));
  EXPECT_NE(t2, DataTokenFor(std::string(32, 'S'), 2));
  auto bytes = reinterpret_cast<const uint8_t*>(t2.data());
  EXPECT_TRUE(DataTokenValid(secret, 2, bytes));
  EXPECT_FALSE(DataTokenValid(secret, 3, bytes));
  EXPECT_FALSE(DataTokenValid(secret, 0, bytes));
  EXPECT_FALSE(DataTokenValid("", 2, bytes));
}

}  // namespace
}  // namespace tether
