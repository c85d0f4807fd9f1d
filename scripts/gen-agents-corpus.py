#!/usr/bin/env python3
"""Seed corpus for fuzz_agents: agent files (configs/agents.default.json and
near-valid variants) and "schema NUL instance" pairs built from the proto/
schemas and the agents' input schemas (see tests/fuzz/fuzz_agents.c).
Usage: scripts/gen-agents-corpus.py OUTDIR"""
import glob
import json
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_agents"
os.makedirs(out, exist_ok=True)
n = 0


def put(data):
    global n
    with open(os.path.join(out, "agents_%03d" % n), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    n += 1


default = open(os.path.join(root, "configs/agents.default.json")).read()
put(default)
agents = json.loads(default)["agents"]
for a in agents:
    put(json.dumps({"agents": [a]}))
put(json.dumps({"agents": [
    {"name": "mcp", "kind": "mcp-http", "url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer x"},
     "tool": "search", "timeout_ms": 1000, "retries": 10, "backoff_ms": 0, "breaker_failures": 0},
    {"name": "stdio", "kind": "mcp-stdio", "command": ["python3", "-m", "server"]},
    {"name": "oa", "kind": "openai-chat", "url": "https://api.example.com/v1", "model": "m", "max_tokens": 1},
    {"name": "a2a", "kind": "a2a", "url": "http://[::1]:8080/"},
    {"name": "hj", "kind": "http-json", "url": "http://10.0.0.1/x",
     "input_schema": {"type": "object", "properties": {"q": {"type": ["string", "null"], "maxLength": 10},
                      "n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 5}},
                      "required": ["q"], "additionalProperties": False}},
    {"name": "calc", "kind": "builtin", "tool": "calculator", "deterministic": False,
     "example": {"task": "what is 2+2", "args": {"expression": "2+2"}, "result": {"value": 4}}}]}))
# near-valid agent files
for bad in [
    {"agents": [{"name": "x", "kind": "local", "bogus": 1}]},
    {"agents": [{"name": "x y", "kind": "local"}]},
    {"agents": [{"name": "x", "kind": "local"}, {"name": "x", "kind": "local"}]},
    {"agents": [{"name": "x", "kind": "http-json"}]},
    {"agents": [{"name": "x", "kind": "http-json", "url": "ftp://h"}]},
    {"agents": [{"name": "x", "kind": "mcp-stdio", "command": []}]},
    {"agents": [{"name": "x", "kind": "http-json", "url": "http://h", "headers": {"A\r\nB": "v"}}]},
    {"agents": [{"name": "x", "kind": "builtin", "tool": "rm"}]},
    {"agents": [{"name": "x", "kind": "local", "timeout_ms": 1.5}]},
    {"agents": [{"name": "x", "kind": "local", "input_schema": {"type": "objekt"}}]},
    {"agents": [{"name": "x", "kind": "local", "input_schema": {"pattern": "a*"}}]},
    {"agents": [{"name": "x", "kind": "local", "deterministic": 1}]},
    {"agents": [{"name": "x", "kind": "local", "example": {"task": "t", "args": {"input": 5}, "result": 1}}]},
    {"agents": [{"name": "x", "kind": "local", "example": {"task": "a\nb", "args": {"input": "i"}, "result": 1}}]},
    {"agents": [{"name": "x", "kind": "local", "example": {"task": "t", "args": {"input": "i"}}}]},
    {"agents": [{"name": "x", "kind": "local", "example": {"task": "t", "args": {"input": "i" * 1100}, "result": 1}}]},
    {"agents": {}}, {"agents": []}, {"extra": 1, "agents": []}, [],
]:
    put(json.dumps(bad))
put('{"agents":[{"name":"x","kind":"local"},')

# schema NUL instance pairs
schemas = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(root, "proto/*.schema.json")))]
schemas += [a["input_schema"] for a in agents if "input_schema" in a]
schemas += [
    {"anyOf": [{"type": "string", "minLength": 2}, {"type": "array", "items": {"type": "number"}, "maxItems": 3}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "maximum": 1}]},
    {"enum": [1, "a", None, [1, 2]], "const": "a"},
    {"type": "object", "additionalProperties": {"type": "boolean"}},
    True, False,
]
instances = ['{"input":"text"}', '{"expression":"1+2"}', '"ab"', '[1,2,3,4]', '1', '0.5', 'null', '"a"',
             '{"x":true,"y":1}', '{"calls":[{"id":"a","to":"calculator","args":{"expression":"1+2"}}]}']
for s in schemas:
    for i in instances[:4] if len(schemas) > 8 else instances:
        put(json.dumps(s).encode() + b"\0" + i.encode())
for i in instances:
    put(json.dumps(schemas[-6]).encode() + b"\0" + i.encode())
