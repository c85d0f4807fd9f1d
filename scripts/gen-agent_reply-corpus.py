#!/usr/bin/env python3
"""Seed corpus for fuzz_agent_reply: http-json, openai-chat and a2a agents'
replies, valid and near-valid, and HTTP error replies for the status
classifier, each prefixed with the selector byte and the two status bytes
the target reads first (see tests/fuzz/fuzz_agent_reply.c).
Usage: scripts/gen-agent_reply-corpus.py OUTDIR"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_agent_reply"
os.makedirs(out, exist_ok=True)

HTTP_JSON, CHAT, A2A, CLASSIFY = 0, 1, 2, 3


IDS = [1, 2, (1 << 40) + 1, (1 << 53) + 1]


def seed(kind, body, status=200, rpc_id=1, transport_error=False, card=False, stream=False):
    sel = kind | (IDS.index(rpc_id) << 2) | (16 if transport_error else 0) | (32 if card else 0) | (64 if stream else 0)
    return bytes([sel, status >> 8, status & 255]) + body.encode()


def rpc(id, **kw):
    return json.dumps(dict(jsonrpc="2.0", id=id, **kw))


def task(state, parts=None, artifacts=None, tid="t1"):
    t = {"id": tid, "kind": "task", "status": {"state": state}}
    if parts is not None:
        t["status"]["message"] = {"role": "agent", "parts": parts}
    if artifacts is not None:
        t["artifacts"] = artifacts
    return t


text = [{"kind": "text", "text": "42"}]
seeds = [
    seed(HTTP_JSON, '{"value": 3}'),
    seed(HTTP_JSON, '[1, 2, {"a": null}]'),
    seed(HTTP_JSON, '"just a string"'),
    seed(HTTP_JSON, '{"value": 3'),
    seed(HTTP_JSON, ''),
    seed(CHAT, json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]})),
    seed(CHAT, json.dumps({"choices": [{"message": {"role": "assistant", "content": None,
                                                    "tool_calls": []}}]})),
    seed(CHAT, json.dumps({"choices": []})),
    seed(CHAT, json.dumps({"choices": {"0": {}}})),
    seed(CHAT, json.dumps({"error": {"message": "overloaded"}})),
    seed(A2A, rpc(1, result={"kind": "message", "role": "agent", "parts": text})),
    seed(A2A, rpc(1, result=task("completed", artifacts=[{"parts": text}, {"parts": text}]))),
    seed(A2A, rpc(1, result=task("completed", parts=text))),
    seed(A2A, rpc(1, result=task("completed"))),
    seed(A2A, rpc(1, result=task("working"))),
    seed(A2A, rpc(1, result=task("submitted", tid=""))),
    seed(A2A, rpc(1, result=task("working", tid="x" * 300))),
    seed(A2A, rpc(1, result=task("failed", parts=[{"kind": "text", "text": "no"}]))),
    seed(A2A, rpc(1, result=task("input-required"))),
    seed(A2A, rpc(2, result=task("completed"))),
    seed(A2A, rpc(2, result={}), rpc_id=2),
    seed(A2A, rpc("1", result={})),
    seed(A2A, rpc(None, error={"code": -32600, "message": "bad request"})),
    seed(A2A, rpc(1, error=None, result={"parts": text})),
    seed(A2A, rpc(1, error={"code": 1})),
    seed(A2A, rpc(1, result="not an object")),
    seed(A2A, '{"jsonrpc":"2.0","result":{}}'),
    seed(CLASSIFY, '{"error":"busy"}', status=503),
    seed(CLASSIFY, 'rate limited\r\n\x00\x7f', status=429),
    seed(CLASSIFY, 'not found', status=404),
    seed(CLASSIFY, '{}', status=204),
    seed(CLASSIFY, '', status=200, transport_error=True),
    seed(A2A, rpc(IDS[2], result=task("working")), rpc_id=IDS[2]),
    seed(A2A, rpc(IDS[3], result=task("completed", parts=text)), rpc_id=IDS[3]),
    seed(A2A, rpc(1, result=task("auth-required", parts=text))),
    seed(A2A, rpc(1, result=task("canceled"))),
    seed(A2A, rpc(1, result=task("unknown"))),
    seed(CLASSIFY, 'x' * 300, status=500),
    # protocol 1.0 (SendMessage's {"task"} / {"message"} wrapper, TASK_STATE_*, bare parts)
    seed(A2A, rpc(1, result={"message": {"messageId": "m", "role": "ROLE_AGENT", "parts": [{"text": "hi"}]}})),
    seed(A2A, rpc(1, result={"task": {"id": "t1", "status": {"state": "TASK_STATE_SUBMITTED"}}})),
    seed(A2A, rpc(1, result={"id": "t1", "status": {"state": "TASK_STATE_COMPLETED"},
                             "artifacts": [{"artifactId": "a", "parts": [{"data": {"x": 1}}]}]})),
    seed(A2A, rpc(1, result={"id": "t1", "status": {"state": "TASK_STATE_COMPLETED"},
                             "artifacts": [{"parts": [{"data": 1}, {"data": [2]}]}]})),
    seed(A2A, rpc(1, result={"id": "t1", "status": {"state": "TASK_STATE_INPUT_REQUIRED",
                                                    "message": {"parts": [{"text": "which one?"}]}}})),
    seed(A2A, rpc(1, result={"task": {"id": "t1", "status": {"state": "TASK_STATE_" + "X" * 60}}})),
    seed(A2A, rpc(1, error={"code": -32601, "message": "Method not found"})),
    seed(A2A, rpc(1, error={"code": 1e300, "message": "odd"})),
    # agent cards (describe.c), 1.0 and 0.3 shapes
    seed(A2A, json.dumps({"name": "x", "description": "d", "skills": [{"name": "s", "description": "t"}],
                          "supportedInterfaces": [{"url": "http://127.0.0.1:1/a2a", "protocolBinding": "JSONRPC",
                                                   "protocolVersion": "1.0"}]}), card=True),
    seed(A2A, json.dumps({"name": "x", "url": "http://h/", "protocolVersion": "0.3.0",
                          "skills": [{"description": "t" * 3000}]}), card=True),
    seed(A2A, '{"supportedInterfaces": [{"protocolBinding": 1}], "skills": [null, 2]}', card=True),
    # streamed replies (SSE; byte 1 is also where the body is split in two)
    seed(A2A, "".join("data: " + rpc(1, result=r) + "\r\n\r\n" for r in [
        {"task": {"id": "t1", "status": {"state": "TASK_STATE_WORKING"}}},
        {"artifactUpdate": {"taskId": "t1", "artifact": {"parts": [{"text": "a"}]}}},
        {"artifactUpdate": {"taskId": "t1", "append": True, "artifact": {"parts": [{"text": "b"}, {"data": 1}]}}},
        {"statusUpdate": {"taskId": "t1", "status": {"state": "TASK_STATE_COMPLETED"}}}]), status=0x0a00, stream=True),
    seed(A2A, "".join("event: message\ndata: " + rpc(1, result=r) + "\n\n" for r in [
        task("working"), {"kind": "status-update", "taskId": "t1", "status": {"state": "input-required"},
                          "final": True}]), status=0x3000, stream=True),
    seed(A2A, ": ping\n\ndata: {\"jsonrpc\":\"2.0\",\n" + "data: \"id\":1,\"result\":{\"message\":{\"parts\":[{\"data\":[1]}]}}}\n",
         status=0x0500, stream=True),
    seed(A2A, "data: " + rpc(1, error={"code": -32004, "message": "no streaming"}) + "\n\n", stream=True),
    seed(A2A, "data: " + rpc(2, result={"task": {"id": "t"}}) + "\n\ndata: nope\n\n", stream=True),
]
for i, b in enumerate(seeds):
    with open(os.path.join(out, "agent_%02d" % i), "wb") as f:
        f.write(b)
