/* test_orch_exec.c - the orchestrator end to end in-process: registry
 * errors, schema validation, calculator, incremental action parser, and
 * scripted tasks against the loopback mock agent (parallel fan-out, DAG
 * critical path, every fault status, cancel with late results ignored,
 * 200 concurrent tasks).  Runs under ASan in scripts/test. */
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/action.h"
#include "orchestrator/builtin.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"
#include "orchestrator/jschema.h"
#include "orchestrator/mock_agent.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"
#include "test_util.h"

static void test_registry_errors(void)
{
    struct registry *r;
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"warp\"}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "agents[0].kind") != NULL);
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"http-json\"}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "agents[0].url") != NULL);
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"builtin\",\"tool\":\"calculator\",\"timeout_ms\":-5}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "agents[0].timeout_ms") != NULL);
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"builtin\",\"tool\":\"calculator\",\"bogus\":1}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "agents[0].bogus") != NULL);
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"http-json\",\"url\":\"http://x\",\"input_schema\":{\"type\":\"object\",\"patternProperties\":{}}}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "input_schema") != NULL);
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"mcp-stdio\"}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "agents[0].command") != NULL);
    CHECK(registry_load_json("not json", "x.json", &r) == PS_EFORMAT);
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"a\",\"kind\":\"builtin\",\"tool\":\"calculator\"},{\"name\":\"a\",\"kind\":\"builtin\",\"tool\":\"time\"}]}", "x.json", &r) == PS_EINVAL);
    CHECK(strstr(ps_error_last(), "duplicate") != NULL);
    CHECK(registry_load_file("configs/agents.default.json", &r) == PS_OK);
    CHECK(registry_find(r, "calculator") != NULL);
    registry_free(r);
}

static void test_schema_and_calc(void)
{
    char err[256];
    cJSON *s = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1},"
                           "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":2},"
                           "\"mode\":{\"enum\":[\"a\",\"b\"]}},\"required\":[\"n\"],\"additionalProperties\":false}");
    CHECK(jschema_check(s, "schema", err, sizeof err) == PS_OK);
    const char *good[] = { "{\"n\":1}", "{\"n\":3,\"tags\":[\"x\"],\"mode\":\"b\"}" };
    const char *bad[] = { "{}", "{\"n\":0}", "{\"n\":1.5}", "{\"n\":1,\"tags\":[1]}", "{\"n\":1,\"x\":1}",
                          "{\"n\":1,\"mode\":\"c\"}", "{\"n\":1,\"tags\":[\"a\",\"b\",\"c\"]}", "[1]" };
    for (size_t i = 0; i < 2; i++) {
        cJSON *v = cJSON_Parse(good[i]);
        CHECK_MSG(jschema_validate(s, v, "args", err, sizeof err) == PS_OK, "%s: %s", good[i], err);
        cJSON_Delete(v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON *v = cJSON_Parse(bad[i]);
        CHECK_MSG(jschema_validate(s, v, "args", err, sizeof err) == PS_EINVAL, "%s accepted", bad[i]);
        cJSON_Delete(v);
    }
    cJSON_Delete(s);
    double x;
    CHECK(builtin_calc("2+3*4", &x, err, sizeof err) == PS_OK && x == 14);
    CHECK(builtin_calc("-(2^3^2) + sqrt(16) % 3", &x, err, sizeof err) == PS_OK && x == -511);
    CHECK(builtin_calc("max(2, 7) / 2", &x, err, sizeof err) == PS_OK && x == 3.5);
    CHECK(builtin_calc("1/0", &x, err, sizeof err) == PS_EINVAL);
    CHECK(builtin_calc("system(\"rm\")", &x, err, sizeof err) == PS_EINVAL);
    CHECK(builtin_calc("((((1", &x, err, sizeof err) == PS_EINVAL);
    char deep[400];
    memset(deep, '(', sizeof deep - 1);
    deep[sizeof deep - 1] = 0;
    CHECK(builtin_calc(deep, &x, err, sizeof err) == PS_EINVAL);
}

static int n_closed;
static char closed_ids[8][16];
static void on_closed(void *ud, const cJSON *call)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
    if (n_closed < 8 && cJSON_IsString(id))
        snprintf(closed_ids[n_closed], sizeof closed_ids[0], "%s", id->valuestring);
    n_closed++;
}

static void test_action_parser(void)
{
    const char *text = "{\"calls\":[{\"id\":\"c1\",\"to\":\"a\",\"args\":{\"q\":\"} ] {\\\"\"}},"
                       "{\"id\":\"c2\",\"to\":\"b\",\"args\":{\"n\":[1,{\"x\":2}]},\"after\":[\"c1\"]}],\"thought\":\"x\"}";
    struct action_parser *p = action_parser_new(on_closed, NULL);
    n_closed = 0;
    size_t n = strlen(text);
    size_t first_close = 0;
    for (size_t i = 0; i < n; i++) {   /* byte by byte, like a decoder */
        CHECK(action_parser_feed(p, text + i, 1) == PS_OK);
        if (n_closed == 1 && !first_close)
            first_close = i;
    }
    CHECK(n_closed == 2);
    CHECK(!strcmp(closed_ids[0], "c1") && !strcmp(closed_ids[1], "c2"));
    CHECK(first_close > 0 && first_close < n / 2);   /* c1 emitted long before the end */
    cJSON *a;
    CHECK(action_parser_finish(p, &a) == PS_OK);
    cJSON_Delete(a);
    action_parser_free(p);
    const char *bad[] = { "[1]", "{\"calls\":3}", "{\"final\":{}}", "{\"launch\":1}", "{\"calls\":[}" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = action_parser_new(on_closed, NULL);
        int st = action_parser_feed(p, bad[i], strlen(bad[i]));
        if (st == PS_OK)
            st = action_parser_finish(p, &a);
        CHECK_MSG(st != PS_OK, "accepted %s", bad[i]);
        action_parser_free(p);
    }
}

/* ---- scripted tasks on the loopback mock agent ------------------------------------ */

struct run {
    struct event_base *base;
    int                done, expect;
    int                late_after_terminal;
    int                terminal_seen;
};

static void on_done(void *ud, struct orch_task *t)
{
    struct run *r = ud;
    if (++r->done == r->expect)
        event_base_loopbreak(r->base);
}

static void on_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct run *r = ud;
    if (!strcmp(ev->type, "task.final") || !strcmp(ev->type, "task.error"))
        r->terminal_seen++;
    else if (r->terminal_seen && !strcmp(ev->type, "call.result"))
        r->late_after_terminal++;
}

static const char *pool =
    "{\"agents\":["
    "{\"name\":\"mock\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:%d/a\",\"timeout_ms\":600,"
    "\"max_concurrency\":4096,\"retries\":2,\"backoff_ms\":10,\"breaker_failures\":0},"
    "{\"name\":\"one\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:%d/b\",\"timeout_ms\":2000,"
    "\"max_concurrency\":1,\"retries\":0},"
    "{\"name\":\"brk\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:%d/c\",\"timeout_ms\":2000,"
    "\"max_concurrency\":8,\"retries\":0,\"breaker_failures\":2,\"breaker_open_ms\":60000},"
    "{\"name\":\"calculator\",\"kind\":\"builtin\"}]}";

struct ctx {
    struct mock_agent *mock;
    struct registry   *reg;
    struct event_base *base;
    struct orch       *orch;
    struct run         run;
};

static int ctx_open(struct ctx *c)
{
    memset(c, 0, sizeof *c);
    c->mock = mock_agent_start(0);
    if (!c->mock)
        return -1;
    char buf[2048];
    int port = mock_agent_port(c->mock);
    snprintf(buf, sizeof buf, pool, port, port, port);
    if (registry_load_json(buf, "pool", &c->reg))
        return -1;
    c->base = event_base_new();
    struct exec_config ec = { .seed = 42 };
    c->orch = orch_create(c->base, c->reg, &ec, NULL);
    c->run.base = c->base;
    orch_set_done_cb(c->orch, on_done, &c->run);
    return c->orch ? 0 : -1;
}

static void ctx_close(struct ctx *c)
{
    orch_destroy(c->orch);
    event_base_free(c->base);
    registry_free(c->reg);
    mock_agent_stop(c->mock);
}

static struct orch_task *submit(struct ctx *c, const char *json)
{
    cJSON *req = cJSON_Parse(json);
    struct orch_task *t = NULL;
    int st = orch_task_submit(c->orch, req, NULL, &t);
    CHECK_MSG(st == PS_OK, "submit: %s", ps_error_last());
    cJSON_Delete(req);
    if (t) {
        c->run.expect++;
        orch_task_subscribe(t, 0, on_event, &c->run);
    }
    return t;
}

static double run_loop(struct ctx *c)
{
    int64_t t0 = orch_now_ns();
    struct timeval guard = { 20, 0 };
    event_base_loopexit(c->base, &guard);   /* never hang the test */
    if (c->run.done < c->run.expect)
        event_base_dispatch(c->base);
    return (double)(orch_now_ns() - t0) / 1e9;
}

static const char *call_status(struct orch_task *t, const char *id)
{
    static char buf[32];
    cJSON *s = orch_task_summary(t);
    const cJSON *e;
    buf[0] = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(s, "calls")) {
        const cJSON *i = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!strcmp(i->valuestring, id))
            snprintf(buf, sizeof buf, "%s", cJSON_GetObjectItemCaseSensitive(e, "status")->valuestring);
    }
    cJSON_Delete(s);
    return buf;
}

static void test_parallel_and_dag(void)
{
    struct ctx c;
    CHECK(ctx_open(&c) == 0);
    char script[4096];
    int n = snprintf(script, sizeof script, "{\"input\":\"fan out\",\"script\":[{\"calls\":[");
    for (int i = 1; i <= 8; i++)
        n += snprintf(script + n, sizeof script - n, "%s{\"id\":\"c%d\",\"to\":\"mock\",\"args\":{\"sleep_ms\":400}}",
                      i > 1 ? "," : "", i);
    snprintf(script + n, sizeof script - n,
             "]},{\"final\":{\"answer\":\"ok\",\"uses\":[\"c1\",\"c2\",\"c3\",\"c4\",\"c5\",\"c6\",\"c7\",\"c8\"]}}]}");
    struct orch_task *t = submit(&c, script);
    double wall = run_loop(&c);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(wall >= 0.39 && wall < 0.8, "8 x 400 ms took %.3f s", wall);
    printf("parallel: 8 x 400 ms calls in %.3f s\n", wall);

    /* a(300) -> b(300) beside c(300): critical path 600 ms, not 900. */
    c.run.done = c.run.expect = 0;
    t = submit(&c, "{\"input\":\"dag\",\"script\":[{\"calls\":["
                   "{\"id\":\"a\",\"to\":\"mock\",\"args\":{\"sleep_ms\":300,\"q\":\"x\"}},"
                   "{\"id\":\"b\",\"to\":\"mock\",\"args\":{\"sleep_ms\":300,\"from_a\":\"{{a.args.q}}\"},\"after\":[\"a\"]},"
                   "{\"id\":\"c\",\"to\":\"mock\",\"args\":{\"sleep_ms\":300}}]},"
                   "{\"final\":{\"answer\":\"{{b.args.from_a}}\",\"uses\":[\"b\",\"c\"]}}]}");
    wall = run_loop(&c);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    CHECK_MSG(wall >= 0.59 && wall < 0.85, "dag took %.3f s", wall);
    cJSON *s = orch_task_summary(t);
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(s, "output");
    CHECK(cJSON_IsString(out) && !strcmp(out->valuestring, "x"));
    cJSON_Delete(s);
    printf("dag: a->b beside c (300 ms each) in %.3f s\n", wall);
    ctx_close(&c);
}

static void test_faults(void)
{
    struct ctx c;
    CHECK(ctx_open(&c) == 0);
    struct orch_task *t = submit(&c, "{\"input\":\"faults\",\"script\":[{\"calls\":["
        "{\"id\":\"hang\",\"to\":\"mock\",\"args\":{\"fault\":\"hang\"}},"
        "{\"id\":\"x5\",\"to\":\"mock\",\"args\":{\"fault\":\"5xx\"}},"
        "{\"id\":\"x4\",\"to\":\"mock\",\"args\":{\"fault\":\"4xx\"}},"
        "{\"id\":\"nj\",\"to\":\"mock\",\"args\":{\"fault\":\"nonjson\"}},"
        "{\"id\":\"drop\",\"to\":\"mock\",\"args\":{\"fault\":\"drop\"}},"
        "{\"id\":\"flaky\",\"to\":\"mock\",\"args\":{\"fault\":\"flaky\",\"key\":\"k\",\"fail_times\":2}},"
        "{\"id\":\"slow\",\"to\":\"mock\",\"args\":{\"sleep_ms\":900}},"
        "{\"id\":\"unk\",\"to\":\"nobody\",\"args\":{}},"
        "{\"id\":\"badargs\",\"to\":\"calculator\",\"args\":{\"expr\":\"1\"}},"
        "{\"id\":\"calcerr\",\"to\":\"calculator\",\"args\":{\"expression\":\"1/0\"}},"
        "{\"id\":\"dep\",\"to\":\"mock\",\"args\":{},\"after\":[\"x5\"]},"
        "{\"id\":\"fwd\",\"to\":\"mock\",\"args\":{},\"after\":[\"later\"]}]},"
        "{\"final\":{\"answer\":\"ended\",\"uses\":[\"hang\",\"x5\",\"x4\",\"nj\",\"drop\",\"flaky\",\"slow\",\"dep\"]}}]}");
    double wall = run_loop(&c);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    struct { const char *id, *want; } exp[] = {
        {"hang", "timeout"}, {"x5", "exec_error"}, {"x4", "exec_error"}, {"nj", "parse_error"},
        {"drop", "exec_error"}, {"flaky", "ok"}, {"slow", "timeout"}, {"unk", "rejected"},
        {"badargs", "rejected"}, {"calcerr", "exec_error"}, {"dep", "cancelled"}, {"fwd", "rejected"},
    };
    for (size_t i = 0; i < sizeof exp / sizeof exp[0]; i++) {
        const char *got = call_status(t, exp[i].id);
        CHECK_MSG(!strcmp(got, exp[i].want), "%s: got %s want %s", exp[i].id, got, exp[i].want);
    }
    CHECK_MSG(wall < 1.5, "faults task took %.3f s", wall);

    /* Breaker: two failures open it; the third call fails fast without a request. */
    c.run.done = c.run.expect = 0;
    t = submit(&c, "{\"input\":\"breaker\",\"script\":[{\"calls\":["
                   "{\"id\":\"b1\",\"to\":\"brk\",\"args\":{\"fault\":\"5xx\"}}]},"
                   "{\"calls\":[{\"id\":\"b2\",\"to\":\"brk\",\"args\":{\"fault\":\"5xx\"}}]},"
                   "{\"calls\":[{\"id\":\"b3\",\"to\":\"brk\",\"args\":{}}]},"
                   "{\"final\":{\"answer\":\"x\",\"uses\":[\"b3\"]}}]}");
    int64_t before = mock_agent_requests(c.mock);
    run_loop(&c);
    CHECK(!strcmp(call_status(t, "b3"), "exec_error"));
    CHECK(mock_agent_requests(c.mock) - before == 2);

    /* max_concurrency 1: three 100 ms calls on "one" serialize (>= 300 ms). */
    c.run.done = c.run.expect = 0;
    submit(&c, "{\"input\":\"queue\",\"script\":[{\"calls\":["
               "{\"id\":\"q1\",\"to\":\"one\",\"args\":{\"sleep_ms\":100}},"
               "{\"id\":\"q2\",\"to\":\"one\",\"args\":{\"sleep_ms\":100}},"
               "{\"id\":\"q3\",\"to\":\"one\",\"args\":{\"sleep_ms\":100}}]},"
               "{\"final\":{\"answer\":\"x\",\"uses\":[\"q1\",\"q2\",\"q3\"]}}]}");
    wall = run_loop(&c);
    CHECK_MSG(wall >= 0.29, "queue took %.3f s", wall);

    /* Limits: script without final, max_rounds, deadline, model-driven. */
    c.run.done = c.run.expect = 0;
    struct orch_task *a = submit(&c, "{\"input\":\"x\",\"script\":[{\"wait\":true}]}");
    struct orch_task *b = submit(&c, "{\"input\":\"x\",\"max_rounds\":2,\"script\":[{\"wait\":true},{\"wait\":true},{\"wait\":true}]}");
    struct orch_task *d = submit(&c, "{\"input\":\"x\",\"deadline_ms\":150,\"script\":[{\"calls\":[{\"id\":\"h\",\"to\":\"mock\",\"args\":{\"fault\":\"hang\"}}]},{\"final\":{\"answer\":1,\"uses\":[\"h\"]}}]}");
    struct orch_task *m = submit(&c, "{\"input\":\"x\"}");
    run_loop(&c);
    CHECK(orch_task_status(a) == TASK_FAILED && orch_task_status(b) == TASK_FAILED);
    CHECK(orch_task_status(d) == TASK_FAILED && !strcmp(call_status(d, "h"), "cancelled"));
    cJSON *ms = orch_task_summary(m);
    CHECK(orch_task_status(m) == TASK_FAILED &&
          strstr(cJSON_GetObjectItemCaseSensitive(ms, "error")->valuestring, "need the engine"));
    cJSON_Delete(ms);
    ctx_close(&c);
}

static void on_cancel_timer(evutil_socket_t fd, short what, void *ud)
{
    orch_task_cancel(ud, "test cancel");
}

static void test_cancel(void)
{
    struct ctx c;
    CHECK(ctx_open(&c) == 0);
    struct orch_task *t = submit(&c, "{\"input\":\"cancel me\",\"script\":[{\"calls\":["
        "{\"id\":\"s1\",\"to\":\"mock\",\"args\":{\"sleep_ms\":300}},"
        "{\"id\":\"s2\",\"to\":\"mock\",\"args\":{\"sleep_ms\":300}},"
        "{\"id\":\"s3\",\"to\":\"mock\",\"args\":{\"sleep_ms\":300},\"after\":[\"s1\"]}]},"
        "{\"final\":{\"answer\":\"x\",\"uses\":[\"s1\",\"s2\",\"s3\"]}}]}");
    struct event *ev = evtimer_new(c.base, on_cancel_timer, t);
    struct timeval tv = { 0, 100000 };
    evtimer_add(ev, &tv);
    run_loop(&c);
    CHECK(orch_task_status(t) == TASK_CANCELLED);
    CHECK(!strcmp(call_status(t, "s1"), "cancelled") && !strcmp(call_status(t, "s3"), "cancelled"));
    /* Let the mock's replies (due at 300 ms) come and go: nothing may appear. */
    struct timeval wait = { 0, 400000 };
    event_base_loopexit(c.base, &wait);
    event_base_dispatch(c.base);
    CHECK(c.run.late_after_terminal == 0);
    struct exec_stats st;
    exec_get_stats(orch_executor(c.orch), &st);
    CHECK(st.running == 0 && st.http_active == 0);
    event_free(ev);
    ctx_close(&c);
}

/* Events print integral numbers through a fast path (task.c: raw digits
 * instead of cJSON's sprintf + sscanf): the text must be what cJSON prints,
 * and the ledger the next calls read must keep real numbers. */
struct captured {
    char result[1024];
    char dispatched[1024];
    char final[4096];
};

static void on_capture(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct captured *cap = ud;
    if (!strcmp(ev->type, "call.result") && !cap->result[0])
        snprintf(cap->result, sizeof cap->result, "%s", ev->data);
    if (!strcmp(ev->type, "call.dispatched") && !cap->dispatched[0])
        snprintf(cap->dispatched, sizeof cap->dispatched, "%s", ev->data);
    if (!strcmp(ev->type, "task.final"))
        snprintf(cap->final, sizeof cap->final, "%s", ev->data);
}

static void test_event_numbers(void)
{
    struct ctx c;
    CHECK(ctx_open(&c) == 0);
    struct captured cap = {{0}, {0}, {0}};
    struct orch_task *t = submit(&c, "{\"input\":\"numbers\",\"script\":[{\"calls\":["
        "{\"id\":\"a\",\"to\":\"mock\",\"args\":{\"sleep_ms\":1,\"neg\":-12,\"f\":1.5,\"big\":1e20,"
        "\"z\":0,\"m\":123456789012,\"e\":-0.25}},"
        "{\"id\":\"b\",\"to\":\"calculator\",\"args\":{\"expression\":\"{{a.args.neg}} * 2\"},\"after\":[\"a\"]}]},"
        "{\"final\":{\"answer\":\"{{a.args.m}} {{b}}\",\"uses\":[\"a\",\"b\"]}}]}");
    if (t)
        orch_task_subscribe(t, 0, on_capture, &cap);
    run_loop(&c);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED);
    const char *args = "{\"sleep_ms\":1,\"neg\":-12,\"f\":1.5,\"big\":1e+20,\"z\":0,\"m\":123456789012,\"e\":-0.25}";
    CHECK_MSG(strstr(cap.result, args) != NULL, "call.result: %s", cap.result);
    CHECK_MSG(strstr(cap.dispatched, args) != NULL, "call.dispatched: %s", cap.dispatched);
    CHECK_MSG(strstr(cap.result, "\"ms\":") && strstr(cap.result, "\"attempts\":1,"), "call.result: %s", cap.result);
    cJSON *s = t ? orch_task_summary(t) : NULL;
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(s, "output");
    CHECK_MSG(cJSON_IsString(out) && !strcmp(out->valuestring, "123456789012 -24"), "output %s",
              cJSON_IsString(out) ? out->valuestring : "?");
    const cJSON *call0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(s, "calls"), 0);
    const cJSON *neg = exec_json_path(cJSON_GetObjectItemCaseSensitive(call0, "result"), "args.neg");
    CHECK(cJSON_IsNumber(neg) && neg->valuedouble == -12);
    /* task.final is printed straight from the ledger (task.c summary_print):
     * the summary's own text, then "task" and "t_ms" */
    char *st = s ? cJSON_PrintUnformatted(s) : NULL;
    CHECK(st && strlen(st) > 2);
    if (st && strlen(st) > 2) {
        st[strlen(st) - 1] = 0;
        CHECK_MSG(!strncmp(cap.final, st, strlen(st)) && !strncmp(cap.final + strlen(st), ",\"task\":\"", 9),
                  "\n summary %s}\n event   %s", st, cap.final);
    }
    free(st);
    cJSON_Delete(s);
    ctx_close(&c);
}

static void test_many_tasks(void)
{
    struct ctx c;
    CHECK(ctx_open(&c) == 0);
    struct orch_task *ts[200];
    for (int i = 0; i < 200; i++)
        ts[i] = submit(&c, "{\"input\":\"many\",\"script\":[{\"calls\":["
                           "{\"id\":\"a\",\"to\":\"mock\",\"args\":{\"sleep_ms\":50}},"
                           "{\"id\":\"b\",\"to\":\"mock\",\"args\":{\"sleep_ms\":50},\"after\":[\"a\"]},"
                           "{\"id\":\"k\",\"to\":\"calculator\",\"args\":{\"expression\":\"6*7\"}}]},"
                           "{\"final\":{\"answer\":\"{{k}}\",\"uses\":[\"b\",\"k\"]}}]}");
    double wall = run_loop(&c);
    int ok = 0;
    for (int i = 0; i < 200; i++) {
        if (ts[i] && orch_task_status(ts[i]) == TASK_COMPLETED) {
            cJSON *s = orch_task_summary(ts[i]);
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(s, "output");
            ok += cJSON_IsString(o) && !strcmp(o->valuestring, "42");
            cJSON_Delete(s);
        }
    }
    CHECK_MSG(ok == 200, "%d of 200 tasks completed", ok);
    CHECK_MSG(wall < 3.0, "200 tasks took %.3f s", wall);
    printf("200 concurrent scripted tasks in %.3f s\n", wall);
    ctx_close(&c);
}

/* MCP replies (mcp_reply_parse / mcp_reply_result), JSON and SSE. */
static void test_mcp_reply(void)
{
    const char *sse = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\r\n\r\n"
                      "data: {\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata: \"result\":{\"content\":"
                      "[{\"type\":\"text\",\"text\":\"3\"}]}}\r\n\r\n";
    cJSON *m = mcp_reply_parse(sse, strlen(sse), 1), *res = NULL;
    char err[512];
    CHECK(m && cJSON_GetObjectItem(m, "id")->valuedouble == 1);
    CHECK(mcp_reply_result(m, &res, err, sizeof err) == FB_OK && cJSON_IsString(res) &&
          !strcmp(res->valuestring, "3") && !err[0]);
    cJSON_Delete(res);
    cJSON_Delete(m);
    const char *tool_err = "{\"id\":1,\"result\":{\"isError\":true,\"content\":[{\"text\":\"boom\"}]}}";
    m = mcp_reply_parse(tool_err, strlen(tool_err), 1);
    CHECK(mcp_reply_result(m, &res, err, sizeof err) == FB_EXEC_ERROR && !res && !strcmp(err, "tool error: boom"));
    cJSON_Delete(m);
    /* Ids that are not the integer waited for: 1.5 was cast to 1 and taken
     * as the reply to call 1; 1e300 cast to long is undefined behaviour
     * (UBSan aborted the ASan build). */
    const char *frac = "data: {\"id\":1.5,\"result\":{}}\n\n";
    CHECK(!mcp_reply_parse(frac, strlen(frac), 1));
    const char *huge = "data: {\"id\":1e300,\"result\":{}}\n\ndata: {\"id\":-1e300,\"error\":{}}\n\n";
    CHECK(!mcp_reply_parse(huge, strlen(huge), 1));
}

int main(void)
{
    test_registry_errors();
    test_mcp_reply();
    test_schema_and_calc();
    test_action_parser();
    test_parallel_and_dag();
    test_faults();
    test_cancel();
    test_event_numbers();
    test_many_tasks();
    TEST_DONE();
}
