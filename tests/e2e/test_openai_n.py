"""The OpenAI `n` parameter (n > 1 choices) on /v1/chat/completions and
/v1/completions, through the openai SDK (and httpx / a raw socket where
the wire matters):

- n = 3, streamed and not, on both endpoints: choices 0..2, each with its own
  text, finish_reason and logprobs; usage counts the prompt once and sums the
  completion tokens (ignore_eos makes every choice exactly max_tokens long);
  a stream interleaves the choices' chunks (choices[0].index), gives each
  its own finish chunk (chat: its own role chunk), one usage chunk with
  include_usage and a single `data: [DONE]`, and the same texts as the
  non-streamed reply;
- greedy (temperature 0): n = 3 gives three choices equal to the n = 1 answer;
- seeded sampling: choice i is the n = 1 answer with seed + i, the same on a
  second request, and the choices are not all equal;
- the prompt is computed once: prefill = prompt - cached + (n - 1) tokens,
  the other choices share its KV blocks (paraserve_prompt_shared_tokens_total);
  the request and tenant counters count the prompt once;
- per choice: logit_bias, stop strings, max_tokens, completions logprobs,
  chat logprobs streamed, response_format and tools (its own call id);
- a client that leaves mid-stream (or before a non-streamed reply) with
  n = 4 cancels all four sequences: nothing left running, waiting or holding
  KV blocks, and the server still serves;
- n = 128 (the maximum) works on a server with 64 batch slots;
- bad n (0, 129, "3", 2.5, true) is a 400 naming param `n`.
"""
import json
import socket
import uuid

import httpx
import openai
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)
from server_fixtures import wait_for

CHAT = [{"role": "user", "content": "Name a fruit and say why you like it."}]
PROMPT = "Once upon a time, in a small village,"
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def _create(client, chat, **kw):
    if chat:
        return client.chat.completions.create(model="default", messages=kw.pop("messages", CHAT), **kw)
    return client.completions.create(model="default", prompt=kw.pop("prompt", PROMPT), **kw)


def _text(choice, chat):
    return choice.message.content if chat else choice.text


def _texts(r, chat):
    assert [c.index for c in r.choices] == list(range(len(r.choices)))
    return [_text(c, chat) for c in r.choices]


def _stream(client, chat, **kw):
    """(texts by index, finish reasons by index, the index of every text chunk in order, usage)."""
    texts, finish, order, usage, roles = {}, {}, [], None, {}
    for ch in _create(client, chat, stream=True, **kw):
        if ch.usage is not None:
            assert not ch.choices and usage is None
            usage = ch.usage
            continue
        assert len(ch.choices) == 1
        c = ch.choices[0]
        assert c.index not in finish, f"a chunk of choice {c.index} after its finish chunk"
        piece = (c.delta.content if chat else c.text) or ""
        if chat and c.delta.role:
            assert c.delta.role == "assistant" and c.index not in roles
            roles[c.index] = True
        if piece:
            texts[c.index] = texts.get(c.index, "") + piece
            order.append(c.index)
        if c.finish_reason is not None:
            finish[c.index] = c.finish_reason
    if chat:
        assert sorted(roles) == sorted(finish), (roles, finish)
    return texts, finish, order, usage


# ---- non-streamed and streamed n = 3 ---------------------------------------------------------

@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_n3_non_streamed(client, chat):
    kw = dict(max_tokens=8, temperature=0.9, seed=11, extra_body={"ignore_eos": True})
    one = _create(client, chat, **kw)
    r = _create(client, chat, n=3, **kw)
    assert len(r.choices) == 3
    texts = _texts(r, chat)
    for c in r.choices:
        assert c.finish_reason == "length", c
        assert c.logprobs is None
        if chat:
            assert c.message.role == "assistant" and c.message.content
    assert all(texts)
    # usage: the prompt once, the completion tokens of all three choices
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.completion_tokens == 3 * 8 == 3 * one.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # choice 0 is the n = 1 answer (same seed)
    assert texts[0] == _text(one.choices[0], chat)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_n3_streamed(client, chat):
    kw = dict(max_tokens=8, temperature=0.9, seed=23, extra_body={"ignore_eos": True})
    whole = _create(client, chat, n=3, **kw)
    texts, finish, order, usage = _stream(client, chat, n=3, stream_options={"include_usage": True}, **kw)
    assert sorted(texts) == [0, 1, 2] and finish == {0: "length", 1: "length", 2: "length"}
    assert [texts[i] for i in range(3)] == _texts(whole, chat)
    # the choices' chunks are interleaved as their tokens come, not one choice after the other
    assert order != sorted(order), order
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens == 24
    assert usage.total_tokens == usage.prompt_tokens + 24


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stream_wire_one_done_and_a_finish_chunk_per_choice(server, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": "default", "max_tokens": 6, "temperature": 0.8, "seed": 5, "n": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    body.update({"messages": CHAT} if chat else {"prompt": PROMPT})
    events = []
    with httpx.stream("POST", server.url + path, json=body, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert len({o["id"] for o in objs}) == 1
    usage = [o for o in objs if o.get("usage")]
    assert len(usage) == 1 and usage[0] is objs[-1] and usage[0]["choices"] == []
    finishes = [o["choices"][0]["index"] for o in objs if o["choices"] and o["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1, 2, 3], finishes
    assert usage[0]["usage"]["completion_tokens"] >= 4


# ---- greedy and seeded sampling -----------------------------------------------------------------

@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_greedy_n3_choices_equal_the_n1_answer(client, chat):
    one = _text(_create(client, chat, max_tokens=16, temperature=0).choices[0], chat)
    assert one
    r = _create(client, chat, n=3, max_tokens=16, temperature=0)
    assert _texts(r, chat) == [one] * 3
    texts, finish, _, _ = _stream(client, chat, n=3, max_tokens=16, temperature=0)
    assert [texts.get(i, "") for i in range(3)] == [one] * 3 and sorted(finish) == [0, 1, 2]


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_seeded_choices_are_reproducible_and_differ(client, chat):
    kw = dict(max_tokens=12, temperature=1.0, seed=4242)
    a = _texts(_create(client, chat, n=4, **kw), chat)
    b = _texts(_create(client, chat, n=4, **kw), chat)
    assert a == b
    assert len(set(a)) > 1, a
    # the documented derivation: choice i is sampled with seed + i
    for i in (0, 3):
        solo = _create(client, chat, max_tokens=12, temperature=1.0, seed=4242 + i)
        assert _text(solo.choices[0], chat) == a[i], i


# ---- the prompt is computed once --------------------------------------------------------------

def test_prompt_is_prefilled_once_and_counted_once(client, server):
    prompt = f"Request {uuid.uuid4()}: " + " ".join(f"fact {i} is about the number {i * 7}." for i in range(30))
    n = 8
    m0 = server.metrics()
    r = client.completions.create(model="default", prompt=prompt, n=n, max_tokens=4, temperature=0.7, seed=3,
                                  extra_body={"ignore_eos": True})
    m1 = server.metrics()
    p, cached = r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens
    assert p > 200 and cached < p

    def d(k):
        return m1[k] - m0.get(k, 0.0)   # a labelled series appears with its first sample
    # the prompt once (less what the prefix cache served it), one recomputed token for each other choice
    assert d("paraserve_prefill_tokens_total") == p - cached + (n - 1), (d("paraserve_prefill_tokens_total"), p, cached)
    assert d("paraserve_prompt_shared_tokens_total") == (n - 1) * (p - 1)
    # request accounting: one request, the prompt once, every choice's tokens
    assert r.usage.completion_tokens == n * 4
    assert d("paraserve_prompt_tokens_total") == p
    assert d("paraserve_generation_tokens_total") == n * 4
    assert d('paraserve_tenant_requests_total{tenant="anonymous"}') == 1
    assert d('paraserve_tenant_prompt_tokens_total{tenant="anonymous"}') == p
    assert d('paraserve_tenant_generation_tokens_total{tenant="anonymous"}') == n * 4
    assert d('paraserve_requests_total{route="/v1/completions",status="200"}') == 1
    assert d("paraserve_engine_prompt_tokens_total") == n * p   # n engine sequences
    assert m1["paraserve_http_in_flight"] == 0


def test_max_tokens_1_still_shares_the_prompt(client, server):
    prompt = f"Note {uuid.uuid4()}: " + "the quick brown fox jumps over the lazy dog. " * 8
    m0 = server.metrics()
    r = client.completions.create(model="default", prompt=prompt, n=5, max_tokens=1, temperature=0)
    m1 = server.metrics()
    assert len(r.choices) == 5 and len(set(_texts(r, False))) == 1
    p, cached = r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens
    assert m1["paraserve_prefill_tokens_total"] - m0["paraserve_prefill_tokens_total"] == p - cached + 4


# ---- everything per choice --------------------------------------------------------------------

@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_logit_bias_stop_and_max_tokens_apply_to_every_choice(client, chat):
    forced = _text(_create(client, chat, max_tokens=1, temperature=0, logit_bias={"1000": 100}).choices[0], chat)
    assert forced
    r = _create(client, chat, n=3, max_tokens=4, temperature=1.0, seed=9, logit_bias={"1000": 100})
    assert _texts(r, chat) == [forced * 4] * 3
    assert [c.finish_reason for c in r.choices] == ["length"] * 3
    # a stop string that the forced token's text contains: every choice stops before it
    r = _create(client, chat, n=3, max_tokens=4, temperature=1.0, seed=9, logit_bias={"1000": 100},
                stop=[forced])
    assert _texts(r, chat) == [""] * 3 and [c.finish_reason for c in r.choices] == ["stop"] * 3
    assert r.usage.completion_tokens == 3


def test_completions_logprobs_per_choice(client):
    r = client.completions.create(model="default", prompt=PROMPT, n=3, max_tokens=6, temperature=1.0, seed=77,
                                  logprobs=2, extra_body={"ignore_eos": True})
    assert len({c.text for c in r.choices}) > 1
    for c in r.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
        assert "".join(lp.tokens) == c.text
        assert lp.text_offset[0] == len(PROMPT)
        assert all(len(t) in (2, 3) for t in lp.top_logprobs)
    # streamed: each chunk's logprobs are its own choice's, the same as not streamed
    toks = {}
    for ch in client.completions.create(model="default", prompt=PROMPT, n=3, max_tokens=6, temperature=1.0,
                                        seed=77, logprobs=2, stream=True, extra_body={"ignore_eos": True}):
        c = ch.choices[0]
        if c.logprobs:
            toks.setdefault(c.index, []).extend(c.logprobs.tokens)
    assert [toks[i] for i in range(3)] == [c.logprobs.tokens for c in r.choices]


def test_chat_logprobs_streamed_per_choice(client):
    kw = dict(model="default", messages=CHAT, n=2, max_tokens=6, temperature=1.0, seed=5, logprobs=True,
              top_logprobs=2)
    r = client.chat.completions.create(**kw)
    want = [[e.token for e in c.logprobs.content] for c in r.choices]
    for c, toks in zip(r.choices, want):
        assert "".join(toks) == c.message.content
    got = {}
    for ch in client.chat.completions.create(stream=True, **kw):
        c = ch.choices[0]
        if c.logprobs and c.logprobs.content:
            got.setdefault(c.index, []).extend(e.token for e in c.logprobs.content)
    assert [got.get(i, []) for i in range(2)] == want


def test_response_format_and_tools_apply_to_every_choice(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Invent a person."}], n=3, max_tokens=48,
        temperature=1.0, seed=8,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}})
    assert len(r.choices) == 3
    for c in r.choices:
        if c.finish_reason == "stop":
            v = json.loads(c.message.content)
            assert set(v) == {"name", "age"} and isinstance(v["age"], int), v
        else:
            assert c.message.content.startswith("{")
    r = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Add 2 and 3."}], n=2, max_tokens=48,
        temperature=0.8, seed=2, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    ids = []
    for c in r.choices:
        assert c.message.content is None and c.finish_reason == "tool_calls", c
        (call,) = c.message.tool_calls
        assert call.function.name == "add"
        json.loads(call.function.arguments)
        ids.append(call.id)
    assert len(set(ids)) == 2, ids
    # streamed: each choice announces its own call (its id and name) once
    first = {}
    for ch in client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Add 2 and 3."}], n=2, max_tokens=48,
            temperature=0.8, seed=2, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
            stream=True):
        c = ch.choices[0]
        for tc in c.delta.tool_calls or []:
            if tc.id:
                assert c.index not in first
                first[c.index] = tc.id
    assert sorted(first) == [0, 1] and len(set(first.values())) == 2


# ---- disconnects ------------------------------------------------------------------------------

def _blocks(m):
    return (m['paraserve_kv_blocks{state="active"}'], m["paraserve_running_sequences"],
            m["paraserve_waiting_sequences"], m["paraserve_http_in_flight"])


def _post_raw(server, path, body):
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_cancels_every_choice(client, server, stream):
    assert wait_for(lambda: _blocks(server.metrics()) == (0, 0, 0, 0), timeout=60)
    base = server.metrics()
    s = _post_raw(server, "/v1/chat/completions",
                  {"model": "default", "messages": [{"role": "user", "content": "Tell me a very long story."}],
                   "n": 4, "max_tokens": 400, "temperature": 0.8, "stream": stream, "ignore_eos": True})
    if stream:
        got = b""
        while got.count(b"data: ") < 12:   # 4 role chunks, then tokens of the choices
            chunk = s.recv(4096)
            assert chunk, "server closed early"
            got += chunk
        assert b"200 OK" in got
        assert all(f'"index":{i}'.encode() in got for i in range(4))
    assert wait_for(lambda: server.metrics()["paraserve_running_sequences"] == 4, timeout=60)
    mid = server.metrics()
    assert mid["paraserve_http_in_flight"] == 1
    s.close()
    after = wait_for(lambda: (lambda m: m if _blocks(m) == (0, 0, 0, 0) else None)(server.metrics()), timeout=60)
    assert after, f"choices not cancelled: {_blocks(server.metrics())}"
    assert after["paraserve_client_disconnects_total"] == base["paraserve_client_disconnects_total"] + 1
    # far fewer than 4 x 400 tokens were generated for them
    assert after["paraserve_engine_generated_tokens_total"] - mid["paraserve_engine_generated_tokens_total"] < 1200
    r = client.completions.create(model="default", prompt="Hi", n=2, max_tokens=2, temperature=0)
    assert len(r.choices) == 2 and r.usage.completion_tokens >= 2


# ---- limits -----------------------------------------------------------------------------------

def test_n_128_is_the_maximum_and_works(client, server):
    r = client.completions.create(model="default", prompt="Count: one, two,", n=128, max_tokens=2,
                                  temperature=1.0, seed=1, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == list(range(128))
    assert r.usage.completion_tokens == 256
    assert all(c.finish_reason == "length" for c in r.choices)
    assert wait_for(lambda: _blocks(server.metrics()) == (0, 0, 0, 0), timeout=30)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_bad_n_is_a_400_naming_n(client, server, chat):
    path = server.url + ("/v1/chat/completions" if chat else "/v1/completions")
    base = {"model": "default", "max_tokens": 2}
    base.update({"messages": CHAT} if chat else {"prompt": PROMPT})
    for bad in (0, 129, -1, "3", 2.5, True, [2]):
        r = httpx.post(path, json={**base, "n": bad}, timeout=60)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"}, e
        assert e["type"] == "invalid_request_error" and e["param"] == "n", (bad, e)
        assert "'n'" in e["message"], e
    for bad in (0, 129):
        with pytest.raises(openai.BadRequestError) as ex:
            _create(client, chat, n=bad, max_tokens=2)
        assert ex.value.body["param"] == "n"
    # null and 1 are the default
    r = httpx.post(path, json={**base, "n": None}, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 1
