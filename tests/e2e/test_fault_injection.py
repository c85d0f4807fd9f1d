"""Out of memory inside a running server: every cJSON allocation a request
makes on the server's loop fails once, in turn, and each time the client
gets the whole answer or an error - a 500 with the OpenAI error body, an
SSE error event, a task ended `failed` with an "out of memory" error -
never a partial answer, a hole in a stream, a crash or a leak.

Needs a binary built with -DPARASERVE_FAULT_INJECTION=ON (scripts/test's
ASan build): it serves POST /debug/fail-json-alloc?after=N, which makes the
N-th cJSON allocation on the loop's thread from then on fail.  Release
builds do not have the route (404): there the module is skipped, saying so.
The engine thread's allocations are not made to fail here (the unit tests
cover the builders; this covers the server's paths around them:
chunk_json / fail_if_oom, the final reply, the tasks API's replies and
event streams)."""
import json

import httpx
import pytest

from server_fixtures import sse_events, start_server  # noqa: F401  (fixture)

MAX_N = 800   # no request here makes more cJSON allocations on the loop


@pytest.fixture(scope="module")
def srv(start_server):  # noqa: F811
    s = start_server("--kv-blocks", 256, "--max-batch", 8)
    r = httpx.get(s.url + "/debug/fail-json-alloc", timeout=10)
    if r.status_code == 404:
        pytest.skip("this binary was built without PARASERVE_FAULT_INJECTION (scripts/test's ASan build has it)")
    assert r.status_code == 200, r.text
    return s


def arm(srv, n):
    r = httpx.post(f"{srv.url}/debug/fail-json-alloc?after={n}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def failures(srv):
    return httpx.get(srv.url + "/debug/fail-json-alloc", timeout=10).json()["failures"]


def is_error_body(r, status=500):
    if r.status_code != status:
        return False
    e = r.json().get("error")
    return isinstance(e, dict) and set(e) >= {"message", "type", "param", "code"} and e["message"]


def sweep(srv, request, check):
    """For n = 1, 2, ...: arm the n-th allocation, run request(), check() its
    outcome; stop at the first n the request did not reach.  Returns
    (n, {outcome kind: count})."""
    kinds = {}
    for n in range(1, MAX_N + 1):
        f0 = failures(srv)
        arm(srv, n)
        out = request()
        hit = failures(srv) > f0
        arm(srv, 0)
        kind = check(out, hit, n)
        kinds[kind] = kinds.get(kind, 0) + 1
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200, n
        if not hit:
            return n, kinds
    pytest.fail(f"the request still made a failing allocation at n = {MAX_N}")


CHAT = {"model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 2,
        "temperature": 0}


def test_chat_answer_is_whole_or_a_500(srv):
    ref = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=60).json()
    def usage(u):   # cached_tokens depends on the prefix cache: the rest is fixed
        return u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]

    want = (ref["choices"][0]["message"]["content"], ref["choices"][0]["finish_reason"], usage(ref["usage"]))

    def check(r, hit, n):
        if r.status_code == 200:
            b = r.json()
            got = (b["choices"][0]["message"]["content"], b["choices"][0]["finish_reason"], usage(b["usage"]))
            assert got == want and set(b) >= {"id", "object", "created", "model", "choices", "usage"}, (n, b)
            return "whole"
        assert is_error_body(r), (n, r.status_code, r.text)
        return "500"

    n, kinds = sweep(srv, lambda: httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=60), check)
    print(f"\nchat: {n - 1} allocations failed in turn: {kinds}")
    assert kinds.get("500", 0) > 0


def sse_data(text):
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_chat_stream_is_whole_or_ends_with_an_error_event(srv):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    ref = sse_data(httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).text)
    want = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in ref[:-1]
                   if json.loads(d)["choices"])
    assert ref[-1] == "[DONE]" and want

    def check(r, hit, n):
        if r.status_code != 200:
            assert is_error_body(r), (n, r.status_code, r.text)
            return "500"
        data = sse_data(r.text)
        assert data and data[-1] == "[DONE]", (n, r.text)
        objs = [json.loads(d) for d in data[:-1]]        # every event whole JSON
        errors = [i for i, o in enumerate(objs) if "error" in o]
        if errors:
            assert errors == [len(objs) - 1], (n, data)   # one, the last
            return "error event"
        text = "".join(o["choices"][0]["delta"].get("content", "") for o in objs if o["choices"])
        assert text == want, (n, text, want)              # no chunk missing
        assert objs[-1]["usage"] and not objs[-1]["choices"], (n, data)
        return "whole"

    n, kinds = sweep(srv, lambda: httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60), check)
    print(f"\nchat stream: {n - 1} allocations failed in turn: {kinds}")
    assert kinds.get("error event", 0) > 0


TASK = {"input": "sum", "script": [
    {"calls": [{"id": "c1", "to": "calculator", "args": {"expression": "2+3*4"}},
               {"id": "c2", "to": "calculator", "args": {"expression": "{{c1}}*2"}, "after": ["c1"]}]},
    {"final": {"answer": "{{c1}} and {{c2}}", "uses": ["c1", "c2"]}}]}


def check_task_summary(s, n):
    """Completed with both calls ok and the answer rendered; or completed
    with a call failed by the lack of memory, typed (its dependent
    cancelled), and the answer's references to it left as written (the
    documented rendering of a reference that does not resolve); or failed
    with an "out of memory" error; or, in a terminal event, the fallback
    text kept for an end whose report could not be printed (status and the
    error; GET has the whole summary)."""
    if "out of memory while reporting the task's end" in (s.get("error") or ""):
        assert s["status"] in ("completed", "failed") and s["calls"] == [], (n, s)
        return "end reported by its fallback"
    if s["status"] == "failed":
        assert "out of memory" in s["error"], (n, s)
        return "task failed: out of memory"
    assert s["status"] == "completed", (n, s)
    calls = {c["id"]: c for c in s["calls"]}
    assert list(calls) == ["c1", "c2"], (n, s)
    if calls["c1"]["status"] == calls["c2"]["status"] == "ok":
        assert s["output"] == "14 and 28" and calls["c2"]["result"] == {"value": 28}, (n, s)
        return "whole"
    bad = next(c for c in s["calls"] if c["status"] != "ok")
    assert bad["status"] == "exec_error" and "out of memory" in bad["error"], (n, s)
    if bad["id"] == "c1":
        assert calls["c2"]["status"] == "cancelled" and "dependency 'c1'" in calls["c2"]["error"], (n, s)
        assert s["output"] == "{{c1}} and {{c2}}", (n, s)
    else:
        assert s["output"] == "14 and {{c2}}", (n, s)
    return "call failed: out of memory"


def test_task_reply_is_whole_a_typed_failure_or_a_500(srv):
    def check(r, hit, n):
        if r.status_code != 200:
            assert is_error_body(r), (n, r.status_code, r.text)
            return "500"
        s = r.json()
        kind = check_task_summary(s, n)
        # the stored task answers GET the same way
        g = httpx.get(f"{srv.url}/v1/tasks/{s['id']}", timeout=10)
        assert g.status_code == 200 and g.json()["status"] == s["status"], (n, g.text)
        return kind

    n, kinds = sweep(srv, lambda: httpx.post(srv.url + "/v1/tasks", json=TASK, timeout=60), check)
    print(f"\ntask: {n - 1} allocations failed in turn: {kinds}")
    assert len(kinds) >= 2, kinds


def test_task_stream_events_are_whole_and_end_once(srv):
    def request():
        return httpx.post(srv.url + "/v1/tasks", json={**TASK, "stream": True}, timeout=60)

    def check(r, hit, n):
        if r.status_code != 200:
            assert is_error_body(r), (n, r.status_code, r.text)
            return "500"
        ev = sse_events(r.text.splitlines())      # every event's data whole JSON
        assert ev and [e["id"] for e in ev] == list(range(1, len(ev) + 1)), (n, r.text)
        terminal = [e for e in ev if e["event"] in ("task.final", "task.error")]
        assert terminal == [ev[-1]], (n, r.text)
        return check_task_summary(ev[-1]["data"], n)

    n, kinds = sweep(srv, request, check)
    print(f"\ntask stream: {n - 1} allocations failed in turn: {kinds}")
    assert len(kinds) >= 2, kinds


def test_get_list_and_events_of_stored_tasks_are_whole_or_a_500(srv):
    s = httpx.post(srv.url + "/v1/tasks", json=TASK, timeout=60).json()
    assert s["status"] == "completed", s
    url = f"{srv.url}/v1/tasks/{s['id']}"
    ref_events = sse_events(httpx.get(url + "/events", timeout=10).text.splitlines())
    # A summary is printed once and then shared: each GET / DELETE of the
    # sweep reads a task no request has read yet, so that it prints.
    fresh = []
    for _ in range(24):
        f = httpx.post(srv.url + "/v1/tasks", json={**TASK, "stream": True}, timeout=60)
        assert f.status_code == 200 and sse_events(f.text.splitlines())[-1]["event"] == "task.final"
        fresh.append((f.headers["x-task-id"], sse_events(f.text.splitlines())[-1]["data"]))

    def unread():
        tid, final = fresh.pop()
        want = {k: v for k, v in final.items() if k not in ("task", "t_ms")}
        return want, f"{srv.url}/v1/tasks/{tid}"

    def check_get(r, hit, n):
        want = r.want
        if r.status_code != 200:
            assert is_error_body(r), (n, r.status_code, r.text)
            return "500"
        assert r.json() == want, (n, r.text)
        return "whole"

    def read(method):
        def request():
            want, u = unread()
            r = httpx.request(method, u, timeout=10)
            r.want = want
            return r
        return request

    def check_events(r, hit, n):
        if r.status_code != 200:
            assert is_error_body(r), (n, r.status_code, r.text)
            return "500"
        assert sse_events(r.text.splitlines()) == ref_events, (n, r.text)
        return "whole"

    n, kinds = sweep(srv, read("GET"), check_get)
    print(f"\nGET task: {n - 1} allocations failed in turn: {kinds}")
    assert kinds.get("500"), kinds   # the summary's printing was reached
    n, kinds = sweep(srv, lambda: httpx.get(url + "/events", timeout=10), check_events)
    print(f"GET events: {n - 1} allocations failed in turn: {kinds}")
    n, kinds = sweep(srv, read("DELETE"), check_get)   # ended: nothing to cancel
    print(f"DELETE ended task: {n - 1} allocations failed in turn: {kinds}")
    assert kinds.get("500"), kinds
    for _ in range(3):
        assert httpx.post(srv.url + "/v1/tasks", json=TASK, timeout=60).json()["status"] == "completed"
    ref_list = httpx.get(srv.url + "/v1/tasks?limit=3", timeout=10).json()
    assert len(ref_list["data"]) == 3 and ref_list["has_more"]

    def check_list(r, hit, n):
        if r.status_code != 200:
            assert is_error_body(r), (n, r.status_code, r.text)
            return "500"
        assert r.json() == ref_list, (n, r.text)   # never a page with a task or member missing
        return "whole"

    n, kinds = sweep(srv, lambda: httpx.get(srv.url + "/v1/tasks?limit=3", timeout=10), check_list)
    print(f"GET /v1/tasks?limit=3: {n - 1} allocations failed in turn: {kinds}")
