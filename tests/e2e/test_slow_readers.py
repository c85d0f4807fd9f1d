"""End-to-end tests of `paraserve serve` against clients that read a large
task's replies slowly or not at all: an event stream is written at the
client's pace (the task's log is not copied into each connection's output),
and a finished task's summary exists once however many clients hold it
unread.  Each non-reading client must cost the server a bounded amount of
memory (SSE_OUTPUT_HIGH in tasks_api.c, 256 KiB, plus a slice), not a copy
of megabytes of results; the readers still get every byte."""
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

import server_fixtures
from server_fixtures import sse_events, start_server  # noqa: F401  (fixture)

PAD = 900 << 10          # bytes of padding in each call's args (echoed in its result;
CALLS = 6                # an action's text is at most 1 MiB: one call per action)
NON_READERS = 24


@pytest.fixture(scope="module")
def srv(start_server, tmp_path_factory):  # noqa: F811
    with server_fixtures.mock_agent() as port:
        pool = tmp_path_factory.mktemp("pool") / "agents.json"
        pool.write_text(json.dumps({"agents": [
            {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{port}/",
             "description": "Mock agent: echoes its args.", "timeout_ms": 20000, "max_concurrency": 8,
             "retries": 0, "breaker_failures": 0}]}))
        yield start_server("--agents", str(pool), "--kv-blocks", 128, "--max-body-bytes", 16 << 20,
                           "--max-connections", 256, "--keep-tasks", 4)


def run_task(srv, name, calls, pad):
    """A finished task of `calls` calls, one per action, each echoing `pad`
    bytes: (id, its summary's reply bytes)."""
    ids = [f"c{i}" for i in range(calls)]
    script = [{"calls": [{"id": c, "to": "mock", "args": {"i": i, "pad": chr(97 + i) * pad}}]}
              for i, c in enumerate(ids)]
    script.append({"final": {"answer": "done", "uses": ids}})
    r = httpx.post(srv.url + "/v1/tasks", json={"input": name, "script": script}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    s = r.json()
    assert s["status"] == "completed", {k: v for k, v in s.items() if k != "calls"}
    assert [len(c["result"]["args"]["pad"]) for c in s["calls"]] == [pad] * calls
    return s["id"], r.content


@pytest.fixture(scope="module")
def big_task(srv):
    """A finished task whose log holds about CALLS x 3 x PAD bytes (each
    call's args in its dispatch, its echo in its result, all of them again
    in the final summary)."""
    tid, body = run_task(srv, "big results", CALLS, PAD)
    return tid, len(body)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def settled_rss_kb(pid, quiet_s=1.5, timeout=20):
    """RSS once it has not grown for quiet_s (the server is done copying)."""
    end = time.time() + timeout
    last, since = rss_kb(pid), time.time()
    while time.time() < end:
        time.sleep(0.1)
        now = rss_kb(pid)
        if now > last + 256:
            last, since = now, time.time()
        elif time.time() - since >= quiet_s:
            break
    return rss_kb(pid)


def http10(srv, path, rcvbuf=None):
    """A socket that sent `GET path HTTP/1.0` (a close-delimited reply)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    return s


def read_all(s, chunk=65536, pause_s=0.0, timeout=60):
    s.settimeout(timeout)
    out = bytearray()
    while True:
        c = s.recv(chunk)
        if not c:
            return bytes(out)
        out += c
        if pause_s:
            time.sleep(pause_s)


def body_of(reply):
    head, sep, body = reply.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], reply[:300]
    return body


def stream_records(body):
    """The SSE records of a stream body, heartbeat comments dropped."""
    return [r for r in body.split(b"\n\n") if r and not r.startswith(b":")]


# First in the module: RSS is measured, and memory freed by earlier tests
# would be reused unseen (a copying server grew 129 MB for the summaries,
# 496 MB for the streams; this one, under 1 MB).
@pytest.mark.parametrize("what", ["summary", "events"])
def test_clients_that_never_read_cost_bounded_memory(srv, big_task, what):
    tid, summary_bytes = big_task
    path = f"/v1/tasks/{tid}/events" if what == "events" else f"/v1/tasks/{tid}"
    pid = srv.proc.pid
    base = settled_rss_kb(pid)
    held = [http10(srv, path, rcvbuf=4096) for _ in range(NON_READERS)]
    try:
        grown_kb = settled_rss_kb(pid) - base
        # what each reply would cost copied: the whole log or summary
        copied_kb = NON_READERS * summary_bytes // 1024
        # events: 256 KiB + a 64 KiB slice each; summary: shared, ~nothing each
        bound_kb = NON_READERS * 512 + (16 << 10)
        assert grown_kb < bound_kb, (what, grown_kb, bound_kb, copied_kb)
        # the server still answers, and a reader still gets everything
        r = httpx.get(f"{srv.url}/v1/tasks/{tid}", timeout=60)
        assert r.status_code == 200 and len(r.content) == summary_bytes
        assert r.json()["calls"][CALLS - 1]["result"]["args"]["pad"] == chr(97 + CALLS - 1) * PAD
    finally:
        for s in held:
            s.close()
    # the held replies are dropped with their connections; nothing in flight
    assert server_fixtures.wait_for(lambda: srv.metrics()["paraserve_http_in_flight"] == 0, timeout=20), \
        srv.metrics()["paraserve_http_in_flight"]


def test_a_slow_reader_gets_the_whole_stream_byte_for_byte(srv, big_task):
    tid, _ = big_task
    fast = body_of(read_all(http10(srv, f"/v1/tasks/{tid}/events")))
    ev = sse_events(fast.decode().splitlines())
    assert [e["event"] for e in ev][0] == "task.created" and ev[-1]["event"] == "task.final", \
        [e["event"] for e in ev]
    assert [e["id"] for e in ev] == list(range(1, len(ev) + 1))
    results = [e["data"] for e in ev if e["event"] == "call.result"]
    assert sorted(len(r["result"]["args"]["pad"]) for r in results) == [PAD] * CALLS
    assert len(fast) > 3 * CALLS * PAD, len(fast)
    # a reader that takes 16 KiB every 2 ms through a 4 KiB receive buffer:
    # the server writes as it drains, and the bytes are the same
    slow = body_of(read_all(http10(srv, f"/v1/tasks/{tid}/events", rcvbuf=4096), chunk=16384, pause_s=0.002,
                            timeout=120))
    assert stream_records(slow) == stream_records(fast)
    # resuming in the middle of the log (after the first call.result)
    first = next(e["id"] for e in ev if e["event"] == "call.result")
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(f"GET /v1/tasks/{tid}/events HTTP/1.0\r\nHost: x\r\nLast-Event-ID: {first}\r\n\r\n".encode())
    tail = body_of(read_all(s))
    assert stream_records(tail) == stream_records(fast)[first:]


def test_a_summary_outlives_its_evicted_task_for_its_slow_reader(srv):
    """A summary's text stays valid for a reply still being written after
    its task was freed (the reply holds its own reference)."""
    tid, want = run_task(srv, "short-lived", CALLS, PAD)
    slow = http10(srv, f"/v1/tasks/{tid}", rcvbuf=4096)
    time.sleep(0.3)
    assert httpx.delete(f"{srv.url}/v1/tasks/{tid}", timeout=10).status_code == 200
    # --keep-tasks 4: four more ends evict it (no client reads its events)
    for i in range(5):
        assert httpx.post(srv.url + "/v1/tasks", json={"input": f"t{i}", "script": [
            {"final": {"answer": "x"}}]}, timeout=30).status_code == 200
    assert httpx.get(f"{srv.url}/v1/tasks/{tid}", timeout=10).status_code == 404
    assert body_of(read_all(slow)) == want
