#!/usr/bin/env python3
"""bench/grammar: paraserve's grammar engine vs xgrammar and llguidance.

Same schemas (tests/data/schemas), same vocabulary (SmolLM2-135M's, read
from the GGUF by paraserve's tokenizer), same token sequences: the C driver
grammar_walk random-walks documents under paraserve's masks (timing each
mask), then this script replays those exact token sequences through
xgrammar and llguidance, timing their mask fills.  paraserve's times are
taken in C; the others' through their Python bindings (each call's binding
overhead, ~1 us, is included).  Compile times: per schema, caches off.

Also a soundness check: every finished random walk must validate with the
`jsonschema` package.

usage: bench/grammar/run.py [--seeds N] [--build DIR] [--out CSV]
"""
import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def build_driver(build, work):
    exe = work / "grammar_walk"
    lib = build / "libparaserve_core.a"
    subprocess.run(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-I", str(ROOT / "host"),
                    str(ROOT / "bench/grammar/grammar_walk.c"), str(lib), "-lcjson", "-levent",
                    "-lcurl", "-lm", "-lpthread", "-o", str(exe)], check=True)
    return exe


def load_vocab(work):
    toks, eog = [], []
    for line in (work / "vocab.hex").read_text().splitlines():
        if line.startswith("# eog"):
            eog = [int(x) for x in line.split()[2:]]
        elif line == "-":
            toks.append(None)
        else:
            toks.append(bytes.fromhex(line))
    return toks, eog


def bench_xgrammar(schemas, walks, toks, eog):
    import xgrammar as xg
    vocab = [t if t is not None else b"" for t in toks]
    info = xg.TokenizerInfo(vocab, xg.VocabType.RAW, vocab_size=len(vocab), stop_token_ids=eog)
    comp = xg.GrammarCompiler(info, cache_enabled=False)
    res = {}
    for name, text in schemas.items():
        t0 = time.perf_counter()
        try:
            cg = comp.compile_json_schema(text, any_whitespace=False, separators=(", ", ": "))
        except Exception as e:  # unsupported schema
            res[name] = {"error": str(e)[:80]}
            continue
        cms = (time.perf_counter() - t0) * 1e3
        times, rejected = [], 0
        bm = xg.allocate_token_bitmask(1, len(vocab))
        for w in walks.get(name, []):
            m = xg.GrammarMatcher(cg)
            for t in w["tokens"]:
                t1 = time.perf_counter_ns()
                m.fill_next_token_bitmask(bm)
                times.append((time.perf_counter_ns() - t1) / 1e3)
                if not m.accept_token(t):
                    rejected += 1
                    break
        res[name] = {"compile_ms": cms, "times": times, "rejected": rejected}
    return res


class _Tok:
    def __init__(self, toks, eog):
        self.tokens = [t if t is not None else b"<special>" for t in toks]
        self.eos_token_id = eog[-1] if eog else 0
        self.bos_token_id = None
        self.special_token_ids = [i for i, t in enumerate(toks) if t is None]
        self.byte_id = {}
        for i, t in enumerate(toks):
            if t is not None and len(t) == 1 and t[0] not in self.byte_id:
                self.byte_id[t[0]] = i

    def __call__(self, s):
        if isinstance(s, str):
            s = s.encode()
        return [self.byte_id[b] for b in s]


def bench_llguidance(schemas, walks, toks, eog):
    import llguidance as llg
    import llguidance.numpy as lln
    tok = llg.LLTokenizer(llg.TokenizerWrapper(_Tok(toks, eog)))
    res = {}
    for name, text in schemas.items():
        t0 = time.perf_counter()
        try:
            g = llg.LLMatcher.grammar_from_json_schema(
                text, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        except ValueError as e:
            res[name] = {"error": str(e)[:80]}
            continue
        m0 = llg.LLMatcher(tok, g, log_level=0)
        cms = (time.perf_counter() - t0) * 1e3
        if m0.is_error():
            res[name] = {"error": m0.get_error()[:80]}
            continue
        times, rejected = [], 0
        bm = lln.allocate_token_bitmask(1, len(toks))
        for w in walks.get(name, []):
            m = llg.LLMatcher(tok, g, log_level=0)
            for t in w["tokens"]:
                t1 = time.perf_counter_ns()
                lln.fill_next_token_bitmask(m, bm, 0)
                times.append((time.perf_counter_ns() - t1) / 1e3)
                if not m.consume_token(t) or m.is_error():
                    rejected += 1
                    break
        res[name] = {"compile_ms": cms, "times": times, "rejected": rejected}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--build", default=os.environ.get("PARASERVE_BUILD", str(ROOT / "build")))
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=str(ROOT / "bench/results" / f"grammar-{datetime.date.today()}.csv"))
    ap.add_argument("--work", default="/tmp/paraserve-grammar-bench")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = build_driver(Path(a.build), work)
    files = sorted((ROOT / "tests/data/schemas").glob("[0-9]*.json"))
    r = subprocess.run([str(exe), a.model, str(work), str(a.seeds), *map(str, files)])
    if r.returncode:
        sys.exit("grammar_walk reported failures")
    schemas = {f.name: f.read_text() for f in files}
    walks = {}
    n_fin = n_bad = 0
    for line in (work / "walks.jsonl").read_text().splitlines():
        w = json.loads(line)
        walks.setdefault(w["schema"], []).append(w)
        if w["finished"]:
            n_fin += 1
            doc = json.loads(bytes.fromhex(w["text_hex"]).decode())
            try:
                jsonschema.validate(doc, json.loads(schemas[w["schema"]]))
            except jsonschema.ValidationError as e:
                n_bad += 1
                print(f"INVALID {w['schema']} seed {w['seed']}: {e.message[:120]}")
    print(f"soundness: {n_fin} finished random walks, {n_bad} invalid under jsonschema")

    ours = {}
    for row in csv.DictReader(open(work / "paraserve_compile.csv")):
        ours[row["schema"]] = {"compile_ms": float(row["compile_ms"]), "times": []}
    for row in csv.DictReader(open(work / "paraserve_steps.csv")):
        ours[row["schema"]]["times"].append(float(row["mask_us"]))
    engines = {"paraserve": ours}
    toks, eog = load_vocab(work)
    for name, fn in (("xgrammar", bench_xgrammar), ("llguidance", bench_llguidance)):
        try:
            engines[name] = fn(schemas, walks, toks, eog)
        except ImportError as e:
            print(f"{name}: not installed ({e})")

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["engine", "schema", "compile_ms", "mask_steps", "mask_p50_us", "mask_p99_us",
                     "replay_rejected", "error"])
        for eng, res in engines.items():
            for name in schemas:
                x = res.get(name, {"error": "missing"})
                t = x.get("times", [])
                wr.writerow([eng, name, f"{x.get('compile_ms', float('nan')):.3f}", len(t),
                             f"{pct(t, .5):.2f}", f"{pct(t, .99):.2f}", x.get("rejected", ""),
                             x.get("error", "")])
    print(f"\nwrote {out}\n")
    print("| engine | schemas compiled | compile ms p50 | compile ms p99 | compile ms total | mask steps | mask µs p50 | mask µs p99 | replay rejects |")
    print("|---|---|---|---|---|---|---|---|---|")
    for eng, res in engines.items():
        ok = [x for x in res.values() if "error" not in x]
        cm = [x["compile_ms"] for x in ok]
        t = [v for x in ok for v in x["times"]]
        rej = sum(x.get("rejected", 0) for x in ok)
        print(f"| {eng} | {len(ok)}/{len(schemas)} | {pct(cm, .5):.2f} | {pct(cm, .99):.1f} | {sum(cm):.0f} | "
              f"{len(t)} | {pct(t, .5):.2f} | {pct(t, .99):.2f} | {rej} |")


if __name__ == "__main__":
    main()
