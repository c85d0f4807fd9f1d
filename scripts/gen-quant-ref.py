#!/usr/bin/env python3
"""gen-quant-ref.py - reference data for tests/unit/test_quant.c from the
python `gguf` package (gguf.quants), an implementation independent of ours.

Writes tests/data/quant_ref.txt, one case per line, whitespace separated
(F32 rows: `in`, `blocks` and `out` are the same bits; they check that F32
is copied bit for bit: -0.0, infinities, NaN payloads, denormals):

    Q <DTYPE> <n> <in> <blocks> <out>   gguf quantized `in` to `blocks`, and
                                        dequantized `blocks` to `out`
    D <DTYPE> <n> -    <blocks> <out>   random block bytes (gguf has no
                                        quantizer for DTYPE); `out` = gguf's
                                        dequantization

<in>/<out> are n float32 as 8 hex digits each (the IEEE bits, big-endian
digits of the uint32); <blocks> is the row's bytes in hex, file order.
Deterministic: fixed seed.  Usage: scripts/gen-quant-ref.py [out-path]
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

rng = np.random.default_rng(20240607)


def hex_f32(a):
    return "".join(f"{int(u):08x}" for u in np.asarray(a, dtype=np.float32).view(np.uint32))


def inputs(n):
    """Rows that exercise rounding, signs, zero and constant blocks."""
    rows = [
        rng.standard_normal(n).astype(np.float32),
        (rng.standard_normal(n) * 1e-3).astype(np.float32),
        (rng.standard_normal(n) * 300.0).astype(np.float32),
        rng.uniform(-1, 1, n).astype(np.float32),
        np.zeros(n, dtype=np.float32),
        np.full(n, 0.75, dtype=np.float32),
        np.full(n, -2.5, dtype=np.float32),
        (rng.integers(-8, 8, n) * 0.25).astype(np.float32),  # exact ties
        rng.uniform(0, 5, n).astype(np.float32),              # one-signed
    ]
    mixed = rng.standard_normal(n).astype(np.float32)
    mixed[::7] *= 1000.0
    mixed[3::11] = 0.0
    rows.append(mixed)
    return rows


def fp_specials(n):
    """Corner cases for F16/BF16 conversion, padded with random values."""
    sp = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 70000.0, -1e30,
          np.inf, -np.inf, 6.1035156e-05, 6.0e-05, 5.9604645e-08, 2.98e-08,
          2.9802322e-08, 4.5e-08, 8.940697e-08, 1e-40, -1e-45, 3.4028235e38,
          1.0009765625, 1.00048828125, 1.00146484375, 1.0 + 2**-8, 1.0 + 3 * 2**-9,
          -0.333333, 2049.0, 2051.0, 1e-8]
    row = rng.standard_normal(n).astype(np.float32) * 10
    row[: len(sp)] = np.array(sp, dtype=np.float32)
    return [row, (rng.standard_normal(n) * 1e-6).astype(np.float32),
            (rng.standard_normal(n) * 1e5).astype(np.float32)]


def q_line(name, qt, x):
    blocks = quants.quantize(x.reshape(1, -1), qt)
    out = quants.dequantize(blocks, qt).reshape(-1).astype(np.float32)
    return f"Q {name} {x.size} {hex_f32(x)} {blocks.tobytes().hex()} {hex_f32(out)}"


def d_line(name, qt, raw, n):
    out = quants.dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), qt)
    return f"D {name} {n} - {raw.hex()} {hex_f32(out.reshape(-1))}"


def f16_bytes(vals):
    return np.asarray(vals, dtype=np.float16).tobytes()


def random_q4_k(nb):
    out = bytearray()
    for _ in range(nb):
        out += f16_bytes([rng.uniform(1e-3, 0.05), rng.uniform(1e-3, 0.05)])
        out += rng.integers(0, 256, 12, dtype=np.uint8).tobytes()
        out += rng.integers(0, 256, 128, dtype=np.uint8).tobytes()
    return bytes(out)


def random_q6_k(nb):
    out = bytearray()
    for _ in range(nb):
        out += rng.integers(0, 256, 128 + 64, dtype=np.uint8).tobytes()
        out += rng.integers(-128, 128, 16, dtype=np.int8).tobytes()
        out += f16_bytes([rng.uniform(1e-4, 0.01)])
    return bytes(out)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "tests/data/quant_ref.txt"
    lines = []
    for name, qt in (("Q4_0", T.Q4_0), ("Q4_1", T.Q4_1), ("Q8_0", T.Q8_0)):
        for x in inputs(64):
            lines.append(q_line(name, qt, x))
    for name, qt in (("F16", T.F16), ("BF16", T.BF16)):
        for x in fp_specials(64) + inputs(32)[:3]:
            lines.append(q_line(name, qt, x))
    # raw F16/BF16 bit patterns, every exponent incl. subnormal, inf and nan
    raw16 = rng.integers(0, 65536, 256, dtype=np.uint16)
    raw16[:8] = [0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00]
    for name, qt in (("F16", T.F16), ("BF16", T.BF16)):
        lines.append(d_line(name, qt, raw16.tobytes(), 256))
    # random bytes for every 4-bit/8-bit block type too (all nibble values)
    for name, qt, bytes_per in (("Q4_0", T.Q4_0, 18), ("Q4_1", T.Q4_1, 20), ("Q8_0", T.Q8_0, 34)):
        nb = 8
        raw = bytearray(rng.integers(0, 256, nb * bytes_per, dtype=np.uint8).tobytes())
        for b in range(nb):  # sane f16 scales
            raw[b * bytes_per: b * bytes_per + 2] = f16_bytes([rng.uniform(-0.1, 0.1)])
            if name == "Q4_1":
                raw[b * bytes_per + 2: b * bytes_per + 4] = f16_bytes([rng.uniform(-1, 1)])
        lines.append(d_line(name, qt, bytes(raw), nb * 32))
    for nb in (1, 2, 3):
        lines.append(d_line("Q4_K", T.Q4_K, random_q4_k(nb), nb * 256))
        lines.append(d_line("Q6_K", T.Q6_K, random_q6_k(nb), nb * 256))
    # F32 is stored as-is: every bit pattern must come back unchanged.  Drawn
    # last, so the rows above stay what they were before F32 was added.
    sp32 = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
                     0x7FC00000, 0xFFC00000, 0x7FC00123, 0x7FFFFFFF,  # quiet NaNs, payloads
                     0x7F800001, 0xFFA00005, 0x7FBFFFFF,              # signalling NaNs
                     0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,  # denormals
                     0x00400000, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,  # min normal, max
                     0x3F800000, 0x3F800001, 0xBF7FFFFF], dtype=np.uint32)
    row = rng.standard_normal(64).astype(np.float32)
    row.view(np.uint32)[: sp32.size] = sp32
    lines.append(q_line("F32", T.F32, row))
    lines.append(q_line("F32", T.F32, inputs(64)[0]))
    raw32 = rng.integers(0, 1 << 32, 256, dtype=np.uint32)
    raw32[: sp32.size] = sp32
    raw32[64:96] &= 0x807FFFFF  # exponent 0: denormals of both signs
    raw32[96:128] |= 0x7F800000  # exponent 255: NaNs of every kind (and inf)
    lines.append(d_line("F32", T.F32, raw32.tobytes(), 256))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
