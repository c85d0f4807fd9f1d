/* shared_text.c - reference-counted immutable text (contract in shared_text.h). */
#include "shared_text.h"

#include <stdlib.h>

struct shared_text *shared_text_adopt(char *owned, size_t len)
{
    struct shared_text *s = owned ? malloc(sizeof *s) : NULL;
    if (!s) {
        free(owned);
        return NULL;
    }
    *s = (struct shared_text){ .refs = 1, .len = len, .data = owned };
    return s;
}

struct shared_text *shared_text_ref(struct shared_text *s)
{
    s->refs++;
    return s;
}

void shared_text_unref(struct shared_text *s)
{
    if (s && --s->refs == 0) {
        free(s->data);
        free(s);
    }
}
