/* test_kv_blocks - alloc until full, refcounts, release and reuse. */
#include "engine/kv_blocks.h"
#include "common/status.h"
#include "test_util.h"

int main(void)
{
    kv_blocks *kv = NULL;
    CHECK(kv_blocks_create(0, &kv) == PS_EINVAL);
    kv_blocks_free(NULL);

    CHECK(kv_blocks_create(8, &kv) == PS_OK);
    CHECK(kv_blocks_n_total(kv) == 8);
    CHECK(kv_blocks_n_free(kv) == 8);

    int32_t b[8], seen = 0;
    for (int i = 0; i < 8; i++) {
        CHECK(kv_blocks_alloc(kv, &b[i]) == PS_OK);
        CHECK(b[i] >= 0 && b[i] < 8);
        CHECK(!(seen & (1 << b[i])));
        seen |= 1 << b[i];
        CHECK(kv_blocks_refcount(kv, b[i]) == 1);
    }
    CHECK(kv_blocks_n_free(kv) == 0);
    int32_t x = -1;
    CHECK(kv_blocks_alloc(kv, &x) == PS_EFULL);
    CHECK(x == -1);

    /* shared block: freed only when the last holder lets go */
    kv_blocks_ref(kv, b[3]);
    kv_blocks_ref(kv, b[3]);
    CHECK(kv_blocks_refcount(kv, b[3]) == 3);
    kv_blocks_unref(kv, b[3]);
    kv_blocks_unref(kv, b[3]);
    CHECK(kv_blocks_n_free(kv) == 0);
    kv_blocks_unref(kv, b[3]);
    CHECK(kv_blocks_refcount(kv, b[3]) == 0);
    CHECK(kv_blocks_n_free(kv) == 1);

    /* misuse is ignored: unref/ref of a free or out-of-range block */
    kv_blocks_unref(kv, b[3]);
    kv_blocks_ref(kv, b[3]);
    kv_blocks_unref(kv, -1);
    kv_blocks_unref(kv, 8);
    CHECK(kv_blocks_refcount(kv, b[3]) == 0);
    CHECK(kv_blocks_refcount(kv, 99) == 0);
    CHECK(kv_blocks_n_free(kv) == 1);

    /* reuse */
    CHECK(kv_blocks_alloc(kv, &x) == PS_OK);
    CHECK(x == b[3]);
    CHECK(kv_blocks_alloc(kv, &x) == PS_EFULL);

    for (int i = 0; i < 8; i++)
        kv_blocks_unref(kv, b[i]);
    CHECK(kv_blocks_n_free(kv) == 8);

    /* churn: many alloc/free cycles keep the count consistent */
    for (int r = 0; r < 1000; r++) {
        int32_t y[5];
        for (int i = 0; i < 5; i++)
            CHECK(kv_blocks_alloc(kv, &y[i]) == PS_OK);
        for (int i = 4; i >= 0; i--)
            kv_blocks_unref(kv, y[i]);
    }
    CHECK(kv_blocks_n_free(kv) == 8);
    kv_blocks_free(kv);
    TEST_DONE();
}
