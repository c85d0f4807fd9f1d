/* cuda_common.cuh - shared by every .cu file of cuda/: error checks that turn a
 * CUDA failure into a paraserve status with file:line, the device-side
 * weight and activation descriptors, and small warp/block reductions.
 *
 * Error policy (CONVENTIONS 2): op entries and the backend return int
 * statuses; nothing here aborts.  CUDA_TRY records "cuda: FILE:LINE: CALL:
 * MESSAGE" as the thread's error detail and returns PS_EINTERNAL. */
#ifndef PS_CUDA_COMMON_CUH
#define PS_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "common/status.h"
#include "model/quant.h"
}

#define CUDA_TRY(call)                                                                      \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                              \
            return ps_error_set(PS_EINTERNAL, "cuda: %s:%d: %s: %s", __FILE__, __LINE__,    \
                                #call, cudaGetErrorString(e_));                             \
    } while (0)

/* After every launch: launch-configuration errors surface here. */
#define CUDA_LAUNCH_CHECK() CUDA_TRY(cudaGetLastError())

/* Op-entry argument assertion: a violated contract is a caller bug, reported
 * as PS_EINVAL naming the op and the condition. */
#define OP_REQUIRE(cond, op)                                                                \
    do {                                                                                    \
        if (!(cond))                                                                        \
            return ps_error_set(PS_EINVAL, "cuda %s: requirement failed: %s", op, #cond);  \
    } while (0)

/* A weight matrix on the device, repacked from the GGUF block layout into
 * structure-of-arrays form so that quant values load 8/16 bytes at a time,
 * aligned (GGUF blocks are 18/20/34 bytes and only 2-byte aligned).
 * Rows are output features, K = row length (input features).
 *   Q4_0: qs [N][K/2]  u8 (per 32-block: 16 bytes, GGUF nibble order), sc [N][K/32] half  d
 *   Q4_1: qs [N][K/2]  u8,                                              sc [N][K/32] half2 (d, m)
 *   Q8_0: qs [N][K]    i8,                                              sc [N][K/32] half  d
 *   F16 : qs [N][K]    half;  BF16: qs [N][K] bf16;                     sc NULL
 * Other GGUF types (F32, Q4_K, Q6_K) are dequantized to F16 at upload.
 * f16: [N][K] half copy for cuBLAS GEMMs (== qs for F16), or NULL. */
struct dmat {
    enum dtype type;
    int64_t    K, N;
    void      *qs;
    void      *sc;
    __half    *f16;
    int        f16_owned; /* f16 is a separate allocation */
};

/* Activations quantized per row to 32-element blocks, matching the CPU's
 * Q8_0/Q8_1 activation rows bit for bit (d and s rounded through f16):
 *   qs [T][K] i8;  d [T][K/32] f32 (= f16(amax/127));  s [T][K/32] f32 (= f16(d * sum q)). */
struct dq8 {
    int8_t *qs;
    float  *d;
    float  *s;
    int64_t K;   /* row length in elements (ld of qs) */
};

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (multiple of 32, <= 1024); every
 * thread gets the result.  `red` is shared scratch of >= 32 doubles. */
__device__ __forceinline__ double block_sum_d(double v, double *red)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0)
        red[wid] = v;
    __syncthreads();
    double t = lane < nw ? red[lane] : 0.0;
    return warp_sum_d(t);
}

__device__ __forceinline__ float block_sum(float v, float *red)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        red[wid] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float *red)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        red[wid] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    return warp_max(t);
}

/* Element k of row r of a repacked matrix, as f32 (embedding gather and
 * the F16 dequantizer). */
__device__ __forceinline__ float dmat_get(enum dtype type, const void *qs, const void *sc, int64_t K,
                                          int64_t r, int64_t k)
{
    const int64_t nb = K / 32, b = k / 32, j = k % 32;
    switch (type) {
    case DT_Q4_0: {
        const uint8_t q = ((const uint8_t *)qs)[r * (K / 2) + b * 16 + (j & 15)];
        const int v = (j < 16 ? (q & 0xf) : (q >> 4)) - 8;
        return (float)v * __half2float(((const __half *)sc)[r * nb + b]);
    }
    case DT_Q4_1: {
        const uint8_t q = ((const uint8_t *)qs)[r * (K / 2) + b * 16 + (j & 15)];
        const int v = j < 16 ? (q & 0xf) : (q >> 4);
        const __half2 dm = ((const __half2 *)sc)[r * nb + b];
        return (float)v * __low2float(dm) + __high2float(dm);
    }
    case DT_Q8_0:
        return (float)((const int8_t *)qs)[r * K + k] * __half2float(((const __half *)sc)[r * nb + b]);
    case DT_F16:
        return __half2float(((const __half *)qs)[r * K + k]);
    case DT_BF16:
        return __bfloat162float(((const __nv_bfloat16 *)qs)[r * K + k]);
    default:
        return 0.0f;
    }
}

static inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif /* PS_CUDA_COMMON_CUH */
