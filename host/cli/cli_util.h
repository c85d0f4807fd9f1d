/* cli_util.h - option parsing and timing shared by the subcommands. */
#ifndef PS_CLI_UTIL_H
#define PS_CLI_UTIL_H

#include <stdint.h>

/* Parse s as a base-10 integer in [lo, hi] into *out.  On failure prints
 * "paraserve <cmd>: <opt> must be an integer in [lo, hi], got 's'" to stderr
 * and returns -1; 0 on success. */
int cli_parse_i32(const char *cmd, const char *opt, const char *s, int32_t lo, int32_t hi, int32_t *out);

/* The SIMD path for logs and CSV: quant_simd_name(), plus "+" and the x8
 * tiles' instructions where they are not plain AVX2 ("avx2+avxvnni"). */
const char *cli_simd_label(void);

/* Monotonic clock in seconds. */
double cli_now_s(void);

/* The allocator behind malloc in this process, e.g. "mimalloc 2.0.9" or
 * "libc malloc" (checked: a malloc'd block must lie in mimalloc's heap). */
const char *cli_allocator(void);

#endif /* PS_CLI_UTIL_H */
