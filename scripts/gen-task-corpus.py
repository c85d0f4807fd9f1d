#!/usr/bin/env python3
"""Seed corpus for fuzz_task: POST /v1/tasks bodies with scripts over the
builtin tools (calculator, echo, text_stats, slow_calc): fan-out, DAGs,
{{ref}} arguments and answers, wait, cancel, final with uses, limits, and
near-valid variants (see tests/fuzz/fuzz_task.c).
Usage: scripts/gen-task-corpus.py OUTDIR"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_task"
os.makedirs(out, exist_ok=True)


def calc(i, e, after=None):
    c = {"id": i, "to": "calculator", "args": {"expression": e}}
    if after:
        c["after"] = after
    return c


bodies = [
    {"input": "sum", "script": [{"calls": [calc("c1", "2+3*4"), calc("c2", "{{c1}}*2", ["c1"])]},
                                {"final": {"answer": "{{c2}}", "uses": ["c2"]}}]},
    {"input": "fan", "script": [{"calls": [calc(f"k{i}", f"{i}*{i}") for i in range(8)]},
                                {"final": {"answer": "{{k7}} and {{k3.value}}", "uses": ["k7", "k3"]}}]},
    {"input": "echo", "script": [{"calls": [{"id": "e", "to": "echo", "args": {"list": [1, {"x": "y"}], "n": 1e300}},
                                            {"id": "f", "to": "echo", "args": {"v": "{{e.list.1.x}}"}, "after": ["e"]}]},
                                 {"final": {"answer": "{{f}}", "uses": ["f"]}}]},
    {"input": "stats", "script": [{"calls": [{"to": "text_stats", "args": {"text": "a b\nc. d!"}}]}, {"wait": True},
                                  {"final": {"answer": "{{c1.words}}"}}]},
    {"input": "cancel", "script": [{"calls": [calc("a", "1"), calc("b", "2", ["a"])]}, {"cancel": ["b"]},
                                   {"final": {"answer": "x", "uses": ["a"]}}]},
    {"input": "queue", "script": [{"calls": [{"id": f"q{i}", "to": "slow_calc", "args": {"expression": str(i)}}
                                             for i in range(4)]}, {"final": {"answer": "{{q3}}", "uses": ["q0", "q3"]}}]},
    {"input": "limits", "max_rounds": 2, "max_calls": 1, "deadline_ms": 5,
     "script": [{"calls": [calc("a", "1"), calc("b", "2")]}, {"wait": True}, {"final": {"answer": "late"}}]},
    {"input": "dup", "script": [{"calls": [calc("a", "1"), calc("a", "2"), calc("b", "3", ["a", "a"])]},
                                {"final": {"answer": "{{a}} {{b}}", "uses": ["a", "b"]}}]},
    {"input": "bad refs", "script": [{"calls": [calc("a", "1/0"), calc("b", "{{a}}+1", ["a"]),
                                                {"id": "c", "to": "nobody", "args": {}},
                                                calc("d", "x", ["zz"])]},
                                     {"final": {"answer": "{{b}}{{", "uses": ["b"]}}]},
    {"input": "ids", "script": [{"calls": [{"to": "calculator", "args": {"expression": "1"}},
                                           {"to": "calculator", "args": {"expression": "{{c1}}"}, "after": ["c1"]}]},
                                {"final": {"answer": "{{c2}}", "uses": ["c2"]}}]},
    {"input": "no final", "script": [{"calls": [calc("a", "1")]}]},
    {"input": "model"},
    {"input": "", "script": []}, {"input": "x", "script": [{}]}, {"input": "x", "script": [{"teleport": 1}]},
    {"input": 5}, {"input": "x", "bogus": 1}, {"input": "x", "max_rounds": 0}, {"input": "x", "deadline_ms": -1},
    {"input": "x", "script": [{"calls": [{"id": "a", "to": "calculator", "args": "2+2"}]}]},
    {"input": "x", "script": [{"final": {"answer": {"nested": ["{{a}}"]}, "uses": "a"}}]},
]
# the same, recording trajectories (prompts a model would read, the actions as completions)
bodies += [dict(b, trajectory=True) for b in bodies[:11] if isinstance(b, dict)]
bodies += [{"input": "caf\u00e9 \u00e8", "trajectory": True,
            "script": [{"calls": [{"to": "echo", "args": {"t": "\u00e9" * 400}}]}, {"final": {"answer": "{{c1}}"}}]},
           {"input": "x", "trajectory": "yes"}, {"input": "x", "trajectory": None},
           dict(bodies[0], metadata={"reference": "28", "suite": "s"}, trajectory=True),
           {"input": "x", "metadata": {"k": 1}}, {"input": "x", "metadata": [1]},
           {"input": "x", "metadata": {"\u00e9" * 64: "\u00e9" * 512}}]
texts = [json.dumps(b) for b in bodies] + ["{", "[]", "null", '{"input":"x","script":[' * 40,
                                             '{"input":"x","metadata":{"k":"v","k":"w"}}']   # a key twice
for i, t in enumerate(texts):
    with open(os.path.join(out, "task_%02d" % i), "w") as f:
        f.write(t)
