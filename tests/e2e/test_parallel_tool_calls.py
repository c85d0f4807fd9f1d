"""Several tool calls in one assistant reply (OpenAI `parallel_tool_calls`,
true by default) through the chat API with the real `openai` SDK.

The model writes its calls as compact JSON objects, one per line; the
grammar allows a '\\n' only after a complete call, and at most 16 calls
(OPENAI_MAX_TOOL_CALLS).  The tiny model rarely chooses a second call on its
own, so `logit_bias` pushes token 198 ("\\n" in SmolLM2's vocabulary): it is
in the mask only where a call may end, and there it always wins, so the
model calls until the cap and the grammar then only lets the reply end.
Checked: message.tool_calls (order, unique ids, each call's arguments valid
for its own tool), the streamed deltas (index = the call's position, the
first delta of each call with id/type/name), finish_reason, max_tokens cuts,
parallel_tool_calls false (one call), a named function, `n` choices, and a
history holding several calls and their tool messages."""
import json

import httpx
import jsonschema
import openai
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)

NL = "198"  # "\n" (SmolLM2 / GPT-2 byte-level 'Ċ')
MAX_CALLS = 16

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                           "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"],
        },
    },
}
TOOLS = [WEATHER, ADD]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSG = [{"role": "user", "content": "What is the weather in Paris, London and Rome?"}]
BASE = dict(model="default", messages=MSG, tools=TOOLS, temperature=0, max_tokens=600)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def _check_calls(calls, name=None):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_") and len(c.id) == 29, c
        assert c.function.name in PARAMS, c
        if name:
            assert c.function.name == name
        jsonschema.validate(json.loads(c.function.arguments), PARAMS[c.function.name])
    ids = [c.id for c in calls]
    assert len(set(ids)) == len(ids), ids


def _stream(client, **kw):
    """(calls as {index: [deltas]}, content text, finish_reason) of a stream."""
    calls, content, finish = {}, [], None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                calls.setdefault(d.index, []).append(d)
            if c.delta.content:
                content.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    return calls, "".join(content), finish


def test_calls_up_to_the_cap(client):
    r = client.chat.completions.create(tool_choice="required", logit_bias={NL: 100}, **BASE)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.content is None
    # the separator always wins where allowed: calls until the cap, then the reply must end
    assert len(c.message.tool_calls) == MAX_CALLS, c.message.tool_calls
    _check_calls(c.message.tool_calls)


def test_stream_matches_the_message(client):
    kw = dict(BASE, tool_choice="required", logit_bias={NL: 100})
    full = client.chat.completions.create(**kw).choices[0]
    calls = full.message.tool_calls
    assert len(calls) >= 2
    streamed, content, finish = _stream(client, **kw)
    assert finish == "tool_calls" and not content
    assert sorted(streamed) == list(range(len(calls)))
    ids = []
    for k, deltas in sorted(streamed.items()):
        first = deltas[0]
        assert first.index == k and first.id.startswith("call_") and first.type == "function"
        assert first.function.name == calls[k].function.name
        assert all(d.id is None and d.function.name is None for d in deltas[1:])
        ids.append(first.id)
        assert "".join(d.function.arguments or "" for d in deltas) == calls[k].function.arguments
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {c.id for c in calls}  # every reply's calls get fresh ids


def test_stream_deltas_one_call_at_a_time(server):
    # the raw SSE chunks: every tool_calls delta names one call, positions 0, 1, 2... in order
    body = dict(BASE, tool_choice="required", logit_bias={NL: 100}, stream=True, max_tokens=120)
    order = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for ch in json.loads(line[6:])["choices"]:
                tc = ch["delta"].get("tool_calls")
                if tc:
                    order.extend(d["index"] for d in tc)
    assert order[0] == 0 and max(order) >= 1
    assert order == sorted(order)
    assert set(order) == set(range(max(order) + 1))


def test_parallel_false_is_one_call(client):
    for stream in (False, True):
        kw = dict(BASE, tool_choice="required", logit_bias={NL: 100}, parallel_tool_calls=False)
        if stream:
            calls, content, finish = _stream(client, **kw)
            assert finish == "tool_calls" and not content and list(calls) == [0]
        else:
            c = client.chat.completions.create(**kw).choices[0]
            assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
            _check_calls(c.message.tool_calls)


def test_named_function_and_auto(client):
    named = {"type": "function", "function": {"name": "add"}}
    c = client.chat.completions.create(tool_choice=named, logit_bias={NL: 100}, **BASE).choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == MAX_CALLS
    _check_calls(c.message.tool_calls, "add")
    # auto: the first token decides; forced into a call (token 39428 is the call JSON's opening {"), then several
    c = client.chat.completions.create(tool_choice="auto", logit_bias={NL: 100, "39428": 100}, **BASE).choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == MAX_CALLS, c
    _check_calls(c.message.tool_calls)
    # none: tools ignored, a text answer
    c = client.chat.completions.create(**dict(BASE, tool_choice="none", max_tokens=8)).choices[0]
    assert c.message.content and not c.message.tool_calls


def test_max_tokens_cuts_a_later_call(client):
    kw = dict(BASE, tool_choice="required", logit_bias={NL: 100})
    full = client.chat.completions.create(**kw)
    calls = full.choices[0].message.tool_calls
    per_call = full.usage.completion_tokens // MAX_CALLS
    # cuts from inside the first call to inside the third: what was produced, as it is
    cut_in_second = cut_before_second_args = False
    for n in range(per_call - 4, 2 * per_call + 6):
        c = client.chat.completions.create(**dict(kw, max_tokens=n)).choices[0]
        assert c.finish_reason == "length", (n, c)
        got = c.message.tool_calls
        if not got:  # cut before the first call's arguments: the raw text
            assert c.message.content is not None
            continue
        assert c.message.content is None
        for k, call in enumerate(got[:-1]):
            assert call.function.arguments == calls[k].function.arguments
        last = len(got) - 1
        assert calls[last].function.arguments.startswith(got[-1].function.arguments)
        assert [g.function.name for g in got] == [x.function.name for x in calls[:len(got)]]
        cut_in_second |= len(got) == 2 and got[1].function.arguments != calls[1].function.arguments
        cut_before_second_args |= len(got) == 1 and got[0].function.arguments == calls[0].function.arguments
    assert cut_in_second and cut_before_second_args


def test_n_choices_have_their_own_calls(client):
    r = client.chat.completions.create(n=2, tool_choice="required", logit_bias={NL: 100}, **BASE)
    assert len(r.choices) == 2
    ids = []
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == MAX_CALLS
        _check_calls(c.message.tool_calls)
        ids += [t.id for t in c.message.tool_calls]
    assert len(set(ids)) == 2 * MAX_CALLS
    streams = {}
    for chunk in client.chat.completions.create(stream=True, n=2, tool_choice="required",
                                                logit_bias={NL: 100}, **BASE):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                streams.setdefault(c.index, {}).setdefault(d.index, []).append(d)
    assert sorted(streams) == [0, 1]
    for calls in streams.values():
        assert sorted(calls) == list(range(MAX_CALLS))


def test_history_with_several_calls(client):
    def hist(n_calls):
        cities = ["Paris", "London", "Rome"][:n_calls]
        calls = [{"id": f"call_{k}", "type": "function",
                  "function": {"name": "get_weather", "arguments": json.dumps({"city": c, "unit": "celsius"})}}
                 for k, c in enumerate(cities)]
        results = [{"role": "tool", "tool_call_id": f"call_{k}", "content": json.dumps({"temp": 10 + k})}
                   for k in range(n_calls)]
        return MSG + [{"role": "assistant", "content": None, "tool_calls": calls}] + results

    usage = []
    for n_calls in (1, 2, 3):
        r = client.chat.completions.create(model="default", messages=hist(n_calls), tools=TOOLS, max_tokens=8,
                                           temperature=0)
        c = r.choices[0]
        assert c.message.content or c.message.tool_calls
        usage.append(r.usage.prompt_tokens)
    # each further call and its result are in the prompt: the call's JSON line and a tool turn
    assert usage[0] < usage[1] < usage[2], usage
    assert abs((usage[2] - usage[1]) - (usage[1] - usage[0])) <= 2, usage
    # the reply to such a history may again hold several calls
    r = client.chat.completions.create(model="default", messages=hist(3), tools=TOOLS, tool_choice="required",
                                       max_tokens=600, temperature=0, logit_bias={NL: 100})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == MAX_CALLS
    _check_calls(c.message.tool_calls)


@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS, "tool_choice": "none"}], ids=["no-tools", "choice-none"])
@pytest.mark.parametrize("bad", ["yes", 1, [True]], ids=["string", "number", "array"])
def test_parallel_tool_calls_must_be_a_boolean_with_or_without_tools(server, extra, bad):
    body = {"model": "default", "messages": MSG, "max_tokens": 4, "parallel_tool_calls": bad, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "parallel_tool_calls" and err["type"] == "invalid_request_error", err
    # null and booleans stay accepted without tools
    for ok in (None, True, False):
        body["parallel_tool_calls"] = ok
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
