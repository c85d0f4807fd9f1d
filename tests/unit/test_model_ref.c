/* test_model_ref.c - the CPU backend on the embedded model against llama.cpp.
 *
 * Reference data (tests/data/model_ref.tsv + model_ref_logits.f32) comes from
 * scripts/gen-model-ref.py (llama-cpp-python).  For each prompt:
 *   1. last-position logits: NMSE <= 1e-2, max |diff| <= 1.5, same argmax.
 *      Why so loose: this model is numerically touchy.  Against an exact
 *      float64 forward of the same dequantized weights (numpy), llama.cpp's
 *      own logits are off by NMSE up to 1.4e-2 at positions >= 1, ours by up
 *      to 6.2e-3; at position 0 the two engines agree to 3.4e-6 (identical
 *      Q8 activation quantization), and they part in attention precision
 *      (llama.cpp rounds Q and the softmax weights to F16).  Measured here:
 *      NMSE <= 6.8e-3, max |diff| <= 1.07.
 *   2. greedy continuation identical to llama.cpp's up to the first step
 *      where llama.cpp's top-2 logit margin is below NEAR_TIE (0.3): past a
 *      near tie either choice is right and the texts legitimately part.
 *      Cases with no near tie must match all 64 tokens.
 */
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

int main(void)
{
    const char *mpath = test_model_path();
    FILE *probe = fopen(mpath, "rb");
    if (!probe)
        TEST_SKIP("model %s not found: run scripts/fetch-model", mpath);
    fclose(probe);

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
    float *ref = malloc((size_t)n_cases * n_vocab * sizeof *ref);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    CHECK(ref && logits);
    FILE *lf = fopen("tests/data/model_ref_logits.f32", "rb");
    CHECK(lf && fread(ref, sizeof *ref, (size_t)n_cases * n_vocab, lf) == (size_t)n_cases * n_vocab);
    if (lf)
        fclose(lf);

    const int32_t bs = 16, n_blocks = 64;
    struct backend_config cfg = { .n_threads = 2, .n_kv_blocks = n_blocks, .block_size = bs,
                                  .max_batch_tokens = 512 };
    backend *be = NULL;
    if (backend_cpu_create(m, &cfg, &be)) {
        fprintf(stderr, "backend_cpu_create: %s\n", ps_error_last());
        return 1;
    }
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
        double se = 0, sr = 0, maxd = 0;
        for (int32_t i = 0; i < n_vocab; i++) {
            double d = (double)logits[i] - r[i];
            se += d * d;
            sr += (double)r[i] * r[i];
            if (fabs(d) > maxd)
                maxd = fabs(d);
        }
        double nmse = se / sr;
        printf("case %d: %3d prompt tokens  NMSE %.2e  max|diff| %.4f  argmax %d/%d\n", c,
               rc->n_prompt, nmse, maxd, argmax(logits, n_vocab), argmax(r, n_vocab));
        CHECK(nmse <= 1e-2);
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
                  "case %d: greedy token %d differs from llama.cpp before its first near tie "
                  "(step %d); margin there %.5f", c, first_diff, first_tie,
                  first_diff >= 0 ? rc->margin[first_diff] : 0.0f);
        if (first_diff < 0)
            printf("case %d: %d greedy tokens identical to llama.cpp\n", c, rc->n_greedy);
        else
            printf("case %d: identical for %d tokens, parts at a near tie (llama.cpp margin %.3f, first tie at step %d)\n",
                   c, first_diff, rc->margin[first_diff], first_tie);
    }

    backend_free(be);
    model_free(m);
    free(ref);
    free(logits);
    TEST_DONE();
}
