/* backend_cuda.h - the CUDA backend of backend.h, plus the GPU-only entry
 * points the scheduler and benchmarks use.
 *
 * What it runs: the same llama / qwen2 / qwen3 step as backend_cpu.c, on one
 * GPU (PARASERVE_CUDA_DEVICE, default 0), weights uploaded once (quantized
 * Q4_0/Q4_1/Q8_0/F16/BF16 kept as is; F32/Q4_K/Q6_K converted to F16), an
 * f16 paged KV cache [n_layer][n_kv_blocks + 1][block_size][n_head_kv *
 * head_dim] (the extra block is scratch for padded graph rows), pure decode
 * steps replayed from CUDA graphs captured per batch-size bucket
 * (1, 2, 4, ..., 512).
 *
 * Numerics against the CPU backend (tests/gpu states the tolerances):
 * T <= 8 tokens per step: activations quantized to Q8_0/Q8_1 exactly as
 * the CPU does and integer dot products, so logits agree to float
 * summation order; larger steps use cuBLAS on f16 weights and f16
 * activations (f32 accumulate), a few 1e-4 relative.
 *
 * Environment (read at create):
 *   PARASERVE_CUDA_DEVICE=i        device ordinal
 *   PARASERVE_CUDA_GRAPHS=0        never capture graphs
 *   PARASERVE_CUDA_FUSE_Q8=0       quantize GEMV inputs in their own kernel
 *                                  instead of in rmsnorm/swiglu (A/B timing)
 *   PARASERVE_CUDA_MMV_MAX=n       0..8: largest step run by the quantized GEMV (default 8)
 *   PARASERVE_CUDA_F16_WEIGHTS=0   no f16 weight copies: every step uses the GEMV
 *
 * Built without the CUDA toolkit, every function here fails with
 * PS_EUNSUPPORTED ("built without CUDA") and cuda_device_count() is 0.
 *
 * Sampling: the backend implements backend.h's ops->forward_sample, so
 * backend_forward_sample (what the scheduler calls) runs the step, calls
 * the mask callback while the GPU computes, uploads the constrained rows'
 * bitsets (only those) and samples on the device (cuda/sample.cu); only the
 * ids cross to the host.  Rows whose mask allows nothing come back -1.
 *
 * Usage (a decode loop without the scheduler, e.g. bench/gpu_sweep.c):
 *   backend *be; if (backend_cuda_create(model, &cfg, &be)) fail(ps_error_last());
 *   struct backend_sample_params sp[n] = {{ .temperature = 0.7f, .top_p = 0.9f, .seed = s, .step = k }};
 *   int32_t next[n]; backend_forward_sample(be, &plan, sp, NULL, NULL, next);
 */
#ifndef PS_BACKEND_CUDA_H
#define PS_BACKEND_CUDA_H

#include <stdint.h>

#include "engine/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Usable CUDA devices (0 without a driver, a device, or CUDA support). */
int cuda_device_count(void);

/* Create the backend on the device.  PS_EUNSUPPORTED when there is no
 * device or the build has no CUDA ("no CUDA device: ..." / "built without
 * CUDA"), or the model has a shape the kernels lack (head_dim other than
 * 16, 32, 64, 80, 96, 128).  The model is borrowed and must outlive the backend; its weights
 * are copied to the device during the call.  Free with backend_free. */
int backend_cuda_create(const struct model *m, const struct backend_config *cfg, backend **out);

/* The former name of backend.h's struct backend_sample_params (same
 * fields, same order), kept for the callers written before it. */
#define cuda_sample_params backend_sample_params

/* backend_forward_sample with dense masks: NULL or [rows][(n_vocab + 31) /
 * 32] (bit id%32 of word id/32 set = allowed).  params, tokens: [rows].
 * PS_EINVAL for a backend that is not CUDA, a bad plan (nothing written to
 * the cache) or a row whose mask allows no token (that row gets -1, the
 * others are valid). */
int backend_cuda_forward_sample(backend *be, const struct batch_plan *plan,
                                const struct cuda_sample_params *params, const uint32_t *masks,
                                int32_t *tokens);

struct cuda_backend_info {
    char    device[256];        /* cudaDeviceProp.name */
    int     cc_major, cc_minor;
    int     n_sm;
    int64_t mem_total;          /* bytes of device memory                      */
    int64_t weight_bytes_gemv;  /* bytes one step reads on the GEMV path (all matrices) */
    int64_t weight_bytes_f16;   /* same on the cuBLAS path                     */
    int64_t kv_bytes_per_token; /* K + V bytes of one position, all layers     */
    int     mmv_max;            /* steps of <= mmv_max tokens use the GEMV      */
    int     graphs;             /* decode graphs enabled                        */
    double  last_host_us;       /* host time of the last forward up to its final launch */
    int64_t graph_captures, graph_replays;
    int64_t graph_nodes_last;   /* nodes of the last captured decode graph: the launches of one step */
};
int backend_cuda_info(const backend *be, struct cuda_backend_info *out);

/* Fill the whole KV cache with uniform values in [-1, 1] (benchmarks that
 * attend to long contexts without running their prefill; never time on
 * zeros). */
int backend_cuda_fill_kv_random(backend *be, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif /* PS_BACKEND_CUDA_H */
