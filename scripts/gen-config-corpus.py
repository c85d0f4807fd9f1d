#!/usr/bin/env python3
"""Seed corpus for fuzz_config: `paraserve serve` config files
(configs/server.json and near-valid variants; see tests/fuzz/fuzz_config.c).
Usage: scripts/gen-config-corpus.py OUTDIR"""
import json
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_config"
os.makedirs(out, exist_ok=True)

base = json.load(open(os.path.join(root, "configs/server.json")))
configs = [open(os.path.join(root, "configs/server.json")).read()]
variants = [
    {"api_keys": [{"key": "sk-a", "tenant": "team-a", "priority": 5, "max_priority": 10},
                  {"key": "sk-b"}]},
    {"kv_type": "q8", "backend": "cpu", "device_sampling": False, "agents": "configs/agents.default.json",
     "model_alias": "smol", "device": "cpu"},
    {"port": 65536}, {"port": 1.5}, {"port": "80"}, {"threads": 0}, {"ctx": 9e15}, {"ctx": -1e300},
    {"prefix_cache": 1}, {"host": "x" * 300}, {"bogus": 1, "other": 2},
    {"api_keys": {}}, {"api_keys": [1]}, {"api_keys": [{"tenant": "t"}]},
    {"api_keys": [{"key": "k", "tenant": "bad tenant!"}]},
    {"api_keys": [{"key": "k"}, {"key": "k"}]},
    {"api_keys": [{"key": "k", "priority": 7, "max_priority": 3}]},
    {"api_keys": [{"key": "k", "priority": 1e7}]},
    {"api_keys": [{"key": "k", "extra": True}]},
    {"kv_type": "q4"}, {"backend": "tpu"}, {"kv_blocks": 1, "block_size": 1},
]
for v in variants:
    d = dict(base)
    d.update(v)
    configs.append(json.dumps(d))
configs += ["[]", "{", '{"port": 80,}', "null", '{"model": "\\u0000x"}']
for i, c in enumerate(configs):
    with open(os.path.join(out, "config_%02d" % i), "w") as f:
        f.write(c)
