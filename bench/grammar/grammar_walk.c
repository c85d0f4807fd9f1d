/* grammar_walk.c - benchmark and soundness driver for host/grammar.
 *
 *   grammar_walk MODEL.gguf OUT_DIR SEEDS SCHEMA.json...
 *
 * Builds the grammar vocabulary from the model's tokenizer, then per schema:
 * compiles it (cache bypassed; compile_ms), and for each seed walks a
 * random document: fill the mask (timed), pick an allowed token at random
 * (end-of-generation preferred once allowed, with probability 1/2), accept
 * it.  Writes
 *   OUT_DIR/vocab.hex     one line per token id: hex bytes ("-" = never allowed)
 *   OUT_DIR/walks.jsonl   {"schema", "seed", "tokens", "finished", "text_hex"}
 *   OUT_DIR/paraserve.csv schema,compile_ms,n_positions,n_uncertain,mask_us per step...
 * Python (bench/grammar/run.py) validates the texts with `jsonschema` and
 * replays the same token sequences through xgrammar and llguidance. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "grammar/grammar.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b)
        b[n] = 0;
    *len = (size_t)n;
    return b;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: grammar_walk MODEL OUT_DIR SEEDS SCHEMA...\n");
        return 2;
    }
    gguf_file *gf = NULL;
    tokenizer *tok = NULL;
    grammar_vocab *v = NULL;
    if (gguf_open(argv[1], &gf) || tokenizer_from_gguf(gf, &tok) || grammar_vocab_create(tok, &v)) {
        fprintf(stderr, "grammar_walk: %s\n", ps_error_last());
        return 1;
    }
    const char *out = argv[2];
    int seeds = atoi(argv[3]);
    char path[4096];
    int32_t n_vocab = grammar_vocab_n_vocab(v);
    snprintf(path, sizeof path, "%s/vocab.hex", out);
    FILE *fv = fopen(path, "w");
    for (int32_t i = 0; i < n_vocab; i++) {
        size_t len = 0;
        const char *p = tokenizer_piece(tok, i, false, &len);
        enum token_attr a = tokenizer_token_attr(tok, i);
        if (!p || !len || (a != TOKEN_NORMAL && a != TOKEN_BYTE) || tokenizer_is_eog(tok, i)) {
            fputs("-\n", fv);
            continue;
        }
        for (size_t k = 0; k < len; k++)
            fprintf(fv, "%02x", (uint8_t)p[k]);
        fputc('\n', fv);
    }
    fprintf(fv, "# eog");
    for (int32_t i = 0; i < n_vocab; i++)
        if (tokenizer_is_eog(tok, i))
            fprintf(fv, " %d", i);
    fprintf(fv, "\n");
    fclose(fv);
    snprintf(path, sizeof path, "%s/walks.jsonl", out);
    FILE *fw = fopen(path, "w");
    snprintf(path, sizeof path, "%s/paraserve_steps.csv", out);
    FILE *fs = fopen(path, "w");
    snprintf(path, sizeof path, "%s/paraserve_compile.csv", out);
    FILE *fc = fopen(path, "w");
    fprintf(fs, "schema,seed,step,mask_us,n_allowed\n");
    fprintf(fc, "schema,compile_ms,n_rules,n_states,n_positions,n_uncertain,bytes\n");
    size_t words = grammar_mask_words(v);
    uint32_t *mask = malloc(words * sizeof *mask);
    int32_t *allowed = malloc((size_t)n_vocab * sizeof *allowed);
    int32_t *toks = malloc(4096 * sizeof *toks);
    char *text = malloc(1 << 20);
    int failures = 0;
    for (int a = 4; a < argc; a++) {
        size_t len;
        char *schema = slurp(argv[a], &len);
        const char *name = strrchr(argv[a], '/') ? strrchr(argv[a], '/') + 1 : argv[a];
        grammar *g = NULL;
        struct grammar_options opt = { .flags = GRAMMAR_OPT_NO_CACHE };
        if (!schema || grammar_compile(v, schema, len, &opt, &g)) {
            fprintf(stderr, "grammar_walk: %s: %s\n", name, ps_error_last());
            failures++;
            free(schema);
            continue;
        }
        struct grammar_stats st;
        grammar_get_stats(g, &st);
        fprintf(fc, "%s,%.3f,%d,%d,%d,%lld,%zu\n", name, st.compile_ms, st.n_rules, st.n_states, st.n_positions,
                (long long)st.n_uncertain, st.bytes);
        for (int seed = 1; seed <= seeds; seed++) {
            grammar_matcher *m;
            grammar_matcher_create(g, &m);
            uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(seed + 7) ^ (uint64_t)a;
            int n = 0, finished = 0;
            size_t tlen = 0;
            while (n < 256) {
                double t0 = now_us();
                grammar_matcher_fill_mask(m, mask);
                double dt = now_us() - t0;
                int32_t na = 0, eog = -1;
                for (size_t w = 0; w < words; w++)
                    for (uint32_t bits = mask[w]; bits; bits &= bits - 1) {
                        int32_t t = (int32_t)(w * 32 + (uint32_t)__builtin_ctz(bits));
                        if (tokenizer_is_eog(tok, t))
                            eog = t;
                        allowed[na++] = t;
                    }
                fprintf(fs, "%s,%d,%d,%.3f,%d\n", name, seed, n, dt, na);
                if (!na) {
                    fprintf(stderr, "grammar_walk: %s seed %d: empty mask at step %d\n", name, seed, n);
                    failures++;
                    break;
                }
                int32_t t = eog >= 0 && (rng_next(&rng) & 1) ? eog : allowed[rng_next(&rng) % (uint64_t)na];
                if (grammar_matcher_accept(m, t)) {
                    fprintf(stderr, "grammar_walk: %s: masked token %d rejected: %s\n", name, t, ps_error_last());
                    failures++;
                    break;
                }
                toks[n++] = t;
                if (tokenizer_is_eog(tok, t)) {
                    finished = 1;
                    break;
                }
                size_t pl;
                const char *p = tokenizer_piece(tok, t, false, &pl);
                if (tlen + pl < (1 << 20)) {
                    memcpy(text + tlen, p, pl);
                    tlen += pl;
                }
                if (grammar_matcher_is_done(m)) {
                    finished = 1;
                    break;
                }
            }
            fprintf(fw, "{\"schema\": \"%s\", \"seed\": %d, \"finished\": %s, \"tokens\": [", name, seed,
                    finished ? "true" : "false");
            for (int i = 0; i < n; i++)
                fprintf(fw, "%s%d", i ? ", " : "", toks[i]);
            fprintf(fw, "], \"text_hex\": \"");
            for (size_t i = 0; i < tlen; i++)
                fprintf(fw, "%02x", (uint8_t)text[i]);
            fprintf(fw, "\"}\n");
            grammar_matcher_free(m);
        }
        grammar_free(g);
        free(schema);
    }
    fclose(fw);
    fclose(fs);
    fclose(fc);
    free(mask);
    free(allowed);
    free(toks);
    free(text);
    grammar_vocab_free(v);
    tokenizer_free(tok);
    gguf_close(gf);
    return failures ? 1 : 0;
}
