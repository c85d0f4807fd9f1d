#include "cli_util.h"

#include "model/quant.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef PS_HAVE_MIMALLOC
#include <mimalloc.h>
#endif

int cli_parse_i32(const char *cmd, const char *opt, const char *s, int32_t lo, int32_t hi, int32_t *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "paraserve %s: %s must be an integer in [%d, %d], got '%s'\n", cmd, opt, lo, hi, s);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

double cli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *cli_allocator(void)
{
#ifdef PS_HAVE_MIMALLOC
    static char name[32];
    void *probe = calloc(1, 64);
    int ours = probe && mi_is_in_heap_region(probe);
    free(probe);
    if (ours) {
        const int v = mi_version();
        snprintf(name, sizeof name, "mimalloc %d.%d.%d", v / 100, v / 10 % 10, v % 10);
        return name;
    }
#endif
    return "libc malloc";
}

const char *cli_simd_label(void)
{
    static char label[48];
    const char *simd = quant_simd_name(), *x8 = quant_x8_isa_name();
    if (!strcmp(x8, "none") || !strcmp(x8, simd))
        snprintf(label, sizeof label, "%s", simd);
    else
        snprintf(label, sizeof label, "%s+%s", simd, x8);
    return label;
}
