/* server.c - evhttp front end: routes, OpenAI responses, SSE, lifecycle
 * (see server.h). */
#include "server.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <errno.h>
#include <time.h>

#include "../common/grow.h"
#include "../common/json_get.h"
#include "../common/status.h"
#include "../orchestrator/json_alloc.h"
#include "../engine/backend.h"
#include "backend_cuda.h"
#include "../engine/engine.h"
#include "../model/chat.h"
#include "../model/model.h"
#include "../model/tokenizer.h"
#include "../model/unicode.h"
#include "metrics.h"
#include "openai.h"
#include "sse.h"
#include "tasks_api.h"
#include "cors.h"
#include "flush_track.h"
#include "conn_limit.h"

/* the header carrying the local agents' token (server.local_token) */
#define SERVER_LOCAL_HEADER "X-Paraserve-Local"
/* the header carrying a local agent's task's tenant (the decimal engine
 * id): honoured on the local agents' port only, after the token */
#define SERVER_TENANT_HEADER "X-Paraserve-Tenant"

struct server {
    struct server_config cfg;
    struct event_base   *base;
    struct evhttp       *http;
    struct evhttp_bound_socket *sock;
    /* The local agents' own port (127.0.0.1, ephemeral): outside the
     * client connection cap, so tasks waiting on /v1/tasks can never starve
     * their own agent calls; only POST /v1/chat/completions carrying
     * SERVER_LOCAL_HEADER with local_token, which replaces the API key.
     * Its connections have their own cap (the pool's local concurrency plus
     * slack), idle timeout and accept-error pause (conns_local, counts in
     * m_local, not rendered). */
    struct evhttp       *http_local;
    struct evhttp_bound_socket *sock_local;
    struct conn_limit   *conns_local;
    struct metrics       m_local;
    char                 local_token[33];
    struct event        *ev_engine, *ev_sigterm, *ev_sigint, *ev_sighup, *ev_grace;
    struct conn_limit   *conns;   /* open connections counted and capped */
    engine              *eng;
    struct tasks_api    *tasks;   /* /v1/tasks and the model's decisions */
    const struct model  *model;
    const tokenizer     *tok;
    const chat_template *tmpl;
    grammar_vocab       *gvocab;   /* token trie for constrained decoding */
    char                 model_name[128];
    char                 basename[128];
    const char          *model_names[4];
    struct metrics       m;
    int32_t              flushing; /* final replies handed to libevent, not yet written */
    bool                 draining, hard_stop;
    time_t               created;
    uint64_t             next_cmpl;
    /* Authentication (cfg.api_keys): key i runs as tenant key_tenant[i]
     * (1-based index into m.tenants; 0 = no key configured). */
    uint32_t             key_tenant[SERVER_MAX_API_KEYS];
    /* Priority bounds of tenant t's local agents' requests: the least any
     * of its keys allows (the lowest default, the lowest cap); tenant 0
     * (no key) has the API's whole range. */
    int32_t              tenant_priority[METRICS_MAX_TENANTS];
    int32_t              tenant_max_priority[METRICS_MAX_TENANTS];
};

/* Who is calling: the engine tenant (prefix-cache isolation, per-tenant
 * metrics) and the priority bounds of its key. */
struct caller {
    uint32_t tenant;
    int32_t  priority, max_priority;
};

/* logprobs of /v1/completions (logprobs N, 0..5) and of chat (logprobs
 * true, top_logprobs N, 0..20): every sampled token with its logprob, its
 * raw piece, the byte offset of its text in the output (the sum of the
 * earlier tokens' pieces) and the step's N most likely alternatives (ids
 * and logprobs from the engine, their text from the tokenizer when
 * rendered).  A token is listed with the output text that reaches past its
 * offset (lp_take), so tokens whose text lies wholly in a stop string or
 * after it, and EOG, are never listed.  text_offset (completions) counts
 * characters from the start of the prompt text, as OpenAI's legacy
 * completions do without echo: the first token's is the prompt's length. */
struct lp_token {
    char   *piece;    /* owned: the token's raw bytes (NUL-terminated)     */
    size_t  piece_len;
    int32_t id;
    float   logprob;
    size_t  off;      /* byte offset in the output                      */
    size_t  top;      /* its alternatives: lp_list.alt[top..top+n_top)  */
    int32_t n_top;
};

struct lp_alt {
    int32_t id;
    float   logprob;
};

struct lp_list {
    struct lp_token *t;
    size_t n, cap;
    struct lp_alt *alt; /* [n_alt] every recorded token's alternatives, in order */
    size_t n_alt, cap_alt;
    size_t listed;    /* t[0..listed) went out                          */
    size_t raw;       /* bytes of every token's piece: the next offset  */
    size_t shown;     /* output bytes walked by lp_take                 */
    size_t chars;     /* characters in the prompt (handle_generate) and
                         in the output bytes walked                     */
    bool   failed;    /* out of memory: the list is incomplete, and the
                         request must end in an error (never a 200 reply,
                         nor a text chunk, without its logprobs)        */
};

/* One choice of a generation request: its own engine sequence (n > 1:
 * the request's choices share the prompt's KV blocks, scheduler.h's
 * prompt groups), output, tool-call shaper and logprobs. */
struct gen_choice {
    struct gen_ctx        *g;
    int32_t                index;   /* choices[].index                      */
    uint64_t               id;      /* engine request                       */
    bool                   live;    /* submitted, its DONE not taken yet    */
    struct evbuffer       *text;    /* non-stream: accumulated output       */
    struct openai_output  *out;     /* tool calls (NULL: plain content)     */
    struct lp_list         lp;
    cJSON                 *lp_pending; /* chat stream: logprobs.content entries
                                         of text not shown yet (a tool call's
                                         name is buffered): they go out with
                                         the next chunk that does, at the
                                         latest the finish chunk        */
    double                 t_last;  /* its latest token (inter-token latency) */
    int32_t                n_seen;  /* its tokens so far                    */
    /* from its DONE event */
    const char            *finish;  /* "stop" / "length"                    */
    int32_t                n_prompt, n_cached, n_generated;
};

/* A generation request: n choices (gen_params.n), answered once every
 * submitted choice's DONE has arrived.  The first failure of any choice
 * (rejection, engine error, shutdown, logprobs out of memory) ends the
 * request with that error and cancels the other choices; a client that
 * leaves cancels them all. */
struct gen_ctx {
    struct server         *srv;
    struct evhttp_request *req;   /* ours until we end the reply          */
    struct event          *watch; /* EOF watch on the client socket       */
    bool                   gone;  /* the client left; engine asked to cancel */
    bool                   conn_closed; /* libevent dropped the connection and
                                           detached req: ending req frees it */
    uint32_t               tenant;
    enum metrics_route     route;
    bool                   chat, stream, include_usage;
    bool                   headers_sent;
    char                   cid[48];
    time_t                 created;
    bool                   logprobs; /* completions logprobs N / chat logprobs true */
    double                 t0;
    bool                   first_token; /* time to first token observed  */
    int32_t                n_choices, n_live;
    struct gen_choice     *ch;    /* [n_choices]                           */
    bool                   failed;  /* fail: the error the request ends with
                                       (a reply when no header went out, else
                                       an error event already sent)     */
    bool                   oom;     /* a piece of the answer (text, a chunk)
                                       could not be kept or built: nothing
                                       more is sent, the request ends with
                                       the out-of-memory error */
    struct api_error       fail;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- plain replies ------------------------------------------------------------------ */

/* libevent 2.1 writes whatever body it is given, HEAD or not (it only
 * leaves Content-Length out): a body after a HEAD reply would be read as
 * the next response on a keep-alive connection.  HEAD replies get none. */
static bool is_head(struct evhttp_request *req)
{
    return evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
}

static void reply_json(struct server *srv, struct evhttp_request *req, enum metrics_route route,
                       int status, const char *json)
{
    struct evbuffer *out = is_head(req) ? NULL : evbuffer_new();
    if (out) {
        evbuffer_add(out, json, strlen(json));
        evbuffer_add(out, "\n", 1);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, api_http_reason(status), out);
    if (out)
        evbuffer_free(out);
    metrics_request(&srv->m, route, status);
}

static void reply_error(struct server *srv, struct evhttp_request *req, enum metrics_route route,
                        const struct api_error *e)
{
    char *json = api_error_json(e);
    reply_json(srv, req, route, e->status, json ? json : API_ERROR_OOM_BODY);
    free(json);
}

/* A method `path` does not serve: OPTIONS is answered 204 No Content, any
 * other method 405 with the OpenAI error body; both carry "Allow: allow"
 * (the route's methods, OPTIONS included) and a CORS preflight's headers
 * (cors_allow_headers). */
static void reply_method(struct server *srv, struct evhttp_request *req, enum metrics_route route,
                         const char *path, const char *allow)
{
    cors_allow_headers(req, allow);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_OPTIONS) {
        evhttp_send_reply(req, 204, api_http_reason(204), NULL);
        metrics_request(&srv->m, route, 204);
        return;
    }
    struct api_error e;
    api_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                  "Method not allowed: %s accepts %s only", path, allow);
    reply_error(srv, req, route, &e);
}

/* ---- OpenAI JSON pieces --------------------------------------------------------------- */

/* False when out of memory (never an empty text in its place). */
static bool add_text(cJSON *obj, const char *key, const char *s, size_t len)
{
    size_t n;
    char *clean = utf8_sanitize(s, len, &n);
    bool ok = clean && cJSON_AddStringToObject(obj, key, clean);
    free(clean);
    return ok;
}

static const char answer_oom[] = "out of memory while building the answer";

/* A request's usage, as OpenAI counts n > 1: the prompt once (choice 0's
 * numbers: every choice has the same prompt, and its cached tokens are
 * those the prefix cache served it), completion tokens summed over the
 * choices. */
static void usage_totals(const struct gen_ctx *g, int32_t *n_prompt, int32_t *n_generated, int32_t *n_cached)
{
    *n_prompt = g->ch[0].n_prompt;
    *n_cached = g->ch[0].n_cached;
    *n_generated = 0;
    for (int32_t i = 0; i < g->n_choices; i++)
        *n_generated += g->ch[i].n_generated;
}

static cJSON *usage_json(const struct gen_ctx *g)
{
    int32_t n_prompt, n_generated, n_cached;
    usage_totals(g, &n_prompt, &n_generated, &n_cached);
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", n_prompt + n_generated);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", n_cached);
    return u;
}

/* ---- logprobs ---------------------------------------------------------------------- */


/* Record a TOKEN event's token (ev->has_logprob), taking its piece (ev->piece
 * becomes NULL); on failure l->failed: out of memory here, or in the engine
 * (ev->piece NULL: the piece was not copied, so the token cannot be
 * listed). */
static void lp_add(struct lp_list *l, struct engine_event *ev)
{
    if (l->failed)
        return;
    if (!ev->piece) {
        l->failed = true;
        return;
    }
    struct lp_token *t = ps_grow(l->t, &l->cap, l->n + 1, sizeof *l->t, 64);
    if (!t) {
        l->failed = true;
        return;
    }
    l->t = t;
    const size_t nt = ev->n_top > 0 ? (size_t)ev->n_top : 0;
    if (nt) {
        struct lp_alt *a = ps_grow(l->alt, &l->cap_alt, l->n_alt + nt, sizeof *a, 256);
        if (!a) {
            l->failed = true;
            return;
        }
        l->alt = a;
        for (size_t k = 0; k < nt; k++)
            a[l->n_alt + k] = (struct lp_alt){ .id = ev->top_ids[k], .logprob = ev->top_lps[k] };
    }
    l->t[l->n++] = (struct lp_token){ .piece = ev->piece, .piece_len = ev->piece_len, .id = ev->token,
                                      .logprob = ev->logprob,
                                      .off = l->raw, .top = l->n_alt, .n_top = (int32_t)nt };
    ev->piece = NULL;
    l->n_alt += nt;
    l->raw += l->t[l->n - 1].piece_len;
}

static void lp_free(struct lp_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->t[i].piece);
    free(l->t);
    free(l->alt);
}

/* A token's bytes p[0..n) as the logprobs show its text (both routes, the
 * sampled token and its alternatives alike): the text itself when it is
 * valid UTF-8; else OpenAI's legacy form of a partial character:
 * "bytes:" then "\\xNN" for each byte, "bytes:\\xe2\\x80" (a token holding
 * part of a multi-byte character; chat's "bytes" array carries the raw
 * bytes to join).  NULL when out of memory. */
static cJSON *lp_token_string(const char *p, size_t n)
{
    char *text = malloc(n ? 6 + 4 * n + 1 : 1);
    if (!text)
        return NULL;
    if (utf8_valid(p, n) && !memchr(p, 0, n)) {   /* NUL: the JSON string would end there */
        if (n)
            memcpy(text, p, n);
        text[n] = '\0';
    } else {
        size_t k = (size_t)sprintf(text, "bytes:");
        for (size_t i = 0; i < n; i++)
            k += (size_t)sprintf(text + k, "\\x%02x", (unsigned char)p[i]);
    }
    cJSON *s = cJSON_CreateString(text);
    free(text);
    return s;
}

/* Chat's {"token", "logprob", "bytes"} of p[0..n) (NULL: out of memory). */
static cJSON *lp_chat_entry(const char *p, size_t n, float logprob)
{
    cJSON *e = cJSON_CreateObject(), *b = NULL;
    bool ok = e && json_add(e, "token", lp_token_string(p, n)) &&
              cJSON_AddNumberToObject(e, "logprob", (double)logprob) && (b = cJSON_AddArrayToObject(e, "bytes"));
    for (size_t i = 0; ok && i < n; i++)
        ok = json_add(b, NULL, cJSON_CreateNumber((double)(unsigned char)p[i]));
    if (!ok) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

/* The text of alternative `id`: its piece, a control token (end of turn...)
 * as its text form ("<|im_end|>", though as the sampled token it adds
 * nothing to the output), an id without a piece as "". */
static const char *lp_alt_piece(const tokenizer *tok, int32_t id, size_t *len)
{
    const char *p = tokenizer_piece(tok, id, true, len);
    if (!p)
        *len = 0;
    return p ? p : "";
}

/* The text sampled token t is shown with: its piece; a control token,
 * which adds nothing to the output, as its text form, as lp_alt_piece
 * shows it among the alternatives (so the two read the same). */
static const char *lp_sampled_piece(const tokenizer *tok, const struct lp_token *t, size_t *len)
{
    if (t->piece_len) {
        *len = t->piece_len;
        return t->piece;
    }
    return lp_alt_piece(tok, t->id, len);
}

/* Completions' top_logprobs entry of token t: {text: logprob} for its
 * alternatives, then (when it asked for any) the sampled token itself when
 * missing - as llama-cpp-python does and OpenAI documents ("up to
 * logprobs+1 elements"), so the dict has N or N+1 keys.  Two tokens whose
 * text is the same share a key, which keeps the higher logprob (the first
 * met: alternatives come most likely first).  logprobs 0: {}. */
static cJSON *lp_top_dict(const struct lp_list *l, const struct lp_token *t, const tokenizer *tok)
{
    cJSON *d = cJSON_CreateObject();
    bool ok = d != NULL;
    for (int32_t k = 0; ok && k <= t->n_top; k++) {
        const char *p;
        size_t n;
        float lp;
        if (k < t->n_top) {
            p = lp_alt_piece(tok, l->alt[t->top + (size_t)k].id, &n);
            lp = l->alt[t->top + (size_t)k].logprob;
        } else if (t->n_top > 0) {
            bool listed = false;   /* by id: two tokens may share a text */
            for (int32_t j = 0; j < t->n_top; j++)
                listed |= l->alt[t->top + (size_t)j].id == t->id;
            if (listed)
                break;
            p = lp_sampled_piece(tok, t, &n);
            lp = t->logprob;
        } else {
            break;
        }
        cJSON *key = lp_token_string(p, n);
        ok = key != NULL;
        if (!ok)
            break;
        cJSON *have = json_get(d, key->valuestring);
        if (!have)
            ok = cJSON_AddNumberToObject(d, key->valuestring, (double)lp) != NULL;
        else if ((double)lp > have->valuedouble)
            cJSON_SetNumberValue(have, (double)lp);
        cJSON_Delete(key);
    }
    if (!ok) {
        cJSON_Delete(d);
        return NULL;
    }
    return d;
}

/* Chat's logprobs.content entry of token t: its token/logprob/bytes and
 * "top_logprobs", its alternatives as the engine gave them (most likely
 * first, ties by lower id; N entries or fewer, never the sampled token
 * added; two tokens with the same text are two entries, told apart by
 * nothing but their logprobs: bytes are the same). */
static cJSON *lp_chat_token(const struct lp_list *l, const struct lp_token *t, const tokenizer *tok)
{
    size_t sn;
    const char *sp = lp_sampled_piece(tok, t, &sn);
    cJSON *e = lp_chat_entry(sp, sn, t->logprob), *tops = NULL;
    bool ok = e && (tops = cJSON_AddArrayToObject(e, "top_logprobs"));
    for (int32_t k = 0; ok && k < t->n_top; k++) {
        size_t n;
        const struct lp_alt *a = &l->alt[t->top + (size_t)k];
        const char *p = lp_alt_piece(tok, a->id, &n);
        ok = json_add(tops, NULL, lp_chat_entry(p, n, a->logprob));
    }
    if (!ok) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

/* Bytes of the character at s[0..n) as utf8_sanitize reads it: a valid
 * UTF-8 sequence, else one byte (shown as U+FFFD). */
static size_t char_bytes(const char *s, size_t n)
{
    if ((unsigned char)s[0] < 0x80)
        return 1;
    uint32_t cp;
    size_t k = unicode_utf8_decode((const uint8_t *)s, n, &cp);
    return cp == UNICODE_INVALID || k == 0 ? 1 : k;
}

/* Characters in s[0..n) as the client sees them (char_bytes). */
static size_t char_count(const char *s, size_t n)
{
    size_t chars = 0;
    for (size_t pos = 0; pos < n; chars++)
        pos += char_bytes(s + pos, n - pos);
    return chars;
}

/* The length in characters of a prompt: text (valid UTF-8: code points,
 * as Python's len), else ids[n_ids] as their pieces spell it (the
 * detokenized prompt, control tokens as nothing: the pieces output text is
 * made of), counted as char_count.  -1 when out of memory. */
static long long prompt_chars(const tokenizer *tok, const char *text, const int32_t *ids, int32_t n_ids)
{
    if (text)
        return (long long)char_count(text, strlen(text));
    size_t total = 0, plen;
    for (int32_t i = 0; i < n_ids; i++)
        if (tokenizer_piece(tok, ids[i], false, &plen))
            total += plen;
    char *buf = malloc(total + 1);
    if (!buf)
        return -1;
    size_t n = 0;
    for (int32_t i = 0; i < n_ids; i++) {
        const char *pc = tokenizer_piece(tok, ids[i], false, &plen);
        if (pc) {
            memcpy(buf + n, pc, plen);
            n += plen;
        }
    }
    const size_t chars = char_count(buf, n);
    free(buf);
    return (long long)chars;
}

/* The logprobs of the next len output bytes, text[0..len) (the whole
 * output at once, or stream chunk after chunk): the tokens whose offset
 * falls in them.  Completions (!chat): the object {tokens, token_logprobs,
 * top_logprobs (lp_top_dict), text_offset}, text_offset the index of the
 * character holding the token's first byte, counted from the start of the
 * prompt (l->chars starts at the prompt's length; characters as the client
 * sees the text: a partial or invalid sequence is one U+FFFD per byte).
 * Chat: the array of logprobs.content entries (lp_chat_token).  NULL when
 * the list is incomplete or out of memory (then l->failed): the caller
 * ends the request with an error, never a logprobs null. */
static cJSON *lp_take(struct lp_list *l, const char *text, size_t len, bool chat, const tokenizer *tok)
{
    if (l->failed)
        return NULL;
    cJSON *o = chat ? cJSON_CreateArray() : cJSON_CreateObject();
    cJSON *toks = NULL, *lps = NULL, *tops = NULL, *offs = NULL;
    if (!o || (!chat && (!(toks = cJSON_AddArrayToObject(o, "tokens")) ||
                         !(lps = cJSON_AddArrayToObject(o, "token_logprobs")) ||
                         !(tops = cJSON_AddArrayToObject(o, "top_logprobs")) ||
                         !(offs = cJSON_AddArrayToObject(o, "text_offset"))))) {
        cJSON_Delete(o);
        l->failed = true;
        return NULL;
    }
    const size_t end = l->shown + len;
    size_t pos = 0; /* text[0..pos) walked: l->chars counts its characters */
    bool ok = true;
    while (ok && l->listed < l->n && l->t[l->listed].off < end) {
        const struct lp_token *t = &l->t[l->listed++];
        for (;;) { /* to the character holding byte t->off (shown + pos <= t->off < end) */
            size_t k = char_bytes(text + pos, len - pos);
            if (l->shown + pos + k > t->off)
                break;
            pos += k;
            l->chars++;
        }
        if (chat) {
            ok = json_add(o, NULL, lp_chat_token(l, t, tok));
            continue;
        }
        size_t sn;
        const char *sp = lp_sampled_piece(tok, t, &sn);
        ok = json_add(toks, NULL, lp_token_string(sp, sn)) &&
             json_add(lps, NULL, cJSON_CreateNumber((double)t->logprob)) &&
             json_add(tops, NULL, lp_top_dict(l, t, tok)) &&
             json_add(offs, NULL, cJSON_CreateNumber((double)l->chars));
    }
    while (pos < len) {
        pos += char_bytes(text + pos, len - pos);
        l->chars++;
    }
    l->shown = end;
    if (!ok) {
        cJSON_Delete(o);
        l->failed = true;
        return NULL;
    }
    return o;
}

static cJSON *base_object(const struct gen_ctx *g, const char *object)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", g->cid);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)g->created);
    cJSON_AddStringToObject(o, "model", g->srv->model_name);
    return o;
}

/* Chat's logprobs of a choice: {"content": entries} (taken), or null
 * without logprobs (entries NULL).  False when out of memory. */
static bool chat_logprobs_add(cJSON *choice, cJSON *entries)
{
    if (!entries)
        return cJSON_AddNullToObject(choice, "logprobs") != NULL;
    cJSON *lp = cJSON_CreateObject();
    if (!lp || !json_add(lp, "content", entries)) {
        if (lp)
            cJSON_Delete(lp);
        else
            cJSON_Delete(entries);
        return false;
    }
    return json_add(choice, "logprobs", lp);
}

/* One streamed chunk of choice c: text (may be NULL), finish reason (NULL
 * = null).  With g->logprobs a chunk lists the tokens of its text: a
 * completions chunk with text gets its logprobs object; a chat chunk's
 * entries join c->lp_pending, and the chunk that goes out carries every
 * pending entry as logprobs.content (null when there are none).  NULL (no
 * chunk) when there is nothing to send yet (chat: a tool call's name not
 * complete) or the logprobs cannot be listed: then c->lp.failed. */
static cJSON *chunk_build(struct gen_ctx *g, struct gen_choice *ch, const char *text, size_t len,
                          const char *finish, bool role)
{
    cJSON *o = base_object(g, g->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    if (!json_add(choices, NULL, c))
        c = NULL;   /* freed; counted: the chunk is dropped (chunk_json) */
    cJSON_AddNumberToObject(c, "index", ch->index);
    if (g->chat) {
        if (g->logprobs && text) {
            cJSON *e = lp_take(&ch->lp, text, len, true, g->srv->tok), *it;
            if (!e) {
                cJSON_Delete(o);
                return NULL; /* ch->lp.failed: choice_done ends with the error */
            }
            if (!ch->lp_pending) {
                ch->lp_pending = e;
            } else {
                while ((it = cJSON_DetachItemFromArray(e, 0)))
                    cJSON_AddItemToArray(ch->lp_pending, it); /* a move: cannot fail */
                cJSON_Delete(e);
            }
        }
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role)
            cJSON_AddStringToObject(d, "role", "assistant");
        if (text && !openai_output_delta(ch->out, text, len, d) && !role && !finish) {
            cJSON_Delete(o); /* nothing to show yet (a tool call's name); entries stay pending */
            return NULL;
        }
        if (finish)
            finish = openai_output_finish(ch->out, finish, d);
        cJSON *pending = ch->lp_pending && cJSON_GetArraySize(ch->lp_pending) ? ch->lp_pending : NULL;
        if (pending)
            ch->lp_pending = NULL;
        if (!chat_logprobs_add(c, pending) && g->logprobs) {
            ch->lp.failed = true;
            cJSON_Delete(o);
            return NULL;
        }
    } else {
        if (!add_text(c, "text", text ? text : "", text ? len : 0)) {
            cJSON_Delete(o);
            g->oom = true;
            return NULL;
        }
        if (g->logprobs && text) {
            /* The logprobs lost (ch->lp.failed): no chunk at all; the
             * request ends with the error event (choice_done). */
            cJSON *lp = lp_take(&ch->lp, text, len, false, g->srv->tok);
            if (!json_add(c, "logprobs", lp)) {
                ch->lp.failed = true;
                cJSON_Delete(o);
                return NULL;
            }
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
    }
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    return o;
}

/* chunk_build, or NULL with g->oom set when any of its cJSON allocations
 * failed (a chunk with a member missing is never sent); NULL at once once
 * g->oom is set (a stream with a hole in it is never sent either). */
static cJSON *chunk_json(struct gen_ctx *g, struct gen_choice *ch, const char *text, size_t len,
                         const char *finish, bool role)
{
    if (g->oom)
        return NULL;
    long f0 = json_alloc_failures();
    cJSON *o = chunk_build(g, ch, text, len, finish, role);
    if (json_alloc_failures() != f0) {
        cJSON_Delete(o);
        g->oom = true;
        return NULL;
    }
    return o;
}

/* One "data: <json>" event on g's stream; takes json (NULL: nothing sent). */
static void sse_send_data(struct gen_ctx *g, char *json)
{
    struct evbuffer *b = evbuffer_new();
    if (json && b) {
        evbuffer_add_printf(b, "data: %s\n\n", json);
        evhttp_send_reply_chunk(g->req, b);
    }
    if (b)
        evbuffer_free(b);
    free(json);
}

static void sse_send(struct gen_ctx *g, cJSON *obj)
{
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (obj && !s)
        g->oom = true;
    sse_send_data(g, s);
}

static void sse_start(struct gen_ctx *g)
{
    if (g->headers_sent)
        return;
    sse_prepare_request(g->req);   /* HTTP/1.0: close-delimited */
    struct evkeyvalq *h = evhttp_request_get_output_headers(g->req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_send_reply_start(g->req, 200, "OK");
    g->headers_sent = true;
    if (g->chat) /* each choice's first delta names the role */
        for (int32_t i = 0; i < g->n_choices; i++)
            sse_send(g, chunk_json(g, &g->ch[i], "", 0, NULL, true));
}

/* A data: line holding an OpenAI error object (the stream's end). */
static void sse_send_error(struct gen_ctx *g, const struct api_error *e)
{
    metrics_stream_error(&g->srv->m, g->route, e->status);
    char *json = api_error_json(e);
    if (json) {
        sse_send_data(g, json);
        return;
    }
    struct evbuffer *b = evbuffer_new();   /* the constant itself: no copy to fail */
    if (b && evbuffer_add_printf(b, "data: %s\n\n", API_ERROR_OOM_BODY) >= 0)
        evhttp_send_reply_chunk(g->req, b);
    if (b)
        evbuffer_free(b);
}

/* ---- request context lifecycle ------------------------------------------------------- */

/* Ask the engine to cancel every live choice (engine_cancel of one that
 * has just finished is a no-op there). */
static void cancel_choices(struct gen_ctx *g)
{
    for (int32_t i = 0; i < g->n_choices; i++)
        if (g->ch[i].live)
            engine_cancel(g->srv->eng, g->ch[i].id);
}

static void client_left(struct gen_ctx *g)
{
    if (g->gone)
        return;
    g->gone = true;
    g->srv->m.client_disconnects++;
    cancel_choices(g);
}

static void unwatch(struct gen_ctx *g)
{
    if (g->watch) {
        event_free(g->watch);
        g->watch = NULL;
    }
}

/* libevent 2.1 drops a failed server connection and detaches the pending
 * request from it without freeing it (the request is not "userdone"); it is
 * freed when we end the reply, which then writes nothing. */
static void on_client_close(struct evhttp_connection *conn, void *arg)
{
    struct gen_ctx *g = arg;
    (void)conn;
    g->conn_closed = true;
    unwatch(g);
    client_left(g);
}

/* evhttp reads nothing while a reply is pending, so a client that closes
 * while we compute goes unnoticed until we write.  Peek at the socket: EOF
 * (or an error) means it left; bytes (a pipelined request) end the watch. */
static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
    struct gen_ctx *g = arg;
    (void)what;
    enum conn_peer p = conn_peer_probe(fd);
    if (p == CONN_PEER_QUIET)
        return;
    unwatch(g);
    if (p == CONN_PEER_GONE)
        client_left(g);
}

static void gen_ctx_free(struct gen_ctx *g)
{
    if (!g)
        return;
    unwatch(g);
    for (int32_t i = 0; g->ch && i < g->n_choices; i++) {
        struct gen_choice *c = &g->ch[i];
        if (c->text)
            evbuffer_free(c->text);
        openai_output_free(c->out);
        lp_free(&c->lp);
        cJSON_Delete(c->lp_pending);
    }
    free(g->ch);
    free(g);
}

static void check_drained(struct server *srv)
{
    if (srv->draining && srv->m.in_flight == 0 && srv->flushing == 0)
        event_base_loopexit(srv->base, NULL);
}

static void on_drained(void *arg)
{
    check_drained(arg);
}

/* Detach from the connection before the final reply: the close callback
 * must never see a freed context; count the reply until it is written (or
 * its connection closes: flush_track.h) so shutdown does not cut it off. */
static void detach(struct gen_ctx *g, bool track)
{
    struct evhttp_connection *c = evhttp_request_get_connection(g->req);
    if (c)
        conn_closecb_set(c, NULL, NULL);
    unwatch(g);
    if (track)
        (void)flush_track(g->req, &g->srv->flushing, on_drained, g->srv); /* ENOMEM: not waited for */
}

static const char lp_oom[] = "out of memory recording the logprobs";

/* The request fails with *e (the first failure wins): in a stream whose
 * headers went out the error event goes now (request_done ends the stream
 * after it), else request_done replies with it.  The other choices are
 * cancelled; their events are ignored from now on. */
static void request_fail(struct gen_ctx *g, const struct api_error *e)
{
    if (g->failed)
        return;
    g->failed = true;
    g->fail = *e;
    if (g->stream && g->headers_sent)
        sse_send_error(g, e);
    cancel_choices(g);
}

/* g->oom (a piece of the answer is lost): fail the request now - the
 * error event, or the 500 at the end - and stop its generation, rather
 * than decode to max_tokens for an answer never sent. */
static void fail_if_oom(struct gen_ctx *g)
{
    if (!g->oom)
        return;
    struct api_error e;
    api_error_set(&e, 500, "server_error", NULL, NULL, "%s", answer_oom);
    request_fail(g, &e);
}

/* Choice c's DONE event (the client still there): record its numbers; in
 * a stream send the rest of its text and its own finish chunk, or fail the
 * request with its error. */
static void choice_done(struct gen_ctx *g, struct gen_choice *c, const struct engine_event *ev)
{
    struct api_error e;
    const bool bad = ev->status || ev->finish == FINISH_ERROR || ev->finish == FINISH_CANCELLED;
    if (g->failed)
        return;
    if (ev->status && !g->headers_sent) { /* rejected (400) or failed before any output */
        if (ev->status == 400)
            api_error_set(&e, 400, "invalid_request_error", "context_length_exceeded",
                          g->chat ? "messages" : "prompt", "%s", ev->error ? ev->error : "bad request");
        else
            api_error_set(&e, 500, "server_error", NULL, NULL, "%s", ev->error ? ev->error : "engine failure");
        request_fail(g, &e);
        return;
    }
    if (ev->finish == FINISH_CANCELLED && !g->headers_sent) {
        api_error_set(&e, 503, "server_error", "cancelled", NULL,
                      "The request was cancelled: the server is shutting down");
        request_fail(g, &e);
        return;
    }
    if (!g->stream) {
        if (ev->text_len && evbuffer_add(c->text, ev->text, ev->text_len))
            g->oom = true;
        if (bad || (g->logprobs && c->lp.failed) || g->oom) {
            api_error_set(&e, 500, "server_error", NULL, NULL, "%s",
                          ev->error ? ev->error : bad ? "engine failure" : g->oom ? answer_oom : lp_oom);
            request_fail(g, &e);
            return;
        }
        return;
    }
    sse_start(g);
    if (ev->text_len)
        sse_send(g, chunk_json(g, c, ev->text, ev->text_len, NULL, false));
    /* the finish chunk carries chat's pending logprobs: made before the
     * choice between it and the error event */
    cJSON *last = bad || c->lp.failed ? NULL : chunk_json(g, c, NULL, 0, c->finish, false);
    if (bad || (g->logprobs && c->lp.failed) || g->oom) {
        cJSON_Delete(last);
        api_error_set(&e, 500, "server_error", ev->finish == FINISH_CANCELLED ? "cancelled" : NULL, NULL, "%s",
                      ev->error ? ev->error : bad ? "generation cancelled (server shutting down)"
                                              : g->oom ? answer_oom : lp_oom);
        request_fail(g, &e);
        return;
    }
    sse_send(g, last);
    fail_if_oom(g);   /* the last chunk could not be printed */
}

/* Every submitted choice is DONE: count the request, then answer it - the
 * end of the stream (the usage chunk, [DONE]), the failure, or the whole
 * reply with every choice in index order. */
static void request_done(struct server *srv, struct gen_ctx *g)
{
    double t = now_s();
    int32_t n_prompt, n_generated, n_cached;
    usage_totals(g, &n_prompt, &n_generated, &n_cached);
    srv->m.prompt_tokens += (uint64_t)n_prompt;
    srv->m.generated_tokens += (uint64_t)n_generated;
    srv->m.cached_prompt_tokens += (uint64_t)n_cached;
    metrics_tenant_done(&srv->m, g->tenant, n_prompt, n_generated, n_cached);
    if (!g->failed && !g->gone && !g->conn_closed)
        histogram_observe(&srv->m.e2e, t - g->t0);
    if (g->conn_closed || g->gone) {
        /* the peer left: end the exchange so that libevent frees the request
         * (at once when the connection is already gone) */
        if (!g->conn_closed)
            detach(g, false);
        if (g->headers_sent) {
            evhttp_send_reply_end(g->req);
        } else {
            evhttp_send_reply(g->req, 499, "Client Closed Request", NULL);
        }
        metrics_request(&srv->m, g->route, 499);
        return;
    }
    detach(g, true);
    if (g->failed && !g->headers_sent) {
        reply_error(srv, g->req, g->route, &g->fail);
        return;
    }
    if (g->stream) {
        if (!g->failed && g->include_usage) {
            long f0 = json_alloc_failures();
            cJSON *o = base_object(g, g->chat ? "chat.completion.chunk" : "text_completion");
            cJSON_AddArrayToObject(o, "choices");
            json_add(o, "usage", usage_json(g));   /* a failure is counted (f0) */
            char *text = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            if (!text || json_alloc_failures() != f0) {
                /* the stream ends with the error event, not a usage chunk
                 * with a member missing */
                free(text);
                struct api_error e;
                api_error_set(&e, 500, "server_error", NULL, NULL, "%s", answer_oom);
                sse_send_error(g, &e);
            } else {
                sse_send_data(g, text);
            }
        }
        struct evbuffer *b = evbuffer_new();
        if (b) {
            evbuffer_add_printf(b, "data: [DONE]\n\n");
            evhttp_send_reply_chunk(g->req, b);
            evbuffer_free(b);
        }
        evhttp_send_reply_end(g->req);
        metrics_request(&srv->m, g->route, 200);
        return;
    }
    long f0 = json_alloc_failures();
    bool texts_ok = true;
    cJSON *o = base_object(g, g->chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    for (int32_t i = 0; i < g->n_choices; i++) {
        struct gen_choice *ch = &g->ch[i];
        size_t len = evbuffer_get_length(ch->text);
        const char *text = len ? (const char *)evbuffer_pullup(ch->text, -1) : "";
        const char *finish = ch->finish;
        cJSON *c = cJSON_CreateObject();
        if (!json_add(choices, NULL, c))
            c = NULL;   /* freed; counted: the reply is a 500 */
        cJSON_AddNumberToObject(c, "index", ch->index);
        if (g->chat) {
            cJSON *msg = cJSON_AddObjectToObject(c, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            finish = openai_output_message(ch->out, text, len, finish, msg);
        } else {
            texts_ok = texts_ok && add_text(c, "text", text, len);
        }
        if (g->logprobs) {
            /* chat: every listed token, a tool call's included (its message
             * content is null, its tokens are still generated text) */
            cJSON *lp = lp_take(&ch->lp, text, len, g->chat, srv->tok);
            if (g->chat ? !lp || !chat_logprobs_add(c, lp) : !json_add(c, "logprobs", lp)) {
                cJSON_Delete(o);
                struct api_error e;
                api_error_set(&e, 500, "server_error", NULL, NULL, "%s", lp_oom);
                reply_error(srv, g->req, g->route, &e);
                return;
            }
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
        cJSON_AddStringToObject(c, "finish_reason", finish);
    }
    json_add(o, "usage", usage_json(g));   /* a failure is counted (f0) */
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s || !texts_ok || json_alloc_failures() != f0) {
        /* a 500, never a 200 with a member (or the whole body) missing */
        free(s);
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "%s", answer_oom);
        reply_error(srv, g->req, g->route, &e);
        return;
    }
    reply_json(srv, g->req, g->route, 200, s);
    free(s);
}

static void on_engine_events(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    (void)fd;
    (void)what;
    struct engine_event *list = engine_take_events(srv->eng);
    for (struct engine_event *ev = list; ev; ev = ev->next) {
        if (tasks_api_owns_event(ev)) {
            tasks_api_engine_event(srv->tasks, ev);
            continue;
        }
        struct gen_choice *c = ev->user;
        struct gen_ctx *g = c->g;
        if (ev->kind == ENGINE_EV_TOKEN) {
            double t = now_s();
            if (!g->first_token)
                histogram_observe(&srv->m.ttft, t - g->t0);
            else if (c->n_seen)
                histogram_observe(&srv->m.itl, t - c->t_last);
            g->first_token = true;
            c->n_seen++;
            c->t_last = t;
            if (g->gone || g->failed)
                continue;
            if (g->logprobs && ev->has_logprob)
                lp_add(&c->lp, ev); /* takes ev->piece */
            if (g->stream) {
                sse_start(g);
                if (ev->text_len)
                    sse_send(g, chunk_json(g, c, ev->text, ev->text_len, NULL, false));
            } else if (ev->text_len && evbuffer_add(c->text, ev->text, ev->text_len)) {
                g->oom = true;
            }
            fail_if_oom(g);
            continue;
        }
        c->live = false;
        g->n_live--;
        c->finish = ev->finish == FINISH_LENGTH ? "length" : "stop";
        c->n_prompt = ev->n_prompt;
        c->n_cached = ev->n_cached;
        c->n_generated = ev->n_generated;
        if (!g->gone && !g->conn_closed)
            choice_done(g, c, ev);
        if (g->n_live > 0)
            continue;
        request_done(srv, g);
        gen_ctx_free(g);
        srv->m.in_flight--;
        check_drained(srv);
    }
    engine_events_free(list);
}

/* ---- routes ------------------------------------------------------------------------------ */

static void handle_generate(struct server *srv, struct evhttp_request *req, bool chat,
                            const struct caller *who)
{
    enum metrics_route route = chat ? ROUTE_CHAT : ROUTE_COMPLETIONS;
    struct api_error e;
    if (srv->draining) {
        api_error_set(&e, 503, "server_error", "shutting_down", NULL, "The server is shutting down");
        reply_error(srv, req, route, &e);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > (size_t)srv->cfg.max_body_bytes) {
        api_error_set(&e, 413, "invalid_request_error", "request_too_large", NULL,
                      "The request body has %zu bytes; the limit is %d (max_body_bytes)", len,
                      (int)srv->cfg.max_body_bytes);
        reply_error(srv, req, route, &e);
        return;
    }
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    struct gen_params p;
    struct openai_options oo = { .vocab = srv->gvocab };
    if (openai_parse_ex(body, len, chat, srv->model_names, srv->tmpl, srv->model->hp.n_vocab, &oo, &p, &e)) {
        reply_error(srv, req, route, &e);
        return;
    }
    const int32_t n = p.n > 0 ? p.n : 1;
    struct gen_ctx *g = calloc(1, sizeof *g);
    bool ok = g && (g->ch = calloc((size_t)n, sizeof *g->ch));
    if (ok)
        g->n_choices = n;
    long long pc = 0;
    if (ok && p.logprobs && !chat) {
        /* text_offset counts from the start of the prompt text */
        pc = prompt_chars(srv->tok, p.prompt, p.prompt_ids, p.n_prompt_ids);
        ok = pc >= 0;
    }
    for (int32_t i = 0; ok && i < n; i++) {
        struct gen_choice *c = &g->ch[i];
        c->g = g;
        c->index = i;
        c->lp.chars = (size_t)pc;
        if (!p.stream && !(c->text = evbuffer_new()))
            ok = false;
        if (i > 0 && p.output && !(c->out = openai_output_another(p.output)))
            ok = false;   /* every choice shapes its own tool call (own call id) */
    }
    if (!ok) {
        gen_ctx_free(g);
        gen_params_free(&p);
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        reply_error(srv, req, route, &e);
        return;
    }
    g->srv = srv;
    g->req = req;
    g->tenant = who->tenant;
    g->route = route;
    g->chat = chat;
    g->stream = p.stream;
    g->include_usage = p.include_usage;
    g->logprobs = p.logprobs;
    g->ch[0].out = p.output;
    p.output = NULL;
    g->created = time(NULL);
    g->t0 = now_s();
    snprintf(g->cid, sizeof g->cid, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)++srv->next_cmpl);
    int32_t priority = p.has_priority ? p.priority : who->priority;
    if (priority > who->max_priority)
        priority = who->max_priority;
    /* n > 1: one engine sequence per choice, in one prompt group (the
     * prompt computed once, its KV blocks shared: scheduler.h), choice i
     * seeded with seed + i (choice 0 is the n = 1 answer) */
    struct engine_request er = {
        .tenant = who->tenant, .priority = priority, .prompt = p.prompt, .parse_special = !chat,
        .special_spans = chat ? p.prompt_markup : NULL, .n_special_spans = chat ? (int32_t)p.n_prompt_markup : 0,
        .add_bos = true, .prompt_ids = p.prompt_ids, .n_prompt_ids = p.n_prompt_ids,
        .max_tokens = p.max_tokens, .sampling = p.sp, .stop = (const char *const *)p.stop,
        .n_stop = p.n_stop, .ignore_eos = p.ignore_eos, .logprobs = p.logprobs,
        .top_logprobs = p.top_logprobs, .logit_bias = p.logit_bias, .n_logit_bias = p.n_logit_bias,
        .constraint = gen_params_constraint(&p), .prompt_group = n > 1 ? srv->next_cmpl : 0,
    };
    if (!er.prompt && !er.n_prompt_ids) {
        gen_ctx_free(g);
        gen_params_free(&p);
        api_error_set(&e, 400, "invalid_request_error", "invalid_value", chat ? "messages" : "prompt",
                      "the prompt is empty");
        reply_error(srv, req, route, &e);
        return;
    }
    /* all choices in one submit: the engine schedules the group together */
    struct engine_request *ers = malloc((size_t)n * sizeof *ers);
    uint64_t *ids = malloc((size_t)n * sizeof *ids);
    int rc = ers && ids ? PS_OK : ps_error_set(PS_ENOMEM, "out of memory");
    for (int32_t i = 0; i < n && !rc; i++) {
        ers[i] = er;
        ers[i].sampling.seed = p.sp.seed + (uint64_t)i;
        ers[i].user = &g->ch[i];
    }
    if (!rc && !(rc = engine_submit_many(srv->eng, ers, n, ids))) {
        for (int32_t i = 0; i < n; i++) {
            g->ch[i].id = ids[i];
            g->ch[i].live = true;
        }
        g->n_live = n;
    }
    free(ers);
    free(ids);
    gen_params_free(&p);
    if (rc) { /* nothing was submitted */
        gen_ctx_free(g);
        api_error_set(&e, 500, "server_error", NULL, NULL, "%s", ps_error_last());
        reply_error(srv, req, route, &e);
        return;
    }
    srv->m.in_flight++;
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    conn_closecb_set(conn, on_client_close, g);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(conn);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0 && (g->watch = event_new(srv->base, fd, EV_READ | EV_PERSIST, on_client_readable, g)))
        event_add(g->watch, NULL);
}

/* The served model as an OpenAI model object (NULL when out of memory). */
static cJSON *model_object(struct server *srv)
{
    struct engine_stats es;
    engine_get_stats(srv->eng, &es);
    cJSON *mo = cJSON_CreateObject(), *meta = NULL;
    if (!mo || !cJSON_AddStringToObject(mo, "id", srv->model_name) ||
        !cJSON_AddStringToObject(mo, "object", "model") ||
        !cJSON_AddNumberToObject(mo, "created", (double)srv->created) ||
        !cJSON_AddStringToObject(mo, "owned_by", "paraserve") || !(meta = cJSON_AddObjectToObject(mo, "meta")) ||
        !cJSON_AddNumberToObject(meta, "n_ctx", es.n_ctx) ||
        !cJSON_AddNumberToObject(meta, "n_vocab", srv->model->hp.n_vocab) ||
        !cJSON_AddStringToObject(meta, "arch", srv->model->hp.arch_name)) {
        cJSON_Delete(mo);
        return NULL;
    }
    return mo;
}

static void reply_object(struct server *srv, struct evhttp_request *req, cJSON *o /* taken */)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) {
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        reply_error(srv, req, ROUTE_MODELS, &e);
        return;
    }
    reply_json(srv, req, ROUTE_MODELS, 200, s);
    free(s);
}

/* GET /v1/models: the list, of one. */
static void handle_models(struct server *srv, struct evhttp_request *req)
{
    cJSON *o = cJSON_CreateObject(), *data = NULL, *mo = model_object(srv);
    if (!o || !mo || !cJSON_AddStringToObject(o, "object", "list") || !(data = cJSON_AddArrayToObject(o, "data")) ||
        !cJSON_AddItemToArray(data, mo)) {
        if (!data || !cJSON_GetArraySize(data))
            cJSON_Delete(mo);
        cJSON_Delete(o);
        o = NULL;
    }
    reply_object(srv, req, o);
}

/* GET /v1/models/{model} (the SDK's models.retrieve): the model object for
 * any name a request may give it (the model's name, its alias, "default",
 * the file's basename), else 404 model_not_found. */
static void handle_model(struct server *srv, struct evhttp_request *req, const char *name_enc)
{
    char *name = evhttp_uridecode(name_enc, 0, NULL);
    int known = 0;
    for (int i = 0; name && srv->model_names[i]; i++)
        known |= !strcmp(name, srv->model_names[i]);
    if (!known) {
        struct api_error e;
        char shown[128];
        snprintf(shown, sizeof shown, "%.100s", name ? name : name_enc);
        size_t n;
        char *clean = utf8_sanitize(shown, strlen(shown), &n);
        api_error_set(&e, 404, "invalid_request_error", "model_not_found", "model",
                      "The model '%s' does not exist; this server serves '%s'", clean ? clean : "",
                      srv->model_name);
        free(clean);
        free(name);
        reply_error(srv, req, ROUTE_MODELS, &e);
        return;
    }
    free(name);
    reply_object(srv, req, model_object(srv));
}

/* A scrape that could not be rendered: 500, counted as such (not as the
 * 200 its page already counted). */
static void metrics_oom(struct server *srv, struct evhttp_request *req)
{
    srv->m.requests[ROUTE_METRICS][200]--;
    struct api_error e;
    api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory while rendering the metrics");
    reply_error(srv, req, ROUTE_METRICS, &e);
}

static void handle_metrics(struct server *srv, struct evhttp_request *req)
{
    struct engine_stats es;
    engine_get_stats(srv->eng, &es);
    metrics_request(&srv->m, ROUTE_METRICS, 200); /* count this scrape in its own output */
    struct metrics_orch orch;
    int orch_ok = srv->tasks && !tasks_api_metrics(srv->tasks, &orch);
    /* without the orchestration numbers (out of memory) the scrape is a 500,
     * not a page that silently lacks them */
    char *text = !srv->tasks || orch_ok ? metrics_render(&srv->m, &es, srv->model_name, orch_ok ? &orch : NULL) : NULL;
    if (orch_ok)
        free((void *)orch.agents);
    struct evbuffer *out = is_head(req) ? NULL : evbuffer_new();
    if (!text || (!is_head(req) && !out)) {
        /* a page missing what could not be rendered would read as zeros */
        if (out)
            evbuffer_free(out);
        free(text);
        metrics_oom(srv, req);
        return;
    }
    if (out) {
        bool failed = evbuffer_add(out, text, strlen(text)) != 0;
        /* the local agents' port (its own tracker, m_local) */
        const struct metrics *l = &srv->m_local;
        failed |= evbuffer_add_printf(out,
                            "# HELP paraserve_local_connections_open Connections open on the local agents' port.\n"
                            "# TYPE paraserve_local_connections_open gauge\n"
                            "paraserve_local_connections_open %d\n"
                            "# HELP paraserve_local_connections_max Cap on the local agents' port (0: no port).\n"
                            "# TYPE paraserve_local_connections_max gauge\n"
                            "paraserve_local_connections_max %d\n"
                            "# HELP paraserve_local_connections_accepted_total Connections accepted on the local "
                            "agents' port.\n"
                            "# TYPE paraserve_local_connections_accepted_total counter\n"
                            "paraserve_local_connections_accepted_total %llu\n",
                            (int)l->conns_open, srv->conns_local ? (int)l->conns_max : 0,
                            (unsigned long long)l->conns_accepted) < 0;
        if (failed) {
            evbuffer_free(out);
            free(text);
            metrics_oom(srv, req);
            return;
        }
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, "OK", out);
    if (out)
        evbuffer_free(out);
    free(text);
}

#ifdef PS_FAULT_INJECTION
/* Test builds (PARASERVE_FAULT_INJECTION): POST /debug/fail-json-alloc?after=N
 * makes the N-th cJSON allocation on this loop's thread from now on fail
 * (0: none); GET reads the thread's counts.  The reply is built without
 * cJSON, so arming costs no allocation of the count.  Answers
 * {"allocs":A,"failures":F}: the thread's cJSON allocations and failed
 * ones so far. */
static void handle_fail_json_alloc(struct server *srv, struct evhttp_request *req)
{
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    struct api_error e;
    long after = -1;
    if (method == EVHTTP_REQ_POST) {
        const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
        char *endp = NULL;
        if (q && !strncmp(q, "after=", 6)) {
            errno = 0;
            after = strtol(q + 6, &endp, 10);
        }
        if (!endp || *endp || errno || after < 0) {
            api_error_set(&e, 400, "invalid_request_error", "invalid_value", "after",
                          "POST /debug/fail-json-alloc?after=N (N >= 0; 0 disarms)");
            reply_error(srv, req, ROUTE_OTHER, &e);
            return;
        }
        json_alloc_fail_after(after);
    } else if (method != EVHTTP_REQ_GET) {
        reply_method(srv, req, ROUTE_OTHER, "/debug/fail-json-alloc", "GET, POST, OPTIONS");
        return;
    }
    char body[160];
    snprintf(body, sizeof body, "{\"allocs\":%ld,\"failures\":%ld}", json_alloc_count(), json_alloc_failures());
    reply_json(srv, req, ROUTE_OTHER, 200, body);
}

/* POST /debug/fail-decisions?n=N: the next N model decisions of /v1/tasks
 * end as engine failures (tasks_api_fail_decisions). */
static void handle_fail_decisions(struct server *srv, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        reply_method(srv, req, ROUTE_OTHER, "/debug/fail-decisions", "POST, OPTIONS");
        return;
    }
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    char *endp = NULL;
    long n = -1;
    if (q && !strncmp(q, "n=", 2)) {
        errno = 0;
        n = strtol(q + 2, &endp, 10);
    }
    if (!endp || *endp || errno || n < 0 || n > 1000000 || !srv->tasks) {
        struct api_error e;
        api_error_set(&e, 400, "invalid_request_error", "invalid_value", "n",
                      "POST /debug/fail-decisions?n=N (0 <= N <= 1000000; 0 disarms)");
        reply_error(srv, req, ROUTE_OTHER, &e);
        return;
    }
    tasks_api_fail_decisions(srv->tasks, (int)n);
    reply_json(srv, req, ROUTE_OTHER, 200, "{}");
}
#endif

/* Constant-time comparison of a presented key with a configured one. */
static bool key_equal(const char *given, size_t glen, const char *key)
{
    size_t klen = strlen(key);
    unsigned char diff = (unsigned char)(glen != klen);
    for (size_t i = 0; i < klen; i++)
        diff |= (unsigned char)(key[i] ^ (i < glen ? given[i] : 0));
    return diff == 0;
}

/* Authenticate a request to a /v1/ route.  No keys configured: everyone is tenant 0
 * with the API's priority range.  Else "Authorization: Bearer KEY" must
 * name a configured key; false after answering 401 (OpenAI error body). */
static bool authenticate(struct server *srv, struct evhttp_request *req, enum metrics_route route,
                         struct caller *who)
{
    *who = (struct caller){ .tenant = 0, .priority = 0, .max_priority = 1000000 };
    if (srv->cfg.n_api_keys == 0)
        return true;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    struct api_error e;
    if (h && !evutil_ascii_strncasecmp(h, "Bearer ", 7)) {
        const char *k = h + 7;
        while (*k == ' ')
            k++;
        size_t kl = strlen(k);
        while (kl > 0 && k[kl - 1] == ' ')
            kl--;
        int found = -1;
        for (int32_t i = 0; i < srv->cfg.n_api_keys; i++)
            if (key_equal(k, kl, srv->cfg.api_keys[i].key) && found < 0)
                found = i;
        if (found >= 0) {
            const struct server_api_key *ak = &srv->cfg.api_keys[found];
            *who = (struct caller){ .tenant = srv->key_tenant[found], .priority = ak->priority,
                                    .max_priority = ak->max_priority };
            return true;
        }
        api_error_set(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                      "Incorrect API key provided. Send a configured key as \"Authorization: Bearer KEY\".");
    } else {
        api_error_set(&e, 401, "invalid_request_error", "missing_api_key", NULL,
                      "You didn't provide an API key. This server requires \"Authorization: Bearer KEY\" "
                      "on /v1/ routes.");
    }
    srv->m.auth_failures++;
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    reply_error(srv, req, route, &e);
    return false;
}

/* Ambiguous body framing (RFC 9112 6.3): Content-Length repeated with
 * different values.  libevent reads the body by the first one and ignores
 * the rest; a proxy in front may have used another, so such a request is
 * refused and its connection closed rather than guessed at (request
 * smuggling).  Content-Length beside Transfer-Encoding libevent refuses
 * itself (guard_output makes that reply OpenAI-shaped). */
static bool conflicting_content_length(struct evhttp_request *req)
{
    const struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *cl = NULL;
    for (const struct evkeyval *h = in->tqh_first; h; h = h->next.tqe_next) {
        if (evutil_ascii_strcasecmp(h->key, "Content-Length"))
            continue;
        if (cl && strcmp(cl, h->value))
            return true;
        cl = h->value;
    }
    return false;
}

/* One request; `local`: the local agents' port (authenticated by its
 * token; runs as the tenant SERVER_TENANT_HEADER names, with that tenant's
 * priority bounds, else as tenant 0 with the API's whole range).  The
 * client port never reads that header: its tenant is the API key's. */
static void serve_request(struct server *srv, struct evhttp_request *req, bool local)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    struct api_error e;
    if (!local)
        conn_limit_request(srv->conns, req); /* no idle timeout while it is served */
    if (!path || !*path)
        path = "/";
    cors_on_request(req, srv->cfg.cors_origins);
    if (conflicting_content_length(req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        api_error_set(&e, 400, "invalid_request_error", "malformed_request", NULL,
                      "Ambiguous request framing: Content-Length given twice with different values");
        reply_error(srv, req, ROUTE_OTHER, &e);
        return;
    }
    /* OPTIONS needs no key: it lists a route's methods, and a browser's CORS
     * preflight carries no credentials */
    struct caller who = { .tenant = 0, .priority = 0, .max_priority = 1000000 };
    const char *tenant = local ? evhttp_find_header(evhttp_request_get_input_headers(req), SERVER_TENANT_HEADER)
                               : NULL;
    if (tenant) {
        uint32_t t;
        if (server_tenant_id_parse(tenant, (uint32_t)srv->m.n_tenants, &t)) {
            api_error_set(&e, 400, "invalid_request_error", "invalid_tenant", NULL, "%s: %s", SERVER_TENANT_HEADER,
                          ps_error_last());
            reply_error(srv, req, ROUTE_OTHER, &e);
            return;
        }
        who = (struct caller){ .tenant = t, .priority = srv->tenant_priority[t],
                               .max_priority = srv->tenant_max_priority[t] };
    }
    if (!local && (!strncmp(path, "/v1/", 4) || !strcmp(path, "/v1")) && method != EVHTTP_REQ_OPTIONS &&
        !authenticate(srv, req, tasks_api_route(path) ? ROUTE_OTHER : !strcmp(path, "/v1/chat/completions")
                                ? ROUTE_CHAT : !strcmp(path, "/v1/completions") ? ROUTE_COMPLETIONS
                                : !strncmp(path, "/v1/models", 10) && (!path[10] || path[10] == '/') ? ROUTE_MODELS
                                : ROUTE_OTHER, &who))
        return;
    if (tasks_api_route(path)) {
        tasks_api_handle(srv->tasks, req, path, who.tenant);
        return;
    }
#ifdef PS_FAULT_INJECTION
    if (!local && !strcmp(path, "/debug/fail-json-alloc")) {
        handle_fail_json_alloc(srv, req);
        return;
    }
    if (!local && !strcmp(path, "/debug/fail-decisions")) {
        handle_fail_decisions(srv, req);
        return;
    }
#endif

    static const struct { const char *path; enum metrics_route route; enum evhttp_cmd_type method; } routes[] = {
        { "/v1/chat/completions", ROUTE_CHAT, EVHTTP_REQ_POST },
        { "/v1/completions", ROUTE_COMPLETIONS, EVHTTP_REQ_POST },
        { "/v1/models", ROUTE_MODELS, EVHTTP_REQ_GET },
        { "/health", ROUTE_HEALTH, EVHTTP_REQ_GET },
        { "/metrics", ROUTE_METRICS, EVHTTP_REQ_GET },
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(path, routes[i].path))
            continue;
        if (method != routes[i].method && !(method == EVHTTP_REQ_HEAD && routes[i].method == EVHTTP_REQ_GET)) {
            reply_method(srv, req, routes[i].route, path,
                         routes[i].method == EVHTTP_REQ_POST ? "POST, OPTIONS" : "GET, HEAD, OPTIONS");
            return;
        }
        switch (routes[i].route) {
        case ROUTE_CHAT: handle_generate(srv, req, true, &who); return;
        case ROUTE_COMPLETIONS: handle_generate(srv, req, false, &who); return;
        case ROUTE_MODELS: handle_models(srv, req); return;
        case ROUTE_HEALTH:
            if (srv->draining)
                reply_json(srv, req, ROUTE_HEALTH, 503, "{\"status\":\"shutting_down\"}");
            else
                reply_json(srv, req, ROUTE_HEALTH, 200, "{\"status\":\"ok\"}");
            return;
        case ROUTE_METRICS: handle_metrics(srv, req); return;
        default: break;
        }
    }
    if (!strncmp(path, "/v1/models/", 11) && path[11] && !strchr(path + 11, '/')) {
        if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
            reply_method(srv, req, ROUTE_MODELS, "/v1/models/{model}", "GET, HEAD, OPTIONS");
            return;
        }
        handle_model(srv, req, path + 11);
        return;
    }
    char shown[128];
    snprintf(shown, sizeof shown, "%.100s", path);
    size_t n;
    char *clean = utf8_sanitize(shown, strlen(shown), &n);
    api_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "Unknown path %s", clean ? clean : "");
    free(clean);
    reply_error(srv, req, ROUTE_OTHER, &e);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    serve_request(arg, req, false);
}

/* The local agents' port: POST /v1/chat/completions with the token only
 * (403 without it, 404 for any other route: nothing else is served here). */
static void on_request_local(struct evhttp_request *req, void *arg)
{
    struct server *srv = arg;
    conn_limit_request(srv->conns_local, req);
    const char *tok = evhttp_find_header(evhttp_request_get_input_headers(req), SERVER_LOCAL_HEADER);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct api_error e;
    if (!tok || !key_equal(tok, strlen(tok), srv->local_token)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        api_error_set(&e, 403, "invalid_request_error", "forbidden", NULL,
                      "This port serves the server's own local agents only");
        reply_error(srv, req, ROUTE_OTHER, &e);
        return;
    }
    if (!path || strcmp(path, "/v1/chat/completions") || evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        api_error_set(&e, 404, "invalid_request_error", "not_found", NULL,
                      "The local agents' port serves POST /v1/chat/completions only");
        reply_error(srv, req, ROUTE_OTHER, &e);
        return;
    }
    serve_request(srv, req, true);
}

/* ---- libevent's own error pages made OpenAI-shaped ----------------------------------
 *
 * libevent 2.1 answers some requests itself, before any callback of ours
 * runs, with an HTML page and "Connection: close": a body beyond evhttp's
 * max_body_size (by Content-Length, or chunked as it arrives) or headers
 * beyond max_headers_size (413), a malformed request line, header,
 * Content-Length or chunk framing (400; a malformed chunk size gets 413,
 * which the rewritten body names as a possible cause), and
 * a method it does not know or allow (501).  libevent 2.1 has no hook for
 * these, so each connection's socket bufferevent (evhttp_set_bevcb; the
 * same kind evhttp makes itself) carries a callback on its output buffer
 * that replaces such a page with the OpenAI error body.  The page is
 * recognised at the front of the output (evhttp writes the next response
 * only once the previous one has gone out) by its status line and
 * Content-Type text/html (no reply of ours is HTML), and rewritten as soon
 * as it is complete: evhttp adds it in one go, before the socket can write
 * any of it.  Bodies between max_body_bytes and the cap reach the handlers,
 * which answer the same JSON as the 413 here. */
#define SERVER_MAX_HEADERS_BYTES (64 * 1024)   /* request line + headers */

static void guard_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct server *srv = arg;
    char head[13];   /* "HTTP/1.x NNN " */
    if (!info->n_added)
        return;
    size_t n = evbuffer_get_length(buf);
    if (n < sizeof head || evbuffer_copyout(buf, head, sizeof head) != (ev_ssize_t)sizeof head ||
        memcmp(head, "HTTP/1.", 7) || head[8] != ' ' || head[12] != ' ' || head[9] < '1' || head[9] > '5' ||
        head[10] < '0' || head[10] > '9' || head[11] < '0' || head[11] > '9')
        return;
    int status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
    if (status < 400)
        return;
    struct evbuffer_ptr end = evbuffer_search(buf, "\r\n\r\n", 4, NULL);
    char hdr[4096];
    if (end.pos < 0 || (size_t)end.pos + 4 >= sizeof hdr)
        return;
    size_t hlen = (size_t)end.pos + 4;
    if (evbuffer_copyout(buf, hdr, hlen) != (ev_ssize_t)hlen)
        return;
    hdr[hlen] = '\0';
    for (char *p = hdr; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    const char *cl = strstr(hdr, "\r\ncontent-length:");
    if (!cl || !strstr(hdr, "\r\ncontent-type: text/html"))
        return;
    size_t body = (size_t)strtoull(cl + 17, NULL, 10);
    if (n != hlen + body)
        return;
    struct api_error e;
    const char *reason = api_http_reason(status);
    switch (status) {
    case 413:
        api_error_set(&e, 413, "invalid_request_error", "request_too_large", NULL,
                      "The request is too large: the body is limited to %d bytes (max_body_bytes), the request "
                      "line and headers to %d bytes; or its chunked framing is malformed (a chunk size that is "
                      "not hex digits, or out of range: libevent answers both with 413)",
                      (int)srv->cfg.max_body_bytes, SERVER_MAX_HEADERS_BYTES);
        break;
    case 501:
        api_error_set(&e, 501, "invalid_request_error", "unsupported_method", NULL,
                      "The HTTP method is not supported: use GET, POST or DELETE");
        break;
    case 400:
        api_error_set(&e, 400, "invalid_request_error", "malformed_request", NULL,
                      "Malformed HTTP request: bad request line, header, Content-Length or chunked framing");
        break;
    default:
        api_error_set(&e, status, status >= 500 ? "server_error" : "invalid_request_error", NULL, NULL,
                      "The HTTP request failed with status %d", status);
        break;
    }
    char *json = api_error_json(&e);
    char reply[1024];
    int len = snprintf(reply, sizeof reply,
                       "HTTP/1.%c %d %s\r\nContent-Type: application/json\r\n"
                       "Connection: close\r\nContent-Length: %zu\r\n\r\n%s\n",
                       head[7], status, reason ? reason : "Error", strlen(json ? json : API_ERROR_OOM_BODY) + 1,
                       json ? json : API_ERROR_OOM_BODY);
    free(json);
    if (len <= 0 || (size_t)len >= sizeof reply)
        return;
    /* the socket bufferevent freezes the front of its output: only it drains */
    evbuffer_unfreeze(buf, 1);
    if (!evbuffer_drain(buf, n))
        evbuffer_prepend(buf, reply, (size_t)len);
    evbuffer_freeze(buf, 1);
    metrics_request(&srv->m, ROUTE_OTHER, status);
}

/* A guarded socket bufferevent for a new connection, counted by `cl`
 * (NULL: not yet tracked).  NULL: evhttp makes its own (the HTML 413 then
 * goes out as is); either way out of memory: the connection goes uncounted
 * (conn_limit.h). */
static struct bufferevent *guard_bufferevent(struct event_base *base, struct server *srv, struct conn_limit *cl)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    if (bev && !evbuffer_add_cb(bufferevent_get_output(bev), guard_output, srv)) {
        bufferevent_free(bev);
        bev = NULL;
    }
    if (bev && cl)
        (void)conn_limit_accepted(cl, bev);
    return bev;
}

/* evhttp's bevcb: once per accepted connection, so it is also where the
 * connection is counted (conn_limit.h). */
static struct bufferevent *guard_new(struct event_base *base, void *arg)
{
    struct server *srv = arg;
    return guard_bufferevent(base, srv, srv->conns);
}

/* The local agents' port: the same output guard, counted by its own
 * tracker (conns_local). */
static struct bufferevent *guard_new_local(struct event_base *base, void *arg)
{
    struct server *srv = arg;
    return guard_bufferevent(base, srv, srv->conns_local);
}

/* The limits both ports share: bodies (max_body: libevent's hard cap),
 * headers and methods. */
static void http_limits(struct evhttp *http, ev_ssize_t max_body)
{
    evhttp_set_max_body_size(http, max_body);
    evhttp_set_max_headers_size(http, SERVER_MAX_HEADERS_BYTES);   /* libevent's default: unbounded */
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
}

/* Open the local agents' port: a second evhttp on the same loop, bound to
 * 127.0.0.1:0, with the main server's limits but not its connection cap
 * (local_limit adds its own once the pool is known).  Writes its
 * chat-completions URL and the "Name: token" header line local agents
 * send.  A failure leaves no port (the caller warns and serves without:
 * local agents then fail with "need a served model"). */
static int local_listen(struct server *srv, ev_ssize_t max_body, char *url, size_t url_size, char *hdr,
                        size_t hdr_size)
{
    unsigned char rnd[16];
    size_t got = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        got = fread(rnd, 1, sizeof rnd, f);
        fclose(f);
    }
    if (got != sizeof rnd)
        return ps_error_set(PS_EIO, "cannot read /dev/urandom for the local agents' token");
    metrics_init(&srv->m_local);
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(srv->local_token + 2 * i, 3, "%02x", rnd[i]);
    srv->http_local = evhttp_new(srv->base);
    if (!srv->http_local)
        return ps_error_set(PS_EINTERNAL, "libevent: cannot create the local agents' http server");
    http_limits(srv->http_local, max_body);
    evhttp_set_gencb(srv->http_local, on_request_local, srv);
    evhttp_set_bevcb(srv->http_local, guard_new_local, srv);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(srv->http_local, "127.0.0.1", 0);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (!sock || getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&sa, &sl) ||
        sa.sin_family != AF_INET) {
        evhttp_free(srv->http_local);
        srv->http_local = NULL;
        return ps_error_set(PS_EIO, "cannot listen on 127.0.0.1 for the local agents");
    }
    srv->sock_local = sock;
    snprintf(url, url_size, "http://127.0.0.1:%d/v1/chat/completions", (int)ntohs(sa.sin_port));
    snprintf(hdr, hdr_size, "%s: %s", SERVER_LOCAL_HEADER, srv->local_token);
    return PS_OK;
}

/* The local agents' port's connection cap: the calls the pool's local
 * agents may have in flight at once plus SERVER_LOCAL_SLACK (connections
 * being closed, refused token-less clients), at most half the descriptor
 * reserve (each local call holds two: the executor's end and the port's);
 * its idle timeout (the server's) and accept-error pause - so nobody can
 * exhaust descriptors through it, and a local process flooding it delays
 * local agents only (their calls wait in the backlog). */
#define SERVER_LOCAL_SLACK 16
static int local_limit(struct server *srv, int64_t local_calls)
{
    int64_t max = local_calls + SERVER_LOCAL_SLACK;
    const int64_t half_reserve = server_fd_reserve(server_fd_limit()) / 2;
    if (max > half_reserve)
        max = half_reserve;
    if (max > 65536)
        max = 65536;
    if (max < 1)
        max = 1;
    int rc = conn_limit_create(srv->base, (int32_t)max, &srv->m_local, &srv->conns_local);
    if (rc)
        return rc;
    conn_limit_set_idle(srv->conns_local, srv->cfg.idle_timeout_ms);
    return conn_limit_listen(srv->conns_local, evhttp_bound_socket_get_listener(srv->sock_local));
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
    struct server *srv = arg;
    (void)fd;
    (void)what;
    if (srv->hard_stop) { /* replies that never finished writing: stop waiting */
        event_base_loopexit(srv->base, NULL);
        return;
    }
    fprintf(stderr, "paraserve: grace time over, cancelling %d in-flight request(s)\n", (int)srv->m.in_flight);
    engine_cancel_all(srv->eng);
    srv->hard_stop = true;
    struct timeval tv = { 5, 0 };
    evtimer_add(srv->ev_grace, &tv);
}

/* SIGHUP: files reopened after a log rotation (--trajectories); the
 * server goes on (the default action would end it). */
static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    struct server *srv = arg;
    (void)sig;
    (void)what;
    if (!srv->cfg.trajectories[0])
        fprintf(stderr, "paraserve: SIGHUP: no file to reopen (--trajectories is not set)\n");
    else if (tasks_api_reopen_trajectories(srv->tasks))
        fprintf(stderr, "paraserve: SIGHUP: %s\n", ps_error_last());
    else
        fprintf(stderr, "paraserve: SIGHUP: --trajectories %s reopened\n", srv->cfg.trajectories);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct server *srv = arg;
    (void)what;
    if (srv->draining) { /* second signal: stop waiting */
        engine_cancel_all(srv->eng);
        return;
    }
    fprintf(stderr, "paraserve: %s: no new connections; %d request(s) in flight\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", (int)srv->m.in_flight);
    srv->draining = true;
    tasks_api_drain(srv->tasks);
    if (srv->sock) {
        conn_limit_unlisten(srv->conns);
        evhttp_del_accept_socket(srv->http, srv->sock);
        srv->sock = NULL;
    }
    if (srv->m.in_flight == 0 && srv->flushing == 0) {
        event_base_loopexit(srv->base, NULL);
        return;
    }
    struct timeval tv = { srv->cfg.shutdown_grace_ms / 1000, (srv->cfg.shutdown_grace_ms % 1000) * 1000 };
    srv->ev_grace = evtimer_new(srv->base, on_grace_over, srv);
    if (srv->ev_grace)
        evtimer_add(srv->ev_grace, &tv);
    else
        engine_cancel_all(srv->eng);
}

static void set_model_names(struct server *srv, const struct server_config *cfg, const struct model *m)
{
    const char *slash = strrchr(cfg->model, '/');
    snprintf(srv->basename, sizeof srv->basename, "%.127s", slash ? slash + 1 : cfg->model);
    size_t bl = strlen(srv->basename);
    if (bl > 5 && !strcmp(srv->basename + bl - 5, ".gguf"))
        srv->basename[bl - 5] = '\0';
    const char *name = cfg->model_alias[0] ? cfg->model_alias : m->name[0] ? m->name : srv->basename;
    snprintf(srv->model_name, sizeof srv->model_name, "%.127s", name);
    /* the name goes into Prometheus labels and JSON: keep it printable and quote-free */
    for (char *p = srv->model_name; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '_';
    srv->model_names[0] = srv->model_name;
    srv->model_names[1] = "default";
    srv->model_names[2] = srv->basename;
    srv->model_names[3] = NULL;
}

/* SIGHUP before the loop's handler is in place (loading the model takes
 * seconds): nothing to reopen yet, and the default action would end the
 * server.  A handler, not SIG_IGN: an ignored signal stays ignored in the
 * agents it spawns (mcp-stdio), a handler is reset by exec. */
static void sighup_early(int sig)
{
    (void)sig;
}

void server_hold_sighup(void)
{
    struct sigaction hup = { .sa_handler = sighup_early };
    sigemptyset(&hup.sa_mask);
    sigaction(SIGHUP, &hup, NULL);
}

int server_run(const struct server_config *cfg)
{
    int rc;
    server_hold_sighup();
    struct model *m = NULL;
    tokenizer *tok = NULL;
    chat_template *tmpl = NULL;
    backend *be = NULL;
    struct server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return ps_error_set(PS_ENOMEM, "out of memory");
    srv->cfg = *cfg;
    metrics_init(&srv->m);
    /* tenant 0: requests without a key (open server); then one id per
     * distinct tenant name of the configured keys */
    snprintf(srv->m.tenants[0].name, sizeof srv->m.tenants[0].name, "%s", cfg->n_api_keys ? SERVER_TENANT_NO_KEY : "anonymous");
    srv->m.n_tenants = 1;
    srv->tenant_priority[0] = 0;
    srv->tenant_max_priority[0] = 1000000;
    for (int32_t i = 0; i < cfg->n_api_keys && i < SERVER_MAX_API_KEYS; i++) {
        const struct server_api_key *ak = &cfg->api_keys[i];
        int32_t t = 1;
        while (t < srv->m.n_tenants && strcmp(srv->m.tenants[t].name, ak->tenant))
            t++;
        if (t == srv->m.n_tenants && t < METRICS_MAX_TENANTS) {
            snprintf(srv->m.tenants[t].name, sizeof srv->m.tenants[t].name, "%s", ak->tenant);
            srv->m.n_tenants++;
            srv->tenant_priority[t] = ak->priority;
            srv->tenant_max_priority[t] = ak->max_priority;
        } else if (t < METRICS_MAX_TENANTS) {
            if (ak->priority < srv->tenant_priority[t])
                srv->tenant_priority[t] = ak->priority;
            if (ak->max_priority < srv->tenant_max_priority[t])
                srv->tenant_max_priority[t] = ak->max_priority;
        }
        srv->key_tenant[i] = (uint32_t)t;
    }
    srv->created = time(NULL);

    if ((rc = model_load(cfg->model, &m)) || (rc = tokenizer_from_gguf(m->gguf, &tok)) ||
        (rc = chat_template_from_gguf(m->gguf, &tmpl)))
        goto done;
    srv->model = m;
    srv->tok = tok;
    srv->tmpl = tmpl;
    set_model_names(srv, cfg, m);

    int32_t n_ctx = cfg->ctx;
    if (m->hp.n_ctx_train > 0 && n_ctx > m->hp.n_ctx_train) {
        fprintf(stderr, "paraserve: --ctx %d exceeds the model's training context %d; using %d\n",
                (int)n_ctx, (int)m->hp.n_ctx_train, (int)m->hp.n_ctx_train);
        n_ctx = m->hp.n_ctx_train;
    }
    struct backend_config bc = { .n_threads = cfg->threads, .n_kv_blocks = cfg->kv_blocks,
                                 .block_size = cfg->block_size, .max_batch_tokens = cfg->max_batch_tokens };
    if ((rc = kv_type_parse(cfg->kv_type, &bc.kv_type)))
        goto done;
    rc = backend_create_named(cfg->backend, m, &bc, &be);   /* auto: the CPU for q8 / f32 caches */
    if (rc)
        goto done;
    struct engine_config ec = { .max_seqs = cfg->max_batch, .max_batch_tokens = cfg->max_batch_tokens,
                                .n_ctx = n_ctx, .prefix_cache = cfg->prefix_cache,
                                .device_sample = cfg->device_sampling ? 0 : -1 };
    if ((rc = engine_create(&ec, be, tok, &srv->eng)))
        goto done;
    {
        /* The scheduler caps the context at what the KV cache holds; the
         * tasks API sizes decisions with it and the log reports it. */
        struct engine_stats es;
        engine_get_stats(srv->eng, &es);
        if (es.n_ctx < n_ctx) {
            fprintf(stderr, "paraserve: --ctx %d exceeds the KV cache (kv_blocks %d x block_size %d); using %d\n",
                    (int)n_ctx, (int)cfg->kv_blocks, (int)cfg->block_size, (int)es.n_ctx);
            n_ctx = es.n_ctx;
        }
    }
    if ((rc = grammar_vocab_create(tok, &srv->gvocab)))
        goto done;

    /* descriptors: every connection, agent socket and mcp-stdio pipe takes
     * one (cmd_serve raised the limit before validating max_connections;
     * again here for other callers); failing, the limit stays as it is */
    (void)server_fd_limit_raise();
    const int32_t max_conns = server_config_max_connections(cfg, server_fd_limit());
    /* No cached time: a timer armed after a long callback (a request of
     * many thousands of calls) would count from the loop turn's start and
     * could fire at once - an idle timeout cut a reply being written. */
    struct event_config *ecfg = event_config_new();
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_NO_CACHE_TIME);
    srv->base = ecfg ? event_base_new_with_config(ecfg) : NULL;
    if (ecfg)
        event_config_free(ecfg);
    srv->http = srv->base ? evhttp_new(srv->base) : NULL;
    if (!srv->http) {
        rc = ps_error_set(PS_EINTERNAL, "libevent: cannot create the event base / http server");
        goto done;
    }
    /* libevent refuses bodies beyond this hard cap itself (its 413 page,
     * rewritten to JSON by guard_output); bodies between max_body_bytes and
     * the cap get our JSON 413 from the handlers. */
    int64_t cap = (int64_t)cfg->max_body_bytes * 4;
    if (cap < (int64_t)cfg->max_body_bytes + (1 << 16))
        cap = (int64_t)cfg->max_body_bytes + (1 << 16);
    http_limits(srv->http, (ev_ssize_t)cap);
    if ((rc = conn_limit_create(srv->base, max_conns, &srv->m, &srv->conns)))
        goto done;
    conn_limit_set_idle(srv->conns, cfg->idle_timeout_ms);
    evhttp_set_gencb(srv->http, on_request, srv);
    evhttp_set_bevcb(srv->http, guard_new, srv);
    srv->sock = evhttp_bind_socket_with_handle(srv->http, cfg->host, (ev_uint16_t)cfg->port);
    if (!srv->sock) {
        rc = ps_error_set(PS_EIO, "cannot listen on %s:%d (address in use or not available)", cfg->host,
                          (int)cfg->port);
        goto done;
    }
    if ((rc = conn_limit_listen(srv->conns, evhttp_bound_socket_get_listener(srv->sock))))
        goto done;
    int port = cfg->port;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (!getsockname(evhttp_bound_socket_get_fd(srv->sock), (struct sockaddr *)&ss, &sl))
        port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    srv->ev_engine = event_new(srv->base, engine_events_fd(srv->eng), EV_READ | EV_PERSIST, on_engine_events, srv);
    srv->ev_sigterm = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->ev_sigint = evsignal_new(srv->base, SIGINT, on_signal, srv);
    srv->ev_sighup = evsignal_new(srv->base, SIGHUP, on_sighup, srv);
    if (!srv->ev_engine || !srv->ev_sigterm || !srv->ev_sigint || !srv->ev_sighup || event_add(srv->ev_engine, NULL) ||
        event_add(srv->ev_sigterm, NULL) || event_add(srv->ev_sigint, NULL) || event_add(srv->ev_sighup, NULL)) {
        rc = ps_error_set(PS_EINTERNAL, "libevent: cannot register events");
        goto done;
    }
    char local_url[96] = "", local_header[96] = "";
    if (local_listen(srv, (ev_ssize_t)cap, local_url, sizeof local_url, local_header, sizeof local_header)) {
        fprintf(stderr, "paraserve: warning: %s; local agents will fail\n", ps_error_last());
        local_url[0] = local_header[0] = '\0';
    }
    const char *tenant_names[METRICS_MAX_TENANTS];
    for (int i = 0; i < srv->m.n_tenants && i < METRICS_MAX_TENANTS; i++)
        tenant_names[i] = srv->m.tenants[i].name;
    struct tasks_api_config tc = { .base = srv->base, .eng = srv->eng, .tmpl = tmpl, .vocab = srv->gvocab,
                                   .tok = tok, .n_ctx = n_ctx, .m = &srv->m,
                                   .agents_path = cfg->agents, .local_url = local_url[0] ? local_url : NULL,
                                   .local_header = local_header[0] ? local_header : NULL,
                                   .local_tenant_header = SERVER_TENANT_HEADER,
                                   .max_body_bytes = cfg->max_body_bytes, .sse_heartbeat_ms = cfg->sse_heartbeat_ms,
                                   .http_threads = cfg->http_threads, .keep_tasks = cfg->keep_tasks,
                                   .max_running = cfg->max_running_tasks,
                                   .max_running_per_tenant = cfg->max_running_tasks_per_tenant,
                                   .trajectories_path = cfg->trajectories,
                                   .task_store_path = cfg->task_store, .tenant_names = tenant_names,
                                   .n_tenant_names = srv->m.n_tenants,
                                   .flushing = &srv->flushing,
                                   .drained = on_drained, .drained_ud = srv };
    if ((rc = tasks_api_create(&tc, &srv->tasks)))
        goto done;
    if (srv->sock_local && (rc = local_limit(srv, tasks_api_local_concurrency(srv->tasks))))
        goto done;
    fprintf(stderr, "paraserve: tasks API: %d agent(s) from %s; local agents call %s (at most %d connections)\n",
            tasks_api_n_agents(srv->tasks),
            tasks_api_agents_path(srv->tasks)[0] ? tasks_api_agents_path(srv->tasks) : "(no pool)",
            local_url[0] ? local_url : "nothing (no local port)", (int)srv->m_local.conns_max);
#ifdef PS_FAULT_INJECTION
    fprintf(stderr, "paraserve: WARNING: a fault-injection build: POST /debug/fail-json-alloc and "
                    "/debug/fail-decisions are open (tests only, never deploy this binary)\n");
#endif
    if (cfg->n_api_keys)
        fprintf(stderr, "paraserve: /v1/* requires an API key: %d key(s), %d tenant(s)\n", (int)cfg->n_api_keys,
                (int)srv->m.n_tenants - 1);
    fprintf(stderr,
            "paraserve: serving '%s' on http://%s:%d (backend %s, threads %d, max_batch %d, "
            "kv_blocks %d x %d, ctx %d, prefix_cache %s, sampling on the %s, max_connections %d of "
            "RLIMIT_NOFILE %lld)\n",
            srv->model_name, cfg->host, port, backend_name(be), (int)cfg->threads, (int)cfg->max_batch,
            (int)cfg->kv_blocks, (int)cfg->block_size, (int)n_ctx, cfg->prefix_cache ? "on" : "off",
            cfg->device_sampling && backend_can_sample(be) ? "device" : "host", (int)max_conns,
            (long long)server_fd_limit());
    event_base_dispatch(srv->base);
    fprintf(stderr, "paraserve: shut down cleanly\n");
    rc = PS_OK;
done:
    conn_limit_unlisten(srv->conns); /* evhttp_free frees the listener first */
    if (srv->http)
        evhttp_free(srv->http); /* closes connections: close callbacks cancel their requests */
    conn_limit_unlisten(srv->conns_local);
    if (srv->http_local)
        evhttp_free(srv->http_local);
    conn_limit_free(srv->conns_local);
    conn_limit_free(srv->conns);
    tasks_api_stop(srv->tasks); /* after the connections, before the engine */
    engine_free(srv->eng);
    tasks_api_free(srv->tasks); /* the action grammar outlives the engine's references */
    if (srv->ev_grace)
        event_free(srv->ev_grace);
    if (srv->ev_sigint)
        event_free(srv->ev_sigint);
    if (srv->ev_sigterm)
        event_free(srv->ev_sigterm);
    if (srv->ev_sighup)
        event_free(srv->ev_sighup);
    if (srv->ev_engine)
        event_free(srv->ev_engine);
    if (srv->base)
        event_base_free(srv->base);
    grammar_vocab_free(srv->gvocab); /* last: engine matchers and requests held grammars */
    backend_free(be);
    chat_template_free(tmpl);
    tokenizer_free(tok);
    model_free(m);
    free(srv);
    return rc;
}
