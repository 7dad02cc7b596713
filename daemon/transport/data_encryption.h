// Encryption of tcp data connections with the kernel's TLS (kTLS).
//
// A tcp data or notice connection opens with the nonce handshake
// (wire_format.h, data_token.h): both sides proved they know the dialer's
// data token, and each chose a fresh nonce. When the connection is to be
// encrypted (--data_encryption=on on either side; the HELLO asks, the
// HELLO_ACK answers, and both proofs sign the answer), each side derives
// one AES-128-GCM key per direction from the token and both nonces
// (DataKeyMaterial) and hands both to the kernel: TCP_ULP "tls", then
// TLS_TX and TLS_RX with TLS 1.3 record parameters. From then on every
// byte on the socket is a TLS 1.3 application-data record, sealed and
// opened by the kernel, while the transport's code goes on with plain
// read, writev and sendmsg on the same fd: no second code path, no
// user-space copy, and MSG_DONTWAIT still means "whole frame or nothing"
// for notices.
//
// What this is and is not: the record layer of TLS 1.3 (AES-128-GCM,
// per-record nonces from the sequence number), keyed by the data
// handshake instead of a TLS handshake, since that handshake already
// authenticated both ends with a secret carried by the mutually
// authenticated control plane. There is no forward secrecy beyond the
// home's secret: whoever later learns a node's data token (it lives in
// the daemons' memory until the home restarts) can decrypt what was
// recorded on that node's connections in that time (docs/security.md).
//
// The kernel needs CONFIG_TLS (Debian's kernels: the `tls` module, which
// the kernel loads on first use only for a caller with CAP_NET_ADMIN:
// tetherd asks before it drops its capabilities; under the packaged unit,
// which has neither that nor module loading, the module is loaded at boot
// by the operator). KtlsAvailable says whether this kernel can, once per
// process, by trying it on a loopback connection.
//
// Thread contract: functions of their arguments (KtlsAvailable caches
// its answer behind a once-flag); callable from any thread.
#ifndef TETHER_DAEMON_TRANSPORT_DATA_ENCRYPTION_H_
#define TETHER_DAEMON_TRANSPORT_DATA_ENCRYPTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "daemon/transport/data_token.h"

namespace tether {

// The transport an encrypted tcp connection names in its handshake's
// proofs (instead of "tcp": neither side can be talked out of encryption,
// a flag flipped on the wire fails both proofs) and in its key material.
inline constexpr absl::string_view kEncryptedTcp = "tcp+ktls";

// OK when this kernel can encrypt a TCP connection with TLS 1.3
// AES-128-GCM in both directions; else why not ("the kernel has no TLS
// (CONFIG_TLS; modprobe tls): ...").
absl::Status KtlsAvailable();

// After a successful handshake on the connected TCP socket `fd`, as
// `self` (the dialer or the listener): keys from `token`, the two node ids
// and both nonces, one per direction, installed as TLS_TX (ours) and
// TLS_RX (the peer's). Call it at the point where neither side has any
// plaintext left to read: the dialer after it read AUTH_ACK, the listener
// after it sent it. On an error the socket is unusable (close it).
absl::Status EncryptConnection(int fd, absl::string_view token, AuthRole self, uint32_t dialer,
                               uint32_t listener, const uint8_t* dialer_nonce,
                               const uint8_t* listener_nonce);

// Whether `fd` has the kernel's TLS on it (getsockopt TCP_ULP says
// "tls"): for tests and the connection's log line.
bool IsEncrypted(int fd);

}  // namespace tether

#endif  // TETHER_DAEMON_TRANSPORT_DATA_ENCRYPTION_H_
