/* gemv.cu - matrix products of the forward pass.
 *
 * Small batches (T <= mmv_max, decode): a GEMV that reads each quantized
 * weight row once for all T tokens and dequantizes in registers.  One warp
 * per output row, ROWS_PER_BLOCK rows per block; a lane takes one "item" of
 * the row at a time and keeps NT f32 accumulators:
 *   Q4_0/Q4_1: half a 32-block = 8 bytes of nibbles (16 weights), dp4a with
 *              the Q8 activation (integer dots exactly as the CPU's);
 *   Q8_0:      a quarter block = 8 int8 weights, dp4a;
 *   F16/BF16:  8 weights (16 bytes) against f32 activations.
 * Large batches (prefill, big decode batches): cuBLAS GEMM on the F16 copy
 * of the weights with f16 activations and f32 accumulation.
 *
 * NOTE: per token the GEMV's reduction order does not depend on NT, so a
 * sequence's numbers are the same whatever else is in a small batch. */
#include "ops.cuh"

#define ROWS_PER_BLOCK 4

template <int TYPE> struct item_traits;
template <> struct item_traits<DT_Q4_0> { enum { ELEMS = 16 }; };
template <> struct item_traits<DT_Q4_1> { enum { ELEMS = 16 }; };
template <> struct item_traits<DT_Q8_0> { enum { ELEMS = 8 }; };
template <> struct item_traits<DT_F16>  { enum { ELEMS = 8 }; };
template <> struct item_traits<DT_BF16> { enum { ELEMS = 8 }; };

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t u16) { return __uint_as_float(u16 << 16); }

template <int TYPE, int NT>
__global__ void __launch_bounds__(32 * ROWS_PER_BLOCK)
gemv_kernel(const void *__restrict__ wqs, const void *__restrict__ wsc, int64_t K, int64_t N,
            const float *__restrict__ x, int64_t ldx,          /* [T][ldx] f32 (F16/BF16) */
            const int8_t *__restrict__ aq, const float *__restrict__ ad, const float *__restrict__ as,
            float *__restrict__ out, int64_t ld_out, const float *__restrict__ bias, int accumulate)
{
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    const int lane = threadIdx.x;
    if (row >= N)
        return;
    const int64_t nb = K / 32;
    const int64_t n_items = K / item_traits<TYPE>::ELEMS;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;

    for (int64_t it = lane; it < n_items; it += 32) {
        if (TYPE == DT_Q4_0 || TYPE == DT_Q4_1) {
            const int64_t b = it >> 1, h = it & 1;
            const uint2 w = *(const uint2 *)((const uint8_t *)wqs + row * (K / 2) + b * 16 + h * 8);
            const int lo0 = (int)(w.x & 0x0f0f0f0fu), lo1 = (int)(w.y & 0x0f0f0f0fu);
            const int hi0 = (int)((w.x >> 4) & 0x0f0f0f0fu), hi1 = (int)((w.y >> 4) & 0x0f0f0f0fu);
            float dw, mw = 0.0f;
            if (TYPE == DT_Q4_0) {
                dw = __half2float(((const __half *)wsc)[row * nb + b]);
            } else {
                const __half2 dm = ((const __half2 *)wsc)[row * nb + b];
                dw = __low2float(dm);
                mw = __high2float(dm);
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int8_t *a = aq + (int64_t)t * K + b * 32 + h * 8;
                const int2 alo = *(const int2 *)a, ahi = *(const int2 *)(a + 16);
                int sumi = __dp4a(lo0, alo.x, 0);
                sumi = __dp4a(lo1, alo.y, sumi);
                sumi = __dp4a(hi0, ahi.x, sumi);
                sumi = __dp4a(hi1, ahi.y, sumi);
                const float da = ad[(int64_t)t * nb + b];
                if (TYPE == DT_Q4_0) {
                    int suma = __dp4a(0x01010101, alo.x, 0);
                    suma = __dp4a(0x01010101, alo.y, suma);
                    suma = __dp4a(0x01010101, ahi.x, suma);
                    suma = __dp4a(0x01010101, ahi.y, suma);
                    acc[t] += (float)(sumi - 8 * suma) * (dw * da);
                } else {
                    acc[t] += (float)sumi * (dw * da) + (h == 0 ? mw * as[(int64_t)t * nb + b] : 0.0f);
                }
            }
        } else if (TYPE == DT_Q8_0) {
            const int64_t b = it >> 2;
            const int2 w = *(const int2 *)((const int8_t *)wqs + row * K + it * 8);
            const float dw = __half2float(((const __half *)wsc)[row * nb + b]);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int2 a = *(const int2 *)(aq + (int64_t)t * K + it * 8);
                int sumi = __dp4a(w.x, a.x, 0);
                sumi = __dp4a(w.y, a.y, sumi);
                acc[t] += (float)sumi * (dw * ad[(int64_t)t * nb + b]);
            }
        } else { /* F16 / BF16 x f32 */
            const uint4 w = *(const uint4 *)((const uint16_t *)wqs + row * K + it * 8);
            float wf[8];
            const uint32_t wu[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (TYPE == DT_F16) {
                    const float2 f = __half22float2(*(const __half2 *)&wu[j]);
                    wf[2 * j] = f.x;
                    wf[2 * j + 1] = f.y;
                } else {
                    wf[2 * j] = bf16_bits_to_f32(wu[j] & 0xffffu);
                    wf[2 * j + 1] = bf16_bits_to_f32(wu[j] >> 16);
                }
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const float4 a0 = *(const float4 *)(x + (int64_t)t * ldx + it * 8);
                const float4 a1 = *(const float4 *)(x + (int64_t)t * ldx + it * 8 + 4);
                acc[t] += wf[0] * a0.x + wf[1] * a0.y + wf[2] * a0.z + wf[3] * a0.w +
                          wf[4] * a1.x + wf[5] * a1.y + wf[6] * a1.z + wf[7] * a1.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float v = warp_sum(acc[t]);
        if (lane == 0) {
            float r = v + (bias ? bias[row] : 0.0f);
            float *o = out + (int64_t)t * ld_out + row;
            *o = accumulate ? *o + r : r;
        }
    }
}

template <int TYPE>
static int gemv_launch_type(cudaStream_t st, const struct dmat *W, const float *x, int64_t ldx,
                            const struct dq8 *xq, int64_t T, float *out, int64_t ld_out, const float *bias,
                            int accumulate)
{
    const dim3 block(32, ROWS_PER_BLOCK);
    const dim3 grid((unsigned)ceil_div64(W->N, ROWS_PER_BLOCK));
    const int8_t *aq = xq ? xq->qs : NULL;
    const float *ad = xq ? xq->d : NULL, *as = xq ? xq->s : NULL;
#define GEMV_CASE(nt)                                                                               \
    case nt:                                                                                        \
        gemv_kernel<TYPE, nt><<<grid, block, 0, st>>>(W->qs, W->sc, W->K, W->N, x, ldx, aq, ad, as,  \
                                                     out, ld_out, bias, accumulate);                \
        break;
    switch (T) {
        GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4)
        GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
    default:
        return ps_error_set(PS_EINVAL, "cuda gemv: T = %lld outside 1..%d", (long long)T, MMV_MAX_T);
    }
#undef GEMV_CASE
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

int op_gemv(cudaStream_t st, const struct dmat *W, const float *x, int64_t ldx, const struct dq8 *xq,
            int64_t T, float *out, int64_t ld_out, const float *bias, int accumulate)
{
    OP_REQUIRE(T >= 1 && T <= MMV_MAX_T, "gemv");
    OP_REQUIRE(W->N >= 1 && W->N <= (int64_t)65535 * ROWS_PER_BLOCK * 1024, "gemv");
    OP_REQUIRE(ld_out >= W->N || T == 1, "gemv");
    switch (W->type) {
    case DT_Q4_0:
        OP_REQUIRE(xq && xq->K == W->K && W->K % 32 == 0, "gemv");
        return gemv_launch_type<DT_Q4_0>(st, W, x, ldx, xq, T, out, ld_out, bias, accumulate);
    case DT_Q4_1:
        OP_REQUIRE(xq && xq->K == W->K && W->K % 32 == 0, "gemv");
        return gemv_launch_type<DT_Q4_1>(st, W, x, ldx, xq, T, out, ld_out, bias, accumulate);
    case DT_Q8_0:
        OP_REQUIRE(xq && xq->K == W->K && W->K % 32 == 0, "gemv");
        return gemv_launch_type<DT_Q8_0>(st, W, x, ldx, xq, T, out, ld_out, bias, accumulate);
    case DT_F16:
        OP_REQUIRE(x && W->K % 8 == 0 && ldx % 4 == 0, "gemv");
        return gemv_launch_type<DT_F16>(st, W, x, ldx, xq, T, out, ld_out, bias, accumulate);
    case DT_BF16:
        OP_REQUIRE(x && W->K % 8 == 0 && ldx % 4 == 0, "gemv");
        return gemv_launch_type<DT_BF16>(st, W, x, ldx, xq, T, out, ld_out, bias, accumulate);
    default:
        return ps_error_set(PS_EUNSUPPORTED, "cuda gemv: weight type %d", (int)W->type);
    }
}

static const char *cublas_status_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
    }
}

int op_gemm_cublas(cudaStream_t st, struct mm_ctx *mc, const struct dmat *W, const float *x, int64_t ldx,
                   int64_t T, float *out, int64_t ld_out, const float *bias, int accumulate)
{
    OP_REQUIRE(W->f16 != NULL, "gemm_cublas");
    OP_REQUIRE(T >= 1 && ld_out >= W->N && ldx >= W->K, "gemm_cublas");
    OP_REQUIRE(W->K <= INT32_MAX && W->N <= INT32_MAX && T <= INT32_MAX, "gemm_cublas");
    /* activations to f16, packed [T][K] */
    if (ldx == W->K) {
        int rc = op_f32_to_f16(st, x, mc->act16, T * W->K);
        if (rc)
            return rc;
    } else {
        for (int64_t t = 0; t < T; t++) {
            int rc = op_f32_to_f16(st, x + t * ldx, mc->act16 + t * W->K, W->K);
            if (rc)
                return rc;
        }
    }
    /* column-major view: out^T (N x T) = W (K x N)^T . act (K x T) */
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t s = cublasSetStream(mc->cublas, st);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasGemmEx(mc->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)W->N, (int)T, (int)W->K, &alpha, W->f16,
                         CUDA_R_16F, (int)W->K, mc->act16, CUDA_R_16F, (int)W->K, &beta, out, CUDA_R_32F,
                         (int)ld_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return ps_error_set(PS_EINTERNAL, "cuda: cublasGemmEx [%lld x %lld] x %lld tokens: %s",
                            (long long)W->K, (long long)W->N, (long long)T, cublas_status_name(s));
    if (bias)
        return op_add_bias(st, out, ld_out, bias, T, W->N);
    return PS_OK;
}

int op_matmul(cudaStream_t st, struct mm_ctx *mc, const struct dmat *W, const float *x, int64_t ldx,
              int64_t T, float *out, int64_t ld_out, const float *bias, int accumulate)
{
    const int quantized = W->type == DT_Q4_0 || W->type == DT_Q4_1 || W->type == DT_Q8_0;
    if (T > mc->mmv_max && W->f16) {
        mc->act_of = NULL;
        return op_gemm_cublas(st, mc, W, x, ldx, T, out, ld_out, bias, accumulate);
    }
    /* GEMV, in chunks of MMV_MAX_T tokens (chunks only when there is no F16 copy) */
    for (int64_t t0 = 0; t0 < T; t0 += MMV_MAX_T) {
        const int64_t n = T - t0 < MMV_MAX_T ? T - t0 : MMV_MAX_T;
        struct dq8 xq = mc->act;
        xq.K = W->K;
        /* the producer of x (rmsnorm, swiglu) may have written its Q8 rows
         * already; that claim is good for this one matmul */
        const int have_q8 = mc->act_of == x && T <= MMV_MAX_T && ldx == W->K;
        mc->act_of = NULL;
        if (quantized && !have_q8) {
            int rc = op_quantize_q8(st, x + t0 * ldx, ldx, n, W->K, &xq);
            if (rc)
                return rc;
        }
        int rc = op_gemv(st, W, x + t0 * ldx, ldx, quantized ? &xq : NULL, n, out + t0 * ld_out, ld_out, bias,
                         accumulate);
        if (rc)
            return rc;
    }
    return PS_OK;
}
