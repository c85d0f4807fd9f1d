"""`paraserve generate` end to end on the embedded model: greedy output equal
to llama.cpp's, sampling determinism, chat mode, options and bad input."""
import json
import math
import re

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


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_bad_model_files(run, tmp_path, model_path):
    good = open(model_path, "rb").read(1 << 20)
    cases = {
        "missing": (None, "No such file"),
        "empty": (b"", "gguf"),
        "wrong-magic": (b"GGML" + good[4:4096], "magic"),
        "bad-version": (good[:4] + (99).to_bytes(4, "little") + good[8:4096], "version"),
        "truncated-header": (good[:100], "gguf"),
        "truncated-data": (good, "gguf"),  # 1 MiB of a 98 MB file: tensor data past EOF
    }
    for name, (data, needle) in cases.items():
        path = str(tmp_path / name) if data is None else _write(tmp_path, name, data)
        r = run("generate", "-m", path, "-p", "hi", "-n", 1, timeout=30)
        err = r.stderr.decode()
        assert r.returncode == 1, (name, r.returncode, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (name, err)
        assert needle.lower() in err.lower(), (name, err)


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
