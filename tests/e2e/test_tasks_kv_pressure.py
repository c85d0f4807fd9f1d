"""Model-driven tasks on a KV cache too small to hold them all at once:
each decision prompt (~470 tokens: task, catalogue, transcript) takes most
of the 640-token cache, so concurrent tasks' decisions preempt one another
and the prefix cache's blocks are evicted and rebuilt between rounds.
Every task must still end with task.final (a preempted decision resumes,
it is never lost or reported twice), and the cache must be free of active
blocks afterwards."""
import json
import threading

import httpx

from server_fixtures import start_server, wait_for  # noqa: F401  (fixture)

QUESTIONS = ["What is 17*23?", "What is 125+678?", "What is 1000/8?", "How many words are in 'a b c d'?"]


def test_model_driven_tasks_under_kv_pressure_all_end_with_final(start_server):  # noqa: F811
    srv = start_server("--kv-blocks", 40, "--block-size", 16)
    # the context is capped at what the cache holds, and said so (the tasks
    # API sizes its decisions with the capped value)
    assert "exceeds the KV cache (kv_blocks 40 x block_size 16); using 640" in srv.output(), srv.output()
    results = [None] * len(QUESTIONS)

    def run(i):
        with httpx.stream("POST", f"{srv.url}/v1/tasks", timeout=180,
                          json={"input": f"{QUESTIONS[i]} (task {i})", "stream": True,
                                "max_rounds": 2, "deadline_ms": 150000}) as r:
            assert r.status_code == 200
            events, ev = [], {}
            for line in r.iter_lines():
                if line.startswith("id: "):
                    ev = {"id": int(line[4:])}
                elif line.startswith("event: "):
                    ev["event"] = line[7:]
                elif line.startswith("data: "):
                    ev["data"] = json.loads(line[6:])
                    events.append(ev)
            results[i] = events

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    m = srv.metrics()
    assert m["paraserve_preemptions_total"] > 0, "the cache was not under pressure: the test proves nothing"
    for i, events in enumerate(results):
        assert events, f"task {i}: no events"
        ids = [e["id"] for e in events]
        assert ids == list(range(1, len(ids) + 1)), (i, ids)
        ends = [e for e in events if e["event"] in ("task.final", "task.error")]
        assert [e["event"] for e in ends] == ["task.final"], (i, [(e["event"], e["data"].get("error")) for e in events])
        s = ends[0]["data"]
        assert s["status"] == "completed" and 1 <= s["rounds"] <= 2, s
        decisions = [e for e in events if e["event"] == "decision"]
        assert len(decisions) == s["rounds"], (i, [e["event"] for e in events])
    # every sequence released its blocks (cached ones may stay for reuse)
    assert wait_for(lambda: srv.metrics()['paraserve_kv_blocks{state="active"}'] == 0, timeout=10)
    print(f"\n{len(QUESTIONS)} tasks on 40 KV blocks: {m['paraserve_preemptions_total']:.0f} preemptions, "
          f"outputs {[r[-1]['data']['output'] for r in results]}")
