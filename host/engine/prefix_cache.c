/* prefix_cache.c - hash-chained full-block cache over kv_blocks.
 *
 * Storage is indexed by physical block id (a block is listed at most once):
 * its chain hash, parent hash, token ids and last-use tick.  A chained hash
 * table (buckets -> next[]) maps a chain hash to its block.  Eviction scans
 * the listed blocks for the idle one (refcount 1) used least recently,
 * preferring blocks with no listed child so that chains shrink from the
 * tail and the shared head stays matchable.  A scan is O(n_blocks), run only
 * when the allocator is dry; n_blocks is a few thousand.
 *
 * Children are counted by hash, not kept as a per-block counter: a second
 * chained table (pbuckets -> pnext[]) lists the blocks by parent hash, so a
 * block's listed children are exactly the listed blocks whose parent is its
 * hash.  (A counter per block drifted: a block listed after its parent was
 * evicted - the parent still held by another sequence under the same hash,
 * or evicted as a non-leaf when no idle leaf was left - was counted by
 * nobody, and a parent listed again under the same hash started at 0
 * children and was evicted as a leaf before them.)
 */
#include "prefix_cache.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/status.h"

struct prefix_cache {
    kv_blocks *kv;       /* borrowed */
    int32_t    bs;       /* block size (tokens)            */
    int32_t    n_blocks; /* physical blocks in kv          */
    int32_t    n_listed;
    uint32_t   n_buckets; /* power of two                  */
    int32_t   *buckets;  /* [n_buckets] first block or -1  */
    int32_t   *next;     /* [n_blocks] bucket chain or -1  */
    bool      *listed;   /* [n_blocks]                     */
    uint64_t  *hash;     /* [n_blocks]                     */
    uint64_t  *parent;   /* [n_blocks]                     */
    uint64_t  *last_use; /* [n_blocks] tick                */
    int32_t   *pbuckets; /* [n_buckets] first block by parent hash or -1 */
    int32_t   *pnext;    /* [n_blocks] parent-hash chain or -1 */
    int32_t   *tokens;   /* [n_blocks][bs]                 */
    uint64_t   tick;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t prefix_cache_seed(uint32_t tenant)
{
    return mix64(0x7061726173657276ull ^ ((uint64_t)tenant << 1));
}

uint64_t prefix_cache_hash(uint64_t parent, const int32_t *tokens, int32_t block_size)
{
    uint64_t h = mix64(parent + 0x9e3779b97f4a7c15ull);
    for (int32_t i = 0; i < block_size; i++)
        h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)));
    return h;
}

int prefix_cache_create(kv_blocks *kv, int32_t block_size, prefix_cache **out)
{
    *out = NULL;
    if (!kv || block_size < 1)
        return ps_error_set(PS_EINVAL, "prefix_cache: bad arguments (block_size %d)", (int)block_size);
    struct prefix_cache *pc = calloc(1, sizeof *pc);
    if (!pc)
        return ps_error_set(PS_ENOMEM, "prefix_cache: out of memory");
    pc->kv = kv;
    pc->bs = block_size;
    pc->n_blocks = kv_blocks_n_total(kv);
    pc->n_buckets = 16;
    while (pc->n_buckets < 2u * (uint32_t)pc->n_blocks)
        pc->n_buckets <<= 1;
    size_t nb = (size_t)pc->n_blocks;
    pc->buckets = malloc(pc->n_buckets * sizeof *pc->buckets);
    pc->next = malloc(nb * sizeof *pc->next);
    pc->listed = calloc(nb, sizeof *pc->listed);
    pc->hash = calloc(nb, sizeof *pc->hash);
    pc->parent = calloc(nb, sizeof *pc->parent);
    pc->last_use = calloc(nb, sizeof *pc->last_use);
    pc->pbuckets = malloc(pc->n_buckets * sizeof *pc->pbuckets);
    pc->pnext = malloc(nb * sizeof *pc->pnext);
    pc->tokens = malloc(nb * (size_t)block_size * sizeof *pc->tokens);
    if (!pc->buckets || !pc->next || !pc->listed || !pc->hash || !pc->parent || !pc->last_use ||
        !pc->pbuckets || !pc->pnext || !pc->tokens) {
        prefix_cache_free(pc);
        return ps_error_set(PS_ENOMEM, "prefix_cache: out of memory for %d blocks", (int)pc->n_blocks);
    }
    for (uint32_t i = 0; i < pc->n_buckets; i++)
        pc->buckets[i] = pc->pbuckets[i] = -1;
    for (size_t i = 0; i < nb; i++)
        pc->next[i] = pc->pnext[i] = -1;
    *out = pc;
    return PS_OK;
}

void prefix_cache_free(prefix_cache *pc)
{
    if (!pc)
        return;
    if (pc->listed)
        for (int32_t b = 0; b < pc->n_blocks; b++)
            if (pc->listed[b])
                kv_blocks_unref(pc->kv, b);
    free(pc->tokens);
    free(pc->pnext);
    free(pc->pbuckets);
    free(pc->last_use);
    free(pc->parent);
    free(pc->hash);
    free(pc->listed);
    free(pc->next);
    free(pc->buckets);
    free(pc);
}

static int32_t lookup(const prefix_cache *pc, uint64_t hash)
{
    for (int32_t b = pc->buckets[hash & (pc->n_buckets - 1)]; b >= 0; b = pc->next[b])
        if (pc->hash[b] == hash)
            return b;
    return -1;
}

/* Listed blocks whose parent hash is `hash` (the children of the block
 * listed under it, listed or not itself). */
static int32_t n_children(const prefix_cache *pc, uint64_t hash)
{
    int32_t n = 0;
    for (int32_t b = pc->pbuckets[hash & (pc->n_buckets - 1)]; b >= 0; b = pc->pnext[b])
        n += pc->parent[b] == hash;
    return n;
}

/* Remove `block` from the chain starting at *head linked through link[]. */
static void chain_remove(int32_t *head, int32_t *link, int32_t block)
{
    int32_t *pp = head;
    while (*pp >= 0 && *pp != block)
        pp = &link[*pp];
    if (*pp == block)
        *pp = link[block];
    link[block] = -1;
}

static void unlink_block(prefix_cache *pc, int32_t block)
{
    chain_remove(&pc->buckets[pc->hash[block] & (pc->n_buckets - 1)], pc->next, block);
    chain_remove(&pc->pbuckets[pc->parent[block] & (pc->n_buckets - 1)], pc->pnext, block);
    pc->listed[block] = false;
    pc->n_listed--;
}

int32_t prefix_cache_match(prefix_cache *pc, uint32_t tenant, const int32_t *tokens,
                           int32_t n_tokens, int32_t max_blocks, int32_t *blocks,
                           uint64_t *hashes)
{
    int32_t n_full = n_tokens / pc->bs;
    if (n_full > max_blocks)
        n_full = max_blocks;
    uint64_t parent = prefix_cache_seed(tenant);
    int32_t n = 0;
    for (; n < n_full; n++) {
        const int32_t *tk = tokens + (size_t)n * pc->bs;
        uint64_t h = prefix_cache_hash(parent, tk, pc->bs);
        int32_t b = lookup(pc, h);
        if (b < 0 || pc->parent[b] != parent ||
            memcmp(pc->tokens + (size_t)b * pc->bs, tk, (size_t)pc->bs * sizeof *tk))
            break;
        blocks[n] = b;
        if (hashes)
            hashes[n] = h;
        parent = h;
    }
    /* Deeper blocks get older ticks: eviction takes a chain's tail first. */
    pc->tick += (uint64_t)n + 1;
    for (int32_t i = 0; i < n; i++) {
        kv_blocks_ref(pc->kv, blocks[i]);
        pc->last_use[blocks[i]] = pc->tick - (uint64_t)i;
    }
    return n;
}

int prefix_cache_insert(prefix_cache *pc, uint64_t parent, uint64_t hash,
                        const int32_t *tokens, int32_t block)
{
    if (block < 0 || block >= pc->n_blocks || pc->listed[block] || lookup(pc, hash) >= 0)
        return 0;
    if (kv_blocks_refcount(pc->kv, block) < 1)
        return 0;
    kv_blocks_ref(pc->kv, block);
    pc->listed[block] = true;
    pc->n_listed++;
    pc->hash[block] = hash;
    pc->parent[block] = parent;
    pc->last_use[block] = ++pc->tick;
    memcpy(pc->tokens + (size_t)block * pc->bs, tokens, (size_t)pc->bs * sizeof *tokens);
    uint32_t slot = (uint32_t)(hash & (pc->n_buckets - 1));
    pc->next[block] = pc->buckets[slot];
    pc->buckets[slot] = block;
    uint32_t pslot = (uint32_t)(parent & (pc->n_buckets - 1));
    pc->pnext[block] = pc->pbuckets[pslot];
    pc->pbuckets[pslot] = block;
    return 1;
}

/* The idle block to evict next, or -1. */
static int32_t evict_candidate(const prefix_cache *pc)
{
    int32_t best = -1, best_leaf = -1;
    for (int32_t b = 0; b < pc->n_blocks; b++) {
        if (!pc->listed[b] || kv_blocks_refcount(pc->kv, b) != 1)
            continue;
        if (best < 0 || pc->last_use[b] < pc->last_use[best])
            best = b;
        if ((best_leaf < 0 || pc->last_use[b] < pc->last_use[best_leaf]) && n_children(pc, pc->hash[b]) == 0)
            best_leaf = b;
    }
    return best_leaf >= 0 ? best_leaf : best;
}

int32_t prefix_cache_evict(prefix_cache *pc, int32_t n)
{
    int32_t done = 0;
    while (done < n) {
        int32_t b = evict_candidate(pc);
        if (b < 0)
            break;
        unlink_block(pc, b);
        kv_blocks_unref(pc->kv, b);
        done++;
    }
    return done;
}

int prefix_cache_alloc(prefix_cache *pc, int32_t *block)
{
    if (kv_blocks_n_free(pc->kv) == 0 && prefix_cache_evict(pc, 1) == 0)
        return ps_error_set(PS_EFULL, "prefix_cache: all %d KV blocks are held by sequences",
                            (int)pc->n_blocks);
    return kv_blocks_alloc(pc->kv, block);
}

int32_t prefix_cache_n_cached(const prefix_cache *pc)
{
    return pc->n_listed;
}

int32_t prefix_cache_n_idle(const prefix_cache *pc)
{
    int32_t n = 0;
    for (int32_t b = 0; b < pc->n_blocks; b++)
        if (pc->listed[b] && kv_blocks_refcount(pc->kv, b) == 1)
            n++;
    return n;
}
