/* constraint.c - a compiled grammar as the engine's token constraint
 * (scheduler.h struct token_constraint, grammar.h grammar_constraint). */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "grammar.h"

/* One sequence: the matcher plus a scratch mask for a model vocabulary
 * smaller than the tokenizer's (then only the model's ids are copied).
 * Lazy matchers start undecided: the first token picks grammar or free. */
enum { GC_GRAMMAR, GC_UNDECIDED, GC_FREE };

struct gc_matcher {
    grammar_matcher *m;
    const grammar_vocab *v;
    size_t           words;   /* grammar_mask_words of the vocab */
    uint32_t        *scratch; /* [words] when needed             */
    uint32_t        *first;   /* lazy: [words] the grammar's first-token mask */
    int              mode;
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
    free(gm->first);
    free(gm);
}

static int gc_matcher_new(void *ctx, void **out)
{
    *out = NULL;
    struct gc_matcher *gm = calloc(1, sizeof *gm);
    if (!gm)
        return ps_error_set(PS_ENOMEM, "grammar: out of memory");
    gm->v = grammar_vocab_of(ctx);
    gm->words = grammar_mask_words(gm->v);
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
    if (gm->mode == GC_FREE)
        return PS_OK;
    if (gm->mode == GC_UNDECIDED) {
        bool in_grammar = gm->first && token >= 0 && (size_t)token / 32 < gm->words &&
                          ((gm->first[token / 32] >> (token % 32)) & 1u);
        gm->mode = in_grammar ? GC_GRAMMAR : GC_FREE;
        if (!in_grammar)
            return PS_OK;
    }
    return grammar_matcher_accept(gm->m, token);
}

static bool gc_is_done(const void *p)
{
    const struct gc_matcher *gm = p;
    return gm->mode == GC_GRAMMAR && grammar_matcher_is_done(gm->m);
}

static const struct token_constraint_ops gc_ops = {
    gc_retain, gc_release, gc_matcher_new, gc_matcher_free, gc_fill_mask, gc_accept, gc_is_done,
};

static int gc_lazy_matcher_new(void *ctx, void **out)
{
    int rc = gc_matcher_new(ctx, out);
    if (!rc)
        ((struct gc_matcher *)*out)->mode = GC_UNDECIDED;
    return rc;
}

/* Undecided: the grammar's first tokens, plus every token whose first byte
 * none of them starts with (free text), plus ids past the grammar's
 * vocabulary; free: everything. */
static int gc_lazy_fill_mask(void *p, uint32_t *mask, size_t n_words)
{
    struct gc_matcher *gm = p;
    if (gm->mode == GC_GRAMMAR)
        return gc_fill_mask(p, mask, n_words);
    memset(mask, 0xFF, n_words * sizeof *mask);
    if (gm->mode == GC_FREE)
        return PS_OK;
    if (!gm->first) {
        if (!(gm->first = malloc(gm->words * sizeof *gm->first)))
            return ps_error_set(PS_ENOMEM, "grammar: out of memory");
        int rc = grammar_matcher_fill_mask(gm->m, gm->first);
        if (rc) {
            free(gm->first);
            gm->first = NULL;
            return rc;
        }
    }
    int32_t n = grammar_vocab_n_vocab(gm->v);
    uint8_t starts[256] = { 0 };
    for (int32_t id = 0; id < n; id++) {
        size_t len;
        const char *b = grammar_vocab_piece(gm->v, id, &len);
        if (len && ((gm->first[id / 32] >> (id % 32)) & 1u))
            starts[(uint8_t)b[0]] = 1;
    }
    for (int32_t id = 0; id < n && (size_t)id / 32 < n_words; id++) {
        size_t len;
        const char *b = grammar_vocab_piece(gm->v, id, &len);
        bool in_grammar = (gm->first[id / 32] >> (id % 32)) & 1u;
        if (len && starts[(uint8_t)b[0]] && !in_grammar)
            mask[id / 32] &= ~(1u << (id % 32));
    }
    return PS_OK;
}

static const struct token_constraint_ops gc_lazy_ops = {
    gc_retain, gc_release, gc_lazy_matcher_new, gc_matcher_free, gc_lazy_fill_mask, gc_accept, gc_is_done,
};

struct token_constraint grammar_constraint_lazy(grammar *g)
{
    struct token_constraint c = { g ? &gc_lazy_ops : NULL, g };
    return c;
}

struct token_constraint grammar_constraint(grammar *g)
{
    struct token_constraint c = { g ? &gc_ops : NULL, g };
    return c;
}
