"""Model-driven tasks queue in the engine as of their creation: a task's
later decisions go before the decisions of tasks created after it, so the
tasks that started first finish first, instead of every task's rounds
interleaving (all first decisions, then all second ones, ...), which made
every task wait for nearly the whole batch.

The model is a synthetic one (`paraserve mkmodel`, random weights, fixed
seed): greedy decoding under the action grammar makes the same valid
decisions every run, and three rounds per task (no final before the
last, final-only round).  With one sequence at a time (--max-batch 1) the
engine runs decisions strictly in queue order.  A second test sends 200
such tasks at once (raw sockets: httpx's pool costs more CPU than the
server at many connections) and checks that all complete and the engine
ends empty."""
import asyncio
import json
import threading
import time

import httpx
import pytest

from server_fixtures import ServerProcess


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, run):
    path = tmp_path_factory.mktemp("model") / "small.gguf"
    r = run("mkmodel", "--arch", "llama", "--vocab", "512", "--embd", "128", "--layers", "4", "--heads", "4",
            "--kv-heads", "2", "--ff", "256", "--ctx", "8192", "-o", str(path))
    assert r.returncode == 0, r.stderr
    return str(path)


def stream_task(url, i, out):
    """POST a streamed task; record its events with their monotonic receive time."""
    body = {"input": f"What is {i}+{i}? (task {i})", "stream": True, "max_rounds": 3, "deadline_ms": 120000}
    with httpx.stream("POST", f"{url}/v1/tasks", json=body, timeout=120) as r:
        assert r.status_code == 200
        ev = {}
        for line in r.iter_lines():
            if line.startswith("event: "):
                ev = {"event": line[7:]}
            elif line.startswith("data: "):
                ev["data"] = json.loads(line[6:])
                ev["t"] = time.monotonic()
                out.append(ev)


def creation_order(task_id):
    """The server's creation counter inside a task id (task_<counter><4 hex>)."""
    return int(task_id[5:-4], 16)


def test_tasks_created_first_finish_first(paraserve_bin, small_model):
    srv = ServerProcess(paraserve_bin, small_model, "--max-batch", 1)
    try:
        n = 6
        events = [[] for _ in range(n)]
        threads = [threading.Thread(target=stream_task, args=(srv.url, i, events[i])) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        tasks = []
        for i, evs in enumerate(events):
            ends = [e for e in evs if e["event"] in ("task.final", "task.error")]
            assert [e["event"] for e in ends] == ["task.final"], (i, [e["event"] for e in evs])
            assert ends[0]["data"]["rounds"] == 3, ends[0]["data"]
            decisions = [e["t"] for e in evs if e["event"] == "decision"]
            tasks.append((creation_order(evs[0]["data"]["task"]), decisions[0], ends[0]["t"]))
        tasks.sort()
        first, last = tasks[0], tasks[-1]
        # The first task's later decisions went before the last task's first
        # one (queued per decision, every task's first decision went before
        # any task's second: the first task ended after the last one began).
        assert first[2] < last[1], (
            f"the first task ended {first[2] - last[1]:+.3f} s after the last task's first decision")
        ends = [t[2] for t in tasks]
        assert ends == sorted(ends), "tasks did not end in creation order"
    finally:
        assert srv.stop() == 0


async def _post_tasks(port, n):
    """n model-driven tasks at once over raw sockets (one connection each)."""
    async def one(i):
        body = json.dumps({"input": f"What is {i}+{i}? (task {i})", "max_rounds": 3,
                           "deadline_ms": 300000}).encode()
        rd, wr = await asyncio.open_connection("127.0.0.1", port)
        wr.write(b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await wr.drain()
        data = await rd.read()
        wr.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        return json.loads(payload)
    return await asyncio.gather(*[one(i) for i in range(n)])


def test_200_model_driven_tasks_at_once(paraserve_bin, small_model):
    """200 tasks decided by the model at once (64 sequences per step): every
    one completes its 3 rounds, each is found again by id, and the engine
    ends with nothing running, waiting or holding KV blocks."""
    srv = ServerProcess(paraserve_bin, small_model, "--max-batch", 64)
    try:
        out = asyncio.run(_post_tasks(srv.port, 200))
        assert [s["status"] for s in out] == ["completed"] * 200, [s.get("error") for s in out if
                                                                   s["status"] != "completed"][:5]
        assert all(s["rounds"] == 3 for s in out), sorted({s["rounds"] for s in out})
        assert len({s["id"] for s in out}) == 200
        for s in out[::20]:
            g = httpx.get(f"{srv.url}/v1/tasks/{s['id']}", timeout=10)
            assert g.status_code == 200 and g.json()["status"] == "completed" and g.json()["id"] == s["id"]
        m = srv.metrics()
        assert m["paraserve_running_sequences"] == 0 and m["paraserve_waiting_sequences"] == 0, m
        assert m['paraserve_kv_blocks{state="active"}'] == 0, m
    finally:
        assert srv.stop() == 0
