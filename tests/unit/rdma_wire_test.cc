// The rdma transport's framing: control messages and connect private data
// (round trips, every field a peer could get wrong, random bytes), and the
// data tokens that bind a data connection to a node.
#include "daemon/transport/rdma_wire.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <utility>

#include <gtest/gtest.h>

#include "daemon/common/errors.h"
#include "daemon/transport/data_token.h"
#include "daemon/transport/transport.h"

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

AuthNonce Nonce(uint8_t fill) {
  AuthNonce n;
  n.fill(fill);
  return n;
}

RdmaConnectData Connect(uint32_t node = 42, uint32_t home = 1) {
  return {node, home, Nonce('d'), 32, kSlot};
}

TEST(RdmaWire, ConnectDataRoundTripsAndRejectsGarbage) {
  uint8_t buf[56] = {};  // rdma_cm hands over zero-padded private data
  static_assert(kRdmaPrivateDataSize <= 56, "the REQ's private data holds 56 bytes");
  static_assert(kRdmaPrivateDataSize == 56, "every byte of the REQ's private data is used");
  EncodeRdmaConnectData({42, 3, Nonce('n'), 7, 64 * 1024}, buf);
  auto d = DecodeRdmaConnectData(buf, sizeof(buf));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->node, 42u);
  EXPECT_EQ(d->home, 3u);
  EXPECT_EQ(d->nonce, Nonce('n'));
  EXPECT_EQ(d->depth, 7u);
  EXPECT_EQ(d->slot_bytes, 64u * 1024);
  EXPECT_FALSE(DecodeRdmaConnectData(buf, kRdmaPrivateDataSize - 1).ok());
  EXPECT_FALSE(DecodeRdmaConnectData(nullptr, 0).ok());
  uint8_t zero[56] = {};  // another rdma_cm application connecting
  EXPECT_FALSE(DecodeRdmaConnectData(zero, sizeof(zero)).ok());
  EncodeRdmaConnectData(Connect(0), buf);
  EXPECT_TRUE(absl::IsOutOfRange(DecodeRdmaConnectData(buf, sizeof(buf)).status()));  // node 0
  EncodeRdmaConnectData(Connect(0x8000), buf);
  EXPECT_TRUE(absl::IsOutOfRange(DecodeRdmaConnectData(buf, sizeof(buf)).status()));  // 15 bits
  EncodeRdmaConnectData(Connect(42, 0), buf);  // meant for nobody
  EXPECT_TRUE(absl::IsOutOfRange(DecodeRdmaConnectData(buf, sizeof(buf)).status()));
  EncodeRdmaConnectData(Connect(42, 0x8000), buf);
  EXPECT_TRUE(absl::IsOutOfRange(DecodeRdmaConnectData(buf, sizeof(buf)).status()));
  EncodeRdmaConnectData(Connect(), buf);
  buf[4] = 9;  // version
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeRdmaConnectData(buf, sizeof(buf)).status()));
  EncodeRdmaConnectData(Connect(), buf);
  buf[6] = 1;  // reserved
  EXPECT_FALSE(DecodeRdmaConnectData(buf, sizeof(buf)).ok());
}

// Issue 15: queue depth and slot size travel in the connect request; every
// value a peer could get wrong is refused with a clear error, and the code
// picks the home's reject reason.
TEST(RdmaWire, ConnectDataRefusesBadDepthAndSlotSize) {
  uint8_t buf[kRdmaPrivateDataSize];
  auto decode = [&](uint32_t depth, uint32_t slot) {
    RdmaConnectData c = Connect();
    c.depth = depth;
    c.slot_bytes = slot;
    EncodeRdmaConnectData(c, buf);
    return DecodeRdmaConnectData(buf, sizeof(buf)).status();
  };
  EXPECT_TRUE(decode(1, 4096).ok());
  EXPECT_TRUE(decode(kRdmaMaxQueueDepth, kMaxPayload).ok());
  for (auto [depth, slot] : {std::pair<uint32_t, uint32_t>{0, kSlot},
                             {kRdmaMaxQueueDepth + 1, kSlot},
                             {32, 0},
                             {32, 4095},
                             {32, 4096 + 512},
                             {32, kMaxPayload + 4096},
                             {~0u, ~0u}}) {
    absl::Status st = decode(depth, slot);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << depth << " " << slot << ": " << st;
    EXPECT_NE(st.message().find("connect request"), absl::string_view::npos) << st;
  }
  // A version-3 request (44 bytes, no depth or slot) or a version-5 one
  // (52 bytes, the token in it) is a version mismatch, not a short
  // request: the home must say so (its reject: kVersionMismatch, and the
  // old requester goes over tcp instead of hanging).
  EncodeRdmaConnectData(Connect(), buf);
  buf[4] = 3;
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeRdmaConnectData(buf, 44).status()));
  buf[4] = 5;
  absl::Status v5 = DecodeRdmaConnectData(buf, 52).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(v5)) << v5;
  EXPECT_NE(v5.message().find("wire version 5, this node speaks 6"), absl::string_view::npos) << v5;
  EXPECT_FALSE(DecodeRdmaConnectData(buf, 7).ok());  // not even a version
}

TEST(RdmaWire, NegotiationTakesTheSmallerOfEachAndStaysWithinLimits) {
  RdmaNegotiated n = NegotiateRdma(64, 1 << 20, 16, 256 * 1024);
  EXPECT_EQ(n.depth, 16u);
  EXPECT_EQ(n.slot_bytes, 256u * 1024);
  n = NegotiateRdma(8, 64 * 1024, 32, 256 * 1024);
  EXPECT_EQ(n.depth, 8u);
  EXPECT_EQ(n.slot_bytes, 64u * 1024);
  n = NegotiateRdma(32, kSlot, 32, kSlot);
  EXPECT_EQ(n.depth, 32u);
  EXPECT_EQ(n.slot_bytes, kSlot);
  // Every pair of valid values gives a valid answer, never above either.
  for (uint32_t a : {1u, 3u, 32u, 1024u})
    for (uint32_t b : {1u, 17u, 1024u})
      for (uint32_t sa : {4096u, 12288u, kMaxPayload})
        for (uint32_t sb : {4096u, 65536u, kMaxPayload}) {
          n = NegotiateRdma(a, sa, b, sb);
          EXPECT_TRUE(CheckRdmaLimits(n.depth, n.slot_bytes).ok());
          EXPECT_LE(n.depth, std::min(a, b));
          EXPECT_LE(n.slot_bytes, std::min(sa, sb));
        }
}

TEST(RdmaWire, AcceptDataRoundTripsAndIsRefusedWhenLargerThanAsked) {
  const RdmaNegotiated asked{32, kSlot};
  uint8_t buf[196] = {};  // the REP's private data, zero-padded
  auto accept = [](RdmaNegotiated use) {
    RdmaAcceptData a{use, Nonce('h'), {}};
    a.proof.fill('p');
    return a;
  };
  EncodeRdmaAcceptData(accept({16, 64 * 1024}), buf);
  auto a = DecodeRdmaAcceptData(buf, sizeof(buf), asked);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->use.depth, 16u);
  EXPECT_EQ(a->use.slot_bytes, 64u * 1024);
  EXPECT_EQ(a->nonce, Nonce('h'));
  EXPECT_EQ(a->proof, accept({}).proof);
  EXPECT_TRUE(DecodeRdmaAcceptData(buf, kRdmaAcceptDataSize, asked).ok());
  EXPECT_FALSE(DecodeRdmaAcceptData(buf, kRdmaAcceptDataSize - 1, asked).ok());  // truncated
  EXPECT_FALSE(DecodeRdmaAcceptData(nullptr, 0, asked).ok());  // an old home: no answer
  uint8_t zero[196] = {};
  EXPECT_FALSE(DecodeRdmaAcceptData(zero, sizeof(zero), asked).ok());
  EncodeRdmaAcceptData(accept({33, kSlot}), buf);  // more than asked: would overrun our pool
  EXPECT_FALSE(DecodeRdmaAcceptData(buf, sizeof(buf), asked).ok());
  EncodeRdmaAcceptData(accept({32, kSlot + 4096}), buf);
  EXPECT_FALSE(DecodeRdmaAcceptData(buf, sizeof(buf), asked).ok());
  EncodeRdmaAcceptData(accept({0, kSlot}), buf);  // zero depth
  EXPECT_FALSE(DecodeRdmaAcceptData(buf, sizeof(buf), asked).ok());
  EncodeRdmaAcceptData(accept({32, 1000}), buf);  // not whole pages
  EXPECT_FALSE(DecodeRdmaAcceptData(buf, sizeof(buf), asked).ok());
  EncodeRdmaAcceptData(accept({32, kSlot}), buf);
  buf[4] = 3;  // version
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeRdmaAcceptData(buf, sizeof(buf), asked).status()));
  EncodeRdmaAcceptData(accept({32, kSlot}), buf);
  buf[0] ^= 1;  // magic (a connect request's data is not an answer)
  EXPECT_FALSE(DecodeRdmaAcceptData(buf, sizeof(buf), asked).ok());
  // A version-5 home's 16-byte accept (no nonce, no proof): a version
  // error, not a short answer.
  EncodeRdmaAcceptData(accept({32, kSlot}), buf);
  buf[4] = 5;
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeRdmaAcceptData(buf, 16, asked).status()));
}

TEST(RdmaWire, AuthMessageRoundTripsAndIsNeverARequest) {
  AuthProof proof;
  proof.fill(0xa5);
  uint8_t buf[kRdmaMessageSize];
  EncodeRdmaAuthMessage(proof, buf);
  auto got = DecodeRdmaAuthMessage(buf, sizeof(buf));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, proof);
  // Not a control message either: a home that is past the handshake drops
  // a second AUTH as garbage.
  EXPECT_FALSE(DecodeRdmaMessage(buf, sizeof(buf), kSlot).ok());
  EXPECT_FALSE(DecodeRdmaAuthMessage(buf, sizeof(buf) - 1).ok());  // short
  EXPECT_FALSE(DecodeRdmaAuthMessage(buf, 0).ok());                // a heartbeat
  EXPECT_FALSE(DecodeRdmaAuthMessage(nullptr, 0).ok());
  buf[4] = 5;  // version
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeRdmaAuthMessage(buf, sizeof(buf)).status()));
  EncodeRdmaAuthMessage(proof, buf);
  buf[6] = 1;  // reserved
  EXPECT_FALSE(DecodeRdmaAuthMessage(buf, sizeof(buf)).ok());
  EncodeRdmaAuthMessage(proof, buf);
  buf[63] = 1;  // reserved tail
  EXPECT_FALSE(DecodeRdmaAuthMessage(buf, sizeof(buf)).ok());
  // A request where the AUTH should be.
  EncodeRdmaMessage(Request(), buf);
  absl::Status st = DecodeRdmaAuthMessage(buf, sizeof(buf)).status();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("not an auth message"), absl::string_view::npos) << st;
}

// The handshake of issue 17: the connect request carries no token, only a
// nonce; each side's proof covers both nonces, so a recorded connect
// request (or a recorded AUTH) proves nothing on a new connection, where
// the home draws a new nonce.
TEST(RdmaHandshake, ProofsCheckOutOnlyForTheirOwnConnectionAndRole) {
  const std::string secret(32, 's');
  const std::string token = DataTokenFor(secret, 2);
  const RdmaConnectData req{2, 1, Nonce('d'), 32, kSlot};
  const AuthNonce home_nonce = Nonce('h');
  // The genuine handshake.
  RdmaAcceptData accept{
      {32, kSlot}, home_nonce, RdmaProof(token, AuthRole::kListener, req, home_nonce)};
  EXPECT_TRUE(CheckRdmaHomeProof(token, req, accept).ok());
  uint8_t auth[kRdmaMessageSize];
  EncodeRdmaAuthMessage(RdmaProof(token, AuthRole::kDialer, req, home_nonce), auth);
  EXPECT_TRUE(CheckRdmaDialerAuth(token, req, home_nonce, auth, sizeof(auth)).ok());

  // The home's side: a replayed connect request meets a new home nonce, so
  // the recorded AUTH (or anything else) is refused, with the log line.
  absl::Status st = CheckRdmaDialerAuth(token, req, Nonce('H'), auth, sizeof(auth));
  EXPECT_EQ(ToErrno(st), EACCES) << st;
  EXPECT_EQ(st.message(),
            "refused: claims node 2 but its proof is wrong (a wrong or stale data token, or a "
            "replayed handshake)");
  // A dialer with another node's token, or a stale one (the home restarted).
  const std::string wrong = DataTokenFor(std::string(32, 'x'), 2);
  uint8_t bad[kRdmaMessageSize];
  EncodeRdmaAuthMessage(RdmaProof(wrong, AuthRole::kDialer, req, home_nonce), bad);
  EXPECT_FALSE(CheckRdmaDialerAuth(token, req, home_nonce, bad, sizeof(bad)).ok());
  // The home's own proof sent back (reflection): another role.
  EncodeRdmaAuthMessage(accept.proof, bad);
  EXPECT_FALSE(CheckRdmaDialerAuth(token, req, home_nonce, bad, sizeof(bad)).ok());
  // A tcp proof of the same nonces: another transport.
  std::string tcp =
      DataAuthProof(token, "tcp", AuthRole::kDialer, 2, 1, req.nonce.data(), home_nonce.data());
  AuthProof tcp_proof;
  std::copy(tcp.begin(), tcp.end(), tcp_proof.begin());
  EncodeRdmaAuthMessage(tcp_proof, bad);
  EXPECT_FALSE(CheckRdmaDialerAuth(token, req, home_nonce, bad, sizeof(bad)).ok());
  // Claiming another node with node 2's proof.
  RdmaConnectData as3 = req;
  as3.node = 3;
  EXPECT_FALSE(
      CheckRdmaDialerAuth(DataTokenFor(secret, 3), as3, home_nonce, auth, sizeof(auth)).ok());
  // A request, a heartbeat, or nothing where the AUTH should be.
  uint8_t request[kRdmaMessageSize];
  EncodeRdmaMessage(Request(), request);
  st = CheckRdmaDialerAuth(token, req, home_nonce, request, sizeof(request));
  EXPECT_EQ(ToErrno(st), EACCES) << st;
  EXPECT_NE(st.message().find("refused: claims node 2 but its proof is wrong"),
            absl::string_view::npos)
      << st;
  EXPECT_FALSE(CheckRdmaDialerAuth(token, req, home_nonce, auth, 0).ok());
  EXPECT_FALSE(CheckRdmaDialerAuth(token, req, home_nonce, nullptr, 0).ok());

  // The requester's side: a home that does not know the token (an
  // impostor at its address, or a home that restarted with a new secret).
  RdmaAcceptData impostor = accept;
  impostor.proof = RdmaProof(wrong, AuthRole::kListener, req, home_nonce);
  st = CheckRdmaHomeProof(token, req, impostor);
  EXPECT_EQ(ToErrno(st), EACCES) << st;
  EXPECT_TRUE(IsStaleToken(st)) << st;  // DataPath learns the token again
  EXPECT_FALSE(IsSetupFailure(st)) << st;
  EXPECT_EQ(st.message(),
            "node 1's proof is wrong: an impostor, or a home that restarted with a new token");
  // A recorded accept replayed to a new connect (a new dialer nonce).
  RdmaConnectData again = req;
  again.nonce = Nonce('D');
  EXPECT_FALSE(CheckRdmaHomeProof(token, again, accept).ok());
  // The dialer's proof offered as the home's.
  impostor.proof = RdmaProof(token, AuthRole::kDialer, req, home_nonce);
  EXPECT_FALSE(CheckRdmaHomeProof(token, req, impostor).ok());
}

// The token never crosses the fabric: not in the connect request, the
// accept or the AUTH.
TEST(RdmaHandshake, TheTokenIsInNoMessage) {
  const std::string token = DataTokenFor(std::string(32, 's'), 2);
  const RdmaConnectData req{2, 1, Nonce('d'), 32, kSlot};
  const AuthNonce home_nonce = Nonce('h');
  uint8_t pd[kRdmaPrivateDataSize], ad[kRdmaAcceptDataSize], auth[kRdmaMessageSize];
  EncodeRdmaConnectData(req, pd);
  EncodeRdmaAcceptData(
      {{32, kSlot}, home_nonce, RdmaProof(token, AuthRole::kListener, req, home_nonce)}, ad);
  EncodeRdmaAuthMessage(RdmaProof(token, AuthRole::kDialer, req, home_nonce), auth);
  for (auto [p, n] : {std::pair<const uint8_t*, size_t>{pd, sizeof(pd)},
                      {ad, sizeof(ad)},
                      {auth, sizeof(auth)}}) {
    std::string bytes(reinterpret_cast<const char*>(p), n);
    EXPECT_EQ(bytes.find(token.substr(0, 8)), std::string::npos);
  }
}

TEST(RdmaWire, RejectReasonsRoundTripAndGarbageIsNotAReason) {
  for (uint16_t r = 1; r <= 7; ++r) {
    uint8_t buf[148] = {};  // the REJ's private data, zero-padded
    EncodeRdmaRejectData(static_cast<RdmaRejectReason>(r), buf);
    auto got = DecodeRdmaRejectData(buf, sizeof(buf));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(static_cast<uint16_t>(*got), r);
    EXPECT_STRNE(RdmaRejectReasonName(*got), "unknown reason");
    EXPECT_TRUE(DecodeRdmaRejectData(buf, kRdmaRejectDataSize).ok());
    EXPECT_FALSE(DecodeRdmaRejectData(buf, kRdmaRejectDataSize - 1).ok());  // truncated
  }
  uint8_t buf[kRdmaRejectDataSize];
  EncodeRdmaRejectData(RdmaRejectReason::kShuttingDown, buf);
  buf[4] = 0;  // reason 0
  EXPECT_FALSE(DecodeRdmaRejectData(buf, sizeof(buf)).ok());
  buf[4] = 99;
  EXPECT_FALSE(DecodeRdmaRejectData(buf, sizeof(buf)).ok());
  EncodeRdmaRejectData(RdmaRejectReason::kShuttingDown, buf);
  buf[6] = 77;  // another version: the reason still reads
  EXPECT_TRUE(DecodeRdmaRejectData(buf, sizeof(buf)).ok());
  buf[0] ^= 1;
  EXPECT_FALSE(DecodeRdmaRejectData(buf, sizeof(buf)).ok());
  uint8_t zero[148] = {};  // what the kernel's rdma_cm sends
  EXPECT_FALSE(DecodeRdmaRejectData(zero, sizeof(zero)).ok());
  EXPECT_FALSE(DecodeRdmaRejectData(nullptr, 0).ok());
}

// Issue 15: reject reason 28 (a consumer reject) was read as "wrong token"
// and failed the request (SIGBUS in a faulting client), though the
// kernel's rdma_cm and a home short of resources send it too. Only our own
// bad-token/unknown-node reasons are refusals; everything else is a set-up
// failure, which DataPath sends over tcp.
TEST(RdmaWire, RejectStatusFallsBackUnlessTheHomeRefusedOurIdentity) {
  const std::string what = "rdma connect to node 1";
  uint8_t zero[148] = {};
  absl::Status st = RdmaRejectStatus(28, zero, sizeof(zero), what);
  EXPECT_TRUE(IsSetupFailure(st)) << st;  // 28 without our reason
  st = RdmaRejectStatus(28, nullptr, 0, what);
  EXPECT_TRUE(IsSetupFailure(st)) << st;
  st = RdmaRejectStatus(8, nullptr, 0, what);  // IB_CM_REJ_INVALID_SERVICE_ID: no listener
  EXPECT_TRUE(IsSetupFailure(st)) << st;
  uint8_t buf[148] = {};
  for (auto r : {RdmaRejectReason::kBadRequest, RdmaRejectReason::kVersionMismatch,
                 RdmaRejectReason::kNoResources, RdmaRejectReason::kTooManyConnections,
                 RdmaRejectReason::kShuttingDown}) {
    EncodeRdmaRejectData(r, buf);
    st = RdmaRejectStatus(28, buf, sizeof(buf), what);
    EXPECT_TRUE(IsSetupFailure(st)) << st;
    EXPECT_NE(st.message().find(RdmaRejectReasonName(r)), absl::string_view::npos) << st;
    // Our data under another status is not ours to read.
    EXPECT_TRUE(IsSetupFailure(RdmaRejectStatus(8, buf, sizeof(buf), what)));
  }
  for (auto r : {RdmaRejectReason::kBadToken, RdmaRejectReason::kUnknownNode}) {
    EncodeRdmaRejectData(r, buf);
    st = RdmaRejectStatus(28, buf, sizeof(buf), what);
    EXPECT_FALSE(IsSetupFailure(st)) << st;
    EXPECT_EQ(ToErrno(st), EACCES) << st;
    // A wrong token: DataPath learns it again and retries once.
    EXPECT_EQ(IsStaleToken(st), r == RdmaRejectReason::kBadToken) << st;
  }
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
  uint8_t buf[kRdmaPrivateDataSize];
  EncodeRdmaConnectData(Connect(1), buf);
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
