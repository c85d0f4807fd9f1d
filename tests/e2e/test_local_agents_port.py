"""`local` agents (the served model with a role prompt) call this server's own
/v1/chat/completions.  They do it on a port of their own (127.0.0.1, ephemeral,
named in the log), outside the client connection cap and authenticated by a
per-process token instead of an API key:

- clients waiting on /v1/tasks that hold every client slot (--max-connections)
  no longer starve their own agent calls (before: every task failed at its
  deadline, the agent calls queued in the listen backlog behind them);
- with API keys configured, local agents work (before: HTTP 401 on every call);
- the port serves nothing but POST /v1/chat/completions with the token: 403
  without it or with a wrong one, 404 for any other route;
- the port has a cap of its own (the pool's local concurrency + 16): a local
  process flooding it waits in the backlog and never exhausts descriptors
  nor stalls the client port;
- the token never goes through a proxy set in the server's environment
  (http_proxy): loopback requests never use one;
- without a local port (127.0.0.1:0 cannot be bound: an LD_PRELOAD shim),
  serve still starts and local calls fail with a clear error.
"""
import http.client
import json
import re
import socket
import threading
import time

import pytest

from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

KEY = "sk-local-port-test"
AGENTS = {"agents": [{
    "name": "solver", "kind": "local", "description": "Answers. Args: {\"input\": text}.",
    "system_prompt": "Answer in one word.", "max_tokens": 4, "timeout_ms": 60000,
    "max_concurrency": 8, "retries": 0}]}
TASK = {"input": "q", "deadline_ms": 20000,
        "script": [{"calls": [{"id": "c1", "to": "solver", "args": {"input": "Say hi"}}]},
                   {"final": {"answer": "{{c1}}", "uses": ["c1"]}}]}


@pytest.fixture(scope="module")
def srv(start_server, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("agents") / "agents.json"
    path.write_text(json.dumps(AGENTS))
    return start_server("--kv-blocks", 256, "--max-connections", 2, "--api-key", KEY, "--agents", str(path))


def local_port(srv):
    m = re.search(r"local agents call http://127\.0\.0\.1:(\d+)/v1/chat/completions", srv.output())
    assert m, srv.output()[-2000:]
    return int(m.group(1))


def post_task(port, results, i):
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/tasks", json.dumps(TASK),
              {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = c.getresponse()
    results[i] = (r.status, json.loads(r.read()), time.monotonic() - t0)
    c.close()


def test_tasks_holding_every_client_slot_still_reach_their_local_agent(srv):
    # 2 clients, cap 2: every client slot is held by a request waiting for its task's local call
    assert wait_for(lambda: srv.metrics()["paraserve_http_connections_open"] == 1, timeout=10)
    results = [None, None]
    threads = [threading.Thread(target=post_task, args=(srv.port, results, i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for status, body, took in results:
        assert status == 200, body
        assert body["status"] == "completed", body
        assert [c["status"] for c in body["calls"]] == ["ok"], body["calls"]
        assert took < 15, f"{took:.1f} s: the agent call waited behind the client cap"


def test_local_agent_works_with_api_keys(srv):
    results = [None]
    post_task(srv.port, results, 0)
    status, body, _ = results[0]
    assert status == 200 and body["calls"][0]["status"] == "ok", body
    assert "401" not in json.dumps(body)
    assert body["output"] == body["calls"][0]["result"], body


def request(port, method, path, headers, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = c.getresponse()
    out = (r.status, json.loads(r.read() or b"{}"))
    c.close()
    return out


CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("headers", [
    {},
    {"X-Paraserve-Local": "0" * 32},
    {"X-Paraserve-Local": ""},
    {"Authorization": f"Bearer {KEY}"},   # the API key is not the local token
], ids=["none", "wrong", "empty", "api-key"])
def test_local_port_refuses_requests_without_the_token(srv, headers):
    status, body = request(local_port(srv), "POST", "/v1/chat/completions",
                           {"Content-Type": "application/json", **headers}, CHAT)
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"


def test_local_port_serves_nothing_else(srv):
    # the token is not observable from outside the process; only the refusal paths are
    port = local_port(srv)
    for method, path in [("GET", "/metrics"), ("GET", "/health"), ("POST", "/v1/tasks"), ("GET", "/v1/models")]:
        status, body = request(port, method, path, {"Content-Type": "application/json"},
                               TASK if method == "POST" else None)
        assert status == 403, (method, path, body)


def test_client_port_still_enforces_the_cap_and_keys(srv):
    status, body = request(srv.port, "POST", "/v1/chat/completions", {"Content-Type": "application/json"}, CHAT)
    assert status == 401, body
    m = srv.metrics()
    assert m["paraserve_http_connections_max"] == 2


def test_local_port_has_its_own_cap(srv):
    # cap = the pool's local max_concurrency (8) + 16 = 24
    assert re.search(r"local agents call \S+ \(at most 24 connections\)", srv.output()), srv.output()[-1500:]
    port = local_port(srv)
    # the executor's idle keep-alive connections from earlier tests stay open (and count)
    base = srv.metrics()["paraserve_local_connections_open"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(24)]
    extra = socket.create_connection(("127.0.0.1", port), timeout=5)   # completes in the kernel backlog
    extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    extra.settimeout(1.5)
    try:
        got = extra.recv(64)
    except socket.timeout:
        got = None
    assert got is None, f"the 25th connection was served at the cap: {got!r}"
    m = srv.metrics()
    assert m["paraserve_local_connections_max"] == 24, m
    assert m["paraserve_local_connections_open"] == 24, m
    assert m["paraserve_local_connections_accepted_total"] >= 24, m
    assert m["paraserve_http_connections_open"] == 1, m   # the client port's count is its own
    # the client port is unaffected
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    c.request("GET", "/health")
    assert c.getresponse().status == 200
    c.close()
    assert time.monotonic() - t0 < 1.0
    # (the executor's idle keep-alive connections from earlier tests count too: free them all)
    for h in held:
        h.close()
    extra.settimeout(5)
    assert extra.recv(64).startswith(b"HTTP/1.1 403"), "not served once slots freed"
    extra.close()
    assert wait_for(lambda: srv.metrics()["paraserve_local_connections_open"] == base, timeout=5), \
        (base, srv.metrics()["paraserve_local_connections_open"])


class LoggingProxy:
    """A TCP listener that records whatever a client sends it and answers 502."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen = b""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.settimeout(2)
            try:
                self.seen += c.recv(65536)
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            c.close()


def test_local_token_never_goes_through_a_proxy(start_server, tmp_path):  # noqa: F811
    proxy = LoggingProxy()
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(AGENTS))
    s = start_server("--kv-blocks", 128, "--agents", str(path),
                     env={"http_proxy": f"http://127.0.0.1:{proxy.port}", "no_proxy": ""})
    results = [None]
    post_task(s.port, results, 0)
    status, body, _ = results[0]
    proxy.sock.close()
    assert proxy.seen == b"", proxy.seen[:300]
    assert status == 200 and body["calls"][0]["status"] == "ok", body


BIND_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
/* bind() to 127.0.0.1 port 0 fails (EADDRNOTAVAIL); every other bind is the real one */
int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real)
        real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (sa->sa_family == AF_INET && in->sin_port == 0 && in->sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    return real(fd, sa, len);
}
"""


def test_without_a_local_port_serve_starts_and_local_calls_fail_clearly(start_server, tmp_path):  # noqa: F811
    import os
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the bind() shim")
    if "asan" in os.environ.get("PARASERVE_BIN", ""):
        pytest.skip("LD_PRELOAD beside the ASan runtime")
    src, so = tmp_path / "shim.c", tmp_path / "shim.so"
    src.write_text(BIND_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(AGENTS))
    s = start_server("--kv-blocks", 128, "--agents", str(path), env={"LD_PRELOAD": str(so)})
    out = s.output()
    assert "cannot listen on 127.0.0.1 for the local agents; local agents will fail" in out, out[-1500:]
    assert "local agents call nothing (no local port)" in out, out[-1500:]
    assert s.metrics()["paraserve_local_connections_max"] == 0
    results = [None]
    post_task(s.port, results, 0)
    status, body, _ = results[0]
    assert status == 200, body
    call = body["calls"][0]
    assert call["status"] == "exec_error" and "none is reachable" in call["error"], call
    # the client port serves as usual
    status, reply = request(s.port, "POST", "/v1/chat/completions", {"Content-Type": "application/json"}, CHAT)
    assert status == 200, reply
