/* sampler.h - token sampling from logits.
 *
 * Order of operations (as in common servers): penalties (repetition,
 * presence, frequency over the last penalty_last_n tokens) -> greedy if
 * temperature <= 0 -> top-k -> temperature -> softmax -> top-p -> min-p ->
 * draw.  Same seed and inputs => same tokens, on every machine.
 *
 * The draw is counter-based: draw k of a sequence (k = 0, 1, ...: the
 * sampler_sample calls so far) uses the uniform
 *   U(seed, k) = (mix(seed ^ mix(k + 0x632be59bd9b4e019)) >> 40) / 2^24
 * (mix(x): splitmix64's output function of x + 0x9e3779b97f4a7c15; 24
 * random bits), exactly the uniform of the GPU sampler (cuda/sample.cu).
 * So a sequence whose steps are sampled sometimes here and sometimes by a
 * backend (backend_forward_sample) draws the same numbers as one sampled
 * on a single side.
 */
#ifndef PS_SAMPLER_H
#define PS_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sampler_params {
    float    temperature;       /* <= 0, or so small that 1/T overflows
                                   float (a denormal): greedy (argmax)    */
    int32_t  top_k;             /* <= 0: off                              */
    float    top_p;             /* >= 1: off                              */
    float    min_p;             /* <= 0: off                              */
    float    repeat_penalty;    /* 1: off; >1 divides positive logits     */
    float    presence_penalty;  /* 0: off                                 */
    float    frequency_penalty; /* 0: off                                 */
    int32_t  penalty_last_n;    /* history window for penalties; 0 = 64   */
    uint64_t seed;
};

/* Defaults: greedy, no truncation, no penalties, seed 0. */
struct sampler_params sampler_params_default(void);

/* PS_EINVAL with a detail naming the field for out-of-range values
 * (negative temperature, top_p outside (0,1], ...). */
int sampler_params_validate(const struct sampler_params *p);

typedef struct sampler sampler;

/* A logit bias (OpenAI's logit_bias): `bias` is added to token's logit
 * before the penalties, the token mask and sampling, on every step.  -100
 * in practice bans a token, +100 all but forces it. */
struct sampler_bias {
    int32_t token;
    float   bias;
};
#define SAMPLER_MAX_BIAS 1024   /* entries per request (OpenAI allows 300) */

int  sampler_create(const struct sampler_params *p, int32_t n_vocab, sampler **out);
void sampler_free(sampler *s); /* NULL-safe */

/* Copy n (<= SAMPLER_MAX_BIAS) logit biases into s (replacing any; n 0:
 * none).  A token listed twice takes the sum.  PS_EINVAL naming the
 * entry for a token outside [0, n_vocab) or a bias that is not finite,
 * PS_ENOMEM; on error s keeps its previous biases. */
int  sampler_set_bias(sampler *s, const struct sampler_bias *b, int32_t n);

/* Pick a token from logits[n_vocab] (modified in place) with draw index
 * sampler_next_draw(s), then advance the index.  Optional mask: when
 * non-NULL, only ids with bit set (mask[id/32] >> (id%32) & 1) may be
 * chosen; a mask allowing no id below n_vocab is PS_EINVAL ("token mask
 * allows no token") and the index does not advance. */
int  sampler_sample(sampler *s, float *logits, const uint32_t *mask, int32_t *token);

/* Record a token in the penalty history (prompt tokens and sampled ones). */
void sampler_accept(sampler *s, int32_t token);

/* Draw index of the next sampler_sample: the tokens sampled so far. */
uint64_t sampler_next_draw(const sampler *s);

/* A token was chosen for draw sampler_next_draw(s) elsewhere (a backend
 * sampling on its device with the same (seed, draw)): advance the index as
 * sampler_sample would have.  The token still goes to sampler_accept. */
void sampler_skip_draw(sampler *s);

/* True when p sets a penalty: those need the token history, which only
 * sampler_sample has, so such a sequence is always sampled here. */
bool sampler_params_need_history(const struct sampler_params *p);

/* log(sum_i exp(logits[i])) over logits[n_vocab], summed in double and
 * read as the sampler reads logits (NaN as -inf, +inf as the largest
 * float); -inf when every logit is -inf.  With it, sampler_logprob gives a
 * token's log-probability under the softmax of those logits (the model's
 * distribution: no penalty, temperature, truncation or mask). */
double sampler_log_norm(const float *logits, int32_t n_vocab);
/* logits[id] - norm (norm: sampler_log_norm of the same row); <= 0, -inf
 * for a -inf or NaN logit. */
float  sampler_logprob(const float *logits, double norm, int32_t id);

/* The n most likely ids of logits[n_vocab] under the same softmax
 * (norm: sampler_log_norm of the same row), for logprobs alternatives:
 * ids[k] with lps[k] = sampler_logprob(logits, norm, ids[k]), k < the
 * returned count, ordered by logit descending (so logprob non-increasing),
 * ties broken by the lower id - the greedy sampler's order, so ids[0] is
 * the greedy token whenever it has mass.  Logits are read as the sampler
 * reads them (NaN as -inf, +inf as the largest float).  An id whose
 * logprob is -inf (no mass; JSON cannot carry -inf) is never listed, so
 * the count is min(n, ids with a finite logprob) and 0 for n <= 0 or a row
 * of -inf.  ids[n] and lps[n] are the caller's.  A partial insertion
 * selection: O(n_vocab) compares plus O(n) moves per admitted id
 * (O(n_vocab * n) worst case, no sort of the row); no allocation. */
int32_t sampler_top_logprobs(const float *logits, int32_t n_vocab, double norm, int32_t n, int32_t *ids,
                             float *lps);

/* Non-finite logits.  The sampler itself gives a defined token for any
 * row (NaN read as -inf, +inf as the largest float; a row with no finite
 * allowed logit gives the lowest allowed id), but a NaN or inf in a model's
 * output means the model (its weights) is broken, and tokens drawn from it
 * are garbage.  The engine and `paraserve generate` therefore check each
 * row before sampling and fail the request instead: PS_OK when every
 * logits[i], i < n_vocab, is finite, else PS_ERANGE with the detail
 * SAMPLER_NONFINITE_MSG " (token <id>: nan | inf | -inf)" naming the first
 * one.  One vectorizable pass over the row. */
#define SAMPLER_NONFINITE_MSG "the model produced non-finite logits"
int  sampler_logits_check(const float *logits, int32_t n_vocab);

/* True when mask[(n_vocab + 31) / 32] allows no id in [0, n_vocab). */
bool sampler_mask_empty(const uint32_t *mask, int32_t n_vocab);

/* Stateless sampler_sample without penalties (they are ignored): one token
 * from logits[n_vocab] (modified in place) with draw index `draw`; the same
 * token sampler_sample gives for these params at that index.  For backends
 * without a device sampler (backend_forward_sample's host fallback) and
 * tests.  PS_EINVAL for bad params or a mask allowing nothing; PS_ENOMEM
 * (it allocates n_vocab candidates per call). */
int  sampler_sample_draw(const struct sampler_params *p, uint64_t draw, int32_t n_vocab, float *logits,
                         const uint32_t *mask, int32_t *token);

#endif /* PS_SAMPLER_H */
