/* test_sampler - greedy, truncations, masks, penalties, seeded draws, the
 * top-N logprobs selection. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "common/status.h"
#include "test_util.h"

#define NV 100

static uint64_t lcg_state = 12345;

static float frand(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg_state >> 40) & 0xffffff) / 16777216.0f;
}

static void random_logits(float *l, int n)
{
    for (int i = 0; i < n; i++)
        l[i] = 8.0f * frand() - 4.0f;
}

static int argmax(const float *l, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

static int32_t sample1(const struct sampler_params *p, const float *logits, const uint32_t *mask, int *rc)
{
    sampler *s = NULL;
    float l[NV];
    memcpy(l, logits, sizeof l);
    int32_t tok = -1;
    *rc = sampler_create(p, NV, &s);
    if (*rc == PS_OK)
        *rc = sampler_sample(s, l, mask, &tok);
    sampler_free(s);
    return tok;
}

static void test_validate(void)
{
    struct sampler_params p = sampler_params_default();
    CHECK(sampler_params_validate(&p) == PS_OK);
    p.temperature = -1.0f;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "temperature") != NULL);
    p = sampler_params_default();
    p.top_p = 0.0f;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "top_p") != NULL);
    p.top_p = 1.5f;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    p = sampler_params_default();
    p.min_p = 2.0f;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "min_p") != NULL);
    p = sampler_params_default();
    p.repeat_penalty = 0.0f;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "repeat_penalty") != NULL);
    p = sampler_params_default();
    p.penalty_last_n = -3;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "penalty_last_n") != NULL);
    p = sampler_params_default();
    p.presence_penalty = NAN;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "presence_penalty") != NULL);
    p = sampler_params_default();
    p.temperature = NAN;
    CHECK(sampler_params_validate(&p) == PS_EINVAL);
    sampler *s = NULL;
    CHECK(sampler_create(&p, NV, &s) == PS_EINVAL && s == NULL);
}

static void test_greedy(void)
{
    float l[NV];
    int rc;
    for (int r = 0; r < 20; r++) {
        random_logits(l, NV);
        struct sampler_params p = sampler_params_default();
        CHECK(sample1(&p, l, NULL, &rc) == argmax(l, NV) && rc == PS_OK);
        p.temperature = 1.5f;
        p.top_k = 1;
        p.seed = (uint64_t)r;
        CHECK(sample1(&p, l, NULL, &rc) == argmax(l, NV) && rc == PS_OK);
    }
}

static void test_seeds(void)
{
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = 0.0f; /* uniform: maximal entropy */
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        sampler *s = NULL;
        CHECK(sampler_create(&p, NV, &s) == PS_OK);
        for (int i = 0; i < 64; i++) {
            float t[NV];
            memcpy(t, l, sizeof t);
            int32_t *dst = run == 0 ? a : run == 1 ? b : c;
            CHECK(sampler_sample(s, t, NULL, &dst[i]) == PS_OK);
        }
        sampler_free(s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
}

static void test_truncation(void)
{
    /* probabilities at T=1: 0.5, 0.25, 0.125, 0.0625, ... (logits log p) */
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = -1e9f;
    const float pr[5] = { 0.5f, 0.25f, 0.125f, 0.0625f, 0.0625f };
    const int ids[5] = { 7, 30, 2, 99, 50 };
    for (int i = 0; i < 5; i++)
        l[ids[i]] = logf(pr[i]);
    int rc;
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;

    /* top_p 0.7: keeps {7, 30} (0.5 < 0.7 <= 0.75) */
    p.top_p = 0.7f;
    int hit[NV] = { 0 };
    for (uint64_t seed = 0; seed < 400; seed++) {
        p.seed = seed;
        int32_t t = sample1(&p, l, NULL, &rc);
        CHECK(rc == PS_OK && t >= 0 && t < NV);
        hit[t]++;
    }
    CHECK(hit[7] > 0 && hit[30] > 0);
    CHECK(hit[7] + hit[30] == 400);

    /* min_p 0.2: keeps tokens with p >= 0.2 * 0.5 = 0.1 -> {7, 30, 2} */
    p.top_p = 1.0f;
    p.min_p = 0.2f;
    memset(hit, 0, sizeof hit);
    for (uint64_t seed = 0; seed < 600; seed++) {
        p.seed = seed;
        hit[sample1(&p, l, NULL, &rc)]++;
    }
    CHECK(hit[7] > 0 && hit[30] > 0 && hit[2] > 0);
    CHECK(hit[7] + hit[30] + hit[2] == 600);

    /* top_k 2 */
    p.min_p = 0.0f;
    p.top_k = 2;
    memset(hit, 0, sizeof hit);
    for (uint64_t seed = 0; seed < 400; seed++) {
        p.seed = seed;
        hit[sample1(&p, l, NULL, &rc)]++;
    }
    CHECK(hit[7] + hit[30] == 400 && hit[30] > 0);
}

static void test_mask(void)
{
    float l[NV];
    random_logits(l, NV);
    uint32_t mask[(NV + 31) / 32];
    memset(mask, 0, sizeof mask);
    int rc;
    struct sampler_params p = sampler_params_default();
    CHECK(sample1(&p, l, mask, &rc) == -1 && rc == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "mask") != NULL);
    /* a bit past n_vocab does not count */
    mask[3] = 1u << 10; /* id 106 >= NV */
    sample1(&p, l, mask, &rc);
    CHECK(rc == PS_EINVAL);

    memset(mask, 0, sizeof mask);
    const int allowed[3] = { 5, 41, 77 };
    for (int i = 0; i < 3; i++)
        mask[allowed[i] / 32] |= 1u << (allowed[i] % 32);
    int best = 5;
    for (int i = 0; i < 3; i++)
        if (l[allowed[i]] > l[best])
            best = allowed[i];
    CHECK(sample1(&p, l, mask, &rc) == best && rc == PS_OK);
    p.temperature = 2.0f;
    for (uint64_t seed = 0; seed < 100; seed++) {
        p.seed = seed;
        int32_t t = sample1(&p, l, mask, &rc);
        CHECK(rc == PS_OK && (t == 5 || t == 41 || t == 77));
    }
}

static void test_penalties(void)
{
    float base[NV];
    for (int i = 0; i < NV; i++)
        base[i] = (float)(i % 7) - 3.0f; /* positive and negative logits */
    struct sampler_params p = sampler_params_default();
    p.repeat_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.penalty_last_n = 4;
    sampler *s = NULL;
    CHECK(sampler_create(&p, NV, &s) == PS_OK);
    /* history window 4: token 10 falls out; 4 (logit 1) twice, 5 (logit 2), 14 (logit -3) */
    const int32_t hist[5] = { 10, 4, 5, 4, 14 };
    for (int i = 0; i < 5; i++)
        sampler_accept(s, hist[i]);
    sampler_accept(s, -1); /* ignored */
    sampler_accept(s, NV);
    float l[NV];
    memcpy(l, base, sizeof l);
    int32_t tok;
    CHECK(sampler_sample(s, l, NULL, &tok) == PS_OK);
    for (int i = 0; i < NV; i++) {
        float want = base[i];
        if (i == 4)
            want = 1.0f / 2.0f - 2 * 0.25f - 0.5f;
        else if (i == 5)
            want = 2.0f / 2.0f - 0.25f - 0.5f;
        else if (i == 14)
            want = -3.0f * 2.0f - 0.25f - 0.5f;
        CHECK_MSG(fabsf(l[i] - want) < 1e-6f, "logit %d = %g, want %g", i, (double)l[i], (double)want);
    }
    /* negative logit is multiplied */
    sampler_accept(s, 0); /* logit -3 */
    memcpy(l, base, sizeof l);
    CHECK(sampler_sample(s, l, NULL, &tok) == PS_OK);
    CHECK(fabsf(l[0] - (-6.0f - 0.25f - 0.5f)) < 1e-6f);
    sampler_free(s);
}

/* Logit biases: added before the penalties and the mask, every step; a
 * token listed twice takes the sum; bad entries refused, keeping the old. */
static void test_logit_bias(void)
{
    float base[NV], l[NV];
    for (int i = 0; i < NV; i++)
        base[i] = (float)(i % 7) - 3.0f; /* max 3 at 6, 13, ... */
    struct sampler_params p = sampler_params_default();
    p.repeat_penalty = 2.0f;
    sampler *s = NULL;
    CHECK(sampler_create(&p, NV, &s) == PS_OK);
    int32_t tok;
    const struct sampler_bias ban_top[2] = { { 6, -100.0f }, { 13, -100.0f } };
    const struct sampler_bias force[3] = { { 3, 50.0f }, { 3, 50.0f }, { 20, -1.5f } };
    CHECK(sampler_set_bias(s, ban_top, 2) == PS_OK);
    memcpy(l, base, sizeof l);
    CHECK(sampler_sample(s, l, NULL, &tok) == PS_OK);
    CHECK_MSG(tok == 20, "greedy with 6 and 13 banned picked %d, want 20 (the next logit-3 token)", (int)tok);
    CHECK(l[6] == 3.0f - 100.0f && l[13] == 3.0f - 100.0f && l[20] == 3.0f);
    /* replaced, not added; duplicates sum; before the penalty (20 is in the
     * history now: (3 - 1.5) / 2) */
    sampler_accept(s, 20);
    CHECK(sampler_set_bias(s, force, 3) == PS_OK);
    memcpy(l, base, sizeof l);
    CHECK(sampler_sample(s, l, NULL, &tok) == PS_OK);
    CHECK(tok == 3 && l[3] == 0.0f + 100.0f && l[6] == 3.0f);
    CHECK_MSG(fabsf(l[20] - (3.0f - 1.5f) / 2.0f) < 1e-6f, "logit 20 = %g", (double)l[20]);
    /* the mask still rules: a forced token it forbids is not chosen */
    uint32_t mask[(NV + 31) / 32] = { 0 };
    mask[0] = 1u << 5;
    memcpy(l, base, sizeof l);
    CHECK(sampler_sample(s, l, mask, &tok) == PS_OK && tok == 5);
    /* bad entries: nothing changes */
    const struct sampler_bias bad_tok[1] = { { NV, 1.0f } }, neg_tok[1] = { { -1, 1.0f } };
    const struct sampler_bias nan_bias[1] = { { 1, NAN } }, inf_bias[1] = { { 1, INFINITY } };
    CHECK(sampler_set_bias(s, bad_tok, 1) == PS_EINVAL && strstr(ps_error_last(), "outside the vocabulary"));
    CHECK(sampler_set_bias(s, neg_tok, 1) == PS_EINVAL);
    CHECK(sampler_set_bias(s, nan_bias, 1) == PS_EINVAL && strstr(ps_error_last(), "not a finite"));
    CHECK(sampler_set_bias(s, inf_bias, 1) == PS_EINVAL);
    CHECK(sampler_set_bias(s, force, SAMPLER_MAX_BIAS + 1) == PS_EINVAL);
    memcpy(l, base, sizeof l);
    CHECK(sampler_sample(s, l, NULL, &tok) == PS_OK && tok == 3);
    /* cleared */
    CHECK(sampler_set_bias(s, NULL, 0) == PS_OK);
    memcpy(l, base, sizeof l);
    CHECK(sampler_sample(s, l, NULL, &tok) == PS_OK && tok == 6);
    sampler_free(s);
}

/* Draws at T=1 follow softmax: chi-square over 8 tokens, loose bound. */
static void test_distribution(void)
{
    enum { K = 8, N = 20000 };
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = -INFINITY;
    double pr[K], z = 0.0;
    for (int i = 0; i < K; i++) {
        l[i * 11] = 0.3f * (float)i;
        z += exp(0.3 * i);
    }
    for (int i = 0; i < K; i++)
        pr[i] = exp(0.3 * i) / z;
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    p.seed = 7;
    sampler *s = NULL;
    CHECK(sampler_create(&p, NV, &s) == PS_OK);
    int cnt[K] = { 0 };
    int bad = 0;
    for (int n = 0; n < N; n++) {
        float t[NV];
        memcpy(t, l, sizeof t);
        int32_t tok;
        sampler_sample(s, t, NULL, &tok);
        if (tok % 11 == 0 && tok / 11 < K)
            cnt[tok / 11]++;
        else
            bad++;
    }
    sampler_free(s);
    CHECK(bad == 0);
    double chi2 = 0.0;
    for (int i = 0; i < K; i++) {
        double e = N * pr[i];
        chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    printf("chi-square (7 dof) = %.2f\n", chi2);
    CHECK(chi2 < 40.0); /* p ~ 1e-6 for 7 dof */
}

/* A temperature so small that 1 / T overflows float (any positive
 * denormal, e.g. 1e-39 from a request's JSON) is greedy: it used to make
 * the best candidate's weight 0 * inf = NaN, so the draw fell through to
 * the last candidate (the highest id, whatever its logit) and with min_p
 * the filter kept nothing and c[-1] was read. */
static void test_tiny_temperature(void)
{
    float l[NV];
    int rc;
    const float temps[3] = { 1e-39f, 1e-44f, 2.8e-39f };
    for (int r = 0; r < 10; r++) {
        random_logits(l, NV);
        for (int k = 0; k < 3; k++) {
            struct sampler_params p = sampler_params_default();
            p.temperature = temps[k];
            p.seed = (uint64_t)r;
            CHECK(sampler_params_validate(&p) == PS_OK);
            int32_t t = sample1(&p, l, NULL, &rc);
            CHECK_MSG(rc == PS_OK && t == argmax(l, NV), "T %g: token %d, argmax %d", (double)temps[k], t,
                      argmax(l, NV));
            p.min_p = 0.5f;
            t = sample1(&p, l, NULL, &rc);
            CHECK_MSG(rc == PS_OK && t == argmax(l, NV), "T %g min_p: token %d", (double)temps[k], t);
            p.min_p = 0.0f;
            p.top_p = 0.5f;
            p.top_k = 5;
            t = sample1(&p, l, NULL, &rc);
            CHECK_MSG(rc == PS_OK && t == argmax(l, NV), "T %g top_p/top_k: token %d", (double)temps[k], t);
            float c[NV];
            memcpy(c, l, sizeof c);
            CHECK(sampler_sample_draw(&p, 3, NV, c, NULL, &t) == PS_OK && t == argmax(l, NV));
        }
    }
}

/* A +inf logit (an overflowed backend row) takes all the mass: it used to
 * make max - max = inf - inf = NaN weights, so the draw fell through to the
 * last candidate and min_p kept nothing (c[-1] read). */
static void test_infinite_logit(void)
{
    float l[NV];
    int rc;
    for (int r = 0; r < 10; r++) {
        random_logits(l, NV);
        l[37] = INFINITY;
        struct sampler_params p = sampler_params_default();
        p.temperature = 0.7f;
        p.seed = (uint64_t)r;
        int32_t t = sample1(&p, l, NULL, &rc);
        CHECK_MSG(rc == PS_OK && t == 37, "+inf logit: token %d", t);
        p.min_p = 0.1f;
        t = sample1(&p, l, NULL, &rc);
        CHECK_MSG(rc == PS_OK && t == 37, "+inf logit, min_p: token %d", t);
        p.min_p = 0.0f;
        p.top_p = 0.9f;
        p.top_k = 10;
        t = sample1(&p, l, NULL, &rc);
        CHECK_MSG(rc == PS_OK && t == 37, "+inf logit, top_p/top_k: token %d", t);
        /* two +inf logits share the mass */
        l[80] = INFINITY;
        p = sampler_params_default();
        p.temperature = 1.0f;
        int hit37 = 0, hit80 = 0;
        for (uint64_t seed = 0; seed < 64; seed++) {
            p.seed = seed;
            t = sample1(&p, l, NULL, &rc);
            hit37 += t == 37;
            hit80 += t == 80;
        }
        CHECK_MSG(hit37 + hit80 == 64 && hit37 > 0 && hit80 > 0, "two +inf logits: %d / %d of 64", hit37, hit80);
    }
}

/* Non-finite logits (a model with NaN / inf weights).  sampler_logits_check
 * - what the engine and `generate` run before sampling - names the first
 * NaN / inf / -inf of a row (PS_ERANGE) whatever its position (the vector
 * loop's tail included) and passes finite extremes.  The sampler itself,
 * given such rows anyway (all NaN, all -inf, NaN / +inf / -inf mixed, a mask
 * allowing only NaN ids, penalties rewriting them), returns PS_OK with an
 * allowed id in range for every mode - greedy, temperature, top-k, top-p,
 * min-p, penalties - the same one on a second call (no hang, no out of
 * bounds: run under ASan/UBSan too). */
static void test_nonfinite_logits(void)
{
    static const float bad[3] = { NAN, INFINITY, -INFINITY };
    static const char *name[3] = { "token %d: nan", "token %d: inf", "token %d: -inf" };
    float l[NV];
    char want[64];
    for (int n = 1; n <= NV; n += (n < 40 ? 1 : 7))
        for (int b = 0; b < 3; b++)
            for (int at = 0; at < n; at += (n < 20 ? 1 : 5)) {
                random_logits(l, n);
                l[at] = bad[b];
                if (at + 3 < n)
                    l[at + 3] = bad[(b + 1) % 3]; /* only the first is named */
                CHECK_MSG(sampler_logits_check(l, n) == PS_ERANGE, "n %d, %g at %d", n, (double)bad[b], at);
                snprintf(want, sizeof want, name[b], at);
                CHECK_MSG(strstr(ps_error_last(), SAMPLER_NONFINITE_MSG) && strstr(ps_error_last(), want),
                          "n %d at %d: '%s'", n, at, ps_error_last());
            }
    random_logits(l, NV);
    l[0] = FLT_MAX;
    l[1] = -FLT_MAX;
    l[2] = 1e-45f;
    l[3] = -0.0f;
    CHECK(sampler_logits_check(l, NV) == PS_OK);

    uint32_t only_nan[(NV + 31) / 32] = { 0 };
    for (int r = 0; r < 6; r++) {
        const uint32_t *mask = NULL;
        for (int i = 0; i < NV; i++) {
            switch (r) {
            case 0: l[i] = NAN; break;
            case 1: l[i] = -INFINITY; break;
            case 2: l[i] = i % 3 == 0 ? NAN : i % 3 == 1 ? -INFINITY : INFINITY; break;
            case 3: l[i] = i % 2 ? NAN : -INFINITY; break;
            case 4: l[i] = i % 4 ? 8.0f * frand() - 4.0f : NAN; break;
            default: l[i] = i % 5 ? 8.0f * frand() - 4.0f : NAN; break;
            }
        }
        if (r == 5) { /* only NaN ids allowed */
            for (int i = 0; i < NV; i += 5)
                only_nan[i / 32] |= 1u << (i % 32);
            mask = only_nan;
        }
        for (int mode = 0; mode < 7; mode++) {
            struct sampler_params p = sampler_params_default();
            p.seed = (uint64_t)(r * 7 + mode);
            if (mode > 0)
                p.temperature = 0.8f;
            if (mode == 2)
                p.top_k = 5;
            if (mode == 3)
                p.top_p = 0.5f;
            if (mode == 4)
                p.min_p = 0.2f;
            if (mode == 5) {
                p.top_k = 3;
                p.top_p = 0.9f;
                p.min_p = 0.05f;
            }
            if (mode == 6 || mode == 0) {
                p.repeat_penalty = 1.3f;
                p.presence_penalty = 0.5f;
                p.frequency_penalty = -0.5f;
            }
            int32_t t[2] = { -1, -1 };
            for (int k = 0; k < 2; k++) {
                sampler *s = NULL;
                CHECK(sampler_create(&p, NV, &s) == PS_OK);
                for (int h = 0; h < 30; h++)
                    sampler_accept(s, (h * 7) % NV);
                float c[NV];
                memcpy(c, l, sizeof c);
                CHECK_MSG(sampler_sample(s, c, mask, &t[k]) == PS_OK, "row %d mode %d", r, mode);
                sampler_free(s);
            }
            CHECK_MSG(t[0] >= 0 && t[0] < NV && t[0] == t[1], "row %d mode %d: tokens %d %d", r, mode, t[0], t[1]);
            if (mask && t[0] >= 0 && t[0] < NV)
                CHECK_MSG((mask[t[0] / 32] >> (t[0] % 32)) & 1u, "row %d mode %d: %d not allowed", r, mode, t[0]);
            if (!sampler_params_need_history(&p)) {
                float c[NV];
                int32_t td = -1;
                memcpy(c, l, sizeof c);
                CHECK(sampler_sample_draw(&p, 0, NV, c, mask, &td) == PS_OK && td == t[0]);
            }
        }
    }
}

/* The reference of sampler_top_logprobs: every id with mass, fully sorted
 * (logit as the sampler reads it descending, lower id first on ties). */
static const float *g_sort_row;

static float read_logit(float l)
{
    return isnan(l) ? -INFINITY : l == INFINITY ? FLT_MAX : l;
}

static int by_logit_then_id(const void *pa, const void *pb)
{
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    const float la = read_logit(g_sort_row[a]), lb = read_logit(g_sort_row[b]);
    if (la != lb)
        return la > lb ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* Check sampler_top_logprobs(l[nv], n) against the full sort; also that
 * the first id is the greedy token.  Returns the count it gave. */
static int32_t check_top(const float *l, int32_t nv, int32_t n, const char *what)
{
    int32_t ids[64], ref[1024];
    float lps[64];
    const double norm = sampler_log_norm(l, nv);
    const int32_t k = sampler_top_logprobs(l, nv, norm, n, ids, lps);
    int32_t m = 0;
    for (int32_t id = 0; id < nv; id++)
        if (sampler_logprob(l, norm, id) != -INFINITY)
            ref[m++] = id;
    g_sort_row = l;
    qsort(ref, (size_t)m, sizeof *ref, by_logit_then_id);
    const int32_t want = n < 0 ? 0 : n < m ? n : m;
    CHECK_MSG(k == want, "%s: n %d over %d ids with mass: %d entries, want %d", what, (int)n, (int)m, (int)k,
              (int)want);
    for (int32_t j = 0; j < k && j < want; j++) {
        CHECK_MSG(ids[j] == ref[j], "%s: entry %d is id %d, want %d", what, (int)j, (int)ids[j], (int)ref[j]);
        /* exactly the logprob the sampled token gets */
        CHECK_MSG(lps[j] == sampler_logprob(l, norm, ids[j]) && lps[j] <= 0.0f, "%s: entry %d logprob %g", what,
                  (int)j, (double)lps[j]);
        if (j)
            CHECK(lps[j] <= lps[j - 1]);
    }
    if (k > 0) {
        float row[1024];
        memcpy(row, l, (size_t)nv * sizeof *row);
        struct sampler_params p = sampler_params_default(); /* greedy */
        int32_t g = -1;
        CHECK(sampler_sample_draw(&p, 0, nv, row, NULL, &g) == PS_OK && g == ids[0]);
    }
    return k;
}

/* sampler_top_logprobs: the N most likely ids by a partial selection, in
 * the order of a full sort (logit descending, ties by lower id), with the
 * logprobs sampler_logprob gives; NaN and -inf logits have no mass and are
 * never listed, +inf reads as the largest float; N past the vocabulary or
 * past the ids with mass gives them all. */
static void test_top_logprobs(void)
{
    int32_t ids[8];
    float lps[8];
    /* ordering and ties */
    const float a[7] = { 1.0f, 3.0f, 2.0f, 3.0f, -INFINITY, NAN, 0.0f };
    double norm = sampler_log_norm(a, 7);
    CHECK(sampler_top_logprobs(a, 7, norm, 4, ids, lps) == 4);
    CHECK(ids[0] == 1 && ids[1] == 3 && ids[2] == 2 && ids[3] == 0);
    CHECK(lps[0] == lps[1] && lps[1] > lps[2] && lps[2] > lps[3]);
    CHECK(fabs((double)lps[0] - (3.0 - norm)) < 1e-6);
    /* a tie at the cut keeps the lower id */
    CHECK(sampler_top_logprobs(a, 7, norm, 1, ids, lps) == 1 && ids[0] == 1);
    /* more than the vocabulary, more than the ids with mass: the 5 finite ones */
    CHECK(sampler_top_logprobs(a, 7, norm, 8, ids, lps) == 5);
    CHECK(ids[0] == 1 && ids[1] == 3 && ids[2] == 2 && ids[3] == 0 && ids[4] == 6);
    CHECK(sampler_top_logprobs(a, 7, norm, 0, ids, lps) == 0);
    CHECK(sampler_top_logprobs(a, 7, norm, -1, ids, lps) == 0);
    const float none[3] = { -INFINITY, NAN, -INFINITY };
    norm = sampler_log_norm(none, 3);
    CHECK(sampler_top_logprobs(none, 3, norm, 3, ids, lps) == 0);
    /* +inf as the largest float: two of them share the mass, lower id first */
    const float inf[4] = { 0.0f, INFINITY, 5.0f, INFINITY };
    norm = sampler_log_norm(inf, 4);
    CHECK(sampler_top_logprobs(inf, 4, norm, 3, ids, lps) == 3);
    CHECK(ids[0] == 1 && ids[1] == 3 && ids[2] == 2);
    /* (FLT_MAX + log 2 rounds to FLT_MAX in double: logprob 0, as sampler_logprob gives) */
    CHECK(lps[0] == sampler_logprob(inf, norm, 1) && lps[1] == lps[0] && lps[2] <= -FLT_MAX);
    /* a row whose smallest logits underflow to a -inf logprob: not listed */
    const float far[3] = { FLT_MAX, -FLT_MAX, 0.0f };
    norm = sampler_log_norm(far, 3);
    CHECK(check_top(far, 3, 3, "far") == 2);
    /* random rows with many ties (values on a coarse grid), against the full sort */
    float l[1024];
    char what[64];
    static const int32_t sizes[] = { 1, 2, 7, 100, 1024 };
    static const int32_t ns[] = { 1, 2, 3, 5, 20, 64 };
    for (int r = 0; r < 40; r++) {
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            const int32_t nv = sizes[si];
            for (int32_t i = 0; i < nv; i++) {
                const float u = frand();
                l[i] = u < 0.1f ? -INFINITY : u < 0.12f ? NAN : (float)(int)(16.0f * frand()) * 0.5f - 4.0f;
            }
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                snprintf(what, sizeof what, "row %d, %d ids, n %d", r, (int)nv, (int)ns[ni]);
                check_top(l, nv, ns[ni], what);
            }
        }
    }
}

int main(void)
{
    test_validate();
    test_greedy();
    test_seeds();
    test_truncation();
    test_mask();
    test_penalties();
    test_logit_bias();
    test_distribution();
    test_tiny_temperature();
    test_infinite_logit();
    test_nonfinite_logits();
    test_top_logprobs();
    TEST_DONE();
}
