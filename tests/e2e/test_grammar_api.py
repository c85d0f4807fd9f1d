"""Constrained output through the chat API with the real `openai` SDK:
response_format json_schema / json_object (stream and not), tools with
tool_choice "required" / a named function / "auto" / "none" (tool_calls,
streamed deltas), max_tokens cuts (finish_reason "length", text not repaired), and
schemas the grammar compiler refuses (400 naming the keyword), after each of
which the server keeps serving.  Every finished output is validated with
`jsonschema`."""
import concurrent.futures
import json
import os
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
PERSON_MSG = [{"role": "user", "content": "Describe a user of our website as JSON."}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
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
            "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                           "b": {"$ref": "#/$defs/small"}},
            "required": ["a", "b"],
            "$defs": {"small": {"type": "integer", "minimum": 0, "maximum": 99}},
        },
    },
}
TOOLS = [WEATHER, ADD]
TOOL_MSG = [{"role": "user", "content": "What is the weather in Paris right now?"}]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def _fmt(schema, name="person"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _stream_text(stream):
    parts, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    return "".join(parts), finish


def _still_serving(client):
    r = client.chat.completions.create(model="default", messages=PERSON_MSG, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_json_schema_sampled(client):
    """Temperature 1.0, several seeds, stream and not: every finished output
    parses and validates; a cut one finishes "length"."""
    def one(seed, stream):
        kw = dict(model="default", messages=PERSON_MSG, max_tokens=96, temperature=1.0, seed=seed,
                  response_format=_fmt(PERSON))
        if stream:
            return _stream_text(client.chat.completions.create(stream=True, **kw))
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda a: one(*a), [(s, s % 2 == 1) for s in range(1, 9)]))
    finished = 0
    for text, finish in results:
        assert finish in ("stop", "length"), finish
        if finish == "stop":
            jsonschema.validate(json.loads(text), PERSON)
            finished += 1
    print(f"json_schema at temperature 1: {finished}/{len(results)} finished and valid, "
          f"{len(results) - finished} cut by max_tokens")
    assert finished >= 6, results


def test_stream_equals_non_stream(client):
    kw = dict(model="default", messages=PERSON_MSG, max_tokens=96, temperature=0,
              response_format=_fmt(PERSON))
    full = client.chat.completions.create(**kw)
    text, finish = _stream_text(client.chat.completions.create(stream=True, **kw))
    assert text == full.choices[0].message.content and finish == full.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object(client):
    def one(seed):
        return client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
            max_tokens=48, temperature=1.0 if seed else 0, seed=seed, response_format={"type": "json_object"})

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        replies = list(ex.map(one, (0, 1, 2)))
    for r in replies:
        c = r.choices[0]
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict)
        else:
            assert c.finish_reason == "length" and c.message.content.startswith("{")


def _check_call(call, name=None):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in PARAMS
    if name:
        assert call.function.name == name
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PARAMS[call.function.name])
    return args


def test_tools_required_and_named(client):
    def one(seed, choice):
        return client.chat.completions.create(model="default", messages=TOOL_MSG, tools=TOOLS,
                                              tool_choice=choice, max_tokens=64, temperature=1.0, seed=seed)

    named = {"type": "function", "function": {"name": "add"}}
    jobs = [(s, "required") for s in (1, 2)] + [(s, named) for s in (3, 4)]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        replies = list(ex.map(lambda a: one(*a), jobs))
    n_calls = 0
    for (seed, choice), r in zip(jobs, replies):
        c = r.choices[0]
        if c.finish_reason == "length":
            continue
        assert c.finish_reason == "tool_calls", c
        # parallel_tool_calls is true by default: one or more calls, each valid for its tool
        assert c.message.content is None and 1 <= len(c.message.tool_calls) <= 16
        for call in c.message.tool_calls:
            _check_call(call, None if choice == "required" else "add")
        n_calls += 1
    print(f"tool calls at temperature 1: {n_calls}/{len(jobs)} complete and valid")
    assert n_calls >= 3


def test_tool_call_stream_deltas(client):
    kw = dict(model="default", messages=TOOL_MSG, tools=[WEATHER], tool_choice="required", max_tokens=64,
              temperature=0)
    full = client.chat.completions.create(**kw)
    call = full.choices[0].message.tool_calls[0]
    _check_call(call, "get_weather")
    assert full.choices[0].finish_reason == "tool_calls"

    deltas, finish, content = [], None, []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            if c.delta.tool_calls:
                deltas.extend(c.delta.tool_calls)
            if c.delta.content:
                content.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert finish == "tool_calls" and not content
    first = deltas[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:])
    assert len(deltas) > 2  # arguments arrive in fragments
    args = "".join(d.function.arguments or "" for d in deltas)
    assert args == call.function.arguments
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])


def test_tool_choice_auto(client):
    """The first token decides: a text answer (content, no tool_calls) or a
    complete, valid call.  Stream and non-stream agree."""
    def one(seed, msgs, choice):
        kw = {} if choice is None else {"tool_choice": choice}
        return client.chat.completions.create(model="default", messages=msgs, tools=TOOLS, max_tokens=48,
                                              temperature=1.0, seed=seed, **kw)

    jobs = [(s, TOOL_MSG, None if s % 2 else "auto") for s in range(1, 5)]
    jobs += [(5, [{"role": "user", "content": "Hi! How are you today?"}], "auto")]
    with concurrent.futures.ThreadPoolExecutor(5) as ex:
        replies = list(ex.map(lambda a: one(*a), jobs))
    kinds = []
    for r in replies:
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.message.content is None and c.finish_reason in ("tool_calls", "length")
            if c.finish_reason == "tool_calls":
                _check_call(c.message.tool_calls[0])
            kinds.append("call")
        else:
            assert c.message.content and c.finish_reason in ("stop", "length")
            assert not c.message.content.startswith("{") or c.finish_reason == "length"
            kinds.append("text")
    print(f"tool_choice auto: {kinds}")

    kw = dict(model="default", messages=jobs[-1][1], tools=TOOLS, max_tokens=16, temperature=0)
    full = client.chat.completions.create(**kw)
    text, finish = _stream_text(client.chat.completions.create(stream=True, **kw))
    c = full.choices[0]
    if c.message.tool_calls is None:
        assert text == c.message.content and finish == c.finish_reason

    # a conversation that already called the tool once: the model calls it again
    primed = [
        {"role": "user", "content": "Weather in London?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "London", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 12}'},
        {"role": "assistant", "content": "It is 12 degrees in London."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        replies = list(ex.map(lambda s: client.chat.completions.create(
            model="default", messages=primed, tools=[WEATHER], max_tokens=48, temperature=0.7 if s else 0,
            seed=s), range(3)))
    calls = [r.choices[0] for r in replies if r.choices[0].message.tool_calls]
    assert calls, [r.choices[0].message.content for r in replies]
    for c in calls:
        assert c.finish_reason == "tool_calls"
        _check_call(c.message.tool_calls[0], "get_weather")


def test_tool_choice_none_and_history(client):
    r = client.chat.completions.create(model="default", messages=TOOL_MSG, tools=TOOLS, tool_choice="none",
                                       max_tokens=8, temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length") and c.message.content and not c.message.tool_calls
    # a tool conversation: the assistant's call and the tool's result go back in
    msgs = TOOL_MSG + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    r = client.chat.completions.create(model="default", messages=msgs, max_tokens=8, temperature=0)
    assert r.choices[0].message.content


def test_max_tokens_cut(client):
    r = client.chat.completions.create(model="default", messages=PERSON_MSG, max_tokens=4, temperature=0,
                                       response_format=_fmt(PERSON))
    c = r.choices[0]
    assert c.finish_reason == "length" and r.usage.completion_tokens == 4
    assert c.message.content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(c.message.content)  # partial, not repaired
    text, finish = _stream_text(client.chat.completions.create(
        model="default", messages=PERSON_MSG, max_tokens=4, temperature=0, response_format=_fmt(PERSON),
        stream=True))
    assert finish == "length" and text == c.message.content

    r = client.chat.completions.create(model="default", messages=TOOL_MSG, tools=[WEATHER],
                                       tool_choice="required", max_tokens=20, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "length", c
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather"
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.function.arguments)


def _err(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


def test_bad_schemas(server, client):
    chat = server.url + "/v1/chat/completions"
    base = {"messages": PERSON_MSG, "max_tokens": 4}
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}, "patternProperties": {"^y": {}}}}}
    with httpx.Client(timeout=120) as h:
        e = _err(h.post(chat, json={**base, "response_format": _fmt({"type": "object",
                                                                       "patternProperties": {"a": {}}})}),
                 400, param="response_format", code="unsupported_schema")
        assert "patternProperties" in e["message"]
        e = _err(h.post(chat, json={**base, "response_format": _fmt({"type": "string", "not": {"const": "a"}})}),
                 400, param="response_format")
        assert "'not'" in e["message"]
        _err(h.post(chat, json={**base, "response_format": _fmt({"type": "integer", "minimum": 5,
                                                                   "maximum": 1})}), 400, param="response_format")
        _err(h.post(chat, json={**base, "response_format": _fmt({"$ref": "http://x.org/s.json"})}), 400,
             param="response_format")
        _err(h.post(chat, json={**base, "response_format": {"type": "json_schema"}}), 400,
             param="response_format.json_schema")
        _err(h.post(chat, json={**base, "response_format": {"type": "xml"}}), 400, param="response_format.type")
        e = _err(h.post(chat, json={**base, "tools": [bad_tool], "tool_choice": "required"}), 400, param="tools")
        assert "patternProperties" in e["message"]
        _err(h.post(chat, json={**base, "tools": TOOLS, "tool_choice": "sometimes"}), 400, param="tool_choice")
        _err(h.post(chat, json={**base, "tool_choice": "required"}), 400, param="tool_choice")
        _err(h.post(chat, json={**base, "tools": TOOLS, "response_format": {"type": "json_object"}}), 400,
             param="response_format")
        _err(h.post(chat, json={**base, "tools": TOOLS, "tool_choice": {"type": "function",
                                                                      "function": {"name": "nope"}}}),
             400, param="tool_choice")
        _err(h.post(chat, json={**base, "tools": [{"type": "function", "function": {"name": "bad name!"}}],
                                "tool_choice": "required"}), 400, param="tools[0].function.name")
        _err(h.post(chat, json={**base, "functions": [{"name": "f", "parameters": {}}]}), 400, param="functions")
        _err(h.post(server.url + "/v1/completions", json={"prompt": "x", "tools": TOOLS,
                                                          "tool_choice": "required"}), 400, param="tools")
        # completions take response_format too
        r = h.post(server.url + "/v1/completions", json={"prompt": "A JSON object:", "max_tokens": 64,
                                                         "temperature": 0,
                                                         "response_format": {"type": "json_object"}})
        assert r.status_code == 200, r.text
        ch = r.json()["choices"][0]
        if ch["finish_reason"] == "stop":
            assert isinstance(json.loads(ch["text"]), dict)
    _still_serving(client)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=PERSON_MSG, max_tokens=4,
                                       response_format=_fmt({"type": "object", "dependentSchemas": {}}))
    _still_serving(client)


SCHEMAS = sorted((Path(__file__).resolve().parents[2] / "tests/data/schemas").glob("[0-9]*.json"))


@pytest.mark.skipif(not os.environ.get("PARASERVE_GRAMMAR_API_ALL"),
                    reason="opt-in (PARASERVE_GRAMMAR_API_ALL=1): every schema of tests/data/schemas "
                           "through the chat API, a few minutes on two cores")
def test_all_schemas_through_the_api(client):
    """Every schema as response_format (stream for every other one) and, when
    it describes an object, as a tool's parameters; temperature 1.0."""
    def one(i, f):
        schema = json.loads(f.read_text())
        out = []
        kw = dict(model="default", max_tokens=64, temperature=1.0, seed=1 + i % 3)
        msgs = [{"role": "user", "content": "Reply with a short JSON value."}]
        if i % 2:
            out.append(("rf", schema, *_stream_text(client.chat.completions.create(
                messages=msgs, response_format=_fmt(schema, "s"), stream=True, **kw))))
        else:
            r = client.chat.completions.create(messages=msgs, response_format=_fmt(schema, "s"), **kw)
            out.append(("rf", schema, r.choices[0].message.content, r.choices[0].finish_reason))
        if isinstance(schema, dict) and schema.get("type") == "object":
            tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
            r = client.chat.completions.create(messages=msgs, tools=[tool], tool_choice="required", **kw)
            c = r.choices[0]
            args = c.message.tool_calls[0].function.arguments if c.message.tool_calls else c.message.content
            out.append(("tool", schema, args, "stop" if c.finish_reason == "tool_calls" else c.finish_reason))
        return out

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = [x for r in ex.map(lambda a: one(*a), enumerate(SCHEMAS)) for x in r]
    counts = {}
    for kind, schema, text, finish in results:
        c = counts.setdefault(kind, {"n": 0, "valid": 0, "cut": 0})
        c["n"] += 1
        if finish == "length":
            c["cut"] += 1
            continue
        assert finish == "stop", (kind, finish, text)
        jsonschema.validate(json.loads(text), schema)
        c["valid"] += 1
    print(f"\n{len(SCHEMAS)} schemas through the API at temperature 1.0: {counts}")
    for c in counts.values():
        assert c["valid"] >= c["n"] // 2
