/* grow.h - capacity growth of the growable arrays and text buffers.
 *
 *   char *nb = ps_grow(b->p, &b->cap, b->len + n + 1, 1, 256);
 *   if (!nb)
 *       return ps_error_set(PS_ENOMEM, "...");
 *   b->p = nb;
 *
 * ps_grow returns a buffer of at least max(need, 1) elements of elem bytes
 * that holds p's first *cap elements: p itself when it is large enough,
 * else p reallocated to the smallest max(*cap, min_cap) * 2^k >= need
 * elements (so n appends cost O(n)), with *cap updated.  NULL when out of
 * memory or when the size is past PTRDIFF_MAX bytes: then p and *cap are
 * unchanged and p is still the caller's.  It records no error detail; the
 * caller reports its own. */
#ifndef PS_GROW_H
#define PS_GROW_H

#include <stdint.h>
#include <stdlib.h>

static inline void *ps_grow(void *p, size_t *cap, size_t need, size_t elem, size_t min_cap)
{
    if (need == 0)
        need = 1;
    if (p && need <= *cap)
        return p;
    size_t c = *cap > min_cap ? *cap : min_cap;
    if (c == 0)
        c = 1;
    while (c < need)
        c = c > SIZE_MAX / 2 ? need : c * 2;
    if (elem == 0 || c > (size_t)PTRDIFF_MAX / elem)   /* no object is larger */
        return NULL;
    void *np = realloc(p, c * elem);
    if (!np)
        return NULL;
    *cap = c;
    return np;
}

#endif /* PS_GROW_H */
