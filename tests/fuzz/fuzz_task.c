/* fuzz_task.c - libFuzzer target for task submissions (the body of
 * POST /v1/tasks): host/orchestrator/task.h orch_task_submit, then the
 * scripted task run on the event loop against builtin tools only
 * (calculator, echo, text_stats: no network), so request validation,
 * script replay (the direct path and the incremental parser), the
 * executor's DAG, {{ref}} rendering and the final answer all see the
 * fuzzer's input.
 *
 * Input: the request body as text (up to its first NUL).  A task runs for
 * at most ~20 ms of loop time, then is cancelled.
 *
 * Aborts when a refused request has no message, a task's event ids are
 * not 1, 2, 3, ... in delivery order, a task ends without exactly one
 * terminal event (task.final for completed, task.error otherwise) as its
 * last, or its summary is missing its id, status or calls, or names a
 * status outside the schema's; or, for a task that records its trajectory,
 * the document cannot be printed (but for lack of memory), is not UTF-8,
 * does not parse, or has a step count other than the task's rounds (unless
 * it says it was truncated) or a scripted step without its completion.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "common/status.h"
#include "orchestrator/json_alloc.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"

static struct event_base *base;
static struct registry *reg;
static struct orch *orch;

struct seen {
    int64_t last_id;
    int     terminal;    /* terminal events seen */
    int     after_end;   /* events after the terminal one */
    int     final;       /* the terminal event was task.final */
};

static void on_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct seen *s = ud;
    (void)t;
    if (ev->id != s->last_id + 1)
        abort();
    s->last_id = ev->id;
    s->after_end += s->terminal > 0;
    if (!strcmp(ev->type, "task.final") || !strcmp(ev->type, "task.error")) {
        s->terminal++;
        s->final = !strcmp(ev->type, "task.final");
    }
}

static void on_done(void *ud, struct orch_task *t)
{
    (void)ud;
    (void)t;
    event_base_loopbreak(base);
}

static void on_guard(evutil_socket_t fd, short what, void *ud)
{
    (void)fd;
    (void)what;
    (void)ud;
    event_base_loopbreak(base);
}

static int setup(void)
{
    static int done;
    if (done)
        return orch != NULL;
    done = 1;
    if (registry_load_json("{\"agents\":["
                           "{\"name\":\"calculator\",\"kind\":\"builtin\"},"
                           "{\"name\":\"echo\",\"kind\":\"builtin\"},"
                           "{\"name\":\"text_stats\",\"kind\":\"builtin\"},"
                           "{\"name\":\"slow_calc\",\"kind\":\"builtin\",\"tool\":\"calculator\",\"max_concurrency\":1}]}",
                           "fuzz", &reg) != PS_OK)
        return 0;
    struct orch_config oc = { .max_rounds = 8, .max_calls = 64, .deadline_ms = 20, .keep_finished = 1,
                              .max_events = 256 };
    if (!(base = event_base_new()) || !(orch = orch_create(base, reg, NULL, &oc)))
        return 0;
    orch_set_done_cb(orch, on_done, NULL);
    return 1;
}

static void check_trajectory(struct orch_task *t)
{
    char *text;
    size_t len;
    int st = orch_task_trajectory_text(t, &text, &len);
    if (st == PS_ENOMEM)
        return;
    if (st != PS_OK || utf8_invalid_at(text, len) != len)
        abort();
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j)
        abort();
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "steps"), *s;
    if (cJSON_GetArraySize(steps) != orch_task_rounds(t) && !cJSON_GetObjectItemCaseSensitive(j, "truncated"))
        abort();
    cJSON_ArrayForEach(s, steps)
        if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(s, "messages")) != 3)
            abort();
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!setup())
        return 0;
    char *text = fuzz_cstr(data, size);
    if (!text)
        return 0;
    cJSON *req = cJSON_Parse(text);
    free(text);
    if (!req)
        return 0;
    /* a task's own deadline is capped so each input ends quickly */
    cJSON *dl = cJSON_GetObjectItemCaseSensitive(req, "deadline_ms");
    if (cJSON_IsNumber(dl) && dl->valuedouble > 20)
        cJSON_SetNumberValue(dl, 20);
    struct orch_task *t = NULL;
    ps_error_clear();
    int st = orch_task_submit(orch, req, NULL, &t);
    cJSON_Delete(req);
    if (st != PS_OK) {
        if (t || !ps_error_last()[0])
            abort();
        return 0;
    }
    if (!t)
        abort();
    struct seen s = { 0 };
    struct orch_sub *sub = orch_task_subscribe(t, 0, on_event, &s);
    if (orch_task_status(t) == TASK_RUNNING) {
        /* this input's own time limit, removed after it: a pending
         * loopexit would cut a later input short */
        struct event *guard = evtimer_new(base, on_guard, NULL);
        struct timeval tv = { 0, 40000 };
        if (guard && !evtimer_add(guard, &tv))
            event_base_dispatch(base);
        if (guard)
            event_free(guard);
    }
    if (orch_task_status(t) == TASK_RUNNING)
        orch_task_cancel(t, "fuzz: out of time");
    if (sub && (s.terminal != 1 || s.after_end || s.final != (orch_task_status(t) == TASK_COMPLETED)))
        abort();
    cJSON *sum = orch_task_summary(t);
    if (sum) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(sum, "id");
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(sum, "status");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(sum, "calls");
        if (!cJSON_IsString(id) || !cJSON_IsString(status) || !cJSON_IsArray(calls))
            abort();
        if (strcmp(status->valuestring, "completed") && strcmp(status->valuestring, "failed") &&
            strcmp(status->valuestring, "cancelled"))
            abort();
        cJSON_Delete(sum);
    }
    if (orch_task_recorded(t))
        check_trajectory(t);
    orch_unsubscribe(sub);
    orch_task_release(t);
    return 0;
}
