/* test_cuda_ops.cu - every CUDA op against a CPU twin on random inputs,
 * odd sizes and ragged batches.  Tolerances (NMSE vs the CPU reference):
 *   Q8 activation quantization      bit-exact (qs, d, s)
 *   GEMV Q4_0/Q4_1/Q8_0/F16/BF16    1e-9 vs quant_vec_dot (same integer dots; float order differs)
 *   cuBLAS f16 GEMM                 1e-5 vs f64 dot of dequantized weights (f16 activations)
 *   embedding (native types)        exact;  K-quant -> F16 converted tables 1e-6
 *   rmsnorm, swiglu                 1e-12
 *   rope/qk-norm q                  1e-9;   K/V written to the cache (f16) 1e-7
 *   attention prefill / decode      1e-9 vs f64 softmax attention over the f16 cache
 *   sampling                        exact argmax; truncation sets respected; draw frequencies within 5 sigma
 */
#include <algorithm>
#include <vector>

#include "ops.cuh"

extern "C" {
#include "backend_cuda.h"
#include "gpu_test.h"
}

#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            printf("%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));       \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)
#define OK(call)                                                                                 \
    do {                                                                                         \
        int rc_ = (call);                                                                        \
        if (rc_) {                                                                               \
            printf("%s:%d: %s: %s\n", __FILE__, __LINE__, #call, ps_error_last());               \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

template <class T> static T *dnew(size_t n)
{
    T *p;
    CK(cudaMalloc(&p, (n ? n : 1) * sizeof(T)));
    CK(cudaMemset(p, 0xff, (n ? n : 1) * sizeof(T))); /* poison: unwritten outputs show as NaN */
    return p;
}
template <class T> static T *dcopy(const std::vector<T> &h)
{
    T *p = dnew<T>(h.size());
    CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return p;
}
template <class T> static std::vector<T> hcopy(const T *d, size_t n)
{
    std::vector<T> h(n);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}
static std::vector<float> rand_vec(size_t n, float a)
{
    std::vector<float> v(n);
    for (auto &x : v)
        x = gt_sym(a);
    return v;
}
static std::vector<uint8_t> quantize_matrix(enum dtype t, const std::vector<float> &w, int64_t K, int64_t N)
{
    const size_t rb = dtype_row_bytes(t, K);
    std::vector<uint8_t> q(rb * N);
    for (int64_t r = 0; r < N; r++)
        OK(quant_row_quantize(t, &w[r * K], &q[r * rb], K));
    return q;
}

/* ---- activation quantization ---------------------------------------------- */

static void test_quantize_q8(void)
{
    const int64_t T = 5, K = 32 * 23, ldx = K + 7;
    std::vector<float> x = rand_vec(T * ldx, 3.0f);
    for (int64_t k = 0; k < 32; k++)
        x[2 * ldx + k] = 0.0f; /* an all-zero block: d = 0 */
    float *dx = dcopy(x);
    struct dq8 q = { dnew<int8_t>(T * K), dnew<float>(T * K / 32), dnew<float>(T * K / 32), K };
    OK(op_quantize_q8(0, dx, ldx, T, K, &q));
    auto qs = hcopy(q.qs, T * K);
    auto d = hcopy(q.d, T * K / 32), s = hcopy(q.s, T * K / 32);
    int64_t mism = 0;
    std::vector<uint8_t> ref(dtype_row_bytes(DT_Q8_1, K));
    for (int64_t t = 0; t < T; t++) {
        OK(quant_row_quantize(DT_Q8_1, &x[t * ldx], ref.data(), K));
        for (int64_t b = 0; b < K / 32; b++) {
            const uint8_t *blk = &ref[b * 36];
            uint16_t hd, hs;
            memcpy(&hd, blk, 2);
            memcpy(&hs, blk + 2, 2);
            mism += fp16_to_f32(hd) != d[t * K / 32 + b];
            mism += fp16_to_f32(hs) != s[t * K / 32 + b];
            for (int j = 0; j < 32; j++)
                mism += (int8_t)blk[4 + j] != qs[t * K + b * 32 + j];
        }
    }
    GT_CHECK(mism == 0, "quantize_q8: %lld values differ from quant_row_quantize(Q8_1)", (long long)mism);
    printf("%-58s %s\n", "quantize_q8 vs CPU Q8_1 (bit-exact)", mism ? "NOT OK" : "OK");
    cudaFree(dx); cudaFree(q.qs); cudaFree(q.d); cudaFree(q.s);
}

/* ---- matmul -------------------------------------------------------------- */

static void test_matmul(enum dtype t, int64_t K, int64_t N)
{
    std::vector<float> wf = rand_vec(K * N, 1.0f);
    std::vector<uint8_t> wq = quantize_matrix(t, wf, K, N);
    struct dmat W;
    OK(dmat_upload(wq.data(), t, K, N, 1, 0, &W));
    const size_t rb = dtype_row_bytes(t, K);
    std::vector<float> bias = rand_vec(N, 0.5f);
    float *dbias = dcopy(bias);
    const int quantized = t == DT_Q4_0 || t == DT_Q4_1 || t == DT_Q8_0;

    struct mm_ctx mc;
    memset(&mc, 0, sizeof mc);
    const int64_t maxT = 130;
    if (cublasCreate(&mc.cublas) != CUBLAS_STATUS_SUCCESS) {
        printf("cublasCreate failed\n");
        exit(1);
    }
    mc.act = { dnew<int8_t>(maxT * K), dnew<float>(maxT * K / 32), dnew<float>(maxT * K / 32), K };
    mc.act16 = dnew<__half>(maxT * K);
    mc.mmv_max = MMV_MAX_T;

    /* dequantized weights for the f64 reference of the cuBLAS path */
    std::vector<float> wd(K * N);
    for (int64_t r = 0; r < N; r++)
        OK(quant_row_dequantize(t, &wq[r * rb], &wd[r * K], K));
    const int converted = W.type != t; /* K quants live as F16 on the device */
    if (converted)
        for (auto &v : wd)
            v = fp16_to_f32(f32_to_fp16(v));

    const int64_t Ts[] = { 1, 2, 3, 5, 8, 9, 33, 130 };
    for (int64_t T : Ts) {
        const int64_t ld_out = N + 3;
        std::vector<float> x = rand_vec(T * K, 2.0f);
        std::vector<float> base = rand_vec(T * ld_out, 1.0f);
        float *dx = dcopy(x);
        for (int accumulate = 0; accumulate < 2; accumulate++) {
            float *dout = dcopy(base);
            OK(op_matmul(0, &mc, &W, dx, K, T, dout, ld_out, dbias, accumulate));
            auto got = hcopy(dout, T * ld_out);
            std::vector<float> g, ref;
            const enum dtype vt = dtype_info_get(t)->vec_dot_type;
            std::vector<uint8_t> act(dtype_row_bytes(vt, K));
            for (int64_t i = 0; i < T; i++) {
                const int exact = T <= MMV_MAX_T && !converted;
                if (exact)
                    OK(quant_row_quantize(vt, &x[i * K], act.data(), K));
                for (int64_t r = 0; r < N; r++) {
                    double v;
                    if (exact) {
                        v = quant_vec_dot(t, &wq[r * rb], act.data(), K);
                    } else {
                        v = 0.0;
                        for (int64_t k = 0; k < K; k++)
                            v += (double)wd[r * K + k] * x[i * K + k];
                    }
                    v += bias[r];
                    if (accumulate)
                        v += base[i * ld_out + r];
                    ref.push_back((float)v);
                    g.push_back(got[i * ld_out + r]);
                }
                for (int64_t r = N; r < ld_out; r++) /* columns past N untouched */
                    GT_CHECK(memcmp(&got[i * ld_out + r], &base[i * ld_out + r], 4) == 0, "matmul wrote column %lld", (long long)r);
            }
            char what[128];
            snprintf(what, sizeof what, "matmul %s K=%lld N=%lld T=%lld%s (%s)", dtype_info_get(t)->name,
                     (long long)K, (long long)N, (long long)T, accumulate ? " +=" : "",
                     T <= MMV_MAX_T ? (quantized ? "gemv q8" : "gemv f32") : "cublas f16");
            if (converted)
                strncat(what, " as F16", sizeof what - strlen(what) - 1);
            gt_nmse_check(what, g.data(), ref.data(), (int64_t)g.size(), T <= MMV_MAX_T ? 1e-9 : 1e-5);
            cudaFree(dout);
        }
        cudaFree(dx);
    }
    cudaFree(dbias);
    cudaFree(mc.act.qs); cudaFree(mc.act.d); cudaFree(mc.act.s); cudaFree(mc.act16);
    cublasDestroy(mc.cublas);
    dmat_free(&W);
}

/* ---- embedding ------------------------------------------------------------ */

static void test_embed(enum dtype t, int64_t E, int64_t V)
{
    std::vector<float> wf = rand_vec(E * V, 1.0f);
    std::vector<uint8_t> wq = quantize_matrix(t, wf, E, V);
    struct dmat M;
    OK(dmat_upload(wq.data(), t, E, V, 0, 0, &M));
    std::vector<int32_t> tok = { 0, (int32_t)V - 1, 5, 5, (int32_t)(V / 2), 1, 2 };
    for (auto &id : tok)
        id %= (int32_t)V; /* every id a row of the table */
    const int64_t T = (int64_t)tok.size();
    int32_t *dtok = dcopy(tok);
    float *dx = dnew<float>(T * E);
    OK(op_embed(0, &M, dtok, T, dx));
    auto got = hcopy(dx, T * E);
    std::vector<float> ref(T * E);
    const size_t rb = dtype_row_bytes(t, E);
    for (int64_t i = 0; i < T; i++) {
        OK(quant_row_dequantize(t, &wq[tok[i] * rb], &ref[i * E], E));
        if (M.type != t) /* converted at upload: through f16 */
            for (int64_t k = 0; k < E; k++)
                ref[i * E + k] = fp16_to_f32(f32_to_fp16(ref[i * E + k]));
    }
    char what[96];
    snprintf(what, sizeof what, "embed %s E=%lld V=%lld", dtype_info_get(t)->name, (long long)E, (long long)V);
    gt_nmse_check(what, got.data(), ref.data(), T * E, M.type == t ? 0.0 : 1e-6);
    cudaFree(dtok); cudaFree(dx);
    dmat_free(&M);
}

/* ---- rmsnorm / swiglu ------------------------------------------------------ */

template <typename T> static bool same_dev(const T *a, const T *b, int64_t n)
{
    auto ha = hcopy(a, n), hb = hcopy(b, n);
    return memcmp(ha.data(), hb.data(), (size_t)n * sizeof(T)) == 0;
}

static bool same_dq8(const struct dq8 &a, const struct dq8 &b, int64_t rows, int64_t K)
{
    return same_dev(a.qs, b.qs, rows * K) && same_dev(a.d, b.d, rows * K / 32) && same_dev(a.s, b.s, rows * K / 32);
}

static void cpu_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

static void test_rmsnorm(int64_t rows, int64_t n, int with_res, int with_idx)
{
    std::vector<float> x = rand_vec(rows * n, 4.0f), w = rand_vec(n, 1.5f), res = rand_vec(rows * n, 1.0f);
    std::vector<int32_t> idx(rows);
    for (int64_t r = 0; r < rows; r++)
        idx[r] = (int32_t)((r * 7 + 3) % rows);
    float *dx = dcopy(x), *dw = dcopy(w), *dres = dcopy(res), *dout = dnew<float>(rows * n);
    int32_t *didx = dcopy(idx);
    OK(op_rmsnorm(0, dout, dx, with_res ? dres : NULL, dw, with_idx ? didx : NULL, rows, n, 1e-5f));
    auto got = hcopy(dout, rows * n);
    std::vector<float> ref(rows * n), src(n);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t sr = with_idx ? idx[r] : r;
        for (int64_t i = 0; i < n; i++)
            src[i] = x[sr * n + i] + (with_res ? res[r * n + i] : 0.0f);
        cpu_rmsnorm(&ref[r * n], src.data(), w.data(), n, 1e-5f);
    }
    char what[96];
    snprintf(what, sizeof what, "rmsnorm rows=%lld n=%lld%s%s", (long long)rows, (long long)n,
             with_res ? " +res" : "", with_idx ? " gather" : "");
    gt_nmse_check(what, got.data(), ref.data(), rows * n, 1e-12);
    if (with_res) {
        auto xs = hcopy(dx, rows * n);
        std::vector<float> xr(rows * n);
        for (int64_t i = 0; i < rows * n; i++)
            xr[i] = x[i] + res[i];
        gt_nmse_check("  residual written back", xs.data(), xr.data(), rows * n, 0.0);
    }
    if (n % 32 == 0 && !with_res) {
        /* fused Q8 rows: bit for bit op_rmsnorm + op_quantize_q8 */
        struct dq8 a = { dnew<int8_t>(rows * n), dnew<float>(rows * n / 32), dnew<float>(rows * n / 32), n };
        struct dq8 b = { dnew<int8_t>(rows * n), dnew<float>(rows * n / 32), dnew<float>(rows * n / 32), n };
        float *dout2 = dnew<float>(rows * n);
        OK(op_rmsnorm_q8(0, dout2, dx, NULL, dw, with_idx ? didx : NULL, rows, n, 1e-5f, &a));
        OK(op_quantize_q8(0, dout, n, rows, n, &b));
        const bool ok = same_dq8(a, b, rows, n) && same_dev(dout, dout2, rows * n);
        GT_CHECK(ok, "rmsnorm_q8 rows=%lld n=%lld: differs from rmsnorm + quantize_q8", (long long)rows, (long long)n);
        printf("%-58s %s\n", "  fused Q8 rows == rmsnorm + quantize_q8 (bit-exact)", ok ? "OK" : "NOT OK");
        cudaFree(a.qs); cudaFree(a.d); cudaFree(a.s); cudaFree(b.qs); cudaFree(b.d); cudaFree(b.s); cudaFree(dout2);
    }
    cudaFree(dx); cudaFree(dw); cudaFree(dres); cudaFree(dout); cudaFree(didx);
}

static void test_swiglu(int64_t T, int64_t F)
{
    std::vector<float> gu = rand_vec(T * 2 * F, 6.0f);
    float *dgu = dcopy(gu), *dh = dnew<float>(T * F);
    OK(op_swiglu(0, dgu, dh, T, F, NULL));
    auto got = hcopy(dh, T * F);
    if (F % 32 == 0) {
        struct dq8 a = { dnew<int8_t>(T * F), dnew<float>(T * F / 32), dnew<float>(T * F / 32), F };
        struct dq8 b = { dnew<int8_t>(T * F), dnew<float>(T * F / 32), dnew<float>(T * F / 32), F };
        float *dh2 = dnew<float>(T * F);
        OK(op_swiglu(0, dgu, dh2, T, F, &a));
        OK(op_quantize_q8(0, dh, F, T, F, &b));
        const bool ok = same_dq8(a, b, T, F) && same_dev(dh, dh2, T * F);
        GT_CHECK(ok, "swiglu q8 T=%lld F=%lld: differs from swiglu + quantize_q8", (long long)T, (long long)F);
        printf("%-58s %s\n", "  fused Q8 rows == swiglu + quantize_q8 (bit-exact)", ok ? "OK" : "NOT OK");
        cudaFree(a.qs); cudaFree(a.d); cudaFree(a.s); cudaFree(b.qs); cudaFree(b.d); cudaFree(b.s); cudaFree(dh2);
    }
    std::vector<float> ref(T * F);
    for (int64_t t = 0; t < T; t++)
        for (int64_t f = 0; f < F; f++) {
            const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
            ref[t * F + f] = g / (1.0f + expf(-g)) * u;
        }
    char what[64];
    snprintf(what, sizeof what, "swiglu T=%lld F=%lld", (long long)T, (long long)F);
    gt_nmse_check(what, got.data(), ref.data(), T * F, 1e-12);
    cudaFree(dgu); cudaFree(dh);
}

/* ---- rope + qk norm + KV write -------------------------------------------- */

static void cpu_rope(const struct rope_args &ra, float *x, int32_t pos)
{
    const int half = ra.rope_dim / 2;
    float th = (float)pos;
    std::vector<float> c(half), s(half);
    for (int i = 0; i < half; i++) {
        const float a = th * ra.freq_scale;
        c[i] = cosf(a);
        s[i] = sinf(a);
        th *= ra.theta_scale;
    }
    for (int i = 0; i < half; i++) {
        const int i0 = ra.neox ? i : 2 * i, i1 = ra.neox ? i + half : 2 * i + 1;
        const float x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c[i] - x1 * s[i];
        x[i1] = x0 * s[i] + x1 * c[i];
    }
}

static void test_rope(int D, int rope_dim, int neox, int qk_norm)
{
    struct rope_args ra = { 6, 2, D, rope_dim, neox, powf(10000.0f, -2.0f / (float)rope_dim), 1.0f, 1e-6f };
    const int64_t T = 7, q_dim = 6 * D, kv_dim = 2 * D, ld = q_dim + 2 * kv_dim + 5, n_slots = 64;
    std::vector<float> qkv = rand_vec(T * ld, 2.0f), qn = rand_vec(D, 1.5f), kn = rand_vec(D, 1.5f);
    std::vector<int32_t> pos = { 0, 1, 17, 511, 4095, 30000, 3 }, slot = { 5, 0, 63, 7, 8, 9, 40 };
    float *dqkv = dcopy(qkv), *dqn = dcopy(qn), *dkn = dcopy(kn), *dq = dnew<float>(T * q_dim);
    int32_t *dpos = dcopy(pos), *dslot = dcopy(slot);
    __half *kc = dnew<__half>(n_slots * kv_dim), *vc = dnew<__half>(n_slots * kv_dim);
    OK(op_qkv_rope_store(0, dqkv, ld, T, dpos, dslot, qk_norm ? dqn : NULL, qk_norm ? dkn : NULL, &ra, dq, kc, vc));
    auto gq = hcopy(dq, T * q_dim);
    auto gk = hcopy(kc, n_slots * kv_dim), gv = hcopy(vc, n_slots * kv_dim);
    std::vector<float> rq(T * q_dim), gkf, rkf, gvf, rvf;
    for (int64_t t = 0; t < T; t++) {
        for (int h = 0; h < 6; h++) {
            float *o = &rq[t * q_dim + h * D];
            memcpy(o, &qkv[t * ld + h * D], D * sizeof(float));
            if (qk_norm)
                cpu_rmsnorm(o, o, qn.data(), D, ra.eps);
            cpu_rope(ra, o, pos[t]);
        }
        for (int h = 0; h < 2; h++) {
            std::vector<float> k(&qkv[t * ld + q_dim + h * D], &qkv[t * ld + q_dim + h * D] + D);
            if (qk_norm)
                cpu_rmsnorm(k.data(), k.data(), kn.data(), D, ra.eps);
            cpu_rope(ra, k.data(), pos[t]);
            for (int d = 0; d < D; d++) {
                rkf.push_back(fp16_to_f32(f32_to_fp16(k[d])));
                gkf.push_back(__half2float(gk[slot[t] * kv_dim + h * D + d]));
                rvf.push_back(fp16_to_f32(f32_to_fp16(qkv[t * ld + q_dim + kv_dim + h * D + d])));
                gvf.push_back(__half2float(gv[slot[t] * kv_dim + h * D + d]));
            }
        }
    }
    char what[96];
    snprintf(what, sizeof what, "rope %s D=%d rope_dim=%d%s: q", neox ? "neox" : "normal", D, rope_dim,
             qk_norm ? " qk-norm" : "");
    gt_nmse_check(what, gq.data(), rq.data(), T * q_dim, 1e-9);
    gt_nmse_check("  k into the cache (f16)", gkf.data(), rkf.data(), (int64_t)gkf.size(), 1e-7);
    gt_nmse_check("  v into the cache (f16)", gvf.data(), rvf.data(), (int64_t)gvf.size(), 0.0);
    cudaFree(dqkv); cudaFree(dqn); cudaFree(dkn); cudaFree(dq); cudaFree(dpos); cudaFree(dslot);
    cudaFree(kc); cudaFree(vc);
}

/* ---- attention ------------------------------------------------------------ */

struct attn_case {
    int n_head, n_head_kv, D, bs;
    std::vector<int32_t> pos0, nq;  /* per sequence */
};

/* f64 reference: out[t][h] = softmax(q.k/sqrt(D)) v over positions 0..pos of its sequence */
static void test_attention(const attn_case &c, int decode, int splits)
{
    const int S = (int)c.pos0.size(), D = c.D, G = c.n_head / c.n_head_kv;
    const int64_t q_dim = (int64_t)c.n_head * D, kv_dim = (int64_t)c.n_head_kv * D;
    std::vector<int32_t> q0(S), indptr(S + 1), indices, ctx(S), work;
    int64_t T = 0;
    int n_blocks_total = 0;
    for (int s = 0; s < S; s++) {
        q0[s] = (int32_t)T;
        T += c.nq[s];
        ctx[s] = c.pos0[s] + c.nq[s];
        n_blocks_total += (ctx[s] + c.bs - 1) / c.bs;
        for (int j = 0; j < c.nq[s]; j += ATTN_PREFILL_TQ) {
            work.push_back(s);
            work.push_back(j);
        }
    }
    /* physical blocks: a shuffled permutation with gaps */
    const int n_phys = n_blocks_total + 9;
    std::vector<int32_t> perm(n_phys);
    for (int i = 0; i < n_phys; i++)
        perm[i] = i;
    for (int i = n_phys - 1; i > 0; i--)
        std::swap(perm[i], perm[gt_randint(i + 1)]);
    int k = 0;
    for (int s = 0; s < S; s++) {
        indptr[s] = (int32_t)indices.size();
        for (int b = 0; b < (ctx[s] + c.bs - 1) / c.bs; b++)
            indices.push_back(perm[k++]);
    }
    indptr[S] = (int32_t)indices.size();
    const int64_t n_slots = (int64_t)n_phys * c.bs;
    std::vector<__half> kc(n_slots * kv_dim), vc(n_slots * kv_dim);
    for (auto &h : kc) h = __float2half(gt_sym(1.0f));
    for (auto &h : vc) h = __float2half(gt_sym(1.0f));
    std::vector<float> q = rand_vec(T * q_dim, 2.0f);

    __half *dkc = dcopy(kc), *dvc = dcopy(vc);
    float *dq = dcopy(q), *dout = dnew<float>(T * q_dim);
    int32_t *dq0 = dcopy(q0), *dnq = dcopy(c.nq), *dpos0 = dcopy(c.pos0), *dindptr = dcopy(indptr),
            *dindices = dcopy(indices), *dctx = dcopy(ctx), *dwork = dcopy(work);
    struct attn_kv kv = { dkc, dvc, c.bs, c.n_head, c.n_head_kv, D, dindptr, dindices };
    if (decode) {
        float *po = dnew<float>((size_t)S * c.n_head * splits * D), *pml = dnew<float>((size_t)S * c.n_head * splits * 2);
        OK(op_attn_decode(0, &kv, dq, dout, dctx, S, splits, po, pml));
        CK(cudaDeviceSynchronize());
        cudaFree(po); cudaFree(pml);
    } else {
        OK(op_attn_prefill(0, &kv, dq, dout, dq0, dnq, dpos0, dwork, (int64_t)work.size() / 2));
    }
    auto got = hcopy(dout, T * q_dim);

    std::vector<float> ref(T * q_dim);
    std::vector<double> sc;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < c.nq[s]; i++) {
            const int64_t t = q0[s] + i;
            const int n_ctx = c.pos0[s] + i + 1;
            for (int h = 0; h < c.n_head; h++) {
                const int hk = h / G;
                sc.assign(n_ctx, 0.0);
                double mx = -INFINITY;
                for (int p = 0; p < n_ctx; p++) {
                    const int64_t slot = (int64_t)indices[indptr[s] + p / c.bs] * c.bs + p % c.bs;
                    double d = 0.0;
                    for (int e = 0; e < D; e++)
                        d += (double)q[t * q_dim + h * D + e] * __half2float(kc[slot * kv_dim + hk * D + e]);
                    sc[p] = d / sqrt((double)D);
                    mx = std::max(mx, sc[p]);
                }
                double sum = 0.0;
                for (int p = 0; p < n_ctx; p++)
                    sum += (sc[p] = exp(sc[p] - mx));
                for (int e = 0; e < D; e++) {
                    double o = 0.0;
                    for (int p = 0; p < n_ctx; p++) {
                        const int64_t slot = (int64_t)indices[indptr[s] + p / c.bs] * c.bs + p % c.bs;
                        o += sc[p] * __half2float(vc[slot * kv_dim + hk * D + e]);
                    }
                    ref[t * q_dim + h * D + e] = (float)(o / sum);
                }
            }
        }
    char what[128];
    snprintf(what, sizeof what, "attention %s heads %d/%d D=%d bs=%d seqs=%d T=%lld%s", decode ? "decode" : "prefill",
             c.n_head, c.n_head_kv, D, c.bs, S, (long long)T, decode ? (splits > 1 ? " split-K" : " 1 split") : "");
    if (decode)
        snprintf(what + strlen(what), sizeof what - strlen(what), " S=%d", splits);
    gt_nmse_check(what, got.data(), ref.data(), T * q_dim, 1e-9);
    cudaFree(dkc); cudaFree(dvc); cudaFree(dq); cudaFree(dout); cudaFree(dq0); cudaFree(dnq); cudaFree(dpos0);
    cudaFree(dindptr); cudaFree(dindices); cudaFree(dctx); cudaFree(dwork);
}

/* ---- sampling -------------------------------------------------------------- */

static void test_sampling(void)
{
    const int V = 1003, words = (V + 31) / 32;
    const int R = 64;
    std::vector<float> lg(R * V);
    for (auto &x : lg) x = gt_sym(4.0f);
    std::vector<struct sample_param_dev> sp(R);
    std::vector<uint32_t> mask(R * words, 0xffffffffu);
    for (int r = 0; r < R; r++) {
        sp[r] = { 0.0f, 0, 1.0f, 0.0f, 1234u + (uint64_t)r, (uint64_t)r };
        if (r % 4 == 1) sp[r].temperature = 1.0f, sp[r].top_k = 5;
        if (r % 4 == 2) sp[r].temperature = 0.8f, sp[r].top_p = 0.3f;
        if (r % 4 == 3) sp[r].temperature = 1.5f, sp[r].min_p = 0.2f;
        if (r % 8 == 4) /* masked greedy: only ids = 3 mod 7 */
            for (int i = 0; i < V; i++)
                if (i % 7 != 3) mask[r * words + i / 32] &= ~(1u << (i % 32));
    }
    for (int i = 0; i < words; i++) mask[(R - 1) * words + i] = 0; /* allows nothing */
    sp[R - 1].temperature = 0.0f;
    float *dl = dcopy(lg);
    struct sample_param_dev *dsp = dcopy(sp);
    uint32_t *dm = dcopy(mask);
    int32_t *dt = dnew<int32_t>(R);
    OK(op_sample(0, dl, R, V, dsp, dm, words, dt));
    auto tok = hcopy(dt, R);
    int bad = 0;
    for (int r = 0; r < R - 1; r++) {
        const float *l = &lg[r * V];
        auto allowed = [&](int i) { return (mask[r * words + i / 32] >> (i % 32)) & 1u; };
        int am = -1;
        for (int i = 0; i < V; i++)
            if (allowed(i) && (am < 0 || l[i] > l[am])) am = i;
        const int t = tok[r];
        if (t < 0 || t >= V || !allowed(t)) { bad++; printf("    row %d: token %d not allowed\n", r, t); continue; }
        if (sp[r].temperature <= 0.0f) {
            if (t != am) { bad++; printf("    row %d: greedy %d, argmax %d\n", r, t, am); }
        } else if (sp[r].top_k > 0) {
            int above = 0;
            for (int i = 0; i < V; i++) above += allowed(i) && l[i] > l[t];
            if (above >= sp[r].top_k) { bad++; printf("    row %d: token %d outside top-%d\n", r, t, sp[r].top_k); }
        } else if (sp[r].top_p < 1.0f) {
            /* mass of tokens strictly above t must be < top_p */
            double Z = 0, above = 0;
            for (int i = 0; i < V; i++) {
                const double e = exp((double)(l[i] - l[am]) / sp[r].temperature);
                Z += e;
                if (l[i] > l[t]) above += e;
            }
            if (above / Z >= sp[r].top_p + 1e-4) { bad++; printf("    row %d: token %d outside top-p\n", r, t); }
        } else if (sp[r].min_p > 0.0f) {
            if (exp((double)(l[t] - l[am]) / sp[r].temperature) < sp[r].min_p * (1 - 1e-4)) {
                bad++; printf("    row %d: token %d below min-p\n", r, t);
            }
        }
    }
    GT_CHECK(bad == 0, "%d sampled tokens violate their settings", bad);
    GT_CHECK(tok[R - 1] == -1, "all-masked row gave %d", tok[R - 1]);
    printf("%-58s %s\n", "sampling: greedy/mask/top-k/top-p/min-p rows", bad || tok[R - 1] != -1 ? "NOT OK" : "OK");

    /* non-finite logits (host: sampler_logits_check): a NaN, +inf or -inf
     * anywhere in the row, a masked-out id included, gives -2
     * (BACKEND_TOKEN_NONFINITE) in every mode; a row whose mask allows
     * nothing still gives -1 first */
    {
        const int RN = 8;
        std::vector<float> ln(RN * V);
        for (auto &x : ln) x = gt_sym(4.0f);
        const float badv[3] = { NAN, INFINITY, -INFINITY };
        std::vector<struct sample_param_dev> spn(RN);
        std::vector<uint32_t> mn(RN * words, 0xffffffffu);
        for (int r = 0; r < RN; r++) {
            spn[r] = { r % 2 ? 0.9f : 0.0f, r % 4 == 1 ? 5 : 0, r % 4 == 3 ? 0.5f : 1.0f, 0.0f, 7u, (uint64_t)r };
            ln[r * V + (r * 131) % V] = badv[r % 3];
        }
        for (int i = 0; i < V; i++) ln[5 * V + i] = NAN;             /* every logit NaN */
        mn[6 * words + ((6 * 131) % V) / 32] &= ~(1u << (((6 * 131) % V) % 32)); /* the bad id masked out */
        for (int i = 0; i < words; i++) mn[7 * words + i] = 0;       /* allows nothing */
        float *dln = dcopy(ln);
        struct sample_param_dev *dspn = dcopy(spn);
        uint32_t *dmn = dcopy(mn);
        int32_t *dtn = dnew<int32_t>(RN);
        OK(op_sample(0, dln, RN, V, dspn, dmn, words, dtn));
        auto tn = hcopy(dtn, RN);
        int nbad = 0;
        for (int r = 0; r < RN; r++)
            if (tn[r] != (r == 7 ? -1 : -2)) { nbad++; printf("    non-finite row %d: token %d\n", r, tn[r]); }
        GT_CHECK(nbad == 0, "%d non-finite rows not flagged", nbad);
        printf("%-58s %s\n", "sampling: non-finite rows give -2", nbad ? "NOT OK" : "OK");
        cudaFree(dln); cudaFree(dspn); cudaFree(dmn); cudaFree(dtn);
    }

    /* frequencies: 8 tokens, temperature 1, 20000 draws (rows) */
    const int V2 = 8, R2 = 20000;
    const float l2[V2] = { 0.0f, 1.0f, -1.0f, 2.0f, 0.5f, -3.0f, 1.5f, 0.2f };
    std::vector<float> lg2(R2 * V2);
    std::vector<struct sample_param_dev> sp2(R2);
    for (int r = 0; r < R2; r++) {
        memcpy(&lg2[r * V2], l2, sizeof l2);
        sp2[r] = { 1.0f, 0, 1.0f, 0.0f, 42u, (uint64_t)r };
    }
    float *dl2 = dcopy(lg2);
    struct sample_param_dev *dsp2 = dcopy(sp2);
    int32_t *dt2 = dnew<int32_t>(R2);
    OK(op_sample(0, dl2, R2, V2, dsp2, NULL, 0, dt2));
    auto tok2 = hcopy(dt2, R2);
    double Z = 0;
    for (int i = 0; i < V2; i++) Z += exp(l2[i]);
    int worst_ok = 1;
    for (int i = 0; i < V2; i++) {
        const double p = exp(l2[i]) / Z;
        const double n = (double)std::count(tok2.begin(), tok2.end(), i);
        const double sigma = sqrt(R2 * p * (1 - p));
        if (fabs(n - R2 * p) > 5 * sigma) { worst_ok = 0; printf("    token %d: %g draws, expected %g\n", i, n, R2 * p); }
    }
    GT_CHECK(worst_ok, "draw frequencies off by > 5 sigma");
    printf("%-58s %s\n", "sampling: 20000 draws match softmax (5 sigma)", worst_ok ? "OK" : "NOT OK");
    /* same (seed, step) => same token */
    int32_t *dt3 = dnew<int32_t>(R2);
    OK(op_sample(0, dl2, R2, V2, dsp2, NULL, 0, dt3));
    auto tok3 = hcopy(dt3, R2);
    GT_CHECK(tok2 == tok3, "sampling not deterministic for equal (seed, step)");
    cudaFree(dl); cudaFree(dsp); cudaFree(dm); cudaFree(dt); cudaFree(dl2); cudaFree(dsp2); cudaFree(dt2); cudaFree(dt3);
}

int main(void)
{
    if (cuda_device_count() < 1) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        GT_SKIP("no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (cc %d.%d)\n", prop.name, prop.major, prop.minor);
    quant_init();

    test_quantize_q8();
    const enum dtype types[] = { DT_Q4_0, DT_Q4_1, DT_Q8_0, DT_F16, DT_BF16 };
    for (enum dtype t : types) {
        test_matmul(t, 576, 67);
        test_matmul(t, 96, 1);
    }
    test_matmul(DT_Q4_1, 1536, 576); /* SmolLM2 ffn_down shape */
    test_matmul(DT_Q4_K, 256, 33);   /* converted to F16 at upload */

    test_embed(DT_Q8_0, 576, 301);
    test_embed(DT_Q4_0, 64, 17);
    test_embed(DT_Q4_1, 96, 17);
    test_embed(DT_F16, 40, 9);
    test_embed(DT_BF16, 40, 9);
    test_embed(DT_Q6_K, 256, 5);

    test_rmsnorm(1, 576, 0, 0);
    test_rmsnorm(3, 577, 1, 0);
    test_rmsnorm(17, 2048, 0, 1);
    test_rmsnorm(4, 896, 0, 0);
    test_swiglu(1, 1536);
    test_swiglu(3, 4864);
    test_swiglu(5, 1001);

    test_rope(64, 64, 0, 0);
    test_rope(64, 64, 1, 0);
    test_rope(128, 128, 1, 1);
    test_rope(64, 32, 0, 1);
    test_rope(16, 16, 0, 1);
    test_rope(80, 80, 1, 0);

    attn_case a1 = { 9, 3, 64, 16, { 0, 0, 20, 100, 3, 0 }, { 1, 37, 5, 16, 70, 16 } };
    attn_case a2 = { 4, 4, 128, 16, { 0, 7, 250 }, { 33, 1, 17 } };
    attn_case a3 = { 14, 2, 64, 7, { 5, 0 }, { 40, 3 } }; /* odd block size, group 7 */
    test_attention(a1, 0, 1);
    test_attention(a2, 0, 1);
    test_attention(a3, 0, 1);
    attn_case a4 = { 4, 2, 16, 16, { 0, 9 }, { 19, 2 } };
    attn_case a5 = { 5, 1, 80, 16, { 30 }, { 21 } };
    test_attention(a4, 0, 1);
    test_attention(a5, 0, 1);
    attn_case d4 = { 4, 2, 16, 16, { 0, 90 }, { 1, 1 } };
    test_attention(d4, 1, 2);
    attn_case d1 = { 9, 3, 64, 16, { 0, 16, 63, 64, 2999, 200 }, { 1, 1, 1, 1, 1, 1 } };
    attn_case d2 = { 16, 8, 128, 16, { 0, 1000, 4095 }, { 1, 1, 1 } };
    attn_case d3 = { 14, 2, 64, 5, { 77, 3 }, { 1, 1 } };
    const int splits[] = { 1, 3, 16 };
    for (int sp : splits) {
        test_attention(d1, 1, sp);
        test_attention(d2, 1, sp);
        test_attention(d3, 1, sp);
    }
    test_sampling();
    CK(cudaDeviceSynchronize());
    GT_DONE();
}
