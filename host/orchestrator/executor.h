/* executor.h - runs agent calls asynchronously on one libevent loop.
 *
 * Calls belong to a group (one per task).  A call is dispatched the moment
 * every id in its `after` list has finished ok (a DAG, never a barrier);
 * a dependency that ends in any other status ends its dependents with
 * `cancelled`.  Each finished call yields exactly one feedback record
 * (proto/feedback.schema.json) through the group's callback.
 *
 * Call states (exec.c names the function of each transition):
 *
 *   submit ──► WAITING (deps) ──deps ok──► READY ──slot free──► RUNNING
 *                 │                          │ (agent queue)       │ │ │
 *                 │ dep failed               │ breaker open        │ │ └─retryable fail─► BACKOFF ─timer─► READY
 *                 ▼                          ▼                     │ └─timeout───────────────────────┐
 *               DONE ◄────────────────────── DONE ◄── ok / error ──┘       cancel (any state) ──────► DONE
 *
 * Invariants:
 *  1. A call is in at most one of: an agent's queue, an adapter (RUNNING),
 *     a backoff/timeout timer.  An agent never has more than
 *     max_concurrency calls RUNNING.
 *  2. DONE is final: a cancelled or timed-out call's adapter operation is
 *     aborted first, so a late reply can never produce a second record.
 *  3. The group callback is never called from inside exec_group_submit()
 *     (a rejection at submit is delivered on a later loop turn);
 *     exec_group_cancel() and exec_group_cancel_all() deliver the cancelled
 *     calls' records, and those of the dependents they end, before they
 *     return.  The callback must not submit, cancel or destroy the group
 *     itself: defer to the loop instead.
 *
 * Arguments may reference finished calls: "{{c1}}" inside a longer string
 * is replaced by c1's result text (exec_result_text), and a string value
 * exactly "{{c1}}" by c1's result as a JSON value - or by that same text
 * where the agent's input_schema at that argument admits a string but not
 * the value's JSON type (jschema_wants_text), so a number result fills a
 * string-typed argument as "42".  "{{c1.a.b}}" selects a member of the
 * result.  Arguments are validated against the agent's input_schema after
 * substitution; a failure (or an unknown agent) is `rejected` without
 * calling the agent.
 */
#ifndef PS_ORCH_EXECUTOR_H
#define PS_ORCH_EXECUTOR_H

#include <stdint.h>
#include <cjson/cJSON.h>

#include "common/histogram.h"

struct event_base;
struct registry;
struct exec;
struct exec_group;

#define FB_STATUS_TABLE(X)                  \
    X(FB_OK,          "ok")                 \
    X(FB_PARSE_ERROR, "parse_error")        \
    X(FB_EXEC_ERROR,  "exec_error")         \
    X(FB_TIMEOUT,     "timeout")            \
    X(FB_CANCELLED,   "cancelled")          \
    X(FB_REJECTED,    "rejected")

enum fb_status {
#define FB_STATUS_ENUM(c, s) c,
    FB_STATUS_TABLE(FB_STATUS_ENUM)
#undef FB_STATUS_ENUM
    FB_STATUS_COUNT
};

const char *fb_status_str(enum fb_status s);

/* One finished call.  All pointers are borrowed: valid during the callback
 * only (duplicate what you keep). */
struct exec_feedback {
    const char    *id;
    const char    *to;
    enum fb_status status;
    const cJSON   *result;       /* NULL unless status ok */
    const char    *error;        /* NULL when status ok */
    int64_t        ms;           /* submit -> finished */
    int            attempts;     /* adapter attempts made (0: never called) */
    int64_t        dispatch_to_recv_ns;  /* last attempt: dispatch -> agent got request; -1 unknown */
    int64_t        reply_to_record_ns;   /* agent sent reply -> this record; -1 unknown */
};

typedef void (*exec_feedback_fn)(void *ud, const struct exec_feedback *fb);

struct exec_config {
    const char *local_url;   /* OpenAI chat-completions URL serving the
                                embedded model, for kind "local"; NULL: none */
    const char *local_model; /* model name sent there ("default") */
    const char *local_header;/* "Name: value" line sent with every local
                                request (serve's local agents' token); NULL:
                                none */
    const char *local_tenant_header; /* header name carrying a group's tenant
                                (exec_group_set_tenant) on its local requests,
                                so serve runs them as the task's tenant; NULL:
                                none sent (only with local_header: a server
                                that honours it does so on its token-
                                authenticated port only) */
    uint64_t    seed;        /* jitter PRNG seed (0: from the clock) */
    int         http_threads;/* I/O threads for plain-http agent calls
                                (httpc_set_io_threads; 0: on the loop) */
};

/* Create an executor on `base` (not owned) over `reg` (not owned; must
 * outlive the executor).  Returns NULL on failure (ps_error_set). */
struct exec *exec_create(struct event_base *base, const struct registry *reg,
                         const struct exec_config *cfg);
/* Aborts every call of every group silently, stops stdio agents, frees. */
void exec_destroy(struct exec *ex);

struct exec_group *exec_group_create(struct exec *ex, exec_feedback_fn cb, void *ud);
/* Aborts the group's unfinished calls without feedback, frees.  NULL-safe. */
void exec_group_destroy(struct exec_group *g);
/* The tenant the group's local-agent calls run as (copied): attempts
 * started from now on send it in exec_config.local_tenant_header (nothing
 * when the executor has none).  PS_EINVAL unless 1 to 63 characters of
 * [A-Za-z0-9_.:-] (it goes into a header line), PS_ENOMEM. */
int exec_group_set_tenant(struct exec_group *g, const char *tenant);

/* Submit one call object {"id","to","args","after"?} (borrowed; copied).
 * Malformed objects, duplicate ids, unknown agents, unknown `after` ids
 * (dependencies must name earlier calls) and schema failures end as
 * `rejected` feedback; the return value is PS_OK unless memory ran out. */
int exec_group_submit(struct exec_group *g, const cJSON *call);

/* Cancel one call (feedback `cancelled` if it had not finished), or all
 * unfinished calls of the group.  PS_ENOTFOUND for an unknown id. */
int exec_group_cancel(struct exec_group *g, const char *id, const char *reason);
void exec_group_cancel_all(struct exec_group *g, const char *reason);

/* Calls of the group not yet finished. */
int exec_group_open(const struct exec_group *g);
/* Status of a call: -1 unknown id, -2 unfinished, else an fb_status. */
int exec_group_call_status(const struct exec_group *g, const char *id);

/* Resolve "a.b" inside a result (path may be "" for the whole result; in an
 * array a key must be a decimal index, "items.0.name"); NULL when absent.
 * Borrowed. */
const cJSON *exec_json_path(const cJSON *result, const char *path);
/* Text of a result for interpolation: a string as is, a number printed, an
 * object with a single scalar member that member's text, else compact JSON.
 * Caller frees. */
char *exec_result_text(const cJSON *result);

struct exec_stats {
    int64_t calls_started, calls_finished, attempts, retries, breaker_rejects;
    int     running, queued, http_active;
    int64_t http_connects;   /* connections opened by httpc's fast path */
    int64_t http_io_cpu_ns;  /* CPU time of httpc's I/O threads so far (0: none) */
};
void exec_get_stats(const struct exec *ex, struct exec_stats *st);

enum exec_breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

/* One agent's numbers since the executor was created. */
struct exec_agent_stats {
    const char *name;                   /* the registry's (borrowed) */
    int64_t     calls[FB_STATUS_COUNT]; /* finished calls naming it, by status */
    int64_t     attempts, retries, breaker_rejects;
    int         running, queued;        /* now */
    enum exec_breaker_state breaker;    /* now; half-open: the next call probes */
    struct histogram duration_s;        /* first dispatch -> feedback, retries
                                           included, of the calls that were
                                           dispatched (EXEC_DURATION_BOUNDS) */
};
/* Seconds: EXEC_DURATION_BOUNDS' upper bucket bounds. */
#define EXEC_DURATION_BOUNDS 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300
/* Agents of the executor's registry (registry order). */
int  exec_agent_count(const struct exec *ex);
/* Agent i's numbers (0 <= i < exec_agent_count; PS_EINVAL otherwise). */
int  exec_get_agent_stats(const struct exec *ex, int i, struct exec_agent_stats *st);
/* Calls naming no agent of the registry (all rejected). */
int64_t exec_unknown_agent_calls(const struct exec *ex);
/* Count a call its caller rejected without submitting it (a duplicate id,
 * a task's call limit) under its agent `to` (NULL or unknown: the unknown
 * agents' count), so that every finished call is counted once. */
void    exec_count_rejected(struct exec *ex, const char *to);

#endif /* PS_ORCH_EXECUTOR_H */
