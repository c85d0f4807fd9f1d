/* sampler.c - penalties, greedy / top-k / temperature / top-p / min-p, draw.
 *
 * Determinism: candidate order is a total order (logit descending, id
 * ascending on ties), sums run in a fixed order in double, and draw k uses
 * the counter-based uniform U(seed, k) of sampler.h (shared with
 * cuda/sample.cu: keep draw_uniform and smp_mix/the kernel's draw in step)
 * - so the same seed, logits and history give the same token on every
 * machine, whichever side sampled the sequence's earlier tokens.
 *
 * Cost: without top-p nothing is sorted.  Top-p selects the best 64
 * candidates (quickselect), widening x4 until they hold top_p of the mass,
 * so a full vocabulary sort is the rare worst case.
 */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/status.h"

#define PENALTY_LAST_N_DEFAULT 64
#define TOP_P_FIRST_K          64

struct cand {
    float   logit;
    float   p;     /* exp((logit - max) / temperature), unnormalised */
    int32_t id;
};

struct sampler {
    struct sampler_params p;
    int32_t      n_vocab;
    int32_t      last_n;    /* history capacity */
    int32_t      hist_len;  /* tokens held, <= last_n */
    int32_t      hist_pos;  /* next write slot */
    int32_t     *hist;      /* [last_n] ring */
    int32_t     *counts;    /* [n_vocab] scratch, all zero between calls */
    struct cand *cands;     /* [n_vocab] scratch */
    uint64_t     draw;      /* index of the next draw */
    struct sampler_bias *bias; /* [n_bias] logit biases, or NULL */
    int32_t      n_bias;
};

struct sampler_params sampler_params_default(void)
{
    struct sampler_params p = {
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .penalty_last_n = PENALTY_LAST_N_DEFAULT,
        .seed = 0,
    };
    return p;
}

int sampler_params_validate(const struct sampler_params *p)
{
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return ps_error_set(PS_EINVAL, "sampler: temperature %g must be a finite value >= 0",
                            (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return ps_error_set(PS_EINVAL, "sampler: top_p %g outside (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return ps_error_set(PS_EINVAL, "sampler: min_p %g outside [0, 1]", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return ps_error_set(PS_EINVAL, "sampler: repeat_penalty %g must be a finite value > 0",
                            (double)p->repeat_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return ps_error_set(PS_EINVAL, "sampler: presence_penalty %g outside [-2, 2]",
                            (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return ps_error_set(PS_EINVAL, "sampler: frequency_penalty %g outside [-2, 2]",
                            (double)p->frequency_penalty);
    if (p->penalty_last_n < 0)
        return ps_error_set(PS_EINVAL, "sampler: penalty_last_n %d < 0", (int)p->penalty_last_n);
    return PS_OK;
}

/* splitmix64's finalizer of x + golden gamma (cuda/sample.cu: smp_mix). */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* U(seed, draw) in [0, 1): 24 random bits, exactly the GPU sampler's. */
static double draw_uniform(uint64_t seed, uint64_t draw)
{
    const uint64_t h = mix64(seed ^ mix64(draw + 0x632be59bd9b4e019ull));
    return (double)(h >> 40) * (1.0 / 16777216.0);
}

int sampler_create(const struct sampler_params *p, int32_t n_vocab, sampler **out)
{
    *out = NULL;
    int rc = sampler_params_validate(p);
    if (rc)
        return rc;
    if (n_vocab < 1)
        return ps_error_set(PS_EINVAL, "sampler: n_vocab %d < 1", (int)n_vocab);

    struct sampler *s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->last_n = p->penalty_last_n ? p->penalty_last_n : PENALTY_LAST_N_DEFAULT;
    s->hist = malloc((size_t)s->last_n * sizeof *s->hist);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->cands = malloc((size_t)n_vocab * sizeof *s->cands);
    if (!s->hist || !s->counts || !s->cands)
        goto nomem;
    *out = s;
    return PS_OK;
nomem:
    sampler_free(s);
    return ps_error_set(PS_ENOMEM, "sampler: out of memory (n_vocab %d)", (int)n_vocab);
}

void sampler_free(sampler *s)
{
    if (!s)
        return;
    free(s->cands);
    free(s->counts);
    free(s->hist);
    free(s->bias);
    free(s);
}

void sampler_accept(sampler *s, int32_t token)
{
    if (token < 0 || token >= s->n_vocab)
        return;
    s->hist[s->hist_pos] = token;
    s->hist_pos = (s->hist_pos + 1) % s->last_n;
    if (s->hist_len < s->last_n)
        s->hist_len++;
}

static void apply_penalties(sampler *s, float *logits)
{
    const struct sampler_params *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    for (int32_t i = 0; i < s->hist_len; i++)
        s->counts[s->hist[i]]++;
    /* Each distinct token once; its count is reset as it is applied. */
    for (int32_t i = 0; i < s->hist_len; i++) {
        int32_t tok = s->hist[i];
        int32_t c = s->counts[tok];
        if (c == 0)
            continue;
        s->counts[tok] = 0;
        float l = logits[tok];
        if (l > 0.0f)
            l /= p->repeat_penalty;
        else
            l *= p->repeat_penalty;
        l -= (float)c * p->frequency_penalty + p->presence_penalty;
        logits[tok] = l;
    }
}

static inline int mask_allows(const uint32_t *mask, int32_t id)
{
    return !mask || ((mask[id / 32] >> (id % 32)) & 1u);
}

/* a before b in candidate order */
static inline int cand_before(const struct cand *a, const struct cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct cand *a = pa, *b = pb;
    if (cand_before(a, b))
        return -1;
    return cand_before(b, a) ? 1 : 0;
}

static inline void cand_swap(struct cand *a, struct cand *b)
{
    struct cand t = *a;
    *a = *b;
    *b = t;
}

/* Reorder c[0..n) so its first k entries are the k best (any order among
 * them).  Deterministic quickselect, median-of-three pivot. */
static void cand_select(struct cand *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (hi > lo) {
        int32_t mid = lo + (hi - lo) / 2;
        if (cand_before(&c[mid], &c[lo]))
            cand_swap(&c[mid], &c[lo]);
        if (cand_before(&c[hi], &c[lo]))
            cand_swap(&c[hi], &c[lo]);
        if (cand_before(&c[hi], &c[mid]))
            cand_swap(&c[hi], &c[mid]);
        struct cand pivot = c[mid];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (cand_before(&c[i], &pivot))
                i++;
            while (cand_before(&pivot, &c[j]))
                j--;
            if (i <= j) {
                cand_swap(&c[i], &c[j]);
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

static void cand_top(struct cand *c, int32_t n, int32_t k)
{
    if (k < n)
        cand_select(c, n, k);
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

bool sampler_params_need_history(const struct sampler_params *p)
{
    return p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
}

bool sampler_mask_empty(const uint32_t *mask, int32_t n_vocab)
{
    for (int32_t w = 0; w < (n_vocab + 31) / 32; w++) {
        uint32_t bits = mask[w];
        if (w == n_vocab / 32)
            bits &= (n_vocab % 32) ? ((1u << (n_vocab % 32)) - 1u) : 0u;
        if (bits)
            return false;
    }
    return true;
}

int sampler_logits_check(const float *logits, int32_t n_vocab)
{
    /* |l| as bits: >= the exponent mask exactly for inf and NaN; an
     * unsigned max reduction the compiler vectorizes */
    uint32_t mx = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        uint32_t u;
        memcpy(&u, &logits[i], sizeof u);
        u &= 0x7fffffffu;
        mx = u > mx ? u : mx;
    }
    if (mx < 0x7f800000u)
        return PS_OK;
    int32_t i = 0;
    while (isfinite(logits[i]))
        i++;
    return ps_error_set(PS_ERANGE, SAMPLER_NONFINITE_MSG " (token %d: %s)", (int)i,
                        isnan(logits[i]) ? "nan" : logits[i] > 0.0f ? "inf" : "-inf");
}

/* A logit as the sampler reads it: NaN as -inf, +inf as the largest float. */
static inline float logit_read(float l)
{
    return isnan(l) ? -INFINITY : l == INFINITY ? FLT_MAX : l;
}

double sampler_log_norm(const float *logits, int32_t n_vocab)
{
    float maxl = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++) {
        const float l = logit_read(logits[i]);
        if (l > maxl)
            maxl = l;
    }
    if (maxl == -INFINITY)
        return -INFINITY;
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++)
        sum += exp((double)logit_read(logits[i]) - (double)maxl);
    return (double)maxl + log(sum);
}

float sampler_logprob(const float *logits, double norm, int32_t id)
{
    const double lp = (double)logit_read(logits[id]) - norm;
    /* -inf - -inf (every logit -inf) is NaN: such a token has no mass */
    return isnan(lp) ? -INFINITY : lp > 0.0 ? 0.0f : (float)lp;
}

int32_t sampler_top_logprobs(const float *logits, int32_t n_vocab, double norm, int32_t n, int32_t *ids,
                             float *lps)
{
    int32_t k = 0; /* ids[0..k) by logit descending; lps holds the logits until the end */
    if (n <= 0)
        return 0;
    for (int32_t id = 0; id < n_vocab; id++) {
        const float l = logit_read(logits[id]);
        if (l == -INFINITY)
            continue;
        /* ids ascend, so an id tied with the last kept one comes after it */
        if (k == n && !(l > lps[k - 1]))
            continue;
        int32_t j = k < n ? k++ : n - 1;
        for (; j > 0 && l > lps[j - 1]; j--) {
            lps[j] = lps[j - 1];
            ids[j] = ids[j - 1];
        }
        lps[j] = l;
        ids[j] = id;
    }
    for (int32_t j = 0; j < k; j++) {
        lps[j] = sampler_logprob(logits, norm, ids[j]);
        if (lps[j] == -INFINITY)
            return j; /* an underflow to -inf: this one and all after it have no mass */
    }
    return k;
}

uint64_t sampler_next_draw(const sampler *s)
{
    return s->draw;
}

void sampler_skip_draw(sampler *s)
{
    s->draw++;
}

/* Everything after the penalties: candidates (allowed ids, NaN logits as
 * -inf, +inf as FLT_MAX), greedy / top-k / temperature / top-p / min-p, draw `draw`.  c:
 * [nv] scratch.  The mask allows at least one id (checked by the callers). */
static void sample_core(const struct sampler_params *p, struct cand *c, int32_t nv, const float *logits,
                        const uint32_t *mask, uint64_t draw, int32_t *token)
{
    int32_t n = 0;
    for (int32_t id = 0; id < nv; id++) {
        if (!mask_allows(mask, id))
            continue;
        float l = logits[id];
        /* +inf as the largest float: such ids share all the mass (with
         * max = +inf every weight would be exp(inf - inf) = NaN) */
        c[n].logit = isnan(l) ? -INFINITY : l == INFINITY ? FLT_MAX : l;
        c[n].id = id;
        n++;
    }

    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (cand_before(&c[i], &c[best]))
            best = i;
    /* A positive temperature whose inverse overflows (a denormal) is the
     * limit T -> 0, greedy; computing with inv_t = inf would weigh the best
     * candidate 0 * inf = NaN. */
    const float inv_t = p->temperature > 0.0f ? 1.0f / p->temperature : 0.0f;
    if (p->temperature <= 0.0f || isinf(inv_t) || c[best].logit == -INFINITY) {
        *token = c[best].id;
        return;
    }

    const float maxl = c[best].logit; /* the best candidate survives top-k */
    int sorted = 0;
    if (p->top_k > 0 && p->top_k < n) {
        cand_top(c, n, p->top_k);
        n = p->top_k;
        sorted = 1;
    }

    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        c[i].p = expf((c[i].logit - maxl) * inv_t);
        sum += c[i].p;
    }

    if (p->top_p < 1.0f) {
        const double target = (double)p->top_p * sum;
        int32_t k = (sorted || n < TOP_P_FIRST_K) ? n : TOP_P_FIRST_K;
        for (;;) {
            if (!sorted)
                cand_top(c, n, k);
            double cum = 0.0;
            int32_t m = 0;
            while (m < k && cum < target)
                cum += c[m++].p;
            if (cum >= target || k == n) {
                n = m > 0 ? m : 1;
                break;
            }
            k = k > n / 4 ? n : k * 4;
        }
        sorted = 1;
    }

    if (p->min_p > 0.0f) {
        /* p is relative to the best token (p = 1), so the threshold is min_p. */
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (c[i].p >= p->min_p)
                c[m++] = c[i];
        n = m;
    }

    sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += c[i].p;
    double r = draw_uniform(p->seed, draw) * sum;
    double cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += c[i].p;
        if (r < cum) {
            *token = c[i].id;
            return;
        }
    }
    *token = c[n - 1].id; /* r rounded up to sum */
}

int sampler_set_bias(sampler *s, const struct sampler_bias *b, int32_t n)
{
    if (n < 0 || n > SAMPLER_MAX_BIAS)
        return ps_error_set(PS_EINVAL, "sampler: %d logit biases (at most %d)", (int)n, SAMPLER_MAX_BIAS);
    for (int32_t i = 0; i < n; i++) {
        if (b[i].token < 0 || b[i].token >= s->n_vocab)
            return ps_error_set(PS_EINVAL, "sampler: logit bias for token %d outside the vocabulary [0, %d)",
                                (int)b[i].token, (int)s->n_vocab);
        if (!isfinite(b[i].bias))
            return ps_error_set(PS_EINVAL, "sampler: logit bias for token %d is not a finite number",
                                (int)b[i].token);
    }
    struct sampler_bias *copy = NULL;
    if (n > 0) {
        copy = malloc((size_t)n * sizeof *copy);
        if (!copy)
            return ps_error_set(PS_ENOMEM, "sampler: out of memory for %d logit biases", (int)n);
        memcpy(copy, b, (size_t)n * sizeof *copy);
    }
    free(s->bias);
    s->bias = copy;
    s->n_bias = n;
    return PS_OK;
}

int sampler_sample(sampler *s, float *logits, const uint32_t *mask, int32_t *token)
{
    if (mask && sampler_mask_empty(mask, s->n_vocab))
        return ps_error_set(PS_EINVAL, "sampler: token mask allows no token of %d", (int)s->n_vocab);
    for (int32_t i = 0; i < s->n_bias; i++)
        logits[s->bias[i].token] += s->bias[i].bias;
    apply_penalties(s, logits);
    sample_core(&s->p, s->cands, s->n_vocab, logits, mask, s->draw, token);
    s->draw++;
    return PS_OK;
}

int sampler_sample_draw(const struct sampler_params *p, uint64_t draw, int32_t n_vocab, float *logits,
                        const uint32_t *mask, int32_t *token)
{
    int rc = sampler_params_validate(p);
    if (rc)
        return rc;
    if (n_vocab < 1)
        return ps_error_set(PS_EINVAL, "sampler: n_vocab %d < 1", (int)n_vocab);
    if (mask && sampler_mask_empty(mask, n_vocab))
        return ps_error_set(PS_EINVAL, "sampler: token mask allows no token of %d", (int)n_vocab);
    struct cand *c = malloc((size_t)n_vocab * sizeof *c);
    if (!c)
        return ps_error_set(PS_ENOMEM, "sampler: out of memory (n_vocab %d)", (int)n_vocab);
    sample_core(p, c, n_vocab, logits, mask, draw, token);
    free(c);
    return PS_OK;
}
