/* test_task_store.c - finished tasks kept in SQLite (host/store) and
 * brought back into an orchestrator (orch_task_restore): a round trip of
 * every field and event byte for byte, the newest `keep` rows kept, rows
 * that do not read back skipped and counted, a file that is not a store
 * refused with its path; a restored task serves its summary, its log to a
 * subscriber and its trajectory, is never cancelled again, keeps its id
 * from new tasks, and bad restores are refused naming the fault. */
#include <event2/event.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/shared_text.h"
#include "common/status.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"
#include "store/task_store.h"
#include "test_util.h"

static const struct stored_event EVENTS[] = {
    { 1, "task.created", "{\"id\":\"task_000000a10000\",\"input\":\"q \\u00e9\"}", 0 },
    { 2, "decision", "{\"round\":1,\"action\":{\"final\":{\"answer\":\"x\"}}}", 0 },
    { 3, "task.final", "{\"id\":\"task_000000a10000\",\"status\":\"completed\",\"output\":\"x\",\"calls\":[],\"rounds\":1}", 0 },
};

static struct stored_task task_a(struct stored_event *ev)
{
    for (int i = 0; i < 3; i++) {
        ev[i] = EVENTS[i];
        ev[i].len = strlen(ev[i].data);
    }
    return (struct stored_task){ .id = "task_000000a10000", .tenant = "alpha", .input = "q \xc3\xa9", .mode = "script",
                                 .status = "completed", .summary = EVENTS[2].data, .metadata = "{\"ref\":\"x\"}",
                                 .trajectory = "{\"object\":\"task.trajectory\"}", .created_unix_ms = 1700000000123,
                                 .rounds = 1, .calls = 0, .events = ev, .n_events = 3 };
}

struct seen {
    int  n;
    char ids[8][32];
    int  ok_a;
};

static int on_row(void *ud, const struct stored_task *t)
{
    struct seen *s = ud;
    if (s->n < 8)
        snprintf(s->ids[s->n], sizeof s->ids[0], "%s", t->id);
    s->n++;
    if (!strcmp(t->id, "task_000000a10000")) {
        int ok = !strcmp(t->tenant, "alpha") && !strcmp(t->input, "q \xc3\xa9") && !strcmp(t->mode, "script") &&
                 !strcmp(t->status, "completed") && !strcmp(t->summary, EVENTS[2].data) && t->metadata &&
                 !strcmp(t->metadata, "{\"ref\":\"x\"}") && t->has_trajectory && t->created_unix_ms == 1700000000123 &&
                 t->rounds == 1 && t->calls == 0 && t->n_events == 3;
        for (int i = 0; ok && i < 3; i++)
            ok = t->events[i].id == i + 1 && !strcmp(t->events[i].type, EVENTS[i].type) &&
                 !strcmp(t->events[i].data, EVENTS[i].data) && t->events[i].len == strlen(EVENTS[i].data);
        s->ok_a = ok;
    }
    return 0;
}

static void test_round_trip_keep_and_damage(const char *path)
{
    unlink(path);
    struct task_store *s = NULL;
    CHECK(task_store_open(path, 3, &s) == PS_OK && s);
    if (!s)
        return;
    struct stored_event ev[3];
    struct stored_task a = task_a(ev);
    CHECK(task_store_put(s, &a) == PS_OK);
    /* four more: only the newest three rows stay */
    char id[32];
    for (int i = 0; i < 4; i++) {
        struct stored_task b = a;
        snprintf(id, sizeof id, "task_%08x0000", 0xb0 + i);
        b.id = id;
        b.metadata = NULL;
        b.trajectory = NULL;
        CHECK(task_store_put(s, &b) == PS_OK);
    }
    /* the newest three are read back; the rows past them go at the next open */
    struct seen seen = { 0 };
    int skipped = -1;
    CHECK(task_store_each(s, on_row, &seen, &skipped) == PS_OK && skipped == 0);
    CHECK_MSG(seen.n == 3 && !strcmp(seen.ids[0], "task_000000b10000") && !strcmp(seen.ids[2], "task_000000b30000"),
              "%d rows, %s..%s", seen.n, seen.ids[0], seen.ids[seen.n > 0 ? seen.n - 1 : 0]);
    char *traj = NULL;
    size_t tl = 0;
    task_store_close(s);
    CHECK(task_store_open(path, 3, &s) == PS_OK && s);
    if (!s)
        return;
    CHECK_MSG(task_store_count(s) == 3, "%lld rows after the open", (long long)task_store_count(s));
    CHECK(task_store_trajectory(s, "task_000000b10000", &traj, &tl) == PS_ENOTFOUND);   /* b rows have none */
    CHECK(task_store_trajectory(s, "task_000000a10000", &traj, &tl) == PS_ENOTFOUND);   /* a's row went at the open */
    /* the same id again replaces its row; its trajectory reads back whole */
    CHECK(task_store_put(s, &a) == PS_OK);
    memset(&seen, 0, sizeof seen);
    CHECK(task_store_each(s, on_row, &seen, &skipped) == PS_OK && seen.ok_a);
    CHECK(task_store_trajectory(s, "task_000000a10000", &traj, &tl) == PS_OK && traj &&
          !strcmp(traj, "{\"object\":\"task.trajectory\"}") && tl == strlen(traj));
    free(traj);
    /* a second server on the same file is refused at once */
    struct task_store *other = NULL;
    CHECK_MSG(task_store_open(path, 3, &other) != PS_OK && !other && strstr(ps_error_last(), "in use"), "%s",
              ps_error_last());
    task_store_close(s);

    /* damaged rows (a blob cut short, a NUL inside a text, no events) are skipped and counted */
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "UPDATE tasks SET events = substr(events, 1, 10) WHERE id = 'task_000000b20000';"
                           "UPDATE tasks SET events = X'' WHERE id = 'task_000000b30000';"
                           "INSERT INTO tasks VALUES ('task_c','alpha',1,'i',NULL,'script','completed',1,0,'{}',NULL,NULL,"
                           " X'0564656369730100000000');", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    CHECK(task_store_open(path, 3, &s) == PS_OK);
    memset(&seen, 0, sizeof seen);
    CHECK(s && task_store_each(s, on_row, &seen, &skipped) == PS_OK);
    /* the newest three rows: b3 (cut), a, c (a NUL in a text) */
    CHECK_MSG(seen.n == 1 && seen.ok_a && skipped == 2, "%d good, %d skipped", seen.n, skipped);
    task_store_close(s);

    /* not a store: refused at open, naming the path */
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("this is not a database, just some text that is long enough to be read as a header ...........", f);
        fclose(f);
    }
    char wal[64];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(wal);
    s = NULL;
    int rc = task_store_open(path, 3, &s);
    CHECK_MSG(rc != PS_OK && !s && strstr(ps_error_last(), path), "rc %d: %s", rc, ps_error_last());
    /* a database whose tasks table has another shape */
    unlink(path);
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "CREATE TABLE tasks (id TEXT, other TEXT)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    rc = task_store_open(path, 3, &s);
    CHECK_MSG(rc != PS_OK && strstr(ps_error_last(), "not a paraserve task store"), "rc %d: %s", rc, ps_error_last());
    unlink(path);
}

struct capture {
    int  n, terminal;
    char last_type[32];
};

static void on_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct capture *c = ud;
    (void)t;
    c->n += ev->id == c->n + 1;
    snprintf(c->last_type, sizeof c->last_type, "%s", ev->type);
}

static void test_restore(void)
{
    struct registry *reg = NULL;
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"calculator\",\"kind\":\"builtin\"}]}", "pool", &reg) == PS_OK);
    struct event_base *base = event_base_new();
    struct orch_config oc = { .keep_finished = 2 };
    struct orch *o = reg && base ? orch_create(base, reg, NULL, &oc) : NULL;
    CHECK(o);
    if (!o)
        return;
    struct orch_restore_event ev[3];
    for (int i = 0; i < 3; i++)
        ev[i] = (struct orch_restore_event){ EVENTS[i].type, EVENTS[i].data, strlen(EVENTS[i].data) };
    cJSON *meta = cJSON_Parse("{\"ref\":\"x\"}");
    struct orch_restore r = { .id = "task_000000a10000", .tenant = "0", .input = "q", .mode = "script", .status = "completed",
                              .summary = EVENTS[2].data, .metadata = meta, .has_trajectory = 1,
                              .created_unix_ms = 1700000000123, .rounds = 1, .calls = 4, .events = ev, .n_events = 3 };
    struct orch_task *t = NULL;
    CHECK(orch_task_restore(o, &r, &t) == PS_OK && t && orch_task_find(o, "task_000000a10000") == t);
    CHECK(t && orch_task_status(t) == TASK_COMPLETED && orch_task_scripted(t) && orch_task_n_calls(t) == 4 &&
          orch_task_rounds(t) == 1 && orch_task_created_unix_ms(t) == 1700000000123 && orch_task_recorded(t));
    struct shared_text *st = t ? orch_task_summary_text(t) : NULL;
    CHECK(st && !strcmp(st->data, EVENTS[2].data));
    shared_text_unref(st);
    cJSON *sum = t ? orch_task_summary(t) : NULL;
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(sum, "output")));
    cJSON_Delete(sum);
    char *traj = NULL;
    size_t tl = 0;
    CHECK(t && orch_task_trajectory_text(t, &traj, &tl) == PS_EUNSUPPORTED && strstr(ps_error_last(), "task store"));
    CHECK(t && orch_task_restored(t));
    struct capture cap = { 0 };
    struct orch_sub *sub = t ? orch_task_subscribe(t, 1, on_event, &cap) : NULL;
    CHECK_MSG(sub && !strcmp(cap.last_type, "task.final"), "replay after 1 ended with '%s'", cap.last_type);
    orch_unsubscribe(sub);
    if (t)
        orch_task_cancel(t, "again");   /* ended: a no-op */
    CHECK(t && orch_task_status(t) == TASK_COMPLETED && orch_task_n_events(t) == 3);

    /* refused, naming the fault */
    struct orch_restore bad = r;
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "exists already"));
    bad.id = "task_000000b10000";
    bad.status = "running";
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "not one of a finished task"));
    bad.status = "failed";
    bad.n_events = 2;
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "terminal event"));
    struct orch_restore_event odd[2] = { { "task.teleport", "{}", 2 }, { "task.error", "{}", 2 } };
    bad.events = odd;
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "unknown type"));
    struct orch_restore_event notjson[2] = { { "task.created", "<<<", 3 }, { "task.error", "{}", 2 } };
    bad.events = notjson;
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "not a JSON object"));
    bad = r;
    bad.id = "task_000000b10000";
    bad.summary = "this is not json";
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "its summary"));
    bad.summary = r.summary;
    bad.id = "task_\"x\"\n";
    CHECK(orch_task_restore(o, &bad, NULL) == PS_EINVAL && strstr(ps_error_last(), "not a task id of ours"));
    CHECK(!orch_task_find(o, "task_000000b10000"));

    /* new tasks never take a restored id; keep_finished applies to restored ones */
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "task_%08x0000", 0xc0 + i);
        struct orch_restore more = r;
        more.id = id;
        CHECK(orch_task_restore(o, &more, NULL) == PS_OK);
    }
    CHECK_MSG(!orch_task_find(o, "task_000000a10000") && !orch_task_find(o, "task_000000c00000") &&
              orch_task_find(o, "task_000000c20000"), "the oldest restored tasks are evicted past keep_finished");
    struct orch_restore high = r;
    high.id = "task_ffffff000000";
    CHECK(orch_task_restore(o, &high, NULL) == PS_OK);
    cJSON *req = cJSON_Parse("{\"input\":\"x\",\"script\":[{\"final\":{\"answer\":\"y\"}}]}");
    struct orch_task *nt = NULL;
    CHECK(orch_task_submit(o, req, NULL, &nt) == PS_OK && nt);
    /* after the restored ids of its lane (0) */
    unsigned counter = 0;
    CHECK_MSG(nt && sscanf(orch_task_id(nt), "task_%8x", &counter) == 1 && counter == 0xffffff01u, "new id %s",
              nt ? orch_task_id(nt) : "-");
    cJSON_Delete(req);
    event_base_loop(base, EVLOOP_NONBLOCK);
    cJSON_Delete(meta);
    orch_destroy(o);
    event_base_free(base);
    registry_free(reg);
}

int main(void)
{
    char path[] = "/tmp/test_task_store_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0)
        close(fd);
    test_round_trip_keep_and_damage(path);
    char wal[64], shm[64];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    unlink(wal);
    unlink(shm);
    test_restore();
    TEST_DONE();
}
