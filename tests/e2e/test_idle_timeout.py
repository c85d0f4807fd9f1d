"""`paraserve serve --idle-timeout-ms T`: a client connection with no request
in flight for T is closed by the server - one that never sends a byte, one
that trickles its headers or body (slowloris), a keep-alive one after its
reply, one whose reply stalls because the client stopped reading - while a
request being served is never cut, however long it runs, nor a slow reader
that keeps reading.
The idle closes are counted in /metrics and every close is uncounted from
the open connections."""
import http.client
import json
import socket
import time

import pytest

from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

IDLE_MS = 1000
OPEN = "paraserve_http_connections_open"
IDLE_CLOSED = "paraserve_http_idle_closed_total"


@pytest.fixture(scope="module")
def srv(start_server):  # noqa: F811
    return start_server("--kv-blocks", 256, "--idle-timeout-ms", IDLE_MS)


def connect(srv):
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def closed_by_server(s, within):
    """Seconds until the server closed s (recv returned b''), or None."""
    s.settimeout(within)
    t0 = time.monotonic()
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return time.monotonic() - t0
    except (socket.timeout, ConnectionResetError):
        return None


def test_silent_connection_is_closed(srv):
    before = srv.metrics()[IDLE_CLOSED]
    s = connect(srv)
    t0 = time.monotonic()
    took = closed_by_server(s, 5)
    assert took is not None, "the server kept a silent connection open for 5 s"
    assert 0.8 <= time.monotonic() - t0 <= 3.0
    s.close()
    assert srv.metrics()[IDLE_CLOSED] >= before + 1


@pytest.mark.parametrize("what", ["headers", "body"])
def test_trickled_request_is_closed(srv, what):
    s = connect(srv)
    body = json.dumps({"model": "default", "prompt": "hi", "max_tokens": 1}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    data = head[:-10] if what == "headers" else head + body[:5]
    s.sendall(data)
    # one more byte every 0.3 s: never idle for the timeout between bytes, but never complete either
    t0 = time.monotonic()
    rest = (head[-10:] if what == "headers" else body[5:])[:8]
    closed = False
    for b in rest:
        time.sleep(0.3)
        try:
            s.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    took = None if closed else closed_by_server(s, 5)
    assert closed or took is not None, "a trickled request held its connection"
    assert time.monotonic() - t0 < 4.0
    s.close()


def test_request_longer_than_the_timeout_is_served(srv):
    # a non-streamed generation of ~2-4 x the timeout (~225 tok/s on the idle 2-core VM): no
    # byte moves while it runs
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    body = {"model": "default", "prompt": "Count: 1, 2, 3,", "max_tokens": 480, "ignore_eos": True,
            "temperature": 0}
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    took = time.monotonic() - t0
    assert r.status == 200
    out = json.loads(r.read())
    assert out["usage"]["completion_tokens"] == 480
    assert took > IDLE_MS / 1000, f"the request took {took:.2f} s: too short to show anything"
    # and a streamed one with a slow consumer: the reply is in flight until its end
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True, "max_tokens": 60}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    time.sleep(1.5)             # read nothing for longer than the timeout
    text = r.read().decode()
    assert text.rstrip().endswith("data: [DONE]"), text[-200:]
    conn.close()


def test_keep_alive_connection_idles_out_after_its_reply(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().read() is not None
    time.sleep(0.4)              # within the timeout: the same connection serves another request
    conn.request("GET", "/health")
    r = conn.getresponse()
    assert r.status == 200
    r.read()
    sock = conn.sock
    took = closed_by_server(sock, 5)
    assert took is not None and 0.5 <= took <= 3.0, took
    conn.close()


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("/v1/tasks", {"input": "add", "script": [{"final": {"answer": "done"}}]}),
], ids=["completion", "stream", "chat", "task"])
def test_keep_alive_idles_out_after_a_generation_or_task_reply(srv, path, body):
    # these replies are tracked until written (flush_track), which once took the request's
    # on-complete callback from the idle timer: the connection then never idled out
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    full = body if path == "/v1/tasks" else {"model": "default", **body}
    conn.request("POST", path, json.dumps(full), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    took = closed_by_server(conn.sock, 5)
    assert took is not None and took <= 3.0, "a kept-alive connection outlived the idle timeout"
    conn.close()


def test_client_that_stops_reading_is_closed(srv):
    # pipelined requests whose answers are never read: the reply being written stalls with the
    # socket buffers full, so a request stays in flight forever and the idle timer never runs -
    # a few such clients once held every slot.  A write making no progress for the timeout
    # closes the connection instead.
    assert wait_for(lambda: srv.metrics()[OPEN] == 1, timeout=5), srv.metrics()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    s.setblocking(False)
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000
    sent, t0 = 0, time.monotonic()
    while sent < len(req) and time.monotonic() - t0 < 2:
        try:
            sent += s.send(req[sent:])
        except BlockingIOError:
            time.sleep(0.01)
    assert srv.metrics()[OPEN] == 2, "the unread connection should be open while its writes stall"
    # nothing read: closed within the timeout (and some slack for the loop) of the last write
    assert wait_for(lambda: srv.metrics()[OPEN] == 1, timeout=6), \
        f"a client that reads nothing still holds its connection: {srv.metrics()[OPEN]} open"
    s.close()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()


def test_slow_reader_that_keeps_reading_is_served(srv):
    # the write timeout restarts at every byte written: a client reading a large reply slowly,
    # but steadily, gets all of it
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 60 +
              b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.settimeout(10)
    got, t0 = b"", time.monotonic()
    while True:
        chunk = s.recv(2048)
        if not chunk:
            break
        got += chunk
        time.sleep(0.02)
    took = time.monotonic() - t0
    s.close()
    assert got.count(b"HTTP/1.1 200") == 61, (got.count(b"HTTP/1.1 200"), took)
    assert took > IDLE_MS / 1000, f"read in {took:.2f} s: too fast to show anything"


def test_open_count_returns_after_idle_closes(srv):
    socks = [connect(srv) for _ in range(5)]
    assert wait_for(lambda: srv.metrics()[OPEN] >= 6, timeout=5)
    for s in socks:
        assert closed_by_server(s, 5) is not None
        s.close()
    assert wait_for(lambda: srv.metrics()[OPEN] == 1, timeout=5), srv.metrics()


def test_zero_turns_it_off(start_server):  # noqa: F811
    s2 = start_server("--kv-blocks", 64, "--idle-timeout-ms", 0)
    s = connect(s2)
    assert closed_by_server(s, 2.5) is None
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.settimeout(5)
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    s.close()
    assert s2.metrics()[IDLE_CLOSED] == 0


@pytest.mark.parametrize("bad", ["-1", "abc", "3600001"])
def test_bad_values_are_refused(run, model_path, bad):
    r = run("serve", "-m", model_path, "--idle-timeout-ms", bad, timeout=30)
    assert r.returncode == 2, r.stderr.decode()
    assert "idle_timeout_ms" in r.stderr.decode()
