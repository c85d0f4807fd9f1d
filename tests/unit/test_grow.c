/* test_grow.c - ps_grow: doubling from the minimum, contents kept, no
 * reallocation while the capacity suffices, overflowing sizes refused with
 * the caller's buffer and capacity untouched. */
#include <stdint.h>
#include <string.h>

#include "common/grow.h"
#include "test_util.h"

int main(void)
{
    /* appends one at a time: capacities 64, 128, ... ; contents survive */
    int32_t *v = NULL;
    size_t n = 0, cap = 0;
    int reallocs = 0;
    for (int32_t i = 0; i < 10000; i++) {
        if (n == cap) {
            int32_t *nv = ps_grow(v, &cap, n + 1, sizeof *nv, 64);
            CHECK(nv != NULL);
            if (!nv)
                break;
            v = nv;
            reallocs++;
            CHECK(cap >= n + 1 && cap % 64 == 0 && (cap & (cap - 1)) == 0);
        }
        v[n++] = i * 3;
    }
    CHECK(cap == 16384);
    CHECK_MSG(reallocs == 9, "%d reallocations for 10,000 appends", reallocs);
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= v[i] == (int32_t)i * 3;
    CHECK(ok);

    /* capacity already enough: the same pointer, capacity unchanged */
    size_t before = cap;
    CHECK(ps_grow(v, &cap, 100, sizeof *v, 64) == v && cap == before);

    /* a jump: the smallest doubling >= need */
    char *s = NULL;
    size_t scap = 0;
    s = ps_grow(s, &scap, 1000, 1, 256);
    CHECK(s != NULL && scap == 1024);
    memset(s, 'x', 1000);
    char *s2 = ps_grow(s, &scap, 5000, 1, 256);
    CHECK(s2 != NULL && scap == 8192 && s2[999] == 'x');
    s = s2 ? s2 : s;

    /* need 0 still gives a usable buffer */
    char *z = NULL;
    size_t zcap = 0;
    z = ps_grow(z, &zcap, 0, 1, 0);
    CHECK(z != NULL && zcap == 1);

    /* sizes past PTRDIFF_MAX bytes (never handed to realloc): NULL, buffer and capacity untouched */
    size_t keep = cap;
    CHECK(ps_grow(v, &cap, SIZE_MAX / 2, sizeof *v, 64) == NULL && cap == keep);
    CHECK(ps_grow(s, &scap, SIZE_MAX, 1, 256) == NULL && scap == 8192);
    CHECK(v[n - 1] == (int32_t)(n - 1) * 3);

    free(v);
    free(s);
    free(z);
    TEST_DONE();
}
