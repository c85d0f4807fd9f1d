/* shared_text.h - immutable text with a reference count, for a reply body
 * that several connections write at their own pace and that may outlive
 * what it was printed from (a finished task's summary: one copy however
 * many clients read it slowly, freed by the last writer).  Not
 * thread-safe: every reference is taken and dropped on one thread. */
#ifndef PS_COMMON_SHARED_TEXT_H
#define PS_COMMON_SHARED_TEXT_H

#include <stddef.h>
#include <stdint.h>

struct shared_text {
    int32_t refs;
    size_t  len;
    char   *data;   /* NUL-terminated, len bytes before the NUL */
};

/* One reference to `owned` (malloc'd, NUL at [len]; taken, freed with the
 * text even on failure).  NULL when out of memory or owned is NULL. */
struct shared_text *shared_text_adopt(char *owned, size_t len);
struct shared_text *shared_text_ref(struct shared_text *s);
/* Drops one reference; frees the text with the last.  NULL-safe. */
void                shared_text_unref(struct shared_text *s);

#endif /* PS_COMMON_SHARED_TEXT_H */
