/* test_model_ref.c - the CPU backend on the embedded model against llama.cpp.
 *
 * Reference data (tests/data/model_ref.tsv + model_ref_logits.f32) comes from
 * scripts/gen-model-ref.py (llama-cpp-python).  For each prompt:
 *   1. last-position logits: NMSE <= 2e-2, max |diff| <= 1.5, same argmax.
 *      Why so loose: this model is numerically touchy.  Against an exact
 *      float64 forward of the same dequantized weights (numpy), llama.cpp's
 *      own logits are off by NMSE up to 1.4e-2 at positions >= 1, ours by up
 *      to 6.2e-3; at position 0 the two engines agree to 3.4e-6 (identical
 *      Q8 activation quantization), and they part in attention precision
 *      (llama.cpp rounds Q and the softmax weights to F16).  Measured here:
 *      NMSE <= 9.9e-3, max |diff| <= 1.16 (AVX2 kernels); the scalar
 *      kernels, which differ from the AVX2 ones only in summation order,
 *      reach NMSE 1.18e-2 on case 6: that is how far a reordering moves
 *      this model, hence 2e-2.  Checks 3-4 below are the tight ones.
 *   2. greedy continuation identical to llama.cpp's up to the first step
 *      where llama.cpp's top-2 logit margin is below NEAR_TIE (0.3): past a
 *      near tie either choice is right and the texts legitimately part.
 *      Cases with no near tie must match all 64 tokens.
 *
 * Exact arithmetic (tests/data/model_ref_f32.*, scripts/gen-model-ref.py
 * --f32): the same weights dequantized to F32 in both engines
 * (model_matrices_to_f32) and an F32 KV cache (KV_F32), so neither rounds an
 * activation and only the float summation order differs:
 *   3. last-position logits: NMSE <= 1e-9, max |diff| <= 1e-3 (measured:
 *      NMSE <= 4e-11, max |diff| <= 6.1e-5);
 *   4. all 64 greedy tokens identical to llama.cpp's for every case (the
 *      smallest top-2 margin on llama.cpp's path is 0.0066, 100x the largest
 *      logit difference), decoded as one batch of all cases.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "engine/backend.h"
#include "model/model.h"
#include "test_util.h"

#define MAX_CASES 16
#define MAX_IDS   1024
#define NEAR_TIE  0.3f

struct ref_case {
    int32_t prompt[MAX_IDS];
    int32_t n_prompt;
    int32_t greedy[MAX_IDS];
    int32_t n_greedy;
    float   margin[MAX_IDS];
};

static int32_t parse_ints(char *s, int32_t *out, int32_t cap)
{
    int32_t n = 0;
    for (char *tok = strtok(s, " "); tok && n < cap; tok = strtok(NULL, " "))
        out[n++] = (int32_t)strtol(tok, NULL, 10);
    return n;
}

static int load_cases(const char *path, struct ref_case *cases, int *n_cases)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    static char line[65536];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < MAX_CASES) {
        if (line[0] == '#')
            continue;
        line[strcspn(line, "\n")] = 0;
        char *a = line, *b = strchr(a, '\t');
        if (!b)
            break;
        *b++ = 0;
        char *c = strchr(b, '\t');
        if (!c)
            break;
        *c++ = 0;
        struct ref_case *rc = &cases[n++];
        rc->n_prompt = parse_ints(a, rc->prompt, MAX_IDS);
        rc->n_greedy = parse_ints(b, rc->greedy, MAX_IDS);
        int32_t k = 0;
        for (char *tok = strtok(c, " "); tok && k < MAX_IDS; tok = strtok(NULL, " "))
            rc->margin[k++] = strtof(tok, NULL);
    }
    fclose(f);
    *n_cases = n;
    return 0;
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void logits_diff(const float *a, const float *r, int32_t n, double *nmse, double *maxd)
{
    double se = 0, sr = 0, md = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = (double)a[i] - r[i];
        se += d * d;
        sr += (double)r[i] * r[i];
        if (fabs(d) > md)
            md = fabs(d);
    }
    *nmse = se / sr;
    *maxd = md;
}

/* n_cases rows of n_vocab little-endian f32 logits, or NULL (reported). */
static float *load_logits(const char *path, int n_cases, int32_t n_vocab)
{
    const size_t n = (size_t)n_cases * n_vocab;
    float *ref = malloc(n * sizeof *ref);
    FILE *f = fopen(path, "rb");
    int ok = ref && f && fread(ref, sizeof *ref, n, f) == n;
    if (f)
        fclose(f);
    CHECK_MSG(ok, "cannot read %zu logits from %s", n, path);
    if (!ok) {
        free(ref);
        return NULL;
    }
    return ref;
}

#define EXACT_BLOCKS_PER_CASE 9

/* Checks 3 and 4 of the header on the model at mpath. */
static void check_exact(const char *mpath)
{
    static struct ref_case cases[MAX_CASES];
    int n_cases = 0;
    if (load_cases("tests/data/model_ref_f32.tsv", cases, &n_cases) || n_cases < 5) {
        CHECK_MSG(0, "cannot read >= 5 cases from tests/data/model_ref_f32.tsv");
        return;
    }
    struct model *m = NULL;
    if (model_load(mpath, &m) || model_matrices_to_f32(m)) {
        CHECK_MSG(0, "f32 model: %s", ps_error_last());
        model_free(m);
        return;
    }
    const int32_t n_vocab = m->hp.n_vocab, bs = 16;
    float *ref = load_logits("tests/data/model_ref_f32_logits.f32", n_cases, n_vocab);
    float *logits = malloc((size_t)n_cases * n_vocab * sizeof *logits);
    CHECK(ref && logits);
    if (!ref || !logits) {
        free(ref);
        free(logits);
        model_free(m);
        return;
    }

    struct backend_config cfg = { .n_threads = 2, .n_kv_blocks = n_cases * EXACT_BLOCKS_PER_CASE, .block_size = bs,
                                  .max_batch_tokens = 512, .kv_type = KV_F32 };
    backend *be = NULL;
    CHECK_MSG(backend_cpu_create(m, &cfg, &be) == PS_OK, "backend_cpu_create: %s", ps_error_last());
    static int32_t tables[MAX_CASES][EXACT_BLOCKS_PER_CASE];
    for (int c = 0; c < n_cases; c++)
        for (int b = 0; b < EXACT_BLOCKS_PER_CASE; b++)
            tables[c][b] = c * EXACT_BLOCKS_PER_CASE + b;

    /* prompts one by one: the logits check */
    int32_t next[MAX_CASES], pos[MAX_CASES], first_diff[MAX_CASES];
    for (int c = 0; be && c < n_cases; c++) {
        struct ref_case *rc = &cases[c];
        CHECK(rc->n_prompt + rc->n_greedy <= EXACT_BLOCKS_PER_CASE * bs);
        struct batch_seq s = { .tokens = rc->prompt, .n_tokens = rc->n_prompt, .pos0 = 0,
                               .block_table = tables[c], .n_blocks = EXACT_BLOCKS_PER_CASE,
                               .logits = LOGITS_LAST };
        struct batch_plan plan = { &s, 1 };
        CHECK_MSG(backend_forward(be, &plan, logits) == PS_OK, "%s", ps_error_last());
        double nmse, maxd;
        logits_diff(logits, ref + (size_t)c * n_vocab, n_vocab, &nmse, &maxd);
        printf("exact case %d: %3d prompt tokens  NMSE %.2e  max|diff| %.2e\n", c, rc->n_prompt, nmse, maxd);
        CHECK(nmse <= 1e-9);
        CHECK(maxd <= 1e-3);
        next[c] = argmax(logits, n_vocab);
        pos[c] = rc->n_prompt;
        first_diff[c] = -1;
    }

    /* greedy continuations: all cases in one batch per step */
    int32_t n_greedy = cases[0].n_greedy;
    for (int c = 1; c < n_cases; c++)
        n_greedy = cases[c].n_greedy < n_greedy ? cases[c].n_greedy : n_greedy;
    struct batch_seq seqs[MAX_CASES];
    int32_t feed[MAX_CASES];
    for (int32_t g = 0; be && g < n_greedy; g++) {
        for (int c = 0; c < n_cases; c++) {
            if (first_diff[c] < 0 && next[c] != cases[c].greedy[g])
                first_diff[c] = g;
            feed[c] = cases[c].greedy[g]; /* llama.cpp's token: identical unless the case already failed */
            seqs[c] = (struct batch_seq){ .tokens = &feed[c], .n_tokens = 1, .pos0 = pos[c]++,
                                          .block_table = tables[c], .n_blocks = EXACT_BLOCKS_PER_CASE,
                                          .logits = LOGITS_LAST };
        }
        if (g + 1 == n_greedy)
            break;
        struct batch_plan plan = { seqs, n_cases };
        CHECK_MSG(backend_forward(be, &plan, logits) == PS_OK, "%s", ps_error_last());
        for (int c = 0; c < n_cases; c++)
            next[c] = argmax(logits + (size_t)c * n_vocab, n_vocab);
    }
    for (int c = 0; c < n_cases; c++) {
        CHECK_MSG(first_diff[c] < 0, "exact case %d: greedy token %d differs from llama.cpp (its margin %.5f)", c,
                  first_diff[c], first_diff[c] >= 0 ? cases[c].margin[first_diff[c]] : 0.0f);
        if (first_diff[c] < 0)
            printf("exact case %d: %d greedy tokens identical to llama.cpp\n", c, n_greedy);
    }
    backend_free(be);
    model_free(m);
    free(ref);
    free(logits);
}

/* Checks 1 and 2 of the header with a KV cache of type kt (f16: the
 * default; q8: the same bounds hold, measured numbers in the README). */
static void check_stored(const struct model *m, struct ref_case *cases, int n_cases, const float *ref,
                         float *logits, enum kv_type kt)
{
    const int32_t n_vocab = m->hp.n_vocab;
    const int32_t bs = 16, n_blocks = 64;
    struct backend_config cfg = { .n_threads = 2, .n_kv_blocks = n_blocks, .block_size = bs,
                                  .max_batch_tokens = 512, .kv_type = kt };
    backend *be = NULL;
    if (backend_cpu_create(m, &cfg, &be)) {
        CHECK_MSG(0, "backend_cpu_create: %s", ps_error_last());
        return;
    }
    printf("-- as stored, %s KV cache\n", kv_type_name(kt));
    int32_t table[64];
    for (int32_t i = 0; i < n_blocks; i++)
        table[i] = n_blocks - 1 - i; /* any permutation works */

    for (int c = 0; c < n_cases; c++) {
        struct ref_case *rc = &cases[c];
        struct batch_seq s = { .tokens = rc->prompt, .n_tokens = rc->n_prompt, .pos0 = 0,
                               .block_table = table, .n_blocks = n_blocks, .logits = LOGITS_LAST };
        struct batch_plan plan = { &s, 1 };
        int st = backend_forward(be, &plan, logits);
        CHECK_MSG(st == PS_OK, "%s", ps_error_last());

        const float *r = ref + (size_t)c * n_vocab;
        double nmse, maxd;
        logits_diff(logits, r, n_vocab, &nmse, &maxd);
        printf("%s case %d: %3d prompt tokens  NMSE %.2e  max|diff| %.4f  argmax %d/%d\n", kv_type_name(kt), c,
               rc->n_prompt, nmse, maxd, argmax(logits, n_vocab), argmax(r, n_vocab));
        CHECK(nmse <= 2e-2);
        CHECK(maxd <= 1.5);
        CHECK(argmax(logits, n_vocab) == argmax(r, n_vocab));

        int32_t pos = rc->n_prompt, first_diff = -1;
        for (int32_t g = 0; g < rc->n_greedy; g++) {
            int32_t tok = argmax(logits, n_vocab);
            if (tok != rc->greedy[g]) {
                first_diff = g;
                break;
            }
            if (g + 1 == rc->n_greedy)
                break;
            struct batch_seq d = { .tokens = &tok, .n_tokens = 1, .pos0 = pos,
                                   .block_table = table, .n_blocks = n_blocks,
                                   .logits = LOGITS_LAST };
            struct batch_plan dp = { &d, 1 };
            CHECK(backend_forward(be, &dp, logits) == PS_OK);
            pos++;
        }
        int32_t first_tie = rc->n_greedy;
        for (int32_t g = 0; g < rc->n_greedy; g++)
            if (rc->margin[g] < NEAR_TIE) {
                first_tie = g;
                break;
            }
        CHECK_MSG(first_diff < 0 || first_diff >= first_tie,
                  "%s case %d: greedy token %d differs from llama.cpp before its first near tie "
                  "(step %d); margin there %.5f", kv_type_name(kt), c, first_diff, first_tie,
                  first_diff >= 0 ? rc->margin[first_diff] : 0.0f);
        if (first_diff < 0)
            printf("%s case %d: %d greedy tokens identical to llama.cpp\n", kv_type_name(kt), c, rc->n_greedy);
        else
            printf("%s case %d: identical for %d tokens, parts at a near tie (llama.cpp margin %.3f, first tie at step %d)\n",
                   kv_type_name(kt), c, first_diff, rc->margin[first_diff], first_tie);
    }

    backend_free(be);
}

int main(void)
{
    /* Skipped (exit 77) only when the model's file is absent; one that
     * exists but cannot be opened or loaded fails. */
    const char *mpath = test_model_path();
    FILE *probe = fopen(mpath, "rb");
    if (!probe && (errno == ENOENT || errno == ENOTDIR)) {
        fprintf(stderr, "SKIP: model %s is absent: run scripts/fetch-model\n", mpath);
        exit(77);
    }
    if (!probe) {
        fprintf(stderr, "FAIL: model %s exists but cannot be opened: %s\n", mpath, strerror(errno));
        return 1;
    }
    fclose(probe);

    check_exact(mpath);

    static struct ref_case cases[MAX_CASES];
    int n_cases = 0;
    if (load_cases("tests/data/model_ref.tsv", cases, &n_cases) || n_cases < 5) {
        fprintf(stderr, "cannot read >= 5 cases from tests/data/model_ref.tsv\n");
        return 1;
    }

    struct model *m = NULL;
    if (model_load(mpath, &m)) {
        fprintf(stderr, "model_load: %s\n", ps_error_last());
        return 1;
    }
    const int32_t n_vocab = m->hp.n_vocab;
    float *ref = load_logits("tests/data/model_ref_logits.f32", n_cases, n_vocab);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    CHECK(ref && logits);
    if (!ref || !logits)
        return 1;
    check_stored(m, cases, n_cases, ref, logits, KV_F16);
    check_stored(m, cases, n_cases, ref, logits, KV_Q8);

    model_free(m);
    free(ref);
    free(logits);
    TEST_DONE();
}
