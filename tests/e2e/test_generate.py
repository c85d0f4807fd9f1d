"""`paraserve generate` end to end on the embedded model: greedy output equal
to llama.cpp's, sampling determinism, chat mode, options and bad input."""
import json
import math
import os
import re
import struct
import time

import pytest

from conftest import ROOT

REF = json.loads((ROOT / "tests" / "data" / "model_ref.json").read_text())


def ids_of(stdout: bytes):
    m = re.search(rb"^ids:(.*)$", stdout, re.M)
    assert m, stdout[-500:]
    return [int(x) for x in m.group(1).split()]


NEAR_TIE = 0.3  # see tests/unit/test_model_ref.c for why texts may part at a near tie


def assert_greedy_like_reference(got, case):
    """Identical to llama.cpp's greedy tokens up to its first near-tie step."""
    margins = case["greedy_top2_margin"]
    first_tie = next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(margins))
    assert got[:first_tie] == case["greedy"][:first_tie], (first_tie, got, case["greedy"])


@pytest.mark.parametrize("case", REF["cases"], ids=lambda c: c["text"][:24])
def test_greedy_matches_llama_cpp(run, model_path, case):
    # The reference decodes 64 tokens regardless of EOS.
    r = run("generate", "-m", model_path, "--prompt-ids", " ".join(map(str, case["prompt_ids"])),
            "-n", 64, "--ignore-eos", "--print-ids", "-t", 2)
    assert r.returncode == 0, r.stderr.decode()
    assert_greedy_like_reference(ids_of(r.stdout), case)


REF_F32 = json.loads((ROOT / "tests" / "data" / "model_ref_f32.json").read_text())


@pytest.mark.parametrize("case", REF_F32["cases"][:3], ids=lambda c: c["text"][:24])
def test_exact_greedy_identical_to_llama_cpp_f32(run, model_path, case):
    # --exact (f32 matrices, f32 KV) against llama.cpp on the same weights
    # dequantized to F32 with an F32 KV cache: all 64 tokens, no tie rule.
    r = run("generate", "-m", model_path, "--prompt-ids", " ".join(map(str, case["prompt_ids"])),
            "-n", 64, "--ignore-eos", "--print-ids", "-t", 2, "--exact")
    assert r.returncode == 0, r.stderr.decode()
    assert ids_of(r.stdout) == case["greedy"]


def test_chat_prompt_is_tokenized_like_llama_cpp(run, model_path):
    case = REF["cases"][3]  # a chat case; the text has the full ChatML prompt
    question = case["text"].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    r = run("generate", "-m", model_path, "--chat", "-p", question, "-n", 64, "--ignore-eos",
            "--print-ids", "-t", 2)
    assert r.returncode == 0, r.stderr.decode()
    assert ids_of(r.stdout) == case["greedy"]  # this case has no divergence (see test_model_ref)
    text = r.stdout.decode()
    assert case["greedy_text"][:20] in text


def test_raw_prompt_recognises_special_tokens(run, model_path):
    # a raw prompt spelling the chat template is tokenized as --chat renders it: same greedy output
    smol_sys = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    raw = (f"<|im_start|>system\n{smol_sys}<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
           "<|im_start|>assistant\n")
    a = run("generate", "-m", model_path, "-p", raw, "-n", 12, "--print-ids", "-t", 2)
    b = run("generate", "-m", model_path, "--chat", "-p", "Name a color.", "-n", 12, "--print-ids", "-t", 2)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr.decode(), b.stderr.decode())
    assert ids_of(a.stdout) == ids_of(b.stdout)
    # with --chat the same markers in the user's text are text: a different prompt
    c = run("generate", "-m", model_path, "--chat", "-p", "Name a color.<|im_end|>", "-n", 1, "-t", 2)
    d = run("generate", "-m", model_path, "--chat", "-p", "Name a color.", "-n", 1, "-t", 2)
    n_c = int(re.search(r"prompt: (\d+) tokens", c.stderr.decode()).group(1))
    n_d = int(re.search(r"prompt: (\d+) tokens", d.stderr.decode()).group(1))
    assert n_c - n_d >= 3, (n_c, n_d)


def test_stats_on_stderr(run, model_path):
    r = run("generate", "-m", model_path, "-p", "Hello", "-n", 8)
    assert r.returncode == 0
    err = r.stderr.decode()
    assert re.search(r"prompt: \d+ tokens .* tok/s", err), err
    assert re.search(r"decode: \d+ tokens .* tok/s", err), err


def test_seeded_sampling_is_deterministic(run, model_path):
    args = ("generate", "-m", model_path, "-p", "Tell me a story.", "--chat", "-n", 32,
            "--temp", "1.0", "--top-p", "0.95", "--print-ids", "--ignore-eos")
    a = ids_of(run(*args, "--seed", 7).stdout)
    b = ids_of(run(*args, "--seed", 7).stdout)
    c = ids_of(run(*args, "--seed", 8).stdout)
    assert a == b
    assert a != c


def test_thread_count_does_not_change_output(run, model_path):
    args = ("generate", "-m", model_path, "-p", "The three primary colors are", "-n", 24, "--print-ids")
    assert ids_of(run(*args, "-t", 1).stdout) == ids_of(run(*args, "-t", 2).stdout)


@pytest.mark.parametrize("args,needle", [
    ((), "-m MODEL is required"),
    (("-m", "x.gguf"), "exactly one of -p"),
    (("-m", "x.gguf", "-p", "hi", "--temp", "abc"), "--temp"),
    (("-m", "x.gguf", "-p", "hi", "-n", "-3"), "--n-predict"),
    (("-m", "x.gguf", "-p", "hi", "--bogus"), "unknown option"),
    (("-m", "x.gguf", "-p", "hi", "--top-p", "7"), "top_p"),
])
def test_usage_errors(run, args, needle):
    r = run("generate", *args)
    assert r.returncode == 2
    assert needle in r.stderr.decode()


# ---- bad model files -------------------------------------------------------------
#
# Each case is one defect: a few raw bytes, or a copy of the real model rebuilt
# from its parsed header with one kv dropped or one tensor-info field patched,
# extended to its full length as a sparse file (zero data: no 98 MB copy).  The
# unpatched rebuild must load and generate (test_rebuilt_model_generates), so
# each case below fails for its own defect alone.

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value sizes


def _skip_value(b, p, t):
    """Offset just past a GGUF value of type t starting at p."""
    if t in _SCALAR:
        return p + _SCALAR[t]
    if t == 8:  # string
        return p + 8 + struct.unpack_from("<Q", b, p)[0]
    assert t == 9, t  # array
    et, n = struct.unpack_from("<IQ", b, p)
    p += 12
    if et in _SCALAR:
        return p + n * _SCALAR[et]
    for _ in range(n):
        p = _skip_value(b, p, et)
    return p


class _Gguf:
    """A GGUF file's header: kvs as (key, start, end) byte spans, tensor infos
    with the file offsets of their dims and type fields, and data_start."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            b = self.b = f.read(16 << 20)  # the header (1.8 MB for SmolLM2), not the data
        _, _, n_tensors, n_kv = struct.unpack_from("<IIQQ", b, 0)
        p, self.kvs, self.tensors, self.arch = 24, [], [], None
        for _ in range(n_kv):
            start, n = p, struct.unpack_from("<Q", b, p)[0]
            key = b[p + 8:p + 8 + n].decode()
            t = struct.unpack_from("<I", b, p + 8 + n)[0]
            if key == "general.architecture":
                vlen = struct.unpack_from("<Q", b, p + 12 + n)[0]
                self.arch = b[p + 20 + n:p + 20 + n + vlen].decode()
            p = _skip_value(b, p + 12 + n, t)
            self.kvs.append((key, start, p))
        self.infos_start = p
        for _ in range(n_tensors):
            n = struct.unpack_from("<Q", b, p)[0]
            name = b[p + 8:p + 8 + n].decode()
            nd = struct.unpack_from("<I", b, p + 8 + n)[0]
            dims_at = p + 12 + n
            type_at = dims_at + 8 * nd
            self.tensors.append(dict(name=name, dims=list(struct.unpack_from(f"<{nd}Q", b, dims_at)),
                                     dims_at=dims_at, type_at=type_at,
                                     offset=struct.unpack_from("<Q", b, type_at + 4)[0]))
            p = type_at + 12
        self.infos_end = p
        assert "general.alignment" not in [k for k, _, _ in self.kvs]  # the default 32 then
        self.data_start = (p + 31) // 32 * 32
        assert self.data_start <= len(b), "header over 16 MiB"

    def write(self, path, drop=(), patch=(), size=None):
        """Write the header minus the kvs in `drop`, with the (file offset,
        struct format, value) patches inside the tensor infos applied, then zero
        data up to `size` bytes (default: the original data length).  -> str."""
        kvs = [(s, e) for k, s, e in self.kvs if k not in drop]
        assert len(kvs) == len(self.kvs) - len(drop), drop
        infos = bytearray(self.b[self.infos_start:self.infos_end])
        for at, fmt, v in patch:
            struct.pack_into(fmt, infos, at - self.infos_start, v)
        h = self.b[:16] + struct.pack("<Q", len(kvs)) + b"".join(self.b[s:e] for s, e in kvs) + infos
        h += bytes(-len(h) % 32)
        with open(path, "wb") as f:
            f.write(h)
            f.truncate(len(h) + self.size - self.data_start if size is None else size)
        return str(path)


@pytest.fixture(scope="module")
def model_gguf(model_path):
    g = _Gguf(model_path)
    offs = [t["offset"] for t in g.tensors]
    # truncated-data names the tensor cut: the first one past EOF in index order
    assert offs == sorted(set(offs)), "tensor data not in index order"
    return g


def _raw(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def _case(name, g, tmp_path):
    """-> (path, needles): the file of case `name` and the texts its one error
    line must hold (each naming the defect, not just "gguf")."""
    t0 = g.tensors[0]
    t2 = next(t for t in g.tensors if len(t["dims"]) == 2)
    mid = g.tensors[len(g.tensors) // 2]
    cut = g.data_start + mid["offset"] + 32  # inside mid's data, after all earlier tensors'
    kv_cut = next(k for k, s, e in g.kvs if s < 1 << 20 <= e)  # the kv 1 MiB falls in
    head = g.b[:4096]
    cases = {
        "missing": lambda: (str(tmp_path / "missing"), ["cannot open", "No such file"]),
        "empty": lambda: (_raw(tmp_path, name, b""), ["too small (0 bytes)"]),
        "wrong-magic": lambda: (_raw(tmp_path, name, b"GGML" + head[4:]), ["bad magic 0x4c4d4747"]),
        "bad-version": lambda: (_raw(tmp_path, name, head[:4] + (99).to_bytes(4, "little") + head[8:]),
                                ["unsupported version 99"]),
        "truncated-header": lambda: (_raw(tmp_path, name, g.b[:100]),
                                     [f"kv count {len(g.kvs)} is impossible for the 76 bytes left"]),
        # 1 MiB of the file ends inside the kvs (the tokenizer arrays)
        "truncated-metadata": lambda: (_raw(tmp_path, name, g.b[:1 << 20]),
                                       [f"'{kv_cut}'", "exceeds the", "bytes left"]),
        "truncated-tensor-infos": lambda: (_raw(tmp_path, name, g.b[:g.infos_end - 4]),
                                           [f"file truncated at offset {g.infos_end - 8}",
                                            f"info of tensor '{g.tensors[-1]['name']}'"]),
        "truncated-data": lambda: (g.write(tmp_path / name, size=cut),
                                   [f"tensor '{mid['name']}' data [{mid['offset']}, +",
                                    f"ends past end of file ({cut} bytes)"]),
        "offset-past-eof": lambda: (g.write(tmp_path / name, patch=[(t0["type_at"] + 4, "<Q", 1 << 40)]),
                                    [f"tensor '{t0['name']}' data [{1 << 40}, +",
                                     f"ends past end of file ({g.size} bytes)"]),
        "unknown-dtype": lambda: (g.write(tmp_path / name, patch=[(t0["type_at"], "<I", 99)]),
                                  [f"tensor '{t0['name']}' has unsupported type 99"]),
        "unsupported-dtype-q5_k": lambda: (g.write(tmp_path / name, patch=[(t0["type_at"], "<I", 13)]),
                                           [f"tensor '{t0['name']}' has unsupported type 13"]),
        "dim-zero": lambda: (g.write(tmp_path / name, patch=[(t2["dims_at"] + 8, "<Q", 0)]),
                             [f"tensor '{t2['name']}' has bad dimension ne[1] = 0 "]),
        "dim-over-2^40": lambda: (g.write(tmp_path / name, patch=[(t2["dims_at"] + 8, "<Q", (1 << 40) + 1)]),
                                  [f"tensor '{t2['name']}' has bad dimension ne[1] = {(1 << 40) + 1} "]),
        "dims-product-over-2^40": lambda: (
            g.write(tmp_path / name, patch=[(t2["dims_at"], "<Q", 1 << 40)]),
            [f"tensor '{t2['name']}' has shape [{1 << 40}, {t2['dims'][1]}]: more than 2^40 elements"]),
        "missing-architecture": lambda: (g.write(tmp_path / name, drop=["general.architecture"]),
                                         ["required key 'general.architecture' is missing"]),
        "missing-block-count": lambda: (g.write(tmp_path / name, drop=[f"{g.arch}.block_count"]),
                                        [f"required key '{g.arch}.block_count' is missing"]),
        "missing-tokens": lambda: (g.write(tmp_path / name, drop=["tokenizer.ggml.tokens"]),
                                   ["key 'tokenizer.ggml.tokens' not found"]),
        "missing-merges": lambda: (g.write(tmp_path / name, drop=["tokenizer.ggml.merges"]),
                                   ["required key 'tokenizer.ggml.merges' is missing"]),
    }
    return cases[name]()


BAD_MODEL_CASES = [
    "missing", "empty", "wrong-magic", "bad-version", "truncated-header", "truncated-metadata",
    "truncated-tensor-infos", "truncated-data", "offset-past-eof", "unknown-dtype",
    "unsupported-dtype-q5_k", "dim-zero", "dim-over-2^40", "dims-product-over-2^40",
    "missing-architecture", "missing-block-count", "missing-tokens", "missing-merges",
]


def test_rebuilt_model_generates(run, tmp_path, model_gguf):
    """The control of test_bad_model_files: the rebuild with no defect (zero
    weights) loads and generates."""
    r = run("generate", "-m", model_gguf.write(tmp_path / "intact"), "-p", "hi", "-n", 1, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("name", BAD_MODEL_CASES)
def test_bad_model_files(run, tmp_path, model_gguf, name):
    """Exit status 1 (not a signal), nothing on stdout, and exactly one stderr
    line naming the defect, well before anything like a hang."""
    path, needles = _case(name, model_gguf, tmp_path)
    t = time.monotonic()
    r = run("generate", "-m", path, "-p", "hi", "-n", 1, timeout=30)
    elapsed = time.monotonic() - t
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    assert r.stdout == b"", r.stdout[:200]
    assert err.startswith("paraserve generate: ") and err.endswith("\n") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert elapsed < 5, f"{elapsed:.1f} s to reject a bad model"


def test_prompt_ids_out_of_range(run, model_path):
    r = run("generate", "-m", model_path, "--prompt-ids", "1 2 999999", "-n", 1)
    assert r.returncode == 1
    assert "token id" in r.stderr.decode()


def test_prompt_longer_than_context(run, model_path):
    r = run("generate", "-m", model_path, "-p", "word " * 300, "-c", 64, "-n", 1)
    assert r.returncode == 1
    assert "context" in r.stderr.decode()


def test_device_selection(run, model_path):
    """--device cpu works everywhere; an unknown device is a one-line error;
    --device cuda without a GPU (or a CUDA build) fails with the reason."""
    r = run("generate", "-m", model_path, "-p", "Hi", "-n", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    assert "backend=cpu" in r.stderr.decode()
    r = run("generate", "-m", model_path, "-p", "Hi", "-n", "2", "--device", "tpu")
    assert r.returncode != 0
    assert "device must be auto, cpu or cuda, got 'tpu'" in r.stderr.decode()
    r = run("generate", "-m", model_path, "-p", "Hi", "-n", "2", "--device", "cuda")
    if r.returncode != 0:
        err = r.stderr.decode()
        assert "built without CUDA" in err or "no CUDA device" in err or "cuda" in err.lower(), err


@pytest.mark.parametrize("cmd,value", [
    ("generate", "q4"), ("generate", ""), ("generate", "F16"), ("bench", "int8"),
])
def test_bad_kv_type_is_a_one_line_error(run, model_path, cmd, value):
    args = ("-m", model_path, "-p", "Hi", "-n", "2") if cmd == "generate" else ("-m", model_path)
    r = run(cmd, *args, "--kv-type", value)
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert err == [f"paraserve {cmd}: --kv-type must be f16, q8 or f32, got '{value}'"], err


def test_kv_type_exact_conflict(run, model_path):
    r = run("generate", "-m", model_path, "-p", "Hi", "-n", "2", "--exact", "--kv-type", "q8")
    assert r.returncode == 2
    assert "--exact uses an f32 KV cache" in r.stderr.decode()


@pytest.mark.parametrize("kv", ["f16", "q8", "f32"])
def test_kv_types_generate(run, model_path, kv):
    # the q8 cache stays within test_model_ref's llama.cpp bounds (greedy
    # identical up to the first near tie), like the f16 one
    case = REF["cases"][3]
    r = run("generate", "-m", model_path, "--prompt-ids", " ".join(map(str, case["prompt_ids"])),
            "-n", 64, "--ignore-eos", "--print-ids", "-t", 2, "--kv-type", kv)
    assert r.returncode == 0, r.stderr.decode()
    assert_greedy_like_reference(ids_of(r.stdout), case)


def test_bench_rows_and_roofline(run, model_path):
    # `paraserve bench` prints prefill, decode and the batch-1 roofline: the
    # step's bytes (every matrix once + the K/V at its mean context) over the
    # measured read bandwidth, checked here against the model's own sizes
    r = run("bench", "-m", model_path, "-t", 2, "--prompt-len", 32, "--gen", 4, "--batch", "1,2",
            "--repeat", 1)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, x.split(","))) for x in lines[1:]]
    assert [(x["phase"], x["batch"]) for x in rows] == [("prefill", "1"), ("decode", "1"), ("decode", "2"),
                                                        ("roofline", "1")]
    roof = rows[-1]
    ms, tps = float(roof["ms_per_step"]), float(roof["tokens_per_s"])
    # tok/s printed to 0.1, ms to 0.001: tps = 1000 / ms up to that rounding
    assert ms > 0 and abs(tps - 1000 / ms) <= 0.05 + 1000 * 0.0005 / ms ** 2 + 1e-9, roof
    err = r.stderr.decode()
    m = re.search(r"batch-1 roofline: ([0-9.]+) MB per step \(matrices ([0-9.]+), K/V ([0-9.]+) at ([0-9.]+) "
                  r"positions\) at ([0-9.]+) GB/s read \(2 threads\): ([0-9.]+) ms/step", err)
    assert m, err
    total, mats, kv, ctx, gbs, ms2 = (float(x) for x in m.groups())
    # SmolLM2-135M Q4_1: 30 layers of Q4_1 matrices (20 bytes per 32) and the
    # tied Q8_0 output (34 per 32); f16 K/V of 3 KV heads of 64 per layer
    d, f, kvd, L, V = 576, 1536, 192, 30, 49152
    want_mats = L * (d * (d + 2 * kvd) + d * d + 3 * d * f) * 20 / 32 + V * d * 34 / 32
    assert abs(mats - want_mats / 1e6) < 0.1, (mats, want_mats)
    # steps attend to 33..36 positions: 34.5 on average
    assert ctx == 32 + (4 + 1) / 2 and abs(kv - L * ctx * 2 * kvd * 2 / 1e6) < 0.05, (kv, ctx)
    assert abs(total - mats - kv) < 0.002 and gbs > 0.1
    # MB and GB/s printed to 0.001, ms to 0.0001 here and 0.001 in the CSV row
    assert math.isclose(ms2, total / gbs, rel_tol=0.0005 / gbs + 0.0005 / total, abs_tol=0.0002), (ms2, total, gbs)
    assert abs(ms2 - ms) <= 0.00056, (ms2, ms)
