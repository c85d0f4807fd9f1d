"""The serving engine seen from outside: batching invariance, prefix cache,
client disconnect, preemption under a tiny KV cache, graceful shutdown,
config errors."""
import concurrent.futures as cf
import json
import os
import signal
import socket
import struct
import subprocess
import time

import httpx
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)
from server_fixtures import wait_for

TOPICS = ["apples", "the sea", "mountains", "rain", "a robot", "music", "chess", "coffee", "winter",
          "a library", "trains", "the moon", "bees", "a city", "bread", "rivers", "clocks", "birds",
          "glass", "a desert", "snow", "paper", "bridges", "the wind", "a garden", "stars", "salt",
          "horses", "a lighthouse", "tea", "volcanoes", "ink"]


def complete(url, prompt, max_tokens, **extra):
    body = {"model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    r = httpx.post(url + "/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_batching_invariance_32_concurrent(server):
    prompts = [f"Write one sentence about {t}:" for t in TOPICS]
    assert len(prompts) == 32
    solo = [complete(server.url, p, 10)["choices"][0]["text"] for p in prompts]
    assert len(set(solo)) > 16  # the prompts really differ
    with cf.ThreadPoolExecutor(32) as ex:
        batched = list(ex.map(lambda p: complete(server.url, p, 10)["choices"][0]["text"], prompts))
    for p, a, b in zip(prompts, solo, batched):
        assert a == b, f"{p!r}: solo {a!r} != batched {b!r}"


def test_prefix_cache_second_request_prefills_only_new_tokens(server):
    shared = "You are a careful assistant. " + " ".join(
        f"Rule {i}: answer with facts about item number {i} only." for i in range(40))
    m0 = server.metrics()
    a = complete(server.url, shared + " Question: what is item 3?", 4)
    assert a["usage"]["prompt_tokens"] >= 400
    m1 = server.metrics()
    b = complete(server.url, shared + " Question: what is item 7 and item 9?", 4)
    m2 = server.metrics()
    n_b = b["usage"]["prompt_tokens"]
    cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 400, b["usage"]
    assert n_b - cached < 32  # only the tail (plus the partial block) was computed
    prefilled = m2["paraserve_prefill_tokens_total"] - m1["paraserve_prefill_tokens_total"]
    hits = m2["paraserve_prefix_cache_hit_tokens_total"] - m1["paraserve_prefix_cache_hit_tokens_total"]
    # the prefill counter also counts the 3 decode forwards of the 4 generated tokens? no: those are decodes
    assert prefilled == n_b - cached, (prefilled, n_b, cached)
    assert hits == cached
    assert m1["paraserve_prefill_tokens_total"] - m0["paraserve_prefill_tokens_total"] == \
        a["usage"]["prompt_tokens"] - a["usage"]["prompt_tokens_details"]["cached_tokens"]


def _blocks(m):
    return (m['paraserve_kv_blocks{state="active"}'], m["paraserve_running_sequences"],
            m["paraserve_waiting_sequences"])


def test_disconnect_mid_stream_frees_sequence(server):
    base = server.metrics()
    assert _blocks(base) == (0, 0, 0)
    body = json.dumps({"model": "default", "prompt": "Tell me a very long story about a dragon.",
                       "max_tokens": 400, "temperature": 0, "stream": True, "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 3:
        chunk = s.recv(4096)
        assert chunk, "server closed early"
        got += chunk
    assert b"200 OK" in got
    mid = server.metrics()
    assert mid["paraserve_running_sequences"] == 1 and mid['paraserve_kv_blocks{state="active"}'] > 0
    s.close()
    after = wait_for(lambda: (lambda m: m if _blocks(m) == (0, 0, 0) else None)(server.metrics()), timeout=30)
    assert after, f"sequence not cancelled: {_blocks(server.metrics())}"
    assert after["paraserve_client_disconnects_total"] >= base["paraserve_client_disconnects_total"] + 1
    # far fewer than 400 tokens were generated for it
    assert after["paraserve_engine_generated_tokens_total"] - mid["paraserve_engine_generated_tokens_total"] < 300
    # and the server still serves
    assert complete(server.url, "Hi", 2)["usage"]["completion_tokens"] >= 1


def test_disconnect_non_streaming_client(server):
    body = json.dumps({"model": "default", "prompt": "Write a long essay.", "max_tokens": 400,
                       "temperature": 0, "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
              + b"\r\n\r\n" + body)
    assert wait_for(lambda: server.metrics()["paraserve_running_sequences"] == 1, timeout=30)
    s.close()
    assert wait_for(lambda: _blocks(server.metrics()) == (0, 0, 0), timeout=60), _blocks(server.metrics())


def test_preemption_tiny_kv_cache(server, start_server):
    # 12 blocks x 16 = 192 token slots for 8 sequences of ~40 tokens (3 blocks) each
    srv = start_server("--kv-blocks", 12, "--max-batch", 16, "--ctx", 128)
    prompts = [f"Describe {t}:" for t in TOPICS[:8]]
    # solo answers from the roomy server: greedy output does not depend on the batch
    solo = [complete(server.url, p, 32, ignore_eos=True)["choices"][0]["text"] for p in prompts]
    m0 = srv.metrics()
    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda p: complete(srv.url, p, 32, ignore_eos=True), prompts))
    m1 = srv.metrics()
    assert m1["paraserve_preemptions_total"] > m0["paraserve_preemptions_total"], "no preemption happened"
    for p, s, o in zip(prompts, solo, outs):
        assert o["usage"]["completion_tokens"] == 32
        assert o["choices"][0]["text"] == s, f"{p!r} differs after preemption"
    assert _blocks(m1) == (0, 0, 0)


def test_graceful_shutdown_finishes_in_flight(paraserve_bin, model_path):
    from server_fixtures import ServerProcess
    srv = ServerProcess(paraserve_bin, model_path, "--kv-blocks", 256)
    body = {"model": "default", "prompt": "Count to fifty:", "max_tokens": 24, "temperature": 0,
            "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=120) as h, h.stream("POST", srv.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(l for l in lines if l.startswith("data: "))
        assert first
        srv.proc.send_signal(signal.SIGTERM)
        rest = [l for l in lines if l.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(l[6:]) for l in [first] + rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    srv.proc.wait(timeout=30)
    assert srv.proc.returncode == 0, srv.output()
    assert "shut down cleanly" in srv.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=5)
    srv.log.close()


def test_graceful_shutdown_cancels_after_grace(paraserve_bin, model_path):
    from server_fixtures import ServerProcess
    srv = ServerProcess(paraserve_bin, model_path, "--kv-blocks", 256, "--shutdown-grace-ms", 300)
    body = {"model": "default", "prompt": "Count to a thousand:", "max_tokens": 1500, "temperature": 0,
            "stream": True, "ignore_eos": True}
    t0 = time.time()
    with httpx.Client(timeout=120) as h, h.stream("POST", srv.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        next(l for l in lines if l.startswith("data: "))
        srv.proc.send_signal(signal.SIGTERM)
        rest = [l for l in lines if l.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert '"error"' in rest[-2]  # the stream says it was cancelled
    srv.proc.wait(timeout=30)
    assert srv.proc.returncode == 0
    assert time.time() - t0 < 60
    srv.log.close()


def test_shutdown_does_not_wait_for_a_reply_whose_client_dropped(paraserve_bin, model_path):
    """A final reply larger than the socket buffers stays in libevent while the
    client does not read; when that client then drops (RST), libevent frees the
    connection without calling the reply's completion callback.  Shutdown
    counted such a reply as still being written and waited out its whole grace
    time (30 s here) with nothing in flight."""
    from server_fixtures import ServerProcess
    srv = ServerProcess(paraserve_bin, model_path, "--kv-blocks", 64, "--shutdown-grace-ms", 30000,
                        "--max-body-bytes", 64 << 20)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.connect(("127.0.0.1", srv.port))
        # task.created echoes the input: a 16 MiB stream, over the kernel's 4 MiB send buffer
        body = json.dumps({"input": "x" * (16 << 20), "stream": True,
                           "script": [{"final": {"answer": "done"}}]}).encode()
        s.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert s.recv(64).startswith(b"HTTP/1.1 200")
        # the task ends at once; its stream is then all queued and not read
        wait_for(lambda: srv.metrics()["paraserve_http_in_flight"] == 0, timeout=30)
        time.sleep(1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST: the rest of the reply can never be written
        time.sleep(0.5)
        t0 = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=60)
        took = time.time() - t0
        assert srv.proc.returncode == 0, srv.output()
        assert took < 10, f"shutdown took {took:.1f} s with nothing in flight:\n{srv.output()[-1500:]}"
        assert "grace time over" not in srv.output()
    finally:
        srv.stop()


def test_config_file_and_errors(paraserve_bin, model_path, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"port": 1, "kv_blocks": 8, "colour": "blue", "speed": 3}))
    r = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--config", str(bad)],
                       capture_output=True, timeout=30)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "'colour'" in err and "'speed'" in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"kv_blocks": "many"}))
    r = subprocess.run([paraserve_bin, "serve", "--config", str(wrong)], capture_output=True, timeout=30)
    assert r.returncode == 2 and "kv_blocks" in r.stderr.decode()
    r = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--bogus"], capture_output=True, timeout=30)
    assert r.returncode == 2
    r = subprocess.run([paraserve_bin, "serve", "--help"], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"--kv-blocks" in r.stdout

    # a config file sets values; the command line overrides them
    from server_fixtures import ServerProcess, free_port
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"kv_blocks": 64, "max_batch": 4, "model_alias": "from-config",
                                "block_size": 16, "prefix_cache": True}))
    srv = ServerProcess(paraserve_bin, model_path, "--config", str(good), "--kv-blocks", 96)
    try:
        m = srv.metrics()
        assert m["paraserve_kv_blocks_total"] == 96
        models = httpx.get(srv.url + "/v1/models").json()
        assert models["data"][0]["id"] == "from-config"
    finally:
        assert srv.stop() == 0


def test_priority_preempts_lower_and_both_complete(server, start_server):
    # 12 blocks x 16 = 192 token slots: the low stream (~160 tokens at the
    # end) and the high request (~140) cannot both hold their blocks, so the
    # high one preempts the low one (recompute) and is served first; the low
    # one resumes and still returns exactly its solo greedy output.
    import threading
    srv = start_server("--kv-blocks", 12, "--max-batch", 4, "--ctx", 192)
    low_prompt = "Tell me a long story about a dragon and a knight:"
    high_prompt = "Summarize these notes. " + " ".join(f"Note {i}: the box {i} is blue." for i in range(14))
    solo_low = complete(server.url, low_prompt, 150, ignore_eos=True)["choices"][0]["text"]
    solo_high = complete(server.url, high_prompt, 16, ignore_eos=True)
    assert solo_high["usage"]["prompt_tokens"] > 112  # more blocks than are left beside the low stream
    m0 = srv.metrics()
    state = {"n": 0, "text": [], "done_at": None, "finish": None}

    def run_low():
        body = {"model": "default", "prompt": low_prompt, "max_tokens": 150, "temperature": 0,
                "stream": True, "ignore_eos": True, "priority": 0}
        with httpx.Client(timeout=300) as h, h.stream("POST", srv.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                c = json.loads(line[6:])["choices"][0]
                state["text"].append(c["text"])
                state["n"] += 1
                if c["finish_reason"]:
                    state["finish"] = c["finish_reason"]
        state["done_at"] = time.time()

    t = threading.Thread(target=run_low)
    t.start()
    assert wait_for(lambda: state["n"] >= 80, timeout=120), state["n"]
    high = complete(srv.url, high_prompt, 16, ignore_eos=True, priority=10)
    high_done = time.time()
    low_n_at_high_done = state["n"]
    t.join(timeout=300)
    assert state["done_at"] is not None
    assert high["choices"][0]["text"] == solo_high["choices"][0]["text"]
    assert state["done_at"] > high_done and low_n_at_high_done < 150  # high served first
    assert "".join(state["text"]) == solo_low, "the preempted low-priority stream differs from its solo output"
    assert state["finish"] == "length"
    m1 = srv.metrics()
    assert m1["paraserve_priority_preemptions_total"] >= m0["paraserve_priority_preemptions_total"] + 1
    assert wait_for(lambda: _blocks(srv.metrics()) == (0, 0, 0), timeout=30)


def test_kv_type_q8_serves_batched_like_solo_and_bad_values_exit_2(start_server, paraserve_bin, model_path):
    # the q8 cache through the whole server: 8 concurrent greedy requests give
    # what each gives alone on the same server (batching invariance on q8)
    srv = start_server("--kv-type", "q8", "--max-batch", 8)
    prompts = [f"Write one sentence about {t}:" for t in TOPICS[:8]]
    solo = [complete(srv.url, p, 12)["choices"][0]["text"] for p in prompts]
    assert len(set(solo)) > 4
    with cf.ThreadPoolExecutor(8) as ex:
        batched = list(ex.map(lambda p: complete(srv.url, p, 12)["choices"][0]["text"], prompts))
    assert batched == solo
    for args, needle in ((["--kv-type", "q9"], "kv_type must be f16, q8 or f32"),
                         (["--kv-type", "q8", "--backend", "cuda"], "needs the CPU backend")):
        r = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--port", "0", *args],
                           capture_output=True, timeout=30)
        assert r.returncode == 2, r.stderr
        err = r.stderr.decode().strip()
        assert needle in err and len(err.splitlines()) == 1, err
