/* str_index.h - a map from C strings to pointers, for lookups by id that
 * must not cost a scan per call (a task's ledger, an executor group's
 * calls: a request may hold 100,000 calls).  Open addressing with linear
 * probing on a 64-bit FNV-1a hash, at most half full; no removal (entries
 * live as long as the map's owner).  Keys are borrowed: each must stay
 * valid, unchanged, while the map holds it.  Not thread-safe. */
#ifndef PS_COMMON_STR_INDEX_H
#define PS_COMMON_STR_INDEX_H

#include <stddef.h>
#include <stdint.h>

struct str_index_slot {
    uint64_t    hash;
    const char *key;    /* NULL: empty */
    void       *val;
};

struct str_index {
    struct str_index_slot *slots;
    size_t                 cap, n;   /* cap: 0 or a power of two */
};

/* Map key to val unless key is mapped already (the first one stays).
 * PS_OK, or PS_ENOMEM (the map unchanged). */
int   str_index_put(struct str_index *ix, const char *key, void *val);
/* The value of key, or NULL. */
void *str_index_get(const struct str_index *ix, const char *key);
/* Frees the slots (not keys or values); the map is empty and usable after. */
void  str_index_free(struct str_index *ix);

#endif /* PS_COMMON_STR_INDEX_H */
