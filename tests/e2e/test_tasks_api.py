"""End-to-end tests of the tasks API of `paraserve serve` (POST/GET/DELETE
/v1/tasks, SSE events with Last-Event-ID resume) on loopback: scripted tasks
against the Python mock agent (latency and faults), an `openai-chat` agent
pointing at the same server, a model-driven task on the embedded model,
bad requests, and clients that leave in the middle of a stream."""
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import server_fixtures
from server_fixtures import free_port, sanitized, sse_events, start_server  # noqa: F401  (fixture)

AGENTS = Path(__file__).resolve().parent / "agents"


@pytest.fixture(scope="module")
def mock_port():
    with server_fixtures.mock_agent() as port:
        yield port


def _start_srv(start_server, mock_port, tmp_path_factory, *extra, env=None):  # noqa: F811
    port = free_port()
    pool = tmp_path_factory.mktemp("pool") / "agents.json"
    pool.write_text(json.dumps({"agents": [
        {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{mock_port}/",
         "description": "Mock agent: replies after sleep_ms.",
         "input_schema": {"type": "object", "properties": {"sleep_ms": {"type": "integer"},
                                                           "fault": {"type": "string"}}},
         "timeout_ms": 800, "max_concurrency": 64, "retries": 1, "backoff_ms": 20, "breaker_failures": 0},
        {"name": "calculator", "kind": "builtin", "description": "Arithmetic. Args: {\"expression\": text}.",
         "timeout_ms": 1000},
        {"name": "self", "kind": "openai-chat", "url": f"http://127.0.0.1:{port}/v1/chat/completions",
         "description": "The served model. Args: {\"input\": text}.", "max_tokens": 8, "timeout_ms": 30000,
         "retries": 0},
    ]}))
    orig = server_fixtures.free_port
    server_fixtures.free_port = lambda: port
    try:
        s = start_server("--agents", str(pool), "--kv-blocks", 1024, *extra, env=env)
    finally:
        server_fixtures.free_port = orig
    return s


@pytest.fixture(scope="module")
def srv(start_server, mock_port, tmp_path_factory):  # noqa: F811
    """A server whose pool has the mock agent, a builtin tool and an
    openai-chat agent pointing back at the server itself."""
    return _start_srv(start_server, mock_port, tmp_path_factory)


@pytest.fixture(scope="module")
def srv_lanes(start_server, mock_port, tmp_path_factory):  # noqa: F811
    """The same server with its agent calls on two I/O threads (--http-threads),
    every one of them (by default the first 8 of a loop turn stay on the loop)."""
    return _start_srv(start_server, mock_port, tmp_path_factory, "--http-threads", 2,
                      env={"PARASERVE_HTTPC_LANE_INLINE": "0"})


@pytest.fixture(params=["loop", "lanes"])
def hsrv(request):
    """The tests of plain-http agent calls run on both servers."""
    return request.getfixturevalue("srv" if request.param == "loop" else "srv_lanes")


def post(srv, body, timeout=30):
    return httpx.post(srv.url + "/v1/tasks", json=body, timeout=timeout)


def stream_task(srv, body, timeout=30):
    with httpx.stream("POST", srv.url + "/v1/tasks", json={**body, "stream": True}, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(list(r.iter_lines()))


def until_dispatched(lines):
    """Read an SSE task stream's lines up to its first call.dispatched
    event; returns the lines read."""
    got = []
    for line in lines:
        got.append(line)
        if line.startswith("event: call.dispatched"):
            break
    return got


def by_id(summary):
    return {c["id"]: c for c in summary["calls"]}


def test_fanout_8x400ms_over_http(hsrv):
    calls = [{"id": f"c{i}", "to": "mock", "args": {"sleep_ms": 400}} for i in range(8)]
    warm = post(hsrv, {"input": "warm", "script": [{"calls": [{"id": "w", "to": "mock", "args": {}}]},
                                                  {"final": {"answer": "ok", "uses": ["w"]}}]})
    assert warm.json()["status"] == "completed"        # first connections made outside the timing
    t0 = time.time()
    r = post(hsrv, {"input": "fan", "script": [{"calls": calls},
                                              {"final": {"answer": "ok", "uses": [c["id"] for c in calls]}}]})
    wall = time.time() - t0
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["status"] == "completed" and s["output"] == "ok" and s["rounds"] == 2
    assert all(c["status"] == "ok" for c in s["calls"]) and len(s["calls"]) == 8
    print(f"\n8 x 400 ms calls over HTTP: {wall:.3f} s wall")
    assert 0.39 < wall < 1.2, wall                      # ~0.4 s, not 3.2 s


def test_dag_on_critical_path(hsrv):
    ev = stream_task(hsrv, {"input": "dag", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 300}},
                   {"id": "b", "to": "mock", "args": {"sleep_ms": 300}, "after": ["a"]},
                   {"id": "c", "to": "mock", "args": {"sleep_ms": 300}}]},
        {"final": {"answer": "ok", "uses": ["b", "c"]}}]})
    assert [e["id"] for e in ev] == list(range(1, len(ev) + 1))          # monotonic ids
    assert ev[0]["event"] == "task.created" and ev[-1]["event"] == "task.final"
    kinds = {e["event"] for e in ev}
    assert {"decision", "call.dispatched", "call.result"} <= kinds
    results = [e["data"]["id"] for e in ev if e["event"] == "call.result"]
    assert results[-1] == "b"
    # critical path 0.6 s; one after the other would take 0.9 s
    assert 0.59 < ev[-1]["data"]["t_ms"] / 1000 < 0.85, ev[-1]["data"]["t_ms"]


def test_final_cancels_calls_it_does_not_use(hsrv):
    """`final` ends the task once the calls it uses have finished; a call in
    flight that it does not use is cancelled, and its result never comes."""
    ev = stream_task(hsrv, {"input": "final", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 100}},
                   {"id": "slow", "to": "mock", "args": {"sleep_ms": 5000}}]},
        {"final": {"answer": "{{a}}", "uses": ["a"]}}]})
    final = ev[-1]
    assert final["event"] == "task.final" and final["data"]["status"] == "completed", final
    assert final["data"]["t_ms"] < 1000, final["data"]["t_ms"]
    by = {c["id"]: c for c in final["data"]["calls"]}
    assert by["a"]["status"] == "ok", by
    assert by["slow"]["status"] == "cancelled" and "final" in by["slow"]["error"], by
    time.sleep(0.3)
    s = httpx.get(f"{hsrv.url}/v1/tasks/{final['data']['id']}", timeout=10).json()
    assert {c["id"]: c["status"] for c in s["calls"]} == {"a": "ok", "slow": "cancelled"}, s


def test_streamed_events_follow_the_event_schema(srv):
    from test_proto import validator
    v = validator("event.schema.json")
    ev = stream_task(srv, {"input": "schema", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 10}},
                   {"id": "h", "to": "mock", "args": {"fault": "hang"}},
                   {"id": "k", "to": "calculator", "args": {"expression": "2+{{a.args.sleep_ms}}"}, "after": ["a"]},
                   {"id": "g", "to": "nobody", "args": {}}]},
        {"cancel": ["h"]},
        {"final": {"answer": "{{k}}", "uses": ["k"]}}]})
    for e in ev:
        v.validate(e)
    assert ev[-1]["event"] == "task.final" and ev[-1]["data"]["output"] == "12"
    assert {c["id"]: c["status"] for c in ev[-1]["data"]["calls"]} == {
        "a": "ok", "h": "cancelled", "k": "ok", "g": "rejected"}


def test_faults_yield_statuses_and_the_task_ends(hsrv):
    calls = [{"id": "ok", "to": "mock", "args": {"sleep_ms": 50}},
             {"id": "slow", "to": "mock", "args": {"fault": "slow"}},
             {"id": "hang", "to": "mock", "args": {"fault": "hang"}},
             {"id": "x5", "to": "mock", "args": {"fault": "5xx"}},
             {"id": "nj", "to": "mock", "args": {"fault": "nonjson"}},
             {"id": "drop", "to": "mock", "args": {"fault": "drop"}},
             {"id": "ghost", "to": "nobody", "args": {}}]
    t0 = time.time()
    r = post(hsrv, {"input": "faults", "script": [
        {"calls": calls}, {"final": {"answer": "done", "uses": [c["id"] for c in calls]}}]})
    s = r.json()
    assert s["status"] == "completed", s
    want = {"ok": "ok", "slow": "ok", "hang": "timeout", "x5": "exec_error", "nj": "parse_error",
            "drop": "exec_error", "ghost": "rejected"}
    assert {k: by_id(s)[k]["status"] for k in want} == want
    assert by_id(s)["x5"]["attempts"] == 2
    assert time.time() - t0 < 10


def test_delete_cancels_in_flight_and_late_results_never_appear(hsrv):
    body = {"input": "cancel", "stream": True, "script": [
        {"calls": [{"id": "s1", "to": "mock", "args": {"sleep_ms": 600}},
                   {"id": "s2", "to": "mock", "args": {"sleep_ms": 600}},
                   {"id": "s3", "to": "mock", "args": {"sleep_ms": 100}, "after": ["s1"]}]},
        {"final": {"answer": "x", "uses": ["s3"]}}]}
    with httpx.stream("POST", hsrv.url + "/v1/tasks", json=body, timeout=30) as r:
        tid = r.headers["x-task-id"]
        lines = r.iter_lines()
        got = until_dispatched(lines)
        time.sleep(0.15)
        d = httpx.delete(f"{hsrv.url}/v1/tasks/{tid}", timeout=10)
        assert d.status_code == 200 and d.json()["status"] == "cancelled"
        got += list(lines)
    ev = sse_events(got)
    assert ev[-1]["event"] == "task.error" and ev[-1]["data"]["status"] == "cancelled"
    time.sleep(0.8)                                     # the mock's replies would be back by now
    s = httpx.get(f"{hsrv.url}/v1/tasks/{tid}", timeout=10).json()
    assert s["status"] == "cancelled"
    assert {c["id"]: c["status"] for c in s["calls"]} == {"s1": "cancelled", "s2": "cancelled", "s3": "cancelled"}
    with httpx.stream("GET", f"{hsrv.url}/v1/tasks/{tid}/events", timeout=10) as r:
        replay = sse_events(list(r.iter_lines()))
    assert [e["id"] for e in replay] == [e["id"] for e in ev]     # nothing after the end
    assert not [e for e in replay if e["event"] == "call.result" and e["data"]["status"] == "ok"]
    # DELETE of a finished task changes nothing
    again = httpx.delete(f"{hsrv.url}/v1/tasks/{tid}", timeout=10).json()
    assert again["status"] == "cancelled"


def test_whole_ref_to_a_number_fills_a_string_argument(srv):
    """An argument that is exactly "{{c1.value}}" (or "{{c1}}"), where the
    calculator's input_schema wants a string and c1 gave a number, runs on
    the number's text; it used to be rejected ("expected string, got number")."""
    s = post(srv, {"input": "chain", "script": [
        {"calls": [{"id": "c1", "to": "calculator", "args": {"expression": "6*7"}},
                   {"id": "c2", "to": "calculator", "args": {"expression": "{{c1.value}}"}, "after": ["c1"]},
                   {"id": "c3", "to": "calculator", "args": {"expression": "{{c1}}"}, "after": ["c1"]}]},
        {"final": {"answer": "{{c2}} {{c3.value}}", "uses": ["c2", "c3"]}}]}).json()
    assert {c["id"]: c["status"] for c in s["calls"]} == {"c1": "ok", "c2": "ok", "c3": "ok"}, s
    assert s["status"] == "completed" and s["output"] == "42 42"


def test_sse_resume_with_last_event_id(srv):
    s = post(srv, {"input": "resume", "script": [
        {"calls": [{"id": "k", "to": "calculator", "args": {"expression": "6*7"}}]},
        {"final": {"answer": "{{k}}", "uses": ["k"]}}]}).json()
    assert s["status"] == "completed" and s["output"] == "42"
    url = f"{srv.url}/v1/tasks/{s['id']}/events"
    with httpx.stream("GET", url, timeout=10) as r:
        full = sse_events(list(r.iter_lines()))
    assert [e["id"] for e in full] == list(range(1, len(full) + 1)) and full[-1]["event"] == "task.final"
    with httpx.stream("GET", url, headers={"Last-Event-ID": "3"}, timeout=10) as r:
        tail = sse_events(list(r.iter_lines()))
    assert [e["id"] for e in tail] == [e["id"] for e in full if e["id"] > 3]
    assert tail == full[3:]
    for bad in ("x", "+3", "-1", "0x3", "1e2", "99999999999999999999"):   # (spaces: HTTP trims them)
        r = httpx.get(url, headers={"Last-Event-ID": bad}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID", bad


def test_resume_a_running_task_gets_live_events(srv):
    r = httpx.post(srv.url + "/v1/tasks", timeout=30, json={"input": "live", "stream": True, "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 300}}]},
        {"final": {"answer": "{{a.ok}}", "uses": ["a"]}}]}, headers={"Connection": "close"})
    # The full stream was read: resume from its second event on a new connection.
    ev = sse_events(r.text.splitlines())
    tid = ev[0]["data"]["id"]
    with httpx.stream("GET", f"{srv.url}/v1/tasks/{tid}/events", headers={"Last-Event-ID": "2"}, timeout=10) as s:
        tail = sse_events(list(s.iter_lines()))
    assert [e["id"] for e in tail] == [e["id"] for e in ev[2:]]


def test_resume_past_a_running_tasks_log_ends_with_the_task(srv):
    # A Last-Event-ID beyond a running task's log (a client that names an id
    # of another stream): the stream must still end when the task ends, with
    # its terminal event, not stay open forever past it.
    body = {"input": "ahead", "stream": True, "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 500}}]},
        {"final": {"answer": "done", "uses": ["a"]}}]}
    with httpx.stream("POST", srv.url + "/v1/tasks", json=body, timeout=30) as r:
        tid = r.headers["x-task-id"]
        t0 = time.time()
        with httpx.stream("GET", f"{srv.url}/v1/tasks/{tid}/events", headers={"Last-Event-ID": "1000"},
                          timeout=httpx.Timeout(30, read=6)) as s:
            assert s.status_code == 200
            try:
                got = sse_events(list(s.iter_lines()))
            except httpx.ReadTimeout:
                pytest.fail("the stream stayed open after the task ended")
        assert time.time() - t0 < 5
        own = sse_events(list(r.iter_lines()))
    assert own[-1]["event"] == "task.final"
    assert got and got[-1]["event"] == "task.final" and got[-1]["id"] == own[-1]["id"], got
    assert [e["id"] for e in got] == [e["id"] for e in own[-len(got):]]


def err_shape(r, status, param=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if param is not None:
        assert e["param"] == param, e
    return e


@pytest.mark.parametrize("body,param,code", [
    (json.dumps({"input": "x", "max_rounds": -1}).encode(), "max_rounds", "invalid_value"),
    (json.dumps({"input": "x", "max_rounds": 2.5}).encode(), "max_rounds", "invalid_value"),
    (json.dumps({"input": "x", "deadline_ms": 99999999999}).encode(), "deadline_ms", "invalid_value"),
    (json.dumps({"input": "x", "max_calls": "9"}).encode(), "max_calls", "invalid_type"),
    (json.dumps({"input": "x", "script": [{"calls": []}]}).encode(), "script[0]", "invalid_value"),
    (json.dumps({"input": "x", "script": [{"wait": True, "final": {"answer": "x"}}]}).encode(), "script[0]",
     "invalid_value"),
])
def test_bad_values_and_types_have_their_codes(srv, body, param, code):
    e = err_shape(httpx.post(srv.url + "/v1/tasks", content=body, timeout=10), 400, param)
    assert e["code"] == code, e


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[1,2]", None),
    (b"\xff\xfe{}", None),
    (json.dumps({"stream": True}).encode(), "input"),
    (json.dumps({"input": 5}).encode(), "input"),
    (json.dumps({"input": "x", "bogus": 1}).encode(), "bogus"),
    (json.dumps({"input": "x", "stream": "yes"}).encode(), "stream"),
    (json.dumps({"input": "x", "max_rounds": 0}).encode(), "max_rounds"),
    (json.dumps({"input": "x", "deadline_ms": "soon"}).encode(), "deadline_ms"),
    (json.dumps({"input": "x", "script": {"calls": []}}).encode(), "script"),
    (json.dumps({"input": "x", "script": [{"teleport": 1}]}).encode(), "script[0]"),
])
def test_bad_bodies_get_400_openai_errors(srv, body, param):
    r = httpx.post(srv.url + "/v1/tasks", content=body, timeout=10)
    err_shape(r, 400, param)


def test_unknown_tasks_and_methods(srv):
    err_shape(httpx.get(srv.url + "/v1/tasks/task_nope", timeout=10), 404)
    err_shape(httpx.delete(srv.url + "/v1/tasks/task_nope", timeout=10), 404)
    err_shape(httpx.get(srv.url + "/v1/tasks/task_nope/events", timeout=10), 404)
    err_shape(httpx.get(srv.url + "/v1/tasks/a/b", timeout=10), 404)
    r = httpx.put(srv.url + "/v1/tasks", timeout=10)
    err_shape(r, 405)
    assert r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    r = httpx.post(srv.url + "/v1/tasks/task_x", timeout=10)
    err_shape(r, 405)
    assert r.headers["allow"] == "GET, HEAD, DELETE, OPTIONS"   # HEAD is served too
    r = httpx.delete(srv.url + "/v1/tasks/task_x/events", timeout=10)
    err_shape(r, 405)
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"


def test_openai_chat_agent_pointing_at_paraserve_itself(hsrv):
    s = post(hsrv, {"input": "self", "script": [
        {"calls": [{"id": "m", "to": "self", "args": {"input": "Say hi."}}]},
        {"final": {"answer": "{{m}}", "uses": ["m"]}}]}, timeout=60).json()
    assert s["status"] == "completed", s
    m = by_id(s)["m"]
    assert m["status"] == "ok", m
    assert isinstance(s["output"], str) and s["output"]


def test_stream_client_disconnect_leaks_nothing(srv):
    before = srv.metrics().get("paraserve_client_disconnects_total", 0)
    for _ in range(3):
        body = {"input": "leave", "stream": True, "script": [
            {"calls": [{"id": "h", "to": "mock", "args": {"sleep_ms": 700}}]},
            {"final": {"answer": "x", "uses": ["h"]}}]}
        with httpx.stream("POST", srv.url + "/v1/tasks", json=body, timeout=10) as r:
            tid = r.headers["x-task-id"]
            until_dispatched(r.iter_lines())
        # closed mid-stream; the task runs on and can still be read
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    deadline = time.time() + 5
    while time.time() < deadline:
        s = httpx.get(f"{srv.url}/v1/tasks/{tid}", timeout=10).json()
        if s["status"] != "running":
            break
        time.sleep(0.05)
    assert s["status"] == "completed"
    after = srv.metrics().get("paraserve_client_disconnects_total", 0)
    assert after >= before + 3


def test_concurrent_http_tasks(hsrv):
    body = {"input": "many", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 100}},
                   {"id": "k", "to": "calculator", "args": {"expression": "6*7"}, "after": ["a"]}]},
        {"final": {"answer": "{{k}}", "uses": ["k"]}}]}
    out = []

    def one():
        out.append(post(hsrv, body).json())
    ths = [threading.Thread(target=one) for _ in range(40)]
    t0 = time.time()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert len(out) == 40 and all(s["status"] == "completed" and s["output"] == "42" for s in out)
    assert len({s["id"] for s in out}) == 40
    assert time.time() - t0 < 5


def check_model_events(ev, max_rounds, max_calls=None):
    """Every action the model emitted was handled: each decision parsed, each
    call it made was dispatched once under a fresh id and got one result, and
    the task ended with task.final within its limits."""
    assert ev[0]["event"] == "task.created" and ev[0]["data"]["mode"] == "model"
    term = ev[-1]
    assert [e for e in ev if e["event"] in ("task.final", "task.error")] == [term]
    s = term["data"]
    # The tail first: pytest cuts a long message, and the end says why.
    assert term["event"] == "task.final", (s.get("error"), s["rounds"], [
        (e["data"]["t_ms"], e["event"], e["data"].get("action") or e["data"].get("error") or e["data"].get("status"))
        for e in ev][::-1])
    assert s["status"] == "completed" and s["rounds"] <= max_rounds, s
    decisions = [e["data"] for e in ev if e["event"] == "decision"]
    # Each decision is an action, or (decoding stopped before any call of it
    # closed) a reported error the task went on from; the last is a final.
    assert decisions and all(("action" in d) != ("error" in d) for d in decisions), decisions
    assert "final" in decisions[-1].get("action", {}), decisions
    made = [c["id"] for d in decisions for c in d.get("action", {}).get("calls", [])]
    dispatched = [e["data"]["id"] for e in ev if e["event"] == "call.dispatched"]
    results = [e["data"]["id"] for e in ev if e["event"] == "call.result"]
    # Calls over max_calls are recorded rejected without being dispatched.
    assert len(set(made)) == len(made) and sorted(made) == sorted(results), ev
    assert set(dispatched) <= set(made) and len(set(dispatched)) == len(dispatched)
    assert all("duplicate" not in (c.get("error") or "") for c in s["calls"])
    uses = decisions[-1]["action"]["final"].get("uses", [])
    assert set(uses) <= set(made)
    if max_calls is not None:
        assert len(dispatched) <= max_calls
    return s


def test_model_driven_task_reaches_final_within_its_limits(srv):
    cached_before = srv.metrics().get("paraserve_cached_prompt_tokens_total", 0)
    t0 = time.time()
    ev = stream_task(srv, {"input": "What is 17*23? Use the calculator.", "deadline_ms": 30000,
                           "max_rounds": 2}, timeout=60)
    wall = time.time() - t0
    assert wall < 33, wall
    assert "action grammar for 3 agent(s) compiled" in srv.output()   # decisions are constrained
    s = check_model_events(ev, max_rounds=2)
    # Token usage of every decided round is in task.final, the final
    # decision's included (its action closed before the engine's end), and
    # the same in the summary.
    n_decisions = len([e for e in ev if e["event"] == "decision"])
    final = [e["data"] for e in ev if e["event"] == "task.final"][-1]
    usage = final.get("usage") or {"decisions": []}
    assert [d["round"] for d in usage["decisions"]] == list(range(1, n_decisions + 1)), (n_decisions, usage)
    assert all(d["completion_tokens"] > 0 and d["prompt_tokens"] > 0 for d in usage["decisions"]), usage
    s = httpx.get(f"{srv.url}/v1/tasks/{s['id']}", timeout=10).json()
    assert s["usage"]["decisions"] == usage["decisions"], (s["usage"], usage)
    print(f"\nmodel-driven task: final in {wall:.1f} s, rounds {s['rounds']}, output {s['output']!r}, "
          f"calls {[(c['id'], c['to'], c['status']) for c in s['calls']]}, usage {usage['decisions']}")
    if len(usage["decisions"]) >= 2:
        d1, d2 = usage["decisions"][0], usage["decisions"][1]
        # Round 2's prompt extends round 1's: the prefix cache serves round 1's prompt.
        assert d2["cached_tokens"] >= d1["prompt_tokens"] - 32, usage
        cached_after = srv.metrics().get("paraserve_cached_prompt_tokens_total", 0)
        assert cached_after - cached_before >= d2["cached_tokens"]


@pytest.mark.parametrize("limits", [{"max_rounds": 1}, {"max_rounds": 4, "max_calls": 1},
                                    {"max_rounds": 3}])
def test_model_driven_tasks_always_end_with_final(srv, limits):
    """The last allowed decision (last round, call limit) is decoded under a
    final-only grammar whose `uses` name finished calls: the task completes."""
    t0 = time.time()
    ev = stream_task(srv, {"input": "Add 2 and 3, then multiply the sum by 7.", "deadline_ms": 40000, **limits},
                     timeout=60)
    s = check_model_events(ev, limits["max_rounds"], limits.get("max_calls"))
    if limits["max_rounds"] == 1:
        assert s["calls"] == [] and s["rounds"] == 1
    print(f"\n{limits}: final in {time.time() - t0:.1f} s, rounds {s['rounds']}, output {s['output']!r}, "
          f"calls {[(c['id'], c['to'], c['status']) for c in s['calls']]}")


def test_model_driven_task_near_its_deadline_answers(srv, paraserve_bin):
    """A short deadline: the task keeps a reserve (min(deadline/4, 4 s), then
    twice its slowest decision + 0.5 s, at most half the deadline) and, when
    it starts, stops a decision being decoded and decides a final, with calls
    still running or not.  Under ASan a decision takes 4-6 s on 2 cores (the
    final's new prompt tokens alone 5.5 s), so half of 20 s left too little
    on a busy CI machine: there the deadline is 40 s."""
    deadline_ms = 40000 if sanitized(paraserve_bin) else 20000
    t0 = time.time()
    ev = stream_task(srv, {"input": "Ask the mock agent with sleep_ms 30000, then answer.",
                           "deadline_ms": deadline_ms, "max_rounds": 50}, timeout=deadline_ms / 1000 + 20)
    wall = time.time() - t0
    s = check_model_events(ev, 50)
    assert wall < deadline_ms / 1000 + 0.5, wall
    m = prom_samples(srv)
    assert m[("paraserve_tasks_created_total", (("mode", "model"),))] >= 1
    assert m[("paraserve_task_decisions_total", (("mode", "model"),))] >= s["rounds"]
    assert m[("paraserve_task_decision_duration_seconds_count", ())] >= s["rounds"]
    print(f"\nshort deadline: final in {wall:.1f} s, rounds {s['rounds']}, "
          f"calls {[(c['id'], c['to'], c['status']) for c in s['calls']]}")


def test_bad_agents_file_stops_the_server_naming_the_field(paraserve_bin, model_path, tmp_path):
    pool = tmp_path / "bad.json"
    pool.write_text(json.dumps({"agents": [{"name": "x", "kind": "teleport"}]}))
    r = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--port", "0", "--threads", "1",
                        "--agents", str(pool)], capture_output=True, timeout=60)
    assert r.returncode == 1
    assert "agents[0].kind" in r.stderr.decode()


def test_delete_while_the_model_decides(srv):
    t0 = time.time()
    with httpx.stream("POST", srv.url + "/v1/tasks", timeout=30,
                      json={"input": "Plan a trip.", "stream": True, "deadline_ms": 30000}) as r:
        tid = r.headers["x-task-id"]
        # the first decision is prefilling / decoding: its prompt's prefix is
        # cached by the module's earlier tasks, and a 160-token decision took
        # under 0.5 s on an AVX-512 EPYC VM (the cancel then came too late)
        time.sleep(0.1)
        d = httpx.delete(f"{srv.url}/v1/tasks/{tid}", timeout=10).json()
        ev = sse_events(list(r.iter_lines()))
    assert d["status"] == "cancelled"
    assert ev[-1]["event"] == "task.error" and ev[-1]["data"]["status"] == "cancelled"
    assert time.time() - t0 < 5
    # The engine answers the cancel (after its current step: seconds under
    # sanitizers): the decision's usage arrives, and the events stay as they were.
    end = time.time() + 30
    while time.time() < end and not httpx.get(f"{srv.url}/v1/tasks/{tid}", timeout=10).json().get("usage"):
        time.sleep(0.1)
    s = httpx.get(f"{srv.url}/v1/tasks/{tid}", timeout=10).json()
    assert s["usage"]["decisions"][0]["completion_tokens"] < 160
    with httpx.stream("GET", f"{srv.url}/v1/tasks/{tid}/events", timeout=10) as r:
        assert [e["id"] for e in sse_events(list(r.iter_lines()))] == [e["id"] for e in ev]


def test_sigterm_ends_open_task_streams_then_exits_0(start_server, mock_port, tmp_path):  # noqa: F811
    # Three tasks open at SIGTERM: a streamed and a plain scripted one each
    # waiting on a 30 s agent call (in flight for certain, whatever the
    # machine's speed; a model-driven task alone could end before the
    # signal), and a model-driven one submitted just before it (its
    # decision in the engine).  Every stream gets a terminal event, the
    # waiting ones cancelled, and the server exits 0 within its grace.
    pool = tmp_path / "agents.json"
    pool.write_text(json.dumps({"agents": [
        {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{mock_port}/",
         "description": "Mock agent.", "input_schema": {"type": "object"}, "timeout_ms": 60000}]}))
    s = start_server("--agents", str(pool), "--kv-blocks", 256)
    slow = [{"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 30000}}]},
            {"final": {"answer": "{{a.ok}}", "uses": ["a"]}}]
    got = {"events": [], "model": []}

    def stream(key, body):
        with httpx.stream("POST", s.url + "/v1/tasks", timeout=30, json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                got[key].append(line)

    def plain():
        got["plain"] = post(s, {"input": "Plan a trip.", "script": slow}).json()
    ths = [threading.Thread(target=stream, args=("events", {"input": "Plan a trip.", "script": slow})),
           threading.Thread(target=plain)]
    for t in ths:
        t.start()
    assert server_fixtures.wait_for(lambda: "event: call.dispatched" in list(got["events"]), timeout=10), got
    time.sleep(0.3)                                       # the plain task's call, dispatched at once too
    model = threading.Thread(target=stream, args=("model", {"input": "What is 17*23?"}))
    model.start()
    ths.append(model)
    assert server_fixtures.wait_for(lambda: "event: task.created" in list(got["model"]), timeout=10), got
    t0 = time.time()
    assert s.stop() == 0, s.output()[-2000:]
    stopped = time.time() - t0
    for t in ths:
        t.join(10)
    print(f"\nSIGTERM with 3 open task requests: exit in {stopped:.2f} s")
    assert time.time() - t0 < 25, (stopped, s.output()[-1500:])     # ends, never hangs
    events = sse_events(got["events"])
    assert events[-1]["event"] == "task.error", events
    assert events[-1]["data"]["status"] == "cancelled"
    assert got["plain"]["status"] == "cancelled" and "shutting down" in got["plain"]["error"]
    model_events = sse_events(got["model"])
    assert model_events[-1]["event"] in ("task.error", "task.final"), model_events   # a terminal event, either way
    if model_events[-1]["event"] == "task.error":
        assert model_events[-1]["data"]["status"] == "cancelled", model_events


def test_plain_request_client_leaves_task_runs_on(srv):
    before = srv.metrics().get("paraserve_client_disconnects_total", 0)
    body = json.dumps({"input": "leave", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 300}}]},
        {"final": {"answer": "{{a.args.sleep_ms}}", "uses": ["a"]}}]}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    time.sleep(0.1)
    sock.close()                                         # gone before the task ends
    assert server_fixtures.wait_for(
        lambda: srv.metrics().get("paraserve_client_disconnects_total", 0) >= before + 1, timeout=5)
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200


def test_event_streams_carry_keepalive_comments_while_a_task_waits(start_server, mock_port, tmp_path):  # noqa: F811
    # A proxy in front cuts a stream that stays silent past its idle timeout;
    # with sse_heartbeat_ms the server writes comment lines (which SSE
    # clients ignore) while the task waits on a slow call.
    pool = tmp_path / "agents.json"
    pool.write_text(json.dumps({"agents": [
        {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{mock_port}/",
         "description": "Mock agent.", "input_schema": {"type": "object"}, "timeout_ms": 10000}]}))
    s = start_server("--agents", str(pool), "--kv-blocks", 64, "--sse-heartbeat-ms", 100)
    body = {"input": "wait", "stream": True, "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 1000}}]},
        {"final": {"answer": "{{a.ok}}", "uses": ["a"]}}]}
    with httpx.stream("POST", s.url + "/v1/tasks", json=body, timeout=30) as r:
        lines = list(r.iter_lines())
    pings = [i for i, line in enumerate(lines) if line == ": keep-alive"]
    assert len(pings) >= 5, lines
    assert all(lines[i + 1] == "" for i in pings), lines   # each comment is its own SSE block
    ev = sse_events(lines)
    assert [e["event"] for e in ev][-1] == "task.final" and ev[-1]["data"]["output"] == "true", ev
    assert [e["id"] for e in ev] == list(range(1, len(ev) + 1))


def prom_samples(srv):
    """GET /metrics parsed by prometheus_client (a strict parser of the text
    format): {(sample name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    r = httpx.get(srv.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"sample {key} twice"
            out[key] = s.value
    return out


def test_metrics_count_tasks_agent_calls_by_status_and_their_durations(srv):
    """/metrics shows the tasks (by mode and end status, running now, their
    durations) and every agent's calls by feedback status, attempts,
    retries, running / queued calls, breaker state and call durations."""
    def val(m, name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    before = prom_samples(srv)
    s = post(srv, {"input": "metrics", "script": [
        {"calls": [{"id": "ok", "to": "mock", "args": {}},
                   {"id": "e5xx", "to": "mock", "args": {"fault": "5xx"}},
                   {"id": "html", "to": "mock", "args": {"fault": "nonjson"}},
                   {"id": "hang", "to": "mock", "args": {"fault": "hang"}},
                   {"id": "bad", "to": "mock", "args": {"sleep_ms": "soon"}},
                   {"id": "calc", "to": "calculator", "args": {"expression": "6*7"}},
                   {"id": "who", "to": "nobody", "args": {}}]},
        {"final": {"answer": "{{calc}}", "uses": ["ok", "e5xx", "html", "hang", "bad", "calc", "who"]}}]},
        timeout=30).json()
    assert s["status"] == "completed", s
    calls = by_id(s)
    assert {k: c["status"] for k, c in calls.items()} == {
        "ok": "ok", "e5xx": "exec_error", "html": "parse_error", "hang": "timeout", "bad": "rejected",
        "calc": "ok", "who": "rejected"}, calls
    # a task cancelled with a call in flight
    with httpx.stream("POST", srv.url + "/v1/tasks", timeout=30, json={"input": "metrics cancel", "stream": True, "script": [
            {"calls": [{"id": "slow", "to": "mock", "args": {"sleep_ms": 5000}}]},
            {"final": {"answer": "x", "uses": ["slow"]}}]}) as r:
        tid = r.headers["x-task-id"]
        lines = r.iter_lines()
        until_dispatched(lines)
        during = prom_samples(srv)
        httpx.delete(f"{srv.url}/v1/tasks/{tid}", timeout=10)
        list(lines)
    after = prom_samples(srv)

    def delta(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    assert val(during, "paraserve_tasks_running") >= val(before, "paraserve_tasks_running") + 1
    assert val(during, "paraserve_agent_calls_running", agent="mock") >= 1
    assert delta("paraserve_tasks_created_total", mode="script") == 2
    assert delta("paraserve_tasks_created_total", mode="model") == 0
    assert delta("paraserve_tasks_finished_total", status="completed") == 1
    assert delta("paraserve_tasks_finished_total", status="cancelled") == 1
    assert delta("paraserve_tasks_finished_total", status="failed") == 0
    assert delta("paraserve_task_decisions_total", mode="script") == 3   # 2 + the cancelled task's first
    assert delta("paraserve_task_duration_seconds_count") == 2
    for st, n in {"ok": 1, "exec_error": 1, "parse_error": 1, "timeout": 1, "rejected": 1, "cancelled": 1}.items():
        assert delta("paraserve_agent_calls_total", agent="mock", status=st) == n, st
    assert delta("paraserve_agent_calls_total", agent="calculator", status="ok") == 1
    assert delta("paraserve_agent_calls_unknown_agent_total") == 1
    mock_attempts = sum(c["attempts"] for c in s["calls"] if c["to"] == "mock") + 1
    assert delta("paraserve_agent_attempts_total", agent="mock") == mock_attempts
    assert delta("paraserve_agent_retries_total", agent="mock") == mock_attempts - 5   # 5 mock calls dispatched
    assert calls["e5xx"]["attempts"] == 2                                            # retries: 1
    # durations: the 5 dispatched mock calls, the hung one over its 800 ms timeout
    assert delta("paraserve_agent_call_duration_seconds_count", agent="mock") == 5
    assert delta("paraserve_agent_call_duration_seconds_sum", agent="mock") >= 0.8
    assert delta("paraserve_agent_call_duration_seconds_bucket", agent="mock", le="+Inf") == 5
    assert delta("paraserve_agent_call_duration_seconds_bucket", agent="mock", le="0.5") >= 3  # ok, 5xx, html
    assert val(after, "paraserve_agent_breaker_state", agent="mock") == 0
    assert val(after, "paraserve_agent_calls_queued", agent="mock") == 0
    # cumulative buckets never decrease
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in after.items()
                      if k[0] == "paraserve_agent_call_duration_seconds_bucket" and dict(k[1])["agent"] == "mock"))
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets


def test_list_tasks_pages_filters_and_keeps_tenants_apart(start_server, mock_port, tmp_path):  # noqa: F811
    """GET /v1/tasks: the caller's tenant's tasks, newest first (or
    order=asc), `limit` per page, `after` the previous page's last id,
    `status` filter; an OpenAI list; bad parameters a 400 naming them."""
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"api_keys": [{"key": "sk-list-alpha", "tenant": "alpha"},
                                            {"key": "sk-list-beta", "tenant": "beta"}]}))
    pool = tmp_path / "agents.json"
    pool.write_text(json.dumps({"agents": [
        {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{mock_port}/",
         "description": "Mock agent.", "input_schema": {"type": "object"}, "timeout_ms": 60000}]}))
    s = start_server("--config", str(cfg), "--agents", str(pool), "--kv-blocks", 64)
    A, B = {"Authorization": "Bearer sk-list-alpha"}, {"Authorization": "Bearer sk-list-beta"}

    def submit(h, body):
        r = httpx.post(s.url + "/v1/tasks", json=body, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def page(h, **q):
        r = httpx.get(s.url + "/v1/tasks", params=q, headers=h, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    done = {"script": [{"final": {"answer": "x"}}]}
    long_input = "é" * 200 + "tail"     # 404 bytes: cut at 256, on a character boundary
    ids = [submit(A, {"input": long_input if i == 0 else f"alpha {i}", **done}) for i in range(5)]
    beta = submit(B, {"input": "beta 0", **done})
    bad = submit(A, {"input": "fails", "script": [{"calls": [{"id": "k", "to": "mock", "args": {}}]}]})  # no final
    # one still running: its call sleeps 30 s (cancelled at the end)
    with httpx.stream("POST", s.url + "/v1/tasks", headers=A, timeout=60, json={
            "input": "running", "stream": True,
            "script": [{"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 30000}}]},
                       {"final": {"answer": "{{a}}", "uses": ["a"]}}]}) as r:
        running = r.headers["x-task-id"]
        lines = r.iter_lines()
        until_dispatched(lines)
        newest_first = [running, bad] + ids[::-1]
        p = page(A)
        assert p["object"] == "list" and [t["id"] for t in p["data"]] == newest_first and not p["has_more"]
        assert p["first_id"] == running and p["last_id"] == ids[0]
        assert beta not in [t["id"] for t in p["data"]]                      # another tenant's
        assert [t["id"] for t in page(B)["data"]] == [beta]
        first = {t["id"]: t for t in p["data"]}
        t0 = first[ids[0]]
        assert t0["input"] == "é" * 128 and t0["input_truncated"] is True and len(t0["input"].encode()) == 256
        assert first[ids[1]] == {**first[ids[1]], "object": "task", "status": "completed", "mode": "script",
                                 "input": "alpha 1", "input_truncated": False, "rounds": 1, "calls": 0}
        assert abs(first[ids[1]]["created_at"] - time.time()) < 120
        assert first[running]["status"] == "running" and first[running]["calls"] == 1
        assert first[bad]["status"] == "failed"
        # pages of 3, newest first, then oldest first
        got, after, pages = [], None, 0
        while True:
            q = {"limit": 3, **({"after": after} if after else {})}
            pg = page(A, **q)
            got += [t["id"] for t in pg["data"]]
            pages += 1
            if not pg["has_more"]:
                break
            after = pg["last_id"]
        assert got == newest_first and pages == 3
        assert [t["id"] for t in page(A, order="asc", limit=100)["data"]] == newest_first[::-1]
        assert [t["id"] for t in page(A, order="asc", after=ids[3])["data"]] == [ids[4], bad, running]
        assert [t["id"] for t in page(A, status="running")["data"]] == [running]
        assert [t["id"] for t in page(A, status="completed", limit=2)["data"]] == ids[:-3:-1]
        assert page(A, status="cancelled")["data"] == [] and page(A, status="cancelled")["first_id"] is None
        # bad parameters: 400 naming them; another tenant's id as a cursor is unknown
        for q, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "x"}, "limit"),
                         ({"order": "up"}, "order"), ({"status": "done"}, "status"),
                         ({"after": "task_nope"}, "after"), ({"after": beta}, "after"), ({"sort": "id"}, "sort"),
                         ({"status": ["running", "bogus"]}, "status")]:
            r = httpx.get(s.url + "/v1/tasks", params=q, headers=A, timeout=10)
            err_shape(r, 400)
            assert r.json()["error"]["param"] == param, (q, r.text)
        assert httpx.get(s.url + "/v1/tasks", timeout=10).status_code == 401     # a key is needed
        h = httpx.head(s.url + "/v1/tasks", headers=A, timeout=10)
        assert h.status_code == 200 and h.content == b""
        httpx.delete(f"{s.url}/v1/tasks/{running}", headers=A, timeout=10)
        list(lines)
    assert [t["status"] for t in page(A, limit=1)["data"]] == ["cancelled"]


def test_one_action_of_many_calls_costs_linear_time(srv):
    """30,000 calls in one action (a 330 KB body, max_calls raised): each
    call is looked up by id through hash indexes (the task's ledger, the
    executor's group) and resolves only its own dependents, so the loop
    spends linear time on it.  Before, every call scanned the ledger and
    the group: 16,000 calls blocked the loop for 10 s, 32,000 for 62 s,
    and a reply cut by the idle timeout was lost."""
    n = 30000
    calls = [{"to": "nobody"}] * (n - 2) + [{"id": "a", "to": "calculator", "args": {"expression": "1+1"}},
                                           {"id": "b", "to": "calculator", "args": {"expression": "{{a}}*3"},
                                            "after": ["a"]}]
    t0 = time.time()
    r = post(srv, {"input": "many", "max_calls": 100000, "script": [
        {"calls": calls}, {"final": {"answer": "{{b}}", "uses": ["a", "b"]}}]}, timeout=120)
    took = time.time() - t0
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["status"] == "completed" and s["output"] == "6", {k: s[k] for k in ("status", "output")}
    assert len(s["calls"]) == n and sum(c["status"] == "rejected" for c in s["calls"]) == n - 2
    ids = [c["id"] for c in s["calls"]]
    assert len(set(ids)) == n                       # fresh ids, each once
    assert took < 20, f"{n} calls took {took:.1f} s"   # linear: ~0.3 s here (Release), seconds under ASan
    print(f"\n{n} calls in one action: {took:.2f} s")


def test_calls_with_bad_ids_get_fresh_ids_and_every_call_is_counted_once(srv):
    """A call whose id is not a string of 1-64 characters (or that is not an
    object) is recorded rejected under a fresh id, the same in its events
    and its record; duplicate ids and calls over max_calls, rejected by the
    task itself, count in paraserve_agent_calls_total like the executor's
    rejections (before: null ids and statuses, a `call.result` under an
    id the executor made up, landing on another call's record, and these
    rejections missing from the metrics)."""
    before = prom_samples(srv)
    ev = stream_task(srv, {"input": "ids", "max_calls": 1, "script": [
        {"calls": [{"id": 5, "to": "calculator", "args": {"expression": "1"}},
                   {"id": "#2", "to": "calculator", "args": {"expression": "2"}},
                   {"id": "x" * 65, "to": "mock", "args": {}},
                   {"id": "#2", "to": "calculator", "args": {"expression": "3"}},
                   {"id": "", "to": "calculator", "args": {}},
                   {"id": "late", "to": "calculator", "args": {"expression": "4"}}]},
        {"final": {"answer": "{{#2}}", "uses": ["#2"]}}]})
    s = ev[-1]["data"]
    assert ev[-1]["event"] == "task.final" and s["output"] == "2", s
    recs = [(c["id"], c["to"], c["status"]) for c in s["calls"]]
    assert recs == [("c1", "calculator", "rejected"), ("#2", "calculator", "ok"), ("c3", "mock", "rejected"),
                    ("#2", "calculator", "rejected"), ("c5", "calculator", "rejected"),
                    ("late", "calculator", "rejected")], recs
    errs = [c["error"] for c in s["calls"]]
    assert "must be a string of 1-64 characters (recorded as 'c1')" in errs[0] and "'c3'" in errs[2]
    assert "duplicate call id" in errs[3] and "call limit (1)" in errs[5]
    results = [e["data"]["id"] for e in ev if e["event"] == "call.result"]
    assert sorted(results) == sorted(c[0] for c in recs)          # one result per record, same ids
    assert all(c["status"] for c in s["calls"])
    after = prom_samples(srv)

    def delta(agent, st):
        key = ("paraserve_agent_calls_total", (("agent", agent), ("status", st)))
        return after.get(key, 0) - before.get(key, 0)
    assert delta("calculator", "rejected") == 4 and delta("mock", "rejected") == 1
    assert delta("calculator", "ok") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_agent_reply_not_utf8_or_holding_nul_is_a_parse_error(hsrv, stream):
    """An agent reply is JSON text only when it is UTF-8 (RFC 8259), and a
    string holding a NUL (\\u0000) would reach the model and the client cut
    short: both are parse_error, and every reply and event stays valid
    UTF-8 JSON (before: the raw 0xFF byte reached the summary and the SSE
    events, and "a\\u0000b" became "a")."""
    body = {"input": "bad bytes", "script": [
        {"calls": [{"id": "u", "to": "mock", "args": {"fault": "badutf8"}},
                   {"id": "z", "to": "mock", "args": {"fault": "nul"}},
                   {"id": "k", "to": "mock", "args": {}}]},
        {"final": {"answer": "{{u}} {{z}} {{k.ok}}", "uses": ["u", "z", "k"]}}]}
    if stream:
        ev = stream_task(hsrv, body)     # each event's data parsed as JSON (UTF-8)
        s = ev[-1]["data"]
    else:
        r = post(hsrv, body)
        r.content.decode("utf-8")        # strict: raises on a stray byte
        s = r.json()
    c = by_id(s)
    assert c["u"]["status"] == "parse_error" and "invalid UTF-8 at byte" in c["u"]["error"], c["u"]
    assert c["z"]["status"] == "parse_error" and "NUL character" in c["z"]["error"], c["z"]
    assert c["k"]["status"] == "ok" and s["output"] == "{{u}} {{z}} true", s



def test_script_action_over_the_parser_limit_is_refused(start_server):  # noqa: F811
    """A script action the action parser would refuse - printed longer than
    1 MiB (possible with --max-body-bytes above it), or nested deeper than
    64 - is a 400 naming it (before: the decision ended "action: incomplete
    JSON object" and the task completed without those calls)."""
    s = start_server("--max-body-bytes", 8 << 20, "--kv-blocks", 64)
    calls = [{"to": "calculator", "args": {"expression": "1+%d" % i}} for i in range(40000)]   # ~1.9 MB
    r = httpx.post(s.url + "/v1/tasks", timeout=60, json={"input": "big", "max_calls": 100000, "script": [
        {"calls": calls}, {"final": {"answer": "x"}}]})
    err_shape(r, 400)
    e = r.json()["error"]
    assert e["param"] == "script[0]" and "the limit is 1048576" in e["message"], e
    # the same with a number the text path would change (0.30000000000000004
    # prints as 0.3) ahead of the bulk: the size bound still covers it all
    # (it stopped at that number, and the action went on to lose its calls)
    body = json.dumps({"input": "big", "script": [
        {"calls": [{"id": "a", "to": "calculator", "args": {"n": 0.5, "pad": "x" * (1536 << 10)}}]},
        {"final": {"answer": "x"}}]}).replace('"n": 0.5', '"n": 0.30000000000000004')
    r = httpx.post(s.url + "/v1/tasks", timeout=60, content=body, headers={"Content-Type": "application/json"})
    err_shape(r, 400)
    assert "the limit is 1048576" in r.json()["error"]["message"], r.text
    deep = 1
    for _ in range(61):
        deep = [deep]
    r = httpx.post(s.url + "/v1/tasks", timeout=60, json={"input": "deep", "script": [
        {"final": {"answer": "x"}}, {"calls": [{"to": "calculator", "args": {"x": deep}}]}]})
    err_shape(r, 400)
    assert r.json()["error"]["param"] == "script[1]" and "nested deeper than 64" in r.json()["error"]["message"]
    # within both: accepted and run
    r = httpx.post(s.url + "/v1/tasks", timeout=60, json={"input": "fits", "max_calls": 100000, "script": [
        {"calls": calls[:15000]}, {"final": {"answer": "x"}}]})
    assert r.status_code == 200 and r.json()["status"] == "completed" and len(r.json()["calls"]) == 15000, r.text[:300]
