#!/usr/bin/env python3
"""Seed corpus for fuzz_openai: OpenAI request bodies (completions and chat,
sampling fields, stop, prompt as ids, response_format, tools and
tool_choice) and near-valid variants, each with a model output for the
reply shaping (see tests/fuzz/fuzz_openai.c for the input layout).
Usage: scripts/gen-openai-corpus.py OUTDIR"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_openai"
os.makedirs(out, exist_ok=True)

weather = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city"]}}}
person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
          "required": ["name"], "additionalProperties": False}
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

chat = [
    {"model": "smol", "messages": msgs},
    {"messages": msgs, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 8},
    {"messages": msgs, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7,
     "presence_penalty": 0.5, "frequency_penalty": 0.2, "repeat_penalty": 1.1, "stop": ["\n", "END"]},
    {"messages": msgs, "response_format": {"type": "json_object"}},
    {"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person,
                                                                                  "strict": True}}},
    {"messages": msgs, "tools": [weather]},
    {"messages": msgs, "tools": [weather], "tool_choice": "required", "parallel_tool_calls": False},
    {"messages": msgs, "tools": [weather], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"messages": msgs, "tools": [weather], "tool_choice": "none"},
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], "tools": [weather]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]},
    {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]}, {"model": "nope", "messages": msgs},
    {"messages": msgs, "n": 2}, {"messages": msgs, "temperature": -1}, {"messages": msgs, "top_p": 0},
    {"messages": msgs, "functions": [{"name": "f"}]},
    {"messages": msgs, "logprobs": True, "top_logprobs": 5, "stream": True}, {"messages": msgs, "top_logprobs": 2},
    {"messages": msgs, "logprobs": True, "top_logprobs": 21}, {"messages": msgs, "logprobs": "yes"},
    {"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}}},
]
completions = [
    {"model": "smol", "prompt": "Once upon", "max_tokens": 16},
    {"prompt": [1, 2, 3, 300], "max_tokens": 4}, {"prompt": [1, 2, 99999]}, {"prompt": ["a", "b"]},
    {"prompt": "x", "stop": "\n", "stream": True, "logprobs": 1}, {"prompt": "x", "max_tokens": -3},
    {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person}}},
    {"prompt": "x", "priority": 5, "ignore_eos": True}, {"prompt": "x", "priority": 1e300},
    {"prompt": "x", "logprobs": 0, "stream": True}, {"prompt": "x", "logprobs": 6},
    {"prompt": "a\x00b"}, {"prompt": "a\\u0000b"},
    {"prompt": "x", "stop": ["y", "\\", "\x00"], "top_p": 0},
    {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"k\x00": {"enum": [[{"a": ["\x00"]}]]}}}}}},
]
outputs = [b"", b"\x03Hello", b'\x03{"name":"get_weather","arguments":{"city":"Oslo"}}',
           b'\x02{"name":"get_weather","arguments":{"ci', b'\x01not json at all',
           b'\x00{"name":"nope","arguments":{}}']

n = 0
for endpoint, bodies in ((1, chat), (0, completions)):
    for i, b in enumerate(bodies):
        text = json.dumps(b).encode()
        o = outputs[i % len(outputs)]
        # split at len(text): the smallest bits 2-7 value that reaches it
        rest = len(text) + len(o)
        k = next(k for k in range(64) if rest * k // 63 >= len(text))
        body_len = rest * k // 63
        data = bytes([endpoint | 2 | (k << 2)]) + text + o
        # bodies the split cuts short still make good seeds; keep both
        with open(os.path.join(out, "openai_%03d" % n), "wb") as f:
            f.write(data)
        n += 1
        if body_len != len(text):
            with open(os.path.join(out, "openai_%03d" % n), "wb") as f:
                f.write(bytes([endpoint | 2 | (63 << 2)]) + text)
            n += 1
for raw in (b"", b"{", b"[]", b"null", b'{"messages":"x"}', b'\xff\xfe{}', b'{"prompt":"\\ud800"}',
            b'{"prompt":"a\x00b"}', b'{"prompt":"a\\\\\\u0000"}', b'{"prompt":"\\u0000'):
    with open(os.path.join(out, "openai_%03d" % n), "wb") as f:
        f.write(bytes([3 | (63 << 2)]) + raw)
    n += 1
