/* prefix_cache.h - reuse of full KV blocks across requests by hash chain.
 *
 * A full block (block_size tokens) at block index i of a token sequence is
 * identified by
 *     h[0]   = H(seed(tenant), tokens[0 .. bs-1])
 *     h[i]   = H(h[i-1],      tokens[i*bs .. (i+1)*bs-1])
 * so equal hashes mean equal whole prefixes (the entry also stores its
 * parent hash and token ids and both are compared, so a 64-bit collision
 * can never hand out a wrong block).  The tenant id seeds the chain: tenants
 * never share cached blocks.
 *
 * Ownership: the cache holds one reference (kv_blocks_ref) on every block
 * it lists.  A cached block whose only holder is the cache (refcount 1) is
 * "idle": it keeps its K/V and can be matched again, and it is the first
 * thing evicted, least recently used first, when the allocator runs dry
 * (prefix_cache_alloc).  A block in use by a sequence is never evicted.
 *
 * Invariants
 *   1. each physical block is listed at most once; each hash at most once.
 *   2. a listed block is full and its K/V is final (no sequence writes it
 *      again: sequences write only past their matched prefix, and matching
 *      stops at least one token before the end of the prompt).
 *   3. refcount(block) >= 1 while listed.
 *
 * Block state (per physical block, as seen by the cache):
 *   FREE --kv_blocks_alloc / prefix_cache_alloc--> PRIVATE (a sequence's)
 *   PRIVATE --prefix_cache_insert--> CACHED+USED (refcount >= 2)
 *   CACHED+USED --sequence unref--> CACHED+IDLE (refcount 1)
 *   CACHED+IDLE --prefix_cache_match--> CACHED+USED
 *   CACHED+IDLE --prefix_cache_evict / prefix_cache_alloc--> FREE
 *
 * Not thread-safe: lives on the engine thread with its kv_blocks.
 */
#ifndef PS_PREFIX_CACHE_H
#define PS_PREFIX_CACHE_H

#include <stdint.h>

#include "kv_blocks.h"

typedef struct prefix_cache prefix_cache;

/* kv is borrowed and must outlive the cache. */
int  prefix_cache_create(kv_blocks *kv, int32_t block_size, prefix_cache **out);
/* Drops the cache's references (idle blocks return to the free list). NULL-safe. */
void prefix_cache_free(prefix_cache *pc);

/* Chain hash of the block tokens[0..bs-1] following `parent`
 * (parent = prefix_cache_seed(tenant) for the first block). */
uint64_t prefix_cache_seed(uint32_t tenant);
uint64_t prefix_cache_hash(uint64_t parent, const int32_t *tokens, int32_t block_size);

/* Longest cached prefix of tokens[0..n_tokens) in whole blocks, at most
 * max_blocks.  Writes the block ids to blocks[] and takes one reference on
 * each for the caller (release with kv_blocks_unref).  *hashes (optional,
 * [max_blocks]) receives the chain hashes.  Returns the number of blocks. */
int32_t prefix_cache_match(prefix_cache *pc, uint32_t tenant, const int32_t *tokens,
                           int32_t n_tokens, int32_t max_blocks, int32_t *blocks,
                           uint64_t *hashes);

/* List `block` (full, K/V computed) as the block whose chain hash is `hash`
 * after `parent`, holding tokens[0..bs-1].  The cache takes its own
 * reference.  A hash or block already listed is left alone (returns 0);
 * returns 1 when inserted. */
int  prefix_cache_insert(prefix_cache *pc, uint64_t parent, uint64_t hash,
                         const int32_t *tokens, int32_t block);

/* Allocate a block, evicting the least recently used idle cached block
 * when none is free.  PS_EFULL when every block is held by a sequence. */
int  prefix_cache_alloc(prefix_cache *pc, int32_t *block);

/* Evict up to n idle blocks (LRU first); returns how many were freed. */
int32_t prefix_cache_evict(prefix_cache *pc, int32_t n);

/* Blocks listed, and how many of those are idle (held only by the cache). */
int32_t prefix_cache_n_cached(const prefix_cache *pc);
int32_t prefix_cache_n_idle(const prefix_cache *pc);

#endif /* PS_PREFIX_CACHE_H */
