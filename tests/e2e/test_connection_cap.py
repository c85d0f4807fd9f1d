"""End-to-end tests of `paraserve serve --max-connections N`: at the cap the
server stops accepting (the next client waits in the listen backlog, its
request unanswered) and accepts again as soon as a connection closes; the
open connections are counted exactly in /metrics (idle ones that never send
a byte, keep-alive, abandoned streams, malformed requests), and the option
is validated against RLIMIT_NOFILE."""
import json
import resource
import socket
import subprocess
import time

import pytest

from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

CAP = 8
OPEN = "paraserve_http_connections_open"
MAX = "paraserve_http_connections_max"
ACCEPTED = "paraserve_http_connections_accepted_total"
PAUSED = 'paraserve_http_accept_paused_total{reason="max_connections"}'


@pytest.fixture(scope="module")
def srv(start_server):  # noqa: F811
    return start_server("--kv-blocks", 64, "--max-connections", CAP)


def connect(srv, timeout=5):
    return socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)


def idle_until_settled(srv):
    """The scrape's own connection is the only one open once the server has
    seen every earlier close (closes are noticed asynchronously)."""
    assert wait_for(lambda: srv.metrics()[OPEN] == 1, timeout=10), srv.metrics()


def test_client_beyond_the_cap_waits_until_a_connection_closes(srv):
    idle_until_settled(srv)
    held = [connect(srv) for _ in range(CAP - 1)]
    try:
        m = srv.metrics()                       # its own connection is the CAP-th
        assert m[OPEN] == CAP and m[MAX] == CAP, m
        paused = m[PAUSED]
        assert paused >= 1, m
        held.append(connect(srv))               # the CAP-th idle socket (accepted before the next: FIFO)
        waiting = connect(srv)
        waiting.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        waiting.settimeout(1.5)
        with pytest.raises(socket.timeout):
            waiting.recv(64)                    # not accepted while CAP idle sockets stay open
        t0 = time.monotonic()
        held.pop(0).close()
        waiting.settimeout(5)
        got = waiting.recv(64)
        waited = time.monotonic() - t0
        assert got.startswith(b"HTTP/1.1 200"), got
        assert waited < 1.0, f"answered {waited:.2f} s after a slot freed"
        waiting.close()
    finally:
        for s in held:
            s.close()
    idle_until_settled(srv)
    m = srv.metrics()
    assert m[PAUSED] >= paused + 1, m          # the CAP-th idle socket paused accepting again


def test_open_connections_are_counted_exactly_on_every_close_path(srv):
    idle_until_settled(srv)
    before = srv.metrics()[ACCEPTED]            # this scrape included
    opened = 0

    s = connect(srv)                             # idle, never sends a byte
    s.close()
    opened += 1

    s = connect(srv)                             # half a request line, then gone
    s.sendall(b"GET /hea")
    s.close()
    opened += 1

    s = connect(srv)                             # malformed: libevent's own 400 with Connection: close
    s.sendall(b"BLAH\r\n\r\n")
    s.settimeout(5)
    assert s.recv(64).startswith(b"HTTP/1.1 400")
    s.close()
    opened += 1

    s = connect(srv)                             # keep-alive: three requests, then the client closes
    for _ in range(3):
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    opened += 1

    s = connect(srv)                             # a stream the client abandons after the first event
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 200, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    s.settimeout(30)
    assert b"data: " in s.recv(4096)
    s.close()
    opened += 1

    s = connect(srv)                             # a non-stream generation, answered in full
    body = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    s.settimeout(30)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    opened += 1

    s = connect(srv)                             # a task's event stream, read to its final event
    body = json.dumps({"input": "x", "stream": True, "script": [
        {"calls": [{"id": "c1", "to": "calculator", "args": {"expression": "6*7"}}]},
        {"final": {"answer": "{{c1.value}}", "uses": ["c1"]}}]}).encode()
    s.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    s.settimeout(30)
    got = b""
    while b'"output":"42"' not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    s.close()
    opened += 1

    s = connect(srv)                             # the server closes first: Connection: close reply
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.settimeout(5)
    while s.recv(4096):
        pass
    s.close()
    opened += 1

    idle_until_settled(srv)                      # every one of them uncounted
    m = srv.metrics()
    # exactly one accept per connection: the ones above and the scrapes since `before`
    scrapes = m[ACCEPTED] - before - opened
    assert 1 <= scrapes <= 200, m
    assert m[OPEN] == 1, m


def serve_args(paraserve_bin, model_path, *args):
    return [paraserve_bin, "serve", "-m", model_path, "--port", "0", *map(str, args)]


def limited(n):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


@pytest.mark.parametrize("value, why", [
    ("0", "must be an integer in [1,"),
    ("-5", "must be an integer in [1,"),
    ("many", "must be an integer, got 'many'"),
    ("1.5", "must be an integer, got '1.5'"),
    ("769", "RLIMIT_NOFILE 1024 less a reserve of 256"),   # 1024 descriptors leave 768 for clients
])
def test_invalid_max_connections_is_a_usage_error(paraserve_bin, model_path, value, why):
    r = subprocess.run(serve_args(paraserve_bin, model_path, "--max-connections", value), capture_output=True,
                       timeout=30, preexec_fn=limited(1024))
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "max_connections" in err and why in err, err


def test_max_connections_in_a_config_file_is_validated(paraserve_bin, model_path, tmp_path):
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"model": model_path, "max_connections": 0}))
    r = subprocess.run([paraserve_bin, "serve", "--config", str(cfg)], capture_output=True, timeout=30)
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "max_connections must be an integer in [1," in err, err


def test_default_cap_leaves_a_descriptor_reserve(start_server):  # noqa: F811
    srv = start_server("--kv-blocks", 64, fd_limit=1024)
    assert srv.metrics()[MAX] == 768                       # 1024 less a quarter
    assert "max_connections 768 of RLIMIT_NOFILE 1024" in srv.output()


def test_cap_from_the_config_file_and_the_option_overriding_it(start_server, tmp_path):  # noqa: F811
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"max_connections": 5}))
    assert start_server("--kv-blocks", 64, "--config", str(cfg)).metrics()[MAX] == 5
    assert start_server("--kv-blocks", 64, "--config", str(cfg), "--max-connections", 768,
                        fd_limit=1024).metrics()[MAX] == 768   # the largest 1024 descriptors allow
