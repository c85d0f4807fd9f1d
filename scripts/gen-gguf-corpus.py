#!/usr/bin/env python3
"""Write small seed files for tests/fuzz/fuzz_gguf.c into DIR (default
tests/fuzz/corpus_gguf/, git-ignored); scripts/test generates them per run.

Hand-built GGUF images (format facts only): an empty v3 file, a file with one
key of every value type (nested array included), and small models of each
architecture with one layer whose tensors are F32/Q8_0/Q4_1 zeros."""
import os
import struct
import sys

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 3: (32, 20), 2: (32, 18)}


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def kv(key, t, payload):
    return s(key) + struct.pack("<I", t) + payload


def gguf(kvs, tensors, version=3, align=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    data = b""
    for name, ne, typ in tensors:
        be, bb = BLOCK[typ]
        n = 1
        for d in ne[1:]:
            n *= d
        nbytes = ne[0] // be * bb * n
        data += b"\0" * (-len(data) % align)
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", typ, len(data))
        data += bytes(nbytes)
    out += b"\0" * (-len(out) % align)
    return out + data


def all_types():
    return gguf([
        kv("u8", T_U8, b"\x07"), kv("i8", T_I8, b"\xff"), kv("u16", T_U16, struct.pack("<H", 9)),
        kv("i16", T_I16, struct.pack("<h", -9)), kv("u32", T_U32, struct.pack("<I", 9)),
        kv("i32", T_I32, struct.pack("<i", -9)), kv("f32", T_F32, struct.pack("<f", 0.5)),
        kv("bool", T_BOOL, b"\x01"), kv("str", T_STR, s("hi")),
        kv("u64", T_U64, struct.pack("<Q", 9)), kv("i64", T_I64, struct.pack("<q", -9)),
        kv("f64", T_F64, struct.pack("<d", 0.25)),
        kv("arr", T_ARR, struct.pack("<IQ", T_STR, 2) + s("a") + s("b")),
        kv("nested", T_ARR, struct.pack("<IQ", T_ARR, 1) + struct.pack("<IQ", T_U8, 2) + b"\x01\x02"),
        kv("general.alignment", T_U32, struct.pack("<I", 64)),
    ], [("t", [32, 2], 8)], version=2, align=64)


def model(arch, e=32, ff=64, heads=2, kv_heads=1, hd=16, vocab=8, wt=8):
    u32 = lambda k, v: kv(f"{arch}.{k}", T_U32, struct.pack("<I", v))
    kvs = [kv("general.architecture", T_STR, s(arch)), u32("block_count", 1),
           u32("embedding_length", e), u32("feed_forward_length", ff),
           u32("attention.head_count", heads), u32("attention.head_count_kv", kv_heads),
           u32("attention.key_length", hd), u32("context_length", 64),
           kv(f"{arch}.attention.layer_norm_rms_epsilon", T_F32, struct.pack("<f", 1e-5)),
           kv("tokenizer.ggml.tokens", T_ARR, struct.pack("<IQ", T_STR, vocab) +
              b"".join(s(chr(97 + i)) for i in range(vocab)))]
    q, k = heads * hd, kv_heads * hd
    ts = [("token_embd.weight", [e, vocab], wt), ("output_norm.weight", [e], 0)]
    layer = [("attn_norm.weight", [e], 0), ("attn_q.weight", [e, q], wt), ("attn_k.weight", [e, k], wt),
             ("attn_v.weight", [e, k], wt), ("attn_output.weight", [q, e], wt),
             ("ffn_norm.weight", [e], 0), ("ffn_gate.weight", [e, ff], wt),
             ("ffn_up.weight", [e, ff], wt), ("ffn_down.weight", [ff, e], wt)]
    if arch == "qwen2":
        layer += [("attn_q.bias", [q], 0), ("attn_k.bias", [k], 0), ("attn_v.bias", [k], 0)]
    if arch == "qwen3":
        layer += [("attn_q_norm.weight", [hd], 0), ("attn_k_norm.weight", [hd], 0)]
    ts += [(f"blk.0.{n}", ne, t) for n, ne, t in layer]
    return gguf(kvs, ts)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests/fuzz/corpus_gguf")
    os.makedirs(out, exist_ok=True)
    seeds = {
        "empty.gguf": gguf([], []),
        "all_types.gguf": all_types(),
        "llama.gguf": model("llama", wt=3),
        "qwen2.gguf": model("qwen2", wt=8),
        "qwen3.gguf": model("qwen3", wt=0),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
