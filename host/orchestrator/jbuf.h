/* jbuf.h - a growable text buffer that starts in caller memory (usually the
 * stack) and compact JSON printing into it, byte for byte what
 * cJSON_PrintUnformatted prints.  The loop prints several JSON texts per
 * agent call (request body, events); cJSON 1.7.15 prints every number with
 * sprintf("%1.15g") and re-reads it with sscanf, and grows its buffer with
 * realloc.  Here integers (|x| < 2^53) are printed by hand and the
 * rest as cJSON does, into one buffer - except a number whose 15 digits
 * would read back as infinity (near DBL_MAX), which gets 17 (cJSON keeps
 * the 15: a text that no longer parses to the number).
 *
 * Usage:
 *   char stack[4096];
 *   struct jbuf b;
 *   jbuf_init(&b, stack, sizeof stack);
 *   jbuf_json(&b, item);  jbuf_add(&b, ",\"x\":1", 6);
 *   if (b.oom) ...;       use b.p / b.len (NUL-terminated)
 *   char *owned = jbuf_take(&b);   (or jbuf_free(&b))
 */
#ifndef PS_ORCH_JBUF_H
#define PS_ORCH_JBUF_H

#include <stddef.h>
#include <string.h>
#include <cjson/cJSON.h>

struct jbuf {
    char  *p;        /* text, always NUL-terminated */
    size_t len, cap; /* cap includes the NUL's byte */
    int    heap;     /* p is malloc'd (owned) */
    int    oom;      /* an append failed for lack of memory, or an item could
                        not be printed (as cJSON: a raw item without text, an
                        invalid type); the text is then unusable */
};

/* Start empty in stack[0..cap) (cap >= 1; not owned). */
void  jbuf_init(struct jbuf *b, char *stack, size_t cap);
/* Append n bytes.  Inline: the loop appends ~1,500 short pieces per task
 * (keys, punctuation), most of them constants the compiler copies in a
 * store or two; jbuf_add_grow takes the rest. */
void  jbuf_add_grow(struct jbuf *b, const char *s, size_t n);
static inline void jbuf_add(struct jbuf *b, const char *s, size_t n)
{
    if (!b->oom && b->len + n + 1 <= b->cap) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = 0;
        return;
    }
    jbuf_add_grow(b, s, n);
}
/* Append the decimal digits of v (no printf: it runs several times per
 * agent call on the loop). */
void  jbuf_add_int(struct jbuf *b, long long v);
/* Append `item` as compact JSON (its key, if any, is not printed).  Values
 * nest up to JBUF_MAX_DEPTH levels: parsed values reach CJSON_NESTING_LIMIT,
 * and a {{ref}} to a call's result puts one under a few more (args, an
 * event); deeper ones set b->oom (the text is refused, never altered). */
#define JBUF_MAX_DEPTH (CJSON_NESTING_LIMIT + 64)
void  jbuf_json(struct jbuf *b, const cJSON *item);
/* The text as a malloc'd string the caller frees (the buffer is reset);
 * NULL when out of memory (now or earlier: b->oom). */
char *jbuf_take(struct jbuf *b);
/* Free a heap buffer; NULL-safe on b->p. */
void  jbuf_free(struct jbuf *b);

#endif /* PS_ORCH_JBUF_H */
