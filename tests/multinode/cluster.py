"""A local tether cluster for tests and the demo.

Each node is a real tetherd in its own network namespace, joined to the
others through veth pairs on a bridge that lives in a hub namespace, with
mutual TLS between nodes (certificates made by deploy/make-certs). Clients
are the real `tt` program linked against libtether. Everything is torn
down on exit; all waits are bounded.
"""
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

import remote

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


class Exporter:
    """A `tt export` process: exports a pattern-filled range."""

    def __init__(self, node, size, seed, name=None, mode=0o644, extra=(), prefix=()):
        args = list(prefix) + [node.cluster.tt, "export", "--size", str(size), "--seed",
                               str(seed), "--mode", oct(mode).replace("0o", "0")] + list(extra)
        if name:
            args += ["--name", name]
        self.proc = node.popen(args, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.segid = None
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("exporter died: rc=%s" % self.proc.wait(5))
            if line.startswith("segid="):
                self.segid = int(line.split("=")[1])
            if line.strip() == "ready":
                return
            if line.startswith("error"):
                raise RuntimeError("exporter: " + line.strip())
        raise RuntimeError("exporter did not get ready")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def verify(self, seed, off, length):
        return self.command("verify %d %d %d" % (seed, off, length))

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class InteractiveClient:
    """A client process that prints "ready", then answers one line per
    command line on stdin (tt map --interactive, xpmem_share consume ...)."""

    def __init__(self, node, args, what):
        self.proc = node.popen(args, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError("%s: %s" % (what, line))

    def command(self, line, timeout=30):
        """Returns the reply, or 'signal:N' if the process died by signal N."""
        self.send(line)
        return self.reply(timeout)

    def send(self, line):
        """Sends a command without waiting for its reply (see reply)."""
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def reply(self, timeout):
        """The reply to the last command sent, 'timeout', or how the client
        died ('signal:N', 'exit:N')."""
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return "timeout"
        out = self.proc.stdout.readline().strip()
        if out:
            return out
        rc = self.proc.wait(10)
        return "signal:%d" % -rc if rc < 0 else "exit:%d" % rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Mapper(InteractiveClient):
    """A `tt map --interactive` process holding an attachment."""

    def __init__(self, node, segid, offset=0, length=4096, rdonly=False):
        args = [node.cluster.tt, "map", "--segid", str(segid), "--offset", str(offset),
                "--len", str(length), "--interactive", "--quiet"]
        if rdonly:
            args.append("--rdonly")
        super().__init__(node, args, "mapper")


class Node:
    def __init__(self, cluster, node_id):
        self.cluster = cluster
        self.id = node_id
        self.ns = "%s-n%d" % (cluster.prefix, node_id)
        self.ip = cluster.ips.get(node_id, "%s.%d" % (cluster.subnet, node_id))
        self.agent = cluster.agents.get(node_id)  # (host, port) of a remote.py agent
        # Sockets stay off the shared 9p directory of the pair mode.
        sockdir = cluster.sockdir or cluster.dir
        self.sock = os.path.join(sockdir, "n%d.sock" % node_id)
        self.admin = os.path.join(sockdir, "a%d.sock" % node_id)
        self.log = os.path.join(cluster.dir, "n%d.log" % node_id)
        # Each daemon's own state directory (its segment epoch survives a
        # restart of that daemon: docs/consistency.md).
        self.state_dir = os.path.join(sockdir, "state-n%d" % node_id)
        self.daemon = None
        # A config file holding this node's --peers line (test_reload.py):
        # start() passes --flagfile=peers_file instead of --peers, so that a
        # reload reads the file again.
        self.peers_file = None

    def env(self, client=True):
        e = dict(os.environ)
        e["TETHER_SOCKET"] = self.sock
        e["TETHER_ADMIN_SOCKET"] = self.admin
        if client:
            # Tests expect clients to die by SIGBUS/SIGSEGV; under ASan let
            # the signal through instead of turning it into an abort.
            e["ASAN_OPTIONS"] = (e.get("ASAN_OPTIONS", "") +
                                 ":handle_segv=0:handle_sigbus=0").lstrip(":")
        return e

    def netns_cmd(self, args):
        if self.cluster.flat:
            return list(args)
        return ["ip", "netns", "exec", self.ns] + list(args)

    def popen(self, args, env=None, **kw):
        """subprocess.Popen of a command on this node (its namespace, or its
        machine for a remote node); env defaults to self.env()."""
        env = self.env() if env is None else env
        if self.agent:
            keep = {k: v for k, v in env.items()
                    if k.startswith("TETHER_") or k.endswith("SAN_OPTIONS")}
            kw.pop("text", None)
            return remote.RemoteProc(self.agent, list(args), env=keep, **kw)
        return subprocess.Popen(self.netns_cmd(args), env=env, **kw)

    def run(self, args, timeout=120):
        """subprocess.run(capture_output=True, text=True) on this node."""
        args = [str(a) for a in args]
        if self.agent:
            return remote.run(self.agent, args, env={k: v for k, v in self.env().items()
                                                     if k.startswith("TETHER_") or
                                                     k.endswith("SAN_OPTIONS")},
                              timeout=timeout)
        return subprocess.run(self.netns_cmd(args), env=self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def has_socket(self):
        if self.agent:
            return self.run(["test", "-S", self.sock], timeout=30).returncode == 0
        return os.path.exists(self.sock)

    def start(self, budget_mb=256):
        c = self.cluster
        peers = ",".join("%d=%s:7600" % (n.id, n.ip) for n in c.nodes if n.id != self.id)
        # extra_args: for every node, or a dict of them by node id
        extra = c.extra_args.get(self.id, ()) if isinstance(c.extra_args, dict) else c.extra_args
        args = [c.tetherd] + (["--flagfile=" + c.flagfile] if c.flagfile else [])
        args += ["--node_id=%d" % self.id, "--local_socket=" + self.sock,
                 "--admin_socket=" + self.admin, "--peer_listen=%s:7600" % self.ip,
                 # its own address: in a flat cluster every node shares 127.0.0.1
                 "--metrics_listen=%s:9640" % self.ip,
                 ("--flagfile=" + self.peers_file) if self.peers_file else ("--peers=" + peers),
                 "--cache_budget_mb=%d" % budget_mb,
                 "--rpc_timeout_ms=3000", "--state_dir=" + self.state_dir] + list(extra)
        # A test cluster is one administrative domain and its clients run as
        # root: every node trusts the others' root (no root squash), unless
        # the test says otherwise (test_trust.py: --trusted_peers=...).
        if not any(str(a).startswith("--trusted_peers") for a in extra):
            args.append("--trusted_peers=" + ",".join(str(n.id) for n in c.nodes
                                                       if n.id != self.id))
        if c.rdma:
            args.append("--rdma=on")
        if c.tls:
            args += ["--tls_ca=%s/ca.pem" % c.certs,
                     "--tls_cert=%s/node-%d.pem" % (c.certs, self.id),
                     "--tls_key=%s/node-%d.key" % (c.certs, self.id)]
        else:
            args.append("--insecure_peers")
        if self.agent:
            self.run(["sh", "-c", "mkdir -p %s %s && rm -f %s" % (
                os.path.dirname(self.sock), self.state_dir, self.sock)])
        else:
            os.makedirs(self.state_dir, exist_ok=True)
            if os.path.exists(self.sock):
                os.unlink(self.sock)
        logf = open(self.log, "a")
        self.daemon = self.popen(args, stdout=logf, stderr=logf, env=self.env(client=False))
        deadline = time.time() + 30
        while not self.has_socket():
            if self.daemon.poll() is not None:
                try:  # the log goes with the cluster's directory: its end here
                    with open(self.log) as f:
                        tail = "".join(f.readlines()[-5:])
                except OSError:
                    tail = ""
                raise RuntimeError("tetherd %d exited (status %s): see %s; it ends:\n%s" %
                                   (self.id, self.daemon.returncode, self.log, tail))
            if time.time() > deadline:
                raise RuntimeError("tetherd %d did not start" % self.id)
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                return self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                # A hung shutdown is a bug: keep the threads' stacks for it.
                if shutil.which("gdb") and not self.agent:
                    r = subprocess.run(["gdb", "-p", str(self.daemon.pid), "-batch", "-ex",
                                        "thread apply all bt"], capture_output=True, text=True,
                                       timeout=60)
                    with open(self.log, "a") as f:
                        f.write("\n--- tetherd did not stop in 20 s; stacks ---\n" + r.stdout)
                self.daemon.kill()
                self.daemon.wait(10)
                return None
        return self.daemon.returncode if self.daemon else None

    def tt(self, *args, timeout=120):
        return self.run([self.cluster.tt] + list(args), timeout=timeout)

    def ctl(self, *args, timeout=30):
        if self.agent:
            return self.run([self.cluster.tetherctl] + list(args), timeout=timeout)
        return subprocess.run([self.cluster.tetherctl] + list(args), env=self.env(),
                              capture_output=True, text=True, timeout=timeout)


class Cluster:
    def __init__(self, n=3, build_dir=None, budgets=None, tls=True, extra_args=(),
                 bin_path=None, flagfile=None):
        """bin_path: a PATH-like list of directories to take tetherd and
        tetherctl from instead of a build tree (tests/packaging/run: the
        installed /usr/sbin:/usr/bin); such a cluster has no `tt`.
        flagfile: every tetherd starts with --flagfile=THIS first (the
        installed /etc/tether/tetherd.conf); the cluster's own flags after it
        override what they name."""
        self.extra_args = extra_args
        self.flagfile = flagfile
        self.make_certs_path = os.path.join(REPO, "deploy", "make-certs")
        if bin_path:
            self.tetherd = shutil.which("tetherd", path=bin_path)
            self.tetherctl = shutil.which("tetherctl", path=bin_path)
            if not self.tetherd or not self.tetherctl:
                raise RuntimeError("no tetherd/tetherctl in %s" % bin_path)
            self.tt = None
            wanted = (self.tetherd, self.tetherctl)
        else:
            build_dir = build_dir or os.environ.get("TETHER_BUILD_DIR",
                                                    os.path.join(REPO, "build"))
            self.tetherd = os.path.join(build_dir, "daemon", "tetherd")
            self.tetherctl = os.path.join(build_dir, "client", "tetherctl")
            self.tt = os.path.join(build_dir, "tests", "tt")
            wanted = (self.tetherd, self.tetherctl, self.tt)
        for f in wanted:
            if not os.path.exists(f):
                raise RuntimeError("missing %s: build first" % f)
        self.n = n
        self.tls = tls
        tag = os.getpid() % 100000
        self.prefix = "tt%d" % tag
        self.subnet = "10.%d.%d" % (100 + tag % 100, (tag // 100) % 250)
        # TETHER_CLUSTER_NET=pair (tests/vm/run's two-VM stage): the network
        # and any rxe device exist already; TETHER_CLUSTER_IPS="1=a,2=b,..."
        # gives each node's address, TETHER_CLUSTER_REMOTE="2=host:port" the
        # remote.py agent of nodes on the other VM, TETHER_CLUSTER_SHARED a
        # directory both machines see at the same path (certificates, logs).
        self.pair = os.environ.get("TETHER_CLUSTER_NET") == "pair"
        self.ips, self.agents = {}, {}
        self.sockdir = None
        shared = None
        if self.pair:
            for item in os.environ.get("TETHER_CLUSTER_IPS", "").split(","):
                if item:
                    k, v = item.split("=", 1)
                    self.ips[int(k)] = v
            for item in os.environ.get("TETHER_CLUSTER_REMOTE", "").split(","):
                if item:
                    k, v = item.split("=", 1)
                    self.agents[int(k)] = remote.parse_addr(v)
            shared = os.environ["TETHER_CLUSTER_SHARED"]
            self.sockdir = os.path.join("/tmp", "tether-sock-%s" % self.prefix)
            os.makedirs(self.sockdir, exist_ok=True)
            os.chmod(self.sockdir, 0o711)
        self.dir = tempfile.mkdtemp(prefix="tether-cluster-", dir=shared)
        os.chmod(self.dir, 0o711)  # unprivileged test clients reach the sockets
        # The CA (its key) stays in its own directory; the nodes' files
        # (node-N.pem/.key, ca.pem) are in certs/ (deploy/make-certs).
        self.ca_dir = os.path.join(self.dir, "ca")
        self.certs = os.path.join(self.dir, "certs")
        self.budgets = budgets or {}
        self.nodes = [Node(self, i) for i in range(1, n + 1)]
        self.hub = self.prefix + "-hub"
        # TETHER_CLUSTER_NET=flat: every node in this network namespace, each
        # with its own address on one dummy link (Soft-RoCE on Linux 6.1
        # works only in the initial namespace). TETHER_CLUSTER_RDMA=1 (flat
        # only): an rdma_rxe device on that link, and tetherd --rdma=on.
        self.flat = os.environ.get("TETHER_CLUSTER_NET", "netns") in ("flat", "pair")
        self.rdma = os.environ.get("TETHER_CLUSTER_RDMA", "0") == "1"
        if self.rdma and not self.flat:
            raise RuntimeError("TETHER_CLUSTER_RDMA=1 needs TETHER_CLUSTER_NET=flat or pair")
        self.dummy = self.prefix + "d"
        self.rxe = self.prefix + "rxe"

    def node(self, i):
        return self.nodes[i - 1]

    def make_certs(self, *args):
        """deploy/make-certs ARGS... (ca CA_DIR | node CA_DIR OUT_DIR ID... [--days N])."""
        sh(self.make_certs_path, *[str(a) for a in args])

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        if self.tls:
            self.make_certs("ca", self.ca_dir)
            self.make_certs("node", self.ca_dir, self.certs, *range(1, self.n + 1))
        if self.pair:
            for node in self.nodes:
                node.start(self.budgets.get(node.id, 256))
            if self.rdma:
                self.expect_rdma_peers()
            return
        if self.flat:
            sh("ip", "link", "add", self.dummy, "type", "dummy")
            for node in self.nodes:
                sh("ip", "addr", "add", node.ip + "/24", "dev", self.dummy)
            sh("ip", "link", "set", self.dummy, "up")
            if self.rdma:
                sh("rdma", "link", "add", self.rxe, "type", "rxe", "netdev", self.dummy)
            for node in self.nodes:
                node.start(self.budgets.get(node.id, 256))
            if self.rdma:
                self.expect_rdma_peers()
            return
        sh("ip", "netns", "add", self.hub)
        sh("ip", "netns", "exec", self.hub, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.hub, "ip", "link", "set", "br0", "up")
        for node in self.nodes:
            sh("ip", "netns", "add", node.ns)
            sh("ip", "netns", "exec", node.ns, "ip", "link", "set", "lo", "up")
            a, b = "%sv%d" % (self.prefix, node.id), "%sp%d" % (self.prefix, node.id)
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", node.ns)
            sh("ip", "link", "set", b, "netns", self.hub)
            sh("ip", "netns", "exec", node.ns, "ip", "link", "set", a, "name", "eth0")
            sh("ip", "netns", "exec", node.ns, "ip", "addr", "add", node.ip + "/24", "dev", "eth0")
            sh("ip", "netns", "exec", node.ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", self.hub, "ip", "link", "set", b, "master", "br0")
            sh("ip", "netns", "exec", self.hub, "ip", "link", "set", b, "up")
        for node in self.nodes:
            node.start(self.budgets.get(node.id, 256))

    def stop(self):
        for p in getattr(self, "extra_procs", []):  # helpers a test started in our namespaces
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                pass
        if self.pair:
            pass  # the pair's network belongs to tests/vm/run
        elif self.flat:
            if self.rdma:
                sh("rdma", "link", "delete", self.rxe, check=False)
            sh("ip", "link", "del", self.dummy, check=False)
        else:
            for node in self.nodes:
                sh("ip", "netns", "del", node.ns, check=False)
            sh("ip", "netns", "del", self.hub, check=False)
        if os.environ.get("TETHER_KEEP_LOGS"):
            print("cluster logs kept in", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def expect_rdma_peers(self):
        """Every daemon must see every peer over rdma (tetherctl status)."""
        import json
        for node in self.nodes:
            r = node.ctl("status", "--json")
            st = json.loads(r.stdout) if r.returncode == 0 else {}
            if not st.get("rdma_address"):
                raise RuntimeError("node %d has no rdma transport: %s" % (node.id, r.stdout + r.stderr))
            for p in st.get("peers", []):
                if p.get("transport") != "rdma":
                    raise RuntimeError("node %d reaches node %d over %r, not rdma: %s" %
                                       (node.id, p.get("node_id"), p.get("transport"), p))

    def rdma_fallbacks(self):
        """Log lines of daemons that fell back from rdma to tcp."""
        out = []
        for node in self.nodes:
            try:
                with open(node.log) as f:
                    out += [l.strip() for l in f if "using tcp for" in l]
            except OSError:
                pass
        return out

    def logs(self):
        out = []
        for node in self.nodes:
            try:
                with open(node.log) as f:
                    out.append("--- node %d ---\n%s" % (node.id, f.read()[-20000:]))
            except OSError:
                pass
        return "\n".join(out)
