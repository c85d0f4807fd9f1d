"""Running-task limits of `paraserve serve` (--max-running-tasks,
--max-running-tasks-per-tenant): tasks outlive their connections (a client
that leaves a stream leaves its task running), so without a limit one
client could start them without end.  Past a limit POST /v1/tasks is 429
with OpenAI's rate-limit error and Retry-After, which the openai SDK turns
into RateLimitError and, with retries, waits out; a tenant at its own
limit does not hold the others back; every end frees a slot."""
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

import server_fixtures
from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

KEYS = {"alpha": "sk-limits-alpha", "beta": "sk-limits-beta"}
SLOW = {"input": "hold a slot", "script": [
    {"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 20000}}]},
    {"final": {"answer": "{{s}}", "uses": ["s"]}}]}


@pytest.fixture(scope="module")
def srv(start_server, tmp_path_factory):  # noqa: F811
    with server_fixtures.mock_agent() as port:
        d = tmp_path_factory.mktemp("limits")
        (d / "agents.json").write_text(json.dumps({"agents": [
            {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{port}/", "description": "Mock agent.",
             "timeout_ms": 30000, "max_concurrency": 16, "retries": 0, "breaker_failures": 0}]}))
        (d / "server.json").write_text(json.dumps({"api_keys": [
            {"key": KEYS["alpha"], "tenant": "alpha"}, {"key": KEYS["beta"], "tenant": "beta"}]}))
        yield start_server("--config", str(d / "server.json"), "--agents", str(d / "agents.json"),
                           "--kv-blocks", 64, "--max-running-tasks", 3, "--max-running-tasks-per-tenant", 2)


def auth(who):
    return {"Authorization": f"Bearer {KEYS[who]}"}


def start_and_leave(srv, who):
    """A streamed task whose client reads its first event and leaves: the
    task runs on.  Its id."""
    with httpx.stream("POST", srv.url + "/v1/tasks", json={**SLOW, "stream": True}, headers=auth(who),
                      timeout=30) as r:
        assert r.status_code == 200, r.read()
        return r.headers["x-task-id"]


def sdk(srv, who, retries=0):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEYS[who], max_retries=retries)


def refused(srv):
    m = srv.metrics()
    return (m['paraserve_tasks_refused_total{limit="max_running"}'],
            m['paraserve_tasks_refused_total{limit="max_running_per_tenant"}'])


def test_limits_refuse_with_429_and_free_on_every_end(srv):
    r0 = refused(srv)
    a1, a2 = start_and_leave(srv, "alpha"), start_and_leave(srv, "alpha")
    # alpha at its own limit: 429 from the openai SDK's point of view
    with pytest.raises(openai.RateLimitError) as ei:
        sdk(srv, "alpha").post("/tasks", body=SLOW, cast_to=httpx.Response)
    e = ei.value
    assert e.status_code == 429 and e.response.headers["retry-after"] == "1"
    err = e.response.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests" and err["param"] is None, err
    assert "per tenant" in err["message"], err
    # a bad request is still a 400, not a 429
    r = httpx.post(srv.url + "/v1/tasks", json={"input": 1}, headers=auth("alpha"), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    # beta is not held back by alpha's limit: its first task runs ...
    b1 = start_and_leave(srv, "beta")
    # ... and its second meets the server's limit (3)
    r = httpx.post(srv.url + "/v1/tasks", json=SLOW, headers=auth("beta"), timeout=10)
    assert r.status_code == 429 and "server's limit" in r.json()["error"]["message"], r.text
    assert refused(srv) == (r0[0] + 1, r0[1] + 1)
    assert srv.metrics()["paraserve_tasks_running"] == 3
    # the SDK's own retry honours Retry-After: a slot freed meanwhile (a
    # DELETE 0.3 s in) lets its retry through
    threading.Timer(0.3, lambda: httpx.delete(f"{srv.url}/v1/tasks/{a1}", headers=auth("alpha"),
                                              timeout=10)).start()
    t0 = time.time()
    resp = sdk(srv, "beta", retries=2).post("/tasks", body={**SLOW, "stream": True}, cast_to=httpx.Response,
                                       stream=True)
    b2 = resp.headers["x-task-id"]
    resp.close()
    assert 0.9 < time.time() - t0 < 10, time.time() - t0
    # a finished task frees its slot too: a quick one by alpha after one of
    # its slow ones is cancelled
    httpx.delete(f"{srv.url}/v1/tasks/{a2}", headers=auth("alpha"), timeout=10)
    s = httpx.post(srv.url + "/v1/tasks", json={"input": "quick", "script": [{"final": {"answer": "ok"}}]},
                   headers=auth("alpha"), timeout=30)
    assert s.status_code == 200 and s.json()["status"] == "completed", s.text
    assert wait_for(lambda: srv.metrics()["paraserve_tasks_running"] == 2)
    for tid in (b1, b2):
        assert httpx.delete(f"{srv.url}/v1/tasks/{tid}", headers=auth("beta"), timeout=10).status_code == 200
    assert wait_for(lambda: srv.metrics()["paraserve_tasks_running"] == 0)
    # all slots back: two for alpha, one more for beta
    ids = [start_and_leave(srv, "alpha"), start_and_leave(srv, "alpha"), start_and_leave(srv, "beta")]
    for tid, who in zip(ids, ["alpha", "alpha", "beta"]):
        httpx.delete(f"{srv.url}/v1/tasks/{tid}", headers=auth(who), timeout=10)
