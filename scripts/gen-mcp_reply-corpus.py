#!/usr/bin/env python3
"""Seed corpus for fuzz_mcp_reply: MCP servers' replies to tools/call and
initialize, as JSON and as text/event-stream bodies, valid and near-valid,
each prefixed with the id byte the target reads first (see
tests/fuzz/fuzz_mcp_reply.c).  Usage: scripts/gen-mcp_reply-corpus.py OUTDIR"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_mcp_reply"
os.makedirs(out, exist_ok=True)


def rpc(id, **kw):
    return json.dumps(dict(jsonrpc="2.0", id=id, **kw))


msgs = [
    rpc(1, result={"content": [{"type": "text", "text": "3"}]}),
    rpc(1, result={"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
    rpc(1, result={"structuredContent": {"value": 3}, "content": [{"type": "text", "text": "3"}]}),
    rpc(1, result={"content": [{"type": "text", "text": "boom"}], "isError": True}),
    rpc(1, result={"protocolVersion": "2025-03-26", "capabilities": {"tools": {}},
                   "serverInfo": {"name": "s", "version": "1"}}),
    rpc(1, error={"code": -32602, "message": "unknown tool"}),
    rpc(1, error={"code": 1e300}),
    rpc(1, result="not an object"),
    rpc(1, result={}),
    rpc(1e300, result={}),
    rpc(-0.5, result={}),
    rpc("1", result={}),
    '{"jsonrpc":"2.0","method":"notifications/progress","params":{}}',
]
bodies = [m.encode() for m in msgs]
for m in msgs[:6]:
    bodies.append(b"event: message\r\ndata: " + m.encode() + b"\r\n\r\n")
    bodies.append(b"data: " + m[:20].encode() + b"\ndata: " + m[20:].encode() + b"\n\n")
bodies.append(b": keep-alive\n\nevent: message\ndata: " + msgs[12].encode() + b"\n\nid: 7\ndata: "
              + msgs[0].encode() + b"\n\n")
bodies.append(b"data: " + rpc(2, result={}).encode() + b"\n\ndata: " + msgs[0].encode())
bodies.append(b"data:" + msgs[0].encode() + b"\r\n")
bodies.append(b"data: {\"id\":1,\ndata: \"result\":{}}\n\n")
bodies.append(b"data: not json\n\n\n\ndata:\n\n")
for i, b in enumerate(bodies):
    with open(os.path.join(out, "mcp_%02d" % i), "wb") as f:
        f.write(b"\x00" + b)
