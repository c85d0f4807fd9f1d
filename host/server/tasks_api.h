/* tasks_api.h - the orchestrator's tasks API inside `paraserve serve`, and
 * the engine-backed decider that lets the served model make a task's
 * decisions.
 *
 * Routes (server.c hands every path under /v1/tasks to tasks_api_handle):
 *   POST   /v1/tasks              {"input","stream"?,"max_rounds"?,"max_calls"?,
 *                                  "deadline_ms"?,"script"?,"metadata"?}
 *          stream false: 200 with the summary when the task ends
 *            {"id","status":"completed|failed|cancelled","output","calls":[...],
 *             "rounds","error"?,"usage"?}
 *          stream true: SSE, one event per task event:
 *            "id: N\nevent: TYPE\ndata: JSON\n\n", ending after task.final /
 *            task.error.
 *   GET    /v1/tasks?limit=&after=&status=&order=
 *                                 the caller's tenant's tasks (running, and finished
 *                                 ones not yet evicted), newest first (order=asc:
 *                                 oldest first), limit 1-100 (20), after = the
 *                                 previous page's last_id, status filter:
 *            {"object":"list","data":[{"id","object":"task","created_at","status",
 *             "mode","input" (256 bytes at most),"input_truncated","rounds",
 *             "calls"}],"first_id","last_id","has_more"}
 *   GET    /v1/tasks/{id}         200 summary (status "running" while it runs)
 *   GET    /v1/tasks/{id}/events  SSE replay of events with id > Last-Event-ID
 *                                 (request header; 0 when absent), then live ones
 *   DELETE /v1/tasks/{id}         cooperative cancel; 200 summary
 * Errors are OpenAI-shaped: 400 (malformed JSON, invalid UTF-8, a bad field:
 * `param` names it), 404 unknown task, 405 wrong method (Allow header), 413
 * body over max_body_bytes, 503 POST while shutting down, 500 out of memory.
 *
 * Threads: everything runs on the server's event-loop thread; the tasks'
 * executor shares that loop (libcurl multi on libevent).  Decisions go to
 * the engine thread as ordinary engine requests (tenant 0, greedy,
 * DECISION_MAX_TOKENS) whose `user` pointer carries a tag bit so that
 * server.c can route their events here (tasks_api_owns_event).  Each is
 * constrained by the action grammar (grammar_action_schema over the pool:
 * every decision parses, every call names a known agent with args valid
 * under its input_schema); without one (empty pool, or a schema the
 * grammar compiler does not support) decisions decode unconstrained.
 * The grammar leaves call ids out (the task assigns fresh ones, so none is
 * ever reused).  A decision the task marks final-only (its last round, its
 * call limit, its deadline near: orch_task_final_only) is decoded under a
 * final grammar instead, {"final":{"answer", "uses"?: finished call ids}}
 * with a 128-token budget: it parses and completes the task, and one cut by
 * the budget completes it with the answer decoded so far.  Final grammars
 * are compiled per set of finished ids on first use (~2 ms on the event
 * loop for the 49k-token vocabulary) and kept in an LRU of 32, outside the
 * vocabulary's shared cache.
 *
 * HTTP waiter life (one per POST / GET events request):
 *   created ──terminal event──► finish (deferred to the loop) ──► reply ends, freed
 *      └──client closed (close callback / EOF watch)──► unsubscribed, request
 *         ended, freed; the task keeps running (GET and /events still work).
 * A waiter holds a subscription, so its task is never evicted under it.
 */
#ifndef PS_SERVER_TASKS_API_H
#define PS_SERVER_TASKS_API_H

#include <stdbool.h>
#include <stdint.h>

#include "../engine/engine.h"
#include "../grammar/grammar.h"
#include "../model/chat.h"

struct event_base;
struct evhttp_request;
struct metrics;
struct tasks_api;

struct tasks_api_config {
    struct event_base   *base;        /* the server's loop (borrowed) */
    engine              *eng;         /* borrowed; must outlive the API */
    const chat_template *tmpl;        /* renders the decision prompt (borrowed) */
    grammar_vocab       *vocab;       /* the server's grammar vocabulary (borrowed; must
                                         outlive the API); NULL: built from tok */
    const tokenizer     *tok;         /* counts decision prompt tokens; also builds a
                                         vocabulary of our own when vocab is NULL
                                         (borrowed; must outlive the API) */
    int32_t              n_ctx;       /* the engine's context per sequence: a decision
                                         prompt that would not fit with its output drops
                                         the task's oldest transcript (0: unchecked) */
    struct metrics      *m;           /* request and token counters (borrowed) */
    const char          *agents_path; /* NULL / "": configs/agents.default.json
                                         (cwd, else beside the binary's ../configs)
                                         when present, else an empty pool */
    const char          *local_url;   /* chat-completions URL of this server (kind local) */
    const char          *local_header;/* "Name: value" line local agents send there, or NULL */
    const char          *local_tenant_header; /* header name that carries the task's
                                         tenant (the decimal engine id) on its local
                                         agents' requests, or NULL */
    int                  max_body_bytes;
    int                  sse_heartbeat_ms; /* event streams: ': keep-alive' this often (0: off) */
    int                  http_threads;     /* exec_config.http_threads */
    int                  keep_tasks;       /* orch_config.keep_finished (0: its default) */
    int                  max_running;      /* orch_config.max_running (0: no limit) */
    int                  max_running_per_tenant; /* orch_config.max_running_per_tenant */
    const char          *task_store_path; /* NULL / "": none; else finished tasks are kept in
                                         this SQLite file (host/store/task_store.h) and
                                         the newest keep_tasks of them restored at create */
    const char *const   *tenant_names;  /* [n_tenant_names]: each engine tenant id's name
                                         (the store keeps tasks by tenant name) */
    int                  n_tenant_names;
    const char          *trajectories_path; /* NULL / "": none; else every task records its
                                         trajectory (unless its request says
                                         "trajectory": false), appended to this file as
                                         one JSON line when it ends (opened at create:
                                         an error names the path) */
    /* Shutdown accounting shared with the server: every waiting request
     * counts in m->in_flight until its reply ends, and its final reply in
     * *flushing until libevent has written it; drained(drained_ud) is called
     * after each such decrement so the server can exit once all are done. */
    int32_t             *flushing;
    void               (*drained)(void *ud);
    void                *drained_ud;
};

/* Load the agent pool and start the orchestrator on cfg->base.  PS_OK and
 * *out, or a status with a detail naming the file / field. */
int  tasks_api_create(const struct tasks_api_config *cfg, struct tasks_api **out);
/* Shutdown in two steps around engine_free:
 *   evhttp_free(http);     closes the waiters' connections
 *   tasks_api_stop(api);   cancels running decisions in the engine, frees
 *                          tasks, executor and pool
 *   engine_free(eng);      releases the engine's references to the grammar
 *   tasks_api_free(api);   frees the action grammar, its vocabulary, the rest
 * tasks_api_free also stops when tasks_api_stop was not called (then only
 * before engine_free).  Both NULL-safe. */
void tasks_api_stop(struct tasks_api *api);
void tasks_api_free(struct tasks_api *api);

/* The pool file actually loaded ("" when none) and its agent count. */
const char *tasks_api_agents_path(const struct tasks_api *api);
int         tasks_api_n_agents(const struct tasks_api *api);
/* Local-agent calls the pool may have in flight at once: the sum of its
 * kind-local agents' max_concurrency (0 without local agents). */
int64_t     tasks_api_local_concurrency(const struct tasks_api *api);

/* Open the --trajectories path again (SIGHUP, after a log rotation moved
 * the file): later lines go to the file now at that path.  PS_OK (also
 * without --trajectories), or PS_EIO naming the path, the old file kept. */
int tasks_api_reopen_trajectories(struct tasks_api *api);

#ifdef PS_FAULT_INJECTION
/* Test builds: the next n model decisions fail as an engine failure does
 * (their tokens are ignored; the engine's end reports the failure). */
void tasks_api_fail_decisions(struct tasks_api *api, int n);
#endif

/* True for "/v1/tasks" and every path below it. */
bool tasks_api_route(const char *path);
/* Answer one request under /v1/tasks (takes over `req`) for the caller's
 * engine tenant: its tasks' decisions run as that tenant (prefix cache),
 * and another tenant's task ids answer 404. */
void tasks_api_handle(struct tasks_api *api, struct evhttp_request *req, const char *path, uint32_t tenant);

/* True when an engine event belongs to a decision of this API. */
bool tasks_api_owns_event(const struct engine_event *ev);
/* Consume such an event (borrowed; the caller frees the list). */
void tasks_api_engine_event(struct tasks_api *api, const struct engine_event *ev);

/* The numbers /metrics shows of the tasks, agents and agent calls: *out
 * filled, out->agents malloc'd (the caller frees it; its names are
 * borrowed from the pool).  PS_ENOMEM. */
struct metrics_orch;
int  tasks_api_metrics(const struct tasks_api *api, struct metrics_orch *out);

/* Shutdown: refuse new tasks (503) and cancel the running ones. */
void tasks_api_drain(struct tasks_api *api);

#endif /* PS_SERVER_TASKS_API_H */
