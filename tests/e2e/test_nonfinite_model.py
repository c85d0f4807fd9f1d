"""A model whose weights hold NaN or inf (a GGUF file is external input):
`paraserve generate` exits 1 with a one-line error, and `paraserve serve`
fails the affected request with an OpenAI-style error - before the first
token, or as an SSE error event mid-stream - and keeps serving the others,
batched with it or after it.

The models are synthetic (`paraserve mkmodel`, random finite weights),
then patched with the gguf package: a NaN in token '~''s embedding row
(only prompts holding '~' break), an inf in one lm_head row (every request
breaks: that token's logit), an inf / NaN f16 block scale of a Q4_1, Q8_0,
Q4_K or Q6_K matrix.  Before the fix these produced tokens from NaN logits
(read as -inf) with finish_reason "length", and the quantizers cast NaN to
int (undefined behaviour)."""
import shutil
import threading

import httpx
import numpy as np
import pytest

from server_fixtures import ServerProcess

gguf = pytest.importorskip("gguf")

TILDE = 126  # byte-level vocabulary: token id = byte value
MSG = "the model produced non-finite logits"


def make_model(run, path, dtype, embd=128, heads=4):
    r = run("mkmodel", "--arch", "llama", "--vocab", "512", "--embd", str(embd), "--layers", "2",
            "--heads", str(heads), "--kv-heads", str(heads // 2), "--ff", str(2 * embd), "--untied",
            "--embd-dtype", "F16", "--dtype", dtype, "-o", str(path))
    assert r.returncode == 0, r.stderr


def poison(src, dst, what):
    """Copy src to dst with one non-finite value written in place."""
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(str(dst), "r+")
    t = {x.name: x for x in reader.tensors}
    kind, _, val = what.partition(":")
    bits = np.frombuffer(np.float16(val or "nan").tobytes(), np.uint8)
    if kind == "embd":
        t["token_embd.weight"].data[TILDE, 5] = np.float16(val or "nan")
    elif kind == "output":
        t["output.weight"].data[300, 7] = np.float16(val or "inf")
    else:  # a block scale of a quantized matrix: the f16 d at its block offset
        w = t["blk.1.attn_v.weight"]
        off = {"Q6_K": 208}.get(w.tensor_type.name, 0)
        w.data[2, off:off + 2] = bits
    del reader
    return str(dst)


@pytest.fixture(scope="module")
def models(tmp_path_factory, run):
    d = tmp_path_factory.mktemp("nonfinite")
    base = {}
    for dt in ("Q4_1", "Q8_0", "Q4_K", "Q6_K"):
        base[dt] = d / f"{dt}.gguf"
        # K quants need rows of 256; head_dim 32 for the q8 KV cache
        make_model(run, base[dt], dt, embd=256 if dt.endswith("_K") else 128,
                   heads=8 if dt.endswith("_K") else 4)
    out = {"clean": str(base["Q4_1"]),
           "embd": poison(base["Q4_1"], d / "embd.gguf", "embd:nan"),
           "output": poison(base["Q4_1"], d / "output.gguf", "output:inf")}
    for dt in base:
        for val in ("inf", "nan"):
            out[f"{dt}-{val}"] = poison(base[dt], d / f"{dt}-{val}.gguf", f"scale:{val}")
    return out


def generate(run, model, prompt, *args):
    return run("generate", "-m", model, "-p", prompt, "-n", "6", "-t", "2", *args, timeout=120)


def assert_nonfinite_error(r):
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, (r.returncode, err)
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("paraserve generate: " + MSG + " (token "), err
    assert "finish_reason" not in err, err


@pytest.mark.parametrize("name", ["output", "Q4_1-inf", "Q4_1-nan", "Q8_0-inf", "Q8_0-nan", "Q4_K-inf",
                                  "Q4_K-nan", "Q6_K-inf", "Q6_K-nan"])
@pytest.mark.parametrize("opts", [(), ("--temp", "0.8", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.05",
                                       "--repeat-penalty", "1.2"), ("--kv-type", "q8"), ("--json",)])
def test_generate_fails_cleanly(run, models, name, opts):
    assert_nonfinite_error(generate(run, models[name], "hello", *opts))


@pytest.mark.parametrize("opts", [(), ("--kv-type", "q8"), ("--kv-type", "f32"), ("--exact",)])
def test_generate_poisoned_token(run, models, opts):
    # the NaN row is read only for prompts holding '~'
    assert_nonfinite_error(generate(run, models["embd"], "hi ~ there", *opts))
    r = generate(run, models["embd"], "hello", *opts)
    assert r.returncode == 0, r.stderr
    assert b"finish_reason=length" in r.stderr
    assert generate(run, models["clean"], "hi ~ there", *opts).returncode == 0


def chat(url, content, stream=False, **extra):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "stream": stream, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_serve_fails_request_keeps_serving(paraserve_bin, models):
    srv = ServerProcess(paraserve_bin, models["embd"], "--max-batch", 8)
    try:
        r = chat(srv.url, "tell me ~ something")
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["message"].startswith(MSG) and err["type"] == "server_error", err
        # streamed, failing before the first token: the same error, not a stream
        r = chat(srv.url, "~", stream=True)
        assert r.status_code == 500 and r.json()["error"]["message"].startswith(MSG), r.text
        # mid-stream: the bias forces '~' as the first token, the next step reads its NaN row
        r = chat(srv.url, "hello", stream=True, logit_bias={str(TILDE): 100})
        assert r.status_code == 200
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert '"content":"~"' in events[1], events
        assert MSG in events[-2] and '"error"' in events[-2] and events[-1] == "[DONE]", events
        # its 200 went out before the error: /metrics counts the stream's error apart
        m = srv.metrics()
        assert m['paraserve_stream_errors_total{route="/v1/chat/completions",status="500"}'] == 1, m
        assert m['paraserve_requests_total{route="/v1/chat/completions",status="200"}'] == 1
        # grammar-constrained sampling reports the same error
        r = chat(srv.url, "~", response_format={"type": "json_object"})
        assert r.status_code == 500 and r.json()["error"]["message"].startswith(MSG), r.text
        # broken and healthy requests at once (batched): each gets its own answer
        results = {}

        # every request seeded (the API's default temperature is 1: an
        # unseeded healthy request could sample EOS on this random model,
        # and did in about 1 run of 3), so each run asks the same things
        def one(i):
            results[i] = chat(srv.url, f"~ {i}" if i % 2 else f"hello {i}", seed=i,
                              **({"temperature": 0.7, "top_p": 0.9} if i % 3 == 0 else {"temperature": 0}))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i in range(12):
            r = results[i]
            if i % 2:
                assert r.status_code == 500 and r.json()["error"]["message"].startswith(MSG), (i, r.text)
            else:
                assert r.status_code == 200, (i, r.text)
                assert r.json()["choices"][0]["finish_reason"] == "length", r.text
        r = chat(srv.url, "still there?", temperature=0)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    finally:
        rc = srv.stop()
    assert rc == 0, srv.output()[-2000:]


def test_serve_every_request_fails_server_stays_up(paraserve_bin, models):
    srv = ServerProcess(paraserve_bin, models["Q8_0-nan"])
    try:
        for i in range(3):
            r = chat(srv.url, f"hello {i}")
            assert r.status_code == 500 and r.json()["error"]["message"].startswith(MSG), r.text
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    finally:
        rc = srv.stop()
    assert rc == 0, srv.output()[-2000:]
