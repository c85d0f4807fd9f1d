"""End-to-end tests of the orchestrator through `paraserve orchestrate`:
scripted tasks against a Python mock HTTP agent (latency and faults), the
built-in loopback mock (fan-out, 200 concurrent tasks), a real MCP server
(the `mcp` SDK) over streamable HTTP and over stdio, cancel, bad configs."""
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server_fixtures import wait_port

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "tests" / "e2e" / "agents"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def server_proc():
    procs = []

    def start(*argv, port):
        p = subprocess.Popen([sys.executable, *map(str, argv)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_port(port)
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def orchestrate(run, agents, *tasks, extra=(), timeout=60):
    args = ["orchestrate", "--agents", agents, *extra]
    for t in tasks:
        args += ["--task", json.dumps(t)]
    r = run(*args, timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]


def calls_by_id(events):
    final = [e for e in events if e["event"] in ("task.final", "task.error")]
    assert final, events
    return {c["id"]: c for c in final[-1]["data"]["calls"]}, final[-1]["data"]


def write_pool(tmp_path, agents):
    p = tmp_path / "agents.json"
    p.write_text(json.dumps({"agents": agents}))
    return str(p)


@pytest.mark.parametrize("threads", [[], ["--http-threads", "2"]], ids=["loop", "lanes"])
def test_faults_against_python_mock(run, server_proc, tmp_path, threads):
    port = free_port()
    server_proc(AGENTS / "mock_agent.py", port, port=port)
    pool = write_pool(tmp_path, [{"name": "mock", "kind": "http-json", "url": f"http://127.0.0.1:{port}/",
                                  "timeout_ms": 800, "retries": 1, "backoff_ms": 20, "breaker_failures": 0}])
    calls = [{"id": "ok", "to": "mock", "args": {"sleep_ms": 100}},
             {"id": "slow", "to": "mock", "args": {"fault": "slow"}},
             {"id": "hang", "to": "mock", "args": {"fault": "hang"}},
             {"id": "x5", "to": "mock", "args": {"fault": "5xx"}},
             {"id": "x4", "to": "mock", "args": {"fault": "4xx"}},
             {"id": "nj", "to": "mock", "args": {"fault": "nonjson"}},
             {"id": "drop", "to": "mock", "args": {"fault": "drop"}},
             {"id": "ghost", "to": "nobody", "args": {}}]
    t0 = time.time()
    ev = orchestrate(run, pool, {"input": "faults", "script": [
        {"calls": calls}, {"final": {"answer": "done", "uses": [c["id"] for c in calls]}}]}, extra=threads)
    by, final = calls_by_id(ev)
    assert final["status"] == "completed"
    want = {"ok": "ok", "slow": "ok", "hang": "timeout", "x5": "exec_error", "x4": "exec_error",
            "nj": "parse_error", "drop": "exec_error", "ghost": "rejected"}
    assert {k: by[k]["status"] for k in want} == want
    assert by["x5"]["attempts"] == 2 and by["x4"]["attempts"] == 1   # retry only the retryable
    assert time.time() - t0 < 10


def make_ca_and_cert(tmp_path):
    """A private CA and a server certificate it signed for 127.0.0.1
    (openssl, installed by scripts/install-deps)."""
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    def ossl(*a):
        subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=paraserve test CA")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ossl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext)
    return ca, cert, key


def test_https_agent_verified_with_its_ca_file(run, server_proc, tmp_path):
    """An http-json agent over TLS (libcurl on the loop): with the private CA
    that signed its certificate (`ca_file`) the call succeeds; without it
    the certificate is refused (verification is never off), an exec_error
    that names the certificate; a ca_file that cannot be read stops the
    pool from loading, naming the field."""
    ca, cert, key = make_ca_and_cert(tmp_path)
    port = free_port()
    server_proc(AGENTS / "mock_agent.py", port, cert, key, port=port)
    url = f"https://127.0.0.1:{port}/"
    pool = write_pool(tmp_path, [
        {"name": "tls", "kind": "http-json", "url": url, "ca_file": str(ca), "retries": 0, "timeout_ms": 5000},
        {"name": "untrusted", "kind": "http-json", "url": url, "retries": 0, "timeout_ms": 5000}])
    calls = [{"id": f"t{i}", "to": "tls", "args": {"sleep_ms": 50, "i": i}} for i in range(4)]
    calls.append({"id": "u", "to": "untrusted", "args": {}})
    ev = orchestrate(run, pool, {"input": "tls", "script": [
        {"calls": calls}, {"final": {"answer": "{{t3.args.i}}", "uses": [c["id"] for c in calls]}}]})
    by, final = calls_by_id(ev)
    assert final["status"] == "completed" and final["output"] == "3", final
    assert all(by[f"t{i}"]["status"] == "ok" and by[f"t{i}"]["result"]["args"]["i"] == i for i in range(4)), by
    assert by["u"]["status"] == "exec_error" and "certificate" in by["u"]["error"].lower(), by["u"]
    for bad, why in (({"ca_file": str(tmp_path / "missing.pem")}, "cannot read"),
                     ({"ca_file": str(tmp_path)}, "not a regular file"),
                     ({"ca_file": str(ca), "url": f"http://127.0.0.1:{port}/"}, "https")):
        p = write_pool(tmp_path, [{"name": "x", "kind": "http-json", "url": url, **bad}])
        r = run("orchestrate", "--agents", p, "--task", '{"input":"x","script":[{"wait":true}]}')
        assert r.returncode == 1 and "agents[0].ca_file" in r.stderr.decode() and why in r.stderr.decode(), \
            r.stderr.decode()


# The executor's socket work on its own loop, or on I/O threads with a
# mock agent of several threads (--http-threads / --mock-threads); with
# threads every request goes to one (PARASERVE_HTTPC_LANE_INLINE=0: by
# default the first 8 of a loop turn stay on the loop).
LANES = pytest.mark.parametrize("threads", [[], ["--http-threads", "3", "--mock-threads", "2"]],
                                ids=["loop", "lanes"])


@pytest.fixture(autouse=True)
def _lanes_take_every_request(request, monkeypatch):
    threads = request.node.callspec.params.get("threads") if hasattr(request.node, "callspec") else None
    if threads:
        monkeypatch.setenv("PARASERVE_HTTPC_LANE_INLINE", "0")


@LANES
def test_parallel_fanout_and_dag(run, threads):
    pool = str(AGENTS / "mock_pool.json")
    fan = {"input": "fan", "script": [
        {"calls": [{"id": f"c{i}", "to": "mock", "args": {"sleep_ms": 400}} for i in range(8)]},
        {"final": {"answer": "ok", "uses": [f"c{i}" for i in range(8)]}}]}
    ev = orchestrate(run, pool, fan, extra=["--mock-agent", "0", *threads])
    _, final = calls_by_id(ev)
    assert final["status"] == "completed"
    assert 0.39 < final["t_ms"] / 1000 < 0.9, final["t_ms"]       # ~0.4 s, not 3.2 s
    dag = {"input": "dag", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 300}},
                   {"id": "b", "to": "mock", "args": {"sleep_ms": 300}, "after": ["a"]},
                   {"id": "c", "to": "mock", "args": {"sleep_ms": 300}}]},
        {"final": {"answer": "ok", "uses": ["b", "c"]}}]}
    ev = orchestrate(run, pool, dag, extra=["--mock-agent", "0", *threads])
    by, final = calls_by_id(ev)
    assert 0.59 < final["t_ms"] / 1000 < 0.85, final["t_ms"]      # critical path 0.6 s
    results = [e for e in ev if e["event"] == "call.result"]
    assert results[-1]["data"]["id"] == "b"


@LANES
def test_cancel_ignores_late_results(run, threads):
    t = {"input": "cancel", "script": [
        {"calls": [{"id": "s1", "to": "mock", "args": {"sleep_ms": 400}},
                   {"id": "s2", "to": "mock", "args": {"sleep_ms": 400}, "after": ["s1"]}]},
        {"final": {"answer": "x", "uses": ["s2"]}}]}
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                     extra=["--mock-agent", "0", "--cancel-after", "100", *threads])
    by, final = calls_by_id(ev)
    assert final["status"] == "cancelled"
    assert by["s1"]["status"] == by["s2"]["status"] == "cancelled"
    term = next(i for i, e in enumerate(ev) if e["event"] == "task.error")
    assert term == len(ev) - 1                                      # nothing after the end


@LANES
def test_200_concurrent_tasks(run, threads):
    t = {"input": "many", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 50}},
                   {"id": "b", "to": "mock", "args": {"sleep_ms": 50}, "after": ["a"]},
                   {"id": "k", "to": "calculator", "args": {"expression": "6*7"}}]},
        {"final": {"answer": "{{k}}", "uses": ["b", "k"]}}]}
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                     extra=["--mock-agent", "0", "--repeat", "200", "--quiet", "--stats", *threads])
    finals = [e for e in ev if e.get("event") == "task.final"]
    assert len(finals) == 200 and all(f["data"]["output"] == "42" for f in finals)
    assert len({f["data"]["id"] for f in finals}) == 200
    st = ev[-1]["stats"]
    assert st["completed"] == 200 and st["mock_requests"] == 400
    if threads:
        # the I/O threads did the socket work and say what it cost
        assert st["http_threads"] == 3 and st["mock_threads"] == 2 and st["http_threads_cpu_s"] > 0
    else:
        assert st["http_threads"] == 0 and st["mock_threads"] == 1 and st["http_threads_cpu_s"] == 0


@pytest.mark.parametrize("extra", [[], ["--warmup"], ["--stagger-ms", "300"]], ids=["burst", "warm", "stagger"])
def test_tasks_spread_over_loops(run, extra):
    """--loops 3: every task runs once, on one of three executor loops, and
    the stats pool the loops' samples and counters."""
    first_ms = 30 if "--stagger-ms" in extra else 400   # a burst: all 100 running at once, however slow the start
    t = {"input": "loops", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": first_ms}},
                   {"id": "b", "to": "mock", "args": {"sleep_ms": 30}, "after": ["a"]},
                   {"id": "k", "to": "calculator", "args": {"expression": "6*7"}}]},
        {"final": {"answer": "{{k}}", "uses": ["b", "k"]}}]}
    t2 = dict(t, input="second request")
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t, t2,
                     extra=["--mock-agent", "0", "--repeat", "50", "--quiet", "--stats", "--loops", "3", *extra])
    finals = [e for e in ev if e.get("event") == "task.final"]
    assert len(finals) == 100 and all(f["data"]["output"] == "42" for f in finals)
    ids = [f["data"]["id"] for f in finals]
    assert len(set(ids)) == 100                                           # task ids unique over the loops
    # by construction: each loop writes its index (the id lane) into its ids
    assert all(re.fullmatch(r"task_[0-9a-f]{12}", i) for i in ids), ids
    assert sorted({int(i[13:15], 16) for i in ids}) == [0, 1, 2]
    st = ev[-1]["stats"]
    assert st["loops"] == 3 and st["tasks"] == st["completed"] == 100
    assert st["calls_measured"] == 200 and st["mock_requests"] == 200     # the timed pass only
    assert 0 < st["loop_cpu_max_s"] < st["loop_cpu_s"]                    # more than one loop worked
    if "--warmup" in extra:
        assert st["connections"] == 0       # each loop warmed its own pool
    if "--stagger-ms" in extra:
        assert st["wall_s"] >= 0.297        # task 99 of 100 goes in at 99/100 of 300 ms
        assert 1 <= st["peak_running"] < 100
    else:
        assert st["peak_running"] == 100


def test_loops_cancel_after_reaches_every_loop(run):
    t = {"input": "c", "script": [{"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 5000}}]},
                                  {"final": {"answer": "x", "uses": ["s"]}}]}
    t0 = time.time()
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                     extra=["--mock-agent", "0", "--repeat", "7", "--loops", "4", "--cancel-after", "200",
                            "--quiet", "--stats"])
    assert time.time() - t0 < 4
    assert ev[-1]["stats"]["cancelled"] == 7 and ev[-1]["stats"]["loops"] == 4


def test_more_loops_than_tasks_uses_one_per_task(run):
    t = {"input": "a", "script": [{"final": {"answer": "x"}}]}
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t, extra=["--repeat", "2", "--loops", "8", "--stats"])
    st = ev[-1]["stats"]
    assert st["loops"] == 2 and st["completed"] == 2


def test_loops_refuse_a_bad_task_before_the_run(run):
    """A request that fails validation exits 2, names the task, and nothing
    runs (no loop starts a task)."""
    good = {"input": "a", "script": [{"final": {"answer": "x"}}]}
    bad = {"input": "b", "max_rounds": -3, "script": [{"final": {"answer": "x"}}]}
    r = run("orchestrate", "--agents", str(AGENTS / "mock_pool.json"), "--task", json.dumps(good),
            "--task", json.dumps(bad), "--loops", "2", "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "task #2" in err and "max_rounds" in err, err
    assert r.stdout.decode() == ""


def test_stats_name_the_allocator_the_binary_links(run, paraserve_bin):
    """--stats says which malloc served the run: mimalloc exactly when the binary links it."""
    t = {"input": "a", "script": [{"final": {"answer": "x"}}]}
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t, extra=["--quiet", "--stats"])
    alloc = ev[-1]["stats"]["allocator"]
    linked = "libmimalloc" in subprocess.run(["ldd", str(paraserve_bin)], capture_output=True, text=True).stdout
    assert alloc.startswith("mimalloc ") if linked else alloc == "libc malloc", (alloc, linked)


def test_warmup_pass_is_unmeasured_and_leaves_the_pool_warm(run):
    t = {"input": "warm", "script": [
        {"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 20}},
                   {"id": "b", "to": "mock", "args": {"sleep_ms": 20}}]},
        {"final": {"answer": "{{a}}", "uses": ["a", "b"]}}]}
    cold = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                       extra=["--mock-agent", "0", "--repeat", "20", "--stats"])
    warm = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                       extra=["--mock-agent", "0", "--repeat", "20", "--stats", "--warmup"])
    for ev in (cold, warm):
        st = ev[-1]["stats"]
        assert st["tasks"] == st["completed"] == 20 and st["calls_measured"] == 40
        # only the timed pass prints: one task.created and one task.final per task
        assert sum(e.get("event") == "task.created" for e in ev) == 20
        assert sum(e.get("event") == "task.final" for e in ev) == 20
        assert st["mock_requests"] == 40
    assert cold[-1]["stats"]["connections"] == 40       # two calls at once per task, all new
    assert warm[-1]["stats"]["connections"] == 0        # every one taken from the keep-alive pool
    # queueing bounds need the floor's cost; without --floor only the loop's own is replayed
    st = warm[-1]["stats"]
    assert st["reply_queue_floor_p99_us"] == -1 and st["reply_queue_loop_p99_us"] > 0


def test_warmup_honours_cancel_after(run):
    """The warm-up pass is cancelled by --cancel-after too: neither pass waits for a 5 s call."""
    t = {"input": "c", "script": [{"calls": [{"id": "s", "to": "mock", "args": {"sleep_ms": 5000}}]},
                                  {"final": {"answer": "x", "uses": ["s"]}}]}
    t0 = time.time()
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                     extra=["--mock-agent", "0", "--repeat", "3", "--warmup", "--cancel-after", "200",
                            "--quiet", "--stats"])
    assert time.time() - t0 < 4
    assert ev[-1]["stats"]["cancelled"] == 3
    assert sum(e.get("event") == "task.error" for e in ev) == 3     # the timed pass's only


def test_reply_queue_bounds(run):
    t = {"input": "q", "script": [{"calls": [{"id": "a", "to": "mock", "args": {"sleep_ms": 10}}]},
                                  {"final": {"answer": "{{a}}", "uses": ["a"]}}]}
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), t,
                     extra=["--mock-agent", "0", "--repeat", "50", "--quiet", "--stats", "--floor", "200"])
    st = ev[-1]["stats"]
    # every reply waits at least one service time; more threads never wait longer
    assert st["reply_queue_floor_p99_us"] >= st["floor_client_us"] * 0.99 > 0
    assert 0 < st["reply_queue_floor_cores_p99_us"] <= st["reply_queue_floor_p99_us"]
    assert st["reply_queue_loop_p99_us"] > 0


def mcp_pool(server_proc, tmp_path, *http_tools):
    """A pool of the SDK's MCP server: `http_tools` over streamable HTTP (a
    server started here) and "shout" over stdio (a process per session).
    No input_schema: the describe step takes the server's (tools/list)."""
    pytest.importorskip("mcp")
    port = free_port()
    server_proc(AGENTS / "mcp_server.py", "http", port, port=port)
    return write_pool(tmp_path, [
        *[{"name": n, "kind": "mcp-http", "url": f"http://127.0.0.1:{port}/mcp", "timeout_ms": 10000}
          for n in http_tools],
        {"name": "shout", "kind": "mcp-stdio", "timeout_ms": 30000,
         "command": [sys.executable, str(AGENTS / "mcp_server.py"), "stdio"]}])


def test_mcp_http_and_stdio(run, server_proc, tmp_path):
    # add's schema from tools/list rejects "bad" below without calling
    pool = mcp_pool(server_proc, tmp_path, "add", "nap")
    ev = orchestrate(run, pool, {"input": "mcp", "script": [
        {"calls": [{"id": "a", "to": "add", "args": {"a": 2, "b": 40}},
                   {"id": "bad", "to": "add", "args": {"a": "two", "b": 1}},
                   {"id": "n", "to": "nap", "args": {"ms": 5000}},
                   {"id": "s", "to": "shout", "args": {"text": "answer {{a}}"}, "after": ["a"]}]},
        {"cancel": ["n"]},
        {"final": {"answer": "{{s}}", "uses": ["s"]}}]}, timeout=90)
    by, final = calls_by_id(ev)
    assert by["a"]["status"] == "ok" and "42" in json.dumps(by["a"]["result"])
    assert by["bad"]["status"] == "rejected"
    assert by["n"]["status"] == "cancelled"
    assert by["s"]["status"] == "ok", by["s"]
    assert final["status"] == "completed" and final["output"] == "ANSWER 42"


def test_mcp_agents_on_several_loops(run, server_proc, tmp_path):
    """Each loop has its own MCP session and its own stdio agent process."""
    pool = mcp_pool(server_proc, tmp_path, "add")
    ev = orchestrate(run, pool, {"input": "mcp", "script": [
        {"calls": [{"id": "a", "to": "add", "args": {"a": 2, "b": 40}},
                   {"id": "s", "to": "shout", "args": {"text": "answer {{a}}"}, "after": ["a"]}]},
        {"final": {"answer": "{{s}}", "uses": ["s"]}}]}, extra=["--repeat", "4", "--loops", "2", "--quiet"],
        timeout=90)
    finals = [e["data"] for e in ev if e["event"] == "task.final"]
    assert len(finals) == 4 and all(f["status"] == "completed" and f["output"] == "ANSWER 42" for f in finals), finals


def test_mcp_describe_step(run, tmp_path):
    """MCP agents whose pool entry leaves out description or input_schema
    are asked tools/list before any task runs (every page): the named tool's
    words (one line, bounded) and schema fill the gaps, and the schema is
    then enforced; a server that errs, hangs, lists garbage or an unusable
    schema leaves the entry as it was, one line on stderr saying why; an
    entry that gives both is not asked."""
    stub = str(AGENTS / "mcp_list_stub.py")
    logs = {m: tmp_path / f"{m}.log" for m in ("paged", "wins")}

    def agent(name, mode, log=None, **kw):
        cmd = [sys.executable, stub, mode] + ([str(log)] if log else [])
        return {"name": name, "kind": "mcp-stdio", "tool": "lookup", "command": cmd, "timeout_ms": 5000, **kw}
    schema = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"],
              "additionalProperties": False}
    pool = write_pool(tmp_path, [
        agent("lookup", "paged", logs["paged"]),
        agent("b", "badschema"), agent("n", "notools"), agent("e", "error"),
        agent("s", "silent", timeout_ms=1500), agent("g", "garbage"),
        agent("w", "paged", logs["wins"], description="Pool words.", input_schema={"type": "object"})])
    t0 = time.time()
    r = run("orchestrate", "--agents", pool, "--catalogue", timeout=60)
    took = time.time() - t0
    err = r.stderr.decode()
    assert r.returncode == 0, err
    cat = {a["name"]: a for a in json.loads(r.stdout)}
    assert took < 8, took   # every agent at once; the silent one for its 1.5 s
    lines = err.splitlines()

    def line(name):
        got = [l for l in lines if l.startswith(f"paraserve: agent '{name}' (mcp-stdio): ")]
        assert len(got) <= 2, got
        return " | ".join(got)
    # paged: found on page 2; its words one line, bounded, cut on a character
    assert "description and input_schema taken from its tools/list" in line("lookup"), err
    d = cat["lookup"]["description"]
    assert d.startswith("Looks a key up. In [2J the table. more more") and len(d.encode()) <= 1024, d
    assert not any(c < " " for c in d)
    assert cat["lookup"]["input_schema"] == schema
    sent = [json.loads(l) for l in logs["paged"].read_text().splitlines()]
    pages = [m["params"] for m in sent if m["method"] == "tools/list"]
    assert pages == [None, {"cursor": "page-2"}], sent
    # an unusable schema: the words are taken, the schema is not
    assert "inputSchema is not used" in line("b") and "$ref" in line("b"), err
    assert "description taken from its tools/list" in line("b"), err
    assert cat["b"]["description"] == "Looks a key up." and cat["b"]["input_schema"] == {"type": "object"}
    for name, why in (("n", 'no "tools" array'), ("e", "no listing here"),
                      ("s", "no answer to tools/list within 1500 ms"), ("g", "it lists no tool 'lookup'")):
        assert "not described by the server" in line(name) and why in line(name), (name, err)
        assert cat[name]["description"] == "" and cat[name]["input_schema"] == {"type": "object"}
    # the pool's entry gives both: no tools/list asked
    assert line("w") == "" and cat["w"]["description"] == "Pool words."
    assert "tools/list" not in (logs["wins"].read_text() if logs["wins"].exists() else "")
    # the taken schema is enforced before the call; a fitting call runs
    ev = orchestrate(run, pool, {"input": "describe", "script": [
        {"calls": [{"id": "bad", "to": "lookup", "args": {"key": 5}},
                   {"id": "ok", "to": "lookup", "args": {"key": "k7"}}]},
        {"final": {"answer": "{{ok}}", "uses": ["ok"]}}]}, timeout=60)
    by, final = calls_by_id(ev)
    assert by["bad"]["status"] == "rejected" and "args.key" in by["bad"]["error"], by["bad"]
    assert by["ok"]["status"] == "ok" and final["status"] == "completed", by


@pytest.mark.parametrize("then_exit", [False, True])
def test_mcp_cancel_is_announced_to_the_server(run, tmp_path, then_exit):
    """Cancelling an MCP call in flight sends notifications/cancelled with
    the request's JSON-RPC id, and the call ends `cancelled`; also when the
    run ends right after (then_exit): the executor's shutdown writes what
    waits for the process's stdin, closes it and lets the process exit on
    that EOF before any SIGTERM (the MCP stdio shutdown)."""
    log = tmp_path / "stub.log"
    pool = write_pool(tmp_path, [
        {"name": "lookup", "kind": "mcp-stdio", "command": [sys.executable, str(AGENTS / "mcp_list_stub.py"),
                                                              "paged", str(log)],
         "description": "Looks a key up.", "input_schema": {"type": "object"}, "timeout_ms": 20000}])
    t0 = time.time()
    ev = orchestrate(run, pool, {"input": "cancel", "script": [
        {"calls": [{"id": "h", "to": "lookup", "args": {"key": "k", "hang": True}},
                   {"id": "q", "to": "lookup", "args": {"key": "q"}}]},
        {"cancel": ["h"]}] +
        # q2 is answered after the stub has read the notification (one pipe, in order)
        ([] if then_exit else [{"calls": [{"id": "q2", "to": "lookup", "args": {"key": "q2"}}]}]) +
        [{"final": {"answer": "{{q}}", "uses": ["q"]}}]}, timeout=60)
    by, final = calls_by_id(ev)
    assert by["h"]["status"] == "cancelled" and by["q"]["status"] == "ok", by
    assert final["status"] == "completed" and time.time() - t0 < 10
    sent = [json.loads(l) for l in log.read_text().splitlines()]
    assert [m["method"] for m in sent if m["method"] == "tools/list"] == []   # the entry gives both
    hang = [m["id"] for m in sent if m["method"] == "tools/call" and m["params"]["arguments"].get("hang")]
    cancels = [m for m in sent if m["method"] == "notifications/cancelled"]
    assert len(hang) == 1 and len(cancels) == 1 and cancels[0]["id"] is None, sent
    assert cancels[0]["params"]["requestId"] == hang[0], sent


def test_mcp_stdio_crash_loop_and_stderr(run, tmp_path):
    """A stdio tool that writes to stderr and exits at once: its stderr reaches
    ours prefixed with the agent's name, and the executor's retries do not
    start a process each (restarts are rate-limited; the held-back attempts
    fail at once, naming why)."""
    pool = write_pool(tmp_path, [
        {"name": "crashy", "kind": "mcp-stdio", "timeout_ms": 2000, "retries": 3, "backoff_ms": 10,
         "breaker_failures": 0, "description": "Crashes.", "input_schema": {"type": "object"},
         "command": ["sh", "-c", f"echo started >> {tmp_path}/starts; printf 'boom\\033[2J\\n' >&2; exit 3"]}])
    t0 = time.time()
    r = run("orchestrate", "--agents", pool, "--task", json.dumps({"input": "crash", "script": [
        {"calls": [{"id": "c", "to": "crashy", "args": {}}]}, {"final": {"answer": "x", "uses": ["c"]}}]}),
        timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    by, _ = calls_by_id([json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()])
    assert by["c"]["status"] == "exec_error" and by["c"]["attempts"] == 4, by["c"]
    assert "not restarted" in by["c"]["error"] and "exited" in by["c"]["error"], by["c"]
    assert (tmp_path / "starts").read_text().count("started") == 1
    err = r.stderr.decode()
    assert "[agent crashy] boom?[2J" in err and "\x1b" not in err, err
    assert time.time() - t0 < 10

@pytest.mark.parametrize("agent,field", [
    ({"name": "x", "kind": "teleport"}, "agents[0].kind"),
    ({"name": "x", "kind": "http-json"}, "agents[0].url"),
    ({"name": "x", "kind": "builtin", "tool": "calculator", "max_concurrency": 0}, "agents[0].max_concurrency"),
    ({"name": "x", "kind": "http-json", "url": "ftp://h"}, "agents[0].url"),
    ({"name": "x y", "kind": "builtin", "tool": "calculator"}, "agents[0].name"),
    ({"name": "x", "kind": "builtin", "tool": "calculator", "deterministic": "yes"}, "agents[0].deterministic"),
    ({"name": "x", "kind": "builtin", "tool": "calculator", "example": "6*7"}, "agents[0].example"),
    ({"name": "x", "kind": "builtin", "tool": "calculator",
      "example": {"task": "t", "args": {"expression": 6}, "result": 42}}, "agents[0].example.args.expression"),
    ({"name": "x", "kind": "builtin", "tool": "calculator",
      "example": {"task": "t", "args": {"expression": "6*7"}}}, "agents[0].example.result"),
    ({"name": "x", "kind": "builtin", "tool": "calculator",
      "example": {"task": "t", "args": {"expression": "6*7"}, "result": "x" * 2000}}, "agents[0].example"),
    ({"name": "x", "kind": "builtin", "tool": "calculator",
      "example": {"task": "t", "args": {}, "result": 1, "why": 1}}, "agents[0].example.why"),
])
def test_bad_agent_config_names_the_field(run, tmp_path, agent, field):
    pool = write_pool(tmp_path, [agent])
    r = run("orchestrate", "--agents", pool, "--task", '{"input":"x","script":[{"wait":true}]}')
    assert r.returncode == 1
    assert field in r.stderr.decode()


def test_model_driven_needs_engine(run):
    ev = orchestrate(run, str(ROOT / "configs" / "agents.default.json"), {"input": "plan a trip"})
    _, final = calls_by_id(ev)
    assert final["status"] == "failed" and "paraserve serve" in final["error"]


def test_event_log_full_is_a_typed_task_failure(run):
    """An event that cannot be stored (log full, or out of memory: the same
    path) fails the task with a typed error instead of being dropped
    silently; the terminal event is still delivered and ids have no hole."""
    calls = [{"id": f"c{i}", "to": "calculator", "args": {"expression": f"{i}+1"}} for i in range(8)]
    ev = orchestrate(run, str(AGENTS / "mock_pool.json"), {"input": "log", "script": [
        {"calls": calls}, {"final": {"answer": "x", "uses": [c["id"] for c in calls]}}]},
        extra=["--max-events", "6"])
    assert [e["id"] for e in ev] == list(range(1, len(ev) + 1)) and len(ev) <= 6
    by, final = calls_by_id(ev)
    assert ev[-1]["event"] == "task.error" and final["status"] == "failed"
    assert "event log full" in final["error"] and "max_events (6)" in final["error"]
    assert all(c["status"] is not None for c in by.values())   # every call ended (cancelled or ok)


def test_task_count_over_int_is_refused(run, tmp_path):
    """Requests x --repeat past INT_MAX is a usage error naming both, not a
    signed overflow (UBSan aborted on it; a plain build failed silently on a
    calloc of the wrapped count, or ran fewer tasks than asked)."""
    line = json.dumps({"input": "x", "script": [{"final": {"answer": "a"}}]})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text((line + "\n") * 2148)        # 2148 x 1e6 > 2^31 - 1
    r = run("orchestrate", "--agents", str(AGENTS / "mock_pool.json"), "--tasks-file", tasks,
            "--repeat", 1000000, "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "2148 task requests x --repeat 1000000" in err and "runtime error" not in err, err


@pytest.mark.parametrize("opt,value,rng", [
    ("--mock-agent", "70000", "[0, 65535]"),     # was truncated to 16 bits: 65536 became "any port"
    ("--mock-agent", "80x", "[0, 65535]"),
    ("--repeat", "1e3", "[1, 1000000]"),          # atoi read 1
    ("--repeat", "0", "[1, 1000000]"),
    ("--stagger-ms", "-5", "[0, 3600000]"),
    ("--cancel-after", "soon", "[0, 2147483647]"),  # atoi read 0: cancel at once
    ("--max-events", "3", "[4, 2147483647]"),
    ("--floor", "99999999999", "[0, 10000000]"),
    ("--http-threads", "65", "[0, 64]"),
    ("--http-threads", "-1", "[0, 64]"),
    ("--mock-threads", "0", "[1, 64]"),
    ("--loops", "0", "[1, 64]"),
    ("--loops", "65", "[1, 64]"),
])
def test_numeric_options_are_checked_whole(run, opt, value, rng):
    """Every numeric option of `orchestrate` is a whole base-10 integer in
    its range, else exit 2 with a line naming the option, the range and the
    value (they were atoi'd: trailing junk ignored, out of range wrapped)."""
    r = run("orchestrate", "--agents", str(AGENTS / "mock_pool.json"),
            "--task", json.dumps({"input": "x", "script": [{"final": {"answer": "a"}}]}), opt, value, "--quiet")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert f"{opt} must be an integer in {rng}, got '{value}'" in err, err
