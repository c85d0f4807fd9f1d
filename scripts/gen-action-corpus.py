#!/usr/bin/env python3
"""Seed corpus for fuzz_action: orchestrator actions as the model writes
them (proto/examples/actions.json and near-valid variants), each prefixed
with the chunk-size bytes the target reads first (see tests/fuzz/fuzz_action.c).
Usage: scripts/gen-action-corpus.py OUTDIR"""
import json
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_action"
os.makedirs(out, exist_ok=True)

texts = [json.dumps(a) for a in json.load(open(os.path.join(root, "proto/examples/actions.json")))]
texts += [
    '{"calls":[{"id":"a","to":"calculator","args":{"expression":"1+2"},"after":[]}]}',
    '{"final":{"answer":"x","uses":["a"]}}',
    '{"thought":"split it {\\"calls\\": [", "calls":[{"id":"b","to":"echo","args":{"text":"]}\\\\"}}]}',
    '  \n{"calls":[{"id":"a","to":"t","args":{}},{"id":"b","to":"t","args":{"x":[1,{"y":null}]}}],"wait":true} trailing',
    '{"calls":[[{"id":"nested"}],"str",{"id":"c"}]}',
    '{"calls":[{"id":"a"}],"calls":[{"id":"b"}]}',
    '{"cancel":["c1",2]}',
    '{"final":"not an object"}',
    '{"final":{"uses":["a"]}}',
    '{"unknown":1}',
    '{}',
    '[{"calls":[]}]',
    '{"calls":[{"id":"a","to":"x","args":{"q":"\\u00e9\\ud83d\\ude00"}}',
    '{"calls":[{"id":"a"}]]}',
    '{"call\\u0073":[{"id":"esc"}]}',
    '{' * 70 + '}' * 70,
]
prefixes = [b"\x00\x00", b"\x00\x01", b"\x02\x03\x07\x40", b"\x07\x01\x02\x03\x05\x08\x0d\x15\x22"]
for i, t in enumerate(texts):
    for j, pre in enumerate(prefixes):
        with open(os.path.join(out, "action_%02d_%d" % (i, j)), "wb") as f:
            f.write(pre + t.encode())
