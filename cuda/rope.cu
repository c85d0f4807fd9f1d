/* rope.cu - after the QKV matmul: per-head q/k RMSNorm (qwen3), RoPE in
 * llama (pairs 2i, 2i+1) or NEOX (pairs i, i + rope_dim/2) order, and the
 * write of the new K (rotated) and V rows into the paged f16 cache.
 *
 * Angles as the CPU computes them (ggml's recipe): theta_i = pos *
 * freq_scale * theta_scale^i with the power built by repeated f32
 * multiplication, then cosf/sinf (device cosf/sinf are within 2 ulp). */
#include "ops.cuh"

/* grid (T, n_head + n_head_kv), block = head_dim rounded up to a warp
 * multiple; thread d < head_dim owns element d, the rest only join barriers.
 * Blocks with y < n_head rotate a query head into q_out; the others rotate
 * a key head into kc and copy the matching value head into vc. */
__global__ void qkv_rope_store_kernel(const float *qkv, int64_t ld, const int32_t *pos, const int32_t *slot,
                                      const float *q_norm, const float *k_norm, struct rope_args ra,
                                      float *q_out, __half *kc, __half *vc)
{
    extern __shared__ float sh[]; /* [head_dim] */
    __shared__ double red[32];
    const int64_t t = blockIdx.x;
    const int h = blockIdx.y, d = threadIdx.x, D = ra.head_dim;
    const int is_q = h < ra.n_head;
    const int hk = h - ra.n_head;
    const int64_t q_dim = (int64_t)ra.n_head * D, kv_dim = (int64_t)ra.n_head_kv * D;
    const float *src = qkv + t * ld + (is_q ? (int64_t)h * D : q_dim + (int64_t)hk * D);
    const float *nw = is_q ? q_norm : k_norm;

    const int active = d < D;
    float v = active ? src[d] : 0.0f;
    if (nw) { /* block-uniform branch: every thread reaches the barriers */
        const double ss = block_sum_d((double)v * v, red);
        const float scale = (float)(1.0 / sqrt(ss / (double)D + (double)ra.eps));
        v = active ? v * scale * nw[d] : 0.0f;
    }
    if (active)
        sh[d] = v;
    __syncthreads();
    if (!active)
        return;
    if (d < ra.rope_dim) {
        const int half = ra.rope_dim / 2;
        const int i = ra.neox ? (d % half) : (d / 2);
        const int second = ra.neox ? (d >= half) : (d & 1);
        const float x0 = ra.neox ? sh[i] : sh[2 * i];
        const float x1 = ra.neox ? sh[i + half] : sh[2 * i + 1];
        float th = (float)pos[t];
        for (int j = 0; j < i; j++)
            th *= ra.theta_scale;
        const float a = th * ra.freq_scale;
        const float c = cosf(a), s = sinf(a);
        v = second ? x0 * s + x1 * c : x0 * c - x1 * s;
    }
    if (is_q) {
        q_out[t * q_dim + (int64_t)h * D + d] = v;
    } else {
        const int64_t off = (int64_t)slot[t] * kv_dim + (int64_t)hk * D + d;
        kc[off] = __float2half_rn(v);
        vc[off] = __float2half_rn(qkv[t * ld + q_dim + kv_dim + (int64_t)hk * D + d]);
    }
}

int op_qkv_rope_store(cudaStream_t st, const float *qkv, int64_t ld, int64_t T, const int32_t *pos,
                      const int32_t *slot, const float *q_norm, const float *k_norm,
                      const struct rope_args *ra, float *q_out, __half *kc, __half *vc)
{
    OP_REQUIRE(T >= 1 && T <= INT32_MAX, "qkv_rope_store");
    OP_REQUIRE(ra->head_dim >= 1 && ra->head_dim <= 1024, "qkv_rope_store");
    OP_REQUIRE(ra->rope_dim >= 0 && ra->rope_dim % 2 == 0 && ra->rope_dim <= ra->head_dim, "qkv_rope_store");
    OP_REQUIRE(ra->n_head >= 1 && ra->n_head_kv >= 1 && ra->n_head + ra->n_head_kv <= 65535, "qkv_rope_store");
    OP_REQUIRE(ld >= (int64_t)(ra->n_head + 2 * ra->n_head_kv) * ra->head_dim, "qkv_rope_store");
    dim3 grid((unsigned)T, (unsigned)(ra->n_head + ra->n_head_kv));
    const int threads = (ra->head_dim + 31) / 32 * 32;
    qkv_rope_store_kernel<<<grid, threads, ra->head_dim * sizeof(float), st>>>(
        qkv, ld, pos, slot, q_norm, k_norm, *ra, q_out, kc, vc);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}
