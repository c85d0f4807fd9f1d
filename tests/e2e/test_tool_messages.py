"""Tool messages in a chat history pair with the assistant's tool calls.

OpenAI's rules, checked here with raw HTTP so the error body is visible:
every assistant `tool_calls` item has a non-empty string `id` (unique in
its message); a `tool` message carries a `tool_call_id` naming a call of
the assistant message before it (other tool messages in between), each
call answered once; and every call is answered before the next non-tool
message or the end of the history.  Anything else is 400
invalid_request_error naming the parameter; a well-paired history is 200.
"""
import httpx
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)

USER = {"role": "user", "content": "Weather in Paris and Rome?"}


def _call(cid, city="Paris"):
    return {"id": cid, "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "%s"}' % city}}


def _asst(*calls):
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def _tool(cid, content='{"temp": 20}'):
    m = {"role": "tool", "content": content}
    if cid is not None:
        m["tool_call_id"] = cid
    return m


def _post(server, messages):
    return httpx.post(server.url + "/v1/chat/completions",
                      json={"model": "default", "messages": messages, "max_tokens": 2, "temperature": 0},
                      timeout=60)


GOOD = {
    "one": [USER, _asst(_call("c1")), _tool("c1")],
    "two-any-order": [USER, _asst(_call("c1"), _call("c2", "Rome")), _tool("c2"), _tool("c1"),
                      {"role": "user", "content": "thanks"}],
    "two-rounds": [USER, _asst(_call("a")), _tool("a"), _asst(_call("b")), _tool("b")],
    "plain-assistant": [USER, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "ok"}],
    "empty-tool-calls": [USER, {"role": "assistant", "content": "hi", "tool_calls": []}],
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_paired_histories_are_accepted(server, name):
    r = _post(server, GOOD[name])
    assert r.status_code == 200, r.text


BAD = {
    # (messages, param, words in the message)
    "tool-without-id": ([USER, _asst(_call("c1")), _tool(None)], "messages[2].tool_call_id", "tool_call_id"),
    "tool-id-not-string": ([USER, _asst(_call("c1")), {"role": "tool", "tool_call_id": 7, "content": "x"}],
                           "messages[2].tool_call_id", "string"),
    "tool-first": ([USER, _tool("c1")], "messages[1].role", "preceding"),
    "tool-after-text-turn": ([USER, _asst(_call("c1")), _tool("c1"), {"role": "user", "content": "u"},
                              _tool("c1")], "messages[4].role", "preceding"),
    "unknown-id": ([USER, _asst(_call("c1")), _tool("zz")], "messages[2].tool_call_id", "not the id"),
    "answered-twice": ([USER, _asst(_call("c1"), _call("c2")), _tool("c1"), _tool("c1"), _tool("c2")],
                       "messages[3].tool_call_id", "already"),
    "unanswered-at-end": ([USER, _asst(_call("c1"), _call("c2")), _tool("c1")], "messages", "c2"),
    "unanswered-before-user": ([USER, _asst(_call("c1")), {"role": "user", "content": "u"}], "messages", "c1"),
    "call-without-id": ([USER, _asst(_call("c0"), {"type": "function", "function": {"name": "f", "arguments": "{}"}}),
                         _tool("c1")], "messages[1].tool_calls[1].id", "required"),
    "call-empty-id": ([USER, _asst(_call("")), _tool("")], "messages[1].tool_calls[0].id", "non-empty"),
    "call-numeric-id": ([USER, _asst({**_call("x"), "id": 7}), _tool("7")], "messages[1].tool_calls[0].id",
                        "string"),
    "duplicate-call-ids": ([USER, _asst(_call("c1"), _call("c1")), _tool("c1")], "messages[1].tool_calls",
                           "two calls"),
    # ids are sorted, not compared pairwise: a duplicate 2,000 calls apart, and one call of 2,000 unanswered
    "duplicate-far-apart": ([USER, _asst(*[_call(f"c{k % 1999}") for k in range(2000)])],
                            "messages[1].tool_calls", "'c0'"),
    "one-of-many-unanswered": ([USER, _asst(*[_call(f"c{k}") for k in range(2000)])]
                               + [_tool(f"c{k}", "1") for k in range(2000) if k != 1234], "messages", "c1234"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_unpaired_histories_are_400(server, name):
    messages, param, words = BAD[name]
    r = _post(server, messages)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert words in err["message"], err
