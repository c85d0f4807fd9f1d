/* str_index.c - see str_index.h. */
#include "str_index.h"

#include <stdlib.h>
#include <string.h>

#include "status.h"

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct str_index_slot *find(const struct str_index *ix, const char *key, uint64_t h)
{
    size_t mask = ix->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct str_index_slot *s = &ix->slots[i];
        if (!s->key || (s->hash == h && !strcmp(s->key, key)))
            return s;
    }
}

static int grow(struct str_index *ix)
{
    size_t cap = ix->cap ? ix->cap * 2 : 16;
    if (cap < ix->cap)
        return ps_error_set(PS_ENOMEM, "index: too many entries");
    struct str_index_slot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return ps_error_set(PS_ENOMEM, "index: out of memory");
    struct str_index old = *ix;
    ix->slots = slots;
    ix->cap = cap;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i].key)
            *find(ix, old.slots[i].key, old.slots[i].hash) = old.slots[i];
    free(old.slots);
    return PS_OK;
}

int str_index_put(struct str_index *ix, const char *key, void *val)
{
    if ((ix->n + 1) * 2 > ix->cap && grow(ix))
        return PS_ENOMEM;
    uint64_t h = fnv1a(key);
    struct str_index_slot *s = find(ix, key, h);
    if (s->key)
        return PS_OK;               /* mapped already: the first stays */
    *s = (struct str_index_slot){ .hash = h, .key = key, .val = val };
    ix->n++;
    return PS_OK;
}

void *str_index_get(const struct str_index *ix, const char *key)
{
    if (!ix->cap || !key)
        return NULL;
    struct str_index_slot *s = find(ix, key, fnv1a(key));
    return s->key ? s->val : NULL;
}

void str_index_free(struct str_index *ix)
{
    free(ix->slots);
    *ix = (struct str_index){ 0 };
}
