/* constraint.c - a compiled grammar as the engine's token constraint
 * (scheduler.h struct token_constraint, grammar.h grammar_constraint). */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "grammar.h"

/* One sequence: the matcher plus a scratch mask for a model vocabulary
 * smaller than the tokenizer's (then only the model's ids are copied). */
struct gc_matcher {
    grammar_matcher *m;
    size_t           words;   /* grammar_mask_words of the vocab */
    uint32_t        *scratch; /* [words] when needed             */
};

static void gc_retain(void *ctx)
{
    grammar_ref(ctx);
}

static void gc_release(void *ctx)
{
    grammar_free(ctx);
}

static void gc_matcher_free(void *p)
{
    struct gc_matcher *gm = p;
    if (!gm)
        return;
    grammar_matcher_free(gm->m);
    free(gm->scratch);
    free(gm);
}

static int gc_matcher_new(void *ctx, void **out)
{
    *out = NULL;
    struct gc_matcher *gm = calloc(1, sizeof *gm);
    if (!gm)
        return ps_error_set(PS_ENOMEM, "grammar: out of memory");
    gm->words = grammar_mask_words(grammar_vocab_of(ctx));
    int rc = grammar_matcher_create(ctx, &gm->m);
    if (rc) {
        gc_matcher_free(gm);
        return rc;
    }
    *out = gm;
    return PS_OK;
}

static int gc_fill_mask(void *p, uint32_t *mask, size_t n_words)
{
    struct gc_matcher *gm = p;
    if (n_words >= gm->words) {
        int rc = grammar_matcher_fill_mask(gm->m, mask);
        if (!rc && n_words > gm->words)
            memset(mask + gm->words, 0, (n_words - gm->words) * sizeof *mask);
        return rc;
    }
    if (!gm->scratch && !(gm->scratch = malloc(gm->words * sizeof *gm->scratch)))
        return ps_error_set(PS_ENOMEM, "grammar: out of memory");
    int rc = grammar_matcher_fill_mask(gm->m, gm->scratch);
    if (!rc)
        memcpy(mask, gm->scratch, n_words * sizeof *mask);
    return rc;
}

static int gc_accept(void *p, int32_t token)
{
    struct gc_matcher *gm = p;
    return grammar_matcher_accept(gm->m, token);
}

static bool gc_is_done(const void *p)
{
    const struct gc_matcher *gm = p;
    return grammar_matcher_is_done(gm->m);
}

static const struct token_constraint_ops gc_ops = {
    gc_retain, gc_release, gc_matcher_new, gc_matcher_free, gc_fill_mask, gc_accept, gc_is_done,
};

struct token_constraint grammar_constraint(grammar *g)
{
    struct token_constraint c = { g ? &gc_ops : NULL, g };
    return c;
}
