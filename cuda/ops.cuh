/* ops.cuh - op entries of the CUDA backend: one per kernel family, each
 * asserting its arguments, launching on the given stream and checking the
 * launch (CONVENTIONS 7: kernel / launcher / op entry).  Every op has a CPU
 * twin: the CPU backend's step for the whole model, and per op the plain C
 * references in tests/gpu/test_cuda_ops.cu.
 *
 * Shapes: T = tokens of the step, E = n_embd, D = head_dim, rows of
 * activations are f32 and contiguous unless an ld is given.  All pointers
 * are device pointers unless named h_*.  Nothing here synchronizes. */
#ifndef PS_CUDA_OPS_CUH
#define PS_CUDA_OPS_CUH

#include <cublas_v2.h>

#include "cuda_common.cuh"

/* ---- weights (dmat.cu) ---------------------------------------------------- */

/* Repack and upload one GGUF matrix (h_data: N rows of K elements of `type`,
 * host memory) into *out.  make_f16: also build the F16 copy for cuBLAS.
 * Free with dmat_free.  PS_EUNSUPPORTED for a type without a dequantizer. */
int  dmat_upload(const void *h_data, enum dtype type, int64_t K, int64_t N, int make_f16,
                 cudaStream_t st, struct dmat *out);
/* Same for several matrices of the same K stacked row-wise into one dmat
 * (fused QKV, gate|up); falls back to F16 when the types differ. */
int  dmat_upload_stack(const void *const *h_data, const enum dtype *types, const int64_t *N, int n,
                       int64_t K, int make_f16, cudaStream_t st, struct dmat *out);
void dmat_free(struct dmat *m);
/* Bytes one full read of the representation the GEMV path uses. */
int64_t dmat_bytes_quant(const struct dmat *m);

/* ---- elementwise (elementwise.cu) ------------------------------------------ */

/* x [T][E] = dequant(emb row tokens[t]); emb: K = E, N = n_vocab. */
int op_embed(cudaStream_t st, const struct dmat *emb, const int32_t *tokens, int64_t T, float *x);

/* For r < rows: src = x + (row_idx ? row_idx[r] : r) * n.  If res != NULL,
 * src += res[r] first (written back to x: the fused residual add).  Then
 * out[r] = src * w / sqrt(mean(src^2) + eps), mean summed in double as the
 * CPU does.  out may equal x only without row_idx. */
int op_rmsnorm(cudaStream_t st, float *out, float *x, const float *res, const float *w,
               const int32_t *row_idx, int64_t rows, int64_t n, float eps);
/* op_rmsnorm that also writes out's rows as Q8 activation rows into *q
 * (q->K == n, n % 32 == 0), bit for bit what op_quantize_q8 would write:
 * one launch instead of two before a GEMV on quantized weights. */
int op_rmsnorm_q8(cudaStream_t st, float *out, float *x, const float *res, const float *w,
                  const int32_t *row_idx, int64_t rows, int64_t n, float eps, const struct dq8 *q);

/* h [T][F] = silu(gu[t][0:F]) * gu[t][F:2F]  (gu = [gate | up] rows).
 * q != NULL (q->K == F, F % 32 == 0): h's rows also as Q8 activation rows. */
int op_swiglu(cudaStream_t st, const float *gu, float *h, int64_t T, int64_t F, const struct dq8 *q);

/* Quantize x [T][K] (row stride ldx) to Q8 activation rows (K % 32 == 0). */
int op_quantize_q8(cudaStream_t st, const float *x, int64_t ldx, int64_t T, int64_t K, struct dq8 *out);

/* y [n] = half(x [n]) */
int op_f32_to_f16(cudaStream_t st, const float *x, __half *y, int64_t n);

/* out[t][c] += bias[c] for c < n, row stride ld. */
int op_add_bias(cudaStream_t st, float *out, int64_t ld, const float *bias, int64_t T, int64_t n);

/* Fill n halves with uniform values in [-a, a] from a counter-based hash. */
int op_fill_random_f16(cudaStream_t st, __half *p, int64_t n, float a, uint64_t seed);

/* ---- rope + qk-norm + KV write (rope.cu) ----------------------------------- */

struct rope_args {
    int   n_head, n_head_kv, head_dim, rope_dim; /* rope_dim even, <= head_dim <= 1024 */
    int   neox;                                  /* 1: pairs (i, i+rope_dim/2); 0: (2i, 2i+1) */
    float theta_scale;                           /* base^(-2/rope_dim) */
    float freq_scale;
    float eps;
};
/* qkv [T][ld] rows = [q (n_head*D) | k (n_head_kv*D) | v (n_head_kv*D)].
 * q_out [T][n_head*D] = rope(qnorm(q)); K/V cache slot slot[t] (a token
 * index into kc/vc: block * block_size + offset) of kc, vc
 * [slots][n_head_kv*D] f16 = half(rope(knorm(k))), half(v).  q_norm, k_norm
 * [D] or NULL. */
int op_qkv_rope_store(cudaStream_t st, const float *qkv, int64_t ld, int64_t T, const int32_t *pos,
                      const int32_t *slot, const float *q_norm, const float *k_norm,
                      const struct rope_args *ra, float *q_out, __half *kc, __half *vc);

/* ---- matmul (gemv.cu) ---------------------------------------------------- */

#define MMV_MAX_T 8   /* the quantized GEMV handles up to this many tokens per launch */

struct mm_ctx {
    cublasHandle_t cublas;
    struct dq8     act;      /* scratch: [max_T][max_K] */
    __half        *act16;    /* scratch: [max_T * max_K] */
    int            mmv_max;  /* T <= mmv_max: GEMV on quantized weights, else cuBLAS on F16 */
    const float   *act_of;   /* act holds the Q8 rows of this [T][K] input (one GEMV chunk), or NULL */
};

/* out [T][ld_out] (columns 0..N-1) = x [T][K] (row stride ldx) . W^T
 * (+ bias [N]) (+= when accumulate).  GEMV path: activations quantized like
 * the CPU's (Q8_0/Q8_1 for Q4_0/Q4_1/Q8_0, f32 for F16/BF16) and integer dot
 * products; cuBLAS path: f16 activations x f16 weights, f32 accumulate. */
int op_matmul(cudaStream_t st, struct mm_ctx *mc, const struct dmat *W, const float *x, int64_t ldx,
              int64_t T, float *out, int64_t ld_out, const float *bias, int accumulate);

/* The two paths directly, for tests (GEMV needs T <= MMV_MAX_T and a
 * quantized activation buffer prepared by op_quantize_q8 for Q types). */
int op_gemv(cudaStream_t st, const struct dmat *W, const float *x, int64_t ldx, const struct dq8 *xq,
            int64_t T, float *out, int64_t ld_out, const float *bias, int accumulate);
int op_gemm_cublas(cudaStream_t st, struct mm_ctx *mc, const struct dmat *W, const float *x, int64_t ldx,
                   int64_t T, float *out, int64_t ld_out, const float *bias, int accumulate);

/* ---- attention (attention.cu) ---------------------------------------------- */

/* The paged KV cache of one layer: kc, vc [n_slots][kv_dim] f16, slot of
 * position p of sequence s = indices[indptr[s] + p / block_size] * block_size
 * + p % block_size (CSR block tables, flashinfer's page layout). */
struct attn_kv {
    const __half  *kc, *vc;
    int32_t        block_size;
    int32_t        n_head, n_head_kv, head_dim;
    const int32_t *indptr;   /* [n_seqs + 1] */
    const int32_t *indices;  /* [indptr[n_seqs]] physical block ids */
};

#define ATTN_PREFILL_TQ 16   /* query tokens per prefill work item */

/* Prefill / mixed step.  q, out [T][n_head*D].  Sequence s owns token rows
 * seq_q0[s] .. +seq_nq[s]-1 at positions seq_pos0[s] + i, attending
 * causally to positions 0 .. pos (all already in the cache).  work [n_work][2]
 * = (s, first token offset in s), one per ATTN_PREFILL_TQ tokens. */
int op_attn_prefill(cudaStream_t st, const struct attn_kv *kv, const float *q, float *out,
                    const int32_t *seq_q0, const int32_t *seq_nq, const int32_t *seq_pos0,
                    const int32_t *work, int64_t n_work);

/* Decode step: one query token per sequence, row s of q/out, context
 * ctx_len[s] (>= 1, including the new token).  Split-K over n_splits
 * (fixed per launch; a sequence's split length is derived from its own
 * ctx_len on the device so the launch can live in a CUDA graph).
 * part_o [n_seqs][n_head][n_splits][D], part_ml [n_seqs][n_head][n_splits][2]. */
int op_attn_decode(cudaStream_t st, const struct attn_kv *kv, const float *q, float *out,
                   const int32_t *ctx_len, int64_t n_seqs, int n_splits, float *part_o, float *part_ml);

/* ---- sampling (sample.cu) ------------------------------------------------ */

struct sample_param_dev {
    float    temperature; /* <= 0: greedy */
    int32_t  top_k;       /* <= 0: off    */
    float    top_p;       /* >= 1: off    */
    float    min_p;       /* <= 0: off    */
    uint64_t seed;
    uint64_t step;        /* draw index: (seed, step) picks the uniform */
};

/* tokens[r] for r < rows from logits [rows][n_vocab]; masks [rows][words]
 * (bit id%32 of word id/32 set = allowed) or NULL.  A row whose mask allows
 * nothing gets token -1. */
int op_sample(cudaStream_t st, const float *logits, int64_t rows, int32_t n_vocab,
              const struct sample_param_dev *params, const uint32_t *masks, int32_t mask_words,
              int32_t *tokens);

/* op_sample with compact masks: masks [n_masked][mask_words], mask_row
 * [rows] (index into masks, -1 = unmasked row). */
int op_sample_rows(cudaStream_t st, const float *logits, int64_t rows, int32_t n_vocab,
                   const struct sample_param_dev *params, const uint32_t *masks, int32_t mask_words,
                   const int32_t *mask_row, int32_t *tokens);

#endif /* PS_CUDA_OPS_CUH */
