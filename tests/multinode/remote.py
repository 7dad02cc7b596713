"""Processes on another machine (a second VM of tests/vm/run's pair stage)
that look like subprocess.Popen objects, so the multi-node tests run
unchanged with some nodes remote.

The other machine runs tests/multinode/remote.py --serve HOST:PORT (the
agent). Protocol: one TCP connection per process; the first line is JSON
{"op": "spawn", "argv", "env", "stdin": bool, "stdout": "pipe"|"devnull"|
"file:PATH", "stderr": "stdout"|"devnull"|"file:PATH"}; the agent answers one
JSON line {"pid": N} (or {"error": "..."}), then the connection carries the
process's stdin (to the agent) and stdout (from it); a half-close ends stdin.
Control requests use short connections: {"op": "wait", "pid", "timeout"} ->
{"rc": int|null}, {"op": "signal", "pid", "sig"} -> {"ok": bool},
{"op": "run", "argv", "env", "timeout"} -> {"rc", "stdout", "stderr"},
{"op": "clock"} -> {"mono_ns": int}, {"op": "quit"}.

Everything is bounded: connections time out, the agent exits after its
--lifetime. Only the project's own VMs talk to it (a private virtual link).
"""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def _request(addr, msg, timeout=60):
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall((json.dumps(msg) + "\n").encode())
        f = s.makefile("rb")
        line = f.readline()
        if not line:
            raise RuntimeError("agent %s:%d closed the connection" % addr)
        return json.loads(line)


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


class _SockWriter(io.RawIOBase):
    def __init__(self, sock):
        self.sock = sock

    def writable(self):
        return True

    def write(self, b):
        self.sock.sendall(b)
        return len(b)

    def close(self):
        if not self.closed:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        super().close()


class RemoteProc:
    """A subset of subprocess.Popen: stdin, stdout, pid, returncode, poll,
    wait, communicate, send_signal, kill, terminate."""

    def __init__(self, addr, argv, env=None, stdin=None, stdout=None, stderr=None, text=True):
        self.addr = addr
        self.args = list(argv)
        self.returncode = None
        spec = {"op": "spawn", "argv": [str(a) for a in argv], "env": env or {},
                "stdin": stdin == subprocess.PIPE}
        spec["stdout"] = "pipe" if stdout == subprocess.PIPE else "devnull"
        if stderr == subprocess.STDOUT:
            spec["stderr"] = "stdout"
        elif stderr == subprocess.PIPE:
            raise ValueError("RemoteProc: stderr=PIPE is not supported (use STDOUT)")
        else:
            spec["stderr"] = "devnull"
        for name, v in (("stdout", stdout), ("stderr", stderr)):
            if hasattr(v, "name") and isinstance(getattr(v, "name"), str):
                spec[name] = "file:" + v.name  # a file on a shared directory
        self.sock = socket.create_connection(addr, timeout=60)
        self.sock.settimeout(None)
        self.sock.sendall((json.dumps(spec) + "\n").encode())
        self._reader = self.sock.makefile("rb")
        reply = json.loads(self._reader.readline() or b'{"error": "agent closed"}')
        if "error" in reply:
            raise OSError("remote spawn of %s: %s" % (argv[0], reply["error"]))
        self.pid = reply["pid"]
        self.stdout = None
        self.stdin = None
        if stdout == subprocess.PIPE:
            self.stdout = io.TextIOWrapper(self._reader) if text else self._reader
        if stdin == subprocess.PIPE:
            w = io.BufferedWriter(_SockWriter(self.sock))
            self.stdin = io.TextIOWrapper(w, write_through=True) if text else w
        else:
            self.sock.shutdown(socket.SHUT_WR)  # the remote stdin is /dev/null

    def poll(self):
        if self.returncode is None:
            r = _request(self.addr, {"op": "wait", "pid": self.pid, "timeout": 0})
            self.returncode = r.get("rc")
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is not None:
            return self.returncode
        t = 3600 if timeout is None else timeout
        r = _request(self.addr, {"op": "wait", "pid": self.pid, "timeout": t}, timeout=t + 30)
        if r.get("rc") is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = r["rc"]
        return self.returncode

    def communicate(self, input=None, timeout=None):
        if input is not None and self.stdin:
            self.stdin.write(input)
        if self.stdin:
            try:
                self.stdin.close()
            except OSError:
                pass
        out = None
        if self.stdout:
            self.sock.settimeout(timeout)
            try:
                out = self.stdout.read()
            except socket.timeout:
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return out, None

    def send_signal(self, sig):
        if self.returncode is None:
            _request(self.addr, {"op": "signal", "pid": self.pid, "sig": int(sig)})

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)


def run(addr, argv, env=None, timeout=120):
    """subprocess.run(argv, capture_output=True, text=True) on the agent."""
    r = _request(addr, {"op": "run", "argv": [str(a) for a in argv], "env": env or {},
                        "timeout": timeout}, timeout=timeout + 30)
    if "error" in r:
        raise OSError("remote run of %s: %s" % (argv[0], r["error"]))
    if r.get("rc") is None:
        raise subprocess.TimeoutExpired(argv, timeout)
    return subprocess.CompletedProcess(argv, r["rc"], r["stdout"], r["stderr"])


def clock_offset_ns(addr, samples=15):
    """Remote CLOCK_MONOTONIC minus ours, from the sample with the shortest
    round trip; returns (offset, error bound = half that round trip)."""
    best = None
    for _ in range(samples):
        t0 = time.monotonic_ns()
        r = _request(addr, {"op": "clock"})
        t1 = time.monotonic_ns()
        if best is None or t1 - t0 < best[1]:
            best = (r["mono_ns"] - (t0 + t1) // 2, t1 - t0)
    return best[0], best[1] // 2


# ---------------------------------------------------------------- agent

class _Agent:
    def __init__(self):
        self.procs = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def spawn(self, conn, f, spec):
        def sink(kind):
            if kind == "pipe":
                return subprocess.PIPE
            if kind == "stdout":
                return subprocess.STDOUT
            if kind.startswith("file:"):
                return open(kind[5:], "ab")
            return subprocess.DEVNULL
        env = dict(os.environ)
        env.update(spec.get("env", {}))
        try:
            p = subprocess.Popen(spec["argv"], env=env,
                                 stdin=subprocess.PIPE if spec.get("stdin") else subprocess.DEVNULL,
                                 stdout=sink(spec.get("stdout", "devnull")),
                                 stderr=sink(spec.get("stderr", "devnull")))
        except OSError as e:
            conn.sendall((json.dumps({"error": str(e)}) + "\n").encode())
            return
        with self.lock:
            self.procs[p.pid] = p
        conn.sendall((json.dumps({"pid": p.pid}) + "\n").encode())

        def pump_in():
            try:
                while True:
                    b = f.read1(65536)
                    if not b:
                        break
                    if p.stdin:
                        p.stdin.write(b)
                        p.stdin.flush()
            except (OSError, ValueError):
                pass
            if p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        t = threading.Thread(target=pump_in, daemon=True)
        t.start()
        if p.stdout:
            try:
                while True:
                    b = p.stdout.read1(65536)
                    if not b:
                        break
                    conn.sendall(b)
            except OSError:
                pass
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        p.wait()
        t.join(timeout=5)

    def handle(self, conn):
        try:
            conn.settimeout(None)
            f = conn.makefile("rb")
            msg = json.loads(f.readline() or b"{}")
            op = msg.get("op")
            if op == "spawn":
                self.spawn(conn, f, msg)
                return
            if op == "wait":
                with self.lock:
                    p = self.procs.get(msg["pid"])
                rc = None
                if p is not None:
                    try:
                        rc = p.wait(timeout=msg.get("timeout", 0) or 0.001)
                    except subprocess.TimeoutExpired:
                        rc = None
                reply = {"rc": rc}
            elif op == "signal":
                with self.lock:
                    p = self.procs.get(msg["pid"])
                ok = p is not None and p.poll() is None
                if ok:
                    p.send_signal(msg["sig"])
                reply = {"ok": ok}
            elif op == "run":
                env = dict(os.environ)
                env.update(msg.get("env", {}))
                try:
                    p = subprocess.run(msg["argv"], env=env, capture_output=True, text=True,
                                       errors="replace", timeout=msg.get("timeout", 120))
                    reply = {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
                except subprocess.TimeoutExpired:
                    reply = {"rc": None}
                except OSError as e:
                    reply = {"error": str(e)}
            elif op == "clock":
                reply = {"mono_ns": time.monotonic_ns()}
            elif op == "quit":
                self.stop.set()
                reply = {"ok": True}
            else:
                reply = {"error": "unknown op %r" % op}
            conn.sendall((json.dumps(reply) + "\n").encode())
        except (OSError, ValueError) as e:
            print("agent: %s" % e, file=sys.stderr, flush=True)
        finally:
            conn.close()

    def serve(self, addr, lifetime):
        srv = socket.create_server(addr, reuse_port=False)
        srv.settimeout(0.5)
        deadline = time.time() + lifetime
        print("agent: listening on %s:%d" % addr, flush=True)
        while not self.stop.is_set() and time.time() < deadline:
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        with self.lock:
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
        print("agent: done", flush=True)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True, help="HOST:PORT to listen on")
    ap.add_argument("--lifetime", type=float, default=1800)
    a = ap.parse_args()
    _Agent().serve(parse_addr(a.serve), a.lifetime)
