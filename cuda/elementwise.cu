/* elementwise.cu - embedding gather, RMSNorm (+ fused residual add), SwiGLU,
 * activation quantization to Q8 rows, f32 -> f16, bias add, random fill. */
#include "ops.cuh"

/* ---- embedding ------------------------------------------------------------ */

/* grid (T), block 256: x[t][:] = dequant(emb row tokens[t]) */
__global__ void embed_kernel(enum dtype type, const void *qs, const void *sc, int64_t E,
                             const int32_t *tokens, float *x /* [T][E] */)
{
    const int64_t t = blockIdx.x;
    const int64_t row = tokens[t];
    for (int64_t k = threadIdx.x; k < E; k += blockDim.x)
        x[t * E + k] = dmat_get(type, qs, sc, E, row, k);
}

int op_embed(cudaStream_t st, const struct dmat *emb, const int32_t *tokens, int64_t T, float *x)
{
    OP_REQUIRE(T >= 1 && T <= INT32_MAX, "embed");
    OP_REQUIRE(emb->type == DT_Q4_0 || emb->type == DT_Q4_1 || emb->type == DT_Q8_0 ||
               emb->type == DT_F16 || emb->type == DT_BF16, "embed");
    embed_kernel<<<(unsigned)T, 256, 0, st>>>(emb->type, emb->qs, emb->sc, emb->K, tokens, x);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

/* ---- rmsnorm ------------------------------------------------------------ */

/* Q8 of one 32-element block held one element per lane (same arithmetic as
 * quant.c quant_q8_block_scalar): d = amax / 127, id = 1/d, q = roundf(v * id)
 * clamped to [-127, 127], d and d*sum(q) (with the f32 d) stored through
 * f16.  A NaN in the block: d = NaN, every q 0 (the NaN reaches the dots);
 * a NaN product (inf input) q = 0, so the float -> int cast never sees a
 * NaN or out-of-range value. */
__device__ __forceinline__ void q8_block_store(float v, int lane, int8_t *qs, float *d, float *s)
{
    const bool has_nan = __any_sync(0xffffffffu, v != v);
    const float amax = warp_max(fabsf(v));
    const float dd = has_nan ? __int_as_float(0x7fc00000) : amax / 127;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    const float p = v * id;
    const int q = p != p ? 0 : p >= 127.0f ? 127 : p <= -127.0f ? -127 : (int)roundf(p);
    qs[lane] = (int8_t)q;
    int sum = q;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) {
        *d = __half2float(__float2half_rn(dd));
        *s = __half2float(__float2half_rn((float)sum * dd)); /* f32 d, as quant.c */
    }
}

/* grid (rows), block 256.  src row = x + (row_idx ? row_idx[r] : r) * n.
 * qs != NULL: n % 32 == 0, each warp also quantizes its 32-element blocks. */
__global__ void rmsnorm_kernel(float *out, float *x, const float *res, const float *w, const int32_t *row_idx,
                               int64_t n, float eps, int8_t *qs, float *qd, float *qsum)
{
    __shared__ double red[32];
    const int64_t r = blockIdx.x;
    float *src = x + (row_idx ? (int64_t)row_idx[r] : r) * n;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = src[i];
        if (res) {
            v += res[r * n + i];
            src[i] = v;
        }
        ss += (double)v * v;
    }
    ss = block_sum_d(ss, red);
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    if (!qs) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            out[r * n + i] = src[i] * scale * w[i];
        return;
    }
    const int lane = threadIdx.x & 31, nw = blockDim.x / 32;
    for (int64_t b = threadIdx.x / 32; b < n / 32; b += nw) {
        const int64_t i = b * 32 + lane;
        const float v = src[i] * scale * w[i];
        out[r * n + i] = v;
        q8_block_store(v, lane, qs + r * n + b * 32, qd + r * (n / 32) + b, qsum + r * (n / 32) + b);
    }
}

int op_rmsnorm(cudaStream_t st, float *out, float *x, const float *res, const float *w, const int32_t *row_idx,
               int64_t rows, int64_t n, float eps)
{
    OP_REQUIRE(rows >= 1 && rows <= INT32_MAX && n >= 1, "rmsnorm");
    OP_REQUIRE(!(row_idx && out == x), "rmsnorm");
    OP_REQUIRE(!(row_idx && res), "rmsnorm");
    rmsnorm_kernel<<<(unsigned)rows, 256, 0, st>>>(out, x, res, w, row_idx, n, eps, NULL, NULL, NULL);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

int op_rmsnorm_q8(cudaStream_t st, float *out, float *x, const float *res, const float *w,
                  const int32_t *row_idx, int64_t rows, int64_t n, float eps, const struct dq8 *q)
{
    OP_REQUIRE(rows >= 1 && rows <= INT32_MAX && n >= 32 && n % 32 == 0, "rmsnorm_q8");
    OP_REQUIRE(q && q->K == n, "rmsnorm_q8");
    OP_REQUIRE(!(row_idx && out == x), "rmsnorm_q8");
    OP_REQUIRE(!(row_idx && res), "rmsnorm_q8");
    rmsnorm_kernel<<<(unsigned)rows, 256, 0, st>>>(out, x, res, w, row_idx, n, eps, q->qs, q->d, q->s);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

/* ---- swiglu ------------------------------------------------------------- */

__global__ void swiglu_kernel(const float *gu, float *h, int64_t T, int64_t F)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * F)
        return;
    const int64_t t = i / F, f = i % F;
    const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
    h[i] = g / (1.0f + expf(-g)) * u;
}

/* One warp per 32-element block of h (F % 32 == 0): the value and its Q8. */
__global__ void swiglu_q8_kernel(const float *gu, float *h, int64_t T, int64_t F, int8_t *qs, float *qd,
                                 float *qsum)
{
    const int64_t nb = F / 32;
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (blk >= T * nb)
        return;
    const int64_t t = blk / nb, f = (blk % nb) * 32 + lane;
    const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
    const float v = g / (1.0f + expf(-g)) * u;
    h[t * F + f] = v;
    q8_block_store(v, lane, qs + t * F + (f - lane), qd + blk, qsum + blk);
}

int op_swiglu(cudaStream_t st, const float *gu, float *h, int64_t T, int64_t F, const struct dq8 *q)
{
    OP_REQUIRE(T >= 1 && F >= 1, "swiglu");
    if (q) {
        OP_REQUIRE(F % 32 == 0 && q->K == F, "swiglu");
        swiglu_q8_kernel<<<(unsigned)ceil_div64(T * (F / 32), 8), 256, 0, st>>>(gu, h, T, F, q->qs, q->d, q->s);
    } else {
        swiglu_kernel<<<(unsigned)ceil_div64(T * F, 256), 256, 0, st>>>(gu, h, T, F);
    }
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

/* ---- activation quantization -------------------------------------------- */

/* One warp per 32-element block; lane j owns element j (q8_block_store). */
__global__ void quantize_q8_kernel(const float *x, int64_t ldx, int64_t T, int64_t K, int8_t *qs, float *d,
                                   float *s)
{
    const int64_t nb = K / 32;
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (blk >= T * nb)
        return;
    const int64_t t = blk / nb, b = blk % nb;
    q8_block_store(x[t * ldx + b * 32 + lane], lane, qs + t * K + b * 32, d + blk, s + blk);
}

int op_quantize_q8(cudaStream_t st, const float *x, int64_t ldx, int64_t T, int64_t K, struct dq8 *out)
{
    OP_REQUIRE(T >= 1 && K % 32 == 0 && K <= out->K && ldx >= K, "quantize_q8");
    OP_REQUIRE(out->K == K, "quantize_q8"); /* ld of the activation rows is the current K */
    const int64_t blocks = T * (K / 32);
    quantize_q8_kernel<<<(unsigned)ceil_div64(blocks, 8), 256, 0, st>>>(x, ldx, T, K, out->qs, out->d, out->s);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

/* ---- misc --------------------------------------------------------------- */

__global__ void f32_to_f16_kernel(const float *x, __half *y, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = __float2half_rn(x[i]);
}

int op_f32_to_f16(cudaStream_t st, const float *x, __half *y, int64_t n)
{
    OP_REQUIRE(n >= 1, "f32_to_f16");
    f32_to_f16_kernel<<<(unsigned)ceil_div64(n, 256), 256, 0, st>>>(x, y, n);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

__global__ void add_bias_kernel(float *out, int64_t ld, const float *bias, int64_t T, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < T * n)
        out[(i / n) * ld + i % n] += bias[i % n];
}

int op_add_bias(cudaStream_t st, float *out, int64_t ld, const float *bias, int64_t T, int64_t n)
{
    OP_REQUIRE(T >= 1 && n >= 1 && ld >= n, "add_bias");
    add_bias_kernel<<<(unsigned)ceil_div64(T * n, 256), 256, 0, st>>>(out, ld, bias, T, n);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

__global__ void fill_random_f16_kernel(__half *p, int64_t n, float a, uint64_t seed)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float u = (float)(splitmix64(seed ^ ((uint64_t)i * 0x2545f4914f6cdd1dull)) >> 40) * 0x1p-24f;
        p[i] = __float2half_rn((2.0f * u - 1.0f) * a);
    }
}

int op_fill_random_f16(cudaStream_t st, __half *p, int64_t n, float a, uint64_t seed)
{
    OP_REQUIRE(n >= 1, "fill_random_f16");
    fill_random_f16_kernel<<<4096, 256, 0, st>>>(p, n, a, seed);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}
