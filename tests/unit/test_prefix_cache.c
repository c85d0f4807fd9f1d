/* test_prefix_cache - hash chains, matching, tenant isolation, references,
 * LRU eviction of idle blocks only, allocation that evicts, a chain's tail
 * evicted before its head also when the head was evicted and listed again. */
#include <string.h>

#include "common/status.h"
#include "engine/kv_blocks.h"
#include "engine/prefix_cache.h"
#include "test_util.h"

#define BS 4

/* Allocate blocks for tokens[0..n) (whole blocks) and list them as a chain. */
static int32_t publish(prefix_cache *pc, kv_blocks *kv, uint32_t tenant, const int32_t *tokens,
                       int32_t n_blocks, int32_t *blocks)
{
    uint64_t parent = prefix_cache_seed(tenant);
    int32_t inserted = 0;
    for (int32_t i = 0; i < n_blocks; i++) {
        CHECK(prefix_cache_alloc(pc, &blocks[i]) == PS_OK);
        uint64_t h = prefix_cache_hash(parent, tokens + i * BS, BS);
        inserted += prefix_cache_insert(pc, parent, h, tokens + i * BS, blocks[i]);
        parent = h;
    }
    (void)kv;
    return inserted;
}

static void release(kv_blocks *kv, const int32_t *blocks, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        kv_blocks_unref(kv, blocks[i]);
}

/* Children are counted by hash: a block listed after its parent was
 * evicted is the child of the block listed under that hash later, and
 * evicting one child does not make a parent with another child a leaf. */
static void test_children_after_relisting(void)
{
    kv_blocks *kv = NULL;
    prefix_cache *pc = NULL;
    CHECK(kv_blocks_create(8, &kv) == PS_OK);
    CHECK(prefix_cache_create(kv, BS, &pc) == PS_OK);
    const int32_t p0[BS] = { 1, 2, 3, 4 }, p1[BS] = { 5, 6, 7, 8 }, p2[BS] = { 9, 10, 11, 12 };
    const uint64_t s = prefix_cache_seed(7), h0 = prefix_cache_hash(s, p0, BS);
    const uint64_t h1 = prefix_cache_hash(h0, p1, BS), h2 = prefix_cache_hash(h0, p2, BS);
    /* sequence 1 lists p0 as a1; sequence 2 computed p0 too (a2, not listed:
     * the hash is taken) and lists its p1 as b2, a child of a1 by hash */
    int32_t a1, a2, b2, a3, c3;
    CHECK(prefix_cache_alloc(pc, &a1) == PS_OK && prefix_cache_insert(pc, s, h0, p0, a1) == 1);
    CHECK(prefix_cache_alloc(pc, &a2) == PS_OK && prefix_cache_insert(pc, s, h0, p0, a2) == 0);
    CHECK(prefix_cache_alloc(pc, &b2) == PS_OK && prefix_cache_insert(pc, h0, h1, p1, b2) == 1);
    /* sequence 1 ends; a1, the only idle block, is evicted though b2 is its child */
    kv_blocks_unref(kv, a1);
    CHECK(prefix_cache_evict(pc, 1) == 1);
    CHECK(prefix_cache_n_cached(pc) == 1);
    kv_blocks_unref(kv, a2);
    kv_blocks_unref(kv, b2);
    /* sequence 3 lists p0 again (a3) and p2 after it (c3): a3 has two
     * listed children, b2 (listed before a3) and c3 */
    CHECK(prefix_cache_alloc(pc, &a3) == PS_OK && prefix_cache_insert(pc, s, h0, p0, a3) == 1);
    CHECK(prefix_cache_alloc(pc, &c3) == PS_OK && prefix_cache_insert(pc, h0, h2, p2, c3) == 1);
    kv_blocks_unref(kv, a3);
    kv_blocks_unref(kv, c3);
    CHECK(prefix_cache_n_idle(pc) == 3);
    /* LRU leaf first: b2; then c3, the leaf, not a3 (older, but c3's parent) */
    CHECK(prefix_cache_evict(pc, 1) == 1);
    CHECK(prefix_cache_evict(pc, 1) == 1);
    CHECK(prefix_cache_n_cached(pc) == 1);
    int32_t m[1];
    CHECK(prefix_cache_match(pc, 7, p0, BS, 1, m, NULL) == 1 && m[0] == a3); /* the head stayed */
    kv_blocks_unref(kv, m[0]);
    prefix_cache_free(pc);
    CHECK(kv_blocks_n_free(kv) == 8);
    kv_blocks_free(kv);
}

int main(void)
{
    kv_blocks *kv = NULL;
    prefix_cache *pc = NULL;
    CHECK(kv_blocks_create(8, &kv) == PS_OK);
    CHECK(prefix_cache_create(kv, 0, &pc) == PS_EINVAL);
    CHECK(prefix_cache_create(kv, BS, &pc) == PS_OK);

    /* hashes: chained, order- and parent-sensitive */
    int32_t a[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    uint64_t s0 = prefix_cache_seed(0), s1 = prefix_cache_seed(1);
    CHECK(s0 != s1);
    CHECK(prefix_cache_hash(s0, a, BS) == prefix_cache_hash(s0, a, BS));
    CHECK(prefix_cache_hash(s0, a, BS) != prefix_cache_hash(s1, a, BS));
    int32_t swapped[4] = { 2, 1, 3, 4 };
    CHECK(prefix_cache_hash(s0, a, BS) != prefix_cache_hash(s0, swapped, BS));

    /* a sequence publishes 3 full blocks */
    int32_t blk_a[3];
    CHECK(publish(pc, kv, 0, a, 3, blk_a) == 3);
    CHECK(prefix_cache_n_cached(pc) == 3);
    for (int i = 0; i < 3; i++)
        CHECK(kv_blocks_refcount(kv, blk_a[i]) == 2); /* sequence + cache */
    CHECK(prefix_cache_n_idle(pc) == 0);

    /* publishing the same block again, or the same hash, changes nothing */
    CHECK(prefix_cache_insert(pc, s0, prefix_cache_hash(s0, a, BS), a, blk_a[0]) == 0);
    CHECK(kv_blocks_refcount(kv, blk_a[0]) == 2);

    /* matching: longest prefix in whole blocks, capped, references taken */
    int32_t b[14] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99, 12, 13, 14 };
    int32_t m[4];
    uint64_t mh[4];
    CHECK(prefix_cache_match(pc, 0, b, 14, 4, m, mh) == 2); /* third block differs */
    CHECK(m[0] == blk_a[0] && m[1] == blk_a[1]);
    CHECK(mh[1] == prefix_cache_hash(mh[0], a + 4, BS));
    CHECK(kv_blocks_refcount(kv, blk_a[0]) == 3);
    release(kv, m, 2);
    CHECK(prefix_cache_match(pc, 0, a, 12, 1, m, NULL) == 1); /* max_blocks cap */
    release(kv, m, 1);
    CHECK(prefix_cache_match(pc, 0, a, 11, 4, m, NULL) == 2); /* partial 3rd block never matches */
    release(kv, m, 2);
    /* another tenant sees nothing */
    CHECK(prefix_cache_match(pc, 1, a, 12, 4, m, NULL) == 0);

    /* a hash collision (same hash, other tokens) must not match: insert a
     * block under a's first-block hash but with different tokens is refused
     * (hash taken); and a stored entry whose tokens differ is not matched */
    int32_t other[4] = { 40, 41, 42, 43 };
    int32_t xb;
    CHECK(prefix_cache_alloc(pc, &xb) == PS_OK);
    CHECK(prefix_cache_insert(pc, s0, prefix_cache_hash(s0, a, BS), other, xb) == 0);
    /* list `other` under a forged hash, then query with `other`'s real hash path */
    uint64_t forged = prefix_cache_hash(s0, other, BS);
    CHECK(prefix_cache_insert(pc, s0, forged, a, xb) == 1); /* tokens a, hash of other */
    CHECK(prefix_cache_match(pc, 0, other, 4, 1, m, NULL) == 0);   /* tokens compared */
    kv_blocks_unref(kv, xb);
    CHECK(prefix_cache_n_cached(pc) == 4);

    /* the sequence ends: its blocks become idle, still cached */
    release(kv, blk_a, 3);
    CHECK(prefix_cache_n_idle(pc) == 4);
    CHECK(kv_blocks_n_free(kv) == 4);
    CHECK(prefix_cache_match(pc, 0, a, 12, 3, m, NULL) == 3);
    CHECK(prefix_cache_n_idle(pc) == 1); /* only the forged one */
    release(kv, m, 3);

    /* eviction: in-use blocks are never evicted; LRU among idle, chain tail first */
    int32_t hold[2];
    CHECK(prefix_cache_match(pc, 0, a, 8, 2, hold, NULL) == 2); /* a's first 2 blocks in use */
    CHECK(prefix_cache_evict(pc, 1) == 1);
    CHECK(prefix_cache_n_cached(pc) == 3);
    /* the forged block (least recent) went first */
    CHECK(prefix_cache_match(pc, 0, a, 12, 3, m, NULL) == 3);
    release(kv, m, 3);
    CHECK(prefix_cache_evict(pc, 5) == 1); /* only a's 3rd block is idle */
    CHECK(prefix_cache_n_cached(pc) == 2);
    CHECK(kv_blocks_refcount(kv, hold[0]) == 2 && kv_blocks_refcount(kv, hold[1]) == 2);

    /* allocation evicts an idle block when the free list is empty, and
     * reports PS_EFULL when every block is held */
    int32_t got[8], n_got = 0;
    while (n_got < 8 && prefix_cache_alloc(pc, &got[n_got]) == PS_OK)
        n_got++;
    CHECK(n_got == 6); /* 8 blocks minus the 2 in use */
    CHECK(prefix_cache_n_cached(pc) == 2);
    release(kv, hold, 2); /* now idle -> evictable */
    CHECK(prefix_cache_alloc(pc, &got[n_got]) == PS_OK);
    n_got++;
    CHECK(prefix_cache_n_cached(pc) == 1);
    CHECK(prefix_cache_alloc(pc, &got[n_got]) == PS_OK);
    n_got++;
    CHECK(prefix_cache_n_cached(pc) == 0);
    int32_t none = -1;
    CHECK(prefix_cache_alloc(pc, &none) == PS_EFULL);
    release(kv, got, n_got);
    CHECK(kv_blocks_n_free(kv) == 8);

    /* free drops the cache's references */
    int32_t c[2];
    CHECK(publish(pc, kv, 3, a, 2, c) == 2);
    release(kv, c, 2);
    CHECK(kv_blocks_n_free(kv) == 6);
    prefix_cache_free(pc);
    CHECK(kv_blocks_n_free(kv) == 8);
    prefix_cache_free(NULL);
    kv_blocks_free(kv);
    test_children_after_relisting();
    TEST_DONE();
}
