/* quant.c - GGUF element types: traits, fp16/bf16, (de)quantization, scalar
 * dot products and the run-time choice of SIMD path.
 *
 * Blocks are read and written through byte pointers and memcpy: rows come
 * straight from a mapped file and carry no alignment promise.
 *
 * The Q4_0/Q4_1/Q8_0/Q8_1/Q8_K quantizers reproduce the reference rounding
 * of ggml (multiply by the inverse scale, then truncate-after-offset for the
 * 4-bit types, round-half-away for Q8_0/Q8_1, round-half-even for Q8_K), so
 * activations quantized here equal llama.cpp's reference quantizer bit for
 * bit.  The Q4_K/Q6_K quantizers are simple min/max searches: they exist for
 * synthetic test models, not for producing model files.
 */
#include "model/quant.h"
#include "model/quant_impl.h"

#include "common/status.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- traits ---------------------------------------------------------------- */

static const struct dtype_info dtype_table[] = {
    [DT_F32]  = {"F32",  1,      4,   DT_F32},
    [DT_F16]  = {"F16",  1,      2,   DT_F32},
    [DT_Q4_0] = {"Q4_0", QK_BLOCK, 18,  DT_Q8_0},
    [DT_Q4_1] = {"Q4_1", QK_BLOCK, 20,  DT_Q8_1},
    [DT_Q8_0] = {"Q8_0", QK_BLOCK, 34,  DT_Q8_0},
    [DT_Q8_1] = {"Q8_1", QK_BLOCK, 36,  DT_Q8_1},
    [DT_Q4_K] = {"Q4_K", QK_K,   144, DT_Q8_K},
    [DT_Q6_K] = {"Q6_K", QK_K,   210, DT_Q8_K},
    [DT_Q8_K] = {"Q8_K", QK_K,   292, DT_Q8_K},
    [DT_BF16] = {"BF16", 1,      2,   DT_F32},
};

const struct dtype_info *dtype_info_get(uint32_t type)
{
    if (type >= sizeof dtype_table / sizeof dtype_table[0])
        return NULL;
    if (!dtype_table[type].name)
        return NULL;
    return &dtype_table[type];
}

size_t dtype_row_bytes(enum dtype type, int64_t n)
{
    const struct dtype_info *ti = dtype_info_get((uint32_t)type);
    if (!ti || n < 0 || n % ti->block_elems != 0)
        return 0;
    return (size_t)(n / ti->block_elems) * (size_t)ti->block_bytes;
}

/* ---- fp16 / bf16 ----------------------------------------------------------- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float fp16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp  = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;

    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t f32_to_fp16(float f)
{
    uint32_t x    = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;

    if (x >= 0x7f800000u) {  /* inf, nan (kept quiet, top payload bits) */
        if (x == 0x7f800000u)
            return sign | 0x7c00;
        return (uint16_t)(sign | 0x7e00 | ((x >> 13) & 0x3ff));
    }
    if (x >= 0x477ff000u)    /* >= 65520 rounds to inf */
        return sign | 0x7c00;
    if (x >= 0x38800000u) {  /* normal half: rebias exponent, round 13 bits */
        uint32_t r   = x - 0x38000000u;
        uint32_t h   = r >> 13;
        uint32_t rem = r & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t exp = x >> 23;
    if (exp < 102)           /* below 2^-25: rounds to zero */
        return sign;
    /* subnormal half: value in units of 2^-24 is mant >> (126 - exp) */
    uint32_t mant  = (x & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - exp;  /* 14..24 */
    uint32_t h     = mant >> shift;
    uint32_t rem   = mant & ((1u << shift) - 1);
    uint32_t half  = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)  /* nan: keep sign/payload, force quiet */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---- byte access ------------------------------------------------------------ */

static inline float ld_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return fp16_to_f32(h);
}

static inline void st_f16(uint8_t *p, float f)
{
    uint16_t h = f32_to_fp16(f);
    memcpy(p, &h, sizeof h);
}

static inline float ld_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* round half to even for |v| < 2^22 (ggml's nearest_int) */
static inline int nearest_int(float v)
{
    return (int)lrintf(v);
}

/* Q4_K: 6-bit scale and min of sub-block j from the 12 packed bytes */
static inline void q4k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m  = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m  = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q6_K: 6-bit value (0..63) of element e (0..255) of a super-block */
static inline int q6k_get(const uint8_t *blk, int e)
{
    const uint8_t *ql = blk + 64 * (e / 128);
    const uint8_t *qh = blk + 128 + 32 * (e / 128);
    int r = e % 128;
    int lo = (r < 64) ? (ql[r] & 0xf) : (ql[r - 64] >> 4);
    int hi = (qh[r % 32] >> (2 * (r / 32))) & 3;
    return lo | (hi << 4);
}

/* ---- dequantization ----------------------------------------------------------- */

static void dequant_q4_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = ld_f16(b);
        for (int j = 0; j < 16; j++) {
            y[j]      = (float)((b[2 + j] & 0xf) - 8) * d;
            y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 20, y += 32) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j]      = (float)(b[4 + j] & 0xf) * d + m;
            y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
    }
}

/* Q8_0 (off 2) and Q8_1 (off 4): x = q*d */
static void dequant_q8(const uint8_t *b, float *y, int64_t nb, int bytes, int off)
{
    for (int64_t i = 0; i < nb; i++, b += bytes, y += 32) {
        float d = ld_f16(b);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(int8_t)b[off + j] * d;
    }
}

static void dequant_q4_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 144) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        const uint8_t *sc = b + 4, *qs = b + 16;
        for (int c = 0; c < 4; c++, qs += 32, y += 64) {
            int s0, m0, s1, m1;
            q4k_scale_min(sc, 2 * c, &s0, &m0);
            q4k_scale_min(sc, 2 * c + 1, &s1, &m1);
            float d0 = d * (float)s0, dm0 = dmin * (float)m0;
            float d1 = d * (float)s1, dm1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++) {
                y[l]      = d0 * (float)(qs[l] & 0xf) - dm0;
                y[l + 32] = d1 * (float)(qs[l] >> 4) - dm1;
            }
        }
    }
}

static void dequant_q6_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 210, y += 256) {
        float d = ld_f16(b + 208);
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int e = 0; e < 256; e++)
            y[e] = d * (float)sc[e / 16] * (float)(q6k_get(b, e) - 32);
    }
}

static void dequant_q8_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 292, y += 256) {
        float d = ld_f32(b);
        for (int j = 0; j < 256; j++)
            y[j] = d * (float)(int8_t)b[4 + j];
    }
}

int quant_row_dequantize(enum dtype type, const void *src, float *dst, int64_t n)
{
    const struct dtype_info *ti = dtype_info_get((uint32_t)type);
    if (!ti)
        return ps_error_set(PS_EUNSUPPORTED, "quant: no dequantizer for type %d", (int)type);
    if (n < 0 || n % ti->block_elems != 0)
        return ps_error_set(PS_EINVAL, "quant: %s row of %lld elements is not whole blocks",
                            ti->name, (long long)n);
    const uint8_t *b  = src;
    int64_t        nb = n / ti->block_elems;
    switch (type) {
    case DT_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DT_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = ld_f16(b + 2 * i);
        break;
    case DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, b + 2 * i, sizeof h);
            dst[i] = bf16_to_f32(h);
        }
        break;
    case DT_Q4_0: dequant_q4_0(b, dst, nb); break;
    case DT_Q4_1: dequant_q4_1(b, dst, nb); break;
    case DT_Q8_0: dequant_q8(b, dst, nb, 34, 2); break;
    case DT_Q8_1: dequant_q8(b, dst, nb, 36, 4); break;
    case DT_Q4_K: dequant_q4_k(b, dst, nb); break;
    case DT_Q6_K: dequant_q6_k(b, dst, nb); break;
    case DT_Q8_K: dequant_q8_k(b, dst, nb); break;
    }
    return PS_OK;
}

/* ---- quantization ------------------------------------------------------------ */

static void quantize_q4_0(const float *x, uint8_t *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 32, b += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max  = x[j];
            }
        }
        const float d  = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        st_f16(b, d);
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)(x[j] * id + 8.5f);
            int q1 = (int8_t)(x[j + 16] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_q4_1(const float *x, uint8_t *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 32, b += 20) {
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d  = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        st_f16(b, d);
        st_f16(b + 2, min);
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)((x[j] - min) * id + 0.5f);
            int q1 = (int8_t)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* q = round-half-away(p) clamped to [-127, 127]; NaN -> 0.  Only a
 * non-finite scale makes |p| > 127 (id = inf: amax so small that amax/127
 * is a denormal; or NaN / inf input), and (int) of a NaN or out-of-range
 * float is undefined behaviour.  roundf without the libm call: in range,
 * t = trunc(p) is exact in an int and p - t is exact. */
static inline int q8_round(float p)
{
    if (!(p == p))
        return 0;
    if (p >= 127.0f)
        return 127;
    if (p <= -127.0f)
        return -127;
    const int   t = (int)p;
    const float f = p - (float)t;
    return t + (f >= 0.5f) - (f <= -0.5f);
}

int quant_q8_block_scalar(const float *x, int8_t *qs, float *d_out)
{
    float amax = 0.0f;
    bool  has_nan = false;
    for (int j = 0; j < 32; j++) {
        const float a = fabsf(x[j]);
        has_nan |= a != a;
        amax = a > amax ? a : amax;
    }
    /* A NaN input makes the block's scale NaN (and every q 0), so the NaN
     * reaches every dot product that uses the block instead of being
     * dropped; an inf input gives d = inf, q = 0, likewise non-finite. */
    const float d  = has_nan ? NAN : amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        const int q = q8_round(x[j] * id);
        qs[j] = (int8_t)q;
        sum += q;
    }
    *d_out = d;
    return sum;
}

/* Q8_0 (with_sum false) and Q8_1 (true): d = amax/127, q = roundf(x/d) */
static void quantize_q8_common(const float *x, uint8_t *b, int64_t nb, bool with_sum)
{
    const int bytes = with_sum ? 36 : 34, off = with_sum ? 4 : 2;
    for (int64_t i = 0; i < nb; i++, x += 32, b += bytes) {
        float d;
        const int sum = quant_q8_block_scalar(x, (int8_t *)(b + off), &d);
        st_f16(b, d);
        if (with_sum)
            st_f16(b + 2, (float)sum * d);
    }
}

static void quantize_q8_0_scalar(const float *x, void *dst, int64_t n)
{
    quantize_q8_common(x, dst, n / 32, false);
}

static void quantize_q8_1_scalar(const float *x, void *dst, int64_t n)
{
    quantize_q8_common(x, dst, n / 32, true);
}

void quant_quantize_q8_k_scalar(const float *x, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 256; i++, x += 256, b += 292) {
        float amax = 0.0f, max = 0.0f;
        bool  has_nan = false;
        for (int j = 0; j < 256; j++) {
            has_nan |= x[j] != x[j];
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max  = x[j];
            }
        }
        /* a NaN makes d NaN (as in the Q8_0/Q8_1 blocks): it propagates */
        float d = has_nan ? NAN : 0.0f;
        int8_t *qs = (int8_t *)(b + 4);
        if (amax == 0.0f) {
            memset(qs, 0, 256);
        } else {
            const float iscale = -127.0f / max;
            for (int j = 0; j < 256; j++) {
                /* |iscale * x| <= 127 but for a non-finite iscale (max a
                 * denormal, or inf) or a NaN x: clamp, NaN -> 0, before
                 * lrintf (unspecified out of range) */
                const float v = iscale * x[j];
                qs[j] = (int8_t)(!(v == v) ? 0 : v >= 127.0f ? 127 : v <= -127.0f ? -127 : nearest_int(v));
            }
            d = has_nan ? NAN : 1.0f / iscale;
        }
        memcpy(b, &d, sizeof d);
        for (int s = 0; s < 16; s++) {
            int16_t sum = 0;
            for (int j = 0; j < 16; j++)
                sum = (int16_t)(sum + qs[16 * s + j]);
            memcpy(b + 260 + 2 * s, &sum, sizeof sum);
        }
    }
}

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* store v as the smallest f16 >= v (v >= 0, finite) and return it, so a
 * scale computed from the stored value never needs more than 63 steps */
static float f16_at_least(uint8_t *p, float v)
{
    uint16_t h = f32_to_fp16(v);
    if (fp16_to_f32(h) < v && h < 0x7bff)
        h++;
    memcpy(p, &h, sizeof h);
    return fp16_to_f32(h);
}

/* Q4_K by min/max per sub-block of 32: x ~ d*sc*q - dmin*m with the 6-bit
 * scales and mins themselves quantized against the super-block maxima. */
static void quantize_q4_k(const float *x, uint8_t *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 256, b += 144) {
        float scale[8], minv[8], max_min = 0.0f;
        for (int j = 0; j < 8; j++) {
            float lo = 0.0f, hi = -INFINITY;
            for (int l = 0; l < 32; l++) {
                lo = fminf(lo, x[32 * j + l]);
                hi = fmaxf(hi, x[32 * j + l]);
            }
            scale[j] = (hi - lo) / 15;
            minv[j]  = -lo;
            max_min   = fmaxf(max_min, minv[j]);
        }
        /* the min first, rounded up; then the scale that covers
         * [0, hi + dmin*m], rounded up: q = (x + dmin*m)/(d*sc) stays in 0..15 */
        const float dmin = f16_at_least(b + 2, max_min / 63);
        int   sc[8], m[8];
        float need[8], max_need = 0.0f;
        for (int j = 0; j < 8; j++) {
            m[j]    = dmin > 0.0f ? clampi((int)ceilf(minv[j] / dmin), 0, 63) : 0;
            need[j] = scale[j] + (dmin * (float)m[j] - minv[j]) / 15;
            max_need = fmaxf(max_need, need[j]);
        }
        const float d = f16_at_least(b, max_need / 63);
        for (int j = 0; j < 8; j++)
            sc[j] = d > 0.0f ? clampi((int)ceilf(need[j] / d), 0, 63) : 0;
        uint8_t *s = b + 4;
        for (int j = 0; j < 4; j++) {
            s[j]     = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
            s[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
            s[j + 8] = (uint8_t)((sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4));
        }
        uint8_t *qs = b + 16;
        memset(qs, 0, 128);
        for (int j = 0; j < 8; j++) {
            const float dq = d * (float)sc[j], dm = dmin * (float)m[j];
            const float id = dq > 0.0f ? 1.0f / dq : 0.0f;
            for (int l = 0; l < 32; l++) {
                int q = clampi(nearest_int((x[32 * j + l] + dm) * id), 0, 15);
                qs[32 * (j / 2) + l] |= (uint8_t)(q << (4 * (j % 2)));
            }
        }
    }
}

/* Q6_K: per sub-block of 16, the signed value of largest magnitude maps to
 * -32; the 16 int8 scales are quantized against their largest magnitude. */
static void quantize_q6_k(const float *x, uint8_t *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 256, b += 210) {
        float scale[16], amax_scale = 0.0f;
        for (int s = 0; s < 16; s++) {
            float amax = 0.0f, max = 0.0f;
            for (int l = 0; l < 16; l++) {
                if (fabsf(x[16 * s + l]) > amax) {
                    amax = fabsf(x[16 * s + l]);
                    max  = x[16 * s + l];
                }
            }
            scale[s] = max / -32;
            amax_scale = fmaxf(amax_scale, fabsf(scale[s]));
        }
        int8_t     *sc = (int8_t *)(b + 192);
        const float d  = f16_at_least(b + 208, amax_scale / 127);
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int s = 0; s < 16; s++)
            /* magnitude rounded up: no element is clipped beyond one step */
            sc[s] = (int8_t)(scale[s] < 0 ? -clampi((int)ceilf(-scale[s] * id), 0, 127)
                                          : clampi((int)ceilf(scale[s] * id), 0, 127));
        uint8_t q[256];
        for (int s = 0; s < 16; s++) {
            const float dq = d * (float)sc[s];
            const float id = dq != 0.0f ? 1.0f / dq : 0.0f;
            for (int l = 0; l < 16; l++)
                q[16 * s + l] = (uint8_t)(clampi(nearest_int(x[16 * s + l] * id), -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++) {
            uint8_t       *ql = b + 64 * h, *qh = b + 128 + 32 * h;
            const uint8_t *qq = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l]      = (uint8_t)((qq[l] & 0xf) | ((qq[l + 64] & 0xf) << 4));
                ql[l + 32] = (uint8_t)((qq[l + 32] & 0xf) | ((qq[l + 96] & 0xf) << 4));
                qh[l]      = (uint8_t)((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) |
                                       ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
            }
        }
    }
}

/* ---- scalar dot products -------------------------------------------------------- */

/* float weights: 8 partial sums break the add latency chain; W(i) loads
 * weight i of the row */
#define SCALAR_FLOAT_DOT(NAME, W)                                            \
    static float NAME(const void *w, const void *a, int64_t n)               \
    {                                                                        \
        const uint8_t *wb = w, *ab = a;                                      \
        float p[8] = {0};                                                    \
        int64_t i = 0;                                                       \
        for (; i + 8 <= n; i += 8)                                           \
            for (int k = 0; k < 8; k++)                                      \
                p[k] += W(i + k) * ld_f32(ab + 4 * (i + k));                 \
        float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7])); \
        for (; i < n; i++)                                                   \
            s += W(i) * ld_f32(ab + 4 * i);                                  \
        return s;                                                            \
    }

static inline float ld_bf16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return bf16_to_f32(h);
}

#define W_F32(i)  ld_f32(wb + 4 * (i))
#define W_F16(i)  ld_f16(wb + 2 * (i))
#define W_BF16(i) ld_bf16(wb + 2 * (i))
SCALAR_FLOAT_DOT(dot_f32_scalar, W_F32)
SCALAR_FLOAT_DOT(dot_f16_scalar, W_F16)
SCALAR_FLOAT_DOT(dot_bf16_scalar, W_BF16)
#undef W_F32
#undef W_F16
#undef W_BF16

/* sum of 32 int8 products: a loop shape compilers vectorize */
static inline int dot_i8_32(const int8_t *a, const int8_t *b)
{
    int s = 0;
    for (int j = 0; j < 32; j++)
        s += a[j] * b[j];
    return s;
}

static float dot_q4_0_scalar(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, x += 18, y += 34) {
        int8_t q[32];
        for (int j = 0; j < 16; j++) {
            q[j]      = (int8_t)((x[2 + j] & 0xf) - 8);
            q[j + 16] = (int8_t)((x[2 + j] >> 4) - 8);
        }
        s += (float)dot_i8_32(q, (const int8_t *)(y + 2)) * (ld_f16(x) * ld_f16(y));
    }
    return s;
}

static float dot_q4_1_scalar(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, x += 20, y += 36) {
        int8_t q[32];
        for (int j = 0; j < 16; j++) {
            q[j]      = (int8_t)(x[4 + j] & 0xf);
            q[j + 16] = (int8_t)(x[4 + j] >> 4);
        }
        s += (float)dot_i8_32(q, (const int8_t *)(y + 4)) * (ld_f16(x) * ld_f16(y)) +
             ld_f16(x + 2) * ld_f16(y + 2);
    }
    return s;
}

static float dot_q8_0_scalar(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, x += 34, y += 34) {
        s += (float)dot_i8_32((const int8_t *)(x + 2), (const int8_t *)(y + 2)) *
             (ld_f16(x) * ld_f16(y));
    }
    return s;
}

static inline int16_t ld_i16(const uint8_t *p)
{
    int16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static float dot_q4_k_scalar(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 256; i++, x += 144, y += 292) {
        const int8_t  *q8 = (const int8_t *)(y + 4);
        const uint8_t *qs = x + 16;
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            q4k_scale_min(x + 4, j, &sc, &m);
            summ += m * (ld_i16(y + 260 + 4 * j) + ld_i16(y + 262 + 4 * j));
            const uint8_t *q4 = qs + 32 * (j / 2);
            const int      sh = 4 * (j % 2);
            int sub = 0;
            for (int l = 0; l < 32; l++)
                sub += ((q4[l] >> sh) & 0xf) * q8[32 * j + l];
            sumi += sc * sub;
        }
        const float da = ld_f32(y);
        s += da * (ld_f16(x) * (float)sumi - ld_f16(x + 2) * (float)summ);
    }
    return s;
}

static float dot_q6_k_scalar(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 256; i++, x += 210, y += 292) {
        const int8_t *q8 = (const int8_t *)(y + 4);
        const int8_t *sc = (const int8_t *)(x + 192);
        int8_t q[256];
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x + 64 * h, *qh = x + 128 + 32 * h;
            int8_t        *qq = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                qq[l]      = (int8_t)(((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32);
                qq[l + 32] = (int8_t)(((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32);
                qq[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                qq[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sumi = 0;
        for (int sb = 0; sb < 16; sb++) {
            int sub = 0;
            for (int l = 0; l < 16; l++)
                sub += q[16 * sb + l] * q8[16 * sb + l];
            sumi += sc[sb] * sub;
        }
        s += ld_f32(y) * ld_f16(x + 208) * (float)sumi;
    }
    return s;
}

/* Tiles of the three block dots above: each weight block is unpacked once
 * for a group of up to MDOT_TOK activation rows; every element is the same
 * expression, evaluated in the same order, as the single-row kernel. */
#define MDOT_TOK 4

static void mdot_q4_0_scalar(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                             int64_t n, float *out, int64_t os)
{
    for (int64_t t0 = 0; t0 < nt; t0 += MDOT_TOK) {
        const int g = nt - t0 < MDOT_TOK ? (int)(nt - t0) : MDOT_TOK;
        for (int64_t r = 0; r < nr; r++) {
            const uint8_t *x = (const uint8_t *)w + (size_t)r * ws;
            float s[MDOT_TOK] = {0};
            for (int64_t i = 0; i < n / 32; i++, x += 18) {
                int8_t q[32];
                for (int j = 0; j < 16; j++) {
                    q[j]      = (int8_t)((x[2 + j] & 0xf) - 8);
                    q[j + 16] = (int8_t)((x[2 + j] >> 4) - 8);
                }
                const float dx = ld_f16(x);
                for (int k = 0; k < g; k++) {
                    const uint8_t *y = (const uint8_t *)a + (size_t)(t0 + k) * as + 34 * i;
                    s[k] += (float)dot_i8_32(q, (const int8_t *)(y + 2)) * (dx * ld_f16(y));
                }
            }
            for (int k = 0; k < g; k++)
                out[(t0 + k) * os + r] = s[k];
        }
    }
}

static void mdot_q4_1_scalar(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                             int64_t n, float *out, int64_t os)
{
    for (int64_t t0 = 0; t0 < nt; t0 += MDOT_TOK) {
        const int g = nt - t0 < MDOT_TOK ? (int)(nt - t0) : MDOT_TOK;
        for (int64_t r = 0; r < nr; r++) {
            const uint8_t *x = (const uint8_t *)w + (size_t)r * ws;
            float s[MDOT_TOK] = {0};
            for (int64_t i = 0; i < n / 32; i++, x += 20) {
                int8_t q[32];
                for (int j = 0; j < 16; j++) {
                    q[j]      = (int8_t)(x[4 + j] & 0xf);
                    q[j + 16] = (int8_t)(x[4 + j] >> 4);
                }
                const float dx = ld_f16(x), mx = ld_f16(x + 2);
                for (int k = 0; k < g; k++) {
                    const uint8_t *y = (const uint8_t *)a + (size_t)(t0 + k) * as + 36 * i;
                    s[k] += (float)dot_i8_32(q, (const int8_t *)(y + 4)) * (dx * ld_f16(y)) +
                            mx * ld_f16(y + 2);
                }
            }
            for (int k = 0; k < g; k++)
                out[(t0 + k) * os + r] = s[k];
        }
    }
}

static void mdot_q8_0_scalar(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                             int64_t n, float *out, int64_t os)
{
    for (int64_t t0 = 0; t0 < nt; t0 += MDOT_TOK) {
        const int g = nt - t0 < MDOT_TOK ? (int)(nt - t0) : MDOT_TOK;
        for (int64_t r = 0; r < nr; r++) {
            const uint8_t *x = (const uint8_t *)w + (size_t)r * ws;
            float s[MDOT_TOK] = {0};
            for (int64_t i = 0; i < n / 32; i++, x += 34) {
                const float dx = ld_f16(x);
                for (int k = 0; k < g; k++) {
                    const uint8_t *y = (const uint8_t *)a + (size_t)(t0 + k) * as + 34 * i;
                    s[k] += (float)dot_i8_32((const int8_t *)(x + 2), (const int8_t *)(y + 2)) *
                            (dx * ld_f16(y));
                }
            }
            for (int k = 0; k < g; k++)
                out[(t0 + k) * os + r] = s[k];
        }
    }
}

const struct quant_kernels quant_kernels_scalar = {
    .name          = "scalar",
    .dot_f32       = dot_f32_scalar,
    .dot_f16       = dot_f16_scalar,
    .dot_bf16      = dot_bf16_scalar,
    .dot_q4_0      = dot_q4_0_scalar,
    .dot_q4_1      = dot_q4_1_scalar,
    .dot_q8_0      = dot_q8_0_scalar,
    .dot_q4_k      = dot_q4_k_scalar,
    .dot_q6_k      = dot_q6_k_scalar,
    .mdot_q4_0     = mdot_q4_0_scalar,
    .mdot_q4_1     = mdot_q4_1_scalar,
    .mdot_q8_0     = mdot_q8_0_scalar,
    .quantize_q8_0 = quantize_q8_0_scalar,
    .quantize_q8_1 = quantize_q8_1_scalar,
    .quantize_q8_k = quant_quantize_q8_k_scalar,
};

/* ---- x8 copies (quant.h) ------------------------------------------------------ */

static bool x8_shape_ok(enum dtype t, int64_t nrows, int64_t n)
{
    return (t == DT_Q4_1 || t == DT_Q8_0) && nrows >= 8 && nrows % 8 == 0 && n >= 32 && n % 32 == 0 &&
           n / 32 <= QUANT_X8_MAXB;
}

size_t quant_x8_bytes(enum dtype t, int64_t nrows, int64_t n)
{
    if (!x8_shape_ok(t, nrows, n))
        return 0;
    if (t == DT_Q4_1)
        return (size_t)nrows / 8 * (size_t)(n / 32) * QUANT_X8_BLOCK;
    return (size_t)nrows / 8 * quant_q8_0x8_group_bytes(n / 32);
}

int quant_x8_repack(enum dtype t, const void *w, size_t w_stride, int64_t nrows, int64_t n, void *dst)
{
    if (!x8_shape_ok(t, nrows, n))
        return ps_error_set(PS_EINVAL, "quant: cannot repack %lld x %lld %s for 8-row tiles", (long long)nrows,
                            (long long)n, dtype_info_get(t) ? dtype_info_get(t)->name : "?");
    const int64_t nb = n / 32;
    uint8_t *o = dst;
    if (t == DT_Q4_1) {
        for (int64_t g = 0; g < nrows / 8; g++)
            for (int64_t i = 0; i < nb; i++, o += QUANT_X8_BLOCK)
                for (int r = 0; r < 8; r++) {
                    const uint8_t *x = (const uint8_t *)w + (size_t)(8 * g + r) * w_stride + 20 * i;
                    memcpy(o + 2 * r, x, 2);           /* d */
                    memcpy(o + 16 + 2 * r, x + 2, 2);  /* m */
                    for (int k = 0; k < 4; k++)        /* bytes 4k.. of row r: vector k, dword r */
                        memcpy(o + 32 + 32 * k + 4 * r, x + 4 + 4 * k, 4);
                }
        return PS_OK;
    }
    const size_t gb = quant_q8_0x8_group_bytes(nb), dsec = gb - (size_t)nb * 256;
    for (int64_t g = 0; g < nrows / 8; g++, o += gb) {
        memset(o, 0, dsec);
        for (int r = 0; r < 8; r++) {
            const uint8_t *x = (const uint8_t *)w + (size_t)(8 * g + r) * w_stride;
            for (int64_t i = 0; i < nb; i++, x += 34) {
                memcpy(o + 16 * i + 2 * r, x, 2);   /* d */
                uint8_t *q = o + dsec + 256 * (size_t)i;
                for (int k = 0; k < 8; k++)         /* bytes 4k.. of row r: vector k, dword r */
                    memcpy(q + 32 * k + 4 * r, x + 2 + 4 * k, 4);
            }
        }
    }
    return PS_OK;
}

float quant_dot_x8_ref(enum dtype t, const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    float acc = 0.0f;
    if (t == DT_Q8_0) {
        for (int64_t i = 0; i < n / 32; i++, x += 34, y += 34) {
            int32_t P = 0;
            for (int j = 0; j < 32; j++)
                P += (int8_t)x[2 + j] * (int8_t)y[2 + j];
            acc = fmaf(ld_f16(x) * ld_f16(y), (float)P, acc);
        }
        return acc;
    }
    for (int64_t i = 0; i < n / 32; i++, x += 20, y += 36) {
        int32_t P = 0;
        for (int j = 0; j < 16; j++)
            P += (x[4 + j] & 0xf) * (int8_t)y[4 + j] + (x[4 + j] >> 4) * (int8_t)y[4 + 16 + j];
        const float sd = ld_f16(x) * ld_f16(y);
        acc = fmaf(sd, (float)P, acc);
        acc = fmaf(ld_f16(x + 2), ld_f16(y + 2), acc);
    }
    return acc;
}

/* ---- dispatch ----------------------------------------------------------------- */

static pthread_once_t                     quant_once = PTHREAD_ONCE_INIT;
static const struct quant_kernels *_Atomic quant_active;

static void quant_init_once(void)
{
    const struct quant_kernels *k = &quant_kernels_scalar;
    const char *env = getenv("PARASERVE_SIMD");
#ifdef PS_QUANT_HAVE_AVX2
    /* PARASERVE_SIMD=scalar: the portable C kernels; =avx2: AVX2 without
     * the VNNI tiles; =avxvnni / =avx512vnni / =avx512: that encoding of
     * the tiles if the CPU has it, else plain AVX2 (A/B runs, tests); unset
     * or other: the best this CPU has - the zmm tiles, then AVX-VNNI, then
     * AVX512-VNNI on ymm (the same instruction as AVX-VNNI) */
    if (!(env && strcmp(env, "scalar") == 0) && quant_avx2_supported()) {
        k = &quant_kernels_avx2;
        int levels = quant_vnni_levels();
        if (env && strcmp(env, "avx2") == 0)
            levels = 0;
        else if (env && strcmp(env, "avxvnni") == 0)
            levels &= 1;
        else if (env && strcmp(env, "avx512vnni") == 0)
            levels &= 2;
        else if (env && strcmp(env, "avx512") == 0)
            levels &= 4;
        if (levels) {
            quant_vnni_kernels_init();
            k = levels & 4 ? &quant_kernels_avx512_zmm
                : levels & 1 ? &quant_kernels_avx_vnni : &quant_kernels_avx512_vnni;
        }
    }
#else
    (void)env;
#endif
    atomic_store_explicit(&quant_active, k, memory_order_release);
}

void quant_init(void)
{
    pthread_once(&quant_once, quant_init_once);
}

static inline const struct quant_kernels *kernels(void)
{
    const struct quant_kernels *k = atomic_load_explicit(&quant_active, memory_order_acquire);
    if (__builtin_expect(k == NULL, 0)) {
        quant_init();
        k = atomic_load_explicit(&quant_active, memory_order_acquire);
    }
    return k;
}

const char *quant_simd_name(void)
{
    return kernels()->name;
}

const char *quant_x8_isa_name(void)
{
    const char *isa = kernels()->x8_isa;
    return isa ? isa : "none";
}

static quant_mdot_x8_fn x8_kernel(enum dtype t)
{
    return t == DT_Q4_1 ? kernels()->mdot_q4_1x8 : t == DT_Q8_0 ? kernels()->mdot_q8_0x8 : NULL;
}

bool quant_x8_available(enum dtype t)
{
    return x8_kernel(t) != NULL;
}

void quant_mat_dot_x8(enum dtype t, const void *x8, int64_t row0, int64_t n_rows, int64_t n, const void *act,
                      size_t act_stride, int64_t n_act, float *out, int64_t out_stride)
{
    const int64_t nb = n / 32;
    const size_t gb = t == DT_Q4_1 ? (size_t)nb * QUANT_X8_BLOCK : quant_q8_0x8_group_bytes(nb);
    x8_kernel(t)((const uint8_t *)x8 + (size_t)(row0 / 8) * gb, nb, n_rows / 8, act, act_stride, n_act, out,
                 out_stride);
}

int quant_row_quantize(enum dtype type, const float *src, void *dst, int64_t n)
{
    const struct dtype_info *ti = dtype_info_get((uint32_t)type);
    if (!ti)
        return ps_error_set(PS_EUNSUPPORTED, "quant: no quantizer for type %d", (int)type);
    if (n < 0 || n % ti->block_elems != 0)
        return ps_error_set(PS_EINVAL, "quant: %s row of %lld elements is not whole blocks",
                            ti->name, (long long)n);
    const struct quant_kernels *k  = kernels();
    uint8_t                    *b  = dst;
    int64_t                     nb = n / ti->block_elems;
    switch (type) {
    case DT_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DT_F16:
        for (int64_t i = 0; i < n; i++)
            st_f16(b + 2 * i, src[i]);
        break;
    case DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(b + 2 * i, &h, sizeof h);
        }
        break;
    case DT_Q4_0: quantize_q4_0(src, b, nb); break;
    case DT_Q4_1: quantize_q4_1(src, b, nb); break;
    case DT_Q8_0: k->quantize_q8_0(src, dst, n); break;
    case DT_Q8_1: k->quantize_q8_1(src, dst, n); break;
    case DT_Q8_K: k->quantize_q8_k(src, dst, n); break;
    case DT_Q4_K: quantize_q4_k(src, b, nb); break;
    case DT_Q6_K: quantize_q6_k(src, b, nb); break;
    }
    return PS_OK;
}

float quant_vec_dot(enum dtype w_type, const void *w_row, const void *act, int64_t n)
{
    const struct quant_kernels *k = kernels();
    switch (w_type) {
    case DT_Q4_1: return k->dot_q4_1(w_row, act, n);
    case DT_Q8_0: return k->dot_q8_0(w_row, act, n);
    case DT_Q4_0: return k->dot_q4_0(w_row, act, n);
    case DT_Q4_K: return k->dot_q4_k(w_row, act, n);
    case DT_Q6_K: return k->dot_q6_k(w_row, act, n);
    case DT_F16:  return k->dot_f16(w_row, act, n);
    case DT_F32:  return k->dot_f32(w_row, act, n);
    case DT_BF16: return k->dot_bf16(w_row, act, n);
    case DT_Q8_1:
    case DT_Q8_K:
        break;
    }
    return NAN;
}

void quant_mat_dot(enum dtype w_type, const void *w, size_t w_stride, int64_t n_rows, const void *act,
                   size_t act_stride, int64_t n_act, int64_t n, float *out, int64_t out_stride)
{
    const struct quant_kernels *k = kernels();
    quant_mdot_fn f = NULL;
    switch (w_type) {
    case DT_Q4_0: f = k->mdot_q4_0; break;
    case DT_Q4_1: f = k->mdot_q4_1; break;
    case DT_Q8_0: f = k->mdot_q8_0; break;
    default: break;
    }
    if (f) {
        f(w, w_stride, n_rows, act, act_stride, n_act, n, out, out_stride);
        return;
    }
    for (int64_t t = 0; t < n_act; t++)
        for (int64_t r = 0; r < n_rows; r++)
            out[t * out_stride + r] = quant_vec_dot(w_type, (const uint8_t *)w + (size_t)r * w_stride,
                                                    (const uint8_t *)act + (size_t)t * act_stride, n);
}
