/* sample.cu - batched token sampling on the GPU: one block per logits row.
 *
 * Same order of operations as host/engine/sampler.c (without penalties):
 * mask -> greedy if temperature <= 0 -> top-k -> temperature -> softmax ->
 * top-p -> min-p -> draw.  No sort: each truncation is a threshold on the
 * logit found by bisection over block-wide counts / sums:
 *   top-k: largest tau with count(l >= tau) >= k (ties at the boundary are kept);
 *   top-p: largest tau with mass(l >= tau) >= top_p * mass(kept by top-k);
 *   min-p: tau = l_max + T * ln(min_p)   (p / p_max >= min_p).
 * The draw: u = U(seed, step) * kept mass, found by an exclusive scan of
 * per-thread chunk sums in token order, so a (seed, step, logits) triple
 * always yields the same token; the uniform is host/engine/sampler.c's
 * draw_uniform (keep the two in step).  Greedy ties go to the lowest id.
 * A row whose mask allows nothing gives -1; else a row holding any
 * non-finite logit (NaN, +inf, -inf; masked ids included) gives -2
 * (BACKEND_TOKEN_NONFINITE: the model is broken and the request fails, as
 * sampler_sample's PS_ERANGE on the host), in that order as on the host.
 * smp_logit's reading of NaN / +inf (as the host's sample_core) only
 * matters to rows that give -2 anyway.
 *
 * Masks: op_sample takes dense [rows][mask_words] masks (or NULL);
 * op_sample_rows takes a compact [n_masked][mask_words] set and
 * mask_row[rows] (index into it, -1 = unmasked row), so a step uploads only
 * its constrained rows' bitsets. */
#include <cfloat>

#include <cub/block/block_scan.cuh>

#include "ops.cuh"

#define SMP_THREADS 1024
#define SMP_BISECT  40

__device__ __forceinline__ uint64_t smp_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

__device__ __forceinline__ float smp_logit(const float *lg, const uint32_t *mask, int i)
{
    if (mask && !((mask[i >> 5] >> (i & 31)) & 1u))
        return -INFINITY;
    /* as host/engine/sampler.c reads logits: NaN as -inf, +inf as the
     * largest float (with l_max = +inf every weight would be inf - inf = NaN) */
    const float l = lg[i];
    return l != l ? -INFINITY : l == INFINITY ? FLT_MAX : l;
}

__global__ void __launch_bounds__(SMP_THREADS)
sample_kernel(const float *__restrict__ logits, int V, const struct sample_param_dev *params,
              const uint32_t *__restrict__ masks, int words, const int32_t *__restrict__ mask_row,
              int32_t *tokens)
{
    typedef cub::BlockScan<float, SMP_THREADS> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    __shared__ float red[32];
    __shared__ float red_v[32];
    __shared__ int red_i[32];
    __shared__ int red_f[32];
    __shared__ int picked, last_kept;

    const int64_t r = blockIdx.x;
    const float *lg = logits + r * V;
    const uint32_t *mask = NULL;
    if (masks) {
        const int64_t mr = mask_row ? (int64_t)mask_row[r] : r;
        if (mr >= 0) mask = masks + mr * words;
    }
    const struct sample_param_dev p = params[r];
    const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;

    /* 1. max, argmax (lowest id), min over allowed ids; lowest allowed id */
    float bv = -INFINITY, mn = INFINITY;
    int bi = INT32_MAX, fa = INT32_MAX, bad = 0;
    for (int i = tid; i < V; i += SMP_THREADS) {
        bad |= !isfinite(lg[i]);
        const float l = smp_logit(lg, mask, i);
        if (l > bv) { bv = l; bi = i; }  /* strided ascending: first max of this thread */
        if (l != -INFINITY) mn = fminf(mn, l);
        if (fa == INT32_MAX && (!mask || ((mask[i >> 5] >> (i & 31)) & 1u))) fa = i;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        fa = min(fa, __shfl_xor_sync(0xffffffffu, fa, o));
    }
    if (lane == 0) { red_v[wid] = bv; red_i[wid] = bi; red_f[wid] = fa; }
    __syncthreads();
    if (wid == 0) {
        bv = red_v[lane];
        bi = red_i[lane];
        fa = red_f[lane];
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
            fa = min(fa, __shfl_xor_sync(0xffffffffu, fa, o));
        }
        if (lane == 0) { red_v[0] = bv; red_i[0] = bi; red_f[0] = fa; }
    }
    __syncthreads();
    const float lmax = red_v[0];
    const int argmax = red_i[0];
    const int first_allowed = red_f[0];
    /* also the barrier before red_* is reused */
    const int nonfinite = __syncthreads_or(bad);
    if (first_allowed == INT32_MAX || nonfinite || lmax == -INFINITY) {
        if (tid == 0) tokens[r] = first_allowed == INT32_MAX ? -1 : -2;
        return;
    }
    /* A positive temperature whose inverse overflows (a denormal) is the
     * limit T -> 0, greedy, as on the host (sampler.c): invT = inf would
     * weigh the best candidate 0 * inf = NaN. */
    const float invT = p.temperature > 0.0f ? 1.0f / p.temperature : 0.0f;
    if (!(p.temperature > 0.0f) || isinf(invT)) {
        if (tid == 0) tokens[r] = argmax;
        return;
    }
    const float lmin = -block_max(-mn, red);

    /* 2. thresholds */
    float tau = -INFINITY;
    if (p.top_k > 0 && p.top_k < V) {
        float lo = lmin, hi = lmax;
        float c_hi = 0.0f;
        for (int i = tid; i < V; i += SMP_THREADS) c_hi += smp_logit(lg, mask, i) >= hi ? 1.0f : 0.0f;
        c_hi = block_sum(c_hi, red);
        if (c_hi >= (float)p.top_k) {
            lo = hi;
        } else {
            for (int it = 0; it < SMP_BISECT; it++) {
                const float mid = 0.5f * (lo + hi);
                if (mid <= lo || mid >= hi) break;
                float c = 0.0f;
                for (int i = tid; i < V; i += SMP_THREADS) c += smp_logit(lg, mask, i) >= mid ? 1.0f : 0.0f;
                c = block_sum(c, red);
                if (c >= (float)p.top_k) lo = mid; else hi = mid;
            }
        }
        tau = lo;
    }
    if (p.top_p < 1.0f) {
        float Z = 0.0f;
        for (int i = tid; i < V; i += SMP_THREADS) {
            const float l = smp_logit(lg, mask, i);
            if (l >= tau) Z += expf((l - lmax) * invT);
        }
        Z = block_sum(Z, red);
        const float target = p.top_p * Z;
        float lo = tau == -INFINITY ? lmin : tau, hi = lmax;
        float m_hi = 0.0f;
        for (int i = tid; i < V; i += SMP_THREADS) m_hi += smp_logit(lg, mask, i) >= hi ? 1.0f : 0.0f;
        m_hi = block_sum(m_hi, red); /* weight of each max is exp(0) = 1 */
        if (m_hi >= target) {
            lo = hi;
        } else {
            for (int it = 0; it < SMP_BISECT; it++) {
                const float mid = 0.5f * (lo + hi);
                if (mid <= lo || mid >= hi) break;
                float m = 0.0f;
                for (int i = tid; i < V; i += SMP_THREADS) {
                    const float l = smp_logit(lg, mask, i);
                    if (l >= mid) m += expf((l - lmax) * invT);
                }
                m = block_sum(m, red);
                if (m >= target) lo = mid; else hi = mid;
            }
        }
        tau = fmaxf(tau, lo);
    }
    if (p.min_p > 0.0f)
        tau = fmaxf(tau, lmax + p.temperature * logf(p.min_p));
    tau = fminf(tau, lmax); /* the argmax is always kept */

    /* 3. draw: contiguous chunks per thread, exclusive scan of chunk masses */
    const int chunk = (V + SMP_THREADS - 1) / SMP_THREADS;
    const int i0 = min(V, tid * chunk), i1 = min(V, i0 + chunk);
    float part = 0.0f;
    int my_last = -1;
    for (int i = i0; i < i1; i++) {
        const float l = smp_logit(lg, mask, i);
        if (l >= tau) { part += expf((l - lmax) * invT); my_last = i; }
    }
    float pre, total;
    Scan(scan_tmp).ExclusiveSum(part, pre, total);
    if (tid == 0) { picked = -1; last_kept = -1; }
    __syncthreads();
    if (my_last >= 0) atomicMax(&last_kept, my_last);
    const uint64_t h = smp_mix(p.seed ^ smp_mix(p.step + 0x632be59bd9b4e019ull));
    const float u = (float)(h >> 40) * 0x1p-24f * total;
    if (part > 0.0f && u >= pre && u < pre + part) {
        float a = pre;
        for (int i = i0; i < i1; i++) {
            const float l = smp_logit(lg, mask, i);
            if (l >= tau) {
                a += expf((l - lmax) * invT);
                if (u < a) { picked = i; break; }
            }
        }
        if (picked < 0) picked = my_last; /* rounding inside the chunk */
    }
    __syncthreads();
    if (tid == 0) tokens[r] = picked >= 0 ? picked : last_kept;
}

/* logits [rows][n_vocab], params [rows], masks: see op_sample /
 * op_sample_rows, tokens [rows] (all device pointers). */
int op_sample_rows(cudaStream_t st, const float *logits, int64_t rows, int32_t n_vocab,
                   const struct sample_param_dev *params, const uint32_t *masks, int32_t mask_words,
                   const int32_t *mask_row, int32_t *tokens)
{
    OP_REQUIRE(rows >= 1 && rows <= INT32_MAX && n_vocab >= 1, "sample");
    OP_REQUIRE(!masks || mask_words >= (n_vocab + 31) / 32, "sample");
    sample_kernel<<<(unsigned)rows, SMP_THREADS, 0, st>>>(logits, n_vocab, params, masks, mask_words, mask_row,
                                                          tokens);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

int op_sample(cudaStream_t st, const float *logits, int64_t rows, int32_t n_vocab,
              const struct sample_param_dev *params, const uint32_t *masks, int32_t mask_words, int32_t *tokens)
{
    return op_sample_rows(st, logits, rows, n_vocab, params, masks, mask_words, NULL, tokens);
}
