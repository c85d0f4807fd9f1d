"""A `local` agent's generation runs as the tenant of the task that made the
call: the executor sends the task's tenant (its decimal engine id) in
X-Paraserve-Tenant beside the local port's token, and only that
token-authenticated port reads it.  So a local agent's request counts under
its task's tenant in /metrics and uses that tenant's own prefix cache (before:
every local-agent generation ran as tenant 0, so tenants shared cached blocks
through their agents and their counters never moved).  The client port never
reads the header: its requests run as their API key's tenant."""
import json

import httpx
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server)

KEYS = {"alpha": "sk-lat-alpha-0123", "beta": "sk-lat-beta-4567", "gamma": "sk-lat-gamma-89ab"}
# engine tenant ids: 0 "none" (no key), then the keys' tenants in config order
IDS = {"alpha": 1, "beta": 2, "gamma": 3}
SYSTEM = "Answer in one word."
SHARED = "You are a careful assistant. " + " ".join(
    f"Fact {i}: the item number {i} is stored on shelf {i % 7}." for i in range(12))
AGENTS = {"agents": [{
    "name": "solver", "kind": "local", "description": "Answers. Args: {\"input\": text}.",
    "system_prompt": SYSTEM, "max_tokens": 2, "timeout_ms": 60000, "max_concurrency": 4, "retries": 0}]}


@pytest.fixture(scope="module")
def srv(start_server, tmp_path_factory):
    d = tmp_path_factory.mktemp("local-tenants")
    (d / "server.json").write_text(json.dumps({"api_keys": [
        {"key": KEYS[t], "tenant": t} for t in ("alpha", "beta", "gamma")]}))
    (d / "agents.json").write_text(json.dumps(AGENTS))
    return start_server("--config", str(d / "server.json"), "--agents", str(d / "agents.json"),
                        "--kv-blocks", 512, "--max-batch", 16)


def _auth(tenant):
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _task(srv, tenant, question):
    r = httpx.post(srv.url + "/v1/tasks", headers=_auth(tenant), timeout=120, json={
        "input": "ask", "deadline_ms": 60000,
        "script": [{"calls": [{"id": "c1", "to": "solver", "args": {"input": SHARED + " " + question}}]},
                   {"final": {"answer": "{{c1}}", "uses": ["c1"]}}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["calls"][0]["status"] == "ok", body
    return body


def _delta(m0, m1, name, tenant):
    k = f'paraserve_tenant_{name}_total{{tenant="{tenant}"}}'
    return m1.get(k, 0) - m0.get(k, 0)


def test_local_agent_runs_as_its_tasks_tenant(srv):
    tenants = ("alpha", "beta", "gamma", "none")
    m0 = srv.metrics()
    _task(srv, "alpha", "Question: where is item 3?")
    m1 = srv.metrics()
    # a scripted task makes no decision: its one generation is the agent's
    assert _delta(m0, m1, "requests", "alpha") == 1, {t: _delta(m0, m1, "requests", t) for t in tenants}
    assert _delta(m0, m1, "prompt_tokens", "alpha") >= 150
    assert _delta(m0, m1, "generation_tokens", "alpha") >= 1
    assert _delta(m0, m1, "cached_prompt_tokens", "alpha") == 0
    for t in ("beta", "gamma", "none"):
        assert _delta(m0, m1, "requests", t) == 0, t

    # another tenant's task with the very same agent prompt: nothing of alpha's cache
    _task(srv, "beta", "Question: where is item 3?")
    m2 = srv.metrics()
    assert _delta(m1, m2, "requests", "beta") == 1
    assert _delta(m1, m2, "prompt_tokens", "beta") == _delta(m0, m1, "prompt_tokens", "alpha")
    assert _delta(m1, m2, "cached_prompt_tokens", "beta") == 0, "beta's agent reused alpha's cached prompt"
    assert _delta(m1, m2, "requests", "alpha") == 0 and _delta(m1, m2, "requests", "none") == 0

    # the same tenant's next task hits its own cache
    _task(srv, "alpha", "Question: where is item 5?")
    m3 = srv.metrics()
    assert _delta(m2, m3, "requests", "alpha") == 1
    assert _delta(m2, m3, "cached_prompt_tokens", "alpha") >= 128, _delta(m2, m3, "cached_prompt_tokens", "alpha")
    assert _delta(m2, m3, "cached_prompt_tokens", "beta") == 0


def _chat(srv, headers, question="Question: where is item 3?"):
    return httpx.post(srv.url + "/v1/chat/completions", headers=headers, timeout=120, json={
        "model": "default", "max_tokens": 2, "stream": False,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": SHARED + " " + question}]})


def test_client_port_ignores_the_tenant_header(srv):
    _task(srv, "alpha", "Question: where is item 3?")   # alpha's cache holds this prompt
    m0 = srv.metrics()
    # gamma claims alpha's id: it runs as gamma, with gamma's (empty) cache
    r = _chat(srv, {**_auth("gamma"), "X-Paraserve-Tenant": str(IDS["alpha"])})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, r.json()["usage"]
    m1 = srv.metrics()
    assert _delta(m0, m1, "requests", "gamma") == 1
    assert _delta(m0, m1, "requests", "alpha") == 0
    assert _delta(m0, m1, "cached_prompt_tokens", "gamma") == 0
    # a value that names no tenant changes nothing either
    r = _chat(srv, {**_auth("gamma"), "X-Paraserve-Tenant": "9999"}, "Question: where is item 4?")
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 128   # gamma's own cache now
    # nor does it stand in for a key
    r = _chat(srv, {"X-Paraserve-Tenant": str(IDS["alpha"])})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key", r.text
    m2 = srv.metrics()
    assert _delta(m1, m2, "requests", "gamma") == 1 and _delta(m1, m2, "requests", "alpha") == 0


def test_local_port_needs_the_token_before_the_tenant(srv):
    import re
    m = re.search(r"local agents call http://127\.0\.0\.1:(\d+)/v1/chat/completions", srv.output())
    assert m, srv.output()[-2000:]
    r = httpx.post(f"http://127.0.0.1:{m.group(1)}/v1/chat/completions", timeout=30,
                   headers={"X-Paraserve-Tenant": str(IDS["alpha"])},
                   json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
