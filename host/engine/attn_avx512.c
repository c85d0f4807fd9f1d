/* attn_x86.inc built with the f16 score and P.V loops on zmm (see attn_x86.h) */
#if defined(__x86_64__)
#define ATTN_ZMM 1
#include "attn_x86.inc"
#else
typedef int attn_avx512_empty;   /* ISO C: a translation unit is not empty */
#endif
