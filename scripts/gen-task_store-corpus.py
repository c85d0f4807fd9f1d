#!/usr/bin/env python3
"""Seed corpus for fuzz_task_store: 4 bytes choosing a row's fields, then an
events blob in host/store/task_store.c's format (per event: type length,
type, 4-byte little-endian text length, text).

Usage: scripts/gen-task_store-corpus.py OUTDIR"""
import json
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_task_store"
os.makedirs(out, exist_ok=True)


def blob(events):
    b = b""
    for t, d in events:
        t, d = t.encode(), d.encode()
        b += bytes([len(t)]) + t + struct.pack("<I", len(d)) + d
    return b


final = json.dumps({"id": "task_0000000f0000", "status": "completed", "output": "5", "calls": [], "rounds": 1})
logs = [
    [("task.created", '{"id":"task_0000000f0000","input":"in"}'), ("decision", '{"round":1}'), ("task.final", final)],
    [("task.created", "{}"), ("call.dispatched", '{"id":"c1"}'), ("call.result", '{"id":"c1","status":"ok"}'),
     ("task.error", '{"status":"failed","error":"x"}')],
    [("task.created", "{}")],
    [("teleport", "{}"), ("task.final", "{}")],
    [("task.final", "{\"\u00e9\":1}")],
]
heads = [bytes([0, 0, 0, 1]), bytes([1, 1, 1, 0]), bytes([3, 0, 0, 0]), bytes([0, 2, 2, 3]), bytes([2, 0, 0, 9])]
for i, (h, log) in enumerate(zip(heads, logs)):
    with open(os.path.join(out, f"store_{i:02d}"), "wb") as f:
        f.write(h + blob(log))
with open(os.path.join(out, "store_cut"), "wb") as f:
    f.write(heads[0] + blob(logs[0])[:-7])
