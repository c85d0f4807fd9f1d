/* fsm.c - NFA (with rule calls) -> one DFA per rule.
 *
 * Subset construction per rule over two kinds of symbols: byte classes
 * (bytes no NFA edge distinguishes share a class) and "call rule R" (the
 * state reached after R completes).  Afterwards states that cannot reach
 * their rule's final state are pruned, so a matcher never walks into a
 * dead end: every live stack can always be completed.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/grow.h"
#include "common/status.h"
#include "grammar_internal.h"

double grammar_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fsm_free(struct fsm *f)
{
    if (!f)
        return;
    free(f->trans);
    free(f->states);
    free(f->calls);
    free(f->rule_start);
    free(f->rule_called);
    memset(f, 0, sizeof *f);
}

struct set_key {
    int32_t off, len; /* into pool */
    int32_t rule;
    uint32_t hash;
};

struct builder {
    const struct nfa *n;
    int32_t *adj_off, *adj;            /* CSR of edge indices by from node   */
    uint32_t *mark;                    /* generation stamps per node         */
    uint32_t gen;
    int32_t *stack;
    int32_t *pool;                     /* NFA node sets of the DFA states    */
    size_t   pool_len, pool_cap;
    struct set_key *keys;              /* [state]                            */
    int32_t *table;                    /* hash -> state, -1 empty            */
    size_t   table_cap;
    struct fsm *f;
    int32_t  cap_states, cap_calls;
    int32_t  max_states;
    int32_t *tmp;                      /* scratch set                        */
    int32_t  n_tmp;
};

static uint32_t hash_set(const int32_t *s, int32_t n, int32_t rule)
{
    uint32_t h = 2166136261u ^ (uint32_t)rule;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Epsilon closure of b->tmp[0..n_tmp) in place (sorted, unique). */
static int closure(struct builder *b)
{
    b->gen++;
    int32_t sp = 0, n = 0;
    for (int32_t i = 0; i < b->n_tmp; i++) {
        int32_t x = b->tmp[i];
        if (b->mark[x] != b->gen) {
            b->mark[x] = b->gen;
            b->stack[sp++] = x;
        }
    }
    while (sp) {
        int32_t x = b->stack[--sp];
        b->tmp[n++] = x;
        for (int32_t k = b->adj_off[x]; k < b->adj_off[x + 1]; k++) {
            const struct nfa_edge *e = &b->n->edges[b->adj[k]];
            if (e->lo == NFA_EPS && b->mark[e->to] != b->gen) {
                b->mark[e->to] = b->gen;
                b->stack[sp++] = e->to;
            }
        }
    }
    qsort(b->tmp, (size_t)n, sizeof *b->tmp, cmp_i32);
    b->n_tmp = n;
    return 0;
}

static int grow_table(struct builder *b)
{
    size_t cap = b->table_cap ? 2 * b->table_cap : 1024;
    int32_t *t = malloc(cap * sizeof *t);
    if (!t)
        return ps_error_set(PS_ENOMEM, "out of memory");
    memset(t, 0xff, cap * sizeof *t);
    for (int32_t s = 0; s < b->f->n_states; s++) {
        size_t i = b->keys[s].hash & (cap - 1);
        while (t[i] >= 0)
            i = (i + 1) & (cap - 1);
        t[i] = s;
    }
    free(b->table);
    b->table = t;
    b->table_cap = cap;
    return PS_OK;
}

/* State id for the set in b->tmp (already closed) of rule `rule`; creates it. */
static int intern(struct builder *b, int32_t rule, int32_t *out)
{
    uint32_t h = hash_set(b->tmp, b->n_tmp, rule);
    if ((size_t)b->f->n_states * 2 >= b->table_cap && grow_table(b))
        return PS_ENOMEM;
    size_t i = h & (b->table_cap - 1);
    while (b->table[i] >= 0) {
        const struct set_key *k = &b->keys[b->table[i]];
        if (k->hash == h && k->rule == rule && k->len == b->n_tmp &&
            !memcmp(b->pool + k->off, b->tmp, (size_t)b->n_tmp * sizeof *b->tmp)) {
            *out = b->table[i];
            return PS_OK;
        }
        i = (i + 1) & (b->table_cap - 1);
    }
    struct fsm *f = b->f;
    if (f->n_states >= b->max_states)
        return ps_error_set(PS_ERANGE, "json schema: grammar exceeds the compile limit of %d DFA states",
                            b->max_states);
    if (f->n_states == b->cap_states) {
        int32_t cap = b->cap_states ? 2 * b->cap_states : 256;
        struct set_key *k = realloc(b->keys, (size_t)cap * sizeof *k);
        if (!k)
            return ps_error_set(PS_ENOMEM, "out of memory");
        b->keys = k;
        struct fsm_state *st = realloc(f->states, (size_t)cap * sizeof *st);
        if (!st)
            return ps_error_set(PS_ENOMEM, "out of memory");
        f->states = st;
        int32_t *tr = realloc(f->trans, (size_t)cap * (size_t)f->n_classes * sizeof *tr);
        if (!tr)
            return ps_error_set(PS_ENOMEM, "out of memory");
        f->trans = tr;
        b->cap_states = cap;
    }
    if (b->pool_len + (size_t)b->n_tmp > b->pool_cap) {
        int32_t *p = ps_grow(b->pool, &b->pool_cap, b->pool_len + (size_t)b->n_tmp, sizeof *p, 4096);
        if (!p)
            return ps_error_set(PS_ENOMEM, "out of memory");
        b->pool = p;
    }
    int32_t s = f->n_states++;
    memcpy(b->pool + b->pool_len, b->tmp, (size_t)b->n_tmp * sizeof *b->tmp);
    b->keys[s] = (struct set_key){ (int32_t)b->pool_len, b->n_tmp, rule, h };
    b->pool_len += (size_t)b->n_tmp;
    f->states[s] = (struct fsm_state){ .rule = rule };
    for (int32_t c = 0; c < f->n_classes; c++)
        f->trans[(size_t)s * (size_t)f->n_classes + c] = -1;
    b->table[i] = s;
    *out = s;
    return PS_OK;
}

static int add_call(struct builder *b, int32_t rule, int32_t ret)
{
    struct fsm *f = b->f;
    if (f->n_calls == b->cap_calls) {
        int32_t cap = b->cap_calls ? 2 * b->cap_calls : 64;
        struct fsm_call *c = realloc(f->calls, (size_t)cap * sizeof *c);
        if (!c)
            return ps_error_set(PS_ENOMEM, "out of memory");
        f->calls = c;
        b->cap_calls = cap;
    }
    f->calls[f->n_calls++] = (struct fsm_call){ rule, ret };
    return PS_OK;
}

int fsm_from_nfa(const struct nfa *n, int32_t max_states, double deadline_s, struct fsm *f)
{
    memset(f, 0, sizeof *f);
    struct builder b = { .n = n, .f = f, .max_states = max_states };
    int rc = PS_OK;
    int32_t *bucket_len = NULL, *bucket = NULL, *bucket_off = NULL, *calls_tmp = NULL;
    uint8_t *prod = NULL;

    /* byte classes */
    uint8_t cut[257] = { 0 };
    for (int32_t i = 0; i < n->n_edges; i++)
        if (n->edges[i].lo >= 0) {
            cut[n->edges[i].lo] = 1;
            cut[n->edges[i].hi + 1] = 1;
        }
    int32_t cls = -1;
    for (int x = 0; x < 256; x++) {
        if (cut[x] || x == 0)
            cls++;
        f->byte_class[x] = (uint8_t)cls;
    }
    f->n_classes = cls + 1;
    f->n_rules = n->n_rules;

    b.adj_off = calloc((size_t)n->n_nodes + 1, sizeof *b.adj_off);
    b.adj = malloc(((size_t)n->n_edges + 1) * sizeof *b.adj);
    b.mark = calloc((size_t)n->n_nodes, sizeof *b.mark);
    b.stack = malloc(((size_t)n->n_nodes + 1) * sizeof *b.stack);
    b.tmp = malloc(((size_t)n->n_nodes + 1) * sizeof *b.tmp);
    bucket_len = calloc((size_t)f->n_classes, sizeof *bucket_len);
    bucket_off = calloc((size_t)f->n_classes + 1, sizeof *bucket_off);
    calls_tmp = malloc(((size_t)n->n_edges + 1) * 2 * sizeof *calls_tmp);
    f->rule_start = calloc((size_t)n->n_rules + 1, sizeof *f->rule_start);
    f->rule_called = calloc((size_t)n->n_rules + 1, 1);
    if (!b.adj_off || !b.adj || !b.mark || !b.stack || !b.tmp || !bucket_len || !bucket_off ||
        !calls_tmp || !f->rule_start || !f->rule_called) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < n->n_edges; i++)
        b.adj_off[n->edges[i].from + 1]++;
    for (int32_t i = 0; i < n->n_nodes; i++)
        b.adj_off[i + 1] += b.adj_off[i];
    {
        int32_t *fill = calloc((size_t)n->n_nodes + 1, sizeof *fill);
        if (!fill) {
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto fail;
        }
        for (int32_t i = 0; i < n->n_edges; i++) {
            int32_t x = n->edges[i].from;
            b.adj[b.adj_off[x] + fill[x]++] = i;
        }
        free(fill);
    }
    size_t bucket_cap = 1024;
    bucket = malloc(bucket_cap * sizeof *bucket);
    if (!bucket) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }

    for (int32_t r = 0; r < n->n_rules; r++) {
        int32_t first = f->n_states;
        b.tmp[0] = n->rules[r].start;
        b.n_tmp = 1;
        closure(&b);
        if ((rc = intern(&b, r, &f->rule_start[r])))
            goto fail;
        for (int32_t s = first; s < f->n_states; s++) {
            if ((s & 63) == 0 && grammar_now_s() > deadline_s) {
                rc = ps_error_set(PS_ERANGE, "json schema: compile time limit exceeded");
                goto fail;
            }
            const struct set_key k = b.keys[s];
            /* byte moves, bucketed by class */
            memset(bucket_len, 0, (size_t)f->n_classes * sizeof *bucket_len);
            int32_t n_calls_tmp = 0;
            for (int32_t i = 0; i < k.len; i++) {
                int32_t x = b.pool[k.off + i];
                if (x == n->rules[r].end)
                    f->states[s].final = 1;
                for (int32_t e = b.adj_off[x]; e < b.adj_off[x + 1]; e++) {
                    const struct nfa_edge *ed = &n->edges[b.adj[e]];
                    if (ed->lo >= 0) {
                        for (int32_t c = f->byte_class[ed->lo]; c <= f->byte_class[ed->hi]; c++)
                            bucket_len[c]++;
                    } else if (ed->lo == NFA_CALL) {
                        calls_tmp[2 * n_calls_tmp] = ed->rule;
                        calls_tmp[2 * n_calls_tmp + 1] = ed->to;
                        n_calls_tmp++;
                    }
                }
            }
            bucket_off[0] = 0;
            for (int32_t c = 0; c < f->n_classes; c++)
                bucket_off[c + 1] = bucket_off[c] + bucket_len[c];
            if ((size_t)bucket_off[f->n_classes] > bucket_cap) {
                bucket_cap = (size_t)bucket_off[f->n_classes] * 2;
                free(bucket);
                bucket = malloc(bucket_cap * sizeof *bucket);
                if (!bucket) {
                    rc = ps_error_set(PS_ENOMEM, "out of memory");
                    goto fail;
                }
            }
            memset(bucket_len, 0, (size_t)f->n_classes * sizeof *bucket_len);
            for (int32_t i = 0; i < k.len; i++) {
                int32_t x = b.pool[k.off + i];
                for (int32_t e = b.adj_off[x]; e < b.adj_off[x + 1]; e++) {
                    const struct nfa_edge *ed = &n->edges[b.adj[e]];
                    if (ed->lo >= 0)
                        for (int32_t c = f->byte_class[ed->lo]; c <= f->byte_class[ed->hi]; c++)
                            bucket[bucket_off[c] + bucket_len[c]++] = ed->to;
                }
            }
            for (int32_t c = 0; c < f->n_classes; c++) {
                if (!bucket_len[c])
                    continue;
                /* same target list as the previous class: same state */
                if (c > 0 && bucket_len[c] == bucket_len[c - 1] &&
                    !memcmp(bucket + bucket_off[c], bucket + bucket_off[c - 1],
                            (size_t)bucket_len[c] * sizeof *bucket)) {
                    f->trans[(size_t)s * (size_t)f->n_classes + c] =
                        f->trans[(size_t)s * (size_t)f->n_classes + c - 1];
                    continue;
                }
                memcpy(b.tmp, bucket + bucket_off[c], (size_t)bucket_len[c] * sizeof *b.tmp);
                b.n_tmp = bucket_len[c];
                closure(&b);
                int32_t t;
                if ((rc = intern(&b, r, &t)))
                    goto fail;
                f->trans[(size_t)s * (size_t)f->n_classes + c] = t;
            }
            /* call moves, grouped by callee */
            f->states[s].call_off = f->n_calls;
            for (int32_t i = 0; i < n_calls_tmp; i++) {
                int32_t callee = calls_tmp[2 * i];
                if (callee < 0)
                    continue;
                b.n_tmp = 0;
                for (int32_t j = i; j < n_calls_tmp; j++)
                    if (calls_tmp[2 * j] == callee) {
                        b.tmp[b.n_tmp++] = calls_tmp[2 * j + 1];
                        calls_tmp[2 * j] = -1;
                    }
                closure(&b);
                int32_t t;
                if ((rc = intern(&b, r, &t)))
                    goto fail;
                if ((rc = add_call(&b, callee, t)))
                    goto fail;
                f->states[s].n_calls++;
                f->rule_called[callee] = 1;
            }
        }
    }

    /* prune states that cannot complete their rule */
    prod = calloc((size_t)f->n_states, 1);
    if (!prod) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }
    for (int changed = 1; changed;) {
        changed = 0;
        for (int32_t s = f->n_states - 1; s >= 0; s--) {
            if (prod[s])
                continue;
            int p = f->states[s].final;
            for (int32_t c = 0; !p && c < f->n_classes; c++) {
                int32_t t = f->trans[(size_t)s * (size_t)f->n_classes + c];
                p = t >= 0 && prod[t];
            }
            for (int32_t i = 0; !p && i < f->states[s].n_calls; i++) {
                const struct fsm_call *cl = &f->calls[f->states[s].call_off + i];
                p = prod[f->rule_start[cl->rule]] && prod[cl->ret];
            }
            if (p) {
                prod[s] = 1;
                changed = 1;
            }
        }
    }
    if (!prod[f->rule_start[0]]) {
        rc = ps_error_set(PS_EINVAL, "json schema: the schema accepts no document this grammar can write");
        goto fail;
    }
    for (int32_t s = 0; s < f->n_states; s++) {
        int has = 0;
        for (int32_t c = 0; c < f->n_classes; c++) {
            int32_t *t = &f->trans[(size_t)s * (size_t)f->n_classes + c];
            if (*t >= 0 && !prod[*t])
                *t = -1;
            has |= *t >= 0;
        }
        f->states[s].has_bytes = (uint8_t)has;
        int32_t w = 0;
        for (int32_t i = 0; i < f->states[s].n_calls; i++) {
            struct fsm_call cl = f->calls[f->states[s].call_off + i];
            if (prod[f->rule_start[cl.rule]] && prod[cl.ret])
                f->calls[f->states[s].call_off + w++] = cl;
        }
        f->states[s].n_calls = w;
    }
    goto done;

fail:
    fsm_free(f);
done:
    free(prod);
    free(calls_tmp);
    free(bucket);
    free(bucket_off);
    free(bucket_len);
    free(b.table);
    free(b.keys);
    free(b.pool);
    free(b.tmp);
    free(b.stack);
    free(b.mark);
    free(b.adj);
    free(b.adj_off);
    return rc;
}
