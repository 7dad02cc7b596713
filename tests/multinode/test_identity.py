#!/usr/bin/env python3
"""Host multi-node tests of node identity (issue 17): real tetherd daemons in
network namespaces with real gRPC mutual TLS. Each node's certificate names
its node id (DNS SAN tether-node-N, deploy/make-certs); both ends of a
connection check it. The impostor (tests/tools/peer_impostor.cc) holds node
3's real certificate and key and claims to be node 2. Also: the CA key is
never among the nodes' files, certificates reload on SIGHUP and `tetherctl
reload` (a bad set is refused and the one in use stays), and a certificate
close to its end is warned about in the log and shown by `tetherctl status`.
"""
import json
import os
import re
import signal
import subprocess
import time

from cluster import Exporter
from harness import Failure, expect, run, with_nodes

MiB = 1 << 20


def impostor_path(c):
    p = os.environ.get("TETHER_PEER_IMPOSTOR") or os.path.join(
        os.path.dirname(c.tt), "peer_impostor")
    expect(os.path.exists(p), "missing %s: build first" % p)
    return p


def log_of(node):
    with open(node.log) as f:
        return f.read()


def wait_log(node, pattern, timeout=15):
    """Waits until node's log matches `pattern` (a regex); returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(pattern, log_of(node))
        if m:
            return m
        time.sleep(0.1)
    raise Failure("node %d: no log line matching %r in %d s; log ends:\n%s" %
                  (node.id, pattern, timeout, log_of(node)[-3000:]))


def cert_serial(path):
    r = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"],
                       capture_output=True, text=True, check=True)
    return r.stdout.strip().split("=", 1)[1].upper()


def presented_serial(c, frm, to):
    """The serial of the certificate node `to` presents to a new TLS
    connection made from node `frm`'s namespace (openssl s_client, with
    frm's certificate as the client's)."""
    cmd = ("openssl s_client -connect %s:7600 -alpn h2 -CAfile %s/ca.pem -cert %s/node-%d.pem "
           "-key %s/node-%d.key </dev/null 2>/dev/null | openssl x509 -noout -serial" %
           (to.ip, c.certs, c.certs, frm.id, c.certs, frm.id))
    r = frm.run(["sh", "-c", cmd], timeout=30)
    if "=" not in r.stdout:
        return None
    return r.stdout.strip().split("=", 1)[1].upper()


def status(node):
    r = node.ctl("status", "--json")
    expect(r.returncode == 0, "tetherctl status on node %d: %s" % (node.id, r.stdout + r.stderr))
    return json.loads(r.stdout)


def map_ok(node, *args):
    r = node.tt("map", *args)
    expect(r.returncode == 0 and "done" in r.stdout,
           "tt map %s on node %d: rc=%d %s" % (" ".join(map(str, args)), node.id,
                                               r.returncode, r.stdout + r.stderr))


@with_nodes(2)
def test_certificates_name_nodes_and_the_ca_key_stays_off_nodes(c):
    expect(not os.path.exists(os.path.join(c.certs, "ca.key")),
           "the nodes' certificate directory holds the CA key")
    expect(os.path.exists(os.path.join(c.ca_dir, "ca.key")), "no CA key in the CA directory")
    for node in c.nodes:
        r = subprocess.run(["openssl", "x509", "-in", "%s/node-%d.pem" % (c.certs, node.id),
                            "-noout", "-ext", "subjectAltName", "-enddate"],
                           capture_output=True, text=True, check=True)
        expect("DNS:tether-node-%d" % node.id in r.stdout, "node %d's certificate: %s" %
               (node.id, r.stdout))
        st = status(node)
        expect(st["tls"] and st["tls"]["serial"] == cert_serial(
            "%s/node-%d.pem" % (c.certs, node.id)),
            "node %d: tetherctl status shows %s" % (node.id, st.get("tls")))
        expect(360 <= st["tls"]["days_left"] <= 366,
               "node %d: a fresh certificate should last a year: %s" % (node.id, st["tls"]))
        r = node.ctl("status")
        expect(re.search(r"certificate\s+serial \S+, expires \d{4}-\d\d-\d\d", r.stdout),
               "tetherctl status does not show the certificate's expiry:\n" + r.stdout)
    # The normal cluster works: node 2 maps node 1's segment.
    e = Exporter(c.node(1), 1 * MiB, 77)
    map_ok(c.node(2), "--segid", e.segid, "--len", 1 * MiB, "--verify", 77)
    e.close()


@with_nodes(3)
def test_client_refuses_a_server_with_another_nodes_certificate(c):
    """Node 1 calls node 2's address, where an impostor with node 3's real
    certificate answers Hello as node 2. Node 1 must refuse the handshake:
    no call reaches the impostor, and node 1's log says why."""
    n1, n2, n3 = c.node(1), c.node(2), c.node(3)
    expect(n2.stop() == 0, "node 2 did not stop cleanly")
    imp = n2.popen([impostor_path(c), "serve", "%s:7600" % n2.ip, c.certs + "/ca.pem",
                    "%s/node-3.pem" % c.certs, "%s/node-3.key" % c.certs, "2"],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c.extra_procs = getattr(c, "extra_procs", []) + [imp]
    expect(imp.stdout.readline().strip() == "ready", "the impostor did not start")
    # Node 1 asks every peer for their segments: a Hello-free call the
    # impostor would answer.
    r = n1.ctl("segments", "--cluster")
    expect(r.returncode == 0, "tetherctl segments --cluster: " + r.stdout + r.stderr)
    # A fetch needs node 2's data endpoint: a Hello, answered "node 2".
    r = n1.tt("map", "--segid", (2 << 48) | (1 << 32) | 1, "--len", 4096)
    imp.kill()
    out = imp.communicate(timeout=10)[0]
    expect("served" not in out, "node 1 talked to the impostor:\n" + out)
    wait_log(n1, r"TLS: the peer reached as tether-node-2 presented a certificate for "
             r"tether-node-3(, tether-node)?, not tether-node-2: connection refused")
    st = status(n1)
    p2 = [p for p in st["peers"] if p["node_id"] == 2][0]
    expect(not p2["reachable"], "node 1 shows the impostor as node 2, reachable: %s" % p2)
    # Node 3 (the real one) is still fine.
    e = Exporter(n3, 4096, 5)
    map_ok(n1, "--segid", e.segid, "--len", 4096, "--verify", 5)
    e.close()


@with_nodes(3)
def test_server_refuses_a_client_with_another_nodes_certificate(c):
    """The impostor calls node 1 with node 3's certificate and speaks for
    node 2: node 1 must refuse (PERMISSION_DENIED) and log it; the same
    impostor speaking for node 3 (its own certificate) is answered."""
    n1, n3 = c.node(1), c.node(3)
    args = [impostor_path(c), "call", "%s:7600" % n1.ip, c.certs + "/ca.pem",
            "%s/node-3.pem" % c.certs, "%s/node-3.key" % c.certs, "1"]
    r = n3.run(args + ["2"])
    expect(r.stdout.startswith("error code=7:") and "not node 2's" in r.stdout,
           "node 1 answered node 3's certificate speaking for node 2: " + r.stdout + r.stderr)
    wait_log(n1, r"TLS: refused Hello from \S+ speaking for node 2: its certificate names "
             r"tether-node-3")
    r = n3.run(args + ["3"])
    expect(r.stdout.startswith("ok node_id=1"), "node 1 refused node 3 as itself: " + r.stdout)


@with_nodes(2)
def test_reload_rotates_the_certificate(c):
    """A new key and certificate for node 1 (same CA); SIGHUP: new
    connections get the new certificate, the cluster works with it. A bad
    file is refused and the certificate in use stays; `tetherctl reload`
    takes a good one."""
    n1, n2 = c.node(1), c.node(2)
    pem = "%s/node-1.pem" % c.certs
    old = cert_serial(pem)
    expect(presented_serial(c, n2, n1) == old, "node 1 does not present its certificate")
    c.make_certs("node", c.ca_dir, c.certs, 1)
    new = cert_serial(pem)
    expect(new != old, "make-certs made the same serial twice")
    n1.daemon.send_signal(signal.SIGHUP)
    wait_log(n1, r"TLS: reloaded: certificate serial %s" % new)
    deadline = time.time() + 15
    seen = None
    while time.time() < deadline:
        seen = presented_serial(c, n2, n1)
        if seen == new:
            break
        time.sleep(0.2)
    expect(seen == new, "after SIGHUP node 1 presents serial %s, not the new %s" % (seen, new))
    expect(status(n1)["tls"]["serial"] == new, "tetherctl status shows the old certificate")
    # As a client too: node 2's place taken by a recorder with node 2's real
    # certificate; node 1's new connection to it presents the new one.
    expect(n2.stop() == 0, "node 2 did not stop cleanly")
    rec = n2.popen([impostor_path(c), "serve", "%s:7600" % n2.ip, c.certs + "/ca.pem",
                    "%s/node-2.pem" % c.certs, "%s/node-2.key" % c.certs, "2"],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c.extra_procs = getattr(c, "extra_procs", []) + [rec]
    expect(rec.stdout.readline().strip() == "ready", "the recorder did not start")
    r = n1.ctl("segments", "--cluster")
    expect(r.returncode == 0, "tetherctl segments --cluster: " + r.stdout + r.stderr)
    rec.kill()
    out = rec.communicate(timeout=10)[0]
    m = re.search(r"^served ListSegments from \S+ cert=(.*)$", out, re.M)
    expect(m, "node 1 did not reach node 2's address: " + out)
    client_pem = os.path.join(c.dir, "client.pem")
    with open(client_pem, "w") as f:
        f.write(m.group(1).replace("|", "\n"))
    expect(cert_serial(client_pem) == new, "node 1 presents serial %s as a client, not the new %s"
           % (cert_serial(client_pem), new))
    # A new connection from node 2 (restarted: new channels) works.
    n2.start()
    e = Exporter(n1, 64 * 1024, 9)
    map_ok(n2, "--segid", e.segid, "--len", 64 * 1024, "--verify", 9)
    e.close()
    # A bad certificate file: refused, the one in use stays.
    good = open(pem).read()
    with open(pem, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    n1.daemon.send_signal(signal.SIGHUP)
    wait_log(n1, r"TLS: reload refused, still using certificate serial %s .*holds no PEM "
             r"certificate" % new)
    r = n1.ctl("reload")
    expect(r.returncode != 0 and "no PEM certificate" in r.stderr,
           "tetherctl reload took a bad certificate: " + r.stdout + r.stderr)
    # Another node's certificate (a valid one) is refused too.
    with open(pem, "w") as f:
        f.write(open("%s/node-2.pem" % c.certs).read())
    r = n1.ctl("reload")
    expect(r.returncode != 0, "tetherctl reload took node 2's certificate: " + r.stdout)
    expect(presented_serial(c, n2, n1) == new, "node 1 dropped its certificate after a bad one")
    with open(pem, "w") as f:
        f.write(good)
    r = n1.ctl("reload")
    expect(r.returncode == 0 and new in r.stdout, "tetherctl reload: " + r.stdout + r.stderr)


@with_nodes(2)
def test_expiry_is_warned_about(c):
    """A certificate that expires in two days: the log warns at start and
    at reload, and tetherctl status shows the date."""
    n1 = c.node(1)
    c.make_certs("node", c.ca_dir, c.certs, 1, "--days", 2)
    r = n1.ctl("reload")
    expect(r.returncode == 0, "tetherctl reload: " + r.stdout + r.stderr)
    # Whole days left, rounded down: 1, or 2 within the second it was made.
    wait_log(n1, r"TLS: this node's certificate expires \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in [12] "
             r"days; warning at 30")
    st = status(n1)
    expect(st["tls"]["days_left"] <= 2, "tetherctl status: %s" % st["tls"])
    expect(n1.stop() == 0, "node 1 did not stop cleanly")
    before = log_of(n1).count("this node's certificate expires")
    n1.start()
    wait_log(n1, r"up: incarnation")
    expect(log_of(n1).count("this node's certificate expires") > before,
           "no expiry warning at start")
    r = n1.ctl("status")
    expect(re.search(r"certificate\s+serial \S+, expires .* \([12] days\)", r.stdout),
           "tetherctl status:\n" + r.stdout)


if __name__ == "__main__":
    run([test_certificates_name_nodes_and_the_ca_key_stays_off_nodes,
         test_client_refuses_a_server_with_another_nodes_certificate,
         test_server_refuses_a_client_with_another_nodes_certificate,
         test_reload_rotates_the_certificate,
         test_expiry_is_warned_about])
