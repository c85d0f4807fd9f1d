/* quant_avx2.c - AVX2/FMA/F16C kernels, selected at run time by quant_init().
 *
 * Compiled without -mavx2: every function carries the target attribute, so
 * the binary still runs (on the scalar path) on CPUs without AVX2.
 *
 * Integer block dots use the unsigned x signed byte multiply
 * (_mm256_maddubs_epi16) then pairwise widening (_mm256_madd_epi16); signed x
 * signed products go through the sign trick |x| * (y * sign(x)).  The
 * maddubs i16 pairs cannot saturate for our operand ranges: 15*127*2 (Q4),
 * 128*127*2 (Q8: a Q8_0 weight from a file may be -128, |w| = 128 as u8;
 * the activation never is, see below), 63*127*2 (Q6_K).
 *
 * The Q8_0/Q8_1 activation quantizers reproduce quant.c's scalar rounding
 * bit for bit (round half away from zero of x * (1/d)), non-finite input
 * included; their q are in [-127, 127], never -128, which the sign trick
 * needs on the activation side: sign(-128, w < 0) = -128 (no +128 in i8).
 */
#include "model/quant_impl.h"

#include "model/quant.h"

#ifdef PS_QUANT_HAVE_AVX2

#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

bool quant_avx2_supported(void)
{
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return false;
    /* F16C: CPUID.1:ECX bit 29 (not every compiler's builtin knows "f16c") */
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
}

static inline AVX2 float ld_h(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h);
}

static inline AVX2 float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline AVX2 int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..15) in
 * the low lane, high nibbles (16..31) in the high lane */
static inline AVX2 __m256i unpack_nibbles16(const uint8_t *p)
{
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(w, _mm256_set1_epi8(0x0f));
}

/* u8 x i8 -> 8 x i32 sums of 4 adjacent products */
static inline AVX2 __m256i dot_u8i8(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* i8 x i8 -> 8 x i32 */
static inline AVX2 __m256i dot_i8i8(__m256i x, __m256i y)
{
    return dot_u8i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

static inline AVX2 __m256i ld256(const uint8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* the two f16 at p -> lanes 0 and 1 */
static inline AVX2 __m128 ld_h2(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(v));
}

/* ---- Q4_1 / Q4_0 / Q8_0 block dots: one shared arithmetic ---------------------
 *
 * The single-row dots below define the numbers; the tile kernels further
 * down reproduce them bit for bit.  Per 32-element block i of a row pair:
 *   p_i  = 8 x i32 integer partial sums (maddubs + madd, exact)
 *   sd_i = d_w[i] * d_a[i]                    (one f32 product)
 *   acc  = fma(sd_i, (f32) p_i, acc)          (8 lanes, blocks in order)
 *   Q4_1 only: accm = fma(m_w[i], s_a[i], accm)  (scalar, blocks in order)
 * result = tree(acc) [+ accm], tree(v) = ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)).
 * One accumulator (not several interleaved ones) so that a tile can keep one
 * register per activation row, and the tree order so that a tile reduces 8
 * rows' accumulators at once with a transposing hadd network. */

/* ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)) */
static inline AVX2 float hsum_tree(__m256 v)
{
    __m256 h = _mm256_hadd_ps(v, v);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* lane j = hsum_tree(v[j]), bitwise, for 8 vectors at once */
static inline AVX2 __m256 hsum_tree8(const __m256 *v)
{
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    /* u0: lanes 0-3 the low-half trees of v0..v3, lanes 4-7 their high-half trees */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static AVX2 float dot_q4_1(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    __m256 acc  = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / 32; i++, x += 20, y += 36) {
        const __m128 wdm = ld_h2(x), ads = ld_h2(y);   /* (d_w, m_w), (d_a, s_a) */
        const __m128 sd  = _mm_mul_ss(wdm, ads);
        accm = _mm_fmadd_ss(_mm_movehdup_ps(wdm), _mm_movehdup_ps(ads), accm);
        const __m256i p = dot_u8i8(unpack_nibbles16(x + 4), ld256(y + 4));
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sd), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_tree(acc) + _mm_cvtss_f32(accm);
}

/* Q4 selects Q4_0 weights (18-byte blocks), else Q8_0 (34-byte blocks) */
static inline __attribute__((target("avx2,fma,f16c"), always_inline)) float dot_x8_0(const void *w,
                                                                                    const void *a,
                                                                                    int64_t n, const int Q4)
{
    const uint8_t *x = w, *y = a;
    const int      bw = Q4 ? 18 : 34;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 32; i++, x += bw, y += 34) {
        const __m256i q = Q4 ? _mm256_sub_epi8(unpack_nibbles16(x + 2), _mm256_set1_epi8(8)) : ld256(x + 2);
        const __m256i p = dot_i8i8(q, ld256(y + 2));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_h(x) * ld_h(y)), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_tree(acc);
}

static AVX2 float dot_q4_0(const void *w, const void *a, int64_t n)
{
    return dot_x8_0(w, a, n, 1);
}

static AVX2 float dot_q8_0(const void *w, const void *a, int64_t n)
{
    return dot_x8_0(w, a, n, 0);
}

/* ---- tiles: several activation rows per weight block ------------------------
 *
 * mdot_*: out[t * os + r] = dot_*(w + r * ws, a + t * as, n), bitwise: per
 * activation row the same integer sums, the same scale products (lane-wise
 * products of the same two f32 values), the same FMAs into one accumulator
 * in block order and the same reduction tree.  Activation rows go in groups
 * of up to 8 (one accumulator register each); what a group shares is the
 * work that does not depend on the activation row: loading and unpacking
 * the weight block, converting its f16 scales, |w| for the sign trick, and
 * for Q4_1 the offset term, which runs as one 8-lane FMA (a lane per
 * activation row) instead of 8 scalar ones.  The activation scales of a
 * group are converted to f32 once per call.  With a single activation row
 * (decode) there is nothing to share across rows; the weight rows then go
 * in pairs (*_row2): one f16 conversion and one multiply give the scale
 * products of both rows. */

#define MDOT_TOK  8    /* activation rows per group                     */
/* Prefetch distance (bytes ahead in each weight stream) of the one-token
 * row-pair kernels and the x8 tiles: two interleaved streams defeat the
 * hardware prefetcher (measured: the Q8_0 pair kernel at half the
 * bandwidth of the single-row dot from DRAM without it, 10-20% above it
 * with it).  4096 rather than 1024 (2026-11-28, AVX-512 EPYC VM, paired
 * runs): batch-1 step 3.42-3.62 -> 3.02-3.35 ms in 4 of 4 profiles, batch
 * 32 1,097-1,126 -> 1,140-1,171 tok/s in 3 of 3; 8192 and 16384 no better. */
#ifndef MDOT_PF
#define MDOT_PF 4096
#endif
#define MDOT_MAXB 512  /* blocks per row held in the scale tables (n <= 16384); longer rows loop over dot_* */

#define AVX2_INLINE static inline __attribute__((target("avx2,fma,f16c"), always_inline))

/* acc + the 8 dword sums of four u8 x s8 products (u8 from u, s8 from s),
 * exact: VPDPBUSD, VEX-encoded (AVX-VNNI, VNNI == 1) or EVEX-encoded on
 * ymm (AVX512-VNNI + VL, VNNI == 2).  Inline assembly, so the kernels
 * around it keep the AVX2 target; only run where quant_vnni_levels() says
 * the CPU (and OS) has that encoding. */
AVX2_INLINE __m256i dpbusd(__m256i acc, __m256i u, __m256i s, const int VNNI)
{
    if (VNNI == 1)
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    else
        __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
}

static inline uint32_t ld_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t ld_u16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* 16 bytes of packed nibbles -> 32 bytes as unpack_nibbles16, from one
 * broadcast load, a per-lane shift (0 / 4 bits) and a mask */
AVX2_INLINE __m256i unpack_nibbles16_b(const uint8_t *p, __m256i shift, __m256i m4)
{
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(v, shift), m4);
}

/* f16 values of 8 activation rows (the 16 bits at y[j] + off) -> 8 lanes */
AVX2_INLINE __m256 ld_h8(const uint8_t *const *y, size_t off)
{
    return _mm256_cvtph_ps(_mm_setr_epi16((short)ld_u16(y[0] + off), (short)ld_u16(y[1] + off),
                                          (short)ld_u16(y[2] + off), (short)ld_u16(y[3] + off),
                                          (short)ld_u16(y[4] + off), (short)ld_u16(y[5] + off),
                                          (short)ld_u16(y[6] + off), (short)ld_u16(y[7] + off)));
}

/* Store lanes j < NT of v to out[j * os] */
AVX2_INLINE void st_lanes(float *out, int64_t os, __m256 v, const int NT)
{
    float f[8];
    _mm256_storeu_ps(f, v);
    for (int j = 0; j < NT; j++)
        out[j * os] = f[j];
}

/* One group of NT (<= 8) Q8_1 activation rows y[0..NT-1] against nr Q4_1
 * weight rows.  da[i], sa[i]: d and s of block i of the 8 rows (lanes j >=
 * NT unused). */
AVX2_INLINE void mdot_q4_1_group(const uint8_t *w, size_t ws, int64_t nr, const uint8_t *const *y,
                                 const __m256 *da, const __m256 *sa, int64_t nb, float *out, int64_t os,
                                 const int NT)
{
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4), m4 = _mm256_set1_epi8(0x0f);
    _Alignas(32) float sv[MDOT_MAXB * 8];
    float mv[MDOT_MAXB];
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *x = w + (size_t)r * ws;
        __m256 acc[MDOT_TOK];
        for (int j = 0; j < MDOT_TOK; j++)
            acc[j] = _mm256_setzero_ps();
        __m256 accm = _mm256_setzero_ps();
        /* the row's scale products first (sv[i][j] = d_w[i] * d_a_j[i]) and
         * its m_w[i] as f32: the block loop then broadcasts them from memory
         * written long before.  The offset term's FMA chain runs in the
         * block loop, where the token work hides its latency (alone here,
         * one dependent FMA per block, it cost ~15% of the kernel). */
        for (int64_t i = 0; i < nb; i++) {
            const __m256 wdm = _mm256_cvtph_ps(_mm_set1_epi32((int)ld_u32(x + 20 * i)));  /* (d_w, m_w) x 4 */
            _mm256_store_ps(sv + 8 * i, _mm256_mul_ps(_mm256_shuffle_ps(wdm, wdm, 0x00), da[i]));
            mv[i] = _mm_cvtss_f32(_mm_movehdup_ps(_mm256_castps256_ps128(wdm)));
        }
        for (int64_t i = 0; i < nb; i++, x += 20) {
            accm = _mm256_fmadd_ps(_mm256_broadcast_ss(mv + i), sa[i], accm);
            const __m256i q = unpack_nibbles16_b(x + 4, shift, m4);
            for (int j = 0; j < NT; j++) {
                const __m256i p = dot_u8i8(q, ld256(y[j] + 36 * i + 4));
                acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(sv + 8 * i + j), _mm256_cvtepi32_ps(p), acc[j]);
            }
        }
        st_lanes(out + r, os, _mm256_add_ps(hsum_tree8(acc), accm), NT);
    }
}

/* One activation row y against weight rows x0 and x1: the scale products
 * of both rows from one f16 conversion and one multiply, (d_w0*d_a, m_w0*s_a,
 * d_w1*d_a, m_w1*s_a) (lanes 1 and 3 unused), the offset terms of both
 * rows in one FMA (lanes 1 and 3); per row the arithmetic of dot_q4_1.
 * yv[i] = (d_a, s_a, d_a, s_a) of y's block i. */
AVX2_INLINE void mdot_q4_1_row2(const uint8_t *x0, const uint8_t *x1, const uint8_t *y, const __m128 *yv,
                                int64_t nb, float *o0, float *o1)
{
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4), m4 = _mm256_set1_epi8(0x0f);
    const __m256i two = _mm256_set1_epi32(2);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++, x0 += 20, x1 += 20, y += 36) {
        if (!(i & 1)) {
            _mm_prefetch((const char *)(x0 + MDOT_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(x1 + MDOT_PF), _MM_HINT_T0);
        }
        const __m128 wh = _mm_cvtph_ps(_mm_setr_epi32((int)ld_u32(x0), (int)ld_u32(x1), 0, 0));
        const __m128 sd = _mm_mul_ps(wh, yv[i]);
        accm = _mm_fmadd_ps(wh, yv[i], accm);
        const __m256i yq = ld256(y + 4);
        const __m256 c0 = _mm256_cvtepi32_ps(dot_u8i8(unpack_nibbles16_b(x0 + 4, shift, m4), yq));
        const __m256 c1 = _mm256_cvtepi32_ps(dot_u8i8(unpack_nibbles16_b(x1 + 4, shift, m4), yq));
        a0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(sd), c0, a0);
        a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(sd), two), c1, a1);
    }
    float m[4];
    _mm_storeu_ps(m, accm);
    *o0 = hsum_tree(a0) + m[1];
    *o1 = hsum_tree(a1) + m[3];
}

static AVX2 void mdot_q4_1(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                           int64_t n, float *out, int64_t os)
{
    const int64_t nb = n / 32;
    if (nb > MDOT_MAXB) {
        for (int64_t t = 0; t < nt; t++)
            for (int64_t r = 0; r < nr; r++)
                out[t * os + r] = dot_q4_1((const uint8_t *)w + (size_t)r * ws, (const uint8_t *)a + (size_t)t * as, n);
        return;
    }
    if (nt == 1) {
        /* one activation row: weight rows in pairs; its (d, s, d, s) as f32 */
        __m128 yv[MDOT_MAXB];
        for (int64_t i = 0; i < nb; i++)
            yv[i] = _mm_cvtph_ps(_mm_set1_epi32((int)ld_u32((const uint8_t *)a + 36 * i)));
        int64_t r = 0;
        for (; r + 1 < nr; r += 2)
            mdot_q4_1_row2((const uint8_t *)w + (size_t)r * ws, (const uint8_t *)w + (size_t)(r + 1) * ws, a,
                           yv, nb, out + r, out + r + 1);
        if (r < nr)
            out[r] = dot_q4_1((const uint8_t *)w + (size_t)r * ws, a, n);
        return;
    }
    __m256 da[MDOT_MAXB], sa[MDOT_MAXB];
    for (int64_t t0 = 0; t0 < nt; t0 += MDOT_TOK) {
        const int g = nt - t0 < MDOT_TOK ? (int)(nt - t0) : MDOT_TOK;
        const uint8_t *y[MDOT_TOK];
        for (int j = 0; j < MDOT_TOK; j++)
            y[j] = (const uint8_t *)a + (size_t)(t0 + (j < g ? j : 0)) * as;
        for (int64_t i = 0; i < nb; i++) {
            da[i] = ld_h8(y, (size_t)36 * i);
            sa[i] = ld_h8(y, (size_t)36 * i + 2);
        }
        float *o = out + t0 * os;
        switch (g) {
        case 1: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 1); break;
        case 2: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 2); break;
        case 3: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 3); break;
        case 4: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 4); break;
        case 5: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 5); break;
        case 6: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 6); break;
        case 7: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 7); break;
        default: mdot_q4_1_group(w, ws, nr, y, da, sa, nb, o, os, 8); break;
        }
    }
}

/* Q4_0 and Q8_0 weights against NT (<= 8) Q8_0 activation rows; da[i] = d
 * of block i of the 8 rows.  Q4 selects the nibble weights. */
AVX2_INLINE void mdot_x8_0_group(const uint8_t *w, size_t ws, int64_t nr, const uint8_t *const *y,
                                 const __m256 *da, int64_t nb, float *out, int64_t os, const int NT,
                                 const int Q4)
{
    const int     bw    = Q4 ? 18 : 34;   /* weight block bytes */
    const __m256i eight = _mm256_set1_epi8(8);
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4), m4 = _mm256_set1_epi8(0x0f);
    _Alignas(32) float sv[MDOT_MAXB * 8];
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *x = w + (size_t)r * ws;
        __m256 acc[MDOT_TOK];
        for (int j = 0; j < MDOT_TOK; j++)
            acc[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; i++)   /* scale products first, as in mdot_q4_1_group */
            _mm256_store_ps(sv + 8 * i, _mm256_mul_ps(_mm256_set1_ps(ld_h(x + bw * i)), da[i]));
        for (int64_t i = 0; i < nb; i++, x += bw) {
            const __m256i q = Q4 ? _mm256_sub_epi8(unpack_nibbles16_b(x + 2, shift, m4), eight) : ld256(x + 2);
            const __m256i u = _mm256_sign_epi8(q, q);
            for (int j = 0; j < NT; j++) {
                const __m256i p = dot_u8i8(u, _mm256_sign_epi8(ld256(y[j] + 34 * i + 2), q));
                acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(sv + 8 * i + j), _mm256_cvtepi32_ps(p), acc[j]);
            }
        }
        st_lanes(out + r, os, hsum_tree8(acc), NT);
    }
}

/* One Q8_0 activation row y against weight rows x0 and x1: the scale
 * products of both rows (d_x0[i]*d_y[i], d_x1[i]*d_y[i]) from one
 * conversion and one multiply; yd[i] = d of y's block i as f32.  Per row
 * the arithmetic of dot_q4_0 / dot_q8_0. */
AVX2_INLINE void mdot_x8_0_row2(const uint8_t *x0, const uint8_t *x1, const uint8_t *y, const float *yd,
                                int64_t nb, float *o0, float *o1, const int Q4)
{
    const int     bw    = Q4 ? 18 : 34;
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4), m4 = _mm256_set1_epi8(0x0f);
    const __m256i eight = _mm256_set1_epi8(8);
    const __m256i one = _mm256_set1_epi32(1);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, x0 += bw, x1 += bw, y += 34) {
        if (!Q4 || !(i & 1)) {
            _mm_prefetch((const char *)(x0 + MDOT_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(x1 + MDOT_PF), _MM_HINT_T0);
        }
        const __m128 wh = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(ld_u16(x0) | ld_u16(x1) << 16)));
        const __m256 sd = _mm256_castps128_ps256(_mm_mul_ps(wh, _mm_set1_ps(yd[i])));
        const __m256i q0 = Q4 ? _mm256_sub_epi8(unpack_nibbles16_b(x0 + 2, shift, m4), eight) : ld256(x0 + 2);
        const __m256i q1 = Q4 ? _mm256_sub_epi8(unpack_nibbles16_b(x1 + 2, shift, m4), eight) : ld256(x1 + 2);
        const __m256i yq = ld256(y + 2);
        a0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm256_castps256_ps128(sd)), _mm256_cvtepi32_ps(dot_i8i8(q0, yq)), a0);
        a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sd, one), _mm256_cvtepi32_ps(dot_i8i8(q1, yq)), a1);
    }
    *o0 = hsum_tree(a0);
    *o1 = hsum_tree(a1);
}

AVX2_INLINE void mdot_x8_0(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                           int64_t n, float *out, int64_t os, const int Q4)
{
    const int64_t nb = n / 32;
    if (nb > MDOT_MAXB) {
        for (int64_t t = 0; t < nt; t++)
            for (int64_t r = 0; r < nr; r++)
                out[t * os + r] = dot_x8_0((const uint8_t *)w + (size_t)r * ws, (const uint8_t *)a + (size_t)t * as, n, Q4);
        return;
    }
    if (nt == 1) {
        float yd[MDOT_MAXB];
        for (int64_t i = 0; i < nb; i++)
            yd[i] = ld_h((const uint8_t *)a + 34 * i);
        int64_t r = 0;
        for (; r + 1 < nr; r += 2)
            mdot_x8_0_row2((const uint8_t *)w + (size_t)r * ws, (const uint8_t *)w + (size_t)(r + 1) * ws, a,
                           yd, nb, out + r, out + r + 1, Q4);
        if (r < nr)
            out[r] = dot_x8_0((const uint8_t *)w + (size_t)r * ws, a, n, Q4);
        return;
    }
    __m256 da[MDOT_MAXB];
    for (int64_t t0 = 0; t0 < nt; t0 += MDOT_TOK) {
        const int g = nt - t0 < MDOT_TOK ? (int)(nt - t0) : MDOT_TOK;
        const uint8_t *y[MDOT_TOK];
        for (int j = 0; j < MDOT_TOK; j++)
            y[j] = (const uint8_t *)a + (size_t)(t0 + (j < g ? j : 0)) * as;
        for (int64_t i = 0; i < nb; i++)
            da[i] = ld_h8(y, (size_t)34 * i);
        float *o = out + t0 * os;
        switch (g) {
        case 1: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 1, Q4); break;
        case 2: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 2, Q4); break;
        case 3: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 3, Q4); break;
        case 4: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 4, Q4); break;
        case 5: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 5, Q4); break;
        case 6: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 6, Q4); break;
        case 7: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 7, Q4); break;
        default: mdot_x8_0_group(w, ws, nr, y, da, nb, o, os, 8, Q4); break;
        }
    }
}

static AVX2 void mdot_q4_0(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                           int64_t n, float *out, int64_t os)
{
    mdot_x8_0(w, ws, nr, a, as, nt, n, out, os, 1);
}

static AVX2 void mdot_q8_0(const void *w, size_t ws, int64_t nr, const void *a, size_t as, int64_t nt,
                           int64_t n, float *out, int64_t os)
{
    mdot_x8_0(w, ws, nr, a, as, nt, n, out, os, 0);
}

/* ---- Q4_1 repacked for 8-row tiles (quant.h "x8") ---------------------------
 *
 * One weight row per lane.  Per block: the 8 rows' d and m (two f16
 * conversions), their nibbles (4 aligned loads; low and high nibbles apart:
 * 8 registers of 4-element groups), then per activation row 8 maddubs
 * against its 4-byte groups broadcast, summed in i16 (at most 8 x 2 x 15 x
 * 127 = 30480: no overflow), one madd to i32 (exact), and the two FMAs of
 * the x8 arithmetic with a lane per row.  Activation rows in passes of up
 * to 4 (4 accumulators and the 8 nibble registers stay in registers). */
AVX2_INLINE void q41x8_pass(const uint8_t *x8, int64_t nb, const uint8_t *const *y, const float *const *da,
                            const float *const *sa, __m256 *acc, const int NT, const int VNNI)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 a[4];
    for (int j = 0; j < NT; j++)
        a[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, x8 += QUANT_X8_BLOCK) {
        _mm_prefetch((const char *)(x8 + MDOT_PF), _MM_HINT_T0);
        _mm_prefetch((const char *)(x8 + MDOT_PF + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(x8 + MDOT_PF + 128), _MM_HINT_T0);
        /* one nibble register at a time, used by every row before the
         * next (the i16 sums are exact in any order): NT sums, NT
         * accumulators, the nibbles, a broadcast and two constants stay
         * in the 16 registers */
        __m256i s[4];
        for (int g = 0; g < 8; g++) {
            const __m256i t = _mm256_load_si256((const __m256i *)(x8 + 32 + 32 * (g & 3)));
            const __m256i w = _mm256_and_si256(g < 4 ? t : _mm256_srli_epi16(t, 4), m4);  /* elements 4g.. */
            for (int j = 0; j < NT; j++) {
                const __m256i yb = _mm256_set1_epi32((int)ld_u32(y[j] + 36 * i + 4 + 4 * g));
                if (VNNI) {   /* the i32 sums directly: the same integers as maddubs + madd */
                    s[j] = dpbusd(g ? s[j] : _mm256_setzero_si256(), w, yb, VNNI);
                    continue;
                }
                const __m256i p = _mm256_maddubs_epi16(w, yb);
                s[j] = g ? _mm256_add_epi16(s[j], p) : p;
                __asm__("" : "+x"(s[j]));   /* keep the chain: reassociated into a tree, the products spill */
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)x8));
        const __m256 mw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(x8 + 16)));
        for (int j = 0; j < NT; j++) {
            const __m256 P = _mm256_cvtepi32_ps(VNNI ? s[j] : _mm256_madd_epi16(s[j], ones));
            a[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(da[j] + i)), P, a[j]);
            a[j] = _mm256_fmadd_ps(mw, _mm256_broadcast_ss(sa[j] + i), a[j]);
        }
    }
    for (int j = 0; j < NT; j++)
        acc[j] = a[j];
}

/* ---- Q8_0 repacked for 8-row tiles (quant.h "x8") ---------------------------
 *
 * One weight row per lane, as the Q4_1 x8 tiles.  Per block: the 8 rows'
 * d (one f16 conversion from the group's d section), then per 4-element
 * group k its 32 weight bytes (rows 0..7) and their absolute values, used
 * by every activation row of the pass: sign the activation's 4 bytes
 * (broadcast) by the weights, maddubs (at most 2 x 128 x 127 = 32512 per
 * i16: exact), madd to i32 and add - the block's exact integer dot per
 * lane - then the one FMA of the x8 arithmetic.  Activation rows in
 * passes of up to 4 (4 i32 sums, 4 accumulators, the weights, their
 * absolute values and a constant stay in the 16 registers). */
AVX2_INLINE void q80x8_pass(const uint8_t *xg, int64_t nb, const uint8_t *const *y, const float *const *da,
                            __m256 *acc, const int NT, const int VNNI)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t *dsec = xg, *q = xg + (quant_q8_0x8_group_bytes(nb) - (size_t)nb * 256);
    __m256 a[4];
    for (int j = 0; j < NT; j++)
        a[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, q += 256) {
        for (int l = 0; l < 4; l++)
            _mm_prefetch((const char *)(q + MDOT_PF + 64 * l), _MM_HINT_T0);
        __m256i s[4];
        for (int k = 0; k < 8; k++) {
            const __m256i w = _mm256_load_si256((const __m256i *)(q + 32 * k));
            const __m256i u = _mm256_abs_epi8(w);   /* -128 -> 0x80: 128 as u8 */
            for (int j = 0; j < NT; j++) {
                const __m256i yb = _mm256_set1_epi32((int)ld_u32(y[j] + 34 * i + 2 + 4 * k));
                if (VNNI) {
                    s[j] = dpbusd(k ? s[j] : _mm256_setzero_si256(), u, _mm256_sign_epi8(yb, w), VNNI);
                    continue;
                }
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(yb, w)), ones);
                s[j] = k ? _mm256_add_epi32(s[j], p) : p;
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(dsec + 16 * i)));
        for (int j = 0; j < NT; j++)
            a[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(da[j] + i)), _mm256_cvtepi32_ps(s[j]), a[j]);
    }
    for (int j = 0; j < NT; j++)
        acc[j] = a[j];
}

/* One pass's activation rows t0 .. t0 + n - 1 (n <= cap) for the x8 tiles:
 * y[j] their bytes, da[j] (and Q4_1's sa[j]) their block scales (and sums)
 * as f32 in daf / saf (cap * nb floats each); slots n .. cap - 1 repeat row
 * t0, so a pass may read them but stores only n. */
AVX2_INLINE void x8_act_rows(const void *a, size_t as, int64_t nb, int64_t t0, int n, int cap, const int Q8,
                             const uint8_t **y, const float **da, const float **sa, float *daf, float *saf)
{
    const size_t ab = Q8 ? 34 : 36;   /* activation block bytes */
    for (int j = 0; j < cap; j++) {
        const int jj = j < n ? j : 0;
        y[j] = (const uint8_t *)a + (size_t)(t0 + jj) * as;
        da[j] = daf + (size_t)jj * nb;
        sa[j] = Q8 ? NULL : saf + (size_t)jj * nb;
    }
    for (int j = 0; j < n; j++)
        for (int64_t i = 0; i < nb; i++) {
            daf[(size_t)j * nb + i] = ld_h(y[j] + ab * i);
            if (!Q8)
                saf[(size_t)j * nb + i] = ld_h(y[j] + ab * i + 2);
        }
}

/* The x8 tiles of either type (Q8: Q8_0 against Q8_0 activations, else
 * Q4_1 against Q8_1): activation rows in passes of up to 4, their block
 * scales (and Q4_1's sums) as f32 first, then every group of 8 rows. */
AVX2_INLINE void mdot_x8(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as, int64_t nt, float *out,
                         int64_t os, const int Q8, const int VNNI)
{
    const size_t gb = Q8 ? quant_q8_0x8_group_bytes(nb) : (size_t)nb * QUANT_X8_BLOCK;
    float daf[4 * QUANT_X8_MAXB], saf[4 * QUANT_X8_MAXB];   /* saf: Q4_1 only */
    for (int64_t t0 = 0; t0 < nt; t0 += 4) {
        const int n4 = nt - t0 < 4 ? (int)(nt - t0) : 4;
        const uint8_t *y[4];
        const float *da[4], *sa[4];
        x8_act_rows(a, as, nb, t0, n4, 4, Q8, y, da, sa, daf, saf);
        for (int64_t g = 0; g < ng; g++) {
            const uint8_t *xg = (const uint8_t *)x8 + (size_t)g * gb;
            __m256 acc[4];
            switch (n4 * 2 + Q8) {
#define X8_PASS(n) \
            case 2 * n: q41x8_pass(xg, nb, y, da, sa, acc, n, VNNI); break; \
            case 2 * n + 1: q80x8_pass(xg, nb, y, da, acc, n, VNNI); break;
            X8_PASS(1) X8_PASS(2) X8_PASS(3)
#undef X8_PASS
            case 9: q80x8_pass(xg, nb, y, da, acc, 4, VNNI); break;
            default: q41x8_pass(xg, nb, y, da, sa, acc, 4, VNNI); break;
            }
            for (int j = 0; j < n4; j++)
                _mm256_storeu_ps(out + (t0 + j) * os + 8 * g, acc[j]);
        }
    }
}

static AVX2 void mdot_q4_1x8(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as, int64_t nt,
                             float *out, int64_t os)
{
    mdot_x8(x8, nb, ng, a, as, nt, out, os, 0, 0);
}

static AVX2 void mdot_q8_0x8(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as, int64_t nt,
                             float *out, int64_t os)
{
    mdot_x8(x8, nb, ng, a, as, nt, out, os, 1, 0);
}

/* The same tiles with VPDPBUSD (quant_vnni_levels() bit 1: AVX-VNNI, bit 2:
 * AVX512-VNNI on ymm): each 4-byte group's products summed into the i32
 * lanes in one instruction instead of maddubs (+ i16 adds) + madd; the
 * integer sums are the same, so the outputs equal the AVX2 tiles' bit for
 * bit. */
#define X8_VNNI(level)                                                                                            \
    static AVX2 void mdot_q4_1x8_vnni##level(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as,   \
                                             int64_t nt, float *out, int64_t os)                                  \
    {                                                                                                             \
        mdot_x8(x8, nb, ng, a, as, nt, out, os, 0, level);                                                       \
    }                                                                                                             \
    static AVX2 void mdot_q8_0x8_vnni##level(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as,   \
                                             int64_t nt, float *out, int64_t os)                                  \
    {                                                                                                             \
        mdot_x8(x8, nb, ng, a, as, nt, out, os, 1, level);                                                       \
    }
X8_VNNI(1)
X8_VNNI(2)
#undef X8_VNNI

/* ---- the x8 tiles two groups at a time on zmm (AVX512-VNNI + BW) ----------
 *
 * Groups g and g + 1 side by side in one 512-bit register: lanes 0-7 the
 * rows of group g, lanes 8-15 those of group g + 1, each group's 32-byte
 * vector in its half (one insert).  The activation's 4-byte group is the
 * same for both halves (a broadcast), so every lane does what the ymm
 * tiles' lane does: the same exact integer dot per block (VPDPBUSD), the
 * same FMAs in block order - the outputs are the x8 tiles' bit for bit,
 * and out[8 g .. 8 g + 15] is one 16-float store.  Activation rows in
 * passes of up to 8 (the 32 zmm registers hold 8 sums and 8 accumulators
 * beside the weights), so each weight tile is read half as often as by
 * the ymm tiles' passes of 4.  An odd last group pairs with itself and
 * stores its low half.  Q8_0: VPDPBUSD takes |w| as u8 and the activation
 * bytes negated where w < 0 (a mask from w's sign bits: AVX512BW has no
 * VPSIGNB), the same products as the sign trick: w = 0 has |w| = 0. */
#define AVX512_ZMM_INLINE \
    static inline __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
#define AVX512_ZMM __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define X16_NT 8   /* activation rows per pass (mdot_x16's switch has a case per count) */

/* [a | b] */
AVX512_ZMM_INLINE __m512i cat_i256(const uint8_t *a, const uint8_t *b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256((const __m256i *)a)),
                              _mm256_load_si256((const __m256i *)b), 1);
}

/* f32 of 8 f16 at a, then 8 at b */
AVX512_ZMM_INLINE __m512 cat_h8(const uint8_t *a, const uint8_t *b)
{
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                                   _mm_loadu_si128((const __m128i *)b), 1));
}

AVX512_ZMM_INLINE void q41x16_pass(const uint8_t *xa, const uint8_t *xb, int64_t nb, const uint8_t *const *y,
                                   const float *const *da, const float *const *sa, __m512 *acc, const int NT)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 a[X16_NT];
    for (int j = 0; j < NT; j++)
        a[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++, xa += QUANT_X8_BLOCK, xb += QUANT_X8_BLOCK) {
        for (int l = 0; l < 3; l++) {
            _mm_prefetch((const char *)(xa + MDOT_PF + 64 * l), _MM_HINT_T0);
            _mm_prefetch((const char *)(xb + MDOT_PF + 64 * l), _MM_HINT_T0);
        }
        __m512i s[X16_NT];
        for (int j = 0; j < NT; j++)
            s[j] = _mm512_setzero_si512();
        for (int g = 0; g < 8; g++) {
            const __m512i t = cat_i256(xa + 32 + 32 * (g & 3), xb + 32 + 32 * (g & 3));
            const __m512i w = _mm512_and_si512(g < 4 ? t : _mm512_srli_epi16(t, 4), m4);   /* elements 4g.. */
            for (int j = 0; j < NT; j++) {
                const __m512i yb = _mm512_set1_epi32((int)ld_u32(y[j] + 36 * i + 4 + 4 * g));
                s[j] = _mm512_dpbusd_epi32(s[j], w, yb);
            }
        }
        const __m512 dw = cat_h8(xa, xb), mw = cat_h8(xa + 16, xb + 16);
        for (int j = 0; j < NT; j++) {
            a[j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(da[j][i])), _mm512_cvtepi32_ps(s[j]), a[j]);
            a[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sa[j][i]), a[j]);
        }
    }
    for (int j = 0; j < NT; j++)
        acc[j] = a[j];
}

AVX512_ZMM_INLINE void q80x16_pass(const uint8_t *xga, const uint8_t *xgb, int64_t nb, const uint8_t *const *y,
                                   const float *const *da, __m512 *acc, const int NT)
{
    const size_t qoff = quant_q8_0x8_group_bytes(nb) - (size_t)nb * 256;
    const uint8_t *qa = xga + qoff, *qb = xgb + qoff;
    __m512 a[X16_NT];
    for (int j = 0; j < NT; j++)
        a[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++, qa += 256, qb += 256) {
        for (int l = 0; l < 4; l++) {
            _mm_prefetch((const char *)(qa + MDOT_PF + 64 * l), _MM_HINT_T0);
            _mm_prefetch((const char *)(qb + MDOT_PF + 64 * l), _MM_HINT_T0);
        }
        __m512i s[X16_NT];
        for (int j = 0; j < NT; j++)
            s[j] = _mm512_setzero_si512();
        for (int k = 0; k < 8; k++) {
            const __m512i w = cat_i256(qa + 32 * k, qb + 32 * k);
            const __m512i u = _mm512_abs_epi8(w);   /* -128 -> 0x80: 128 as u8 */
            const __mmask64 neg = _mm512_movepi8_mask(w);
            for (int j = 0; j < NT; j++) {
                const __m512i yb = _mm512_set1_epi32((int)ld_u32(y[j] + 34 * i + 2 + 4 * k));
                const __m512i sy = _mm512_mask_sub_epi8(yb, neg, _mm512_setzero_si512(), yb);
                s[j] = _mm512_dpbusd_epi32(s[j], u, sy);
            }
        }
        const __m512 dw = cat_h8(xga + 16 * i, xgb + 16 * i);
        for (int j = 0; j < NT; j++)
            a[j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(da[j][i])), _mm512_cvtepi32_ps(s[j]), a[j]);
    }
    for (int j = 0; j < NT; j++)
        acc[j] = a[j];
}

/* mdot_x8's contract, the groups in pairs on zmm */
AVX512_ZMM_INLINE void mdot_x16(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as, int64_t nt,
                                float *out, int64_t os, const int Q8)
{
    const size_t gb = Q8 ? quant_q8_0x8_group_bytes(nb) : (size_t)nb * QUANT_X8_BLOCK;
    float daf[X16_NT * QUANT_X8_MAXB], saf[X16_NT * QUANT_X8_MAXB];   /* saf: Q4_1 only */
    for (int64_t t0 = 0; t0 < nt; t0 += X16_NT) {
        const int nr = nt - t0 < X16_NT ? (int)(nt - t0) : X16_NT;
        const uint8_t *y[X16_NT];
        const float *da[X16_NT], *sa[X16_NT];
        x8_act_rows(a, as, nb, t0, nr, X16_NT, Q8, y, da, sa, daf, saf);
        for (int64_t g = 0; g < ng; g += 2) {
            const uint8_t *xa = (const uint8_t *)x8 + (size_t)g * gb;
            const uint8_t *xb = g + 1 < ng ? xa + gb : xa;
            __m512 acc[X16_NT];
            switch (nr * 2 + Q8) {
#define X16_PASS(n) \
            case 2 * n: q41x16_pass(xa, xb, nb, y, da, sa, acc, n); break; \
            case 2 * n + 1: q80x16_pass(xa, xb, nb, y, da, acc, n); break;
            X16_PASS(1) X16_PASS(2) X16_PASS(3) X16_PASS(4) X16_PASS(5) X16_PASS(6) X16_PASS(7)
#undef X16_PASS
            case 2 * X16_NT + 1: q80x16_pass(xa, xb, nb, y, da, acc, X16_NT); break;
            default: q41x16_pass(xa, xb, nb, y, da, sa, acc, X16_NT); break;
            }
            for (int j = 0; j < nr; j++) {
                float *o = out + (t0 + j) * os + 8 * g;
                if (xb != xa)
                    _mm512_storeu_ps(o, acc[j]);
                else
                    _mm256_storeu_ps(o, _mm512_castps512_ps256(acc[j]));
            }
        }
    }
}

#ifndef X16_MIN_NT
#define X16_MIN_NT 2
#endif

static AVX512_ZMM void mdot_q4_1x8_zmm(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as,
                                       int64_t nt, float *out, int64_t os)
{
    if (nt < X16_MIN_NT)
        mdot_x8(x8, nb, ng, a, as, nt, out, os, 0, 2);
    else
        mdot_x16(x8, nb, ng, a, as, nt, out, os, 0);
}

static AVX512_ZMM void mdot_q8_0x8_zmm(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as,
                                       int64_t nt, float *out, int64_t os)
{
    if (nt < X16_MIN_NT)
        mdot_x8(x8, nb, ng, a, as, nt, out, os, 1, 2);
    else
        mdot_x16(x8, nb, ng, a, as, nt, out, os, 1);
}

/* ---- Q4_K x Q8_K ----------------------------------------------------------- */

/* shuffle control broadcasting 16-bit word k (of each 128-bit lane) */
static inline AVX2 __m256i word_bcast(int k)
{
    return _mm256_set1_epi16((short)(((2 * k + 1) << 8) | (2 * k)));
}

static AVX2 float dot_q4_k(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    const __m256i  m4 = _mm256_set1_epi8(0x0f);
    __m256 acc  = _mm256_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++, x += 144, y += 292) {
        float da;
        memcpy(&da, y, sizeof da);
        const __m128 dd = _mm_mul_ps(ld_h2(x), _mm_set1_ps(da));  /* (da*d, da*dmin) */
        /* 12 packed bytes -> sc[0..7], m[0..7] (6 bits each), four per word */
        uint32_t u[3];
        memcpy(u, x + 4, sizeof u);
        const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
        const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
        const uint32_t m_hi  = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
        const __m128i  m8    = _mm_setr_epi32((int)m_lo, (int)m_hi, 0, 0);
        const __m128i  sc8   = _mm_setr_epi32((int)sc_lo, (int)sc_hi, 0, 0);

        /* mins: m[j] * (bsums[2j] + bsums[2j+1]), kept as 8 lanes */
        __m256i mdup = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(y + 260)), mdup);
        accm = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(mins), accm);

        const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
        const uint8_t *qs = x + 16, *q8 = y + 4;
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++, qs += 32, q8 += 64) {
            __m256i q   = ld256(qs);
            __m256i lo  = _mm256_and_si256(q, m4);
            __m256i hi  = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ld256(q8)),
                                            _mm256_shuffle_epi8(sc16, word_bcast(2 * c)));
            __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ld256(q8 + 32)),
                                            _mm256_shuffle_epi8(sc16, word_bcast(2 * c + 1)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(_mm256_sub_ps(acc, accm));
}

/* ---- Q6_K x Q8_K ----------------------------------------------------------- */

static AVX2 float dot_q6_k(const void *w, const void *a, int64_t n)
{
    const uint8_t *x = w, *y = a;
    const __m256i  m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++, x += 210, y += 292) {
        float da;
        memcpy(&da, y, sizeof da);
        const int8_t *sc = (const int8_t *)(x + 192);
        /* q6 is stored +32: subtract 32 * sum_s sc[s] * bsums[s] once */
        __m256i scv  = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        __m256i corr = _mm256_madd_epi16(scv, _mm256_loadu_si256((const __m256i *)(y + 260)));
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5));
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x + 64 * h, *q8 = y + 4 + 128 * h;
            /* this half's 8 scales as i16 in both lanes */
            __m256i sh  = _mm256_broadcastsi128_si256(
                _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(sc + 8 * h))));
            __m256i qh  = ld256(x + 128 + 32 * h);
            __m256i ql0 = ld256(ql), ql1 = ld256(ql + 32);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                   _mm256_and_si256(qh, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            for (int g = 0; g < 4; g++) {
                /* 32 elements = sub-blocks 2g (low lane) and 2g+1 (high lane) */
                __m256i p   = _mm256_maddubs_epi16(q[g], ld256(q8 + 32 * g));
                __m256i ctl = _mm256_set_m128i(_mm256_castsi256_si128(word_bcast(2 * g + 1)),
                                               _mm256_castsi256_si128(word_bcast(2 * g)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sh, ctl)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(da * ld_h(x + 208)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

/* ---- float weights ------------------------------------------------------------ */

static inline AVX2 __m256 ld_f16x8(const uint8_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline AVX2 __m256 ld_bf16x8(const uint8_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static inline AVX2 __m256 ld_f32x8(const uint8_t *p)
{
    return _mm256_loadu_ps((const float *)(const void *)p);
}

static inline float ld_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* One body for the three float weight types: WLOAD(p) loads 8 weights at p,
 * WSCALAR(p) one, WB bytes per weight. */
#define FLOAT_DOT(NAME, WLOAD, WSCALAR, WB)                                          \
    static AVX2 float NAME(const void *w, const void *a, int64_t n)                  \
    {                                                                                \
        const uint8_t *x = w, *y = a;                                                \
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();                   \
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();                   \
        int64_t i = 0;                                                               \
        for (; i + 32 <= n; i += 32) {                                               \
            s0 = _mm256_fmadd_ps(WLOAD(x + WB * i), ld_f32x8(y + 4 * i), s0);        \
            s1 = _mm256_fmadd_ps(WLOAD(x + WB * (i + 8)), ld_f32x8(y + 4 * (i + 8)), s1);   \
            s2 = _mm256_fmadd_ps(WLOAD(x + WB * (i + 16)), ld_f32x8(y + 4 * (i + 16)), s2); \
            s3 = _mm256_fmadd_ps(WLOAD(x + WB * (i + 24)), ld_f32x8(y + 4 * (i + 24)), s3); \
        }                                                                            \
        for (; i + 8 <= n; i += 8)                                                   \
            s0 = _mm256_fmadd_ps(WLOAD(x + WB * i), ld_f32x8(y + 4 * i), s0);        \
        float r = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))); \
        for (; i < n; i++)                                                           \
            r += WSCALAR(x + WB * i) * ld_f32(y + 4 * i);                            \
        return r;                                                                    \
    }

static inline AVX2 float ld_bf16_1(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return bf16_to_f32(h);
}

FLOAT_DOT(dot_f32, ld_f32x8, ld_f32, 4)
FLOAT_DOT(dot_f16, ld_f16x8, ld_h, 2)
FLOAT_DOT(dot_bf16, ld_bf16x8, ld_bf16_1, 2)

/* ---- Q8_0 / Q8_1 activation quantizers ------------------------------------------ */

/* One block of 32: stores the 32 int8 at qs and returns the int sum; *d_out
 * gets d = amax/127 (unrounded f32).  Rounding: half away from zero of
 * x * (1/d), as the scalar roundf. */
static inline AVX2 int quantize_block_q8(const float *x, int8_t *qs, float *d_out)
{
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(signbit, v[k]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d  = _mm_cvtss_f32(m) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *d_out = d;

    const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256i i32[4];
    for (int k = 0; k < 4; k++) {
        __m256 p = _mm256_mul_ps(v[k], vid);
        __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 f = _mm256_andnot_ps(signbit, _mm256_sub_ps(p, t));  /* |frac|, exact */
        __m256 step = _mm256_or_ps(_mm256_and_ps(p, signbit), one);  /* +-1 */
        __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(f, half, _CMP_GE_OQ), step));
        i32[k] = _mm256_cvttps_epi32(r);
    }
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
    /* packs interleave 128-bit lanes: dwords come out as a0 b0 c0 d0 a1 b1 c1 d1 */
    __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]),
                                     _mm256_packs_epi32(i32[2], i32[3]));
    p16 = _mm256_permutevar8x32_epi32(p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)(void *)qs, p16);
    /* |x * id| <= 127 (plus rounding) whenever d and id are finite, so a
     * -128 byte only comes from cvttps' 0x80000000 for a NaN or inf product
     * (NaN / inf input, or amax so small that 1/d overflows): such a block
     * is quantized again by the scalar rule (NaN -> d NaN, q clamped to
     * [-127, 127]), which keeps the two paths equal on every input. */
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(p16, _mm256_set1_epi8(-128))))
        return quant_q8_block_scalar(x, qs, d_out);
    return hsum_epi32(sum);
}

static inline AVX2 void st_h(uint8_t *p, float f)
{
    uint16_t h = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    memcpy(p, &h, sizeof h);
}

static AVX2 void quantize_q8_0(const float *x, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32, b += 34) {
        float d;
        quantize_block_q8(x, (int8_t *)(b + 2), &d);
        st_h(b, d);
    }
}

static AVX2 void quantize_q8_1(const float *x, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32, b += 36) {
        float d;
        int   sum = quantize_block_q8(x, (int8_t *)(b + 4), &d);
        st_h(b, d);
        st_h(b + 2, (float)sum * d);
    }
}

const struct quant_kernels quant_kernels_avx2 = {
    .name          = "avx2",
    .x8_isa        = "avx2",
    .dot_f32       = dot_f32,
    .dot_f16       = dot_f16,
    .dot_bf16      = dot_bf16,
    .dot_q4_0      = dot_q4_0,
    .dot_q4_1      = dot_q4_1,
    .dot_q8_0      = dot_q8_0,
    .dot_q4_k      = dot_q4_k,
    .dot_q6_k      = dot_q6_k,
    .mdot_q4_0     = mdot_q4_0,
    .mdot_q4_1     = mdot_q4_1,
    .mdot_q8_0     = mdot_q8_0,
    .mdot_q4_1x8   = mdot_q4_1x8,
    .mdot_q8_0x8   = mdot_q8_0x8,
    .quantize_q8_0 = quantize_q8_0,
    .quantize_q8_1 = quantize_q8_1,
    .quantize_q8_k = quant_quantize_q8_k_scalar,
};

/* avx2 with the VNNI x8 tiles (set up from quant_kernels_avx2 at init) */
struct quant_kernels quant_kernels_avx_vnni, quant_kernels_avx512_vnni, quant_kernels_avx512_zmm;

int quant_vnni_levels(void)
{
    unsigned a, b, c, d;
    if (!quant_avx2_supported() || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    const unsigned b7 = b, c7 = c, max_sub7 = a;
    int levels = 0;
    if (max_sub7 >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4)))
        levels |= 1;   /* AVX-VNNI: VEX, the ymm state the AVX2 check already found enabled */
    /* AVX512-VNNI (7.0:ECX 11) + AVX512VL (7.0:EBX 31), and the OS saving the
     * opmask and zmm state (XCR0 bits 5-7) that EVEX instructions need */
    if ((c7 & (1u << 11)) && (b7 & (1u << 31)) && __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27))) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        if ((lo & 0xe6) == 0xe6) {
            levels |= 2;
            /* the zmm tiles: AVX512F (7.0:EBX 16) and AVX512BW (7.0:EBX 30) too */
            if ((b7 & (1u << 16)) && (b7 & (1u << 30)))
                levels |= 4;
        }
    }
    return levels;
}

void quant_vnni_kernels_init(void)
{
    quant_kernels_avx_vnni = quant_kernels_avx2;
    quant_kernels_avx_vnni.x8_isa = "avxvnni";
    quant_kernels_avx_vnni.mdot_q4_1x8 = mdot_q4_1x8_vnni1;
    quant_kernels_avx_vnni.mdot_q8_0x8 = mdot_q8_0x8_vnni1;
    quant_kernels_avx512_vnni = quant_kernels_avx2;
    quant_kernels_avx512_vnni.x8_isa = "avx512vnni";
    quant_kernels_avx512_vnni.mdot_q4_1x8 = mdot_q4_1x8_vnni2;
    quant_kernels_avx512_vnni.mdot_q8_0x8 = mdot_q8_0x8_vnni2;
    quant_kernels_avx512_zmm = quant_kernels_avx2;
    quant_kernels_avx512_zmm.x8_isa = "avx512";
    quant_kernels_avx512_zmm.mdot_q4_1x8 = mdot_q4_1x8_zmm;
    quant_kernels_avx512_zmm.mdot_q8_0x8 = mdot_q8_0x8_zmm;
}

#else /* !PS_QUANT_HAVE_AVX2 */

bool quant_avx2_supported(void)
{
    return false;
}

int quant_vnni_levels(void)
{
    return 0;
}

#endif
