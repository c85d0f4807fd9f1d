#!/usr/bin/env python3
"""HF transformers peer for bench/gpu-sweep: the same shapes as paraserve's
synthetic presets (random weights built from a config - the device has no
network), decode throughput per (batch, context) and prefill tok/s, as CSV
rows in gpu_sweep.c's format (engine = hf-transformers).

Method: fp16 weights, SDPA attention, the default DynamicCache (what a
transformers user gets).  The context is prefilled through the base model in
chunks (no logits over the prompt), then `steps` greedy decode steps of the
full model are timed one by one (torch.cuda.synchronize around each); the
median step is reported.  Combinations that run out of memory are recorded
as skipped-oom.

  hf_peer.py --preset smollm2-135m --batches 1,8,32 --ctx 512,2048 --steps 10 --csv out.csv
  hf_peer.py --dry-run ...   # print the configs and the plan; no torch needed
"""
import argparse
import statistics
import sys
import time

# name: (arch, vocab, hidden, layers, heads, kv_heads, head_dim, ffn, ctx, theta, eps)  == host/model/mkmodel.h
PRESETS = {
    "tiny":         ("llama", 512, 64, 2, 4, 2, 16, 128, 512, 10000.0, 1e-5),
    "smollm2-135m": ("llama", 49152, 576, 30, 9, 3, 64, 1536, 8192, 100000.0, 1e-5),
    "qwen2.5-0.5b": ("qwen2", 151936, 896, 24, 14, 2, 64, 4864, 32768, 1e6, 1e-6),
    "qwen3-0.6b":   ("qwen3", 151936, 1024, 28, 16, 8, 128, 3072, 40960, 1e6, 1e-6),
    "llama-3.2-1b": ("llama", 128256, 2048, 16, 32, 8, 64, 8192, 131072, 500000.0, 1e-5),
}

FIELDS = ("engine,card,model,kind,batch,ctx,step_ms,tok_s,host_us,bytes_per_step,gbs,roofline_pct,"
          "peak_gbs,peak_measured_gbs,path")


def config_kwargs(preset, max_ctx):
    arch, vocab, hidden, layers, heads, kv, hd, ffn, ctx, theta, eps = PRESETS[preset]
    kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=max(ctx, max_ctx + 64),
              rope_theta=theta, rms_norm_eps=eps, tie_word_embeddings=True)
    if arch in ("llama", "qwen3"):
        kw["head_dim"] = hd
    return arch, kw


def build_model(preset, max_ctx, torch):
    import transformers as tf
    arch, kw = config_kwargs(preset, max_ctx)
    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
           "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
           "qwen3": (getattr(tf, "Qwen3Config", None), getattr(tf, "Qwen3ForCausalLM", None))}[arch]
    if cls[0] is None:
        raise SystemExit(f"hf_peer: this transformers ({tf.__version__}) has no Qwen3")
    cfg = cls[0](**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = cls[1](cfg).to(torch.float16)
    return model.eval()


def run(args):
    import torch
    from transformers import DynamicCache
    card = torch.cuda.get_device_name(0)
    batches = [int(x) for x in args.batches.split(",") if x]
    ctxs = [int(x) for x in args.ctx.split(",") if x]
    model = build_model(args.preset, max(ctxs) + args.steps + 8, torch)
    vocab = PRESETS[args.preset][1]
    out = open(args.csv, "w") if args.csv else sys.stdout
    print(FIELDS, file=out)
    for ctx in ctxs:
        for b in batches:
            if b * ctx > args.max_tokens:
                print(f"hf-transformers,{card},{args.preset},decode,{b},{ctx},,,,,,,,,skipped-too-large", file=out)
                continue
            try:
                with torch.inference_mode():
                    cache = DynamicCache()
                    gen = torch.Generator(device="cuda").manual_seed(b * 7919 + ctx)
                    for c0 in range(0, ctx, args.chunk):
                        n = min(args.chunk, ctx - c0)
                        ids = torch.randint(0, vocab, (b, n), device="cuda", generator=gen)
                        model.model(input_ids=ids, past_key_values=cache, use_cache=True)
                    nxt = torch.randint(0, vocab, (b, 1), device="cuda", generator=gen)
                    times = []
                    for it in range(3 + args.steps):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        logits = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits
                        nxt = logits[:, -1].argmax(-1, keepdim=True)
                        torch.cuda.synchronize()
                        if it >= 3:
                            times.append(time.perf_counter() - t0)
                    t = statistics.median(times)
                    print(f"hf-transformers,{card},{args.preset},decode,{b},{ctx},{t*1e3:.4f},{b/t:.1f},,,,,,,fp16-sdpa",
                          file=out)
                    print(f"  hf decode B={b:4d} C={ctx:5d}: {t*1e3:8.3f} ms/step {b/t:9.1f} tok/s", file=sys.stderr)
                    del cache, logits
            except torch.cuda.OutOfMemoryError:
                print(f"hf-transformers,{card},{args.preset},decode,{b},{ctx},,,,,,,,,skipped-oom", file=out)
            torch.cuda.empty_cache()
            out.flush()
    for b in (1, 4):
        p = args.prefill
        with torch.inference_mode():
            ids = torch.randint(0, vocab, (b, p), device="cuda")
            times = []
            for it in range(6):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(input_ids=ids, use_cache=False, logits_to_keep=1) if _has_ltk(model) else model(input_ids=ids)
                torch.cuda.synchronize()
                if it >= 1:
                    times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"hf-transformers,{card},{args.preset},prefill,{b},{p},{t*1e3:.4f},{b*p/t:.1f},,,,,,,fp16-sdpa", file=out)
    if out is not sys.stdout:
        out.close()


def _has_ltk(model):
    import inspect
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--ctx", default="512,2048")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=2048, help="prefill chunk (positions) when building the context")
    ap.add_argument("--max-tokens", type=int, default=1 << 20, help="skip batch x ctx above this")
    ap.add_argument("--csv")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if args.dry_run:
        arch, kw = config_kwargs(args.preset, max(int(x) for x in args.ctx.split(",")))
        print(f"{args.preset}: {arch} {kw}")
        for ctx in args.ctx.split(","):
            for b in args.batches.split(","):
                tag = "skip" if int(b) * int(ctx) > args.max_tokens else "run"
                print(f"  decode B={b} C={ctx}: {tag}")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
