/* backend.c - the part of the backend API shared by every implementation:
 * plan validation and dispatch through the ops table.  A plan that fails
 * validation never reaches a backend, so no cache slot is written for it. */
#include "backend.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/status.h"
#include "backend_cuda.h"
#include "sampler.h"

int kv_type_parse(const char *name, enum kv_type *out)
{
    if (name && !strcmp(name, "f16"))
        *out = KV_F16;
    else if (name && !strcmp(name, "f32"))
        *out = KV_F32;
    else if (name && !strcmp(name, "q8"))
        *out = KV_Q8;
    else
        return ps_error_set(PS_EINVAL, "kv type must be f16, q8 or f32, got '%s'", name ? name : "(null)");
    return PS_OK;
}

const char *kv_type_name(enum kv_type t)
{
    switch (t) {
    case KV_F16: return "f16";
    case KV_F32: return "f32";
    case KV_Q8:  return "q8";
    }
    return "?";
}

int backend_create_named(const char *device, const struct model *m, const struct backend_config *cfg,
                         backend **out)
{
    *out = NULL;
    if (!device || !strcmp(device, "auto"))
        return cfg->kv_type == KV_F16 && cuda_device_count() > 0 ? backend_cuda_create(m, cfg, out)
                                                                  : backend_cpu_create(m, cfg, out);
    if (!strcmp(device, "cpu"))
        return backend_cpu_create(m, cfg, out);
    if (!strcmp(device, "cuda"))
        return backend_cuda_create(m, cfg, out);
    return ps_error_set(PS_EINVAL, "device must be auto, cpu or cuda, got '%s'", device);
}

int64_t backend_logits_rows(const struct batch_plan *plan)
{
    int64_t rows = 0;
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        const struct batch_seq *s = &plan->seqs[i];
        if (s->logits == LOGITS_LAST)
            rows += 1;
        else if (s->logits == LOGITS_ALL)
            rows += s->n_tokens;
    }
    return rows;
}

/* need_logits: the caller passes a logits buffer (backend_forward). */
static int plan_validate(const backend *be, const struct batch_plan *plan, const float *logits,
                         bool need_logits)
{
    const int32_t n_vocab = be->model->hp.n_vocab;
    const int64_t bs = be->cfg.block_size;
    const int64_t ctx_max = (int64_t)be->cfg.n_kv_blocks * bs;
    int64_t total = 0;

    if (!plan || plan->n_seqs < 1 || !plan->seqs)
        return ps_error_set(PS_EINVAL, "backend: plan has no sequences");
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        const struct batch_seq *s = &plan->seqs[i];
        if (s->n_tokens < 1 || !s->tokens)
            return ps_error_set(PS_EINVAL, "backend: seq %d: n_tokens %d < 1", (int)i,
                                (int)s->n_tokens);
        if (s->logits != LOGITS_NONE && s->logits != LOGITS_LAST && s->logits != LOGITS_ALL)
            return ps_error_set(PS_EINVAL, "backend: seq %d: logits mode %d unknown", (int)i,
                                (int)s->logits);
        for (int32_t t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= n_vocab)
                return ps_error_set(PS_EINVAL, "backend: seq %d: tokens[%d] = %d outside [0, %d)",
                                    (int)i, (int)t, (int)s->tokens[t], (int)n_vocab);
        if (s->pos0 < 0)
            return ps_error_set(PS_EINVAL, "backend: seq %d: pos0 %d < 0", (int)i, (int)s->pos0);
        const int64_t end = (int64_t)s->pos0 + s->n_tokens;
        if (end > ctx_max)
            return ps_error_set(PS_EINVAL,
                                "backend: seq %d: pos0 + n_tokens = %lld exceeds the cache (%d blocks x %d)",
                                (int)i, (long long)end, (int)be->cfg.n_kv_blocks, (int)bs);
        if (s->n_blocks < 0 || !s->block_table || end > (int64_t)s->n_blocks * bs)
            return ps_error_set(PS_EINVAL,
                                "backend: seq %d: pos0 + n_tokens = %lld beyond block_table (n_blocks %d x %d)",
                                (int)i, (long long)end, (int)s->n_blocks, (int)bs);
        const int64_t used = (end + bs - 1) / bs;
        for (int64_t b = 0; b < used; b++)
            if (s->block_table[b] < 0 || s->block_table[b] >= be->cfg.n_kv_blocks)
                return ps_error_set(PS_EINVAL, "backend: seq %d: block_table[%lld] = %d outside [0, %d)",
                                    (int)i, (long long)b, (int)s->block_table[b],
                                    (int)be->cfg.n_kv_blocks);
        total += s->n_tokens;
    }
    if (total > be->cfg.max_batch_tokens)
        return ps_error_set(PS_EINVAL, "backend: plan has %lld tokens, max_batch_tokens is %d",
                            (long long)total, (int)be->cfg.max_batch_tokens);
    if (need_logits && !logits && backend_logits_rows(plan) > 0)
        return ps_error_set(PS_EINVAL, "backend: plan asks for logits but the logits buffer is NULL");
    return PS_OK;
}

int backend_forward(backend *be, const struct batch_plan *plan, float *logits)
{
    int rc = plan_validate(be, plan, logits, true);
    if (rc)
        return rc;
    return be->ops->forward(be, plan, logits);
}

bool backend_can_sample(const backend *be)
{
    return be && be->ops->forward_sample != NULL;
}

static struct sampler_params row_params(const struct backend_sample_params *bp)
{
    struct sampler_params p = sampler_params_default();
    p.temperature = bp->temperature;
    p.top_k = bp->top_k;
    p.top_p = bp->top_p;
    p.min_p = bp->min_p;
    p.seed = bp->seed;
    return p;
}

/* Backends without a sampler: logits to the host, sampler_sample_draw. */
static int forward_sample_host(backend *be, const struct batch_plan *plan,
                               const struct backend_sample_params *params, backend_mask_fn mask_fn,
                               void *mask_ud, int32_t *tokens, int64_t rows)
{
    const int32_t nv = be->model->hp.n_vocab;
    if (rows == 0)
        return be->ops->forward(be, plan, NULL);
    float *logits = malloc((size_t)rows * (size_t)nv * sizeof *logits);
    const uint32_t **masks = calloc((size_t)rows, sizeof *masks);
    int rc = PS_OK;
    if (!logits || !masks) {
        rc = ps_error_set(PS_ENOMEM, "backend: out of memory for %lld logits rows", (long long)rows);
        goto done;
    }
    if ((rc = be->ops->forward(be, plan, logits)))
        goto done;
    if (mask_fn && (rc = mask_fn(mask_ud, masks, rows)))
        goto done;
    for (int64_t r = 0; r < rows; r++) {
        if (masks[r] && sampler_mask_empty(masks[r], nv)) {
            tokens[r] = -1;
            continue;
        }
        if (sampler_logits_check(logits + (size_t)r * nv, nv)) {
            tokens[r] = BACKEND_TOKEN_NONFINITE;
            continue;
        }
        const struct sampler_params p = row_params(&params[r]);
        if ((rc = sampler_sample_draw(&p, params[r].step, nv, logits + (size_t)r * nv, masks[r], &tokens[r])))
            goto done;
    }
done:
    free(masks);
    free(logits);
    return rc;
}

int backend_forward_sample(backend *be, const struct batch_plan *plan,
                           const struct backend_sample_params *params, backend_mask_fn mask_fn,
                           void *mask_ud, int32_t *tokens)
{
    int rc = plan_validate(be, plan, NULL, false);
    if (rc)
        return rc;
    const int64_t rows = backend_logits_rows(plan);
    if (rows > 0 && (!params || !tokens))
        return ps_error_set(PS_EINVAL, "backend: forward_sample needs params and tokens for %lld rows",
                            (long long)rows);
    for (int64_t r = 0; r < rows; r++) {
        const struct sampler_params p = row_params(&params[r]);
        if ((rc = sampler_params_validate(&p))) {
            char why[200]; /* the detail lives in the buffer ps_error_set writes */
            snprintf(why, sizeof why, "%s", ps_error_last());
            return ps_error_set(rc, "backend: sampling row %lld: %s", (long long)r, why);
        }
    }
    if (be->ops->forward_sample)
        return be->ops->forward_sample(be, plan, params, mask_fn, mask_ud, tokens);
    return forward_sample_host(be, plan, params, mask_fn, mask_ud, tokens, rows);
}

int backend_copy_block(backend *be, int32_t src, int32_t dst)
{
    if (src < 0 || src >= be->cfg.n_kv_blocks)
        return ps_error_set(PS_EINVAL, "backend: copy_block src %d outside [0, %d)", (int)src,
                            (int)be->cfg.n_kv_blocks);
    if (dst < 0 || dst >= be->cfg.n_kv_blocks)
        return ps_error_set(PS_EINVAL, "backend: copy_block dst %d outside [0, %d)", (int)dst,
                            (int)be->cfg.n_kv_blocks);
    if (src == dst)
        return PS_OK;
    return be->ops->copy_block(be, src, dst);
}

const char *backend_name(const backend *be)
{
    return be ? be->ops->name : "none";
}

void backend_free(backend *be)
{
    if (be)
        be->ops->free(be);
}
