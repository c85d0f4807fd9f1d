/* grammar_check.c - driver for tests/e2e/test_grammar_differential.py: reads
 * schemas and candidate documents from stdin, compiles each schema for a
 * byte-level vocabulary (the 256 single bytes + one EOS, as in
 * test_grammar.c) and says whether each document is a complete document of
 * the compiled grammar.  Not a ctest test by itself.
 *
 * Input: a sequence of records, each  <tag> ' ' <decimal length> '\n'
 * <length bytes> '\n'  where tag is
 *   S  a schema (JSON text): compiled; the documents that follow use it
 *   D  a document (any bytes) checked against the last schema
 * Output: one line per record:
 *   S: "ok" or "refused <status code> <ps_error_last() text>"
 *   D: "1" (accepted: every byte taken and can_end), "0" (rejected), or
 *      "-" (the last schema was refused)
 * Exit status 0 unless the input is malformed (2) or out of memory (3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "grammar/grammar.h"

static grammar_vocab *make_vocab(void)
{
    enum { N = 257 };
    static char bytes[256];
    const char *p[N];
    size_t l[N];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        p[i] = &bytes[i];
        l[i] = 1;
    }
    p[256] = NULL; /* EOS: never a byte piece */
    l[256] = 0;
    int32_t eos = 256;
    grammar_vocab *v = NULL;
    if (grammar_vocab_create_from_pieces(N, p, l, &eos, 1, &v) != PS_OK)
        return NULL;
    return v;
}

/* Reads one record; returns its tag (0 at a clean end of input, -1 when
 * malformed).  *buf grows as needed; *len gets the body length. */
static int read_record(char **buf, size_t *cap, size_t *len)
{
    char tag;
    unsigned long long n;
    int got = scanf("%c %llu", &tag, &n);
    if (got == EOF)
        return 0;
    if (got != 2 || getchar() != '\n')
        return -1;
    if (n + 1 > *cap) {
        char *b = realloc(*buf, (size_t)n + 1);
        if (!b)
            return -1;
        *buf = b;
        *cap = (size_t)n + 1;
    }
    if (fread(*buf, 1, (size_t)n, stdin) != (size_t)n || getchar() != '\n')
        return -1;
    (*buf)[n] = 0;
    *len = (size_t)n;
    return (unsigned char)tag;
}

int main(void)
{
    grammar_vocab *v = make_vocab();
    if (!v) {
        fprintf(stderr, "grammar_check: cannot build the vocabulary: %s\n", ps_error_last());
        return 3;
    }
    char *buf = NULL;
    size_t cap = 0, len = 0;
    grammar *g = NULL;
    int have_schema = 0, rc = 0;
    for (;;) {
        int tag = read_record(&buf, &cap, &len);
        if (tag == 0)
            break;
        if (tag == 'S') {
            grammar_free(g);
            g = NULL;
            have_schema = 1;
            struct grammar_options opt = { .flags = GRAMMAR_OPT_NO_CACHE };
            int st = grammar_compile(v, buf, len, &opt, &g);
            if (st == PS_OK) {
                puts("ok");
            } else {
                const char *msg = ps_error_last();
                printf("refused %d ", st);
                for (const char *q = msg; *q; q++) /* keep it on one line */
                    putchar(*q == '\n' ? ' ' : *q);
                putchar('\n');
            }
        } else if (tag == 'D' && have_schema) {
            if (!g) {
                puts("-");
                continue;
            }
            grammar_matcher *m;
            if (grammar_matcher_create(g, &m) != PS_OK) {
                rc = 3;
                break;
            }
            int ok = grammar_matcher_accept_bytes(m, buf, len) == PS_OK && grammar_matcher_can_end(m);
            grammar_matcher_free(m);
            puts(ok ? "1" : "0");
        } else {
            fprintf(stderr, "grammar_check: malformed input\n");
            rc = 2;
            break;
        }
    }
    grammar_free(g);
    grammar_vocab_free(v);
    free(buf);
    return rc;
}
