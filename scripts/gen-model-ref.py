#!/usr/bin/env python3
"""Reference logits and greedy continuations of the embedded model, computed
by llama.cpp through the `llama-cpp-python` package (pip install
llama-cpp-python).  Writes tests/data/model_ref.json (prompts, token ids,
greedy tokens, per-step top-2 margins)
and tests/data/model_ref.tsv (the same ids for the C tests) and
tests/data/model_ref_logits.f32 (the last-position logits of each prompt, n_prompts x n_vocab little-endian
float32).  Token ids come from llama.cpp's own tokenizer so the logits test
does not depend on paraserve's tokenizer (that has its own test).

With --f32 it writes the exact-arithmetic reference instead: the model's
tensors dequantized to F32 (a temporary GGUF written with the `gguf`
package) and llama.cpp's KV cache in F32, so neither engine rounds an
activation: no Q8 activation quantization, no F16 K/V/Q/softmax weights.
Files: tests/data/model_ref_f32.{json,tsv} and model_ref_f32_logits.f32.
paraserve's counterpart is model_matrices_to_f32() + KV_F32.

Usage: scripts/gen-model-ref.py [--f32] [MODEL]   (default models/SmolLM2-135M-Instruct.Q4_1.gguf)
"""
import json
import os
import sys
import tempfile

import numpy as np
from llama_cpp import Llama, __version__ as llama_cpp_version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [a for a in sys.argv[1:] if a != "--f32"]
F32 = "--f32" in sys.argv[1:]
MODEL = ARGS[0] if ARGS else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
N_GREEDY = 64

CHAT = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [
    ("raw", "The capital of France is"),
    ("raw", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("raw", "Once upon a time, in a small village at the edge of the forest, there lived"),
    ("chat", "What is the boiling point of water at sea level? Answer briefly."),
    ("chat", "Split this task into steps: book a flight to Tokyo, find a hotel near Shibuya, and plan three days of sightseeing."),
    ("chat", "Write a haiku about GPUs."),
    ("raw", "1, 2, 3, 4, 5, 6, 7, 8,"),
]


def write_f32_gguf(src, dst):
    """Copy of GGUF `src` with every tensor dequantized to F32."""
    import gguf
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), f.types[0])
    for t in r.tensors:
        a = gguf.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, a.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if F32:
        tmp = tempfile.NamedTemporaryFile(suffix=".gguf", delete=False)
        tmp.close()
        write_f32_gguf(MODEL, tmp.name)
        llm = Llama(model_path=tmp.name, n_ctx=1024, n_batch=512, n_threads=2, logits_all=True,
                    verbose=False, seed=0, type_k=0, type_v=0)  # 0 = GGML_TYPE_F32
        os.unlink(tmp.name)  # mmapped: stays readable until llm is freed
    else:
        llm = Llama(model_path=MODEL, n_ctx=1024, n_batch=512, n_threads=2,
                    logits_all=True, verbose=False, seed=0)
    n_vocab = llm.n_vocab()
    cases, logits_rows = [], []
    for kind, text in PROMPTS:
        full = CHAT.format(text) if kind == "chat" else text
        ids = llm.tokenize(full.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        logits_rows.append(last.copy())
        greedy, margins = [], []
        cur = last
        for _ in range(N_GREEDY):
            order = np.argsort(-cur)
            tok = int(order[0])
            greedy.append(tok)
            margins.append(float(cur[order[0]] - cur[order[1]]))
            llm.eval([tok])
            cur = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        cases.append({"kind": kind, "text": full, "prompt_ids": ids, "greedy": greedy,
                      "greedy_top2_margin": [round(m, 5) for m in margins],
                      "greedy_text": llm.detokenize(greedy).decode("utf-8", "replace")})
        print(f"{kind:4s} {len(ids):3d} tokens -> {cases[-1]['greedy_text'][:60]!r}")
    suffix = "_f32" if F32 else ""
    out = {"generator": f"llama-cpp-python {llama_cpp_version}", "model": os.path.basename(MODEL),
           "weights": "dequantized to F32" if F32 else "as stored", "n_vocab": n_vocab,
           "kv_cache": "f32" if F32 else "f16", "cases": cases}
    with open(os.path.join(ROOT, "tests", "data", f"model_ref{suffix}.json"), "w") as f:
        json.dump(out, f, indent=1)
    # The same cases as TSV for the C tests: prompt ids, greedy ids, margins.
    with open(os.path.join(ROOT, "tests", "data", f"model_ref{suffix}.tsv"), "w") as f:
        f.write("# prompt_ids\tgreedy_ids\tgreedy_top2_margin (llama.cpp reference, see model_ref.json)\n")
        for c in cases:
            f.write("%s\t%s\t%s\n" % (" ".join(map(str, c["prompt_ids"])), " ".join(map(str, c["greedy"])),
                                        " ".join("%.5f" % m for m in c["greedy_top2_margin"])))
    np.stack(logits_rows).astype("<f4").tofile(os.path.join(ROOT, "tests", "data", f"model_ref{suffix}_logits.f32"))


if __name__ == "__main__":
    main()
