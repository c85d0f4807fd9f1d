/* fuzz_task_store.c - libFuzzer target for a task store's rows (a file the
 * operator gives: serve --task-store).  The input is an events blob
 * (host/store/task_store.c's format) after 4 bytes that choose the row's
 * other fields (status, mode, counts, a summary that may not be JSON).
 * The blob is parsed as task_store_each parses a row's; a log that reads
 * back is put into an in-memory store, read back (it must come back the
 * same), and restored into an orchestrator (orch_task_restore), whose
 * summary, event replay and trajectory are then read.
 *
 * Aborts when a parsed log has ids out of order or a text whose length is
 * not its strlen, a stored row does not read back as it was put, or a
 * restored task's replay does not deliver its events 1..n with a terminal
 * one last.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/shared_text.h"
#include "common/status.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"
#include "store/task_store.h"

static struct event_base *base;
static struct registry *reg;
static struct task_store *store;

struct seen {
    int64_t last;
    int     terminal_last;
};

static void on_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct seen *s = ud;
    (void)t;
    if (ev->id != s->last + 1 || strlen(ev->data) != ev->data_len)
        abort();
    s->last = ev->id;
    s->terminal_last = !strcmp(ev->type, "task.final") || !strcmp(ev->type, "task.error");
}

struct back {
    const struct stored_task *put;
    int                       rows, same;
};

static int on_row(void *ud, const struct stored_task *st)
{
    struct back *b = ud;
    const struct stored_task *p = b->put;
    b->rows++;
    int same = !strcmp(st->id, p->id) && !strcmp(st->status, p->status) && !strcmp(st->mode, p->mode) &&
               !strcmp(st->summary, p->summary) && st->n_events == p->n_events && st->rounds == p->rounds &&
               st->calls == p->calls && st->has_trajectory == (p->trajectory != NULL);
    for (int64_t i = 0; same && i < st->n_events; i++)
        same = st->events[i].len == p->events[i].len && !strcmp(st->events[i].type, p->events[i].type) &&
               !memcmp(st->events[i].data, p->events[i].data, p->events[i].len);
    b->same = same;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!reg) {
        if (registry_load_json("{\"agents\":[{\"name\":\"calculator\",\"kind\":\"builtin\"}]}", "fuzz", &reg) ||
            !(base = event_base_new()) || task_store_open(":memory:", 4, &store))
            abort();
    }
    if (size < 4)
        return 0;
    static const char *const statuses[] = { "completed", "failed", "cancelled", "running", "" };
    static const char *const modes[] = { "script", "model", "x" };
    static const char *const summaries[] = { "{\"id\":\"task_f\",\"status\":\"completed\"}", "not json", "" };
    struct stored_event *ev = NULL;
    char *strings = NULL;
    int64_t n = 0;
    if (task_store_events_parse(data + 4, size - 4, &ev, &strings, &n) != PS_OK)
        return 0;
    for (int64_t i = 0; i < n; i++)
        if (ev[i].id != i + 1 || strlen(ev[i].data) != ev[i].len || !ev[i].type[0])
            abort();
    const struct stored_task row = {
        .id = "task_0000000f0000", .tenant = "t", .input = "in", .mode = modes[data[1] % 3], .status = statuses[data[0] % 5],
        .summary = summaries[data[2] % 3], .trajectory = data[3] & 1 ? "{}" : NULL, .created_unix_ms = data[3],
        .rounds = data[3] >> 4, .calls = (data[3] >> 1) % 8, .events = ev, .n_events = n,
    };
    if (task_store_put(store, &row) == PS_OK) {
        struct back b = { .put = &row };
        int skipped = 0;
        task_store_each(store, on_row, &b, &skipped);
        /* a row with no events reads back as skipped */
        if ((n > 0 && (b.rows != 1 || !b.same)) || (n == 0 && (b.rows != 0 || skipped != 1)))
            abort();
    }
    struct orch_restore_event rev[256];
    if (n <= 256) {
        for (int64_t i = 0; i < n; i++)
            rev[i] = (struct orch_restore_event){ ev[i].type, ev[i].data, ev[i].len };
        const struct orch_restore r = {
            .id = row.id, .tenant = "0", .input = row.input, .mode = row.mode, .status = row.status,
            .summary = row.summary, .has_trajectory = row.trajectory != NULL, .created_unix_ms = row.created_unix_ms,
            .rounds = row.rounds, .calls = row.calls, .events = rev, .n_events = n,
        };
        struct orch_config oc = { .keep_finished = 2 };
        struct orch *o = orch_create(base, reg, NULL, &oc);
        struct orch_task *t = NULL;
        if (!o)
            abort();
        if (orch_task_restore(o, &r, &t) == PS_OK) {
            struct seen s = { 0 };
            struct orch_sub *sub = orch_task_subscribe(t, 0, on_event, &s);
            if (sub && (s.last != n || !s.terminal_last))
                abort();
            orch_unsubscribe(sub);
            shared_text_unref(orch_task_summary_text(t));
            cJSON_Delete(orch_task_summary(t));
            char *traj;
            size_t len;
            if (task_store_trajectory(store, row.id, &traj, &len) == PS_OK)
                free(traj);
            orch_task_cancel(t, "fuzz");
        }
        orch_destroy(o);
    }
    free(ev);
    free(strings);
    return 0;
}
