/* test_quant_mdot.c - tile dots (quant_mat_dot, quant_kernels.mdot_*) are
 * bitwise equal to the single-row dots, on every SIMD path.
 *
 * The CPU backend relies on this for batching and thread-count invariance:
 * how output rows and tokens are grouped into tiles must never change a
 * number.  Random weights and activations (including extreme scales, zero
 * blocks and all-max nibbles), odd and even block counts, row and token
 * counts that leave every remainder of the 4-token groups, padded strides.
 * Prints the speed of both forms on a model-shaped matrix.
 */
#include "model/quant.h"
#include "model/quant_impl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/status.h"
#include "test_util.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint32_t rng_u32(void) { return test_rng_u32(&rng_state); }

static float rng_f(void)
{
    return (float)rng_u32() / 4294967296.0f * 2.0f - 1.0f;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static const struct quant_kernels *simd_kernels(void)
{
#ifdef PS_QUANT_HAVE_AVX2
    if (quant_avx2_supported())
        return &quant_kernels_avx2;
#endif
    return NULL;
}

/* x[n]: mostly uniform with a per-block scale spread over 2^-12..2^6, some
 * all-zero blocks, some blocks with one outlier. */
static void fill_row(float *x, int64_t n)
{
    for (int64_t b = 0; b < n / 32; b++) {
        const uint32_t kind = rng_u32() % 8;
        const float    sc   = ldexpf(1.0f, (int)(rng_u32() % 19) - 12);
        for (int j = 0; j < 32; j++)
            x[32 * b + j] = kind == 0 ? 0.0f : sc * rng_f();
        if (kind == 1)
            x[32 * b + rng_u32() % 32] = sc * 50.0f;
    }
}

static quant_dot_fn dot_of(const struct quant_kernels *k, enum dtype t)
{
    switch (t) {
    case DT_Q4_0: return k->dot_q4_0;
    case DT_Q4_1: return k->dot_q4_1;
    case DT_Q8_0: return k->dot_q8_0;
    default: return NULL;
    }
}

static quant_mdot_fn mdot_of(const struct quant_kernels *k, enum dtype t)
{
    switch (t) {
    case DT_Q4_0: return k->mdot_q4_0;
    case DT_Q4_1: return k->mdot_q4_1;
    case DT_Q8_0: return k->mdot_q8_0;
    default: return NULL;
    }
}

#define MAX_R 19
#define MAX_T 11
#define PAD   40   /* extra bytes per row: strides are not the row size */

/* One random case: nr weight rows x nt activation rows of n elements. */
static void check_case(const struct quant_kernels *k, enum dtype wt, int64_t n, int64_t nr, int64_t nt)
{
    const enum dtype at  = dtype_info_get(wt)->vec_dot_type;
    const size_t     wrb = dtype_row_bytes(wt, n), arb = dtype_row_bytes(at, n);
    const size_t     ws = wrb + PAD, as = arb + PAD;
    uint8_t *w = calloc((size_t)nr, ws), *a = calloc((size_t)nt, as);
    float   *x = malloc((size_t)n * sizeof *x);
    float    out[MAX_T * (MAX_R + 3)];
    const int64_t os = nr + 3;
    CHECK(w && a && x);
    if (!w || !a || !x)
        goto done;
    for (int64_t r = 0; r < nr; r++) {
        fill_row(x, n);
        if (wt == DT_Q4_1 && r % 5 == 4)  /* all-max nibbles: largest maddubs pairs */
            for (int64_t i = 0; i < n; i++)
                x[i] = (i % 32 == 0) ? 0.0f : 1.0f;
        CHECK(quant_row_quantize(wt, x, w + (size_t)r * ws, n) == PS_OK);
    }
    for (int64_t t = 0; t < nt; t++) {
        fill_row(x, n);
        /* the table's own activation quantizer, as the backend uses it */
        if (at == DT_Q8_1)
            k->quantize_q8_1(x, a + (size_t)t * as, n);
        else
            k->quantize_q8_0(x, a + (size_t)t * as, n);
    }
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        out[i] = -12345.0f;
    mdot_of(k, wt)(w, ws, nr, a, as, nt, n, out, os);
    int bad = 0;
    for (int64_t t = 0; t < nt; t++) {
        for (int64_t r = 0; r < nr; r++) {
            const float ref = dot_of(k, wt)(w + (size_t)r * ws, a + (size_t)t * as, n);
            const float got = out[t * os + r];
            if (f2u(ref) != f2u(got) && bad++ < 3)
                CHECK_MSG(0, "%s %s n=%lld nr=%lld nt=%lld: [t %lld, r %lld] tile %.9g != dot %.9g",
                          k->name, dtype_info_get(wt)->name, (long long)n, (long long)nr, (long long)nt,
                          (long long)t, (long long)r, (double)got, (double)ref);
        }
        for (int64_t r = nr; r < os; r++)
            CHECK_MSG(out[t * os + r] == -12345.0f, "%s: wrote outside the tile", k->name);
    }
done:
    free(w);
    free(a);
    free(x);
}

static void test_tiles_bitwise(void)
{
    static const enum dtype types[] = {DT_Q4_0, DT_Q4_1, DT_Q8_0};
    static const int64_t    ns[]    = {32, 64, 96, 576, 1536, 32 * 17};
    static const int64_t    nrs[]   = {1, 2, 3, 5, 16, 19};
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    int cases = 0;
    for (int p = 0; p < 2; p++) {
        if (!paths[p])
            continue;
        for (size_t it = 0; it < sizeof types / sizeof types[0]; it++)
            for (size_t in = 0; in < sizeof ns / sizeof ns[0]; in++)
                for (size_t ir = 0; ir < sizeof nrs / sizeof nrs[0]; ir++)
                    for (int64_t nt = 1; nt <= MAX_T; nt += (nt < 9 ? 1 : 2)) {
                        check_case(paths[p], types[it], ns[in], nrs[ir], nt);
                        cases++;
                    }
    }
    printf("tiles: %d cases bitwise equal to the single-row dots\n", cases);
}

/* Public entry point: quant_mat_dot == quant_vec_dot for every type with a
 * dot (the types without a tile kernel take the loop). */
static void test_public(void)
{
    static const enum dtype types[] = {DT_F32, DT_F16, DT_BF16, DT_Q4_0, DT_Q4_1,
                                       DT_Q8_0, DT_Q4_K, DT_Q6_K};
    const int64_t n = 512, nr = 7, nt = 6;
    for (size_t it = 0; it < sizeof types / sizeof types[0]; it++) {
        const enum dtype wt = types[it], at = dtype_info_get(wt)->vec_dot_type;
        const size_t ws = dtype_row_bytes(wt, n), as = dtype_row_bytes(at, n);
        uint8_t *w = malloc((size_t)nr * ws), *a = malloc((size_t)nt * as);
        float   *x = malloc((size_t)n * sizeof *x), out[7 * 6];
        CHECK(w && a && x);
        if (w && a && x) {
            for (int64_t r = 0; r < nr; r++) {
                fill_row(x, n);
                CHECK(quant_row_quantize(wt, x, w + (size_t)r * ws, n) == PS_OK);
            }
            for (int64_t t = 0; t < nt; t++) {
                fill_row(x, n);
                CHECK(quant_row_quantize(at, x, a + (size_t)t * as, n) == PS_OK);
            }
            quant_mat_dot(wt, w, ws, nr, a, as, nt, n, out, nr);
            for (int64_t t = 0; t < nt; t++)
                for (int64_t r = 0; r < nr; r++)
                    CHECK_MSG(f2u(out[t * nr + r]) ==
                                  f2u(quant_vec_dot(wt, w + (size_t)r * ws, a + (size_t)t * as, n)),
                              "quant_mat_dot %s [t %lld, r %lld]", dtype_info_get(wt)->name,
                              (long long)t, (long long)r);
        }
        free(w);
        free(a);
        free(x);
    }
}

/* x8 copies (quant.h), Q4_1 and Q8_0: repacking, then every tile of rows
 * (any group of 8 rows, any token count) bitwise equal to
 * quant_dot_x8_ref on the original rows; within 1e-5 relative of the
 * type's own dot (another rounding of the same exact block sums); Q8_0
 * weights of -128 and +-127 (bitwise only) against activations of +-127;
 * bad shapes and types refused. */
static void test_x8_type(enum dtype wt)
{
    const char *tn = dtype_info_get(wt)->name;
    const enum dtype at = dtype_info_get(wt)->vec_dot_type;
    CHECK(quant_x8_available(wt) == !strcmp(quant_simd_name(), "avx2"));
    if (!quant_x8_available(wt)) {
        printf("%s x8: no x8 kernel on the %s path, skipped\n", tn, quant_simd_name());
        return;
    }
    static const int64_t ns[] = {32, 96, 576, 1536, 32 * 17, 32 * 40};
    static const int64_t nrs[] = {8, 16, 40};
    int cases = 0;
    for (size_t in = 0; in < sizeof ns / sizeof ns[0]; in++)
        for (size_t ir = 0; ir < sizeof nrs / sizeof nrs[0]; ir++) {
            const int64_t n = ns[in], nr = nrs[ir], nt = 19;   /* counts 1..19: the zmm tiles' passes of 8 and their rest */
            const size_t ws = dtype_row_bytes(wt, n) + PAD, as = dtype_row_bytes(at, n) + PAD;
            const size_t xb = quant_x8_bytes(wt, nr, n);
            CHECK(xb >= (size_t)nr * dtype_row_bytes(wt, n) && xb <= (size_t)nr * dtype_row_bytes(wt, n) + 2 * (size_t)nr);
            uint8_t *w = calloc((size_t)nr, ws), *a = calloc((size_t)nt, as), *x8 = aligned_alloc(32, (xb + 31) / 32 * 32);
            float *x = malloc((size_t)n * sizeof *x), *out = malloc((size_t)nt * (size_t)(nr + 3) * sizeof *out);
            CHECK(w && a && x8 && x && out);
            if (!w || !a || !x8 || !x || !out)
                goto next;
            for (int64_t r = 0; r < nr; r++) {
                fill_row(x, n);
                if (r % 5 == 4)
                    for (int64_t i = 0; i < n; i++)
                        x[i] = (i % 32 == 0) ? 0.0f : 1.0f;
                CHECK(quant_row_quantize(wt, x, w + (size_t)r * ws, n) == PS_OK);
                if (wt == DT_Q8_0 && r % 5 == 3)   /* extreme bytes: -128 (a file may hold it) and +-127 */
                    for (int64_t i = 0; i < n; i++)
                        w[(size_t)r * ws + 34 * (size_t)(i / 32) + 2 + (size_t)(i % 32)] =
                            (uint8_t)(i % 3 == 0 ? -128 : i % 3 == 1 ? 127 : -127);
            }
            for (int64_t t = 0; t < nt; t++) {
                fill_row(x, n);
                if (t == 5)   /* activation bytes at +-127 */
                    for (int64_t i = 0; i < n; i++)
                        x[i] = (i & 1) ? 1.0f : -1.0f;
                CHECK(quant_row_quantize(at, x, a + (size_t)t * as, n) == PS_OK);
            }
            CHECK(quant_x8_repack(wt, w, ws, nr, n, x8) == PS_OK);
            /* mag[t][r] = sum |w_i a_i| of the dequantized rows: the scale of
             * the rounding differences between the x8 arithmetic and the
             * type's own dot (a dot that cancels to near 0 has the rounding
             * of its terms, not of its result) */
            float *mag = malloc((size_t)nt * (size_t)nr * sizeof *mag), *wf = malloc((size_t)n * sizeof *wf);
            CHECK(mag && wf);
            if (!mag || !wf) {
                free(mag);
                free(wf);
                goto next;
            }
            for (int64_t t = 0; t < nt; t++) {
                CHECK(quant_row_dequantize(at, a + (size_t)t * as, x, n) == PS_OK);
                for (int64_t r = 0; r < nr; r++) {
                    CHECK(quant_row_dequantize(wt, w + (size_t)r * ws, wf, n) == PS_OK);
                    double m = 0.0;
                    for (int64_t i = 0; i < n; i++)
                        m += fabs((double)wf[i] * (double)x[i]);
                    mag[t * nr + r] = (float)m;
                }
            }
            free(wf);
            const int64_t os = nr + 3;
            for (int64_t row0 = 0; row0 < nr; row0 += 8)
                for (int64_t rows = 8; row0 + rows <= nr; rows += 8)
                    for (int64_t t0 = 0; t0 < nt; t0 += 4)
                        for (int64_t cnt = 1; t0 + cnt <= nt; cnt += 3) {
                            for (size_t i = 0; i < (size_t)(nt * os); i++)
                                out[i] = -12345.0f;
                            quant_mat_dot_x8(wt, x8, row0, rows, n, a + (size_t)t0 * as, as, cnt, out, os);
                            int bad = 0;
                            for (int64_t t = 0; t < cnt; t++) {
                                for (int64_t r = 0; r < rows; r++) {
                                    const uint8_t *wr = w + (size_t)(row0 + r) * ws, *ar = a + (size_t)(t0 + t) * as;
                                    const float ref = quant_dot_x8_ref(wt, wr, ar, n), got = out[t * os + r];
                                    const float own = quant_vec_dot(wt, wr, ar, n);
                                    if (f2u(ref) != f2u(got) && bad++ < 3)
                                        CHECK_MSG(0, "%s x8 n=%lld rows %lld+%lld tokens %lld+%lld: [%lld, %lld] %.9g != ref %.9g",
                                                  tn, (long long)n, (long long)row0, (long long)rows, (long long)t0,
                                                  (long long)cnt, (long long)t, (long long)r, (double)got, (double)ref);
                                    /* (not the extreme rows: their block sums of ~5e5 cancel, so
                                     * the two roundings differ by more than a relative bound) */
                                    const int extreme = wt == DT_Q8_0 && (row0 + r) % 5 == 3;
                                    const float m = mag[(t0 + t) * nr + row0 + r];
                                    CHECK_MSG(extreme || fabsf(ref - own) <= 1e-5f * (m + 1.0f) * (float)(n / 32),
                                              "%s x8 ref %.9g vs the type's dot %.9g (n %lld, sum |w a| %.6g)", tn,
                                              (double)ref, (double)own, (long long)n, (double)m);
                                }
                                for (int64_t r = rows; r < os; r++)
                                    CHECK_MSG(out[t * os + r] == -12345.0f, "x8 wrote outside the tile");
                            }
                            cases++;
                        }
            free(mag);
        next:
            free(w);
            free(a);
            free(x8);
            free(x);
            free(out);
        }
    printf("%s x8: %d tiles bitwise equal to the reference\n", tn, cases);
    uint8_t dummy[64 * 34] = {0};
    _Alignas(32) uint8_t dst[64 * 40];
    const size_t rb = dtype_row_bytes(wt, 32);
    CHECK(quant_x8_repack(wt, dummy, rb, 7, 32, dst) == PS_EINVAL);
    CHECK(quant_x8_repack(wt, dummy, rb, 0, 32, dst) == PS_EINVAL);
    CHECK(quant_x8_repack(wt, dummy, rb, 8, 48, dst) == PS_EINVAL);
    CHECK(quant_x8_repack(wt, dummy, rb, 8, 32 * (QUANT_X8_MAXB + 1), dst) == PS_EINVAL);
    CHECK(quant_x8_bytes(wt, 7, 32) == 0 && quant_x8_bytes(wt, 8, 48) == 0);
}

static void test_x8(void)
{
    test_x8_type(DT_Q4_1);
    test_x8_type(DT_Q8_0);
    uint8_t dummy[64 * 34] = {0};
    _Alignas(32) uint8_t dst[64 * 40];
    CHECK(!quant_x8_available(DT_Q4_0) && !quant_x8_available(DT_F16));
    CHECK(quant_x8_repack(DT_Q4_0, dummy, 18, 8, 32, dst) == PS_EINVAL);
    CHECK(quant_x8_bytes(DT_Q6_K, 8, 256) == 0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ns per weight block and activation row: single-row loop vs tiles, 256 rows of 576 (L2-resident) */
static void bench(void)
{
    static const enum dtype types[] = {DT_Q4_0, DT_Q4_1, DT_Q8_0};
    const int64_t n = 576, nr = 256, nt = 8;
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    for (int p = 0; p < 2; p++) {
        if (!paths[p])
            continue;
        for (size_t it = 0; it < sizeof types / sizeof types[0]; it++) {
            const enum dtype wt = types[it], at = dtype_info_get(wt)->vec_dot_type;
            const size_t ws = dtype_row_bytes(wt, n), as = dtype_row_bytes(at, n);
            uint8_t *w = malloc((size_t)nr * ws), *a = malloc((size_t)nt * as);
            float   *x = malloc((size_t)n * sizeof *x), *out = malloc((size_t)nr * nt * sizeof *out);
            if (!w || !a || !x || !out)
                goto next;
            for (int64_t r = 0; r < nr; r++) {
                fill_row(x, n);
                quant_row_quantize(wt, x, w + (size_t)r * ws, n);
            }
            for (int64_t t = 0; t < nt; t++) {
                fill_row(x, n);
                quant_row_quantize(at, x, a + (size_t)t * as, n);
            }
            /* best of 7 trials: the machine may be shared */
            const int    reps   = p == 0 ? 1 : 6;
            const double blocks = (double)reps * nr * nt * (n / 32);
            double best[3] = {1e30, 1e30, 1e30};
            volatile float sink = 0.0f;
            for (int trial = 0; trial < 7; trial++) {
                double t0 = now_s();
                for (int rep = 0; rep < reps; rep++)
                    for (int64_t t = 0; t < nt; t++)
                        for (int64_t r = 0; r < nr; r++)
                            sink += dot_of(paths[p], wt)(w + (size_t)r * ws, a + (size_t)t * as, n);
                double t1 = now_s();
                for (int rep = 0; rep < reps; rep++)
                    mdot_of(paths[p], wt)(w, ws, nr, a, as, nt, n, out, nr);
                double t2 = now_s();
                for (int rep = 0; rep < reps; rep++)
                    for (int64_t t = 0; t < nt; t++)
                        mdot_of(paths[p], wt)(w, ws, nr, a + (size_t)t * as, as, 1, n, out, nr);
                double t3 = now_s();
                best[0] = fmin(best[0], t1 - t0);
                best[1] = fmin(best[1], t2 - t1);
                best[2] = fmin(best[2], t3 - t2);
            }
            (void)sink;
            printf("bench %-6s %-4s: dot %.2f ns/block, tile x%lld %.2f ns/block, tile x1 %.2f ns/block\n",
                   paths[p]->name, dtype_info_get(wt)->name, 1e9 * best[0] / blocks, (long long)nt,
                   1e9 * best[1] / blocks, 1e9 * best[2] / blocks);
            if (p == 1 && quant_x8_available(wt)) {
                uint8_t *x8 = aligned_alloc(32, (quant_x8_bytes(wt, nr, n) + 31) / 32 * 32);
                if (x8 && quant_x8_repack(wt, w, ws, nr, n, x8) == PS_OK) {
                    double bx[2] = {1e30, 1e30};
                    for (int trial = 0; trial < 7; trial++) {
                        double t0 = now_s();
                        for (int rep = 0; rep < reps; rep++)
                            quant_mat_dot_x8(wt, x8, 0, nr, n, a, as, nt, out, nr);
                        double t1 = now_s();
                        for (int rep = 0; rep < reps; rep++)
                            for (int64_t t = 0; t < nt; t++)
                                quant_mat_dot_x8(wt, x8, 0, nr, n, a + (size_t)t * as, as, 1, out, nr);
                        double t2 = now_s();
                        bx[0] = fmin(bx[0], t1 - t0);
                        bx[1] = fmin(bx[1], t2 - t1);
                    }
                    printf("bench %-6s %-4s x8 repacked:            tile x%lld %.2f ns/block, tile x1 %.2f ns/block\n",
                           paths[p]->name, dtype_info_get(wt)->name, (long long)nt, 1e9 * bx[0] / blocks,
                           1e9 * bx[1] / blocks);
                }
                free(x8);
            }
        next:
            free(w);
            free(a);
            free(x);
            free(out);
        }
    }
}

/* On a CPU with VPDPBUSD the x8 tiles run on it (the best encoding); the
 * plain AVX2 tiles (what an AVX2-only CPU runs) and every VPDPBUSD
 * encoding the CPU has (VEX ymm, EVEX ymm, EVEX zmm) are checked too, each
 * in a child that sets PARASERVE_SIMD before the kernels are chosen.  An
 * encoding the CPU lacks cannot run here: said, not faked. */
static void test_x8_in_child(const char *simd, const char *want_isa)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("PARASERVE_SIMD", simd, 1);
        quant_init();
        CHECK_MSG(!strcmp(quant_x8_isa_name(), want_isa), "PARASERVE_SIMD=%s: x8 tiles on %s", simd,
                  quant_x8_isa_name());
        printf("child, PARASERVE_SIMD=%s: x8 tiles on %s\n", simd, quant_x8_isa_name());
        test_x8();
        fflush(stdout);
        _exit(test_failures ? 1 : 0);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the x8 tiles failed in the PARASERVE_SIMD=%s child", simd);
}

static void test_x8_every_isa(void)
{
    const int levels = quant_vnni_levels();
    if (!levels) {
        printf("NOTE: no AVX-VNNI / AVX512-VNNI on this CPU: the VPDPBUSD x8 tiles were not run\n");
        return;
    }
    test_x8_in_child("avx2", "avx2");
    if (levels & 1)
        test_x8_in_child("avxvnni", "avxvnni");
    else
        printf("NOTE: no AVX-VNNI on this CPU: the VEX x8 tiles were not run\n");
    if (levels & 2)
        test_x8_in_child("avx512vnni", "avx512vnni");
    else
        printf("NOTE: no AVX512-VNNI + VL on this CPU: the EVEX ymm x8 tiles were not run\n");
    if (levels & 4)
        test_x8_in_child("avx512", "avx512");
    else
        printf("NOTE: no AVX512F + BW + VL + VNNI on this CPU: the zmm x8 tiles were not run\n");
}

int main(void)
{
    test_x8_every_isa();
    quant_init();
    printf("simd path: %s, x8 tiles on %s\n", quant_simd_name(), quant_x8_isa_name());
    if (!simd_kernels())
        printf("NOTE: CPU lacks AVX2/FMA/F16C: only the scalar path was tested\n");
    test_tiles_bitwise();
    test_public();
    test_x8();
    if (!getenv("PARASERVE_QUANT_NO_BENCH"))
        bench();
    TEST_DONE();
}
