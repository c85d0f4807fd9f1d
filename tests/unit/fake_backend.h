/* fake_backend.h - a backend for scheduler/engine tests whose "model" is a
 * function of the context it reads back from its own paged cache, so a
 * wrong block table, a lost token or a bad copy_block shows up as different
 * logits.  Header-only, like test_util.h; include it once per test.
 *
 *   g_fake_model.hp.n_vocab = 64;                  // the vocabulary of the logits
 *   struct fake_backend *fb = fake_create(64, 4, 64, my_logits);
 *   sched_create(&cfg, &fb->base, ...);  ...;  fake_free(&fb->base);
 *
 * With g_fake_device set, fake_create makes backends that sample
 * themselves (ops->forward_sample): the forward, then the mask callback (a
 * device would still be computing), then sampler_sample_draw per row - the
 * reference the CUDA op follows.  Tokens outside their mask are counted in
 * mask_violations, so a test can prove masks reach the sampler. */
#ifndef PS_TEST_FAKE_BACKEND_H
#define PS_TEST_FAKE_BACKEND_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "model/model.h"

/* out[0 .. n_vocab) = logits after the context ctx[0 .. n). */
typedef void (*fake_logits_fn)(const int32_t *ctx, int32_t n, float *out, int32_t n_vocab);

struct fake_backend {
    struct backend base;
    int32_t       *cache;      /* [n_kv_blocks * block_size] token ids, -1 = never written */
    int32_t       *ctx;        /* [n_kv_blocks * block_size] scratch: one sequence's context */
    fake_logits_fn logits_of;
    int            fail_next;  /* the next forward fails (PS_EINTERNAL) */
    int            sleep_us;   /* per forward: a device the host waits for */
    int64_t        forwards, tokens_run;
    int64_t        sample_calls, mask_violations; /* forward_sample (device path) */
    int32_t        max_seqs_seen;
};

static struct model g_fake_model; /* hp.n_vocab: the fake model's vocabulary */
static bool g_fake_device;        /* fake_create makes backends that sample themselves */

static inline uint32_t fake_mix(uint32_t h, uint32_t x)
{
    h ^= x + 0x9e3779b9u + (h << 6) + (h >> 2);
    h *= 0x85ebca6bu;
    return h ^ (h >> 13);
}

static int fake_forward(backend *be, const struct batch_plan *plan, float *logits)
{
    struct fake_backend *fb = (struct fake_backend *)be;
    if (fb->fail_next) {
        fb->fail_next = 0;
        return ps_error_set(PS_EINTERNAL, "fake: injected failure");
    }
    if (fb->sleep_us)
        usleep((useconds_t)fb->sleep_us);
    const int32_t bs = be->cfg.block_size, nv = g_fake_model.hp.n_vocab;
    fb->forwards++;
    if (plan->n_seqs > fb->max_seqs_seen)
        fb->max_seqs_seen = plan->n_seqs;
    int64_t row = 0;
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        const struct batch_seq *s = &plan->seqs[i];
        fb->tokens_run += s->n_tokens;
        for (int32_t t = 0; t < s->n_tokens; t++) {
            int32_t p = s->pos0 + t;
            fb->cache[s->block_table[p / bs] * bs + p % bs] = s->tokens[t];
        }
        if (s->logits == LOGITS_NONE)
            continue;
        const int32_t end = s->pos0 + s->n_tokens;
        for (int32_t p = 0; p < end; p++)
            fb->ctx[p] = fb->cache[s->block_table[p / bs] * bs + p % bs];
        fb->logits_of(fb->ctx, end, logits + row * nv, nv);
        row++;
    }
    return PS_OK;
}

static int fake_copy_block(backend *be, int32_t src, int32_t dst)
{
    struct fake_backend *fb = (struct fake_backend *)be;
    const int32_t bs = be->cfg.block_size;
    memcpy(fb->cache + dst * bs, fb->cache + src * bs, (size_t)bs * sizeof *fb->cache);
    return PS_OK;
}

static void fake_free(backend *be)
{
    struct fake_backend *fb = (struct fake_backend *)be;
    if (!fb)
        return;
    free(fb->cache);
    free(fb->ctx);
    free(fb);
}

static int fake_forward_sample(backend *be, const struct batch_plan *plan,
                               const struct backend_sample_params *params, backend_mask_fn mask_fn,
                               void *mask_ud, int32_t *tokens)
{
    struct fake_backend *fb = (struct fake_backend *)be;
    const int32_t nv = g_fake_model.hp.n_vocab;
    const int64_t rows = backend_logits_rows(plan);
    float *logits = malloc((size_t)(rows + 1) * (size_t)nv * sizeof *logits);
    const uint32_t **masks = calloc((size_t)rows + 1, sizeof *masks);
    int rc = !logits || !masks ? ps_error_set(PS_ENOMEM, "fake: out of memory") : fake_forward(be, plan, logits);
    fb->sample_calls++;
    if (!rc && rows > 0 && mask_fn)
        rc = mask_fn(mask_ud, masks, rows);
    for (int64_t r = 0; r < rows && !rc; r++) {
        if (masks[r] && sampler_mask_empty(masks[r], nv)) {
            tokens[r] = -1;
            continue;
        }
        if (sampler_logits_check(logits + r * nv, nv)) { /* as cuda/sample.cu */
            tokens[r] = BACKEND_TOKEN_NONFINITE;
            continue;
        }
        struct sampler_params p = sampler_params_default();
        p.temperature = params[r].temperature;
        p.top_k = params[r].top_k;
        p.top_p = params[r].top_p;
        p.min_p = params[r].min_p;
        p.seed = params[r].seed;
        rc = sampler_sample_draw(&p, params[r].step, nv, logits + r * nv, masks[r], &tokens[r]);
        if (!rc && masks[r] && !((masks[r][tokens[r] / 32] >> (tokens[r] % 32)) & 1u))
            fb->mask_violations++;
    }
    free(masks);
    free(logits);
    return rc;
}

static const struct backend_ops fake_ops = { .name = "fake", .forward = fake_forward,
                                             .copy_block = fake_copy_block, .free = fake_free };
static const struct backend_ops fake_sampling_ops = { .name = "fake-sampling", .forward = fake_forward,
                                                      .copy_block = fake_copy_block, .free = fake_free,
                                                      .forward_sample = fake_forward_sample };

/* A fake with n_blocks blocks of bs slots (all -1); NULL when out of memory. */
static struct fake_backend *fake_create(int32_t n_blocks, int32_t bs, int32_t max_batch_tokens,
                                        fake_logits_fn logits_of)
{
    struct fake_backend *fb = calloc(1, sizeof *fb);
    if (!fb)
        return NULL;
    fb->base.ops = g_fake_device ? &fake_sampling_ops : &fake_ops;
    fb->base.model = &g_fake_model;
    fb->base.cfg = (struct backend_config){ .n_threads = 1, .n_kv_blocks = n_blocks, .block_size = bs,
                                            .max_batch_tokens = max_batch_tokens };
    fb->logits_of = logits_of;
    fb->cache = malloc((size_t)n_blocks * bs * sizeof *fb->cache);
    fb->ctx = malloc((size_t)n_blocks * bs * sizeof *fb->ctx);
    if (!fb->cache || !fb->ctx) {
        fake_free(&fb->base);
        return NULL;
    }
    for (int32_t i = 0; i < n_blocks * bs; i++)
        fb->cache[i] = -1;
    return fb;
}

#endif /* PS_TEST_FAKE_BACKEND_H */
