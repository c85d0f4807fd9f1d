"""`paraserve serve` through the real openai SDK (sync, async, stream,
non-stream), curl SSE, /v1/models, /health, /metrics, stop strings, and
every bad input answered with an OpenAI-style error after which the server
still serves."""
import asyncio
import json
import subprocess

import httpx
import openai
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)

CHAT = [{"role": "user", "content": "List three primary colors."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_models_and_health(server, client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert len(ids) == 1 and ids[0]
    # models.retrieve (GET /v1/models/{model}) by the name, and by "default"
    for name in (ids[0], "default"):
        m = client.models.retrieve(name)
        assert m.id == ids[0] and m.object == "model" and m.owned_by == "paraserve"
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-model")
    assert ei.value.body["code"] == "model_not_found" and ei.value.body["param"] == "model", ei.value.body
    r = httpx.delete(server.url + "/v1/models/default")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, OPTIONS"
    r = httpx.head(server.url + "/v1/models/default")
    assert r.status_code == 200 and r.content == b""
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_sync_and_stream_agree(client):
    full = client.chat.completions.create(model="default", messages=CHAT, max_tokens=16, temperature=0)
    choice = full.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = full.usage
    assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    parts, finish, usage, roles = [], None, None, []
    stream = client.chat.completions.create(model="default", messages=CHAT, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert roles == ["assistant"]
    assert "".join(parts) == choice.message.content
    assert finish == choice.finish_reason
    assert usage is not None and usage.completion_tokens == u.completion_tokens
    assert usage.prompt_tokens == u.prompt_tokens


def test_model_name_from_gguf_is_accepted(client):
    name = client.models.list().data[0].id
    r = client.chat.completions.create(model=name, messages=CHAT, max_tokens=2, temperature=0)
    assert r.model == name


def test_completions_async_stream_and_non_stream(server):
    async def run():
        ac = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        prompt = "The three largest cities of Japan are"
        full = await ac.completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0)
        text = full.choices[0].text
        assert text and full.usage.completion_tokens >= 1
        chunks = []
        stream = await ac.completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0,
                                             stream=True)
        async for ch in stream:
            chunks.append(ch.choices[0].text)
        assert "".join(chunks) == text
        # concurrent async requests give the same greedy answer
        outs = await asyncio.gather(*[
            ac.completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0)
            for _ in range(4)])
        assert all(o.choices[0].text == text for o in outs)
        await ac.close()
    asyncio.run(run())


def test_prompt_as_token_ids(client):
    r = client.completions.create(model="default", prompt=[504, 3575, 282], max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens >= 1


def test_sampling_parameters_and_seed(client):
    kw = dict(model="default", prompt="Once upon a time", max_tokens=12, temperature=0.9, top_p=0.9,
              seed=1234, presence_penalty=0.5, frequency_penalty=0.5,
              extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1})
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b  # same seed, same text
    others = {client.completions.create(**{**kw, "seed": s}).choices[0].text for s in range(5)}
    assert len(others) > 1  # the seed matters: sampling really samples


def test_stop_string_across_tokens(client):
    prompt = "Count from one to twenty in words: one, two, three,"
    base = client.completions.create(model="default", prompt=prompt, max_tokens=24, temperature=0)
    text = base.choices[0].text
    assert len(text) > 12, text
    stop = text[5:9]  # 4 characters from the middle: usually spans a token boundary
    idx = text.index(stop)
    r = client.completions.create(model="default", prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "zzzz"])
    assert r.choices[0].text == text[:idx]
    assert r.choices[0].finish_reason == "stop"
    # streamed: the stop text is never sent, even in pieces
    parts = [c.choices[0].text for c in client.completions.create(
        model="default", prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True)]
    assert "".join(parts) == text[:idx]


def test_curl_sse(server):
    body = json.dumps({"model": "default", "messages": CHAT, "max_tokens": 6, "temperature": 0, "stream": True})
    out = subprocess.run(["curl", "-sN", "-H", "Content-Type: application/json", "-d", body,
                          server.url + "/v1/chat/completions"], capture_output=True, timeout=120, check=True)
    events = [e for e in out.stdout.decode().split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    objs = [json.loads(e[6:]) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert objs[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def _err(r, status, param=None, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    e = r.json()["error"]
    assert set(e) >= {"message", "type", "param", "code"}
    assert isinstance(e["message"], str) and e["message"]
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


def test_bad_inputs_then_good_request(server):
    u = server.url
    chat = u + "/v1/chat/completions"
    good = {"model": "default", "messages": CHAT, "max_tokens": 3, "temperature": 0}
    with httpx.Client(timeout=120) as h:
        _err(h.post(chat, content=b'{"messages": [', headers={"content-type": "application/json"}), 400,
             code="invalid_json")
        _err(h.post(chat, content=b"[1, 2]"), 400)
        e = _err(h.post(chat, json={**good, "max_tokens": "ten"}), 400, param="max_tokens")
        assert "max_tokens" in e["message"]
        _err(h.post(chat, json={**good, "temperature": "hot"}), 400, param="temperature")
        _err(h.post(chat, json={**good, "messages": "hi"}), 400, param="messages")
        _err(h.post(chat, json={**good, "messages": [{"role": "user", "content": 5}]}), 400,
             param="messages[0].content")
        _err(h.post(chat, json={**good, "messages": [{"role": "wizard", "content": "x"}]}), 400,
             param="messages[0].role")
        _err(h.post(chat, json={**good, "stream": "yes"}), 400, param="stream")
        _err(h.post(chat, json={**good, "stop": 7}), 400, param="stop")
        _err(h.post(chat, json={**good, "top_p": 1.5}), 400, param="top_p")
        _err(h.post(chat, json={**good, "n": 0}), 400, param="n")
        _err(h.post(chat, json={**good, "response_format": {"type": "xml"}}), 400,
             param="response_format.type")
        _err(h.post(chat, json={**good, "tools": [{"type": "function", "function": {"name": "f"}}],
                                "tool_choice": "sometimes"}), 400, param="tool_choice")
        _err(h.post(chat, json={k: v for k, v in good.items() if k != "messages"}), 400, param="messages")
        _err(h.post(chat, json={**good, "model": "gpt-17"}), 404, param="model", code="model_not_found")
        long_prompt = "hello " * 2500
        e = _err(h.post(chat, json={**good, "messages": [{"role": "user", "content": long_prompt}]}), 400,
                 code="context_length_exceeded")
        assert "context" in e["message"]
        _err(h.post(u + "/v1/completions", json={"prompt": long_prompt, "max_tokens": 2}), 400,
             param="prompt", code="context_length_exceeded")
        big = json.dumps({**good, "pad": "x" * (1 << 20)})
        _err(h.post(chat, content=big), 413)
        bad_utf8 = b'{"messages": [{"role": "user", "content": "caf\xc3\x28"}], "max_tokens": 2}'
        _err(h.post(chat, content=bad_utf8), 400, code="invalid_utf8")
        _err(h.get(u + "/v1/nothing-here"), 404)
        _err(h.get(u + "/"), 404)
        r = h.get(chat)
        _err(r, 405)
        assert r.headers["allow"] == "POST, OPTIONS"
        r = h.delete(u + "/v1/models")
        _err(r, 405)
        assert r.headers["allow"] == "GET, HEAD, OPTIONS"   # HEAD is served too
        _err(h.post(u + "/v1/completions", json={"prompt": []}), 400, param="prompt")
        _err(h.post(u + "/v1/completions", json={"prompt": ["a", "b"]}), 400, param="prompt")
        _err(h.post(u + "/v1/completions", json={"prompt": [1, 99999999]}), 400, param="prompt")
        # still serving
        r = h.post(chat, json=good)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] is not None
    m = server.metrics()
    assert m['paraserve_requests_total{route="/v1/chat/completions",status="400"}'] >= 10
    assert m['paraserve_requests_total{route="/v1/chat/completions",status="413"}'] >= 1
    assert m['paraserve_requests_total{route="/v1/chat/completions",status="404"}'] >= 1
    assert m['paraserve_requests_total{route="other",status="404"}'] >= 2


def test_metrics_shape(server, client):
    client.completions.create(model="default", prompt="Hello", max_tokens=3, temperature=0)
    m = server.metrics()
    for name in ["paraserve_running_sequences", "paraserve_waiting_sequences", "paraserve_kv_blocks_total",
                 'paraserve_kv_blocks{state="free"}', 'paraserve_kv_blocks{state="cached"}',
                 'paraserve_kv_blocks{state="active"}', "paraserve_prefix_cache_hit_tokens_total",
                 "paraserve_prompt_tokens_total", "paraserve_generation_tokens_total",
                 "paraserve_time_to_first_token_seconds_count", "paraserve_inter_token_latency_seconds_count",
                 'paraserve_time_to_first_token_seconds_bucket{le="+Inf"}']:
        assert name in m, name
    assert m["paraserve_time_to_first_token_seconds_count"] >= 1
    assert m["paraserve_inter_token_latency_seconds_count"] >= 1
    assert m["paraserve_generation_tokens_total"] >= 3
    assert m["paraserve_kv_blocks_total"] == 1024
    assert (m['paraserve_kv_blocks{state="free"}'] + m['paraserve_kv_blocks{state="cached"}']
            + m['paraserve_kv_blocks{state="active"}']) == 1024


def test_oversized_bodies_of_any_size_get_json_413(start_server, tmp_path):
    # max_body_bytes 1024: bodies up to ~65 KiB reach our handlers, larger ones
    # are refused by libevent while reading; both answer the OpenAI JSON 413.
    import socket
    srv = start_server("--max-body-bytes", 1024, "--kv-blocks", 64)
    url = srv.url + "/v1/completions"
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"prompt": "x" * 300000, "max_tokens": 1}))
    mid = tmp_path / "mid.json"
    mid.write_text(json.dumps({"prompt": "x" * 3000, "max_tokens": 1}))

    def curl(*args):
        p = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args], capture_output=True,
                           timeout=60, check=True)
        body, code = p.stdout.decode().rsplit("\n", 1)
        return int(code), body

    for extra, path in ([[], mid], [[], big], [["-H", "Expect:"], big],
                        [["-H", "Transfer-Encoding: chunked"], big], [["-H", "Transfer-Encoding: chunked"], mid]):
        code, body = curl("-H", "Content-Type: application/json", *extra, "--data-binary", f"@{path}", url)
        assert code == 413, (extra, path.name, code, body)
        e = json.loads(body)["error"]
        assert e["code"] == "request_too_large" and e["type"] == "invalid_request_error" and "1024" in e["message"]
        assert set(e) >= {"message", "type", "param", "code"}
    # a raw client announcing a huge Content-Length is answered at once
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 999999999999\r\n\r\n{\"messages\": [")
    got = b""
    while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    head, body = got.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 "), got
    assert b"application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # the tasks API gets the same answer for a body libevent refuses
    code, body = curl("--data-binary", f"@{big}", srv.url + "/v1/tasks")
    assert code == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    # and the server keeps serving
    r = httpx.post(url, json={"prompt": "Hi", "max_tokens": 2, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    m = srv.metrics()
    assert m['paraserve_requests_total{route="other",status="413"}'] >= 4
    assert m['paraserve_requests_total{route="/v1/completions",status="413"}'] >= 1


def test_empty_prompt_is_a_bad_value_not_a_context_overflow(server):
    # "" and [""] are refused like [] and [[]]: an empty prompt, not one
    # too long for the context (code context_length_exceeded misled clients
    # that retry with a shorter prompt or a larger-context model)
    url = server.url + "/v1/completions"
    with httpx.Client(timeout=60) as h:
        for prompt in ("", [""], [], [[]]):
            e = _err(h.post(url, json={"prompt": prompt, "max_tokens": 2}), 400, param="prompt")
            assert e["code"] != "context_length_exceeded", (prompt, e)
            assert "empty" in e["message"], (prompt, e)
        r = h.post(url, json={"prompt": " ", "max_tokens": 1})  # one space is a prompt
        assert r.status_code == 200, r.text


def test_seed_takes_the_whole_int64_range(client, server):
    # OpenAI's seed is any 64-bit integer; beyond 9e15 it was refused as
    # "'seed' must be an integer"
    kw = dict(model="default", prompt="Once upon a time", max_tokens=8, temperature=1.0)
    for seed in (2**63 - 1, -2**63, 2**53 + 1, 10**16):
        a = client.completions.create(seed=seed, **kw).choices[0].text
        b = client.completions.create(seed=seed, **kw).choices[0].text
        assert a == b, seed
    with httpx.Client(timeout=60) as h:
        url = server.url + "/v1/completions"
        for bad in (2**64, -2**63 * 2, 1.5, "7"):
            _err(h.post(url, json={"prompt": "x", "max_tokens": 1, "seed": bad}), 400, param="seed")
