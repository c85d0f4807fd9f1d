"""Fixtures and helpers of the `paraserve serve` end-to-end tests.

`ServerProcess` starts `build/paraserve serve` (PARASERVE_BIN) on a free
loopback port with the embedded model, waits for GET /health, and on stop()
sends SIGTERM and checks the exit status.  `server` is one shared default
server for the module that imports it; tests needing other settings start
their own with `start_server(...)`.
"""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
import urllib.error
import urllib.request

import pytest

THREADS = int(os.environ.get("PARASERVE_TEST_THREADS", "2"))


def sanitized(binary):
    """The binary is built with ASan: several times slower, and its freed
    memory sits in quarantine (RSS says nothing about leaks; its leak check
    at exit does)."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def sse_events(lines):
    """Parse SSE lines into [{"id","event","data"}]."""
    out, cur = [], {}
    for line in lines:
        if line == "":
            if cur:
                out.append(cur)
            cur = {}
        elif line.startswith("id: "):
            cur["id"] = int(line[4:])
        elif line.startswith("event: "):
            cur["event"] = line[7:]
        elif line.startswith("data: "):
            cur["data"] = json.loads(line[6:])
    if cur:
        out.append(cur)
    return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    """Until something listens on the loopback port (RuntimeError after timeout s)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


@contextmanager
def mock_agent():
    """The Python mock agent (agents/mock_agent.py) on a free port: yields the port."""
    port = free_port()
    p = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "agents" / "mock_agent.py"),
                          str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        p.kill()
        p.wait()


class ServerProcess:
    def __init__(self, binary, model, *args, fd_limit=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = f"/tmp/paraserve-test-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
             "--threads", str(THREADS), *map(str, args)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env} if env else None,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit)))
            if fd_limit else None)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"server did not become healthy:\n{self.output()}")
            time.sleep(0.1)

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def metrics(self):
        """GET /metrics parsed into {'name{labels}': value}."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$", line)
            assert m, f"bad metrics line: {line!r}"
            out[m.group(1)] = float(m.group(2))
        return out

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def start_server(paraserve_bin, model_path):
    """start_server(*args, fd_limit=None, env=None) -> ServerProcess (fd_limit:
    the server's RLIMIT_NOFILE, soft and hard; env: variables added to the
    server's environment); all are stopped (and must exit 0)
    at the end of the module."""
    started = []

    def _start(*args, **kw):
        s = ServerProcess(paraserve_bin, model_path, *args, **kw)
        started.append(s)
        return s

    yield _start
    for s in started:
        rc = s.stop()
        assert rc == 0, f"server exited with {rc}:\n{s.output()[-2000:]}"


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("--max-batch", 64, "--kv-blocks", 1024)


def wait_for(pred, timeout=30, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()
