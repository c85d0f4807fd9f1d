/* backend_cpu.c - CPU reference backend: llama / qwen2 / qwen3 forward pass
 * over a ragged batch with a paged F16 KV cache.
 *
 * Layout of one step (T = total new tokens of the plan, all sequences'
 * tokens concatenated; only attention looks at sequence boundaries):
 *   x   [T, n_embd]   residual stream, f32
 *   xn  [T, n_embd]   normed input of the next matmul
 *   q   [T, n_head  * head_dim]   k, v [T, n_head_kv * head_dim]
 *   att [T, n_head  * head_dim]   attention output
 *   hb  [T, n_ff]     silu(gate) * up
 *   kcache, vcache [n_layer][n_kv_blocks][block_size][n_head_kv * head_dim]
 *                  f16 (KV_F16), or f32 (KV_F32: exact attention, for
 *                  reference runs; one head per work item, no SIMD grouping),
 *                  or int8 (KV_Q8, kq8 / vq8) with f32 scales ks8 / vs8
 *                  [n_layer][n_kv_blocks][block_size][n_head_kv * head_dim / 32]
 *                  (backend.h): element offsets are the f16 cache's, the
 *                  scale of element offset o is at o / 32.  q8 rows are
 *                  quantized by kv_q8_store (one scalar function for both
 *                  paths).  Scores: the query head quantized the same way,
 *                  exact int8 dots per 32-block (maddubs), scaled by
 *                  d_k * d_q and summed over the blocks in f32 (as
 *                  llama.cpp scores a q8_0 cache); P.V: the softmax weight
 *                  times d_v, then one FMA per element.
 *
 * Matmuls: each activation row is quantized once to the weight's
 * vec_dot_type, then quant_mat_dot computes tiles of MM_SUB output rows x
 * MM_TOK tokens (each weight block unpacked once per 8 tokens); Q4_1 and Q8_0
 * matrices with a multiple of 8 rows run on copies repacked at creation
 * for the x8 tiles instead (x8_repack_all; quant.h), a row per lane.  Threads
 * claim chunks of output rows (guided: large first, MM_SUB at the end) and
 * run all T tokens over a chunk, so the weights are read once per step
 * whatever the batch size.  Activation rows are rmsnorm'ed and quantized in
 * parallel from QUANT_PARALLEL_MIN rows.
 *
 * Attention (f16 or q8 cache, AVX2: attn_row_avx2; f16 scores for up to 3
 * heads per KV head converted straight into the FMAs, attn_qk8_direct,
 * else staged in f32 rows, attn_qk8_f16: the same sums either way): work
 * items are runs of a
 * sequence's rows times one head, one GQA group, or - with at least one
 * run per thread - every head (whole K/V rows); the kernel is the same for
 * each, so the split never changes a value.  At large batches the step
 * reads the whole cache of every sequence (~400 MB at batch 32 x 576
 * positions for SmolLM2): a thread claims its next item early and streams
 * that item's rows into L2 while it computes the current one.  Decode rows
 * whose block tables start with the same blocks (the prefix cache's shared
 * prompt) go in shared-prefix items instead (attn_plan_groups,
 * attn_group_f16; f16 cache): each prefix chunk is read and converted once
 * for up to GRP_ROWS rows, with the same per-row operations.
 *
 * Determinism (batching and thread-count invariance): every output element
 * is bitwise one quant_vec_dot of the same two rows (quant_mat_dot's
 * contract, whatever the tile shape), every norm / softmax / attention
 * row is reduced in a fixed order inside one thread, and activation rows are
 * quantized independently - so a sequence's numbers do not depend on what
 * else is in the batch, nor on which thread computes them.
 */
#include "backend.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/status.h"
#include "../model/quant.h"
#include "attn_x86.h"
#include "threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_X86 1
#endif

#ifndef MM_SUB
#define MM_SUB              32   /* weight rows per tile (stay in L1)         */
#endif
#ifndef MM_TOK
#define MM_TOK              8    /* tokens per tile                           */
#endif
#define MM_GUIDE            2    /* chunk = rows left / (MM_GUIDE * threads)  */
#define MM_MAX_CHUNKS       1024 /* work units per matmul region              */
#define QUANT_PARALLEL_MIN  16   /* norm + quantize activations in parallel from T rows */
#define MAX_BATCH_DEFAULT   2048
#define ATTN_ROWS           16   /* query rows of one sequence per attention item */
#define KV_Q8_DMAX          512  /* head_dim of a q8 cache at most (stack buffers) */
#define GRP_MIN_PREFIX      64   /* shared positions that make a shared-prefix item */
#ifndef ATTN_SPLIT_PF
#define ATTN_SPLIT_PF      48   /* attn_split: K rows (scores) and V lines (P.V) prefetched this many
                                   positions ahead (2026-11-27, 2048 positions: 4.8-5.3 ms of
                                   attention per step at 48, 5.0-5.3 at 16, 5.4-5.6 at 0) */
#endif
#ifndef ATTN_SPLIT_MIN_CTX
#define ATTN_SPLIT_MIN_CTX  64   /* shorter rows: one item per KV head, as at any batch */
#endif
#ifndef ATTN_ITEMS_PER_THREAD
#define ATTN_ITEMS_PER_THREAD 1  /* grouped heads / whole rows from this many items per thread
                                  * (the cache reads dominate: fewer, larger items win) */
#endif

/* Phases of a step timed when PARASERVE_CPU_PROFILE is set in the
 * environment at backend creation: wall seconds summed over the decode
 * steps (forwards of one token per sequence) and printed to stderr, per
 * batch size seen, when the backend is freed.  PARASERVE_CPU_PROFILE=cpu
 * times the calling thread's CPU time instead: with one thread (which runs
 * every job on the caller) a phase's cost without the time other processes
 * took the core - for A/B runs on a shared machine. */
enum prof_phase { PROF_QUANT, PROF_QKV, PROF_ATTN, PROF_WO, PROF_FFN_UP, PROF_FFN_DOWN, PROF_OUTPUT,
                  PROF_OTHER, PROF_N };
static const char *const prof_names[PROF_N] = { "norm+quantize", "qkv", "attention", "wo", "gate+up",
                                                "down", "output", "other" };
#define PROF_MAX_T 64 /* decode batch sizes profiled: 1..PROF_MAX_T */

/* f32 working copies of the small vector weights (any stored type). */
struct layer_vecs {
    float *attn_norm, *ffn_norm;    /* [n_embd] */
    float *bq, *bk, *bv;            /* [q_dim], [kv_dim], [kv_dim] or NULL */
    float *q_norm, *k_norm;         /* [head_dim] or NULL */
};

struct cpu_backend {
    struct backend     base;       /* first: a backend * is a cpu_backend * */
    threadpool        *tp;
    int                n_threads;
    int                simd;       /* AVX2+FMA+F16C path for attention */
#ifdef CPU_X86
    const struct attn_x86_ops *attn_ops;   /* with simd: the ymm or zmm build of the kernels */
#endif

    int64_t            q_dim, kv_dim, ctx_max;
    int64_t            max_T;
    size_t             act_bytes;  /* bytes of one quantized activation row, max over matmuls */

    struct layer_vecs *lv;         /* [n_layer] */
    float             *out_norm;   /* [n_embd] */

    uint16_t          *kcache;     /* KV_F16: [n_layer][n_kv_blocks][block_size][kv_dim] */
    uint16_t          *vcache;
    float             *kcache32;   /* KV_F32: same layout in f32 (kcache/vcache NULL) */
    float             *vcache32;
    int8_t            *kq8, *vq8;  /* KV_Q8: same layout in int8 (the others NULL) */
    float             *ks8, *vs8;  /* KV_Q8: [n_layer][n_kv_blocks][block_size][kv_dim / 32] scales */
    void              *cache_raw[8]; /* allocations behind kcache32, vcache32, kcache, vcache, kq8, vq8, ks8, vs8 */
    /* Q4_1 / Q8_0 matrices repacked for 8-row tiles (quant.h "x8"), one block of
     * memory; x8_w[i] is the model's weight whose copy is at x8_data[i] */
    const struct weight **x8_w;
    const uint8_t      **x8_data;
    int                  n_x8;
    uint8_t             *x8_mem;

    /* scratch, sized for max_T tokens */
    float   *x, *xn, *q, *k, *v, *att, *hb;
    uint8_t *qact[3];              /* [max_T][act_bytes] quantized activations */
    float   *rope_cos, *rope_sin;  /* [max_T][rope_dim / 2] */
    int64_t  ctx_stride;           /* ctx_max rounded up to 8 */
    float   *scores;               /* [n_threads][score_group][ctx_stride] */
    bool     attn_split;           /* a lone decode row runs attn_split (PARASERVE_CPU_ATTN_SPLIT=0: off) */
    float   *split_sc;             /* [n_head][ctx_stride] attn_split's scores */
    float   *split_vmx;            /* [n_threads][n_head][8] its lane maxima */
    int64_t  split_rows;           /* rows attn_split ran (all layers count once) */
    int64_t *attn_offs;            /* [n_threads][2][ctx_max] cache offsets of an item's positions (this item's, the next's) */
    int      score_group;          /* query heads per attention item at most (GQA group, or 1) */
    struct attn_item *attn_items;  /* [max_T * n_head] */
    int      grp_rows;             /* rows per shared-prefix item at most (1: none) */
    int32_t *grp_seqs;             /* [max_T] sequences of the shared-prefix items, item by item */
    uint8_t *grp_member;           /* [max_T] sequence is in a shared-prefix item this step */
    struct grp_key *grp_keys;      /* [max_T] the decode rows' block tables, to sort */
    float   *grp_acc;              /* [n_threads][grp_rows][score_group][head_dim] P.V accumulators */
    float   *grp_sc;               /* [n_threads][grp_rows][score_group][grp_stride] scores, grown on use */
    int64_t  grp_sc_cap;           /* elements of grp_sc */
    int64_t  grp_stride;           /* this step's: the longest grouped row's positions rounded up to 8 */
    int32_t *tok_pos;              /* [max_T] */
    int32_t *tok_seq;              /* [max_T] */
    int32_t *logit_tok;            /* [max_T] token index of each logits row */
    int64_t *seq_t0;               /* [max_T] first token row of each sequence */

    int      prof;                 /* PARASERVE_CPU_PROFILE: time the phases of decode steps */
    int      prof_cpu;             /* ... by this thread's CPU time (=cpu) */
    int      prof_on;              /* this forward is profiled */
    double   prof_t;               /* time of the last phase boundary */
    double   prof_s[PROF_MAX_T + 1][PROF_N];
    int64_t  prof_steps[PROF_MAX_T + 1];
    int64_t  grp_rows_total;       /* decode rows attended through shared-prefix items, all steps */
};

static double prof_now(int cpu)
{
    struct timespec ts;
    clock_gettime(cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Charge the time since the last boundary to phase `ph` (profiled forwards
 * only); `T` indexes the batch size. */
static void prof_mark(struct cpu_backend *cb, int64_t T, enum prof_phase ph)
{
    if (!cb->prof_on)
        return;
    const double t = prof_now(cb->prof_cpu);
    cb->prof_s[T][ph] += t - cb->prof_t;
    cb->prof_t = t;
}

static void prof_print(const struct cpu_backend *cb)
{
    for (int64_t T = 1; T <= PROF_MAX_T; T++) {
        if (!cb->prof_steps[T])
            continue;
        double tot = 0.0;
        for (int ph = 0; ph < PROF_N; ph++)
            tot += cb->prof_s[T][ph];
        fprintf(stderr, "[cpu profile] batch %lld: %lld steps, %.3f ms/step:", (long long)T,
                (long long)cb->prof_steps[T], 1e3 * tot / (double)cb->prof_steps[T]);
        for (int ph = 0; ph < PROF_N; ph++)
            fprintf(stderr, " %s %.3f (%.1f%%)", prof_names[ph], 1e3 * cb->prof_s[T][ph] / (double)cb->prof_steps[T],
                    100.0 * cb->prof_s[T][ph] / tot);
        fprintf(stderr, "\n");
    }
    if (cb->grp_rows_total)
        fprintf(stderr, "[cpu profile] %lld decode rows attended through shared-prefix items\n",
                (long long)cb->grp_rows_total);
    if (cb->tp && threadpool_shares_offered(cb->tp))
        fprintf(stderr, "[cpu profile] the calling thread ran %llu of %llu worker shares itself (workers not running)\n",
                threadpool_shares_taken(cb->tp), threadpool_shares_offered(cb->tp));
}

/* ---- small helpers --------------------------------------------------------- */

static int vec_to_f32(const struct weight *w, int64_t n, float **out, const char *what, int il)
{
    *out = NULL;
    if (!w->data)
        return PS_OK;
    if (w->ne[0] * w->ne[1] != n)
        return ps_error_set(PS_EFORMAT, "backend_cpu: layer %d %s has %lld elements, expected %lld",
                            il, what, (long long)(w->ne[0] * w->ne[1]), (long long)n);
    float *f = malloc((size_t)n * sizeof *f);
    if (!f)
        return ps_error_set(PS_ENOMEM, "backend_cpu: out of memory for %s", what);
    int rc = quant_row_dequantize(w->type, w->data, f, n);
    if (rc) {
        free(f);
        return rc;
    }
    *out = f;
    return PS_OK;
}

/* out[n] = x[n] * w[n] / sqrt(mean(x^2) + eps); sum in double, fixed order. */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

#ifdef CPU_X86
__attribute__((target("avx2,fma,f16c")))
static void store_f16_avx2(uint16_t *dst, const float *src, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = f32_to_fp16(src[i]);
}
#endif

/* dst[n] = src[n] as f16, round to nearest even: f32_to_fp16, or F16C
 * with simd (the same values; NaNs stay NaNs) */
static void store_f16(int simd, uint16_t *dst, const float *src, int64_t n)
{
#ifdef CPU_X86
    if (simd) {
        store_f16_avx2(dst, src, n);
        return;
    }
#endif
    (void)simd;
    for (int64_t i = 0; i < n; i++)
        dst[i] = f32_to_fp16(src[i]);
}

static inline float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* ---- matmul region --------------------------------------------------------- */

struct mm_part {
    const struct weight *w;
    const uint8_t       *x8;        /* w repacked for 8-row tiles (x8, quant.h), or NULL */
    const uint8_t       *act;       /* [T][act_stride] quantized input rows */
    size_t               act_stride;
    float               *out;       /* out[t * out_stride + r] */
    int64_t              out_stride;
    const float         *bias;      /* [rows] or NULL */
    int                  accumulate;/* out += w.x (residual) */
};

/* A claimed work unit: rows [r0, r1) of part `part`, all T tokens. */
struct mm_span {
    int32_t part;
    int64_t r0, r1;
};

struct mm_task {
    struct mm_part part[3];
    int            n_part;
    int            swiglu;          /* part[0] gate, part[1] up -> part[0].out = silu(g) * u */
    int            simd;            /* swiglu by swiglu_avx2 */
    int64_t        T;
    int64_t        n_chunks;
    struct mm_span chunk[MM_MAX_CHUNKS];
    atomic_llong   next;
};

/* Split the parts' rows into chunks that shrink as the work runs out
 * ("guided" scheduling): each is 1/(MM_GUIDE * n_threads) of the rows not yet
 * handed out, at least MM_SUB rows.  Few atomic claims per region, and the
 * last, small chunks even out the threads.  Which thread computes a row
 * never changes its value (one quant_mat_dot element per output). */
static void mm_plan(struct mm_task *mt, int nth)
{
    int64_t total = 0;
    for (int i = 0; i < mt->n_part; i++)
        total += mt->part[i].w->ne[1];
    int64_t done = 0, n = 0;
    for (int i = 0; i < mt->n_part; i++) {
        const int64_t rows = mt->part[i].w->ne[1];
        for (int64_t r = 0; r < rows;) {
            int64_t size = (total - done) / ((int64_t)MM_GUIDE * nth) / MM_SUB * MM_SUB;
            if (size < MM_SUB)
                size = MM_SUB;
            if (size > rows - r || n == MM_MAX_CHUNKS - 1 - (mt->n_part - 1 - i))
                size = rows - r;   /* the part's end, or out of chunk slots */
            mt->chunk[n++] = (struct mm_span){ i, r, r + size };
            r += size;
            done += size;
        }
    }
    mt->n_chunks = n;
}

/* out[j * os + r] = row rs + r of p's weight . activation row t0 + j, for
 * r < nr, j < nt: the x8 kernel on p's repacked copy when it has one (its
 * row ranges are whole groups of 8: mm_plan's chunks start at multiples
 * of MM_SUB and end there or at the part's end), else quant_mat_dot. */
static void mm_tile(const struct mm_part *p, int64_t rs, int64_t nr, int64_t t0, int64_t nt, float *out, int64_t os)
{
    const struct weight *w = p->w;
    const int64_t K = w->ne[0];
    const uint8_t *act = p->act + (size_t)t0 * p->act_stride;
    if (p->x8) {
        quant_mat_dot_x8(w->type, p->x8, rs, nr, K, act, p->act_stride, nt, out, os);
        return;
    }
    const size_t rb = dtype_row_bytes(w->type, K);
    quant_mat_dot(w->type, (const uint8_t *)w->data + (size_t)rs * rb, rb, nr, act, p->act_stride, nt, K, out, os);
}

/* rows [r0, r1) x T tokens of one part: tiles of MM_SUB rows x MM_TOK tokens,
 * the weight tile staying in L1 while the token groups pass over it */
static void mm_rows(const struct mm_part *p, int64_t r0, int64_t r1, int64_t T)
{
    float tile[MM_TOK * MM_SUB];
    for (int64_t rs = r0; rs < r1; rs += MM_SUB) {
        const int64_t nr = r1 - rs < MM_SUB ? r1 - rs : MM_SUB;
        for (int64_t t0 = 0; t0 < T; t0 += MM_TOK) {
            const int64_t nt = T - t0 < MM_TOK ? T - t0 : MM_TOK;
            const int direct = !p->bias && !p->accumulate;
            mm_tile(p, rs, nr, t0, nt, direct ? p->out + t0 * p->out_stride + rs : tile,
                    direct ? p->out_stride : MM_SUB);
            if (direct)
                continue;
            for (int64_t j = 0; j < nt; j++) {
                float *o = p->out + (t0 + j) * p->out_stride + rs;
                const float *d = tile + j * MM_SUB;
                for (int64_t r = 0; r < nr; r++) {
                    float v = d[r];
                    if (p->bias)
                        v += p->bias[rs + r];
                    if (p->accumulate)
                        o[r] += v;
                    else
                        o[r] = v;
                }
            }
        }
    }
}


/* o[n] = silu(g[n]) * u[n]: expf, or with simd attn_x86's swiglu (the same
 * function for every element whatever n, so tiles never change a value) */
static void swiglu_row(int simd, float *o, const float *g, const float *u, int64_t n)
{
#ifdef CPU_X86
    if (simd) {
        attn_x86_avx2.swiglu(o, g, u, n);
        return;
    }
#endif
    (void)simd;
    for (int64_t r = 0; r < n; r++)
        o[r] = silu(g[r]) * u[r];
}

static void mm_rows_swiglu(const struct mm_part *g, const struct mm_part *u, int64_t r0, int64_t r1,
                           int64_t T, int simd)
{
    float tg[MM_TOK * MM_SUB], tu[MM_TOK * MM_SUB];
    for (int64_t rs = r0; rs < r1; rs += MM_SUB) {
        const int64_t nr = r1 - rs < MM_SUB ? r1 - rs : MM_SUB;
        for (int64_t t0 = 0; t0 < T; t0 += MM_TOK) {
            const int64_t nt = T - t0 < MM_TOK ? T - t0 : MM_TOK;
            mm_tile(g, rs, nr, t0, nt, tg, MM_SUB);
            mm_tile(u, rs, nr, t0, nt, tu, MM_SUB);
            for (int64_t j = 0; j < nt; j++)
                swiglu_row(simd, g->out + (t0 + j) * g->out_stride + rs, tg + j * MM_SUB, tu + j * MM_SUB, nr);
        }
    }
}

static void mm_worker(void *ctx, int ith, int nth)
{
    struct mm_task *mt = ctx;
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&mt->next, 1, memory_order_relaxed);
        if (c >= mt->n_chunks)
            break;
        const struct mm_span *sp = &mt->chunk[c];
        if (mt->swiglu)
            mm_rows_swiglu(&mt->part[0], &mt->part[1], sp->r0, sp->r1, mt->T, mt->simd);
        else
            mm_rows(&mt->part[sp->part], sp->r0, sp->r1, mt->T);
    }
}

struct quant_task {
    enum dtype   type;
    const float *src;     /* [T][K] */
    uint8_t     *dst;     /* [T][dst_stride] */
    int64_t      K, T;
    size_t       dst_stride;
    const float *norm;    /* [K] or NULL: src rows are first rmsnorm'ed into xn */
    float       *xn;      /* [T][K] */
    float        eps;
};

/* Rows split evenly by thread index; each row (normed, then) quantized on
 * its own, so the split never changes a value. */
static void quant_worker(void *ctx, int ith, int nth)
{
    const struct quant_task *qt = ctx;
    const int64_t per = (qt->T + nth - 1) / nth;
    const int64_t t0 = ith * per;
    const int64_t t1 = t0 + per < qt->T ? t0 + per : qt->T;
    for (int64_t t = t0; t < t1; t++) {
        const float *row = qt->src + t * qt->K;
        if (qt->norm) {
            rmsnorm(qt->xn + t * qt->K, row, qt->norm, qt->K, qt->eps);
            row = qt->xn + t * qt->K;
        }
        quant_row_quantize(qt->type, row, qt->dst + (size_t)t * qt->dst_stride, qt->K);
    }
}

/* dst rows = src rows [T][K] quantized to type; with norm, src rows are
 * rmsnorm'ed with it into cb->xn first (and quantized from there). */
static void quantize_rows(struct cpu_backend *cb, enum dtype type, const float *src, int64_t K,
                          int64_t T, uint8_t *dst, const float *norm)
{
    struct quant_task qt = { type, src, dst, K, T, cb->act_bytes, norm, cb->xn, cb->base.model->hp.rms_eps };
    if (T >= QUANT_PARALLEL_MIN && cb->n_threads > 1)
        threadpool_run(cb->tp, quant_worker, &qt);
    else
        quant_worker(&qt, 0, 1);
}

/* Run up to three matmuls that read the same input rows src [T][K] as one
 * parallel region; the input is quantized once per distinct vec_dot_type.
 * norm non-NULL: the input is rmsnorm(src, norm), written to cb->xn on the
 * way (by the first quantization, in parallel with it). */
static void matmul_run(struct cpu_backend *cb, struct mm_part *parts, int n_part, int swiglu,
                       const float *src, int64_t T, int64_t T_prof, enum prof_phase ph, const float *norm)
{
    struct mm_task mt;
    memset(&mt, 0, sizeof mt);
    const int64_t K = parts[0].w->ne[0];
    enum dtype done_type[3];
    int n_done = 0;
    for (int i = 0; i < n_part; i++) {
        enum dtype vt = dtype_info_get(parts[i].w->type)->vec_dot_type;
        int j = 0;
        while (j < n_done && done_type[j] != vt)
            j++;
        if (j == n_done) {
            quantize_rows(cb, vt, src, K, T, cb->qact[j], norm);
            if (norm)
                src = cb->xn;
            norm = NULL;
            done_type[n_done++] = vt;
        }
        parts[i].act = cb->qact[j];
        parts[i].act_stride = cb->act_bytes;
        parts[i].x8 = NULL;
        for (int k = 0; k < cb->n_x8; k++)
            if (cb->x8_w[k] == parts[i].w)
                parts[i].x8 = cb->x8_data[k];
        mt.part[i] = parts[i];
    }
    mt.n_part = swiglu ? 1 : n_part; /* swiglu: one row space, both weights per row */
    if (swiglu)
        mt.part[1] = parts[1];
    mt.swiglu = swiglu;
    mt.simd = cb->simd;
    mt.T = T;
    prof_mark(cb, T_prof, PROF_QUANT);
    mm_plan(&mt, cb->n_threads);
    atomic_init(&mt.next, 0);
    threadpool_run(cb->tp, mm_worker, &mt);
    prof_mark(cb, T_prof, ph);
}

/* ---- attention ------------------------------------------------------------- */

#ifdef CPU_X86
__attribute__((target("avx2,fma,f16c")))
static float dot_f32_f16_avx2(const float *a, const uint16_t *b, int64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        __m256 b1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8)));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), b1, acc1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, acc0);
    }
    acc0 = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float r = _mm_cvtss_f32(s);
    for (; i < n; i++)
        r += a[i] * fp16_to_f32(b[i]);
    return r;
}

/* out[n] += w * b[n] */
__attribute__((target("avx2,fma,f16c")))
static void axpy_f16_avx2(float *out, float w, const uint16_t *b, int64_t n)
{
    const __m256 vw = _mm256_set1_ps(w);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(vw, b0, _mm256_loadu_ps(out + i)));
    }
    for (; i < n; i++)
        out[i] += w * fp16_to_f32(b[i]);
}

#endif

static float dot_f32_f16(int simd, const float *a, const uint16_t *b, int64_t n)
{
#ifdef CPU_X86
    if (simd)
        return dot_f32_f16_avx2(a, b, n);
#endif
    float r = 0.0f;
    for (int64_t i = 0; i < n; i++)
        r += a[i] * fp16_to_f32(b[i]);
    return r;
}

static void axpy_f16(int simd, float *out, float w, const uint16_t *b, int64_t n)
{
#ifdef CPU_X86
    if (simd) {
        axpy_f16_avx2(out, w, b, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        out[i] += w * fp16_to_f32(b[i]);
}

/* The f16 and q8 caches' attention runs attn_row_avx2 (for any G). */
static int attn_simd(const struct cpu_backend *cb)
{
#ifdef CPU_X86
    const int64_t D = cb->base.model->hp.head_dim;
    return cb->simd && !cb->kcache32 && D % 16 == 0 && D <= ATTN_DMAX;
#else
    (void)cb;
    return 0;
#endif
}

/* Work items: rows [i0, i1) of sequence `seq`, query heads [h0, h0 + G);
 * or, with n_rows > 0, a shared-prefix item: the one row of each sequence
 * grp_seqs[grp0 .. grp0 + n_rows), whose first `prefix` positions are the
 * same cache blocks, query heads [h0, h0 + nh) (one GQA group). */
struct attn_item {
    int32_t seq, i0, i1, h0;   /* seq -1 in a shared-prefix item */
    int32_t nh;       /* query heads h0 .. h0 + nh - 1, G at a time */
    int32_t n_rows;   /* > 0: a shared-prefix item of the sequences grp_seqs[grp0 ..] */
    int32_t grp0;
    int64_t prefix;
};

struct attn_task {
    struct cpu_backend      *cb;
    const struct batch_plan *plan;
    const int64_t           *seq_t0;   /* [n_seqs] first token row of each sequence */
    int                      layer;
    int                      G;        /* query heads per item: 1, or a whole GQA group */
    const struct attn_item  *items;
    int64_t                  n_items;
    atomic_llong             next;
};

/* Softmax numerator in place: sc[j] = exp(sc[j] - mx) for j < n (mx = the
 * row's max score); returns their sum (the denominator). */
static float softmax_exp_sum(float *sc, int64_t n, float mx)
{
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    return sum;
}

/* out[0..D) /= sum: the softmax denominator applied to P.V. */
static void scale_by_inverse(float *out, int64_t D, float sum)
{
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < D; d++)
        out[d] *= inv;
}

/* Attention of one work item (rows i0..i1 of sequence s, query head h0)
 * over an f32 cache: scores by quant_vec_dot(DT_F32) (the same f32 dot as
 * F32 matmuls), softmax in f32, P.V accumulated in f32 in position order. */
static void attn_rows_f32(const struct cpu_backend *cb, const struct batch_seq *s, const struct attn_item *it,
                          int64_t t0, const float *kbase, const float *vbase, float *sc)
{
    const int64_t D = cb->base.model->hp.head_dim;
    const int64_t bs = cb->base.cfg.block_size;
    const float scale = 1.0f / sqrtf((float)D);
    for (int32_t i = it->i0; i < it->i1; i++) {
        const int64_t t = t0 + i;
        const int64_t n_ctx = (int64_t)s->pos0 + i + 1;
        const float *qh = cb->q + t * cb->q_dim + (int64_t)it->h0 * D;
        float *out = cb->att + t * cb->q_dim + (int64_t)it->h0 * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_ctx; j++) {
            const float *kr = kbase + ((size_t)s->block_table[j / bs] * bs + (size_t)(j % bs)) * cb->kv_dim;
            const float v = quant_vec_dot(DT_F32, kr, qh, D) * scale;
            sc[j] = v;
            mx = v > mx ? v : mx;
        }
        const float sum = softmax_exp_sum(sc, n_ctx, mx);
        memset(out, 0, (size_t)D * sizeof *out);
        for (int64_t j = 0; j < n_ctx; j++) {
            const float *vr = vbase + ((size_t)s->block_table[j / bs] * bs + (size_t)(j % bs)) * cb->kv_dim;
            const float w = sc[j];
            for (int64_t d = 0; d < D; d++)
                out[d] += w * vr[d];
        }
        scale_by_inverse(out, D, sum);
    }
}

/* Attention of one work item (rows i0..i1 of sequence s, query head h0)
 * over a q8 cache, scalar.  Scores as attn_row_avx2 forms them, bitwise:
 * the query head quantized like a cache row (kv_q8_store), per 32-block b
 * the exact integer dot i_b of query and key, s = fma(dk_b * dq_b, i_b, s)
 * over the blocks in order, times 1/sqrt(D).  V accumulated as
 * (p_j * d) * (f32) q in position order - the products attn_row_avx2
 * forms, summed in another order.
 * kq / vq / ks / vs point at the layer's values and scales plus the KV
 * head's offset (scales: offset / 32). */
static void attn_rows_q8(const struct cpu_backend *cb, const struct batch_seq *s, const struct attn_item *it,
                         int64_t t0, const int8_t *kq, const int8_t *vq, const float *ks, const float *vs, float *sc)
{
    const int64_t D = cb->base.model->hp.head_dim;
    const int64_t bs = cb->base.cfg.block_size;
    const float scale = 1.0f / sqrtf((float)D);
    for (int32_t i = it->i0; i < it->i1; i++) {
        const int64_t t = t0 + i;
        const int64_t n_ctx = (int64_t)s->pos0 + i + 1;
        const float *qh = cb->q + t * cb->q_dim + (int64_t)it->h0 * D;
        float *out = cb->att + t * cb->q_dim + (int64_t)it->h0 * D;
        int8_t qi[KV_Q8_DMAX];
        float dq[KV_Q8_DMAX / 32];
        kv_q8_store(qi, dq, qh, D);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_ctx; j++) {
            const int64_t o = ((int64_t)s->block_table[j / bs] * bs + j % bs) * cb->kv_dim;
            const int8_t *kr = kq + o;
            const float *kd = ks + o / 32;
            float r = 0.0f;
            for (int64_t b = 0; b < D / 32; b++) {
                int32_t isum = 0;
                for (int i = 0; i < 32; i++)
                    isum += (int32_t)qi[32 * b + i] * kr[32 * b + i];
                r = fmaf(kd[b] * dq[b], (float)isum, r);
            }
            const float v = r * scale;
            sc[j] = v;
            mx = v > mx ? v : mx;
        }
        const float sum = softmax_exp_sum(sc, n_ctx, mx);
        memset(out, 0, (size_t)D * sizeof *out);
        for (int64_t j = 0; j < n_ctx; j++) {
            const int64_t o = ((int64_t)s->block_table[j / bs] * bs + j % bs) * cb->kv_dim;
            const int8_t *vr = vq + o;
            const float *vd = vs + o / 32;
            for (int64_t d = 0; d < D; d++)
                out[d] += (sc[j] * vd[d / 32]) * (float)vr[d];
        }
        scale_by_inverse(out, D, sum);
    }
}

#ifdef CPU_X86
/* Cache offsets (elements from the layer's base) of the positions the
 * item's last row sees, block by block; returns their count. */
static int64_t attn_item_offs(const struct cpu_backend *cb, const struct attn_task *at, const struct attn_item *it,
                              int64_t *offs)
{
    const struct batch_seq *s = &at->plan->seqs[it->seq];
    const int64_t n_max = (int64_t)s->pos0 + it->i1;
    seq_cache_offs(s, 0, n_max, cb->base.cfg.block_size, cb->kv_dim, offs);
    return n_max;
}

/* One shared-prefix item: the rows of its sequences, head group by head group. */
static void attn_group_item(const struct attn_task *at, const struct attn_item *it, int64_t *poffs, int64_t *roffs,
                            float *sc, float *acc)
{
    const struct cpu_backend *cb = at->cb;
    const struct model_hparams *hp = &cb->base.model->hp;
    const int64_t D = hp->head_dim, bs = cb->base.cfg.block_size;
    const int group = hp->n_head / hp->n_head_kv;
    const size_t layer_off = (size_t)at->layer * cb->base.cfg.n_kv_blocks * bs * cb->kv_dim;
    const float *q[GRP_ROWS];
    float *out[GRP_ROWS];
    int64_t n_ctx[GRP_ROWS];
    const struct batch_seq *seq[GRP_ROWS];
    const int32_t *members = cb->grp_seqs + it->grp0;
    for (int r = 0; r < it->n_rows; r++) {
        seq[r] = &at->plan->seqs[members[r]];
        n_ctx[r] = (int64_t)seq[r]->pos0 + 1;
    }
    seq_cache_offs(seq[0], 0, it->prefix, bs, cb->kv_dim, poffs);
    for (int h = it->h0; h < it->h0 + it->nh; h += group) {
        const size_t hoff = (size_t)(h / group) * D;
        for (int r = 0; r < it->n_rows; r++) {
            const int64_t t = at->seq_t0[members[r]];
            q[r] = cb->q + t * cb->q_dim + (int64_t)h * D;
            out[r] = cb->att + t * cb->q_dim + (int64_t)h * D;
        }
        const struct attn_group_job jb = {
            .R = it->n_rows, .q = q, .out = out, .n_ctx = n_ctx, .seq = seq, .P = it->prefix, .poffs = poffs,
            .roffs = roffs, .sc = sc, .acc = acc, .ctx_stride = cb->grp_stride, .D = D, .bs = bs,
            .kv_dim = cb->kv_dim, .kbase = (const char *)(cb->kcache + layer_off + hoff),
            .vbase = (const char *)(cb->vcache + layer_off + hoff), .scale = 1.0f / sqrtf((float)D) };
        cb->attn_ops->group_run(&jb, group);
    }
}

/* The f16 / q8 cache's items on the AVX2 kernel.  A thread claims its next item
 * before it computes the current one, and the current one prefetches the
 * next one's cache rows (the rows of its KV head, or whole rows for a
 * whole-row item) while it computes; the first item prefetches its own
 * rows ATTN_PF positions ahead.  Prefetching changes no value. */
static void attn_worker_simd(struct attn_task *at, int ith)
{
    struct cpu_backend *cb = at->cb;
    const struct model_hparams *hp = &cb->base.model->hp;
    const int64_t D = hp->head_dim;
    const int group = hp->n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t layer_off = (size_t)at->layer * cb->base.cfg.n_kv_blocks * cb->base.cfg.block_size * cb->kv_dim;
    const int q8 = cb->kq8 != NULL;
    const int64_t esz = q8 ? 1 : 2;
    /* byte pointers at the layer's K / V rows; q8: the layer's scales */
    const char *krow = q8 ? (const char *)(cb->kq8 + layer_off) : (const char *)(cb->kcache + layer_off);
    const char *vrow = q8 ? (const char *)(cb->vq8 + layer_off) : (const char *)(cb->vcache + layer_off);
    const float *ksrow = q8 ? cb->ks8 + layer_off / 32 : NULL, *vsrow = q8 ? cb->vs8 + layer_off / 32 : NULL;
    float *sc = cb->scores + (size_t)ith * cb->score_group * cb->ctx_stride;
    int64_t *offs[2] = { cb->attn_offs + (size_t)ith * 2 * cb->ctx_max,
                         cb->attn_offs + ((size_t)ith * 2 + 1) * cb->ctx_max };

    int64_t cur = atomic_fetch_add_explicit(&at->next, 1, memory_order_relaxed);
    if (cur >= at->n_items)
        return;
    if (!at->items[cur].n_rows)
        attn_item_offs(cb, at, &at->items[cur], offs[0]);
    int prefetched = 0;   /* cur's rows were prefetched by the previous item */
    for (int buf = 0; cur < at->n_items; buf ^= 1) {
        const struct attn_item *it = &at->items[cur];
        const int64_t nxt = atomic_fetch_add_explicit(&at->next, 1, memory_order_relaxed);
        if (it->n_rows) {
            /* a shared-prefix item: offsets in both buffers are its scratch;
             * the next item (if any) computes its own and fetches its rows */
            attn_group_item(at, it, offs[0], offs[1],
                            cb->grp_sc + (size_t)ith * cb->grp_rows * cb->score_group * cb->grp_stride,
                            cb->grp_acc + (size_t)ith * cb->grp_rows * cb->score_group * D);
            if (nxt < at->n_items && !at->items[nxt].n_rows)
                attn_item_offs(cb, at, &at->items[nxt], offs[buf ^ 1]);
            prefetched = 0;
            cur = nxt;
            continue;
        }
        struct attn_pf pf, *pfp = NULL;
        if (nxt < at->n_items && !at->items[nxt].n_rows) {
            const struct attn_item *in = &at->items[nxt];
            const int whole = in->nh > at->G;
            const size_t hoff = whole ? 0 : (size_t)(in->h0 / group) * D;
            pf = (struct attn_pf){ offs[buf ^ 1], attn_item_offs(cb, at, in, offs[buf ^ 1]), 0,
                                   krow + esz * hoff, vrow + esz * hoff,
                                   ((whole ? esz * cb->kv_dim : esz * D) + 63) / 64, 0, esz,
                                   q8 ? (const char *)(ksrow + hoff / 32) : NULL,
                                   q8 ? (const char *)(vsrow + hoff / 32) : NULL };
            pfp = &pf;
        }
        const struct batch_seq *s = &at->plan->seqs[it->seq];
        const int whole = it->nh > at->G;
        for (int32_t i = it->i0; i < it->i1; i++) {
            const int64_t t = at->seq_t0[it->seq] + i;
            for (int h = it->h0; h < it->h0 + it->nh; h += at->G) {
                const size_t hoff = (size_t)(h / group) * D;
                /* without a prefetch by the previous item, the first head
                 * group fetches its rows (whole rows for a whole-row item);
                 * else each group pulls its slice ahead from L2 into L1 */
                const int own = !prefetched && h == it->h0 && whole;
                cb->attn_ops->row_grouped(cb->q + t * cb->q_dim + (int64_t)h * D, cb->att + t * cb->q_dim + (int64_t)h * D,
                                 sc, cb->ctx_stride, offs[buf], krow + esz * hoff, vrow + esz * hoff,
                                 q8 ? ksrow + hoff / 32 : NULL, q8 ? vsrow + hoff / 32 : NULL,
                                 own ? krow : krow + esz * hoff, own ? vrow : vrow + esz * hoff,
                                 own ? esz * cb->kv_dim : esz * D, pfp, (int64_t)s->pos0 + i + 1, D, scale, at->G,
                                 q8);
            }
        }
        prefetched = pfp != NULL;
        cur = nxt;
    }
}
#endif


/* The plan is one decode row that attn_split runs (see above). */
static bool attn_split_ok(const struct cpu_backend *cb, const struct batch_plan *plan)
{
    const struct model_hparams *hp = &cb->base.model->hp;
    return cb->attn_split && plan->n_seqs == 1 && plan->seqs[0].n_tokens == 1 &&
           (int64_t)plan->seqs[0].pos0 + 1 >= ATTN_SPLIT_MIN_CTX && attn_simd(cb) && cb->kcache &&
           cb->score_group == hp->n_head / hp->n_head_kv && hp->n_head <= ATTN_SPLIT_MAX_HEADS;
}

#ifdef CPU_X86
static void attn_split_run(struct cpu_backend *cb, const struct batch_plan *plan, int layer)
{
    const struct model_hparams *hp = &cb->base.model->hp;
    const size_t layer_off = (size_t)layer * cb->base.cfg.n_kv_blocks * cb->base.cfg.block_size * cb->kv_dim;
    const struct batch_seq *s = &plan->seqs[0];
    struct attn_split a = {
        .q = cb->q, .out = cb->att, .offs = cb->attn_offs,
        .krow = (const char *)(cb->kcache + layer_off), .vrow = (const char *)(cb->vcache + layer_off),
        .sc = cb->split_sc, .vmx = cb->split_vmx, .n_ctx = (int64_t)s->pos0 + 1, .cs = cb->ctx_stride,
        .D = hp->head_dim, .kv_dim = cb->kv_dim, .n_head = hp->n_head, .group = hp->n_head / hp->n_head_kv,
        .scale = 1.0f / sqrtf((float)hp->head_dim), .pf = ATTN_SPLIT_PF,
    };
    threadpool_run(cb->tp, cb->attn_ops->split_scores, &a);
    threadpool_run(cb->tp, cb->attn_ops->split_exp, &a);
    threadpool_run(cb->tp, cb->attn_ops->split_pv, &a);
}
#endif

static void attn_worker(void *ctx, int ith, int nth)
{
    struct attn_task *at = ctx;
    struct cpu_backend *cb = at->cb;
    const struct model_hparams *hp = &cb->base.model->hp;
    const int64_t D = hp->head_dim;
    const int64_t bs = cb->base.cfg.block_size;
    const int group = hp->n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t layer_off = (size_t)at->layer * cb->base.cfg.n_kv_blocks * bs * cb->kv_dim;
    float *sc = cb->scores + (size_t)ith * cb->score_group * cb->ctx_stride;

#ifdef CPU_X86
    if (attn_simd(cb)) {
        attn_worker_simd(at, ith);
        return;
    }
#endif
    for (;;) {
        int64_t item = atomic_fetch_add_explicit(&at->next, 1, memory_order_relaxed);
        if (item >= at->n_items)
            break;
        const struct attn_item *it = &at->items[item];
        const int32_t is = it->seq;
        const struct batch_seq *s = &at->plan->seqs[is];
        int h = it->h0, hkv = h / group;
        if (cb->kcache32) {
            attn_rows_f32(cb, s, it, at->seq_t0[is], cb->kcache32 + layer_off + (size_t)hkv * D,
                          cb->vcache32 + layer_off + (size_t)hkv * D, sc);
            continue;
        }
        if (cb->kq8) {
            const size_t o = layer_off + (size_t)hkv * D;
            attn_rows_q8(cb, s, it, at->seq_t0[is], cb->kq8 + o, cb->vq8 + o, cb->ks8 + o / 32, cb->vs8 + o / 32, sc);
            continue;
        }
        const uint16_t *kbase = cb->kcache + layer_off + (size_t)hkv * D;
        const uint16_t *vbase = cb->vcache + layer_off + (size_t)hkv * D;
        for (int32_t i = it->i0; i < it->i1; i++) {
            const int64_t t = at->seq_t0[is] + i;
            const int64_t n_ctx = (int64_t)s->pos0 + i + 1; /* causal: positions 0..pos */
            const float *qh = cb->q + t * cb->q_dim + (int64_t)h * D;
            float *out = cb->att + t * cb->q_dim + (int64_t)h * D;
            float mx = -INFINITY;
            for (int64_t j0 = 0; j0 < n_ctx; j0 += bs) {
                const int64_t blk = s->block_table[j0 / bs];
                const int64_t jn = n_ctx - j0 < bs ? n_ctx - j0 : bs;
                const uint16_t *kb = kbase + (size_t)blk * bs * cb->kv_dim;
                for (int64_t j = 0; j < jn; j++) {
                    float v = dot_f32_f16(cb->simd, qh, kb + (size_t)j * cb->kv_dim, D) * scale;
                    sc[j0 + j] = v;
                    mx = v > mx ? v : mx;
                }
            }
            const float sum = softmax_exp_sum(sc, n_ctx, mx);
            memset(out, 0, (size_t)D * sizeof *out);
            for (int64_t j0 = 0; j0 < n_ctx; j0 += bs) {
                const int64_t blk = s->block_table[j0 / bs];
                const int64_t jn = n_ctx - j0 < bs ? n_ctx - j0 : bs;
                const uint16_t *vb = vbase + (size_t)blk * bs * cb->kv_dim;
                for (int64_t j = 0; j < jn; j++)
                    axpy_f16(cb->simd, out, sc[j0 + j], vb + (size_t)j * cb->kv_dim, D);
            }
            scale_by_inverse(out, D, sum);
        }
    }
}

/* A decode row's block table, for sorting (nb: blocks covering its n_ctx). */
struct grp_key {
    const int32_t *bt;
    int32_t        nb, seq;
    int64_t        n_ctx;
};

/* Lexicographic on the block tables, then shorter first, then by sequence:
 * sorted, the positions two rows share are the minimum over the adjacent
 * pairs between them. */
static int cmp_grp_key(const void *a, const void *b)
{
    const struct grp_key *x = a, *y = b;
    const int32_t n = x->nb < y->nb ? x->nb : y->nb;
    for (int32_t i = 0; i < n; i++)
        if (x->bt[i] != y->bt[i])
            return x->bt[i] < y->bt[i] ? -1 : 1;
    if (x->nb != y->nb)
        return x->nb < y->nb ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Positions rows x and y read from the same cache blocks (at most either's n_ctx). */
static int64_t grp_common(const struct grp_key *x, const struct grp_key *y, int64_t bs)
{
    const int64_t n = x->n_ctx < y->n_ctx ? x->n_ctx : y->n_ctx;
    int64_t c = 0;
    while (c * bs < n && x->bt[c] == y->bt[c])
        c++;
    return c * bs < n ? c * bs : n;
}

/* Shared-prefix items (appended at items[n]; returns the new count): the
 * decode rows (one token) sorted by block table; a run of neighbours that
 * share GRP_MIN_PREFIX positions or more is split evenly into items of at
 * most grp_rows rows (fewer when there would be too few items for the
 * threads, two rows at least), times one KV head; an item's prefix P is
 * what all its rows share, rounded down to a multiple of 8 (so at most any
 * row's n_ctx).  Members are marked in grp_member.  Grows grp_sc to this
 * step's longest grouped row; without the memory, no items (the rows go
 * the ordinary way, with the same values). */
static int64_t attn_plan_groups(struct cpu_backend *cb, const struct batch_plan *plan, int64_t n)
{
    const struct model_hparams *hp = &cb->base.model->hp;
    const int group = hp->n_head / hp->n_head_kv;
    const int64_t bs = cb->base.cfg.block_size;
    memset(cb->grp_member, 0, (size_t)plan->n_seqs);
    if (cb->grp_rows <= 1)
        return n;
    int64_t nc = 0;
    for (int32_t is = 0; is < plan->n_seqs; is++) {
        const struct batch_seq *s = &plan->seqs[is];
        const int64_t n_ctx = (int64_t)s->pos0 + 1;
        if (s->n_tokens == 1 && n_ctx >= GRP_MIN_PREFIX)
            cb->grp_keys[nc++] = (struct grp_key){ s->block_table, (int32_t)((n_ctx + bs - 1) / bs), is, n_ctx };
    }
    if (nc < 2)
        return n;
    qsort(cb->grp_keys, (size_t)nc, sizeof *cb->grp_keys, cmp_grp_key);
    const int64_t n0 = n;
    int64_t ng = 0, longest = 0;
    const int64_t want = (2 * (int64_t)cb->n_threads + hp->n_head_kv - 1) / hp->n_head_kv;
    for (int64_t a = 0, b; a < nc; a = b) {
        for (b = a + 1; b < nc && grp_common(&cb->grp_keys[b - 1], &cb->grp_keys[b], bs) >= GRP_MIN_PREFIX; b++)
            ;
        const int64_t rows = b - a;
        if (rows < 2)
            continue;
        int64_t chunks = (rows + cb->grp_rows - 1) / cb->grp_rows;
        if (chunks < want)
            chunks = want < rows / 2 ? want : rows / 2;
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t r0 = a + rows * c / chunks, r1 = a + rows * (c + 1) / chunks;
            int64_t P = INT64_MAX;
            for (int64_t r = r0; r < r1; r++) {
                if (r + 1 < r1) {
                    const int64_t shared = grp_common(&cb->grp_keys[r], &cb->grp_keys[r + 1], bs);
                    P = shared < P ? shared : P;
                }
                longest = cb->grp_keys[r].n_ctx > longest ? cb->grp_keys[r].n_ctx : longest;
                cb->grp_seqs[ng + r - r0] = cb->grp_keys[r].seq;
            }
            P &= ~(int64_t)7;
            for (int h = 0; h < hp->n_head; h += group)
                cb->attn_items[n++] = (struct attn_item){ .seq = -1, .i0 = 0, .i1 = 1, .h0 = h, .nh = group,
                                                          .n_rows = (int32_t)(r1 - r0), .grp0 = (int32_t)ng,
                                                          .prefix = P };
            ng += r1 - r0;
        }
    }
    if (n == n0)
        return n;
    const int64_t stride = (longest + 7) / 8 * 8;
    const int64_t need = (int64_t)cb->n_threads * cb->grp_rows * cb->score_group * stride;
    if (need > cb->grp_sc_cap) {
        float *sc = realloc(cb->grp_sc, (size_t)need * sizeof *sc);
        if (!sc)
            return n0;
        cb->grp_sc = sc;
        cb->grp_sc_cap = need;
    }
    cb->grp_stride = stride;
    for (int64_t r = 0; r < ng; r++)
        cb->grp_member[cb->grp_seqs[r]] = 1;
    return n;
}

/* Items of one layer's attention (the same for every layer): shared-prefix
 * items first (attn_plan_groups), then the other sequences' rows in runs
 * of ATTN_ROWS, times the query heads taken G at a time.  G is the GQA
 * group (each K/V row converted once for the group) when there are enough
 * items to keep every thread busy, else 1; with enough runs alone, an item
 * takes every head of its rows (G at a time), so the cache rows stream
 * whole.  Either way every (row, head) is computed by one thread with the
 * same operations, so the split never changes a number. */
static int64_t attn_plan(struct cpu_backend *cb, const struct batch_plan *plan, int *G_out)
{
    const struct model_hparams *hp = &cb->base.model->hp;
    const int group = hp->n_head / hp->n_head_kv;
    int64_t n = attn_plan_groups(cb, plan, 0);
    int64_t runs = 0;
    for (int32_t is = 0; is < plan->n_seqs; is++)
        if (!cb->grp_member[is])
            runs += (plan->seqs[is].n_tokens + ATTN_ROWS - 1) / ATTN_ROWS;
    int G = 1, nh = 1;
    if (attn_simd(cb) && cb->score_group == group &&
        runs * hp->n_head_kv >= (int64_t)ATTN_ITEMS_PER_THREAD * cb->n_threads) {
        G = nh = group;
        if (runs >= (int64_t)ATTN_ITEMS_PER_THREAD * cb->n_threads)
            nh = hp->n_head;   /* whole rows: each K/V row read once, contiguously */
    }
    for (int32_t is = 0; is < plan->n_seqs; is++) {
        if (cb->grp_member[is])
            continue;
        for (int32_t i0 = 0; i0 < plan->seqs[is].n_tokens; i0 += ATTN_ROWS) {
            const int32_t i1 = i0 + ATTN_ROWS < plan->seqs[is].n_tokens ? i0 + ATTN_ROWS : plan->seqs[is].n_tokens;
            for (int h = 0; h < hp->n_head; h += nh)
                cb->attn_items[n++] = (struct attn_item){ .seq = is, .i0 = i0, .i1 = i1, .h0 = h, .nh = nh };
        }
    }
    *G_out = G;
    return n;
}

/* ---- rope ---------------------------------------------------------------- */

/* cos/sin of each token's angles, as ggml computes them: theta_i =
 * pos * freq_scale * base^(-2i/rope_dim), the power built by repeated
 * multiplication in f32. */
static void rope_tables(struct cpu_backend *cb, int64_t T)
{
    const struct model_hparams *hp = &cb->base.model->hp;
    const int half = hp->rope_dim / 2;
    const float theta_scale = powf(hp->rope_theta, -2.0f / (float)hp->rope_dim);
    for (int64_t t = 0; t < T; t++) {
        float th = (float)cb->tok_pos[t];
        for (int i = 0; i < half; i++) {
            const float a = th * hp->rope_freq_scale;
            cb->rope_cos[t * half + i] = cosf(a);
            cb->rope_sin[t * half + i] = sinf(a);
            th *= theta_scale;
        }
    }
}

static void rope_apply(const struct model_hparams *hp, float *x, const float *c, const float *s)
{
    const int half = hp->rope_dim / 2;
    if (hp->rope_style == ROPE_NEOX) {
        for (int i = 0; i < half; i++) {
            const float x0 = x[i], x1 = x[i + half];
            x[i] = x0 * c[i] - x1 * s[i];
            x[i + half] = x0 * s[i] + x1 * c[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            const float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * c[i] - x1 * s[i];
            x[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
    }
}

/* ---- forward --------------------------------------------------------------- */

static int cpu_forward(backend *be, const struct batch_plan *plan, float *logits)
{
    struct cpu_backend *cb = (struct cpu_backend *)be;
    const struct model *m = be->model;
    const struct model_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, D = hp->head_dim, F = hp->n_ff;
    const int64_t bs = be->cfg.block_size;
    const int half = hp->rope_dim / 2;
    int64_t *seq_t0 = cb->seq_t0; /* n_seqs <= T <= max_T after validation */

    /* token rows, positions, logits rows */
    int64_t T = 0, n_rows = 0;
    for (int32_t is = 0; is < plan->n_seqs; is++) {
        const struct batch_seq *s = &plan->seqs[is];
        seq_t0[is] = T;
        for (int32_t i = 0; i < s->n_tokens; i++) {
            cb->tok_pos[T + i] = s->pos0 + i;
            cb->tok_seq[T + i] = is;
            if (s->logits == LOGITS_ALL || (s->logits == LOGITS_LAST && i == s->n_tokens - 1))
                cb->logit_tok[n_rows++] = (int32_t)(T + i);
        }
        T += s->n_tokens;
    }

    /* embeddings */
    {
        const size_t rb = dtype_row_bytes(m->tok_embd.type, E);
        int64_t t = 0;
        for (int32_t is = 0; is < plan->n_seqs; is++)
            for (int32_t i = 0; i < plan->seqs[is].n_tokens; i++, t++) {
                const uint8_t *row = (const uint8_t *)m->tok_embd.data + (size_t)plan->seqs[is].tokens[i] * rb;
                int rc = quant_row_dequantize(m->tok_embd.type, row, cb->x + t * E, E);
                if (rc)
                    return rc;
            }
    }
    rope_tables(cb, T);

    int attn_G;
    const int64_t n_attn_items = attn_plan(cb, plan, &attn_G);
    const bool split = attn_split_ok(cb, plan);
    if (split) {
        /* the row's cache offsets, the same for every layer */
        seq_cache_offs(&plan->seqs[0], 0, (int64_t)plan->seqs[0].pos0 + 1, bs, cb->kv_dim, cb->attn_offs);
        cb->split_rows++;
    }
    for (int32_t is = 0; is < plan->n_seqs; is++)
        cb->grp_rows_total += cb->grp_member[is];
    cb->prof_on = cb->prof && T == plan->n_seqs && T <= PROF_MAX_T;
    if (cb->prof_on) {
        cb->prof_steps[T]++;
        cb->prof_t = prof_now(cb->prof_cpu);
    }
    for (int il = 0; il < hp->n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        const struct layer_vecs *lv = &cb->lv[il];


        struct mm_part qkv[3] = {
            { .w = &lw->wq, .out = cb->q, .out_stride = cb->q_dim,  .bias = lv->bq },
            { .w = &lw->wk, .out = cb->k, .out_stride = cb->kv_dim, .bias = lv->bk },
            { .w = &lw->wv, .out = cb->v, .out_stride = cb->kv_dim, .bias = lv->bv },
        };
        prof_mark(cb, T, PROF_OTHER);
        matmul_run(cb, qkv, 3, 0, cb->x, T, T, PROF_QKV, lv->attn_norm);

        /* qk-norm (qwen3), rope, then K/V into the paged cache */
        const size_t layer_off = (size_t)il * be->cfg.n_kv_blocks * bs * cb->kv_dim;
        for (int64_t t = 0; t < T; t++) {
            const float *c = cb->rope_cos + t * half, *sn = cb->rope_sin + t * half;
            for (int h = 0; h < hp->n_head; h++) {
                float *qh = cb->q + t * cb->q_dim + h * D;
                if (lv->q_norm)
                    rmsnorm(qh, qh, lv->q_norm, D, hp->rms_eps);
                rope_apply(hp, qh, c, sn);
            }
            for (int h = 0; h < hp->n_head_kv; h++) {
                float *kh = cb->k + t * cb->kv_dim + h * D;
                if (lv->k_norm)
                    rmsnorm(kh, kh, lv->k_norm, D, hp->rms_eps);
                rope_apply(hp, kh, c, sn);
            }
            const struct batch_seq *s = &plan->seqs[cb->tok_seq[t]];
            const int64_t p = cb->tok_pos[t];
            const size_t off = layer_off + ((size_t)s->block_table[p / bs] * bs + (size_t)(p % bs)) * cb->kv_dim;
            if (cb->kcache32) {
                memcpy(cb->kcache32 + off, cb->k + t * cb->kv_dim, (size_t)cb->kv_dim * sizeof(float));
                memcpy(cb->vcache32 + off, cb->v + t * cb->kv_dim, (size_t)cb->kv_dim * sizeof(float));
            } else if (cb->kq8) {
                kv_q8_store(cb->kq8 + off, cb->ks8 + off / 32, cb->k + t * cb->kv_dim, cb->kv_dim);
                kv_q8_store(cb->vq8 + off, cb->vs8 + off / 32, cb->v + t * cb->kv_dim, cb->kv_dim);
            } else {
                store_f16(cb->simd, cb->kcache + off, cb->k + t * cb->kv_dim, cb->kv_dim);
                store_f16(cb->simd, cb->vcache + off, cb->v + t * cb->kv_dim, cb->kv_dim);
            }
        }

        prof_mark(cb, T, PROF_OTHER);
#ifdef CPU_X86
        if (split) {
            attn_split_run(cb, plan, il);
        } else
#endif
        {
            struct attn_task at = { .cb = cb, .plan = plan, .seq_t0 = seq_t0, .layer = il,
                                    .items = cb->attn_items, .G = attn_G, .n_items = n_attn_items };
            atomic_init(&at.next, 0);
            threadpool_run(cb->tp, attn_worker, &at);
        }
        prof_mark(cb, T, PROF_ATTN);

        struct mm_part wo = { .w = &lw->wo, .out = cb->x, .out_stride = E, .accumulate = 1 };
        matmul_run(cb, &wo, 1, 0, cb->att, T, T, PROF_WO, NULL);


        struct mm_part gu[2] = {
            { .w = &lw->w_gate, .out = cb->hb, .out_stride = F },
            { .w = &lw->w_up,   .out = cb->hb, .out_stride = F },
        };
        prof_mark(cb, T, PROF_OTHER);
        matmul_run(cb, gu, 2, 1, cb->x, T, T, PROF_FFN_UP, lv->ffn_norm);

        struct mm_part down = { .w = &lw->w_down, .out = cb->x, .out_stride = E, .accumulate = 1 };
        matmul_run(cb, &down, 1, 0, cb->hb, T, T, PROF_FFN_DOWN, NULL);
    }

    if (n_rows > 0) {
        for (int64_t r = 0; r < n_rows; r++)
            rmsnorm(cb->xn + r * E, cb->x + (int64_t)cb->logit_tok[r] * E, cb->out_norm, E, hp->rms_eps);
        struct mm_part out = { .w = &m->output, .out = logits, .out_stride = hp->n_vocab };
        prof_mark(cb, T, PROF_OTHER);
        matmul_run(cb, &out, 1, 0, cb->xn, n_rows, T, PROF_OUTPUT, NULL);
    }
    return PS_OK;
}

/* Copy block src to dst of every layer in arrays a and b laid out
 * [n_layer][n_kv_blocks][blk bytes]. */
static void copy_block_bytes(char *a, char *b, size_t blk, int n_layer, int64_t n_blocks, int32_t src, int32_t dst)
{
    for (int il = 0; il < n_layer; il++) {
        const size_t base = (size_t)il * (size_t)n_blocks * blk;
        memcpy(a + base + (size_t)dst * blk, a + base + (size_t)src * blk, blk);
        memcpy(b + base + (size_t)dst * blk, b + base + (size_t)src * blk, blk);
    }
}

static int cpu_copy_block(backend *be, int32_t src, int32_t dst)
{
    struct cpu_backend *cb = (struct cpu_backend *)be;
    const int nl = be->model->hp.n_layer;
    const size_t elems = (size_t)be->cfg.block_size * cb->kv_dim; /* per layer and block */
    if (cb->kq8) { /* int8 values, then their scales */
        copy_block_bytes((char *)cb->kq8, (char *)cb->vq8, elems, nl, be->cfg.n_kv_blocks, src, dst);
        copy_block_bytes((char *)cb->ks8, (char *)cb->vs8, elems / 32 * sizeof(float), nl, be->cfg.n_kv_blocks, src,
                         dst);
    } else if (cb->kcache32) {
        copy_block_bytes((char *)cb->kcache32, (char *)cb->vcache32, elems * sizeof(float), nl,
                         be->cfg.n_kv_blocks, src, dst);
    } else {
        copy_block_bytes((char *)cb->kcache, (char *)cb->vcache, elems * sizeof(uint16_t), nl, be->cfg.n_kv_blocks,
                         src, dst);
    }
    return PS_OK;
}

static void cpu_free(backend *be)
{
    struct cpu_backend *cb = (struct cpu_backend *)be;
    if (!cb)
        return;
    if (cb->prof)
        prof_print(cb);
    threadpool_free(cb->tp);
    if (cb->lv) {
        for (int il = 0; il < be->model->hp.n_layer; il++) {
            struct layer_vecs *lv = &cb->lv[il];
            free(lv->attn_norm);
            free(lv->ffn_norm);
            free(lv->bq);
            free(lv->bk);
            free(lv->bv);
            free(lv->q_norm);
            free(lv->k_norm);
        }
        free(cb->lv);
    }
    free(cb->out_norm);
    for (int i = 0; i < 8; i++)
        free(cb->cache_raw[i]);
    free(cb->x);
    free(cb->xn);
    free(cb->q);
    free(cb->k);
    free(cb->v);
    free(cb->att);
    free(cb->hb);
    for (int i = 0; i < 3; i++)
        free(cb->qact[i]);
    free(cb->rope_cos);
    free(cb->rope_sin);
    free(cb->scores);
    free(cb->split_sc);
    free(cb->split_vmx);
    free(cb->attn_offs);
    free(cb->attn_items);
    free(cb->grp_seqs);
    free(cb->grp_member);
    free(cb->grp_keys);
    free(cb->grp_acc);
    free(cb->grp_sc);
    free(cb->tok_pos);
    free(cb->tok_seq);
    free(cb->logit_tok);
    free(cb->seq_t0);
    free(cb->x8_w);
    free(cb->x8_data);
    free(cb->x8_mem);
    free(cb);
}

static const struct backend_ops cpu_ops = {
    .name = "cpu",
    .forward = cpu_forward,
    .copy_block = cpu_copy_block,
    .free = cpu_free,
};

int backend_cpu_x8_matrices(const backend *be)
{
    return be && be->ops == &cpu_ops ? ((const struct cpu_backend *)be)->n_x8 : 0;
}

int64_t backend_cpu_shared_prefix_rows(const backend *be)
{
    return be && be->ops == &cpu_ops ? ((const struct cpu_backend *)be)->grp_rows_total : 0;
}

int64_t backend_cpu_split_rows(const backend *be)
{
    return be && be->ops == &cpu_ops ? ((const struct cpu_backend *)be)->split_rows : 0;
}

/* Check a matrix weight: present, shape [in -> out], a type with a
 * vec_dot, and track the largest quantized activation row it needs. */
static int check_matrix(const struct weight *w, int64_t in, int64_t out, const char *what, int il,
                        size_t *act_bytes)
{
    if (!w->data)
        return ps_error_set(PS_EFORMAT, "backend_cpu: layer %d: %s missing", il, what);
    if (w->ne[0] != in || w->ne[1] != out)
        return ps_error_set(PS_EFORMAT, "backend_cpu: layer %d: %s is [%lld x %lld], expected [%lld x %lld]",
                            il, what, (long long)w->ne[0], (long long)w->ne[1], (long long)in,
                            (long long)out);
    const struct dtype_info *ti = dtype_info_get(w->type);
    if (!ti)
        return ps_error_set(PS_EUNSUPPORTED, "backend_cpu: layer %d: %s has unsupported type %d", il,
                            what, (int)w->type);
    size_t rb = dtype_row_bytes(ti->vec_dot_type, in);
    if (rb == 0 || dtype_row_bytes(w->type, in) == 0)
        return ps_error_set(PS_EUNSUPPORTED, "backend_cpu: layer %d: %s: rows of %lld do not fit type %s",
                            il, what, (long long)in, ti->name);
    if (rb > *act_bytes)
        *act_bytes = rb;
    return PS_OK;
}

/* Zeroed cache of `bytes` at a 64-byte boundary (a head's K/V slice of a
 * row then covers whole cache lines), lazily zeroed pages as calloc's;
 * cb->cache_raw[slot] keeps the allocation for free(). */
static int cache_alloc(struct cpu_backend *cb, int slot, int64_t bytes, void **out)
{
    cb->cache_raw[slot] = calloc((size_t)bytes + 64, 1);
    if (!cb->cache_raw[slot])
        return ps_error_set(PS_ENOMEM, "backend_cpu: out of memory for the KV cache (%lld bytes)", (long long)bytes);
    *out = (void *)(((uintptr_t)cb->cache_raw[slot] + 63) & ~(uintptr_t)63);
    return PS_OK;
}

#define TRY(expr)             \
    do {                      \
        rc = (expr);          \
        if (rc)               \
            goto fail;        \
    } while (0)

#define ALLOC(ptr, count)                                              \
    do {                                                               \
        (ptr) = calloc((size_t)(count), sizeof *(ptr));                \
        if (!(ptr)) {                                                  \
            rc = ps_error_set(PS_ENOMEM, "backend_cpu: out of memory for %s (%lld elements)", \
                              #ptr, (long long)(count));               \
            goto fail;                                                 \
        }                                                              \
    } while (0)

/* Q4_1 and Q8_0 matrices with a multiple of 8 rows (and at most
 * QUANT_X8_MAXB blocks per row) repacked for the x8 tiles, when the SIMD
 * path has them: Q4_1 about 2.4x faster one-token matmuls and 1.4x faster
 * 8-token tiles on AVX2 (test_quant_mdot's bench), at the cost of a copy
 * of those weights (the mmap'd originals are not read again, but for the
 * embedding rows of a tied output).  Their dots are the x8
 * arithmetic (quant.h), the same for every batch and thread split.
 * PARASERVE_CPU_X8=0 keeps every matrix on quant_mat_dot (A/B runs). */
static int x8_repack_all(struct cpu_backend *cb, const struct model *m)
{
    const char *env = getenv("PARASERVE_CPU_X8");
    if ((!quant_x8_available(DT_Q4_1) && !quant_x8_available(DT_Q8_0)) || (env && !strcmp(env, "0")))
        return PS_OK;
    const struct weight **cand = malloc((7 * (size_t)m->hp.n_layer + 1) * sizeof *cand);
    if (!cand)
        return ps_error_set(PS_ENOMEM, "backend_cpu: out of memory");
    int n = 0;
    size_t bytes = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        const struct weight *ws[7] = { &lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w_gate, &lw->w_up, &lw->w_down };
        for (int k = 0; k < 7; k++)
            cand[n++] = ws[k];
    }
    cand[n++] = &m->output;
    int keep = 0;
    for (int i = 0; i < n; i++) {
        const struct weight *w = cand[i];
        if (!w->data || !quant_x8_available(w->type) || !quant_x8_bytes(w->type, w->ne[1], w->ne[0]))
            continue;
        int dup = 0;   /* a tied output is the embedding: listed once */
        for (int j = 0; j < keep; j++)
            dup |= cand[j] == w || cand[j]->data == w->data;
        if (dup)
            continue;
        cand[keep++] = w;
        bytes += quant_x8_bytes(w->type, w->ne[1], w->ne[0]);
    }
    int rc = PS_OK;
    if (keep) {
        cb->x8_w = calloc((size_t)keep, sizeof *cb->x8_w);
        cb->x8_data = calloc((size_t)keep, sizeof *cb->x8_data);
        cb->x8_mem = aligned_alloc(64, (bytes + 64 * (size_t)keep + 63) / 64 * 64);
        if (!cb->x8_w || !cb->x8_data || !cb->x8_mem)
            rc = ps_error_set(PS_ENOMEM, "backend_cpu: out of memory repacking %zu bytes of weights", bytes);
    }
    size_t off = 0;
    for (int i = 0; i < keep && !rc; i++) {
        const struct weight *w = cand[i];
        rc = quant_x8_repack(w->type, w->data, dtype_row_bytes(w->type, w->ne[0]), w->ne[1], w->ne[0],
                             cb->x8_mem + off);
        cb->x8_w[i] = w;
        cb->x8_data[i] = cb->x8_mem + off;
        off += (quant_x8_bytes(w->type, w->ne[1], w->ne[0]) + 63) / 64 * 64;
    }
    if (!rc)
        cb->n_x8 = keep;
    free(cand);
    return rc;
}

int backend_cpu_create(const struct model *m, const struct backend_config *cfg, backend **out)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (cfg->n_threads < 1)
        return ps_error_set(PS_EINVAL, "backend_cpu: n_threads %d < 1", (int)cfg->n_threads);
    if (cfg->n_kv_blocks < 1)
        return ps_error_set(PS_EINVAL, "backend_cpu: n_kv_blocks %d < 1", (int)cfg->n_kv_blocks);
    if (cfg->block_size < 1)
        return ps_error_set(PS_EINVAL, "backend_cpu: block_size %d < 1", (int)cfg->block_size);
    if (cfg->max_batch_tokens < 0)
        return ps_error_set(PS_EINVAL, "backend_cpu: max_batch_tokens %d < 0", (int)cfg->max_batch_tokens);
    if (cfg->kv_type != KV_F16 && cfg->kv_type != KV_F32 && cfg->kv_type != KV_Q8)
        return ps_error_set(PS_EINVAL, "backend_cpu: unknown kv_type %d", (int)cfg->kv_type);
    if (cfg->kv_type == KV_Q8 && (hp->head_dim % 32 || hp->head_dim > KV_Q8_DMAX))
        return ps_error_set(PS_EUNSUPPORTED,
                            "backend_cpu: a q8 KV cache needs head_dim %% 32 == 0 and <= %d (head_dim %d)",
                            KV_Q8_DMAX, (int)hp->head_dim);
    if (hp->n_head < 1 || hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv || hp->head_dim < 1 ||
        hp->rope_dim < 0 || hp->rope_dim % 2 || hp->rope_dim > hp->head_dim)
        return ps_error_set(PS_EFORMAT, "backend_cpu: bad heads: n_head %d n_head_kv %d head_dim %d rope_dim %d",
                            (int)hp->n_head, (int)hp->n_head_kv, (int)hp->head_dim, (int)hp->rope_dim);

    quant_init();
    int rc = PS_OK;
    struct cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb)
        return ps_error_set(PS_ENOMEM, "backend_cpu: out of memory");
    cb->base.ops = &cpu_ops;
    cb->base.model = m;
    cb->base.cfg = *cfg;
    if (cb->base.cfg.max_batch_tokens == 0)
        cb->base.cfg.max_batch_tokens = MAX_BATCH_DEFAULT;
    cb->n_threads = cfg->n_threads;
    cb->max_T = cb->base.cfg.max_batch_tokens;
    cb->q_dim = (int64_t)hp->n_head * hp->head_dim;
    cb->kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    cb->ctx_max = (int64_t)cfg->n_kv_blocks * cfg->block_size;
    cb->prof = getenv("PARASERVE_CPU_PROFILE") != NULL;
    cb->prof_cpu = cb->prof && !strcmp(getenv("PARASERVE_CPU_PROFILE"), "cpu");
#ifdef CPU_X86
    /* quant picks its AVX2 path only on CPUs with AVX2, FMA and F16C (it
     * checks F16C by cpuid: clang's builtin does not know "f16c"). */
    cb->simd = strcmp(quant_simd_name(), "avx2") == 0;
#ifdef CPU_X86
    /* zmm attention where the x8 tiles run on zmm (PARASERVE_SIMD picks
     * both; bitwise the same values either way) */
    cb->attn_ops = strcmp(quant_x8_isa_name(), "avx512") == 0 ? &attn_x86_avx512 : &attn_x86_avx2;
#endif
#endif

    const int64_t E = hp->n_embd, F = hp->n_ff, T = cb->max_T;
    ALLOC(cb->lv, hp->n_layer);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        struct layer_vecs *lv = &cb->lv[il];
        TRY(check_matrix(&lw->wq, E, cb->q_dim, "attn_q", il, &cb->act_bytes));
        TRY(check_matrix(&lw->wk, E, cb->kv_dim, "attn_k", il, &cb->act_bytes));
        TRY(check_matrix(&lw->wv, E, cb->kv_dim, "attn_v", il, &cb->act_bytes));
        TRY(check_matrix(&lw->wo, cb->q_dim, E, "attn_output", il, &cb->act_bytes));
        TRY(check_matrix(&lw->w_gate, E, F, "ffn_gate", il, &cb->act_bytes));
        TRY(check_matrix(&lw->w_up, E, F, "ffn_up", il, &cb->act_bytes));
        TRY(check_matrix(&lw->w_down, F, E, "ffn_down", il, &cb->act_bytes));
        TRY(vec_to_f32(&lw->attn_norm, E, &lv->attn_norm, "attn_norm", il));
        TRY(vec_to_f32(&lw->ffn_norm, E, &lv->ffn_norm, "ffn_norm", il));
        TRY(vec_to_f32(&lw->bq, cb->q_dim, &lv->bq, "attn_q.bias", il));
        TRY(vec_to_f32(&lw->bk, cb->kv_dim, &lv->bk, "attn_k.bias", il));
        TRY(vec_to_f32(&lw->bv, cb->kv_dim, &lv->bv, "attn_v.bias", il));
        TRY(vec_to_f32(&lw->q_norm, hp->head_dim, &lv->q_norm, "attn_q_norm", il));
        TRY(vec_to_f32(&lw->k_norm, hp->head_dim, &lv->k_norm, "attn_k_norm", il));
        if (!lv->attn_norm || !lv->ffn_norm) {
            rc = ps_error_set(PS_EFORMAT, "backend_cpu: layer %d: norm weight missing", il);
            goto fail;
        }
    }
    TRY(check_matrix(&m->output, E, hp->n_vocab, "output", -1, &cb->act_bytes));
    if (!m->tok_embd.data || m->tok_embd.ne[0] != E || m->tok_embd.ne[1] != hp->n_vocab ||
        dtype_row_bytes(m->tok_embd.type, E) == 0) {
        rc = ps_error_set(PS_EFORMAT, "backend_cpu: token_embd missing or not [%lld x %d]",
                          (long long)E, (int)hp->n_vocab);
        goto fail;
    }
    TRY(vec_to_f32(&m->output_norm, E, &cb->out_norm, "output_norm", -1));
    if (!cb->out_norm) {
        rc = ps_error_set(PS_EFORMAT, "backend_cpu: output_norm missing");
        goto fail;
    }

    const int64_t cache_elems = (int64_t)hp->n_layer * cfg->n_kv_blocks * cfg->block_size * cb->kv_dim;
    if (cfg->kv_type == KV_F32) {
        TRY(cache_alloc(cb, 0, cache_elems * (int64_t)sizeof(float), (void **)&cb->kcache32));
        TRY(cache_alloc(cb, 1, cache_elems * (int64_t)sizeof(float), (void **)&cb->vcache32));
    } else if (cfg->kv_type == KV_Q8) {
        TRY(cache_alloc(cb, 4, cache_elems, (void **)&cb->kq8));
        TRY(cache_alloc(cb, 5, cache_elems, (void **)&cb->vq8));
        TRY(cache_alloc(cb, 6, cache_elems / 32 * (int64_t)sizeof(float), (void **)&cb->ks8));
        TRY(cache_alloc(cb, 7, cache_elems / 32 * (int64_t)sizeof(float), (void **)&cb->vs8));
    } else {
        TRY(cache_alloc(cb, 2, cache_elems * (int64_t)sizeof(uint16_t), (void **)&cb->kcache));
        TRY(cache_alloc(cb, 3, cache_elems * (int64_t)sizeof(uint16_t), (void **)&cb->vcache));
    }
    ALLOC(cb->x, T * E);
    ALLOC(cb->xn, T * E);
    ALLOC(cb->q, T * cb->q_dim);
    ALLOC(cb->k, T * cb->kv_dim);
    ALLOC(cb->v, T * cb->kv_dim);
    ALLOC(cb->att, T * cb->q_dim);
    ALLOC(cb->hb, T * F);
    for (int i = 0; i < 3; i++)
        ALLOC(cb->qact[i], T * (int64_t)cb->act_bytes);
    ALLOC(cb->rope_cos, T * (hp->rope_dim / 2 + 1));
    ALLOC(cb->rope_sin, T * (hp->rope_dim / 2 + 1));
    cb->score_group = hp->n_head / hp->n_head_kv <= 8 ? hp->n_head / hp->n_head_kv : 1;
    cb->ctx_stride = (cb->ctx_max + 7) / 8 * 8;
    /* shared-prefix items: the f16 cache on the AVX2 kernel with whole GQA
     * groups; PARASERVE_CPU_SHARED_PREFIX=0 turns them off (A/B runs) */
    {
        const char *sp = getenv("PARASERVE_CPU_SHARED_PREFIX");
        cb->grp_rows = attn_simd(cb) && cb->kcache && cb->score_group == hp->n_head / hp->n_head_kv &&
                               !(sp && !strcmp(sp, "0"))
                           ? GRP_ROWS
                           : 1;
    }
    ALLOC(cb->scores, (int64_t)cfg->n_threads * cb->score_group * cb->ctx_stride);
    {
        const char *sp = getenv("PARASERVE_CPU_ATTN_SPLIT");
        cb->attn_split = cfg->n_threads > 1 && !(sp && !strcmp(sp, "0"));
    }
    if (cb->attn_split) {
        ALLOC(cb->split_sc, (int64_t)hp->n_head * cb->ctx_stride);
        ALLOC(cb->split_vmx, (int64_t)cfg->n_threads * hp->n_head * 8);
    }
    ALLOC(cb->grp_seqs, T);
    ALLOC(cb->grp_member, T);
    ALLOC(cb->grp_keys, T);
    ALLOC(cb->grp_acc, (int64_t)cfg->n_threads * cb->grp_rows * cb->score_group * hp->head_dim);
    ALLOC(cb->attn_offs, (int64_t)cfg->n_threads * 2 * cb->ctx_max);
    ALLOC(cb->attn_items, T * hp->n_head);
    ALLOC(cb->tok_pos, T);
    ALLOC(cb->tok_seq, T);
    ALLOC(cb->logit_tok, T);
    ALLOC(cb->seq_t0, T);
    TRY(x8_repack_all(cb, m));
    TRY(threadpool_create(cfg->n_threads, &cb->tp));

    *out = &cb->base;
    return PS_OK;
fail:
    cpu_free(&cb->base);
    return rc;
}
