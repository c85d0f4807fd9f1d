/* mcp.c - Model Context Protocol adapters: mcp-http (streamable HTTP) and
 * mcp-stdio (a spawned process speaking newline-delimited JSON-RPC).
 *
 * One session per agent, made on its first call:
 *
 *   NONE ──mcp_op_start──► INIT (initialize sent; calls wait on `waiting`)
 *     ▲                      │ initialize result, notifications/initialized
 *     │ init failed /        ▼
 *     └── process exited ── READY (tools/call sent at once; stdio replies
 *                                  matched by JSON-RPC id on `inflight`)
 *
 * Streamable HTTP replies may be application/json or a text/event-stream
 * whose data lines carry the JSON-RPC response; both are accepted.  The
 * Mcp-Session-Id header of the initialize reply is sent on every later
 * request.  A 404 to a request that carried it means the server ended the
 * session: the session goes back to NONE (once per session: `sess_gen`) and
 * every call that got that 404 is sent again, once, on the next session,
 * within its own attempt (and timeout).  An initialize unanswered within
 * timeout_ms ends the calls that have waited that long `timeout`; calls that
 * came later wait on a new session (fail_timed_out).  A cancelled call is announced with
 * notifications/cancelled and its late reply is dropped (no op carries its
 * id any more).
 *
 * stdio processes, with the function for each transition:
 *   - started by mcp_op_start (NONE): not sooner than restart_delay_ms()
 *     after the previous start (1 s, doubled for each process in a row that
 *     never got READY, at most 30 s); a call while a start is held back
 *     fails at once, retryably (adapter_fail_later), naming the reason;
 *   - stopped by stdio_close: initialize unanswered within timeout_ms
 *     (stdio_init_timeout: waiting calls that have waited that long end
 *     `timeout`, later ones wait on a new process: fail_timed_out,
 *     stdio_launch), refused, EOF or an
 *     error on its pipes, a line over MCP_MAX_LINE; SIGTERM, then SIGKILL
 *     after 1 s, reaped on the loop (reap_later);
 *   - at most MCP_MAX_PENDING bytes wait to be written to it: a call that
 *     would go beyond fails (exec_error, retryable), notifications are
 *     dropped;
 *   - its stderr is read on the loop (struct mcp_errpipe, until EOF, even
 *     after the process was stopped) and forwarded to ours line by line,
 *     "[agent NAME] ", cut at MCP_ERR_LINE_MAX, control bytes replaced,
 *     at most MCP_ERR_LINES_PER_S lines a second per agent (the rest
 *     counted in a "suppressed" note); what is not forwarded is read and
 *     dropped, so the process never blocks on a full stderr pipe.
 */
#include <curl/curl.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/json_get.h"
#include "common/status.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"
#include "orchestrator/json_alloc.h"

extern char **environ;

#define MCP_PROTOCOL_VERSION "2025-06-18"
#define MCP_MAX_LINE (16u << 20)
/* Bytes waiting to be written to a stdio agent's stdin.  The same bound as
 * a line we accept from it: a call of any size we could get an answer to
 * fits, and a process that stopped reading costs at most this much. */
#define MCP_MAX_PENDING (16u << 20)
#define MCP_RESTART_MIN_MS 1000
#define MCP_RESTART_MAX_MS 30000
#define MCP_ERR_LINE_MAX    1024            /* bytes of one forwarded stderr line */
#define MCP_ERR_LINES_PER_S 50              /* forwarded stderr lines per agent per second */
#define MCP_ERR_READ_MAX    (64u << 10)     /* stderr bytes read per loop turn */
/* A call waiting on an initialize that timed out ends `timeout` when its own
 * timeout_ms is up within this much (its timer is due in the same turn). */
#define MCP_INIT_SLACK_MS   50

enum { MCP_NONE, MCP_INIT, MCP_READY };

struct mcp_session {
    struct exec       *ex;
    struct agent_rt   *rt;
    int                state;
    long               next_id;
    long               init_id;
    char              *sid_header;       /* "Mcp-Session-Id: ..." */
    char              *hdrs[5];          /* NULL-terminated */
    struct httpc_req  *init_req;
    struct adapter_op *waiting;          /* not yet sent, oldest first (sent in that order) */
    struct adapter_op *waiting_tail;
    struct adapter_op *inflight;         /* sent (stdio) */
    unsigned           sess_gen;         /* http: bumped when the server ends the session */
    pid_t              pid;
    unsigned           gen;              /* bumped per spawned process */
    struct bufferevent *to_child;        /* child's stdin */
    struct bufferevent *from_child;      /* child's stdout */
    struct event      *init_timer;       /* stdio: initialize's timeout */
    int64_t            last_start_ns;    /* stdio: last process started (0: none yet) */
    int                failed_starts;    /* stdio: processes in a row that never got READY */
    const char        *last_end;         /* stdio: why the last process was stopped */
    struct mcp_errpipe *errpipes;        /* stdio: stderr readers (outlive their process) */
    struct event      *err_timer;        /* prints the "suppressed" note at the window's end */
    int64_t            err_window_ns;    /* start of the stderr rate window */
    int                err_lines;        /* lines forwarded in it */
    long               err_suppressed;   /* lines dropped in it */
};

static void list_push(struct adapter_op **head, struct adapter_op *op)
{
    op->mcp_prev = NULL;
    op->mcp_next = *head;
    if (*head)
        (*head)->mcp_prev = op;
    *head = op;
}

static void list_unlink(struct adapter_op **head, struct adapter_op *op)
{
    if (op->mcp_prev) op->mcp_prev->mcp_next = op->mcp_next; else if (*head == op) *head = op->mcp_next;
    if (op->mcp_next) op->mcp_next->mcp_prev = op->mcp_prev;
    op->mcp_prev = op->mcp_next = NULL;
}

/* The waiting list is FIFO: calls made while a session initializes go out
 * in the order they were made. */
static void waiting_add(struct mcp_session *s, struct adapter_op *op)
{
    op->mcp_next = NULL;
    op->mcp_prev = s->waiting_tail;
    if (s->waiting_tail)
        s->waiting_tail->mcp_next = op;
    else
        s->waiting = op;
    s->waiting_tail = op;
}

static void waiting_unlink(struct mcp_session *s, struct adapter_op *op)
{
    if (s->waiting_tail == op)
        s->waiting_tail = op->mcp_prev;
    list_unlink(&s->waiting, op);
}

static struct mcp_session *session_get(struct exec *ex, struct agent_rt *rt)
{
    if (!rt->mcp) {
        rt->mcp = calloc(1, sizeof *rt->mcp);
        if (!rt->mcp)
            return NULL;
        rt->mcp->ex = ex;
        rt->mcp->rt = rt;
        rt->mcp->next_id = 1;
        rt->mcp->pid = -1;
    }
    return rt->mcp;
}

static void build_headers(struct mcp_session *s)
{
    int i = 0;
    s->hdrs[i++] = "Content-Type: application/json";
    s->hdrs[i++] = "Accept: application/json, text/event-stream";
    s->hdrs[i++] = "MCP-Protocol-Version: " MCP_PROTOCOL_VERSION;
    if (s->sid_header)
        s->hdrs[i++] = s->sid_header;
    s->hdrs[i] = NULL;
}

/* The message builders return NULL when memory ran out, never a message
 * with a member missing (a tools/call without its arguments, say); the
 * senders (http_notify, http_send_call, stdio_write) take NULL as a
 * message that could not be sent. */

/* m when ok, else NULL (m freed). */
static cJSON *msg_or_null(cJSON *m, int ok)
{
    if (ok)
        return m;
    cJSON_Delete(m);
    return NULL;
}

static cJSON *rpc_new(long id, const char *method)
{
    cJSON *m = cJSON_CreateObject();
    return msg_or_null(m, m && cJSON_AddStringToObject(m, "jsonrpc", "2.0") &&
                              (id < 0 || cJSON_AddNumberToObject(m, "id", (double)id)) &&
                              cJSON_AddStringToObject(m, "method", method));
}

/* The op's request: tools/call of the agent's tool with the call's args,
 * or (op->mcp_list) tools/list, from op->mcp_cursor when it has one. */
static cJSON *tools_call_msg(struct adapter_op *op)
{
    const struct agent_spec *a = op->rt->spec;
    cJSON *p;
    if (op->mcp_list) {
        cJSON *m = rpc_new(op->rpc_id, "tools/list");
        return msg_or_null(m, m && (!op->mcp_cursor || ((p = cJSON_AddObjectToObject(m, "params")) &&
                                                         cJSON_AddStringToObject(p, "cursor", op->mcp_cursor))));
    }
    cJSON *m = rpc_new(op->rpc_id, "tools/call");
    return msg_or_null(m, m && (p = cJSON_AddObjectToObject(m, "params")) &&
                              cJSON_AddStringToObject(p, "name", a->tool ? a->tool : a->name) &&
                              json_add(p, "arguments", cJSON_Duplicate(op->args, 1)));
}

/* The response to request `id` in a JSON body (takes j; NULL when there
 * is none): the object itself when its id is `id` and it has a result or
 * an error, or when it has no id (null or absent: a server that could not
 * read the request) and carries a non-null error; in a batch (array), the
 * element with id `id` and a result or a non-null error (a request of the
 * server's may carry the same id).  A response to another request is not
 * this call's answer.  JSON bodies and SSE events are judged alike. */
static int rpc_has_error(const cJSON *m)
{
    const cJSON *err = json_get(m, "error");
    return err && !cJSON_IsNull(err);   /* "error": null beside a result is none */
}

static cJSON *rpc_response_for(cJSON *j, long id)
{
    if (cJSON_IsArray(j)) {
        int i = 0;
        for (const cJSON *e = j->child; e; e = e->next, i++)
            if (cJSON_IsObject(e) && rpc_id_is(json_get(e, "id"), id) &&
                (json_get(e, "result") || rpc_has_error(e))) {
                cJSON *m = cJSON_DetachItemFromArray(j, i);
                cJSON_Delete(j);
                return m;
            }
    } else if (cJSON_IsObject(j)) {
        const cJSON *mid = json_get(j, "id");
        int has_error = rpc_has_error(j);
        if ((rpc_id_is(mid, id) && (has_error || json_get(j, "result"))) ||
            ((!mid || cJSON_IsNull(mid)) && has_error))
            return j;
    }
    cJSON_Delete(j);
    return NULL;
}

/* Text json_parse_oom refused (json_parse_refusal() set): 1 when it is
 * still JSON in shape and holds the response to `id`, so the caller can say
 * why that response was refused rather than that none came. */
static int refused_response_for(const char *text, size_t len, long id)
{
    int oom;
    cJSON *m = rpc_response_for(json_parse_end_oom(text, len, NULL, &oom), id);
    cJSON_Delete(m);
    return m != NULL;
}

cJSON *mcp_reply_parse(const char *body, size_t len, long id, int *oom)
{
    int parse_oom = 0, refused = 0;
    if (oom)
        *oom = 0;
    cJSON *j = json_parse_oom(body, len, &parse_oom);
    if (j)
        return rpc_response_for(j, id);
    if (parse_oom)
        goto out_of_memory;
    if (json_parse_refusal()[0] && refused_response_for(body, len, id)) {
        if (oom)
            *oom = MCP_REPLY_REFUSED;
        return NULL;
    }
    /* text/event-stream: events separated by blank lines, data: lines. */
    const char *p = body, *end = body + len;
    char *acc = NULL;
    size_t alen = 0;
    cJSON *found = NULL;
    while (p < end && !found) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t n = (size_t)(le - p);
        if (n && p[n - 1] == '\r')
            n--;
        if (n >= 5 && !strncmp(p, "data:", 5)) {
            const char *d = p + 5;
            size_t dn = n - 5;
            if (dn && *d == ' ') { d++; dn--; }
            char *na = realloc(acc, alen + dn + 2);
            if (!na) {
                parse_oom = 1;
                break;
            }
            acc = na;
            memcpy(acc + alen, d, dn);
            alen += dn;
            acc[alen++] = '\n';
            acc[alen] = 0;
        }
        if (n == 0 || !nl) {
            if (acc && alen) {
                cJSON *m = json_parse_oom(acc, alen, &parse_oom);
                found = m ? rpc_response_for(m, id) : NULL;   /* the same test as a JSON body's */
                if (parse_oom)
                    break;
                if (!m && json_parse_refusal()[0] && refused_response_for(acc, alen, id)) {
                    refused = 1;
                    break;
                }
            }
            alen = 0;
        }
        p = nl ? nl + 1 : end;
    }
    free(acc);
    if (refused && oom)
        *oom = MCP_REPLY_REFUSED;
    if (found || !parse_oom)
        return found;
out_of_memory:
    if (oom)
        *oom = MCP_REPLY_OOM;
    return NULL;
}

enum fb_status mcp_reply_result(const cJSON *msg, cJSON **res, char *err, size_t errlen)
{
    *res = NULL;
    err[0] = 0;
    const cJSON *e = json_get(msg, "error");
    const cJSON *r = json_get(msg, "result");
    if (e && !cJSON_IsNull(e)) {   /* some servers send "error":null beside a result */
        const cJSON *m = json_get(e, "message");
        const cJSON *c = json_get(e, "code");
        snprintf(err, errlen, "mcp error %d: %s", cJSON_IsNumber(c) ? c->valueint : 0,
                 cJSON_IsString(m) ? m->valuestring : "(no message)");
        return FB_EXEC_ERROR;
    }
    if (!cJSON_IsObject(r)) {
        snprintf(err, errlen, "mcp reply has no result object");
        return FB_PARSE_ERROR;
    }
    const cJSON *content = json_get(r, "content");
    const cJSON *structured = json_get(r, "structuredContent");
    const cJSON *first_text = NULL;
    int n_items = cJSON_IsArray(content) ? cJSON_GetArraySize(content) : 0;
    if (n_items >= 1) {
        const cJSON *c0 = cJSON_GetArrayItem(content, 0);
        const cJSON *t = json_get(c0, "text");
        if (cJSON_IsString(t))
            first_text = t;
    }
    if (cJSON_IsTrue(json_get(r, "isError"))) {
        snprintf(err, errlen, "tool error: %s", first_text ? first_text->valuestring : "(no text)");
        return FB_EXEC_ERROR;
    }
    if (structured)
        *res = cJSON_Duplicate(structured, 1);
    else if (n_items == 1 && first_text)
        *res = cJSON_CreateString(first_text->valuestring);
    else if (content)
        *res = cJSON_Duplicate(content, 1);
    else {
        snprintf(err, errlen, "mcp result has neither content nor structuredContent");
        return FB_PARSE_ERROR;
    }
    return FB_OK;
}

/* Map a tools/call JSON-RPC response to an outcome and deliver it; a
 * tools/list response (op->mcp_list) is delivered as its result object. */
static void finish_with_reply(struct adapter_op *op, const cJSON *msg, int64_t recv_ns, int64_t send_ns)
{
    char err[512];
    cJSON *res;
    enum fb_status st;
    if (op->mcp_list) {
        const cJSON *e = json_get(msg, "error");
        const cJSON *r = json_get(msg, "result");
        if (e && !cJSON_IsNull(e)) {
            const cJSON *m = json_get(e, "message");
            snprintf(err, sizeof err, "mcp error to tools/list: %s", cJSON_IsString(m) ? m->valuestring : "(no message)");
            adapter_finish(op, FB_EXEC_ERROR, NULL, err, 0, recv_ns, send_ns);
        } else if (!cJSON_IsObject(r)) {
            adapter_finish(op, FB_PARSE_ERROR, NULL, "mcp reply to tools/list has no result object", 0, recv_ns, send_ns);
        } else {
            res = cJSON_Duplicate(r, 1);
            adapter_finish(op, res ? FB_OK : FB_EXEC_ERROR, res, res ? NULL : "out of memory", 0, recv_ns, send_ns);
        }
        return;
    }
    st = mcp_reply_result(msg, &res, err, sizeof err);
    if (st == FB_OK && !res)   /* an ok result is never recorded as null */
        adapter_finish(op, FB_EXEC_ERROR, NULL, "out of memory while reading the MCP server's result", 0, recv_ns,
                       send_ns);
    else
        adapter_finish(op, st, res, st == FB_OK ? NULL : err, 0, recv_ns, send_ns);
}

/* Fail every op waiting on / in flight in the session (after it is reset).
 * `retryable`: whether a new attempt (a new session) may succeed: not after
 * the server refused the session (HTTP 4xx, a JSON-RPC error). */
static void fail_all(struct mcp_session *s, const char *why, int retryable)
{
    /* Taken from the session's own lists one at a time: a feedback callback
     * may cancel another of these ops (mcp_op_cancel unlinks it from them).
     * HTTP calls in flight are not the session's to end: each has its own
     * request (and reply, or timeout); only stdio ones die with the process. */
    int stdio = s->rt->spec->kind == AGENT_MCP_STDIO;
    struct adapter_op *op;
    while ((op = s->waiting) || (stdio && (op = s->inflight))) {
        if (op == s->waiting)
            waiting_unlink(s, op);
        else
            list_unlink(&s->inflight, op);
        adapter_finish(op, FB_EXEC_ERROR, NULL, why, retryable, 0, 0);
    }
}

/* why: "mcp initialize failed: " and the JSON-RPC error of the reply m to
 * initialize (NULL: none could be parsed) that carries no result. */
static void init_refused(const cJSON *m, char *why, size_t n)
{
    char err[512];
    cJSON *res = NULL;
    enum fb_status rst = m ? mcp_reply_result(m, &res, err, sizeof err) : FB_PARSE_ERROR;
    cJSON_Delete(res);
    snprintf(why, n, "mcp initialize failed: %s", rst == FB_EXEC_ERROR ? err : "no result in the reply");
}

/* initialize got no reply within timeout_ms.  A waiting call that has itself
 * waited about that long ends `timeout` (what its own timer would say); one
 * that came later has not, and stays on `waiting` for the next session (the
 * caller starts one).  One at a time from the list (see fail_all). */
static void fail_timed_out(struct mcp_session *s, const char *why)
{
    const int64_t due = orch_now_ns() - ((int64_t)s->rt->spec->timeout_ms - MCP_INIT_SLACK_MS) * 1000000;
    for (;;) {
        struct adapter_op *op = s->waiting;
        while (op && op->mcp_t0 > due)
            op = op->mcp_next;
        if (!op)
            return;
        waiting_unlink(s, op);
        adapter_finish(op, FB_TIMEOUT, NULL, why, 0, 0, 0);
    }
}

/* ---- streamable HTTP ------------------------------------------------------ */

static void noop_done(void *ud, const struct httpc_response *r) { (void)ud; (void)r; }

/* POST a message that is not a tools/call.  Bounded by the agent's
 * timeout_ms like a call: a server that never answers initialize must not
 * leave the session in INIT for ever (every later call would wait on it),
 * nor one that never answers a notification keep a request and its socket. */
/* msg NULL: it could not be built.  PS_OK when sent (with cb: it is
 * s->init_req), else an error said with ps_error_set. */
static int http_notify(struct mcp_session *s, cJSON *msg,
                       void (*cb)(void *, const struct httpc_response *), void *ud)
{
    char *text = msg ? cJSON_PrintUnformatted(msg) : NULL;
    cJSON_Delete(msg);
    if (cb)
        s->init_req = NULL;
    if (!text)
        return ps_error_set(PS_ENOMEM, "out of memory while building the message");
    build_headers(s);
    struct httpc_req *r = httpc_request(s->ex->http, "POST", s->rt->spec->url, s->hdrs,
                                        s->rt->spec->headers, text, strlen(text),
                                        s->rt->spec->timeout_ms, s->rt->spec->ca_file, cb ? cb : noop_done, ud);
    free(text);
    if (cb)
        s->init_req = r;
    return r ? PS_OK : PS_EIO;   /* httpc_request said why */
}

static int http_start(struct mcp_session *s, struct adapter_op *op);
static int http_init_send(struct mcp_session *s);

static void http_call_done(void *ud, const struct httpc_response *resp)
{
    struct adapter_op *op = ud;
    struct mcp_session *s = op->rt->mcp;
    enum fb_status st;
    int retry = 0;
    char err[512];
    list_unlink(&s->inflight, op);
    if (!adapter_http_classify(resp, &st, err, sizeof err, &retry)) {
        if (resp->status == 404 && op->mcp_sid && !resp->transport_error) {
            /* The server ended the session the call was sent on: the first
             * such 404 resets it; each call that got one goes again on the
             * next session, once (the server did not run it). */
            if (op->mcp_gen == s->sess_gen && s->state == MCP_READY) {
                s->state = MCP_NONE;
                s->sess_gen++;
                free(s->sid_header);
                s->sid_header = NULL;
            }
            retry = 1;
            if (!op->mcp_resent) {
                op->mcp_resent = 1;
                op->mcp_sent = 0;
                op->req = NULL;          /* finished: httpc frees it */
                if (http_start(s, op) == PS_OK)
                    return;
                snprintf(err, sizeof err, "mcp: the session ended (HTTP 404) and the call could not be sent again: %s",
                         ps_error_last());
            }
        }
        adapter_finish(op, st, NULL, err, retry, resp->agent_recv_ns, resp->agent_send_ns);
        return;
    }
    int oom;
    cJSON *m = mcp_reply_parse(resp->body, resp->body_len, op->rpc_id, &oom);
    if (!m) {
        char why[160];
        snprintf(why, sizeof why, "%s",
                 oom == MCP_REPLY_OOM ? "out of memory while parsing the MCP server's reply"
                 : oom == MCP_REPLY_REFUSED ? "mcp reply holding the call's response is not valid JSON text: "
                 : "mcp reply carries no JSON-RPC response for the call");
        if (oom == MCP_REPLY_REFUSED)
            snprintf(why + strlen(why), sizeof why - strlen(why), "%s", json_parse_refusal());
        adapter_finish(op, oom == MCP_REPLY_OOM ? FB_EXEC_ERROR : FB_PARSE_ERROR, NULL, why, 0,
                       resp->agent_recv_ns, resp->agent_send_ns);
        return;
    }
    finish_with_reply(op, m, resp->agent_recv_ns, resp->agent_send_ns);
    cJSON_Delete(m);
}

int mcp_sse_scan(struct mcp_sse_scan *st, const char *body, size_t len, long id)
{
    /* just past the last blank line among the bytes not scanned before
     * (a blank line's 3 bytes may straddle the previous scan's end) */
    size_t from = st->scanned > st->peeked + 3 ? st->scanned - 3 : st->peeked, end = 0;
    for (size_t k = len; k > from + 1 && k >= 2; k--) {
        if (body[k - 1] == '\n' && (body[k - 2] == '\n' || (k >= 3 && body[k - 2] == '\r' && body[k - 3] == '\n'))) {
            end = k;
            break;
        }
    }
    if (len > st->scanned)
        st->scanned = len;
    if (end <= st->peeked)
        return 0;
    int oom;
    cJSON *m = mcp_reply_parse(body + st->peeked, end - st->peeked, id, &oom);
    if (oom == MCP_REPLY_OOM)
        return 0;       /* scanned again with the next bytes, or parsed whole at the end */
    st->searched += end - st->peeked;
    st->peeked = end;
    cJSON_Delete(m);
    /* a refused response ends the request too: the whole body's parse says why */
    return m != NULL || oom == MCP_REPLY_REFUSED;
}

/* An SSE reply that already holds the call's response ends the request:
 * a server may keep the stream open after it (pings, notifications), and
 * the call would otherwise run into its timeout with the answer in hand.
 * JSON bodies are left to their framing (a prefix of one may parse). */
static int http_call_peek(void *ud, const char *body, size_t len)
{
    struct adapter_op *op = ud;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len || body[i] == '{' || body[i] == '[')
        return 0;
    return mcp_sse_scan(&op->mcp_sse, body, len, op->rpc_id);
}

static int http_send_call(struct mcp_session *s, struct adapter_op *op)
{
    cJSON *m = tools_call_msg(op);
    char *text = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    if (!text)
        return ps_error_set(PS_ENOMEM, "out of memory");
    build_headers(s);
    op->req = httpc_request(s->ex->http, "POST", s->rt->spec->url, s->hdrs, s->rt->spec->headers,
                            text, strlen(text), 0, s->rt->spec->ca_file, http_call_done, op);
    free(text);
    if (!op->req)
        return PS_EIO;
    op->mcp_sse = (struct mcp_sse_scan){ 0 };   /* a new request (a resend after a 404 too) */
    httpc_set_peek(op->req, http_call_peek);
    op->mcp_sent = 1;
    op->mcp_gen = s->sess_gen;
    op->mcp_sid = s->sid_header != NULL;
    list_push(&s->inflight, op);
    return PS_OK;
}

static void http_flush_waiting(struct mcp_session *s)
{
    /* One at a time from the session's list (see fail_all). */
    struct adapter_op *op;
    while ((op = s->waiting)) {
        waiting_unlink(s, op);
        if (http_send_call(s, op)) {
            char why[300];
            snprintf(why, sizeof why, "mcp: could not send the call: %s", ps_error_last());
            adapter_finish(op, FB_EXEC_ERROR, NULL, why, 1, 0, 0);
        }
    }
}

static void http_initialized_done(void *ud, const struct httpc_response *resp)
{
    struct mcp_session *s = ud;
    s->init_req = NULL;
    s->state = MCP_READY;
    http_flush_waiting(s);
}

static void http_init_done(void *ud, const struct httpc_response *resp)
{
    struct mcp_session *s = ud;
    enum fb_status st;
    int retry = 0;
    char err[512], why[600];
    s->init_req = NULL;
    if (!adapter_http_classify(resp, &st, err, sizeof err, &retry)) {
        s->state = MCP_NONE;
        snprintf(why, sizeof why, "mcp initialize failed: %s", err);
        /* No answer to initialize within timeout_ms: the calls that waited
         * that long on it timed out (as the executor's own timer would say),
         * not retried; calls that came later go on to a new session. */
        if (resp->transport_error != CURLE_OPERATION_TIMEDOUT) {
            fail_all(s, why, retry);
            return;
        }
        fail_timed_out(s, why);
        if (s->waiting && s->state == MCP_NONE && http_init_send(s)) {
            snprintf(why, sizeof why, "%s", ps_error_last());
            fail_all(s, why, 1);
        }
        return;
    }
    int oom;
    cJSON *m = mcp_reply_parse(resp->body, resp->body_len, s->init_id, &oom);
    if (!m && oom == MCP_REPLY_OOM) {
        s->state = MCP_NONE;
        fail_all(s, "mcp: out of memory while parsing the initialize reply", 1);
        return;
    }
    if (!cJSON_IsObject(json_get(m, "result"))) {
        init_refused(m, why, sizeof why);
        cJSON_Delete(m);
        s->state = MCP_NONE;
        fail_all(s, why, 0);
        return;
    }
    cJSON_Delete(m);
    free(s->sid_header);
    s->sid_header = NULL;
    if (resp->session_id) {
        size_t n = strlen(resp->session_id) + 32;
        s->sid_header = malloc(n);
        if (s->sid_header)
            snprintf(s->sid_header, n, "Mcp-Session-Id: %s", resp->session_id);
    }
    if (http_notify(s, rpc_new(-1, "notifications/initialized"), http_initialized_done, s)) {
        snprintf(why, sizeof why, "mcp: could not send notifications/initialized: %s", ps_error_last());
        s->state = MCP_NONE;
        fail_all(s, why, 1);
    }
}

static cJSON *initialize_msg(long id)
{
    cJSON *m = rpc_new(id, "initialize"), *p, *ci;
    return msg_or_null(m, m && (p = cJSON_AddObjectToObject(m, "params")) &&
                              cJSON_AddStringToObject(p, "protocolVersion", MCP_PROTOCOL_VERSION) &&
                              cJSON_AddObjectToObject(p, "capabilities") &&
                              (ci = cJSON_AddObjectToObject(p, "clientInfo")) &&
                              cJSON_AddStringToObject(ci, "name", "paraserve") &&
                              cJSON_AddStringToObject(ci, "version", "0.1"));
}

/* ---- stdio ---------------------------------------------------------------- */

enum { STDIO_WRITTEN, STDIO_FULL, STDIO_FAILED, STDIO_NOMEM };
static const char stdio_nomem_call[] = "mcp-stdio: out of memory while building the call";

/* Queue one message (and its newline) for the child, unless that would put
 * more than MCP_MAX_PENDING bytes in wait for it. */
static int stdio_write(struct mcp_session *s, cJSON *msg)
{
    char *text = msg ? cJSON_PrintUnformatted(msg) : NULL;
    cJSON_Delete(msg);
    int rc = text ? STDIO_FAILED : STDIO_NOMEM;   /* msg NULL: it could not be built */
    if (text && s->to_child) {
        size_t n = strlen(text);
        size_t pending = evbuffer_get_length(bufferevent_get_output(s->to_child));
        if (n + 1 > MCP_MAX_PENDING || pending > MCP_MAX_PENDING - n - 1)
            rc = STDIO_FULL;
        else if (!bufferevent_write(s->to_child, text, n) && !bufferevent_write(s->to_child, "\n", 1))
            rc = STDIO_WRITTEN;
    }
    free(text);
    return rc;
}

/* Stopped agent processes not reaped yet.  The loop never waits for one:
 * a process that ignores SIGTERM (or takes its time) used to stall every
 * task on the loop for up to a second.  Polled every MCP_REAP_TICK_MS;
 * SIGKILL after MCP_REAP_GRACE_MS; exec_destroy() finishes them
 * (mcp_reap_all). */
#define MCP_REAP_TICK_MS  50
#define MCP_REAP_GRACE_MS 1000
#define MCP_STDIN_EOF_WAIT_MS 300   /* shutdown: time to exit on stdin EOF before SIGTERM */

struct mcp_reap {
    struct exec     *ex;
    pid_t            pid;
    int              term_sent;   /* 0: stdin closed, SIGTERM not sent yet */
    int              ticks;
    struct event    *ev;
    struct mcp_reap *prev, *next;
};

static void reap_free(struct mcp_reap *r)
{
    if (r->prev) r->prev->next = r->next; else r->ex->reaping = r->next;
    if (r->next) r->next->prev = r->prev;
    if (r->ev)
        event_free(r->ev);
    free(r);
}

/* 1 (and r freed) when its process has exited and is reaped (or is not
 * ours to wait for), else 0. */
static int reap_try(struct mcp_reap *r)
{
    int status;
    pid_t w = waitpid(r->pid, &status, WNOHANG);
    if (w == r->pid || (w < 0 && errno != EINTR)) {
        reap_free(r);
        return 1;
    }
    return 0;
}

static void reap_tick(evutil_socket_t fd, short what, void *ud)
{
    struct mcp_reap *r = ud;
    if (reap_try(r))
        return;
    if (!r->term_sent && ++r->ticks >= MCP_STDIN_EOF_WAIT_MS / MCP_REAP_TICK_MS) {
        kill(r->pid, SIGTERM);
        r->term_sent = 1;
        r->ticks = 0;
    } else if (r->term_sent && ++r->ticks == MCP_REAP_GRACE_MS / MCP_REAP_TICK_MS) {
        kill(r->pid, SIGKILL);
    }
    struct timeval tv = { 0, MCP_REAP_TICK_MS * 1000 };
    evtimer_add(r->ev, &tv);
}

/* Reap `pid` without blocking the loop: sent SIGTERM already
 * (term_sent), or to be sent one MCP_STDIN_EOF_WAIT_MS from now. */
static void reap_later_term(struct exec *ex, pid_t pid, int term_sent)
{
    int status;
    if (waitpid(pid, &status, WNOHANG) != 0)
        return;                               /* gone already (or not ours) */
    struct mcp_reap *r = calloc(1, sizeof *r);
    if (r && !(r->ev = evtimer_new(ex->base, reap_tick, r))) {
        free(r);
        r = NULL;
    }
    if (!r) {                                 /* no memory: the old blocking way */
        kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        return;
    }
    r->ex = ex;
    r->pid = pid;
    r->term_sent = term_sent;
    r->next = ex->reaping;
    if (ex->reaping)
        ex->reaping->prev = r;
    ex->reaping = r;
    struct timeval tv = { 0, MCP_REAP_TICK_MS * 1000 };
    evtimer_add(r->ev, &tv);
}

void mcp_reap_all(struct exec *ex)
{
    /* Processes whose stdin was closed: MCP_STDIN_EOF_WAIT_MS to exit on
     * it, then SIGTERM; then the grace period once for all, then SIGKILL. */
    int any_eof = 0;
    for (struct mcp_reap *r = ex->reaping; r; r = r->next)
        any_eof |= !r->term_sent;
    for (int i = 0; any_eof && ex->reaping && i < MCP_STDIN_EOF_WAIT_MS / 10; i++) {
        for (struct mcp_reap *r = ex->reaping, *n; r; r = n) {
            n = r->next;
            reap_try(r);
        }
        if (ex->reaping)
            usleep(10000);
    }
    for (struct mcp_reap *r = ex->reaping; r; r = r->next)
        if (!r->term_sent) {
            kill(r->pid, SIGTERM);
            r->term_sent = 1;
        }
    for (int i = 0; ex->reaping && i < MCP_REAP_GRACE_MS / 10; i++) {
        for (struct mcp_reap *r = ex->reaping, *n; r; r = n) {
            n = r->next;
            reap_try(r);
        }
        if (ex->reaping)
            usleep(10000);
    }
    while (ex->reaping) {
        struct mcp_reap *r = ex->reaping;
        int status;
        kill(r->pid, SIGKILL);
        while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR) {
        }
        reap_free(r);
    }
}

/* ---- stdio: the child's stderr ---------------------------------------------- */

struct mcp_errpipe {
    struct mcp_session *s;
    struct mcp_errpipe *prev, *next;
    struct event       *ev;
    int                 fd;
    int                 cut;                     /* line over MCP_ERR_LINE_MAX: rest dropped */
    size_t              len;
    char                line[MCP_ERR_LINE_MAX];
};

/* One write(2) per line: lines of several agents never interleave.  Our
 * stderr may block (a slow reader): the rate limit bounds what one agent
 * can make the loop write to ~55 KiB/s. */
static void err_write(const char *buf, size_t n)
{
    while (n) {
        ssize_t k = write(STDERR_FILENO, buf, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return;
        buf += k;
        n -= (size_t)k;
    }
}

static void err_note(struct mcp_session *s)
{
    if (!s->err_suppressed)
        return;
    char b[200];
    int n = snprintf(b, sizeof b, "[agent %s] (suppressed %ld stderr lines: more than %d a second)\n",
                     s->rt->spec->name, s->err_suppressed, MCP_ERR_LINES_PER_S);
    err_write(b, (size_t)n < sizeof b ? (size_t)n : sizeof b - 1);
    s->err_suppressed = 0;
}

static void err_timer_cb(evutil_socket_t fd, short what, void *ud)
{
    err_note(ud);
}

static void err_emit(struct mcp_session *s, const char *text, size_t n, int cut)
{
    int64_t now = orch_now_ns();
    if (now - s->err_window_ns >= 1000000000LL) {
        err_note(s);
        s->err_window_ns = now;
        s->err_lines = 0;
    }
    if (s->err_lines >= MCP_ERR_LINES_PER_S) {
        if (!s->err_suppressed++ && s->err_timer) {
            int64_t left_us = (s->err_window_ns + 1000000000LL - now) / 1000;
            struct timeval tv = { (time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000) };
            evtimer_add(s->err_timer, &tv);
        }
        return;
    }
    s->err_lines++;
    if (n && text[n - 1] == '\r')
        n--;
    char b[MCP_ERR_LINE_MAX + 128];
    int k = snprintf(b, sizeof b, "[agent %s] ", s->rt->spec->name);
    size_t o = (size_t)k;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        b[o++] = (c < 32 && c != '\t') || c == 127 ? '?' : (char)c;   /* no terminal escapes */
    }
    if (cut) {
        memcpy(b + o, " ...(truncated)", 15);
        o += 15;
    }
    b[o++] = '\n';
    err_write(b, o);
}

static void errpipe_free(struct mcp_errpipe *p)
{
    struct mcp_session *s = p->s;
    if (p->prev) p->prev->next = p->next; else s->errpipes = p->next;
    if (p->next) p->next->prev = p->prev;
    if (p->ev)
        event_free(p->ev);
    if (p->fd >= 0)
        close(p->fd);
    free(p);
}

static void errpipe_bytes(struct mcp_errpipe *p, const char *b, size_t n)
{
    while (n) {
        const char *nl = memchr(b, '\n', n);
        size_t seg = nl ? (size_t)(nl - b) : n;
        size_t room = MCP_ERR_LINE_MAX - p->len;
        size_t take = seg < room ? seg : room;
        memcpy(p->line + p->len, b, take);
        p->len += take;
        if (seg > take)
            p->cut = 1;
        if (!nl)
            return;
        err_emit(p->s, p->line, p->len, p->cut);
        p->len = 0;
        p->cut = 0;
        b = nl + 1;
        n -= seg + 1;
    }
}

/* Drain what is there (at most MCP_ERR_READ_MAX a turn: a flood must not
 * starve the loop; the event stays active); at EOF the last partial line
 * and the pending note are written and the reader freed. */
static void errpipe_read(evutil_socket_t fd, short what, void *ud)
{
    struct mcp_errpipe *p = ud;
    char buf[8192];
    size_t total = 0;
    while (total < MCP_ERR_READ_MAX) {
        ssize_t n = read(p->fd, buf, sizeof buf);
        if (n > 0) {
            errpipe_bytes(p, buf, (size_t)n);
            total += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (p->len || p->cut)
            err_emit(p->s, p->line, p->len, p->cut);
        err_note(p->s);
        errpipe_free(p);
        return;
    }
}

/* ---- stdio: the process ------------------------------------------------------ */

/* Stop the process (if any): the session goes back to NONE.  `why`: the
 * reason named to calls held back from restarting it. */
static void reap_later_term(struct exec *ex, pid_t pid, int term_sent);

/* Stop the session's process.  `why` NULL: the executor is going away -
 * the MCP stdio shutdown: what waits to be written to its stdin (a
 * notifications/cancelled, say) is written as far as the pipe takes it
 * without blocking, stdin is closed, and the process gets
 * MCP_STDIN_EOF_WAIT_MS to exit on that EOF before SIGTERM (mcp_reap_all).
 * Otherwise (it misbehaved) SIGTERM at once.  Either way SIGKILL follows
 * MCP_REAP_GRACE_MS after the SIGTERM. */
static void stdio_close(struct mcp_session *s, const char *why)
{
    if (s->to_child) {
        if (!why) {
            /* the bufferevent's output cannot be drained or copied from
             * outside (its start is frozen): its chunks are peeked at and
             * written in order, as far as the pipe takes them */
            struct evbuffer *out = bufferevent_get_output(s->to_child);
            evutil_socket_t fd = bufferevent_getfd(s->to_child);
            struct evbuffer_iovec vec[16];
            int nv = fd >= 0 ? evbuffer_peek(out, -1, NULL, vec, 16) : 0;
            for (int i = 0; i < nv && i < 16; i++) {
                ssize_t w = write(fd, vec[i].iov_base, vec[i].iov_len);
                if (w < 0 || (size_t)w < vec[i].iov_len)
                    break;
            }
            /* closed now: the bufferevent's own close waits for a loop turn
             * (its finalizer), which an executor going away may not get */
            if (fd >= 0 && bufferevent_setfd(s->to_child, -1) == 0)
                close(fd);
        }
        bufferevent_free(s->to_child);
        s->to_child = NULL;
    }
    if (s->from_child) {
        bufferevent_free(s->from_child);
        s->from_child = NULL;
    }
    if (s->init_timer)
        evtimer_del(s->init_timer);
    if (s->pid > 0) {
        if (why)
            kill(s->pid, SIGTERM);
        reap_later_term(s->ex, s->pid, why != NULL);
        s->pid = -1;
        if (s->state != MCP_READY)
            s->failed_starts++;
        s->last_end = why;
    }
    s->state = MCP_NONE;
}

/* Minimum time from the last start to the next: 1 s, doubled for each
 * process in a row that never got READY, at most MCP_RESTART_MAX_MS. */
static int64_t restart_delay_ms(const struct mcp_session *s)
{
    int64_t d = MCP_RESTART_MIN_MS;
    for (int i = 1; i < s->failed_starts && d < MCP_RESTART_MAX_MS; i++)
        d *= 2;
    return d < MCP_RESTART_MAX_MS ? d : MCP_RESTART_MAX_MS;
}

static const char *pending_msg(struct mcp_session *s, char *buf, size_t n)
{
    snprintf(buf, n, "mcp-stdio: agent '%s' is not reading its input (%zu bytes wait to be written to it; "
             "at most %u)", s->rt->spec->name,
             s->to_child ? evbuffer_get_length(bufferevent_get_output(s->to_child)) : (size_t)0,
             MCP_MAX_PENDING);
    return buf;
}

/* STDIO_WRITTEN: sent and in flight; otherwise the op is the caller's. */
static int stdio_send_call(struct mcp_session *s, struct adapter_op *op)
{
    int rc = stdio_write(s, tools_call_msg(op));
    if (rc != STDIO_WRITTEN)
        return rc;
    op->mcp_sent = 1;
    list_push(&s->inflight, op);
    return rc;
}

/* The call in flight that JSON-RPC id `id` answers, unlinked from the
 * session's in-flight list; NULL when none (a late reply to a cancelled
 * call). */
static struct adapter_op *inflight_take(struct mcp_session *s, const cJSON *id)
{
    for (struct adapter_op *op = s->inflight; op; op = op->mcp_next)
        if (rpc_id_is(id, op->rpc_id)) {
            list_unlink(&s->inflight, op);
            return op;
        }
    return NULL;
}

static void stdio_handle(struct mcp_session *s, cJSON *m)
{
    const cJSON *id = json_get(m, "id");
    const cJSON *method = json_get(m, "method");
    if (cJSON_IsString(method)) {
        if (id) {   /* a request from the server: answer ping, refuse the rest */
            cJSON *r = cJSON_CreateObject(), *e;
            int ok = r && cJSON_AddStringToObject(r, "jsonrpc", "2.0") && json_add(r, "id", cJSON_Duplicate(id, 1));
            if (!strcmp(method->valuestring, "ping"))
                ok = ok && cJSON_AddObjectToObject(r, "result");
            else
                ok = ok && (e = cJSON_AddObjectToObject(r, "error")) && cJSON_AddNumberToObject(e, "code", -32601) &&
                     cJSON_AddStringToObject(e, "message", "method not supported by paraserve");
            stdio_write(s, msg_or_null(r, ok));   /* dropped when it is not reading, or out of memory */
        }
        return;
    }
    if (!cJSON_IsNumber(id))
        return;
    if (s->state == MCP_INIT && rpc_id_is(id, s->init_id)) {
        if (!cJSON_IsObject(json_get(m, "result"))) {
            char why[600];
            init_refused(m, why, sizeof why);
            stdio_close(s, "refused initialize");
            fail_all(s, why, 0);
            return;
        }
        int wr = stdio_write(s, rpc_new(-1, "notifications/initialized"));
        if (wr == STDIO_FAILED || wr == STDIO_NOMEM) {
            /* as over HTTP: no call goes to a server not told it is ready */
            evtimer_del(s->init_timer);
            stdio_close(s, "could not be told initialize ended");
            fail_all(s, wr == STDIO_NOMEM ? "mcp-stdio: out of memory while sending notifications/initialized"
                                          : "mcp-stdio: could not send notifications/initialized", 1);
            return;
        }
        s->state = MCP_READY;
        s->failed_starts = 0;
        evtimer_del(s->init_timer);
        struct adapter_op *op;
        char why[300];
        while ((op = s->waiting)) {   /* one at a time from the list: see fail_all */
            waiting_unlink(s, op);
            int rc = stdio_send_call(s, op);
            if (rc == STDIO_FULL)
                adapter_finish(op, FB_EXEC_ERROR, NULL, pending_msg(s, why, sizeof why), 1, 0, 0);
            else if (rc != STDIO_WRITTEN)
                adapter_finish(op, FB_EXEC_ERROR, NULL, rc == STDIO_NOMEM ? stdio_nomem_call
                                                                          : "mcp-stdio: could not write the call",
                               1, 0, 0);
        }
        return;
    }
    struct adapter_op *op = inflight_take(s, id);
    if (op)
        finish_with_reply(op, m, 0, 0);
    /* else a late reply to a cancelled call: dropped. */
}

/* A line refused as agent JSON (not UTF-8, or a NUL in a string) that is
 * still JSON in shape: when it answers a call in flight, that call ends
 * parse_error now, saying why, rather than wait for its timeout. */
static void stdio_refused_reply(struct mcp_session *s, const char *line, size_t n)
{
    char why[200];
    snprintf(why, sizeof why, "mcp-stdio: the agent's reply is not valid JSON text: %s", json_parse_refusal());
    int oom;
    cJSON *m = json_parse_end_oom(line, n, NULL, &oom);
    const cJSON *id = json_get(m, "id");
    /* a message with a method is a request or notification from the server */
    struct adapter_op *op = cJSON_IsNumber(id) && !json_get(m, "method") ? inflight_take(s, id) : NULL;
    if (op)
        adapter_finish(op, FB_PARSE_ERROR, NULL, why, 0, 0, 0);
    cJSON_Delete(m);
}

static void stdio_on_read(struct bufferevent *bev, void *ud)
{
    struct mcp_session *s = ud;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned gen = s->gen;
    char *line;
    size_t n;
    /* stdio_handle may close (and a failure callback respawn) the process:
     * stop as soon as this bufferevent is no longer the session's. */
    while (s->from_child && s->gen == gen && (line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF))) {
        int oom;
        cJSON *m = json_parse_oom(line, n, &oom);
        if (!m && !oom && json_parse_refusal()[0])
            stdio_refused_reply(s, line, n);
        free(line);
        if (m)
            stdio_handle(s, m);
        cJSON_Delete(m);
        if (oom) {
            /* the line's message is lost (which call it answered is
             * unknown): the calls it could have answered end now rather
             * than at their timeout */
            fail_all(s, "mcp-stdio: out of memory while parsing the agent's message", 1);
        }
    }
    if (s->from_child && s->gen == gen && evbuffer_get_length(in) > MCP_MAX_LINE) {
        stdio_close(s, "wrote a line longer than 16 MiB");
        fail_all(s, "mcp-stdio: line longer than 16 MiB", 0);
    }
}

static void stdio_on_event(struct bufferevent *bev, short what, void *ud)
{
    struct mcp_session *s = ud;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        stdio_close(s, "exited or closed its pipes");
        fail_all(s, "mcp-stdio: agent process exited or closed its pipes", 1);
    }
}

static int stdio_launch(struct mcp_session *s, int *held, char *why, size_t whylen);

static void stdio_init_timeout(evutil_socket_t fd, short what, void *ud)
{
    struct mcp_session *s = ud;
    char why[200];
    if (s->state != MCP_INIT)
        return;
    snprintf(why, sizeof why, "mcp initialize: no reply within %d ms", s->rt->spec->timeout_ms);
    stdio_close(s, "did not answer initialize in time");
    fail_timed_out(s, why);
    /* calls that came later wait on a new process, restart_delay_ms permitting */
    char no[300];
    int held = 0;
    if (s->waiting && s->state == MCP_NONE && stdio_launch(s, &held, no, sizeof no)) {
        snprintf(no, sizeof no, "%s", ps_error_last());
        held = 1;
    }
    if (held)   /* held back, or the start failed: `no` says why */
        fail_all(s, no, 1);
}

static int stdio_spawn(struct mcp_session *s)
{
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
    struct mcp_errpipe *ep = NULL;
    posix_spawn_file_actions_t fa;
    if (!s->init_timer && !(s->init_timer = evtimer_new(s->ex->base, stdio_init_timeout, s)))
        return ps_error_set(PS_ENOMEM, "mcp-stdio: out of memory");
    if (!s->err_timer)   /* without it the note waits for the next line */
        s->err_timer = evtimer_new(s->ex->base, err_timer_cb, s);
    if (!(ep = calloc(1, sizeof *ep)))
        return ps_error_set(PS_ENOMEM, "mcp-stdio: out of memory");
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
            if (err[i] >= 0) close(err[i]);
        }
        free(ep);
        return ps_error_set(PS_EIO, "mcp-stdio: pipe: %s", strerror(e));
    }
    /* The child gets its three pipes and nothing else of ours: descriptors
     * some library opened without close-on-exec (libevent's and curl's
     * socketpairs) are closed, and SIGPIPE, which the executor ignores, is
     * back to its default. */
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    posix_spawnattr_t attr;
    sigset_t dfl;
    posix_spawnattr_init(&attr);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawnp(&pid, s->rt->spec->command[0], &fa, &attr, s->rt->spec->command, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (rc) {
        close(in[1]);
        close(out[0]);
        close(err[0]);
        free(ep);
        return ps_error_set(PS_EIO, "mcp-stdio: cannot run '%s': %s", s->rt->spec->command[0], strerror(rc));
    }
    s->pid = pid;
    s->gen++;
    s->last_start_ns = orch_now_ns();
    evutil_make_socket_nonblocking(in[1]);
    evutil_make_socket_nonblocking(out[0]);
    evutil_make_socket_nonblocking(err[0]);
    ep->s = s;
    ep->fd = err[0];
    ep->next = s->errpipes;
    if (s->errpipes)
        s->errpipes->prev = ep;
    s->errpipes = ep;
    ep->ev = event_new(s->ex->base, err[0], EV_READ | EV_PERSIST, errpipe_read, ep);
    s->to_child = bufferevent_socket_new(s->ex->base, in[1], BEV_OPT_CLOSE_ON_FREE);
    s->from_child = bufferevent_socket_new(s->ex->base, out[0], BEV_OPT_CLOSE_ON_FREE);
    if (!s->to_child || !s->from_child || !ep->ev || event_add(ep->ev, NULL)) {
        if (!s->to_child) close(in[1]);
        if (!s->from_child) close(out[0]);
        stdio_close(s, "could not be set up");
        errpipe_free(ep);
        return ps_error_set(PS_ENOMEM, "mcp-stdio: out of memory");
    }
    bufferevent_setcb(s->from_child, stdio_on_read, NULL, stdio_on_event, s);
    bufferevent_setcb(s->to_child, NULL, NULL, stdio_on_event, s);
    bufferevent_enable(s->from_child, EV_READ);
    bufferevent_enable(s->to_child, EV_WRITE);
    return PS_OK;
}

/* NONE -> INIT: start a process and send it initialize, unless a start
 * is held back (restart_delay_ms): then *held is set and `why` names the
 * reason.  PS_OK (started or held back), or an error (ps_error_set). */
static int stdio_launch(struct mcp_session *s, int *held, char *why, size_t whylen)
{
    int64_t since_ms = (orch_now_ns() - s->last_start_ns) / 1000000, delay = restart_delay_ms(s);
    *held = s->last_start_ns && since_ms < delay;
    if (*held) {
        snprintf(why, whylen, "mcp-stdio: agent '%s' not restarted for another %lld ms: its last "
                 "process %s (restarts at most every %lld ms)", s->rt->spec->name,
                 (long long)(delay - since_ms), s->last_end ? s->last_end : "ended", (long long)delay);
        return PS_OK;
    }
    s->init_id = s->next_id++;
    int st = stdio_spawn(s);
    if (st)
        return st;
    int wr = stdio_write(s, initialize_msg(s->init_id));
    if (wr != STDIO_WRITTEN) {
        stdio_close(s, "could not be set up");
        return ps_error_set(PS_ENOMEM, wr == STDIO_NOMEM ? "mcp-stdio: out of memory while building initialize"
                                                         : "mcp-stdio: could not write initialize");
    }
    struct timeval tv = { s->rt->spec->timeout_ms / 1000, (s->rt->spec->timeout_ms % 1000) * 1000 };
    evtimer_add(s->init_timer, &tv);
    s->state = MCP_INIT;
    return PS_OK;
}

static int stdio_start(struct mcp_session *s, struct adapter_op *op)
{
    char why[300];
    if (s->state == MCP_READY) {
        int rc = stdio_send_call(s, op);
        if (rc == STDIO_WRITTEN)
            return PS_OK;
        return adapter_fail_later(op, FB_EXEC_ERROR, rc == STDIO_FULL ? pending_msg(s, why, sizeof why)
                                  : rc == STDIO_NOMEM ? stdio_nomem_call
                                  : "mcp-stdio: could not write the call", 1);
    }
    if (s->state == MCP_NONE) {
        int held, st = stdio_launch(s, &held, why, sizeof why);
        if (st)
            return st;
        if (held)
            return adapter_fail_later(op, FB_EXEC_ERROR, why, 1);
    }
    waiting_add(s, op);
    return PS_OK;
}

/* ---- entry points ----------------------------------------------------------- */

/* NONE -> INIT: send initialize. */
static int http_init_send(struct mcp_session *s)
{
    s->init_id = s->next_id++;
    int st = http_notify(s, initialize_msg(s->init_id), http_init_done, s);
    if (st) {
        char why[256];   /* ps_error_set must not read its own buffer */
        snprintf(why, sizeof why, "%s", ps_error_last());
        return ps_error_set(st, "mcp: could not send initialize: %s", why);
    }
    s->state = MCP_INIT;
    return PS_OK;
}

static int http_start(struct mcp_session *s, struct adapter_op *op)
{
    int st;
    if (s->state == MCP_READY)
        return http_send_call(s, op);
    if (s->state == MCP_NONE && (st = http_init_send(s)))
        return st;
    waiting_add(s, op);
    return PS_OK;
}

int mcp_op_start(struct adapter_op *op)
{
    struct mcp_session *s = session_get(op->ex, op->rt);
    if (!s)
        return ps_error_set(PS_ENOMEM, "out of memory");
    op->rpc_id = s->next_id++;
    op->mcp_t0 = orch_now_ns();
    return op->rt->spec->kind == AGENT_MCP_HTTP ? http_start(s, op) : stdio_start(s, op);
}

void mcp_op_cancel(struct adapter_op *op)
{
    struct mcp_session *s = op->rt->mcp;
    if (!s)
        return;
    if (!op->mcp_sent) {
        waiting_unlink(s, op);
        return;
    }
    list_unlink(&s->inflight, op);
    cJSON *m = rpc_new(-1, "notifications/cancelled"), *p;
    /* out of memory: the cancel is not announced (the call is still ended) */
    m = msg_or_null(m, m && (p = cJSON_AddObjectToObject(m, "params")) &&
                       cJSON_AddNumberToObject(p, "requestId", (double)op->rpc_id) &&
                       cJSON_AddStringToObject(p, "reason", "cancelled by the orchestrator"));
    if (op->rt->spec->kind == AGENT_MCP_HTTP)
        http_notify(s, m, NULL, NULL);
    else
        stdio_write(s, m);   /* dropped when it is not reading */
}

void mcp_session_free(struct exec *ex, struct agent_rt *rt)
{
    struct mcp_session *s = rt->mcp;
    if (!s)
        return;
    if (s->init_req)
        httpc_cancel(s->init_req);
    stdio_close(s, NULL);
    /* What the processes wrote to stderr and we have not read yet, then
     * the last partial lines and the note. */
    while (s->errpipes) {
        struct mcp_errpipe *p = s->errpipes;
        errpipe_read(p->fd, EV_READ, p);
        if (s->errpipes == p) {
            if (p->len || p->cut)
                err_emit(s, p->line, p->len, p->cut);
            errpipe_free(p);
        }
    }
    err_note(s);
    if (s->init_timer)
        event_free(s->init_timer);
    if (s->err_timer)
        event_free(s->err_timer);
    free(s->sid_header);
    free(s);
    rt->mcp = NULL;
}
