/* attn_x86 - the CPU backend's SIMD attention kernels on x86 (f16 and q8
 * caches), and the SwiGLU they share exp_avx2 with.
 *
 * One source (attn_x86.inc), built twice: attn_avx2.c (AVX2 + FMA + F16C,
 * ymm: attn_x86_avx2) and attn_avx512.c (attn_x86_avx512: the f16 cache's
 * score and P.V inner loops on zmm, for CPUs with AVX512F + VL; the rest as
 * in the ymm build).  Both give bitwise the same values: a zmm score
 * accumulator holds the ymm path's even and odd 8-element chunks in its two
 * halves, added as the ymm path adds them, and a zmm P.V slice makes the
 * same per-element FMAs in position order.  The backend picks one table at
 * creation (cpu_backend's attn_ops); test_backend_cpu compares the two.
 *
 * Valid only on x86-64 CPUs with AVX2 + FMA + F16C (quant_avx2_supported),
 * and for attn_x86_avx512 AVX512F + VL with the OS saving zmm state. */
#ifndef PARASERVE_ENGINE_ATTN_X86_H
#define PARASERVE_ENGINE_ATTN_X86_H

#include <stdint.h>

#include "../model/quant.h"
#include "backend.h"

#define ATTN_DMAX            256  /* head_dim of the SIMD kernels at most (stack buffers) */
#define GRP_ROWS             8    /* decode rows per shared-prefix attention item at most */
#define ATTN_SPLIT_MAX_HEADS 64   /* query heads attn_split handles (its sums on the stack) */

/* offs[j] = cache offset (elements from the layer's base) of position j of
 * sequence s, for j in [j0, n): block by block from its block table. */
static inline void seq_cache_offs(const struct batch_seq *s, int64_t j0, int64_t n, int64_t bs, int64_t kv_dim,
                           int64_t *offs)
{
    for (int64_t j = j0; j < n;) {
        const int64_t base = (int64_t)s->block_table[j / bs] * bs * kv_dim;
        const int64_t end = (j / bs + 1) * bs < n ? (j / bs + 1) * bs : n;
        for (int64_t i = j % bs; j < end; j++, i++)
            offs[j] = base + i * kv_dim;
    }
}


/* One q8 cache row: n (% 32 == 0) values as n / 32 blocks of int8 q and
 * an f32 scale each, by quant_q8_block_scalar (backend.h's rule: d =
 * max|x| / 127, q = round-half-away(x * (1 / d)) in [-127, 127], as the
 * attention kernel's sign trick needs; a block holding a NaN: d = NaN, q
 * 0).  Scalar on both paths: the cache holds the same bytes whatever the
 * SIMD level. */
static inline void kv_q8_store(int8_t *q, float *d, const float *x, int64_t n)
{
    for (int64_t b = 0; b < n / 32; b++)
        (void)quant_q8_block_scalar(x + 32 * b, q + 32 * b, d + b);
}


/* Prefetch cursor over the cache rows of the item a thread runs next:
 * `lines` 64-byte lines of K and V at k / v + esz * offs[j] (bytes), j < n,
 * one 64-byte line at a time (K's lines of a position, then V's; with q8,
 * the line of the position's K and V scales at ks / vs + 4 * (offs[j] / 32)
 * first).  The item
 * being computed advances it a few lines per loop step, so the next item's
 * rows stream in evenly while this one computes (bursts of whole rows
 * overrun the outstanding-miss queue). */
struct attn_pf {
    const int64_t *offs;
    int64_t        n, pos;    /* positions; current one */
    const char    *k, *v;
    int64_t        lines;     /* 64-byte lines per row: (bytes of a row + 63) / 64 */
    int64_t        line;      /* next line of position pos: [0, 2 * lines) */
    int64_t        esz;       /* bytes per cache element: 2 (f16), 1 (q8) */
    const char    *ks, *vs;   /* q8 scales (NULL: f16) */
};


/* ---- SIMD attention over a shared prefix (f16 cache) ----------------------
 *
 * R decode rows (one per sequence) whose first P positions (P % 8 == 0)
 * are the same cache blocks, G query heads of one KV head each.  Every
 * (row, head) gets bitwise what attn_row_avx2 gives it alone: the same
 * score per position, the same softmax, and per output element the same
 * FMAs in position order.  Only the loop order changes: each 8-position
 * chunk of the prefix is read and converted once for all R rows (scores),
 * and each V chunk of it once for all R rows (P.V, the rows' accumulators
 * kept in acc between chunks); each row's own positions P.. follow as in
 * attn_row_avx2.  So the prefix's K/V cross the memory bus once per item,
 * not once per row. */
struct attn_group_job {
    int                      R;
    const float *const      *q;        /* [R] -> [G][D] */
    float *const            *out;      /* [R] -> [G][D] */
    const int64_t           *n_ctx;    /* [R] positions each row sees (>= P) */
    const struct batch_seq *const *seq;/* [R] for the offsets of positions P.. */
    int64_t                  P;
    const int64_t           *poffs;    /* [P] offsets of the prefix positions */
    int64_t                 *roffs;    /* [ctx_max] scratch */
    float                   *sc;       /* [R][G][ctx_stride], ctx_stride >= every n_ctx rounded up to 8 */
    float                   *acc;      /* [R][G][D] */
    int64_t                  ctx_stride, D, bs, kv_dim;
    const char              *kbase, *vbase;   /* this KV head's rows */
    float                    scale;
};


/* ---- one decode row split over the threads (f16 cache, AVX2) --------------
 *
 * At batch 1 the items are the KV heads (3 for SmolLM2): on 2 threads one
 * idles a third of the time, and each reads a 128-byte slice of every
 * 384-byte cache row, which streams from DRAM at a third of the rate of
 * whole rows.  Here the row's attention runs in three calls, each split
 * over all threads:
 *   1. scores: thread t takes a range of 8-position chunks and scores it
 *      for every head, reading whole K rows; lane maxima per thread;
 *   2. exp: the lane maxima of all threads give each head's max (max is
 *      exact, so the same as one pass); e_j in place, chunks split again;
 *   3. sums and P.V: each thread sums every head's e_j (8-lane, chunks in
 *      order: cheap) and computes a range of the output elements over all
 *      positions.
 * Every value is the same arithmetic as attn_row_avx2's (attn_scores8,
 * exp_avx2, the in-order lane sums, per-element FMAs in position order,
 * * (1 / sum)), so the output is bitwise what the grouped items give:
 * only the division of the work changes.  test_backend_cpu compares the
 * two.  Not with NaN scores (an f16 cache value that overflowed): max_ps
 * keeps its second operand on NaN, so lane maxima merged from threads can
 * differ from one pass's; such rows are garbage either way. */
struct attn_split {
    const float   *q;      /* [n_head][D] the row's query */
    float         *out;    /* [n_head][D] */
    const int64_t *offs;   /* [n_ctx] cache offsets (elements) */
    const char    *krow, *vrow; /* the layer's f16 K / V (bytes) */
    float         *sc;     /* [n_head][cs] scores, then numerators */
    float         *vmx;    /* [nth][n_head][8] lane maxima per thread */
    int64_t        n_ctx, cs, D, kv_dim;
    int            n_head, group;
    float          scale;
    int64_t        pf;     /* positions prefetched ahead */
};


/* The kernels of one build.  row_grouped: attention of one query row for G
 * heads of one KV head (attn_row_avx2's contract in attn_x86.inc);
 * group_run: a shared-prefix item; split_*: the three threadpool passes of
 * one decode row split over the threads (ctx: struct attn_split);
 * swiglu: o[n] = g / (1 + e^-g) * u. */
struct attn_x86_ops {
    const char *name;   /* "avx2", "avx512" */
    void (*row_grouped)(const float *q, float *out, float *sc, int64_t ctx_stride, const int64_t *offs,
                        const char *kbase, const char *vbase, const float *ksb, const float *vsb, const char *kpf,
                        const char *vpf, int64_t pf_bytes, struct attn_pf *pf, int64_t n_ctx, int64_t D, float scale,
                        int G, int q8);
    void (*group_run)(const struct attn_group_job *jb, int G);
    void (*split_scores)(void *ctx, int ith, int nth);
    void (*split_exp)(void *ctx, int ith, int nth);
    void (*split_pv)(void *ctx, int ith, int nth);
    void (*swiglu)(float *o, const float *g, const float *u, int64_t n);
};

#if defined(__x86_64__)
extern const struct attn_x86_ops attn_x86_avx2, attn_x86_avx512;
#endif

#endif
