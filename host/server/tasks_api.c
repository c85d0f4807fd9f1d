/* tasks_api.c - /v1/tasks on evhttp and the engine-backed decider (see
 * tasks_api.h). */
#include "tasks_api.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/json_get.h"
#include "common/shared_text.h"
#include "common/status.h"
#include "common/utf8_cut.h"
#include "grammar/grammar.h"
#include "conn_limit.h"
#include "cors.h"
#include "flush_track.h"
#include "metrics.h"
#include "openai.h"
#include "sse.h"
#include "orchestrator/httpc.h"
#include "orchestrator/json_alloc.h"
#include "orchestrator/describe.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"
#include "orchestrator/trajectory.h"
#include "store/task_store.h"

#define DEFAULT_AGENTS       "configs/agents.default.json"
#define DECISION_MAX_TOKENS  160
/* Text the assistant turn starts with when decisions are not constrained
 * (in the prompt, and fed to the action parser): the small model then
 * continues a JSON object instead of prose.  With the action grammar the
 * grammar produces the whole document and nothing is forced. */
#define DECISION_PREFIX      "{\""
#define DECISION_TAG         ((uintptr_t)1)   /* low bit of engine_request.user */
/* Final-only decisions (orch_task_final_only): {"final":{"answer","uses"?}}
 * with uses naming up to FINAL_USES of the task's finished calls.  The
 * answer has no length bound in the grammar (a bound is unrolled into the
 * DFA: 64 characters cost ~70 ms to compile, unbounded ~2 ms); the token
 * budget bounds it instead, and a final cut by the budget still completes
 * the task with the answer decoded so far (task.c final_salvage). */
#define FINAL_USES           8
#define FINAL_MAX_TOKENS     128
#define FINAL_CACHE          32   /* compiled final grammars kept (LRU) */

struct final_grammar {
    char    *key;       /* the uses set, "c1,c3" ("" for none) */
    grammar *g;
    uint64_t used;
};

struct decision {
    struct tasks_api *api;
    struct orch_task *t;          /* NULL once the decision ended on our side */
    char              task_id[48];
    int               round;
    uint64_t          eng_id;
    int               usage_recorded; /* the task has this round's usage (taken when
                                         the action closed, before the engine's end) */
    int               trajectory_due; /* its task ended during it: the task's trajectory
                                         line waits for this decision's usage */
    struct orch_sub  *pin;            /* with trajectory_due: keeps the task from
                                         eviction until the line is written */
    int               inject_failure; /* test builds: the engine's end is taken as an
                                         engine failure, its tokens ignored */
    struct decision  *prev, *next;
};

/* An event stream keeps at most about this much unwritten output per
 * client: past it, the waiter stops copying the task's log and goes on
 * when libevent reports the output written.  A client that reads slowly,
 * or not at all until its idle timeout, costs this much rather than a copy
 * of the log (one task's events can hold results of many megabytes, and
 * every resume replays them).  Event texts are copied in slices of at most
 * SSE_SLICE_BYTES. */
#define SSE_OUTPUT_HIGH (256 * 1024)
#define SSE_SLICE_BYTES (64 * 1024)

struct waiter {
    struct tasks_api      *api;
    struct evhttp_request *req;
    struct orch_task      *t;
    struct orch_sub       *sub;     /* pins the task; its callbacks say the log grew */
    struct event          *watch;   /* EOF watch on the client socket */
    struct event          *finish;  /* deferred end after the terminal event */
    int64_t                next_id; /* stream: the next event to write, */
    size_t                 off;     /* and how much of its text is written */
    bool                   stream, headers_sent, terminal, pumping;
    struct waiter         *prev, *next;
};

struct tasks_api {
    struct tasks_api_config cfg;
    struct registry        *reg;
    struct orch            *orch;
    char                    agents_path[1024];
    char                   *action_schema;   /* grammar_action_schema over the pool; NULL if none */
    grammar_vocab          *vocab;           /* the action grammar's vocabulary */
    bool                    own_vocab;       /* built here (else the server's) */
    grammar                *action_grammar;  /* compiled action_schema; NULL: unconstrained */
    struct final_grammar    finals[FINAL_CACHE];
    uint64_t                final_tick;
    bool                    stopped;
    struct decision        *decisions;
    struct waiter          *waiters;
    struct event           *heartbeat;       /* sse_heartbeat_ms timer (NULL: off) */
    bool                    draining;
    /* The decision text decider_over_context last tokenized, with its ids
     * (no BOS): decider_start, which follows it on the same loop turn,
     * submits these ids when its text is the same, so the engine thread
     * does not tokenize the prompt a second time.  NULL: none. */
    char                   *tok_text;
    int32_t                *tok_ids;
    size_t                  tok_n;
    /* --trajectories: the file every recorded task's trajectory is
     * appended to as one line when it ends (-1: none) */
    int                     traj_fd;
    char                    traj_path[1024];
    int64_t                 traj_written, traj_write_errors;
    /* --task-store: finished tasks kept across restarts (NULL: none) */
    struct task_store      *store;
    int64_t                 stored, store_errors, restored;
    int                     fail_decisions;  /* test builds: decisions still to fail */
    const char             *tenant_names[METRICS_MAX_TENANTS]; /* by engine tenant id */
    int                     n_tenant_names;
};

static void tok_cache_clear(struct tasks_api *api)
{
    free(api->tok_text);
    free(api->tok_ids);
    api->tok_text = NULL;
    api->tok_ids = NULL;
    api->tok_n = 0;
}

/* ---- replies ------------------------------------------------------------------ */

/* No body after a HEAD reply (libevent would write it: server.c is_head). */
static bool is_head(struct evhttp_request *req)
{
    return evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
}

/* A JSON reply with body `out` (NULL: none; freed here). */
static void reply_body(struct tasks_api *api, struct evhttp_request *req, int status, struct evbuffer *out)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, api_http_reason(status), out);
    if (out)
        evbuffer_free(out);
    metrics_request(api->cfg.m, ROUTE_OTHER, status);
}

static void reply_json(struct tasks_api *api, struct evhttp_request *req, int status, const char *json)
{
    struct evbuffer *out = is_head(req) ? NULL : evbuffer_new();
    if (out) {
        evbuffer_add(out, json, strlen(json));
        evbuffer_add(out, "\n", 1);
    }
    reply_body(api, req, status, out);
}

static void reply_error(struct tasks_api *api, struct evhttp_request *req, const struct api_error *e)
{
    char *json = api_error_json(e);
    reply_json(api, req, e->status, json ? json : API_ERROR_OOM_BODY);
    free(json);
}

static void text_unref(const void *data, size_t len, void *ud)
{
    (void)data;
    (void)len;
    shared_text_unref(ud);
}

/* A 200 whose body is data[0..len) and a newline, referred to, not
 * copied; done(data, len, ud) releases the text once the reply no longer
 * needs it (written, discarded, a HEAD reply, or out of memory: then a
 * 500). */
static void reply_reference(struct tasks_api *api, struct evhttp_request *req, const char *data, size_t len,
                            evbuffer_ref_cleanup_cb done, void *ud)
{
    struct evbuffer *out = NULL;
    bool ok = true, given = false;
    if (!is_head(req)) {
        given = ok = (out = evbuffer_new()) && !evbuffer_add_reference(out, data, len, done, ud);
        ok = ok && !evbuffer_add(out, "\n", 1);
    }
    if (!given)
        done(data, len, ud);
    if (!ok) {
        if (out)
            evbuffer_free(out);
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        reply_error(api, req, &e);
        return;
    }
    reply_body(api, req, 200, out);
}

/* The task's summary, 200.  The body refers to the summary's shared text
 * (orch_task_summary_text) rather than copying it: a finished task's
 * summary exists once however many clients are slow to read it. */
static void reply_summary(struct tasks_api *api, struct evhttp_request *req, struct orch_task *t)
{
    struct shared_text *st = orch_task_summary_text(t);
    if (!st) {
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        reply_error(api, req, &e);
        return;
    }
    reply_reference(api, req, st->data, st->len, text_unref, st);
}

static void text_free(const void *data, size_t len, void *ud)
{
    (void)len;
    (void)ud;
    free((void *)data);
}

/* GET /v1/tasks/{id}/trajectory: the task's trajectory document
 * (proto/trajectory.schema.json), the steps so far while it runs; 404
 * when the task records none. */
static void reply_trajectory(struct tasks_api *api, struct evhttp_request *req, struct orch_task *t)
{
    struct api_error e;
    char *text;
    size_t len;
    int rc = orch_task_restored(t) && orch_task_recorded(t) && api->store
                 ? task_store_trajectory(api->store, orch_task_id(t), &text, &len)
                 : orch_task_trajectory_text(t, &text, &len);
    if (rc) {
        if (rc == PS_ENOTFOUND && !orch_task_restored(t))
            api_error_set(&e, 404, "invalid_request_error", "trajectory_not_recorded", NULL, "%s", ps_error_last());
        else
            api_error_set(&e, 500, "server_error", NULL, NULL, "%s", ps_error_last());
        reply_error(api, req, &e);
        return;
    }
    reply_reference(api, req, text, len, text_free, NULL);
}

/* A failure of a finished task's sinks: counted, and said on stderr the
 * first time for each sink. */
static void sink_failed(int64_t *errors, const char *sink, const char *id, const char *why, const char *counter)
{
    if ((*errors)++ == 0)
        fprintf(stderr, "paraserve: %s: task %s was not written: %s (counted in %s; reported once)\n", sink, id, why,
                counter);
}

static void store_failed(struct tasks_api *api, const char *id)
{
    sink_failed(&api->store_errors, "--task-store", id, ps_error_last(), "paraserve_task_store_errors_total");
}

/* The task as a store row (traj: its trajectory text, or NULL).  PS_OK,
 * or a status with its reason. */
static int task_store_write(struct tasks_api *api, struct orch_task *t, const char *traj)
{
    const long tenant = strtol(orch_task_tenant(t), NULL, 10);
    if (tenant < 0 || tenant >= api->n_tenant_names || !api->tenant_names[tenant])
        return ps_error_set(PS_EINVAL, "tenant %s has no name", orch_task_tenant(t));
    const int64_t n = orch_task_n_events(t);
    struct shared_text *sum = orch_task_summary_text(t);
    struct stored_event *ev = n > 0 ? malloc((size_t)n * sizeof *ev) : NULL;
    char *meta = orch_task_metadata(t) ? cJSON_PrintUnformatted(orch_task_metadata(t)) : NULL;
    int rc;
    if (!sum || !ev || (orch_task_metadata(t) && !meta)) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        struct orch_event oe;
        orch_task_event_at(t, i + 1, &oe);
        ev[i] = (struct stored_event){ .id = oe.id, .type = oe.type, .data = oe.data, .len = oe.data_len };
    }
    const struct stored_task st = {
        .id = orch_task_id(t), .tenant = api->tenant_names[tenant], .input = orch_task_input(t),
        .mode = orch_task_scripted(t) ? "script" : "model", .status = orch_task_status_str(orch_task_status(t)),
        .summary = sum->data, .metadata = meta, .trajectory = traj, .created_unix_ms = orch_task_created_unix_ms(t),
        .rounds = orch_task_rounds(t), .calls = orch_task_n_calls(t), .events = ev, .n_events = n,
    };
    rc = task_store_put(api->store, &st);
done:
    shared_text_unref(sum);
    free(ev);
    free(meta);
    return rc;
}

#define TASK_STORE_TENANT_NO_KEY "(no key)"

/* Restore one stored task (task_store_each): its tenant by name (a
 * tenant no longer configured: skipped, never shown to another). */
struct restore_ctx {
    struct tasks_api *api;
    int               skipped, interrupted;
    char              first_skip[256];
};

#define INTERRUPTED_ERROR "the server stopped while the task ran (it was not resumed)"

/* A row written as its task started and never replaced by its end: the
 * server stopped without ending it (killed, crashed).  Into *out its
 * ended form - status failed, the error above, its log closed by a
 * task.error whose text is the summary (with "task" and "t_ms", as every
 * event) - whose strings live in *summary, *terminal and *events (caller
 * frees).  PS_OK, PS_EINVAL (the summary is not a JSON object), PS_ENOMEM. */
static int interrupted_end(const struct stored_task *st, struct stored_task *out, char **summary, char **terminal,
                           struct stored_event **events)
{
    *summary = *terminal = NULL;
    *events = NULL;
    cJSON *s = cJSON_Parse(st->summary);
    int rc = PS_OK;
    if (!cJSON_IsObject(s)) {
        cJSON_Delete(s);
        return ps_error_set(PS_EINVAL, "task %s: its summary is not a JSON object", st->id);
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    const double t_ms = now_ms > st->created_unix_ms ? (double)(now_ms - st->created_unix_ms) : 0;
    cJSON_DeleteItemFromObjectCaseSensitive(s, "status");
    cJSON_DeleteItemFromObjectCaseSensitive(s, "error");
    if (!cJSON_AddStringToObject(s, "status", "failed") || !cJSON_AddStringToObject(s, "error", INTERRUPTED_ERROR) ||
        !(*summary = cJSON_PrintUnformatted(s)) || !cJSON_AddStringToObject(s, "task", st->id) ||
        !cJSON_AddNumberToObject(s, "t_ms", t_ms) || !(*terminal = cJSON_PrintUnformatted(s)) ||
        !(*events = malloc((size_t)(st->n_events + 1) * sizeof **events)))
        rc = ps_error_set(PS_ENOMEM, "out of memory");
    cJSON_Delete(s);
    if (rc) {
        free(*summary);
        free(*terminal);
        free(*events);
        *summary = *terminal = NULL;
        *events = NULL;
        return rc;
    }
    memcpy(*events, st->events, (size_t)st->n_events * sizeof **events);
    (*events)[st->n_events] = (struct stored_event){ .id = st->n_events + 1, .type = "task.error", .data = *terminal,
                                                     .len = strlen(*terminal) };
    *out = *st;
    out->status = "failed";
    out->summary = *summary;
    out->events = *events;
    out->n_events = st->n_events + 1;
    out->trajectory = NULL;
    out->has_trajectory = 0;
    return PS_OK;
}

static int restore_one(void *ud, const struct stored_task *st_in)
{
    struct restore_ctx *rc = ud;
    struct tasks_api *api = rc->api;
    char why[256] = "", tenant[16];
    struct stored_task ended;
    char *isum = NULL, *iterm = NULL;
    struct stored_event *iev = NULL;
    const struct stored_task *st = st_in;
    cJSON *meta = NULL;
    struct orch_restore_event *ev = NULL;
    int id = -1;
    if (!strcmp(st_in->status, "running")) {
        /* ended now, and written back so */
        if (interrupted_end(st_in, &ended, &isum, &iterm, &iev)) {
            snprintf(why, sizeof why, "%s", ps_error_last());
            goto done;
        }
        st = &ended;
        if (task_store_put(api->store, st))
            store_failed(api, st->id);
        rc->interrupted++;
    }
    for (int i = 0; i < api->n_tenant_names && id < 0; i++)
        if (api->tenant_names[i] && !strcmp(api->tenant_names[i], st->tenant))
            id = i;
    meta = st->metadata ? cJSON_Parse(st->metadata) : NULL;
    ev = malloc((size_t)st->n_events * sizeof *ev);
    if (id < 0)
        snprintf(why, sizeof why, "task %s: its tenant '%.64s' is not configured now", st->id, st->tenant);
    else if (st->metadata && !cJSON_IsObject(meta))
        snprintf(why, sizeof why, "task %s: its metadata is not a JSON object", st->id);
    else if (!ev)
        snprintf(why, sizeof why, "out of memory");
    if (!why[0]) {
        for (int64_t i = 0; i < st->n_events; i++)
            ev[i] = (struct orch_restore_event){ st->events[i].type, st->events[i].data, st->events[i].len };
        snprintf(tenant, sizeof tenant, "%d", id);
        const struct orch_restore r = {
            .id = st->id, .tenant = tenant, .input = st->input, .mode = st->mode, .status = st->status,
            .summary = st->summary, .metadata = meta, .has_trajectory = st->has_trajectory,
            .created_unix_ms = st->created_unix_ms, .rounds = st->rounds, .calls = st->calls, .events = ev,
            .n_events = st->n_events,
        };
        if (orch_task_restore(api->orch, &r, NULL))
            snprintf(why, sizeof why, "%s", ps_error_last());
        else
            api->restored++;
    }
done:
    if (why[0] && rc->skipped++ == 0)
        snprintf(rc->first_skip, sizeof rc->first_skip, "%s", why);
    cJSON_Delete(meta);
    free(ev);
    free(isum);
    free(iterm);
    free(iev);
    return 0;
}


/* A finished task to its sinks: its trajectory appended to the
 * --trajectories file as one line (trajectory_line_write: whole or not at all),
 * and the task to the --task-store. */
static void task_finished_write(struct tasks_api *api, struct orch_task *t)
{
    char *traj = NULL;
    size_t tl = 0;
    int traj_rc = orch_task_recorded(t) ? orch_task_trajectory_text(t, &traj, &tl) : PS_ENOTFOUND;
    char why[256] = "";
    if (traj_rc && traj_rc != PS_ENOTFOUND)
        snprintf(why, sizeof why, "%s", ps_error_last());
    if (api->traj_fd >= 0 && orch_task_recorded(t)) {
        if (!traj_rc && !trajectory_line_write(api->traj_fd, traj, tl))
            api->traj_written++;
        else
            sink_failed(&api->traj_write_errors, "--trajectories", orch_task_id(t), traj_rc ? why : ps_error_last(),
                        "paraserve_trajectory_write_errors_total");
    }
    if (api->store) {
        if (!task_store_write(api, t, traj_rc ? NULL : traj))
            api->stored++;
        else
            store_failed(api, orch_task_id(t));
    }
    free(traj);
}

static void pin_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    (void)ud;
    (void)t;
    (void)ev;
}

/* A task ended (orch done callback, with --trajectories or --task-store).  One that ended
 * during a decision (cancelled, its deadline) has that decision's usage
 * still to come from the engine: its line is written when it comes
 * (tasks_api_engine_event; at the latest tasks_api_stop). */
static void on_task_done(void *ud, struct orch_task *t)
{
    struct tasks_api *api = ud;
    if (!api->store && (api->traj_fd < 0 || !orch_task_recorded(t)))
        return;
    if (!orch_task_scripted(t)) {
        for (struct decision *d = api->decisions; d; d = d->next) {
            if (!d->usage_recorded && !strcmp(d->task_id, orch_task_id(t))) {
                /* a subscriber's task is never evicted (orch_task_subscribe) */
                if ((d->pin = orch_task_subscribe(t, orch_task_n_events(t), pin_event, NULL))) {
                    d->trajectory_due = 1;
                    return;
                }
                break;   /* out of memory: written now, without that usage */
            }
        }
    }
    task_finished_write(api, t);
}

/* ---- waiters ------------------------------------------------------------------- */

static void unwatch(struct waiter *w)
{
    if (w->watch) {
        event_free(w->watch);
        w->watch = NULL;
    }
}

static void notify_drained(struct tasks_api *api)
{
    if (api->cfg.drained)
        api->cfg.drained(api->cfg.drained_ud);
}

/* Count the final reply until libevent has written it or its connection
 * closed (shutdown waits; flush_track.h).  Out of memory: not counted. */
static void track_reply(struct waiter *w)
{
    if (w->api->cfg.flushing)
        (void)flush_track(w->req, w->api->cfg.flushing, w->api->cfg.drained, w->api->cfg.drained_ud);
}

static void waiter_free(struct waiter *w)
{
    struct tasks_api *api = w->api;
    api->cfg.m->in_flight--;
    orch_unsubscribe(w->sub);
    unwatch(w);
    if (w->finish)
        event_free(w->finish);
    if (w->prev) w->prev->next = w->next; else if (api->waiters == w) api->waiters = w->next;
    if (w->next) w->next->prev = w->prev;
    free(w);
}

/* Stop hearing about the connection before the reply ends: its close
 * callback must never see a freed waiter. */
static void waiter_detach(struct waiter *w)
{
    struct evhttp_connection *c = evhttp_request_get_connection(w->req);
    if (c)
        conn_closecb_set(c, NULL, NULL);
    unwatch(w);
}

/* The client left.  A request libevent has detached from its dead
 * connection is freed by ending it (nothing is written); one still attached
 * (evhttp_free at shutdown) is freed by libevent after this callback. */
static void waiter_client_left(struct waiter *w, bool from_closecb)
{
    if (!from_closecb)
        waiter_detach(w);
    if (!from_closecb || !evhttp_request_get_connection(w->req)) {
        if (w->headers_sent)
            evhttp_send_reply_end(w->req);
        else
            evhttp_send_reply(w->req, 499, "Client Closed Request", NULL);
    }
    metrics_request(w->api->cfg.m, ROUTE_OTHER, 499);
    w->api->cfg.m->client_disconnects++;
    struct tasks_api *api = w->api;
    waiter_free(w);
    notify_drained(api);
}

static void on_client_close(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    waiter_client_left(arg, true);
}

/* evhttp reads nothing while a reply is pending: peek at the socket so a
 * client that leaves a quiet stream is noticed (EOF or error).  Bytes (a
 * pipelined request) just end the watch. */
static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;
    (void)what;
    enum conn_peer p = conn_peer_probe(fd);
    if (p == CONN_PEER_QUIET)
        return;
    unwatch(w);
    if (p == CONN_PEER_GONE)
        waiter_client_left(w, false);
}

static void on_finish(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;
    (void)fd;
    (void)what;
    struct tasks_api *api = w->api;
    waiter_detach(w);
    track_reply(w);
    if (w->stream) {
        evhttp_send_reply_end(w->req);
        metrics_request(api->cfg.m, ROUTE_OTHER, 200);
    } else {
        reply_summary(api, w->req, w->t);
    }
    waiter_free(w);
    notify_drained(api);
}

static bool event_is_terminal(const char *type)
{
    return !strcmp(type, "task.final") || !strcmp(type, "task.error");
}

/* The task's log holds its terminal event (a finished task's status is set
 * before the cancellations and the terminal event are emitted). */
static bool log_ended(const struct orch_task *t)
{
    struct orch_event last;
    return orch_task_event_at(t, orch_task_n_events(t), &last) && event_is_terminal(last.type);
}

/* The connection's unwritten output; NULL once the client has left. */
static struct evbuffer *conn_output(struct evhttp_request *req)
{
    struct evhttp_connection *c = req ? evhttp_request_get_connection(req) : NULL;
    struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
    return bev ? bufferevent_get_output(bev) : NULL;
}

static void pump(struct waiter *w);

/* libevent wrote the connection's output to the socket: room for more.
 * Every chunk of a stream is sent with this callback (a chunk sent without
 * one would clear it); ending the reply replaces it, before the waiter is
 * freed. */
static void on_output_drained(struct evhttp_connection *c, void *arg)
{
    (void)c;
    pump(arg);
}

/* Copy events, from *ev (= w->next_id, w->off bytes of it written), into
 * one chunk while the connection's output and the chunk stay under
 * SSE_OUTPUT_HIGH, and send it.  false when out of memory. */
static bool pump_events(struct waiter *w, struct evbuffer *out, struct orch_event *ev)
{
    w->pumping = true;
    struct evbuffer *b = evbuffer_new();
    bool ok = b != NULL;
    while (ok) {
        if (w->off == 0)
            ok = evbuffer_add_printf(b, "id: %lld\nevent: %s\ndata: ", (long long)ev->id, ev->type) >= 0;
        size_t n = ev->data_len - w->off < SSE_SLICE_BYTES ? ev->data_len - w->off : SSE_SLICE_BYTES;
        if (!ok || evbuffer_add(b, ev->data + w->off, n)) {
            ok = false;
            break;
        }
        w->off += n;
        if (w->off == ev->data_len) {
            ok = !evbuffer_add(b, "\n\n", 2);
            w->off = 0;
            w->next_id++;
            if (event_is_terminal(ev->type)) {
                w->terminal = true;
                break;
            }
        }
        if (evbuffer_get_length(out) + evbuffer_get_length(b) >= SSE_OUTPUT_HIGH ||
            (w->off == 0 && !orch_task_event_at(w->t, w->next_id, ev)))
            break;
    }
    if (b && evbuffer_get_length(b))
        evhttp_send_reply_chunk_with_cb(w->req, b, on_output_drained, w);
    if (b)
        evbuffer_free(b);
    w->pumping = false;
    return ok;
}

/* Stream the task's log from w->next_id (w->off bytes into its text) while
 * the connection's unwritten output is under SSE_OUTPUT_HIGH; the rest
 * follows from on_output_drained or the next event.  After the terminal
 * event (or, resuming a finished task, the log's end) the reply ends from
 * on_finish on a later turn: never inside the task's emit().  Out of
 * memory ends the stream where it stands: the client resumes from the last
 * event it got whole (Last-Event-ID). */
static void pump(struct waiter *w)
{
    /* ended, inside a pump (sending calls back), or the client left (its
     * close callback ends the waiter) */
    struct evbuffer *out = w->terminal || w->pumping ? NULL : conn_output(w->req);
    if (!out)
        return;
    struct orch_event ev;
    bool ok = true;
    if (evbuffer_get_length(out) < SSE_OUTPUT_HIGH && orch_task_event_at(w->t, w->next_id, &ev))
        ok = pump_events(w, out, &ev);
    if (!ok || (!w->terminal && w->next_id > orch_task_n_events(w->t) && log_ended(w->t)))
        w->terminal = true;
    if (w->terminal)
        event_active(w->finish, 0, 0);
}

static void on_task_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct waiter *w = ud;
    (void)t;
    if (w->stream) {
        pump(w);
    } else if (!w->terminal && event_is_terminal(ev->type)) {
        w->terminal = true;
        event_active(w->finish, 0, 0);   /* never end the reply inside emit() */
    }
}

/* Every sse_heartbeat_ms: a comment line (ignored by SSE clients) on each
 * open event stream, so that a proxy's idle timeout (often 60 s) does not
 * cut a stream whose task waits on slow agents or decisions. */
static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    struct tasks_api *api = arg;
    (void)fd;
    (void)what;
    for (struct waiter *w = api->waiters; w; w = w->next) {
        /* a stream with output pending is writing, or blocked on its client */
        struct evbuffer *out = w->stream && !w->terminal && w->headers_sent ? conn_output(w->req) : NULL;
        if (!out || evbuffer_get_length(out))
            continue;
        struct evbuffer *b = evbuffer_new();
        if (b && !evbuffer_add(b, ": keep-alive\n\n", 14))
            evhttp_send_reply_chunk_with_cb(w->req, b, on_output_drained, w);
        if (b)
            evbuffer_free(b);
    }
}

/* Start waiting on `t` for `req`: SSE from after_id when stream, else one
 * JSON reply at the end.  Replies with 500 itself when it cannot. */
static void waiter_start(struct tasks_api *api, struct evhttp_request *req, struct orch_task *t,
                         bool stream, int64_t after_id)
{
    struct api_error e;
    struct waiter *w = calloc(1, sizeof *w);
    if (!w || !(w->finish = event_new(api->cfg.base, -1, 0, on_finish, w))) {
        free(w);
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        reply_error(api, req, &e);
        return;
    }
    w->api = api;
    w->req = req;
    w->t = t;
    w->stream = stream;
    w->next_id = (after_id < 0 ? 0 : after_id < orch_task_n_events(t) ? after_id : orch_task_n_events(t)) + 1;
    api->cfg.m->in_flight++;   /* waiter_free takes it back */
    w->next = api->waiters;
    if (api->waiters)
        api->waiters->prev = w;
    api->waiters = w;
    if (stream) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Content-Type", "text/event-stream");
        evhttp_add_header(h, "Cache-Control", "no-cache");
        evhttp_add_header(h, "X-Task-Id", orch_task_id(t));
        sse_prepare_request(req);   /* HTTP/1.0: close-delimited */
        evhttp_send_reply_start(req, 200, "OK");
        w->headers_sent = true;
    }
    /* Watch the client from now on, even when the task has ended: the reply
     * is only written by on_finish, on a later turn of the loop. */
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    conn_closecb_set(conn, on_client_close, w);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(conn);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0 && (w->watch = event_new(api->cfg.base, fd, EV_READ | EV_PERSIST, on_client_readable, w)))
        event_add(w->watch, NULL);
    /* Stored events are replayed from inside subscribe; a terminal one only
     * schedules on_finish, which runs once this handler has returned. */
    if (!(w->sub = orch_task_subscribe(t, after_id, on_task_event, w))) {
        waiter_detach(w);
        if (stream) {
            evhttp_send_reply_end(req);
        } else {
            api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
            reply_error(api, req, &e);
        }
        waiter_free(w);
        return;
    }
    /* A finished task whose terminal event lies at or before after_id (a
     * client resuming after the end) has nothing more to send: end now
     * rather than wait for an event that never comes (and keep the task
     * from eviction while waiting).  A stream decides that in pump(), which
     * the replay ran unless the log had nothing after after_id. */
    if (stream)
        pump(w);
    else if (!w->terminal && orch_task_status(t) != TASK_RUNNING) {
        w->terminal = true;
        event_active(w->finish, 0, 0);
    }
}

/* ---- routes -------------------------------------------------------------------- */

/* orch_task_submit's messages start with the field ("script[1]: ...",
 * "input: required ..."): that is the OpenAI `param`. */
static void submit_error(struct api_error *e, const char *msg, const cJSON *root)
{
    char param[96] = "";
    const char *colon = strstr(msg, ": ");
    if (colon && (size_t)(colon - msg) < sizeof param && !memchr(msg, ' ', (size_t)(colon - msg)))
        snprintf(param, sizeof param, "%.*s", (int)(colon - msg), msg);
    bool present = param[0] && json_get(root, param);
    const char *code = strstr(msg, "unknown field") ? "unknown_parameter"
                     : !present && strstr(msg, "required") ? "missing_required_parameter"
                     : strstr(msg, "must be a") ? "invalid_type" : "invalid_value";
    api_error_set(e, 400, "invalid_request_error", code, param[0] ? param : NULL, "%s", msg);
}

static void handle_create(struct tasks_api *api, struct evhttp_request *req, const char *tenant)
{
    struct api_error e;
    if (api->draining) {
        api_error_set(&e, 503, "server_error", "shutting_down", NULL, "The server is shutting down");
        reply_error(api, req, &e);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > (size_t)api->cfg.max_body_bytes) {
        api_error_set(&e, 413, "invalid_request_error", "request_too_large", NULL,
                      "The request body has %zu bytes; the limit is %d (max_body_bytes)", len,
                      api->cfg.max_body_bytes);
        reply_error(api, req, &e);
        return;
    }
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    cJSON *root;
    if (api_json_body_parse(body, len, &root, &e)) {
        reply_error(api, req, &e);
        return;
    }
    const cJSON *stream = json_get(root, "stream");
    if (stream && !cJSON_IsNull(stream) && !cJSON_IsBool(stream)) {
        cJSON_Delete(root);
        api_error_set(&e, 400, "invalid_request_error", "invalid_type", "stream", "'stream' must be a boolean");
        reply_error(api, req, &e);
        return;
    }
    bool want_stream = stream && cJSON_IsTrue(stream);
    struct orch_task *t;
    int rc = orch_task_submit_take(api->orch, root, tenant, &t);
    if (rc) {
        if (rc == PS_EINVAL) {
            submit_error(&e, ps_error_last(), root);
        } else if (rc == PS_EFULL) {
            /* OpenAI's shape for a rate limit; clients (the openai SDK)
             * retry a 429 after Retry-After */
            api_error_set(&e, 429, "requests", "rate_limit_exceeded", NULL, "%s", ps_error_last());
            evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        } else
            api_error_set(&e, 500, "server_error", NULL, NULL, "%s", ps_error_last());
        cJSON_Delete(root);
        reply_error(api, req, &e);
        return;
    }
    cJSON_Delete(root);
    /* with a store, the task is written as it starts too: if the server
     * dies before the task ends, the next start can still say so */
    if (api->store && orch_task_status(t) == TASK_RUNNING) {
        if (task_store_write(api, t, NULL))
            store_failed(api, orch_task_id(t));
    }
    waiter_start(api, req, t, want_stream, 0);
}

static void handle_events(struct tasks_api *api, struct evhttp_request *req, struct orch_task *t)
{
    struct api_error e;
    int64_t after = 0;
    const char *last = evhttp_find_header(evhttp_request_get_input_headers(req), "Last-Event-ID");
    if (last && *last) {
        char *endp;
        errno = 0;
        long long v = strtoll(last, &endp, 10);
        /* digits only: strtoll would also take leading spaces and a sign */
        if (errno || endp == last || *endp || v < 0 || last[0] < '0' || last[0] > '9') {
            api_error_set(&e, 400, "invalid_request_error", "invalid_value", "Last-Event-ID",
                          "Last-Event-ID must be a non-negative integer event id");
            reply_error(api, req, &e);
            return;
        }
        after = v;
    }
    if (is_head(req)) {
        /* the stream's headers, no body (nothing after a HEAD reply) */
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Content-Type", "text/event-stream");
        evhttp_add_header(h, "Cache-Control", "no-cache");
        evhttp_add_header(h, "X-Task-Id", orch_task_id(t));
        evhttp_send_reply(req, 200, "OK", NULL);
        metrics_request(api->cfg.m, ROUTE_OTHER, 200);
        return;
    }
    waiter_start(api, req, t, true, after);
}

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX     100
#define LIST_INPUT_BYTES   256   /* of each task's input, cut on a character boundary */

/* GET /v1/tasks?limit=&after=&status=&order=: the caller's tenant's tasks
 * (running, and finished ones not yet evicted), newest first unless
 * order=asc, as an OpenAI list {"object":"list","data":[...],"first_id",
 * "last_id","has_more"}; `after` is the last id of the previous page. */
static void handle_list(struct tasks_api *api, struct evhttp_request *req, const char *tenant)
{
    struct api_error e;
    struct evkeyvalq q;
    q.tqh_first = NULL;
    q.tqh_last = &q.tqh_first;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (query && evhttp_parse_query_str(query, &q)) {
        api_error_set(&e, 400, "invalid_request_error", "invalid_value", NULL, "The query string is malformed");
        reply_error(api, req, &e);
        return;
    }
    long limit = LIST_LIMIT_DEFAULT;
    int desc = 1, status = -1;
    struct orch_task *after = NULL;
    for (struct evkeyval *kv = q.tqh_first; kv; kv = kv->next.tqe_next) {
        const char *k = kv->key, *v = kv->value;
        int bad = 0;
        if (!strcmp(k, "limit")) {
            char *end;
            errno = 0;
            limit = strtol(v, &end, 10);
            bad = errno || end == v || *end || limit < 1 || limit > LIST_LIMIT_MAX;
            if (bad)
                api_error_set(&e, 400, "invalid_request_error", "invalid_value", "limit",
                              "limit must be an integer from 1 to %d", LIST_LIMIT_MAX);
        } else if (!strcmp(k, "order")) {
            bad = strcmp(v, "asc") && strcmp(v, "desc");
            desc = strcmp(v, "asc") != 0;
            if (bad)
                api_error_set(&e, 400, "invalid_request_error", "invalid_value", "order", "order must be asc or desc");
        } else if (!strcmp(k, "status")) {
            status = -1;      /* each value on its own (a repeated key: the last) */
            for (int s = TASK_RUNNING; s <= TASK_CANCELLED; s++)
                if (!strcmp(v, orch_task_status_str((enum orch_task_status)s)))
                    status = s;
            bad = status < 0;
            if (bad)
                api_error_set(&e, 400, "invalid_request_error", "invalid_value", "status",
                              "status must be running, completed, failed or cancelled");
        } else if (!strcmp(k, "after")) {
            after = orch_task_find(api->orch, v);
            bad = !after || strcmp(orch_task_tenant(after), tenant);
            if (bad)
                api_error_set(&e, 400, "invalid_request_error", "invalid_value", "after",
                              "after: no task with id '%.64s' (unknown, or evicted after it finished)", v);
        } else {
            bad = 1;
            api_error_set(&e, 400, "invalid_request_error", "unknown_parameter", k,
                          "Unknown query parameter '%.64s' (limit, after, status, order)", k);
        }
        if (bad) {
            evhttp_clear_headers(&q);
            reply_error(api, req, &e);
            return;
        }
    }
    evhttp_clear_headers(&q);
    struct orch_task *t = after ? (desc ? orch_task_older(after) : orch_task_newer(after))
                                : (desc ? orch_task_newest(api->orch) : orch_task_oldest(api->orch));
    long f0 = json_alloc_failures();
    cJSON *root = cJSON_CreateObject(), *data = cJSON_CreateArray();
    const char *first = NULL, *last = NULL;
    long n = 0;
    bool more = false;
    for (; t && root && data; t = desc ? orch_task_older(t) : orch_task_newer(t)) {
        if (strcmp(orch_task_tenant(t), tenant) || (status >= 0 && (int)orch_task_status(t) != status))
            continue;
        if (n == limit) {
            more = true;
            break;
        }
        const char *input = orch_task_input(t);
        size_t len = strlen(input), cut = len <= LIST_INPUT_BYTES ? len : utf8_cut(input, LIST_INPUT_BYTES);
        char *in = strndup(input, cut);
        if (!in)
            json_alloc_failed();
        cJSON *it = cJSON_CreateObject();
        json_add(data, NULL, it);
        json_add(it, "id", cJSON_CreateString(orch_task_id(t)));
        json_add(it, "object", cJSON_CreateString("task"));
        json_add(it, "created_at", cJSON_CreateNumber((double)(orch_task_created_unix_ms(t) / 1000)));
        json_add(it, "status", cJSON_CreateString(orch_task_status_str(orch_task_status(t))));
        json_add(it, "mode", cJSON_CreateString(orch_task_scripted(t) ? "script" : "model"));
        json_add(it, "input", in ? cJSON_CreateString(in) : NULL);
        json_add(it, "input_truncated", cJSON_CreateBool(cut < len));
        json_add(it, "rounds", cJSON_CreateNumber(orch_task_rounds(t)));
        json_add(it, "calls", cJSON_CreateNumber(orch_task_n_calls(t)));
        json_add(it, "trajectory", cJSON_CreateBool(orch_task_recorded(t)));
        if (orch_task_metadata(t))
            json_add(it, "metadata", cJSON_Duplicate(orch_task_metadata(t), 1));
        free(in);
        if (!first)
            first = orch_task_id(t);
        last = orch_task_id(t);
        n++;
    }
    json_add(root, "object", cJSON_CreateString("list"));
    json_add(root, "data", data);
    json_add(root, "first_id", first ? cJSON_CreateString(first) : cJSON_CreateNull());
    json_add(root, "last_id", last ? cJSON_CreateString(last) : cJSON_CreateNull());
    json_add(root, "has_more", cJSON_CreateBool(more));
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text || json_alloc_failures() != f0) {
        /* never a page with tasks or members missing */
        free(text);
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        reply_error(api, req, &e);
        return;
    }
    reply_json(api, req, 200, text);
    free(text);
}

/* A method `path` does not serve: OPTIONS is answered 204 No Content, any
 * other method 405 with the OpenAI error body; both carry "Allow: allow"
 * (the route's methods, OPTIONS included), as server.c's reply_method. */
static void reply_method(struct tasks_api *api, struct evhttp_request *req, const char *path, const char *allow)
{
    cors_allow_headers(req, allow);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_OPTIONS) {
        evhttp_send_reply(req, 204, api_http_reason(204), NULL);
        metrics_request(api->cfg.m, ROUTE_OTHER, 204);
        return;
    }
    struct api_error e;
    api_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                  "Method not allowed: %.100s accepts %s only", path, allow);
    reply_error(api, req, &e);
}

bool tasks_api_route(const char *path)
{
    return !strncmp(path, "/v1/tasks", 9) && (path[9] == '\0' || path[9] == '/');
}

void tasks_api_handle(struct tasks_api *api, struct evhttp_request *req, const char *path, uint32_t tenant)
{
    struct api_error e;
    char tenant_key[16]; /* the task's tenant: the engine tenant id in decimal */
    snprintf(tenant_key, sizeof tenant_key, "%u", (unsigned)tenant);
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const char *rest = path + 9;
    if (!*rest || !strcmp(rest, "/")) {
        if (method == EVHTTP_REQ_POST)
            handle_create(api, req, tenant_key);
        else if (method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD)
            handle_list(api, req, tenant_key);
        else
            reply_method(api, req, "/v1/tasks", "GET, HEAD, POST, OPTIONS");
        return;
    }
    const char *id = rest + 1;
    const char *slash = strchr(id, '/');
    size_t id_len = slash ? (size_t)(slash - id) : strlen(id);
    const char *sub = slash ? slash : "";
    bool events = !strcmp(sub, "/events"), trajectory = !strcmp(sub, "/trajectory");
    char idbuf[64];
    if ((*sub && !events && !trajectory) || id_len == 0 || id_len >= sizeof idbuf) {
        api_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "Unknown path %.100s", path);
        reply_error(api, req, &e);
        return;
    }
    if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD && (*sub || method != EVHTTP_REQ_DELETE)) {
        reply_method(api, req, path, *sub ? "GET, HEAD, OPTIONS" : "GET, HEAD, DELETE, OPTIONS");
        return;
    }
    memcpy(idbuf, id, id_len);
    idbuf[id_len] = '\0';
    struct orch_task *t = orch_task_find(api->orch, idbuf);
    if (t && strcmp(orch_task_tenant(t), tenant_key))
        t = NULL; /* another tenant's task: as if it did not exist */
    if (!t) {
        api_error_set(&e, 404, "invalid_request_error", "task_not_found", NULL,
                      "No task with id '%.64s' (unknown, or evicted after it finished)", idbuf);
        reply_error(api, req, &e);
        return;
    }
    if (events)
        handle_events(api, req, t);
    else if (trajectory)
        reply_trajectory(api, req, t);
    else if (method == EVHTTP_REQ_DELETE) {
        orch_task_cancel(t, "cancelled by the client (DELETE)");
        reply_summary(api, req, t);
    } else {
        reply_summary(api, req, t);
    }
}

/* ---- decider: the served model makes the decisions --------------------------- */

static void decision_free(struct decision *d)
{
    struct tasks_api *api = d->api;
    if (d->prev) d->prev->next = d->next; else if (api->decisions == d) api->decisions = d->next;
    if (d->next) d->next->prev = d->prev;
    free(d);
}

/* The final-only grammar whose uses may name `ids` (borrowed from the
 * cache: valid until the next call).  NULL on failure (ps_error_set). */
static grammar *final_grammar_get(struct tasks_api *api, const char *const *ids, int n)
{
    char key[FINAL_USES * 72 + 1] = "";
    size_t kl = 0;
    for (int i = 0; i < n; i++) {
        const int w = snprintf(key + kl, sizeof key - kl, "%s%s", i ? "," : "", ids[i]);
        if (w < 0 || (size_t)w >= sizeof key - kl) {
            /* the action grammar's ids are c1..c9999: longer ones never reach here */
            ps_error_set(PS_EINVAL, "final-only grammar: call ids longer than %zu bytes in all", sizeof key - 1);
            return NULL;
        }
        kl += (size_t)w;
    }
    int victim = 0;
    for (int i = 0; i < FINAL_CACHE; i++) {
        struct final_grammar *f = &api->finals[i];
        if (f->g && !strcmp(f->key, key)) {
            f->used = ++api->final_tick;
            return f->g;
        }
        if (!f->g || (api->finals[victim].g && f->used < api->finals[victim].used))
            victim = i;
    }
    cJSON *root = cJSON_CreateObject(), *fin = NULL, *props, *ans, *req;
    char *schema = NULL, *kcopy = strdup(key);
    grammar *g = NULL;
    if (!root || !kcopy || !cJSON_AddStringToObject(root, "type", "object"))
        goto oom;
    props = cJSON_AddObjectToObject(root, "properties");
    fin = props ? cJSON_AddObjectToObject(props, "final") : NULL;
    if (!fin || !cJSON_AddStringToObject(fin, "type", "object") || !(props = cJSON_AddObjectToObject(fin, "properties")) ||
        !(ans = cJSON_AddObjectToObject(props, "answer")) || !cJSON_AddStringToObject(ans, "type", "string"))
        goto oom;
    if (n > 0) {
        cJSON *uses = cJSON_AddObjectToObject(props, "uses"), *items, *en;
        if (!uses || !cJSON_AddStringToObject(uses, "type", "array") || !cJSON_AddNumberToObject(uses, "maxItems", n) ||
            !(items = cJSON_AddObjectToObject(uses, "items")) || !(en = cJSON_AddArrayToObject(items, "enum")))
            goto oom;
        for (int i = 0; i < n; i++) {
            if (!json_add(en, NULL, cJSON_CreateString(ids[i])))
                goto oom;
        }
    }
    if (!(req = cJSON_AddArrayToObject(fin, "required")) || !cJSON_AddFalseToObject(fin, "additionalProperties"))
        goto oom;
    if (!json_add(req, NULL, cJSON_CreateString("answer")) || !(req = cJSON_AddArrayToObject(root, "required")) ||
        !cJSON_AddFalseToObject(root, "additionalProperties") || !json_add(req, NULL, cJSON_CreateString("final")))
        goto oom;
    if (!(schema = cJSON_PrintUnformatted(root)))
        goto oom;
    /* Not in the vocabulary's shared cache: these sets would churn it. */
    struct grammar_options opt = { .flags = GRAMMAR_OPT_NO_CACHE };
    if (grammar_compile(api->vocab, schema, strlen(schema), &opt, &g))
        goto fail;
    struct final_grammar *f = &api->finals[victim];
    grammar_free(f->g);
    free(f->key);
    f->key = kcopy;
    f->g = g;
    f->used = ++api->final_tick;
    cJSON_Delete(root);
    free(schema);
    return g;
oom:
    ps_error_set(PS_ENOMEM, "out of memory");
fail:
    cJSON_Delete(root);
    free(schema);
    free(kcopy);
    return NULL;
}

/* The text the engine decodes a decision from: the chat template over the
 * decision system prompt and `prompt`, then the prefix the model continues
 * (caller frees *out). */
/* The decision prompt: the task's prompt (task input, catalogue, ledger
 * with agents' results) is the user message, so special-token text in it
 * stays text (chat.h); the action prefix the model continues is text too. */
static int decision_text(const struct tasks_api *api, const char *prompt, struct chat_prompt *out)
{
    struct chat_message msgs[2] = { { CHAT_SYSTEM, ORCH_SYSTEM_PROMPT }, { CHAT_USER, prompt } };
    int rc = chat_template_render(api->cfg.tmpl, msgs, 2, 1, out);
    if (rc)
        return rc;
    if ((rc = chat_prompt_append_text(out, api->action_grammar ? "" : DECISION_PREFIX)))
        chat_prompt_free(out);
    return rc;
}

static int32_t decision_max_tokens(const struct tasks_api *api, const struct orch_task *t)
{
    return api->action_grammar && orch_task_final_only(t) ? FINAL_MAX_TOKENS : DECISION_MAX_TOKENS;
}

/* orch_decider.over_context: prompt tokens (BOS included) + the decision's
 * max_tokens - n_ctx.  0 (fits) when the context or tokenizer is unknown or
 * the prompt cannot be rendered: start() then reports the problem. */
static int32_t decider_over_context(void *ctx, struct orch_task *t, const char *prompt)
{
    struct tasks_api *api = ctx;
    if (!api->cfg.tok || api->cfg.n_ctx <= 0)
        return 0;
    struct chat_prompt cp;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (decision_text(api, prompt, &cp))
        return 0;
    if (tokenizer_encode_spans(api->cfg.tok, cp.text, cp.len, cp.markup, cp.n_markup, &ids, &n_ids)) {
        chat_prompt_free(&cp);
        return 0;
    }
    /* kept for decider_start: the same text is the same rendering (the
     * system turn, user markers and suffix are fixed), so the same ids */
    tok_cache_clear(api);
    api->tok_text = cp.text;
    cp.text = NULL;
    chat_prompt_free(&cp);
    api->tok_ids = ids;
    api->tok_n = n_ids;
    const int64_t need = (int64_t)n_ids + 1 + decision_max_tokens(api, t);
    return need > api->cfg.n_ctx ? (int32_t)(need - api->cfg.n_ctx) : 0;
}

static void *decider_start(void *ctx, struct orch_task *t, const char *prompt)
{
    struct tasks_api *api = ctx;
    struct chat_prompt cp = { 0 };
    struct decision *d = calloc(1, sizeof *d);
    if (!d) {
        ps_error_set(PS_ENOMEM, "out of memory");
        return NULL;
    }
    if (decision_text(api, prompt, &cp))
        goto fail;
    const char *prefix = api->action_grammar ? "" : DECISION_PREFIX;
    const size_t np = strlen(prefix);
    struct engine_request er = {
        .tenant = (uint32_t)strtoul(orch_task_tenant(t), NULL, 10), /* decimal engine tenant id */
        .priority = 0, .queued_since = orch_task_created_ns(t), .prompt = cp.text, .special_spans = cp.markup,
        .n_special_spans = (int32_t)cp.n_markup, .add_bos = true,
        .max_tokens = decision_max_tokens(api, t), .sampling = sampler_params_default(), /* greedy */
        .user = (void *)((uintptr_t)d | DECISION_TAG),
    };
    /* Every token masked to the action grammar: the decision is a valid
     * action whose calls name known agents with schema-valid args.  The
     * engine retains the grammar for the request's life. */
    if (api->action_grammar && orch_task_final_only(t)) {
        const char *ids[FINAL_USES];
        int n = orch_task_finished_ids(t, ids, FINAL_USES);
        grammar *g = final_grammar_get(api, ids, n);
        if (!g)
            goto fail;
        er.constraint = grammar_constraint(g);
    } else if (api->action_grammar) {
        er.constraint = grammar_constraint(api->action_grammar);
    }
    /* The ids decider_over_context counted for this very text, BOS first
     * as the engine would add it: submitted instead of the text. */
    int32_t *pids = NULL;
    if (api->tok_text && api->cfg.tok && !strcmp(api->tok_text, cp.text) && api->tok_n < INT32_MAX - 1) {
        const bool bos = tokenizer_add_bos(api->cfg.tok) && tokenizer_bos(api->cfg.tok) >= 0;
        if ((pids = malloc((api->tok_n + 1) * sizeof *pids))) {
            size_t n = 0;
            if (bos)
                pids[n++] = tokenizer_bos(api->cfg.tok);
            if (api->tok_n)
                memcpy(pids + n, api->tok_ids, api->tok_n * sizeof *pids);
            n += api->tok_n;
            er.prompt = NULL;
            er.special_spans = NULL;
            er.n_special_spans = 0;
            er.prompt_ids = pids;
            er.n_prompt_ids = (int32_t)n;
        }
    }
    tok_cache_clear(api);
    int src = engine_submit(api->cfg.eng, &er, &d->eng_id);   /* copies the ids */
    free(pids);
    if (src)
        goto fail;
    chat_prompt_free(&cp);
    d->api = api;
    d->t = t;
    d->round = orch_task_rounds(t);
#ifdef PS_FAULT_INJECTION
    if (api->fail_decisions > 0) {
        api->fail_decisions--;
        d->inject_failure = 1;
    }
#endif
    snprintf(d->task_id, sizeof d->task_id, "%s", orch_task_id(t));
    d->next = api->decisions;
    if (api->decisions)
        api->decisions->prev = d;
    api->decisions = d;
    if (np)
        orch_task_decision_text(t, prefix, np);
    return d;
fail:
    chat_prompt_free(&cp);
    free(d);
    return NULL;
}

static void decider_cancel(void *ctx, void *handle)
{
    struct tasks_api *api = ctx;
    struct decision *d = handle;
    d->t = NULL;
    engine_cancel(api->cfg.eng, d->eng_id);
}

bool tasks_api_owns_event(const struct engine_event *ev)
{
    return ((uintptr_t)ev->user & DECISION_TAG) != 0;
}

/* The line on_task_done left for decision d's usage, written now (owner:
 * its task, kept from eviction by d->pin), and the pin dropped. */
static void trajectory_due_write(struct tasks_api *api, struct decision *d, struct orch_task *owner)
{
    d->trajectory_due = 0;
    if (owner)   /* always: pinned until now */
        task_finished_write(api, owner);
    orch_unsubscribe(d->pin);
    d->pin = NULL;
}

void tasks_api_engine_event(struct tasks_api *api, const struct engine_event *ev)
{
    struct decision *d = (struct decision *)((uintptr_t)ev->user & ~DECISION_TAG);
    if (ev->kind == ENGINE_EV_TOKEN && d->inject_failure)
        return;
    if (ev->kind == ENGINE_EV_TOKEN) {
        /* The action closed (or cannot be one): stop decoding, decide now. */
        /* decision_text may end the task (a subscriber cancels it from an
         * event), which cancels this decision: d->t is NULL then. */
        struct orch_task *t = d->t;
        if (t && ev->text_len && orch_task_decision_text(t, ev->text, ev->text_len) && d->t) {
            d->t = NULL;
            engine_cancel(api->cfg.eng, d->eng_id);
            /* the usage so far (this token included), before the decision
             * ends: a final action ends the task, whose task.final lists
             * every round's usage */
            orch_task_decision_usage(t, d->round, ev->n_prompt, ev->n_cached, ev->n_generated);
            d->usage_recorded = 1;
            orch_task_decision_end(t, PS_OK, NULL);
        }
        return;
    }
    api->cfg.m->prompt_tokens += (uint64_t)ev->n_prompt;
    api->cfg.m->cached_prompt_tokens += (uint64_t)ev->n_cached;
    api->cfg.m->generated_tokens += (uint64_t)ev->n_generated;
    struct orch_task *owner = orch_task_find(api->orch, d->task_id);
    if (owner && !d->usage_recorded) {
        orch_task_decision_usage(owner, d->round, ev->n_prompt, ev->n_cached, ev->n_generated);
        /* recorded before the decision ends below: a task that ends there
         * (an engine error fails it) has its line written at once */
        d->usage_recorded = 1;
    }
    if (d->trajectory_due)
        trajectory_due_write(api, d, owner);
    if (d->t) {
        struct orch_task *t = d->t;
        d->t = NULL;
        if (d->inject_failure)
            orch_task_decision_end(t, PS_EINTERNAL, "engine failure (injected: POST /debug/fail-decisions)");
        else if (ev->status)
            orch_task_decision_end(t, PS_EINVAL, ev->error ? ev->error : "the engine rejected the decision prompt");
        else if (ev->finish == FINISH_ERROR)
            orch_task_decision_end(t, PS_EINTERNAL, ev->error ? ev->error : "engine failure");
        else if (ev->finish == FINISH_CANCELLED)
            orch_task_decision_end(t, PS_ECANCELLED, "the engine cancelled the decision (shutting down)");
        else
            orch_task_decision_end(t, PS_OK, NULL);
    }
    decision_free(d);
}

/* ---- lifecycle ------------------------------------------------------------------ */

static int file_readable(const char *path)
{
    return access(path, R_OK) == 0;
}

/* configs/agents.default.json from the working directory, else from the
 * source tree the binary sits in (build/paraserve -> configs/). */
static void default_agents(char *out, size_t n)
{
    out[0] = '\0';
    if (file_readable(DEFAULT_AGENTS)) {
        snprintf(out, n, "%s", DEFAULT_AGENTS);
        return;
    }
    char exe[1024];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';
    char cand[1200];
    int len2 = snprintf(cand, sizeof cand, "%s/../%s", exe, DEFAULT_AGENTS);
    if (len2 > 0 && (size_t)len2 < n && file_readable(cand))
        memcpy(out, cand, (size_t)len2 + 1);
}

/* The grammar unrolls string length bounds; long ones (a calculator's
 * maxLength 4096) would exceed its compile limits.  Drop bounds above
 * GRAMMAR_MAX_LENGTH from the copy the grammar sees: the executor still
 * checks args against the agent's real input_schema. */
#define GRAMMAR_MAX_LENGTH 256
static void loosen_lengths(cJSON *node)
{
    for (cJSON *c = node ? node->child : NULL, *nx; c; c = nx) {
        nx = c->next;
        if (c->string && !strcmp(c->string, "maxLength") && cJSON_IsNumber(c) &&
            c->valuedouble > GRAMMAR_MAX_LENGTH)
            cJSON_Delete(cJSON_DetachItemViaPointer(node, c));
        else
            loosen_lengths(c);
    }
}

/* Action schema over the catalogue text `cats`, the vocabulary (the
 * server's, else our own) and the compiled grammar.  On failure the caller
 * releases what was made. */
/* The model never writes call ids: the task assigns fresh ones (task.h),
 * so no decision can reuse one.  Drop "id" from every call branch of the
 * action schema (calls.items.anyOf[*]). */
static int strip_call_ids(char **schema)
{
    cJSON *root = cJSON_Parse(*schema), *br;
    if (!root)
        return ps_error_set(PS_ENOMEM, "out of memory");
    cJSON_ArrayForEach(br, json_get(root, "anyOf")) {
        cJSON *calls = json_get(json_get(br, "properties"), "calls");
        cJSON *items = json_get(calls, "items"), *call;
        cJSON_ArrayForEach(call, json_get(items, "anyOf")) {
            cJSON_DeleteItemFromObjectCaseSensitive(json_get(call, "properties"), "id");
            cJSON *req = json_get(call, "required"), *r, *nx;
            for (r = req ? req->child : NULL; r; r = nx) {
                nx = r->next;
                if (cJSON_IsString(r) && !strcmp(r->valuestring, "id"))
                    cJSON_Delete(cJSON_DetachItemViaPointer(req, r));
            }
        }
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out)
        return ps_error_set(PS_ENOMEM, "out of memory");
    free(*schema);
    *schema = out;
    return PS_OK;
}

static int action_grammar_build(struct tasks_api *api, const struct tasks_api_config *cfg, const char *cats)
{
    int rc = grammar_action_schema(cats, strlen(cats), &api->action_schema);
    if (!rc)
        rc = strip_call_ids(&api->action_schema);
    if (rc)
        return rc;
    if (cfg->vocab) {
        api->vocab = cfg->vocab;
    } else {
        if (!cfg->tok)
            return ps_error_set(PS_EINVAL, "no tokenizer for the grammar vocabulary");
        if ((rc = grammar_vocab_create(cfg->tok, &api->vocab)))
            return rc;
        api->own_vocab = true;
    }
    return grammar_compile(api->vocab, api->action_schema, strlen(api->action_schema), NULL,
                           &api->action_grammar);
}

int tasks_api_create(const struct tasks_api_config *cfg, struct tasks_api **out)
{
    int rc;
    *out = NULL;
    struct tasks_api *api = calloc(1, sizeof *api);
    if (!api)
        return ps_error_set(PS_ENOMEM, "out of memory");
    api->cfg = *cfg;
    api->traj_fd = -1;
    api->cfg.trajectories_path = NULL;
    api->cfg.task_store_path = NULL;
    api->cfg.tenant_names = NULL;
    api->cfg.agents_path = NULL;
    api->cfg.local_url = NULL;
    api->cfg.local_header = NULL;
    api->cfg.local_tenant_header = NULL;
    if (cfg->agents_path && cfg->agents_path[0])
        snprintf(api->agents_path, sizeof api->agents_path, "%s", cfg->agents_path);
    else
        default_agents(api->agents_path, sizeof api->agents_path);
    rc = api->agents_path[0] ? registry_load_file(api->agents_path, &api->reg)
                             : registry_load_json("{\"agents\":[]}", "(no agent pool)", &api->reg);
    if (rc)
        goto fail;
    const struct exec_config dcfg = { .local_url = cfg->local_url, .local_header = cfg->local_header };
    if ((rc = agents_describe(api->reg, &dcfg, DESCRIBE_WAIT_MS, stderr, NULL)))
        goto fail;
    if (registry_count(api->reg)) {
        cJSON *cat = registry_catalogue(api->reg);
        loosen_lengths(cat);
        char *cats = cat ? cJSON_PrintUnformatted(cat) : NULL;
        cJSON_Delete(cat);
        if (!cats) {
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto fail;
        }
        int64_t t0 = orch_now_ns();
        if (action_grammar_build(api, cfg, cats)) {
            fprintf(stderr, "paraserve: %s: no action grammar for this pool, decisions are unconstrained (%s)\n",
                    api->agents_path, ps_error_last());
            grammar_free(api->action_grammar);
            api->action_grammar = NULL;
            if (api->own_vocab)
                grammar_vocab_free(api->vocab);
            api->vocab = NULL;
            api->own_vocab = false;
        } else {
            fprintf(stderr, "paraserve: action grammar for %d agent(s) compiled in %.0f ms\n",
                    registry_count(api->reg), (double)(orch_now_ns() - t0) / 1e6);
        }
        free(cats);
    }
    struct exec_config ecfg = { .local_url = cfg->local_url, .local_header = cfg->local_header,
                                .local_tenant_header = cfg->local_tenant_header, .local_model = "default",
                                .http_threads = cfg->http_threads };
    if (cfg->trajectories_path && cfg->trajectories_path[0]) {
        if (strlen(cfg->trajectories_path) >= sizeof api->traj_path) {
            rc = ps_error_set(PS_EINVAL, "--trajectories: the path is longer than %zu bytes", sizeof api->traj_path - 1);
            goto fail;
        }
        snprintf(api->traj_path, sizeof api->traj_path, "%s", cfg->trajectories_path);
        if ((api->traj_fd = trajectory_file_open(api->traj_path)) < 0) {
            char why[1280];   /* a copy: ps_error_set must not read the message it writes */
            snprintf(why, sizeof why, "%s", ps_error_last());
            rc = ps_error_set(PS_EIO, "--trajectories %s", why);
            goto fail;
        }
    }
    const struct orch_config ocfg = { .keep_finished = cfg->keep_tasks, .max_running = cfg->max_running,
                                      .max_running_per_tenant = cfg->max_running_per_tenant,
                                      .record_trajectories = api->traj_fd >= 0 };
    ps_error_clear();
    if (!(api->orch = orch_create(cfg->base, api->reg, &ecfg, &ocfg))) {
        /* orch_create states its cause (ps_error_set): an allocation, an
         * I/O thread that could not start, ... */
        rc = ps_error_last_status() != PS_OK ? ps_error_last_status() : PS_EINTERNAL;
        goto fail;
    }
    struct orch_decider dec = { decider_start, decider_cancel, api, decider_over_context };
    orch_set_decider(api->orch, &dec);
    api->n_tenant_names = cfg->n_tenant_names < METRICS_MAX_TENANTS ? cfg->n_tenant_names : METRICS_MAX_TENANTS;
    for (int i = 0; i < api->n_tenant_names; i++)
        api->tenant_names[i] = cfg->tenant_names[i];
    /* tenant 0 (requests without a key) is stored under a name no key's
     * tenant can have ([A-Za-z0-9_.:-]): a key tenant named like the
     * open server's "anonymous" never inherits its tasks, nor they its */
    if (api->n_tenant_names > 0)
        api->tenant_names[0] = TASK_STORE_TENANT_NO_KEY;
    if (cfg->task_store_path && cfg->task_store_path[0]) {
        if ((rc = task_store_open(cfg->task_store_path, ocfg.keep_finished > 0 ? ocfg.keep_finished : 10000,
                                  &api->store)))
            goto fail;
        struct restore_ctx rctx = { .api = api };
        int damaged = 0;
        const int64_t t0 = orch_now_ns();
        if ((rc = task_store_each(api->store, restore_one, &rctx, &damaged)))
            goto fail;
        fprintf(stderr, "paraserve: task store %s: %lld finished task(s) restored in %.0f ms", cfg->task_store_path,
                (long long)api->restored, (double)(orch_now_ns() - t0) / 1e6);
        if (rctx.interrupted)
            fprintf(stderr, "; %d of them had not ended when the server stopped: failed now", rctx.interrupted);
        if (damaged)
            fprintf(stderr, "; %d damaged row(s) skipped", damaged);
        if (rctx.skipped)
            fprintf(stderr, "; %d skipped (the first: %s)", rctx.skipped, rctx.first_skip);
        fprintf(stderr, "\n");
    }
    if (api->traj_fd >= 0 || api->store)
        orch_set_done_cb(api->orch, on_task_done, api);
    if (cfg->sse_heartbeat_ms > 0) {
        const struct timeval tv = { cfg->sse_heartbeat_ms / 1000, (cfg->sse_heartbeat_ms % 1000) * 1000 };
        if (!(api->heartbeat = event_new(cfg->base, -1, EV_PERSIST, on_heartbeat, api)) ||
            event_add(api->heartbeat, &tv)) {
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = api;
    return PS_OK;
fail:
    tasks_api_free(api);
    return rc;
}

void tasks_api_stop(struct tasks_api *api)
{
    if (!api || api->stopped)
        return;
    api->stopped = true;
    if (api->heartbeat)
        event_free(api->heartbeat);
    api->heartbeat = NULL;
    while (api->waiters) {        /* normally none: evhttp_free closed them */
        struct waiter *w = api->waiters;
        w->req = NULL;
        waiter_free(w);
    }
    /* lines waiting for a decision's usage: written without it */
    for (struct decision *d = api->decisions; d; d = d->next)
        if (d->trajectory_due)
            trajectory_due_write(api, d, orch_task_find(api->orch, d->task_id));
    orch_destroy(api->orch);      /* cancels running decisions in the engine */
    api->orch = NULL;
    while (api->decisions)
        decision_free(api->decisions);
    registry_free(api->reg);
    api->reg = NULL;
}

void tasks_api_free(struct tasks_api *api)
{
    if (!api)
        return;
    tasks_api_stop(api);
    tok_cache_clear(api);
    grammar_free(api->action_grammar);   /* the vocab goes after its grammars */
    for (int i = 0; i < FINAL_CACHE; i++) {
        grammar_free(api->finals[i].g);
        free(api->finals[i].key);
    }
    if (api->own_vocab)
        grammar_vocab_free(api->vocab);
    free(api->action_schema);
    if (api->traj_fd >= 0)
        close(api->traj_fd);
    task_store_close(api->store);
    free(api);
}

const char *tasks_api_agents_path(const struct tasks_api *api) { return api->agents_path; }
int tasks_api_n_agents(const struct tasks_api *api) { return registry_count(api->reg); }

int64_t tasks_api_local_concurrency(const struct tasks_api *api)
{
    int64_t n = 0;
    for (int i = 0; i < registry_count(api->reg); i++) {
        const struct agent_spec *a = registry_at(api->reg, i);
        if (a->kind == AGENT_LOCAL)
            n += a->max_concurrency;
    }
    return n;
}

int tasks_api_metrics(const struct tasks_api *api, struct metrics_orch *out)
{
    struct exec *ex = orch_executor(api->orch);
    int n = exec_agent_count(ex);
    struct exec_agent_stats *agents = calloc((size_t)n + 1, sizeof *agents);
    if (!agents)
        return ps_error_set(PS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        exec_get_agent_stats(ex, i, &agents[i]);
    *out = (struct metrics_orch){ .agents = agents, .n_agents = n, .unknown_agent_calls = exec_unknown_agent_calls(ex) };
    orch_get_stats(api->orch, &out->tasks);
    out->trajectories_written = api->traj_written;
    out->trajectory_write_errors = api->traj_write_errors;
    out->tasks_stored = api->stored;
    out->task_store_errors = api->store_errors;
    out->tasks_restored = api->restored;
    exec_get_stats(ex, &out->exec);
    return PS_OK;
}

int tasks_api_reopen_trajectories(struct tasks_api *api)
{
    if (!api || api->traj_fd < 0)
        return PS_OK;
    int fd = trajectory_file_open(api->traj_path);
    if (fd < 0) {
        char why[1280];   /* a copy: ps_error_set must not read the message it writes */
        snprintf(why, sizeof why, "%s", ps_error_last());
        return ps_error_set(PS_EIO, "--trajectories %s (lines go on to the file open before)", why);
    }
    close(api->traj_fd);
    api->traj_fd = fd;
    return PS_OK;
}

#ifdef PS_FAULT_INJECTION
void tasks_api_fail_decisions(struct tasks_api *api, int n) { api->fail_decisions = n; }
#endif

void tasks_api_drain(struct tasks_api *api)
{
    if (!api)
        return;
    api->draining = true;
    orch_cancel_all(api->orch, "cancelled: the server is shutting down");
}
