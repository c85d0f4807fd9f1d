/* grammar.c - vocabulary trie, per-state token decisions, matcher, cache.
 *
 * Matcher state: a set of stacks.  A stack is (state, parent): `state` is a
 * DFA state that consumes bytes (the top frame), `parent` a hash-consed node
 * (return state, parent) of the matcher's pool, or EMPTY at the bottom of
 * the document.  expand() normalises a stack after a move: it keeps it if
 * the state consumes bytes, pushes a frame for every call edge, and pops to
 * the parent when the state is final (popping EMPTY = document complete).
 *
 * Token decisions (the adaptive token-mask cache): for every byte-consuming
 * DFA state ("position") the vocabulary trie is walked once at compile time
 * from the stack (state, BOTTOM), where BOTTOM stands for an unknown parent.
 * A token is
 *   accepted   if some path consumes it without popping BOTTOM with bytes
 *              left (popping exactly at its end is fine: the parent's
 *              continuation is live by construction),
 *   uncertain  if no path accepts it but some path popped BOTTOM with bytes
 *              left (the answer depends on the real parent),
 *   rejected   otherwise.
 * Positions of the document rule, when nothing calls it, start from EMPTY
 * instead, so they have no uncertain tokens.  At match time a mask is the
 * union, over the stacks, of each position's accepted set plus its uncertain
 * tokens re-checked against the real stack.  Non-recursive schemas compile
 * to a single rule, so their masks are pure table look-ups.
 */
#include "grammar.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/status.h"
#include "grammar_internal.h"
#include "orchestrator/json_alloc.h"

#define EMPTY       (-1)
#define BOTTOM      (-2)
#define MAX_EXPAND  64     /* nested calls/pops in one expand()            */
#define WALK_SETCAP 64     /* stacks per depth in a compile-time walk      */
#define LIST_MAX    2048   /* accepted sets up to this size stored as lists */
#define CACHE_CAP   64

/* ---- vocabulary -------------------------------------------------------- */

struct cache_entry {
    uint64_t hash;
    uint32_t flags;
    int32_t  max_docs;
    char    *text;
    size_t   len;
    grammar *g;
    uint64_t used;
};

struct grammar_vocab {
    int32_t  n_vocab;
    size_t   words;
    char    *bytes;     /* all token bytes                                  */
    int64_t *off;       /* [n_vocab + 1]                                    */
    uint8_t *usable;    /* [n_vocab] token may appear inside a document     */
    int32_t *eog;
    int32_t  n_eog;
    int32_t  max_len;
    /* trie in preorder: node i has byte, depth (1-based), the index just
     * past its subtree, and the tokens ending there (range of `sorted`) */
    int32_t  n_trie;
    uint8_t *t_byte;
    int32_t *t_depth, *t_end, *t_tok, *t_ntok;
    int32_t *sorted;
    /* tokens holding '\n' (document separators, grammar.h max_docs) and
     * how many each holds */
    int32_t *nl_ids, *nl_cnt;
    int32_t  n_nl;
    pthread_mutex_t lock;
    struct cache_entry cache[CACHE_CAP];
    uint64_t tick;
};

struct pos_info {
    int32_t acc_n;      /* accepted count                                   */
    int32_t acc_off;    /* list: offset into ids; bitset: -1                */
    int32_t bits;       /* bitset index when acc_off < 0                    */
    int32_t unc_off, unc_n;
};

struct grammar {
    atomic_int     refs;
    grammar_vocab *v;
    struct fsm     f;
    int32_t       *state_pos;   /* [n_states] -> position or -1 */
    struct pos_info *pos;
    int32_t        n_pos;
    int32_t       *ids;
    size_t         n_ids, cap_ids;
    uint32_t      *bits;        /* [n_bits * words] */
    int32_t        n_bits, cap_bits;
    struct grammar_stats st;
    int            cached;      /* lives in the vocab cache */
    int32_t        max_docs;    /* >= 1 (grammar_options.max_docs) */
};

size_t grammar_mask_words(const grammar_vocab *v) { return v->words; }

const char *grammar_vocab_piece(const grammar_vocab *v, int32_t id, size_t *len)
{
    if (id < 0 || id >= v->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = (size_t)(v->off[id + 1] - v->off[id]);
    return v->bytes + v->off[id];
}
int32_t grammar_vocab_n_vocab(const grammar_vocab *v) { return v->n_vocab; }

static const grammar_vocab *sort_vocab;
static int cmp_tok(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const grammar_vocab *v = sort_vocab;
    int64_t lx = v->off[x + 1] - v->off[x], ly = v->off[y + 1] - v->off[y];
    int c = memcmp(v->bytes + v->off[x], v->bytes + v->off[y], (size_t)(lx < ly ? lx : ly));
    if (c)
        return c;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

static int build_trie(grammar_vocab *v)
{
    int32_t n = 0;
    for (int32_t i = 0; i < v->n_vocab; i++)
        n += v->usable[i];
    v->sorted = malloc(((size_t)n + 1) * sizeof *v->sorted);
    int64_t total = 0;
    for (int32_t i = 0; i < v->n_vocab; i++)
        if (v->usable[i])
            total += v->off[i + 1] - v->off[i];
    size_t cap = (size_t)total + 1;
    v->t_byte = malloc(cap);
    v->t_depth = malloc(cap * sizeof *v->t_depth);
    v->t_end = malloc(cap * sizeof *v->t_end);
    v->t_tok = malloc(cap * sizeof *v->t_tok);
    v->t_ntok = malloc(cap * sizeof *v->t_ntok);
    int32_t *open = malloc(((size_t)v->max_len + 2) * sizeof *open);
    if (!v->sorted || !v->t_byte || !v->t_depth || !v->t_end || !v->t_tok || !v->t_ntok || !open) {
        free(open);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    n = 0;
    for (int32_t i = 0; i < v->n_vocab; i++)
        if (v->usable[i])
            v->sorted[n++] = i;
    pthread_mutex_lock(&sort_lock);
    sort_vocab = v;
    qsort(v->sorted, (size_t)n, sizeof *v->sorted, cmp_tok);
    pthread_mutex_unlock(&sort_lock);

    int32_t nt = 0, depth = 0; /* open[1..depth] are the nodes of the current path */
    const char *prev = NULL;
    int64_t prev_len = 0;
    for (int32_t k = 0; k < n; k++) {
        int32_t id = v->sorted[k];
        const char *w = v->bytes + v->off[id];
        int64_t len = v->off[id + 1] - v->off[id];
        int64_t lcp = 0;
        while (prev && lcp < len && lcp < prev_len && w[lcp] == prev[lcp])
            lcp++;
        while (depth > lcp)
            v->t_end[open[depth--]] = nt;
        for (int64_t d = lcp; d < len; d++) {
            v->t_byte[nt] = (uint8_t)w[d];
            v->t_depth[nt] = (int32_t)d + 1;
            v->t_tok[nt] = -1;
            v->t_ntok[nt] = 0;
            open[++depth] = nt++;
        }
        int32_t at = open[len];
        if (!v->t_ntok[at])
            v->t_tok[at] = k;
        v->t_ntok[at]++;
        prev = w;
        prev_len = len;
    }
    while (depth > 0)
        v->t_end[open[depth--]] = nt;
    v->n_trie = nt;
    free(open);
    return PS_OK;
}

int grammar_vocab_create_from_pieces(int32_t n_vocab, const char *const *pieces, const size_t *lens,
                                     const int32_t *eog, size_t n_eog, grammar_vocab **out)
{
    *out = NULL;
    if (n_vocab <= 0)
        return ps_error_set(PS_EINVAL, "grammar: empty vocabulary");
    grammar_vocab *v = calloc(1, sizeof *v);
    if (!v)
        return ps_error_set(PS_ENOMEM, "out of memory");
    pthread_mutex_init(&v->lock, NULL);
    v->n_vocab = n_vocab;
    v->words = ((size_t)n_vocab + 31) / 32;
    v->off = calloc((size_t)n_vocab + 1, sizeof *v->off);
    v->usable = calloc((size_t)n_vocab, 1);
    v->eog = malloc((n_eog + 1) * sizeof *v->eog);
    int rc = PS_OK;
    if (!v->off || !v->usable || !v->eog) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n_eog; i++)
        if (eog[i] >= 0 && eog[i] < n_vocab)
            v->eog[v->n_eog++] = eog[i];
    int64_t total = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        size_t l = pieces[i] ? lens[i] : 0;
        total += (int64_t)l;
        v->off[i + 1] = total;
        v->usable[i] = l > 0;
        if ((int32_t)l > v->max_len)
            v->max_len = (int32_t)l;
    }
    for (int32_t i = 0; i < v->n_eog; i++)
        v->usable[v->eog[i]] = 0;
    v->bytes = malloc((size_t)total + 1);
    if (!v->bytes) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < n_vocab; i++)
        if (pieces[i] && lens[i])
            memcpy(v->bytes + v->off[i], pieces[i], lens[i]);
    if ((rc = build_trie(v)))
        goto fail;
    for (int pass = 0; pass < 2; pass++) {
        int32_t k = 0;
        for (int32_t i = 0; i < n_vocab; i++) {
            int32_t c = 0;
            for (int64_t b = v->off[i]; v->usable[i] && b < v->off[i + 1]; b++)
                c += v->bytes[b] == '\n';
            if (c && pass) {
                v->nl_ids[k] = i;
                v->nl_cnt[k] = c;
            }
            k += c > 0;
        }
        if (!pass && k && (!(v->nl_ids = malloc((size_t)k * sizeof *v->nl_ids)) ||
                           !(v->nl_cnt = malloc((size_t)k * sizeof *v->nl_cnt)))) {
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto fail;
        }
        v->n_nl = k;
    }
    *out = v;
    return PS_OK;
fail:
    grammar_vocab_free(v);
    return rc;
}

int grammar_vocab_create(const tokenizer *tok, grammar_vocab **out)
{
    *out = NULL;
    int32_t n = tokenizer_n_vocab(tok);
    const char **pieces = calloc((size_t)n + 1, sizeof *pieces);
    size_t *lens = calloc((size_t)n + 1, sizeof *lens);
    int32_t *eog = malloc(((size_t)n + 1) * sizeof *eog);
    size_t n_eog = 0;
    int rc;
    if (!pieces || !lens || !eog) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokenizer_is_eog(tok, i)) {
            eog[n_eog++] = i;
            continue;
        }
        enum token_attr a = tokenizer_token_attr(tok, i);
        if (a != TOKEN_NORMAL && a != TOKEN_BYTE)
            continue;
        pieces[i] = tokenizer_piece(tok, i, false, &lens[i]);
    }
    rc = grammar_vocab_create_from_pieces(n, pieces, lens, eog, n_eog, out);
done:
    free(eog);
    free(lens);
    free(pieces);
    return rc;
}

void grammar_vocab_free(grammar_vocab *v)
{
    if (!v)
        return;
    for (int i = 0; i < CACHE_CAP; i++) {
        if (v->cache[i].g) {
            v->cache[i].g->cached = 0;
            grammar_free(v->cache[i].g);
        }
        free(v->cache[i].text);
    }
    pthread_mutex_destroy(&v->lock);
    free(v->bytes);
    free(v->off);
    free(v->usable);
    free(v->eog);
    free(v->sorted);
    free(v->t_byte);
    free(v->t_depth);
    free(v->t_end);
    free(v->t_tok);
    free(v->t_ntok);
    free(v->nl_ids);
    free(v->nl_cnt);
    free(v);
}

/* ---- stacks -------------------------------------------------------------- */

struct pool {
    int32_t *st, *par;
    int32_t  n, cap;
    int32_t *table;       /* hash -> node, -1 empty */
    int32_t  table_cap;
};

static void pool_free(struct pool *p)
{
    free(p->st);
    free(p->par);
    free(p->table);
    memset(p, 0, sizeof *p);
}

static void pool_reset(struct pool *p)
{
    if (p->n && p->table)
        memset(p->table, 0xff, (size_t)p->table_cap * sizeof *p->table);
    p->n = 0;
}

static inline uint32_t hash2(int32_t a, int32_t b)
{
    uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32);
}

/* Node id for (state, parent); -1 on allocation failure. */
static int32_t pool_intern(struct pool *p, int32_t st, int32_t par)
{
    if (2 * (p->n + 1) > p->table_cap) {
        int32_t cap = p->table_cap ? 2 * p->table_cap : 256;
        int32_t *t = malloc((size_t)cap * sizeof *t);
        int32_t *ns = realloc(p->st, (size_t)cap * sizeof *ns);
        if (ns)
            p->st = ns;
        int32_t *np = realloc(p->par, (size_t)cap * sizeof *np);
        if (np)
            p->par = np;
        if (!t || !ns || !np) {
            free(t);
            return -1;
        }
        memset(t, 0xff, (size_t)cap * sizeof *t);
        for (int32_t i = 0; i < p->n; i++) {
            uint32_t h = hash2(p->st[i], p->par[i]) & (uint32_t)(cap - 1);
            while (t[h] >= 0)
                h = (h + 1) & (uint32_t)(cap - 1);
            t[h] = i;
        }
        free(p->table);
        p->table = t;
        p->table_cap = cap;
        p->cap = cap;
    }
    uint32_t h = hash2(st, par) & (uint32_t)(p->table_cap - 1);
    while (p->table[h] >= 0) {
        int32_t i = p->table[h];
        if (p->st[i] == st && p->par[i] == par)
            return i;
        h = (h + 1) & (uint32_t)(p->table_cap - 1);
    }
    int32_t i = p->n++;
    p->st[i] = st;
    p->par[i] = par;
    p->table[h] = i;
    return i;
}

/* A set of stacks with the flags of the move that produced it. */
struct sset {
    int32_t *st, *par;
    int32_t  n, cap;
    uint8_t  complete;    /* popped EMPTY: the document is complete        */
    uint8_t  escaped;     /* popped BOTTOM (compile-time walks only)       */
    uint8_t  overflow;    /* too many stacks / too deep: treat as unknown  */
};

static inline void sset_add(struct sset *o, int32_t s, int32_t p)
{
    for (int32_t i = 0; i < o->n; i++)
        if (o->st[i] == s && o->par[i] == p)
            return;
    if (o->n == o->cap) {
        o->overflow = 1;
        return;
    }
    o->st[o->n] = s;
    o->par[o->n] = p;
    o->n++;
}

static void expand(const struct fsm *f, struct pool *pool, struct sset *o, int32_t s, int32_t p, int depth)
{
    if (depth > MAX_EXPAND) {
        o->overflow = 1;
        return;
    }
    const struct fsm_state *st = &f->states[s];
    if (st->has_bytes)
        sset_add(o, s, p);
    for (int32_t i = 0; i < st->n_calls; i++) {
        const struct fsm_call *c = &f->calls[st->call_off + i];
        int32_t q = pool_intern(pool, c->ret, p);
        if (q < 0) {
            o->overflow = 1;
            return;
        }
        expand(f, pool, o, f->rule_start[c->rule], q, depth + 1);
    }
    if (st->final) {
        if (p == EMPTY)
            o->complete = 1;
        else if (p == BOTTOM)
            o->escaped = 1;
        else
            expand(f, pool, o, pool->st[p], pool->par[p], depth + 1);
    }
}

static inline void step(const struct fsm *f, struct pool *pool, const int32_t *ist, const int32_t *ipar,
                        int32_t n, uint8_t b, struct sset *o)
{
    for (int32_t i = 0; i < n; i++) {
        int32_t t = fsm_next(f, ist[i], b);
        if (t >= 0)
            expand(f, pool, o, t, ipar[i], 0);
    }
}

/* ---- compile: token decisions per position --------------------------------- */

static int push_ids(grammar *g, const int32_t *ids, int32_t n, int32_t *off)
{
    if (g->n_ids + (size_t)n > g->cap_ids) {
        int32_t *x = ps_grow(g->ids, &g->cap_ids, g->n_ids + (size_t)n, sizeof *x, 4096);
        if (!x)
            return ps_error_set(PS_ENOMEM, "out of memory");
        g->ids = x;
    }
    if (n)
        memcpy(g->ids + g->n_ids, ids, (size_t)n * sizeof *ids);
    *off = (int32_t)g->n_ids;
    g->n_ids += (size_t)n;
    return PS_OK;
}

/* Bitset index of `bs`, shared with an identical earlier bitset. */
static int push_bits(grammar *g, const uint32_t *bs, int32_t *idx)
{
    size_t w = g->v->words;
    for (int32_t i = g->n_bits - 1; i >= 0 && i >= g->n_bits - 64; i--)
        if (!memcmp(g->bits + (size_t)i * w, bs, w * sizeof *bs)) {
            *idx = i;
            return PS_OK;
        }
    if (g->n_bits == g->cap_bits) {
        int32_t cap = g->cap_bits ? 2 * g->cap_bits : 8;
        uint32_t *x = realloc(g->bits, (size_t)cap * w * sizeof *x);
        if (!x)
            return ps_error_set(PS_ENOMEM, "out of memory");
        g->bits = x;
        g->cap_bits = cap;
    }
    memcpy(g->bits + (size_t)g->n_bits * w, bs, w * sizeof *bs);
    *idx = g->n_bits++;
    return PS_OK;
}

struct walk {
    int32_t *st, *par;       /* [(max_len + 1) * WALK_SETCAP] */
    int32_t *cnt;            /* [max_len + 1] */
    uint8_t *esc, *unc, *cpl, *ovf;
    int32_t *acc, *unc_ids;  /* [n_vocab] */
    uint32_t *bits;
    struct pool pool;
};

/* Fast walk for a call-free document rule: one DFA state per depth, and
 * a token is accepted iff its bytes lead to a (productive) state. */
static void walk_plain(const grammar *g, struct walk *w, int32_t s0, int32_t *n_acc)
{
    const grammar_vocab *v = g->v;
    const struct fsm *f = &g->f;
    int32_t *ds = w->st;
    ds[0] = s0;
    int32_t i = 0, n = 0;
    while (i < v->n_trie) {
        int32_t t = fsm_next(f, ds[v->t_depth[i] - 1], v->t_byte[i]);
        if (t < 0) {
            i = v->t_end[i];
            continue;
        }
        for (int32_t k = 0; k < v->t_ntok[i]; k++)
            w->acc[n++] = v->sorted[v->t_tok[i] + k];
        ds[v->t_depth[i]] = t;
        i++;
    }
    *n_acc = n;
}

static int walk_position(grammar *g, struct walk *w, int32_t s0, int32_t base, int plain, struct pos_info *pi)
{
    const grammar_vocab *v = g->v;
    const struct fsm *f = &g->f;
    int32_t n_acc = 0, n_unc = 0;
    if (plain) {
        walk_plain(g, w, s0, &n_acc);
        goto store;
    }
    pool_reset(&w->pool);
    w->st[0] = s0;
    w->par[0] = base;
    w->cnt[0] = 1;
    w->esc[0] = w->unc[0] = w->cpl[0] = w->ovf[0] = 0;
    int32_t i = 0;
    while (i < v->n_trie) {
        int32_t d = v->t_depth[i];
        struct sset o = { w->st + (size_t)d * WALK_SETCAP, w->par + (size_t)d * WALK_SETCAP, 0, WALK_SETCAP, 0, 0, 0 };
        step(f, &w->pool, w->st + (size_t)(d - 1) * WALK_SETCAP, w->par + (size_t)(d - 1) * WALK_SETCAP,
             w->cnt[d - 1], v->t_byte[i], &o);
        w->cnt[d] = o.n;
        w->esc[d] = o.escaped;
        w->cpl[d] = o.complete;
        w->unc[d] = w->unc[d - 1] | w->esc[d - 1] | w->ovf[d - 1];
        w->ovf[d] = o.overflow;
        int accept = o.n > 0 || o.escaped || o.complete;
        int unsure = !accept && (w->unc[d] || o.overflow);
        for (int32_t k = 0; k < v->t_ntok[i]; k++) {
            int32_t id = v->sorted[v->t_tok[i] + k];
            if (accept)
                w->acc[n_acc++] = id;
            else if (unsure)
                w->unc_ids[n_unc++] = id;
        }
        if (o.n > 0 && !o.overflow) {
            i++;
            continue;
        }
        if (w->unc[d] || o.escaped || o.overflow) {
            /* everything below depends on the parent */
            for (int32_t j = i + 1; j < v->t_end[i]; j++)
                for (int32_t k = 0; k < v->t_ntok[j]; k++)
                    w->unc_ids[n_unc++] = v->sorted[v->t_tok[j] + k];
        }
        i = v->t_end[i];
    }
store:
    pi->acc_n = n_acc;
    pi->unc_n = n_unc;
    int rc;
    if ((rc = push_ids(g, w->unc_ids, n_unc, &pi->unc_off)))
        return rc;
    if (n_acc <= LIST_MAX) {
        pi->bits = -1;
        return push_ids(g, w->acc, n_acc, &pi->acc_off);
    }
    memset(w->bits, 0, v->words * sizeof *w->bits);
    for (int32_t k = 0; k < n_acc; k++)
        w->bits[w->acc[k] >> 5] |= 1u << (w->acc[k] & 31);
    pi->acc_off = -1;
    return push_bits(g, w->bits, &pi->bits);
}

static int precompute(grammar *g, double deadline)
{
    const grammar_vocab *v = g->v;
    const struct fsm *f = &g->f;
    int rc = PS_OK;
    g->state_pos = malloc((size_t)f->n_states * sizeof *g->state_pos);
    g->pos = calloc((size_t)f->n_states + 1, sizeof *g->pos);
    struct walk w = { 0 };
    size_t depth = (size_t)v->max_len + 2;
    w.st = malloc(depth * WALK_SETCAP * sizeof *w.st);
    w.par = malloc(depth * WALK_SETCAP * sizeof *w.par);
    w.cnt = calloc(depth, sizeof *w.cnt);
    w.esc = calloc(depth, 1);
    w.unc = calloc(depth, 1);
    w.cpl = calloc(depth, 1);
    w.ovf = calloc(depth, 1);
    w.acc = malloc(((size_t)v->n_vocab + 1) * sizeof *w.acc);
    w.unc_ids = malloc(((size_t)v->n_vocab + 1) * sizeof *w.unc_ids);
    w.bits = malloc(v->words * sizeof *w.bits);
    if (!g->state_pos || !g->pos || !w.st || !w.par || !w.cnt || !w.esc || !w.unc || !w.cpl || !w.ovf ||
        !w.acc || !w.unc_ids || !w.bits) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto done;
    }
    /* the document rule is "plain" when it has no call edges and nothing calls it */
    int plain0 = !f->rule_called[0];
    for (int32_t s = 0; s < f->n_states && plain0; s++)
        if (f->states[s].rule == 0 && f->states[s].n_calls)
            plain0 = 0;
    for (int32_t s = 0; s < f->n_states; s++) {
        g->state_pos[s] = -1;
        if (!f->states[s].has_bytes)
            continue;
        if (grammar_now_s() > deadline) {
            rc = ps_error_set(PS_ERANGE, "json schema: compile time limit exceeded (token tables)");
            goto done;
        }
        int32_t base = f->states[s].rule == 0 && !f->rule_called[0] ? EMPTY : BOTTOM;
        int32_t p = g->n_pos++;
        g->state_pos[s] = p;
        if ((rc = walk_position(g, &w, s, base, plain0 && f->states[s].rule == 0, &g->pos[p])))
            goto done;
        g->st.n_uncertain += g->pos[p].unc_n;
    }
done:
    pool_free(&w.pool);
    free(w.st);
    free(w.par);
    free(w.cnt);
    free(w.esc);
    free(w.unc);
    free(w.cpl);
    free(w.ovf);
    free(w.acc);
    free(w.unc_ids);
    free(w.bits);
    return rc;
}

static void grammar_destroy(grammar *g)
{
    fsm_free(&g->f);
    free(g->state_pos);
    free(g->pos);
    free(g->ids);
    free(g->bits);
    free(g);
}

void grammar_free(grammar *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1)
        grammar_destroy(g);
}

grammar *grammar_ref(grammar *g)
{
    if (g)
        atomic_fetch_add(&g->refs, 1);
    return g;
}

const grammar_vocab *grammar_vocab_of(const grammar *g) { return g->v; }

void grammar_get_stats(const grammar *g, struct grammar_stats *st) { *st = g->st; }

static uint64_t fnv64(const char *s, size_t n, uint32_t flags)
{
    uint64_t h = 1469598103934665603ull ^ flags;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int compile_uncached(grammar_vocab *v, const char *text, size_t len, const struct grammar_options *o,
                            grammar **out)
{
    double t0 = grammar_now_s();
    double deadline = t0 + (o->max_compile_ms > 0 ? o->max_compile_ms : 10000) / 1000.0;
    struct schema_limits lim = { o->max_nfa_nodes > 0 ? o->max_nfa_nodes : 200000,
                                 (o->flags & GRAMMAR_OPT_LAX_OBJECTS) != 0, o->max_docs };
    struct nfa n;
    /* the schema's JSON read out of memory: whatever schema_to_nfa
     * concluded (an error, or an automaton from a schema missing a part),
     * it is PS_ENOMEM, and nothing is cached */
    long f0 = json_alloc_failures();
    int rc = schema_to_nfa(text, len, &lim, &n);
    if (json_alloc_failures() != f0) {
        if (!rc)
            nfa_free(&n);
        return ps_error_set(PS_ENOMEM, "grammar: out of memory reading the schema");
    }
    if (rc)
        return rc;
    grammar *g = calloc(1, sizeof *g);
    if (!g) {
        nfa_free(&n);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    atomic_init(&g->refs, 1);
    g->v = v;
    g->max_docs = o->max_docs > 1 ? o->max_docs : 1;
    rc = fsm_from_nfa(&n, o->max_states > 0 ? o->max_states : 20000, deadline, &g->f);
    nfa_free(&n);
    if (rc) {
        grammar_destroy(g);
        return rc;
    }
    if ((rc = precompute(g, deadline))) {
        grammar_destroy(g);
        return rc;
    }
    g->st.n_rules = g->f.n_rules;
    g->st.n_states = g->f.n_states;
    g->st.n_positions = g->n_pos;
    g->st.bytes = sizeof *g + (size_t)g->f.n_states * ((size_t)g->f.n_classes * 4 + sizeof(struct fsm_state) + 4) +
                  (size_t)g->f.n_calls * sizeof(struct fsm_call) + (size_t)g->n_pos * sizeof(struct pos_info) +
                  g->n_ids * 4 + (size_t)g->n_bits * v->words * 4;
    g->st.compile_ms = (grammar_now_s() - t0) * 1000.0;
    *out = g;
    return PS_OK;
}

int grammar_compile(grammar_vocab *v, const char *text, size_t len, const struct grammar_options *opt,
                    grammar **out)
{
    *out = NULL;
    struct grammar_options o = { 0 };
    if (opt)
        o = *opt;
    if (o.max_docs < 0 || o.max_docs > GRAMMAR_MAX_DOCS)
        return ps_error_set(PS_EINVAL, "grammar: max_docs %d is outside [0, %d]", o.max_docs, GRAMMAR_MAX_DOCS);
    if (o.max_docs < 1)
        o.max_docs = 1;
    if (o.flags & GRAMMAR_OPT_NO_CACHE)
        return compile_uncached(v, text, len, &o, out);
    uint32_t key_flags = o.flags ^ (uint32_t)o.max_states * 31u ^ (uint32_t)o.max_nfa_nodes * 7u;
    uint64_t h = fnv64(text, len, key_flags);
    pthread_mutex_lock(&v->lock);
    for (int i = 0; i < CACHE_CAP; i++) {
        struct cache_entry *e = &v->cache[i];
        if (e->g && e->hash == h && e->flags == key_flags && e->max_docs == o.max_docs && e->len == len &&
            !memcmp(e->text, text, len)) {
            atomic_fetch_add(&e->g->refs, 1);
            e->used = ++v->tick;
            *out = e->g;
            pthread_mutex_unlock(&v->lock);
            return PS_OK;
        }
    }
    pthread_mutex_unlock(&v->lock);
    grammar *g;
    int rc = compile_uncached(v, text, len, &o, &g);
    if (rc)
        return rc;
    char *copy = malloc(len + 1);
    if (!copy) {
        *out = g; /* uncached but usable */
        return PS_OK;
    }
    memcpy(copy, text, len);
    pthread_mutex_lock(&v->lock);
    int victim = 0;
    for (int i = 0; i < CACHE_CAP; i++) {
        if (!v->cache[i].g) {
            victim = i;
            break;
        }
        if (v->cache[i].used < v->cache[victim].used)
            victim = i;
    }
    struct cache_entry *e = &v->cache[victim];
    grammar *old = e->g;
    free(e->text);
    atomic_fetch_add(&g->refs, 1); /* the cache's reference */
    *e = (struct cache_entry){ h, key_flags, o.max_docs, copy, len, g, ++v->tick };
    pthread_mutex_unlock(&v->lock);
    grammar_free(old);
    *out = g;
    return PS_OK;
}

/* ---- matcher ------------------------------------------------------------- */

struct grammar_matcher {
    grammar    *g;
    struct pool pool;
    int32_t    *st, *par;     /* current stacks */
    int32_t     n, cap;
    uint8_t     complete, done;
    uint8_t     last_done;    /* the last allowed document is complete and
                               * only a separator could follow            */
    int32_t     n_sep;        /* separators ('\n') accepted: documents - 1 */
    struct sset a, b;         /* scratch sets */
};

static int sset_init(struct sset *s, int32_t cap)
{
    s->st = malloc((size_t)cap * sizeof *s->st);
    s->par = malloc((size_t)cap * sizeof *s->par);
    s->cap = cap;
    s->n = 0;
    return s->st && s->par ? PS_OK : ps_error_set(PS_ENOMEM, "out of memory");
}

static void sset_clear(struct sset *s)
{
    s->n = 0;
    s->complete = s->escaped = s->overflow = 0;
}

#define MATCH_SETCAP 1024

void grammar_matcher_reset(grammar_matcher *m)
{
    pool_reset(&m->pool);
    sset_clear(&m->a);
    expand(&m->g->f, &m->pool, &m->a, m->g->f.rule_start[0], EMPTY, 0);
    memcpy(m->st, m->a.st, (size_t)m->a.n * sizeof *m->st);
    memcpy(m->par, m->a.par, (size_t)m->a.n * sizeof *m->par);
    m->n = m->a.n;
    m->complete = m->a.complete;
    m->done = 0;
    m->last_done = 0;
    m->n_sep = 0;
}

int grammar_matcher_create(grammar *g, grammar_matcher **out)
{
    *out = NULL;
    grammar_matcher *m = calloc(1, sizeof *m);
    if (!m)
        return ps_error_set(PS_ENOMEM, "out of memory");
    m->g = g;
    atomic_fetch_add(&g->refs, 1);
    m->cap = MATCH_SETCAP;
    m->st = malloc(MATCH_SETCAP * sizeof *m->st);
    m->par = malloc(MATCH_SETCAP * sizeof *m->par);
    if (!m->st || !m->par || sset_init(&m->a, MATCH_SETCAP) || sset_init(&m->b, MATCH_SETCAP)) {
        grammar_matcher_free(m);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    grammar_matcher_reset(m);
    *out = m;
    return PS_OK;
}

void grammar_matcher_free(grammar_matcher *m)
{
    if (!m)
        return;
    pool_free(&m->pool);
    free(m->st);
    free(m->par);
    free(m->a.st);
    free(m->a.par);
    free(m->b.st);
    free(m->b.par);
    grammar_free(m->g);
    free(m);
}

bool grammar_matcher_can_end(const grammar_matcher *m) { return m->complete; }
bool grammar_matcher_is_done(const grammar_matcher *m)
{
    return m->done || (m->complete && (m->n == 0 || m->last_done));
}

/* '\n' bytes in b[0..len) (document separators). */
static int32_t count_sep(const uint8_t *b, size_t len)
{
    int32_t c = 0;
    for (size_t i = 0; i < len; i++)
        c += b[i] == '\n';
    return c;
}

/* Run bytes from the stacks (st, par)[0..n).  Result in m->a or m->b
 * (returned).  The result set is empty and not complete on rejection. */
static struct sset *run_bytes(grammar_matcher *m, const int32_t *st, const int32_t *par, int32_t n,
                              const uint8_t *bytes, size_t len)
{
    const struct fsm *f = &m->g->f;
    struct sset *cur = NULL, *nxt = &m->a;
    for (size_t i = 0; i < len; i++) {
        sset_clear(nxt);
        if (cur)
            step(f, &m->pool, cur->st, cur->par, cur->n, bytes[i], nxt);
        else
            step(f, &m->pool, st, par, n, bytes[i], nxt);
        cur = nxt;
        nxt = cur == &m->a ? &m->b : &m->a;
        if (!cur->n && (!cur->complete || i + 1 < len)) {
            sset_clear(cur);
            return cur;
        }
    }
    if (!cur) { /* zero bytes: copy */
        sset_clear(nxt);
        memcpy(nxt->st, st, (size_t)n * sizeof *st);
        memcpy(nxt->par, par, (size_t)n * sizeof *par);
        nxt->n = n;
        nxt->complete = m->complete;
        cur = nxt;
    }
    return cur;
}

/* The set r reached by bytes[0..len) becomes the state; n_sep of them are
 * document separators (refused past max_docs). */
static int commit(grammar_matcher *m, struct sset *r, int32_t n_sep)
{
    if (!r->n && !r->complete)
        return ps_error_set(PS_EINVAL, "grammar: token rejected");
    if (n_sep && m->n_sep + n_sep >= m->g->max_docs)
        return ps_error_set(PS_EINVAL, "grammar: more than %d documents", m->g->max_docs);
    memcpy(m->st, r->st, (size_t)r->n * sizeof *m->st);
    memcpy(m->par, r->par, (size_t)r->n * sizeof *m->par);
    m->n = r->n;
    m->complete = r->complete;
    m->n_sep += n_sep;
    m->last_done = 0;
    if (m->g->max_docs > 1 && m->complete && m->n_sep + 1 == m->g->max_docs) {
        /* the last document: done when no byte but the separator goes on */
        const struct fsm *f = &m->g->f;
        m->last_done = 1;
        for (int32_t k = 0; k < m->n && m->last_done; k++)
            for (int b = 0; b < 256; b++)
                if (b != '\n' && fsm_next(f, m->st[k], (uint8_t)b) >= 0) {
                    m->last_done = 0;
                    break;
                }
    }
    return PS_OK;
}

int grammar_matcher_accept_bytes(grammar_matcher *m, const char *bytes, size_t n)
{
    if (m->done)
        return ps_error_set(PS_EINVAL, "grammar: document already finished");
    const uint8_t *b = (const uint8_t *)bytes;
    return commit(m, run_bytes(m, m->st, m->par, m->n, b, n), count_sep(b, n));
}

int grammar_matcher_accept(grammar_matcher *m, int32_t token)
{
    const grammar_vocab *v = m->g->v;
    if (token < 0 || token >= v->n_vocab)
        return ps_error_set(PS_EINVAL, "grammar: token id %d out of range", token);
    if (m->done)
        return ps_error_set(PS_EINVAL, "grammar: document already finished");
    for (int32_t i = 0; i < v->n_eog; i++)
        if (v->eog[i] == token) {
            if (!m->complete)
                return ps_error_set(PS_EINVAL, "grammar: end of generation before the document is complete");
            m->done = 1;
            return PS_OK;
        }
    if (!v->usable[token])
        return ps_error_set(PS_EINVAL, "grammar: token %d is never allowed", token);
    const uint8_t *b = (const uint8_t *)v->bytes + v->off[token];
    size_t len = (size_t)(v->off[token + 1] - v->off[token]);
    return commit(m, run_bytes(m, m->st, m->par, m->n, b, len), count_sep(b, len));
}

int grammar_matcher_fill_mask(grammar_matcher *m, uint32_t *mask)
{
    const grammar *g = m->g;
    const grammar_vocab *v = g->v;
    const size_t words = v->words;
    int first = 1;
    if (m->done) {
        memset(mask, 0, words * sizeof *mask);
        return ps_error_set(PS_EINVAL, "grammar: document already finished");
    }
    for (int32_t k = 0; k < m->n; k++) {
        const struct pos_info *pi = &g->pos[g->state_pos[m->st[k]]];
        if (pi->acc_off < 0) {
            const uint32_t *bs = g->bits + (size_t)pi->bits * words;
            if (first)
                memcpy(mask, bs, words * sizeof *mask);
            else
                for (size_t i = 0; i < words; i++)
                    mask[i] |= bs[i];
        } else {
            if (first)
                memset(mask, 0, words * sizeof *mask);
            const int32_t *ids = g->ids + pi->acc_off;
            for (int32_t i = 0; i < pi->acc_n; i++)
                mask[ids[i] >> 5] |= 1u << (ids[i] & 31);
        }
        first = 0;
    }
    if (first)
        memset(mask, 0, words * sizeof *mask);
    for (int32_t k = 0; k < m->n; k++) {
        const struct pos_info *pi = &g->pos[g->state_pos[m->st[k]]];
        const int32_t *ids = g->ids + pi->unc_off;
        for (int32_t i = 0; i < pi->unc_n; i++) {
            int32_t t = ids[i];
            if (mask[t >> 5] >> (t & 31) & 1)
                continue;
            struct sset *r = run_bytes(m, &m->st[k], &m->par[k], 1, (const uint8_t *)v->bytes + v->off[t],
                                       (size_t)(v->off[t + 1] - v->off[t]));
            if (r->n || r->complete)
                mask[t >> 5] |= 1u << (t & 31);
        }
    }
    if (g->max_docs > 1) /* no separator past the last document */
        for (int32_t i = 0; i < v->n_nl; i++)
            if (m->n_sep + v->nl_cnt[i] >= g->max_docs)
                mask[v->nl_ids[i] >> 5] &= ~(1u << (v->nl_ids[i] & 31));
    if (m->complete)
        for (int32_t i = 0; i < v->n_eog; i++)
            mask[v->eog[i] >> 5] |= 1u << (v->eog[i] & 31);
    return PS_OK;
}
