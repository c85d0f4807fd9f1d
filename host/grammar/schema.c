/* schema.c - JSON Schema (subset) -> NFA over bytes with rule calls.
 *
 * Builders have the shape  int32_t g_x(struct sc *c, int32_t from, ...):
 * they append the language of x after NFA node `from` and return the node
 * where it ends (-1 once an error was recorded in c->err; every builder
 * returns -1 immediately when c->err is set, so callers check once).
 * Loop heads are always fresh nodes, so attaching several branches to one
 * `from` node never creates unintended paths.
 *
 * Non-recursive $refs are inlined.  A $ref met while its target is already
 * being expanded becomes a call of a rule built for that target (after the
 * current rule), so only genuinely recursive schemas need a stack at match
 * time.  "Any JSON value" (additionalProperties: true, {} ...) is one shared
 * recursive rule.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/status.h"
#include "grammar_internal.h"

#define INT_CAP   999999999999999LL /* 15 digits: unbounded integers */
#define REP_INF   (-1)
#define MAX_UNROLL 4096
#define MAX_DEPTH  96

struct refrule {
    const cJSON *target;
    int32_t      rule;
};

struct sc {
    struct nfa  *n;
    cJSON       *root;
    int          lax;
    int          err;
    struct refrule *refs;
    int32_t      n_refs, cap_refs;
    int32_t      n_built;             /* refs[0..n_built) have their body built */
    const cJSON *expanding[MAX_DEPTH];
    int32_t      n_expanding;
    int32_t      any_rule;
    int32_t      depth;
    char         path[256];
};

/* ---- NFA primitives ------------------------------------------------------ */

void nfa_free(struct nfa *n)
{
    if (!n)
        return;
    free(n->edges);
    free(n->rules);
    memset(n, 0, sizeof *n);
}

static int32_t fail(struct sc *c, int status, const char *fmt, const char *arg)
{
    if (!c->err) {
        char msg[256];
        snprintf(msg, sizeof msg, fmt, arg);
        c->err = ps_error_set(status, "json schema: %s (at %s)", msg, c->path[0] ? c->path : "#");
    }
    return -1;
}

static int32_t node(struct sc *c)
{
    if (c->err)
        return -1;
    if (c->n->n_nodes >= c->n->max_nodes) {
        char lim[32];
        snprintf(lim, sizeof lim, "%d", c->n->max_nodes);
        return fail(c, PS_ERANGE, "grammar exceeds the compile limit of %s NFA nodes", lim);
    }
    return c->n->n_nodes++;
}

static void edge(struct sc *c, int32_t from, int32_t to, int lo, int hi, int32_t rule)
{
    if (c->err || from < 0 || to < 0)
        return;
    struct nfa *n = c->n;
    if (n->n_edges == n->cap_edges) {
        int32_t cap = n->cap_edges ? 2 * n->cap_edges : 1024;
        struct nfa_edge *e = realloc(n->edges, (size_t)cap * sizeof *e);
        if (!e) {
            fail(c, PS_ENOMEM, "%s", "out of memory");
            return;
        }
        n->edges = e;
        n->cap_edges = cap;
    }
    n->edges[n->n_edges++] = (struct nfa_edge){ from, to, (int16_t)lo, (int16_t)hi, rule };
}

static void eps(struct sc *c, int32_t a, int32_t b) { edge(c, a, b, NFA_EPS, NFA_EPS, -1); }

static int32_t g_range(struct sc *c, int32_t from, int lo, int hi)
{
    int32_t t = node(c);
    edge(c, from, t, lo, hi, -1);
    return c->err ? -1 : t;
}

static int32_t g_lit(struct sc *c, int32_t from, const char *s, size_t len)
{
    for (size_t i = 0; i < len && !c->err; i++)
        from = g_range(c, from, (uint8_t)s[i], (uint8_t)s[i]);
    return c->err ? -1 : from;
}

static int32_t g_str(struct sc *c, int32_t from, const char *s) { return g_lit(c, from, s, strlen(s)); }

static int32_t new_rule(struct sc *c)
{
    struct nfa *n = c->n;
    if (n->n_rules == n->cap_rules) {
        int32_t cap = n->cap_rules ? 2 * n->cap_rules : 8;
        struct nfa_rule *r = realloc(n->rules, (size_t)cap * sizeof *r);
        if (!r)
            return fail(c, PS_ENOMEM, "%s", "out of memory");
        n->rules = r;
        n->cap_rules = cap;
    }
    int32_t s = node(c), e = node(c);
    if (c->err)
        return -1;
    n->rules[n->n_rules] = (struct nfa_rule){ s, e };
    return n->n_rules++;
}

static int32_t g_call(struct sc *c, int32_t from, int32_t rule)
{
    int32_t t = node(c);
    edge(c, from, t, NFA_CALL, NFA_CALL, rule);
    return c->err ? -1 : t;
}

/* Repeat item(from) between min and max (REP_INF) times. */
typedef int32_t (*item_fn)(struct sc *c, int32_t from, const void *ctx, int32_t index);

static int32_t g_repeat(struct sc *c, int32_t from, int64_t min, int64_t max, item_fn fn, const void *ctx)
{
    if (min > MAX_UNROLL || (max != REP_INF && max > MAX_UNROLL))
        return fail(c, PS_ERANGE, "repetition count above the compile limit (%s)", "4096");
    int32_t cur = from;
    for (int64_t i = 0; i < min && !c->err; i++)
        cur = fn(c, cur, ctx, (int32_t)i);
    if (max == REP_INF) {
        int32_t h = node(c);
        eps(c, cur, h);
        int32_t e = fn(c, h, ctx, (int32_t)min);
        eps(c, e, h);
        return c->err ? -1 : h;
    }
    int32_t end = node(c);
    eps(c, cur, end);
    for (int64_t i = min; i < max && !c->err; i++) {
        cur = fn(c, cur, ctx, (int32_t)i);
        eps(c, cur, end);
    }
    return c->err ? -1 : end;
}

/* ---- JSON strings -------------------------------------------------------- */

/* Well-formed multi-byte UTF-8 sequence (U+0080..U+10FFFF, no surrogates). */
static void g_utf8_multi(struct sc *c, int32_t from, int32_t to)
{
    int32_t a, b;
    a = g_range(c, from, 0xC2, 0xDF); edge(c, a, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xE0, 0xE0); b = g_range(c, a, 0xA0, 0xBF); edge(c, b, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xE1, 0xEC); b = g_range(c, a, 0x80, 0xBF); edge(c, b, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xED, 0xED); b = g_range(c, a, 0x80, 0x9F); edge(c, b, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xEE, 0xEF); b = g_range(c, a, 0x80, 0xBF); edge(c, b, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xF0, 0xF0); b = g_range(c, a, 0x90, 0xBF);
    b = g_range(c, b, 0x80, 0xBF); edge(c, b, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xF1, 0xF3); b = g_range(c, a, 0x80, 0xBF);
    b = g_range(c, b, 0x80, 0xBF); edge(c, b, to, 0x80, 0xBF, -1);
    a = g_range(c, from, 0xF4, 0xF4); b = g_range(c, a, 0x80, 0x8F);
    b = g_range(c, b, 0x80, 0xBF); edge(c, b, to, 0x80, 0xBF, -1);
}

static void hexdigit(struct sc *c, int32_t a, int32_t b)
{
    edge(c, a, b, '0', '9', -1);
    edge(c, a, b, 'a', 'f', -1);
    edge(c, a, b, 'A', 'F', -1);
}

/* One character of a JSON string body: unescaped printable, an escape
 * (\uXXXX without surrogates: one escape is always one code point), or a
 * multi-byte UTF-8 character. */
static int32_t g_json_char(struct sc *c, int32_t from, const void *ctx, int32_t index)
{
    (void)ctx; (void)index;
    int32_t to = node(c);
    edge(c, from, to, 0x20, 0x21, -1);
    edge(c, from, to, 0x23, 0x5B, -1);
    edge(c, from, to, 0x5D, 0x7F, -1);
    int32_t bs = g_range(c, from, '\\', '\\');
    static const char simple[] = "\"\\/bfnrt";
    for (const char *p = simple; *p; p++)
        edge(c, bs, to, (uint8_t)*p, (uint8_t)*p, -1);
    int32_t u = g_range(c, bs, 'u', 'u');
    int32_t h1 = node(c), h2 = node(c), h3 = node(c);
    edge(c, u, h1, '0', '9', -1); edge(c, u, h1, 'a', 'c', -1); edge(c, u, h1, 'A', 'C', -1);
    edge(c, u, h1, 'e', 'f', -1); edge(c, u, h1, 'E', 'F', -1);
    int32_t d = node(c);
    edge(c, u, d, 'd', 'd', -1); edge(c, u, d, 'D', 'D', -1);
    edge(c, d, h2, '0', '7', -1);
    hexdigit(c, h1, h2);
    hexdigit(c, h2, h3);
    hexdigit(c, h3, to);
    g_utf8_multi(c, from, to);
    return c->err ? -1 : to;
}

static int32_t g_string(struct sc *c, int32_t from, int64_t min, int64_t max)
{
    from = g_str(c, from, "\"");
    from = g_repeat(c, from, min, max, g_json_char, NULL);
    return g_str(c, from, "\"");
}

/* Bytes pos.. of a UTF-8 character with lead byte `lead` (need bytes in
 * all), from `from` into `to`; at pos, bytes with child[b] >= 0 (the trie's
 * own) are left out when child is given. */
static void g_utf8_rest(struct sc *c, int32_t from, uint8_t lead, int pos, int32_t to, const int32_t *child)
{
    int need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    int lo = 0x80, hi = 0xBF;
    if (pos == 1) {
        if (lead == 0xE0) lo = 0xA0;
        else if (lead == 0xED) hi = 0x9F;
        else if (lead == 0xF0) lo = 0x90;
        else if (lead == 0xF4) hi = 0x8F;
    }
    int32_t t = to;
    if (pos + 1 < need) {
        t = node(c);
        int32_t u = t;
        for (int k = pos + 1; k < need; k++) {
            int32_t v = k + 1 < need ? node(c) : to;
            edge(c, u, v, 0x80, 0xBF, -1);
            u = v;
        }
    }
    for (int b = lo; b <= hi; b++)
        if (!child || child[b] < 0)
            edge(c, from, t, b, b, -1);
}

/* A JSON string whose text (once unescaped) is none of the names in excl
 * (their JSON-escaped bodies, as cJSON writes them): the keys of
 * additionalProperties.  Built as a byte trie of the escaped names; a key
 * leaves the trie into a free state (any JSON string characters) as soon as
 * its text can no longer spell a name:
 *   - a byte no name continues with that starts or ends a well-formed
 *     character (ASCII, a UTF-8 lead byte, or a continuation byte inside a
 *     name's multi-byte character), the rest of that character following;
 *   - an escape \" \\ \/ \b \f \n \r \t no name continues with, unless it
 *     is \/ and a name continues with a plain '/'.  \u escapes are taken
 *     only once outside the trie (one could spell any character).
 * So every key outside the trie decodes to a string that is not a name. */
static int32_t g_key_excluding(struct sc *c, int32_t from, char **excl, int32_t n_excl)
{
    from = g_str(c, from, "\"");
    int32_t end = node(c), free_s = node(c);
    if (c->err)
        return -1;
    eps(c, g_json_char(c, free_s, NULL, 0), free_s);
    edge(c, free_s, end, '"', '"', -1);
    /* trie: node ids and their prefix strings, built level by level */
    struct tn { int32_t id; const char *pfx; int32_t len; };
    int32_t cap = 1, nt = 0;
    for (int32_t i = 0; i < n_excl; i++)
        cap += (int32_t)strlen(excl[i]);
    struct tn *t = malloc((size_t)cap * sizeof *t);
    if (!t)
        return fail(c, PS_ENOMEM, "%s", "out of memory");
    t[nt++] = (struct tn){ from, "", 0 };
    for (int32_t k = 0; k < nt && !c->err; k++) {
        struct tn cur = t[k];
        int terminal = 0, slash = 0;
        int32_t child[256];
        for (int b = 0; b < 256; b++)
            child[b] = -1;
        for (int32_t i = 0; i < n_excl; i++) {
            const char *e = excl[i];
            if ((int32_t)strlen(e) < cur.len || memcmp(e, cur.pfx, (size_t)cur.len))
                continue;
            if ((int32_t)strlen(e) == cur.len) {
                terminal = 1;
                continue;
            }
            uint8_t b = (uint8_t)e[cur.len];
            slash |= b == '/';
            if (child[b] < 0 && cap > nt) {
                child[b] = node(c);
                t[nt++] = (struct tn){ child[b], e, cur.len + 1 };
                edge(c, cur.id, child[b], b, b, -1);
            }
        }
        /* where does this prefix stand: inside a name's multi-byte
         * character, right after a '\' of a name's escape, or between
         * characters */
        int32_t lead = cur.len - 1;
        while (lead >= 0 && ((uint8_t)cur.pfx[lead] & 0xC0) == 0x80)
            lead--;
        int mid_utf8 = 0;
        if (lead >= 0 && (uint8_t)cur.pfx[lead] >= 0xC0) {
            uint8_t l = (uint8_t)cur.pfx[lead];
            int need = l >= 0xF0 ? 4 : l >= 0xE0 ? 3 : 2;
            mid_utf8 = cur.len - lead < need;
            if (mid_utf8) /* another continuation byte: another character */
                g_utf8_rest(c, cur.id, l, cur.len - lead, free_s, child);
        }
        int esc = 0; /* 0 between characters, 1 after '\', 2.. inside \uXXXX */
        for (int32_t j = 0; j < cur.len; j++) {
            char ch = cur.pfx[j];
            esc = esc == 0 ? (ch == '\\') : esc == 1 ? (ch == 'u' ? 2 : 0) : esc == 5 ? 0 : esc + 1;
        }
        if (mid_utf8 || esc >= 2)
            continue; /* only the names' own bytes */
        if (esc == 1) { /* after a name's '\': other simple escapes diverge */
            int pslash = 0; /* a name continues with a plain '/' where '\' began */
            for (int32_t i = 0; i < n_excl; i++)
                pslash |= (int32_t)strlen(excl[i]) >= cur.len && !memcmp(excl[i], cur.pfx, (size_t)cur.len - 1) &&
                          excl[i][cur.len - 1] == '/';
            static const char simple[] = "\"\\/bfnrt";
            for (const char *q = simple; *q; q++)
                if (child[(uint8_t)*q] < 0 && (*q != '/' || !pslash))
                    edge(c, cur.id, free_s, (uint8_t)*q, (uint8_t)*q, -1);
            continue;
        }
        for (int b = 0x20; b < 0x80; b++)
            if (b != '"' && b != '\\' && child[b] < 0)
                edge(c, cur.id, free_s, b, b, -1);
        for (int l = 0xC2; l <= 0xF4; l++)
            if (child[l] < 0)
                g_utf8_rest(c, g_range(c, cur.id, l, l), (uint8_t)l, 1, free_s, NULL);
        if (child['\\'] < 0) { /* no name escapes here: a '\' of our own */
            int32_t e1 = g_range(c, cur.id, '\\', '\\');
            static const char simple[] = "\"\\/bfnrt";
            for (const char *q = simple; *q; q++)
                if (*q != '/' || !slash)
                    edge(c, e1, free_s, (uint8_t)*q, (uint8_t)*q, -1);
        }
        if (!terminal)
            edge(c, cur.id, end, '"', '"', -1);
    }
    free(t);
    return c->err ? -1 : end;
}

/* ---- regex subset (pattern) ---------------------------------------------- */

enum re_kind { RE_SET, RE_BYTES, RE_CAT, RE_ALT, RE_REP, RE_BOL, RE_EOL };

struct re_node {
    enum re_kind kind;
    uint8_t  set[16];    /* RE_SET: ASCII members (bit per code 0..127) */
    uint8_t  nonascii;   /* RE_SET: also every non-ASCII character      */
    char     bytes[8];   /* RE_BYTES: one literal UTF-8 character        */
    int32_t  n_bytes;
    int32_t  a, b;       /* RE_CAT/RE_ALT children, RE_REP child in a    */
    int32_t  min, max;   /* RE_REP, max REP_INF = unbounded             */
};

struct re {
    struct sc     *c;
    const char    *p, *end;
    struct re_node *nodes;
    int32_t        n, cap;
};

static int32_t re_new(struct re *r, enum re_kind k)
{
    if (r->c->err)
        return -1;
    if (r->n == r->cap) {
        int32_t cap = r->cap ? 2 * r->cap : 64;
        if (cap > 65536)
            return fail(r->c, PS_ERANGE, "pattern too large (%s)", "65536 nodes");
        struct re_node *nn = realloc(r->nodes, (size_t)cap * sizeof *nn);
        if (!nn)
            return fail(r->c, PS_ENOMEM, "%s", "out of memory");
        r->nodes = nn;
        r->cap = cap;
    }
    memset(&r->nodes[r->n], 0, sizeof r->nodes[r->n]);
    r->nodes[r->n].kind = k;
    r->nodes[r->n].a = r->nodes[r->n].b = -1;
    return r->n++;
}

static void set_add(uint8_t *s, int lo, int hi)
{
    for (int x = lo; x <= hi && x < 128; x++)
        s[x >> 3] |= (uint8_t)(1u << (x & 7));
}

static int set_has(const uint8_t *s, int x) { return x < 128 && (s[x >> 3] >> (x & 7)) & 1; }

/* Shorthand class \d \w \s (upper case = complement) over ASCII; returns 0
 * if not one.  U+001C..U+001F are whitespace to Python's re (\s) but not to
 * ECMA-262: neither \s nor \S has them, so either reading agrees. */
static int re_shorthand(char ch, uint8_t *s)
{
    uint8_t t[16] = { 0 };
    switch (ch | 0x20) {
    case 'd': set_add(t, '0', '9'); break;
    case 'w': set_add(t, '0', '9'); set_add(t, 'a', 'z'); set_add(t, 'A', 'Z'); set_add(t, '_', '_'); break;
    case 's': set_add(t, ' ', ' '); set_add(t, '\t', '\r'); break;
    default: return 0;
    }
    if (ch >= 'A' && ch <= 'Z') {
        for (int i = 0; i < 16; i++)
            t[i] = (uint8_t)~t[i];
        if (ch == 'S')
            t[0x1C >> 3] &= (uint8_t)~0xF0u; /* 0x1C..0x1F */
    }
    for (int i = 0; i < 16; i++)
        s[i] |= t[i];
    return 1;
}

/* Single escaped character (after '\'): returns the code (< 128) or -1. */
static int re_escape_char(struct re *r, char ch)
{
    switch (ch) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    default: break;
    }
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
        char k[3] = { '\\', ch, 0 };
        return fail(r->c, PS_EUNSUPPORTED, "pattern escape '%s' is not supported", k);
    }
    if ((uint8_t)ch >= 0x80)
        return fail(r->c, PS_EUNSUPPORTED, "%s", "non-ASCII escaped character in pattern");
    return (uint8_t)ch;
}

static int32_t re_alt(struct re *r);

static int32_t re_class(struct re *r)
{
    int32_t id = re_new(r, RE_SET);
    if (id < 0)
        return -1;
    uint8_t s[16] = { 0 };
    int neg = 0;
    if (r->p < r->end && *r->p == '^') {
        neg = 1;
        r->p++;
    }
    int first = 1, has_short = 0, amb_space = 0;
    while (r->p < r->end && (*r->p != ']' || first)) {
        first = 0;
        int lo;
        if (*r->p == '\\') {
            if (r->p + 1 >= r->end)
                return fail(r->c, PS_EUNSUPPORTED, "%s", "pattern ends inside a class");
            char e = r->p[1];
            r->p += 2;
            if (re_shorthand(e, s)) {
                has_short = 1;
                amb_space |= (e | 0x20) == 's';
                continue;
            }
            lo = re_escape_char(r, e);
            if (lo < 0)
                return -1;
        } else {
            if ((uint8_t)*r->p >= 0x80)
                return fail(r->c, PS_EUNSUPPORTED, "%s", "non-ASCII characters in a pattern class");
            lo = (uint8_t)*r->p++;
        }
        int hi = lo;
        if (r->p + 1 < r->end && *r->p == '-' && r->p[1] != ']') {
            r->p++;
            if (*r->p == '\\') {
                if (r->p + 1 >= r->end)
                    return fail(r->c, PS_EUNSUPPORTED, "%s", "pattern ends inside a class");
                hi = re_escape_char(r, r->p[1]);
                r->p += 2;
            } else {
                if ((uint8_t)*r->p >= 0x80)
                    return fail(r->c, PS_EUNSUPPORTED, "%s", "non-ASCII characters in a pattern class");
                hi = (uint8_t)*r->p++;
            }
            if (hi < lo)
                return fail(r->c, PS_EUNSUPPORTED, "%s", "bad range in pattern class");
        }
        set_add(s, lo, hi);
    }
    if (r->p >= r->end)
        return fail(r->c, PS_EUNSUPPORTED, "%s", "unterminated class in pattern");
    r->p++;
    if (neg) {
        for (int i = 0; i < 16; i++)
            s[i] = (uint8_t)~s[i];
        if (amb_space) /* [^\s] / [^\S]: leave U+001C..U+001F out (re_shorthand) */
            s[0x1C >> 3] &= (uint8_t)~0xF0u;
    }
    memcpy(r->nodes[id].set, s, 16);
    /* Non-ASCII characters: a negated class of literal characters matches
     * them all (ECMA-262 and Python agree).  A class with a shorthand (\d \w
     * \s \D ...) matches none: those are ASCII in ECMA-262 but Unicode in
     * Python's re, and only the non-ASCII-free reading is right under both. */
    r->nodes[id].nonascii = (uint8_t)(neg && !has_short);
    return id;
}

static int32_t re_atom(struct re *r)
{
    char ch = *r->p;
    if (ch == '(') {
        r->p++;
        if (r->p < r->end && *r->p == '?') {
            if (r->p + 1 < r->end && r->p[1] == ':') {
                r->p += 2;
            } else if (r->p + 2 < r->end && r->p[1] == 'P' && r->p[2] == '<') {
                while (r->p < r->end && *r->p != '>')
                    r->p++;
                r->p++;
            } else {
                return fail(r->c, PS_EUNSUPPORTED, "%s", "pattern group '(?...' (lookaround, flags) is not supported");
            }
        }
        int32_t inner = re_alt(r);
        if (inner < 0)
            return -1;
        if (r->p >= r->end || *r->p != ')')
            return fail(r->c, PS_EUNSUPPORTED, "%s", "unbalanced '(' in pattern");
        r->p++;
        return inner;
    }
    if (ch == '[') {
        r->p++;
        return re_class(r);
    }
    if (ch == '^' || ch == '$') {
        r->p++;
        return re_new(r, ch == '^' ? RE_BOL : RE_EOL);
    }
    int32_t id = re_new(r, RE_SET);
    if (id < 0)
        return -1;
    struct re_node *nd = &r->nodes[id];
    if (ch == '.') {
        r->p++;
        set_add(nd->set, 0, 127);
        nd->set['\n' >> 3] &= (uint8_t)~(1u << ('\n' & 7));
        nd->nonascii = 1;
        return id;
    }
    if (ch == '\\') {
        if (r->p + 1 >= r->end)
            return fail(r->c, PS_EUNSUPPORTED, "%s", "pattern ends with '\\'");
        char e = r->p[1];
        r->p += 2;
        if (re_shorthand(e, nd->set))
            return id; /* ASCII only, \D \W \S too (see re_class) */
        int x = re_escape_char(r, e);
        if (x < 0)
            return -1;
        set_add(r->nodes[id].set, x, x);
        return id;
    }
    if (ch == '*' || ch == '+' || ch == '?' || ch == '{' || ch == ')')
        return fail(r->c, PS_EUNSUPPORTED, "%s", "misplaced quantifier or ')' in pattern");
    uint8_t b = (uint8_t)ch;
    if (b < 0x80) {
        r->p++;
        set_add(nd->set, b, b);
        return id;
    }
    int len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
    if (len == 1 || r->p + len > r->end)
        return fail(r->c, PS_EUNSUPPORTED, "%s", "invalid UTF-8 in pattern");
    nd->kind = RE_BYTES;
    memcpy(nd->bytes, r->p, (size_t)len);
    nd->n_bytes = len;
    r->p += len;
    return id;
}

static int re_number(struct re *r, int32_t *v)
{
    if (r->p >= r->end || *r->p < '0' || *r->p > '9')
        return -1;
    int64_t x = 0;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
        x = x * 10 + (*r->p++ - '0');
        if (x > MAX_UNROLL)
            x = MAX_UNROLL + 1;
    }
    *v = (int32_t)x;
    return 0;
}

static int32_t re_rep(struct re *r)
{
    int32_t a = re_atom(r);
    while (a >= 0 && r->p < r->end) {
        int32_t min, max;
        char ch = *r->p;
        if (ch == '*') { min = 0; max = REP_INF; r->p++; }
        else if (ch == '+') { min = 1; max = REP_INF; r->p++; }
        else if (ch == '?') { min = 0; max = 1; r->p++; }
        else if (ch == '{') {
            const char *save = r->p++;
            if (re_number(r, &min)) {
                r->p = save;
                return fail(r->c, PS_EUNSUPPORTED, "%s", "'{' in pattern must start a {n,m} quantifier");
            }
            max = min;
            if (r->p < r->end && *r->p == ',') {
                r->p++;
                if (r->p < r->end && *r->p == '}')
                    max = REP_INF;
                else if (re_number(r, &max))
                    return fail(r->c, PS_EUNSUPPORTED, "%s", "bad {n,m} quantifier in pattern");
            }
            if (r->p >= r->end || *r->p != '}' || (max != REP_INF && max < min))
                return fail(r->c, PS_EUNSUPPORTED, "%s", "bad {n,m} quantifier in pattern");
            r->p++;
        } else {
            break;
        }
        /* lazy quantifiers match the same set of strings under search */
        if (r->p < r->end && *r->p == '?')
            r->p++;
        else if (r->p < r->end && *r->p == '+')
            return fail(r->c, PS_EUNSUPPORTED, "%s", "possessive quantifiers in pattern");
        int32_t rep = re_new(r, RE_REP);
        if (rep < 0)
            return -1;
        r->nodes[rep].a = a;
        r->nodes[rep].min = min;
        r->nodes[rep].max = max;
        a = rep;
    }
    return a;
}

static int32_t re_cat(struct re *r)
{
    int32_t acc = -1;
    while (r->p < r->end && *r->p != '|' && *r->p != ')') {
        int32_t x = re_rep(r);
        if (x < 0)
            return -1;
        if (acc < 0) {
            acc = x;
        } else {
            int32_t cat = re_new(r, RE_CAT);
            if (cat < 0)
                return -1;
            r->nodes[cat].a = acc;
            r->nodes[cat].b = x;
            acc = cat;
        }
    }
    if (acc < 0) { /* empty */
        acc = re_new(r, RE_REP);
        if (acc >= 0) {
            int32_t none = re_new(r, RE_SET);
            r->nodes[acc].a = none;
            r->nodes[acc].min = 0;
            r->nodes[acc].max = 0;
        }
    }
    return acc;
}

static int32_t re_alt(struct re *r)
{
    int32_t acc = re_cat(r);
    while (acc >= 0 && r->p < r->end && *r->p == '|') {
        r->p++;
        int32_t x = re_cat(r);
        if (x < 0)
            return -1;
        int32_t alt = re_new(r, RE_ALT);
        if (alt < 0)
            return -1;
        r->nodes[alt].a = acc;
        r->nodes[alt].b = x;
        acc = alt;
    }
    return acc;
}

/* Edges for one character of `nd` (a RE_SET), written as JSON string body. */
static int32_t g_re_set(struct sc *c, int32_t from, const struct re_node *nd)
{
    int32_t to = node(c);
    for (int x = 0; x < 128 && !c->err; x++) {
        if (!set_has(nd->set, x))
            continue;
        if (x == '"' || x == '\\') {
            int32_t bs = g_range(c, from, '\\', '\\');
            edge(c, bs, to, x, x, -1);
        } else if (x < 0x20) {
            char esc[8];
            switch (x) {
            case '\n': strcpy(esc, "\\n"); break;
            case '\t': strcpy(esc, "\\t"); break;
            case '\r': strcpy(esc, "\\r"); break;
            case '\b': strcpy(esc, "\\b"); break;
            case '\f': strcpy(esc, "\\f"); break;
            default: snprintf(esc, sizeof esc, "\\u%04x", x); break;
            }
            int32_t e = g_str(c, from, esc);
            eps(c, e, to);
        } else {
            int lo = x;
            while (x + 1 < 128 && set_has(nd->set, x + 1) && x + 1 != '"' && x + 1 != '\\')
                x++;
            edge(c, from, to, lo, x, -1);
        }
    }
    if (nd->nonascii)
        g_utf8_multi(c, from, to);
    return c->err ? -1 : to;
}

struct re_ctx { struct re *r; int32_t id; };
static int32_t g_re(struct sc *c, int32_t from, struct re *r, int32_t id);
static int32_t g_re_item(struct sc *c, int32_t from, const void *ctx, int32_t index)
{
    (void)index;
    const struct re_ctx *x = ctx;
    return g_re(c, from, x->r, x->id);
}

static int32_t g_re(struct sc *c, int32_t from, struct re *r, int32_t id)
{
    if (c->err)
        return -1;
    const struct re_node *nd = &r->nodes[id];
    switch (nd->kind) {
    case RE_SET: return g_re_set(c, from, nd);
    case RE_BYTES: return g_lit(c, from, nd->bytes, (size_t)nd->n_bytes);
    case RE_CAT: return g_re(c, g_re(c, from, r, nd->a), r, nd->b);
    case RE_ALT: {
        int32_t end = node(c);
        eps(c, g_re(c, from, r, nd->a), end);
        eps(c, g_re(c, from, r, nd->b), end);
        return c->err ? -1 : end;
    }
    case RE_REP: {
        struct re_ctx x = { r, nd->a };
        return g_repeat(c, from, nd->min, nd->max, g_re_item, &x);
    }
    case RE_BOL: case RE_EOL:
        return fail(c, PS_EUNSUPPORTED, "%s", "anchors '^'/'$' are supported only at the ends of a pattern");
    }
    return -1;
}

/* Top-level branch: strip a leading ^ and trailing $, else allow any text. */
static int32_t g_re_branch(struct sc *c, int32_t from, struct re *r, int32_t id)
{
    /* flatten the CAT chain (left-nested) */
    int32_t items[512], n = 0;
    int32_t cur = id;
    while (r->nodes[cur].kind == RE_CAT) {
        if (n >= 511)
            return fail(c, PS_ERANGE, "%s", "pattern too long");
        items[n++] = r->nodes[cur].b;
        cur = r->nodes[cur].a;
    }
    items[n++] = cur;
    /* items are reversed */
    int bol = r->nodes[items[n - 1]].kind == RE_BOL;
    int eol = r->nodes[items[0]].kind == RE_EOL;
    /* an unanchored end is a search: any text at all, newlines included */
    struct re_node any = { .kind = RE_SET, .nonascii = 1 };
    set_add(any.set, 0, 127);
    int32_t anyid = re_new(r, RE_SET);
    if (anyid < 0)
        return -1;
    r->nodes[anyid] = any;
    struct re_ctx anyx = { r, anyid };
    if (!bol)
        from = g_repeat(c, from, 0, REP_INF, g_re_item, &anyx);
    for (int32_t i = n - 1 - bol; i >= eol && !c->err; i--)
        from = g_re(c, from, r, items[i]);
    if (!eol)
        from = g_repeat(c, from, 0, REP_INF, g_re_item, &anyx);
    return from;
}

static int32_t g_pattern(struct sc *c, int32_t from, const char *pat)
{
    struct re r = { .c = c, .p = pat, .end = pat + strlen(pat) };
    int32_t root = re_alt(&r);
    if (root >= 0 && r.p < r.end)
        root = fail(c, PS_EUNSUPPORTED, "%s", "unbalanced ')' in pattern");
    int32_t end = -1;
    if (root >= 0) {
        from = g_str(c, from, "\"");
        end = node(c);
        /* split top-level alternation into branches */
        int32_t stack[256], ns = 0;
        stack[ns++] = root;
        while (ns && !c->err) {
            int32_t x = stack[--ns];
            if (r.nodes[x].kind == RE_ALT && ns < 254) {
                stack[ns++] = r.nodes[x].a;
                stack[ns++] = r.nodes[x].b;
            } else {
                eps(c, g_re_branch(c, from, &r, x), end);
            }
        }
        end = g_str(c, end, "\"");
    }
    free(r.nodes);
    return c->err ? -1 : end;
}

/* ---- numbers ------------------------------------------------------------- */

static int32_t g_digits(struct sc *c, int32_t from, int64_t min, int64_t max);
static int32_t g_digit_item(struct sc *c, int32_t from, const void *ctx, int32_t index)
{
    (void)ctx; (void)index;
    return g_range(c, from, '0', '9');
}
static int32_t g_digits(struct sc *c, int32_t from, int64_t min, int64_t max)
{
    return g_repeat(c, from, min, max, g_digit_item, NULL);
}

/* Decimal strings a <= b of equal length n. */
static int32_t g_eqlen(struct sc *c, int32_t from, const char *a, const char *b, int n)
{
    if (c->err)
        return -1;
    if (n == 0)
        return from;
    if (a[0] == b[0])
        return g_eqlen(c, g_range(c, from, a[0], a[0]), a + 1, b + 1, n - 1);
    int free_lo = 1, free_hi = 1;
    for (int i = 1; i < n; i++) {
        free_lo &= a[i] == '0';
        free_hi &= b[i] == '9';
    }
    if (free_lo && free_hi)
        return g_digits(c, g_range(c, from, a[0], b[0]), n - 1, n - 1);
    char nines[24], zeros[24];
    memset(nines, '9', sizeof nines);
    memset(zeros, '0', sizeof zeros);
    int32_t end = node(c);
    int lo_digit = a[0], hi_digit = b[0];
    if (!free_lo) {
        eps(c, g_eqlen(c, g_range(c, from, a[0], a[0]), a + 1, nines, n - 1), end);
        lo_digit++;
    }
    if (!free_hi) {
        eps(c, g_eqlen(c, g_range(c, from, b[0], b[0]), zeros, b + 1, n - 1), end);
        hi_digit--;
    }
    if (lo_digit <= hi_digit)
        eps(c, g_digits(c, g_range(c, from, lo_digit, hi_digit), n - 1, n - 1), end);
    return c->err ? -1 : end;
}

/* Non-negative integers lo..hi (no leading zeros). */
static int32_t g_uint_range(struct sc *c, int32_t from, int64_t lo, int64_t hi)
{
    int32_t end = node(c);
    char a[24], b[24];
    int64_t p = 1;
    for (int len = 1; len <= 19 && !c->err; len++) {
        int64_t first = len == 1 ? 0 : p, last = p > INT64_MAX / 10 ? INT64_MAX : p * 10 - 1;
        int64_t x = lo > first ? lo : first, y = hi < last ? hi : last;
        if (x <= y) {
            snprintf(a, sizeof a, "%lld", (long long)x);
            snprintf(b, sizeof b, "%lld", (long long)y);
            eps(c, g_eqlen(c, from, a, b, len), end);
        }
        if (p > INT64_MAX / 10)
            break;
        p *= 10;
    }
    return c->err ? -1 : end;
}

static int32_t g_int_range(struct sc *c, int32_t from, int64_t lo, int64_t hi)
{
    int32_t end = node(c);
    if (lo < 0) {
        int64_t h = hi < -1 ? hi : -1;
        eps(c, g_uint_range(c, g_str(c, from, "-"), -h, -lo), end);
    }
    if (hi >= 0)
        eps(c, g_uint_range(c, from, lo > 0 ? lo : 0, hi), end);
    return c->err ? -1 : end;
}

struct bounds {
    int    has_lo, has_hi;
    double lo, hi;
    int    lo_excl, hi_excl;
};

static int get_bounds(struct sc *c, const cJSON *s, struct bounds *b)
{
    memset(b, 0, sizeof *b);
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "minimum")) && cJSON_IsNumber(x)) {
        b->has_lo = 1; b->lo = x->valuedouble;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "maximum")) && cJSON_IsNumber(x)) {
        b->has_hi = 1; b->hi = x->valuedouble;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "exclusiveMinimum"))) {
        if (cJSON_IsBool(x)) {
            b->lo_excl = cJSON_IsTrue(x);
        } else if (cJSON_IsNumber(x)) {
            if (!b->has_lo || x->valuedouble >= b->lo) {
                b->has_lo = 1; b->lo = x->valuedouble; b->lo_excl = 1;
            }
        }
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "exclusiveMaximum"))) {
        if (cJSON_IsBool(x)) {
            b->hi_excl = cJSON_IsTrue(x);
        } else if (cJSON_IsNumber(x)) {
            if (!b->has_hi || x->valuedouble <= b->hi) {
                b->has_hi = 1; b->hi = x->valuedouble; b->hi_excl = 1;
            }
        }
    }
    if (b->has_lo && fabs(b->lo) > 1e18)
        return fail(c, PS_EUNSUPPORTED, "%s", "numeric bound beyond 1e18");
    if (b->has_hi && fabs(b->hi) > 1e18)
        return fail(c, PS_EUNSUPPORTED, "%s", "numeric bound beyond 1e18");
    return 0;
}

/* Integer range [Li, Hi] implied by bounds (capped when open). */
static void int_bounds(const struct bounds *b, int64_t *lo, int64_t *hi)
{
    *lo = -INT_CAP;
    *hi = INT_CAP;
    if (b->has_lo) {
        double f = ceil(b->lo);
        if (b->lo_excl && f == b->lo)
            f += 1;
        *lo = (int64_t)f;
    }
    if (b->has_hi) {
        double f = floor(b->hi);
        if (b->hi_excl && f == b->hi)
            f -= 1;
        *hi = (int64_t)f;
    }
}

static int32_t g_integer(struct sc *c, int32_t from, const cJSON *s)
{
    struct bounds b;
    if (get_bounds(c, s, &b))
        return -1;
    int64_t lo, hi;
    int_bounds(&b, &lo, &hi);
    if (lo > hi)
        return fail(c, PS_EINVAL, "%s", "integer bounds leave no value (minimum > maximum)");
    return g_int_range(c, from, lo, hi);
}

/* ---- bounded numbers: fractions against decimal bounds ----
 *
 * A bounded number with a fraction is written k.f (or -k.f): k without
 * leading zeros, f of 1.. digits ending in a non-zero one.  It is compared
 * with a bound as decimals, the bound taken as the shortest decimal that
 * reads back as the same double.  At most 15 significant digits are written
 * (15 - digits(k) fraction digits; 15 when k is 0): decimals that short are
 * distinct doubles, so the decimal order is the order a validator working in
 * doubles (Python, JavaScript) sees, exclusive bounds included. */

/* x >= 0 as its shortest round-trip decimal: integer part and fraction
 * digits without trailing zeros ("" when x is whole).  x <= 1e18. */
struct dec { int64_t ip; char frac[48]; };

static void dec_of(double x, struct dec *d)
{
    char buf[48], m[24];
    int p = 1;
    for (; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    snprintf(buf, sizeof buf, "%.*e", p - 1, x);
    int nm = 0;
    const char *q = buf;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9' && nm < (int)sizeof m)
            m[nm++] = *q;
    int e = *q ? atoi(q + 1) : 0; /* value = m[0].m[1..] * 10^e */
    d->ip = 0;
    int nf = 0;
    for (int i = 0; i <= e; i++)
        d->ip = d->ip * 10 + (i < nm ? m[i] - '0' : 0);
    for (int i = e + 1; i < nm; i++) {
        if (i < 0) {
            for (int z = i; z < 0 && nf < 40; z++)
                d->frac[nf++] = '0';
            i = 0;
        }
        if (nf < 40)
            d->frac[nf++] = m[i];
    }
    while (nf > 0 && d->frac[nf - 1] == '0')
        nf--;
    d->frac[nf] = 0;
}

struct fracb {
    const char *lo, *hi; /* fraction digits of the bounds, NULL = none */
    int lo_n, hi_n, lo_ex, hi_ex;
    int max;             /* fraction digits allowed */
    int32_t end;
};

static int fdig(const char *s, int n, int i) { return i < n ? s[i] : '0'; }

/* Fraction digits from position pos on (pos written), the digits so far equal
 * to the first pos digits of the lower bound's fraction (tlo) / the upper
 * one's (thi), zero-padded.  Ends at b->end after a non-zero digit. */
static void g_frac_rest(struct sc *c, const struct fracb *b, int32_t from, int pos, int tlo, int thi)
{
    if (c->err || pos >= b->max)
        return;
    int dl = tlo ? fdig(b->lo, b->lo_n, pos) : '0';
    int dh = thi ? fdig(b->hi, b->hi_n, pos) : '9';
    if (dl > dh)
        return;
    /* digits strictly between the tight ones: the rest is free */
    int fl = dl + (tlo ? 1 : 0), fh = dh - (thi ? 1 : 0);
    if (fl <= fh) {
        int32_t t = node(c);
        edge(c, from, t, fl, fh, -1);
        if (fh >= '1')
            edge(c, from, b->end, fl > '1' ? fl : '1', fh, -1);
        if (pos + 1 < b->max)
            edge(c, g_digits(c, t, 0, b->max - pos - 2), b->end, '1', '9', -1);
    }
    for (int d = dl; d <= dh && !c->err; d = d == dl && dh != dl ? dh : dh + 1) {
        int ntlo = tlo && d == dl, nthi = thi && d == dh;
        if (!ntlo && !nthi)
            continue;
        int32_t t = g_range(c, from, d, d);
        /* stopping here: the rest of a tight bound is zero (equal) or not */
        int lo_ok = !ntlo || (b->lo_n <= pos + 1 && !b->lo_ex);
        int hi_ok = !nthi || b->hi_n > pos + 1 || !b->hi_ex;
        if (d != '0' && lo_ok && hi_ok)
            edge(c, from, b->end, d, d, -1);
        g_frac_rest(c, b, t, pos + 1, ntlo, nthi);
    }
}

/* k "." fraction for every k in [x, y] (x >= 0), the fraction bounded as in
 * *fb, its length capped by the significant digits of k. */
static void g_kfrac(struct sc *c, int32_t from, int64_t x, int64_t y, struct fracb fb)
{
    if (x > y)
        return;
    if (x == 0) {
        fb.max = 15;
        g_frac_rest(c, &fb, g_str(c, g_str(c, from, "0"), "."), 0, fb.lo != NULL, fb.hi != NULL);
        x = 1;
    }
    int64_t p = 1;
    for (int len = 1; len < 15 && !c->err; len++, p *= 10) {
        int64_t a = x > p ? x : p, z = y < p * 10 - 1 ? y : p * 10 - 1;
        if (a > z)
            continue;
        fb.max = 15 - len;
        g_frac_rest(c, &fb, g_str(c, g_uint_range(c, from, a, z), "."), 0, fb.lo != NULL, fb.hi != NULL);
    }
}

/* Non-integers k.f (k >= 0) in [A, B] (exclusive ends as flagged; A >= 0,
 * B > 0), into end. */
static void g_pos_frac(struct sc *c, int32_t from, int32_t end, double A, int a_ex, double B, int b_ex)
{
    struct dec a, b;
    dec_of(A, &a);
    dec_of(B, &b);
    int a_int = !a.frac[0], b_int = !b.frac[0];
    struct fracb none = { .end = end };
    struct fracb lo = none, hi = none, both = none;
    lo.lo = both.lo = a.frac;
    lo.lo_n = both.lo_n = (int)strlen(a.frac);
    lo.lo_ex = both.lo_ex = a_ex;
    hi.hi = both.hi = b.frac;
    hi.hi_n = both.hi_n = (int)strlen(b.frac);
    hi.hi_ex = both.hi_ex = b_ex;
    if (a.ip == b.ip) {
        if (!a_int && !b_int)
            g_kfrac(c, from, a.ip, a.ip, both);
        else if (a_int && !b_int)
            g_kfrac(c, from, a.ip, a.ip, hi);
        return;
    }
    if (!a_int)
        g_kfrac(c, from, a.ip, a.ip, lo);
    g_kfrac(c, from, a_int ? a.ip : a.ip + 1, b.ip - 1, none);
    if (!b_int)
        g_kfrac(c, from, b.ip, b.ip, hi);
}

static int32_t g_number(struct sc *c, int32_t from, const cJSON *s)
{
    struct bounds b;
    if (get_bounds(c, s, &b))
        return -1;
    int32_t end = node(c);
    if (!b.has_lo && !b.has_hi) {
        int32_t x = g_int_range(c, from, -INT_CAP, INT_CAP);
        int32_t f = node(c), ip = node(c);
        eps(c, x, f);
        /* integer part before a fraction: any integer, or "-0" (-0.5) */
        eps(c, x, ip);
        eps(c, g_str(c, from, "-0"), ip);
        eps(c, g_digits(c, g_str(c, ip, "."), 1, 15), f);
        eps(c, f, end);
        int32_t e = node(c);
        edge(c, f, e, 'e', 'e', -1);
        edge(c, f, e, 'E', 'E', -1);
        int32_t sgn = node(c);
        eps(c, e, sgn);
        edge(c, e, sgn, '+', '+', -1);
        edge(c, e, sgn, '-', '-', -1);
        eps(c, g_digits(c, sgn, 1, 2), end);
        return c->err ? -1 : end;
    }
    double lo = b.has_lo ? b.lo : -(double)INT_CAP, hi = b.has_hi ? b.hi : (double)INT_CAP;
    int64_t li, hi_i;
    int_bounds(&b, &li, &hi_i);
    int any = 0;
    if (li <= hi_i) {
        eps(c, g_int_range(c, from, li, hi_i), end);
        any = 1;
    }
    /* positive non-integers: magnitude in [max(lo, 0), hi] */
    if (!(b.has_hi && hi <= 0) && !(b.has_lo && lo >= (double)INT_CAP)) {
        g_pos_frac(c, from, end, lo > 0 ? lo : 0, lo > 0 && b.lo_excl, hi, b.hi_excl);
        any = 1;
    }
    /* negative non-integers -m: m in [max(-hi, 0), -lo] */
    if (!(b.has_lo && lo >= 0) && !(b.has_hi && -hi >= (double)INT_CAP)) {
        int32_t neg = g_str(c, from, "-");
        g_pos_frac(c, neg, end, hi < 0 ? -hi : 0, hi < 0 && b.hi_excl, -lo, b.lo_excl);
        any = 1;
    }
    if (!any)
        return fail(c, PS_EINVAL, "%s", "number bounds leave no value this grammar can write");
    return c->err ? -1 : end;
}

/* ---- generic value, references, keywords --------------------------------- */

static int32_t g_schema(struct sc *c, int32_t from, const cJSON *s);

static int32_t any_rule(struct sc *c)
{
    if (c->any_rule >= 0)
        return c->any_rule;
    int32_t r = new_rule(c);
    if (r < 0)
        return -1;
    c->any_rule = r;
    int32_t st = c->n->rules[r].start, en = c->n->rules[r].end;
    eps(c, g_string(c, st, 0, REP_INF), en);
    static const cJSON num_schema = { 0 };
    eps(c, g_number(c, st, &num_schema), en);
    eps(c, g_str(c, st, "true"), en);
    eps(c, g_str(c, st, "false"), en);
    eps(c, g_str(c, st, "null"), en);
    /* object */
    int32_t o = g_str(c, st, "{");
    eps(c, g_str(c, o, "}"), en);
    int32_t h = node(c);
    int32_t kv = g_call(c, g_str(c, g_string(c, o, 0, REP_INF), ": "), r);
    eps(c, kv, h);
    eps(c, g_call(c, g_str(c, g_string(c, g_str(c, h, ", "), 0, REP_INF), ": "), r), h);
    eps(c, g_str(c, h, "}"), en);
    /* array */
    int32_t a = g_str(c, st, "[");
    eps(c, g_str(c, a, "]"), en);
    int32_t ah = node(c);
    eps(c, g_call(c, a, r), ah);
    eps(c, g_call(c, g_str(c, ah, ", "), r), ah);
    eps(c, g_str(c, ah, "]"), en);
    return c->err ? -1 : r;
}

static int32_t g_any(struct sc *c, int32_t from)
{
    int32_t r = any_rule(c);
    return r < 0 ? -1 : g_call(c, from, r);
}

static const cJSON *resolve_ref(struct sc *c, const char *ref)
{
    if (ref[0] != '#')
        return fail(c, PS_EUNSUPPORTED, "$ref '%s': only local references ('#...') are supported", ref), NULL;
    const cJSON *cur = c->root;
    const char *p = ref + 1;
    if (*p && *p != '/')
        return fail(c, PS_EUNSUPPORTED, "$ref '%s': anchors are not supported", ref), NULL;
    while (*p == '/') {
        p++;
        char tok[256];
        size_t k = 0;
        while (*p && *p != '/' && k < sizeof tok - 1) {
            if (*p == '~' && p[1] == '1') { tok[k++] = '/'; p += 2; }
            else if (*p == '~' && p[1] == '0') { tok[k++] = '~'; p += 2; }
            else tok[k++] = *p++;
        }
        tok[k] = 0;
        if (cJSON_IsArray(cur)) {
            char *end;
            long i = strtol(tok, &end, 10);
            cur = *end ? NULL : cJSON_GetArrayItem(cur, (int)i);
        } else {
            cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
        }
        if (!cur)
            return fail(c, PS_EINVAL, "$ref '%s' does not resolve", ref), NULL;
    }
    return cur;
}

static int32_t ref_rule(struct sc *c, const cJSON *target)
{
    for (int32_t i = 0; i < c->n_refs; i++)
        if (c->refs[i].target == target)
            return c->refs[i].rule;
    if (c->n_refs == c->cap_refs) {
        int32_t cap = c->cap_refs ? 2 * c->cap_refs : 8;
        struct refrule *r = realloc(c->refs, (size_t)cap * sizeof *r);
        if (!r)
            return fail(c, PS_ENOMEM, "%s", "out of memory");
        c->refs = r;
        c->cap_refs = cap;
    }
    int32_t rule = new_rule(c);
    if (rule < 0)
        return -1;
    c->refs[c->n_refs++] = (struct refrule){ target, rule };
    return rule;
}

static int32_t g_ref(struct sc *c, int32_t from, const char *ref)
{
    const cJSON *t = resolve_ref(c, ref);
    if (!t)
        return -1;
    for (int32_t i = 0; i < c->n_expanding; i++)
        if (c->expanding[i] == t) {
            int32_t r = ref_rule(c, t);
            return r < 0 ? -1 : g_call(c, from, r);
        }
    if (c->n_expanding >= MAX_DEPTH)
        return fail(c, PS_ERANGE, "%s", "$ref nesting too deep");
    c->expanding[c->n_expanding++] = t;
    int32_t e = g_schema(c, from, t);
    c->n_expanding--;
    return e;
}

/* The JSON value v (an enum / const member) written in the grammar's one
 * layout, the one every other value uses: ", " between members, ": " after
 * keys, no other whitespace, object keys in the order the schema gives. */
static int32_t g_json_literal(struct sc *c, int32_t from, const cJSON *v)
{
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        int obj = cJSON_IsObject(v);
        from = g_str(c, from, obj ? "{" : "[");
        for (const cJSON *m = v->child; m && !c->err; m = m->next) {
            if (m != v->child)
                from = g_str(c, from, ", ");
            if (obj) {
                cJSON *key = cJSON_CreateString(m->string);
                char *k = key ? cJSON_PrintUnformatted(key) : NULL;
                cJSON_Delete(key);
                if (!k)
                    return fail(c, PS_ENOMEM, "%s", "out of memory");
                from = g_str(c, g_str(c, from, k), ": ");
                free(k);
            }
            from = g_json_literal(c, from, m);
        }
        return g_str(c, from, obj ? "}" : "]");
    }
    char *txt = cJSON_PrintUnformatted(v);
    if (!txt)
        return fail(c, PS_ENOMEM, "%s", "out of memory");
    int32_t e = g_str(c, from, txt);
    free(txt);
    return e;
}

static const char *const annotation_keys[] = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", NULL,
};
static const char *const supported_keys[] = {
    "type", "const", "enum", "anyOf", "oneOf", "allOf", "$ref", "properties", "required",
    "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minLength",
    "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", NULL,
};

static int key_in(const char *k, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(k, *list))
            return 1;
    return 0;
}

enum { T_NULL = 1, T_BOOL = 2, T_OBJECT = 4, T_ARRAY = 8, T_NUMBER = 16, T_STRING = 32, T_INTEGER = 64 };

static int type_bit(const char *t)
{
    static const char *names[] = { "null", "boolean", "object", "array", "number", "string", "integer" };
    for (int i = 0; i < 7; i++)
        if (!strcmp(t, names[i]))
            return 1 << i;
    return 0;
}

static int value_matches_types(const cJSON *v, int types)
{
    if (cJSON_IsNull(v)) return types & T_NULL;
    if (cJSON_IsBool(v)) return types & T_BOOL;
    if (cJSON_IsObject(v)) return types & T_OBJECT;
    if (cJSON_IsArray(v)) return types & T_ARRAY;
    if (cJSON_IsString(v)) return types & T_STRING;
    if (cJSON_IsNumber(v))
        return (types & T_NUMBER) || ((types & T_INTEGER) && v->valuedouble == floor(v->valuedouble));
    return 0;
}

static int64_t get_count(struct sc *c, const cJSON *s, const char *key, int64_t dflt)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!x)
        return dflt;
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble != floor(x->valuedouble))
        return fail(c, PS_EINVAL, "'%s' must be a non-negative integer", key), -2;
    if (x->valuedouble > MAX_UNROLL)
        return fail(c, PS_ERANGE, "'%s' above the compile limit of 4096", key), -2;
    return (int64_t)x->valuedouble;
}

static void path_push(struct sc *c, const char *seg, size_t *save)
{
    *save = strlen(c->path);
    size_t room = sizeof c->path - *save;
    snprintf(c->path + *save, room, "%s%s", *save ? "/" : "#/", seg);
}

static void path_pop(struct sc *c, size_t save) { c->path[save] = 0; }

struct elem_ctx { const cJSON *prefix, *items; int32_t n_prefix; };

static int32_t g_array_elem(struct sc *c, int32_t from, const void *ctx, int32_t index)
{
    const struct elem_ctx *x = ctx;
    if (index > 0)
        from = g_str(c, from, ", ");
    if (index < x->n_prefix)
        return g_schema(c, from, cJSON_GetArrayItem(x->prefix, index));
    if (!x->items)
        return g_any(c, from);
    return g_schema(c, from, x->items);
}

static int32_t g_array(struct sc *c, int32_t from, const cJSON *s)
{
    int64_t min = get_count(c, s, "minItems", 0), max = get_count(c, s, "maxItems", REP_INF);
    if (c->err)
        return -1;
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(s, "prefixItems");
    if (cJSON_IsArray(items)) { /* draft-4 tuple form */
        prefix = items;
        items = NULL;
        const cJSON *ai = cJSON_GetObjectItemCaseSensitive(s, "additionalItems");
        if (ai)
            return fail(c, PS_EUNSUPPORTED, "unsupported JSON Schema keyword '%s'", "additionalItems");
        if (max == REP_INF || max > cJSON_GetArraySize(prefix))
            max = cJSON_GetArraySize(prefix);
    }
    struct elem_ctx x = { prefix, items, prefix ? cJSON_GetArraySize(prefix) : 0 };
    if (items && cJSON_IsFalse(items)) {
        if (max == REP_INF || max > x.n_prefix)
            max = x.n_prefix;
        x.items = NULL;
    } else if (items && cJSON_IsTrue(items)) {
        x.items = NULL;
    }
    if (max != REP_INF && min > max)
        return fail(c, PS_EINVAL, "%s", "minItems > maxItems");
    from = g_str(c, from, "[");
    int32_t end = node(c);
    /* fixed part: elements 0 .. unroll-1, then a loop if unbounded */
    int64_t unroll = max != REP_INF ? max : (min > x.n_prefix ? min : x.n_prefix);
    if (unroll > MAX_UNROLL)
        return fail(c, PS_ERANGE, "%s", "array length above the compile limit of 4096");
    int32_t cur = from;
    for (int32_t k = 0; k < unroll && !c->err; k++) {
        if (k >= min)
            eps(c, cur, end);
        cur = g_array_elem(c, cur, &x, k);
    }
    if (max == REP_INF && !c->err) {
        int32_t h = node(c);
        eps(c, cur, h);
        struct elem_ctx y = x;
        y.n_prefix = 0;
        int32_t e = g_array_elem(c, h, &y, (int32_t)(unroll > 0 ? 1 : 0));
        if (unroll == 0) {
            /* first element has no comma; later ones loop with ", " */
            int32_t h2 = node(c);
            eps(c, e, h2);
            eps(c, g_array_elem(c, h2, &y, 1), h2);
            eps(c, h2, end);
        } else {
            eps(c, e, h);
        }
        eps(c, h, end);
    } else {
        eps(c, cur, end);
    }
    return g_str(c, end, "]");
}

static int32_t g_object(struct sc *c, int32_t from, const cJSON *s)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    if (props && !cJSON_IsObject(props))
        return fail(c, PS_EINVAL, "%s", "'properties' must be an object");
    if (req && !cJSON_IsArray(req))
        return fail(c, PS_EINVAL, "%s", "'required' must be an array");
    int allow_addl = addl ? !cJSON_IsFalse(addl) : c->lax;
    const cJSON *addl_schema = addl && cJSON_IsObject(addl) ? addl : NULL;

    /* property list: schema properties in order, then required names that
     * are not among them (their value follows additionalProperties) */
    int32_t n_props = props ? cJSON_GetArraySize(props) : 0, n_req = req ? cJSON_GetArraySize(req) : 0;
    int32_t cap = n_props + n_req;
    const char **names = calloc((size_t)cap + 1, sizeof *names);
    const cJSON **schemas = calloc((size_t)cap + 1, sizeof *schemas);
    char *reqflag = calloc((size_t)cap + 1, 1);
    char **excl = calloc((size_t)cap + 1, sizeof *excl);
    int32_t n = 0, n_excl = 0, end = -1;
    if (!names || !schemas || !reqflag || !excl) {
        fail(c, PS_ENOMEM, "%s", "out of memory");
        goto done;
    }
    for (const cJSON *p = props ? props->child : NULL; p; p = p->next) {
        names[n] = p->string;
        schemas[n] = p;
        n++;
    }
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
        if (!cJSON_IsString(r)) {
            fail(c, PS_EINVAL, "%s", "'required' entries must be strings");
            goto done;
        }
        int32_t i;
        for (i = 0; i < n; i++)
            if (!strcmp(names[i], r->valuestring))
                break;
        if (i == n) {
            if (!allow_addl) {
                fail(c, PS_EINVAL, "required property '%s' is not allowed by additionalProperties",
                     r->valuestring);
                goto done;
            }
            names[n] = r->valuestring;
            schemas[n] = addl_schema;
            n++;
        }
        reqflag[i] = 1;
    }
    for (int32_t i = 0; i < n; i++) {
        if (schemas[i] && cJSON_IsFalse(schemas[i])) {
            if (reqflag[i]) {
                fail(c, PS_EINVAL, "required property '%s' has schema false", names[i]);
                goto done;
            }
        }
        cJSON *str = cJSON_CreateString(names[i]);
        char *enc = str ? cJSON_PrintUnformatted(str) : NULL;
        cJSON_Delete(str);
        if (!enc) {
            fail(c, PS_ENOMEM, "%s", "out of memory");
            goto done;
        }
        size_t L = strlen(enc);
        memmove(enc, enc + 1, L - 2);
        enc[L - 2] = 0;
        excl[n_excl++] = enc;
    }

    from = g_str(c, from, "{");
    /* NS = nothing written yet, S = something written (next needs ", ") */
    int32_t ns = from, st = node(c);
    for (int32_t i = 0; i < n && !c->err; i++) {
        int32_t ns2 = node(c), st2 = node(c);
        if (!(schemas[i] && cJSON_IsFalse(schemas[i]))) {
            int32_t p0 = node(c);
            eps(c, ns, p0);
            edge(c, g_str(c, st, ", "), p0, NFA_EPS, NFA_EPS, -1);
            size_t save;
            path_push(c, names[i], &save);
            int32_t q = g_str(c, g_str(c, g_str(c, g_str(c, p0, "\""), excl[i]), "\""), ": ");
            q = schemas[i] ? g_schema(c, q, schemas[i]) : g_any(c, q);
            path_pop(c, save);
            eps(c, q, st2);
        }
        if (!reqflag[i]) {
            eps(c, ns, ns2);
            eps(c, st, st2);
        }
        ns = ns2;
        st = st2;
    }
    if (allow_addl && !c->err) {
        int32_t a0 = node(c);
        eps(c, ns, a0);
        eps(c, g_str(c, st, ", "), a0);
        int32_t q = g_str(c, g_key_excluding(c, a0, excl, n_excl), ": ");
        q = addl_schema ? g_schema(c, q, addl_schema) : g_any(c, q);
        eps(c, q, st);
    }
    end = node(c);
    eps(c, ns, end);
    eps(c, st, end);
    end = g_str(c, end, "}");
done:
    for (int32_t i = 0; i < n_excl; i++)
        free(excl[i]);
    free(excl);
    free(reqflag);
    free(schemas);
    free(names);
    return c->err ? -1 : end;
}

static const char *format_pattern(const char *f)
{
/* RFC 3339 full-date as a calendar date: years 0001..9999 (there is no year
 * 0 in the proleptic Gregorian calendar), the days of each month, and
 * February 29 only in leap years (divisible by 4, centuries only when
 * divisible by 400). */
#define YEAR "([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
#define LEAP "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
#define DATE "(" YEAR "-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|" \
             "02-(0[1-9]|1[0-9]|2[0-8]))|" LEAP "-02-29)"
#define TIME "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z"
#define OCT  "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    if (!strcmp(f, "date")) return "^" DATE "$";
    if (!strcmp(f, "time")) return "^" TIME "$";
    if (!strcmp(f, "date-time")) return "^" DATE "T" TIME "$";
    if (!strcmp(f, "uuid")) return "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
    if (!strcmp(f, "email")) return "^[a-z0-9]+(\\.[a-z0-9]+)*@[a-z0-9]+(\\.[a-z0-9]+)*\\.[a-z]{2,6}$";
    if (!strcmp(f, "ipv4")) return "^" OCT "\\." OCT "\\." OCT "\\." OCT "$";
    return NULL;
#undef YEAR
#undef LEAP
#undef DATE
#undef TIME
#undef OCT
}

static int32_t g_string_schema(struct sc *c, int32_t from, const cJSON *s)
{
    int64_t min = get_count(c, s, "minLength", 0), max = get_count(c, s, "maxLength", REP_INF);
    if (c->err)
        return -1;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
    const char *re = NULL;
    if (fmt) {
        if (!cJSON_IsString(fmt))
            return fail(c, PS_EINVAL, "%s", "'format' must be a string");
        re = format_pattern(fmt->valuestring);
        if (!re)
            return fail(c, PS_EUNSUPPORTED, "unsupported string format '%s'", fmt->valuestring);
    }
    if (pat) {
        if (!cJSON_IsString(pat))
            return fail(c, PS_EINVAL, "%s", "'pattern' must be a string");
        if (re)
            return fail(c, PS_EUNSUPPORTED, "%s", "'pattern' together with 'format'");
        re = pat->valuestring;
    }
    if (re) {
        if (min > 0 || max != REP_INF)
            return fail(c, PS_EUNSUPPORTED, "%s", "'minLength'/'maxLength' together with 'pattern' or 'format'");
        return g_pattern(c, from, re);
    }
    if (max != REP_INF && min > max)
        return fail(c, PS_EINVAL, "%s", "minLength > maxLength");
    return g_string(c, from, min, max);
}

static int32_t g_typed(struct sc *c, int32_t from, const cJSON *s, int t)
{
    switch (t) {
    case T_NULL: return g_str(c, from, "null");
    case T_BOOL: {
        int32_t end = node(c);
        eps(c, g_str(c, from, "true"), end);
        eps(c, g_str(c, from, "false"), end);
        return c->err ? -1 : end;
    }
    case T_OBJECT: return g_object(c, from, s);
    case T_ARRAY: return g_array(c, from, s);
    case T_NUMBER: return g_number(c, from, s);
    case T_INTEGER: return g_integer(c, from, s);
    case T_STRING: return g_string_schema(c, from, s);
    }
    return fail(c, PS_EINTERNAL, "%s", "bad type");
}

/* 1 when the enum / const member v meets the keywords of s that apply to
 * its type: minLength / maxLength (code points) for a string, the bounds b
 * for a number, minItems / maxItems for an array.  Other types pass. */
static int literal_fits(const cJSON *s, const struct bounds *b, const cJSON *v)
{
    const cJSON *lo = NULL, *hi = NULL;
    double n = 0;
    if (cJSON_IsString(v)) {
        lo = cJSON_GetObjectItemCaseSensitive(s, "minLength");
        hi = cJSON_GetObjectItemCaseSensitive(s, "maxLength");
        for (const unsigned char *p = (const unsigned char *)v->valuestring; *p; p++)
            n += (*p & 0xC0) != 0x80; /* cJSON holds strings as UTF-8 */
    } else if (cJSON_IsArray(v)) {
        lo = cJSON_GetObjectItemCaseSensitive(s, "minItems");
        hi = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
        n = cJSON_GetArraySize(v);
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (b->has_lo && (d < b->lo || (b->lo_excl && d == b->lo)))
            return 0;
        if (b->has_hi && (d > b->hi || (b->hi_excl && d == b->hi)))
            return 0;
        return 1;
    }
    if (lo && cJSON_IsNumber(lo) && n < lo->valuedouble)
        return 0;
    if (hi && cJSON_IsNumber(hi) && n > hi->valuedouble)
        return 0;
    return 1;
}

static int has_any(const cJSON *s, const char *const *keys)
{
    for (; *keys; keys++)
        if (cJSON_GetObjectItemCaseSensitive(s, *keys))
            return 1;
    return 0;
}

static int32_t g_schema(struct sc *c, int32_t from, const cJSON *s)
{
    if (c->err)
        return -1;
    if (cJSON_IsTrue(s))
        return g_any(c, from);
    if (cJSON_IsFalse(s))
        return fail(c, PS_EINVAL, "%s", "schema 'false' accepts no value");
    if (!cJSON_IsObject(s))
        return fail(c, PS_EINVAL, "%s", "a schema must be an object or a boolean");
    if (++c->depth > MAX_DEPTH) {
        c->depth--;
        return fail(c, PS_ERANGE, "%s", "schema nesting too deep");
    }
    int32_t end = -1;
    for (const cJSON *k = s->child; k; k = k->next) {
        if (!key_in(k->string, annotation_keys) && !key_in(k->string, supported_keys)) {
            fail(c, PS_EUNSUPPORTED, "unsupported JSON Schema keyword '%s'", k->string);
            goto out;
        }
    }
    static const char *const constraint_keys[] = {
        "type", "const", "enum", "properties", "required", "additionalProperties", "items",
        "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL,
    };
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "$ref"))) {
        if (!cJSON_IsString(x)) {
            fail(c, PS_EINVAL, "%s", "'$ref' must be a string");
            goto out;
        }
        if (has_any(s, constraint_keys) || cJSON_GetObjectItemCaseSensitive(s, "anyOf") ||
            cJSON_GetObjectItemCaseSensitive(s, "oneOf") || cJSON_GetObjectItemCaseSensitive(s, "allOf")) {
            fail(c, PS_EUNSUPPORTED, "%s", "'$ref' with sibling constraint keywords");
            goto out;
        }
        end = g_ref(c, from, x->valuestring);
        goto out;
    }
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    const cJSON *one = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(s, "allOf");
    if (all) {
        if (!cJSON_IsArray(all) || cJSON_GetArraySize(all) != 1 || any || one || has_any(s, constraint_keys)) {
            fail(c, PS_EUNSUPPORTED, "%s", "'allOf' is supported only with a single member and no siblings");
            goto out;
        }
        end = g_schema(c, from, all->child);
        goto out;
    }
    if (any || one) {
        const cJSON *list = any ? any : one;
        if (any && one) {
            fail(c, PS_EUNSUPPORTED, "%s", "'anyOf' together with 'oneOf'");
            goto out;
        }
        if (!cJSON_IsArray(list) || !cJSON_GetArraySize(list)) {
            fail(c, PS_EINVAL, "%s", "'anyOf'/'oneOf' must be a non-empty array");
            goto out;
        }
        if (has_any(s, constraint_keys)) {
            fail(c, PS_EUNSUPPORTED, "%s", "'anyOf'/'oneOf' with sibling constraint keywords");
            goto out;
        }
        end = node(c);
        int idx = 0;
        for (const cJSON *b = list->child; b && !c->err; b = b->next, idx++) {
            char seg[32];
            snprintf(seg, sizeof seg, "%s/%d", any ? "anyOf" : "oneOf", idx);
            size_t save;
            path_push(c, seg, &save);
            eps(c, g_schema(c, from, b), end);
            path_pop(c, save);
        }
        goto out;
    }
    int types = 0;
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "type"))) {
        if (cJSON_IsString(x)) {
            types = type_bit(x->valuestring);
            if (!types) {
                fail(c, PS_EUNSUPPORTED, "unknown type '%s'", x->valuestring);
                goto out;
            }
        } else if (cJSON_IsArray(x)) {
            for (const cJSON *t = x->child; t; t = t->next) {
                int b = cJSON_IsString(t) ? type_bit(t->valuestring) : 0;
                if (!b) {
                    fail(c, PS_EUNSUPPORTED, "unknown type '%s'", cJSON_IsString(t) ? t->valuestring : "?");
                    goto out;
                }
                types |= b;
            }
        } else {
            fail(c, PS_EINVAL, "%s", "'type' must be a string or an array");
            goto out;
        }
    }
    const cJSON *cst = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (cst || en) {
        /* The members are the whole language: sibling keywords filter them
         * (literal_fits) or, where that check is not implemented, refuse. */
        static const char *const unchecked[] = {
            "pattern", "format", "properties", "required", "additionalProperties", "items",
            "prefixItems", NULL,
        };
        for (const char *const *k = unchecked; *k; k++)
            if (cJSON_GetObjectItemCaseSensitive(s, *k)) {
                fail(c, PS_EUNSUPPORTED, "'enum'/'const' together with '%s'", *k);
                goto out;
            }
        struct bounds bnd;
        if (get_bounds(c, s, &bnd))
            goto out;
        end = node(c);
        int n_ok = 0;
        if (cst) {
            if ((!types || value_matches_types(cst, types)) && literal_fits(s, &bnd, cst)) {
                eps(c, g_json_literal(c, from, cst), end);
                n_ok++;
            }
            if (en) {
                fail(c, PS_EUNSUPPORTED, "%s", "'const' together with 'enum'");
                goto out;
            }
        } else {
            if (!cJSON_IsArray(en)) {
                fail(c, PS_EINVAL, "%s", "'enum' must be an array");
                goto out;
            }
            for (const cJSON *v = en->child; v; v = v->next)
                if ((!types || value_matches_types(v, types)) && literal_fits(s, &bnd, v)) {
                    eps(c, g_json_literal(c, from, v), end);
                    n_ok++;
                }
        }
        if (!n_ok)
            fail(c, PS_EINVAL, "%s", "no 'enum'/'const' value matches 'type' and the other keywords");
        goto out;
    }
    if (!types) {
        static const char *const ok[] = { "properties", "required", "additionalProperties", NULL };
        static const char *const ak[] = { "items", "prefixItems", "minItems", "maxItems", NULL };
        static const char *const sk[] = { "minLength", "maxLength", "pattern", "format", NULL };
        static const char *const nk[] = { "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL };
        if (has_any(s, ok)) types |= T_OBJECT;
        if (has_any(s, ak)) types |= T_ARRAY;
        if (has_any(s, sk)) types |= T_STRING;
        if (has_any(s, nk)) types |= T_NUMBER;
        if (!types) {
            end = g_any(c, from);
            goto out;
        }
    }
    if (types & T_NUMBER)
        types &= ~T_INTEGER;
    end = node(c);
    for (int t = 1; t <= T_INTEGER && !c->err; t <<= 1)
        if (types & t)
            eps(c, g_typed(c, from, s, t), end);
out:
    c->depth--;
    return c->err ? -1 : end;
}

int schema_to_nfa(const char *text, size_t len, const struct schema_limits *lim, struct nfa *n)
{
    memset(n, 0, sizeof *n);
    n->max_nodes = lim->max_nfa_nodes;
    struct sc c = { .n = n, .lax = lim->lax_objects, .any_rule = -1 };
    c.root = cJSON_ParseWithLength(text, len);
    if (!c.root) {
        const char *at = cJSON_GetErrorPtr();
        return ps_error_set(PS_EFORMAT, "json schema: not valid JSON (near '%.20s')", at ? at : "");
    }
    int32_t r0 = new_rule(&c);
    if (r0 >= 0) {
        c.expanding[c.n_expanding++] = c.root;
        if (lim->max_docs > 1) {
            /* doc ('\n' doc)*: a fresh head entered only here and from the
             * separator; the count is the matcher's (grammar.h) */
            int32_t head = node(&c);
            eps(&c, n->rules[r0].start, head);
            int32_t e = g_schema(&c, head, c.root);
            if (e >= 0) {
                int32_t tail = node(&c);
                eps(&c, e, tail);
                eps(&c, tail, n->rules[r0].end);
                edge(&c, tail, head, '\n', '\n', -1);
            }
        } else {
            eps(&c, g_schema(&c, n->rules[r0].start, c.root), n->rules[r0].end);
        }
        c.n_expanding = 0;
        /* bodies of recursive targets; building one may discover more */
        while (!c.err && c.n_built < c.n_refs) {
            struct refrule rr = c.refs[c.n_built++];
            c.expanding[0] = rr.target;
            c.n_expanding = 1;
            c.path[0] = 0;
            eps(&c, g_schema(&c, n->rules[rr.rule].start, rr.target), n->rules[rr.rule].end);
            c.n_expanding = 0;
        }
    }
    cJSON_Delete(c.root);
    free(c.refs);
    if (c.err) {
        nfa_free(n);
        return c.err;
    }
    return PS_OK;
}
