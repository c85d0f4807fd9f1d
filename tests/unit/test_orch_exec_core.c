/* test_orch_exec_core.c - the executor's own bookkeeping through its API
 * (exec_group_submit / cancel, no task layer), against builtin tools and the
 * loopback mock agent.  Runs under ASan in scripts/test. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/executor.h"
#include "orchestrator/mock_agent.h"
#include "orchestrator/registry.h"
#include "test_util.h"

#define FB_MAX 48
struct fbs {
    struct event_base *base;
    int                n;
    struct { char id[16]; enum fb_status st; char err[256]; char res[256]; } f[FB_MAX];
};

static void fbs_cb(void *ud, const struct exec_feedback *fb)
{
    struct fbs *s = ud;
    if (s->n < FB_MAX) {
        snprintf(s->f[s->n].id, sizeof s->f[0].id, "%s", fb->id);
        s->f[s->n].st = fb->status;
        snprintf(s->f[s->n].err, sizeof s->f[0].err, "%s", fb->error ? fb->error : "");
        char *res = fb->result ? cJSON_PrintUnformatted(fb->result) : NULL;
        snprintf(s->f[s->n].res, sizeof s->f[0].res, "%s", res ? res : "");
        free(res);
    }
    s->n++;
}

/* Status of the first feedback for `id`, or -1 when none came. */
static int fbs_status(const struct fbs *s, const char *id, const char **err)
{
    for (int i = 0; i < s->n && i < FB_MAX; i++)
        if (!strcmp(s->f[i].id, id)) {
            if (err)
                *err = s->f[i].err;
            return (int)s->f[i].st;
        }
    if (err)
        *err = "";
    return -1;
}

/* Compact JSON of the first ok result for `id`, "" when none. */
static const char *fbs_result(const struct fbs *s, const char *id)
{
    for (int i = 0; i < s->n && i < FB_MAX; i++)
        if (!strcmp(s->f[i].id, id))
            return s->f[i].res;
    return "";
}

static int fbs_count(const struct fbs *s, const char *id)
{
    int k = 0;
    for (int i = 0; i < s->n && i < FB_MAX; i++)
        k += !strcmp(s->f[i].id, id);
    return k;
}

#define ECHO_POOL "{\"agents\":[{\"name\":\"echo\",\"kind\":\"builtin\",\"tool\":\"echo\"}]}"

/* One executor on its own loop, with one group whose feedback goes to *s
 * (set r->s before the loop runs). */
struct rig {
    struct registry   *reg;
    struct event_base *base;
    struct exec       *ex;
    struct exec_group *g;
    struct fbs        *s;
};

static void rig_cb(void *ud, const struct exec_feedback *fb)
{
    struct rig *r = ud;
    if (r->s)
        fbs_cb(r->s, fb);
}

/* 0, or -1 (with a failed CHECK) when the pool or the executor cannot be
 * made; nothing to close then. */
static int rig_open(struct rig *r, const char *pool)
{
    memset(r, 0, sizeof *r);
    struct exec_config ec = { .seed = 1 };
    CHECK(registry_load_json(pool, "x.json", &r->reg) == PS_OK);
    if (r->reg && (r->base = event_base_new()) && (r->ex = exec_create(r->base, r->reg, &ec)) &&
        (r->g = exec_group_create(r->ex, rig_cb, r)))
        return 0;
    CHECK_MSG(0, "rig: cannot make the executor");
    if (r->ex)
        exec_destroy(r->ex);
    if (r->base)
        event_base_free(r->base);
    registry_free(r->reg);
    return -1;
}

static void rig_close(struct rig *r)
{
    exec_group_destroy(r->g);
    exec_destroy(r->ex);
    event_base_free(r->base);
    registry_free(r->reg);
}

static void submit(struct exec_group *g, const char *json)
{
    cJSON *c = cJSON_Parse(json);
    CHECK_MSG(c && exec_group_submit(g, c) == PS_OK, "%s", json);
    cJSON_Delete(c);
}

static void on_guard(evutil_socket_t fd, short what, void *ud)
{
    *(int *)ud = 1;
}

/* Run the loop until `n` feedback records arrived in s, or ms passed. */
static void run_until(struct event_base *base, const struct fbs *s, int n, int ms)
{
    int fired = 0;
    struct event *guard = evtimer_new(base, on_guard, &fired);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(guard, &tv);
    while (!fired && s->n < n)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(guard);
}

static void run_for(struct event_base *base, int ms)
{
    struct fbs none = { 0 };
    run_until(base, &none, 1, ms);
}

/* An `after` list that names the same call twice waits for that call once:
 * the dependent must run when it ends ok (it used to count two pending
 * dependencies and resolve one, and waited for ever). */
static void test_after_names_a_call_twice(void)
{
    struct rig r;
    if (rig_open(&r, ECHO_POOL))
        return;
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;
    submit(g, "{\"id\":\"a\",\"to\":\"echo\",\"args\":{\"x\":1}}");
    submit(g, "{\"id\":\"b\",\"to\":\"echo\",\"args\":{\"y\":\"{{a.x}}\"},\"after\":[\"a\",\"a\"]}");
    run_until(base, &s, 2, 2000);
    const char *err;
    CHECK_MSG(fbs_status(&s, "a", &err) == FB_OK, "a: %d %s", fbs_status(&s, "a", NULL), err);
    CHECK_MSG(fbs_status(&s, "b", &err) == FB_OK, "b after [a, a]: %d %s", fbs_status(&s, "b", NULL), err);
    CHECK(exec_group_open(g) == 0);

    /* ... and a dependency named twice that fails cancels it once. */
    s.n = 0;
    submit(g, "{\"id\":\"c\",\"to\":\"nobody\",\"args\":{}}");
    submit(g, "{\"id\":\"d\",\"to\":\"echo\",\"args\":{},\"after\":[\"a\",\"c\",\"c\"]}");
    run_until(base, &s, 2, 2000);
    CHECK(fbs_status(&s, "c", NULL) == FB_REJECTED);
    CHECK_MSG(fbs_status(&s, "d", &err) == FB_CANCELLED, "d: %d %s", fbs_status(&s, "d", NULL), err);
    CHECK(fbs_count(&s, "d") == 1);
    CHECK(exec_group_open(g) == 0);

    rig_close(&r);
}

/* A call submitted again under an id already taken is rejected; that
 * rejection is the duplicate's, not the first call's: calls that listed the
 * id in `after` wait for the first call (they used to be cancelled, "dependency
 * 'a' ended rejected", while 'a' went on to end ok). */
static void test_duplicate_id_leaves_dependents_alone(void)
{
    struct rig r;
    if (rig_open(&r, ECHO_POOL))
        return;
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;
    submit(g, "{\"id\":\"a\",\"to\":\"echo\",\"args\":{\"x\":1}}");
    submit(g, "{\"id\":\"a\",\"to\":\"echo\",\"args\":{\"x\":2}}");
    submit(g, "{\"id\":\"b\",\"to\":\"echo\",\"args\":{\"y\":\"{{a.x}}\"},\"after\":[\"a\"]}");
    run_until(base, &s, 3, 2000);
    CHECK(s.n == 3);
    CHECK(fbs_count(&s, "a") == 2);
    const char *err;
    int st = fbs_status(&s, "b", &err);
    CHECK_MSG(st == FB_OK, "b after the first 'a': %s (%s)", st >= 0 ? fb_status_str(st) : "none", err);
    CHECK(exec_group_call_status(g, "a") == FB_OK);
    CHECK(exec_group_open(g) == 0);
    rig_close(&r);
}

/* A half-open breaker's probe that is cancelled lets the next call probe.
 * A probe that waited in the agent's queue and was cancelled there used to
 * stay marked in flight, and every later call failed "circuit open" for
 * good (call_abort); since queued calls are refused once the breaker opens
 * (agent_pump), a probe finds a free slot and runs, and this checks the
 * same outcome for one cancelled while it runs. */
static void test_breaker_probe_cancelled(void)
{
    struct mock_agent *m = mock_agent_start(0);
    CHECK(m != NULL);
    if (!m)
        return;
    char pool[512];
    snprintf(pool, sizeof pool,
             "{\"agents\":[{\"name\":\"brk\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:%d/\","
             "\"max_concurrency\":2,\"retries\":0,\"timeout_ms\":5000,"
             "\"breaker_failures\":1,\"breaker_open_ms\":50}]}", mock_agent_port(m));
    struct rig r;
    if (rig_open(&r, pool)) {
        mock_agent_stop(m);
        return;
    }
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;

    /* a and b take both slots, q waits; b's 503 opens the breaker. */
    submit(g, "{\"id\":\"a\",\"to\":\"brk\",\"args\":{\"sleep_ms\":3000}}");
    submit(g, "{\"id\":\"b\",\"to\":\"brk\",\"args\":{\"fault\":\"5xx\"}}");
    submit(g, "{\"id\":\"q\",\"to\":\"brk\",\"args\":{\"sleep_ms\":3000}}");
    run_until(base, &s, 1, 2000);
    CHECK(fbs_status(&s, "b", NULL) == FB_EXEC_ERROR);
    struct exec_agent_stats as;
    CHECK(exec_agent_count(r.ex) == 1 && exec_get_agent_stats(r.ex, 0, &as) == PS_OK);
    CHECK_MSG(as.breaker == BREAKER_OPEN && as.running == 1 && !strcmp(as.name, "brk"),
              "after b's 503: breaker %d, running %d", (int)as.breaker, as.running);
    CHECK(exec_get_agent_stats(r.ex, 1, &as) == PS_EINVAL);
    run_for(base, 120);   /* the breaker is half-open now */
    CHECK(exec_get_agent_stats(r.ex, 0, &as) == PS_OK && as.breaker == BREAKER_HALF_OPEN);

    /* p probes, and is cancelled with the rest before it ends. */
    submit(g, "{\"id\":\"p\",\"to\":\"brk\",\"args\":{\"sleep_ms\":3000}}");
    run_for(base, 20);
    CHECK(exec_group_call_status(g, "p") == -2);
    exec_group_cancel_all(g, "task ended");
    CHECK(fbs_status(&s, "p", NULL) == FB_CANCELLED);

    /* The agent is up: the next call probes it and ends ok. */
    s.n = 0;
    submit(g, "{\"id\":\"n\",\"to\":\"brk\",\"args\":{}}");
    run_until(base, &s, 1, 2000);
    const char *err;
    int st = fbs_status(&s, "n", &err);
    CHECK_MSG(st == FB_OK, "call after the cancelled probe: %s (%s)", st >= 0 ? fb_status_str(st) : "none", err);
    /* its numbers: b failed; q, queued when the breaker opened, refused by
     * it; a and p cancelled; n ok.  Four reached the agent: a, b, p, n. */
    CHECK(exec_get_agent_stats(r.ex, 0, &as) == PS_OK);
    CHECK_MSG(as.breaker == BREAKER_CLOSED && as.running == 0 && as.queued == 0, "breaker %d running %d queued %d",
              (int)as.breaker, as.running, as.queued);
    CHECK_MSG(as.calls[FB_OK] == 1 && as.calls[FB_EXEC_ERROR] == 2 && as.calls[FB_CANCELLED] == 2 &&
              as.calls[FB_TIMEOUT] == 0 && as.breaker_rejects == 1, "ok %lld exec_error %lld cancelled %lld rejects %lld",
              (long long)as.calls[FB_OK], (long long)as.calls[FB_EXEC_ERROR], (long long)as.calls[FB_CANCELLED],
              (long long)as.breaker_rejects);
    CHECK_MSG(as.attempts == 4 && as.retries == 0 && as.duration_s.count == 4, "attempts %lld durations %llu",
              (long long)as.attempts, (unsigned long long)as.duration_s.count);
    CHECK(exec_unknown_agent_calls(r.ex) == 0);

    rig_close(&r);
    mock_agent_stop(m);
}

/* A call found bad at submit is rejected on the next loop turn; cancelled
 * before that turn (the task ended), it ends cancelled, once, and its
 * rejection message is not leaked (LeakSanitizer). */
static void test_cancel_before_rejection_is_delivered(void)
{
    struct rig r;
    if (rig_open(&r, ECHO_POOL))
        return;
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;
    submit(g, "{\"id\":\"u\",\"to\":\"nobody\",\"args\":{}}");
    submit(g, "{\"id\":\"v\",\"to\":\"echo\",\"args\":{},\"after\":[\"missing\"]}");
    exec_group_cancel_all(g, "task ended");
    run_for(base, 50);
    CHECK(s.n == 2 && fbs_count(&s, "u") == 1 && fbs_count(&s, "v") == 1);
    CHECK(fbs_status(&s, "u", NULL) == FB_CANCELLED && fbs_status(&s, "v", NULL) == FB_CANCELLED);
    CHECK(exec_group_open(g) == 0);
    rig_close(&r);
}

/* Calls that wait in an agent's queue when its breaker opens fail fast like
 * calls made after it opened: none reaches the agent while it is open (they
 * used to be sent one by one as slots freed, each waiting out its timeout
 * on an agent already known to be down). */
static void test_breaker_open_fails_queued_calls(void)
{
    struct mock_agent *m = mock_agent_start(0);
    CHECK(m != NULL);
    if (!m)
        return;
    char pool[512];
    snprintf(pool, sizeof pool,
             "{\"agents\":[{\"name\":\"one\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:%d/\","
             "\"max_concurrency\":1,\"retries\":0,\"timeout_ms\":200,"
             "\"breaker_failures\":1,\"breaker_open_ms\":60000}]}", mock_agent_port(m));
    struct rig r;
    if (rig_open(&r, pool)) {
        mock_agent_stop(m);
        return;
    }
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;
    submit(g, "{\"id\":\"h\",\"to\":\"one\",\"args\":{\"fault\":\"hang\"}}");
    submit(g, "{\"id\":\"q1\",\"to\":\"one\",\"args\":{\"fault\":\"hang\"}}");
    submit(g, "{\"id\":\"q2\",\"to\":\"one\",\"args\":{}}");
    run_until(base, &s, 3, 3000);
    CHECK(fbs_status(&s, "h", NULL) == FB_TIMEOUT);
    const char *err;
    for (int i = 0; i < 2; i++) {
        const char *id = i ? "q2" : "q1";
        int st = fbs_status(&s, id, &err);
        CHECK_MSG(st == FB_EXEC_ERROR && strstr(err, "circuit open"), "%s queued when the breaker opened: %s (%s)",
                  id, st >= 0 ? fb_status_str(st) : "none", err);
    }
    CHECK_MSG(mock_agent_requests(m) == 1, "%lld requests reached the agent", (long long)mock_agent_requests(m));
    rig_close(&r);
    mock_agent_stop(m);
}

/* "{{a.list.k}}" on an array member selects element k, where k is a
 * decimal index; any other key names no member and the reference is
 * rejected (a key such as "x" or "1x" used to be read by atoi(), so
 * "{{a.list.x}}" silently became the first element). */
static void test_ref_into_an_array_needs_an_index(void)
{
    struct rig r;
    if (rig_open(&r, ECHO_POOL))
        return;
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;
    submit(g, "{\"id\":\"a\",\"to\":\"echo\",\"args\":{\"list\":[7,8]}}");
    submit(g, "{\"id\":\"ok1\",\"to\":\"echo\",\"args\":{\"v\":\"{{a.list.1}}\"},\"after\":[\"a\"]}");
    submit(g, "{\"id\":\"x\",\"to\":\"echo\",\"args\":{\"v\":\"{{a.list.x}}\"},\"after\":[\"a\"]}");
    submit(g, "{\"id\":\"x1\",\"to\":\"echo\",\"args\":{\"v\":\"{{a.list.1x}}\"},\"after\":[\"a\"]}");
    submit(g, "{\"id\":\"neg\",\"to\":\"echo\",\"args\":{\"v\":\"{{a.list.-1}}\"},\"after\":[\"a\"]}");
    submit(g, "{\"id\":\"big\",\"to\":\"echo\",\"args\":{\"v\":\"{{a.list.4294967297}}\"},\"after\":[\"a\"]}");
    run_until(base, &s, 6, 2000);
    CHECK(fbs_status(&s, "ok1", NULL) == FB_OK);
    const char *ids[] = { "x", "x1", "neg", "big" };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        const char *err;
        int st = fbs_status(&s, ids[i], &err);
        CHECK_MSG(st == FB_REJECTED, "%s: %s (%s)", ids[i], st >= 0 ? fb_status_str(st) : "none", err);
    }
    rig_close(&r);
}

/* A plain JSON reply to an MCP request is this call's answer only when it
 * is the response with the call's id (was: any JSON body, so a response to
 * another request was taken as this one's); an error response whose id is
 * null (the server could not read the request) is still reported; in a
 * batch, the element with the id. */
/* An agent's reply must be UTF-8 with no NUL in a string (a raw 0 byte
 * or \u0000: cJSON would cut the string there); an escaped backslash
 * followed by the text u0000 is not a NUL. */
static void test_agent_reply_text_is_strict(void)
{
    static const struct { const char *body; size_t len; int ok; const char *why; } cases[] = {
        { "{\"v\":\"caf\xc3\xa9\"}", 0, 1, NULL },
        { "{\"v\":\"a\xff\"}", 0, 0, "invalid UTF-8 at byte 7" },
        { "{\"v\":\"\xed\xa0\x80\"}", 0, 0, "invalid UTF-8 at byte 6" },        /* a surrogate */
        { "{\"v\":\"\xc0\xaf\"}", 0, 0, "invalid UTF-8" },                     /* overlong */
        { "{\"v\":\"a\\u0000b\"}", 0, 0, "NUL character (\\u0000) in a string at byte 7" },
        { "{\"v\":\"a\0b\"}", 10, 0, "NUL character" },
        { "{\"v\":1}\0", 8, 0, "a 0 byte at byte 7" },
        { "{\"v\":\"a\\\\u0000b\"}", 0, 1, NULL },      /* backslash, then the text u0000 */
        { "{\"v\\u0000\":1}", 0, 0, "NUL character" },     /* in a key too */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].body);
        cJSON *res = NULL;
        char err[256];
        enum fb_status st = http_json_reply(cases[i].body, len, &res, err, sizeof err);
        if (cases[i].ok)
            CHECK_MSG(st == FB_OK && res, "case %zu: %s", i, err);
        else
            CHECK_MSG(st == FB_PARSE_ERROR && strstr(err, cases[i].why), "case %zu: %d %s", i, (int)st, err);
        cJSON_Delete(res);
    }
}

static void test_mcp_json_reply_must_carry_the_call_id(void)
{
    char err[512];
    cJSON *res = NULL;
    const char *other = "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"not yours\"}]}}";
    cJSON *m = mcp_reply_parse(other, strlen(other), 1, NULL);
    CHECK_MSG(!m, "a response to request 2 was taken as request 1's");
    cJSON_Delete(m);
    const char *mine = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"7\"}]}}";
    m = mcp_reply_parse(mine, strlen(mine), 1, NULL);
    CHECK(m && mcp_reply_result(m, &res, err, sizeof err) == FB_OK && cJSON_IsString(res) &&
          !strcmp(res->valuestring, "7"));
    cJSON_Delete(res);
    cJSON_Delete(m);
    const char *batch = "[{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}},"
                        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"b\"}]}}]";
    m = mcp_reply_parse(batch, strlen(batch), 1, NULL);
    res = NULL;
    CHECK(m && mcp_reply_result(m, &res, err, sizeof err) == FB_OK && cJSON_IsString(res) &&
          !strcmp(res->valuestring, "b"));
    cJSON_Delete(res);
    cJSON_Delete(m);
    const char *unread = "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}";
    m = mcp_reply_parse(unread, strlen(unread), 1, NULL);
    res = NULL;
    CHECK(m && mcp_reply_result(m, &res, err, sizeof err) == FB_EXEC_ERROR && !res &&
          !strcmp(err, "mcp error -32700: Parse error"));
    cJSON_Delete(m);
    const char *const none[] = {
        "{\"jsonrpc\":\"2.0\",\"result\":{}}",                        /* a result with no id */
        "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}", /* a notification */
        "[{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}]",              /* a batch without ours */
        "[]", "7", "\"text\"",
        /* "error": null is no error: a result without id is still not ours */
        "{\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}}",
        /* our id on a message that is no response (a server's request) */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"sampling/createMessage\",\"params\":{}}",
    };
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        m = mcp_reply_parse(none[i], strlen(none[i]), 1, NULL);
        CHECK_MSG(!m, "taken as the answer: %s", none[i]);
        cJSON_Delete(m);
    }
}

/* A whole-string reference ("{{a.value}}", nothing around it) becomes the
 * referenced JSON value, except where the agent's input_schema at that
 * argument admits a string but not the value's type: there it becomes the
 * value's text, as "{{a.value}} " would (exec_result_text).  The calculator's
 * `expression` given "{{a.value}}" with a number result was `rejected`
 * ("expected string, got number") before. */
#define REF_POOL                                                                              \
    "{\"agents\":[{\"name\":\"calculator\",\"kind\":\"builtin\"},"                            \
    "{\"name\":\"echo\",\"kind\":\"builtin\",\"tool\":\"echo\"},"                             \
    "{\"name\":\"typed\",\"kind\":\"builtin\",\"tool\":\"echo\",\"input_schema\":{"           \
    "\"type\":\"object\",\"properties\":{"                                                    \
    "\"s\":{\"type\":\"string\"},\"n\":{\"type\":\"number\"},\"free\":{},"                    \
    "\"i\":{\"type\":\"integer\"},"                                                           \
    "\"sn\":{\"type\":[\"string\",\"null\"]},"                                                \
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"                          \
    "\"deep\":{\"type\":\"object\",\"properties\":{\"inner\":{\"type\":\"object\","           \
    "\"properties\":{\"q\":{\"type\":\"string\"}}}}},"                                        \
    "\"pick\":{\"enum\":[\"42\",\"x\"]},"                                                     \
    "\"alt\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"boolean\"}]},"                     \
    "\"open\":{\"anyOf\":[{\"type\":\"string\"},{}]},"                                        \
    "\"u\":{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"}},"    \
    "\"required\":[\"q\"],\"additionalProperties\":false},"                                   \
    "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"number\"}},"                      \
    "\"required\":[\"n\"],\"additionalProperties\":false}]}},"                                \
    "\"additionalProperties\":{\"type\":\"string\"}}}]}"

static void test_whole_ref_follows_the_input_schema(void)
{
    struct rig r;
    if (rig_open(&r, REF_POOL))
        return;
    struct event_base *base = r.base;
    struct exec_group *g = r.g;
    struct fbs s = { .base = base };
    r.s = &s;
    submit(g, "{\"id\":\"a\",\"to\":\"calculator\",\"args\":{\"expression\":\"6*7\"}}");
    submit(g, "{\"id\":\"o\",\"to\":\"echo\",\"args\":{\"k\":\"v\",\"n\":2}}");
    submit(g, "{\"id\":\"b\",\"to\":\"echo\",\"args\":{\"t\":true,\"nul\":null,\"half\":2.5,\"list\":[1,2]}}");
    static const struct { const char *id, *to, *args, *want; } cases[] = {
        /* the defect: a number result into the calculator's string `expression` */
        { "calc",     "calculator", "{\"expression\":\"{{a.value}}\"}",       "{\"value\":42}" },
        { "calc_obj", "calculator", "{\"expression\":\"{{a}}\"}",             "{\"value\":42}" },
        { "calc_txt", "calculator", "{\"expression\":\"{{a.value}}+1\"}",     "{\"value\":43}" },
        /* a string position gets exec_result_text's text */
        { "s",        "typed", "{\"s\":\"{{a.value}}\"}",                     "{\"s\":\"42\"}" },
        { "s_space",  "typed", "{\"s\":\"{{a.value}} \"}",                    "{\"s\":\"42 \"}" },
        { "s_obj",    "typed", "{\"s\":\"{{o}}\"}",                           "{\"s\":\"{\\\"k\\\":\\\"v\\\",\\\"n\\\":2}\"}" },
        { "s_list",   "typed", "{\"s\":\"{{b.list}}\"}",                      "{\"s\":\"[1,2]\"}" },
        { "s_elem",   "typed", "{\"s\":\"{{b.list.1}}\"}",                    "{\"s\":\"2\"}" },
        { "s_bool",   "typed", "{\"s\":\"{{b.t}}\"}",                         "{\"s\":\"true\"}" },
        { "s_str",    "typed", "{\"s\":\"{{o.k}}\"}",                         "{\"s\":\"v\"}" },
        /* a position that admits the value's type, or says nothing, keeps the JSON value */
        { "n",        "typed", "{\"n\":\"{{a.value}}\"}",                     "{\"n\":42}" },
        { "free",     "typed", "{\"free\":\"{{a.value}}\"}",                  "{\"free\":42}" },
        { "plain",    "echo",  "{\"v\":\"{{a.value}}\",\"w\":\"{{o}}\"}",     "{\"v\":42,\"w\":{\"k\":\"v\",\"n\":2}}" },
        { "open",     "typed", "{\"open\":\"{{a.value}}\"}",                  "{\"open\":42}" },
        /* a list of types */
        { "sn",       "typed", "{\"sn\":\"{{a.value}}\"}",                    "{\"sn\":\"42\"}" },
        { "sn_null",  "typed", "{\"sn\":\"{{b.nul}}\"}",                      "{\"sn\":null}" },
        /* arrays of strings, nested objects, additionalProperties */
        { "tags",     "typed", "{\"tags\":[\"{{a.value}}\",\"x\",\"{{b.t}}\",\"{{b.half}}\"]}",
                                                                              "{\"tags\":[\"42\",\"x\",\"true\",\"2.5\"]}" },
        { "deep",     "typed", "{\"deep\":{\"inner\":{\"q\":\"{{b.half}}\"}}}", "{\"deep\":{\"inner\":{\"q\":\"2.5\"}}}" },
        { "extra",    "typed", "{\"extra\":\"{{a.value}}\"}",                 "{\"extra\":\"42\"}" },
        /* enum of strings; anyOf / oneOf */
        { "pick",     "typed", "{\"pick\":\"{{a.value}}\"}",                  "{\"pick\":\"42\"}" },
        { "alt",      "typed", "{\"alt\":\"{{a.value}}\"}",                   "{\"alt\":\"42\"}" },
        { "alt_bool", "typed", "{\"alt\":\"{{b.t}}\"}",                       "{\"alt\":true}" },
        { "u",        "typed", "{\"u\":{\"q\":\"{{a.value}}\"}}",             "{\"u\":{\"q\":\"42\"}}" },
        { "u_n",      "typed", "{\"u\":{\"n\":\"{{a.value}}\"}}",             "{\"u\":{\"n\":42}}" },
    };
    size_t nc = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < nc; i++) {
        char call[512];
        snprintf(call, sizeof call, "{\"id\":\"%s\",\"to\":\"%s\",\"args\":%s,\"after\":[\"a\",\"o\",\"b\"]}",
                 cases[i].id, cases[i].to, cases[i].args);
        submit(g, call);
    }
    /* a string into a number position stays a string: rejected as before */
    submit(g, "{\"id\":\"n_str\",\"to\":\"typed\",\"args\":{\"n\":\"{{o.k}}\"},\"after\":[\"o\"]}");
    /* 2.5 into an integer position that admits no string: kept, rejected */
    submit(g, "{\"id\":\"i_half\",\"to\":\"typed\",\"args\":{\"i\":\"{{b.half}}\"},\"after\":[\"b\"]}");
    run_until(base, &s, 3 + (int)nc + 2, 3000);
    CHECK(s.n == 3 + (int)nc + 2);
    for (size_t i = 0; i < nc; i++) {
        const char *err;
        int st = fbs_status(&s, cases[i].id, &err);
        CHECK_MSG(st == FB_OK && !strcmp(fbs_result(&s, cases[i].id), cases[i].want),
                  "%s %s: %s (%s) result %s, want %s", cases[i].to, cases[i].args,
                  st >= 0 ? fb_status_str(st) : "none", err, fbs_result(&s, cases[i].id), cases[i].want);
    }
    const char *err;
    CHECK_MSG(fbs_status(&s, "n_str", &err) == FB_REJECTED && strstr(err, "args.n: expected number, got string"),
              "n_str: %s", err);
    CHECK_MSG(fbs_status(&s, "i_half", &err) == FB_REJECTED && strstr(err, "args.i: expected integer, got number"),
              "i_half: %s", err);
    rig_close(&r);
}

int main(void)
{
    test_after_names_a_call_twice();
    test_duplicate_id_leaves_dependents_alone();
    test_agent_reply_text_is_strict();
    test_breaker_probe_cancelled();
    test_cancel_before_rejection_is_delivered();
    test_breaker_open_fails_queued_calls();
    test_ref_into_an_array_needs_an_index();
    test_whole_ref_follows_the_input_schema();
    test_mcp_json_reply_must_carry_the_call_id();
    TEST_DONE();
}
