/* kv_blocks.h - allocator of physical KV-cache blocks with reference counts.
 *
 * Invariants: a block is either free (refcount 0, on the free list) or used
 * (refcount >= 1).  kv_blocks_alloc takes a free block to refcount 1;
 * kv_blocks_ref adds a holder (shared prefix); kv_blocks_unref drops one and
 * returns the block to the free list at 0.
 */
#ifndef PS_KV_BLOCKS_H
#define PS_KV_BLOCKS_H

#include <stdint.h>

typedef struct kv_blocks kv_blocks;

int     kv_blocks_create(int32_t n_blocks, kv_blocks **out);
void    kv_blocks_free(kv_blocks *kv); /* NULL-safe */
int     kv_blocks_alloc(kv_blocks *kv, int32_t *block); /* PS_EFULL when none free */
void    kv_blocks_ref(kv_blocks *kv, int32_t block);
void    kv_blocks_unref(kv_blocks *kv, int32_t block);
int32_t kv_blocks_refcount(const kv_blocks *kv, int32_t block);
int32_t kv_blocks_n_free(const kv_blocks *kv);
int32_t kv_blocks_n_total(const kv_blocks *kv);

#endif /* PS_KV_BLOCKS_H */
