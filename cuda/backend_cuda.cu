/* backend_cuda.cu - the CUDA backend: weights and KV cache on the device,
 * one step = the op sequence of backend_cpu.c, decode steps from CUDA graphs.
 *
 * Per-step inputs (token ids, positions, cache slots, per-sequence offsets,
 * CSR block tables, logits rows, prefill work items) are packed by the host
 * into one pinned int32 staging buffer with the layout of struct in_layout
 * and sent with one copy; kernels read them from the device copy.
 *
 * Graphs: a pure decode step (every sequence 1 token, LOGITS_LAST) of n
 * sequences runs as bucket B = the next power of two >= n (<= 512).  Rows
 * n..B-1 are padding: token 0 at position 0 writing into the scratch block
 * (physical block n_kv_blocks), logits never copied.  The graph of bucket B
 * is captured on first use with the in_layout of capacity B, so every
 * pointer it holds is fixed; each replay only refreshes the staging copy.
 * Invariants: a graph is valid while graph_gen matches (bumped when a buffer
 * it points to is reallocated); the decode split count is a function of B
 * alone; the decode attention derives each sequence's split length from its
 * ctx_len on the device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>

#include "ops.cuh"

extern "C" {
#include "backend_cuda.h"
}

#define GRAPH_BUCKETS   10    /* 1, 2, 4, ..., 512 */
#define GRAPH_MAX_BATCH 512
#define MAX_BATCH_DEFAULT 2048
#define MAX_SPLITS      16
#define CUBLAS_WS_BYTES (32u << 20)

struct layer_dev {
    struct dmat qkv, wo, gu, down;  /* qkv = [wq; wk; wv], gu = [gate; up] stacked rows */
    float *attn_norm, *ffn_norm;    /* [E] */
    float *bqkv;                    /* [q_dim + 2 kv_dim] or NULL */
    float *q_norm, *k_norm;         /* [D] or NULL */
};

/* int32 offsets of each section of the staging buffer for capacities
 * (tokens, seqs, work items, block indices) */
struct in_layout {
    int64_t tokens, pos, slot, q0, nq, pos0, ctx, lrows, work, indptr, indices, total;
};

struct step {
    int64_t T, S, R, W;
    int     decode, splits;
    struct in_layout L;
};

struct cuda_backend {
    struct backend base;
    int            device;
    cudaDeviceProp prop;
    cudaStream_t   st;
    struct mm_ctx  mm;
    void          *cublas_ws;

    int64_t q_dim, kv_dim, qkv_dim, E, F, V, D, max_T, max_K;
    int64_t slots_per_layer;       /* (n_kv_blocks + 1) * block_size */
    struct rope_args ra;
    int     use_decode_kernel;

    struct layer_dev *layers;      /* [n_layer] */
    struct dmat embd, out_w;       /* out_w unused (embd serves) when tied */
    int     tied;
    float  *out_norm;

    __half *kc, *vc;               /* [n_layer][slots_per_layer][kv_dim] */

    float  *x, *xn, *qkv, *q, *att, *gu, *hb; /* scratch, max_T rows */
    float  *part_o, *part_ml;
    int     fuse_q8;               /* rmsnorm/swiglu write the next GEMV's Q8 input (PARASERVE_CUDA_FUSE_Q8) */
    int64_t part_cap;              /* rows x heads x splits capacity */
    float  *logits;                /* [logits_cap][V] */
    int64_t logits_cap;

    int32_t *h_in, *d_in;          /* staging, in_cap int32 each */
    int64_t  in_cap;

    struct sample_param_dev *h_sp, *d_sp; /* [max_T] */
    const uint32_t **mask_ptrs;    /* [max_T] the mask callback's answer    */
    int32_t  *h_mrow, *d_mrow;     /* [max_T] row -> compact mask index or -1 */
    uint32_t *h_masks, *d_masks;   /* [masks_cap] compact masks, pinned / device */
    int64_t   masks_cap;           /* words, both buffers */
    int32_t  *h_tok, *d_tok;       /* [max_T] */

    int             graphs_on;
    cudaGraphExec_t graph[GRAPH_BUCKETS];
    uint64_t        graph_made_gen[GRAPH_BUCKETS];
    uint64_t        graph_gen;
    int64_t         graph_captures, graph_replays;
    int64_t         graph_nodes_last; /* nodes (kernels, memsets, copies) of the last captured step */
    double          last_host_us;
};

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

static struct in_layout layout_for(int64_t capT, int64_t capS, int64_t capW, int64_t capIdx)
{
    struct in_layout L;
    int64_t o = 0;
    L.tokens = o;  o += capT;
    L.pos = o;     o += capT;
    L.slot = o;    o += capT;
    L.lrows = o;   o += capT;
    L.q0 = o;      o += capS;
    L.nq = o;      o += capS;
    L.pos0 = o;    o += capS;
    L.ctx = o;     o += capS;
    L.indptr = o;  o += capS + 1;
    L.work = o;    o += 2 * capW;
    L.indices = o; o += capIdx;
    L.total = o;
    return L;
}

/* Split count of a decode step of B sequences: about two waves of blocks. */
static int decode_splits(const struct cuda_backend *cb, int64_t B)
{
    const int64_t blocks = B * cb->base.model->hp.n_head_kv;
    int64_t s = (2 * (int64_t)cb->prop.multiProcessorCount + blocks - 1) / blocks;
    return (int)(s < 1 ? 1 : (s > MAX_SPLITS ? MAX_SPLITS : s));
}

static int bucket_of(int64_t n)
{
    int b = 0;
    while ((1 << b) < n)
        b++;
    return b;
}

/* ---- device buffers ---------------------------------------------------- */

static int dev_alloc(void **p, size_t bytes, const char *what)
{
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        return ps_error_set(PS_ENOMEM, "backend_cuda: %s (%.1f MiB): %s", what, (double)bytes / (1 << 20),
                            cudaGetErrorString(e));
    }
    return PS_OK;
}

static int upload_vec(const struct weight *w, int64_t n, float **out, const char *what)
{
    *out = NULL;
    if (!w->data)
        return PS_OK;
    if (w->ne[0] * w->ne[1] != n)
        return ps_error_set(PS_EFORMAT, "backend_cuda: %s has %lld elements, expected %lld", what,
                            (long long)(w->ne[0] * w->ne[1]), (long long)n);
    float *h = (float *)malloc((size_t)n * sizeof(float));
    if (!h)
        return ps_error_set(PS_ENOMEM, "backend_cuda: out of host memory for %s", what);
    int rc = quant_row_dequantize(w->type, w->data, h, n);
    if (!rc)
        rc = dev_alloc((void **)out, (size_t)n * sizeof(float), what);
    if (!rc && cudaMemcpy(*out, h, (size_t)n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
        rc = ps_error_set(PS_EINTERNAL, "backend_cuda: upload %s: %s", what, cudaGetErrorString(cudaGetLastError()));
    free(h);
    return rc;
}

static int check_matrix(const struct weight *w, int64_t in, int64_t out, const char *what, int il)
{
    if (!w->data)
        return ps_error_set(PS_EFORMAT, "backend_cuda: layer %d: %s missing", il, what);
    if (w->ne[0] != in || w->ne[1] != out)
        return ps_error_set(PS_EFORMAT, "backend_cuda: layer %d: %s is [%lld x %lld], expected [%lld x %lld]", il,
                            what, (long long)w->ne[0], (long long)w->ne[1], (long long)in, (long long)out);
    return PS_OK;
}

static int ensure_in_cap(struct cuda_backend *cb, int64_t need)
{
    if (need <= cb->in_cap)
        return PS_OK;
    int64_t cap = cb->in_cap * 2 > need ? cb->in_cap * 2 : need;
    cudaFreeHost(cb->h_in);
    cudaFree(cb->d_in);
    cb->h_in = NULL;
    cb->d_in = NULL;
    cb->in_cap = 0;
    cb->graph_gen++;
    CUDA_TRY(cudaMallocHost((void **)&cb->h_in, (size_t)cap * sizeof(int32_t)));
    int rc = dev_alloc((void **)&cb->d_in, (size_t)cap * sizeof(int32_t), "step inputs");
    if (rc)
        return rc;
    cb->in_cap = cap;
    return PS_OK;
}

static int ensure_logits(struct cuda_backend *cb, int64_t rows)
{
    if (rows <= cb->logits_cap)
        return PS_OK;
    int64_t cap = rows < 64 ? 64 : rows;
    cudaFree(cb->logits);
    cb->logits = NULL;
    cb->logits_cap = 0;
    cb->graph_gen++;
    int rc = dev_alloc((void **)&cb->logits, (size_t)cap * cb->V * sizeof(float), "logits");
    if (rc)
        return rc;
    cb->logits_cap = cap;
    return PS_OK;
}

/* ---- plan -> staging ---------------------------------------------------- */

/* Fill the staging buffer for `plan`; pad_to > n_seqs pads a decode step
 * to its graph bucket.  Sets *s (sizes, layout).  Returns the int32 count to
 * copy in *n_copy. */
static int stage_plan(struct cuda_backend *cb, const struct batch_plan *plan, int64_t pad_to, int decode,
                      struct step *s, int64_t *n_copy)
{
    const int64_t bs = cb->base.cfg.block_size;
    int64_t T = 0, S = plan->n_seqs, R = 0, W = 0, n_idx = 0;
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        const struct batch_seq *q = &plan->seqs[i];
        T += q->n_tokens;
        R += q->logits == LOGITS_ALL ? q->n_tokens : (q->logits == LOGITS_LAST ? 1 : 0);
        W += (q->n_tokens + ATTN_PREFILL_TQ - 1) / ATTN_PREFILL_TQ;
        n_idx += ((int64_t)q->pos0 + q->n_tokens + bs - 1) / bs;
    }
    const int64_t n_pad = pad_to > S ? pad_to - S : 0;
    T += n_pad;
    R += n_pad;
    W += n_pad;
    n_idx += n_pad;
    const int64_t capS = S + n_pad;
    s->L = layout_for(T, capS, W, n_idx);
    int rc = ensure_in_cap(cb, s->L.total);
    if (rc)
        return rc;
    int32_t *h = cb->h_in;
    const struct in_layout *L = &s->L;
    int64_t t = 0, r = 0, w = 0, k = 0;
    for (int64_t i = 0; i < capS; i++) {
        const int pad = i >= S;
        const struct batch_seq *q = pad ? NULL : &plan->seqs[i];
        const int32_t nq = pad ? 1 : q->n_tokens, pos0 = pad ? 0 : q->pos0;
        const int64_t nb = pad ? 1 : ((int64_t)pos0 + nq + bs - 1) / bs;
        h[L->q0 + i] = (int32_t)t;
        h[L->nq + i] = nq;
        h[L->pos0 + i] = pos0;
        h[L->ctx + i] = pos0 + nq;
        h[L->indptr + i] = (int32_t)k;
        for (int64_t b = 0; b < nb; b++)
            h[L->indices + k + b] = pad ? cb->base.cfg.n_kv_blocks : q->block_table[b];
        for (int32_t j = 0; j < nq; j++) {
            const int32_t p = pos0 + j;
            const int32_t blk = pad ? cb->base.cfg.n_kv_blocks : q->block_table[p / bs];
            h[L->tokens + t + j] = pad ? 0 : q->tokens[j];
            h[L->pos + t + j] = p;
            h[L->slot + t + j] = (int32_t)(blk * bs + p % bs);
            if (pad || q->logits == LOGITS_ALL || (q->logits == LOGITS_LAST && j == nq - 1))
                h[L->lrows + r++] = (int32_t)(t + j);
        }
        for (int32_t j = 0; j < nq; j += ATTN_PREFILL_TQ) {
            h[L->work + 2 * w] = (int32_t)i;
            h[L->work + 2 * w + 1] = j;
            w++;
        }
        t += nq;
        k += nb;
    }
    h[L->indptr + capS] = (int32_t)k;
    s->T = T;
    s->S = capS;
    s->R = R;
    s->W = W;
    s->decode = decode;
    s->splits = decode ? decode_splits(cb, capS) : 1;
    *n_copy = L->total;
    return PS_OK;
}

/* ---- the step ----------------------------------------------------------- */

#define TRY(expr)          \
    do {                   \
        int rc_ = (expr);  \
        if (rc_)           \
            return rc_;    \
    } while (0)

/* The Q8 activation buffer as the input rows of W when the producer of
 * W's input may write them itself (W on the GEMV path, one chunk, K % 32 ==
 * 0), else NULL.  *tmp holds the returned descriptor. */
static const struct dq8 *fused_q8(const struct cuda_backend *cb, const struct dmat *W, int64_t T, int64_t K,
                                  struct dq8 *tmp)
{
    const int quantized = W->type == DT_Q4_0 || W->type == DT_Q4_1 || W->type == DT_Q8_0;
    if (!cb->fuse_q8 || !quantized || T > MMV_MAX_T || (T > cb->mm.mmv_max && W->f16) || K % 32 != 0)
        return NULL;
    *tmp = cb->mm.act;
    tmp->K = K;
    return tmp;
}

/* op_rmsnorm, writing W's Q8 input rows as well when fused_q8 allows. */
static int norm_for(struct cuda_backend *cb, const struct dmat *W, float *out, float *x, const float *w,
                    const int32_t *row_idx, int64_t rows, int64_t n)
{
    struct dq8 q;
    const struct dq8 *fq = fused_q8(cb, W, rows, n, &q);
    const float eps = cb->base.model->hp.rms_eps;
    if (!fq) {
        cb->mm.act_of = NULL;
        return op_rmsnorm(cb->st, out, x, NULL, w, row_idx, rows, n, eps);
    }
    int rc = op_rmsnorm_q8(cb->st, out, x, NULL, w, row_idx, rows, n, eps, fq);
    cb->mm.act_of = rc ? NULL : out;
    return rc;
}

static int run_step(struct cuda_backend *cb, const struct step *s)
{
    const struct model_hparams *hp = &cb->base.model->hp;
    cudaStream_t st = cb->st;
    const int32_t *in = cb->d_in;
    const struct in_layout *L = &s->L;
    const int64_t T = s->T, E = cb->E, F = cb->F;

    TRY(op_embed(st, &cb->embd, in + L->tokens, T, cb->x));
    for (int il = 0; il < hp->n_layer; il++) {
        const struct layer_dev *ld = &cb->layers[il];
        __half *kc = cb->kc + (size_t)il * cb->slots_per_layer * cb->kv_dim;
        __half *vc = cb->vc + (size_t)il * cb->slots_per_layer * cb->kv_dim;
        TRY(norm_for(cb, &ld->qkv, cb->xn, cb->x, ld->attn_norm, NULL, T, E));
        TRY(op_matmul(st, &cb->mm, &ld->qkv, cb->xn, E, T, cb->qkv, cb->qkv_dim, ld->bqkv, 0));
        TRY(op_qkv_rope_store(st, cb->qkv, cb->qkv_dim, T, in + L->pos, in + L->slot, ld->q_norm, ld->k_norm,
                              &cb->ra, cb->q, kc, vc));
        struct attn_kv kv = { kc, vc, cb->base.cfg.block_size, hp->n_head, hp->n_head_kv, hp->head_dim,
                              in + L->indptr, in + L->indices };
        if (s->decode)
            TRY(op_attn_decode(st, &kv, cb->q, cb->att, in + L->ctx, s->S, s->splits, cb->part_o, cb->part_ml));
        else
            TRY(op_attn_prefill(st, &kv, cb->q, cb->att, in + L->q0, in + L->nq, in + L->pos0, in + L->work, s->W));
        TRY(op_matmul(st, &cb->mm, &ld->wo, cb->att, cb->q_dim, T, cb->x, E, NULL, 1));
        TRY(norm_for(cb, &ld->gu, cb->xn, cb->x, ld->ffn_norm, NULL, T, E));
        TRY(op_matmul(st, &cb->mm, &ld->gu, cb->xn, E, T, cb->gu, 2 * F, NULL, 0));
        struct dq8 hq;
        const struct dq8 *fq = fused_q8(cb, &ld->down, T, F, &hq);
        TRY(op_swiglu(st, cb->gu, cb->hb, T, F, fq));
        cb->mm.act_of = fq ? cb->hb : NULL;
        TRY(op_matmul(st, &cb->mm, &ld->down, cb->hb, F, T, cb->x, E, NULL, 1));
    }
    if (s->R > 0) {
        TRY(norm_for(cb, cb->tied ? &cb->embd : &cb->out_w, cb->xn, cb->x, cb->out_norm, in + L->lrows, s->R, E));
        TRY(op_matmul(st, &cb->mm, cb->tied ? &cb->embd : &cb->out_w, cb->xn, E, s->R, cb->logits, cb->V, NULL, 0));
    }
    return PS_OK;
}

static int graph_run(struct cuda_backend *cb, const struct step *s, int bi)
{
    if (cb->graph[bi] && cb->graph_made_gen[bi] != cb->graph_gen) {
        cudaGraphExecDestroy(cb->graph[bi]);
        cb->graph[bi] = NULL;
    }
    if (!cb->graph[bi]) {
        cudaGraph_t g = NULL;
        CUDA_TRY(cudaStreamBeginCapture(cb->st, cudaStreamCaptureModeThreadLocal));
        int rc = run_step(cb, s);
        cudaError_t e = cudaStreamEndCapture(cb->st, &g);
        if (rc) {
            if (g)
                cudaGraphDestroy(g);
            return rc;
        }
        if (e != cudaSuccess)
            return ps_error_set(PS_EINTERNAL, "backend_cuda: graph capture (bucket %lld): %s", (long long)s->S,
                                cudaGetErrorString(e));
        size_t n_nodes = 0;
        if (cudaGraphGetNodes(g, NULL, &n_nodes) == cudaSuccess)
            cb->graph_nodes_last = (int64_t)n_nodes;
        e = cudaGraphInstantiate(&cb->graph[bi], g, 0);
        cudaGraphDestroy(g);
        if (e != cudaSuccess) {
            cb->graph[bi] = NULL;
            return ps_error_set(PS_EINTERNAL, "backend_cuda: graph instantiate: %s", cudaGetErrorString(e));
        }
        cb->graph_made_gen[bi] = cb->graph_gen;
        cb->graph_captures++;
    }
    CUDA_TRY(cudaGraphLaunch(cb->graph[bi], cb->st));
    cb->graph_replays++;
    return PS_OK;
}

/* Stage, copy and launch the step; the logits of its R real rows are in
 * cb->logits when the stream reaches this point.  *rows = R. */
static int launch_plan(struct cuda_backend *cb, const struct batch_plan *plan, int64_t *rows)
{
    const double t0 = now_us();
    int decode = cb->use_decode_kernel && plan->n_seqs <= GRAPH_MAX_BATCH;
    int all_last = 1;
    for (int32_t i = 0; i < plan->n_seqs && decode; i++) {
        decode = plan->seqs[i].n_tokens == 1;
        all_last &= plan->seqs[i].logits == LOGITS_LAST;
    }
    const int use_graph = decode && all_last && cb->graphs_on && plan->n_seqs <= cb->max_T;
    int bi = use_graph ? bucket_of(plan->n_seqs) : -1;
    int64_t pad_to = use_graph ? ((int64_t)1 << bi) : 0;
    if (use_graph && pad_to > cb->max_T) {
        bi = -1;
        pad_to = 0;
    }
    struct step s;
    int64_t n_copy;
    int rc = stage_plan(cb, plan, pad_to, decode, &s, &n_copy);
    if (rc)
        return rc;
    if ((rc = ensure_logits(cb, s.R)))
        return rc;
    CUDA_TRY(cudaSetDevice(cb->device));
    CUDA_TRY(cudaMemcpyAsync(cb->d_in, cb->h_in, (size_t)n_copy * sizeof(int32_t), cudaMemcpyHostToDevice, cb->st));
    /* a bucket's layout offsets depend on B alone (the block indices come
     * last), so the pointers its graph holds stay valid across steps */
    if (bi >= 0) {
        rc = graph_run(cb, &s, bi);
    } else {
        rc = run_step(cb, &s);
    }
    if (rc)
        return rc;
    cb->last_host_us = now_us() - t0;
    *rows = 0;
    for (int32_t i = 0; i < plan->n_seqs; i++)
        *rows += plan->seqs[i].logits == LOGITS_ALL ? plan->seqs[i].n_tokens : (plan->seqs[i].logits == LOGITS_LAST);
    return PS_OK;
}

static int cuda_forward(backend *be, const struct batch_plan *plan, float *logits)
{
    struct cuda_backend *cb = (struct cuda_backend *)be;
    int64_t rows;
    int rc = launch_plan(cb, plan, &rows);
    if (rc)
        return rc;
    if (rows > 0)
        CUDA_TRY(cudaMemcpyAsync(logits, cb->logits, (size_t)rows * cb->V * sizeof(float), cudaMemcpyDeviceToHost,
                                 cb->st));
    CUDA_TRY(cudaStreamSynchronize(cb->st));
    return PS_OK;
}

static int cuda_copy_block(backend *be, int32_t src, int32_t dst)
{
    struct cuda_backend *cb = (struct cuda_backend *)be;
    const size_t blk = (size_t)be->cfg.block_size * cb->kv_dim;
    CUDA_TRY(cudaSetDevice(cb->device));
    for (int il = 0; il < be->model->hp.n_layer; il++) {
        const size_t base = (size_t)il * cb->slots_per_layer * cb->kv_dim;
        CUDA_TRY(cudaMemcpyAsync(cb->kc + base + (size_t)dst * blk, cb->kc + base + (size_t)src * blk,
                                 blk * sizeof(__half), cudaMemcpyDeviceToDevice, cb->st));
        CUDA_TRY(cudaMemcpyAsync(cb->vc + base + (size_t)dst * blk, cb->vc + base + (size_t)src * blk,
                                 blk * sizeof(__half), cudaMemcpyDeviceToDevice, cb->st));
    }
    CUDA_TRY(cudaStreamSynchronize(cb->st));
    return PS_OK;
}

static void cuda_free(backend *be)
{
    struct cuda_backend *cb = (struct cuda_backend *)be;
    if (!cb)
        return;
    cudaSetDevice(cb->device);
    if (cb->st)
        cudaStreamSynchronize(cb->st);
    for (int i = 0; i < GRAPH_BUCKETS; i++)
        if (cb->graph[i])
            cudaGraphExecDestroy(cb->graph[i]);
    if (cb->layers) {
        for (int il = 0; il < be->model->hp.n_layer; il++) {
            struct layer_dev *ld = &cb->layers[il];
            dmat_free(&ld->qkv);
            dmat_free(&ld->wo);
            dmat_free(&ld->gu);
            dmat_free(&ld->down);
            cudaFree(ld->attn_norm);
            cudaFree(ld->ffn_norm);
            cudaFree(ld->bqkv);
            cudaFree(ld->q_norm);
            cudaFree(ld->k_norm);
        }
        free(cb->layers);
    }
    dmat_free(&cb->embd);
    dmat_free(&cb->out_w);
    cudaFree(cb->out_norm);
    cudaFree(cb->kc);
    cudaFree(cb->vc);
    cudaFree(cb->x);
    cudaFree(cb->xn);
    cudaFree(cb->qkv);
    cudaFree(cb->q);
    cudaFree(cb->att);
    cudaFree(cb->gu);
    cudaFree(cb->hb);
    cudaFree(cb->part_o);
    cudaFree(cb->part_ml);
    cudaFree(cb->logits);
    cudaFree(cb->mm.act.qs);
    cudaFree(cb->mm.act.d);
    cudaFree(cb->mm.act.s);
    cudaFree(cb->mm.act16);
    cudaFreeHost(cb->h_in);
    cudaFree(cb->d_in);
    cudaFreeHost(cb->h_sp);
    cudaFree(cb->d_sp);
    free(cb->mask_ptrs);
    cudaFreeHost(cb->h_mrow);
    cudaFree(cb->d_mrow);
    cudaFreeHost(cb->h_masks);
    cudaFree(cb->d_masks);
    cudaFreeHost(cb->h_tok);
    cudaFree(cb->d_tok);
    if (cb->mm.cublas)
        cublasDestroy(cb->mm.cublas);
    cudaFree(cb->cublas_ws);
    if (cb->st)
        cudaStreamDestroy(cb->st);
    free(cb);
}

/* Room for `words` words of compact masks, pinned and on the device.  Only
 * between steps' copies: the caller has no copy from either buffer in
 * flight (every forward_sample ends synchronized); the stream is
 * synchronized here anyway before the old buffers go. */
static int ensure_masks(struct cuda_backend *cb, int64_t words)
{
    if (words <= cb->masks_cap)
        return PS_OK;
    int64_t cap = cb->masks_cap * 2 > words ? cb->masks_cap * 2 : words;
    CUDA_TRY(cudaStreamSynchronize(cb->st));
    cudaFreeHost(cb->h_masks);
    cudaFree(cb->d_masks);
    cb->h_masks = NULL;
    cb->d_masks = NULL;
    cb->masks_cap = 0;
    CUDA_TRY(cudaMallocHost((void **)&cb->h_masks, (size_t)cap * sizeof(uint32_t)));
    int rc = dev_alloc((void **)&cb->d_masks, (size_t)cap * sizeof(uint32_t), "token masks");
    if (rc)
        return rc;
    cb->masks_cap = cap;
    return PS_OK;
}

/* ops->forward_sample (backend.h has the contract; backend_forward_sample
 * validated the plan and params).  Stream order: inputs, forward (graph or
 * kernels), params; then, while the device runs those, the host asks
 * mask_fn for the masks and packs the constrained rows' bitsets into pinned
 * memory; then mask upload, sample_kernel, ids back, one synchronize. */
static int cuda_forward_sample(backend *be, const struct batch_plan *plan, const struct backend_sample_params *params,
                               backend_mask_fn mask_fn, void *mask_ud, int32_t *tokens)
{
    struct cuda_backend *cb = (struct cuda_backend *)be;
    int64_t rows;
    int rc = launch_plan(cb, plan, &rows);
    if (rc)
        goto sync;
    if (rows == 0)
        goto sync;
    if (rows > cb->max_T) { /* rows <= tokens <= max_batch_tokens = max_T */
        rc = ps_error_set(PS_EINTERNAL, "backend_cuda: %lld sampling rows exceed %lld", (long long)rows,
                          (long long)cb->max_T);
        goto sync;
    }
    for (int64_t r = 0; r < rows; r++) {
        struct sample_param_dev *d = &cb->h_sp[r];
        d->temperature = params[r].temperature;
        d->top_k = params[r].top_k;
        d->top_p = params[r].top_p;
        d->min_p = params[r].min_p;
        d->seed = params[r].seed;
        d->step = params[r].step;
    }
    CUDA_TRY(cudaMemcpyAsync(cb->d_sp, cb->h_sp, (size_t)rows * sizeof *cb->h_sp, cudaMemcpyHostToDevice, cb->st));
    {
        const int64_t words = (cb->V + 31) / 32;
        int32_t n_masked = 0;
        if (mask_fn) {
            for (int64_t r = 0; r < rows; r++)
                cb->mask_ptrs[r] = NULL;
            if ((rc = mask_fn(mask_ud, cb->mask_ptrs, rows)))
                goto sync;
            for (int64_t r = 0; r < rows; r++)
                n_masked += cb->mask_ptrs[r] != NULL;
        }
        if (n_masked) {
            if ((rc = ensure_masks(cb, (int64_t)n_masked * words)))
                goto sync;
            int32_t k = 0;
            for (int64_t r = 0; r < rows; r++) {
                if (!cb->mask_ptrs[r]) {
                    cb->h_mrow[r] = -1;
                    continue;
                }
                memcpy(cb->h_masks + (size_t)k * words, cb->mask_ptrs[r], (size_t)words * sizeof(uint32_t));
                cb->h_mrow[r] = k++;
            }
            CUDA_TRY(cudaMemcpyAsync(cb->d_mrow, cb->h_mrow, (size_t)rows * sizeof(int32_t), cudaMemcpyHostToDevice,
                                     cb->st));
            CUDA_TRY(cudaMemcpyAsync(cb->d_masks, cb->h_masks, (size_t)k * words * sizeof(uint32_t),
                                     cudaMemcpyHostToDevice, cb->st));
        }
        if ((rc = op_sample_rows(cb->st, cb->logits, rows, (int32_t)cb->V, cb->d_sp, n_masked ? cb->d_masks : NULL,
                                 (int32_t)words, n_masked ? cb->d_mrow : NULL, cb->d_tok)))
            goto sync;
    }
    CUDA_TRY(cudaMemcpyAsync(cb->h_tok, cb->d_tok, (size_t)rows * sizeof(int32_t), cudaMemcpyDeviceToHost, cb->st));
    CUDA_TRY(cudaStreamSynchronize(cb->st));
    for (int64_t r = 0; r < rows; r++)
        tokens[r] = cb->h_tok[r];
    return PS_OK;
sync:
    /* leave the backend idle: nothing of this call still runs on return */
    if (cudaStreamSynchronize(cb->st) != cudaSuccess && !rc)
        rc = ps_error_set(PS_EINTERNAL, "backend_cuda: %s", cudaGetErrorString(cudaGetLastError()));
    return rc;
}

static const struct backend_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .forward = */ cuda_forward,
    /* .copy_block = */ cuda_copy_block,
    /* .free = */ cuda_free,
    /* .forward_sample = */ cuda_forward_sample,
};

/* ---- public entry points ------------------------------------------------- */

extern "C" int cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver / no device" */
        return 0;
    }
    return n;
}

#undef TRY
#define TRY(expr)             \
    do {                      \
        rc = (expr);          \
        if (rc)               \
            goto fail;        \
    } while (0)
#define CUDA_GO(call)                                                                            \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            rc = ps_error_set(PS_EINTERNAL, "cuda: %s:%d: %s: %s", __FILE__, __LINE__, #call,     \
                              cudaGetErrorString(e_));                                           \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)
#define DALLOC(ptr, count, what) TRY(dev_alloc((void **)&(ptr), (size_t)(count) * sizeof *(ptr), what))

extern "C" int backend_cuda_create(const struct model *m, const struct backend_config *cfg, backend **out)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    int n_dev = 0;
    cudaError_t ce = cudaGetDeviceCount(&n_dev);
    if (ce != cudaSuccess || n_dev < 1) {
        cudaGetLastError();
        return ps_error_set(PS_EUNSUPPORTED, "no CUDA device: %s",
                            ce != cudaSuccess ? cudaGetErrorString(ce) : "the driver reports 0 devices");
    }
    if (cfg->n_kv_blocks < 1 || cfg->block_size < 1 || cfg->max_batch_tokens < 0)
        return ps_error_set(PS_EINVAL, "backend_cuda: bad config (n_kv_blocks %d, block_size %d, max_batch_tokens %d)",
                            (int)cfg->n_kv_blocks, (int)cfg->block_size, (int)cfg->max_batch_tokens);
    if (cfg->kv_type != KV_F16)
        return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: only an f16 KV cache is supported (kv_type %d)",
                            (int)cfg->kv_type);
    if (hp->n_head < 1 || hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv || hp->rope_dim % 2 ||
        hp->rope_dim > hp->head_dim ||
        (hp->head_dim != 16 && hp->head_dim != 32 && hp->head_dim != 64 && hp->head_dim != 80 &&
         hp->head_dim != 96 && hp->head_dim != 128))
        return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: heads n_head %d n_head_kv %d head_dim %d rope_dim %d "
                            "(kernels have head_dim 16, 32, 64, 80, 96, 128)", (int)hp->n_head, (int)hp->n_head_kv,
                            (int)hp->head_dim, (int)hp->rope_dim);
    if (hp->n_embd % 32 || hp->n_ff % 32)
        return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: n_embd %d / n_ff %d not multiples of 32",
                            (int)hp->n_embd, (int)hp->n_ff);

    int rc = PS_OK;
    struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof *cb);
    if (!cb)
        return ps_error_set(PS_ENOMEM, "backend_cuda: out of memory");
    cb->base.ops = &cuda_ops;
    cb->base.model = m;
    cb->base.cfg = *cfg;
    if (cb->base.cfg.max_batch_tokens == 0)
        cb->base.cfg.max_batch_tokens = MAX_BATCH_DEFAULT;
    cb->device = env_int("PARASERVE_CUDA_DEVICE", 0);
    if (cb->device < 0 || cb->device >= n_dev) {
        rc = ps_error_set(PS_EINVAL, "backend_cuda: PARASERVE_CUDA_DEVICE=%d but %d device(s)", cb->device, n_dev);
        goto fail;
    }
    if (cudaSetDevice(cb->device) != cudaSuccess || cudaGetDeviceProperties(&cb->prop, cb->device) != cudaSuccess) {
        rc = ps_error_set(PS_EUNSUPPORTED, "no CUDA device: %s", cudaGetErrorString(cudaGetLastError()));
        goto fail;
    }
    if (cb->prop.major < 8) {
        rc = ps_error_set(PS_EUNSUPPORTED, "backend_cuda: %s is compute capability %d.%d; built for 8.0 and 9.0",
                          cb->prop.name, cb->prop.major, cb->prop.minor);
        goto fail;
    }
    CUDA_GO(cudaStreamCreateWithFlags(&cb->st, cudaStreamNonBlocking));

    {
        cb->E = hp->n_embd;
        cb->F = hp->n_ff;
        cb->V = hp->n_vocab;
        cb->D = hp->head_dim;
        cb->q_dim = (int64_t)hp->n_head * hp->head_dim;
        cb->kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
        cb->qkv_dim = cb->q_dim + 2 * cb->kv_dim;
        cb->max_T = cb->base.cfg.max_batch_tokens;
        cb->max_K = cb->E > cb->F ? cb->E : cb->F;
        if (cb->q_dim > cb->max_K)
            cb->max_K = cb->q_dim;
        cb->slots_per_layer = ((int64_t)cfg->n_kv_blocks + 1) * cfg->block_size;
        cb->ra.n_head = hp->n_head;
        cb->ra.n_head_kv = hp->n_head_kv;
        cb->ra.head_dim = hp->head_dim;
        cb->ra.rope_dim = hp->rope_dim;
        cb->ra.neox = hp->rope_style == ROPE_NEOX;
        cb->ra.theta_scale = hp->rope_dim > 0 ? powf(hp->rope_theta, -2.0f / (float)hp->rope_dim) : 1.0f;
        cb->ra.freq_scale = hp->rope_freq_scale;
        cb->ra.eps = hp->rms_eps;
        cb->use_decode_kernel = (hp->n_head / hp->n_head_kv) * hp->head_dim <= 2048 &&
                                (hp->n_head / hp->n_head_kv) <= 16;
        cb->graphs_on = env_int("PARASERVE_CUDA_GRAPHS", 1) != 0;
        cb->fuse_q8 = env_int("PARASERVE_CUDA_FUSE_Q8", 1) != 0;
        int mmv = env_int("PARASERVE_CUDA_MMV_MAX", MMV_MAX_T);
        cb->mm.mmv_max = mmv < 0 ? 0 : (mmv > MMV_MAX_T ? MMV_MAX_T : mmv);
        const int make_f16 = env_int("PARASERVE_CUDA_F16_WEIGHTS", 1) != 0;

        /* weights */
        cb->layers = (struct layer_dev *)calloc((size_t)hp->n_layer, sizeof *cb->layers);
        if (!cb->layers) {
            rc = ps_error_set(PS_ENOMEM, "backend_cuda: out of memory");
            goto fail;
        }
        for (int il = 0; il < hp->n_layer; il++) {
            const struct layer_weights *lw = &m->layers[il];
            struct layer_dev *ld = &cb->layers[il];
            TRY(check_matrix(&lw->wq, cb->E, cb->q_dim, "attn_q", il));
            TRY(check_matrix(&lw->wk, cb->E, cb->kv_dim, "attn_k", il));
            TRY(check_matrix(&lw->wv, cb->E, cb->kv_dim, "attn_v", il));
            TRY(check_matrix(&lw->wo, cb->q_dim, cb->E, "attn_output", il));
            TRY(check_matrix(&lw->w_gate, cb->E, cb->F, "ffn_gate", il));
            TRY(check_matrix(&lw->w_up, cb->E, cb->F, "ffn_up", il));
            TRY(check_matrix(&lw->w_down, cb->F, cb->E, "ffn_down", il));
            {
                const void *d3[3] = { lw->wq.data, lw->wk.data, lw->wv.data };
                const enum dtype t3[3] = { lw->wq.type, lw->wk.type, lw->wv.type };
                const int64_t n3[3] = { cb->q_dim, cb->kv_dim, cb->kv_dim };
                TRY(dmat_upload_stack(d3, t3, n3, 3, cb->E, make_f16, cb->st, &ld->qkv));
                const void *d2[2] = { lw->w_gate.data, lw->w_up.data };
                const enum dtype t2[2] = { lw->w_gate.type, lw->w_up.type };
                const int64_t n2[2] = { cb->F, cb->F };
                TRY(dmat_upload_stack(d2, t2, n2, 2, cb->E, make_f16, cb->st, &ld->gu));
            }
            TRY(dmat_upload(lw->wo.data, lw->wo.type, cb->q_dim, cb->E, make_f16, cb->st, &ld->wo));
            TRY(dmat_upload(lw->w_down.data, lw->w_down.type, cb->F, cb->E, make_f16, cb->st, &ld->down));
            TRY(upload_vec(&lw->attn_norm, cb->E, &ld->attn_norm, "attn_norm"));
            TRY(upload_vec(&lw->ffn_norm, cb->E, &ld->ffn_norm, "ffn_norm"));
            TRY(upload_vec(&lw->q_norm, cb->D, &ld->q_norm, "attn_q_norm"));
            TRY(upload_vec(&lw->k_norm, cb->D, &ld->k_norm, "attn_k_norm"));
            if (!ld->attn_norm || !ld->ffn_norm) {
                rc = ps_error_set(PS_EFORMAT, "backend_cuda: layer %d: norm weight missing", il);
                goto fail;
            }
            if (lw->bq.data || lw->bk.data || lw->bv.data) {
                float *h = (float *)calloc((size_t)cb->qkv_dim, sizeof(float));
                if (!h) {
                    rc = ps_error_set(PS_ENOMEM, "backend_cuda: out of memory");
                    goto fail;
                }
                const struct weight *bw[3] = { &lw->bq, &lw->bk, &lw->bv };
                const int64_t off[3] = { 0, cb->q_dim, cb->q_dim + cb->kv_dim };
                const int64_t len[3] = { cb->q_dim, cb->kv_dim, cb->kv_dim };
                for (int j = 0; j < 3 && !rc; j++) {
                    if (!bw[j]->data)
                        continue;
                    if (bw[j]->ne[0] * bw[j]->ne[1] != len[j])
                        rc = ps_error_set(PS_EFORMAT, "backend_cuda: layer %d: qkv bias %d has the wrong size", il, j);
                    else
                        rc = quant_row_dequantize(bw[j]->type, bw[j]->data, h + off[j], len[j]);
                }
                if (!rc)
                    rc = dev_alloc((void **)&ld->bqkv, (size_t)cb->qkv_dim * sizeof(float), "qkv bias");
                if (!rc && cudaMemcpy(ld->bqkv, h, (size_t)cb->qkv_dim * sizeof(float), cudaMemcpyHostToDevice) !=
                               cudaSuccess)
                    rc = ps_error_set(PS_EINTERNAL, "backend_cuda: upload qkv bias");
                free(h);
                if (rc)
                    goto fail;
            }
        }
        if (!m->tok_embd.data || m->tok_embd.ne[0] != cb->E || m->tok_embd.ne[1] != cb->V) {
            rc = ps_error_set(PS_EFORMAT, "backend_cuda: token_embd missing or not [%lld x %lld]", (long long)cb->E,
                              (long long)cb->V);
            goto fail;
        }
        cb->tied = m->output.data == m->tok_embd.data;
        TRY(dmat_upload(m->tok_embd.data, m->tok_embd.type, cb->E, cb->V, make_f16 && cb->tied, cb->st, &cb->embd));
        if (!cb->tied) {
            TRY(check_matrix(&m->output, cb->E, cb->V, "output", -1));
            TRY(dmat_upload(m->output.data, m->output.type, cb->E, cb->V, make_f16, cb->st, &cb->out_w));
        }
        TRY(upload_vec(&m->output_norm, cb->E, &cb->out_norm, "output_norm"));
        if (!cb->out_norm) {
            rc = ps_error_set(PS_EFORMAT, "backend_cuda: output_norm missing");
            goto fail;
        }

        /* KV cache */
        const int64_t cache = (int64_t)hp->n_layer * cb->slots_per_layer * cb->kv_dim;
        DALLOC(cb->kc, cache, "K cache");
        DALLOC(cb->vc, cache, "V cache");
        CUDA_GO(cudaMemset(cb->kc, 0, (size_t)cache * sizeof(__half)));
        CUDA_GO(cudaMemset(cb->vc, 0, (size_t)cache * sizeof(__half)));

        /* scratch */
        const int64_t T = cb->max_T;
        DALLOC(cb->x, T * cb->E, "activations");
        DALLOC(cb->xn, T * cb->E, "activations");
        DALLOC(cb->qkv, T * cb->qkv_dim, "activations");
        DALLOC(cb->q, T * cb->q_dim, "activations");
        DALLOC(cb->att, T * cb->q_dim, "activations");
        DALLOC(cb->gu, T * 2 * cb->F, "activations");
        DALLOC(cb->hb, T * cb->F, "activations");
        DALLOC(cb->mm.act.qs, T * cb->max_K, "quantized activations");
        DALLOC(cb->mm.act.d, T * cb->max_K / 32, "quantized activations");
        DALLOC(cb->mm.act.s, T * cb->max_K / 32, "quantized activations");
        cb->mm.act.K = cb->max_K;
        DALLOC(cb->mm.act16, T * cb->max_K, "f16 activations");
        int64_t part = 0;
        for (int64_t B = 1; B <= GRAPH_MAX_BATCH && B <= T; B++) {
            const int64_t p = B * decode_splits(cb, B);
            part = p > part ? p : part;
        }
        cb->part_cap = part;
        DALLOC(cb->part_o, part * hp->n_head * cb->D, "attention partials");
        DALLOC(cb->part_ml, part * hp->n_head * 2, "attention partials");
        TRY(ensure_in_cap(cb, layout_for(T, T, T + T / ATTN_PREFILL_TQ + 1, cfg->n_kv_blocks + 64).total));
        CUDA_GO(cudaMallocHost((void **)&cb->h_sp, (size_t)T * sizeof *cb->h_sp));
        DALLOC(cb->d_sp, T, "sampling parameters");
        CUDA_GO(cudaMallocHost((void **)&cb->h_tok, (size_t)T * sizeof *cb->h_tok));
        DALLOC(cb->d_tok, T, "sampled tokens");
        CUDA_GO(cudaMallocHost((void **)&cb->h_mrow, (size_t)T * sizeof *cb->h_mrow));
        DALLOC(cb->d_mrow, T, "mask rows");
        cb->mask_ptrs = (const uint32_t **)calloc((size_t)T, sizeof *cb->mask_ptrs);
        if (!cb->mask_ptrs) {
            rc = ps_error_set(PS_ENOMEM, "backend_cuda: out of memory for %lld mask pointers", (long long)T);
            goto fail;
        }

        if (cublasCreate(&cb->mm.cublas) != CUBLAS_STATUS_SUCCESS) {
            cb->mm.cublas = NULL;
            rc = ps_error_set(PS_EINTERNAL, "backend_cuda: cublasCreate failed");
            goto fail;
        }
        TRY(dev_alloc(&cb->cublas_ws, CUBLAS_WS_BYTES, "cuBLAS workspace"));
        if (cublasSetWorkspace(cb->mm.cublas, cb->cublas_ws, CUBLAS_WS_BYTES) != CUBLAS_STATUS_SUCCESS ||
            cublasSetStream(cb->mm.cublas, cb->st) != CUBLAS_STATUS_SUCCESS) {
            rc = ps_error_set(PS_EINTERNAL, "backend_cuda: cuBLAS workspace/stream setup failed");
            goto fail;
        }
        CUDA_GO(cudaStreamSynchronize(cb->st));
    }
    *out = &cb->base;
    return PS_OK;
fail:
    cuda_free(&cb->base);
    return rc;
}

struct dense_masks {
    const uint32_t *masks; /* [rows][words] */
    int64_t         words;
};

static int dense_mask_rows(void *ud, const uint32_t **masks, int64_t rows)
{
    const struct dense_masks *d = (const struct dense_masks *)ud;
    for (int64_t r = 0; r < rows; r++)
        masks[r] = d->masks + r * d->words;
    return PS_OK;
}

extern "C" int backend_cuda_forward_sample(backend *be, const struct batch_plan *plan,
                                           const struct cuda_sample_params *params, const uint32_t *masks,
                                           int32_t *tokens)
{
    if (!be || be->ops != &cuda_ops)
        return ps_error_set(PS_EINVAL, "backend_cuda_forward_sample: not a CUDA backend");
    struct cuda_backend *cb = (struct cuda_backend *)be;
    struct dense_masks dm = { masks, (cb->V + 31) / 32 };
    int rc = backend_forward_sample(be, plan, params, masks ? dense_mask_rows : NULL, &dm, tokens);
    if (rc)
        return rc;
    const int64_t rows = backend_logits_rows(plan);
    for (int64_t r = 0; r < rows; r++)
        if (tokens[r] < 0)
            return ps_error_set(PS_EINVAL, "backend_cuda_forward_sample: row %lld: the token mask allows no token",
                                (long long)r);
    return PS_OK;
}

extern "C" int backend_cuda_info(const backend *be, struct cuda_backend_info *out)
{
    if (!be || be->ops != &cuda_ops)
        return ps_error_set(PS_EINVAL, "backend_cuda_info: not a CUDA backend");
    const struct cuda_backend *cb = (const struct cuda_backend *)be;
    memset(out, 0, sizeof *out);
    snprintf(out->device, sizeof out->device, "%s", cb->prop.name);
    out->cc_major = cb->prop.major;
    out->cc_minor = cb->prop.minor;
    out->n_sm = cb->prop.multiProcessorCount;
    out->mem_total = (int64_t)cb->prop.totalGlobalMem;
    int64_t q = 0, f = 0;
    for (int il = 0; il < be->model->hp.n_layer; il++) {
        const struct layer_dev *ld = &cb->layers[il];
        const struct dmat *ms[4] = { &ld->qkv, &ld->wo, &ld->gu, &ld->down };
        for (int j = 0; j < 4; j++) {
            q += dmat_bytes_quant(ms[j]);
            f += ms[j]->N * ms[j]->K * 2;
        }
    }
    const struct dmat *o = cb->tied ? &cb->embd : &cb->out_w;
    q += dmat_bytes_quant(o);
    f += o->N * o->K * 2;
    out->weight_bytes_gemv = q;
    out->weight_bytes_f16 = f;
    out->kv_bytes_per_token = (int64_t)be->model->hp.n_layer * cb->kv_dim * 2 * 2;
    out->mmv_max = cb->mm.mmv_max;
    out->graphs = cb->graphs_on;
    out->last_host_us = cb->last_host_us;
    out->graph_captures = cb->graph_captures;
    out->graph_replays = cb->graph_replays;
    out->graph_nodes_last = cb->graph_nodes_last;
    return PS_OK;
}

extern "C" int backend_cuda_fill_kv_random(backend *be, uint64_t seed)
{
    if (!be || be->ops != &cuda_ops)
        return ps_error_set(PS_EINVAL, "backend_cuda_fill_kv_random: not a CUDA backend");
    struct cuda_backend *cb = (struct cuda_backend *)be;
    const int64_t n = (int64_t)be->model->hp.n_layer * cb->slots_per_layer * cb->kv_dim;
    int rc = op_fill_random_f16(cb->st, cb->kc, n, 1.0f, seed);
    if (!rc)
        rc = op_fill_random_f16(cb->st, cb->vc, n, 1.0f, seed ^ 0x5bd1e995u);
    if (rc)
        return rc;
    CUDA_TRY(cudaStreamSynchronize(cb->st));
    return PS_OK;
}
