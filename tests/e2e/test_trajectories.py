"""Task trajectories as training data: GET /v1/tasks/{id}/trajectory and
`serve --trajectories FILE` (one JSON line per task when it ends).  Each
step is a decision as chat messages (system, the prompt the model read,
the text it wrote), with the calls it made; measures and reward terms per
task (proto/trajectory.schema.json).  Checked here on the embedded model
and on scripted tasks: the documents follow the schema, the file holds the
same document GET gives, a model decision's assistant text is what the
engine decoded (its usage counts it), a task cancelled mid-decision is
written once its decision's usage is in, opting out records nothing, a bad
field is a 400, and a file that cannot be written is counted, never fatal."""
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

import server_fixtures
from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "proto" / "trajectory.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SYSTEM = ("You are the orchestrator. You never solve tasks yourself: you call agents and tools, then give the "
          "final answer. You reply with one JSON action only.")
SCRIPT = {"input": "What are 2+3 and 4*5?", "script": [
    {"calls": [{"to": "calculator", "args": {"expression": "2+3"}},
               {"to": "calculator", "args": {"expression": "4*5"}},
               {"to": "nobody", "args": {}}]},
    {"final": {"answer": "{{c1}} and {{c2}}", "uses": ["c1", "c2"]}}]}


@pytest.fixture(scope="module")
def srv(start_server, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("trajectories")
    path = d / "trajectories.jsonl"
    with server_fixtures.mock_agent() as port:
        pool = json.loads((ROOT / "configs" / "agents.default.json").read_text())
        pool["agents"].append({"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{port}/",
                               "description": "Mock agent.", "timeout_ms": 30000, "retries": 0})
        (d / "agents.json").write_text(json.dumps(pool))
        s = start_server("--agents", str(d / "agents.json"), "--kv-blocks", 512, "--trajectories", str(path))
        s.trajectories = path
        yield s


def lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def line_of(srv, task_id, timeout=30):
    found = wait_for(lambda: [l for l in lines(srv.trajectories) if l["id"] == task_id], timeout=timeout)
    assert found, f"no line for {task_id} in {srv.trajectories}"
    assert len(found) == 1
    return found[0]


def trajectory(srv, task_id):
    r = httpx.get(f"{srv.url}/v1/tasks/{task_id}/trajectory", timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    VALIDATOR.validate(doc)
    return doc


def test_scripted_task(srv):
    r = httpx.post(srv.url + "/v1/tasks", json=SCRIPT, timeout=60)
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "completed" and task["output"] == "5 and 20"
    doc = trajectory(srv, task["id"])
    assert doc["mode"] == "script" and doc["status"] == "completed" and doc["output"] == "5 and 20"
    s1, s2 = doc["steps"]
    for s in (s1, s2):
        assert [m["role"] for m in s["messages"]] == ["system", "user", "assistant"]
        assert s["messages"][0]["content"] == SYSTEM
        assert s["valid"] is True
    # the prompt a model would read: catalogue, task; then the transcript
    u1, u2 = s1["messages"][1]["content"], s2["messages"][1]["content"]
    assert "calculator" in u1 and u1.endswith("Task: What are 2+3 and 4*5?\n")
    assert u2.startswith(u1) and "Decision 1: " in u2[len(u1):]
    assert '"status":"rejected"' in u2[len(u1):]
    assert json.loads(s1["messages"][2]["content"]) == SCRIPT["script"][0]
    assert json.loads(s2["messages"][2]["content"]) == SCRIPT["script"][1]
    assert s1["calls"] == ["c1", "c2", "c3"] and s1["rejected"] == 1 and s2["calls"] == []
    assert [c["status"] for c in doc["calls"]] == ["ok", "ok", "rejected"]
    assert doc["calls"][0]["args"] == {"expression": "2+3"}
    m, rw = doc["measures"], doc["rewards"]
    assert (m["decisions"], m["decisions_compliant"], m["calls"], m["calls_ok"], m["calls_rejected"],
            m["agents_distinct"]) == (2, 1, 3, 2, 1, 1)
    assert rw == {"success": 1, "protocol_compliance": 0.5, "diversity": 0.5, "efficiency": 1}
    # the file's line is the same document (the task had ended)
    assert line_of(srv, task["id"]) == doc


def test_model_task(srv):
    r = httpx.post(srv.url + "/v1/tasks", json={"input": "What is 17*23?", "max_rounds": 3}, timeout=120)
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] in ("completed", "failed")
    line = line_of(srv, task["id"])
    VALIDATOR.validate(line)
    assert line["mode"] == "model" and line["status"] == task["status"]
    assert len(line["steps"]) == task["rounds"] >= 1
    prev = None
    for s in line["steps"]:
        user = s["messages"][1]["content"]
        assert user.startswith("Agents:\n") and "Task: What is 17*23?\n" in user
        if prev is not None:
            assert user.startswith(prev)   # no context cut on this short task
        prev = user
        asst = s["messages"][2]["content"]
        assert s["usage"]["completion_tokens"] >= 1
        if s["valid"]:
            json.loads(asst)               # grammar-constrained: a whole action
        else:
            assert s["note"]
    # each valid completion is the action the task took (the model's grammar leaves ids out)
    r = httpx.get(f"{srv.url}/v1/tasks/{task['id']}/events", timeout=30)
    decisions = {e["data"]["round"]: e["data"] for e in server_fixtures.sse_events(r.text.splitlines())
                 if e.get("event") == "decision"}
    for s in line["steps"]:
        d = decisions[s["round"]]
        if s["valid"] and "incomplete" not in d:
            action = json.loads(s["messages"][2]["content"])
            for c in d["action"].get("calls", []):
                c.pop("id", None)
            assert action == d["action"], (action, d)
    # the task's own summary counts the same tokens
    assert line["measures"]["completion_tokens"] == task["usage"]["completion_tokens"]
    assert line["measures"]["prompt_tokens"] == task["usage"]["prompt_tokens"]
    assert line["rewards"]["success"] == (task["status"] == "completed")
    assert [(c["id"], c["to"], c["status"], c["result"]) for c in line["calls"]] == \
        [(c["id"], c["to"], c["status"], c["result"]) for c in task["calls"]]
    assert [i for s in line["steps"] for i in s["calls"]] == [c["id"] for c in task["calls"]]


def test_cancelled_mid_decision_is_written_with_its_usage(srv):
    """DELETE while the model decides: the decision's usage comes from the
    engine after the task ended; the line waits for it."""
    with httpx.stream("POST", srv.url + "/v1/tasks", json={"input": "What is 6*7?", "stream": True},
                      timeout=60) as r:
        task_id = r.headers["x-task-id"]
        httpx.delete(f"{srv.url}/v1/tasks/{task_id}", timeout=30)
    line = line_of(srv, task_id)
    assert line["status"] == "cancelled"
    VALIDATOR.validate(line)
    assert line["steps"], line
    last = line["steps"][-1]
    assert "ended during this decision" in last.get("note", ""), last   # the DELETE came mid-decision
    assert last["valid"] is False and "usage" in last, last
    assert line["rewards"]["success"] == 0 and line["rewards"]["efficiency"] == 0


def test_opt_out_and_bad_field(srv):
    r = httpx.post(srv.url + "/v1/tasks", json={**SCRIPT, "trajectory": False}, timeout=60)
    assert r.status_code == 200
    tid = r.json()["id"]
    r = httpx.get(f"{srv.url}/v1/tasks/{tid}/trajectory", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "trajectory_not_recorded"
    r = httpx.post(srv.url + "/v1/tasks", json={**SCRIPT, "trajectory": "yes"}, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "trajectory" and err["code"] == "invalid_type"
    r = httpx.post(f"{srv.url}/v1/tasks/{tid}/trajectory", timeout=30)
    assert r.status_code == 405 and "GET, HEAD" in r.headers["allow"]
    assert httpx.head(f"{srv.url}/v1/tasks/{tid}/trajectory", timeout=30).status_code == 404
    assert httpx.get(f"{srv.url}/v1/tasks/task_nope/trajectory", timeout=30).status_code == 404
    recorded = httpx.post(srv.url + "/v1/tasks", json=SCRIPT, timeout=60).json()["id"]
    listed = {t["id"]: t for t in httpx.get(srv.url + "/v1/tasks?limit=100", timeout=30).json()["data"]}
    assert listed[tid]["trajectory"] is False and listed[recorded]["trajectory"] is True
    line_of(srv, recorded)
    # written lines and the metric agree; the opted-out task has none
    time.sleep(0.2)
    assert not [l for l in lines(srv.trajectories) if l["id"] == tid]
    assert srv.metrics()["paraserve_trajectories_written_total"] == len(lines(srv.trajectories))


def test_running_task(srv):
    body = {"input": "slow", "script": [{"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 1500}}]},
                                        {"final": {"answer": "{{s}}", "uses": ["s"]}}]}
    with httpx.stream("POST", srv.url + "/v1/tasks", json={**body, "stream": True}, timeout=60) as r:
        tid = r.headers["x-task-id"]
        doc = wait_for(lambda: (lambda d: d if d["steps"] else None)(trajectory(srv, tid)), timeout=10)
        assert doc["status"] == "running" and doc["output"] is None and len(doc["steps"]) == 1
        for _ in r.iter_lines():
            pass
    assert trajectory(srv, tid)["status"] == "completed"


def test_unwritable_file(start_server, paraserve_bin, model_path, tmp_path):  # noqa: F811
    # a path that cannot be opened: serve refuses to start, naming it
    bad = tmp_path / "missing" / "t.jsonl"
    p = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--port", "0", "--trajectories", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and str(bad) in p.stderr, p.stderr
    # a file whose writes fail (/dev/full: ENOSPC): counted and reported once, the server goes on
    s = start_server("--trajectories", "/dev/full", "--kv-blocks", 128)
    for _ in range(2):
        r = httpx.post(s.url + "/v1/tasks", json=SCRIPT, timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "completed"
    assert wait_for(lambda: s.metrics()["paraserve_trajectory_write_errors_total"] == 2)
    assert s.metrics()["paraserve_trajectories_written_total"] == 0
    assert s.output().count("was not written") == 1
    tid = r.json()["id"]
    assert trajectory(s, tid)["status"] == "completed"   # GET still serves it


def test_orchestrate_cli(paraserve_bin, tmp_path):
    """`paraserve orchestrate --trajectories FILE` (no model): scripted
    tasks' trajectories as training data, one line each over several
    loops; a file that cannot be written fails the run (exit 1), naming
    why."""
    out = tmp_path / "t.jsonl"
    task = json.dumps(SCRIPT)
    p = subprocess.run([paraserve_bin, "orchestrate", "--quiet", "--trajectories", str(out), "--repeat", "4",
                        "--loops", "2", "--task", task, "--task", json.dumps({**SCRIPT, "trajectory": False})],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    got = lines(out)
    assert len(got) == 4 and len({l["id"] for l in got}) == 4
    for l in got:
        VALIDATOR.validate(l)
        assert l["rewards"]["protocol_compliance"] == 0.5 and l["output"] == "5 and 20"
    p = subprocess.run([paraserve_bin, "orchestrate", "--quiet", "--trajectories", "/dev/full", "--task", task],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1 and "No space left on device" in p.stderr


def test_sft_export(paraserve_bin, tmp_path):
    """scripts/sft-from-trajectories: one {"messages"} line per valid
    decision of the tasks that pass the filters; a line that is not a
    trajectory is exit 1 naming it."""
    traj = tmp_path / "t.jsonl"
    good = json.dumps({"input": "q", "script": [{"calls": [{"to": "calculator", "args": {"expression": "1+1"}}]},
                                                {"final": {"answer": "{{c1}}", "uses": ["c1"]}}]})
    failing = json.dumps({"input": "q", "script": [{"calls": [{"to": "calculator", "args": {"expression": "1+"}}]}]})
    p = subprocess.run([paraserve_bin, "orchestrate", "--quiet", "--trajectories", str(traj), "--task", good,
                        "--task", json.dumps(SCRIPT), "--task", failing], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert len(lines(traj)) == 3
    sft = tmp_path / "sft.jsonl"
    tool = str(ROOT / "scripts" / "sft-from-trajectories")
    p = subprocess.run([tool, str(traj), "-o", str(sft), "--stats"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    got = lines(sft)
    # completed tasks only: good (2 valid steps) + SCRIPT (its first step had a rejected call: dropped)
    assert len(got) == 3 and "tasks 2 of 3 kept; decisions 3 of" in p.stderr
    for ex in got:
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
        json.loads(ex["messages"][2]["content"])
    p = subprocess.run([tool, str(traj), "--min-reward", "protocol_compliance=1"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2
    p = subprocess.run([tool, str(traj), "--status", "failed", "--keep-invalid"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    good_text = traj.read_bytes()
    bad.write_bytes(good_text + b'{"object":"list"}\n[]\n{"object":"task.trajectory"}\n\xff\xfe\n'
                    + good_text.splitlines()[0][:-40] + b"\n")    # the last one cut, as a killed writer leaves it
    p = subprocess.run([tool, str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and f"{bad}:4:" in p.stderr
    p = subprocess.run([tool, str(bad), "--skip-bad", "--stats"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stdout.splitlines()) == 3 and "5 bad line(s) skipped" in p.stderr, p.stderr
    p = subprocess.run([tool, str(traj), "--min-reward", "speed=1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2


def test_size_limit(srv):
    """A scripted task of 1,200 waits prints 1,200 prompts of up to 1,200
    lines each (O(N^2)): recording stops at 16 MiB, saying so, and the
    task is not held back."""
    body = {"input": "many waits", "script": [{"wait": True}] * 1200 + [{"final": {"answer": "done"}}]}
    t0 = time.time()
    r = httpx.post(srv.url + "/v1/tasks", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    tid = r.json()["id"]
    r = httpx.get(f"{srv.url}/v1/tasks/{tid}/trajectory", timeout=60)
    assert r.status_code == 200
    doc = r.json()
    assert len(r.content) < 18 << 20
    assert "size limit" in doc["truncated"] and 100 < len(doc["steps"]) < 1201
    first_missing = len(doc["steps"]) + 1
    assert f"rounds from {first_missing} on" in doc["truncated"]
    assert doc["measures"]["rounds"] == 1201
    print(f"1,201 rounds: {len(doc['steps'])} steps recorded, {len(r.content) / 1e6:.1f} MB, "
          f"task and GET in {time.time() - t0:.2f} s")


def fault_server(start_server, *args):  # noqa: F811
    s = start_server(*args)
    r = httpx.post(s.url + "/debug/fail-decisions?n=0", timeout=10)
    if r.status_code == 404:
        pytest.skip("this binary was built without PARASERVE_FAULT_INJECTION (scripts/test's ASan build has it)")
    assert r.status_code == 200, r.text
    return s


def test_engine_failure_writes_the_line(start_server, tmp_path):  # noqa: F811
    """A decision the engine ends with a failure fails its task from the
    engine's end event; the line is written then (it was once left waiting
    for a usage already taken, and lost)."""
    path = tmp_path / "t.jsonl"
    s = fault_server(start_server, "--trajectories", str(path), "--kv-blocks", 256)
    assert httpx.post(s.url + "/debug/fail-decisions?n=1", timeout=10).status_code == 200
    r = httpx.post(s.url + "/v1/tasks", json={"input": "What is 2+2?"}, timeout=120)
    task = r.json()
    assert task["status"] == "failed" and "engine failure (injected" in task["error"], task
    s.trajectories = path
    line = line_of(s, task["id"], timeout=10)
    assert line["steps"][0]["note"].startswith("decision failed: engine failure")
    assert s.metrics()["paraserve_trajectory_write_errors_total"] == 0


def test_lines_wait_without_eviction(start_server, tmp_path):  # noqa: F811
    """--keep-tasks 1 and tasks DELETEd mid-decision: each line waits for
    its decision's usage, and the task is kept until it is written."""
    path = tmp_path / "t.jsonl"
    s = start_server("--trajectories", str(path), "--keep-tasks", 1, "--kv-blocks", 512)
    s.trajectories = path
    ids = []
    for i in range(4):
        with httpx.stream("POST", s.url + "/v1/tasks", json={"input": f"What is {i}*7?", "stream": True},
                          timeout=60) as r:
            ids.append(r.headers["x-task-id"])
    for tid in ids:
        httpx.delete(f"{s.url}/v1/tasks/{tid}", timeout=30)
    for tid in ids:
        line = line_of(s, tid)
        assert line["status"] == "cancelled" and "usage" in line["steps"][-1]
    assert s.metrics()["paraserve_trajectory_write_errors_total"] == 0


def test_sighup_reopens_the_file(start_server, tmp_path):  # noqa: F811
    """Log rotation: the file moved away, SIGHUP, and later lines go to a
    new file at the path; a path that cannot be opened then keeps the old
    file (said on stderr); the server goes on either way."""
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "t.jsonl"
    s = start_server("--trajectories", str(path), "--kv-blocks", 128)

    def run():
        r = httpx.post(s.url + "/v1/tasks", json=SCRIPT, timeout=60)
        assert r.status_code == 200
        return r.json()["id"]

    first = run()
    path.rename(d / "t.jsonl.1")
    s.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: f"SIGHUP: --trajectories {path} reopened" in s.output(), timeout=10), s.output()
    second = run()
    assert wait_for(lambda: [l["id"] for l in lines(path)] == [second])
    assert [l["id"] for l in lines(d / "t.jsonl.1")] == [first]
    moved = tmp_path / "moved"
    d.rename(moved)                       # the path's folder is gone: cannot reopen
    s.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "lines go on to the file open before" in s.output(), timeout=10), s.output()
    third = run()
    assert wait_for(lambda: [l["id"] for l in lines(moved / "t.jsonl")] == [second, third])
    assert httpx.get(s.url + "/health", timeout=10).status_code == 200


def test_sighup_while_starting_and_without_a_file(paraserve_bin, model_path):
    """SIGHUP while the server starts (the model loading) does not end it
    (the default action would), and without --trajectories it says there
    is nothing to reopen."""
    port = server_fixtures.free_port()
    p = subprocess.Popen([paraserve_bin, "serve", "-m", model_path, "--port", str(port), "--kv-blocks", "64"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # once in main (its first line; before it the dynamic loader, ~0.1 s
        # with the CUDA libraries, runs no code of ours), while the model loads
        first = p.stderr.readline()
        assert "allocator" in first, first
        p.send_signal(signal.SIGHUP)
        server_fixtures.wait_port(port, timeout=60)
        assert p.poll() is None
        p.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "SIGHUP: no file to reopen" in err


def test_metadata(srv):
    """A request's metadata (OpenAI's shape: up to 16 string pairs) stays
    with the task - summary, list, task.created, trajectory - so a trainer
    can score a trajectory by, say, a reference answer; anything else is a
    400 naming `metadata` (it was once accepted and dropped)."""
    meta = {"reference": "5 and 20", "suite": "arith é"}
    r = httpx.post(srv.url + "/v1/tasks", json={**SCRIPT, "metadata": meta}, timeout=60)
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["metadata"] == meta
    assert trajectory(srv, task["id"])["metadata"] == meta
    assert line_of(srv, task["id"])["metadata"] == meta
    listed = {t["id"]: t for t in httpx.get(srv.url + "/v1/tasks?limit=100", timeout=30).json()["data"]}
    assert listed[task["id"]]["metadata"] == meta
    ev = server_fixtures.sse_events(httpx.get(f"{srv.url}/v1/tasks/{task['id']}/events", timeout=30).text.splitlines())
    assert ev[0]["event"] == "task.created" and ev[0]["data"]["metadata"] == meta
    plain = httpx.post(srv.url + "/v1/tasks", json=SCRIPT, timeout=60).json()
    assert "metadata" not in plain and "metadata" not in trajectory(srv, plain["id"])
    for bad, why in [([1], "must be an object"), ({"k": 1}, "must be a string"),
                     ({f"k{i}": "v" for i in range(17)}, "at most 16"), ({"k" * 65: "v"}, "1 to 64"),
                     ({"": "v"}, "1 to 64"), ({"k": "v" * 513}, "over 512")]:
        r = httpx.post(srv.url + "/v1/tasks", json={**SCRIPT, "metadata": bad}, timeout=30)
        assert r.status_code == 400, (bad, r.text)
        err = r.json()["error"]
        assert err["param"] == "metadata" and why in err["message"], err
    r = httpx.post(srv.url + "/v1/tasks", content='{"input":"x","metadata":{"k":"a","k":"b"}}', timeout=30)
    assert r.status_code == 400 and "twice" in r.json()["error"]["message"]
    assert httpx.post(srv.url + "/v1/tasks", json={**SCRIPT, "metadata": None}, timeout=60).status_code == 200
