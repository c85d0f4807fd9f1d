"""The a2a adapter against a real A2A agent built on the official A2A Python
SDK (tests/e2e/agents/a2a_agent.py, `a2a-sdk` 1.x): protocol 1.0 as the SDK
serves it by default, and protocol 0.3 through the SDK's compatibility
layer, each through `paraserve orchestrate` with scripted calls."""
import json
import urllib.request

from test_orch_agents import AGENTS, calls_by_id, free_port, orchestrate, server_proc, write_pool  # noqa: F401


def sdk_agent(server_proc, *flags):
    port = free_port()
    server_proc(AGENTS / "a2a_agent.py", port, *flags, port=port)
    return port


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.load(r)


def pool(tmp_path, port, **extra):
    url = f"http://127.0.0.1:{port}/a2a"
    # a description: no agent card is read, so an auto agent probes (1.0 first)
    common = {"kind": "a2a", "url": url, "description": "SDK test agent", "retries": 0, "breaker_failures": 0,
              **extra}
    return write_pool(tmp_path, [{"name": "sdk", "timeout_ms": 10000, **common},
                                 {"name": "sdkshort", "timeout_ms": 600, **common}])


def task(*calls):
    return {"input": "a2a", "script": [{"calls": [{"id": i, "to": to, "args": {"input": text}}
                                                  for i, to, text in calls]},
                                       {"final": {"answer": "done", "uses": [c[0] for c in calls]}}]}


CALLS = [("msg", "sdk", "echo:hello there"),          # a Message, no task
         ("slow", "sdk", "sleep:400:slept well"),     # a task, working, then completed: polled
         ("bad", "sdk", "fail:no way"),               # a task that fails
         ("data", "sdk", 'data:{"x": [1, 2]}'),       # a completed task with a data part
         ("stuck", "sdkshort", "sleep:60000:never")]  # times out: cancelled at the agent


def check_outcomes(calls):
    assert calls["msg"]["status"] == "ok" and calls["msg"]["result"] == "hello there", calls["msg"]
    assert calls["slow"]["status"] == "ok" and calls["slow"]["result"] == "slept well", calls["slow"]
    assert calls["bad"]["status"] == "exec_error" and "failed" in calls["bad"]["error"] \
        and "no way" in calls["bad"]["error"], calls["bad"]
    assert calls["data"]["status"] == "ok" and calls["data"]["result"] == {"x": [1, 2]}, calls["data"]
    assert calls["stuck"]["status"] == "timeout", calls["stuck"]


def wait_cancelled(port, n, timeout=5.0):
    import time
    end = time.time() + timeout
    while time.time() < end:
        s = stats(port)
        if len(s["cancelled"]) >= n:
            return s
        time.sleep(0.05)
    return stats(port)


def test_a2a_protocol_1_0_against_the_sdk(run, server_proc, tmp_path):
    """An agent of the default version (auto, its card not read: the entry
    has a description) that speaks 1.0 only: the probe succeeds, every
    request is a 1.0 method with the A2A-Version: 1.0 header; messages,
    polled tasks, failures, data parts and the cancel of a timed-out task
    all work."""
    port = sdk_agent(server_proc)
    calls, summary = calls_by_id(orchestrate(run, pool(tmp_path, port), task(*CALLS)))
    check_outcomes(calls)
    s = wait_cancelled(port, 1)
    assert len(s["cancelled"]) == 1, s
    assert set(s["methods"]) == {"SendMessage", "GetTask", "CancelTask"}, s
    assert s["methods"]["SendMessage"] == len(CALLS), s
    assert set(s["versions"]) == {"1.0"}, s


def test_a2a_protocol_0_3_through_the_sdk_compat_layer(run, server_proc, tmp_path):
    """An agent pinned to 0.3 speaks message/send, tasks/get and
    tasks/cancel (no A2A-Version header), with the same outcomes."""
    port = sdk_agent(server_proc, "--v03")
    calls, _ = calls_by_id(orchestrate(run, pool(tmp_path, port, a2a_version="0.3"), task(*CALLS)))
    check_outcomes(calls)
    s = wait_cancelled(port, 1)
    assert len(s["cancelled"]) == 1, s
    assert set(s["methods"]) == {"message/send", "tasks/get", "tasks/cancel"}, s
    assert set(s["versions"]) == {"-"}, s


def test_a2a_version_mismatch_is_a_clear_error(run, server_proc, tmp_path):
    """An agent pinned to 0.3 whose server speaks only 1.0: the call ends
    exec_error naming the JSON-RPC error, and is not tried as 1.0."""
    port = sdk_agent(server_proc)
    calls, _ = calls_by_id(orchestrate(run, pool(tmp_path, port, a2a_version="0.3"),
                                       task(("m", "sdk", "echo:hi"))))
    assert calls["m"]["status"] == "exec_error", calls["m"]
    assert "-32601" in calls["m"]["error"] and "Method not found" in calls["m"]["error"], calls["m"]
    assert stats(port)["methods"] == {"message/send": 1}


def test_a2a_agent_card_describes_the_agent(run, server_proc, tmp_path):
    """An a2a entry without a description takes its agent card's
    description and skills before any task runs, and its version (1.0)."""
    port = sdk_agent(server_proc)
    agents = write_pool(tmp_path, [{"name": "sdk", "kind": "a2a", "url": f"http://127.0.0.1:{port}/a2a"}])
    r = run("orchestrate", "--agents", agents, "--catalogue", timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    cat = {a["name"]: a for a in json.loads(r.stdout)}
    assert cat["sdk"]["description"] == "A2A SDK test agent Skills: echo: echo and sleep", cat
    log = r.stderr.decode()
    assert "agent 'sdk' (a2a): description taken from its agent card; protocol 1.0" in log, log


def test_a2a_agent_card_settles_the_version(run, server_proc, tmp_path):
    """A card in 0.3's shape settles an auto agent on 0.3: its first call is
    message/send, with no SendMessage probe."""
    port = sdk_agent(server_proc, "--v03", "--card03")
    agents = write_pool(tmp_path, [{"name": "sdk", "kind": "a2a", "url": f"http://127.0.0.1:{port}/a2a",
                                    "retries": 0}])
    calls, _ = calls_by_id(orchestrate(run, agents, task(("m", "sdk", "echo:hi"))))
    assert calls["m"]["status"] == "ok" and calls["m"]["result"] == "hi", calls["m"]
    assert stats(port)["methods"] == {"message/send": 1}


def test_a2a_agent_card_missing_keeps_the_pool_entry(run, server_proc, tmp_path):
    """No card where card_url says: one line says why, the run goes on, and
    the agent still answers (version auto, probed at its first call)."""
    port = sdk_agent(server_proc)
    agents = write_pool(tmp_path, [{"name": "sdk", "kind": "a2a", "url": f"http://127.0.0.1:{port}/a2a",
                                    "card_url": f"http://127.0.0.1:{port}/nowhere.json", "retries": 0}])
    r = run("orchestrate", "--agents", agents, "--task", json.dumps(task(("m", "sdk", "echo:hi"))), timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    log = r.stderr.decode()
    assert "agent 'sdk' (a2a): not described by the server (agent card: HTTP 404" in log, log
    events = [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]
    calls, _ = calls_by_id(events)
    assert calls["m"]["status"] == "ok" and calls["m"]["result"] == "hi", calls["m"]


def test_a2a_streaming_1_0(run, server_proc, tmp_path):
    """An agent that streams (a2a_streaming): every call is one
    SendStreamingMessage whose SSE events carry the task, its artifacts and
    its end - no GetTask polling; a timed-out stream's task is cancelled."""
    port = sdk_agent(server_proc, "--stream")
    calls, _ = calls_by_id(orchestrate(run, pool(tmp_path, port, a2a_streaming=True), task(*CALLS)))
    check_outcomes(calls)
    s = wait_cancelled(port, 1)
    assert len(set(s["cancelled"])) == 1, s
    # the cancel may be sent twice: once at the timeout, again at exit if
    # the agent had not answered it yet (README, A2A)
    assert s["methods"].pop("CancelTask", 0) in (1, 2), s
    assert s["methods"] == {"SendStreamingMessage": len(CALLS)}, s
    assert s["accepts"].get("text/event-stream") == len(CALLS), s


def test_a2a_streaming_0_3(run, server_proc, tmp_path):
    """The same in protocol 0.3 (message/stream, status-update and
    artifact-update events), through the SDK's compatibility layer."""
    port = sdk_agent(server_proc, "--stream", "--v03")
    calls, _ = calls_by_id(orchestrate(run, pool(tmp_path, port, a2a_streaming=True, a2a_version="0.3"),
                                       task(*CALLS)))
    check_outcomes(calls)
    s = wait_cancelled(port, 1)
    assert len(set(s["cancelled"])) == 1, s
    assert s["methods"].pop("tasks/cancel", 0) in (1, 2), s
    assert s["methods"] == {"message/stream": len(CALLS)}, s


def test_a2a_card_turns_streaming_on(run, server_proc, tmp_path):
    """An entry without a description takes capabilities.streaming from the
    agent card: its calls stream with nothing set in the pool."""
    port = sdk_agent(server_proc, "--stream")
    agents = write_pool(tmp_path, [{"name": "sdk", "kind": "a2a", "url": f"http://127.0.0.1:{port}/a2a",
                                    "retries": 0}])
    r = run("orchestrate", "--agents", agents, "--task", json.dumps(task(("s", "sdk", "sleep:200:via stream"))),
            timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert "protocol 1.0; streaming" in r.stderr.decode(), r.stderr.decode()
    calls, _ = calls_by_id([json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()])
    assert calls["s"]["status"] == "ok" and calls["s"]["result"] == "via stream", calls["s"]
    assert stats(port)["methods"] == {"SendStreamingMessage": 1}


def test_a2a_streaming_refused_falls_back_to_polling(run, server_proc, tmp_path):
    """a2a_streaming set for an agent that does not stream (-32004): each
    call is sent again without streaming and polled; the outcomes are the
    same, and once refused the agent is not asked to stream again."""
    port = sdk_agent(server_proc)
    two = {"input": "a2a", "script": [{"calls": [
        {"id": "m", "to": "sdk", "args": {"input": "echo:hi"}},
        {"id": "again", "to": "sdk", "args": {"input": "echo:again"}, "after": ["m"]}]},
        {"final": {"answer": "done", "uses": ["m", "again"]}}]}
    calls, _ = calls_by_id(orchestrate(run, pool(tmp_path, port, a2a_streaming=True), two))
    assert calls["m"]["status"] == "ok" and calls["m"]["result"] == "hi", calls["m"]
    assert calls["again"]["status"] == "ok" and calls["again"]["result"] == "again", calls["again"]
    assert stats(port)["methods"] == {"SendStreamingMessage": 1, "SendMessage": 2}
    calls, _ = calls_by_id(orchestrate(run, pool(tmp_path, port, a2a_streaming=True), task(*CALLS)))
    check_outcomes(calls)
