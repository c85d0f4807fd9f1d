"""`serve --task-store FILE`: finished /v1/tasks survive a restart.  After
SIGTERM (running tasks end first, cancelled) and a new start on the same
file, every kept task answers as before - its summary, its event stream
(replay after Last-Event-ID), its list entry, its trajectory - under the
same tenant, by API key tenant name; a tenant no longer configured sees
nothing and no other tenant sees its tasks; only the newest --keep-tasks
are kept; a file that is not a store stops the server at startup, naming
it."""
import json
import sqlite3
import subprocess

import httpx

import server_fixtures
from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

KEYS = {"alpha": "sk-store-alpha", "beta": "sk-store-beta"}
SCRIPT = {"input": "What is 2+3?", "metadata": {"ref": "5"}, "trajectory": True, "script": [
    {"calls": [{"to": "calculator", "args": {"expression": "2+3"}}]},
    {"final": {"answer": "{{c1}}", "uses": ["c1"]}}]}


def auth(who):
    return {"Authorization": f"Bearer {KEYS[who]}"}


def mock_store_args(tmp_path, port, timeout_ms):
    """serve arguments: a pool of the mock agent alone, and the task store in tmp_path."""
    (tmp_path / "agents.json").write_text(json.dumps({"agents": [
        {"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{port}/", "description": "Mock.",
         "timeout_ms": timeout_ms, "retries": 0}]}))
    return ("--agents", str(tmp_path / "agents.json"), "--task-store", str(tmp_path / "tasks.db"), "--kv-blocks", 64)


def snapshot(s, who, tid):
    """Everything a client can read of a task."""
    h = auth(who)
    return {
        "summary": httpx.get(f"{s.url}/v1/tasks/{tid}", headers=h, timeout=30).content,
        "events": httpx.get(f"{s.url}/v1/tasks/{tid}/events", headers=h, timeout=30).content,
        "resumed": httpx.get(f"{s.url}/v1/tasks/{tid}/events", headers={**h, "Last-Event-ID": "2"},
                             timeout=30).content,
        "trajectory": httpx.get(f"{s.url}/v1/tasks/{tid}/trajectory", headers=h, timeout=30).content,
        "listed": [t for t in httpx.get(f"{s.url}/v1/tasks?limit=100&order=asc", headers=h, timeout=30).json()["data"]
                   if t["id"] == tid],
    }


def test_tasks_survive_a_restart(start_server, tmp_path):  # noqa: F811
    store = tmp_path / "tasks.db"
    with server_fixtures.mock_agent() as port:
        pool = json.loads(open(server_fixtures.Path(__file__).resolve().parents[2] / "configs" /
                               "agents.default.json").read())
        pool["agents"].append({"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{port}/",
                               "description": "Mock agent.", "timeout_ms": 60000, "retries": 0})
        (tmp_path / "agents.json").write_text(json.dumps(pool))
        cfg = tmp_path / "server.json"
        cfg.write_text(json.dumps({"api_keys": [{"key": KEYS["alpha"], "tenant": "alpha"},
                                                {"key": KEYS["beta"], "tenant": "beta"}]}))
        args = ("--config", str(cfg), "--agents", str(tmp_path / "agents.json"), "--task-store", str(store),
                "--kv-blocks", 256)
        s = start_server(*args)
        ids = {}
        r = httpx.post(s.url + "/v1/tasks", json=SCRIPT, headers=auth("alpha"), timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        ids["scripted"] = r.json()["id"]
        r = httpx.post(s.url + "/v1/tasks", json={"input": "What is 17*23?", "max_rounds": 2, "trajectory": True},
                       headers=auth("alpha"), timeout=120)
        assert r.status_code == 200, r.text
        ids["model"] = r.json()["id"]
        r = httpx.post(s.url + "/v1/tasks", json={**SCRIPT, "metadata": {"who": "beta"}}, headers=auth("beta"),
                       timeout=60)
        ids["beta"] = r.json()["id"]
        # running at SIGTERM: cancelled by the drain, then kept
        with httpx.stream("POST", s.url + "/v1/tasks", headers=auth("alpha"), timeout=60, json={
                "input": "slow", "stream": True,
                "script": [{"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 30000}}]},
                           {"final": {"answer": "{{s}}", "uses": ["s"]}}]}) as rs:
            ids["running"] = rs.headers["x-task-id"]
        before = {k: snapshot(s, "beta" if k == "beta" else "alpha", v) for k, v in ids.items()
                  if k != "running"}
        assert s.metrics()["paraserve_tasks_stored_total"] == 3
        assert s.stop() == 0
        # restart on the same file
        s2 = start_server(*args)
        assert "4 finished task(s) restored" in s2.output(), s2.output()
        assert s2.metrics()["paraserve_tasks_restored"] == 4
        for k, v in ids.items():
            if k == "running":
                continue
            after = snapshot(s2, "beta" if k == "beta" else "alpha", v)
            assert after == before[k], k
            assert after["listed"] and after["listed"][0]["trajectory"] is True
        run = httpx.get(f"{s2.url}/v1/tasks/{ids['running']}", headers=auth("alpha"), timeout=30).json()
        assert run["status"] == "cancelled" and run["calls"][0]["status"] == "cancelled", run
        ev = server_fixtures.sse_events(httpx.get(f"{s2.url}/v1/tasks/{ids['running']}/events", headers=auth("alpha"),
                                                  timeout=30).text.splitlines())
        assert ev[-1]["event"] == "task.error" and ev[-1]["data"]["status"] == "cancelled"
        # tenants stay apart; DELETE of an ended task changes nothing
        assert httpx.get(f"{s2.url}/v1/tasks/{ids['beta']}", headers=auth("alpha"), timeout=30).status_code == 404
        assert httpx.get(f"{s2.url}/v1/tasks/{ids['scripted']}", headers=auth("beta"), timeout=30).status_code == 404
        r = httpx.delete(f"{s2.url}/v1/tasks/{ids['scripted']}", headers=auth("alpha"), timeout=30)
        assert r.status_code == 200 and r.content == before["scripted"]["summary"]
        # new tasks go on beside them, and are stored too
        r = httpx.post(s2.url + "/v1/tasks", json=SCRIPT, headers=auth("alpha"), timeout=60)
        assert r.json()["status"] == "completed" and r.json()["id"] not in ids.values()
        assert s2.stop() == 0
        # beta's key removed: its task is not shown to anyone
        cfg.write_text(json.dumps({"api_keys": [{"key": KEYS["alpha"], "tenant": "alpha"}]}))
        s3 = start_server(*args)
        assert "4 finished task(s) restored" in s3.output() and "1 skipped" in s3.output(), s3.output()
        assert "tenant 'beta' is not configured now" in s3.output()
        assert httpx.get(f"{s3.url}/v1/tasks/{ids['beta']}", headers=auth("alpha"), timeout=30).status_code == 404
        assert s3.stop() == 0
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from tasks").fetchone()[0] == 5


def test_keep_and_bad_files(start_server, paraserve_bin, model_path, tmp_path):  # noqa: F811
    store = tmp_path / "tasks.db"
    s = start_server("--task-store", str(store), "--keep-tasks", 3, "--kv-blocks", 64)
    for i in range(5):
        r = httpx.post(s.url + "/v1/tasks", json={"input": f"t{i}", "script": [{"final": {"answer": str(i)}}]},
                       timeout=30)
        assert r.status_code == 200
    assert s.stop() == 0
    s = start_server("--task-store", str(store), "--keep-tasks", 3, "--kv-blocks", 64)
    listed = httpx.get(s.url + "/v1/tasks?order=asc", timeout=30).json()["data"]
    assert [t["input"] for t in listed] == ["t2", "t3", "t4"]
    # one server per file: a second one is refused at once, naming it
    p = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--port", "0", "--task-store", str(store)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "in use by another process" in p.stderr and str(store) in p.stderr, p.stderr
    assert httpx.get(s.url + "/health", timeout=5).status_code == 200
    assert s.stop() == 0
    with sqlite3.connect(store) as db:   # the rows past --keep-tasks went at the open
        rows = [r[0] for r in db.execute("select input from tasks order by rowid")]
    assert rows == ["t2", "t3", "t4"]

    for content, why in [(b"not a database at all, only text " * 10, "not a database"),
                         (None, "cannot open")]:
        path = tmp_path / "bad.db" if content else tmp_path / "missing" / "t.db"
        if content:
            path.write_bytes(content)
        p = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--port", "0", "--task-store", str(path)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and str(path) in p.stderr and why in p.stderr, p.stderr


def test_order_and_open_tenant(start_server, tmp_path):  # noqa: F811
    """The list keeps its creation order across a restart (tasks are stored
    as they end); the open server's tasks (no key) never go to a key's
    tenant, even one named "anonymous"."""
    with server_fixtures.mock_agent() as port:
        args = mock_store_args(tmp_path, port, 30000)
        s = start_server(*args)
        with httpx.stream("POST", s.url + "/v1/tasks", timeout=60, json={
                "input": "slow first", "stream": True,
                "script": [{"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 800}}]},
                           {"final": {"answer": "{{s}}", "uses": ["s"]}}]}) as r:
            slow = r.headers["x-task-id"]
            fast = httpx.post(s.url + "/v1/tasks", json={"input": "fast second", "script": [
                {"final": {"answer": "x"}}]}, timeout=30).json()["id"]
            for _ in r.iter_lines():
                pass
        before = [t["id"] for t in httpx.get(s.url + "/v1/tasks?order=asc", timeout=30).json()["data"]]
        assert before == [slow, fast]
        assert s.stop() == 0
        s = start_server(*args)
        assert [t["id"] for t in httpx.get(s.url + "/v1/tasks?order=asc", timeout=30).json()["data"]] == before
        assert s.stop() == 0
        # now with a key whose tenant is named "anonymous", as the open server's tenant is
        cfg = tmp_path / "server.json"
        cfg.write_text(json.dumps({"api_keys": [{"key": "sk-anon", "tenant": "anonymous"}]}))
        s = start_server("--config", str(cfg), *args)
        h = {"Authorization": "Bearer sk-anon"}
        assert httpx.get(f"{s.url}/v1/tasks/{fast}", headers=h, timeout=30).status_code == 404
        assert httpx.get(f"{s.url}/v1/tasks", headers=h, timeout=30).json()["data"] == []
        assert s.stop() == 0


def test_killed_server(start_server, paraserve_bin, model_path, tmp_path):  # noqa: F811
    """A task is written as it starts: when the server is killed (SIGKILL)
    while it runs, the next start ends it - failed, saying the server
    stopped, its log closed by a task.error - rather than forget it (a
    client polling its id would get 404)."""
    with server_fixtures.mock_agent() as port:
        args = mock_store_args(tmp_path, port, 60000)
        s = server_fixtures.ServerProcess(paraserve_bin, model_path, *args)   # killed below: not the fixture's
        with httpx.stream("POST", s.url + "/v1/tasks", timeout=60, json={
                "input": "slow", "stream": True, "metadata": {"k": "v"},
                "script": [{"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 30000}}]},
                           {"final": {"answer": "{{s}}", "uses": ["s"]}}]}) as r:
            tid = r.headers["x-task-id"]
            for line in r.iter_lines():
                if line.startswith("event: call.dispatched"):
                    break
        done = httpx.post(s.url + "/v1/tasks", json={"input": "quick", "script": [{"final": {"answer": "q"}}]},
                          timeout=30).json()["id"]
        s.proc.kill()
        s.proc.wait()
        s.log.close()
        s2 = start_server(*args)
        assert "2 finished task(s) restored" in s2.output() and "1 of them had not ended" in s2.output(), s2.output()
        t = httpx.get(f"{s2.url}/v1/tasks/{tid}", timeout=30).json()
        assert t["status"] == "failed" and "the server stopped while the task ran" in t["error"], t
        assert t["metadata"] == {"k": "v"}
        ev = server_fixtures.sse_events(httpx.get(f"{s2.url}/v1/tasks/{tid}/events", timeout=30).text.splitlines())
        assert [e["event"] for e in ev] == ["task.created", "task.error"]
        assert ev[-1]["data"]["status"] == "failed" and ev[-1]["data"]["task"] == tid
        assert httpx.get(f"{s2.url}/v1/tasks/{done}", timeout=30).json()["status"] == "completed"
        assert s2.stop() == 0
        # written back ended: the next start restores it as it is now
        s3 = start_server(*args)
        assert "1 of them had not ended" not in s3.output()
        assert httpx.get(f"{s3.url}/v1/tasks/{tid}", timeout=30).content == \
            httpx.get(f"{s3.url}/v1/tasks/{tid}", timeout=30).content
        assert httpx.get(f"{s3.url}/v1/tasks/{tid}", timeout=30).json()["status"] == "failed"
        assert s3.stop() == 0
