/* tokenizer.c - byte-level BPE (GPT-2 family) over a GGUF vocabulary.
 *
 * Encoding pipeline for one call:
 *   1. special-token partition: the input is cut at occurrences of
 *      USER_DEFINED token text anywhere and of CONTROL token text where
 *      asked (parse_special, or inside the caller's spans), longest token
 *      first at each position; those become their ids directly;
 *   2. pre-tokenizer: each remaining fragment is decoded to code points
 *      (strict UTF-8; a byte that starts no valid sequence is one "other"
 *      code point) and split into words by hand-written equivalents of the
 *      pre-type's regexes (see split_gpt2 / split_qwen2);
 *   3. BPE: a word starts as one symbol per byte and adjacent symbols are
 *      merged lowest merge rank first (leftmost on ties) until no pair has a
 *      rank; a final symbol that is not a vocab token is emitted byte by byte.
 *
 * Invariants of a built tokenizer (read-only afterwards, so encode and
 * decode may run on many threads at once):
 *   - symbols 0..n_vocab-1 are the vocab tokens; symbols >= n_vocab are
 *     "pseudo" symbols: byte strings reachable by merges (or single bytes)
 *     that have no usable token; they never leave bpe_word();
 *   - sym_bytes(s) is the raw byte string a symbol stands for;
 *   - merges maps (left symbol, right symbol) -> (rank, result symbol).
 *
 * Deviation from llama.cpp, by design: llama.cpp replaces each invalid
 * UTF-8 byte by U+FFFD before BPE (and decodes overlongs/surrogates
 * leniently); we split exactly as if the byte were U+FFFD but encode the
 * byte itself through its byte token, so decode(encode(s)) == s for every s
 * whose bytes all have tokens (see bpe_word for bytes that have none).
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/status.h"
#include "unicode.h"

enum pre_type { PRE_GPT2, PRE_SMOLLM, PRE_QWEN2 };

/* Open-addressing map from a byte string (held elsewhere) to an id. */
struct str_map {
    int32_t *slots; /* -1 = empty; else index into the owner's strings */
    size_t   mask;
};

struct merge_entry {
    uint64_t key; /* (left symbol << 32) | right symbol */
    int32_t  rank;
    int32_t  result;
    bool     used;
};

struct tokenizer {
    int32_t       n_vocab;
    enum pre_type pre;
    int32_t       bos, eos, eot, unk;
    bool          add_bos;
    uint8_t      *attr;      /* [n_vocab] enum token_attr */
    bool         *eog;       /* [n_vocab] */

    /* vocab text (as stored in the GGUF) of token i: text[text_off[i] ..
     * text_off[i+1]) */
    char         *text;
    uint32_t     *text_off;  /* [n_vocab+1] */
    struct str_map text_map; /* vocab text -> token id */

    /* raw bytes of every symbol (tokens then pseudo symbols) */
    char         *bytes;
    uint32_t     *bytes_off; /* [n_sym+1] */
    int32_t       n_sym;
    int32_t       byte_sym[256];   /* symbol of a single byte */
    int32_t       byte_token[256]; /* token emitted for a lone byte (-1: unk) */

    struct merge_entry *merges;
    size_t        merges_mask;

    /* special tokens (CONTROL / USER_DEFINED), longest text first */
    int32_t      *special;
    int32_t       n_special;
    int32_t       n_user_defined;   /* of them USER_DEFINED: recognised everywhere */
    uint64_t      special_first[4]; /* bitset of first bytes of special texts */
    size_t        max_token_bytes;
};

/* ---- small helpers ----------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* GPT-2 byte <-> unicode mapping: printable Latin-1 bytes map to
 * themselves; the other 68 map to U+0100.. in byte order: 0x00-0x20 to
 * U+0100-U+0120, 0x7F-0xA0 to U+0121-U+0142, 0xAD to U+0143. */
static bool byte_is_printable(uint32_t b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_to_cp(uint8_t b)
{
    if (byte_is_printable(b))
        return b;
    if (b <= 0x20)
        return 0x100 + b;
    if (b <= 0xA0)
        return 0x121 + (b - 0x7F);
    return 0x143; /* 0xAD */
}

static int cp_to_byte(uint32_t cp)
{
    if (cp < 0x100)
        return byte_is_printable(cp) ? (int)cp : -1;
    if (cp <= 0x120)
        return (int)(cp - 0x100);
    if (cp <= 0x142)
        return (int)(cp - 0x121 + 0x7F);
    return cp == 0x143 ? 0xAD : -1;
}

/* Byte-level decode of vocab text into out (capacity >= n); returns length.
 * A character outside the mapping is copied as its UTF-8 bytes. */
static size_t byte_level_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = unicode_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        int b = cp == UNICODE_INVALID ? -1 : cp_to_byte(cp);
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            memcpy(out + o, s + i, k);
            o += k;
        }
        i += k;
    }
    return o;
}

static int parse_byte_token(const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    const char *h = strchr(hex, s[3]), *l = strchr(hex, s[4]);
    if (!h || !l || !s[3] || !s[4])
        return -1;
    return (int)((h - hex) * 16 + (l - hex));
}

static bool attr_is_special(uint8_t a)
{
    return a == TOKEN_CONTROL || a == TOKEN_USER_DEFINED;
}

/* Tokens a BPE symbol may resolve to. */
static bool attr_bpe_ok(uint8_t a)
{
    return a == TOKEN_NORMAL || a == TOKEN_BYTE || a == TOKEN_USER_DEFINED;
}

/* ---- string map ----------------------------------------------------------- */

typedef const char *(*str_get_fn)(const void *ctx, int32_t id, size_t *len);

static int str_map_init(struct str_map *m, size_t n)
{
    size_t cap = pow2_at_least(n * 2);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return PS_ENOMEM;
    memset(m->slots, 0xff, cap * sizeof *m->slots);
    m->mask = cap - 1;
    return PS_OK;
}

/* Slot of key s: either holding an id whose string equals s, or empty. */
static size_t str_map_slot(const struct str_map *m, const char *s, size_t n,
                           str_get_fn get, const void *ctx)
{
    size_t i = hash_bytes(s, n) & m->mask;
    for (;;) {
        int32_t id = m->slots[i];
        if (id < 0)
            return i;
        size_t len;
        const char *t = get(ctx, id, &len);
        if (len == n && memcmp(t, s, n) == 0)
            return i;
        i = (i + 1) & m->mask;
    }
}

static const char *get_text(const void *ctx, int32_t id, size_t *len)
{
    const tokenizer *t = ctx;
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

static int32_t text_find(const tokenizer *t, const char *s, size_t n)
{
    return t->text_map.slots[str_map_slot(&t->text_map, s, n, get_text, t)];
}

/* ---- construction --------------------------------------------------------- */

/* Pseudo symbols under construction: raw byte strings keyed in a map. */
struct sym_builder {
    tokenizer     *t;
    char          *bytes;
    size_t         n_bytes, cap_bytes;
    uint32_t      *off;   /* [n_sym+1] */
    size_t         cap_sym;
    struct str_map map;   /* raw bytes -> pseudo symbol id */
};

static const char *get_sym_bytes(const void *ctx, int32_t id, size_t *len)
{
    const struct sym_builder *b = ctx;
    *len = b->off[id + 1] - b->off[id];
    return b->bytes + b->off[id];
}

static int sym_push(struct sym_builder *b, const char *s, size_t n)
{
    if (b->n_bytes + n > b->cap_bytes) {
        size_t cap = (b->cap_bytes + n) * 2;
        char *p = realloc(b->bytes, cap);
        if (!p)
            return PS_ENOMEM;
        b->bytes = p;
        b->cap_bytes = cap;
    }
    if ((size_t)b->t->n_sym + 2 > b->cap_sym) {
        size_t cap = b->cap_sym * 2 + 16;
        uint32_t *p = realloc(b->off, cap * sizeof *p);
        if (!p)
            return PS_ENOMEM;
        b->off = p;
        b->cap_sym = cap;
    }
    memcpy(b->bytes + b->n_bytes, s, n);
    b->n_bytes += n;
    b->t->n_sym++;
    b->off[b->t->n_sym] = (uint32_t)b->n_bytes;
    return PS_OK;
}

/* Symbol for vocab text s (byte-level encoded): the token when it is a
 * usable one, else a pseudo symbol for its raw bytes (created on demand). */
static int sym_for_text(struct sym_builder *b, const char *s, size_t n, int32_t *out)
{
    tokenizer *t = b->t;
    int32_t id = text_find(t, s, n);
    if (id >= 0 && attr_bpe_ok(t->attr[id])) {
        *out = id;
        return PS_OK;
    }
    char raw[1024];
    if (n > sizeof raw)
        return ps_error_set(PS_EFORMAT, "tokenizer: merge text of %zu bytes is too long", n);
    size_t rn = byte_level_decode(s, n, raw);
    /* A pseudo symbol is keyed by raw bytes among pseudo symbols only. */
    if (b->map.mask + 1 < (size_t)(t->n_sym - t->n_vocab + 1) * 2) {
        struct str_map grown;
        int rc = str_map_init(&grown, (size_t)(t->n_sym - t->n_vocab + 1) * 2);
        if (rc)
            return rc;
        for (int32_t i = t->n_vocab; i < t->n_sym; i++) {
            size_t len;
            const char *p = get_sym_bytes(b, i, &len);
            grown.slots[str_map_slot(&grown, p, len, get_sym_bytes, b)] = i;
        }
        free(b->map.slots);
        b->map = grown;
    }
    size_t slot = str_map_slot(&b->map, raw, rn, get_sym_bytes, b);
    if (b->map.slots[slot] >= 0) {
        *out = b->map.slots[slot];
        return PS_OK;
    }
    int rc = sym_push(b, raw, rn);
    if (rc)
        return rc;
    *out = t->n_sym - 1;
    b->map.slots[slot] = *out;
    return PS_OK;
}

static struct merge_entry *merge_slot(const tokenizer *t, uint64_t key)
{
    size_t i = hash_u64(key) & t->merges_mask;
    for (;;) {
        struct merge_entry *e = &t->merges[i];
        if (!e->used || e->key == key)
            return e;
        i = (i + 1) & t->merges_mask;
    }
}

static int load_merges(tokenizer *t, const gguf_file *f, struct sym_builder *b)
{
    enum gguf_type et;
    uint64_t n = 0;
    /* A byte-level BPE vocabulary without its merge list would encode every
     * text as single bytes: refused, as llama.cpp refuses it.  An empty list
     * (a synthetic model's) is a valid, explicit choice. */
    int rc = gguf_get_arr_info(f, "tokenizer.ggml.merges", &et, &n);
    if (rc == PS_ENOTFOUND)
        return ps_error_set(PS_EFORMAT, "tokenizer: required key 'tokenizer.ggml.merges' is missing (a gpt2 BPE vocabulary needs its merges)");
    else if (rc)
        return rc;
    else if (et != GGUF_TYPE_STRING)
        return ps_error_set(PS_EFORMAT, "tokenizer: tokenizer.ggml.merges is not a string array");
    if (n > INT32_MAX)
        return ps_error_set(PS_EFORMAT, "tokenizer: too many merges");
    t->merges_mask = pow2_at_least((size_t)n * 2) - 1;
    t->merges = calloc(t->merges_mask + 1, sizeof *t->merges);
    if (!t->merges)
        return PS_ENOMEM;
    for (uint64_t r = 0; r < n; r++) {
        const char *s;
        size_t len;
        rc = gguf_get_arr_str(f, "tokenizer.ggml.merges", r, &s, &len);
        if (rc)
            return rc;
        /* "left right": the separator is the first space after byte 0 */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp)
            return ps_error_set(PS_EFORMAT, "tokenizer: merge %llu has no space", (unsigned long long)r);
        size_t ln = (size_t)(sp - s), rn = len - ln - 1;
        char joined[1024];
        if (ln + rn > sizeof joined)
            return ps_error_set(PS_EFORMAT, "tokenizer: merge %llu is too long", (unsigned long long)r);
        memcpy(joined, s, ln);
        memcpy(joined + ln, sp + 1, rn);
        int32_t l, rt, res;
        if ((rc = sym_for_text(b, s, ln, &l)) || (rc = sym_for_text(b, sp + 1, rn, &rt)) ||
            (rc = sym_for_text(b, joined, ln + rn, &res)))
            return rc;
        uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)rt;
        struct merge_entry *e = merge_slot(t, key);
        if (e->used)
            continue; /* a repeated pair keeps its first (lowest) rank */
        e->used = true;
        e->key = key;
        e->rank = (int32_t)r;
        e->result = res;
    }
    return PS_OK;
}

static int get_id(const gguf_file *f, const char *key, int32_t n_vocab, int32_t *out)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc == PS_ENOTFOUND) {
        ps_error_clear();
        return PS_OK;
    }
    if (rc)
        return rc;
    if (v >= (uint32_t)n_vocab)
        return ps_error_set(PS_EFORMAT, "tokenizer: %s = %u is not a token id (n_vocab %d)", key, v, n_vocab);
    *out = (int32_t)v;
    return PS_OK;
}

struct special_key {
    uint32_t len;
    int32_t  id;
};

/* Longest text first; equal lengths by id. */
static int cmp_special(const void *a, const void *b)
{
    const struct special_key *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int load_vocab(tokenizer *t, const gguf_file *f)
{
    enum gguf_type et;
    uint64_t n;
    int rc = gguf_get_arr_info(f, "tokenizer.ggml.tokens", &et, &n);
    if (rc)
        return rc;
    if (et != GGUF_TYPE_STRING || n == 0 || n > INT32_MAX / 2)
        return ps_error_set(PS_EFORMAT, "tokenizer: tokenizer.ggml.tokens must be a non-empty string array");
    t->n_vocab = (int32_t)n;
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if ((rc = gguf_get_arr_str(f, "tokenizer.ggml.tokens", i, &s, &len)))
            return rc;
        total += len;
    }
    if (total > UINT32_MAX / 2)
        return ps_error_set(PS_EFORMAT, "tokenizer: vocab text too large");
    t->text = malloc(total + 1);
    t->text_off = malloc((n + 1) * sizeof *t->text_off);
    t->attr = malloc(n);
    t->eog = calloc(n, sizeof *t->eog);
    if (!t->text || !t->text_off || !t->attr || !t->eog)
        return PS_ENOMEM;
    size_t o = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        gguf_get_arr_str(f, "tokenizer.ggml.tokens", i, &s, &len);
        t->text_off[i] = (uint32_t)o;
        memcpy(t->text + o, s, len);
        o += len;
    }
    t->text_off[n] = (uint32_t)o;

    memset(t->attr, TOKEN_NORMAL, n);
    uint64_t nt = 0;
    rc = gguf_get_arr_info(f, "tokenizer.ggml.token_type", &et, &nt);
    if (rc == PS_OK) {
        const void *data;
        if (nt != n || (et != GGUF_TYPE_INT32 && et != GGUF_TYPE_UINT32))
            return ps_error_set(PS_EFORMAT, "tokenizer: tokenizer.ggml.token_type must be %llu int32",
                                (unsigned long long)n);
        if ((rc = gguf_get_arr_data(f, "tokenizer.ggml.token_type", &data)))
            return rc;
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, (const char *)data + i * 4, 4);
            t->attr[i] = (v >= TOKEN_NORMAL && v <= TOKEN_BYTE) ? (uint8_t)v : TOKEN_NORMAL;
        }
    } else if (rc != PS_ENOTFOUND) {
        return rc;
    }

    if ((rc = str_map_init(&t->text_map, (size_t)n)))
        return rc;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t len;
        const char *s = get_text(t, i, &len);
        size_t slot = str_map_slot(&t->text_map, s, len, get_text, t);
        if (t->text_map.slots[slot] < 0) /* duplicates: the first id wins */
            t->text_map.slots[slot] = i;
    }
    return PS_OK;
}

/* Raw bytes of every token (its decoded piece) followed by pseudo symbols. */
static int build_symbols(tokenizer *t, const gguf_file *f)
{
    struct sym_builder b = { .t = t };
    int rc = PS_OK;
    size_t total = t->text_off[t->n_vocab];
    b.cap_bytes = total + 4096;
    b.cap_sym = (size_t)t->n_vocab + 1024;
    b.bytes = malloc(b.cap_bytes);
    b.off = malloc(b.cap_sym * sizeof *b.off);
    if (!b.bytes || !b.off) {
        rc = PS_ENOMEM;
        goto fail;
    }
    b.off[0] = 0;
    t->n_sym = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t len, rn;
        const char *s = get_text(t, i, &len);
        char *dst = b.bytes + b.n_bytes;
        int byte = t->attr[i] == TOKEN_BYTE ? parse_byte_token(s, len) : -1;
        if (byte >= 0) {
            dst[0] = (char)byte;
            rn = 1;
        } else if (t->attr[i] == TOKEN_NORMAL) {
            rn = byte_level_decode(s, len, dst);
        } else {
            memcpy(dst, s, len);
            rn = len;
        }
        b.n_bytes += rn;
        t->n_sym++;
        b.off[t->n_sym] = (uint32_t)b.n_bytes;
        if (rn > t->max_token_bytes)
            t->max_token_bytes = rn;
    }
    if ((rc = str_map_init(&b.map, 64)))
        goto fail;

    /* single bytes: the byte-level character token, else "<0xHH>" */
    for (int c = 0; c < 256; c++) {
        char enc[4], hex[7];
        size_t n = unicode_utf8_encode(byte_to_cp((uint8_t)c), enc);
        if ((rc = sym_for_text(&b, enc, n, &t->byte_sym[c])))
            goto fail;
        t->byte_token[c] = t->byte_sym[c] < t->n_vocab ? t->byte_sym[c] : -1;
        if (t->byte_token[c] < 0) {
            snprintf(hex, sizeof hex, "<0x%02X>", c);
            int32_t id = text_find(t, hex, 6);
            if (id >= 0 && t->attr[id] == TOKEN_BYTE)
                t->byte_token[c] = id;
        }
    }
    if ((rc = load_merges(t, f, &b)))
        goto fail;
    t->bytes = b.bytes;
    t->bytes_off = b.off;
    free(b.map.slots);
    return PS_OK;
fail:
    free(b.map.slots);
    free(b.off);
    free(b.bytes);
    return rc;
}

static int build_specials(tokenizer *t)
{
    static const char *const eog_names[] = { "<|im_end|>", "<|endoftext|>", "<|eot_id|>",
                                             "<end_of_turn>", "<|eom_id|>" };
    struct special_key *keys = malloc((size_t)t->n_vocab * sizeof *keys);
    t->special = malloc((size_t)t->n_vocab * sizeof *t->special);
    if (!keys || !t->special) {
        free(keys);
        return PS_ENOMEM;
    }
    t->n_special = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        uint32_t len = t->text_off[i + 1] - t->text_off[i];
        if (!attr_is_special(t->attr[i]) || len == 0)
            continue;
        keys[t->n_special].len = len;
        keys[t->n_special++].id = i;
        t->n_user_defined += t->attr[i] == TOKEN_USER_DEFINED;
        uint8_t c = (uint8_t)t->text[t->text_off[i]];
        t->special_first[c >> 6] |= 1ull << (c & 63);
    }
    qsort(keys, (size_t)t->n_special, sizeof *keys, cmp_special);
    for (int32_t k = 0; k < t->n_special; k++)
        t->special[k] = keys[k].id;
    free(keys);

    if (t->eos >= 0)
        t->eog[t->eos] = true;
    if (t->eot >= 0)
        t->eog[t->eot] = true;
    for (size_t k = 0; k < sizeof eog_names / sizeof eog_names[0]; k++) {
        int32_t id = text_find(t, eog_names[k], strlen(eog_names[k]));
        if (id >= 0 && t->attr[id] == TOKEN_CONTROL)
            t->eog[id] = true;
    }
    return PS_OK;
}

int tokenizer_from_gguf(const gguf_file *f, tokenizer **out)
{
    *out = NULL;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return PS_ENOMEM;
    int rc;
    const char *model = NULL, *pre = "default";
    if ((rc = gguf_get_str(f, "tokenizer.ggml.model", &model, NULL)))
        goto fail;
    if (strcmp(model, "gpt2") != 0) {
        rc = ps_error_set(PS_EUNSUPPORTED, "tokenizer: model type '%s' is not supported (only 'gpt2')", model);
        goto fail;
    }
    rc = gguf_get_str(f, "tokenizer.ggml.pre", &pre, NULL);
    if (rc == PS_ENOTFOUND)
        pre = "default";
    else if (rc)
        goto fail;
    if (!strcmp(pre, "smollm"))
        t->pre = PRE_SMOLLM;
    else if (!strcmp(pre, "gpt2") || !strcmp(pre, "gpt-2") || !strcmp(pre, "default"))
        t->pre = PRE_GPT2;
    else if (!strcmp(pre, "qwen2"))
        t->pre = PRE_QWEN2;
    else {
        rc = ps_error_set(PS_EUNSUPPORTED, "tokenizer: pre-tokenizer '%s' is not supported "
                          "(smollm, gpt2, gpt-2, default, qwen2)", pre);
        goto fail;
    }
    if ((rc = load_vocab(t, f)))
        goto fail;
    t->bos = t->eos = t->eot = t->unk = -1;
    if ((rc = get_id(f, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos)) ||
        (rc = get_id(f, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos)) ||
        (rc = get_id(f, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot)) ||
        (rc = get_id(f, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk)))
        goto fail;
    rc = gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &t->add_bos);
    if (rc == PS_ENOTFOUND)
        t->add_bos = false;
    else if (rc)
        goto fail;
    if ((rc = build_symbols(t, f)) || (rc = build_specials(t)))
        goto fail;
    ps_error_clear();
    *out = t;
    return PS_OK;
fail:
    if (rc == PS_ENOMEM)
        ps_error_set(rc, "tokenizer: out of memory");
    tokenizer_free(t);
    return rc;
}

void tokenizer_free(tokenizer *t)
{
    if (!t)
        return;
    free(t->special);
    free(t->merges);
    free(t->bytes_off);
    free(t->bytes);
    free(t->text_map.slots);
    free(t->eog);
    free(t->attr);
    free(t->text_off);
    free(t->text);
    free(t);
}

/* ---- queries -------------------------------------------------------------- */

int32_t tokenizer_n_vocab(const tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }
bool tokenizer_add_bos(const tokenizer *t) { return t->add_bos; }

bool tokenizer_is_eog(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

enum token_attr tokenizer_token_attr(const tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return TOKEN_UNUSED;
    return (enum token_attr)t->attr[id];
}

int32_t tokenizer_find(const tokenizer *t, const char *text)
{
    return text_find(t, text, strlen(text));
}

size_t tokenizer_bytes_with_tokens(const tokenizer *t, const char *text, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += t->byte_token[(uint8_t)text[i]] >= 0;
    return n;
}

size_t tokenizer_max_token_bytes(const tokenizer *t)
{
    return t->max_token_bytes;
}

const char *tokenizer_piece(const tokenizer *t, int32_t id, bool special, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    uint8_t a = t->attr[id];
    if (!special && (a == TOKEN_CONTROL || a == TOKEN_UNKNOWN || a == TOKEN_UNUSED)) {
        *len = 0;
        return "";
    }
    *len = t->bytes_off[id + 1] - t->bytes_off[id];
    return t->bytes + t->bytes_off[id];
}

/* ---- encoding --------------------------------------------------------------- */

struct id_vec {
    int32_t *v;
    size_t   n, cap;
};

static int vec_push(struct id_vec *v, int32_t id)
{
    if (v->n == v->cap) {
        int32_t *p = ps_grow(v->v, &v->cap, v->n + 1, sizeof *p, 64);
        if (!p)
            return PS_ENOMEM;
        v->v = p;
    }
    v->v[v->n++] = id;
    return PS_OK;
}

/* Per-call scratch reused across words. */
struct bpe_sym {
    int32_t sym;
    int32_t prev, next; /* -1 at the ends */
};

struct bpe_cand {
    int32_t rank;
    int32_t left;  /* index into syms */
    int32_t lsym, rsym;
};

/* Cache of whole-word results for this call (words repeat in long text). */
struct word_cache {
    uint64_t *hash;   /* 0 = empty */
    uint32_t *start;  /* into ids */
    uint16_t *count;
    uint32_t *wstart; /* into the input text: the word itself */
    uint16_t *wlen;
    size_t    mask, used;
    struct id_vec ids;
};

struct encoder {
    const tokenizer   *t;
    const char        *text;   /* the whole input (word cache keys point into it) */
    struct id_vec     *out;
    struct bpe_sym    *syms;
    size_t             syms_cap;
    struct bpe_cand   *heap;
    size_t             heap_n, heap_cap;
    uint32_t          *cps;    /* code points of the current fragment */
    uint32_t          *offs;   /* byte offset of each code point (+1 at end) */
    size_t             cps_cap;
    struct word_cache  cache;
};

static bool cand_less(const struct bpe_cand *a, const struct bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(struct encoder *e, struct bpe_cand c)
{
    if (e->heap_n == e->heap_cap) {
        struct bpe_cand *p = ps_grow(e->heap, &e->heap_cap, e->heap_n + 1, sizeof *p, 64);
        if (!p)
            return PS_ENOMEM;
        e->heap = p;
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_less(&c, &e->heap[parent]))
            break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = c;
    return PS_OK;
}

static struct bpe_cand heap_pop(struct encoder *e)
{
    struct bpe_cand top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_less(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!cand_less(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = last;
    return top;
}

static int try_pair(struct encoder *e, int32_t left)
{
    if (left < 0)
        return PS_OK;
    int32_t right = e->syms[left].next;
    if (right < 0)
        return PS_OK;
    uint64_t key = ((uint64_t)(uint32_t)e->syms[left].sym << 32) | (uint32_t)e->syms[right].sym;
    const struct merge_entry *m = merge_slot(e->t, key);
    if (!m->used)
        return PS_OK;
    struct bpe_cand c = { m->rank, left, e->syms[left].sym, e->syms[right].sym };
    return heap_push(e, c);
}

static int emit_symbol(struct encoder *e, struct id_vec *out, int32_t sym)
{
    const tokenizer *t = e->t;
    if (sym < t->n_vocab)
        return vec_push(out, sym);
    for (uint32_t i = t->bytes_off[sym]; i < t->bytes_off[sym + 1]; i++) {
        int32_t id = t->byte_token[(uint8_t)t->bytes[i]];
        int rc = vec_push(out, id >= 0 ? id : t->unk);
        if (rc)
            return rc;
    }
    return PS_OK;
}

/* BPE of one word (raw bytes) appended to out. */
static int bpe_word(struct encoder *e, const uint8_t *w, size_t n, struct id_vec *out)
{
    const tokenizer *t = e->t;
    int rc;
    if (n == 1 && t->byte_token[w[0]] >= 0)
        return vec_push(out, t->byte_token[w[0]]);
    if (n * 3 > e->syms_cap) {
        size_t cap = n * 3;
        struct bpe_sym *p = realloc(e->syms, cap * sizeof *p);
        if (!p)
            return PS_ENOMEM;
        e->syms = p;
        e->syms_cap = cap;
    }
    size_t m = 0;
    bool missing = false;
    for (size_t i = 0; i < n; i++) {
        missing |= t->byte_token[w[i]] < 0;
        e->syms[m++].sym = t->byte_sym[w[i]];
    }
    if (missing) {
        /* Some byte has no token (SmolLM2 has none for 04 06 13 14 16 1D
         * C0 C1 F1 F2 F5-FF).  As llama.cpp: a byte of a valid character is
         * dropped, an invalid byte becomes U+FFFD. */
        m = 0;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t k = unicode_utf8_decode(w + i, n - i, &cp);
            for (size_t j = i; j < i + k; j++) {
                if (t->byte_token[w[j]] >= 0) {
                    e->syms[m++].sym = t->byte_sym[w[j]];
                } else if (cp == UNICODE_INVALID) {
                    e->syms[m++].sym = t->byte_sym[0xEF];
                    e->syms[m++].sym = t->byte_sym[0xBF];
                    e->syms[m++].sym = t->byte_sym[0xBD];
                }
            }
            i += k;
        }
        if (m == 0)
            return PS_OK;
    }
    for (size_t i = 0; i < m; i++) {
        e->syms[i].prev = (int32_t)i - 1;
        e->syms[i].next = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    n = m;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((rc = try_pair(e, (int32_t)i)))
            return rc;
    while (e->heap_n) {
        struct bpe_cand c = heap_pop(e);
        struct bpe_sym *l = &e->syms[c.left];
        /* stale: the left symbol changed or its neighbour did */
        if (l->sym != c.lsym || l->next < 0 || e->syms[l->next].sym != c.rsym)
            continue;
        struct bpe_sym *r = &e->syms[l->next];
        const struct merge_entry *m =
            merge_slot(t, ((uint64_t)(uint32_t)c.lsym << 32) | (uint32_t)c.rsym);
        l->sym = m->result;
        l->next = r->next;
        if (r->next >= 0)
            e->syms[r->next].prev = c.left;
        r->sym = -1; /* dead */
        if ((rc = try_pair(e, l->prev)) || (rc = try_pair(e, c.left)))
            return rc;
    }
    for (int32_t i = 0; i >= 0; i = e->syms[i].next)
        if ((rc = emit_symbol(e, out, e->syms[i].sym)))
            return rc;
    return PS_OK;
}

#define CACHE_MAX_WORD 64

static int cache_init(struct word_cache *c, size_t len)
{
    size_t cap = pow2_at_least(len / 4 < 1024 ? 1024 : len / 4);
    if (cap > (1u << 20))
        cap = 1u << 20;
    c->hash = calloc(cap, sizeof *c->hash);
    c->start = malloc(cap * sizeof *c->start);
    c->count = malloc(cap * sizeof *c->count);
    c->wstart = malloc(cap * sizeof *c->wstart);
    c->wlen = malloc(cap * sizeof *c->wlen);
    c->mask = cap - 1;
    return (c->hash && c->start && c->count && c->wstart && c->wlen) ? PS_OK : PS_ENOMEM;
}

static void cache_free(struct word_cache *c)
{
    free(c->hash);
    free(c->start);
    free(c->count);
    free(c->wstart);
    free(c->wlen);
    free(c->ids.v);
}

/* Encode the word text[a..b) (bytes) into e->out, through the cache. */
static int encode_word(struct encoder *e, size_t a, size_t b)
{
    const uint8_t *w = (const uint8_t *)e->text + a;
    size_t n = b - a;
    struct word_cache *c = &e->cache;
    if (!c->hash || n > CACHE_MAX_WORD || n < 2 || b > UINT32_MAX)
        return bpe_word(e, w, n, e->out);
    uint64_t h = hash_bytes((const char *)w, n) | 1;
    size_t i = h & c->mask;
    for (;;) {
        if (!c->hash[i])
            break;
        if (c->hash[i] == h && c->wlen[i] == n && memcmp(e->text + c->wstart[i], w, n) == 0) {
            for (uint32_t k = 0; k < c->count[i]; k++) {
                int rc = vec_push(e->out, c->ids.v[c->start[i] + k]);
                if (rc)
                    return rc;
            }
            return PS_OK;
        }
        i = (i + 1) & c->mask;
    }
    size_t before = c->ids.n;
    int rc = bpe_word(e, w, n, &c->ids);
    if (rc)
        return rc;
    size_t cnt = c->ids.n - before;
    for (size_t k = 0; k < cnt; k++)
        if ((rc = vec_push(e->out, c->ids.v[before + k])))
            return rc;
    if (c->used * 2 < c->mask && c->ids.n < UINT32_MAX) { /* keep load <= 1/2 */
        c->hash[i] = h;
        c->start[i] = (uint32_t)before;
        c->count[i] = (uint16_t)cnt;
        c->wstart[i] = (uint32_t)a;
        c->wlen[i] = (uint16_t)n;
        c->used++;
    } else {
        c->ids.n = before;
    }
    return PS_OK;
}

/* ---- pre-tokenizers ---------------------------------------------------------- */

#define CLS_OOR 0x80u /* position outside the fragment */

struct frag {
    const uint32_t *cps;
    size_t          lo, hi;
};

static uint32_t cls_at(const struct frag *f, size_t pos)
{
    if (pos < f->lo || pos >= f->hi)
        return CLS_OOR;
    return unicode_flags(f->cps[pos]);
}

static uint32_t cp_at(const struct frag *f, size_t pos)
{
    return pos < f->hi ? f->cps[pos] : UNICODE_INVALID;
}

static bool is_other(uint32_t cls)
{
    return !(cls & (UNICODE_SPACE | UNICODE_LETTER | UNICODE_NUMBER | CLS_OOR));
}

static int emit_cps(struct encoder *e, size_t from, size_t to)
{
    return encode_word(e, e->offs[from], e->offs[to]);
}

/* Length of a contraction ('s 't 're 've 'm 'll 'd) at pos, 0 if none.
 * fold: also match upper-case ASCII ('S, 'RE ...). */
static size_t contraction(const struct frag *f, size_t pos, bool fold)
{
    if (f->cps[pos] != '\'' || pos + 1 >= f->hi)
        return 0;
    uint32_t a = f->cps[pos + 1], b = pos + 2 < f->hi ? f->cps[pos + 2] : 0;
    if (fold) {
        a = (a >= 'A' && a <= 'Z') ? a + 32 : a;
        b = (b >= 'A' && b <= 'Z') ? b + 32 : b;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* End of the whitespace match at pos for \s+(?!\S)|\s+ (pos is space). */
static size_t space_run_end(const struct frag *f, size_t pos)
{
    size_t end = pos;
    while (cls_at(f, end) & UNICODE_SPACE)
        end++;
    if (end - pos > 1 && end < f->hi)
        end--; /* leave the last space to prefix the next word */
    return end;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int split_gpt2(struct encoder *e, const struct frag *f)
{
    size_t pos = f->lo;
    int rc;
    while (pos < f->hi) {
        size_t start = pos, end;
        size_t k = contraction(f, pos, false);
        uint32_t c = f->cps[pos];
        uint32_t cls2 = c == ' ' ? cls_at(f, pos + 1) : cls_at(f, pos);
        if (k) {
            end = pos + k;
        } else if (cls2 & (UNICODE_LETTER | UNICODE_NUMBER)) {
            uint32_t want = cls2 & (UNICODE_LETTER | UNICODE_NUMBER);
            end = pos + (c == ' ');
            while (cls_at(f, end) & want)
                end++;
        } else if (is_other(cls2)) {
            end = pos + (c == ' ');
            while (is_other(cls_at(f, end)))
                end++;
        } else {
            end = space_run_end(f, pos);
        }
        if ((rc = emit_cps(e, start, end)))
            return rc;
        pos = end;
    }
    return PS_OK;
}

/* Qwen2 (ECMAScript semantics, as llama.cpp runs it):
 * (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static int split_qwen2(struct encoder *e, const struct frag *f)
{
    size_t pos = f->lo;
    int rc;
    while (pos < f->hi) {
        size_t end;
        uint32_t c = f->cps[pos], cls = cls_at(f, pos);
        size_t k = contraction(f, pos, true);
        if (k) {
            end = pos + k;
        } else if (cls & UNICODE_LETTER) {
            end = pos + 1;
            while (cls_at(f, end) & UNICODE_LETTER)
                end++;
        } else if (c != '\r' && c != '\n' && !(cls & UNICODE_NUMBER) &&
                   (cls_at(f, pos + 1) & UNICODE_LETTER)) {
            end = pos + 2;
            while (cls_at(f, end) & UNICODE_LETTER)
                end++;
        } else if (cls & UNICODE_NUMBER) {
            end = pos + 1;
        } else if (is_other(c == ' ' ? cls_at(f, pos + 1) : cls)) {
            end = pos + (c == ' ');
            while (is_other(cls_at(f, end)))
                end++;
            while (cp_at(f, end) == '\r' || cp_at(f, end) == '\n')
                end++;
        } else {
            /* whitespace: \s*[\r\n]+ ends after the run's last \r or \n */
            size_t run = pos, last_nl = 0;
            while (cls_at(f, run) & UNICODE_SPACE) {
                if (f->cps[run] == '\r' || f->cps[run] == '\n')
                    last_nl = run + 1;
                run++;
            }
            end = last_nl ? last_nl : space_run_end(f, pos);
        }
        if ((rc = emit_cps(e, pos, end)))
            return rc;
        pos = end;
    }
    return PS_OK;
}

/* smollm: \p{N} split first (every number alone), then GPT-2 inside the
 * pieces between numbers. */
static int split_smollm(struct encoder *e, const struct frag *f)
{
    size_t pos = f->lo;
    int rc;
    while (pos < f->hi) {
        if (unicode_flags(f->cps[pos]) & UNICODE_NUMBER) {
            if ((rc = emit_cps(e, pos, pos + 1)))
                return rc;
            pos++;
            continue;
        }
        struct frag sub = { f->cps, pos, pos };
        while (sub.hi < f->hi && !(unicode_flags(f->cps[sub.hi]) & UNICODE_NUMBER))
            sub.hi++;
        if ((rc = split_gpt2(e, &sub)))
            return rc;
        pos = sub.hi;
    }
    return PS_OK;
}

/* Pre-tokenize and BPE text[a..b) (no special tokens inside). */
static int encode_fragment(struct encoder *e, size_t a, size_t b)
{
    size_t n = b - a;
    if (n == 0)
        return PS_OK;
    if (n + 1 > e->cps_cap) {
        size_t cap = n + 1;
        uint32_t *c = realloc(e->cps, cap * sizeof *c);
        if (!c)
            return PS_ENOMEM;
        e->cps = c;
        uint32_t *o = realloc(e->offs, cap * sizeof *o);
        if (!o)
            return PS_ENOMEM;
        e->offs = o;
        e->cps_cap = cap;
    }
    size_t m = 0;
    const uint8_t *s = (const uint8_t *)e->text;
    for (size_t i = a; i < b;) {
        uint32_t cp;
        size_t k = unicode_utf8_decode(s + i, b - i, &cp);
        e->cps[m] = cp;
        e->offs[m++] = (uint32_t)(i - a);
        i += k;
    }
    e->offs[m] = (uint32_t)n;
    /* offsets are relative to a: shift once here so words index e->text */
    for (size_t i = 0; i <= m; i++)
        e->offs[i] += (uint32_t)a;
    struct frag f = { e->cps, 0, m };
    switch (e->t->pre) {
    case PRE_SMOLLM:
        return split_smollm(e, &f);
    case PRE_QWEN2:
        return split_qwen2(e, &f);
    default:
        return split_gpt2(e, &f);
    }
}

/* Longest special token whose text starts at text[i] and ends by len, -1
 * if none; a CONTROL token must also end by ctl_end (<= i: none may). */
static int32_t match_special(const tokenizer *t, const char *text, size_t len, size_t ctl_end, size_t i)
{
    uint8_t c = (uint8_t)text[i];
    if (!(t->special_first[c >> 6] >> (c & 63) & 1))
        return -1;
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        size_t n = t->text_off[id + 1] - t->text_off[id];
        if (t->attr[id] == TOKEN_CONTROL && (ctl_end <= i || n > ctl_end - i))
            continue;
        if (n <= len - i && memcmp(text + i, t->text + t->text_off[id], n) == 0)
            return id;
    }
    return -1;
}

static int encode_spans(const tokenizer *t, const char *text, size_t len,
                        const struct text_span *spans, size_t n_spans,
                        int32_t **ids, size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    if (!text && len)
        return ps_error_set(PS_EINVAL, "tokenizer: NULL text");
    if (len > UINT32_MAX - 1)
        return ps_error_set(PS_ERANGE, "tokenizer: input of %zu bytes is too long", len);
    for (size_t k = 0; k < n_spans; k++) {
        if (spans[k].begin > spans[k].end || spans[k].end > len || (k > 0 && spans[k].begin < spans[k - 1].end))
            return ps_error_set(PS_EINVAL, "tokenizer: special span %zu [%u, %u) is not sorted, disjoint "
                                "and within %zu bytes", k, spans[k].begin, spans[k].end, len);
    }
    struct id_vec out = { 0 };
    struct encoder e = { .t = t, .text = text, .out = &out };
    int rc = PS_OK;
    if (len >= 4096 && (rc = cache_init(&e.cache, len)))
        goto fail;
    size_t frag_start = 0;
    if (t->n_special && (n_spans || t->n_user_defined)) {
        size_t k = 0; /* the first span that ends after i */
        for (size_t i = 0; i < len; i++) {
            while (k < n_spans && spans[k].end <= i)
                k++;
            const size_t ctl_end = k < n_spans && spans[k].begin <= i ? spans[k].end : 0;
            int32_t id = match_special(t, text, len, ctl_end, i);
            if (id < 0)
                continue;
            if ((rc = encode_fragment(&e, frag_start, i)) || (rc = vec_push(&out, id)))
                goto fail;
            i += t->text_off[id + 1] - t->text_off[id] - 1;
            frag_start = i + 1;
        }
    }
    if ((rc = encode_fragment(&e, frag_start, len)))
        goto fail;
    *ids = out.v ? out.v : malloc(sizeof(int32_t));
    if (!*ids) {
        rc = PS_ENOMEM;
        goto fail;
    }
    *n_ids = out.n;
    out.v = NULL;
fail:
    if (rc == PS_ENOMEM)
        ps_error_set(rc, "tokenizer: out of memory encoding %zu bytes", len);
    cache_free(&e.cache);
    free(e.offs);
    free(e.cps);
    free(e.heap);
    free(e.syms);
    free(out.v);
    return rc;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len,
                     bool parse_special, int32_t **ids, size_t *n_ids)
{
    const struct text_span all = { 0, len > UINT32_MAX - 1 ? 0 : (uint32_t)len };
    return encode_spans(t, text, len, &all, parse_special ? 1 : 0, ids, n_ids);
}

int tokenizer_encode_spans(const tokenizer *t, const char *text, size_t len,
                           const struct text_span *spans, size_t n_spans,
                           int32_t **ids, size_t *n_ids)
{
    if (n_spans && !spans) {
        *ids = NULL;
        *n_ids = 0;
        return ps_error_set(PS_EINVAL, "tokenizer: NULL spans");
    }
    return encode_spans(t, text, len, spans, n_spans, ids, n_ids);
}

/* ---- streaming decode ------------------------------------------------------- */

/* Could s[0..n) (n >= 1, s[0] a lead byte) still become a valid sequence? */
static bool utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t need = unicode_utf8_seq_len(s[0]);
    if (need < 2 || n >= need)
        return false;
    if (n >= 2) {
        uint8_t lo = 0x80, hi = 0xBF;
        if (s[0] == 0xE0)
            lo = 0xA0;
        else if (s[0] == 0xED)
            hi = 0x9F;
        else if (s[0] == 0xF0)
            lo = 0x90;
        else if (s[0] == 0xF4)
            hi = 0x8F;
        if (s[1] < lo || s[1] > hi)
            return false;
    }
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return false;
    return true;
}

int tokenizer_stream_push(const tokenizer *t, struct token_stream *s, int32_t id,
                          bool special, char *out, size_t cap, size_t *n_out)
{
    *n_out = 0;
    size_t plen;
    const char *p = tokenizer_piece(t, id, special, &plen);
    if (!p)
        return ps_error_set(PS_EINVAL, "tokenizer: token id %d out of range", id);
    size_t np = (size_t)s->n_pending, total = np + plen;
    if (total > cap)
        return ps_error_set(PS_EFULL, "tokenizer: stream buffer of %zu bytes < %zu", cap, total);
    memmove(out + np, p, plen);
    memcpy(out, s->pending, np);
    /* hold back a trailing incomplete but still possible sequence */
    size_t keep = 0;
    for (size_t k = 1; k <= 3 && k <= total; k++) {
        uint8_t c = (uint8_t)out[total - k];
        if ((c & 0xC0) == 0x80)
            continue;
        if (utf8_valid_prefix((const uint8_t *)out + total - k, k))
            keep = k;
        break;
    }
    memcpy(s->pending, out + total - keep, keep);
    s->n_pending = (int32_t)keep;
    *n_out = total - keep;
    return PS_OK;
}

int tokenizer_stream_flush(struct token_stream *s, char *out, size_t cap, size_t *n_out)
{
    *n_out = 0;
    size_t np = (size_t)s->n_pending;
    if (np > cap)
        return ps_error_set(PS_EFULL, "tokenizer: stream buffer of %zu bytes < %zu", cap, np);
    memcpy(out, s->pending, np);
    s->n_pending = 0;
    *n_out = np;
    return PS_OK;
}
