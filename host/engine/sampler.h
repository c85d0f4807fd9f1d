/* sampler.h - token sampling from logits.
 *
 * Order of operations (as in common servers): penalties (repetition,
 * presence, frequency over the last penalty_last_n tokens) -> greedy if
 * temperature <= 0 -> top-k -> temperature -> softmax -> top-p -> min-p ->
 * draw with the sampler's own seeded RNG.  Same seed and inputs => same
 * tokens, on every machine.
 */
#ifndef PS_SAMPLER_H
#define PS_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct sampler_params {
    float    temperature;       /* <= 0: greedy (argmax)                 */
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

int  sampler_create(const struct sampler_params *p, int32_t n_vocab, sampler **out);
void sampler_free(sampler *s); /* NULL-safe */

/* Pick a token from logits[n_vocab] (modified in place).  Optional mask:
 * when non-NULL, only ids with bit set (mask[id/32] >> (id%32) & 1) may be
 * chosen; all-zero mask is PS_EINVAL. */
int  sampler_sample(sampler *s, float *logits, const uint32_t *mask, int32_t *token);

/* Record a token in the penalty history (prompt tokens and sampled ones). */
void sampler_accept(sampler *s, int32_t token);

#endif /* PS_SAMPLER_H */
