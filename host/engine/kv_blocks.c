/* kv_blocks.c - refcounted free-list allocator of physical KV blocks.
 *
 * State of a block b:
 *   FREE (refcount 0, on the stack free[0..n_free-1])
 *     --kv_blocks_alloc-->  USED (refcount 1)
 *   USED --kv_blocks_ref--> USED (refcount + 1)
 *   USED --kv_blocks_unref--> USED (refcount - 1) or FREE when it reaches 0.
 * The free list is a LIFO stack, so a just-released block is reused first
 * (its cache lines are the warmest).  Misuse (ref/unref of a free or out of
 * range block) is a caller bug and is ignored rather than corrupting state.
 */
#include "kv_blocks.h"

#include <stdlib.h>

#include "../common/status.h"

struct kv_blocks {
    int32_t  n_total;
    int32_t  n_free;
    int32_t *free;     /* [n_total] stack of free block ids, top at n_free-1 */
    int32_t *refcount; /* [n_total] */
};

int kv_blocks_create(int32_t n_blocks, kv_blocks **out)
{
    *out = NULL;
    if (n_blocks < 1)
        return ps_error_set(PS_EINVAL, "kv_blocks: n_blocks %d < 1", (int)n_blocks);
    struct kv_blocks *kv = calloc(1, sizeof *kv);
    if (!kv)
        goto fail;
    kv->free = malloc((size_t)n_blocks * sizeof *kv->free);
    kv->refcount = calloc((size_t)n_blocks, sizeof *kv->refcount);
    if (!kv->free || !kv->refcount)
        goto fail;
    kv->n_total = n_blocks;
    kv->n_free = n_blocks;
    /* Lowest ids on top so allocation order is 0, 1, 2, ... */
    for (int32_t i = 0; i < n_blocks; i++)
        kv->free[i] = n_blocks - 1 - i;
    *out = kv;
    return PS_OK;
fail:
    kv_blocks_free(kv);
    return ps_error_set(PS_ENOMEM, "kv_blocks: out of memory for %d blocks", (int)n_blocks);
}

void kv_blocks_free(kv_blocks *kv)
{
    if (!kv)
        return;
    free(kv->refcount);
    free(kv->free);
    free(kv);
}

int kv_blocks_alloc(kv_blocks *kv, int32_t *block)
{
    if (kv->n_free == 0)
        return ps_error_set(PS_EFULL, "kv_blocks: all %d blocks in use", (int)kv->n_total);
    int32_t b = kv->free[--kv->n_free];
    kv->refcount[b] = 1;
    *block = b;
    return PS_OK;
}

void kv_blocks_ref(kv_blocks *kv, int32_t block)
{
    if (block < 0 || block >= kv->n_total || kv->refcount[block] == 0)
        return;
    kv->refcount[block]++;
}

void kv_blocks_unref(kv_blocks *kv, int32_t block)
{
    if (block < 0 || block >= kv->n_total || kv->refcount[block] == 0)
        return;
    if (--kv->refcount[block] == 0)
        kv->free[kv->n_free++] = block;
}

int32_t kv_blocks_refcount(const kv_blocks *kv, int32_t block)
{
    if (block < 0 || block >= kv->n_total)
        return 0;
    return kv->refcount[block];
}

int32_t kv_blocks_n_free(const kv_blocks *kv)
{
    return kv->n_free;
}

int32_t kv_blocks_n_total(const kv_blocks *kv)
{
    return kv->n_total;
}
