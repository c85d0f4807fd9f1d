/* adapters.c - protocol adapters: every agent kind normalized to
 * call(args) -> typed result (struct adapter_result).
 *
 *   http-json    POST args as JSON; a 2xx JSON reply is the result.
 *   openai-chat  POST /chat/completions {model, messages:[system?, user]};
 *                the result is choices[0].message.content.
 *   local        openai-chat against the server's own endpoint serving
 *                the embedded model (exec_config.local_url).
 *   a2a          A2A over JSON-RPC 2.0, protocol 1.0 (SendMessage, GetTask,
 *                CancelTask) or 0.3 (message/send, tasks/get, tasks/cancel;
 *                agent_spec.a2a_version); the result is the reply's text
 *                parts (message or task artifacts), else its data parts,
 *                else the raw result.  A task still running is polled.
 *   builtin      builtin.c, run in-process; completion deferred to the loop.
 *   mcp-http, mcp-stdio   mcp.c.
 *
 * Agent replies are untrusted: every field is checked before use; anything
 * unexpected is a parse_error, never a crash.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_get.h"
#include "common/status.h"
#include "orchestrator/builtin.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"
#include "orchestrator/jbuf.h"
#include "orchestrator/json_alloc.h"

static char *const json_headers[] = { EXEC_JSON_HEADER_LINES, NULL };
static char *const a2a_v1_headers[] = { EXEC_JSON_HEADER_LINES, "A2A-Version: 1.0", NULL };
static char *const a2a_stream_headers[] = { "Content-Type: application/json", "Accept: text/event-stream", NULL };
static char *const a2a_v1_stream_headers[] = { "Content-Type: application/json", "Accept: text/event-stream",
                                               "A2A-Version: 1.0", NULL };

/* ---- http-json ------------------------------------------------------- */

/* An agent's reply body parsed (NULL when it is not JSON); *oom set, with
 * the reason in err, when memory ran out instead: the reply is then an
 * exec_error, not the agent's parse_error. */
static cJSON *reply_parse(const char *body, size_t len, int *oom, char *err, size_t errlen)
{
    cJSON *j = json_parse_oom(body, len, oom);
    if (*oom)
        snprintf(err, errlen, "out of memory while parsing the agent's reply");
    return j;
}

enum fb_status http_json_reply(const char *body, size_t len, cJSON **res, char *err, size_t errlen)
{
    *res = NULL;
    err[0] = 0;
    int oom;
    cJSON *j = reply_parse(body, len, &oom, err, errlen);
    if (oom)
        return FB_EXEC_ERROR;
    if (!j) {
        const char *why = json_parse_refusal();
        snprintf(err, errlen, "agent reply is not valid JSON%s%s", why[0] ? ": " : "", why);
        return FB_PARSE_ERROR;
    }
    *res = j;
    return FB_OK;
}

/* Finish op with its reply: a transport error or non-2xx status as
 * adapter_http_classify() says, else the body mapped by `map`. */
static void finish_reply(struct adapter_op *op, const struct httpc_response *resp,
                         enum fb_status (*map)(const char *, size_t, cJSON **, char *, size_t))
{
    enum fb_status st;
    int retry = 0;
    cJSON *res = NULL;
    char err[512];
    if (adapter_http_classify(resp, &st, err, sizeof err, &retry))
        st = map(resp->body, resp->body_len, &res, err, sizeof err);
    adapter_finish(op, st, res, st == FB_OK ? NULL : err, retry, resp->agent_recv_ns, resp->agent_send_ns);
}

static void http_json_done(void *ud, const struct httpc_response *resp)
{
    finish_reply(ud, resp, http_json_reply);
}

/* POST body as JSON to url with `hdrs` (NULL: the plain JSON headers; a
 * local agent's get its token and tenant lines too) and the agent's own. */
static int post_json(struct adapter_op *op, const char *url, const cJSON *body, char *const *hdrs,
                     void (*cb)(void *, const struct httpc_response *))
{
    /* Printed by jbuf into a stack buffer when it fits (httpc copies it
     * into the request): no malloc/realloc chain, no sprintf + sscanf per
     * number, per call. */
    char stack[2048];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    jbuf_json(&b, body);
    if (b.oom) {
        jbuf_free(&b);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    /* a local agent's requests carry serve's token for its local port and
     * the tenant of the call's task (the executor has a tenant header only
     * beside a token) */
    if (!hdrs)
        hdrs = json_headers;
    char *local[5];
    if (op->rt->spec->kind == AGENT_LOCAL && op->ex->local_hdrs[2]) {
        local[0] = op->ex->local_hdrs[0];
        local[1] = op->ex->local_hdrs[1];
        local[2] = op->ex->local_hdrs[2];
        local[3] = (char *)op->tenant_line;
        local[4] = NULL;
        hdrs = local;
    }
    op->req = httpc_request(op->ex->http, "POST", url, hdrs, op->rt->spec->headers,
                            b.p, b.len, 0, op->rt->spec->ca_file, cb, op);
    jbuf_free(&b);
    return op->req ? PS_OK : PS_EIO;
}

/* ---- openai-chat / local ------------------------------------------------ */

enum fb_status chat_reply(const char *body, size_t len, cJSON **res, char *err, size_t errlen)
{
    *res = NULL;
    err[0] = 0;
    int oom;
    cJSON *j = reply_parse(body, len, &oom, err, errlen);
    if (oom)
        return FB_EXEC_ERROR;
    const cJSON *choices = json_get(j, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    const cJSON *msg = json_get(c0, "message");
    const cJSON *content = json_get(msg, "content");
    if (!cJSON_IsString(content)) {
        cJSON_Delete(j);
        snprintf(err, errlen, "chat reply has no choices[0].message.content string");
        return FB_PARSE_ERROR;
    }
    *res = cJSON_CreateString(content->valuestring);
    cJSON_Delete(j);
    if (!*res) {   /* never an ok record without its result */
        snprintf(err, errlen, "out of memory");
        return FB_EXEC_ERROR;
    }
    return FB_OK;
}

static void chat_done(void *ud, const struct httpc_response *resp)
{
    finish_reply(ud, resp, chat_reply);
}

/* The user message: args.input when it is the only thing, else the args JSON. */
static char *chat_user_text(const cJSON *args)
{
    const cJSON *in = json_get(args, "input");
    if (cJSON_IsString(in) && cJSON_GetArraySize(args) == 1)
        return strdup(in->valuestring);
    return cJSON_PrintUnformatted(args);
}

static int chat_start(struct adapter_op *op, const char *url, const char *model)
{
    const struct agent_spec *a = op->rt->spec;
    char *user = chat_user_text(op->args);
    cJSON *body = cJSON_CreateObject();
    cJSON *msgs = cJSON_AddArrayToObject(body, "messages");
    int st = PS_ENOMEM;
    if (!user || !body || !msgs)
        goto done;
    cJSON *sys = NULL, *m = NULL;
    /* every member or no request: never a chat without its user message */
    if (!cJSON_AddStringToObject(body, "model", model) ||
        (a->system_prompt && (!json_add(msgs, NULL, sys = cJSON_CreateObject()) ||
                              !cJSON_AddStringToObject(sys, "role", "system") ||
                              !cJSON_AddStringToObject(sys, "content", a->system_prompt))) ||
        !json_add(msgs, NULL, m = cJSON_CreateObject()) || !cJSON_AddStringToObject(m, "role", "user") ||
        !cJSON_AddStringToObject(m, "content", user) || !cJSON_AddNumberToObject(body, "max_tokens", a->max_tokens) ||
        !cJSON_AddBoolToObject(body, "stream", 0))
        goto done;
    st = post_json(op, url, body, NULL, chat_done);
done:
    if (st == PS_ENOMEM)   /* exec records ps_error_last(): this call's reason, not an older one */
        ps_error_set(PS_ENOMEM, "out of memory while building the chat request");
    free(user);
    cJSON_Delete(body);
    return st;
}

/* ---- a2a ----------------------------------------------------------------- */

/* Append the "text" of each part to *acc (newline-separated).  Returns 0,
 * or -1 when out of memory (*acc then holds what fitted; the caller must
 * not report it as the whole answer). */
static int append_text_parts(const cJSON *parts, char **acc, size_t *len)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, parts) {
        const cJSON *t = json_get(p, "text");
        if (!cJSON_IsString(t))
            continue;
        size_t n = strlen(t->valuestring);
        char *nb = realloc(*acc, *len + n + 2);
        if (!nb)
            return -1;
        *acc = nb;
        if (*len)
            (*acc)[(*len)++] = '\n';
        memcpy(*acc + *len, t->valuestring, n + 1);
        *len += n;
    }
    return 0;
}


#define A2A_POLL_FIRST_MS 10     /* first tasks/get after a submitted / working reply; doubled */
#define A2A_POLL_MAX_MS   1000   /* up to this */
#define A2A_CANCEL_MAX_MS 5000   /* a tasks/cancel waits at most this (or the agent's timeout_ms) */
#define A2A_CLOSE_WAIT_MS 300    /* exec_destroy: how long the last tasks/cancel requests may take */

static void a2a_done(void *ud, const struct httpc_response *resp);
static void a2a_stream_done(void *ud, const struct httpc_response *resp);
static int a2a_stream_peek(void *ud, const char *body, size_t len);
static int a2a_start(struct adapter_op *op);

/* a tasks/cancel not answered yet */
struct a2a_cancel {
    struct a2a_cancel       *next, *prev;   /* ex->a2a_cancels */
    struct exec             *ex;
    const struct agent_spec *spec;          /* the registry's (outlives the executor) */
    char                    *task;
    int                      v03;           /* sent in protocol 0.3 (else 1.0) */
    struct httpc_req        *req;           /* on ex->http; NULL: not sent (closing) */
};

enum a2a_rpc { A2A_SEND, A2A_GET, A2A_CANCEL, A2A_STREAM };

/* The JSON-RPC method of `m` in protocol 0.3 (v03) or 1.0. */
static const char *a2a_method(int v03, enum a2a_rpc m)
{
    static const char *const v1[] = { "SendMessage", "GetTask", "CancelTask", "SendStreamingMessage" };
    static const char *const v0[] = { "message/send", "tasks/get", "tasks/cancel", "message/stream" };
    return (v03 ? v0 : v1)[m];
}

static char *const *a2a_headers(int v03)
{
    return v03 ? json_headers : a2a_v1_headers;
}

static void a2a_cancel_free(struct a2a_cancel *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->ex->a2a_cancels = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->task);
    free(c);
}

/* whatever the answer, the request is done */
static void a2a_cancel_reply(void *ud, const struct httpc_response *resp)
{
    (void)resp;
    a2a_cancel_free(ud);
}

struct closing_wait {
    struct event_base *base;
    int                pending;
};

static void closing_reply(void *ud, const struct httpc_response *resp)
{
    (void)resp;
    struct closing_wait *w = ud;
    if (--w->pending == 0)
        event_base_loopbreak(w->base);
}

/* {"jsonrpc":"2.0","id":id,"method":method,"params":{"id":task}}; NULL when
 * out of memory. */
static cJSON *a2a_task_rpc(long id, const char *method, const char *task)
{
    cJSON *body = cJSON_CreateObject(), *params = NULL;
    if (!body || !cJSON_AddStringToObject(body, "jsonrpc", "2.0") || !cJSON_AddNumberToObject(body, "id", (double)id) ||
        !cJSON_AddStringToObject(body, "method", method) || !(params = cJSON_AddObjectToObject(body, "params")) ||
        !cJSON_AddStringToObject(params, "id", task)) {
        cJSON_Delete(body);
        return NULL;
    }
    return body;
}

void adapter_flush_closing(struct exec *ex)
{
    if (!ex->a2a_cancels)
        return;
    struct closing_wait w = { event_base_new(), 0 };
    struct httpc *h = w.base ? httpc_create(w.base) : NULL;
    for (struct a2a_cancel *c = ex->a2a_cancels; c && h; c = c->next) {
        if (c->req)   /* sent or not on the executor's loop, which will not turn again: sent anew */
            httpc_cancel(c->req);
        c->req = NULL;
        cJSON *body = a2a_task_rpc(++ex->a2a_rpc_id, a2a_method(c->v03, A2A_CANCEL), c->task);
        char *text = body ? cJSON_PrintUnformatted(body) : NULL;
        cJSON_Delete(body);
        if (text && httpc_request(h, "POST", c->spec->url, a2a_headers(c->v03), c->spec->headers, text, strlen(text),
                                  A2A_CLOSE_WAIT_MS, c->spec->ca_file, closing_reply, &w))
            w.pending++;
        free(text);
    }
    if (w.pending) {
        const struct timeval tv = { 0, A2A_CLOSE_WAIT_MS * 1000 };
        event_base_loopexit(w.base, &tv);
        event_base_dispatch(w.base);
    }
    httpc_destroy(h);
    if (w.base)
        event_base_free(w.base);
    while (ex->a2a_cancels) {
        if (ex->a2a_cancels->req)
            httpc_cancel(ex->a2a_cancels->req);
        a2a_cancel_free(ex->a2a_cancels);
    }
}

/* POST a JSON-RPC request {method, params: {"id": task}} (protocol 0.3
 * when v03, else 1.0) to the agent: with `op` (its reply goes to a2a_done
 * under a new id) or, op NULL, fire and forget (the cancel). */
static int a2a_task_request(struct exec *ex, const struct agent_spec *a, struct adapter_op *op, int v03,
                            enum a2a_rpc m, const char *task)
{
    long id = ++ex->a2a_rpc_id;
    cJSON *body = a2a_task_rpc(id, a2a_method(v03, m), task);
    int st = PS_ENOMEM;
    if (!body)
        goto done;
    if (op) {
        op->rpc_id = id;
        st = post_json(op, a->url, body, a2a_headers(v03), a2a_done);
    } else {
        /* fire and forget, but never held forever by an agent that does
         * not answer (the kind whose calls time out), and kept on a list
         * until it is answered: exec_destroy sends what is left */
        struct a2a_cancel *c = calloc(1, sizeof *c);
        if (c && (c->task = strdup(task))) {
            c->spec = a;
            c->v03 = v03;
            c->ex = ex;
            c->next = ex->a2a_cancels;
            if (c->next)
                c->next->prev = c;
            ex->a2a_cancels = c;
            st = PS_OK;
            if (!ex->closing) {
                int ms = a->timeout_ms > 0 && a->timeout_ms < A2A_CANCEL_MAX_MS ? a->timeout_ms : A2A_CANCEL_MAX_MS;
                char *text = cJSON_PrintUnformatted(body);
                c->req = text ? httpc_request(ex->http, "POST", a->url, a2a_headers(v03), a->headers, text, strlen(text),
                                              ms, a->ca_file, a2a_cancel_reply, c)
                              : NULL;
                free(text);
                if (!c->req) {
                    a2a_cancel_free(c);
                    st = PS_EIO;
                }
            }
        } else {
            free(c);
        }
    }
done:
    cJSON_Delete(body);
    return st;
}

/* End an a2a attempt whose task may still run at the agent: the task is
 * asked to stop first (a retry starts a task of its own; the agent should
 * not go on with this one). */
static void a2a_finish(struct adapter_op *op, enum fb_status st, cJSON *result, const char *error, int retryable,
                       int64_t recv_ns, int64_t send_ns)
{
    if (op->a2a_task)
        (void)a2a_task_request(op->ex, op->rt->spec, NULL, op->a2a_v03, A2A_CANCEL, op->a2a_task);
    adapter_finish(op, st, result, error, retryable, recv_ns, send_ns);
}

static void a2a_poll(evutil_socket_t fd, short what, void *ud)
{
    (void)fd;
    (void)what;
    struct adapter_op *op = ud;
    if (a2a_task_request(op->ex, op->rt->spec, op, op->a2a_v03, A2A_GET, op->a2a_task))
        a2a_finish(op, FB_EXEC_ERROR, NULL, "a2a: could not send tasks/get", 1, 0, 0);
}

/* The next tasks/get of op's task, A2A_POLL_FIRST_MS after the first
 * working reply, the gap doubling up to A2A_POLL_MAX_MS. */
static int a2a_poll_later(struct adapter_op *op)
{
    if (!op->ev && !(op->ev = evtimer_new(op->ex->base, a2a_poll, op)))
        return PS_ENOMEM;
    long ms = A2A_POLL_FIRST_MS;
    for (int i = 0; i < op->a2a_polls && ms < A2A_POLL_MAX_MS; i++)
        ms *= 2;
    if (ms > A2A_POLL_MAX_MS)
        ms = A2A_POLL_MAX_MS;
    op->a2a_polls++;
    const struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return evtimer_add(op->ev, &tv) ? PS_ENOMEM : PS_OK;
}

/* A task state as protocol 0.3 writes it: 1.0's "TASK_STATE_INPUT_REQUIRED"
 * becomes "input-required"; 0.3 states are kept. */
static void a2a_state_name(const char *sv, char *out, size_t n)
{
    size_t k = 0;
    if (!strncmp(sv, "TASK_STATE_", 11)) {
        for (sv += 11; *sv && k + 1 < n; sv++)
            out[k++] = *sv == '_' ? '-' : (char)(*sv >= 'A' && *sv <= 'Z' ? *sv - 'A' + 'a' : *sv);
        out[k] = 0;
    } else {
        snprintf(out, n, "%s", sv);
    }
}

/* The class of a task state as a2a_state_name writes it. */
static enum a2a_task_state a2a_state_class(const char *sv)
{
    return !strcmp(sv, "submitted") || !strcmp(sv, "working") ? A2A_TASK_RUNNING
         : !strcmp(sv, "completed") || !strcmp(sv, "failed") || !strcmp(sv, "canceled") ||
           !strcmp(sv, "cancelled") || !strcmp(sv, "rejected") ? A2A_TASK_ENDED
                                                               : A2A_TASK_WAITING;
}

/* The JSON values of the data parts ({"data": value}, 0.3's with "kind":
 * "data" too) in `parts`, appended to array `acc` (made on first use).
 * -1 when out of memory. */
static int append_data_parts(const cJSON *parts, cJSON **acc)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, parts) {
        const cJSON *d = json_get(p, "data");
        if (!d || json_get(p, "text"))
            continue;
        cJSON *copy = cJSON_Duplicate(d, 1);
        if (!copy || (!*acc && !(*acc = cJSON_CreateArray())) || !cJSON_AddItemToArray(*acc, copy)) {
            cJSON_Delete(copy);
            return -1;
        }
    }
    return 0;
}

/* A JSON-RPC reply or stream event is op's when its id is the request's,
 * or (JSON-RPC, for an error the server could not tie to a request) when a
 * null or missing id stands beside an error. */
static int rpc_reply_is_ours(const cJSON *id, int has_error, long rpc_id)
{
    return id && !cJSON_IsNull(id) ? rpc_id_is(id, rpc_id) : has_error;
}

/* A JSON-RPC error's code: an integer in the int range other than 0, else
 * -32603 ("internal error": an error without a usable code). */
static long rpc_error_code(const cJSON *e)
{
    const cJSON *code = json_get(e, "code");
    if (cJSON_IsNumber(code) && code->valuedouble >= -2147483648.0 && code->valuedouble <= 2147483647.0 &&
        code->valuedouble == (double)(long)code->valuedouble && (long)code->valuedouble)
        return (long)code->valuedouble;
    return -32603;
}

/* The result of a message or a completed task from what its parts gave:
 * `text` (owned, freed; the text parts), else `data` (owned; the data
 * parts' values: one is that value, more the array), else the text parts
 * of `fallback_parts` (a status message's), else a copy of `raw`.  NULL
 * when out of memory. */
static cJSON *parts_result(char *text, cJSON *data, const cJSON *fallback_parts, const cJSON *raw)
{
    cJSON *res = NULL;
    size_t tlen = 0;
    if (!text && !data && append_text_parts(fallback_parts, &text, &tlen))
        goto out;
    if (text)
        res = cJSON_CreateString(text);
    else if (data && cJSON_GetArraySize(data) == 1)
        res = cJSON_DetachItemFromArray(data, 0);
    else if (data)
        res = data, data = NULL;
    else
        res = cJSON_Duplicate(raw, 1);
out:
    cJSON_Delete(data);
    free(text);
    return res;
}

/* "a2a task STATE[: the status message's text]" for a task that is not
 * completed (sv: its state as a2a_state_name writes it). */
static void task_state_error(char *err, size_t errlen, const char *sv, const cJSON *status)
{
    char *text = NULL;
    size_t tlen = 0;
    append_text_parts(json_get(json_get(status, "message"), "parts"),
                      &text, &tlen);   /* the reason, as far as it fits */
    snprintf(err, errlen, "a2a task %.39s%s%.400s", sv, text ? ": " : "", text ? text : "");
    free(text);
}

enum fb_status a2a_reply(const char *body, size_t len, long rpc_id, cJSON **res, char **task,
                         enum a2a_task_state *task_state, long *rpc_error, char *err, size_t errlen)
{
    *res = NULL;
    *task = NULL;
    *task_state = A2A_NO_TASK;
    *rpc_error = 0;
    err[0] = 0;
    int parse_oom;
    cJSON *j = reply_parse(body, len, &parse_oom, err, errlen);
    if (parse_oom)
        return FB_EXEC_ERROR;
    const cJSON *e = json_get(j, "error");
    const cJSON *r = json_get(j, "result");
    const cJSON *id = json_get(j, "id");
    int has_error = e && !cJSON_IsNull(e);
    enum fb_status st = FB_OK;
    /* The reply must be this request's: the same id, or (JSON-RPC, for an
     * error the server could not tie to a request) a null or missing id
     * beside an error.  Compared as a double, never cast (see mcp.c). */
    if (j && !rpc_reply_is_ours(id, has_error, rpc_id)) {
        char got[64];
        if (cJSON_IsNumber(id))
            snprintf(got, sizeof got, "%.17g", id->valuedouble);
        else if (cJSON_IsString(id))
            snprintf(got, sizeof got, "\"%.40s\"", id->valuestring);
        else
            snprintf(got, sizeof got, "%s", id ? "not a number" : "missing");
        snprintf(err, errlen, "a2a reply id %s does not match the request id %ld", got, rpc_id);
        st = FB_PARSE_ERROR;
        goto done;
    }
    if (has_error) {   /* some servers send "error":null beside a result */
        const cJSON *m = json_get(e, "message");
        *rpc_error = rpc_error_code(e);
        snprintf(err, errlen, "a2a error %ld: %s", *rpc_error, cJSON_IsString(m) ? m->valuestring : "(no message)");
        st = FB_EXEC_ERROR;
        goto done;
    }
    if (!cJSON_IsObject(r)) {
        snprintf(err, errlen, "a2a reply is not a JSON-RPC result object");
        st = FB_PARSE_ERROR;
        goto done;
    }
    /* 1.0's SendMessage answers {"task": Task} or {"message": Message} */
    const cJSON *wrapped = json_get(r, "task");
    if (!cJSON_IsObject(wrapped))
        wrapped = json_get(r, "message");
    if (cJSON_IsObject(wrapped) && !json_get(r, "status") &&
        !json_get(r, "parts"))
        r = wrapped;
    char *text = NULL;
    size_t tlen = 0;
    char sv[40] = "";
    /* A task is a result only once completed: message/send may return one
     * that failed, was rejected or cancelled, still runs (a non-blocking
     * server) or waits for input or auth, none of which has an answer. */
    const cJSON *status = json_get(r, "status");
    const cJSON *state = json_get(status, "state");
    const cJSON *task_id = json_get(r, "id");
    if (cJSON_IsString(state)) {
        a2a_state_name(state->valuestring, sv, sizeof sv);
        *task_state = a2a_state_class(sv);
        if (*task_state != A2A_TASK_ENDED && cJSON_IsString(task_id) && task_id->valuestring[0] &&
            strlen(task_id->valuestring) <= A2A_MAX_TASK_ID && !(*task = strdup(task_id->valuestring))) {
            snprintf(err, errlen, "out of memory");
            *task_state = A2A_NO_TASK;
            st = FB_EXEC_ERROR;
            goto done;
        }
        if (*task_state == A2A_TASK_RUNNING && *task)
            goto done;   /* FB_OK without a result: poll it */
        if (*task_state == A2A_TASK_RUNNING)
            *task_state = A2A_TASK_WAITING;   /* running, but under no id we can ask about */
    }
    if (cJSON_IsString(state) && strcmp(sv, "completed")) {
        task_state_error(err, errlen, sv, status);
        st = FB_EXEC_ERROR;
        goto done;
    }
    int oom = append_text_parts(json_get(r, "parts"), &text, &tlen);
    const cJSON *arts = json_get(r, "artifacts"), *a;
    cJSON_ArrayForEach(a, arts)
        oom |= append_text_parts(json_get(a, "parts"), &text, &tlen);
    cJSON *data = NULL;
    if (!text && !oom) {
        oom |= append_data_parts(json_get(r, "parts"), &data);
        cJSON_ArrayForEach(a, arts)
            oom |= append_data_parts(json_get(a, "parts"), &data);
    }
    if (oom) {
        cJSON_Delete(data);
        free(text);
    } else {
        *res = parts_result(text, data,
                            json_get(json_get(status, "message"),
                                                             "parts"),
                            r);
    }
    if (!*res) {   /* never an ok record with a truncated or missing result */
        snprintf(err, errlen, "out of memory");
        st = FB_EXEC_ERROR;
    }
done:
    cJSON_Delete(j);
    return st;
}

/* Send op's message again (from its reply's callback: the finished
 * request is httpc's), as a2a_start says now; a failure to send ends op. */
static void a2a_resend(struct adapter_op *op)
{
    op->req = NULL;
    if (a2a_start(op))
        adapter_finish(op, FB_EXEC_ERROR, NULL, "a2a: could not send the message", 1, 0, 0);
}

/* The JSON-RPC error code of a plain reply to op's request, 0 when it is
 * none (a result, or not a reply of op's). */
static long reply_rpc_error(const struct adapter_op *op, const struct httpc_response *resp)
{
    cJSON *res;
    char *task, err[256];
    enum a2a_task_state ts;
    long rpc_error;
    (void)a2a_reply(resp->body, resp->body_len, op->rpc_id, &res, &task, &ts, &rpc_error, err, sizeof err);
    cJSON_Delete(res);
    free(task);
    return rpc_error;
}

/* What a reply to an auto agent's probe (SendMessage, 1.0) says of its
 * version, and op sent again as message/send when it is 0.3: an unknown
 * method (-32601) or version (-32009) - in a 2xx reply or, from servers
 * that say so, a 4xx one - settles the agent on 0.3; a result or a task
 * settles it on 1.0; anything else (a transient error, a bad reply) leaves
 * it auto for the next call.  1 when the op was sent again (or finished:
 * it must not be touched), 0 when the reply is op's to handle. */
static int a2a_probe_settle(struct adapter_op *op, enum fb_status st, enum a2a_task_state ts, long rpc_error)
{
    if (!op->a2a_probe)
        return 0;
    int refused = rpc_error == -32601 || rpc_error == -32009;
    if (!refused && st != FB_OK && ts == A2A_NO_TASK)
        return 0;
    op->a2a_probe = 0;
    if (op->rt->a2a_proto == A2A_VERSION_AUTO)
        op->rt->a2a_proto = refused ? A2A_VERSION_0_3 : A2A_VERSION_1_0;
    /* a plain probe sent after the stream method was unknown: a 1.0 agent
     * does not stream; a 0.3 one is asked to stream in 0.3 */
    if (op->a2a_stream_refused && !refused && op->rt->a2a_proto == A2A_VERSION_1_0)
        op->rt->a2a_stream = 0;
    op->a2a_nostream = 0;
    if (!refused || op->rt->a2a_proto != A2A_VERSION_0_3)
        return 0;
    a2a_resend(op);
    return 1;
}

static void a2a_done(void *ud, const struct httpc_response *resp)
{
    struct adapter_op *op = ud;
    enum fb_status st;
    int retry = 0;
    char err[512];
    if (!adapter_http_classify(resp, &st, err, sizeof err, &retry)) {
        if (op->a2a_probe && !resp->transport_error && resp->status >= 400 && resp->status < 500) {
            long rpc_error = reply_rpc_error(op, resp);
            if ((rpc_error == -32601 || rpc_error == -32009) &&
                a2a_probe_settle(op, FB_EXEC_ERROR, A2A_NO_TASK, rpc_error))
                return;
        }
        /* While the task is polled, a transport error, 429 or 5xx asks
         * again later (a retry would start a second task; the call's
         * timeout still bounds the whole); anything else ends the call and
         * the task. */
        if (op->a2a_task && retry) {
            op->req = NULL;
            if (!a2a_poll_later(op))
                return;
        }
        a2a_finish(op, st, NULL, err, retry, resp->agent_recv_ns, resp->agent_send_ns);
        return;
    }
    cJSON *res;
    char *task;
    enum a2a_task_state ts;
    long rpc_error;
    st = a2a_reply(resp->body, resp->body_len, op->rpc_id, &res, &task, &ts, &rpc_error, err, sizeof err);
    if (a2a_probe_settle(op, st, ts, rpc_error)) {
        cJSON_Delete(res);
        free(task);
        return;
    }
    if (task && !op->a2a_task)
        op->a2a_task = task;   /* the first reply names the task for good */
    else
        free(task);
    if (ts == A2A_TASK_RUNNING && op->a2a_task) {
        /* A task still submitted or working: its outcome is asked for with
         * tasks/get until it ends; the executor's timeout bounds the wait
         * (and cancels the task: adapter_cancel). */
        op->req = NULL;   /* finished: httpc frees it */
        if (a2a_poll_later(op))
            a2a_finish(op, FB_EXEC_ERROR, NULL, "a2a: cannot poll the task (out of memory)", 1, 0, 0);
        return;
    }
    if (st == FB_OK || ts == A2A_TASK_ENDED)
        adapter_finish(op, st, res, st == FB_OK ? NULL : err, 0, resp->agent_recv_ns, resp->agent_send_ns);
    else   /* a task waiting for input, or one we lost track of: stopped */
        a2a_finish(op, st, NULL, err, 0, resp->agent_recv_ns, resp->agent_send_ns);
}

/* ---- a2a streaming ------------------------------------------------------- */

/* Add parts' text to the stream's artifact text: a newline before each
 * part, except before the first when it continues the last artifact (an
 * append chunk).  -1 when out of memory. */
static int stream_add_text(struct adapter_op *op, const cJSON *parts, int append)
{
    const cJSON *p;
    int first = 1;
    cJSON_ArrayForEach(p, parts) {
        const cJSON *t = json_get(p, "text");
        if (!cJSON_IsString(t))
            continue;
        size_t n = strlen(t->valuestring), sep = op->a2a_tlen && !(first && append);
        char *nb = realloc(op->a2a_text, op->a2a_tlen + n + 2);
        if (!nb)
            return -1;
        op->a2a_text = nb;
        if (sep)
            op->a2a_text[op->a2a_tlen++] = '\n';
        memcpy(op->a2a_text + op->a2a_tlen, t->valuestring, n + 1);
        op->a2a_tlen += n;
        first = 0;
    }
    return 0;
}

static int stream_add_artifact(struct adapter_op *op, const cJSON *artifact, int append)
{
    const cJSON *parts = json_get(artifact, "parts");
    return stream_add_text(op, parts, append) | append_data_parts(parts, &op->a2a_data);
}

/* The stream's outcome: st with result `res` (owned) or the message. */
static void stream_end(struct adapter_op *op, enum fb_status st, cJSON *res, const char *msg)
{
    op->a2a_ended = 1;
    op->b_status = st;
    cJSON_Delete(op->b_result);
    op->b_result = res;
    snprintf(op->b_err, sizeof op->b_err, "%s", st == FB_OK ? "" : msg);
}

/* A status in the stream (a task's or a status update's): a running task
 * goes on; any other state ends the stream's outcome. */
static void stream_status(struct adapter_op *op, const cJSON *status)
{
    const cJSON *state = json_get(status, "state");
    if (!cJSON_IsString(state))
        return;
    char sv[40];
    a2a_state_name(state->valuestring, sv, sizeof sv);
    enum a2a_task_state cls = a2a_state_class(sv);
    if (cls == A2A_TASK_RUNNING)
        return;
    op->a2a_task_ended = cls == A2A_TASK_ENDED;
    if (!strcmp(sv, "completed")) {
        /* the artifacts gathered so far are the result (parts_result takes them) */
        cJSON *res = parts_result(op->a2a_text, op->a2a_data,
                                  json_get(
                                      json_get(status, "message"), "parts"),
                                  status);
        op->a2a_text = NULL;
        op->a2a_tlen = 0;
        op->a2a_data = NULL;
        if (res)
            stream_end(op, FB_OK, res, NULL);
        else
            stream_end(op, FB_EXEC_ERROR, NULL, "out of memory");
    } else {
        char msg[512];
        task_state_error(msg, sizeof msg, sv, status);
        stream_end(op, FB_EXEC_ERROR, NULL, msg);
        op->a2a_waiting = cls == A2A_TASK_WAITING;
    }
}

/* The object of a 1.0 StreamResponse member `key`, or r itself when it is
 * 0.3's event of kind `kind`; NULL when it is neither. */
static const cJSON *stream_member(const cJSON *r, const char *key, const char *kind)
{
    const cJSON *x = json_get(r, key);
    if (cJSON_IsObject(x))
        return x;
    const cJSON *k = json_get(r, "kind");
    return cJSON_IsString(k) && !strcmp(k->valuestring, kind) ? r : NULL;
}

/* The first usable task id the stream names becomes op's task (what a
 * timeout or cancel stops, what an early close polls).  0 when out of
 * memory (the outcome is then set). */
static int stream_take_task_id(struct adapter_op *op, const cJSON *tid)
{
    if (op->a2a_task || !cJSON_IsString(tid) || !tid->valuestring[0] || strlen(tid->valuestring) > A2A_MAX_TASK_ID)
        return 1;
    if ((op->a2a_task = strdup(tid->valuestring)))
        return 1;
    stream_end(op, FB_EXEC_ERROR, NULL, "out of memory");
    return 0;
}

/* Apply one event's data (a JSON-RPC response to op's request) to op. */
static void stream_apply(struct adapter_op *op, const char *json, size_t len)
{
    int oom;
    cJSON *j = json_parse_oom(json, len, &oom);
    if (oom) {
        stream_end(op, FB_EXEC_ERROR, NULL, "out of memory while parsing an a2a stream event");
        return;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        stream_end(op, FB_PARSE_ERROR, NULL, "a2a stream event is not a JSON-RPC response");
        return;
    }
    op->a2a_saw_event = 1;
    const cJSON *id = json_get(j, "id");
    const cJSON *e = json_get(j, "error");
    const cJSON *r = json_get(j, "result"), *x;
    int has_error = e && !cJSON_IsNull(e);
    char msg[512];
    if (!rpc_reply_is_ours(id, has_error, op->rpc_id)) {
        snprintf(msg, sizeof msg, "a2a stream event for another request (id %s)", id ? "mismatch" : "missing");
        stream_end(op, FB_PARSE_ERROR, NULL, msg);
    } else if (has_error) {
        const cJSON *m = json_get(e, "message");
        long c = op->a2a_rpc_error = rpc_error_code(e);
        snprintf(msg, sizeof msg, "a2a error %ld: %s", c, cJSON_IsString(m) ? m->valuestring : "(no message)");
        stream_end(op, FB_EXEC_ERROR, NULL, msg);
    } else if (!cJSON_IsObject(r)) {
        stream_end(op, FB_PARSE_ERROR, NULL, "a2a stream event has no result object");
    } else if ((x = stream_member(r, "message", "message"))) {
        char *text = NULL;
        size_t tlen = 0;
        cJSON *data = NULL;
        const cJSON *parts = json_get(x, "parts");
        int oom = append_text_parts(parts, &text, &tlen) | (text ? 0 : append_data_parts(parts, &data));
        cJSON *res = NULL;
        if (oom) {
            cJSON_Delete(data);
            free(text);
        } else {
            res = parts_result(text, data, NULL, x);
        }
        if (res)
            stream_end(op, FB_OK, res, NULL);
        else
            stream_end(op, FB_EXEC_ERROR, NULL, "out of memory");
    } else if ((x = stream_member(r, "statusUpdate", "status-update"))) {
        if (stream_take_task_id(op, json_get(x, "taskId")))
            stream_status(op, json_get(x, "status"));
    } else if ((x = stream_member(r, "artifactUpdate", "artifact-update"))) {
        if (stream_take_task_id(op, json_get(x, "taskId")) &&
            stream_add_artifact(op, json_get(x, "artifact"),
                                cJSON_IsTrue(json_get(x, "append"))))
            stream_end(op, FB_EXEC_ERROR, NULL, "out of memory");
    } else if ((x = stream_member(r, "task", "task"))) {
        const cJSON *a;
        if (stream_take_task_id(op, json_get(x, "id"))) {
            /* a snapshot: its artifacts are all there are so far */
            free(op->a2a_text);
            op->a2a_text = NULL;
            op->a2a_tlen = 0;
            cJSON_Delete(op->a2a_data);
            op->a2a_data = NULL;
            int oom = 0;
            cJSON_ArrayForEach(a, json_get(x, "artifacts"))
                oom |= stream_add_artifact(op, a, 0);
            if (oom)
                stream_end(op, FB_EXEC_ERROR, NULL, "out of memory");
            else
                stream_status(op, json_get(x, "status"));
        }
    }   /* any other event says nothing of the outcome */
    cJSON_Delete(j);
}

/* Apply the whole SSE events of body[a2a_sse_pos, len) - at the end of the
 * body also a last one without its blank line - until the outcome is
 * known.  Each byte is searched for a blank line about once however the
 * body arrives.  1 once the outcome is known. */
static int stream_scan(struct adapter_op *op, const char *body, size_t len, int at_end)
{
    while (!op->a2a_ended && op->a2a_sse_pos < len) {
        size_t from = op->a2a_sse_scanned > op->a2a_sse_pos + 2 ? op->a2a_sse_scanned - 2 : op->a2a_sse_pos;
        size_t end = 0, next = 0;
        for (size_t k = from; k + 1 < len; k++) {
            if (body[k] == '\n' && (body[k + 1] == '\n' || (body[k + 1] == '\r' && k + 2 < len && body[k + 2] == '\n'))) {
                end = k + 1;
                next = k + (body[k + 1] == '\n' ? 2 : 3);
                break;
            }
        }
        if (!next) {
            op->a2a_sse_scanned = len;
            if (!at_end)
                break;
            end = next = len;
        }
        /* the event's data lines, joined by newlines */
        char stack[2048];
        struct jbuf b;
        jbuf_init(&b, stack, sizeof stack);
        int lines = 0;
        for (size_t k = op->a2a_sse_pos; k < end;) {
            size_t e = k;
            while (e < end && body[e] != '\n')
                e++;
            size_t n = e - k;
            if (n && body[k + n - 1] == '\r')
                n--;
            if (n >= 5 && !memcmp(body + k, "data:", 5)) {
                size_t skip = n > 5 && body[k + 5] == ' ' ? 6 : 5;
                if (lines++)
                    jbuf_add(&b, "\n", 1);
                jbuf_add(&b, body + k + skip, n - skip);
            }
            k = e + 1;
        }
        op->a2a_sse_pos = next;
        op->a2a_sse_scanned = next;
        if (b.oom)
            stream_end(op, FB_EXEC_ERROR, NULL, "out of memory");
        else if (lines)
            stream_apply(op, b.p, b.len);
        jbuf_free(&b);
    }
    return op->a2a_ended;
}

/* What the reply's body is, decided at its first byte that is not white
 * space (each byte looked at once however the body arrives): a plain JSON
 * reply, left to its framing, or an SSE stream. */
static enum a2a_body_kind stream_body_kind(struct adapter_op *op, const char *body, size_t len)
{
    while (op->a2a_body_kind == A2A_BODY_UNKNOWN && op->a2a_ws < len) {
        char c = body[op->a2a_ws];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            op->a2a_ws++;
        else
            op->a2a_body_kind = c == '{' || c == '[' ? A2A_BODY_JSON : A2A_BODY_SSE;
    }
    return op->a2a_body_kind;
}

int a2a_stream_feed(struct adapter_op *op, const char *body, size_t len, int at_end)
{
    return stream_scan(op, body, len, at_end);
}

static int a2a_stream_peek(void *ud, const char *body, size_t len)
{
    struct adapter_op *op = ud;
    if (stream_body_kind(op, body, len) != A2A_BODY_SSE)
        return 0;
    return stream_scan(op, body, len, 0);
}

/* A refusal to stream, before the agent started a task for the call:
 * -32601 to an auto agent's stream method may come from a 0.3 agent or a
 * 1.0 one that does not stream, so op is sent once more without streaming
 * as the probe that tells which (a2a_probe_settle); -32004 (unsupported
 * operation), or -32601 from an agent of known version, turns streaming
 * off for the agent and sends op plainly.  1 when op was sent again (or
 * finished). */
static int a2a_stream_refused(struct adapter_op *op, long rpc_error)
{
    if (op->a2a_task || (rpc_error != -32004 && rpc_error != -32601))
        return 0;
    if (rpc_error == -32601 && op->a2a_probe) {
        op->a2a_nostream = 1;
        op->a2a_stream_refused = 1;
    } else {
        op->rt->a2a_stream = 0;
    }
    a2a_resend(op);
    return 1;
}

/* The streamed call's reply ended (its outcome seen, or the stream closed). */
static void a2a_stream_done(void *ud, const struct httpc_response *resp)
{
    struct adapter_op *op = ud;
    int json = stream_body_kind(op, resp->body, resp->body_len) == A2A_BODY_JSON;
    if (resp->transport_error || resp->status < 200 || resp->status >= 300 || json) {
        /* A plain JSON-RPC reply: an agent that does not stream says so
         * with -32004 (unsupported operation) or -32601 for the stream
         * method (while probing an auto agent, that may be a 0.3 agent:
         * a2a_stream_refused), in a 2xx or a 4xx reply.  Anything else is a
         * plain reply to handle as such. */
        if (!resp->transport_error && resp->status < 500 && a2a_stream_refused(op, reply_rpc_error(op, resp)))
            return;
        a2a_done(ud, resp);
        return;
    }
    stream_scan(op, resp->body, resp->body_len, 1);
    /* a refusal counts only before the agent started a task for the call
     * (after, it is this call's error, and the task is stopped below) */
    if (a2a_stream_refused(op, op->a2a_rpc_error))
        return;
    long refusal = op->a2a_task ? 0 : op->a2a_rpc_error;
    if (a2a_probe_settle(op, op->a2a_ended ? op->b_status : FB_PARSE_ERROR,
                         op->a2a_task ? A2A_TASK_RUNNING : A2A_NO_TASK, refusal))
        return;
    if (op->a2a_ended) {
        cJSON *res = op->b_result;
        op->b_result = NULL;
        char err[512];
        snprintf(err, sizeof err, "%s", op->b_err);
        /* a task that ended (completed or not) needs nothing more; one
         * that waits for input, or whose stream failed, is stopped */
        if (op->b_status == FB_OK || op->a2a_task_ended)
            adapter_finish(op, op->b_status, res, op->b_status == FB_OK ? NULL : err, 0, resp->agent_recv_ns,
                           resp->agent_send_ns);
        else
            a2a_finish(op, op->b_status, res, err, 0, resp->agent_recv_ns, resp->agent_send_ns);
        return;
    }
    if (op->a2a_task) {
        /* the stream closed before the task ended: its outcome is asked
         * for with GetTask / tasks/get, as for a call that is not streamed */
        op->req = NULL;
        if (a2a_poll_later(op))
            a2a_finish(op, FB_EXEC_ERROR, NULL, "a2a: cannot poll the task (out of memory)", 1, 0, 0);
        return;
    }
    adapter_finish(op, FB_PARSE_ERROR, NULL,
                   op->a2a_saw_event ? "a2a stream ended without a result or a task to poll"
                                     : "a2a stream ended without an event",
                   0, resp->agent_recv_ns, resp->agent_send_ns);
}

/* Send the call's message: SendMessage (1.0) or message/send (0.3), as the
 * agent's version says (auto: 1.0, marked as the probe that settles it);
 * for an agent that streams, SendStreamingMessage / message/stream. */
static int a2a_start(struct adapter_op *op)
{
    op->rpc_id = ++op->ex->a2a_rpc_id;
    op->a2a_v03 = op->rt->a2a_proto == A2A_VERSION_0_3;
    op->a2a_probe = op->rt->a2a_proto == A2A_VERSION_AUTO;
    int v03 = op->a2a_v03, stream = op->a2a_streamed = op->rt->a2a_stream && !op->a2a_nostream;
    op->a2a_sse_pos = op->a2a_sse_scanned = op->a2a_ws = 0;
    op->a2a_body_kind = A2A_BODY_UNKNOWN;
    op->a2a_ended = op->a2a_waiting = op->a2a_saw_event = op->a2a_task_ended = 0;
    op->a2a_rpc_error = 0;
    free(op->a2a_text);
    op->a2a_text = NULL;
    op->a2a_tlen = 0;
    cJSON_Delete(op->a2a_data);
    op->a2a_data = NULL;
    cJSON_Delete(op->b_result);
    op->b_result = NULL;
    char *user = chat_user_text(op->args);
    cJSON *body = cJSON_CreateObject(), *params, *conf, *modes, *msg, *parts, *p;
    char mid[160];
    snprintf(mid, sizeof mid, "paraserve-%s-%ld", op->call_id, op->rpc_id);
    int st = PS_ENOMEM;
    /* Sent and polled: not blocking (0.3 "blocking": false, 1.0
     * "returnImmediately": true), so the task's id comes back at once and a
     * call that times out or is cancelled can always stop it (the cancel);
     * a server that answers before its task ends is polled (a2a_done), one
     * that blocks anyway is waited for.  Streamed: the task's id comes in
     * the stream's first event, its outcome in the last (a2a_stream_done). */
    if (!user || !body || !cJSON_AddStringToObject(body, "jsonrpc", "2.0") ||
        !cJSON_AddNumberToObject(body, "id", (double)op->rpc_id) ||
        !cJSON_AddStringToObject(body, "method", a2a_method(v03, stream ? A2A_STREAM : A2A_SEND)) ||
        !(params = cJSON_AddObjectToObject(body, "params")) ||
        !(conf = cJSON_AddObjectToObject(params, "configuration")) ||
        !(modes = cJSON_AddArrayToObject(conf, "acceptedOutputModes")) ||
        !cJSON_AddItemToArray(modes, cJSON_CreateString("text/plain")) ||
        !cJSON_AddItemToArray(modes, cJSON_CreateString("application/json")) ||
        (!stream && !(v03 ? cJSON_AddBoolToObject(conf, "blocking", 0)
                          : cJSON_AddBoolToObject(conf, "returnImmediately", 1))) ||
        !(msg = cJSON_AddObjectToObject(params, "message")) ||
        !cJSON_AddStringToObject(msg, "role", v03 ? "user" : "ROLE_USER") ||
        (v03 && !cJSON_AddStringToObject(msg, "kind", "message")) ||
        !cJSON_AddStringToObject(msg, "messageId", mid) ||
        !(parts = cJSON_AddArrayToObject(msg, "parts")) ||
        !(p = cJSON_CreateObject()) || !cJSON_AddItemToArray(parts, p) ||
        (v03 && !cJSON_AddStringToObject(p, "kind", "text")) ||
        !cJSON_AddStringToObject(p, "text", user))
        goto done;
    if (stream) {
        st = post_json(op, op->rt->spec->url, body, v03 ? a2a_stream_headers : a2a_v1_stream_headers,
                       a2a_stream_done);
        if (!st)
            httpc_set_peek(op->req, a2a_stream_peek);
    } else {
        st = post_json(op, op->rt->spec->url, body, a2a_headers(v03), a2a_done);
    }
done:
    free(user);
    cJSON_Delete(body);
    return st;
}

/* ---- builtin ------------------------------------------------------------- */

static int builtin_start(struct adapter_op *op)
{
    const struct agent_spec *a = op->rt->spec;
    int st = builtin_call(a->tool ? a->tool : a->name, op->args, &op->b_result,
                          op->b_err, sizeof op->b_err);
    op->b_status = st == PS_OK ? FB_OK : FB_EXEC_ERROR;
    return adapter_deliver_later(op);
}

/* ---- entry points -------------------------------------------------------- */

struct adapter_op *adapter_start(struct exec *ex, struct agent_rt *rt, const char *call_id,
                                 const cJSON *args, const char *tenant_line, adapter_done_fn done,
                                 void *ud)
{
    struct adapter_op *op = calloc(1, sizeof *op);
    if (!op) {
        ps_error_set(PS_ENOMEM, "out of memory");
        return NULL;
    }
    op->ex = ex;
    op->rt = rt;
    op->done = done;
    op->ud = ud;
    op->args = args;
    op->tenant_line = tenant_line;
    op->call_id = strdup(call_id);
    if (!op->call_id) {
        adapter_op_free(op);
        ps_error_set(PS_ENOMEM, "out of memory");
        return NULL;
    }
    const struct agent_spec *a = rt->spec;
    int st;
    switch (a->kind) {
    case AGENT_HTTP_JSON:
        st = post_json(op, a->url, op->args, NULL, http_json_done);
        break;
    case AGENT_OPENAI_CHAT:
        st = chat_start(op, a->url, a->model ? a->model : "default");
        break;
    case AGENT_LOCAL:
        if (!ex->local_url)
            st = ps_error_set(PS_EUNSUPPORTED, "local agents need a served model, and none is reachable: "
                              "'paraserve serve' opens a local port for them at startup (its log says "
                              "why it could not), 'paraserve orchestrate' needs --local-url");
        else
            st = chat_start(op, ex->local_url, a->model ? a->model
                            : ex->local_model ? ex->local_model : "default");
        break;
    case AGENT_A2A:
        st = a2a_start(op);
        break;
    case AGENT_BUILTIN:
        st = builtin_start(op);
        break;
    case AGENT_MCP_HTTP:
    case AGENT_MCP_STDIO:
        st = mcp_op_start(op);
        break;
    default:
        st = ps_error_set(PS_EINTERNAL, "unknown agent kind");
    }
    if (st) {
        adapter_op_free(op);
        return NULL;
    }
    return op;
}

struct adapter_op *adapter_start_mcp_list(struct exec *ex, struct agent_rt *rt, const char *cursor,
                                          adapter_done_fn done, void *ud)
{
    if (rt->spec->kind != AGENT_MCP_HTTP && rt->spec->kind != AGENT_MCP_STDIO) {
        ps_error_set(PS_EINVAL, "agent '%s' is not an MCP agent", rt->spec->name);
        return NULL;
    }
    struct adapter_op *op = calloc(1, sizeof *op);
    if (!op || !(op->call_id = strdup("tools/list"))) {
        free(op);
        ps_error_set(PS_ENOMEM, "out of memory");
        return NULL;
    }
    op->ex = ex;
    op->rt = rt;
    op->done = done;
    op->ud = ud;
    op->mcp_list = 1;
    op->mcp_cursor = cursor;
    if (mcp_op_start(op)) {
        adapter_op_free(op);
        return NULL;
    }
    return op;
}

void adapter_cancel(struct adapter_op *op)
{
    if (!op)
        return;
    if (op->rt->spec->kind == AGENT_MCP_HTTP || op->rt->spec->kind == AGENT_MCP_STDIO)
        mcp_op_cancel(op);
    /* an A2A task the agent still runs for the call: asked to stop (its
     * answer, whatever it is, is not waited for) */
    if (op->rt->spec->kind == AGENT_A2A && op->a2a_task)
        (void)a2a_task_request(op->ex, op->rt->spec, NULL, op->a2a_v03, A2A_CANCEL, op->a2a_task);
    adapter_op_free(op);
}
