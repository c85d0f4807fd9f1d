/* attention.cu - causal attention over the paged f16 KV cache, GQA.
 *
 * Both kernels stream K/V in chunks of ATT_CHUNK positions through shared
 * memory and keep an online softmax (running max m, running sum l, f32),
 * flash-attention style; scores are q . k * 1/sqrt(D) in f32 with q in f32
 * and k converted from f16, as the CPU computes them.
 *
 * Prefill: one block per (work item = ATTN_PREFILL_TQ query tokens of one
 *   sequence, query head); variable-length sequences in one launch.
 * Decode: one block per (sequence, kv head, split); the block serves all
 *   `group` query heads of its kv head, so each K/V row is read once per
 *   step (GQA).  Split-K: split sp of S covers positions
 *   [sp*L, min(ctx, (sp+1)*L)), L = roundup(ceil(ctx/S), ATT_CHUNK), then a
 *   combine kernel merges the partial (acc, m, l) of the splits.
 *
 * NOTE: K rows in shared memory are padded by 2 halves so that threads
 * reading consecutive rows at the same column hit different banks. */
#include "ops.cuh"

#define ATT_THREADS 128
#define ATT_CHUNK   64
#define DEC_MAX_GD  2048   /* group * head_dim served by one decode block */

/* Load rows [c, c+n) of one kv head into sK [ATT_CHUNK][D+2], sV [ATT_CHUNK][D]. */
template <int D>
__device__ __forceinline__ void load_kv_chunk(const struct attn_kv &kv, int64_t kv_dim, int hk, const int32_t *blocks,
                                              int c, int n, __half *sK, __half *sV)
{
    constexpr int V8 = D / 8; /* 16-byte vectors per row */
    for (int i = threadIdx.x; i < n * V8; i += blockDim.x) {
        const int j = i / V8, v = i % V8;
        const int p = c + j;
        const int64_t slot = (int64_t)blocks[p / kv.block_size] * kv.block_size + p % kv.block_size;
        const int64_t off = slot * kv_dim + (int64_t)hk * D + v * 8;
        const uint4 kk = *(const uint4 *)(kv.kc + off);
        const uint4 vv = *(const uint4 *)(kv.vc + off);
        /* sK rows are 4-byte aligned only (padding): store as 4 words */
        uint32_t *kd = (uint32_t *)(sK + j * (D + 2) + v * 8);
        kd[0] = kk.x; kd[1] = kk.y; kd[2] = kk.z; kd[3] = kk.w;
        *(uint4 *)(sV + j * D + v * 8) = vv;
    }
}

/* dot of f32 q (shared, D) and an f16 K row (shared, padded) */
template <int D>
__device__ __forceinline__ float dot_q_k(const float *q, const __half *k)
{
    float s = 0.0f;
#pragma unroll 8
    for (int d = 0; d < D; d += 2) {
        const float2 kf = __half22float2(*(const __half2 *)(k + d));
        s += q[d] * kf.x + q[d + 1] * kf.y;
    }
    return s;
}

/* ---- prefill ------------------------------------------------------------ */

template <int D>
__global__ void __launch_bounds__(ATT_THREADS)
attn_prefill_kernel(struct attn_kv kv, const float *__restrict__ q, float *__restrict__ out,
                    const int32_t *seq_q0, const int32_t *seq_nq, const int32_t *seq_pos0, const int32_t *work,
                    float scale)
{
    constexpr int TQ = ATTN_PREFILL_TQ;
    constexpr int EPT = TQ * D / ATT_THREADS; /* accumulators per thread */
    __shared__ float sQ[TQ][D];
    __shared__ __align__(16) __half sK[ATT_CHUNK * (D + 2)];
    __shared__ __align__(16) __half sV[ATT_CHUNK * D];
    __shared__ float sP[TQ][ATT_CHUNK];
    __shared__ float sM[TQ], sL[TQ], sA[TQ];

    const int s = work[2 * blockIdx.x], toff = work[2 * blockIdx.x + 1];
    const int h = blockIdx.y;
    const int group = kv.n_head / kv.n_head_kv, hk = h / group;
    const int64_t q_dim = (int64_t)kv.n_head * D, kv_dim = (int64_t)kv.n_head_kv * D;
    const int nq = min(TQ, seq_nq[s] - toff);
    const int64_t row0 = (int64_t)seq_q0[s] + toff;
    const int qpos0 = seq_pos0[s] + toff;
    const int n_ctx = qpos0 + nq; /* keys 0 .. last query position */
    const int32_t *blocks = kv.indices + kv.indptr[s];

    for (int i = threadIdx.x; i < TQ * D; i += ATT_THREADS) {
        const int r = i / D, d = i % D;
        sQ[r][d] = r < nq ? q[(row0 + r) * q_dim + (int64_t)h * D + d] : 0.0f;
    }
    if (threadIdx.x < TQ) {
        sM[threadIdx.x] = -INFINITY;
        sL[threadIdx.x] = 0.0f;
    }
    float acc[EPT];
#pragma unroll
    for (int k = 0; k < EPT; k++)
        acc[k] = 0.0f;
    __syncthreads();

    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    for (int c = 0; c < n_ctx; c += ATT_CHUNK) {
        const int n = min(ATT_CHUNK, n_ctx - c);
        load_kv_chunk<D>(kv, kv_dim, hk, blocks, c, n, sK, sV);
        __syncthreads();
        for (int i = threadIdx.x; i < TQ * ATT_CHUNK; i += ATT_THREADS) {
            const int r = i / ATT_CHUNK, j = i % ATT_CHUNK;
            float sc = -INFINITY;
            if (r < nq && j < n && c + j <= qpos0 + r)
                sc = dot_q_k<D>(sQ[r], sK + j * (D + 2)) * scale;
            sP[r][j] = sc;
        }
        __syncthreads();
        for (int r = warp; r < TQ; r += ATT_THREADS / 32) {
            const float p0 = sP[r][lane], p1 = sP[r][lane + 32];
            const float mx = warp_max(fmaxf(p0, p1));
            const float m_old = sM[r];
            const float m_new = fmaxf(m_old, mx);
            float e0 = 0.0f, e1 = 0.0f, alpha = 1.0f;
            if (m_new != -INFINITY) {
                e0 = expf(p0 - m_new); /* expf(-inf) = 0 for masked keys */
                e1 = expf(p1 - m_new);
                alpha = expf(m_old - m_new);
            }
            sP[r][lane] = e0;
            sP[r][lane + 32] = e1;
            const float sum = warp_sum(e0 + e1);
            if (lane == 0) {
                sL[r] = sL[r] * alpha + sum;
                sM[r] = m_new;
                sA[r] = alpha;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < EPT; k++) {
            const int e = threadIdx.x + k * ATT_THREADS;
            const int r = e / D, d = e % D;
            float a = acc[k] * sA[r];
            for (int j = 0; j < n; j++)
                a += sP[r][j] * __half2float(sV[j * D + d]);
            acc[k] = a;
        }
        __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < EPT; k++) {
        const int e = threadIdx.x + k * ATT_THREADS;
        const int r = e / D, d = e % D;
        if (r < nq)
            out[(row0 + r) * q_dim + (int64_t)h * D + d] = acc[k] / sL[r];
    }
}

/* ---- decode ------------------------------------------------------------- */

template <int D>
__global__ void __launch_bounds__(ATT_THREADS)
attn_decode_kernel(struct attn_kv kv, const float *__restrict__ q, const int32_t *ctx_len, float scale,
                   float *__restrict__ part_o, float *__restrict__ part_ml)
{
    constexpr int EPT = DEC_MAX_GD / ATT_THREADS;
    extern __shared__ float dsm[]; /* sQ [G][D], sP [G][ATT_CHUNK], sM/sL/sA [G] */
    __shared__ __align__(16) __half sK[ATT_CHUNK * (D + 2)];
    __shared__ __align__(16) __half sV[ATT_CHUNK * D];

    const int b = blockIdx.x, hk = blockIdx.y, sp = blockIdx.z, S = gridDim.z;
    const int G = kv.n_head / kv.n_head_kv;
    const int64_t q_dim = (int64_t)kv.n_head * D, kv_dim = (int64_t)kv.n_head_kv * D;
    float *sQ = dsm, *sP = sQ + G * D, *sM = sP + G * ATT_CHUNK, *sL = sM + G, *sA = sL + G;

    const int ctx = ctx_len[b];
    int L = (ctx + S - 1) / S;
    L = (L + ATT_CHUNK - 1) / ATT_CHUNK * ATT_CHUNK;
    const int c0 = sp * L, c1 = min(ctx, c0 + L);
    const int32_t *blocks = kv.indices + kv.indptr[b];

    for (int i = threadIdx.x; i < G * D; i += ATT_THREADS)
        sQ[i] = q[(int64_t)b * q_dim + (int64_t)hk * G * D + i];
    for (int g = threadIdx.x; g < G; g += ATT_THREADS) {
        sM[g] = -INFINITY;
        sL[g] = 0.0f;
    }
    float acc[EPT];
#pragma unroll
    for (int k = 0; k < EPT; k++)
        acc[k] = 0.0f;
    __syncthreads();

    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    for (int c = c0; c < c1; c += ATT_CHUNK) {
        const int n = min(ATT_CHUNK, c1 - c);
        load_kv_chunk<D>(kv, kv_dim, hk, blocks, c, n, sK, sV);
        __syncthreads();
        for (int i = threadIdx.x; i < G * ATT_CHUNK; i += ATT_THREADS) {
            const int g = i / ATT_CHUNK, j = i % ATT_CHUNK;
            sP[i] = j < n ? dot_q_k<D>(sQ + g * D, sK + j * (D + 2)) * scale : -INFINITY;
        }
        __syncthreads();
        for (int g = warp; g < G; g += ATT_THREADS / 32) {
            const float p0 = sP[g * ATT_CHUNK + lane], p1 = sP[g * ATT_CHUNK + lane + 32];
            const float m_old = sM[g];
            const float m_new = fmaxf(m_old, warp_max(fmaxf(p0, p1)));
            const float e0 = expf(p0 - m_new), e1 = expf(p1 - m_new);
            sP[g * ATT_CHUNK + lane] = e0;
            sP[g * ATT_CHUNK + lane + 32] = e1;
            const float sum = warp_sum(e0 + e1);
            if (lane == 0) {
                const float alpha = expf(m_old - m_new);
                sL[g] = sL[g] * alpha + sum;
                sM[g] = m_new;
                sA[g] = alpha;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < EPT; k++) {
            const int e = threadIdx.x + k * ATT_THREADS;
            if (e < G * D) {
                const int g = e / D, d = e % D;
                float a = acc[k] * sA[g];
                const float *p = sP + g * ATT_CHUNK;
                for (int j = 0; j < n; j++)
                    a += p[j] * __half2float(sV[j * D + d]);
                acc[k] = a;
            }
        }
        __syncthreads();
    }
    const int64_t base = ((int64_t)b * kv.n_head + (int64_t)hk * G) * S; /* (b, first head, split 0) */
#pragma unroll
    for (int k = 0; k < EPT; k++) {
        const int e = threadIdx.x + k * ATT_THREADS;
        if (e < G * D) {
            const int g = e / D, d = e % D;
            part_o[((base + (int64_t)g * S) + sp) * D + d] = acc[k];
        }
    }
    for (int g = threadIdx.x; g < G; g += ATT_THREADS) {
        part_ml[((base + (int64_t)g * S) + sp) * 2 + 0] = sM[g];
        part_ml[((base + (int64_t)g * S) + sp) * 2 + 1] = sL[g];
    }
}

/* grid (n_seqs, n_head), block D: out[b][h*D + d] = merged splits */
__global__ void attn_combine_kernel(const float *part_o, const float *part_ml, int n_head, int D, int S, float *out)
{
    const int64_t bh = (int64_t)blockIdx.x * n_head + blockIdx.y;
    const int d = threadIdx.x;
    float M = -INFINITY;
    for (int sp = 0; sp < S; sp++)
        M = fmaxf(M, part_ml[(bh * S + sp) * 2]);
    float num = 0.0f, den = 0.0f;
    for (int sp = 0; sp < S; sp++) {
        const float m = part_ml[(bh * S + sp) * 2], l = part_ml[(bh * S + sp) * 2 + 1];
        if (l == 0.0f)
            continue; /* empty split (m = -inf) */
        const float w = expf(m - M);
        num += part_o[(bh * S + sp) * D + d] * w;
        den += l * w;
    }
    out[(int64_t)blockIdx.x * n_head * D + (int64_t)blockIdx.y * D + d] = num / den;
}

/* ---- op entries ---------------------------------------------------------- */

#define ATT_DISPATCH(D_, CALL)                                                           \
    switch (D_) {                                                                        \
    case 16:  CALL(16);  break;                                                          \
    case 32:  CALL(32);  break;                                                          \
    case 64:  CALL(64);  break;                                                          \
    case 80:  CALL(80);  break;                                                          \
    case 96:  CALL(96);  break;                                                          \
    case 128: CALL(128); break;                                                          \
    default:                                                                             \
        return ps_error_set(PS_EUNSUPPORTED, "cuda attention: head_dim %d (have 16, 32, 64, 80, 96, 128)", (int)(D_)); \
    }

int op_attn_prefill(cudaStream_t st, const struct attn_kv *kv, const float *q, float *out,
                    const int32_t *seq_q0, const int32_t *seq_nq, const int32_t *seq_pos0,
                    const int32_t *work, int64_t n_work)
{
    OP_REQUIRE(n_work >= 1 && n_work <= INT32_MAX, "attn_prefill");
    OP_REQUIRE(kv->n_head >= 1 && kv->n_head_kv >= 1 && kv->n_head % kv->n_head_kv == 0 && kv->n_head <= 65535,
               "attn_prefill");
    OP_REQUIRE(kv->block_size >= 1, "attn_prefill");
    const float scale = 1.0f / sqrtf((float)kv->head_dim);
    const dim3 grid((unsigned)n_work, (unsigned)kv->n_head);
#define PREFILL_CALL(DD) \
    attn_prefill_kernel<DD><<<grid, ATT_THREADS, 0, st>>>(*kv, q, out, seq_q0, seq_nq, seq_pos0, work, scale)
    ATT_DISPATCH(kv->head_dim, PREFILL_CALL)
#undef PREFILL_CALL
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

int op_attn_decode(cudaStream_t st, const struct attn_kv *kv, const float *q, float *out,
                   const int32_t *ctx_len, int64_t n_seqs, int n_splits, float *part_o, float *part_ml)
{
    OP_REQUIRE(n_seqs >= 1 && n_seqs <= INT32_MAX, "attn_decode");
    OP_REQUIRE(n_splits >= 1 && n_splits <= 65535, "attn_decode");
    OP_REQUIRE(kv->n_head >= 1 && kv->n_head_kv >= 1 && kv->n_head % kv->n_head_kv == 0 &&
               kv->n_head_kv <= 65535 && kv->n_head <= 65535, "attn_decode");
    OP_REQUIRE((kv->n_head / kv->n_head_kv) * kv->head_dim <= DEC_MAX_GD, "attn_decode");
    OP_REQUIRE(kv->block_size >= 1, "attn_decode");
    const int G = kv->n_head / kv->n_head_kv;
    const float scale = 1.0f / sqrtf((float)kv->head_dim);
    const size_t smem = ((size_t)G * kv->head_dim + (size_t)G * ATT_CHUNK + 3 * (size_t)G) * sizeof(float);
    const size_t smem_static = (size_t)ATT_CHUNK * (kv->head_dim + 2) * 2 + (size_t)ATT_CHUNK * kv->head_dim * 2;
    OP_REQUIRE(smem + smem_static <= 48 * 1024, "attn_decode");
    const dim3 grid((unsigned)n_seqs, (unsigned)kv->n_head_kv, (unsigned)n_splits);
#define DECODE_CALL(DD) \
    attn_decode_kernel<DD><<<grid, ATT_THREADS, smem, st>>>(*kv, q, ctx_len, scale, part_o, part_ml)
    ATT_DISPATCH(kv->head_dim, DECODE_CALL)
#undef DECODE_CALL
    CUDA_LAUNCH_CHECK();
    attn_combine_kernel<<<dim3((unsigned)n_seqs, (unsigned)kv->n_head), kv->head_dim, 0, st>>>(
        part_o, part_ml, kv->n_head, kv->head_dim, n_splits, out);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}
