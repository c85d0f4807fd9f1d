/* test_quant.c - element types, conversions, (de)quantization, dot products.
 *
 * Reference: tests/data/quant_ref.txt from scripts/gen-quant-ref.py (python
 * gguf package).  Checks, with their tolerances:
 *   - traits: block sizes of every supported id, NULL for others, row bytes
 *     0 for partial blocks;
 *   - dequantization of every reference row: bit-exact (NaN == NaN), and
 *     for F32 bit for bit, NaN payloads included; the F32 rows must hold
 *     -0.0, +-inf, quiet and signalling NaNs and denormals of both signs;
 *   - F32/Q4_0/Q4_1/Q8_0/F16/BF16 quantization of every reference input:
 *     bytes identical to gguf's (scalar and AVX2 Q8 quantizers both); for a
 *     NaN input to F16/BF16 only "is NaN" is checked; AVX2 Q8_0/Q8_1
 *     quantizers equal the scalar ones on 300 more rows, exact rounding
 *     ties included;
 *   - fp16/bf16: every one of the 65536 patterns round-trips; every midpoint
 *     between neighbouring halves rounds to the even one;
 *   - Q8_1/Q8_K side fields (s, bsums); Q4_K/Q6_K/Q8_K round-trip error
 *     within the format's step;
 *   - vec_dot of every weight type, n = 32..4096: scalar and AVX2 each within
 *     1e-4 * sum|w_i*a_i| of the double dot of the dequantized rows (the
 *     integer part is exact; float summation and scale products are not);
 *   - PARASERVE_SIMD=scalar forces the scalar path (child process).
 * Prints ns per dot, scalar vs AVX2 (information only, never asserted).
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"
#include "model/quant.h"
#include "model/quant_impl.h"
#include "test_util.h"

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_u32(void) { return test_rng_u32(&rng_state); }

/* roughly normal, unit variance */
static float rng_normal(void)
{
    float s = 0.0f;
    for (int i = 0; i < 4; i++)
        s += (float)(rng_u32() & 0xffff) / 65536.0f;
    return (s - 2.0f) * 1.7320508f;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int parse_bytes(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n / 2;
    return 0;
}

/* n words of 8 hex digits each (most significant first) into out[n]. */
static int parse_u32(const char *s, uint32_t *out, int64_t n)
{
    if ((int64_t)strlen(s) != 8 * n)
        return -1;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = 0;
        for (int k = 0; k < 8; k++) {
            int v = hexval(s[8 * i + k]);
            if (v < 0)
                return -1;
            u = u << 4 | (uint32_t)v;
        }
        out[i] = u;
    }
    return 0;
}

/* As parse_u32, the bits copied into floats without passing through a
 * float value (which could quiet a signalling NaN). */
static int parse_f32(const char *s, float *out, int64_t n)
{
    static uint32_t bits[4096];
    if (n < 0 || n > 4096 || parse_u32(s, bits, n) != 0)
        return -1;
    memcpy(out, bits, (size_t)n * sizeof *out);
    return 0;
}

static enum dtype dtype_by_name(const char *name)
{
    for (uint32_t t = 0; t < 64; t++) {
        const struct dtype_info *ti = dtype_info_get(t);
        if (ti && strcmp(ti->name, name) == 0)
            return (enum dtype)t;
    }
    return (enum dtype)-1;
}

static bool same_f32(float a, float b)
{
    return (isnan(a) && isnan(b)) || f2u(a) == f2u(b);
}

static const struct quant_kernels *simd_kernels(void)
{
#ifdef PS_QUANT_HAVE_AVX2
    if (quant_avx2_supported())
        return &quant_kernels_avx2;
#endif
    return NULL;
}

/* ---- traits -------------------------------------------------------------------- */

static void test_traits(void)
{
    static const struct {
        uint32_t id;
        int32_t  elems, bytes;
        enum dtype vdt;
    } want[] = {
        {0, 1, 4, DT_F32},      {1, 1, 2, DT_F32},      {2, 32, 18, DT_Q8_0},
        {3, 32, 20, DT_Q8_1},   {8, 32, 34, DT_Q8_0},   {9, 32, 36, DT_Q8_1},
        {12, 256, 144, DT_Q8_K}, {14, 256, 210, DT_Q8_K}, {15, 256, 292, DT_Q8_K},
        {30, 1, 2, DT_F32},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct dtype_info *ti = dtype_info_get(want[i].id);
        CHECK_MSG(ti != NULL, "id %u", want[i].id);
        if (!ti)
            continue;
        CHECK_MSG(ti->block_elems == want[i].elems && ti->block_bytes == want[i].bytes &&
                      ti->vec_dot_type == want[i].vdt,
                  "%s", ti->name);
    }
    static const uint32_t bad[] = {4, 5, 6, 7, 10, 11, 13, 16, 20, 29, 31, 39, 1000, 0xffffffffu};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(dtype_info_get(bad[i]) == NULL, "id %u", bad[i]);

    CHECK(dtype_row_bytes(DT_Q4_1, 576) == 18 * 20);
    CHECK(dtype_row_bytes(DT_Q8_0, 1536) == 48 * 34);
    CHECK(dtype_row_bytes(DT_Q6_K, 512) == 420);
    CHECK(dtype_row_bytes(DT_F16, 3) == 6);
    CHECK(dtype_row_bytes(DT_Q4_0, 33) == 0);
    CHECK(dtype_row_bytes(DT_Q4_K, 128) == 0);
    CHECK(dtype_row_bytes(DT_Q8_0, -32) == 0);
    CHECK(dtype_row_bytes((enum dtype)6, 32) == 0);

    float   x[64] = {0};
    uint8_t b[64 * 4];
    CHECK(quant_row_dequantize((enum dtype)6, b, x, 32) == PS_EUNSUPPORTED);
    CHECK(quant_row_quantize((enum dtype)13, x, b, 256) == PS_EUNSUPPORTED);
    CHECK(quant_row_quantize(DT_Q4_0, x, b, 33) == PS_EINVAL);
    CHECK(quant_row_dequantize(DT_Q8_0, b, x, 16) == PS_EINVAL);
    CHECK(isnan(quant_vec_dot(DT_Q8_1, b, b, 32)));
}

/* ---- fp16 / bf16 ------------------------------------------------------------ */

static void test_half(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp16_to_f32((uint16_t)h);
        bool  is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (is_nan ? !isnan(f) || !(f32_to_fp16(f) & 0x200) : f32_to_fp16(f) != h)
            bad++;
        float g = bf16_to_f32((uint16_t)h);
        bool  b_nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        if (b_nan ? !isnan(g) : f32_to_bf16(g) != h)
            bad++;
    }
    CHECK_MSG(bad == 0, "%d half/bf16 patterns do not round-trip", bad);

    /* midpoints of neighbouring finite positive halves (exact in f32) */
    bad = 0;
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float lo = fp16_to_f32((uint16_t)h), hi = fp16_to_f32((uint16_t)(h + 1));
        float mid = lo + (hi - lo) * 0.5f;
        uint16_t even = (uint16_t)((h & 1) ? h + 1 : h);
        if (f32_to_fp16(mid) != even || f32_to_fp16(-mid) != (even | 0x8000))
            bad++;
        if (f32_to_fp16(nextafterf(mid, 0.0f)) != h || f32_to_fp16(nextafterf(mid, INFINITY)) != h + 1)
            bad++;
    }
    CHECK_MSG(bad == 0, "%d fp16 midpoints round wrongly", bad);

    CHECK(f32_to_fp16(65504.0f) == 0x7bff);
    CHECK(f32_to_fp16(65519.996f) == 0x7bff);
    CHECK(f32_to_fp16(65520.0f) == 0x7c00);
    CHECK(f32_to_fp16(-1e30f) == 0xfc00);
    CHECK(f32_to_fp16(INFINITY) == 0x7c00 && f32_to_fp16(-INFINITY) == 0xfc00);
    CHECK(f32_to_fp16(0x1p-25f) == 0x0000);
    CHECK(f32_to_fp16(nextafterf(0x1p-25f, 1.0f)) == 0x0001);
    CHECK(f32_to_fp16(0x1.8p-24f) == 0x0002);
    CHECK(f32_to_fp16(-0.0f) == 0x8000);
    CHECK(f32_to_fp16(1e-40f) == 0x0000);
    CHECK(fp16_to_f32(0x0001) == 0x1p-24f);
    CHECK(fp16_to_f32(0x03ff) == 0x1.ff8p-15f);
    CHECK(isnan(fp16_to_f32(f32_to_fp16(NAN))));
    CHECK(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    CHECK(isnan(bf16_to_f32(f32_to_bf16(u2f(0x7f800001u)))));  /* payload only in low bits */
    CHECK(f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);                /* tie -> even */
    CHECK(f32_to_bf16(1.0f + 0x1.8p-7f) == 0x3f82);              /* tie -> even (up) */
    CHECK(f32_to_bf16(3.4028235e38f) == 0x7f80);                 /* rounds to inf */
}

/* ---- reference file ------------------------------------------------------------- */

#define MAX_N 4096

static bool quantizer_in_reference(enum dtype t)
{
    return t == DT_F32 || t == DT_Q4_0 || t == DT_Q4_1 || t == DT_Q8_0 || t == DT_F16 ||
           t == DT_BF16;
}

/* Classes of F32 bit patterns the reference's F32 rows must cover. */
enum {
    F32_NEG_ZERO = 1, F32_POS_INF = 2, F32_NEG_INF = 4, F32_QNAN = 8, F32_SNAN = 16,
    F32_NAN_PAYLOAD = 32, F32_POS_DENORM = 64, F32_NEG_DENORM = 128, F32_ALL_CLASSES = 255
};
static unsigned f32_classes_seen;

static unsigned f32_class(uint32_t u)
{
    uint32_t exp = u >> 23 & 0xff, man = u & 0x7fffff;
    if (u == 0x80000000u)
        return F32_NEG_ZERO;
    if (exp == 0xff && man == 0)
        return u >> 31 ? F32_NEG_INF : F32_POS_INF;
    if (exp == 0xff)
        return (man & 0x400000 ? F32_QNAN : F32_SNAN) |
               ((man & 0x3fffff) != 0 ? F32_NAN_PAYLOAD : 0);
    if (exp == 0 && man != 0)
        return u >> 31 ? F32_NEG_DENORM : F32_POS_DENORM;
    return 0;
}

/* F32 rows: dequantization (a copy) must return every bit of the stored
 * words, NaN payloads and signalling bits included. */
static void check_f32_bits(const float *got, const char *out_hex, int64_t n, int line)
{
    static uint32_t want[MAX_N], have[MAX_N];
    if (parse_u32(out_hex, want, n) != 0) {
        CHECK_MSG(0, "line %d: malformed", line);
        return;
    }
    memcpy(have, got, (size_t)n * sizeof *have);
    int64_t diff = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        f32_classes_seen |= f32_class(want[i]);
        if (have[i] != want[i] && diff++ == 0)
            first = i;
    }
    CHECK_MSG(diff == 0, "line %d F32: %lld words differ, first [%lld] 0x%08x vs 0x%08x", line,
              (long long)diff, (long long)first, first < 0 ? 0u : have[first],
              first < 0 ? 0u : want[first]);
}

static void check_ref_line(char kind, const char *name, int64_t n, const char *in_hex,
                           const char *blk_hex, const char *out_hex, int line)
{
    static float   in[MAX_N], out[MAX_N], got[MAX_N];
    static uint8_t blk[MAX_N * 4], mine[MAX_N * 4];
    size_t         len;
    enum dtype     t = dtype_by_name(name);

    CHECK_MSG((int)t >= 0 && n > 0 && n <= MAX_N, "line %d: %s %lld", line, name, (long long)n);
    if ((int)t < 0 || n <= 0 || n > MAX_N)
        return;
    if (parse_bytes(blk_hex, blk, sizeof blk, &len) != 0 || len != dtype_row_bytes(t, n) ||
        parse_f32(out_hex, out, n) != 0 || (kind == 'Q' && parse_f32(in_hex, in, n) != 0)) {
        CHECK_MSG(0, "line %d: malformed", line);
        return;
    }

    CHECK(quant_row_dequantize(t, blk, got, n) == PS_OK);
    int64_t diff = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!same_f32(got[i], out[i])) {
            diff++;
            if (first < 0)
                first = i;
        }
    }
    CHECK_MSG(diff == 0, "line %d %s: dequant differs in %lld elems, first [%lld] %.9g vs %.9g",
              line, name, (long long)diff, (long long)first, first < 0 ? 0.0 : (double)got[first],
              first < 0 ? 0.0 : (double)out[first]);
    if (t == DT_F32)
        check_f32_bits(got, out_hex, n, line);

    if (kind != 'Q' || !quantizer_in_reference(t))
        return;
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    for (int p = 0; p < 2; p++) {
        if (t != DT_Q8_0 && p == 1)
            break;
        if (!paths[p])
            continue;
        memset(mine, 0xcc, len);
        if (t == DT_Q8_0)
            paths[p]->quantize_q8_0(in, mine, n);
        else
            CHECK(quant_row_quantize(t, in, mine, n) == PS_OK);
        size_t ndiff = 0;
        for (size_t i = 0; i < len; i++) {
            if (mine[i] == blk[i])
                continue;
            /* a NaN input: gguf and we both produce some NaN */
            if ((t == DT_F16 || t == DT_BF16) && isnan(in[i / 2]))
                continue;
            ndiff++;
        }
        CHECK_MSG(ndiff == 0, "line %d %s (%s): %zu quantized bytes differ from gguf", line, name,
                  paths[p]->name, ndiff);
        if (t == DT_F16 || t == DT_BF16) {
            CHECK(quant_row_dequantize(t, mine, got, n) == PS_OK);
            for (int64_t i = 0; i < n; i++)
                if (isnan(in[i]))
                    CHECK_MSG(isnan(got[i]), "line %d: NaN lost", line);
        }
    }
}

static void test_reference(void)
{
    const char *dir = getenv("PARASERVE_SOURCE_DIR");
    char        path[1024];
    snprintf(path, sizeof path, "%s/tests/data/quant_ref.txt", dir ? dir : ".");
    FILE *f = fopen(path, "rb");
    if (!f && !dir)  /* run by hand from a build directory */
        f = fopen("../tests/data/quant_ref.txt", "rb");
    if (!f) {
        CHECK_MSG(0, "cannot open %s", path);
        return;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    CHECK(buf && fread(buf, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    if (!buf)
        return;
    buf[size] = '\0';

    int   lines = 0, counts[64] = {0};
    char *save_line = NULL;
    for (char *ln = strtok_r(buf, "\n", &save_line); ln; ln = strtok_r(NULL, "\n", &save_line)) {
        char *save = NULL, *tok[6];
        int   nt = 0;
        for (char *t = strtok_r(ln, " ", &save); t && nt < 6; t = strtok_r(NULL, " ", &save))
            tok[nt++] = t;
        lines++;
        if (nt != 6 || (tok[0][0] != 'Q' && tok[0][0] != 'D')) {
            CHECK_MSG(0, "line %d: malformed", lines);
            continue;
        }
        check_ref_line(tok[0][0], tok[1], strtoll(tok[2], NULL, 10), tok[3], tok[4], tok[5], lines);
        enum dtype t = dtype_by_name(tok[1]);
        if ((int)t >= 0)
            counts[t]++;
    }
    free(buf);
    printf("reference: %d rows (Q4_0 %d, Q4_1 %d, Q8_0 %d, Q4_K %d, Q6_K %d, F16 %d, BF16 %d, "
           "F32 %d)\n",
           lines, counts[DT_Q4_0], counts[DT_Q4_1], counts[DT_Q8_0], counts[DT_Q4_K],
           counts[DT_Q6_K], counts[DT_F16], counts[DT_BF16], counts[DT_F32]);
    /* every weight dtype gguf has a reference for (Q8_1/Q8_K: none) */
    static const enum dtype need[] = {DT_F32, DT_F16, DT_BF16, DT_Q4_0, DT_Q4_1,
                                      DT_Q8_0, DT_Q4_K, DT_Q6_K};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        CHECK_MSG(counts[need[i]] > 0, "reference has no %s row",
                  dtype_info_get(need[i])->name);
    CHECK_MSG(f32_classes_seen == F32_ALL_CLASSES,
              "F32 rows cover classes 0x%x of 0x%x (-0, +-inf, qNaN, sNaN, payload, +-denormal)",
              f32_classes_seen, (unsigned)F32_ALL_CLASSES);
}

/* ---- activation formats and K-quant round trips ----------------------------------- */

static void fill_row(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_normal() * scale;
    if (n >= 64) {
        x[5] *= 20.0f;  /* an outlier */
        for (int i = 32; i < 64; i++)
            x[i] = 0.0f;  /* an all-zero block */
    }
}

static void test_activation_formats(void)
{
    static float   x[1024], y[1024];
    static uint8_t q0[2048], q1[2048], qk[2048];
    const int64_t  n = 1024;
    fill_row(x, n, 2.0f);

    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    for (int p = 0; p < 2; p++) {
        if (!paths[p])
            continue;
        paths[p]->quantize_q8_0(x, q0, n);
        paths[p]->quantize_q8_1(x, q1, n);
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *a = q0 + 34 * b, *c = q1 + 36 * b;
            CHECK(memcmp(a, c, 2) == 0 && memcmp(a + 2, c + 4, 32) == 0);
            int sum = 0;
            for (int j = 0; j < 32; j++)
                sum += (int8_t)a[2 + j];
            uint16_t d, s;
            memcpy(&d, a, 2);
            memcpy(&s, c + 2, 2);
            float dd = fabsf(fp16_to_f32(d) - 0.0f);
            /* s = fp16(d * sum) with the unrounded f32 d */
            float amax = 0.0f;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[32 * b + j]));
            CHECK_MSG(s == f32_to_fp16((float)sum * (amax / 127)), "%s block %lld: s",
                      paths[p]->name, (long long)b);
            (void)dd;
        }
        CHECK(quant_row_dequantize(DT_Q8_1, q1, y, n) == PS_OK);
        for (int64_t i = 0; i < n; i++) {
            float d = fp16_to_f32((uint16_t)(q1[36 * (i / 32)] | q1[36 * (i / 32) + 1] << 8));
            /* half a step, plus q * (f16 rounding of d) */
            CHECK_MSG(fabsf(y[i] - x[i]) <= 0.57f * d + 1e-7f, "Q8_1 [%lld]", (long long)i);
        }
    }

    quant_quantize_q8_k_scalar(x, qk, n);
    CHECK(quant_row_dequantize(DT_Q8_K, qk, y, n) == PS_OK);
    for (int64_t b = 0; b < n / 256; b++) {
        const uint8_t *blk = qk + 292 * b;
        float          d;
        memcpy(&d, blk, 4);
        for (int s = 0; s < 16; s++) {
            int16_t bs, sum = 0;
            memcpy(&bs, blk + 260 + 2 * s, 2);
            for (int j = 0; j < 16; j++)
                sum = (int16_t)(sum + (int8_t)blk[4 + 16 * s + j]);
            CHECK(bs == sum);
        }
        for (int j = 0; j < 256; j++)
            CHECK(fabsf(y[256 * b + j] - x[256 * b + j]) <= 0.5f * fabsf(d) * 1.001f + 1e-7f);
    }
}

/* The AVX2 Q8_0/Q8_1 quantizers equal the scalar ones byte for byte, ties
 * included: rows with amax 127 (d = 1) and .5 fractions round half away. */
static void test_q8_paths_agree(void)
{
    const struct quant_kernels *v = simd_kernels();
    if (!v)
        return;
    static float   x[256];
    static uint8_t a[512], b[512];
    int bad = 0;
    for (int rep = 0; rep < 300; rep++) {
        if (rep % 3 == 0) {
            for (int i = 0; i < 256; i++)
                x[i] = (float)((int)(rng_u32() % 254) - 127) + 0.5f;
            for (int blk = 0; blk < 8; blk++)
                x[32 * blk + (int)(rng_u32() % 32)] = (rng_u32() & 1) ? 127.0f : -127.0f;
        } else {
            fill_row(x, 256, rep % 3 == 1 ? 1.0f : 1e-4f);
        }
        quant_kernels_scalar.quantize_q8_0(x, a, 256);
        v->quantize_q8_0(x, b, 256);
        bad += memcmp(a, b, dtype_row_bytes(DT_Q8_0, 256)) != 0;
        quant_kernels_scalar.quantize_q8_1(x, a, 256);
        v->quantize_q8_1(x, b, 256);
        bad += memcmp(a, b, dtype_row_bytes(DT_Q8_1, 256)) != 0;
    }
    CHECK_MSG(bad == 0, "%d rows: avx2 Q8 quantizer differs from scalar", bad);
}

/* Non-finite and extreme activations (a model whose weights hold NaN or
 * inf): the Q8_0/Q8_1/Q8_K quantizers give defined bytes - every q in
 * [-127, 127] (the AVX2 sign trick needs q != -128 on the activation side),
 * a block holding a NaN d = NaN and q 0, one holding an inf d = inf and
 * q 0 - the scalar and AVX2 paths byte for byte equal, and the dot products
 * of such rows stay non-finite (the NaN is not dropped).  Before: the scalar
 * path cast NaN / out-of-range floats to int (undefined behaviour; UBSan),
 * the AVX2 path stored -128 for them, and a denormal amax (1/d = inf) made
 * 0 * inf = NaN products in all-finite rows. */
static void fill_special_row(float *x, int kind)
{
    for (int i = 0; i < 256; i++)
        x[i] = rng_normal();
    switch (kind) {
    case 0: x[3] = NAN; x[40] = -NAN; break;                      /* NaNs in 2 blocks       */
    case 1: x[7] = INFINITY; x[70] = -INFINITY; break;             /* infs                   */
    case 2: x[1] = NAN; x[2] = INFINITY; x[3] = -INFINITY; break;  /* all three in one block */
    case 3: for (int i = 0; i < 256; i++) x[i] = NAN; break;
    case 4: for (int i = 0; i < 256; i++) x[i] *= 1e-39f; break;  /* denormal amax: 1/d = inf */
    case 5: for (int i = 0; i < 256; i++) x[i] = (i & 1) ? 1e-45f : 0.0f; break;
    case 6: for (int i = 0; i < 256; i++) x[i] *= 1e37f; x[9] = FLT_MAX; x[10] = -FLT_MAX; break;  /* finite */
    default: for (int i = 0; i < 256; i++) x[i] = (i % 3) ? -INFINITY : 0.0f; break;
    }
}

static void test_q8_nonfinite(void)
{
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    static float   x[256];
    static uint8_t q[2][2][512], qk[292];
    for (int kind = 0; kind < 8; kind++) {
        fill_special_row(x, kind);
        for (int p = 0; p < 2; p++) {
            if (!paths[p])
                continue;
            paths[p]->quantize_q8_0(x, q[p][0], 256);
            paths[p]->quantize_q8_1(x, q[p][1], 256);
            for (int t = 0; t < 2; t++) {
                const int bb = t ? 36 : 34, off = t ? 4 : 2;
                for (int b = 0; b < 8; b++) {
                    const uint8_t *blk = q[p][t] + bb * b;
                    const float *xb = x + 32 * b;
                    bool has_nan = false, has_inf = false;
                    for (int j = 0; j < 32; j++) {
                        has_nan |= isnan(xb[j]);
                        has_inf |= isinf(xb[j]);
                    }
                    const float d = fp16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
                    int bad = 0, nonzero = 0;
                    for (int j = 0; j < 32; j++) {
                        bad += (int8_t)blk[off + j] == -128;
                        nonzero += blk[off + j] != 0;
                    }
                    CHECK_MSG(bad == 0, "kind %d %s Q8_%d block %d: %d q of -128", kind, paths[p]->name, t, b,
                              bad);
                    if (has_nan)
                        CHECK_MSG(isnan(d) && nonzero == 0, "kind %d %s Q8_%d block %d: NaN -> d %g", kind,
                                  paths[p]->name, t, b, (double)d);
                    else if (has_inf)
                        CHECK_MSG(isinf(d) && d > 0 && nonzero == 0, "kind %d %s Q8_%d block %d: inf -> d %g",
                                  kind, paths[p]->name, t, b, (double)d);
                    if (t == 1 && (has_nan || has_inf))
                        CHECK(!isfinite(fp16_to_f32((uint16_t)(blk[2] | blk[3] << 8))));
                }
            }
        }
        if (paths[1]) {
            CHECK_MSG(memcmp(q[0][0], q[1][0], 8 * 34) == 0, "kind %d: avx2 Q8_0 differs from scalar", kind);
            CHECK_MSG(memcmp(q[0][1], q[1][1], 8 * 36) == 0, "kind %d: avx2 Q8_1 differs from scalar", kind);
        }
        quant_quantize_q8_k_scalar(x, qk, 256);
        float dk;
        memcpy(&dk, qk, sizeof dk);
        int bad = 0;
        for (int j = 0; j < 256; j++)
            bad += (int8_t)qk[4 + j] == -128;
        CHECK_MSG(bad == 0, "kind %d Q8_K: %d q of -128", kind, bad);
        if (kind <= 3)
            CHECK_MSG(!isfinite(dk), "kind %d Q8_K: d %g", kind, (double)dk);
        if (kind == 0 || kind == 2 || kind == 3)
            CHECK_MSG(isnan(dk), "kind %d Q8_K: NaN -> d %g", kind, (double)dk);

        /* the dots of such activations with finite weights: non-finite for
         * rows with NaN / inf, finite for the denormal ones (d is 0 as f16);
         * huge finite rows overflow the f16 d (inf): defined, not asserted */
        static float   w[256];
        static uint8_t wq[1024], aq[1024];
        static const enum dtype wts[] = {DT_Q4_0, DT_Q4_1, DT_Q8_0, DT_Q4_K, DT_Q6_K};
        for (size_t k = 0; k < sizeof wts / sizeof wts[0]; k++) {
            fill_row(w, 256, 0.05f);
            CHECK(quant_row_quantize(wts[k], w, wq, 256) == PS_OK);
            CHECK(quant_row_quantize(dtype_info_get(wts[k])->vec_dot_type, x, aq, 256) == PS_OK);
            const float r = quant_vec_dot(wts[k], wq, aq, 256);
            if (kind <= 3 || kind == 7)
                CHECK_MSG(isnan(r) || isinf(r), "kind %d %s: dot %g", kind, dtype_info_get(wts[k])->name,
                          (double)r);
            else if (kind == 4 || kind == 5)
                CHECK_MSG(isfinite(r), "kind %d %s: dot %g", kind, dtype_info_get(wts[k])->name, (double)r);
        }
    }
}

/* Weights from a file whose f16 block scales are inf or NaN (a broken
 * model): every dot type gives a non-finite result on both paths, no
 * crash; a Q8_0 weight of -128 (valid in a file) against activations of
 * +-127 is exact on the AVX2 path (|w| = 128 as u8, the sign goes on the
 * activation, which is never -128). */
static void test_weights_nonfinite(void)
{
    static float   w[256], a[256];
    static uint8_t wq[1024], aq[1024];
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    static const struct {
        enum dtype t;
        int        bb, doff; /* block bytes, offset of an f16 scale in block 1 */
    } cases[] = {{DT_Q4_0, 18, 0}, {DT_Q4_1, 20, 0}, {DT_Q4_1, 20, 2}, {DT_Q8_0, 34, 0},
                 {DT_Q4_K, 144, 0}, {DT_Q4_K, 144, 2}, {DT_Q6_K, 210, 208}};
    static const uint16_t bad_h[3] = {0x7c00, 0xfc00, 0x7e00};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const enum dtype t = cases[c].t, at = dtype_info_get(t)->vec_dot_type;
        for (int h = 0; h < 3; h++) {
            fill_row(w, 256, 0.05f);
            fill_row(a, 256, 1.0f);
            CHECK(quant_row_quantize(t, w, wq, 256) == PS_OK);
            CHECK(quant_row_quantize(at, a, aq, 256) == PS_OK);
            const int blk = t == DT_Q4_K || t == DT_Q6_K ? 0 : 1;  /* block 1 holds no zero block */
            memcpy(wq + cases[c].bb * blk + cases[c].doff, &bad_h[h], 2);
            for (int p = 0; p < 2; p++) {
                if (!paths[p])
                    continue;
                quant_dot_fn fn = t == DT_Q4_0 ? paths[p]->dot_q4_0 : t == DT_Q4_1 ? paths[p]->dot_q4_1
                                : t == DT_Q8_0 ? paths[p]->dot_q8_0 : t == DT_Q4_K ? paths[p]->dot_q4_k
                                : paths[p]->dot_q6_k;
                const float r = fn(wq, aq, 256);
                CHECK_MSG(!isfinite(r), "%s scale 0x%04x at +%d (%s): dot %g", dtype_info_get(t)->name,
                          bad_h[h], cases[c].doff, paths[p]->name, (double)r);
            }
        }
    }
    /* Q8_0 weights of -128 and -127 against activations of +-127 */
    for (int i = 0; i < 256; i++)
        a[i] = (i % 5 == 0) ? -127.0f : (i % 3 == 0) ? 127.0f : (float)(i % 17) - 8.0f;
    CHECK(quant_row_quantize(DT_Q8_0, a, aq, 256) == PS_OK);
    for (int b = 0; b < 8; b++) {
        const uint16_t one = f32_to_fp16(1.0f);
        memcpy(wq + 34 * b, &one, 2);
        for (int j = 0; j < 32; j++)
            wq[34 * b + 2 + j] = (uint8_t)(int8_t)((j % 2) ? -128 : -127 + j);
    }
    double ref = 0.0;
    for (int b = 0; b < 8; b++) {
        const float da = fp16_to_f32((uint16_t)(aq[34 * b] | aq[34 * b + 1] << 8));
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += (int8_t)wq[34 * b + 2 + j] * (int8_t)aq[34 * b + 2 + j];
        ref += (double)da * sum;
    }
    for (int p = 0; p < 2; p++)
        if (paths[p]) {
            const float r = paths[p]->dot_q8_0(wq, aq, 256);
            CHECK_MSG(fabs(r - ref) <= 1e-5 * fabs(ref), "Q8_0 -128 weights (%s): %g vs %g", paths[p]->name,
                      (double)r, ref);
        }
}

/* Q4_K/Q6_K: quantize, dequantize.  The 6/8-bit sub-block scales are
 * multiples of the super-block's d (and Q4_K mins of dmin), rounded up by the
 * quantizer, so each element's error is bounded by
 *   Q4_K: half of (own step (max - min(0,lo))/15 + d + dmin/15),
 *   Q6_K: one of  (own step max|x|/32 + d)   (+max and -max cannot both fit).
 * Checked with 1% slack for float rounding. */
static void test_kquant_roundtrip(void)
{
    static float   x[1024], y[1024];
    static uint8_t q[1024];
    const int64_t  n = 1024;
    for (int rep = 0; rep < 4; rep++) {
        fill_row(x, n, rep == 3 ? 1e-3f : 1.0f);
        if (rep == 2)
            for (int64_t i = 0; i < n; i++)
                x[i] = fabsf(x[i]) + 0.5f;  /* one-signed: exercises the min */
        for (int k = 0; k < 2; k++) {
            enum dtype t   = k ? DT_Q6_K : DT_Q4_K;
            int        sub = k ? 16 : 32;
            CHECK(quant_row_quantize(t, x, q, n) == PS_OK);
            CHECK(quant_row_dequantize(t, q, y, n) == PS_OK);
            double worst = 0.0;
            for (int64_t s = 0; s < n / sub; s++) {
                const uint8_t *blk = q + (k ? 210 : 144) * (s * sub / 256);
                float d = k ? fp16_to_f32((uint16_t)(blk[208] | blk[209] << 8))
                            : fp16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
                float dmin = k ? 0.0f : fp16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
                float lo = 0.0f, hi = 0.0f;
                for (int j = 0; j < sub; j++) {
                    lo = fminf(lo, x[s * sub + j]);
                    hi = fmaxf(hi, x[s * sub + j]);
                }
                float bound = k ? fmaxf(hi, -lo) / 32 + d : 0.5f * ((hi - lo) / 15 + d + dmin / 15);
                for (int j = 0; j < sub; j++) {
                    double e = fabs((double)y[s * sub + j] - x[s * sub + j]) / (bound * 1.01 + 1e-30);
                    if (e > worst)
                        worst = e;
                }
            }
            CHECK_MSG(worst <= 1.0, "%s rep %d: error %.3f of bound", k ? "Q6_K" : "Q4_K", rep, worst);
        }
    }
}

/* ---- dot products -------------------------------------------------------------- */

static bool check_dot(enum dtype wt, int64_t n, const char *tag)
{
    static float   w[MAX_N], a[MAX_N], wd[MAX_N], ad[MAX_N];
    static uint8_t wq[MAX_N * 4], aq[MAX_N * 4];
    const struct dtype_info *ti = dtype_info_get(wt);
    enum dtype               at = ti->vec_dot_type;

    fill_row(w, n, 0.05f);
    fill_row(a, n, 1.5f);
    if (quant_row_quantize(wt, w, wq, n) != PS_OK || quant_row_quantize(at, a, aq, n) != PS_OK ||
        quant_row_dequantize(wt, wq, wd, n) != PS_OK || quant_row_dequantize(at, aq, ad, n) != PS_OK) {
        CHECK_MSG(0, "%s: (de)quantize failed", tag);
        return false;
    }
    double ref = 0.0, mag = 0.0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)wd[i] * ad[i];
        mag += fabs((double)wd[i] * ad[i]);
    }
    if (wt == DT_Q4_1) {
        /* the offset term uses the stored Q8_1 s, not d * sum(q) */
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *wb = wq + 20 * b, *ab = aq + 36 * b;
            float m = fp16_to_f32((uint16_t)(wb[2] | wb[3] << 8));
            float d = fp16_to_f32((uint16_t)(ab[0] | ab[1] << 8));
            float s = fp16_to_f32((uint16_t)(ab[2] | ab[3] << 8));
            int   sum = 0;
            for (int j = 0; j < 32; j++)
                sum += (int8_t)ab[4 + j];
            ref += (double)m * ((double)s - (double)d * sum);
            mag += fabs((double)m * s);
        }
    }
    const double tol = 1e-4 * mag + 1e-6;

    bool  ok = true;
    float r_scalar = 0.0f;
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    for (int p = 0; p < 2; p++) {
        if (!paths[p])
            continue;
        quant_dot_fn fn = NULL;
        switch (wt) {
        case DT_F32:  fn = paths[p]->dot_f32; break;
        case DT_F16:  fn = paths[p]->dot_f16; break;
        case DT_BF16: fn = paths[p]->dot_bf16; break;
        case DT_Q4_0: fn = paths[p]->dot_q4_0; break;
        case DT_Q4_1: fn = paths[p]->dot_q4_1; break;
        case DT_Q8_0: fn = paths[p]->dot_q8_0; break;
        case DT_Q4_K: fn = paths[p]->dot_q4_k; break;
        case DT_Q6_K: fn = paths[p]->dot_q6_k; break;
        default: break;
        }
        float r = fn(wq, aq, n);
        if (p == 0)
            r_scalar = r;
        if (!(fabs(r - ref) <= tol)) {
            CHECK_MSG(0, "%s n=%lld %s: %.9g vs ref %.9g (tol %.3g)", tag, (long long)n,
                      paths[p]->name, (double)r, ref, tol);
            ok = false;
        }
        if (p == 1 && !(fabs((double)r - r_scalar) <= tol)) {
            CHECK_MSG(0, "%s n=%lld: avx2 %.9g vs scalar %.9g", tag, (long long)n, (double)r,
                      (double)r_scalar);
            ok = false;
        }
    }
    /* the public entry point agrees with one of the paths */
    float pub = quant_vec_dot(wt, wq, aq, n);
    CHECK_MSG(fabs(pub - ref) <= tol, "%s n=%lld quant_vec_dot", tag, (long long)n);
    return ok;
}

static void test_dots(void)
{
    static const enum dtype types[] = {DT_F32, DT_F16, DT_BF16, DT_Q4_0, DT_Q4_1,
                                       DT_Q8_0, DT_Q4_K, DT_Q6_K};
    static const int64_t    ns[]    = {32, 64, 96, 256, 576, 1536, 2048, 4096};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const struct dtype_info *ti = dtype_info_get(types[t]);
        int cases = 0;
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            if (ns[k] % ti->block_elems)
                continue;
            for (int rep = 0; rep < 3; rep++) {
                check_dot(types[t], ns[k], ti->name);
                cases++;
            }
        }
        /* odd lengths for the float types: SIMD tails */
        if (ti->block_elems == 1)
            for (int64_t n = 1; n < 40; n += 3, cases++)
                check_dot(types[t], n, ti->name);
        printf("vec_dot %-5s: %d cases\n", ti->name, cases);
    }
}

/* ---- micro-benchmark (printed, never asserted) ----------------------------------- */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void bench(void)
{
    static float   w[MAX_N], a[MAX_N];
    static uint8_t wq[MAX_N * 4], aq[MAX_N * 4];
    static const struct {
        enum dtype t;
        int64_t    n;
    } cases[] = {{DT_Q4_1, 576}, {DT_Q4_1, 1536}, {DT_Q8_0, 576}, {DT_Q8_0, 1536},
                 {DT_Q4_0, 576}, {DT_Q4_K, 1536}, {DT_Q6_K, 1536}, {DT_F16, 576},
                 {DT_F32, 576}};
    const struct quant_kernels *paths[2] = {&quant_kernels_scalar, simd_kernels()};
    volatile float sink = 0.0f;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct dtype_info *ti = dtype_info_get(cases[c].t);
        int64_t n = cases[c].n;
        fill_row(w, n, 0.05f);
        fill_row(a, n, 1.0f);
        quant_row_quantize(cases[c].t, w, wq, n);
        quant_row_quantize(ti->vec_dot_type, a, aq, n);
        double ns_per[2] = {0, 0};
        for (int p = 0; p < 2; p++) {
            if (!paths[p])
                continue;
            quant_dot_fn fn = cases[c].t == DT_Q4_1 ? paths[p]->dot_q4_1
                            : cases[c].t == DT_Q8_0 ? paths[p]->dot_q8_0
                            : cases[c].t == DT_Q4_0 ? paths[p]->dot_q4_0
                            : cases[c].t == DT_Q4_K ? paths[p]->dot_q4_k
                            : cases[c].t == DT_Q6_K ? paths[p]->dot_q6_k
                            : cases[c].t == DT_F16  ? paths[p]->dot_f16
                                                    : paths[p]->dot_f32;
            const int iters = (int)(4000000 / n);
            double best = 1e30;
            for (int rep = 0; rep < 3; rep++) {
                double t0 = now_ns();
                for (int i = 0; i < iters; i++)
                    sink += fn(wq, aq, n);
                double dt = (now_ns() - t0) / iters;
                if (dt < best)
                    best = dt;
            }
            ns_per[p] = best;
        }
        printf("bench %-5s n=%-5lld scalar %8.1f ns/dot   %s %8.1f ns/dot\n", ti->name,
               (long long)n, ns_per[0], paths[1] ? "avx2" : "avx2 n/a", ns_per[1]);
    }
    (void)sink;
}

/* ---- PARASERVE_SIMD=scalar --------------------------------------------------------- */

/* Runs before anything initializes the kernels, so the child's first call
 * sees the environment variable. */
static void test_env_forces_scalar(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("PARASERVE_SIMD", "scalar", 1);
        _exit(strcmp(quant_simd_name(), "scalar") == 0 ? 0 : 1);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "PARASERVE_SIMD=scalar not honoured");
}

int main(void)
{
    test_env_forces_scalar();
    quant_init();
    printf("simd path: %s\n", quant_simd_name());
    if (!simd_kernels())
        printf("NOTE: CPU lacks AVX2/FMA/F16C: only the scalar path was tested\n");

    test_traits();
    test_half();
    test_reference();
    test_activation_formats();
    test_q8_paths_agree();
    test_q8_nonfinite();
    test_weights_nonfinite();
    test_kquant_roundtrip();
    test_dots();
    if (!getenv("PARASERVE_QUANT_NO_BENCH"))
        bench();
    TEST_DONE();
}
