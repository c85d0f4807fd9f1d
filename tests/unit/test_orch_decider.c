/* test_orch_decider.c - model-driven tasks with a scripted fake decider:
 * the task assigns fresh call ids (a model repeating the same calls never
 * collides), the last allowed decision is marked final-only with the
 * finished call ids (max_rounds, max_calls), and a near deadline stops a
 * decision being decoded, keeps the calls that closed and decides a final
 * before the deadline; a final cut by its token budget still completes the
 * task with the answer decoded so far, and one that loops is cut after its
 * first time; a transcript that outgrows the
 * model's context (over_context) is cut to its newer part and the decision
 * becomes the final.  A task that records its trajectory keeps each
 * decision's prompt and text exactly as the decider saw them. */
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/httpc.h"
#include "orchestrator/mock_agent.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"
#include "test_util.h"

#define MAX_ROUNDS 16

enum fake_mode { FAKE_REPEAT, FAKE_NEW_CALLS, FAKE_HANG_FIRST, FAKE_CUT_FINAL, FAKE_CUT_ESCAPE, FAKE_FINAL_WAITS, FAKE_LOOP_FINAL,
                 FAKE_REPEATS_ONCE, FAKE_REPEAT_SLOW, FAKE_CUT_BSU, FAKE_CUT_SURROGATE, FAKE_LOOP_NUM,
                 FAKE_LOOP_USES, FAKE_CUT_REFS_RUNNING, FAKE_LOOP_FINAL_BYTES, FAKE_LONG_RUN };

struct fake {
    struct event_base *base;
    enum fake_mode     mode;
    int                n_start, n_cancel;
    size_t             budget;       /* over_context: prompt bytes that fit (0: all) */
    size_t             first_len, max_len; /* prompt bytes: round 1, largest */
    int                saw_dropped;  /* a prompt said older entries were dropped */
    int                saw_example;  /* the prompt's example came from the calculator's `example` */
    size_t             fed, text_len; /* chunked modes: bytes fed before the task said stop, of */
    int                final_only[MAX_ROUNDS + 1];
    int                n_finished[MAX_ROUNDS + 1];
    char              *prompt[MAX_ROUNDS + 1]; /* each round's prompt (copied) */
    char              *text[MAX_ROUNDS + 1];   /* each round's decision text (copied) */
};

struct fake_dec {
    struct fake      *f;
    struct orch_task *t;
    struct event     *ev;
    const char       *text;
    int               hang;    /* feed the text, never end */
    int               chunked; /* > 0: feed this many bytes at a time, as tokens, until told to stop */
};

static const char *const CALLS2 =
    "{\"calls\":[{\"to\":\"calculator\",\"args\":{\"expression\":\"1+1\"}},"
    "{\"to\":\"calculator\",\"args\":{\"expression\":\"2+2\"}}]}";
static const char *const HALF =
    "{\"calls\":[{\"to\":\"calculator\",\"args\":{\"expression\":\"3+3\"}},{\"to\":\"calc";

static void fake_free(struct fake_dec *d)
{
    if (d->ev)
        event_free(d->ev);
    free(d);
}

static void fake_fire(evutil_socket_t fd, short what, void *ud)
{
    struct fake_dec *d = ud;
    (void)fd;
    (void)what;
    if (d->chunked) {
        size_t n = strlen(d->text), i = 0;
        while (i < n) {
            size_t k = n - i < (size_t)d->chunked ? n - i : (size_t)d->chunked;
            i += k;
            if (orch_task_decision_text(d->t, d->text + i - k, k))
                break;
        }
        d->f->fed = i;
        d->f->text_len = n;
    } else {
        orch_task_decision_text(d->t, d->text, strlen(d->text));
    }
    if (d->hang)
        return;   /* freed by fake_cancel */
    struct orch_task *t = d->t;
    fake_free(d);
    orch_task_decision_end(t, PS_OK, NULL);
}

static void *fake_start(void *ctx, struct orch_task *t, const char *prompt)
{
    struct fake *f = ctx;
    int round = orch_task_rounds(t);
    const char *ids[32];
    f->n_start++;
    if (round == 1)
        f->first_len = strlen(prompt);
    f->max_len = strlen(prompt) > f->max_len ? strlen(prompt) : f->max_len;
    f->saw_dropped |= strstr(prompt, "were dropped: the context is full") != NULL;
    f->saw_example |= strstr(prompt, "Task: What is 6*7?\nDecision 1: {\"calls\":[{\"to\":\"calculator\","
                                     "\"args\":{\"expression\":\"6*7\"}}]}\nResult: {\"id\":\"c1\",\"to\":"
                                     "\"calculator\",\"status\":\"ok\",\"result\":\"42\"}") != NULL;
    if (round <= MAX_ROUNDS) {
        f->final_only[round] = orch_task_final_only(t);
        f->n_finished[round] = orch_task_finished_ids(t, ids, 32);
        free(f->prompt[round]);
        f->prompt[round] = strdup(prompt);
    }
    struct fake_dec *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->f = f;
    d->t = t;
    if (orch_task_final_only(t) && f->mode == FAKE_CUT_FINAL) {
        d->text = "{\"final\": {\"answer\": \"forty tw";          /* cut by the token budget */
    } else if (f->mode == FAKE_LOOP_FINAL) {
        /* greedy decoding stuck in a loop until the token budget ends */
        d->text = "{\"final\":{\"answer\":\"The answer is 17*23, the answer is 391, the answer is 391, "
                  "the answer is 391, the answer is 391, the answer is 391, the answer is 391, the ans";
        d->chunked = 3;
    } else if (f->mode == FAKE_LOOP_FINAL_BYTES) {
        /* the same loop a byte per token: every key is cut between tokens */
        d->text = "{\"final\":{\"answer\":\"The answer is 17*23, the answer is 391, the answer is 391, "
                  "the answer is 391, the answer is 391, the answer is 391, the answer is 391, the ans";
        d->chunked = 1;
    } else if (f->mode == FAKE_LONG_RUN) {
        /* a run of one letter (no space: not a loop) a byte per token */
        static char run[12100];
        if (!run[0]) {
            strcpy(run, "{\"final\":{\"answer\":\"");
            memset(run + strlen(run), 'D', 12000);
            strcat(run, "\"}}");
        }
        d->text = run;
        d->chunked = 1;
    } else if (f->mode == FAKE_REPEATS_ONCE) {
        /* a unit said twice is not a loop: the answer stands as written */
        d->text = "{\"final\":{\"answer\":\"Paris is the capital. Paris is the capital.\"}}";
        d->chunked = 3;
    } else if (orch_task_final_only(t) && f->mode == FAKE_CUT_ESCAPE) {
        d->text = "{\"final\": {\"answer\": \"x\\\"y\\u00";       /* cut inside an escape */
    } else if (f->mode == FAKE_FINAL_WAITS && round == 1) {
        d->text = "{\"calls\":[{\"to\":\"calculator\",\"args\":{\"expression\":\"5*5\"}},"
                  "{\"to\":\"mock\",\"args\":{\"sleep_ms\":5000}}]}";
    } else if (f->mode == FAKE_FINAL_WAITS && round == 2) {
        d->text = "{\"final\":{\"answer\":\"{{c2}}\",\"uses\":[\"c2\"]}}";   /* waits on the slow call */
    } else if (f->mode == FAKE_REPEAT_SLOW && round == 1) {
        d->text = "{\"calls\":[{\"to\":\"mock\",\"args\":{\"sleep_ms\":800}},"
                  "{\"to\":\"calculator\",\"args\":{\"expression\":\"1+1\"}}]}";
    } else if (f->mode == FAKE_REPEAT_SLOW && round == 2) {
        d->text = "{\"calls\":[{\"to\":\"calculator\",\"args\":{\"expression\":\"1+1\"}}]}";
    } else if (f->mode == FAKE_CUT_BSU && orch_task_final_only(t)) {
        d->text = "{\"final\": {\"answer\": \"C:\\\\u";   /* raw C:\\u -- an escaped backslash, then u */
    } else if (f->mode == FAKE_CUT_SURROGATE && orch_task_final_only(t)) {
        d->text = "{\"final\": {\"answer\": \"smile \\ud83d\\ude";   /* cut inside a surrogate pair */
    } else if (f->mode == FAKE_LOOP_NUM) {
        d->text = "{\"final\":{\"answer\":\"10^30 = 1000000000000000000000000000000 exactly\"}}";
        d->chunked = 3;
    } else if (f->mode == FAKE_CUT_REFS_RUNNING && round == 1) {
        d->text = "{\"calls\":[{\"to\":\"mock\",\"args\":{\"sleep_ms\":5000}},"
                  "{\"to\":\"calculator\",\"args\":{\"expression\":\"5*5\"}}]}";
    } else if (f->mode == FAKE_CUT_REFS_RUNNING && orch_task_final_only(t)) {
        /* cut by the token budget, naming a call still running */
        d->text = "{\"final\": {\"answer\": \"It is {{c2}}, and {{c1}} is pendi";
    } else if (f->mode == FAKE_LOOP_USES && round == 1) {
        d->text = "{\"calls\":[{\"to\":\"mock\",\"args\":{\"sleep_ms\":800}},"
                  "{\"to\":\"calculator\",\"args\":{\"expression\":\"1+1\"}}]}";
    } else if (f->mode == FAKE_LOOP_USES && round == 2) {
        d->text = "{\"final\":{\"answer\":\"It is {{c1}}. It is {{c1}}. It is {{c1}}. It is {{c1}}. It is";
        d->chunked = 3;
    } else if (orch_task_final_only(t)) {
        /* What the final grammar allows: uses name finished calls only. */
        int n = orch_task_finished_ids(t, ids, 32);
        static char buf[256];
        snprintf(buf, sizeof buf, "{\"final\":{\"answer\":\"{{%s}}\",\"uses\":[\"%s\"]}}",
                 n ? ids[n - 1] : "none", n ? ids[n - 1] : "");
        d->text = n ? buf : "{\"final\":{\"answer\":\"nothing\"}}";
    } else if (f->mode == FAKE_NEW_CALLS) {
        /* new questions every round */
        static char buf[256];
        snprintf(buf, sizeof buf, "{\"calls\":[{\"to\":\"calculator\",\"args\":{\"expression\":\"%d+1\"}},"
                 "{\"to\":\"calculator\",\"args\":{\"expression\":\"%d+2\"}}]}", round, round);
        d->text = buf;
    } else if (f->mode == FAKE_HANG_FIRST && round == 1) {
        d->text = HALF;
        d->hang = 1;
    } else {
        d->text = CALLS2;   /* the same calls every round, as a small model does */
    }
    if (round <= MAX_ROUNDS) {
        free(f->text[round]);
        f->text[round] = strdup(d->text);
    }
    if (!(d->ev = event_new(f->base, -1, 0, fake_fire, d))) {
        free(d);
        return NULL;
    }
    event_active(d->ev, 0, 0);
    return d;
}

static int32_t fake_over_context(void *ctx, struct orch_task *t, const char *prompt)
{
    struct fake *f = ctx;
    (void)t;
    return f->budget && strlen(prompt) > f->budget ? (int32_t)(strlen(prompt) - f->budget) : 0;
}

static void fake_cancel(void *ctx, void *handle)
{
    struct fake *f = ctx;
    f->n_cancel++;
    fake_free(handle);
}

struct run {
    struct event_base *base;
    int                done;
};

static void on_done(void *ud, struct orch_task *t)
{
    struct run *r = ud;
    (void)t;
    r->done = 1;
    event_base_loopbreak(r->base);
}

struct ctx {
    struct mock_agent *mock;
    struct registry   *reg;
    struct event_base *base;
    struct orch       *orch;
    struct fake        fake;
    struct run         run;
};

static int ctx_open(struct ctx *c, enum fake_mode mode)
{
    memset(c, 0, sizeof *c);
    char pool[1024];
    if (!(c->mock = mock_agent_start(0)))
        return -1;
    snprintf(pool, sizeof pool, "{\"agents\":[{\"name\":\"calculator\",\"kind\":\"builtin\",\"example\":"
             "{\"task\":\"What is 6*7?\",\"args\":{\"expression\":\"6*7\"},\"result\":{\"value\":42}}},"
             "{\"name\":\"mock\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:%d/a\",\"timeout_ms\":10000}]}",
             mock_agent_port(c->mock));
    if (registry_load_json(pool, "pool", &c->reg))
        return -1;
    c->base = event_base_new();
    if (!c->base || !(c->orch = orch_create(c->base, c->reg, NULL, NULL)))
        return -1;
    c->fake.base = c->base;
    c->fake.mode = mode;
    struct orch_decider dec = { fake_start, fake_cancel, &c->fake, fake_over_context };
    orch_set_decider(c->orch, &dec);
    c->run.base = c->base;
    orch_set_done_cb(c->orch, on_done, &c->run);
    return 0;
}

static void ctx_close(struct ctx *c)
{
    for (int i = 0; i <= MAX_ROUNDS; i++) {
        free(c->fake.prompt[i]);
        free(c->fake.text[i]);
    }
    orch_destroy(c->orch);
    if (c->base)
        event_base_free(c->base);
    registry_free(c->reg);
    mock_agent_stop(c->mock);
}

static struct orch_task *run_task(struct ctx *c, const char *json, double *wall)
{
    cJSON *req = cJSON_Parse(json);
    struct orch_task *t = NULL;
    CHECK_MSG(orch_task_submit(c->orch, req, NULL, &t) == PS_OK, "submit: %s", ps_error_last());
    cJSON_Delete(req);
    int64_t t0 = orch_now_ns();
    struct timeval guard = { 10, 0 };
    event_base_loopexit(c->base, &guard);
    if (t && !c->run.done)
        event_base_dispatch(c->base);
    *wall = (double)(orch_now_ns() - t0) / 1e9;
    return t;
}

/* Ids of the summary's calls, "c1,c2,..." and their statuses. */
static void summary_calls(struct orch_task *t, char *ids, size_t n, int *n_ok, int *n_rejected)
{
    cJSON *s = orch_task_summary(t);
    const cJSON *e;
    size_t len = 0;
    ids[0] = 0;
    *n_ok = *n_rejected = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(s, "calls")) {
        const char *id = cJSON_GetObjectItemCaseSensitive(e, "id")->valuestring;
        const char *st = cJSON_GetObjectItemCaseSensitive(e, "status")->valuestring;
        len += (size_t)snprintf(ids + len, n - len, "%s%s", len ? "," : "", id);
        *n_ok += !strcmp(st, "ok");
        *n_rejected += !strcmp(st, "rejected");
    }
    cJSON_Delete(s);
}

static const char *output_of(struct orch_task *t)
{
    static char buf[16384];
    cJSON *s = orch_task_summary(t);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(s, "output");
    snprintf(buf, sizeof buf, "%s", cJSON_IsString(o) ? o->valuestring : "(none)");
    cJSON_Delete(s);
    return buf;
}

static void test_fresh_ids_and_last_round(void)
{
    struct ctx c;
    double wall;
    char ids[256];
    int ok, rej;
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":3}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    summary_calls(t, ids, sizeof ids, &ok, &rej);
    CHECK_MSG(!strcmp(ids, "c1,c2,c3,c4") && ok == 4 && rej == 0, "calls %s ok %d rejected %d", ids, ok, rej);
    CHECK(c.fake.n_start == 3);
    CHECK(!c.fake.final_only[1] && !c.fake.final_only[2] && c.fake.final_only[3]);
    CHECK_MSG(c.fake.n_finished[3] == 4, "finished before the last round: %d", c.fake.n_finished[3]);
    CHECK_MSG(!strcmp(output_of(t), "4"), "output %s", output_of(t));   /* c4 = 2+2 */
    CHECK(c.fake.saw_example);
    ctx_close(&c);

    /* Repeating answered calls of a deterministic tool (calculator) makes
     * the next decision the final, long before max_rounds. */
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":16}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(c.fake.n_start == 3 && !c.fake.final_only[2] && c.fake.final_only[3], "%d decisions",
              c.fake.n_start);
    ctx_close(&c);
    /* New questions every round do not. */
    CHECK(ctx_open(&c, FAKE_NEW_CALLS) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":5}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(c.fake.n_start == 5 && !c.fake.final_only[4] && c.fake.final_only[5], "%d decisions",
              c.fake.n_start);
    ctx_close(&c);

    /* max_rounds 1: the first decision is already final-only. */
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":1}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED && c.fake.final_only[1] && c.fake.n_finished[1] == 0);
    ctx_close(&c);
}

/* A context that holds the first prompt plus ~3 rounds: the task cuts its
 * transcript, decides a final and completes; no prompt is ever over.  A
 * context smaller than the first prompt fails the task, saying so. */
static void test_context_full(void)
{
    struct ctx c;
    double wall;
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":2}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED && !c.fake.saw_dropped);
    const size_t first = c.fake.first_len;
    ctx_close(&c);

    CHECK(ctx_open(&c, FAKE_NEW_CALLS) == 0);
    c.fake.budget = first + 700;
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":16}", &wall);
    CHECK_MSG(t && orch_task_status(t) == TASK_COMPLETED, "status %d", t ? (int)orch_task_status(t) : -1);
    CHECK(c.fake.saw_dropped && c.fake.max_len <= c.fake.budget);
    CHECK_MSG(c.fake.n_start > 2 && c.fake.n_start < 16, "%d decisions", c.fake.n_start);
    CHECK(c.fake.final_only[c.fake.n_start] && !c.fake.final_only[1]);
    printf("context of %zu bytes: %d decisions, largest prompt %zu bytes, final after the cut\n",
           c.fake.budget, c.fake.n_start, c.fake.max_len);
    ctx_close(&c);

    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    c.fake.budget = first / 2;
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":4}", &wall);
    CHECK(t && orch_task_status(t) == TASK_FAILED && c.fake.n_start == 0);
    cJSON *s = t ? orch_task_summary(t) : NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(s, "error");
    CHECK_MSG(cJSON_IsString(e) && strstr(e->valuestring, "do not fit the model's context"), "error %s",
              cJSON_IsString(e) ? e->valuestring : "(none)");
    cJSON_Delete(s);
    ctx_close(&c);
}

static void test_call_limit(void)
{
    struct ctx c;
    double wall;
    char ids[256];
    int ok, rej;
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":6,\"max_calls\":1}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    summary_calls(t, ids, sizeof ids, &ok, &rej);
    CHECK_MSG(!strcmp(ids, "c1,c2") && ok == 1 && rej == 1, "calls %s ok %d rejected %d", ids, ok, rej);
    CHECK(c.fake.n_start == 2 && !c.fake.final_only[1] && c.fake.final_only[2]);
    ctx_close(&c);
}

static void test_near_deadline(void)
{
    struct ctx c;
    double wall;
    char ids[256];
    int ok, rej;
    CHECK(ctx_open(&c, FAKE_HANG_FIRST) == 0);
    /* deadline 400 ms: reserve min(400/4, 4000) = 100 ms, so at 300 ms the
     * hanging first decision is stopped; its closed call (c1) stands. */
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"deadline_ms\":400,\"max_rounds\":10}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(wall > 0.25 && wall < 0.4, "ended after %.3f s", wall);
    CHECK(c.fake.n_cancel == 1 && c.fake.n_start == 2 && c.fake.final_only[2]);
    summary_calls(t, ids, sizeof ids, &ok, &rej);
    CHECK_MSG(!strcmp(ids, "c1") && ok == 1, "calls %s", ids);
    CHECK_MSG(!strcmp(output_of(t), "6"), "output %s", output_of(t));
    printf("near deadline: final after %.3f s (deadline 0.4 s)\n", wall);
    ctx_close(&c);
}

static void test_cut_final(void)
{
    struct ctx c;
    double wall;
    CHECK(ctx_open(&c, FAKE_CUT_FINAL) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":1}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "forty tw"), "output %s", output_of(t));
    ctx_close(&c);
    CHECK(ctx_open(&c, FAKE_CUT_ESCAPE) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":1}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "x\"y"), "output %s", output_of(t));
    ctx_close(&c);
}

static void test_looping_final(void)
{
    struct ctx c;
    double wall;
    /* Not final-only (max_rounds 4): a final the model chose loops; it is cut
     * where the loop starts, decoding stops there, and the task completes. */
    CHECK(ctx_open(&c, FAKE_LOOP_FINAL) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":4}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "The answer is 17*23, the answer is 391"), "output %s", output_of(t));
    CHECK_MSG(c.fake.fed < c.fake.text_len, "fed %zu of %zu bytes", c.fake.fed, c.fake.text_len);
    CHECK(c.fake.n_start == 1);
    ctx_close(&c);
    CHECK(ctx_open(&c, FAKE_REPEATS_ONCE) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":4}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "Paris is the capital. Paris is the capital."), "output %s", output_of(t));
    CHECK(c.fake.fed == c.fake.text_len);
    ctx_close(&c);
    CHECK(ctx_open(&c, FAKE_LOOP_FINAL_BYTES) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":4}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "The answer is 17*23, the answer is 391"), "output %s", output_of(t));
    CHECK_MSG(c.fake.fed < c.fake.text_len, "fed %zu of %zu bytes", c.fake.fed, c.fake.text_len);
    ctx_close(&c);
    /* Each token's text is searched once: a 12,000-byte answer fed a byte
     * at a time took minutes when every token searched the whole text for
     * the answer and for loops of every unit length (70 s on the 2-core VM). */
    CHECK(ctx_open(&c, FAKE_LONG_RUN) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":4}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(strlen(output_of(t)) == 12000 && strspn(output_of(t), "D") == 12000, "output of %zu bytes",
              strlen(output_of(t)));
    CHECK(c.fake.fed == c.fake.text_len);
    printf("a 12,000-byte final answer fed a byte per token: task done in %.3f s\n", wall);
    ctx_close(&c);
}

static void test_final_waiting_near_deadline(void)
{
    struct ctx c;
    double wall;
    CHECK(ctx_open(&c, FAKE_FINAL_WAITS) == 0);
    /* Round 2's final waits on a 5 s call; deadline 1 s, reserve 250 ms (or more after slow decisions): at
     * 750 ms that final is dropped and a final-only one answers (c1). */
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"deadline_ms\":1000,\"max_rounds\":10}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(wall > 0.4 && wall < 1.0, "ended after %.3f s", wall);   /* before the deadline */
    CHECK(c.fake.n_start == 3 && !c.fake.final_only[2] && c.fake.final_only[3]);
    CHECK_MSG(!strcmp(output_of(t), "25"), "output %s", output_of(t));
    ctx_close(&c);
}

/* Edges found in review: after a repeat the final-only decision still waits
 * for calls running from earlier rounds; a budget cut after an escaped
 * backslash + "u", or inside a surrogate pair, still completes; a long
 * number is not a loop; a final cut from a loop keeps the calls its answer
 * references as its uses, so it waits for them and renders them. */
static void test_repeat_and_cut_edges(void)
{
    struct ctx c;
    double wall;
    int ok, rej;
    char ids[256];
    CHECK(ctx_open(&c, FAKE_REPEAT_SLOW) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":8}", &wall);
    summary_calls(t, ids, sizeof ids, &ok, &rej);
    CHECK_MSG(wall > 0.75, "ended after %.3f s, before its 800 ms call c1 finished", wall);
    CHECK_MSG(c.fake.n_start == 3 && c.fake.final_only[3] && ok == 3, "%d decisions, %d ok (%s)",
              c.fake.n_start, ok, ids);
    ctx_close(&c);

    CHECK(ctx_open(&c, FAKE_CUT_BSU) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":1}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "C:\\u"), "output '%s'", output_of(t));
    ctx_close(&c);
    CHECK(ctx_open(&c, FAKE_CUT_SURROGATE) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":1}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(!strcmp(output_of(t), "smile "), "output '%s'", output_of(t));
    ctx_close(&c);

    CHECK(ctx_open(&c, FAKE_LOOP_NUM) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":4}", &wall);
    CHECK_MSG(!strcmp(output_of(t), "10^30 = 1000000000000000000000000000000 exactly"), "output '%s'", output_of(t));
    ctx_close(&c);

    CHECK(ctx_open(&c, FAKE_LOOP_USES) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":8}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(wall > 0.75 && strstr(output_of(t), "It is {\"ok\":true") && !strstr(output_of(t), "{{c1}}"),
              "after %.3f s: output '%s'", wall, output_of(t));
    ctx_close(&c);
}

/* The last round's final, decided when the deadline is near while a call
 * still runs, is cut by its token budget with a reference to that call:
 * the call does not become one of its uses (the task waited for it until
 * the deadline and ended with task.error); the answer renders the finished
 * call and keeps the running one's reference as text. */
static void test_cut_final_near_deadline_naming_a_running_call(void)
{
    struct ctx c;
    double wall;
    CHECK(ctx_open(&c, FAKE_CUT_REFS_RUNNING) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"deadline_ms\":1000,\"max_rounds\":2}", &wall);
    CHECK_MSG(t && orch_task_status(t) == TASK_COMPLETED, "status %s after %.3f s",
              t ? orch_task_status_str(orch_task_status(t)) : "-", wall);
    CHECK_MSG(wall < 1.0, "ended after %.3f s (deadline 1 s)", wall);
    CHECK_MSG(!strcmp(output_of(t), "It is 25, and {{c1}} is pendi"), "output '%s'", output_of(t));
    ctx_close(&c);
}

/* The task's trajectory, parsed (NULL when it records none). */
static cJSON *trajectory_of(struct orch_task *t)
{
    char *text;
    size_t len;
    if (orch_task_trajectory_text(t, &text, &len))
        return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    CHECK_MSG(j != NULL && strlen(text) == len, "trajectory text does not parse");
    free(text);
    return j;
}

static const char *msg_content(const cJSON *step, int i, const char *role)
{
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(step, "messages"), i);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    return cJSON_IsString(r) && !strcmp(r->valuestring, role) && cJSON_IsString(c) ? c->valuestring : NULL;
}

static double num_at(const cJSON *j, const char *obj, const char *key)
{
    return cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, obj), key));
}

/* Each step of a recorded model-driven task is the decision exactly as the
 * decider saw it: the prompt it was given (through a context cut, which
 * breaks the prompts' shared prefix), the text it wrote, the calls that
 * text made; the reward terms follow from them. */
static void test_trajectory(void)
{
    struct ctx c;
    double wall;
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    struct orch_task *t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":2}", &wall);
    const size_t first = c.fake.first_len;
    CHECK(t && !orch_task_recorded(t) && !trajectory_of(t));
    char *text;
    size_t len;
    CHECK(t && orch_task_trajectory_text(t, &text, &len) == PS_ENOTFOUND && strstr(ps_error_last(), "\"trajectory\": true"));
    ctx_close(&c);

    CHECK(ctx_open(&c, FAKE_NEW_CALLS) == 0);
    c.fake.budget = first + 700;
    t = run_task(&c, "{\"input\":\"x\",\"max_rounds\":16,\"trajectory\":true}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED && orch_task_recorded(t) && c.fake.saw_dropped);
    cJSON *j = t ? trajectory_of(t) : NULL;
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
    const int n = c.fake.n_start;
    CHECK_MSG(cJSON_GetArraySize(steps) == n, "%d steps for %d decisions", cJSON_GetArraySize(steps), n);
    int cut_seen = 0;
    for (int i = 0; i < n && i < MAX_ROUNDS; i++) {
        const cJSON *st = cJSON_GetArrayItem(steps, i);
        const char *sys = msg_content(st, 0, "system"), *user = msg_content(st, 1, "user");
        const char *asst = msg_content(st, 2, "assistant");
        CHECK(sys && !strcmp(sys, ORCH_SYSTEM_PROMPT));
        CHECK_MSG(user && c.fake.prompt[i + 1] && !strcmp(user, c.fake.prompt[i + 1]), "step %d: prompt differs", i + 1);
        CHECK_MSG(asst && c.fake.text[i + 1] && !strcmp(asst, c.fake.text[i + 1]), "step %d: completion %s", i + 1,
                  asst ? asst : "(none)");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "valid")));
        CHECK((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(st, "round")) == i + 1);
        /* two calls a round but the final: c(2i+1), c(2i+2) */
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(st, "calls");
        char want[16];
        snprintf(want, sizeof want, "c%d", 2 * i + 1);
        if (i + 1 < n)
            CHECK_MSG(cJSON_GetArraySize(calls) == 2 && !strcmp(cJSON_GetArrayItem(calls, 0)->valuestring, want),
                      "step %d calls", i + 1);
        else
            CHECK(cJSON_GetArraySize(calls) == 0);
        if (i > 0 && c.fake.prompt[i] && c.fake.prompt[i + 1])
            cut_seen |= strncmp(c.fake.prompt[i], c.fake.prompt[i + 1], strlen(c.fake.prompt[i])) != 0;
    }
    CHECK_MSG(cut_seen, "no step's prompt broke the previous one's prefix: the cut went untested");
    const int n_calls = 2 * (n - 1);
    CHECK(num_at(j, "measures", "decisions") == n && num_at(j, "measures", "decisions_compliant") == n);
    CHECK(num_at(j, "measures", "calls") == n_calls && num_at(j, "measures", "calls_ok") == n_calls);
    CHECK(num_at(j, "measures", "agents_distinct") == 1);
    CHECK(num_at(j, "rewards", "success") == 1 && num_at(j, "rewards", "protocol_compliance") == 1);
    CHECK_MSG(fabs(num_at(j, "rewards", "diversity") - 1.0 / n_calls) < 1e-3, "diversity %g",
              num_at(j, "rewards", "diversity"));
    CHECK_MSG(fabs(num_at(j, "rewards", "efficiency") - 2.0 / n) < 1e-3, "efficiency %g",
              num_at(j, "rewards", "efficiency"));
    printf("trajectory: %d steps through a context cut, prompts and completions as the decider saw them\n", n);
    cJSON_Delete(j);
    ctx_close(&c);

    /* A decision stopped near the deadline keeps the text decoded so far
     * and its closed call, not valid; a looping final is cut, not valid. */
    CHECK(ctx_open(&c, FAKE_HANG_FIRST) == 0);
    t = run_task(&c, "{\"input\":\"x\",\"deadline_ms\":400,\"max_rounds\":10,\"trajectory\":true}", &wall);
    j = t ? trajectory_of(t) : NULL;
    steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
    const cJSON *s1 = cJSON_GetArrayItem(steps, 0);
    CHECK(cJSON_GetArraySize(steps) == 2 && msg_content(s1, 2, "assistant") &&
          !strcmp(msg_content(s1, 2, "assistant"), HALF));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(s1, "valid")) &&
          cJSON_IsString(cJSON_GetObjectItemCaseSensitive(s1, "note")));
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(s1, "calls")) == 1);
    CHECK(num_at(j, "rewards", "protocol_compliance") == 0.5);
    cJSON_Delete(j);
    ctx_close(&c);

    /* Cancelled during a decision: the step keeps the text decoded so far,
     * not valid, and says why. */
    CHECK(ctx_open(&c, FAKE_HANG_FIRST) == 0);
    cJSON *req = cJSON_Parse("{\"input\":\"x\",\"trajectory\":true}");
    t = NULL;
    CHECK(orch_task_submit(c.orch, req, NULL, &t) == PS_OK);
    cJSON_Delete(req);
    struct timeval tv = { 0, 100000 };
    event_base_loopexit(c.base, &tv);
    event_base_dispatch(c.base);
    if (t)
        orch_task_cancel(t, "test");
    j = t ? trajectory_of(t) : NULL;
    s1 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "steps"), 0);
    CHECK(s1 && msg_content(s1, 2, "assistant") && !strcmp(msg_content(s1, 2, "assistant"), HALF));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(s1, "valid")));
    const cJSON *note = cJSON_GetObjectItemCaseSensitive(s1, "note");
    CHECK_MSG(cJSON_IsString(note) && strstr(note->valuestring, "ended during this decision"), "note %s",
              cJSON_IsString(note) ? note->valuestring : "(none)");
    CHECK(num_at(j, "rewards", "success") == 0 && num_at(j, "rewards", "efficiency") == 0);
    cJSON_Delete(j);
    ctx_close(&c);

    /* A scripted task records the prompt a model would have read and the
     * action as its completion; a rejected call makes its step not
     * compliant; "trajectory" must be a boolean. */
    CHECK(ctx_open(&c, FAKE_REPEAT) == 0);
    t = run_task(&c, "{\"input\":\"y\",\"trajectory\":true,\"script\":["
                     "{\"calls\":[{\"to\":\"calculator\",\"args\":{\"expression\":\"2+3\"}},{\"to\":\"nobody\"}]},"
                     "{\"calls\":[{\"id\":\"m\",\"to\":\"mock\",\"args\":{}}]},"
                     "{\"final\":{\"answer\":\"{{c1}}\",\"uses\":[\"c1\"]}}]}", &wall);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    j = t ? trajectory_of(t) : NULL;
    steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
    CHECK(cJSON_GetArraySize(steps) == 3);
    const char *u2 = msg_content(cJSON_GetArrayItem(steps, 1), 1, "user");
    const char *u3 = msg_content(cJSON_GetArrayItem(steps, 2), 1, "user");
    CHECK_MSG(u2 && strstr(u2, "Task: y\nDecision 1: {\"calls\":[{\"id\":\"c1\",\"to\":\"calculator\"") &&
              strstr(u2, "Result: {\"id\":\"c2\",\"to\":\"nobody\",\"status\":\"rejected\""),
              "step 2 prompt: %s", u2 ? u2 : "(none)");
    CHECK(u2 && u3 && !strncmp(u3, u2, strlen(u2)) && strstr(u3, "Decision 2: {\"calls\":[{\"id\":\"m\"") &&
          strstr(u3, "Result: {\"id\":\"c1\",\"to\":\"calculator\",\"status\":\"ok\",\"result\":\"5\"}"));
    const char *a3 = msg_content(cJSON_GetArrayItem(steps, 2), 2, "assistant");
    CHECK(a3 && !strcmp(a3, "{\"final\":{\"answer\":\"{{c1}}\",\"uses\":[\"c1\"]}}"));
    CHECK((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(steps, 0), "rejected")) == 1);
    CHECK(num_at(j, "measures", "calls") == 3 && num_at(j, "measures", "calls_rejected") == 1);
    CHECK(num_at(j, "measures", "agents_distinct") == 2 && num_at(j, "rewards", "diversity") == 1);
    CHECK_MSG(fabs(num_at(j, "rewards", "protocol_compliance") - 2.0 / 3) < 1e-3, "compliance %g",
              num_at(j, "rewards", "protocol_compliance"));
    CHECK_MSG(fabs(num_at(j, "rewards", "efficiency") - 2.0 / 3) < 1e-3, "efficiency %g",
              num_at(j, "rewards", "efficiency"));
    cJSON *mode = cJSON_GetObjectItemCaseSensitive(j, "mode");
    CHECK(cJSON_IsString(mode) && !strcmp(mode->valuestring, "script"));
    cJSON_Delete(j);
    req = cJSON_Parse("{\"input\":\"y\",\"trajectory\":\"yes\"}");
    CHECK(orch_task_submit(c.orch, req, NULL, &t) == PS_EINVAL && !strcmp(ps_error_last(), "trajectory: must be a boolean"));
    cJSON_Delete(req);
    ctx_close(&c);
}

int main(void)
{
    test_trajectory();
    test_cut_final_near_deadline_naming_a_running_call();
    test_repeat_and_cut_edges();
    test_final_waiting_near_deadline();
    test_cut_final();
    test_looping_final();
    test_fresh_ids_and_last_round();
    test_call_limit();
    test_context_full();
    test_near_deadline();
    TEST_DONE();
}
