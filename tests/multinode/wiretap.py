#!/usr/bin/env python3
"""Wire tools for the data-plane tests (test_dataplane.py), no tcpdump:

  wiretap.py tap IFACE OUT     capture every TCP segment seen on IFACE (an
                               AF_PACKET socket; run it in the hub namespace,
                               on the bridge) until SIGTERM; write them to OUT
                               as JSON. Prints "ready" once it listens.
  wiretap.py replay HOST:PORT HEX
                               connect, send the bytes, print the frames that
                               come back (JSON: type, status, payload length)
                               until the peer closes or 3 s pass.
  wiretap.py dial HOST:PORT NODE LISTENER TOKENHEX
                               play a dialer's handshake (wire_format.h) as
                               node NODE toward node LISTENER with the given
                               token; print JSON: whether the listener's
                               proof checked out and the AUTH_ACK's status.

The frame layout and the proofs are written out here again on purpose (not
taken from the daemon): the test checks the wire, not the code against
itself.
"""
import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import sys
import time

MAGIC = 0x52485454
HELLO, HELLO_ACK, AUTH, AUTH_ACK = 1, 2, 10, 11


def header(version, ftype, req_id, segid, grant, offset, length, status):
    return struct.pack("<IHHQQQQII", MAGIC, version, ftype, req_id, segid, grant, offset,
                       length, status)


def parse_header(b):
    magic, version, ftype, req_id, segid, grant, offset, length, status = struct.unpack(
        "<IHHQQQQII", b)
    return dict(magic=magic, version=version, type=ftype, req_id=req_id, segid=segid,
                grant=grant, length=length, status=status)


def payload_length(h):
    if h["type"] in (HELLO, HELLO_ACK, AUTH, 5, 7, 9):  # hello(ack), auth, write, notice, diff
        return h["length"] if h["type"] != HELLO_ACK or h["status"] == 0 else 0
    if h["type"] == 4:  # READ_RESP
        return h["length"] if h["status"] == 0 else 0
    return 0


def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def read_frame(s):
    h = parse_header(read_exact(s, 48))
    h["payload"] = read_exact(s, payload_length(h))
    return h


def proof(token, transport, role, dialer, listener, dnonce, lnonce):
    label = b"tether data auth v1"
    msg = (label + bytes([len(transport)]) + transport + bytes([role]) +
           struct.pack("<II", dialer, listener) + dnonce + lnonce)
    return hmac.new(token, msg, hashlib.sha256).digest()


def tap(iface, out):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    segs = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    while not stop:
        try:
            f = s.recv(65536)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        if len(f) < 14 + 20 or f[12:14] != b"\x08\x00":
            continue
        ip = f[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack(">HHI", tcp[:8])
        doff = (tcp[12] >> 4) * 4
        data = tcp[doff:]
        if data:
            segs.append(dict(src=socket.inet_ntoa(ip[12:16]), sport=sport,
                             dst=socket.inet_ntoa(ip[16:20]), dport=dport, seq=seq,
                             data=data.hex()))
    with open(out, "w") as f:
        json.dump(segs, f)


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def replay(addr, hexbytes):
    s = connect(addr)
    s.sendall(bytes.fromhex(hexbytes))
    frames = []
    deadline = time.time() + 3
    try:
        while time.time() < deadline:
            h = read_frame(s)
            frames.append(dict(type=h["type"], status=h["status"], length=len(h["payload"])))
    except (EOFError, socket.timeout, ConnectionResetError):
        pass
    print(json.dumps(frames))


def dial(addr, node, listener, token_hex, version=5):  # kWireVersion (wire_format.h)
    token = bytes.fromhex(token_hex)
    s = connect(addr)
    dnonce = os.urandom(32)
    s.sendall(header(version, HELLO, 1, node, listener, 0, 32, 0) + dnonce)
    ack = read_frame(s)
    res = dict(hello_ack_status=ack["status"])
    if ack["type"] == HELLO_ACK and ack["status"] == 0:
        lnonce, lproof = ack["payload"][:32], ack["payload"][32:]
        res["listener_proof_ok"] = hmac.compare_digest(
            lproof, proof(token, b"tcp", 2, node, listener, dnonce, lnonce))
        # Send ours even so: what the home does with a wrong one is the point.
        s.sendall(header(version, AUTH, 2, node, 0, 0, 32, 0) +
                  proof(token, b"tcp", 1, node, listener, dnonce, lnonce))
        try:
            done = read_frame(s)
            res["auth_ack_type"] = done["type"]
            res["auth_ack_status"] = done["status"]
        except (EOFError, socket.timeout, ConnectionResetError) as e:
            res["auth_ack_error"] = str(e)
    print(json.dumps(res))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "tap":
        tap(sys.argv[2], sys.argv[3])
    elif cmd == "replay":
        replay(sys.argv[2], sys.argv[3])
    elif cmd == "dial":
        dial(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit("usage: see the docstring")
