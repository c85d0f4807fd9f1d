/* quant_impl.h - private to quant.c / quant_avx2.c and tests/unit/test_quant.c.
 *
 * A kernel table per SIMD path.  quant_init() picks one table; the public
 * entry points in quant.h dispatch through it.  Tests call both tables
 * directly to compare the paths in one process.
 *
 * Contract of every kernel: n is a positive multiple of the weight type's
 * block size (checked by the caller); pointers need no alignment.
 */
#ifndef PS_QUANT_IMPL_H
#define PS_QUANT_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* dot of one weight row w (its dtype) and one activation row a (the weight
 * type's vec_dot_type), n elements */
typedef float (*quant_dot_fn)(const void *w, const void *a, int64_t n);
/* src[n] -> dst (dtype_row_bytes(type, n) bytes) */
typedef void (*quant_quantize_fn)(const float *src, void *dst, int64_t n);
/* Tile of dots: out[t * os + r] = dot(w + r * ws, a + t * as, n) for
 * r < nr, t < nt; every element bitwise equal to the same table's dot_fn
 * (same per-block integer sums, same float operations in the same order).
 * Each weight block is unpacked once for a group of activation rows (up
 * to 4 on the scalar path, 8 on AVX2). */
typedef void (*quant_mdot_fn)(const void *w, size_t ws, int64_t nr, const void *a, size_t as,
                              int64_t nt, int64_t n, float *out, int64_t os);

/* Tiles of a matrix repacked by quant_x8_repack (quant.h): ng groups of 8
 * rows of nb blocks at x8 (group g at x8 + g * the group's bytes: nb *
 * QUANT_X8_BLOCK for Q4_1, quant_q8_0x8_group_bytes(nb) for Q8_0) against
 * nt activation rows (Q8_1 / Q8_0): out[t * os + 8 g + k] for row k of
 * group g. */
typedef void (*quant_mdot_x8_fn)(const void *x8, int64_t nb, int64_t ng, const void *a, size_t as, int64_t nt,
                                 float *out, int64_t os);

/* bytes of one Q8_0 x8 group of nb blocks: the d section (8 x f16 per
 * block, padded to 32 bytes), then 256 bytes per block */
static inline size_t quant_q8_0x8_group_bytes(int64_t nb)
{
    return ((size_t)nb * 16 + 31) / 32 * 32 + (size_t)nb * 256;
}

struct quant_kernels {
    const char       *name;       /* "scalar" / "avx2" */
    const char       *x8_isa;     /* the x8 tiles' instructions: "avx2", "avxvnni", "avx512vnni"; NULL: none */
    quant_dot_fn      dot_f32;    /* F32  x F32  */
    quant_dot_fn      dot_f16;    /* F16  x F32  */
    quant_dot_fn      dot_bf16;   /* BF16 x F32  */
    quant_dot_fn      dot_q4_0;   /* Q4_0 x Q8_0 */
    quant_dot_fn      dot_q4_1;   /* Q4_1 x Q8_1 */
    quant_dot_fn      dot_q8_0;   /* Q8_0 x Q8_0 */
    quant_dot_fn      dot_q4_k;   /* Q4_K x Q8_K */
    quant_dot_fn      dot_q6_k;   /* Q6_K x Q8_K */
    quant_mdot_fn     mdot_q4_0;  /* tile versions of dot_q4_0 / dot_q4_1 / dot_q8_0 */
    quant_mdot_fn     mdot_q4_1;
    quant_mdot_fn     mdot_q8_0;
    quant_mdot_x8_fn  mdot_q4_1x8; /* NULL: no x8 kernel on this path */
    quant_mdot_x8_fn  mdot_q8_0x8;
    quant_quantize_fn quantize_q8_0;
    quant_quantize_fn quantize_q8_1;
    quant_quantize_fn quantize_q8_k;
};

extern const struct quant_kernels quant_kernels_scalar;

#if defined(__x86_64__) || defined(__i386__)
#define PS_QUANT_HAVE_AVX2 1
/* Valid only where quant_avx2_supported() is true. */
extern const struct quant_kernels quant_kernels_avx2;
/* quant_kernels_avx2 with the x8 tiles on VPDPBUSD: VEX on ymm (AVX-VNNI),
 * EVEX on ymm (AVX512-VNNI + VL), or EVEX on zmm, two 8-row groups per
 * register (AVX512F + BW + VL + VNNI); filled by quant_vnni_kernels_init(),
 * valid only where quant_vnni_levels() has bit 1, 2 or 4 respectively. */
extern struct quant_kernels quant_kernels_avx_vnni, quant_kernels_avx512_vnni, quant_kernels_avx512_zmm;
void quant_vnni_kernels_init(void);
/* The VPDPBUSD encodings this CPU and OS can run, a bit each: 1 AVX-VNNI
 * (VEX), 2 AVX512-VNNI + AVX512VL with the OS saving zmm state (EVEX on
 * ymm), 4 bit 2 plus AVX512F and AVX512BW (EVEX on zmm); 0: none. */
int quant_vnni_levels(void);
#endif

/* CPU has AVX2, FMA and F16C (false off x86). */
bool quant_avx2_supported(void);

/* quant_q8_block_scalar: quant.h */

/* Scalar Q8_K activation quantizer, shared by both tables. */
void quant_quantize_q8_k_scalar(const float *src, void *dst, int64_t n);

#endif /* PS_QUANT_IMPL_H */
