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
 * request.  A cancelled call is announced with notifications/cancelled and
 * its late reply is dropped (no op carries its id any more).
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

#include "common/status.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"

extern char **environ;

#define MCP_PROTOCOL_VERSION "2025-06-18"
#define MCP_MAX_LINE (16u << 20)

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
    struct adapter_op *waiting;          /* not yet sent */
    struct adapter_op *inflight;         /* sent (stdio) */
    pid_t              pid;
    unsigned           gen;              /* bumped per spawned process */
    struct bufferevent *to_child;        /* child's stdin */
    struct bufferevent *from_child;      /* child's stdout */
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

static cJSON *rpc_new(long id, const char *method)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "jsonrpc", "2.0");
    if (id >= 0)
        cJSON_AddNumberToObject(m, "id", (double)id);
    cJSON_AddStringToObject(m, "method", method);
    return m;
}

static cJSON *tools_call_msg(struct adapter_op *op)
{
    const struct agent_spec *a = op->rt->spec;
    cJSON *m = rpc_new(op->rpc_id, "tools/call");
    cJSON *p = cJSON_AddObjectToObject(m, "params");
    cJSON_AddStringToObject(p, "name", a->tool ? a->tool : a->name);
    cJSON_AddItemToObject(p, "arguments", cJSON_Duplicate(op->args, 1));
    return m;
}

/* JSON-RPC ids are integers we chose; a reply's id is a double that may be
 * anything (1e300, -0.5): compared as a double, never cast to long (out of
 * range, that cast is undefined behaviour). */
static int rpc_id_is(const cJSON *v, long id)
{
    return cJSON_IsNumber(v) && v->valuedouble == (double)id;
}

cJSON *mcp_reply_parse(const char *body, size_t len, long id)
{
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (j)
        return j;
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
            if (!na)
                break;
            acc = na;
            memcpy(acc + alen, d, dn);
            alen += dn;
            acc[alen++] = '\n';
            acc[alen] = 0;
        }
        if (n == 0 || !nl) {
            if (acc && alen) {
                cJSON *m = cJSON_ParseWithLength(acc, alen);
                const cJSON *mid = cJSON_GetObjectItemCaseSensitive(m, "id");
                if (rpc_id_is(mid, id) &&
                    (cJSON_GetObjectItemCaseSensitive(m, "result") || cJSON_GetObjectItemCaseSensitive(m, "error")))
                    found = m;
                else
                    cJSON_Delete(m);
            }
            alen = 0;
        }
        p = nl ? nl + 1 : end;
    }
    free(acc);
    return found;
}

enum fb_status mcp_reply_result(const cJSON *msg, cJSON **res, char *err, size_t errlen)
{
    *res = NULL;
    err[0] = 0;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(msg, "error");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(msg, "result");
    if (e && !cJSON_IsNull(e)) {   /* some servers send "error":null beside a result */
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
        snprintf(err, errlen, "mcp error %d: %s", cJSON_IsNumber(c) ? c->valueint : 0,
                 cJSON_IsString(m) ? m->valuestring : "(no message)");
        return FB_EXEC_ERROR;
    }
    if (!cJSON_IsObject(r)) {
        snprintf(err, errlen, "mcp reply has no result object");
        return FB_PARSE_ERROR;
    }
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(r, "content");
    const cJSON *structured = cJSON_GetObjectItemCaseSensitive(r, "structuredContent");
    const cJSON *first_text = NULL;
    int n_items = cJSON_IsArray(content) ? cJSON_GetArraySize(content) : 0;
    if (n_items >= 1) {
        const cJSON *c0 = cJSON_GetArrayItem(content, 0);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(c0, "text");
        if (cJSON_IsString(t))
            first_text = t;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "isError"))) {
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

/* Map a tools/call JSON-RPC response to an outcome and deliver it. */
static void finish_with_reply(struct adapter_op *op, const cJSON *msg, int64_t recv_ns, int64_t send_ns)
{
    char err[512];
    cJSON *res;
    enum fb_status st = mcp_reply_result(msg, &res, err, sizeof err);
    adapter_finish(op, st, res, st == FB_OK ? NULL : err, 0, recv_ns, send_ns);
}

/* Fail every op waiting on / in flight in the session (after it is reset).
 * `retryable`: whether a new attempt (a new session) may succeed: not after
 * the server refused the session (HTTP 4xx, a JSON-RPC error). */
static void fail_all_status(struct mcp_session *s, enum fb_status st, const char *why, int retryable)
{
    struct adapter_op *lists[2] = { s->waiting, s->inflight };
    s->waiting = s->inflight = NULL;
    for (int k = 0; k < 2; k++) {
        while (lists[k]) {
            struct adapter_op *op = lists[k];
            list_unlink(&lists[k], op);
            adapter_finish(op, st, NULL, why, retryable, 0, 0);
        }
    }
}

static void fail_all(struct mcp_session *s, const char *why, int retryable)
{
    fail_all_status(s, FB_EXEC_ERROR, why, retryable);
}

/* ---- streamable HTTP ------------------------------------------------------ */

static void noop_done(void *ud, const struct httpc_response *r) { (void)ud; (void)r; }

/* POST a message that is not a tools/call.  Bounded by the agent's
 * timeout_ms like a call: a server that never answers initialize must not
 * leave the session in INIT for ever (every later call would wait on it),
 * nor one that never answers a notification keep a request and its socket. */
static void http_notify(struct mcp_session *s, cJSON *msg,
                        void (*cb)(void *, const struct httpc_response *), void *ud)
{
    char *text = cJSON_PrintUnformatted(msg);
    cJSON_Delete(msg);
    if (!text)
        return;
    build_headers(s);
    struct httpc_req *r = httpc_request(s->ex->http, "POST", s->rt->spec->url, s->hdrs,
                                        s->rt->spec->headers, text, strlen(text),
                                        s->rt->spec->timeout_ms, cb ? cb : noop_done, ud);
    free(text);
    if (cb)
        s->init_req = r;
}

static void http_call_done(void *ud, const struct httpc_response *resp)
{
    struct adapter_op *op = ud;
    struct mcp_session *s = op->rt->mcp;
    enum fb_status st;
    int retry = 0;
    char err[512];
    list_unlink(&s->inflight, op);
    if (!adapter_http_classify(resp, &st, err, sizeof err, &retry)) {
        if (resp->status == 404 && s->state == MCP_READY) {
            /* The server forgot the session: make a new one next time. */
            s->state = MCP_NONE;
            free(s->sid_header);
            s->sid_header = NULL;
            retry = 1;
        }
        adapter_finish(op, st, NULL, err, retry, resp->agent_recv_ns, resp->agent_send_ns);
        return;
    }
    cJSON *m = mcp_reply_parse(resp->body, resp->body_len, op->rpc_id);
    if (!m) {
        adapter_finish(op, FB_PARSE_ERROR, NULL, "mcp reply carries no JSON-RPC response for the call",
                       0, resp->agent_recv_ns, resp->agent_send_ns);
        return;
    }
    finish_with_reply(op, m, resp->agent_recv_ns, resp->agent_send_ns);
    cJSON_Delete(m);
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
    cJSON *m = mcp_reply_parse(body, len, op->rpc_id);
    cJSON_Delete(m);
    return m != NULL;
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
                            text, strlen(text), 0, http_call_done, op);
    free(text);
    if (!op->req)
        return PS_EIO;
    httpc_set_peek(op->req, http_call_peek);
    op->mcp_sent = 1;
    list_push(&s->inflight, op);
    return PS_OK;
}

static void http_flush_waiting(struct mcp_session *s)
{
    struct adapter_op *w = s->waiting;
    s->waiting = NULL;
    while (w) {
        struct adapter_op *op = w;
        list_unlink(&w, op);
        if (http_send_call(s, op))
            adapter_finish(op, FB_EXEC_ERROR, NULL, "mcp: could not send the call", 1, 0, 0);
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
        /* No answer to initialize within timeout_ms: the calls waiting on it
         * timed out (as the executor's own timer would say), not retried. */
        if (resp->transport_error == CURLE_OPERATION_TIMEDOUT)
            fail_all_status(s, FB_TIMEOUT, why, 0);
        else
            fail_all(s, why, retry);
        return;
    }
    cJSON *m = mcp_reply_parse(resp->body, resp->body_len, s->init_id);
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m, "result"))) {
        cJSON *res = NULL;
        enum fb_status rst = m ? mcp_reply_result(m, &res, err, sizeof err) : FB_PARSE_ERROR;
        cJSON_Delete(res);
        snprintf(why, sizeof why, "mcp initialize failed: %s",
                 rst == FB_EXEC_ERROR ? err : "no result in the reply");
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
    http_notify(s, rpc_new(-1, "notifications/initialized"), http_initialized_done, s);
    if (!s->init_req) {
        s->state = MCP_NONE;
        fail_all(s, "mcp: could not send notifications/initialized", 1);
    }
}

static cJSON *initialize_msg(long id)
{
    cJSON *m = rpc_new(id, "initialize");
    cJSON *p = cJSON_AddObjectToObject(m, "params");
    cJSON_AddStringToObject(p, "protocolVersion", MCP_PROTOCOL_VERSION);
    cJSON_AddObjectToObject(p, "capabilities");
    cJSON *ci = cJSON_AddObjectToObject(p, "clientInfo");
    cJSON_AddStringToObject(ci, "name", "paraserve");
    cJSON_AddStringToObject(ci, "version", "0.1");
    return m;
}

/* ---- stdio ---------------------------------------------------------------- */

static void stdio_write(struct mcp_session *s, cJSON *msg)
{
    char *text = cJSON_PrintUnformatted(msg);
    cJSON_Delete(msg);
    if (!text || !s->to_child) {
        free(text);
        return;
    }
    bufferevent_write(s->to_child, text, strlen(text));
    bufferevent_write(s->to_child, "\n", 1);
    free(text);
}

/* Stopped agent processes not reaped yet.  The loop never waits for one:
 * a process that ignores SIGTERM (or takes its time) used to stall every
 * task on the loop for up to a second.  Polled every MCP_REAP_TICK_MS;
 * SIGKILL after MCP_REAP_GRACE_MS; exec_destroy() finishes them
 * (mcp_reap_all). */
#define MCP_REAP_TICK_MS  50
#define MCP_REAP_GRACE_MS 1000

struct mcp_reap {
    struct exec     *ex;
    pid_t            pid;
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

static void reap_tick(evutil_socket_t fd, short what, void *ud)
{
    struct mcp_reap *r = ud;
    int status;
    pid_t w = waitpid(r->pid, &status, WNOHANG);
    if (w == r->pid || (w < 0 && errno != EINTR)) {
        reap_free(r);
        return;
    }
    if (++r->ticks == MCP_REAP_GRACE_MS / MCP_REAP_TICK_MS)
        kill(r->pid, SIGKILL);
    struct timeval tv = { 0, MCP_REAP_TICK_MS * 1000 };
    evtimer_add(r->ev, &tv);
}

/* Reap `pid` (already sent SIGTERM) without blocking the loop. */
static void reap_later(struct exec *ex, pid_t pid)
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
    r->next = ex->reaping;
    if (ex->reaping)
        ex->reaping->prev = r;
    ex->reaping = r;
    struct timeval tv = { 0, MCP_REAP_TICK_MS * 1000 };
    evtimer_add(r->ev, &tv);
}

void mcp_reap_all(struct exec *ex)
{
    /* The grace period once for all of them, then SIGKILL. */
    for (int i = 0; ex->reaping && i < MCP_REAP_GRACE_MS / 10; i++) {
        for (struct mcp_reap *r = ex->reaping, *n; r; r = n) {
            int status;
            n = r->next;
            pid_t w = waitpid(r->pid, &status, WNOHANG);
            if (w == r->pid || (w < 0 && errno != EINTR))
                reap_free(r);
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

static void stdio_close(struct mcp_session *s)
{
    if (s->to_child) {
        bufferevent_free(s->to_child);
        s->to_child = NULL;
    }
    if (s->from_child) {
        bufferevent_free(s->from_child);
        s->from_child = NULL;
    }
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        reap_later(s->ex, s->pid);
        s->pid = -1;
    }
    s->state = MCP_NONE;
}

static void stdio_send_call(struct mcp_session *s, struct adapter_op *op)
{
    stdio_write(s, tools_call_msg(op));
    op->mcp_sent = 1;
    list_push(&s->inflight, op);
}

static void stdio_handle(struct mcp_session *s, cJSON *m)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(m, "method");
    if (cJSON_IsString(method)) {
        if (id) {   /* a request from the server: answer ping, refuse the rest */
            cJSON *r = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "jsonrpc", "2.0");
            cJSON_AddItemToObject(r, "id", cJSON_Duplicate(id, 1));
            if (!strcmp(method->valuestring, "ping")) {
                cJSON_AddObjectToObject(r, "result");
            } else {
                cJSON *e = cJSON_AddObjectToObject(r, "error");
                cJSON_AddNumberToObject(e, "code", -32601);
                cJSON_AddStringToObject(e, "message", "method not supported by paraserve");
            }
            stdio_write(s, r);
        }
        return;
    }
    if (!cJSON_IsNumber(id))
        return;
    if (s->state == MCP_INIT && rpc_id_is(id, s->init_id)) {
        if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m, "result"))) {
            char err[512], why[600];
            cJSON *res = NULL;
            enum fb_status rst = mcp_reply_result(m, &res, err, sizeof err);
            cJSON_Delete(res);
            snprintf(why, sizeof why, "mcp initialize failed: %s",
                     rst == FB_EXEC_ERROR ? err : "no result in the reply");
            stdio_close(s);
            fail_all(s, why, 0);
            return;
        }
        stdio_write(s, rpc_new(-1, "notifications/initialized"));
        s->state = MCP_READY;
        struct adapter_op *w = s->waiting;
        s->waiting = NULL;
        while (w) {
            struct adapter_op *op = w;
            list_unlink(&w, op);
            stdio_send_call(s, op);
        }
        return;
    }
    for (struct adapter_op *op = s->inflight; op; op = op->mcp_next)
        if (rpc_id_is(id, op->rpc_id)) {
            list_unlink(&s->inflight, op);
            finish_with_reply(op, m, 0, 0);
            return;
        }
    /* A late reply to a cancelled call: dropped. */
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
        cJSON *m = cJSON_ParseWithLength(line, n);
        free(line);
        if (m)
            stdio_handle(s, m);
        cJSON_Delete(m);
    }
    if (s->from_child && s->gen == gen && evbuffer_get_length(in) > MCP_MAX_LINE) {
        stdio_close(s);
        fail_all(s, "mcp-stdio: line longer than 16 MiB", 0);
    }
}

static void stdio_on_event(struct bufferevent *bev, short what, void *ud)
{
    struct mcp_session *s = ud;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        stdio_close(s);
        fail_all(s, "mcp-stdio: agent process exited or closed its pipes", 1);
    }
}

static int stdio_spawn(struct mcp_session *s)
{
    int in[2] = { -1, -1 }, out[2] = { -1, -1 };
    posix_spawn_file_actions_t fa;
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) {
        int e = errno;
        if (in[0] >= 0) { close(in[0]); close(in[1]); }
        return ps_error_set(PS_EIO, "mcp-stdio: pipe: %s", strerror(e));
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    pid_t pid;
    int rc = posix_spawnp(&pid, s->rt->spec->command[0], &fa, NULL, s->rt->spec->command, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    if (rc) {
        close(in[1]);
        close(out[0]);
        return ps_error_set(PS_EIO, "mcp-stdio: cannot run '%s': %s", s->rt->spec->command[0], strerror(rc));
    }
    s->pid = pid;
    s->gen++;
    evutil_make_socket_nonblocking(in[1]);
    evutil_make_socket_nonblocking(out[0]);
    s->to_child = bufferevent_socket_new(s->ex->base, in[1], BEV_OPT_CLOSE_ON_FREE);
    s->from_child = bufferevent_socket_new(s->ex->base, out[0], BEV_OPT_CLOSE_ON_FREE);
    if (!s->to_child || !s->from_child) {
        if (!s->to_child) close(in[1]);
        if (!s->from_child) close(out[0]);
        stdio_close(s);
        return ps_error_set(PS_ENOMEM, "mcp-stdio: out of memory");
    }
    bufferevent_setcb(s->from_child, stdio_on_read, NULL, stdio_on_event, s);
    bufferevent_setcb(s->to_child, NULL, NULL, stdio_on_event, s);
    bufferevent_enable(s->from_child, EV_READ);
    bufferevent_enable(s->to_child, EV_WRITE);
    return PS_OK;
}

/* ---- entry points ----------------------------------------------------------- */

int mcp_op_start(struct adapter_op *op)
{
    struct mcp_session *s = session_get(op->ex, op->rt);
    if (!s)
        return ps_error_set(PS_ENOMEM, "out of memory");
    int http = op->rt->spec->kind == AGENT_MCP_HTTP;
    op->rpc_id = s->next_id++;
    if (s->state == MCP_READY) {
        if (http)
            return http_send_call(s, op);
        stdio_send_call(s, op);
        return PS_OK;
    }
    if (s->state == MCP_NONE) {
        s->init_id = s->next_id++;
        if (http) {
            http_notify(s, initialize_msg(s->init_id), http_init_done, s);
            if (!s->init_req)
                return ps_error_set(PS_EIO, "mcp: could not send initialize");
        } else {
            int st = stdio_spawn(s);
            if (st)
                return st;
            stdio_write(s, initialize_msg(s->init_id));
        }
        s->state = MCP_INIT;
    }
    list_push(&s->waiting, op);
    return PS_OK;
}

void mcp_op_cancel(struct adapter_op *op)
{
    struct mcp_session *s = op->rt->mcp;
    if (!s)
        return;
    if (!op->mcp_sent) {
        list_unlink(&s->waiting, op);
        return;
    }
    list_unlink(&s->inflight, op);
    cJSON *m = rpc_new(-1, "notifications/cancelled");
    cJSON *p = cJSON_AddObjectToObject(m, "params");
    cJSON_AddNumberToObject(p, "requestId", (double)op->rpc_id);
    cJSON_AddStringToObject(p, "reason", "cancelled by the orchestrator");
    if (op->rt->spec->kind == AGENT_MCP_HTTP)
        http_notify(s, m, NULL, NULL);
    else
        stdio_write(s, m);
}

void mcp_session_free(struct exec *ex, struct agent_rt *rt)
{
    struct mcp_session *s = rt->mcp;
    if (!s)
        return;
    if (s->init_req)
        httpc_cancel(s->init_req);
    stdio_close(s);
    free(s->sid_header);
    free(s);
    rt->mcp = NULL;
}
