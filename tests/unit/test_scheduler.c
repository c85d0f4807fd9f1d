/* test_scheduler - the scheduler against a fake backend whose "model" really
 * depends on the KV cache: forward writes each new token id into its cache
 * slot (through the block table) and the next token is a hash of every
 * token read back from positions 0..p.  A wrong block table, a stale shared
 * block, a lost preempted state or a mixed-up batch row changes the output,
 * so comparing with a direct computation checks the whole bookkeeping.
 *
 * Covered: one request, chunked prefill, batching invariance (many requests
 * at once == each alone), preemption under a tiny cache, prefix sharing
 * (hit tokens, prefill savings, tenant isolation), cancel, priorities and priority preemption, EOG,
 * stop strings across token boundaries, UTF-8 hold-back, max_tokens,
 * context limit, bad requests, backend failure, logprobs (with penalties),
 * prompt groups (the n choices of a request: the prompt computed once).
 *
 * The whole suite runs twice: with a backend that returns logits (the host
 * path: sampler_sample in the scheduler) and with one that samples itself
 * (ops->forward_sample, the device path the CUDA backend takes; here the
 * fake samples with sampler_sample_draw, asking for masks after its
 * forward).  Same expectations on both.  Also: backend_forward_sample's
 * host fallback and argument checks, which path each step took, and
 * penalized requests forcing the host path in a device-sampling run. */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "fake_backend.h"
#include "test_util.h"

#define N_VOCAB 64
#define EOG_ID  63

/* ---- fake backend (fake_backend.h): one-hot logits ------------------------ */

/* Next token after ctx[0..n): never the EOG id unless g_allow_eog. */
static int32_t ref_next(const int32_t *ctx, int32_t n, bool allow_eog)
{
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < n; i++)
        h = fake_mix(h, (uint32_t)ctx[i] * 31u + (uint32_t)i);
    int32_t t = (int32_t)(h % (allow_eog ? N_VOCAB : N_VOCAB - 1));
    return t;
}

static bool g_allow_eog;

static void one_hot_logits(const int32_t *ctx, int32_t n, float *out, int32_t n_vocab)
{
    for (int32_t v = 0; v < n_vocab; v++)
        out[v] = 0.0f;
    out[ref_next(ctx, n, g_allow_eog)] = 10.0f;
}

/* ---- fake vocabulary: token id -> text ---------------------------------------- */

static const char *fake_piece(void *ud, int32_t id, size_t *len)
{
    static char text[64][3];
    (void)ud;
    if (id == EOG_ID) {
        *len = 0;
        return "";
    }
    if (id == 60) { *len = 1; return "\xC3"; } /* first byte of a 2-byte character */
    if (id == 61) { *len = 1; return "\xA9"; } /* its continuation byte */
    if (id == 62) { *len = 3; return "END"; }
    text[id][0] = (char)('a' + id % 26);
    text[id][1] = id >= 26 ? (char)('A' + id % 26) : '\0';
    *len = strlen(text[id]);
    return text[id];
}

static bool fake_is_eog(void *ud, int32_t id)
{
    (void)ud;
    return id == EOG_ID;
}

/* ---- event collection --------------------------------------------------------- */

#define MAX_REQ 64

struct result {
    int32_t  tokens[512];
    int32_t  n_tokens;
    float    logprobs[512];   /* TOKEN events' logprob (has_logprob)      */
    int32_t  n_logprobs;      /* TOKEN events with has_logprob            */
    int32_t  n_top[512];      /* TOKEN events' alternatives: how many,    */
    int32_t  top_ids[512][4]; /* the first 4 of them                      */
    float    top_lps[512][4];
    int32_t  bad_pieces;      /* TOKEN events whose piece is not the token's */
    char     text[4096];
    size_t   text_len;
    int      done;
    enum finish_reason finish;
    int32_t  n_prompt, n_cached, n_generated, n_preempted;
    int      done_order;
    char     error[160];
};

static struct result g_res[MAX_REQ];
static int g_done_counter;
static int g_refuse_tokens;   /* refuse TOKEN events: every k-th (k > 0), none (0) */
static int g_token_events;

static int on_event(void *ud, const struct sched_event *ev)
{
    (void)ud;
    struct result *r = &g_res[ev->id];
    CHECK(!r->done);
    if (ev->kind == SCHED_EV_TOKEN && g_refuse_tokens && ++g_token_events % g_refuse_tokens == 0)
        return -1; /* as the engine does when it cannot allocate the event */
    memcpy(r->text + r->text_len, ev->text, ev->text_len);
    r->text_len += ev->text_len;
    if (ev->kind == SCHED_EV_TOKEN) {
        size_t plen = 0;
        const char *piece = fake_is_eog(NULL, ev->token) ? "" : fake_piece(NULL, ev->token, &plen);
        if (ev->piece_len != plen || memcmp(ev->piece, piece, plen))
            r->bad_pieces++;
        if (ev->has_logprob) {
            r->n_top[r->n_logprobs] = ev->n_top;
            for (int32_t k = 0; k < ev->n_top && k < 4; k++) {
                r->top_ids[r->n_logprobs][k] = ev->top_ids[k];
                r->top_lps[r->n_logprobs][k] = ev->top_lps[k];
            }
            r->logprobs[r->n_logprobs++] = ev->logprob;
        } else {
            CHECK(ev->n_top == 0);
        }
        r->tokens[r->n_tokens++] = ev->token;
        return 0;
    }
    r->done = 1;
    r->finish = ev->finish;
    r->n_prompt = ev->n_prompt;
    r->n_cached = ev->n_cached;
    r->n_generated = ev->n_generated;
    r->n_preempted = ev->n_preempted;
    r->done_order = g_done_counter++;
    snprintf(r->error, sizeof r->error, "%s", ev->error ? ev->error : "");
    return 0;
}

static void reset_results(void)
{
    memset(g_res, 0, sizeof g_res);
    g_done_counter = 0;
}

/* Expected greedy continuation of prompt, n tokens (stops after EOG). */
static int32_t reference(const int32_t *prompt, int32_t n_prompt, int32_t n, int32_t *out)
{
    int32_t ctx[4096];
    memcpy(ctx, prompt, (size_t)n_prompt * sizeof *ctx);
    int32_t len = n_prompt, k = 0;
    while (k < n) {
        int32_t t = ref_next(ctx, len, g_allow_eog);
        out[k++] = t;
        ctx[len++] = t;
        if (t == EOG_ID)
            break;
    }
    return k;
}

/* The text of tokens toks[n] (fake_piece; EOG adds nothing), NUL-terminated
 * in full; off[i] = where token i starts.  Returns its length. */
static size_t reference_text(const int32_t *toks, int32_t n, char *full, size_t *off)
{
    size_t fl = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *pc = fake_piece(NULL, toks[i], &len);
        off[i] = fl;
        memcpy(full + fl, pc, len);
        fl += len;
    }
    full[fl] = '\0';
    return fl;
}

static void make_prompt(int32_t *p, int32_t n, uint32_t seed)
{
    for (int32_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (int32_t)((seed >> 16) % 60);
    }
}

static struct sched_request req_of(uint64_t id, const int32_t *prompt, int32_t n, int32_t max_tokens)
{
    struct sched_request r = { .id = id, .prompt = prompt, .n_prompt = n, .max_tokens = max_tokens,
                               .sampling = sampler_params_default() };
    return r;
}

static int run_to_end(sched *s, int max_steps)
{
    int steps = 0;
    while (sched_has_work(s) && steps < max_steps) {
        int32_t n;
        if (sched_step(s, &n) != PS_OK)
            return -1;
        steps++;
    }
    return sched_has_work(s) ? -1 : steps;
}

static void check_no_leak(sched *s)
{
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK(st.n_running == 0 && st.n_waiting == 0);
    CHECK_MSG(st.kv_free + st.kv_idle == st.kv_total, "free %d idle %d total %d", st.kv_free,
              st.kv_idle, st.kv_total);
}

static sched *make_sched(struct fake_backend *fb, int32_t max_seqs, int32_t budget, int32_t n_ctx,
                         bool pcache)
{
    struct sched_config cfg = { .max_seqs = max_seqs, .max_batch_tokens = budget, .n_ctx = n_ctx,
                                .prefix_cache = pcache };
    struct sched_vocab vocab = { NULL, fake_piece, fake_is_eog };
    sched *s = NULL;
    CHECK(sched_create(&cfg, &fb->base, &vocab, on_event, NULL, &s) == PS_OK);
    return s;
}

/* ---- tests -------------------------------------------------------------------- */

static void test_text_scan(void)
{
    const char *stops[] = { "STOP", "xy" };
    size_t at, safe;
    CHECK(!sched_text_scan("hello", 5, stops, 2, &at, &safe) && safe == 5);
    CHECK(!sched_text_scan("helloST", 7, stops, 2, &at, &safe) && safe == 5);
    CHECK(!sched_text_scan("hellox", 6, stops, 2, &at, &safe) && safe == 5);
    CHECK(sched_text_scan("heSTOPllo", 9, stops, 2, &at, &safe) && at == 2);
    CHECK(sched_text_scan("abxySTOP", 8, stops, 2, &at, &safe) && at == 2); /* earliest wins */
    CHECK(!sched_text_scan("caf\xC3", 4, stops, 0, &at, &safe) && safe == 3);  /* UTF-8 hold */
    CHECK(!sched_text_scan("caf\xC3\xA9", 5, stops, 0, &at, &safe) && safe == 5);
    CHECK(!sched_text_scan("\xE2\x82", 2, stops, 0, &at, &safe) && safe == 0);
    CHECK(!sched_text_scan("a\xF0\x9F\x98", 4, stops, 0, &at, &safe) && safe == 1);
    CHECK(!sched_text_scan("\x80\x80", 2, stops, 0, &at, &safe) && safe == 2); /* invalid: pass */
}

static void test_single_and_chunked(void)
{
    for (int budget = 3; budget <= 64; budget += 61) {
        struct fake_backend *fb = fake_create(64, 4, 64, one_hot_logits);
        sched *s = make_sched(fb, 8, budget, 256, true);
        reset_results();
        int32_t p[23], want[40];
        make_prompt(p, 23, 7);
        struct sched_request r = req_of(1, p, 23, 30);
        CHECK(sched_submit(s, &r) == PS_OK);
        CHECK(run_to_end(s, 1000) > 0);
        int32_t nw = reference(p, 23, 30, want);
        CHECK(g_res[1].done && g_res[1].finish == FINISH_LENGTH);
        CHECK(g_res[1].n_tokens == nw && !memcmp(g_res[1].tokens, want, (size_t)nw * 4));
        CHECK(g_res[1].n_prompt == 23 && g_res[1].n_generated == 30 && g_res[1].n_cached == 0);
        /* chunked prefill: with budget 3, 23 prompt tokens take 8 steps */
        if (budget == 3)
            CHECK(fb->forwards == 8 + 29);
        check_no_leak(s);
        sched_free(s);
        backend_free(&fb->base);
    }
}

static void test_batch_invariance_and_preemption(int32_t n_blocks, int32_t budget, bool expect_preempt)
{
    struct fake_backend *fb = fake_create(n_blocks, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 32, budget, 512, true);
    reset_results();
    enum { N = 24 };
    static int32_t prompts[N][40];
    int32_t lens[N], maxt[N];
    for (int i = 0; i < N; i++) {
        lens[i] = 5 + (i * 7) % 30;
        maxt[i] = 8 + (i * 5) % 20;
        make_prompt(prompts[i], lens[i], (uint32_t)(100 + i % 9)); /* some share prefixes */
        struct sched_request r = req_of((uint64_t)(i + 1), prompts[i], lens[i], maxt[i]);
        r.priority = i % 3;
        CHECK(sched_submit(s, &r) == PS_OK);
    }
    CHECK(run_to_end(s, 20000) > 0);
    int preempted = 0;
    for (int i = 0; i < N; i++) {
        struct result *r = &g_res[i + 1];
        int32_t want[64];
        int32_t nw = reference(prompts[i], lens[i], maxt[i], want);
        CHECK_MSG(r->done && r->n_tokens == nw && !memcmp(r->tokens, want, (size_t)nw * 4),
                  "request %d: %d tokens, want %d (blocks %d)", i, r->n_tokens, nw, n_blocks);
        preempted += r->n_preempted;
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK(st.preemptions == (uint64_t)preempted);
    if (expect_preempt)
        CHECK_MSG(preempted > 0, "expected preemptions with %d blocks", n_blocks);
    else
        CHECK(preempted == 0);
    CHECK(fb->max_seqs_seen > 1);
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

static void test_prefix_sharing(void)
{
    struct fake_backend *fb = fake_create(128, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 8, 64, 512, true);
    reset_results();
    int32_t a[50], b[50], want[16];
    make_prompt(a, 50, 42);
    memcpy(b, a, 41 * sizeof *a);
    make_prompt(b + 41, 9, 43);
    struct sched_request r = req_of(1, a, 50, 10);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 100) > 0);
    struct sched_stats st0, st1;
    sched_get_stats(s, &st0);
    CHECK(st0.kv_cached >= 12); /* 50 prompt + 9 generated computed = 14 full blocks */

    r = req_of(2, b, 50, 10);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 100) > 0);
    sched_get_stats(s, &st1);
    CHECK(g_res[2].n_cached == 40); /* 10 whole blocks of the 41 shared tokens */
    CHECK(st1.prefix_hit_tokens - st0.prefix_hit_tokens == 40);
    CHECK(st1.prefill_tokens - st0.prefill_tokens == 10);
    int32_t nw = reference(b, 50, 10, want);
    CHECK(g_res[2].n_tokens == nw && !memcmp(g_res[2].tokens, want, (size_t)nw * 4));

    /* identical prompt: everything but the last token is shared */
    r = req_of(3, a, 48, 5);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 100) > 0);
    CHECK(g_res[3].n_cached == 44);
    nw = reference(a, 48, 5, want);
    CHECK(g_res[3].n_tokens == nw && !memcmp(g_res[3].tokens, want, (size_t)nw * 4));

    /* another tenant shares nothing */
    r = req_of(4, a, 50, 3);
    r.tenant = 7;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 100) > 0);
    CHECK(g_res[4].n_cached == 0);
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);

    /* disabled cache */
    fb = fake_create(128, 4, 64, one_hot_logits);
    s = make_sched(fb, 8, 64, 512, false);
    reset_results();
    r = req_of(1, a, 50, 3);
    CHECK(sched_submit(s, &r) == PS_OK);
    run_to_end(s, 100);
    r = req_of(2, a, 50, 3);
    CHECK(sched_submit(s, &r) == PS_OK);
    run_to_end(s, 100);
    CHECK(g_res[2].n_cached == 0);
    sched_get_stats(s, &st1);
    CHECK(st1.kv_free == st1.kv_total && st1.kv_cached == 0);
    sched_free(s);
    backend_free(&fb->base);
}

static void test_cancel_priority_errors(void)
{
    struct fake_backend *fb = fake_create(32, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 1, 64, 64, true);
    reset_results();
    int32_t p[10];
    make_prompt(p, 10, 5);

    /* priorities with one slot: the high one runs first though submitted last */
    struct sched_request r = req_of(1, p, 10, 4);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(2, p, 10, 4);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(3, p, 10, 4);
    r.priority = 5;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 100) > 0);
    CHECK(g_res[3].done_order == 0 && g_res[1].done_order == 1 && g_res[2].done_order == 2);

    /* cancel a running and a waiting request: DONE(cancelled), blocks back */
    reset_results();
    r = req_of(4, p, 10, 50);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(5, p, 10, 50);
    CHECK(sched_submit(s, &r) == PS_OK);
    int32_t n;
    for (int i = 0; i < 3; i++)
        CHECK(sched_step(s, &n) == PS_OK);
    CHECK(g_res[4].n_tokens == 3);
    CHECK(sched_cancel(s, 4) == PS_OK);
    CHECK(g_res[4].done && g_res[4].finish == FINISH_CANCELLED);
    CHECK(sched_cancel(s, 5) == PS_OK);
    CHECK(g_res[5].done && g_res[5].finish == FINISH_CANCELLED && g_res[5].n_tokens == 0);
    CHECK(sched_cancel(s, 4) == PS_ENOTFOUND);
    CHECK(!sched_has_work(s));
    check_no_leak(s);

    /* bad requests: no event, nothing queued */
    reset_results();
    int32_t big[64];
    make_prompt(big, 64, 1);
    r = req_of(6, big, 64, 4);
    CHECK(sched_submit(s, &r) == PS_EINVAL); /* prompt not shorter than n_ctx 64 */
    r = req_of(6, p, 0, 4);
    CHECK(sched_submit(s, &r) == PS_EINVAL);
    r = req_of(6, p, 10, 0);
    CHECK(sched_submit(s, &r) == PS_EINVAL);
    int32_t bad[2] = { 1, N_VOCAB };
    r = req_of(6, bad, 2, 4);
    CHECK(sched_submit(s, &r) == PS_EINVAL);
    r = req_of(6, p, 10, 4);
    r.sampling.temperature = -1.0f;
    CHECK(sched_submit(s, &r) == PS_EINVAL);
    CHECK(!g_res[6].done && !sched_has_work(s));

    /* context limit: prompt 60 of n_ctx 64 -> 4 tokens then length */
    r = req_of(7, big, 60, 100);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 100) > 0);
    CHECK(g_res[7].finish == FINISH_LENGTH && g_res[7].n_generated == 4);

    /* backend failure: the batch's requests finish with an error */
    r = req_of(8, p, 10, 5);
    CHECK(sched_submit(s, &r) == PS_OK);
    fb->fail_next = 1;
    CHECK(sched_step(s, &n) == PS_EINTERNAL);
    CHECK(g_res[8].done && g_res[8].finish == FINISH_ERROR);
    check_no_leak(s);

    /* sched_cancel_all: running and waiting requests end cancelled */
    reset_results();
    r = req_of(10, p, 10, 50);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(11, p, 10, 50);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(sched_step(s, &n) == PS_OK);
    sched_cancel_all(s);
    CHECK(g_res[10].done && g_res[10].finish == FINISH_CANCELLED && g_res[10].n_tokens == 1);
    CHECK(g_res[11].done && g_res[11].finish == FINISH_CANCELLED);
    CHECK(!sched_has_work(s));
    check_no_leak(s);

    /* sched_free cancels what is left */
    r = req_of(9, p, 10, 5);
    CHECK(sched_submit(s, &r) == PS_OK);
    sched_free(s);
    CHECK(g_res[9].done && g_res[9].finish == FINISH_CANCELLED);
    backend_free(&fb->base);
}

/* A model whose logits hold a NaN, +inf or -inf (by context length) once
 * the prompt starts with POISON_ID: such a request ends alone with
 * FINISH_ERROR "the model produced non-finite logits ..." and no token,
 * whatever its sampling (greedy, temperature with truncations, penalties,
 * logprobs); the requests batched with it generate their reference tokens.
 * Before, the NaN row was sampled (NaN read as -inf) into garbage tokens. */
#define POISON_ID 61
static void poison_logits(const int32_t *ctx, int32_t n, float *out, int32_t n_vocab)
{
    one_hot_logits(ctx, n, out, n_vocab);
    if (ctx[0] == POISON_ID)
        out[(n * 7) % n_vocab] = n % 3 == 0 ? NAN : n % 3 == 1 ? INFINITY : -INFINITY;
}

static void test_nonfinite_logits(void)
{
    struct fake_backend *fb = fake_create(128, 4, 64, poison_logits);
    sched *s = make_sched(fb, 8, 64, 64, false);
    reset_results();
    int32_t p[4][14];
    for (int k = 0; k < 4; k++)
        make_prompt(p[k], 14, 20u + (uint32_t)k);
    for (uint64_t id = 1; id <= 8; id++) {
        const int k = (int)(id - 1) / 2;
        const bool poisoned = id % 2 == 0;
        int32_t *pr = poisoned ? p[k] : p[k] + 1; /* healthy: never starts with POISON_ID */
        if (poisoned)
            pr[0] = POISON_ID;
        struct sched_request r = req_of(id, pr, 11 + k % 3, 6);
        if (k >= 1) {
            r.sampling.temperature = 0.8f;
            r.sampling.top_k = 5;
            r.sampling.top_p = 0.9f;
            r.sampling.min_p = 0.05f;
            r.sampling.seed = id;
        }
        if (k == 2)
            r.sampling.repeat_penalty = 1.2f; /* host-only */
        if (k == 3) {
            r.logprobs = true;                 /* host-only */
            r.top_logprobs = 2;
        }
        CHECK(sched_submit(s, &r) == PS_OK);
    }
    CHECK(run_to_end(s, 100) > 0);
    for (uint64_t id = 1; id <= 8; id++) {
        const struct result *g = &g_res[id];
        if (id % 2 == 0) {
            CHECK_MSG(g->done && g->finish == FINISH_ERROR && g->n_tokens == 0 &&
                          strstr(g->error, SAMPLER_NONFINITE_MSG),
                      "request %d: finish %d, %d tokens, '%s'", (int)id, (int)g->finish, (int)g->n_tokens,
                      g->error);
        } else {
            CHECK_MSG(g->done && g->finish == FINISH_LENGTH && g->n_tokens == 6, "request %d: finish %d, %d tokens",
                      (int)id, (int)g->finish, (int)g->n_tokens);
            if (id == 1) {
                int32_t want[6];
                reference(p[0] + 1, 11, 6, want);
                CHECK(memcmp(g->tokens, want, sizeof want) == 0);
            }
        }
    }
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

/* queued_since: within a priority, a request queues as if it had arrived
 * then (the tasks API passes a task's creation time, so its later
 * decisions go before decisions of tasks created after it).  One slot:
 * request 1 runs, 2 and 3 (plain) wait; 4, submitted last but queued
 * since before 2 and 3, runs right after 1 without preempting it (equal
 * priority); 5, of a higher priority, outranks every arrival time and
 * preempts 1, which resumes ahead of 4. */
static void test_queued_since(void)
{
    struct fake_backend *fb = fake_create(64, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 1, 64, 64, true);
    reset_results();
    int32_t p[10];
    make_prompt(p, 10, 7);
    struct sched_request r = req_of(1, p, 10, 6);
    CHECK(sched_submit(s, &r) == PS_OK);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const int64_t after1 = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    int32_t n;
    CHECK(sched_step(s, &n) == PS_OK);   /* 1 runs */
    r = req_of(2, p, 10, 4);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(3, p, 10, 4);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(4, p, 10, 4);
    r.queued_since = after1;             /* after 1, before 2 and 3 */
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(sched_step(s, &n) == PS_OK);
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK_MSG(st.preemptions == 0 && st.priority_preemptions == 0 && g_res[4].n_tokens == 0,
              "preemptions %llu / %llu, request 4 has %d tokens", (unsigned long long)st.preemptions,
              (unsigned long long)st.priority_preemptions, g_res[4].n_tokens);
    r = req_of(5, p, 10, 4);
    r.priority = 1;                      /* a priority outranks any arrival time */
    r.queued_since = after1 + 1000000000;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 200) > 0);
    CHECK_MSG(g_res[5].done_order == 0 && g_res[1].done_order == 1 && g_res[4].done_order == 2 &&
              g_res[2].done_order == 3 && g_res[3].done_order == 4,
              "done order: 1:%d 2:%d 3:%d 4:%d 5:%d", g_res[1].done_order, g_res[2].done_order,
              g_res[3].done_order, g_res[4].done_order, g_res[5].done_order);
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

/* Find a prompt whose greedy continuation satisfies pred, for text tests. */
static void test_text_eog_stop(void)
{
    struct fake_backend *fb = fake_create(64, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 4, 64, 256, true);

    /* EOG: find a prompt whose continuation hits EOG within 40 tokens */
    g_allow_eog = true;
    int32_t p[8], want[64];
    uint32_t seed = 0;
    int32_t nw = 0;
    for (seed = 1; seed < 5000; seed++) {
        make_prompt(p, 8, seed);
        nw = reference(p, 8, 40, want);
        if (want[nw - 1] == EOG_ID && nw > 3)
            break;
    }
    CHECK(want[nw - 1] == EOG_ID);
    reset_results();
    struct sched_request r = req_of(1, p, 8, 40);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 200) > 0);
    CHECK(g_res[1].finish == FINISH_STOP && g_res[1].n_tokens == nw);
    /* ignore_eos keeps going */
    r = req_of(2, p, 8, nw + 3);
    r.ignore_eos = true;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 200) > 0);
    CHECK(g_res[2].finish == FINISH_LENGTH && g_res[2].n_generated == nw + 3);
    g_allow_eog = false;

    /* stop string spanning token boundaries: take a 3-char window of the
     * reference text that straddles two tokens */
    make_prompt(p, 8, 77);
    nw = reference(p, 8, 30, want);
    char full[256];
    size_t off[64];
    const size_t fl = reference_text(want, nw, full, off);
    size_t start = off[10] - 1; /* last char of token 9 + first two of token 10.. */
    char stop[4] = { full[start], full[start + 1], full[start + 2], 0 };
    const char *stops[] = { "never-there", stop };
    size_t first = strstr(full, stop) - full;
    reset_results();
    r = req_of(3, p, 8, 30);
    r.stop = stops;
    r.n_stop = 2;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 200) > 0);
    CHECK(g_res[3].finish == FINISH_STOP);
    CHECK_MSG(g_res[3].text_len == first && !memcmp(g_res[3].text, full, first),
              "text '%.*s' want '%.*s' (stop '%s')", (int)g_res[3].text_len, g_res[3].text,
              (int)first, full, stop);

    /* without stops, DONE flushes the held-back rest: whole text arrives */
    r = req_of(4, p, 8, 30);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 200) > 0);
    CHECK(g_res[4].text_len == fl && !memcmp(g_res[4].text, full, fl));
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

/* TOKEN events the sink refuses (out of memory in the engine) lose no
 * text: it stays held back and arrives with a later event or DONE, stop
 * strings included; a logprobs request ends FINISH_ERROR instead. */
static void test_refused_token_events(void)
{
    struct fake_backend *fb = fake_create(64, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 4, 64, 256, false);
    int32_t p[8], want[64];
    make_prompt(p, 8, 77);
    const int32_t nw = reference(p, 8, 30, want);
    char full[256];
    size_t off[64];
    const size_t fl = reference_text(want, nw, full, off);
    char stop[4] = { full[off[12] - 1], full[off[12]], full[off[12] + 1], 0 };
    const char *stops[] = { stop };
    const size_t first = (size_t)(strstr(full, stop) - full);
    static const int refuse[] = { 1, 2, 3 }; /* all, every 2nd, every 3rd */
    for (size_t k = 0; k < sizeof refuse / sizeof refuse[0]; k++) {
        for (int with_stop = 0; with_stop < 2; with_stop++) {
            reset_results();
            g_refuse_tokens = refuse[k];
            g_token_events = 0;
            struct sched_request r = req_of(1, p, 8, 30);
            if (with_stop) {
                r.stop = stops;
                r.n_stop = 1;
            }
            CHECK(sched_submit(s, &r) == PS_OK);
            CHECK(run_to_end(s, 200) > 0);
            const size_t n = with_stop ? first : fl;
            CHECK_MSG(g_res[1].done && g_res[1].finish == (with_stop ? FINISH_STOP : FINISH_LENGTH) &&
                          g_res[1].text_len == n && !memcmp(g_res[1].text, full, n),
                      "refusing every %d token events (stop %d): text '%.*s' want '%.*s'", refuse[k], with_stop,
                      (int)g_res[1].text_len, g_res[1].text, (int)n, full);
            CHECK(g_res[1].n_tokens < nw);
        }
        reset_results();
        g_token_events = 0;
        struct sched_request r = req_of(2, p, 8, 30);
        r.logprobs = true;
        CHECK(sched_submit(s, &r) == PS_OK);
        CHECK(run_to_end(s, 200) > 0);
        CHECK_MSG(g_res[2].done && g_res[2].finish == FINISH_ERROR && strstr(g_res[2].error, "out of memory"),
                  "logprobs request with refused events: finish %d error '%s'", (int)g_res[2].finish,
                  g_res[2].error);
    }
    g_refuse_tokens = 0;
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

/* Priority preemption: a strictly higher-priority request that cannot be
 * admitted (no batch slot, or no KV blocks) preempts the lowest-priority,
 * latest-arrived running sequence at once; the victim resumes later
 * (recompute) with exactly its solo output.  An equal priority never
 * preempts. */
static void test_priority_preemption(void)
{
    int32_t lo1[12], lo2[12], hi[9], want[64];
    make_prompt(lo1, 12, 301);
    make_prompt(lo2, 12, 302);
    make_prompt(hi, 9, 303);
    for (int kv_case = 0; kv_case < 2; kv_case++) {
        /* slots: 2 sequences, plenty of blocks; kv: 8 slots, 12 blocks of 4
         * (48 tokens) for two 12 + 30 token sequences */
        struct fake_backend *fb = fake_create(kv_case ? 12 : 64, 4, 64, one_hot_logits);
        sched *s = make_sched(fb, kv_case ? 8 : 2, 64, 256, true);
        reset_results();
        struct sched_request r = req_of(1, lo1, 12, 30);
        CHECK(sched_submit(s, &r) == PS_OK);
        r = req_of(2, lo2, 12, 30);
        CHECK(sched_submit(s, &r) == PS_OK);
        int32_t n;
        for (int i = 0; i < (kv_case ? 6 : 4); i++)
            CHECK(sched_step(s, &n) == PS_OK);
        CHECK(g_res[1].n_tokens > 0 && g_res[2].n_tokens > 0);
        /* an equal-priority arrival waits: nobody is preempted for it */
        r = req_of(3, hi, 9, 4);
        CHECK(sched_submit(s, &r) == PS_OK);
        CHECK(sched_step(s, &n) == PS_OK);
        struct sched_stats st;
        sched_get_stats(s, &st);
        CHECK_MSG(st.preemptions == 0 && st.n_waiting == 1,
                  "case %d: preemptions %llu waiting %d", kv_case, (unsigned long long)st.preemptions,
                  (int)st.n_waiting);
        CHECK(sched_cancel(s, 3) == PS_OK);
        /* a higher one runs in the very next step, preempting request 2 */
        int32_t before1 = g_res[1].n_tokens;
        r = req_of(4, hi, 9, 6);
        r.priority = 5;
        CHECK(sched_submit(s, &r) == PS_OK);
        CHECK(sched_step(s, &n) == PS_OK);
        sched_get_stats(s, &st);
        CHECK_MSG(st.priority_preemptions >= 1, "case %d: no priority preemption", kv_case);
        CHECK(g_res[4].n_tokens == 1); /* prefilled and sampled in that step */
        CHECK(g_res[1].n_tokens == before1 + 1); /* ahead of the victim: kept decoding */
        CHECK(run_to_end(s, 2000) > 0);
        CHECK(g_res[4].done && g_res[4].done_order == 1); /* 3 (cancelled) was first */
        CHECK(g_res[2].n_preempted >= 1);
        int32_t nw = reference(lo1, 12, 30, want);
        CHECK(g_res[1].done && g_res[1].n_tokens == nw && !memcmp(g_res[1].tokens, want, (size_t)nw * 4));
        nw = reference(lo2, 12, 30, want);
        CHECK(g_res[2].done && g_res[2].finish == FINISH_LENGTH);
        CHECK_MSG(g_res[2].n_tokens == nw && !memcmp(g_res[2].tokens, want, (size_t)nw * 4),
                  "case %d: preempted request's output differs", kv_case);
        nw = reference(hi, 9, 6, want);
        CHECK(g_res[4].n_tokens == nw && !memcmp(g_res[4].tokens, want, (size_t)nw * 4));
        check_no_leak(s);
        sched_free(s);
        backend_free(&fb->base);
    }

    /* No loops: many priorities over a tiny cache and few slots; every
     * request completes with its solo output in a bounded number of steps,
     * higher priorities (mostly) finishing first. */
    struct fake_backend *fb = fake_create(14, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 3, 16, 256, true);
    reset_results();
    enum { N = 12 };
    static int32_t ps[N][16];
    for (int i = 0; i < N; i++) {
        make_prompt(ps[i], 5 + i % 7, (uint32_t)(400 + i));
        struct sched_request r = req_of((uint64_t)(i + 1), ps[i], 5 + i % 7, 10 + i % 5);
        r.priority = i % 4;
        CHECK(sched_submit(s, &r) == PS_OK);
        int32_t n;
        CHECK(sched_step(s, &n) == PS_OK); /* arrivals spread over running steps */
    }
    CHECK(run_to_end(s, 5000) > 0);
    for (int i = 0; i < N; i++) {
        int32_t want2[64];
        int32_t nw = reference(ps[i], 5 + i % 7, 10 + i % 5, want2);
        CHECK_MSG(g_res[i + 1].done && g_res[i + 1].n_tokens == nw &&
                  !memcmp(g_res[i + 1].tokens, want2, (size_t)nw * 4), "request %d", i);
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK(st.priority_preemptions > 0);
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

static void test_config_errors(void)
{
    struct fake_backend *fb = fake_create(8, 4, 16, one_hot_logits);
    struct sched_config cfg = { .max_seqs = 4, .max_batch_tokens = 32, .n_ctx = 64 };
    sched *s = NULL;
    CHECK(sched_create(&cfg, &fb->base, NULL, NULL, NULL, &s) == PS_EINVAL); /* budget > backend */
    cfg.max_batch_tokens = 16;
    cfg.max_seqs = 0;
    CHECK(sched_create(&cfg, &fb->base, NULL, NULL, NULL, &s) == PS_EINVAL);
    cfg.max_seqs = 4;
    CHECK(sched_create(&cfg, &fb->base, NULL, NULL, NULL, &s) == PS_OK);
    CHECK(sched_n_ctx(s) == 32); /* capped at the cache: 8 blocks x 4 */
    sched_free(s);
    backend_free(&fb->base);
    CHECK(!strcmp(finish_reason_str(FINISH_LENGTH), "length"));
}

/* ---- sampling paths ------------------------------------------------------------ */

/* A toy token constraint: only even ids; the mask of a matcher whose
 * poison_at equals its accepted-token count allows nothing (a broken
 * constraint: the scheduler must finish that sequence alone). */
struct even_matcher {
    int32_t n, poison_at;
};

static void even_retain(void *ctx) { (void)ctx; }
static void even_release(void *ctx) { (void)ctx; }

static int even_matcher_new(void *ctx, void **out)
{
    struct even_matcher *m = calloc(1, sizeof *m);
    if (!m)
        return ps_error_set(PS_ENOMEM, "even: out of memory");
    m->poison_at = *(const int32_t *)ctx;
    *out = m;
    return PS_OK;
}

static void even_matcher_free(void *m) { free(m); }

static int even_fill_mask(void *mp, uint32_t *mask, size_t n_words)
{
    const struct even_matcher *m = mp;
    for (size_t w = 0; w < n_words; w++)
        mask[w] = m->n == m->poison_at ? 0u : 0x55555555u;
    return PS_OK;
}

static int even_accept(void *mp, int32_t token)
{
    struct even_matcher *m = mp;
    if (token < 0 || token % 2)
        return ps_error_set(PS_EINVAL, "even: token %d is not allowed", (int)token);
    m->n++;
    return PS_OK;
}

static bool even_is_done(const void *m) { (void)m; return false; }

static const struct token_constraint_ops even_ops = {
    .retain = even_retain, .release = even_release, .matcher_new = even_matcher_new,
    .matcher_free = even_matcher_free, .fill_mask = even_fill_mask, .accept = even_accept,
    .is_done = even_is_done,
};

/* Which path each step takes; masks honoured on it; an all-zero mask row
 * finishes only its sequence; penalties keep a step on the host. */
static void test_sampling_paths(void)
{
    int32_t p[12], want[16];
    make_prompt(p, 12, 77);
    for (int variant = 0; variant < 3; variant++) {
        /* 0: auto; 1: device_sample -1; 2: auto with a penalized request */
        struct fake_backend *fb = fake_create(64, 4, 64, one_hot_logits);
        struct sched_config cfg = { .max_seqs = 8, .max_batch_tokens = 64, .n_ctx = 128, .prefix_cache = true,
                                    .device_sample = variant == 1 ? -1 : 0 };
        struct sched_vocab vocab = { NULL, fake_piece, fake_is_eog };
        sched *s = NULL;
        CHECK(sched_create(&cfg, &fb->base, &vocab, on_event, NULL, &s) == PS_OK);
        reset_results();
        static const int32_t poison_at = 2, never = -1;
        struct sched_request r = req_of(1, p, 12, 6); /* free */
        CHECK(sched_submit(s, &r) == PS_OK);
        r = req_of(2, p, 12, 6); /* even ids only */
        r.constraint = (struct token_constraint){ &even_ops, (void *)&never };
        CHECK(sched_submit(s, &r) == PS_OK);
        r = req_of(3, p, 12, 6); /* its third mask allows nothing */
        r.constraint = (struct token_constraint){ &even_ops, (void *)&poison_at };
        CHECK(sched_submit(s, &r) == PS_OK);
        if (variant == 2) {
            r = req_of(4, p, 12, 3);
            r.sampling.repeat_penalty = 1.5f; /* does not move the fake's one-hot argmax */
            CHECK(sched_submit(s, &r) == PS_OK);
        }
        CHECK(run_to_end(s, 100) > 0);
        struct sched_stats st;
        sched_get_stats(s, &st);

        int32_t nw = reference(p, 12, 6, want);
        CHECK(g_res[1].finish == FINISH_LENGTH && g_res[1].n_tokens == nw &&
              !memcmp(g_res[1].tokens, want, (size_t)nw * 4));
        CHECK(g_res[2].finish == FINISH_LENGTH && g_res[2].n_tokens == 6);
        for (int i = 0; i < g_res[2].n_tokens; i++)
            CHECK_MSG(g_res[2].tokens[i] % 2 == 0, "masked token %d", g_res[2].tokens[i]);
        CHECK_MSG(g_res[3].finish == FINISH_ERROR && g_res[3].n_tokens == 2 &&
                      strstr(g_res[3].error, "allows no token"),
                  "poisoned mask: finish %s after %d tokens, error '%s'", finish_reason_str(g_res[3].finish),
                  g_res[3].n_tokens, g_res[3].error);
        if (variant == 2) {
            nw = reference(p, 12, 3, want);
            CHECK(g_res[4].finish == FINISH_LENGTH && !memcmp(g_res[4].tokens, want, (size_t)nw * 4));
        }
        /* steps: 1 prefill + 6 decodes; the penalized request samples in 3 */
        uint64_t want_dev = !g_fake_device || variant == 1 ? 0 : variant == 2 ? st.steps - 3 : st.steps;
        CHECK_MSG(st.device_sampled_steps == want_dev && (uint64_t)fb->sample_calls == want_dev,
                  "variant %d device %d: %llu of %llu steps sampled by the backend (%lld calls), want %llu",
                  variant, (int)g_fake_device, (unsigned long long)st.device_sampled_steps,
                  (unsigned long long)st.steps, (long long)fb->sample_calls, (unsigned long long)want_dev);
        CHECK(st.masks > 0);
        check_no_leak(s);
        sched_free(s);
        backend_free(&fb->base);
    }
}

/* logprobs: every TOKEN event of a logprobs request carries the token's
 * log-probability under the raw logits, also when penalties rewrite the
 * row before sampling (here they halve the chosen token's logit: it is in
 * the history), and the request is sampled on the host; other requests
 * carry none.  With top_logprobs 3 the event also carries the three most
 * likely ids under the same raw logits: the chosen token (10), then the
 * lowest two other ids (0: tied, lower id first), whatever the penalties
 * did to the row. */
static void test_logprobs(void)
{
    int32_t p[60], want[8];
    for (int32_t i = 0; i < 60; i++)
        p[i] = i; /* every id the fake picks but 60..62 is in the penalty history */
    /* one-hot logits: 10 for the next token, 0 for the other 63 */
    const double norm = 10.0 + log(1.0 + 63.0 * exp(-10.0));
    for (int variant = 0; variant < 2; variant++) {
        struct fake_backend *fb = fake_create(64, 4, 128, one_hot_logits);
        sched *s = make_sched(fb, 8, 128, 128, false);
        reset_results();
        struct sched_request r = req_of(1, p, 60, 6);
        r.logprobs = true;
        r.top_logprobs = 3;
        r.sampling.repeat_penalty = variant ? 2.0f : 1.0f;
        CHECK(sched_submit(s, &r) == PS_OK);
        r = req_of(2, p, 60, 6);
        CHECK(sched_submit(s, &r) == PS_OK);
        r = req_of(3, p, 60, 6); /* logprobs without alternatives */
        r.logprobs = true;
        CHECK(sched_submit(s, &r) == PS_OK);
        /* alternatives need logprobs, and at most SCHED_MAX_TOP_LOGPROBS */
        r = req_of(4, p, 60, 6);
        r.top_logprobs = 1;
        CHECK(sched_submit(s, &r) == PS_EINVAL);
        r.logprobs = true;
        r.top_logprobs = SCHED_MAX_TOP_LOGPROBS + 1;
        CHECK(sched_submit(s, &r) == PS_EINVAL);
        r.top_logprobs = -1;
        CHECK(sched_submit(s, &r) == PS_EINVAL);
        CHECK(run_to_end(s, 100) > 0);
        int32_t nw = reference(p, 60, 6, want);
        for (int id = 1; id <= 3; id++) {
            CHECK(g_res[id].finish == FINISH_LENGTH && g_res[id].n_tokens == nw &&
                  !memcmp(g_res[id].tokens, want, (size_t)nw * 4));
            CHECK_MSG(g_res[id].bad_pieces == 0, "request %d: %d events with a wrong piece", id,
                      g_res[id].bad_pieces);
        }
        CHECK(g_res[1].n_logprobs == nw && g_res[2].n_logprobs == 0 && g_res[3].n_logprobs == nw);
        for (int32_t i = 0; i < g_res[1].n_logprobs; i++) {
            CHECK_MSG(fabs(g_res[1].logprobs[i] - (10.0 - norm)) < 1e-5, "variant %d token %d: logprob %g, want %g",
                      variant, (int)i, (double)g_res[1].logprobs[i], 10.0 - norm);
            CHECK(g_res[3].n_top[i] == 0);
            CHECK_MSG(g_res[1].n_top[i] == 3, "variant %d token %d: %d alternatives", variant, (int)i,
                      (int)g_res[1].n_top[i]);
            const int32_t tok = g_res[1].tokens[i];
            const int32_t other0 = tok == 0 ? 1 : 0, other1 = tok <= 1 ? 2 : 1;
            CHECK_MSG(g_res[1].top_ids[i][0] == tok && g_res[1].top_ids[i][1] == other0 &&
                          g_res[1].top_ids[i][2] == other1,
                      "variant %d token %d (%d): alternatives %d %d %d", variant, (int)i, (int)tok,
                      (int)g_res[1].top_ids[i][0], (int)g_res[1].top_ids[i][1], (int)g_res[1].top_ids[i][2]);
            /* the sampled token's entry is its logprob, bit for bit */
            CHECK(g_res[1].top_lps[i][0] == g_res[1].logprobs[i]);
            CHECK(fabs(g_res[1].top_lps[i][1] - (0.0 - norm)) < 1e-5 &&
                  g_res[1].top_lps[i][2] == g_res[1].top_lps[i][1]);
        }
        /* request 1 keeps every step on the host */
        struct sched_stats st;
        sched_get_stats(s, &st);
        CHECK(st.device_sampled_steps == 0);
        check_no_leak(s);
        sched_free(s);
        backend_free(&fb->base);
    }
    /* sampler_logprob reads logits as the sampler does */
    float l[4] = { 0.0f, NAN, -INFINITY, 0.0f };
    double n = sampler_log_norm(l, 4);
    CHECK(fabs(n - log(2.0)) < 1e-9);
    CHECK(fabsf(sampler_logprob(l, n, 0) - (float)-log(2.0)) < 1e-6f);
    CHECK(sampler_logprob(l, n, 1) == -INFINITY && sampler_logprob(l, n, 2) == -INFINITY);
    float inf2[2] = { INFINITY, 0.0f };
    n = sampler_log_norm(inf2, 2);
    CHECK(sampler_logprob(inf2, n, 0) == 0.0f && sampler_logprob(inf2, n, 1) <= -FLT_MAX); /* +inf: FLT_MAX */
    float none[2] = { -INFINITY, NAN };
    n = sampler_log_norm(none, 2);
    CHECK(n == -INFINITY && sampler_logprob(none, n, 0) == -INFINITY);
}

struct rows_masks {
    const uint32_t *m[2];
    int calls;
    int fail;
};

static int rows_mask_fn(void *ud, const uint32_t **masks, int64_t rows)
{
    struct rows_masks *rm = ud;
    rm->calls++;
    if (rm->fail)
        return ps_error_set(PS_EINTERNAL, "mask callback failed");
    for (int64_t r = 0; r < rows && r < 2; r++)
        masks[r] = rm->m[r];
    return PS_OK;
}

/* backend_forward_sample directly: the host fallback (no op) and the op
 * agree; masks; a row allowing nothing is -1 alone; argument checks. */
static void test_forward_sample_api(void)
{
    int32_t p0[5], p1[7];
    make_prompt(p0, 5, 3);
    make_prompt(p1, 7, 4);
    int32_t got[2][2];
    for (int mode = 0; mode < 2; mode++) {
        bool saved = g_fake_device;
        g_fake_device = mode == 1;
        struct fake_backend *fb = fake_create(16, 4, 64, one_hot_logits);
        g_fake_device = saved;
        CHECK(backend_can_sample(&fb->base) == (mode == 1));
        int32_t bt0[2] = { 0, 1 }, bt1[2] = { 2, 3 };
        struct batch_seq seqs[2] = { { p0, 5, 0, bt0, 2, LOGITS_LAST }, { p1, 7, 0, bt1, 2, LOGITS_LAST } };
        struct batch_plan plan = { seqs, 2 };
        struct backend_sample_params sp[2] = { { .temperature = 0.0f, .top_p = 1.0f },
                                               { .temperature = 0.8f, .top_p = 0.9f, .seed = 9, .step = 3 } };
        int32_t tok[2] = { -5, -5 };
        CHECK(backend_forward_sample(&fb->base, &plan, sp, NULL, NULL, tok) == PS_OK);
        CHECK(tok[0] == ref_next(p0, 5, false) && tok[1] >= 0 && tok[1] < N_VOCAB);
        got[mode][0] = tok[0];
        got[mode][1] = tok[1];

        /* row 0 may only be 7 or 9; row 1's mask allows nothing */
        uint32_t m79[2] = { (1u << 7) | (1u << 9), 0 }, none[2] = { 0, 0 };
        struct rows_masks rm = { { m79, none }, 0, 0 };
        CHECK(backend_forward_sample(&fb->base, &plan, sp, rows_mask_fn, &rm, tok) == PS_OK);
        CHECK(rm.calls == 1 && (tok[0] == 7 || tok[0] == 9) && tok[1] == -1);

        rm.fail = 1;
        CHECK(backend_forward_sample(&fb->base, &plan, sp, rows_mask_fn, &rm, tok) == PS_EINTERNAL);

        /* bad params or plan: PS_EINVAL before anything runs */
        int64_t runs = fb->forwards;
        sp[1].top_p = 0.0f;
        CHECK(backend_forward_sample(&fb->base, &plan, sp, NULL, NULL, tok) == PS_EINVAL);
        CHECK(strstr(ps_error_last(), "row 1") && strstr(ps_error_last(), "top_p"));
        sp[1].top_p = 0.9f;
        CHECK(backend_forward_sample(&fb->base, &plan, NULL, NULL, NULL, tok) == PS_EINVAL);
        int32_t badtok[1] = { N_VOCAB };
        struct batch_seq bs = { badtok, 1, 0, bt0, 2, LOGITS_LAST };
        struct batch_plan bp = { &bs, 1 };
        CHECK(backend_forward_sample(&fb->base, &bp, sp, NULL, NULL, tok) == PS_EINVAL);
        CHECK(fb->forwards == runs);
        backend_free(&fb->base);
    }
    CHECK_MSG(got[0][0] == got[1][0] && got[0][1] == got[1][1], "fallback %d %d vs op %d %d", got[0][0],
              got[0][1], got[1][0], got[1][1]);
}

/* ---- prompt groups ------------------------------------------------------------ */

/* Logits that leave room for chance: every id gets a value from a hash of
 * the whole context (EOG never wins), so temperature sampling picks
 * different tokens for different seeds, and a wrong cache slot still
 * changes every later pick. */
static void soft_logits(const int32_t *ctx, int32_t n, float *out, int32_t n_vocab)
{
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < n; i++)
        h = fake_mix(h, (uint32_t)ctx[i] * 31u + (uint32_t)i);
    for (int32_t v = 0; v < n_vocab; v++)
        out[v] = v == EOG_ID ? -100.0f : (float)(fake_mix(h, (uint32_t)v) % 1000u) / 250.0f;
}

enum { GK = 5, G_MAXT = 12 };

/* Member k of a group (seed 1000 + k, temperature 1). */
static struct sched_request group_req(uint64_t id, const int32_t *p, int32_t n, int32_t max_tokens, int k,
                                      uint64_t group)
{
    struct sched_request r = req_of(id, p, n, max_tokens);
    r.sampling.temperature = 1.0f;
    r.sampling.seed = 1000 + (uint64_t)k;
    r.prompt_group = group;
    return r;
}

/* What member k gives alone, on a scheduler of its own. */
static int32_t group_solo(const int32_t *p, int32_t n, int32_t max_tokens, int k, int32_t *out)
{
    struct fake_backend *fb = fake_create(128, 4, 64, soft_logits);
    sched *s = make_sched(fb, 8, 64, 256, false);
    reset_results();
    struct sched_request r = group_req(1, p, n, max_tokens, k, 0);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 1000) > 0);
    int32_t nt = g_res[1].n_tokens;
    memcpy(out, g_res[1].tokens, (size_t)nt * sizeof *out);
    sched_free(s);
    backend_free(&fb->base);
    return nt;
}

/* The n choices of one API request: GK requests of one prompt group, each
 * with its own seed.  Each must continue exactly as it does alone (the
 * fake reads every context token back from its cache: a wrong shared
 * block, a missed copy-on-write of the partial last block or a donor
 * overwritten shows), while the prompt is computed once: prefill = the
 * prompt + one token for each other member.  With and without the prefix
 * cache; a prompt whose shared part ends inside a block (23: 22 shared,
 * block 5 copied by each member) and one ending on a block boundary (25);
 * a member that finishes in its prefill step (max_tokens 1) still hands
 * its prompt over (parked); fewer batch slots than members; a cache so
 * small that members are preempted and re-admitted. */
static void test_prompt_groups(void)
{
    int32_t p[25], solo[GK][64], n_solo[GK], one[GK][4];
    make_prompt(p, 25, 31);
    for (int pcache = 0; pcache < 2; pcache++)
        for (int32_t np = 23; np <= 25; np += 2) {
            for (int k = 0; k < GK; k++) {
                n_solo[k] = group_solo(p, np, G_MAXT, k, solo[k]);
                CHECK(group_solo(p, np, 1, k, one[k]) == 1);
            }
            bool differ = false;
            for (int k = 1; k < GK; k++)
                differ |= memcmp(solo[k], solo[0], (size_t)G_MAXT * sizeof **solo) != 0;
            CHECK_MSG(differ, "the seeds must give different outputs");
            /* variant 0: room for all; 1: max_tokens 1; 2: 2 batch slots; 3: a tiny cache */
            for (int variant = 0; variant < 4; variant++) {
                const int32_t maxt = variant == 1 ? 1 : G_MAXT;
                struct fake_backend *fb = fake_create(variant == 3 ? 16 : 128, 4, 64, soft_logits);
                sched *s = make_sched(fb, variant == 2 ? 2 : 8, 64, 256, pcache);
                reset_results();
                for (int k = 0; k < GK; k++) {
                    struct sched_request r = group_req((uint64_t)k + 1, p, np, maxt, k, 9);
                    CHECK(sched_submit(s, &r) == PS_OK);
                }
                CHECK(run_to_end(s, 2000) > 0);
                struct sched_stats st;
                sched_get_stats(s, &st);
                for (int k = 0; k < GK; k++) {
                    const struct result *r = &g_res[k + 1];
                    const int32_t *want = variant == 1 ? one[k] : solo[k];
                    const int32_t nw = variant == 1 ? 1 : n_solo[k];
                    CHECK_MSG(r->done && r->n_tokens == nw && !memcmp(r->tokens, want, (size_t)nw * sizeof *want),
                              "cache %d prompt %d variant %d member %d: %d tokens, first %d want %d", pcache,
                              (int)np, variant, k, (int)r->n_tokens, r->n_tokens ? (int)r->tokens[0] : -1,
                              (int)want[0]);
                    CHECK(r->n_prompt == np && r->n_cached == 0);
                }
                if (variant < 3) {
                    CHECK_MSG(st.prefill_tokens == (uint64_t)(np + GK - 1) &&
                                  st.group_shared_tokens == (uint64_t)((GK - 1) * (np - 1)),
                              "cache %d prompt %d variant %d: prefill %llu shared %llu, want %d and %d", pcache,
                              (int)np, variant, (unsigned long long)st.prefill_tokens,
                              (unsigned long long)st.group_shared_tokens, (int)(np + GK - 1),
                              (int)((GK - 1) * (np - 1)));
                    CHECK(st.prefix_hit_tokens == 0);
                }
                if (variant == 0)
                    CHECK_MSG(st.cow_copies == (uint64_t)((np - 1) % 4 ? GK - 1 : 0), "prompt %d: %llu copies",
                              (int)np, (unsigned long long)st.cow_copies);
                if (variant == 3)
                    CHECK_MSG(st.preemptions > 0, "cache %d prompt %d: no preemption in 16 blocks", pcache, (int)np);
                check_no_leak(s);
                sched_free(s);
                backend_free(&fb->base);
            }
        }

    /* Not shared: another tenant's request with the same group value
     * (prefilled in full), and past the common prefix of a prompt that
     * differs (here from token 10 on). */
    int32_t q[23], want_q[64];
    memcpy(q, p, sizeof q);
    make_prompt(q + 10, 13, 77);
    int32_t nq = group_solo(q, 23, G_MAXT, 3, want_q);
    for (int k = 0; k < GK; k++)
        n_solo[k] = group_solo(p, 23, G_MAXT, k, solo[k]);
    struct fake_backend *fb = fake_create(128, 4, 64, soft_logits);
    sched *s = make_sched(fb, 8, 64, 256, false);
    reset_results();
    struct sched_request r = group_req(1, p, 23, G_MAXT, 0, 9);
    CHECK(sched_submit(s, &r) == PS_OK);
    r = group_req(2, p, 23, G_MAXT, 1, 9);
    r.tenant = 5;
    CHECK(sched_submit(s, &r) == PS_OK);
    r = group_req(3, q, 23, G_MAXT, 3, 9);
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(run_to_end(s, 1000) > 0);
    CHECK(g_res[1].n_tokens == n_solo[0] && !memcmp(g_res[1].tokens, solo[0], (size_t)n_solo[0] * 4));
    CHECK(g_res[2].n_tokens == n_solo[1] && !memcmp(g_res[2].tokens, solo[1], (size_t)n_solo[1] * 4));
    CHECK(g_res[3].n_tokens == nq && !memcmp(g_res[3].tokens, want_q, (size_t)nq * 4));
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK_MSG(st.prefill_tokens == 23 + 23 + 13 && st.group_shared_tokens == 10,
              "prefill %llu shared %llu, want 59 and 10", (unsigned long long)st.prefill_tokens,
              (unsigned long long)st.group_shared_tokens);
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

/* A parked member (finished, its blocks kept for its waiting group) gives
 * its blocks back before a higher-priority arrival would preempt a running
 * request for lack of them: parking only ever delays a release, it never
 * costs a live request its progress.  16 blocks of 4: L (prio 0) runs;
 * group member A computes a 30-token prompt and ends (max_tokens 1),
 * parked with 8 blocks for member B; then H (prio 5, 6 blocks) arrives:
 * the free blocks less the head-room do not hold it, the parked ones do. */
static void test_prompt_group_parked_yields_to_priority(void)
{
    int32_t lp[8], gp[30], hp[24], want[64];
    make_prompt(lp, 8, 601);
    make_prompt(gp, 30, 602);
    make_prompt(hp, 24, 603);
    struct fake_backend *fb = fake_create(16, 4, 64, one_hot_logits);
    sched *s = make_sched(fb, 4, 64, 256, false);
    reset_results();
    struct sched_request r = req_of(1, lp, 8, 20);
    CHECK(sched_submit(s, &r) == PS_OK);
    int32_t n;
    CHECK(sched_step(s, &n) == PS_OK);
    r = req_of(2, gp, 30, 1);
    r.prompt_group = 7;
    CHECK(sched_submit(s, &r) == PS_OK);
    r = req_of(3, gp, 30, 1);
    r.prompt_group = 7;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(sched_step(s, &n) == PS_OK);
    CHECK(g_res[2].done && !g_res[3].done); /* A ended in its prefill step, B waits */
    r = req_of(4, hp, 24, 2);
    r.priority = 5;
    CHECK(sched_submit(s, &r) == PS_OK);
    CHECK(sched_step(s, &n) == PS_OK);
    CHECK(g_res[4].n_tokens == 1); /* admitted at once */
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK_MSG(st.priority_preemptions == 0 && g_res[1].n_preempted == 0,
              "a running request was preempted while a finished one held %d blocks (preemptions %llu)", 8,
              (unsigned long long)st.priority_preemptions);
    CHECK(run_to_end(s, 1000) > 0);
    int32_t nw = reference(lp, 8, 20, want);
    CHECK(g_res[1].done && g_res[1].n_tokens == nw && !memcmp(g_res[1].tokens, want, (size_t)nw * 4));
    nw = reference(gp, 30, 1, want);
    CHECK(g_res[3].done && g_res[3].n_tokens == nw && !memcmp(g_res[3].tokens, want, (size_t)nw * 4));
    nw = reference(hp, 24, 2, want);
    CHECK(g_res[4].done && g_res[4].n_tokens == nw && !memcmp(g_res[4].tokens, want, (size_t)nw * 4));
    check_no_leak(s);
    sched_free(s);
    backend_free(&fb->base);
}

int main(void)
{
    g_fake_model.hp.n_vocab = N_VOCAB;
    for (int mode = 0; mode < 2; mode++) {
        g_fake_device = mode == 1;
        printf("== %s path\n", g_fake_device ? "device-sampling (ops->forward_sample)" : "host-sampling");
        test_text_scan();
        test_single_and_chunked();
        test_batch_invariance_and_preemption(512, 64, false); /* room for all   */
        test_batch_invariance_and_preemption(512, 7, false);  /* tiny budget    */
        test_batch_invariance_and_preemption(24, 64, true);   /* tiny cache     */
        test_batch_invariance_and_preemption(16, 5, true);    /* both           */
        test_prefix_sharing();
        test_cancel_priority_errors();
        test_priority_preemption();
        test_queued_since();
        test_nonfinite_logits();
        test_text_eog_stop();
    test_refused_token_events();
        test_config_errors();
        test_sampling_paths();
        test_logprobs();
        test_prompt_groups();
        test_prompt_group_parked_yields_to_priority();
    }
    g_fake_device = false;
    test_forward_sample_api();
    TEST_DONE();
}
