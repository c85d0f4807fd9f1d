/* attn_x86.inc built for AVX2 + FMA + F16C (ymm) (see attn_x86.h) */
#if defined(__x86_64__)
#define ATTN_ZMM 0
#include "attn_x86.inc"
#else
typedef int attn_avx2_empty;   /* ISO C: a translation unit is not empty */
#endif
