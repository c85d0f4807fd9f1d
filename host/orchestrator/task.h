/* task.h - the orchestrator task loop, its ledger and its event log.
 *
 * A task: input text, limits (max_rounds, max_calls, deadline_ms) and,
 * optionally, a `script` (a list of actions replayed in place of the
 * model's decisions: the k-th action at the k-th decision point).
 *
 * Task states:   RUNNING ──final action, every `uses` call finished──► COMPLETED
 *                   │  ──limit hit / script exhausted / decider error──► FAILED
 *                   └──orch_task_cancel()─────────────────────────────► CANCELLED
 * (task_finish() makes every transition; unfinished calls are cancelled
 * first, so their `cancelled` records precede the terminal event.)
 *
 * Decision points: the task's start, then whenever new feedback has arrived
 * since the last decision, or nothing is in flight.  A model decision whose
 * calls all repeat calls that finished ok, to deterministic agents
 * (agent_spec.deterministic), makes the next decision final-only: the model
 * has nothing new to ask (small models otherwise repeat until max_rounds).
 * The prompt's worked example is the first agent's `example`, if any.  Each decision's text
 * goes through the incremental action parser: call objects are submitted to
 * the executor as they close (with a model, while it still decodes).
 * A call without an "id" gets a fresh one, "c<k>" (k: its position among
 * the task's calls, or the next number not taken): the model's grammar
 * omits ids, so a model can never reuse one.  Decision events and the
 * transcript show the assigned ids.
 *
 * Events (proto/event.schema.json), ids monotonic per task from 1:
 * task.created, decision, call.dispatched, call.result, task.final,
 * task.error.  All of a task's events are kept until the task is freed, so
 * a subscriber can resume after any id (SSE Last-Event-ID).
 *
 * Everything here runs on the event-loop thread.
 */
#ifndef PS_ORCH_TASK_H
#define PS_ORCH_TASK_H

#include <stdint.h>
#include <cjson/cJSON.h>

#include "common/histogram.h"
#include "orchestrator/executor.h"

struct event_base;
struct registry;
struct orch;
struct orch_task;
struct orch_sub;

enum orch_task_status { TASK_RUNNING, TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED };
const char *orch_task_status_str(enum orch_task_status s);

struct orch_config {
    int max_rounds;      /* default per task (16) */
    int max_calls;       /* per task (256) */
    int deadline_ms;     /* default per task (300000) */
    int keep_finished;   /* finished tasks kept for GET before eviction (10000) */
    int max_running;     /* tasks running at once; a submit past it is PS_EFULL
                            (0: no limit) */
    int max_running_per_tenant; /* the same, per tenant (0: no limit) */
    int max_events;      /* events per task, terminal one included (100000; >= 4).
                            A task whose log is full, or whose event could not be
                            stored for lack of memory, fails with a typed error
                            ("event log full ..." / "out of memory ...") and
                            still ends with its terminal event. */
    int record_trajectories; /* a task records its trajectory unless its request
                            says "trajectory": false (0: only those that say true) */
    int id_lane;         /* 0-255, written into every task id (the two hex digits
                            after the counter's eight): orchestrators with
                            different lanes (executor loops of one process)
                            never give the same id, and the lane can be read
                            back from an id (orch_task_id_lane) to route to its
                            orchestrator.  One orchestrator's ids are unique
                            by its counter (2^32 tasks before it wraps). */
};
/* The id_lane written into a task id, or -1 when `id` is not one of ours. */
int orch_task_id_lane(const char *id);

/* The system message of every decision: the model's role.  The user
 * message is orch_task_prompt(). */
#define ORCH_SYSTEM_PROMPT "You are the orchestrator. You never solve tasks yourself: you call agents " \
                           "and tools, then give the final answer. You reply with one JSON action only."

/* A model that makes decisions (the engine).  start() begins decoding one
 * decision for `t` from `prompt` (borrowed: copy it) and streams text with
 * orch_task_decision_text(), ending with orch_task_decision_end(); it
 * returns a handle for cancel(), or NULL on failure.  start() must not call
 * orch_task_decision_end() itself (it may feed text).  cancel() is called
 * when the task ends while the decision runs: no orch_task_* call for that
 * decision may follow (orch_task_decision_usage by task id lookup excepted).
 * Without a decider, tasks that have no script fail at once, saying
 * that model-driven tasks run in `paraserve serve`. */
struct orch_decider {
    void *(*start)(void *ctx, struct orch_task *t, const char *prompt);
    void  (*cancel)(void *ctx, void *handle);
    void   *ctx;
    /* Optional: how many tokens `prompt` (as start() would submit it, with
     * room for the decision's output; orch_task_final_only(t) tells which
     * limit applies) is over the model's context; <= 0 when it fits, < 0 on
     * error is never returned (errors count as fitting: start() reports
     * them).  When a prompt is over, the task drops the oldest part of its
     * transcript and makes this decision a final. */
    int32_t (*over_context)(void *ctx, struct orch_task *t, const char *prompt);
};

struct shared_text;

struct orch_event {
    int64_t     id;
    const char *type;   /* "task.created", ... */
    const char *data;   /* JSON object text */
    size_t      data_len; /* strlen(data) */
    /* Numbers the text carries, for subscribers that want them without
     * parsing it: t_ms in microseconds, and a call.result's overheads
     * ("dispatch_to_recv_us", "reply_to_record_us"; -1 where absent). */
    int64_t     t_us;
    int64_t     dispatch_to_recv_us;
    int64_t     reply_to_record_us;
};

typedef void (*orch_event_fn)(void *ud, struct orch_task *t, const struct orch_event *ev);
typedef void (*orch_done_fn)(void *ud, struct orch_task *t);

/* `reg` must outlive the orch.  NULL on failure (ps_error_set). */
struct orch *orch_create(struct event_base *base, const struct registry *reg,
                         const struct exec_config *ecfg, const struct orch_config *ocfg);
void orch_destroy(struct orch *o);
struct exec *orch_executor(struct orch *o);
void orch_set_decider(struct orch *o, const struct orch_decider *d);
/* Called once per task when it reaches a terminal state. */
void orch_set_done_cb(struct orch *o, orch_done_fn cb, void *ud);

/* A request's "metadata": at most this many string pairs (OpenAI's limits);
 * kept with the task and shown in its summary, list entry, task.created
 * event and trajectory (e.g. a reference answer to score it by). */
#define ORCH_METADATA_MAX_PAIRS 16
#define ORCH_METADATA_MAX_KEY   64
#define ORCH_METADATA_MAX_VALUE 512

/* Create and start a task from a request object {"input", "max_rounds"?,
 * "max_calls"?, "deadline_ms"?, "script"?, "trajectory"?, "metadata"?}
 * (borrowed).  `tenant` may be
 * NULL ("default").  PS_EINVAL with a message naming the field for a bad
 * request; PS_EFULL when max_running tasks run, or max_running_per_tenant
 * of the tenant's (a request is checked first: a bad one is PS_EINVAL). */
int orch_task_submit(struct orch *o, const cJSON *req, const char *tenant,
                     struct orch_task **out);
/* The same, but the task takes the request's "script" (detached from req
 * on success) instead of copying it: for a caller that is done with the
 * request (the server's parsed body).  On failure req is unchanged. */
int orch_task_submit_take(struct orch *o, cJSON *req, const char *tenant,
                          struct orch_task **out);

/* The request checks of orch_task_submit alone (the same PS_EINVAL and
 * message for a bad request; PS_OK for one it would accept), on any
 * thread: nothing is created or started. */
int orch_task_request_check(const cJSON *req);

/* NULL when unknown (or evicted). */
struct orch_task *orch_task_find(struct orch *o, const char *id);
const char *orch_task_id(const struct orch_task *t);
/* When the task was created (CLOCK_MONOTONIC ns, orch_now_ns): its
 * decisions queue in the engine as of then, so tasks that started first
 * finish first instead of every task's rounds interleaving. */
int64_t orch_task_created_ns(const struct orch_task *t);
const char *orch_task_tenant(const struct orch_task *t);
enum orch_task_status orch_task_status(const struct orch_task *t);
/* When the task was created, CLOCK_REALTIME in ms (what clients see). */
int64_t orch_task_created_unix_ms(const struct orch_task *t);
/* 1 for a scripted task, 0 for a model-driven one. */
int orch_task_scripted(const struct orch_task *t);
const char *orch_task_input(const struct orch_task *t);
/* The request's metadata object (borrowed), or NULL when it had none. */
const cJSON *orch_task_metadata(const struct orch_task *t);
/* Calls entered in the task's ledger (rejected ones included). */
int orch_task_n_calls(const struct orch_task *t);
/* The orchestrator's tasks (running, and finished ones not yet evicted) in
 * creation order: the oldest / newest, and the next one newer / older than
 * t; NULL past the end.  Borrowed: valid on the loop's thread until the
 * loop runs again (a finished task may be evicted then). */
struct orch_task *orch_task_oldest(const struct orch *o);
struct orch_task *orch_task_newest(const struct orch *o);
struct orch_task *orch_task_newer(const struct orch_task *t);
struct orch_task *orch_task_older(const struct orch_task *t);
/* {"id","status","output","calls":[...],"rounds","metadata"?,"usage"?,"error"?} (caller frees);
 * NULL when memory ran out (never a summary with a member missing). */
cJSON *orch_task_summary(const struct orch_task *t);
/* orch_task_summary printed (jbuf), as a reference the caller drops with
 * shared_text_unref (host/common/shared_text.h); it stays valid after the
 * task is freed.  The text is printed once and shared by the calls that
 * follow until the summary changes (a call entered or finished, a round,
 * the answer, the end, any event; a decision's usage, which the engine may
 * report after the end): clients polling a task with large results cost
 * one print per change, not one per request.  NULL when out of memory. */
struct shared_text *orch_task_summary_text(struct orch_task *t);
/* The prompt the model reads (caller frees; NULL when out of memory):
 * instructions, agent catalogue, task, then the transcript of every
 * decision ("Decision k: {action}") and result ("Result: {id,to,status,
 * result|error}") in the order they happened.  Append-only: each round's
 * prompt starts with the previous round's, so the prefix cache serves all
 * but the new lines.  Scripted tasks keep no transcript (no model reads
 * it) unless they record their trajectory. */
char *orch_task_prompt(const struct orch_task *t);

/* Whether the task records its trajectory (request "trajectory", or
 * orch_config.record_trajectories). */
int orch_task_recorded(const struct orch_task *t);
/* 1 for a task restored from a store (orch_task_restore). */
int orch_task_restored(const struct orch_task *t);
/* The task's trajectory (host/orchestrator/trajectory.h,
 * proto/trajectory.schema.json) printed: *out (caller frees), *len bytes.
 * It may be read while the task runs (the steps so far).  PS_ENOTFOUND
 * when the task does not record one, PS_ENOMEM. */
int orch_task_trajectory_text(const struct orch_task *t, char **out, size_t *len);

/* Cooperative cancel: in-flight calls are cancelled, late results ignored,
 * then task.error with status "cancelled".  No-op on a finished task.  A
 * task's own end never evicts it: t stays valid after this call (until
 * another task ends). */
void orch_task_cancel(struct orch_task *t, const char *reason);

/* Subscribe to events with id > after_id: stored ones are replayed from
 * inside this call (from inside one of the same task's event callbacks,
 * by the delivery already running, after this call returns), later ones
 * delivered as they happen, each subscriber in id order.  An after_id past
 * the log counts as its end, so a running task's later events, its
 * terminal one included, still arrive.  After the
 * terminal event the subscription stays until orch_unsubscribe().  A
 * task is not evicted while it has subscribers. */
struct orch_sub *orch_task_subscribe(struct orch_task *t, int64_t after_id,
                                     orch_event_fn cb, void *ud);
void orch_unsubscribe(struct orch_sub *s);

/* Stored event `id` (1 .. orch_task_n_events) into *out: 1, or 0 when the
 * log has no such event (yet).  *out points into the log, valid while the
 * task lives (a subscribed task is not evicted).  For subscribers that
 * write at their client's pace: they keep their own position and read the
 * log from it, the callbacks only telling them that it grew. */
int     orch_task_event_at(const struct orch_task *t, int64_t id, struct orch_event *out);
int64_t orch_task_n_events(const struct orch_task *t);

/* A finished task brought back (serve --task-store, after a restart):
 * its summary text, event log (each type one of the six, the last a
 * terminal one; every text a JSON object, as the summary), metadata (or
 * NULL), whether it has a trajectory (kept by the store, not here:
 * orch_task_trajectory_text answers PS_EUNSUPPORTED for it) and counts as
 * they were when it ended.  GET, the event replay, the list and DELETE (a
 * no-op: it has ended) serve it as they served the task; it counts among
 * the finished tasks kept (keep_finished), and in no statistic; later
 * task ids of this orchestrator's lane come after its.  PS_EINVAL naming
 * what is wrong (a status that is not an end, an id that is not one of
 * ours or in use, a log without its end, an unknown event type, a text
 * that is not a JSON object), PS_ENOMEM; *out (may be NULL) the task. */
struct orch_restore_event {
    const char *type, *data;   /* data: JSON object text of len bytes */
    size_t      len;
};
struct orch_restore {
    const char  *id, *tenant, *input, *mode /* "script" | "model" */, *status, *summary;
    const cJSON *metadata;
    int          has_trajectory;
    int64_t      created_unix_ms;
    int          rounds, calls;
    const struct orch_restore_event *events;
    int64_t      n_events;
};
int orch_task_restore(struct orch *o, const struct orch_restore *r, struct orch_task **out);

/* Free a finished task now (CLI); NULL-safe, no-op while running. */
void orch_task_release(struct orch_task *t);

/* Decider side: text of the decision being decoded, and its end (status
 * PS_OK, or an error that fails the task).  decision_text returns 1 when
 * decoding may stop (the action's root object has closed, the text can no
 * longer be an action, or the task no longer waits for this decision):
 * the decider then cancels its generation and calls decision_end(PS_OK).
 * It also returns 1 when a final's answer text starts to loop (a unit of 8
 * bytes or more three times in a row): the answer is then cut after the
 * unit's first time, and the `decision` event carries "incomplete". */
int  orch_task_decision_text(struct orch_task *t, const char *text, size_t n);
void orch_task_decision_end(struct orch_task *t, int status, const char *error);
/* What the decision being made may be, for a decider that constrains
 * decoding.  final_only is 1 when it must be {"final":...}: the task's last
 * round (max_rounds), its call limit reached, or its deadline near (model-
 * driven tasks keep a reserve before deadline_ms: min(deadline/4, 4 s),
 * growing to twice their slowest decision plus 500 ms, at most half
 * the deadline; when the reserve starts, a decision being decoded is
 * stopped (the calls that closed stand as its action) and a final is
 * decided at once, running calls or not).  The last round's decision waits for running calls unless
 * the deadline is near.  A final whose `uses` name only finished calls
 * completes the task as soon as it is parsed; a final-only decision that
 * stops before its JSON closes (token budget) completes the task with the
 * answer text decoded so far (the `decision` event carries "incomplete"). */
int  orch_task_final_only(const struct orch_task *t);
/* Ids of the task's finished calls (the newest `max`, oldest first) into
 * ids[] (borrowed: valid until the task's next event); returns the count. */
int  orch_task_finished_ids(const struct orch_task *t, const char **ids, int max);
/* Rounds decided so far (the decision being decoded included). */
int  orch_task_rounds(const struct orch_task *t);
/* Token usage of one decision (may arrive after the decision ended); shown
 * in the summary as "usage": {prompt_tokens, cached_tokens,
 * completion_tokens, decisions:[{round, ...}]}. */
void orch_task_decision_usage(struct orch_task *t, int round, int n_prompt, int n_cached,
                              int n_generated);

/* Cancel every running task (server shutdown). */
void orch_cancel_all(struct orch *o, const char *reason);

/* Tasks not yet finished. */
int orch_running(const struct orch *o);

/* A call id is a string of 1 to ORCH_MAX_CALL_ID characters; a call without
 * one gets a fresh id ("c<k>"), rejected when it gave a bad one. */
#define ORCH_MAX_CALL_ID 64

/* The orchestrator's numbers since orch_create. */
enum { ORCH_REFUSED_MAX_RUNNING, ORCH_REFUSED_MAX_RUNNING_PER_TENANT };
struct orch_stats {
    int64_t created[2];          /* tasks accepted: [0] scripted, [1] model-driven */
    int64_t refused[2];          /* submits refused PS_EFULL, by ORCH_REFUSED_* */
    int64_t ended[4];            /* by enum orch_task_status ([TASK_RUNNING] unused) */
    int     running;
    int64_t decisions[2];        /* decisions started: [0] scripted actions, [1] the model's */
    struct histogram task_s;     /* submit -> end of every ended task, seconds */
    struct histogram decision_s; /* the model's decisions: start -> end (the engine's
                                    queue, prefill and decode), seconds */
};
/* Seconds: upper bucket bounds of task_s and decision_s. */
#define ORCH_DURATION_BOUNDS 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600
void orch_get_stats(const struct orch *o, struct orch_stats *st);

#endif /* PS_ORCH_TASK_H */
