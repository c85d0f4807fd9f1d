/* test_backend_cpu - the CPU backend against a naive f32 forward written
 * here (weights dequantized row by row, plain loops, contiguous f32 K/V, no
 * activation quantization), on the real model and on synthetic llama / qwen2
 * / qwen3 models; then paged-KV, chunking, batching and thread-count
 * invariance, copy_block, and rejection of bad plans.
 *
 * Tolerance vs the naive reference: the backend quantizes activations to the
 * weights' vec_dot type (Q8_1 / Q8_0 / Q8_K) and keeps K/V in f16, so logits
 * differ slightly: max |diff| / (max - min of the reference row) must stay
 * under REF_REL_TOL, and the argmax must agree unless the reference's top-2
 * margin is below REF_MARGIN.
 *
 * Exact mode (model_matrices_to_f32 + KV_F32): nothing is rounded on either
 * side, so the backend must match the naive reference to REF_REL_TOL_EXACT,
 * and the invariance checks are repeated on the f32 cache.
 *
 * The q8 cache (KV_Q8): the same reference checks and invariances as the
 * f16 cache, its logits against the f16 cache's (NMSE over all positions'
 * logits and max |diff| / range of a row, bounds Q8_* below), and its
 * scalar attention (a child process with PARASERVE_SIMD=scalar) against
 * the AVX2 one.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/status.h"
#include "engine/backend.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include "test_util.h"

#define REF_REL_TOL 0.03
#define REF_REL_TOL_EXACT 1e-5
#define REF_MARGIN  0.05f
/* SmolLM2 has massive activations (hundreds) in a few channels; Q8 blocks
 * holding them lose the small values beside them.  Measured: 4.4% of range
 * on random tokens.  (llama.cpp's own logits are 1.6% of range off this
 * f32 reference on real prompts; swapping the reference's f32 dot for
 * quant_vec_dot alone reproduces the backend's error.) */
#define REF_REL_TOL_REAL 0.07
#define REF_MARGIN_REAL  0.5f

/* q8 cache vs f16 cache, same kernels otherwise (the q8 scores also
 * quantize the query to int8, as llama.cpp does for a q8_0 cache).
 * Measured (AVX2, this VM): SmolLM2 NMSE 1.8e-3, max |diff| / range 0.143
 * (argmax 21/24); synthetic hd32 NMSE 5.0e-4, 0.022 (38/40).  The q8 cache
 * against the naive f32 reference on SmolLM2: 0.131 of range (the f16
 * cache: 0.051), hence its own bound REF_REL_TOL_REAL_Q8.  (Against
 * llama.cpp on real prompts the q8 cache stays inside test_model_ref's f16
 * bounds.) */
#define Q8_NMSE_REAL    5e-3
#define Q8_REL_REAL     0.25
#define Q8_NMSE_SYNTH   1.5e-3
#define Q8_REL_SYNTH    0.06
#define REF_REL_TOL_REAL_Q8 0.2
/* scalar vs AVX2, q8 cache.  Synthetic: the attention's P.V sums in
 * another order only (the scores are bitwise equal; measured 8e-8 of
 * range).  Real model: every kernel differs
 * in order and SmolLM2 amplifies it (measured: 0.043 for q8; the f16
 * cache's own scalar vs AVX2 gap is printed beside it). */
#define Q8_SIMD_REL_SYNTH 1e-5
#define Q8_SIMD_REL_REAL  0.12

/* ---- naive reference ------------------------------------------------------ */

/* out[T][N] = in[T][K] . W^T, W row-major [N][K], rows dequantized one at a time */
/* Diagnostics (env PS_REF_ACT): 1 = round-trip the reference's matmul inputs
 * through the vec_dot type, 2 = use quant_vec_dot itself; 0 = plain f32. */
static int ref_quant_act;

static void ref_matmul(const struct weight *w, const float *in, float *out, int T)
{
    const int64_t K = w->ne[0], N = w->ne[1];
    const size_t rb = dtype_row_bytes(w->type, K);
    float *row = malloc((size_t)K * sizeof *row);
    float *qin = NULL;
    if (ref_quant_act) {
        enum dtype vt = dtype_info_get(w->type)->vec_dot_type;
        void *buf = malloc(dtype_row_bytes(vt, K));
        qin = malloc((size_t)T * K * sizeof *qin);
        for (int t = 0; t < T; t++) {
            quant_row_quantize(vt, in + (int64_t)t * K, buf, K);
            quant_row_dequantize(vt, buf, qin + (int64_t)t * K, K);
        }
        free(buf);
        in = qin;
    }
    for (int64_t r = 0; r < N; r++) {
        quant_row_dequantize(w->type, (const uint8_t *)w->data + (size_t)r * rb, row, K);
        for (int t = 0; t < T && ref_quant_act == 2; t++) {
            enum dtype vt = dtype_info_get(w->type)->vec_dot_type;
            void *buf = malloc(dtype_row_bytes(vt, K));
            quant_row_quantize(vt, in + (int64_t)t * K, buf, K);
            out[(int64_t)t * N + r] = quant_vec_dot(w->type, (const uint8_t *)w->data + (size_t)r * rb, buf, K);
            free(buf);
        }
        for (int t = 0; t < T && ref_quant_act != 2; t++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++)
                s += (double)row[k] * in[(int64_t)t * K + k];
            out[(int64_t)t * N + r] = (float)s;
        }
    }
    free(qin);
    free(row);
}

static float *ref_vec(const struct weight *w)
{
    if (!w->data)
        return NULL;
    int64_t n = w->ne[0] * w->ne[1];
    float *v = malloc((size_t)n * sizeof *v);
    quant_row_dequantize(w->type, w->data, v, n);
    return v;
}

static void ref_rmsnorm(float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    double sc = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(x[i] * sc * w[i]);
}

static void ref_rope(const struct model_hparams *hp, float *x, int pos)
{
    const int half = hp->rope_dim / 2;
    for (int i = 0; i < half; i++) {
        double ang = pos * (double)hp->rope_freq_scale * pow(hp->rope_theta, -2.0 * i / hp->rope_dim);
        double c = cos(ang), s = sin(ang);
        int a = hp->rope_style == ROPE_NEOX ? i : 2 * i;
        int b = hp->rope_style == ROPE_NEOX ? i + half : 2 * i + 1;
        double x0 = x[a], x1 = x[b];
        x[a] = (float)(x0 * c - x1 * s);
        x[b] = (float)(x0 * s + x1 * c);
    }
}

/* logits[n][n_vocab] for every position of one sequence toks[n]. */
static void ref_forward(const struct model *m, const int32_t *toks, int n, float *logits)
{
    const struct model_hparams *hp = &m->hp;
    const int E = hp->n_embd, D = hp->head_dim, H = hp->n_head, HKV = hp->n_head_kv, F = hp->n_ff;
    const int QD = H * D, KVD = HKV * D;
    float *x = calloc((size_t)n * E, sizeof *x), *xn = calloc((size_t)n * E, sizeof *x);
    float *q = calloc((size_t)n * QD, sizeof *q), *k = calloc((size_t)n * KVD, sizeof *k);
    float *v = calloc((size_t)n * KVD, sizeof *v), *att = calloc((size_t)n * QD, sizeof *att);
    float *g = calloc((size_t)n * F, sizeof *g), *u = calloc((size_t)n * F, sizeof *u);
    float *tmp = calloc((size_t)n * E, sizeof *tmp), *sc = calloc((size_t)n, sizeof *sc);
    const size_t erb = dtype_row_bytes(m->tok_embd.type, E);
    for (int t = 0; t < n; t++)
        quant_row_dequantize(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)toks[t] * erb,
                             x + (size_t)t * E, E);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct layer_weights *lw = &m->layers[il];
        float *an = ref_vec(&lw->attn_norm), *fn = ref_vec(&lw->ffn_norm);
        float *bq = ref_vec(&lw->bq), *bk = ref_vec(&lw->bk), *bv = ref_vec(&lw->bv);
        float *qn = ref_vec(&lw->q_norm), *kn = ref_vec(&lw->k_norm);
        memcpy(xn, x, (size_t)n * E * sizeof *x);
        for (int t = 0; t < n; t++)
            ref_rmsnorm(xn + (size_t)t * E, an, E, hp->rms_eps);
        ref_matmul(&lw->wq, xn, q, n);
        ref_matmul(&lw->wk, xn, k, n);
        ref_matmul(&lw->wv, xn, v, n);
        for (int t = 0; t < n; t++) {
            for (int i = 0; bq && i < QD; i++)
                q[t * QD + i] += bq[i];
            for (int i = 0; bk && i < KVD; i++)
                k[t * KVD + i] += bk[i];
            for (int i = 0; bv && i < KVD; i++)
                v[t * KVD + i] += bv[i];
            for (int h = 0; h < H; h++) {
                if (qn)
                    ref_rmsnorm(q + t * QD + h * D, qn, D, hp->rms_eps);
                ref_rope(hp, q + t * QD + h * D, t);
            }
            for (int h = 0; h < HKV; h++) {
                if (kn)
                    ref_rmsnorm(k + t * KVD + h * D, kn, D, hp->rms_eps);
                ref_rope(hp, k + t * KVD + h * D, t);
            }
        }
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++) {
                const int hk = h / (H / HKV);
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    double s = 0.0;
                    for (int d = 0; d < D; d++)
                        s += (double)q[t * QD + h * D + d] * k[j * KVD + hk * D + d];
                    sc[j] = (float)(s / sqrt((double)D));
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j <= t; j++) {
                    sc[j] = (float)exp(sc[j] - mx);
                    sum += sc[j];
                }
                for (int d = 0; d < D; d++) {
                    double o = 0.0;
                    for (int j = 0; j <= t; j++)
                        o += (double)sc[j] * v[j * KVD + hk * D + d];
                    att[t * QD + h * D + d] = (float)(o / sum);
                }
            }
        ref_matmul(&lw->wo, att, tmp, n);
        for (int i = 0; i < n * E; i++)
            x[i] += tmp[i];
        memcpy(xn, x, (size_t)n * E * sizeof *x);
        for (int t = 0; t < n; t++)
            ref_rmsnorm(xn + (size_t)t * E, fn, E, hp->rms_eps);
        ref_matmul(&lw->w_gate, xn, g, n);
        ref_matmul(&lw->w_up, xn, u, n);
        for (int i = 0; i < n * F; i++)
            g[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
        ref_matmul(&lw->w_down, g, tmp, n);
        for (int i = 0; i < n * E; i++)
            x[i] += tmp[i];
        free(an); free(fn); free(bq); free(bk); free(bv); free(qn); free(kn);
    }
    float *on = ref_vec(&m->output_norm);
    for (int t = 0; t < n; t++)
        ref_rmsnorm(x + (size_t)t * E, on, E, hp->rms_eps);
    ref_matmul(&m->output, x, logits, n);
    free(on); free(x); free(xn); free(q); free(k); free(v); free(att); free(g); free(u); free(tmp); free(sc);
}

/* ---- helpers -------------------------------------------------------------- */

static int argmax(const float *l, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

static float top2_margin(const float *l, int n)
{
    int b = argmax(l, n);
    float s = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != b && l[i] > s)
            s = l[i];
    return l[b] - s;
}

static enum kv_type g_kv_type = KV_F16; /* the cache make_backend creates */

static backend *make_backend(const struct model *m, int threads, int n_blocks, int bs)
{
    struct backend_config cfg = { .n_threads = threads, .n_kv_blocks = n_blocks, .block_size = bs,
                                  .kv_type = g_kv_type };
    backend *be = NULL;
    int rc = backend_cpu_create(m, &cfg, &be);
    CHECK_MSG(rc == PS_OK, "backend_cpu_create: %s", ps_error_last());
    return be;
}

/* One-shot forward of toks[n] with LOGITS_ALL through block table bt. */
static int run_all(backend *be, const int32_t *toks, int n, int pos0, const int32_t *bt, int nb,
                   enum logits_mode mode, float *logits)
{
    struct batch_seq s = { .tokens = toks, .n_tokens = n, .pos0 = pos0, .block_table = bt,
                           .n_blocks = nb, .logits = mode };
    struct batch_plan plan = { .seqs = &s, .n_seqs = 1 };
    int rc = backend_forward(be, &plan, logits);
    CHECK_MSG(rc == PS_OK, "backend_forward: %s", ps_error_last());
    return rc;
}

static void test_tokens(int32_t *toks, int n, int n_vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((seed >> 33) % (uint64_t)n_vocab);
    }
}

/* Backend (one shot, LOGITS_ALL) vs naive reference on toks[n]. */
static void compare_ref(const char *what, const struct model *m, const int32_t *toks, int n,
                        double tol, float margin)
{
    const int nv = m->hp.n_vocab;
    float *ref = malloc((size_t)n * nv * sizeof *ref), *got = malloc((size_t)n * nv * sizeof *got);
    ref_forward(m, toks, n, ref);
    backend *be = make_backend(m, 2, 16, 16);
    int32_t bt[16];
    for (int i = 0; i < 16; i++)
        bt[i] = 15 - i;
    if (be && run_all(be, toks, n, 0, bt, 16, LOGITS_ALL, got) == PS_OK) {
        double worst = 0.0;
        int agree = 0, must = 0;
        for (int t = 0; t < n; t++) {
            const float *r = ref + (size_t)t * nv, *g = got + (size_t)t * nv;
            float lo = r[0], hi = r[0], md = 0.0f;
            for (int i = 0; i < nv; i++) {
                lo = r[i] < lo ? r[i] : lo;
                hi = r[i] > hi ? r[i] : hi;
                float d = fabsf(r[i] - g[i]);
                md = d > md ? d : md;
            }
            double rel = md / (double)(hi - lo);
            worst = rel > worst ? rel : worst;
            int same = argmax(r, nv) == argmax(g, nv);
            agree += same;
            if (top2_margin(r, nv) >= margin) {
                must++;
                CHECK_MSG(same, "%s: pos %d argmax %d vs reference %d (margin %.3f)", what, t,
                          argmax(g, nv), argmax(r, nv), (double)top2_margin(r, nv));
            }
        }
        printf("%-28s %3d positions: max |diff| / range = %.2e, argmax agrees %d/%d\n", what, n, worst,
               agree, n);
        CHECK_MSG(worst < tol, "%s: relative error %.5f >= %.3f", what, worst, tol);
    }
    backend_free(be);
    free(ref);
    free(got);
}

/* NMSE of got vs ref over n rows of nv logits, and the worst row's
 * max |diff| / (max - min of ref's row). */
static void logits_diff(const float *ref, const float *got, int n, int nv, double *nmse, double *rel)
{
    double num = 0.0, den = 0.0, worst = 0.0;
    for (int t = 0; t < n; t++) {
        const float *r = ref + (size_t)t * nv, *g = got + (size_t)t * nv;
        float lo = r[0], hi = r[0], md = 0.0f;
        for (int i = 0; i < nv; i++) {
            lo = fminf(lo, r[i]);
            hi = fmaxf(hi, r[i]);
            md = fmaxf(md, fabsf(r[i] - g[i]));
            num += ((double)r[i] - g[i]) * ((double)r[i] - g[i]);
            den += (double)r[i] * r[i];
        }
        worst = fmax(worst, md / (double)(hi - lo));
    }
    *nmse = den > 0.0 ? num / den : 0.0;
    *rel = worst;
}

/* LOGITS_ALL of toks[n] with a cache of type kt into out[n][n_vocab]. */
static int logits_kv(const struct model *m, enum kv_type kt, const int32_t *toks, int n, float *out)
{
    const enum kv_type keep = g_kv_type;
    g_kv_type = kt;
    backend *be = make_backend(m, 2, 16, 16);
    g_kv_type = keep;
    const int32_t bt[4] = { 3, 0, 2, 1 };
    int rc = be ? run_all(be, toks, n, 0, bt, 4, LOGITS_ALL, out) : PS_EINVAL;
    backend_free(be);
    return rc;
}

/* The q8 cache's logits against the f16 cache's on toks[n]. */
static void compare_q8_f16(const char *what, const struct model *m, const int32_t *toks, int n, double nmse_tol,
                           double rel_tol)
{
    const int nv = m->hp.n_vocab;
    float *a = malloc((size_t)n * nv * sizeof *a), *b = malloc((size_t)n * nv * sizeof *b);
    if (a && b && logits_kv(m, KV_F16, toks, n, a) == PS_OK && logits_kv(m, KV_Q8, toks, n, b) == PS_OK) {
        double nmse, rel;
        logits_diff(a, b, n, nv, &nmse, &rel);
        int agree = 0;
        for (int t = 0; t < n; t++)
            agree += argmax(a + (size_t)t * nv, nv) == argmax(b + (size_t)t * nv, nv);
        printf("%-28s q8 vs f16 KV, %d positions: NMSE %.2e (bound %.0e), max |diff| / range %.2e (bound %.2f), "
               "argmax agrees %d/%d\n", what, n, nmse, nmse_tol, rel, rel_tol, agree, n);
        CHECK_MSG(nmse < nmse_tol && rel < rel_tol, "%s: q8 vs f16 KV: NMSE %.3e, rel %.4f", what, nmse, rel);
    }
    free(a);
    free(b);
}

/* x8 (quant.h): on AVX2 every Q4_1 matrix of the real model and its Q8_0
 * tied output (49,152 rows) run on repacked copies; its logits are those
 * of the per-row Q4_1 / Q8_0 kernels up to rounding (another order of float operations on the same exact block
 * sums, amplified where it flips an activation's int8 rounding); and
 * PARASERVE_CPU_X8=0 turns it off.  Batching and thread invariance
 * with x8 are checked by test_batching / test_shared_prefix, which run
 * with it. */
static void test_x8(const struct model *m, const int32_t *toks, int n)
{
    const int simd = strcmp(quant_simd_name(), "avx2") == 0;
    backend *be = make_backend(m, 1, 4, 16);
    CHECK(be != NULL);
    CHECK(m->output.type == DT_Q8_0 && m->output.ne[1] % 8 == 0);
    const int want = simd ? 7 * m->hp.n_layer + 1 : 0;
    CHECK_MSG(backend_cpu_x8_matrices(be) == want, "x8 matrices %d, want %d", backend_cpu_x8_matrices(be), want);
    backend_free(be);
    setenv("PARASERVE_CPU_X8", "0", 1);
    be = make_backend(m, 1, 4, 16);
    CHECK(be != NULL && backend_cpu_x8_matrices(be) == 0);
    backend_free(be);
    const int nv = m->hp.n_vocab;
    float *a = malloc((size_t)n * nv * sizeof *a), *b = malloc((size_t)n * nv * sizeof *b);
    CHECK(a && b);
    if (a && b && logits_kv(m, KV_F16, toks, n, b) == PS_OK) {
        unsetenv("PARASERVE_CPU_X8");
        if (logits_kv(m, KV_F16, toks, n, a) == PS_OK) {
            double nmse, rel;
            logits_diff(a, b, n, nv, &nmse, &rel);
            int agree = 0;
            for (int t = 0; t < n; t++)
                agree += argmax(a + (size_t)t * nv, nv) == argmax(b + (size_t)t * nv, nv);
            printf("x8 vs Q4_1 / Q8_0 tiles, %d positions: NMSE %.2e, max |diff| / range %.2e, argmax agrees %d/%d\n", n,
                   nmse, rel, agree, n);
            /* measured: NMSE 2.6e-4, 4.0e-2 of the range, 24/24 (a rounding
             * difference flips some activation's int8 rounding, and 30
             * layers carry it); the same scale as the reference bound */
            CHECK_MSG(nmse < 2e-3 && rel < REF_REL_TOL_REAL && agree >= n - 1, "x8 vs Q4_1 / Q8_0: NMSE %.3e rel %.4f agree %d/%d",
                      nmse, rel, agree, n);
        }
    }
    unsetenv("PARASERVE_CPU_X8");
    free(a);
    free(b);
}

/* Synthetic model of the q8 checks: llama tiny with head_dim 32 (GQA 2). */
static struct model *synth_q8_model(void);

/* The real model, which main() has found present: a load failure is a test
 * failure naming `what` and the loader's reason, never a skip.  NULL then. */
static struct model *load_real(const char *what)
{
    struct model *m = NULL;
    int rc = model_load(test_model_path(), &m);
    CHECK_MSG(rc == PS_OK, "%s: real model %s exists but does not load: %s", what,
              test_model_path(), ps_error_last());
    return rc == PS_OK ? m : NULL;
}

/* Scalar vs AVX2 q8 attention: a child process (kernels chosen at its
 * first quant_init, PARASERVE_SIMD=scalar) writes its q8 logits of the
 * synthetic and the real model into shared memory; this process computes
 * the same with its own kernels.  Must run before anything here calls
 * quant_init.  Skipped (printed) when this process is itself scalar. */
#define SIMD_NTOK 24
static void test_q8_scalar_vs_simd(void)
{
    struct model *ms = NULL, *mr = load_real("q8 scalar vs simd");
    if (!mr)
        return;
    const int nvr = mr->hp.n_vocab, nvs = 512;
    const size_t nr = (size_t)SIMD_NTOK * nvr, ns = (size_t)SIMD_NTOK * nvs;
    float *sh = mmap(NULL, (2 * nr + ns) * sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(sh != MAP_FAILED);
    if (sh == MAP_FAILED) {
        model_free(mr);
        return;
    }
    int32_t toks[SIMD_NTOK];
    test_tokens(toks, SIMD_NTOK, nvr, 21);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("PARASERVE_SIMD", "scalar", 1);
        struct model *m = synth_q8_model();
        int ok = m && m->hp.n_vocab == nvs && logits_kv(mr, KV_Q8, toks, SIMD_NTOK, sh) == PS_OK &&
                 logits_kv(mr, KV_F16, toks, SIMD_NTOK, sh + nr + ns) == PS_OK;
        int32_t ts[SIMD_NTOK];
        if (ok) {
            test_tokens(ts, SIMD_NTOK, nvs, 22);
            ok = logits_kv(m, KV_Q8, ts, SIMD_NTOK, sh + nr) == PS_OK;
        }
        _exit(ok && strcmp(quant_simd_name(), "scalar") == 0 ? 0 : 1);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "scalar child failed");
    ms = synth_q8_model();
    float *got = malloc(nr * sizeof *got);
    if (got && ms && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        if (strcmp(quant_simd_name(), "scalar") == 0) {
            printf("q8 scalar vs SIMD: this process runs the scalar kernels too; nothing to compare\n");
        } else {
            double nmse, rel;
            int32_t ts[SIMD_NTOK];
            test_tokens(ts, SIMD_NTOK, nvs, 22);
            CHECK(logits_kv(ms, KV_Q8, ts, SIMD_NTOK, got) == PS_OK);
            logits_diff(sh + nr, got, SIMD_NTOK, nvs, &nmse, &rel);
            printf("q8 KV scalar vs %s, synthetic: NMSE %.2e, max |diff| / range %.2e (bound %.0e)\n",
                   quant_simd_name(), nmse, rel, Q8_SIMD_REL_SYNTH);
            CHECK_MSG(rel < Q8_SIMD_REL_SYNTH, "q8 scalar vs simd (synthetic): %.3e", rel);
            double nmse16, rel16;
            CHECK(logits_kv(mr, KV_F16, toks, SIMD_NTOK, got) == PS_OK);
            logits_diff(sh + nr + ns, got, SIMD_NTOK, nvr, &nmse16, &rel16);
            CHECK(logits_kv(mr, KV_Q8, toks, SIMD_NTOK, got) == PS_OK);
            logits_diff(sh, got, SIMD_NTOK, nvr, &nmse, &rel);
            printf("q8 KV scalar vs %s, real model (all kernels): NMSE %.2e, max |diff| / range %.2e (bound %.2f); "
                   "f16 KV: NMSE %.2e, %.2e\n", quant_simd_name(), nmse, rel, Q8_SIMD_REL_REAL, nmse16, rel16);
            CHECK_MSG(rel < Q8_SIMD_REL_REAL, "q8 scalar vs simd (real): %.3e", rel);
        }
    }
    free(got);
    munmap(sh, (2 * nr + ns) * sizeof *sh);
    model_free(ms);
    model_free(mr);
}

/* The zmm attention kernels (attn_x86_avx512, run where the x8 tiles run on
 * zmm) against the ymm ones: a child with PARASERVE_SIMD=avx512vnni (the
 * same integer tiles on ymm, so the same matmul values, and the ymm
 * attention) writes its logits of the real model (G 3, head_dim 64:
 * 64-element P.V slices) and of the synthetic hd32 model (G 2: 32-element
 * slices), with an f16 and with a q8 cache, to shared memory; this
 * process's must be bitwise the same.  The
 * fork must come before this process picks its kernels: zmm_fork() first in
 * main, zmm_check() later.  Not run (said) where this process does not run
 * the zmm kernels. */
#define ZMM_NTOK 60
struct zmm_child {
    pid_t pid;
    float *sh;
    size_t nr, ns;
    int32_t toks[ZMM_NTOK], ts[ZMM_NTOK];
};

static void zmm_fork(struct zmm_child *zc)
{
    memset(zc, 0, sizeof *zc);
    zc->pid = -1;
    struct model *mr = load_real("zmm attention");
    if (!mr)
        return;
    zc->nr = (size_t)ZMM_NTOK * mr->hp.n_vocab;
    zc->ns = (size_t)ZMM_NTOK * 512;
    test_tokens(zc->toks, ZMM_NTOK, mr->hp.n_vocab, 31);
    test_tokens(zc->ts, ZMM_NTOK, 512, 32);
    zc->sh = mmap(NULL, 2 * (zc->nr + zc->ns) * sizeof *zc->sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(zc->sh != MAP_FAILED);
    if (zc->sh == MAP_FAILED) {
        zc->sh = NULL;
        model_free(mr);
        return;
    }
    fflush(stdout);
    zc->pid = fork();
    if (zc->pid == 0) {
        setenv("PARASERVE_SIMD", "avx512vnni", 1);
        struct model *ms = synth_q8_model();
        float *q8 = zc->sh + zc->nr + zc->ns;
        const int ok = ms && ms->hp.n_vocab == 512 && logits_kv(mr, KV_F16, zc->toks, ZMM_NTOK, zc->sh) == PS_OK &&
                       logits_kv(ms, KV_F16, zc->ts, ZMM_NTOK, zc->sh + zc->nr) == PS_OK &&
                       logits_kv(mr, KV_Q8, zc->toks, ZMM_NTOK, q8) == PS_OK &&
                       logits_kv(ms, KV_Q8, zc->ts, ZMM_NTOK, q8 + zc->nr) == PS_OK;
        _exit(ok ? 0 : 1);
    }
    CHECK(zc->pid > 0);
    model_free(mr);
}

static size_t bitwise_mismatches(const float *a, const float *b, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += memcmp(a + i, b + i, sizeof *a) != 0;
    return bad;
}

static void zmm_check(struct zmm_child *zc)
{
    int st = 0;
    if (zc->pid > 0) {
        CHECK(waitpid(zc->pid, &st, 0) == zc->pid);
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "PARASERVE_SIMD=avx512vnni child failed");
    }
    struct model *mr = NULL, *ms = NULL;
    float *got = malloc(zc->nr * sizeof *got);
    if (strcmp(quant_x8_isa_name(), "avx512") != 0) {
        printf("NOTE: x8 tiles on %s here, not zmm: the zmm attention was not run\n", quant_x8_isa_name());
    } else if (zc->sh && got && WIFEXITED(st) && WEXITSTATUS(st) == 0 && (mr = load_real("zmm check")) != NULL &&
               (ms = synth_q8_model()) != NULL) {
        static const enum kv_type kts[2] = { KV_F16, KV_Q8 };
        for (int i = 0; i < 2; i++) {
            const float *want = zc->sh + (size_t)i * (zc->nr + zc->ns);
            CHECK(logits_kv(mr, kts[i], zc->toks, ZMM_NTOK, got) == PS_OK);
            const size_t bad_r = bitwise_mismatches(want, got, zc->nr);
            CHECK(logits_kv(ms, kts[i], zc->ts, ZMM_NTOK, got) == PS_OK);
            const size_t bad_s = bitwise_mismatches(want + zc->nr, got, zc->ns);
            printf("zmm vs ymm attention, %s cache, %d positions: real model %zu of %zu logits differ, "
                   "synthetic hd32 %zu of %zu\n", i ? "q8" : "f16", ZMM_NTOK, bad_r, zc->nr, bad_s, zc->ns);
            CHECK_MSG(bad_r == 0 && bad_s == 0, "zmm attention not bitwise the ymm one (%s cache)", i ? "q8" : "f16");
        }
    }
    free(got);
    model_free(mr);
    model_free(ms);
    if (zc->sh)
        munmap(zc->sh, 2 * (zc->nr + zc->ns) * sizeof *zc->sh);
}

static void test_shared_prefix(const struct model *m, const char *what, int threads, int expect_grouped);
static void test_attn_split(const struct model *m, const char *what, int threads);

static struct model *synth_model(const struct mkmodel_spec *spec)
{
    char path[] = "/tmp/ps_test_backend_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    close(fd);
    struct model *m = NULL;
    int rc = mkmodel_write(path, spec);
    CHECK_MSG(rc == PS_OK, "mkmodel_write: %s", ps_error_last());
    if (rc == PS_OK) {
        rc = model_load(path, &m);
        CHECK_MSG(rc == PS_OK, "model_load: %s", ps_error_last());
    }
    unlink(path);
    return m;
}

static void test_synthetic(void)
{
    struct mkmodel_spec sp;
    int32_t toks[40];

    CHECK(mkmodel_preset("tiny", &sp) == PS_OK);
    struct model *m = synth_model(&sp);
    if (m) {
        test_tokens(toks, 40, m->hp.n_vocab, 1);
        compare_ref("synthetic llama tiny Q4_1", m, toks, 40, REF_REL_TOL, REF_MARGIN);
        model_free(m);
    }

    CHECK(mkmodel_preset("tiny", &sp) == PS_OK);
    sp.arch = ARCH_QWEN2;
    sp.tied = false;
    sp.wtype = DT_Q8_0;
    sp.embd_type = DT_F16;
    sp.n_head = 4;
    sp.n_head_kv = 1;
    sp.rope_theta = 1e6f;
    sp.rms_eps = 1e-6f;
    snprintf(sp.name, sizeof sp.name, "synthetic qwen2");
    m = synth_model(&sp);
    if (m) {
        test_tokens(toks, 40, m->hp.n_vocab, 2);
        compare_ref("synthetic qwen2 Q8_0 untied", m, toks, 40, REF_REL_TOL, REF_MARGIN);
        test_shared_prefix(m, "synthetic qwen2 (G 4, head_dim 16)", 2, strcmp(quant_simd_name(), "avx2") == 0);
        test_attn_split(m, "synthetic qwen2 (G 4, head_dim 16)", 2);
        model_free(m);
    }

    CHECK(mkmodel_preset("tiny", &sp) == PS_OK);
    sp.arch = ARCH_QWEN3;
    sp.n_embd = 256;
    sp.n_head = 4;
    sp.n_head_kv = 2;
    sp.head_dim = 32; /* q_dim 128 != n_embd */
    sp.n_ff = 512;
    sp.wtype = DT_Q4_K;
    sp.embd_type = DT_Q6_K;
    sp.rope_theta = 1e6f;
    snprintf(sp.name, sizeof sp.name, "synthetic qwen3");
    m = synth_model(&sp);
    if (m) {
        test_tokens(toks, 40, m->hp.n_vocab, 3);
        compare_ref("synthetic qwen3 Q4_K/Q6_K", m, toks, 40, REF_REL_TOL, REF_MARGIN);
        test_shared_prefix(m, "synthetic qwen3 (G 2, head_dim 32)", 3, strcmp(quant_simd_name(), "avx2") == 0);
        test_attn_split(m, "synthetic qwen3 (G 2, head_dim 32)", 3);
        model_free(m);
    }
}

static struct model *synth_q8_model(void)
{
    struct mkmodel_spec sp;
    if (mkmodel_preset("tiny", &sp) != PS_OK)
        return NULL;
    sp.head_dim = 32;
    snprintf(sp.name, sizeof sp.name, "synthetic llama hd32");
    return synth_model(&sp);
}

/* The q8 cache on synthetic models: against the reference, against the
 * f16 cache; a head_dim that is not a multiple of 32 is refused. */
static void test_synthetic_q8(void)
{
    int32_t toks[40];
    struct model *m = synth_q8_model();
    if (m) {
        test_tokens(toks, 40, m->hp.n_vocab, 4);
        g_kv_type = KV_Q8;
        compare_ref("synthetic llama hd32, q8 KV", m, toks, 40, REF_REL_TOL, REF_MARGIN);
        g_kv_type = KV_F16;
        compare_q8_f16("synthetic llama hd32", m, toks, 40, Q8_NMSE_SYNTH, Q8_REL_SYNTH);
        model_free(m);
    }
    struct mkmodel_spec sp;
    CHECK(mkmodel_preset("tiny", &sp) == PS_OK); /* head_dim 16 */
    m = synth_model(&sp);
    if (m) {
        struct backend_config cfg = { .n_threads = 1, .n_kv_blocks = 4, .block_size = 16, .kv_type = KV_Q8 };
        backend *be = NULL;
        CHECK(backend_cpu_create(m, &cfg, &be) == PS_EUNSUPPORTED && be == NULL);
        model_free(m);
    }
}

/* ---- invariances on the real model --------------------------------------- */

#define NTOK 40

static void test_paged_and_chunked(const struct model *m)
{
    const int nv = m->hp.n_vocab;
    int32_t toks[NTOK];
    test_tokens(toks, NTOK, nv, 11);
    const size_t sz = (size_t)NTOK * nv * sizeof(float);
    float *a = malloc(sz), *b = malloc(sz), *c = malloc(sz);

    /* contiguous table vs scrambled, block size 16 */
    backend *be16 = make_backend(m, 2, 8, 16);
    backend *be32 = make_backend(m, 2, 4, 32);
    if (!be16 || !be32)
        goto done;
    const int32_t bt_lin[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    const int32_t bt_scr[8] = { 5, 2, 7, 0, 6, 1, 3, 4 };
    run_all(be16, toks, NTOK, 0, bt_lin, 3, LOGITS_ALL, a);
    run_all(be16, toks, NTOK, 0, bt_scr, 3, LOGITS_ALL, b);
    CHECK_MSG(memcmp(a, b, sz) == 0, "scrambled block table changed logits");

    /* block size 32 */
    const int32_t bt32[2] = { 3, 1 };
    run_all(be32, toks, NTOK, 0, bt32, 2, LOGITS_ALL, c);
    float md = 0.0f;
    for (size_t i = 0; i < (size_t)NTOK * nv; i++)
        md = fmaxf(md, fabsf(a[i] - c[i]));
    printf("block size 16 vs 32: max |diff| = %g\n", (double)md);
    CHECK(md <= 1e-4f);

    /* chunked prefill, chunks of 7, into the scrambled table */
    for (int p = 0; p < NTOK; p += 7) {
        int n = NTOK - p < 7 ? NTOK - p : 7;
        run_all(be16, toks + p, n, p, bt_scr, 3, LOGITS_ALL, b + (size_t)p * nv);
    }
    md = 0.0f;
    for (size_t i = 0; i < (size_t)NTOK * nv; i++)
        md = fmaxf(md, fabsf(a[i] - b[i]));
    printf("chunked prefill (7) vs one shot: max |diff| = %g\n", (double)md);
    CHECK(md <= 1e-4f);

    /* LOGITS_LAST row == last LOGITS_ALL row; LOGITS_NONE writes nothing */
    run_all(be16, toks, NTOK, 0, bt_scr, 3, LOGITS_LAST, c);
    CHECK(memcmp(c, a + (size_t)(NTOK - 1) * nv, (size_t)nv * sizeof(float)) == 0);

    /* copy_block: blocks 5 and 2 copied to 6 and 7 serve as the same prefix */
    CHECK(backend_copy_block(be16, 5, 6) == PS_OK);
    CHECK(backend_copy_block(be16, 2, 4) == PS_OK);
    CHECK(backend_copy_block(be16, 2, 99) == PS_EINVAL);
    const int32_t bt_cp[3] = { 6, 4, 0 };
    /* positions 0..31 come from the copies; 32..39 recomputed into block 0 */
    run_all(be16, toks + 32, NTOK - 32, 32, bt_cp, 3, LOGITS_ALL, c);
    CHECK_MSG(memcmp(c, a + (size_t)32 * nv, (size_t)(NTOK - 32) * nv * sizeof(float)) == 0,
              "logits after copy_block differ");

    /* thread-count invariance; the thread count also changes how the work
     * is split (matmul row chunks; attention items of every head of their
     * rows with 1 and 3 threads, one GQA group with 8, one head with 12) */
    static const int thread_counts[] = { 1, 3, 8, 12 };
    for (size_t i = 0; i < sizeof thread_counts / sizeof thread_counts[0]; i++) {
        backend *bt = make_backend(m, thread_counts[i], 8, 16);
        if (!bt)
            continue;
        run_all(bt, toks, NTOK, 0, bt_scr, 3, LOGITS_ALL, c);
        CHECK_MSG(memcmp(a, c, sz) == 0, "%d vs 2 threads changed logits", thread_counts[i]);
        backend_free(bt);
    }
done:
    backend_free(be16);
    backend_free(be32);
    free(a);
    free(b);
    free(c);
}

/* Batching invariance: 4 prompts, greedy 16 tokens each, one by one vs
 * together in a ragged schedule (a prompt's prefill joins while the others
 * decode). */
#define NSEQ 4
#define NGEN 16

static void test_batching(const struct model *m)
{
    const int nv = m->hp.n_vocab, bs = 16;
    const int plen[NSEQ] = { 5, 23, 12, 37 };
    const int start[NSEQ] = { 0, 0, 3, 6 }; /* step at which each prompt joins */
    int32_t prompt[NSEQ][40], alone[NSEQ][NGEN], batched[NSEQ][NGEN];
    int32_t bt[NSEQ][4];
    float *lg = malloc((size_t)NSEQ * nv * sizeof *lg);
    backend *be = make_backend(m, 2, NSEQ * 4, bs);
    if (!be)
        goto done;
    for (int s = 0; s < NSEQ; s++) {
        test_tokens(prompt[s], plen[s], nv, 100 + (uint64_t)s);
        for (int b = 0; b < 4; b++)
            bt[s][b] = (b * NSEQ + s * 5 + 3) % (NSEQ * 4); /* interleaved, distinct */
    }

    /* one by one */
    for (int s = 0; s < NSEQ; s++) {
        run_all(be, prompt[s], plen[s], 0, bt[s], 4, LOGITS_LAST, lg);
        for (int g = 0; g < NGEN; g++) {
            alone[s][g] = argmax(lg, nv);
            if (g + 1 < NGEN)
                run_all(be, &alone[s][g], 1, plen[s] + g, bt[s], 4, LOGITS_LAST, lg);
        }
    }

    /* together */
    int n_gen[NSEQ] = { 0 };
    for (int step = 0;; step++) {
        struct batch_seq seqs[NSEQ];
        int idx[NSEQ], n = 0;
        for (int s = 0; s < NSEQ; s++) {
            if (step < start[s] || n_gen[s] >= NGEN)
                continue;
            struct batch_seq *q = &seqs[n];
            if (step == start[s]) {
                q->tokens = prompt[s];
                q->n_tokens = plen[s];
                q->pos0 = 0;
            } else {
                q->tokens = &batched[s][n_gen[s] - 1];
                q->n_tokens = 1;
                q->pos0 = plen[s] + n_gen[s] - 1;
            }
            q->block_table = bt[s];
            q->n_blocks = 4;
            q->logits = LOGITS_LAST;
            idx[n++] = s;
        }
        if (n == 0)
            break;
        struct batch_plan plan = { .seqs = seqs, .n_seqs = n };
        CHECK(backend_logits_rows(&plan) == n);
        int rc = backend_forward(be, &plan, lg);
        CHECK_MSG(rc == PS_OK, "batched forward: %s", ps_error_last());
        if (rc)
            break;
        for (int i = 0; i < n; i++)
            batched[idx[i]][n_gen[idx[i]]++] = argmax(lg + (size_t)i * nv, nv);
    }
    for (int s = 0; s < NSEQ; s++)
        CHECK_MSG(memcmp(alone[s], batched[s], sizeof alone[s]) == 0,
                  "sequence %d: batched greedy tokens differ from one-by-one", s);
done:
    backend_free(be);
    free(lg);
}

static void test_bad_plans(const struct model *m)
{
    const int nv = m->hp.n_vocab;
    struct backend_config cfg = { .n_threads = 1, .n_kv_blocks = 4, .block_size = 16, .max_batch_tokens = 32 };
    backend *be = NULL;
    CHECK(backend_cpu_create(m, &cfg, &be) == PS_OK);
    if (!be)
        return;
    CHECK(strcmp(backend_name(be), "cpu") == 0);
    float *lg = malloc((size_t)2 * nv * sizeof *lg);
    int32_t toks[40] = { 1, 2, 3 };
    int32_t bt[4] = { 0, 1, 2, 3 };
    struct batch_seq s = { .tokens = toks, .n_tokens = 3, .pos0 = 0, .block_table = bt, .n_blocks = 1,
                           .logits = LOGITS_LAST };
    struct batch_plan plan = { .seqs = &s, .n_seqs = 1 };
    CHECK(backend_forward(be, &plan, lg) == PS_OK);

    struct batch_seq bad;
    struct batch_plan bp = { .seqs = &bad, .n_seqs = 1 };
#define EXPECT_BAD(field_text)                                                     \
    do {                                                                           \
        CHECK(backend_forward(be, &bp, lg) == PS_EINVAL);                          \
        CHECK_MSG(strstr(ps_error_last(), field_text) != NULL, "detail: %s", ps_error_last()); \
    } while (0)

    int32_t badtok[2] = { 5, nv };
    bad = s;
    bad.tokens = badtok;
    bad.n_tokens = 2;
    EXPECT_BAD("tokens[1]");
    badtok[1] = -1;
    EXPECT_BAD("tokens[1]");

    int32_t badbt[2] = { 0, 4 };
    bad = s;
    bad.block_table = badbt;
    bad.n_blocks = 2;
    bad.pos0 = 14;
    EXPECT_BAD("block_table[1]");

    bad = s;
    bad.pos0 = 15; /* 15 + 3 > 1 block x 16 */
    EXPECT_BAD("block_table");
    bad = s;
    bad.pos0 = 63;
    bad.n_blocks = 4;
    EXPECT_BAD("exceeds the cache");
    bad = s;
    bad.pos0 = -1;
    EXPECT_BAD("pos0");
    bad = s;
    bad.n_tokens = 0;
    EXPECT_BAD("n_tokens");

    bad = s;
    bad.n_tokens = 33;
    bad.n_blocks = 4;
    EXPECT_BAD("max_batch_tokens");

    struct batch_seq two[2] = { s, s };
    two[1].n_tokens = 30;
    two[1].n_blocks = 2;
    two[1].block_table = bt + 2;
    two[1].tokens = toks;
    bp.seqs = two;
    bp.n_seqs = 2;
    EXPECT_BAD("max_batch_tokens");
    bp.n_seqs = 0;
    EXPECT_BAD("no sequences");
#undef EXPECT_BAD

    /* a rejected plan wrote nothing: the good plan gives the same logits */
    float *lg2 = malloc((size_t)nv * sizeof *lg2);
    CHECK(backend_forward(be, &plan, lg2) == PS_OK);
    CHECK(memcmp(lg, lg2, (size_t)nv * sizeof *lg) == 0);
    free(lg2);

    struct backend_config bad_cfg = { .n_threads = 0, .n_kv_blocks = 4, .block_size = 16 };
    backend *be2 = NULL;
    CHECK(backend_cpu_create(m, &bad_cfg, &be2) == PS_EINVAL && be2 == NULL);
    backend_free(be);
    backend_free(NULL);
    free(lg);
}

/* Decode rows whose block tables share prefix blocks: attended together
 * (shared-prefix items on the f16 AVX2 path) their logits are bitwise
 * those of each row alone.  An 80-token prefix in blocks 0..4: seqs
 * 0..14 share all 5 blocks; seq 15 shares the first 4 and holds other
 * tokens at 64..79 in its own block 4 (so an item with it must stop its
 * prefix at 64: reading block 4 for it changes its logits); seq 16 shares
 * none (attended alone); suffixes of 1..17 tokens, then 3 decode steps,
 * the first beside a 9-token prefill of one more sequence.  Sorted by
 * block table the 16 sharing rows make 2 items of 8 rows per KV head (1-3
 * threads) or 6 items of 2-3 (8 threads).  `expect_grouped`: the path
 * must have run. */
#define SP_NS 17
static void test_shared_prefix(const struct model *m, const char *what, int threads, int expect_grouped)
{
    const int nv = m->hp.n_vocab, bs = 16, plen = 80, nbt = 8;
    int32_t prefix[80], other[16], suffix[SP_NS][SP_NS + 1], bt[SP_NS + 1][8], step_tok[SP_NS], fill[9];
    float *lg = malloc((size_t)(SP_NS + 1) * nv * sizeof *lg), *one = malloc((size_t)nv * sizeof *one);
    backend *be = make_backend(m, threads, 80, bs);
    if (!be || !lg || !one)
        goto done;
    test_tokens(prefix, plen, nv, 501);
    test_tokens(other, 16, nv, 502);
    test_tokens(fill, 9, nv, 503);
    for (int s = 0; s <= SP_NS; s++)
        for (int b = 0; b < nbt; b++)
            bt[s][b] = b < 5 ? b : 5 + s * 3 + (b - 5);
    bt[15][4] = 62;
    for (int b = 0; b < 5; b++)
        bt[16][b] = 63 + b;
    for (int s = 0; s < SP_NS; s++)
        test_tokens(suffix[s], s + 1, nv, 600 + (uint64_t)s);
    run_all(be, prefix, plen, 0, bt[0], nbt, LOGITS_LAST, lg);
    run_all(be, other, 16, 64, bt[15], nbt, LOGITS_LAST, lg);
    run_all(be, prefix, plen, 0, bt[16], nbt, LOGITS_LAST, lg);
    for (int s = 0; s < SP_NS; s++) {
        run_all(be, suffix[s], s + 1, plen, bt[s], nbt, LOGITS_LAST, lg);
        step_tok[s] = argmax(lg, nv);
    }
    const int64_t grouped0 = backend_cpu_shared_prefix_rows(be);
    for (int step = 0; step < 3; step++) {
        struct batch_seq seqs[SP_NS + 1];
        int n = 0;
        for (int s = 0; s < SP_NS; s++)
            seqs[n++] = (struct batch_seq){ .tokens = &step_tok[s], .n_tokens = 1, .pos0 = plen + s + 1 + step,
                                            .block_table = bt[s], .n_blocks = nbt, .logits = LOGITS_LAST };
        if (step == 0) /* a prefill beside the items (its own blocks) */
            seqs[n++] = (struct batch_seq){ .tokens = fill, .n_tokens = 9, .pos0 = 0, .block_table = bt[SP_NS],
                                            .n_blocks = nbt, .logits = LOGITS_LAST };
        struct batch_plan plan = { .seqs = seqs, .n_seqs = n };
        int rc = backend_forward(be, &plan, lg);
        CHECK_MSG(rc == PS_OK, "shared-prefix batch: %s", ps_error_last());
        if (rc)
            break;
        for (int i = 0; i < n; i++) {
            /* alone: the same tokens at the same positions rewrite the same K/V */
            run_all(be, seqs[i].tokens, seqs[i].n_tokens, seqs[i].pos0, seqs[i].block_table, nbt, LOGITS_LAST,
                    one);
            CHECK_MSG(memcmp(one, lg + (size_t)i * nv, (size_t)nv * sizeof *one) == 0,
                      "%s, %d threads, step %d, seq %d: logits in a shared-prefix batch differ from alone", what,
                      threads, step, i);
        }
        for (int s = 0; s < SP_NS; s++)
            step_tok[s] = argmax(lg + (size_t)s * nv, nv);
    }
    const int64_t grouped = backend_cpu_shared_prefix_rows(be) - grouped0;
    const char *off = getenv("PARASERVE_CPU_SHARED_PREFIX");
    if (expect_grouped && !(off && !strcmp(off, "0")))
        CHECK_MSG(grouped == 3 * (SP_NS - 1), "%s, %d threads: %lld rows went through shared-prefix items, want %d",
                  what, threads, (long long)grouped, 3 * (SP_NS - 1));
    else if (!expect_grouped)
        CHECK_MSG(grouped == 0, "%s: shared-prefix items ran where they cannot (%lld rows)", what, (long long)grouped);
done:
    backend_free(be);
    free(lg);
    free(one);
}

/* A lone decode row's attention split over the threads (attn_split) gives
 * bitwise the logits of the per-KV-head items (PARASERVE_CPU_ATTN_SPLIT=0),
 * at context lengths across 8-position chunks; rows under 64 positions
 * and one thread keep the items. */
static void test_attn_split(const struct model *m, const char *what, int threads)
{
    enum { PLEN = 150, STEPS = 9, NB = 12, BS = 16 };
    const int nv = m->hp.n_vocab;
    if (strcmp(quant_simd_name(), "avx2") != 0)
        return; /* attn_split is an AVX2 path; the scalar run has no second path to compare */
    int32_t prompt[PLEN], bt[NB], tok;
    float *la = malloc((size_t)nv * sizeof *la), *lb = malloc((size_t)nv * sizeof *lb);
    backend *split = make_backend(m, threads, NB, BS);
    setenv("PARASERVE_CPU_ATTN_SPLIT", "0", 1);
    backend *items = make_backend(m, threads, NB, BS);
    unsetenv("PARASERVE_CPU_ATTN_SPLIT");
    if (!la || !lb || !split || !items)
        goto done;
    test_tokens(prompt, PLEN, nv, 901);
    for (int b = 0; b < NB; b++)
        bt[b] = (b * 7 + 3) % NB; /* scattered blocks */
    for (int len = 40; len <= PLEN; len += PLEN - 40) {
        /* the prompt's first len tokens, then STEPS greedy decode steps */
        run_all(split, prompt, len, 0, bt, NB, LOGITS_LAST, la);
        run_all(items, prompt, len, 0, bt, NB, LOGITS_LAST, lb);
        const int64_t rows0 = backend_cpu_split_rows(split);
        for (int step = 0; step < STEPS; step++) {
            tok = argmax(la, nv);
            run_all(split, &tok, 1, len + step, bt, NB, LOGITS_LAST, la);
            run_all(items, &tok, 1, len + step, bt, NB, LOGITS_LAST, lb);
            CHECK_MSG(memcmp(la, lb, (size_t)nv * sizeof *la) == 0,
                      "%s, %d threads, %d positions: split attention logits differ from the items'", what, threads,
                      len + step + 1);
        }
        const int64_t rows = backend_cpu_split_rows(split) - rows0;
        const int64_t want = threads > 1 && len >= 64 ? STEPS : 0;
        CHECK_MSG(rows == want, "%s, %d threads, prompt %d: %lld split rows, want %lld", what, threads, len,
                  (long long)rows, (long long)want);
    }
    CHECK(backend_cpu_split_rows(items) == 0);
done:
    backend_free(split);
    backend_free(items);
    free(la);
    free(lb);
}

int main(void)
{
    const char *ra = getenv("PS_REF_ACT");
    ref_quant_act = ra ? atoi(ra) : 0;
    /* Skipped (exit 77) only when the real model's file is absent, after the
     * synthetic-model tests, which do not need it; a file that exists but
     * does not load (unreadable, a directory, corrupt) fails. */
    struct stat st;
    if (stat(test_model_path(), &st) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        fprintf(stderr, "SKIP: real model %s is absent (run scripts/fetch-model): only the synthetic "
                "models were tested\n", test_model_path());
        test_synthetic();
        test_synthetic_q8();
        if (test_failures) {
            fprintf(stderr, "%d check(s) failed\n", test_failures);
            return 1;
        }
        exit(77);
    }
    struct model *m = NULL;
    if (model_load(test_model_path(), &m) != PS_OK) {
        fprintf(stderr, "FAIL: real model %s exists but does not load: %s\n", test_model_path(),
                ps_error_last());
        return 1;
    }
    struct zmm_child zc;
    zmm_fork(&zc);            /* forks: before this process picks its kernels */
    test_q8_scalar_vs_simd(); /* forks: before this process picks its kernels */
    printf("quant simd: %s, x8 tiles on %s\n", quant_simd_name(), quant_x8_isa_name());
    zmm_check(&zc);

    int32_t toks[24];
    test_tokens(toks, 24, m->hp.n_vocab, 7);
    compare_ref("real model (SmolLM2 Q4_1)", m, toks, 24, REF_REL_TOL_REAL, REF_MARGIN_REAL);
    test_paged_and_chunked(m);
    test_batching(m);
    test_bad_plans(m);
    {
        /* the path runs on the f16 cache with AVX2 (PARASERVE_SIMD=scalar runs this binary scalar) */
        const int simd = strcmp(quant_simd_name(), "avx2") == 0;
        static const int threads[] = { 1, 2, 3, 8 };
        for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++)
            test_shared_prefix(m, "real model (G 3, head_dim 64)", threads[i], simd);
        for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++)
            test_attn_split(m, "real model (G 3, head_dim 64)", threads[i]);
    }

    /* the q8 cache: the same checks, and against the f16 cache */
    g_kv_type = KV_Q8;
    compare_ref("real model, q8 KV", m, toks, 24, REF_REL_TOL_REAL_Q8, REF_MARGIN_REAL);
    test_paged_and_chunked(m);
    test_batching(m);
    test_shared_prefix(m, "real model, q8 KV", 2, 0);
    g_kv_type = KV_F16;
    compare_q8_f16("real model (SmolLM2 Q4_1)", m, toks, 24, Q8_NMSE_REAL, Q8_REL_REAL);
    test_x8(m, toks, 24);
    model_free(m);

    /* exact mode: f32 matrices, f32 KV */
    struct backend_config bad = { .n_threads = 1, .n_kv_blocks = 4, .block_size = 16, .kv_type = (enum kv_type)7 };
    backend *nb = NULL;
    m = load_real("exact mode");
    if (m) {
        CHECK(backend_cpu_create(m, &bad, &nb) == PS_EINVAL && nb == NULL);
        CHECK_MSG(model_matrices_to_f32(m) == PS_OK, "model_matrices_to_f32: %s", ps_error_last());
        CHECK(model_matrices_to_f32(m) == PS_OK); /* idempotent */
        CHECK(m->layers[0].wq.type == DT_F32 && m->output.type == DT_F32);
        g_kv_type = KV_F32;
        compare_ref("real model, f32 + f32 KV", m, toks, 24, REF_REL_TOL_EXACT, 0.0f);
        test_paged_and_chunked(m);
        test_batching(m);
        g_kv_type = KV_F16;
    }
    model_free(m);

    test_synthetic();
    test_synthetic_q8();
    TEST_DONE();
}
