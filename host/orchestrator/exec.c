/* exec.c - the executor (see executor.h for the contract and the state
 * diagram).  Transitions:
 *   submit      exec_group_submit()   -> NEW (kick event) or WAITING
 *   NEW/WAITING call_make_ready()     substitute + validate -> call_dispatch()
 *   READY       call_dispatch()       breaker check; slot ? call_start() : agent queue
 *   queue       agent_pump()          (event) starts queued calls as slots free
 *                                     (breaker asked again: open -> DONE)
 *   RUNNING     on_adapter_done() / on_timer() (timeout)
 *   BACKOFF     on_timer()            -> call_dispatch()
 *   any         call_finish()         -> DONE, one feedback, dependents resolved
 */
#include <event2/event.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_get.h"
#include "common/status.h"
#include "common/str_index.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"
#include "orchestrator/jschema.h"
#include "orchestrator/json_alloc.h"

#define EXEC_MAX_ID      64   /* = ORCH_MAX_CALL_ID (task.h) */
#define EXEC_MAX_AFTER   64
#define EXEC_BACKOFF_CAP 5000

enum call_state { CS_NEW, CS_WAITING, CS_QUEUED, CS_READY, CS_RUNNING, CS_BACKOFF, CS_REJECT, CS_DONE };

struct exec_call {
    struct exec_group *g;
    struct exec_call  *next;       /* group list, submit order */
    struct exec_call  *q_next;     /* agent queue */
    char              *id;
    char              *to;
    struct agent_rt   *rt;         /* NULL: unknown agent */
    cJSON             *args;       /* as submitted; NULL once moved to final_args */
    cJSON             *final_args; /* after substitution (the submitted args
                                      themselves when they reference nothing) */
    char             **after;
    int                n_after;
    struct exec_call **dependents; /* calls whose `after` names this one, once per
                                      mention, in submit order */
    int                n_dependents, cap_dependents;
    int                pending;    /* unfinished dependencies */
    enum call_state    state;
    int                attempts;
    int                is_probe;
    int                is_dup;     /* its id was taken: rejected, and no `after`
                                      names it (group_find finds the first) */
    struct event      *timer;      /* kick / timeout / backoff / reject delivery */
    struct adapter_op *op;
    int64_t            t_submit;
    int64_t            t_dispatch;
    int64_t            t_first_dispatch;  /* 0: never dispatched */
    int64_t            d2r_ns;
    enum fb_status     status;
    cJSON             *result;
    char              *error;
};

struct exec_group {
    struct exec       *ex;
    exec_feedback_fn   cb;
    void              *ud;
    struct exec_call  *head, *tail;
    int                n_calls, n_open;
    struct str_index   by_id;        /* call id -> its first call */
    char              *tenant_line;  /* "<local_tenant_header>: tenant"; NULL: none (owned) */
    struct exec_group *prev, *next;
};

static const char *const fb_names[] = {
#define FB_STATUS_NAME(c, s) s,
    FB_STATUS_TABLE(FB_STATUS_NAME)
#undef FB_STATUS_NAME
};

const char *fb_status_str(enum fb_status s)
{
    return (unsigned)s < FB_STATUS_COUNT ? fb_names[s] : "?";
}

/* ---- helpers ---------------------------------------------------------------- */

static uint64_t rng_next(struct exec *ex)
{
    ex->rng ^= ex->rng << 13;
    ex->rng ^= ex->rng >> 7;
    ex->rng ^= ex->rng << 17;
    return ex->rng;
}

/* The runtime state of the agent named `name`, or NULL for a name the
 * registry does not hold. */
static struct agent_rt *agent_rt_find(const struct exec *ex, const char *name)
{
    const struct agent_spec *spec = name ? registry_find(ex->reg, name) : NULL;
    return spec ? &ex->agents[spec - registry_at(ex->reg, 0)] : NULL;
}

static struct exec_call *group_find(const struct exec_group *g, const char *id)
{
    return str_index_get(&g->by_id, id);
}

/* Note that d waits for c (once per mention in d's `after`). */
static int dependent_add(struct exec_call *c, struct exec_call *d)
{
    if (c->n_dependents == c->cap_dependents) {
        int cap = c->cap_dependents ? c->cap_dependents * 2 : 4;
        struct exec_call **p = realloc(c->dependents, (size_t)cap * sizeof *p);
        if (!p)
            return PS_ENOMEM;
        c->dependents = p;
        c->cap_dependents = cap;
    }
    c->dependents[c->n_dependents++] = d;
    return PS_OK;
}

static void queue_remove(struct agent_rt *rt, struct exec_call *c)
{
    struct exec_call **pp = &rt->q_head, *prev = NULL;
    while (*pp && *pp != c) { prev = *pp; pp = &(*pp)->q_next; }
    if (!*pp)
        return;
    *pp = c->q_next;
    if (rt->q_tail == c)
        rt->q_tail = prev;
    c->q_next = NULL;
    rt->queued--;
}

static void agent_slot_freed(struct exec *ex, struct agent_rt *rt)
{
    if (rt->q_head)
        event_active(rt->pump, 0, 0);
}

static void breaker_result(struct agent_rt *rt, int ok, int is_probe)
{
    const struct agent_spec *a = rt->spec;
    if (is_probe)
        rt->probe_in_flight = 0;
    if (ok) {
        rt->consecutive_failures = 0;
        rt->open_until_ns = 0;
        return;
    }
    rt->consecutive_failures++;
    if (a->breaker_failures > 0 && (is_probe || rt->consecutive_failures >= a->breaker_failures))
        rt->open_until_ns = orch_now_ns() + (int64_t)a->breaker_open_ms * 1000000;
}

/* ---- finishing ---------------------------------------------------------------- */

static void call_make_ready(struct exec_call *c);

/* Abort whatever the call is doing, without feedback.  A half-open
 * breaker's probe gives the role back whether it ran or waited in the
 * queue: the next call probes (else the breaker never closes). */
static void call_abort(struct exec_call *c)
{
    struct exec *ex = c->g->ex;
    if (c->timer)
        event_del(c->timer);
    if (c->state == CS_QUEUED)
        queue_remove(c->rt, c);
    if (c->op) {
        adapter_cancel(c->op);
        c->op = NULL;
        c->rt->running--;
        ex->stats.running--;
        agent_slot_freed(ex, c->rt);
    }
    if (c->is_probe) {
        c->rt->probe_in_flight = 0;
        c->is_probe = 0;
    }
}

static void call_finish(struct exec_call *c, enum fb_status st, cJSON *result,
                        const char *error, int64_t send_ns)
{
    if (c->state == CS_DONE) {
        cJSON_Delete(result);
        return;
    }
    struct exec_group *g = c->g;
    struct exec *ex = g->ex;
    call_abort(c);
    c->state = CS_DONE;
    c->status = st;
    c->result = st == FB_OK ? result : NULL;
    if (st != FB_OK)
        cJSON_Delete(result);
    /* A rejection waiting for its turn (reject_later) holds its message
     * in c->error: cancelled first, that message is replaced. */
    char *e = error ? strdup(error) : NULL;
    free(c->error);
    c->error = e;
    g->n_open--;
    ex->stats.calls_finished++;
    int64_t now = orch_now_ns();
    struct agent_rt *rt = c->rt ? c->rt : agent_rt_find(ex, c->to);
    if (rt) {
        rt->calls[st]++;
        if (c->t_first_dispatch)
            histogram_observe(&rt->duration_s, (double)(now - c->t_first_dispatch) / 1e9);
    } else {
        ex->unknown_agent_calls++;
    }
    struct exec_feedback fb = {
        .id = c->id, .to = c->to, .status = st, .result = c->result,
        .error = c->error ? c->error : (st == FB_OK ? NULL : "(no detail)"),
        .ms = (now - c->t_submit) / 1000000,
        .attempts = c->attempts,
        .dispatch_to_recv_ns = c->d2r_ns,
        .reply_to_record_ns = send_ns > 0 ? now - send_ns : -1,
    };
    g->cb(g->ud, &fb);

    /* Resolve dependents, in submit order; one listing c twice counted
     * twice in `pending` and appears twice (each read afresh: the list
     * cannot grow now, c being done). */
    for (int i = 0; i < c->n_dependents; i++) {
        struct exec_call *d = c->dependents[i];
        if (d->state != CS_WAITING)
            continue;
        if (st == FB_OK) {
            if (--d->pending == 0)
                call_make_ready(d);
        } else {
            char why[256];
            snprintf(why, sizeof why, "dependency '%s' ended %s", c->id, fb_status_str(st));
            call_finish(d, FB_CANCELLED, NULL, why, 0);
        }
    }
}

/* ---- dispatch -------------------------------------------------------------------- */

static void on_adapter_done(void *ud, struct adapter_result *r);

static void call_start(struct exec_call *c)
{
    struct exec *ex = c->g->ex;
    struct agent_rt *rt = c->rt;
    rt->running++;
    ex->stats.running++;
    c->attempts++;
    ex->stats.attempts++;
    rt->attempts++;
    if (c->attempts > 1) {
        ex->stats.retries++;
        rt->retries++;
    }
    c->state = CS_RUNNING;
    c->t_dispatch = orch_now_ns();
    if (!c->t_first_dispatch)
        c->t_first_dispatch = c->t_dispatch;
    c->op = adapter_start(ex, rt, c->id, c->final_args, c->g->tenant_line, on_adapter_done, c);
    if (!c->op) {
        rt->running--;
        ex->stats.running--;
        if (c->is_probe)
            rt->probe_in_flight = 0;
        agent_slot_freed(ex, rt);
        char err[300];
        snprintf(err, sizeof err, "%s", ps_error_last());
        call_finish(c, FB_EXEC_ERROR, NULL, err, 0);
        return;
    }
    struct timeval tv = { rt->spec->timeout_ms / 1000, (rt->spec->timeout_ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
}

/* The breaker's word on a call about to be started or queued: 0 when it
 * may go (the half-open breaker's probe, when it is one), else 1 and the
 * call has ended `exec_error`.  Asked at dispatch and again when a queued
 * call gets its slot: none reaches an agent while its breaker is open. */
static int breaker_refuses(struct exec_call *c)
{
    struct exec *ex = c->g->ex;
    struct agent_rt *rt = c->rt;
    if (c->is_probe || !rt->open_until_ns)
        return 0;
    if (orch_now_ns() < rt->open_until_ns || rt->probe_in_flight) {
        char err[256];
        snprintf(err, sizeof err, "circuit open for agent '%s' after %d consecutive failures",
                 rt->spec->name, rt->consecutive_failures);
        ex->stats.breaker_rejects++;
        rt->breaker_rejects++;
        call_finish(c, FB_EXEC_ERROR, NULL, err, 0);
        return 1;
    }
    c->is_probe = 1;              /* half-open: this call probes the agent */
    rt->probe_in_flight = 1;
    return 0;
}

static void call_dispatch(struct exec_call *c)
{
    struct agent_rt *rt = c->rt;
    c->is_probe = 0;
    if (breaker_refuses(c))
        return;
    if (rt->running < rt->spec->max_concurrency && !rt->q_head) {
        call_start(c);
        return;
    }
    c->state = CS_QUEUED;
    c->q_next = NULL;
    if (rt->q_tail) rt->q_tail->q_next = c; else rt->q_head = c;
    rt->q_tail = c;
    rt->queued++;
}

static void agent_pump(evutil_socket_t fd, short what, void *ud)
{
    struct agent_rt *rt = ud;
    while (rt->q_head && rt->running < rt->spec->max_concurrency) {
        struct exec_call *c = rt->q_head;
        rt->q_head = c->q_next;
        if (!rt->q_head)
            rt->q_tail = NULL;
        c->q_next = NULL;
        rt->queued--;
        c->state = CS_READY;
        if (!breaker_refuses(c))
            call_start(c);
    }
}

const cJSON *exec_json_path(const cJSON *r, const char *path)
{
    char key[EXEC_MAX_ID + 1];
    while (r && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n > EXEC_MAX_ID)
            return NULL;
        memcpy(key, path, n);
        key[n] = 0;
        if (cJSON_IsArray(r)) {
            /* an element by its decimal index; any other key names nothing */
            size_t digits = strspn(key, "0123456789");
            r = n && n <= 9 && digits == n ? cJSON_GetArrayItem(r, (int)strtol(key, NULL, 10)) : NULL;
        } else {
            r = json_get(r, key);
        }
        path = dot ? dot + 1 : path + n;
    }
    return r;
}

char *exec_result_text(const cJSON *r)
{
    if (cJSON_IsObject(r) && r->child && !r->child->next &&
        !cJSON_IsObject(r->child) && !cJSON_IsArray(r->child))
        r = r->child;
    if (cJSON_IsString(r))
        return strdup(r->valuestring);
    if (cJSON_IsNumber(r)) {
        char b[64];
        /* in range first: casting a double past long long's is undefined */
        if (fabs(r->valuedouble) < 1e15 && r->valuedouble == (double)(long long)r->valuedouble)
            snprintf(b, sizeof b, "%lld", (long long)r->valuedouble);
        else
            snprintf(b, sizeof b, "%.17g", r->valuedouble);
        return strdup(b);
    }
    return cJSON_PrintUnformatted(r);
}

/* Split "c1.a.b" into the call and the member path. */
static const cJSON *ref_resolve(struct exec_group *g, const char *ref, const struct exec_call **call)
{
    char id[EXEC_MAX_ID + 1];
    const char *dot = strchr(ref, '.');
    size_t n = dot ? (size_t)(dot - ref) : strlen(ref);
    *call = NULL;
    if (n > EXEC_MAX_ID)
        return NULL;
    memcpy(id, ref, n);
    id[n] = 0;
    *call = group_find(g, id);
    if (!*call || (*call)->state != CS_DONE || (*call)->status != FB_OK)
        return NULL;
    return exec_json_path((*call)->result, dot ? dot + 1 : "");
}

/* What a string that is exactly one reference becomes, `val` being what it
 * names and path[0..n-1] the string's position in the args: val's text
 * (exec_result_text, the text the reference gives inside a longer string)
 * where `schema` (the agent's input_schema) admits a string there but not
 * val's JSON type (jschema_wants_text), so "{{c1.value}}" with a number
 * result is the calculator's `expression` "42", not a rejected 42; else a
 * copy of val (the key cJSON_Duplicate copies is the caller's to replace).
 * NULL when memory ran out. */
static cJSON *ref_whole_value(const cJSON *val, const cJSON *schema, const char *const *path, int n)
{
    if (!jschema_wants_text(schema, path, n, val))
        return cJSON_Duplicate(val, 1);
    char *txt = exec_result_text(val);
    cJSON *s = txt ? cJSON_CreateString(txt) : NULL;
    free(txt);
    return s;
}

/* Replace {{id}} references to finished ok calls in the members of `node`,
 * which sits at path[0..depth-1] in the args (object keys; NULL for an
 * array element; path has room for JSCHEMA_MAX_DEPTH + 1 steps); `schema`
 * is the agent's input_schema.  A string that is exactly one reference
 * becomes ref_whole_value(); references inside a longer string become their
 * text.  Returns 0, or -1 with err set when a reference names a call that
 * has no ok result (err left empty when memory ran out). */
static int substitute(struct exec_group *g, const cJSON *schema, const char **path, cJSON *node,
                      int depth, char *err, size_t errlen)
{
    if (depth > JSCHEMA_MAX_DEPTH)
        return 0;
    for (cJSON *ch = node->child; ch; ch = ch->next) {
        path[depth] = cJSON_IsArray(node) ? NULL : ch->string;
        if (cJSON_IsArray(ch) || cJSON_IsObject(ch)) {
            if (substitute(g, schema, path, ch, depth + 1, err, errlen))
                return -1;
            continue;
        }
        if (!cJSON_IsString(ch) || !strstr(ch->valuestring, "{{"))
            continue;
        const char *s = ch->valuestring;
        size_t cap = strlen(s) + 1, len = 0;
        char *out = malloc(cap);
        if (!out)
            return -1;
        cJSON *whole = NULL;
        while (*s) {
            const char *open = strstr(s, "{{");
            const char *close = open ? strstr(open + 2, "}}") : NULL;
            if (!open || !close) {
                size_t n = strlen(s);
                char *nb = realloc(out, len + n + 1);
                if (!nb) { free(out); return -1; }
                out = nb;
                memcpy(out + len, s, n);
                len += n;
                break;
            }
            char ref[2 * EXEC_MAX_ID + 1];
            size_t rn = (size_t)(close - open - 2);
            const struct exec_call *rc = NULL;
            const cJSON *val = NULL;
            if (rn <= 2 * EXEC_MAX_ID) {
                memcpy(ref, open + 2, rn);
                ref[rn] = 0;
                val = ref_resolve(g, ref, &rc);
            }
            if (!rc) {   /* not a call reference: keep the text */
                size_t n = (size_t)(close + 2 - s);
                char *nb = realloc(out, len + n + 1);
                if (!nb) { free(out); return -1; }
                out = nb;
                memcpy(out + len, s, n);
                len += n;
                s = close + 2;
                continue;
            }
            if (!val) {
                snprintf(err, errlen, "args reference '{{%s}}' but that call has no such ok result (list it in 'after')", ref);
                free(out);
                return -1;
            }
            if (open == ch->valuestring && close[2] == 0) {
                free(out);
                if (!(whole = ref_whole_value(val, schema, path, depth + 1)))
                    return -1;
                break;
            }
            size_t pre = (size_t)(open - s);
            char *txt = exec_result_text(val);
            if (!txt) { free(out); return -1; }
            size_t tn = strlen(txt);
            char *nb = realloc(out, len + pre + tn + 1);
            if (!nb) { free(out); free(txt); return -1; }
            out = nb;
            memcpy(out + len, s, pre);
            len += pre;
            memcpy(out + len, txt, tn);
            len += tn;
            free(txt);
            s = close + 2;
        }
        if (whole) {
            /* a copy of the result carries its own key there: replace it */
            if (whole->string && !(whole->type & cJSON_StringIsConst))
                cJSON_free(whole->string);
            whole->string = NULL;
            whole->type &= ~cJSON_StringIsConst;   /* the key below is its own */
            if (ch->string && !(whole->string = strdup(ch->string))) {
                cJSON_Delete(whole);
                return -1;
            }
            cJSON_ReplaceItemViaPointer(node, ch, whole);
            ch = whole;
            continue;
        }
        out[len] = 0;
        cJSON *ns = cJSON_CreateString(out);
        free(out);
        if (!ns || (ch->string && !(ns->string = strdup(ch->string)))) {
            cJSON_Delete(ns);
            return -1;
        }
        cJSON_ReplaceItemViaPointer(node, ch, ns);
        ch = ns;
    }
    return 0;
}

/* 1 when a string in `node` (depth-limited like substitute) holds "{{". */
static int has_refs(const cJSON *node, int depth)
{
    if (depth > JSCHEMA_MAX_DEPTH)
        return 0;
    for (const cJSON *ch = node->child; ch; ch = ch->next) {
        if ((cJSON_IsArray(ch) || cJSON_IsObject(ch)) && has_refs(ch, depth + 1))
            return 1;
        if (cJSON_IsString(ch) && strstr(ch->valuestring, "{{"))
            return 1;
    }
    return 0;
}

static void call_make_ready(struct exec_call *c)
{
    char err[512] = "";
    if (c->args && !has_refs(c->args, 0)) {
        /* Nothing to substitute: the submitted args are the final ones
         * (moved, not copied: a copy per call showed in the loop's profile). */
        cJSON_Delete(c->final_args);
        c->final_args = c->args;
        c->args = NULL;
    } else if (c->args) {
        cJSON_Delete(c->final_args);
        c->final_args = cJSON_Duplicate(c->args, 1);
    }
    const char *path[JSCHEMA_MAX_DEPTH + 1];
    if (!c->final_args ||
        substitute(c->g, c->rt->spec->input_schema, path, c->final_args, 0, err, sizeof err)) {
        /* a reference that does not resolve is the caller's fault
         * (rejected); a lack of memory is ours (err left empty) */
        if (err[0])
            call_finish(c, FB_REJECTED, NULL, err, 0);
        else
            call_finish(c, FB_EXEC_ERROR, NULL, "out of memory while substituting the args' references", 0);
        return;
    }
    if (jschema_validate(c->rt->spec->input_schema, c->final_args, "args", err, sizeof err)) {
        char why[600];
        snprintf(why, sizeof why, "args do not match %s's input_schema: %s", c->rt->spec->name, err);
        call_finish(c, FB_REJECTED, NULL, why, 0);
        return;
    }
    call_dispatch(c);
}

static void on_adapter_done(void *ud, struct adapter_result *r)
{
    struct exec_call *c = ud;
    struct exec *ex = c->g->ex;
    struct agent_rt *rt = c->rt;
    c->op = NULL;
    event_del(c->timer);
    rt->running--;
    ex->stats.running--;
    agent_slot_freed(ex, rt);
    /* the agent's receipt stamp comes from its own clock reads: one within
     * their error of the dispatch counts as 0, not as unknown */
    c->d2r_ns = r->agent_recv_ns > 0 ? (r->agent_recv_ns > c->t_dispatch ? r->agent_recv_ns - c->t_dispatch : 0) : -1;
    /* The breaker counts what says the agent is unavailable (transport
     * errors, 429, 5xx: the retryable failures; timeouts), not replies
     * that blame the call (4xx, a tool or JSON-RPC error, a failed A2A
     * task): those would open it against a healthy agent. */
    int failed = (r->status == FB_EXEC_ERROR && r->retryable) || r->status == FB_TIMEOUT;
    breaker_result(rt, !failed, c->is_probe);
    c->is_probe = 0;
    if (r->status == FB_OK) {
        cJSON *res = r->result;
        r->result = NULL;
        call_finish(c, FB_OK, res, NULL, r->agent_send_ns);
        return;
    }
    if (r->retryable && c->attempts <= rt->spec->retries) {
        double base = (double)rt->spec->backoff_ms * (double)(1u << (c->attempts - 1 < 16 ? c->attempts - 1 : 16));
        if (base > EXEC_BACKOFF_CAP)
            base = EXEC_BACKOFF_CAP;
        double jitter = 0.5 + 0.5 * (double)(rng_next(ex) >> 11) / (double)(1ull << 53);
        int64_t us = (int64_t)(base * jitter * 1000.0);
        c->state = CS_BACKOFF;
        struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
        evtimer_add(c->timer, &tv);
        return;
    }
    call_finish(c, r->status, NULL, r->error, r->agent_send_ns);
}

static void on_timer(evutil_socket_t fd, short what, void *ud)
{
    struct exec_call *c = ud;
    char err[256];
    switch (c->state) {
    case CS_NEW:
        call_make_ready(c);
        break;
    case CS_REJECT: {
        char *e = c->error;
        c->error = NULL;
        call_finish(c, c->status, NULL, e, 0);
        free(e);
        break;
    }
    case CS_BACKOFF:
        call_dispatch(c);
        break;
    case CS_RUNNING: {
        struct exec *ex = c->g->ex;
        adapter_cancel(c->op);
        c->op = NULL;
        c->rt->running--;
        ex->stats.running--;
        agent_slot_freed(ex, c->rt);
        breaker_result(c->rt, 0, c->is_probe);
        c->is_probe = 0;
        snprintf(err, sizeof err, "no reply within %d ms (attempt %d)", c->rt->spec->timeout_ms, c->attempts);
        call_finish(c, FB_TIMEOUT, NULL, err, 0);
        break;
    }
    default:
        break;
    }
}

/* ---- public API ---------------------------------------------------------------- */

struct exec *exec_create(struct event_base *base, const struct registry *reg,
                         const struct exec_config *cfg)
{
    struct exec *ex = calloc(1, sizeof *ex);
    if (!ex) {
        ps_error_set(PS_ENOMEM, "executor: out of memory");
        return NULL;
    }
    /* A stdio agent that dies must not kill us with SIGPIPE. */
    json_alloc_install();          /* parse failures tell bad text from no memory */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    ex->base = base;
    ex->reg = reg;
    ex->n_agents = registry_count(reg);
    ex->http = httpc_create(base);
    ex->agents = calloc((size_t)ex->n_agents + 1, sizeof *ex->agents);
    if (!ex->http || !ex->agents)
        goto fail;
    if (cfg && cfg->http_threads && httpc_set_io_threads(ex->http, cfg->http_threads))
        goto fail_status;
    for (int i = 0; i < ex->n_agents; i++) {
        ex->agents[i].spec = registry_at(reg, i);
        ex->agents[i].a2a_proto = ex->agents[i].spec->a2a_version;
        ex->agents[i].a2a_stream = ex->agents[i].spec->a2a_streaming == 1;
        if (!(ex->agents[i].pump = event_new(base, -1, 0, agent_pump, &ex->agents[i])))
            goto fail;
        static const double duration_bounds[] = { EXEC_DURATION_BOUNDS };
        histogram_init(&ex->agents[i].duration_s, duration_bounds,
                       (int)(sizeof duration_bounds / sizeof *duration_bounds));
    }
    if (cfg && cfg->local_url && !(ex->local_url = strdup(cfg->local_url)))
        goto fail;
    if (cfg && cfg->local_model && !(ex->local_model = strdup(cfg->local_model)))
        goto fail;
    if (cfg && cfg->local_header) {
        static char *const json[] = { EXEC_JSON_HEADER_LINES };
        ex->local_hdrs[0] = json[0];
        ex->local_hdrs[1] = json[1];
        if (!(ex->local_hdrs[2] = strdup(cfg->local_header)))
            goto fail;
    }
    if (cfg && cfg->local_header && cfg->local_tenant_header &&
        !(ex->local_tenant_header = strdup(cfg->local_tenant_header)))
        goto fail;
    ex->rng = cfg && cfg->seed ? cfg->seed : (uint64_t)orch_now_ns() | 1;
    return ex;
fail:
    exec_destroy(ex);
    ps_error_set(PS_ENOMEM, "executor: out of memory");
    return NULL;
fail_status:                   /* ps_error_set already says why */
    exec_destroy(ex);
    return NULL;
}

void exec_destroy(struct exec *ex)
{
    if (!ex)
        return;
    ex->closing = 1;
    while (ex->groups)
        exec_group_destroy(ex->groups);
    adapter_flush_closing(ex);
    for (int i = 0; ex->agents && i < ex->n_agents; i++) {
        mcp_session_free(ex, &ex->agents[i]);
        if (ex->agents[i].pump)
            event_free(ex->agents[i].pump);
    }
    mcp_reap_all(ex);
    httpc_destroy(ex->http);
    free(ex->agents);
    free(ex->local_url);
    free(ex->local_model);
    free(ex->local_hdrs[2]);
    free(ex->local_tenant_header);
    free(ex);
}

struct exec_group *exec_group_create(struct exec *ex, exec_feedback_fn cb, void *ud)
{
    struct exec_group *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->ex = ex;
    g->cb = cb;
    g->ud = ud;
    g->next = ex->groups;
    if (ex->groups)
        ex->groups->prev = g;
    ex->groups = g;
    return g;
}

static void call_free(struct exec_call *c)
{
    if (c->timer)
        event_free(c->timer);
    free(c->id);
    free(c->to);
    cJSON_Delete(c->args);
    cJSON_Delete(c->final_args);
    cJSON_Delete(c->result);
    for (int i = 0; i < c->n_after; i++)
        free(c->after[i]);
    free(c->after);
    free(c->dependents);
    free(c->error);
    free(c);
}

void exec_group_destroy(struct exec_group *g)
{
    if (!g)
        return;
    struct exec *ex = g->ex;
    for (struct exec_call *c = g->head; c; c = c->next)
        if (c->state != CS_DONE)
            call_abort(c);
    while (g->head) {
        struct exec_call *c = g->head;
        g->head = c->next;
        call_free(c);
    }
    if (g->prev) g->prev->next = g->next; else ex->groups = g->next;
    if (g->next) g->next->prev = g->prev;
    str_index_free(&g->by_id);
    free(g->tenant_line);
    free(g);
}

int exec_group_set_tenant(struct exec_group *g, const char *tenant)
{
    size_t n = tenant ? strlen(tenant) : 0;
    if (n < 1 || n > 63 || strspn(tenant, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-") != n)
        return ps_error_set(PS_EINVAL, "tenant '%.80s': 1 to 63 characters of [A-Za-z0-9_.:-]",
                            tenant ? tenant : "");
    if (!g->ex->local_tenant_header)
        return PS_OK;
    size_t len = strlen(g->ex->local_tenant_header) + 2 + n + 1;
    char *line = malloc(len);
    if (!line)
        return ps_error_set(PS_ENOMEM, "executor: out of memory");
    snprintf(line, len, "%s: %s", g->ex->local_tenant_header, tenant);
    free(g->tenant_line);
    g->tenant_line = line;
    return PS_OK;
}

static void reject_later(struct exec_call *c, const char *why)
{
    c->state = CS_REJECT;
    c->status = FB_REJECTED;
    free(c->error);
    c->error = strdup(why);
    event_active(c->timer, 0, 0);
}

int exec_group_submit(struct exec_group *g, const cJSON *call)
{
    struct exec *ex = g->ex;
    struct exec_call *c = calloc(1, sizeof *c);
    if (!c)
        return ps_error_set(PS_ENOMEM, "executor: out of memory");
    c->g = g;
    c->t_submit = orch_now_ns();
    c->d2r_ns = -1;
    c->timer = evtimer_new(ex->base, on_timer, c);
    const cJSON *id = json_get(call, "id");
    const cJSON *to = json_get(call, "to");
    const cJSON *args = json_get(call, "args");
    const cJSON *after = json_get(call, "after");
    char why[512] = "";
    if (cJSON_IsString(id) && id->valuestring[0] && strlen(id->valuestring) <= EXEC_MAX_ID) {
        c->id = strdup(id->valuestring);
    } else {
        char gen[32];
        snprintf(gen, sizeof gen, "#%d", g->n_calls + 1);
        c->id = strdup(gen);
        snprintf(why, sizeof why, "call 'id' must be a string of 1-%d characters", EXEC_MAX_ID);
    }
    c->to = strdup(cJSON_IsString(to) ? to->valuestring : "");
    c->args = args ? cJSON_Duplicate(args, 1) : cJSON_CreateObject();
    if (!c->timer || !c->id || !c->to || !c->args) {
        call_free(c);
        return ps_error_set(PS_ENOMEM, "executor: out of memory");
    }
    /* A generated "#N" may be taken too: either way nothing depends on it. */
    c->is_dup = group_find(g, c->id) != NULL;
    int dup = !why[0] && c->is_dup;
    if (!c->is_dup && str_index_put(&g->by_id, c->id, c)) {
        call_free(c);
        return ps_error_set(PS_ENOMEM, "executor: out of memory");
    }
    /* Link first: the call exists (and yields feedback) whatever is wrong with it. */
    if (g->tail) g->tail->next = c; else g->head = c;
    g->tail = c;
    g->n_calls++;
    g->n_open++;
    ex->stats.calls_started++;
    c->state = CS_NEW;

    if (why[0]) {
    } else if (dup) {
        snprintf(why, sizeof why, "duplicate call id '%s'", c->id);
    } else if (!cJSON_IsString(to)) {
        snprintf(why, sizeof why, "call 'to' must name an agent");
    } else if (!registry_find(ex->reg, c->to)) {
        snprintf(why, sizeof why, "unknown agent '%s'", c->to);
    } else if (!cJSON_IsObject(c->args)) {
        snprintf(why, sizeof why, "call 'args' must be an object");
    } else if (after && (!cJSON_IsArray(after) || cJSON_GetArraySize(after) > EXEC_MAX_AFTER)) {
        snprintf(why, sizeof why, "call 'after' must be a list of at most %d call ids", EXEC_MAX_AFTER);
    }
    if (!why[0]) {
        c->rt = agent_rt_find(ex, c->to);
        int n = after ? cJSON_GetArraySize(after) : 0;
        c->after = calloc((size_t)n + 1, sizeof *c->after);
        if (!c->after)
            snprintf(why, sizeof why, "out of memory");
        const cJSON *a;
        for (a = c->after ? (after ? after->child : NULL) : NULL; a; a = a->next) {
            if (!cJSON_IsString(a)) {
                snprintf(why, sizeof why, "call 'after' must list call ids (strings)");
                break;
            }
            struct exec_call *dep = group_find(g, a->valuestring);
            if (!dep || dep == c) {
                snprintf(why, sizeof why, "'after' names '%s', which is not an earlier call", a->valuestring);
                break;
            }
            if (!(c->after[c->n_after] = strdup(a->valuestring))) {
                snprintf(why, sizeof why, "out of memory");
                break;
            }
            c->n_after++;
            if (dep->state != CS_DONE) {
                if (dependent_add(dep, c)) {
                    snprintf(why, sizeof why, "out of memory");
                    break;
                }
                c->pending++;
            } else if (dep->status != FB_OK)
                snprintf(why, sizeof why, "dependency '%s' ended %s", dep->id, fb_status_str(dep->status));
        }
        if (why[0] && !strncmp(why, "dependency", 10)) {
            /* delivered as cancelled, like a dependency failing later */
            reject_later(c, why);
            c->status = FB_CANCELLED;
            return PS_OK;
        }
    }
    if (why[0]) {
        reject_later(c, why);
        return PS_OK;
    }
    if (c->pending == 0)
        event_active(c->timer, 0, 0);   /* CS_NEW: made ready on the loop */
    else
        c->state = CS_WAITING;
    return PS_OK;
}

int exec_group_cancel(struct exec_group *g, const char *id, const char *reason)
{
    struct exec_call *c = NULL;
    for (struct exec_call *p = g->head; p; p = p->next)
        if (!strcmp(p->id, id) && (!c || p->state != CS_DONE))
            c = p;
    if (!c)
        return PS_ENOTFOUND;
    if (c->state != CS_DONE)
        call_finish(c, FB_CANCELLED, NULL, reason ? reason : "cancelled", 0);
    return PS_OK;
}

void exec_group_cancel_all(struct exec_group *g, const char *reason)
{
    for (struct exec_call *c = g->head; c; c = c->next)
        if (c->state != CS_DONE)
            call_finish(c, FB_CANCELLED, NULL, reason ? reason : "cancelled", 0);
}

int exec_group_open(const struct exec_group *g)
{
    return g ? g->n_open : 0;
}

int exec_group_call_status(const struct exec_group *g, const char *id)
{
    const struct exec_call *c = group_find(g, id);
    if (!c)
        return -1;
    return c->state == CS_DONE ? (int)c->status : -2;
}

void exec_get_stats(const struct exec *ex, struct exec_stats *st)
{
    *st = ex->stats;
    st->queued = 0;
    for (int i = 0; i < ex->n_agents; i++)
        st->queued += ex->agents[i].queued;
    st->http_active = httpc_active(ex->http);
    st->http_connects = httpc_connects(ex->http);
    st->http_io_cpu_ns = httpc_io_cpu_ns(ex->http);
}

int exec_agent_count(const struct exec *ex) { return ex->n_agents; }

int exec_get_agent_stats(const struct exec *ex, int i, struct exec_agent_stats *st)
{
    if (i < 0 || i >= ex->n_agents)
        return ps_error_set(PS_EINVAL, "executor: no agent %d (it has %d)", i, ex->n_agents);
    const struct agent_rt *rt = &ex->agents[i];
    *st = (struct exec_agent_stats){
        .name = rt->spec->name, .attempts = rt->attempts, .retries = rt->retries,
        .breaker_rejects = rt->breaker_rejects, .running = rt->running, .queued = rt->queued,
        .breaker = !rt->open_until_ns ? BREAKER_CLOSED
                 : orch_now_ns() < rt->open_until_ns ? BREAKER_OPEN : BREAKER_HALF_OPEN,
        .duration_s = rt->duration_s,
    };
    memcpy(st->calls, rt->calls, sizeof st->calls);
    return PS_OK;
}

int64_t exec_unknown_agent_calls(const struct exec *ex) { return ex->unknown_agent_calls; }

void exec_count_rejected(struct exec *ex, const char *to)
{
    struct agent_rt *rt = agent_rt_find(ex, to);
    if (rt)
        rt->calls[FB_REJECTED]++;
    else
        ex->unknown_agent_calls++;
}
