/* test_tokenizer.c - the tokenizer against llama.cpp reference ids
 * (tests/data/tokenizer_ref*.tsv, from scripts/gen-tokenizer-ref.py), round
 * trips, streaming decode, special tokens, and a synthetic vocabulary. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/unicode.h"
#include "test_util.h"

#define MAX_SHOWN 8

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Each invalid byte replaced by U+FFFD, as llama.cpp sees it. */
static size_t replace_invalid(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = unicode_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (cp == UNICODE_INVALID) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        } else {
            memcpy(out + o, s + i, k);
            o += k;
        }
        i += k;
    }
    return o;
}

static uint32_t byte_level_cp(int b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return (uint32_t)b;
    return b <= 0x20 ? 0x100u + (uint32_t)b : b <= 0xA0 ? 0x121u + (uint32_t)(b - 0x7F) : 0x143u;
}

/* Round trip is promised only for text whose every byte has a token. */
static bool all_bytes_have_tokens(const tokenizer *t, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char enc[5];
        enc[unicode_utf8_encode(byte_level_cp((unsigned char)s[i]), enc)] = '\0';
        if (tokenizer_find(t, enc) < 0)
            return false;
    }
    return true;
}

static void print_bytes(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
}

static void print_ids(const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%s%d", i ? " " : "", ids[i]);
}

/* decode(ids) with `special` into a malloc'd buffer */
static char *decode_all(const tokenizer *t, const int32_t *ids, size_t n, bool special, size_t *len)
{
    size_t cap = 16, o = 0;
    char *buf = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        const char *p = tokenizer_piece(t, ids[i], special, &pl);
        if (!p)
            continue;
        while (o + pl > cap)
            buf = realloc(buf, cap *= 2);
        memcpy(buf + o, p, pl);
        o += pl;
    }
    *len = o;
    return buf;
}

/* Check every case of a reference file; returns the number of cases. */
static int check_ref_file(const tokenizer *t, const char *path, int *mismatches)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        CHECK_MSG(0, "cannot open %s", path);
        return 0;
    }
    char *line = NULL;
    size_t cap = 0;
    int n_cases = 0, shown = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[got - 1] == '\n')
            line[--got] = '\0';
        char *tab1 = strchr(line, '\t');
        if (!tab1)
            continue;
        char *tab2 = strchr(tab1 + 1, '\t');
        CHECK(tab2 != NULL);
        if (!tab2)
            continue;
        char *tab3 = strchr(tab2 + 1, '\t');
        bool fffd = tab3 && strcmp(tab3 + 1, "fffd") == 0;
        if (tab3)
            *tab3 = '\0';
        size_t hn = (size_t)(tab1 - line) / 2;
        char *input = malloc(hn + 1);
        for (size_t i = 0; i < hn; i++)
            input[i] = (char)(hexval(line[2 * i]) * 16 + hexval(line[2 * i + 1]));
        bool special = tab1[1] == '1';
        int32_t *want = malloc((strlen(tab2) + 1) * sizeof *want);
        size_t n_want = 0;
        for (char *p = tab2 + 1; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p)
                break;
            want[n_want++] = (int32_t)v;
            p = end;
        }
        n_cases++;

        /* ids: llama.cpp's, on the U+FFFD-replaced text when invalid */
        char *fixed = malloc(hn * 3 + 1);
        size_t fn = fffd ? replace_invalid(input, hn, fixed) : (memcpy(fixed, input, hn), hn);
        int32_t *ids;
        size_t n_ids;
        int rc = tokenizer_encode(t, fixed, fn, special, &ids, &n_ids);
        CHECK_MSG(rc == PS_OK, "encode: %s", ps_error_last());
        bool same = rc == PS_OK && n_ids == n_want && (n_ids == 0 || !memcmp(ids, want, n_ids * sizeof *ids));
        if (!same) {
            ++*mismatches;
            if (shown++ < MAX_SHOWN) {
                fprintf(stderr, "%s: mismatch (special=%d%s) input \"", path, special, fffd ? ", fffd" : "");
                print_bytes(fixed, fn);
                fprintf(stderr, "\"\n  expected: ");
                print_ids(want, n_want);
                fprintf(stderr, "\n  got:      ");
                print_ids(ids, n_ids);
                fprintf(stderr, "\n");
            }
        }
        free(ids);

        /* round trip of the raw input */
        rc = tokenizer_encode(t, input, hn, special, &ids, &n_ids);
        CHECK(rc == PS_OK);
        size_t dn;
        char *dec = decode_all(t, ids, n_ids, special, &dn);
        if (all_bytes_have_tokens(t, input, hn) && (dn != hn || memcmp(dec, input, hn) != 0)) {
            CHECK_MSG(0, "round trip failed");
            fprintf(stderr, "  input \"");
            print_bytes(input, hn);
            fprintf(stderr, "\"\n  decoded \"");
            print_bytes(dec, dn);
            fprintf(stderr, "\"\n");
        }
        free(dec);
        free(ids);
        free(fixed);
        free(want);
        free(input);
    }
    free(line);
    fclose(f);
    return n_cases;
}

/* Copy the model's tokenizer keys into a new GGUF with another pre type. */
static tokenizer *variant(const gguf_file *src, const char *pre, const char *path)
{
    gguf_writer *w = NULL;
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    const char *keys[] = { "tokenizer.ggml.tokens", "tokenizer.ggml.merges" };
    if (gguf_writer_create(&w))
        return NULL;
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    for (int k = 0; k < 2; k++) {
        enum gguf_type et;
        uint64_t n;
        if (gguf_get_arr_info(src, keys[k], &et, &n))
            goto done;
        const char **v = malloc(n * sizeof *v);
        for (uint64_t i = 0; i < n; i++)
            gguf_get_arr_str(src, keys[k], i, &v[i], NULL);
        gguf_writer_set_arr_str(w, keys[k], v, n);
        free(v);
    }
    enum gguf_type et;
    uint64_t n;
    const void *data;
    if (gguf_get_arr_info(src, "tokenizer.ggml.token_type", &et, &n) ||
        gguf_get_arr_data(src, "tokenizer.ggml.token_type", &data))
        goto done;
    int32_t *types = malloc(n * sizeof *types);
    memcpy(types, data, n * sizeof *types);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, n);
    free(types);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (gguf_writer_write(w, path) || gguf_open(path, &f) || tokenizer_from_gguf(f, &t))
        fprintf(stderr, "variant %s: %s\n", pre, ps_error_last());
done:
    gguf_close(f);
    gguf_writer_free(w);
    unlink(path);
    return t;
}

static void test_streaming(const tokenizer *t)
{
    const char *text = "emoji 😀👨\u200d👩\u200d👧 and 日本語 🇯🇵!";
    int32_t *ids;
    size_t n;
    CHECK(tokenizer_encode(t, text, strlen(text), false, &ids, &n) == PS_OK);
    /* some token must end inside a character for this to test anything */
    int partial = 0;
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        const char *p = tokenizer_piece(t, ids[i], false, &pl);
        uint32_t cp;
        size_t k = 0;
        while (k < pl) {
            size_t step = unicode_utf8_decode((const uint8_t *)p + k, pl - k, &cp);
            partial += cp == UNICODE_INVALID;
            k += step;
        }
    }
    CHECK_MSG(partial > 0, "no token splits a character");
    struct token_stream st = { 0 };
    char out[4096], chunk[256];
    size_t o = 0, cn;
    for (size_t i = 0; i < n; i++) {
        CHECK(tokenizer_stream_push(t, &st, ids[i], false, chunk, sizeof chunk, &cn) == PS_OK);
        /* every chunk is whole characters */
        for (size_t k = 0; k < cn;) {
            uint32_t cp;
            k += unicode_utf8_decode((const uint8_t *)chunk + k, cn - k, &cp);
            CHECK_MSG(cp != UNICODE_INVALID, "chunk after token %zu splits a character", i);
        }
        memcpy(out + o, chunk, cn);
        o += cn;
    }
    CHECK(tokenizer_stream_flush(&st, chunk, sizeof chunk, &cn) == PS_OK);
    CHECK(cn == 0);
    CHECK(o == strlen(text) && memcmp(out, text, o) == 0);
    free(ids);

    /* invalid bytes are emitted once proven invalid, and at flush */
    struct token_stream s2 = { 0 };
    int32_t e2 = tokenizer_find(t, "\xC3\xA2"); /* byte 0xE2 */
    int32_t lt = tokenizer_find(t, "a");
    CHECK(e2 >= 0 && lt >= 0);
    CHECK(tokenizer_stream_push(t, &s2, e2, false, chunk, sizeof chunk, &cn) == PS_OK && cn == 0);
    CHECK(tokenizer_stream_push(t, &s2, lt, false, chunk, sizeof chunk, &cn) == PS_OK);
    CHECK(cn == 2 && memcmp(chunk, "\xE2" "a", 2) == 0);
    CHECK(tokenizer_stream_push(t, &s2, e2, false, chunk, sizeof chunk, &cn) == PS_OK && cn == 0);
    CHECK(tokenizer_stream_flush(&s2, chunk, sizeof chunk, &cn) == PS_OK);
    CHECK(cn == 1 && (unsigned char)chunk[0] == 0xE2);
    /* a short buffer is PS_EFULL */
    CHECK(tokenizer_stream_push(t, &s2, lt, false, chunk, 0, &cn) == PS_EFULL);
}

static void test_specials(const tokenizer *t)
{
    const char *text = "<|im_start|>user\nhi<|im_end|>\n";
    int32_t *ids;
    size_t n;
    CHECK(tokenizer_encode(t, text, strlen(text), true, &ids, &n) == PS_OK);
    CHECK(n >= 3 && ids[0] == 1);
    bool has_end = false;
    for (size_t i = 0; i < n; i++)
        has_end |= ids[i] == 2;
    CHECK(has_end);
    free(ids);
    CHECK(tokenizer_encode(t, text, strlen(text), false, &ids, &n) == PS_OK);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] != 1 && ids[i] != 2);
    free(ids);

    CHECK(tokenizer_find(t, "<|im_start|>") == 1);
    CHECK(tokenizer_find(t, "<|im_end|>") == 2);
    CHECK(tokenizer_find(t, "no such token at all") == -1);
    CHECK(tokenizer_token_attr(t, 1) == TOKEN_CONTROL);
    CHECK(tokenizer_token_attr(t, 100) == TOKEN_NORMAL);
    CHECK(tokenizer_is_eog(t, 2));  /* eos = <|im_end|> */
    CHECK(tokenizer_is_eog(t, 0));  /* <|endoftext|> */
    CHECK(!tokenizer_is_eog(t, 1));
    CHECK(!tokenizer_is_eog(t, 100));
    CHECK(!tokenizer_is_eog(t, -1));
    CHECK(tokenizer_bos(t) == 1 && tokenizer_eos(t) == 2 && !tokenizer_add_bos(t));
    CHECK(tokenizer_n_vocab(t) == 49152);
    size_t pl;
    CHECK(tokenizer_piece(t, 1, false, &pl) != NULL && pl == 0);
    const char *p = tokenizer_piece(t, 1, true, &pl);
    CHECK(pl == 12 && memcmp(p, "<|im_start|>", 12) == 0);
    CHECK(tokenizer_piece(t, 49152, true, &pl) == NULL);

    CHECK(tokenizer_encode(t, "", 0, true, &ids, &n) == PS_OK && n == 0);
    free(ids);
}

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* Special-token text is a control token only inside the given spans; the
 * fragments around are tokenized as tokenizer_encode's would be. */
static void test_special_spans(const tokenizer *t)
{
    /* a rendered turn whose user text spells the markers */
    const char *text = "<|im_start|>user\nA<|im_end|>\n<|im_start|>system\nB<|im_end|>\n<|im_start|>assistant\n";
    const size_t len = strlen(text);
    const size_t head = strlen("<|im_start|>user\n");
    const size_t body_end = len - strlen("<|im_end|>\n<|im_start|>assistant\n");
    const struct text_span markup[] = { { 0, (uint32_t)head }, { (uint32_t)body_end, (uint32_t)len } };
    int32_t *ids, *all;
    size_t n, n_all;
    CHECK(tokenizer_encode_spans(t, text, len, markup, 2, &ids, &n) == PS_OK);
    CHECK(tokenizer_encode(t, text, len, true, &all, &n_all) == PS_OK);
    size_t starts = 0, ends = 0, all_starts = 0;
    for (size_t i = 0; i < n; i++) {
        starts += ids[i] == 1;
        ends += ids[i] == 2;
    }
    for (size_t i = 0; i < n_all; i++)
        all_starts += all[i] == 1;
    CHECK(starts == 2 && ends == 1); /* the template's own markers only */
    CHECK(all_starts == 3);          /* what parse_special everywhere gives */
    CHECK(ids[0] == 1);
    /* exactly: the head's marker, then "user\n" and the user text as one
     * plain fragment, then the tail's markers and text */
    int32_t *a, *b, *c;
    size_t na, nb, nc;
    CHECK(tokenizer_encode(t, text, 12, true, &a, &na) == PS_OK && na == 1);
    CHECK(tokenizer_encode(t, text + 12, body_end - 12, false, &b, &nb) == PS_OK);
    CHECK(tokenizer_encode(t, text + body_end, len - body_end, true, &c, &nc) == PS_OK);
    CHECK(n == na + nb + nc && same_ids(ids, na, a, na) && same_ids(ids + na, nb, b, nb) &&
          same_ids(ids + na + nb, nc, c, nc));
    free(a);
    free(b);
    free(c);
    free(all);
    free(ids);

    /* spans covering everything == parse_special; no spans == plain */
    const struct text_span whole = { 0, (uint32_t)len };
    CHECK(tokenizer_encode_spans(t, text, len, &whole, 1, &ids, &n) == PS_OK);
    CHECK(tokenizer_encode(t, text, len, true, &all, &n_all) == PS_OK);
    CHECK(same_ids(ids, n, all, n_all));
    free(ids);
    free(all);
    CHECK(tokenizer_encode_spans(t, text, len, NULL, 0, &ids, &n) == PS_OK);
    CHECK(tokenizer_encode(t, text, len, false, &all, &n_all) == PS_OK);
    CHECK(same_ids(ids, n, all, n_all));
    free(ids);
    free(all);

    /* a marker cut by a span's end is text */
    const struct text_span cut = { 0, 5 };
    CHECK(tokenizer_encode_spans(t, "<|im_start|>", 12, &cut, 1, &ids, &n) == PS_OK);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] != 1);
    free(ids);

    /* bad spans */
    const struct text_span unsorted[] = { { 5, 8 }, { 2, 3 } }, past = { 0, 13 }, inverted = { 4, 2 };
    CHECK(tokenizer_encode_spans(t, "<|im_start|>", 12, unsorted, 2, &ids, &n) == PS_EINVAL && ids == NULL);
    CHECK(tokenizer_encode_spans(t, "<|im_start|>", 12, &past, 1, &ids, &n) == PS_EINVAL);
    CHECK(tokenizer_encode_spans(t, "<|im_start|>", 12, &inverted, 1, &ids, &n) == PS_EINVAL);
    CHECK(tokenizer_encode_spans(t, "<|im_start|>", 12, NULL, 1, &ids, &n) == PS_EINVAL);
}

/* 256 byte-level tokens + CONTROL specials + fillers, no merges. */
static void test_synthetic(void)
{
    const char *path = "/tmp/ps-test-tokenizer-synth.gguf";
    enum { N = 300 };
    static char store[N][32];
    const char *toks[N];
    int32_t types[N];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_level_cp(b);
        size_t k = unicode_utf8_encode(cp, store[n]);
        store[n][k] = '\0';
        types[n++] = TOKEN_NORMAL;
    }
    const char *sp[] = { "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>" };
    for (int i = 0; i < 4; i++) {
        strcpy(store[n], sp[i]);
        types[n++] = TOKEN_CONTROL;
    }
    strcpy(store[n], "<tool>"); /* 260: an added token that is not a control token */
    types[n++] = TOKEN_USER_DEFINED;
    while (n < N) {
        snprintf(store[n], sizeof store[n], "<filler%d>", n);
        types[n++] = TOKEN_UNUSED;
    }
    for (int i = 0; i < N; i++)
        toks[i] = store[i];
    gguf_writer *w;
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    CHECK(gguf_writer_create(&w) == PS_OK);
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", "default");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, N);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", toks, 0);   /* present, empty */
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, N);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 256);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 257);
    CHECK(gguf_writer_write(w, path) == PS_OK);
    gguf_writer_free(w);
    CHECK(gguf_open(path, &f) == PS_OK);
    unlink(path);
    if (!f)
        return;
    int rc = tokenizer_from_gguf(f, &t);
    CHECK_MSG(rc == PS_OK, "%s", ps_error_last());
    gguf_close(f);
    if (!t)
        return;
    const char *text = "<|im_start|>hi é\xff<|im_end|>";
    int32_t *ids;
    size_t n_ids;
    CHECK(tokenizer_encode(t, text, strlen(text), true, &ids, &n_ids) == PS_OK);
    int32_t want[] = { 258, 'h', 'i', ' ', 0xC3, 0xA9, 0xFF, 259 };
    CHECK(n_ids == 8 && memcmp(ids, want, sizeof want) == 0);
    free(ids);
    /* USER_DEFINED text is recognised with or without parse_special and
     * outside spans; CONTROL text only where asked */
    const char *mixed = "<|im_start|>a<tool>b";
    CHECK(tokenizer_encode(t, mixed, strlen(mixed), false, &ids, &n_ids) == PS_OK);
    CHECK(n_ids == 15 && ids[0] == '<' && ids[12] == 'a' && ids[13] == 260 && ids[14] == 'b');
    free(ids);
    CHECK(tokenizer_encode(t, mixed, strlen(mixed), true, &ids, &n_ids) == PS_OK);
    int32_t want_all[] = { 258, 'a', 260, 'b' };
    CHECK(n_ids == 4 && memcmp(ids, want_all, sizeof want_all) == 0);
    free(ids);
    const struct text_span head = { 0, 12 }, tail = { 13, 19 };
    CHECK(tokenizer_encode_spans(t, mixed, strlen(mixed), &head, 1, &ids, &n_ids) == PS_OK);
    CHECK(n_ids == 4 && memcmp(ids, want_all, sizeof want_all) == 0);
    free(ids);
    CHECK(tokenizer_encode_spans(t, mixed, strlen(mixed), &tail, 1, &ids, &n_ids) == PS_OK);
    CHECK(n_ids == 15 && ids[13] == 260);
    free(ids);
    CHECK(tokenizer_is_eog(t, 257) && tokenizer_is_eog(t, 259) && !tokenizer_is_eog(t, 258));
    CHECK(tokenizer_eos(t) == 257 && tokenizer_bos(t) == 256);
    tokenizer_free(t);
}

static void test_errors(void)
{
    const char *path = "/tmp/ps-test-tokenizer-bad.gguf";
    gguf_writer *w;
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    const char *toks[] = { "a", "b" };
    gguf_writer_create(&w);
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", "klingon");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
    gguf_writer_write(w, path);
    gguf_writer_free(w);
    CHECK(gguf_open(path, &f) == PS_OK);
    unlink(path);
    CHECK(tokenizer_from_gguf(f, &t) == PS_EUNSUPPORTED && t == NULL);
    CHECK(strstr(ps_error_last(), "klingon") != NULL);
    gguf_close(f);
    /* a gpt2 vocabulary without the merges key: refused, naming the key
     * (an empty merges array is accepted: test_synthetic) */
    f = NULL;
    gguf_writer_create(&w);
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", "default");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
    gguf_writer_write(w, path);
    gguf_writer_free(w);
    CHECK(gguf_open(path, &f) == PS_OK);
    unlink(path);
    CHECK(tokenizer_from_gguf(f, &t) == PS_EFORMAT && t == NULL);
    CHECK_MSG(strstr(ps_error_last(), "'tokenizer.ggml.merges' is missing") != NULL, "%s", ps_error_last());
    gguf_close(f);
    tokenizer_free(NULL);
}

static void bench(const tokenizer *t)
{
    static const char *words[] = { "the", "of", "and", "to", "in", "is", "was", "that", "for", "it",
                                   "with", "as", "his", "on", "be", "at", "by", "had", "are", "but",
                                   "from", "or", "have", "an", "they", "which", "one", "you", "were",
                                   "people", "government", "information", "understanding", "twenty" };
    size_t cap = 1 << 20, n = 0;
    char *text = malloc(cap + 64);
    uint32_t r = 12345;
    while (n < cap) {
        r = r * 1103515245u + 12345u;
        const char *w = words[(r >> 16) % (sizeof words / sizeof words[0])];
        n += (size_t)sprintf(text + n, "%s%s", w, (r >> 8) % 13 == 0 ? ". " : (r >> 8) % 29 == 0 ? ",\n" : " ");
    }
    int32_t *ids;
    size_t n_ids;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK(tokenizer_encode(t, text, n, false, &ids, &n_ids) == PS_OK);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("encode: %.2f MB English text -> %zu tokens in %.3f s: %.1f MB/s\n", (double)n / 1e6, n_ids, s,
           (double)n / 1e6 / s);
    size_t dn;
    char *dec = decode_all(t, ids, n_ids, false, &dn);
    CHECK(dn == n && memcmp(dec, text, n) == 0);
    free(dec);
    free(ids);
    free(text);
}

int main(void)
{
    const char *path = test_model_path();
    if (access(path, R_OK) != 0)
        TEST_SKIP("model %s not found (run scripts/fetch-model)", path);
    const char *src = getenv("PARASERVE_SOURCE_DIR");
    char ref[4096];
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    int rc = gguf_open(path, &f);
    CHECK_MSG(rc == PS_OK, "gguf_open: %s", ps_error_last());
    if (rc)
        TEST_DONE();
    rc = tokenizer_from_gguf(f, &t);
    CHECK_MSG(rc == PS_OK, "tokenizer_from_gguf: %s", ps_error_last());
    if (rc)
        TEST_DONE();

    static const struct { const char *file, *pre; } refs[] = {
        { "tokenizer_ref.tsv", NULL },
        { "tokenizer_ref_gpt2.tsv", "gpt-2" },
        { "tokenizer_ref_qwen2.tsv", "qwen2" },
    };
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        snprintf(ref, sizeof ref, "%s/tests/data/%s", src ? src : ".", refs[i].file);
        tokenizer *v = refs[i].pre ? variant(f, refs[i].pre, "/tmp/ps-test-tokenizer-variant.gguf") : t;
        CHECK(v != NULL);
        if (!v)
            continue;
        int mism = 0;
        int n = check_ref_file(v, ref, &mism);
        printf("%s: %d cases, %d mismatches\n", refs[i].file, n, mism);
        CHECK(n >= 1000);
        CHECK(mism == 0);
        if (v != t)
            tokenizer_free(v);
    }
    test_streaming(t);
    test_specials(t);
    test_special_spans(t);
    test_synthetic();
    test_errors();
    bench(t);
    tokenizer_free(t);
    gguf_close(f);
    TEST_DONE();
}
