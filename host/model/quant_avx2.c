/* quant_avx2.c - AVX2/FMA/F16C kernels (placeholder until the SIMD lands). */
#include "model/quant_impl.h"

#ifdef PS_QUANT_HAVE_AVX2
const struct quant_kernels quant_kernels_avx2 = {.name = "avx2"};
#endif

bool quant_avx2_supported(void)
{
    return false;
}
