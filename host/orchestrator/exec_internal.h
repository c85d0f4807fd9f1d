/* exec_internal.h - structures shared by the executor (exec.c) and the
 * protocol adapters (adapters.c, mcp.c).  Not a public API. */
#ifndef PS_ORCH_EXEC_INTERNAL_H
#define PS_ORCH_EXEC_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

#include "orchestrator/executor.h"
#include "orchestrator/registry.h"

struct event_base;
struct httpc;
struct exec_call;
struct adapter_op;
struct mcp_session;
struct mcp_reap;

struct agent_rt {
    const struct agent_spec *spec;
    int                running;            /* attempts in an adapter now */
    struct exec_call  *q_head, *q_tail;    /* READY, waiting for a slot */
    int                queued;
    int                consecutive_failures;
    int64_t            open_until_ns;      /* breaker open while now < this */
    int                half_open;          /* one probe allowed after opening */
    int                probe_in_flight;
    struct mcp_session *mcp;               /* mcp-http / mcp-stdio state, lazily made */
    enum a2a_version   a2a_proto;          /* a2a: the spec's version, until auto is settled */
    int                a2a_stream;         /* a2a: stream replies (spec's a2a_streaming == 1,
                                              until the agent refuses) */
    struct event      *pump;               /* starts queued calls as slots free */
    int64_t            calls[FB_STATUS_COUNT];   /* exec_agent_stats */
    int64_t            attempts, retries, breaker_rejects;
    struct histogram   duration_s;
};

/* the header lines of every JSON request an adapter sends */
#define EXEC_JSON_HEADER_LINES "Content-Type: application/json", "Accept: application/json"

struct exec {
    struct event_base     *base;
    const struct registry *reg;
    struct httpc          *http;
    struct agent_rt       *agents;
    int                    n_agents;
    char                  *local_url;
    char                  *local_model;
    char                  *local_hdrs[4];  /* json headers + exec_config.local_header, NULL-ended;
                                              [2] NULL: none (owned: [2]) */
    char                  *local_tenant_header; /* exec_config's; NULL: none (owned) */
    uint64_t               rng;
    struct exec_group     *groups;         /* every live group */
    struct mcp_reap       *reaping;        /* stopped mcp-stdio processes not reaped yet */
    int                    closing;        /* exec_destroy has begun */
    struct a2a_cancel     *a2a_cancels;    /* tasks/cancel requests not answered yet (adapters.c) */
    long                   a2a_rpc_id;     /* last JSON-RPC id of an a2a request (each executor its own:
                                              executors on different threads share nothing) */
    struct exec_stats      stats;
    int64_t                unknown_agent_calls;
};

/* Outcome of one adapter attempt.  The executor may take ownership of
 * `result` by setting it to NULL; otherwise the adapter frees it. */
struct adapter_result {
    enum fb_status status;
    cJSON         *result;
    const char    *error;
    int            retryable;      /* transport error, 429, 5xx */
    int64_t        agent_recv_ns;  /* 0 unknown */
    int64_t        agent_send_ns;
};

typedef void (*adapter_done_fn)(void *ud, struct adapter_result *r);

/* Start one attempt.  Never calls `done` before returning; calls it exactly
 * once later unless adapter_cancel() comes first.  `args` is borrowed until
 * then (not copied: a copy per attempt was a visible cost per call).  NULL when it could not
 * start (ps_error_last() says why). */
/* `tenant_line` (borrowed until the op ends; NULL: none): a header line
 * a local agent's request carries besides the token. */
struct adapter_op *adapter_start(struct exec *ex, struct agent_rt *rt, const char *call_id,
                                 const cJSON *args, const char *tenant_line, adapter_done_fn done,
                                 void *ud);
/* Ask an MCP agent (mcp-http, mcp-stdio) for one page of its tools: a
 * tools/list request on the agent's session (made as for a call), from
 * `cursor` (borrowed until the op ends; NULL: the first page).  `done` gets
 * FB_OK with the response's result object ({"tools":[...],
 * "nextCursor"?}, unchecked), or an error status; otherwise as
 * adapter_start. */
struct adapter_op *adapter_start_mcp_list(struct exec *ex, struct agent_rt *rt, const char *cursor,
                                          adapter_done_fn done, void *ud);
/* Abort an attempt (protocols that can, are told: MCP notifications/cancelled).
 * No callback afterwards. */
void adapter_cancel(struct adapter_op *op);

/* exec_destroy, after its groups: the a2a tasks/cancel requests not
 * answered yet (ex->a2a_cancels: made while closing, or earlier and still
 * in flight) are sent again on a private loop, whose replies are waited
 * for at most A2A_CLOSE_WAIT_MS in all (the executor's own loop will not
 * turn again, and a request on it could be freed unsent).  Empties the
 * list. */
void adapter_flush_closing(struct exec *ex);

/* MCP (mcp.c) entry points used by adapter_start/adapter_cancel. */
int  mcp_op_start(struct adapter_op *op);
void mcp_op_cancel(struct adapter_op *op);
void mcp_session_free(struct exec *ex, struct agent_rt *rt);
/* Reap every stopped agent process (SIGKILL after a grace period); blocks:
 * exec_destroy() only. */
void mcp_reap_all(struct exec *ex);
/* MCP reply handling as pure functions (mcp.c; tests/fuzz/fuzz_mcp_reply.c
 * feeds them untrusted server replies).
 * mcp_reply_parse: the JSON-RPC message in an HTTP reply body of `len`
 * bytes (need not be NUL-terminated).  A JSON body: the response object
 * with id `id` (in a batch array, that element), or an error response
 * whose id is null or absent; else the first text/event-stream event
 * whose data lines hold a response (result or error) with id `id`; NULL
 * when there is none.  Caller frees.  *oom (may be NULL) is set when NULL
 * is returned: MCP_REPLY_OOM when memory ran out while parsing,
 * MCP_REPLY_REFUSED when the response to `id` is there, JSON in shape, but
 * its text was refused as agent JSON (not UTF-8, or a NUL in a string:
 * json_parse_refusal() says where), else 0.
 * mcp_reply_result: map a tools/call response to an outcome: FB_OK with
 * *res (caller frees; NULL only when out of memory), or an error status
 * with the message in err (always NUL-terminated). */
enum { MCP_REPLY_OOM = 1, MCP_REPLY_REFUSED = 2 };
cJSON         *mcp_reply_parse(const char *body, size_t len, long id, int *oom);
enum fb_status mcp_reply_result(const cJSON *msg, cJSON **res, char *err, size_t errlen);

/* Agent reply handling as pure functions (adapters.c; tests/fuzz/
 * fuzz_agent_reply.c feeds them untrusted replies).  Each maps the body of
 * a 2xx reply (`len` bytes, need not be NUL-terminated) to an outcome:
 * FB_OK with *res (caller frees), or an error status with *res NULL and
 * the message in err (always NUL-terminated; "" with FB_OK).
 * http_json_reply: the body's JSON value is the result.
 * chat_reply: choices[0].message.content, a string.
 * a2a_reply: a JSON-RPC reply to request `rpc_id` (SendMessage / GetTask
 * of protocol 1.0, message/send / tasks/get of 0.3: both shapes are read,
 * a 1.0 {"task"} / {"message"} wrapper included): a completed task's or a
 * message's text parts, else its data parts (one: that JSON value; more:
 * an array of them), else the raw result object; an error, a task in any
 * other state or a mismatched id is an error status (*rpc_error: the
 * JSON-RPC error code, 0 when the reply is not an error).  *task_state classes the task the reply names (by
 * its status.state): running (submitted, working), waiting (input-required,
 * auth-required, any other state, or running under no usable id), ended
 * (completed, failed, canceled, rejected), or no task.  *task: the id (1
 * to A2A_MAX_TASK_ID bytes; caller frees) of a running or waiting task,
 * else NULL.  A running task with an id is FB_OK with *res NULL: poll it. */
#define A2A_MAX_TASK_ID 256
enum a2a_task_state { A2A_NO_TASK, A2A_TASK_RUNNING, A2A_TASK_WAITING, A2A_TASK_ENDED };
enum fb_status http_json_reply(const char *body, size_t len, cJSON **res, char *err, size_t errlen);
enum fb_status chat_reply(const char *body, size_t len, cJSON **res, char *err, size_t errlen);
enum fb_status a2a_reply(const char *body, size_t len, long rpc_id, cJSON **res, char **task,
                         enum a2a_task_state *task_state, long *rpc_error, char *err, size_t errlen);

/* Incremental search of a growing text/event-stream body for the response
 * with id `id`: call mcp_sse_scan with the whole body so far (the same
 * bytes as before, plus more) after each read; it returns 1 once a complete
 * event holds the response.  Each event is searched once and each byte
 * scanned for blank lines about once, so a stream of any length costs
 * linear time.  `searched` counts the bytes handed to mcp_reply_parse. */
struct mcp_sse_scan {
    size_t peeked;     /* bytes in complete events already searched */
    size_t scanned;    /* bytes already scanned for a blank line */
    size_t searched;   /* total bytes searched (tests) */
};
int mcp_sse_scan(struct mcp_sse_scan *st, const char *body, size_t len, long id);

enum a2a_body_kind { A2A_BODY_UNKNOWN, A2A_BODY_JSON, A2A_BODY_SSE };

/* Shared adapter op: one per attempt. */
struct adapter_op {
    struct exec       *ex;
    struct agent_rt   *rt;
    adapter_done_fn    done;
    void              *ud;
    struct httpc_req  *req;
    struct event      *ev;            /* builtin: deferred completion */
    const cJSON       *args;          /* borrowed: the call's final args, which the
                                         executor keeps until the op has ended
                                         (finished or cancelled) */
    char              *call_id;
    const char        *tenant_line;   /* borrowed from the call's group (which
                                         outlives its ops): "Name: tenant" sent
                                         by local agents; NULL: none */
    long               rpc_id;        /* MCP or A2A JSON-RPC id */
    int                mcp_list;      /* mcp: a tools/list request (adapter_start_mcp_list) */
    char              *a2a_task;      /* a2a: the id of the task the agent runs for this call,
                                         polled with tasks/get while it is submitted or
                                         working (owned; NULL: none yet) */
    int                a2a_polls;     /* tasks/get sent so far */
    int                a2a_v03;       /* a2a: this attempt speaks protocol 0.3 (else 1.0) */
    int                a2a_probe;     /* a2a: its SendMessage asks an auto agent for 1.0 */
    int                a2a_streamed;  /* a2a: this attempt's reply is a stream (SSE) */
    size_t             a2a_sse_pos;   /* stream: body bytes of whole events applied */
    size_t             a2a_sse_scanned; /* stream: body bytes searched for an event's end */
    size_t             a2a_ws;        /* stream: leading white space of the body looked at */
    enum a2a_body_kind a2a_body_kind; /* stream: what the body is, once its first byte says */
    int                a2a_task_ended;/* stream: the task reached an end state */
    int                a2a_nostream;  /* this attempt is sent plainly though the agent streams */
    int                a2a_stream_refused; /* an auto agent's stream method was unknown (-32601) */
    int                a2a_ended;     /* stream: the outcome is known (b_status, b_result,
                                         b_err; a2a_waiting: the task still waits) */
    int                a2a_waiting;   /* stream: ended with the task waiting for input / auth */
    int                a2a_saw_event; /* stream: at least one event was applied */
    long               a2a_rpc_error; /* stream: a JSON-RPC error event's code, else 0 */
    char              *a2a_text;      /* stream: the artifacts' text so far (owned) */
    size_t             a2a_tlen;
    cJSON             *a2a_data;      /* stream: the artifacts' data parts so far (owned) */
    const char        *mcp_cursor;    /* its cursor (borrowed until the op ends); NULL: first page */
    int                mcp_sent;      /* request written to the agent */
    int64_t            mcp_t0;        /* mcp: when the attempt started (orch_now_ns) */
    struct adapter_op *mcp_prev, *mcp_next;  /* session's waiting/in-flight list */
    unsigned           mcp_gen;       /* mcp-http: session generation it was sent on */
    int                mcp_sid;       /* mcp-http: sent with an Mcp-Session-Id */
    int                mcp_resent;    /* mcp-http: already sent again after a 404 */
    struct mcp_sse_scan mcp_sse;      /* mcp-http: the reply's SSE search so far */
    enum fb_status     b_status;      /* builtin / adapter_fail_later outcome */
    int                b_retryable;
    cJSON             *b_result;
    char               b_err[512];
};

/* adapters.c: apply the SSE events of a streamed a2a reply's body (the
 * whole body so far, the same bytes as before plus more; at_end: the body
 * is complete, a last event may lack its blank line) to op, a2a_stream_*
 * fields and a2a_task; 1 once the outcome is known (b_status, b_result -
 * set with FB_OK -, b_err; a2a_waiting).  tests/fuzz/fuzz_agent_reply.c
 * feeds it untrusted streams. */
int a2a_stream_feed(struct adapter_op *op, const char *body, size_t len, int at_end);

/* adapter_op.c: whether a JSON-RPC reply's id `v` is `id`.  Our ids are
 * integers we chose; a reply's id is a double that may be anything (1e300,
 * -0.5): compared as a double, never cast to long (out of range, that cast
 * is undefined behaviour). */
int rpc_id_is(const cJSON *v, long id);

/* adapter_op.c: deliver op's b_status / b_result / b_err / b_retryable
 * (set by the caller) from the loop's next turn, then free the op.  PS_OK,
 * or PS_ENOMEM (nothing delivered). */
int adapter_deliver_later(struct adapter_op *op);

/* End an attempt that is being started with an outcome delivered from the
 * loop (adapter_start's contract: `done` never runs before it returns), so
 * that a failure found at start can still be retryable.  Returns PS_OK, or
 * PS_ENOMEM (then the caller fails the start). */
int adapter_fail_later(struct adapter_op *op, enum fb_status st, const char *err, int retryable);

/* Deliver an outcome built from pieces, then free the op. */
void adapter_finish(struct adapter_op *op, enum fb_status st, cJSON *result,
                    const char *error, int retryable, int64_t recv_ns, int64_t send_ns);
void adapter_op_free(struct adapter_op *op);

/* Classify an HTTP reply: returns 1 when it is a 2xx to be parsed further;
 * otherwise fills st, err and retryable and returns 0. */
struct httpc_response;
int adapter_http_classify(const struct httpc_response *r, enum fb_status *st, char *err,
                          size_t errlen, int *retryable);

#endif /* PS_ORCH_EXEC_INTERNAL_H */
