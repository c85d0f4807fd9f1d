/* test_grammar_engine - constrained decoding inside the scheduler and the
 * engine (a compiled grammar as sched_request/engine_request.constraint).
 *
 * A fake backend gives every token a pseudo-random logit that depends on the
 * whole context read back from its KV cache (as in test_scheduler), so
 * sampling at temperature 1 wanders over everything the mask allows.
 * Checked: every finished constrained output is a complete document of its
 * schema and finishes "stop"; a max_tokens cut finishes "length" with an
 * unrepaired valid prefix; constrained and unconstrained sequences batched
 * together (and preempted under a tiny cache) give the same tokens as each
 * run alone; the model vocabulary may be larger than the grammar's; the
 * engine keeps the grammar alive after the caller drops its reference.
 *
 * Both mask modes: inline before the backend step, and on the helper
 * thread beside it (must give the same tokens).
 *
 * Both sampling paths: the host path (logits to the scheduler's sampler)
 * and the device path (a fake backend with ops->forward_sample that asks
 * for the masks after its forward and samples with sampler_sample_draw, as
 * the CUDA backend does on the GPU): seeded temperature-1 outputs,
 * constrained and free, identical token for token, penalized requests
 * keeping their steps on the host in between.
 *
 * With the real model present it also measures the per-step cost of the
 * mask (printed, not asserted): a greedy constrained and an unconstrained
 * request on the CPU backend, step time and mask-fill time per step. */
#include <poll.h>
#include <stdbool.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/status.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "grammar/grammar.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "fake_backend.h"
#include "test_util.h"

/* ---- vocabulary: all bytes, some multi-byte tokens, EOS ------------------ */

static const char *multi[] = {
    "{\"", "\": ", "\", \"", "\"}", "true", "false", "null", ", \"", "12", "7", "\"x\"",
    "\"yy\"", "id", "tag", "ok", "abc", "\\n", "\xc3\xa9", "}", "{}",
};
#define TOK_BRACE_QUOTE 256 /* "{\"" */
#define TOK_EMPTY_OBJ   (256 + N_MULTI - 1) /* "{}" */
#define N_MULTI  ((int32_t)(sizeof multi / sizeof multi[0]))
#define EOS_ID   (256 + N_MULTI)
#define G_VOCAB  (EOS_ID + 1)      /* the grammar's vocabulary            */
#define M_VOCAB  (G_VOCAB + 40)    /* the model's: larger (padded rows)    */

static const char *piece_of(int32_t id, size_t *len)
{
    static char bytes[256];
    if (id >= 0 && id < 256) {
        bytes[id] = (char)id;
        *len = 1;
        return &bytes[id];
    }
    if (id >= 256 && id < EOS_ID) {
        *len = strlen(multi[id - 256]);
        return multi[id - 256];
    }
    *len = 0;
    return "";
}

static const char *fake_piece(void *ud, int32_t id, size_t *len)
{
    (void)ud;
    return piece_of(id, len);
}

static bool fake_is_eog(void *ud, int32_t id)
{
    (void)ud;
    return id == EOS_ID;
}

static grammar_vocab *make_vocab(void)
{
    const char *p[G_VOCAB];
    size_t l[G_VOCAB];
    for (int32_t i = 0; i < G_VOCAB; i++)
        p[i] = piece_of(i, &l[i]);
    p[EOS_ID] = NULL;
    l[EOS_ID] = 0;
    int32_t eos = EOS_ID;
    grammar_vocab *v = NULL;
    CHECK(grammar_vocab_create_from_pieces(G_VOCAB, p, l, &eos, 1, &v) == PS_OK);
    return v;
}

/* ---- fake backend (fake_backend.h): logits hashed from the context ------- */

static void hashed_logits(const int32_t *ctx, int32_t n, float *out, int32_t n_vocab)
{
    uint32_t h = 2166136261u;
    for (int32_t p = 0; p < n; p++)
        h = fake_mix(h, (uint32_t)ctx[p] * 31u + (uint32_t)p);
    for (int32_t v = 0; v < n_vocab; v++)
        out[v] = (float)(fake_mix(h, (uint32_t)v) % 1000u) / 250.0f;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- results ------------------------------------------------------------- */

#define MAX_REQ 32

struct result {
    int32_t tokens[512];
    int32_t n_tokens;
    char    text[4096];
    size_t  text_len;
    int     done;
    enum finish_reason finish;
};

static struct result g_res[MAX_REQ];

static int on_event(void *ud, const struct sched_event *ev)
{
    (void)ud;
    struct result *r = &g_res[ev->id];
    CHECK(!r->done);
    if (r->text_len + ev->text_len < sizeof r->text) {
        memcpy(r->text + r->text_len, ev->text, ev->text_len);
        r->text_len += ev->text_len;
    }
    if (ev->kind == SCHED_EV_TOKEN) {
        if (r->n_tokens < 512)
            r->tokens[r->n_tokens++] = ev->token;
        return 0;
    }
    r->done = 1;
    r->finish = ev->finish;
    return 0;
}

static int32_t g_mask_thread; /* sched_config.mask_thread of make_sched */

static sched *make_sched(struct fake_backend *fb, int32_t max_seqs)
{
    struct sched_config cfg = { .max_seqs = max_seqs, .max_batch_tokens = 64, .n_ctx = 512,
                                .prefix_cache = true, .mask_thread = g_mask_thread };
    struct sched_vocab vocab = { NULL, fake_piece, fake_is_eog };
    sched *s = NULL;
    CHECK(sched_create(&cfg, &fb->base, &vocab, on_event, NULL, &s) == PS_OK);
    return s;
}

static void run_to_end(sched *s)
{
    for (int i = 0; i < 100000 && sched_has_work(s); i++) {
        int32_t n;
        CHECK(sched_step(s, &n) == PS_OK);
    }
    CHECK(!sched_has_work(s));
}

static const char *SCHEMA =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":999},"
    "\"tag\":{\"enum\":[\"x\",\"yy\"]},"
    "\"ok\":{\"type\":\"boolean\"},"
    "\"s\":{\"type\":\"string\",\"maxLength\":4}},"
    "\"required\":[\"id\",\"tag\",\"ok\"]}";

/* The document holds what SCHEMA requires (the automaton itself is tested
 * in test_grammar; this checks the scheduler kept the matcher in step). */
static bool valid_doc(const char *text, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (!j)
        return false;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
    const cJSON *tag = cJSON_GetObjectItemCaseSensitive(j, "tag");
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "s");
    bool good = cJSON_IsObject(j) && cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble <= 999 &&
                cJSON_IsString(tag) && (!strcmp(tag->valuestring, "x") || !strcmp(tag->valuestring, "yy")) &&
                cJSON_IsBool(ok) && (!s || cJSON_IsString(s));
    cJSON_Delete(j);
    return good;
}

static struct sched_request req_of(uint64_t id, const int32_t *prompt, int32_t n, int32_t max_tokens,
                                   uint64_t seed, grammar *g)
{
    struct sched_request r = { .id = id, .prompt = prompt, .n_prompt = n, .max_tokens = max_tokens,
                               .sampling = sampler_params_default() };
    r.sampling.temperature = 1.0f;
    r.sampling.seed = seed;
    if (g)
        r.constraint = grammar_constraint(g);
    return r;
}

#define N_REQ 12

/* Requests 0..7 constrained (seeds differ), 8..11 free; all batched, then
 * each alone: same tokens. */
static void test_batched_vs_alone(grammar *g, int32_t n_blocks)
{
    static int32_t prompts[N_REQ][8];
    for (int i = 0; i < N_REQ; i++)
        for (int k = 0; k < 8; k++)
            prompts[i][k] = 'a' + (i * 7 + k * 3) % 26;
    static struct result together[N_REQ];

    struct fake_backend *fb = fake_create(n_blocks, 4, 64, hashed_logits);
    memset(g_res, 0, sizeof g_res);
    sched *s = make_sched(fb, 16);
    for (int i = 0; i < N_REQ; i++) {
        struct sched_request r = req_of((uint64_t)i, prompts[i], 8, i < 8 ? 120 : 40, 100 + (uint64_t)i,
                                        i < 8 ? g : NULL);
        CHECK(sched_submit(s, &r) == PS_OK);
    }
    run_to_end(s);
    struct sched_stats st;
    sched_get_stats(s, &st);
    CHECK(st.masks > 0);
    if (n_blocks < 64)
        CHECK_MSG(st.preemptions > 0, "a tiny cache should preempt (blocks %d)", (int)n_blocks);
    memcpy(together, g_res, sizeof together);
    sched_free(s);
    fake_free(&fb->base);

    int n_valid = 0;
    for (int i = 0; i < N_REQ; i++) {
        CHECK(together[i].done && together[i].finish != FINISH_ERROR);
        if (i < 8) {
            CHECK_MSG(together[i].finish == FINISH_STOP, "req %d finish %s", i,
                      finish_reason_str(together[i].finish));
            bool ok = valid_doc(together[i].text, together[i].text_len);
            CHECK_MSG(ok, "req %d: '%.*s'", i, (int)together[i].text_len, together[i].text);
            n_valid += ok;
        }
        fb = fake_create(64, 4, 64, hashed_logits);
        memset(g_res, 0, sizeof g_res);
        s = make_sched(fb, 16);
        struct sched_request r = req_of((uint64_t)i, prompts[i], 8, i < 8 ? 120 : 40, 100 + (uint64_t)i,
                                        i < 8 ? g : NULL);
        CHECK(sched_submit(s, &r) == PS_OK);
        run_to_end(s);
        CHECK_MSG(g_res[i].n_tokens == together[i].n_tokens &&
                      !memcmp(g_res[i].tokens, together[i].tokens, (size_t)g_res[i].n_tokens * 4),
                  "req %d differs batched vs alone (blocks %d)", i, (int)n_blocks);
        CHECK(g_res[i].finish == together[i].finish);
        sched_free(s);
        fake_free(&fb->base);
    }
    printf("batched (kv blocks %d, mask thread %d): %d/8 constrained outputs valid, e.g. %.*s\n",
           (int)n_blocks, (int)g_mask_thread, n_valid, (int)together[0].text_len, together[0].text);
}

/* The helper thread fills the masks while the backend "runs" (a forward
 * that sleeps like a host waiting for a GPU): same tokens as inline, and
 * the mask time leaves the step.  Timings printed, not asserted. */
static void test_mask_thread_overlap(grammar_vocab *v, const struct sched_vocab *sv, int sleep_us)
{
    /* a grammar with a large context-dependent part: json_object */
    grammar *g = NULL;
    CHECK(grammar_compile(v, GRAMMAR_SCHEMA_JSON_OBJECT, strlen(GRAMMAR_SCHEMA_JSON_OBJECT), NULL, &g) == PS_OK);
    static struct result runs[2][16];
    double ms[2], mask_us[2];
    int32_t prompt[4] = { 'a', 'b', 'c', 'd' };
    for (int mode = 0; mode < 2; mode++) {
        g_mask_thread = mode ? 1 : -1;
        struct fake_backend *fb = fake_create(512, 4, 64, hashed_logits);
        fb->sleep_us = sleep_us;
        memset(g_res, 0, sizeof g_res);
        sched *s = make_sched(fb, 16);
        if (sv) { /* the real tokenizer's text */
            sched_free(s);
            struct sched_config cfg = { .max_seqs = 16, .max_batch_tokens = 64, .n_ctx = 512,
                                        .mask_thread = g_mask_thread };
            s = NULL;
            CHECK(sched_create(&cfg, &fb->base, sv, on_event, NULL, &s) == PS_OK);
        }
        for (int i = 0; i < 16; i++) {
            struct sched_request r = req_of((uint64_t)i, prompt, 4, 24, 1000 + (uint64_t)i, g);
            CHECK(sched_submit(s, &r) == PS_OK);
        }
        int32_t n;
        CHECK(sched_step(s, &n) == PS_OK); /* prefill of all 16 */
        double t0 = now_s();
        int steps = 0;
        while (sched_has_work(s)) {
            CHECK(sched_step(s, &n) == PS_OK);
            steps++;
        }
        ms[mode] = (now_s() - t0) * 1e3 / (steps ? steps : 1);
        struct sched_stats st;
        sched_get_stats(s, &st);
        mask_us[mode] = st.masks ? (double)st.mask_ns / 1e3 / (double)steps : 0;
        memcpy(runs[mode], g_res, sizeof runs[mode]);
        sched_free(s);
        fake_free(&fb->base);
    }
    for (int i = 0; i < 16; i++)
        CHECK_MSG(runs[0][i].n_tokens == runs[1][i].n_tokens &&
                      !memcmp(runs[0][i].tokens, runs[1][i].tokens, (size_t)runs[0][i].n_tokens * 4),
                  "req %d: mask thread changed the tokens", i);
    printf("16 json_object seqs, %d-token vocab, backend step %.2f ms: inline %.3f ms/step (masks %.1f us/step), "
           "mask thread %.3f ms/step (masks %.1f us/step, overlapped)\n", (int)g_fake_model.hp.n_vocab,
           sleep_us / 1000.0, ms[0], mask_us[0], ms[1], mask_us[1]);
    g_mask_thread = 0;
    grammar_free(g);
}

/* The same requests on the host path and on the device path give the same
 * tokens: 8 constrained and 2 free at temperature 1 (seeds differ), plus
 * (with_penalties) a constrained and a free request with penalties, which
 * keep every step they sample in on the host (so the others' sequences
 * switch paths mid-way: the draws U(seed, k) make that invisible). */
static void test_paths_agree(grammar *g, bool with_penalties)
{
    enum { N = 12 };
    static int32_t prompts[N][6];
    static struct result runs[2][N];
    const int n_req = with_penalties ? N : N - 2;
    struct sched_stats st[2];
    for (int dev = 0; dev < 2; dev++) {
        for (int i = 0; i < N; i++)
            for (int k = 0; k < 6; k++)
                prompts[i][k] = 'a' + (i * 5 + k * 11) % 26;
        g_fake_device = dev == 1;
        struct fake_backend *fb = fake_create(256, 4, 64, hashed_logits);
        g_fake_device = false;
        memset(g_res, 0, sizeof g_res);
        sched *s = make_sched(fb, 16);
        for (int i = 0; i < n_req; i++) {
            bool constrained = i < 8 || i == 10;
            struct sched_request r = req_of((uint64_t)i, prompts[i], 6, i >= 10 ? 12 : 90, 300 + (uint64_t)i,
                                            constrained ? g : NULL);
            if (i == 10) {
                r.sampling.repeat_penalty = 1.3f;
                r.sampling.presence_penalty = 0.4f;
            } else if (i == 11) {
                r.sampling.frequency_penalty = 0.5f;
                r.sampling.top_k = 20;
            } else if (i == 9) {
                r.sampling.top_p = 0.8f;
                r.sampling.min_p = 0.05f;
            }
            CHECK(sched_submit(s, &r) == PS_OK);
        }
        run_to_end(s);
        sched_get_stats(s, &st[dev]);
        memcpy(runs[dev], g_res, sizeof runs[dev]);
        CHECK(fb->mask_violations == 0);
        CHECK((uint64_t)fb->sample_calls == st[dev].device_sampled_steps);
        sched_free(s);
        fake_free(&fb->base);
    }
    int n_valid = 0;
    for (int i = 0; i < n_req; i++) {
        CHECK_MSG(runs[0][i].done && runs[1][i].done && runs[0][i].finish == runs[1][i].finish &&
                      runs[0][i].n_tokens == runs[1][i].n_tokens &&
                      !memcmp(runs[0][i].tokens, runs[1][i].tokens, (size_t)runs[0][i].n_tokens * 4),
                  "req %d: host path %d tokens (%s), device path %d tokens (%s)", i, runs[0][i].n_tokens,
                  finish_reason_str(runs[0][i].finish), runs[1][i].n_tokens, finish_reason_str(runs[1][i].finish));
        if (i < 8) {
            CHECK(runs[1][i].finish == FINISH_STOP);
            n_valid += valid_doc(runs[1][i].text, runs[1][i].text_len);
        }
    }
    CHECK(n_valid == 8);
    CHECK(st[0].device_sampled_steps == 0 && st[1].steps == st[0].steps);
    if (with_penalties)
        CHECK_MSG(st[1].device_sampled_steps > 0 && st[1].device_sampled_steps < st[1].steps,
                  "%llu of %llu steps on the device", (unsigned long long)st[1].device_sampled_steps,
                  (unsigned long long)st[1].steps);
    else
        CHECK(st[1].device_sampled_steps == st[1].steps);
    printf("host vs device sampling path (mask thread %d, penalties %d): %d requests identical, "
           "%llu of %llu steps sampled by the backend\n", (int)g_mask_thread, (int)with_penalties, n_req,
           (unsigned long long)st[1].device_sampled_steps, (unsigned long long)st[1].steps);
}

static void test_length_cut(grammar *g)
{
    struct fake_backend *fb = fake_create(64, 4, 64, hashed_logits);
    memset(g_res, 0, sizeof g_res);
    sched *s = make_sched(fb, 4);
    int32_t prompt[3] = { 'h', 'i', '!' };
    struct sched_request r = req_of(0, prompt, 3, 3, 7, g);
    CHECK(sched_submit(s, &r) == PS_OK);
    run_to_end(s);
    CHECK(g_res[0].done && g_res[0].finish == FINISH_LENGTH && g_res[0].n_tokens == 3);
    /* the partial text is a valid prefix, not a repaired document */
    grammar_matcher *m = NULL;
    CHECK(grammar_matcher_create(g, &m) == PS_OK);
    CHECK(grammar_matcher_accept_bytes(m, g_res[0].text, g_res[0].text_len) == PS_OK);
    CHECK(!grammar_matcher_can_end(m));
    grammar_matcher_free(m);
    sched_free(s);
    fake_free(&fb->base);
}

/* A grammar whose document is one of two literals: it must end on its own
 * ("stop") well before max_tokens, with ignore_eos too. */
static void test_done_stops(grammar_vocab *v)
{
    grammar *g = NULL;
    const char *sch = "{\"enum\":[\"x\",\"yy\"]}";
    CHECK(grammar_compile(v, sch, strlen(sch), NULL, &g) == PS_OK);
    struct fake_backend *fb = fake_create(64, 4, 64, hashed_logits);
    memset(g_res, 0, sizeof g_res);
    sched *s = make_sched(fb, 4);
    int32_t prompt[2] = { 'q', '?' };
    for (int i = 0; i < 4; i++) {
        struct sched_request r = req_of((uint64_t)i, prompt, 2, 50, (uint64_t)i, g);
        r.ignore_eos = i % 2;
        CHECK(sched_submit(s, &r) == PS_OK);
    }
    run_to_end(s);
    for (int i = 0; i < 4; i++) {
        CHECK(g_res[i].finish == FINISH_STOP);
        CHECK_MSG((g_res[i].text_len == 3 && !memcmp(g_res[i].text, "\"x\"", 3)) ||
                      (g_res[i].text_len == 4 && !memcmp(g_res[i].text, "\"yy\"", 4)),
                  "req %d: '%.*s'", i, (int)g_res[i].text_len, g_res[i].text);
    }
    sched_free(s);
    fake_free(&fb->base);
    grammar_free(g);
}

static bool bit(const uint32_t *m, int32_t id)
{
    return (m[id / 32] >> (id % 32)) & 1u;
}

/* grammar_constraint_lazy (tool_choice "auto"): the first token decides
 * between the grammar and free text. */
static void test_lazy(grammar *g)
{
    struct token_constraint c = grammar_constraint_lazy(g);
    const size_t words = (M_VOCAB + 31) / 32;
    uint32_t mask[(M_VOCAB + 31) / 32];
    void *m = NULL;
    /* free text: a first token no document starts with */
    CHECK(c.ops->matcher_new(c.ctx, &m) == PS_OK);
    CHECK(c.ops->fill_mask(m, mask, words) == PS_OK);
    CHECK(bit(mask, '{') && bit(mask, TOK_BRACE_QUOTE)); /* a document may start so */
    CHECK(!bit(mask, TOK_EMPTY_OBJ));                     /* starts like one, then leaves the grammar */
    CHECK(bit(mask, 'a') && bit(mask, ' ') && bit(mask, EOS_ID) && bit(mask, M_VOCAB - 1));
    CHECK(c.ops->accept(m, 'a') == PS_OK);
    CHECK(c.ops->fill_mask(m, mask, words) == PS_OK);
    bool all = true;
    for (int32_t id = 0; id < M_VOCAB; id++)
        all = all && bit(mask, id);
    CHECK(all && !c.ops->is_done(m));
    CHECK(c.ops->accept(m, TOK_EMPTY_OBJ) == PS_OK); /* anything goes now */
    c.ops->matcher_free(m);
    /* a document: masked like the plain grammar from the first token on */
    CHECK(c.ops->matcher_new(c.ctx, &m) == PS_OK);
    CHECK(c.ops->fill_mask(m, mask, words) == PS_OK);
    CHECK(c.ops->accept(m, TOK_BRACE_QUOTE) == PS_OK);
    const char *rest = "id\": 7, \"tag\": \"x\", \"ok\": true}";
    for (const char *p = rest; *p; p++) {
        CHECK(c.ops->fill_mask(m, mask, words) == PS_OK);
        CHECK_MSG(bit(mask, (uint8_t)*p) && !bit(mask, 'Z'), "byte '%c'", *p);
        CHECK(!c.ops->is_done(m));
        CHECK(c.ops->accept(m, (uint8_t)*p) == PS_OK);
    }
    CHECK(c.ops->is_done(m));
    CHECK(c.ops->accept(m, 'Z') != PS_OK);
    c.ops->matcher_free(m);
}

/* Through the engine thread: the caller drops its grammar reference right
 * after engine_submit; the engine's own keeps it alive. */
static void test_engine(grammar_vocab *v)
{
    grammar *g = NULL;
    CHECK(grammar_compile(v, SCHEMA, strlen(SCHEMA), &(struct grammar_options){ .flags = GRAMMAR_OPT_NO_CACHE },
                          &g) == PS_OK);
    struct fake_backend *fb = fake_create(64, 4, 64, hashed_logits);
    struct engine_config ec = { .max_seqs = 4, .max_batch_tokens = 64, .n_ctx = 512 };
    engine *e = NULL;
    CHECK(engine_create(&ec, &fb->base, NULL, &e) == PS_OK);
    int32_t prompt[4] = { 'a', 'b', 'c', 'd' };
    struct engine_request r = { .prompt_ids = prompt, .n_prompt_ids = 4, .max_tokens = 200,
                                .sampling = sampler_params_default() };
    r.sampling.temperature = 1.0f;
    r.sampling.seed = 5;
    r.constraint = grammar_constraint(g);
    /* a NULL stop string is no stop (engine_submit copied it with strdup) */
    static const char *const stops[] = { NULL, "\x01never\x01" };
    r.stop = stops;
    r.n_stop = 2;
    uint64_t id;
    CHECK(engine_submit(e, &r, &id) == PS_OK);
    grammar_free(g); /* the only reference left is the engine's */
    char text[4096];
    size_t len = 0;
    bool done = false;
    enum finish_reason fin = FINISH_NONE;
    for (int spin = 0; spin < 2000 && !done; spin++) {
        struct pollfd pfd = { .fd = engine_events_fd(e), .events = POLLIN };
        poll(&pfd, 1, 10);
        struct engine_event *evs = engine_take_events(e);
        for (struct engine_event *ev = evs; ev; ev = ev->next) {
            if (ev->kind == ENGINE_EV_TOKEN) {
                size_t pl;
                const char *p = piece_of(ev->token, &pl);
                if (len + pl < sizeof text) {
                    memcpy(text + len, p, pl);
                    len += pl;
                }
            } else {
                done = true;
                fin = ev->finish;
                CHECK(ev->status == 0);
            }
        }
        engine_events_free(evs);
    }
    CHECK(done && fin == FINISH_STOP);
    CHECK_MSG(valid_doc(text, len), "engine output '%.*s'", (int)len, text);
    struct engine_stats st;
    engine_get_stats(e, &st);
    CHECK(st.sched.masks > 0);
    engine_free(e);
    fake_free(&fb->base);
}

/* ---- real model: mask overhead per step ----------------------------------- */

static const char *tok_piece(void *ud, int32_t id, size_t *len)
{
    const char *p = tokenizer_piece(ud, id, false, len);
    if (!p)
        *len = 0;
    return p ? p : "";
}

static bool tok_is_eog(void *ud, int32_t id)
{
    return tokenizer_is_eog(ud, id);
}

struct timing {
    double   step_ms;   /* mean decode step (wall) */
    double   mask_us;   /* mean mask fill per constrained step */
    int32_t  n;
};

static struct timing time_one(backend *be, tokenizer *tok, const int32_t *prompt, int32_t n_prompt, grammar *g,
                              int32_t n_gen)
{
    struct timing t = { 0 };
    struct sched_config cfg = { .max_seqs = 2, .max_batch_tokens = 256, .n_ctx = 1024 }; /* CPU: inline masks */
    struct sched_vocab vocab = { tok, tok_piece, tok_is_eog };
    sched *s = NULL;
    memset(g_res, 0, sizeof g_res);
    if (sched_create(&cfg, be, &vocab, on_event, NULL, &s))
        return t;
    struct sched_request r = { .id = 0, .prompt = prompt, .n_prompt = n_prompt, .max_tokens = n_gen,
                               .sampling = sampler_params_default(), .ignore_eos = true };
    if (g)
        r.constraint = grammar_constraint(g);
    CHECK(sched_submit(s, &r) == PS_OK);
    int32_t n;
    CHECK(sched_step(s, &n) == PS_OK); /* prefill */
    double t0 = now_s();
    int32_t steps = 0;
    while (sched_has_work(s)) {
        CHECK(sched_step(s, &n) == PS_OK);
        steps++;
    }
    double dt = now_s() - t0;
    struct sched_stats st;
    sched_get_stats(s, &st);
    t.n = steps;
    t.step_ms = steps ? dt * 1e3 / steps : 0;
    t.mask_us = st.masks ? (double)st.mask_ns / 1e3 / (double)st.masks : 0;
    sched_free(s);
    return t;
}

static void bench_real_model(void)
{
    struct model *m = NULL;
    tokenizer *tok = NULL;
    backend *be = NULL;
    grammar_vocab *gv = NULL;
    grammar *gs = NULL, *go = NULL;
    int32_t *ids = NULL;
    if (model_load(test_model_path(), &m)) {
        printf("real-model timing skipped: %s\n", ps_error_last());
        return;
    }
    struct backend_config bc = { .n_threads = 2, .n_kv_blocks = 128, .block_size = 16, .max_batch_tokens = 256 };
    const char *schema = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":40},"
                         "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":"
                         "\"string\"},\"maxItems\":4}},\"required\":[\"name\",\"age\",\"tags\"]}";
    const char *text = "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n";
    size_t n_ids = 0;
    double t0 = now_s();
    if (tokenizer_from_gguf(m->gguf, &tok) || grammar_vocab_create(tok, &gv))
        goto done;
    double t_vocab = now_s() - t0;
    t0 = now_s();
    if (grammar_compile(gv, schema, strlen(schema), NULL, &gs) ||
        grammar_compile(gv, GRAMMAR_SCHEMA_JSON_OBJECT, strlen(GRAMMAR_SCHEMA_JSON_OBJECT), NULL, &go))
        goto done;
    double t_compile = now_s() - t0;
    if (backend_cpu_create(m, &bc, &be) || tokenizer_encode(tok, text, strlen(text), true, &ids, &n_ids))
        goto done;
    const int32_t n_gen = 48;
    struct timing free_ = time_one(be, tok, ids, (int32_t)n_ids, NULL, n_gen);
    struct timing sch = time_one(be, tok, ids, (int32_t)n_ids, gs, n_gen);
    struct timing obj = time_one(be, tok, ids, (int32_t)n_ids, go, n_gen);
    free_ = time_one(be, tok, ids, (int32_t)n_ids, NULL, n_gen); /* warm rerun of the baseline */
    printf("real model (CPU, 2 threads): grammar vocab %.1f ms, compile 2 schemas %.1f ms\n", t_vocab * 1e3,
           t_compile * 1e3);
    printf("  unconstrained : %.2f ms/step (%d steps)\n", free_.step_ms, (int)free_.n);
    printf("  json_schema   : %.2f ms/step (%d steps), mask fill %.1f us/step\n", sch.step_ms, (int)sch.n,
           sch.mask_us);
    printf("  json_object   : %.2f ms/step (%d steps), mask fill %.1f us/step\n", obj.step_ms, (int)obj.n,
           obj.mask_us);
    /* the sampler itself, with and without a mask (greedy and temperature 1) */
    {
        int32_t nv = m->hp.n_vocab;
        float *lg = malloc((size_t)nv * sizeof *lg), *row = malloc((size_t)nv * sizeof *row);
        uint32_t *mk = calloc(((size_t)nv + 31) / 32, sizeof *mk);
        grammar_matcher *gm = NULL;
        if (lg && row && mk && !grammar_matcher_create(go, &gm) && !grammar_matcher_fill_mask(gm, mk)) {
            for (int32_t i = 0; i < nv; i++)
                lg[i] = (float)((i * 2654435761u) % 1000u) / 100.0f;
            for (int temp = 0; temp < 2; temp++) {
                struct sampler_params sp = sampler_params_default();
                sp.temperature = (float)temp;
                sampler *smp = NULL;
                if (sampler_create(&sp, nv, &smp))
                    break;
                double us[2];
                for (int masked = 0; masked < 2; masked++) {
                    double t1 = now_s();
                    for (int k = 0; k < 200; k++) {
                        int32_t tk;
                        memcpy(row, lg, (size_t)nv * sizeof *row);
                        sampler_sample(smp, row, masked ? mk : NULL, &tk);
                    }
                    us[masked] = (now_s() - t1) * 1e6 / 200;
                }
                printf("  sampler (temperature %d): %.1f us unmasked, %.1f us with the first json_object mask\n",
                       temp, us[0], us[1]);
                sampler_free(smp);
            }
        }
        grammar_matcher_free(gm);
        free(mk);
        free(row);
        free(lg);
    }
    /* the real vocabulary's masks beside a 1 ms "device" step */
    g_fake_model.hp.n_vocab = m->hp.n_vocab;
    struct sched_vocab sv = { tok, tok_piece, tok_is_eog };
    test_mask_thread_overlap(gv, &sv, 1000);
    g_fake_model.hp.n_vocab = M_VOCAB;
done:
    if (!be)
        printf("real-model timing skipped: %s\n", ps_error_last());
    free(ids);
    backend_free(be);
    grammar_free(gs);
    grammar_free(go);
    grammar_vocab_free(gv);
    tokenizer_free(tok);
    model_free(m);
}

int main(void)
{
    g_fake_model.hp.n_vocab = M_VOCAB;
    grammar_vocab *v = make_vocab();
    grammar *g = NULL;
    CHECK(grammar_compile(v, SCHEMA, strlen(SCHEMA), NULL, &g) == PS_OK);
    for (g_mask_thread = -1; g_mask_thread <= 1; g_mask_thread += 2) {
        test_batched_vs_alone(g, 256);
        test_batched_vs_alone(g, 32); /* preemption keeps the matcher */
        g_fake_device = true;              /* the same on the device path */
        test_batched_vs_alone(g, 256);
        test_batched_vs_alone(g, 32);
        g_fake_device = false;
        test_paths_agree(g, false);
        test_paths_agree(g, true);
    }
    g_mask_thread = 0;
    test_mask_thread_overlap(v, NULL, 300);
    test_length_cut(g);
    test_lazy(g);
    test_done_stops(v);
    test_engine(v);
    grammar_free(g);
    grammar_vocab_free(v);
    if (!getenv("PARASERVE_SKIP_MODEL_TIMING"))
        bench_real_model();
    TEST_DONE();
}
