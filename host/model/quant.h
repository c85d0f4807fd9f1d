/* quant.h - tensor element types of GGUF/ggml, conversion and dot products.
 *
 * Block layouts follow the GGUF format (facts of the format, little endian):
 *   Q4_0 (32 elems, 18 B): f16 d; u8 qs[16]          x[i] = ((q)-8)*d, low nibbles = elems 0..15, high = 16..31
 *   Q4_1 (32 elems, 20 B): f16 d, f16 m; u8 qs[16]   x[i] = q*d + m
 *   Q8_0 (32 elems, 34 B): f16 d; i8 qs[32]          x[i] = q*d
 *   Q8_1 (32 elems, 36 B): f16 d, f16 s; i8 qs[32]   s = d*sum(qs) (activation format for Q4_1)
 *   Q4_K (256 elems, 144 B): f16 d, f16 dmin; u8 scales[12] (6-bit scale+min x 8); u8 qs[128]
 *   Q6_K (256 elems, 210 B): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
 *   Q8_K (256 elems, 292 B): f32 d; i8 qs[256]; i16 bsums[16] (activation format for K quants)
 *
 * Matrix-vector products run on quantized weights directly: the activation row
 * is first quantized to the weight type's `vec_dot_type` (quant_row_quantize),
 * then quant_vec_dot() multiplies one weight row by it.  An AVX2/FMA path is
 * picked at run time when the CPU has it (quant_init), else scalar code runs;
 * both give the same result up to float summation order.
 */
#ifndef PS_QUANT_H
#define PS_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dtype {
    DT_F32  = 0,
    DT_F16  = 1,
    DT_Q4_0 = 2,
    DT_Q4_1 = 3,
    DT_Q8_0 = 8,
    DT_Q8_1 = 9,
    DT_Q4_K = 12,
    DT_Q6_K = 14,
    DT_Q8_K = 15,
    DT_BF16 = 30,
};

#define QK_BLOCK 32   /* elements per block of Q4_0/Q4_1/Q8_0/Q8_1 */
#define QK_K     256  /* elements per super-block of K quants       */

struct dtype_info {
    const char *name;        /* "Q4_1" */
    int32_t     block_elems; /* elements per block (1 for F32/F16/BF16) */
    int32_t     block_bytes; /* bytes per block                         */
    enum dtype  vec_dot_type;/* activation format quant_vec_dot expects  */
};

/* Traits of a GGUF type id, or NULL when paraserve does not support it
 * (the caller names the id in its error). */
const struct dtype_info *dtype_info_get(uint32_t type);

/* Bytes of a row of `n` elements; 0 when n is not a multiple of the block
 * size or the type is unknown. */
size_t dtype_row_bytes(enum dtype type, int64_t n);

/* One Q8_0/Q8_1 block of 32: q[j] = round-half-away(x[j] * (1/d)), d =
 * max|x|/127 (unrounded f32, to *d_out); returns sum(q).  Every q is in
 * [-127, 127] (the x8 and sign-trick kernels rely on q != -128); a block
 * holding a NaN gets d = NaN and every q 0, one holding an inf (no NaN)
 * d = inf and every q 0: non-finite input stays non-finite in every dot
 * product that uses the block.  The AVX2 quantizer hands such blocks (and
 * those whose 1/d overflows) here, so both paths give the same bytes for
 * every input.  The CPU backend's q8 KV cache stores its rows with it. */
int quant_q8_block_scalar(const float *x, int8_t *qs, float *d_out);

/* Pick the SIMD implementation for this CPU.  Idempotent, thread-safe; called
 * by every entry point below, so explicit calls are optional. */
void quant_init(void);

/* "avx2" or "scalar": the path quant_vec_dot uses on this machine.
 * PARASERVE_SIMD=scalar in the environment forces the scalar path. */
const char *quant_simd_name(void);

/* The instructions of the x8 tiles (quant_mat_dot_x8): "avx512" (VPDPBUSD
 * on zmm, two tiles per register), "avxvnni" or "avx512vnni" (VPDPBUSD on
 * ymm) where the CPU has them, else "avx2"; "none" on the scalar path.
 * PARASERVE_SIMD=avx2 keeps them on AVX2; =avx512, =avxvnni, =avx512vnni
 * pick that one where the CPU has it. */
const char *quant_x8_isa_name(void);

/* Dequantize n elements (multiple of the block size) of `type` at src to
 * f32 dst[n].  PS_EUNSUPPORTED for a type without a dequantizer. */
int quant_row_dequantize(enum dtype type, const void *src, float *dst, int64_t n);

/* Quantize src[n] to `type` (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q8_1, Q8_K,
 * Q4_K, Q6_K) into dst (dtype_row_bytes(type, n) bytes).  Deterministic. */
int quant_row_quantize(enum dtype type, const float *src, void *dst, int64_t n);

/* Dot product of one weight row (type w_type, n elements) with an activation
 * row already quantized to dtype_info_get(w_type)->vec_dot_type. */
float quant_vec_dot(enum dtype w_type, const void *w_row, const void *act, int64_t n);

/* Tile of dot products of n_rows weight rows (w_type, row r at
 * w + r * w_stride bytes) with n_act activation rows (vec_dot_type, row t at
 * act + t * act_stride bytes), n elements each:
 *   out[t * out_stride + r] = quant_vec_dot(w_type, row r, act row t, n)
 * Every element is bitwise equal to that quant_vec_dot call (same SIMD
 * path), so how rows and tokens are grouped never changes a result.  Q4_0,
 * Q4_1 and Q8_0 unpack each weight block once per group of activation
 * rows (up to 8 on AVX2, 4 on the scalar path); other types loop over
 * quant_vec_dot. */
void quant_mat_dot(enum dtype w_type, const void *w, size_t w_stride, int64_t n_rows, const void *act,
                   size_t act_stride, int64_t n_act, int64_t n, float *out, int64_t out_stride);

/* ---- matrices repacked for 8-row tiles ("x8"): Q4_1 and Q8_0 -------------
 *
 * A matrix whose row count is a multiple of 8, copied into groups of 8
 * rows so that a tile holds one row per SIMD lane: a block's 8 integer
 * dots come out of one register, and a one-token call reads the weights
 * in one sequential stream.  Per group of 8 rows (nb = n / 32 blocks):
 *   Q4_1: per block QUANT_X8_BLOCK (160) bytes - the 8 rows' d (8 x f16),
 *         their m (8 x f16), then their 16 nibble bytes as four 32-byte
 *         vectors (vector k: bytes 4k..4k+3 of rows 0..7, rows 0-3 in the
 *         low half).  Same size as the Q4_1 rows.
 *   Q8_0: the d of every block first (block i: 8 x f16 at 16 i, the
 *         section padded to 32 bytes), then per block 256 bytes: eight
 *         32-byte vectors (vector k: bytes 4k..4k+3 of rows 0..7).  The
 *         Q8_0 rows' size plus at most 16 bytes per group.
 *
 * Their dots are their own arithmetic (not quant_vec_dot's for the type):
 * per block i, the exact integer dot P_i of the weights and activation
 * bytes (Q8_1 activations for Q4_1, Q8_0 for Q8_0),
 *   acc = fma(d_w[i] * d_a[i], (float) P_i, acc)
 *   Q4_1 only: acc = fma(m_w[i], s_a[i], acc)
 * in block order from 0; quant_dot_x8_ref computes it in plain C, bit for
 * bit.  Each (row, activation row) is computed alone in its lane, so
 * grouping never changes a value.  Q8_0 weights may hold -128; activation
 * bytes are in [-127, 127] (quantize_q8_0's range). */
#define QUANT_X8_BLOCK 160
#define QUANT_X8_MAXB  512   /* blocks per row at most (n <= 16384) */

/* Whether the active SIMD path has the x8 kernel for weights of type t
 * (AVX2: Q4_1 and Q8_0; scalar: none). */
bool   quant_x8_available(enum dtype t);
/* Bytes of an x8 copy of nrows rows of n elements of type t (0 for a
 * shape or type quant_x8_repack refuses). */
size_t quant_x8_bytes(enum dtype t, int64_t nrows, int64_t n);
/* Repack nrows (multiple of 8) rows of type t (Q4_1 or Q8_0) of n elements
 * (multiple of 32, at most 32 * QUANT_X8_MAXB), row r at w + r * w_stride,
 * into dst (quant_x8_bytes bytes, 32-byte aligned for aligned loads).
 * PS_EINVAL for other shapes or types. */
int    quant_x8_repack(enum dtype t, const void *w, size_t w_stride, int64_t nrows, int64_t n, void *dst);
/* out[t * out_stride + r] = the x8 dot of rows row0 + r (r < n_rows) of the
 * repacked matrix x8 (type t, rows of n elements) with activation row t (of
 * the type's vec_dot_type, at act + t * act_stride), t < n_act.  row0 and
 * n_rows multiples of 8; requires quant_x8_available(t). */
void   quant_mat_dot_x8(enum dtype t, const void *x8, int64_t row0, int64_t n_rows, int64_t n, const void *act,
                        size_t act_stride, int64_t n_act, float *out, int64_t out_stride);
/* The x8 arithmetic on one original row of type t and one activation row
 * (reference). */
float  quant_dot_x8_ref(enum dtype t, const void *w_row, const void *act, int64_t n);

/* IEEE half / bfloat16 conversions (scalar, exact round-to-nearest-even). */
float    fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float    bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

#endif /* PS_QUANT_H */
