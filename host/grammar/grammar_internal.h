/* grammar_internal.h - shared between the grammar modules (not public).
 *
 * Pipeline:  schema.c   cJSON schema -> NFA (one NFA graph, a start/end node
 *                       pair per rule; edges: byte range, epsilon, call rule)
 *            fsm.c      NFA -> one DFA per rule (subset construction with
 *                       call edges as symbols), byte classes, dead states
 *                       pruned
 *            grammar.c  vocab trie, per-state token decisions, matcher,
 *                       compile cache
 */
#ifndef PS_GRAMMAR_INTERNAL_H
#define PS_GRAMMAR_INTERNAL_H

#include <stdint.h>
#include <stddef.h>

/* ---- NFA ----------------------------------------------------------------- */

enum { NFA_EPS = -1, NFA_CALL = -2 };

struct nfa_edge {
    int32_t from, to;
    int16_t lo, hi;   /* byte range [lo, hi]; lo = NFA_EPS or NFA_CALL otherwise */
    int32_t rule;     /* callee for NFA_CALL */
};

struct nfa_rule {
    int32_t start, end;
};

struct nfa {
    int32_t          n_nodes;
    struct nfa_edge *edges;
    int32_t          n_edges, cap_edges;
    struct nfa_rule *rules;
    int32_t          n_rules, cap_rules;
    int32_t          max_nodes;
};

void nfa_free(struct nfa *n);

struct schema_limits {
    int32_t max_nfa_nodes;
    int     lax_objects;
    int32_t max_docs;      /* > 1: rule 0 is doc ('\n' doc)* (grammar.h) */
};

/* Compile schema text into n (rule 0 = the document).  Status + detail. */
int schema_to_nfa(const char *text, size_t len, const struct schema_limits *lim, struct nfa *n);

/* ---- DFA ----------------------------------------------------------------- */

struct fsm_call {
    int32_t rule;
    int32_t ret;      /* state to continue at after the callee completes */
};

struct fsm_state {
    int32_t rule;
    int32_t call_off; /* into fsm.calls */
    int32_t n_calls;
    uint8_t final;
    uint8_t has_bytes;
};

struct fsm {
    int32_t          n_states, n_rules, n_classes;
    uint8_t          byte_class[256];
    int32_t         *trans;      /* [n_states * n_classes], -1 = dead */
    struct fsm_state *states;
    struct fsm_call *calls;
    int32_t          n_calls;
    int32_t         *rule_start; /* [n_rules] */
    uint8_t         *rule_called;/* [n_rules]: some call edge targets it */
};

int  fsm_from_nfa(const struct nfa *n, int32_t max_states, double deadline_s, struct fsm *f);
void fsm_free(struct fsm *f);

static inline int32_t fsm_next(const struct fsm *f, int32_t s, uint8_t b)
{
    return f->trans[(size_t)s * (size_t)f->n_classes + f->byte_class[b]];
}

double grammar_now_s(void);

#endif /* PS_GRAMMAR_INTERNAL_H */
