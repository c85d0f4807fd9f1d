/* task.c - orchestrator task loop, ledger and event log (see task.h). */
#include "orchestrator/task.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/action.h"
#include "orchestrator/httpc.h"
#include "orchestrator/registry.h"

struct ev_rec {
    int64_t id;
    char   *type;
    char   *data;
};

struct orch_sub {
    struct orch_task *t;
    orch_event_fn     cb;
    void             *ud;
    struct orch_sub  *prev, *next;
};

struct orch_task {
    struct orch          *o;
    char                  id[40];
    char                 *tenant;
    char                 *input;
    cJSON                *script;      /* NULL: model-driven */
    int                   script_pos;
    int                   max_rounds, max_calls, deadline_ms;
    enum orch_task_status status;
    char                 *error;
    cJSON                *output;
    int                   rounds, n_calls;
    cJSON                *ledger;      /* [{id,to,args,after,status,result,error,ms,attempts}] */
    struct exec_group    *g;
    struct ev_rec        *events;
    int                   n_events, cap_events;
    struct orch_sub      *subs;
    struct event         *kick, *deadline;
    int                   new_feedback;
    int                   deciding;
    void                 *decider_handle;
    struct action_parser *parser;
    cJSON                *final_pending;
    int64_t               t_start;
    struct orch_task     *prev, *next;
};

struct orch {
    struct event_base     *base;
    const struct registry *reg;
    struct exec           *ex;
    struct orch_config     cfg;
    struct orch_decider    decider;
    int                    has_decider;
    orch_done_fn           done_cb;
    void                  *done_ud;
    struct orch_task      *head, *tail;   /* creation order */
    int                    n_running, n_finished;
    uint64_t               next_id;
};

static const char *const task_status_names[] = { "running", "completed", "failed", "cancelled" };

const char *orch_task_status_str(enum orch_task_status s)
{
    return (unsigned)s < 4 ? task_status_names[s] : "?";
}

/* ---- events ------------------------------------------------------------------ */

static void emit(struct orch_task *t, const char *type, cJSON *data /* taken */)
{
    cJSON_AddStringToObject(data, "task", t->id);
    cJSON_AddNumberToObject(data, "t_ms", (double)((orch_now_ns() - t->t_start) / 1000) / 1000.0);
    char *text = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (!text)
        return;
    if (t->n_events == t->cap_events) {
        int cap = t->cap_events ? t->cap_events * 2 : 16;
        struct ev_rec *ne = realloc(t->events, (size_t)cap * sizeof *ne);
        if (!ne) {
            free(text);
            return;
        }
        t->events = ne;
        t->cap_events = cap;
    }
    struct ev_rec *e = &t->events[t->n_events++];
    e->id = t->n_events;
    e->type = strdup(type);
    e->data = text;
    struct orch_event ev = { e->id, e->type, e->data };
    for (struct orch_sub *s = t->subs, *nx; s; s = nx) {
        nx = s->next;
        s->cb(s->ud, t, &ev);
    }
}

/* ---- helpers ------------------------------------------------------------------ */

static cJSON *ledger_find(struct orch_task *t, const char *id)
{
    cJSON *e, *found = NULL;
    cJSON_ArrayForEach(e, t->ledger) {
        const cJSON *i = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (cJSON_IsString(i) && !strcmp(i->valuestring, id)) {
            found = e;
            if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e, "status")))
                return e;
        }
    }
    return found;
}

/* "{{c1}}" in a final answer string -> c1's result text. */
static cJSON *render_answer(struct orch_task *t, const cJSON *answer)
{
    if (!cJSON_IsString(answer) || !strstr(answer->valuestring, "{{"))
        return cJSON_Duplicate(answer, 1);
    const char *s = answer->valuestring;
    size_t cap = strlen(s) + 64, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    while (*s) {
        const char *open = strstr(s, "{{"), *close = open ? strstr(open + 2, "}}") : NULL;
        size_t pre = open && close ? (size_t)(open - s) : strlen(s);
        char *txt = NULL;
        if (open && close) {
            char ref[80];
            size_t n = (size_t)(close - open - 2);
            if (n < sizeof ref) {
                memcpy(ref, open + 2, n);
                ref[n] = 0;
                char *dot = strchr(ref, '.');
                if (dot)
                    *dot = 0;
                cJSON *e = ledger_find(t, ref);
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "status");
                const cJSON *r = exec_json_path(cJSON_GetObjectItemCaseSensitive(e, "result"), dot ? dot + 1 : "");
                if (cJSON_IsString(st) && !strcmp(st->valuestring, "ok") && r)
                    txt = exec_result_text(r);
            }
            if (!txt)
                txt = strndup(open, (size_t)(close + 2 - open));
        }
        size_t tn = txt ? strlen(txt) : 0;
        if (len + pre + tn + 1 > cap) {
            cap = (len + pre + tn + 1) * 2;
            char *nb = realloc(out, cap);
            if (!nb) { free(out); free(txt); return NULL; }
            out = nb;
        }
        memcpy(out + len, s, pre);
        len += pre;
        if (txt)
            memcpy(out + len, txt, tn);
        len += tn;
        free(txt);
        s = open && close ? close + 2 : s + pre;
    }
    out[len] = 0;
    cJSON *r = cJSON_CreateString(out);
    free(out);
    return r;
}

cJSON *orch_task_summary(const struct orch_task *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", t->id);
    cJSON_AddStringToObject(o, "status", orch_task_status_str(t->status));
    cJSON_AddItemToObject(o, "output", t->output ? cJSON_Duplicate(t->output, 1) : cJSON_CreateNull());
    cJSON *calls = cJSON_AddArrayToObject(o, "calls");
    const cJSON *e;
    cJSON_ArrayForEach(e, t->ledger) {
        cJSON *c = cJSON_CreateObject();
        static const char *const keys[] = { "id", "to", "status", "result", "error", "ms", "attempts" };
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, keys[i]);
            cJSON_AddItemToObject(c, keys[i], v ? cJSON_Duplicate(v, 1) : cJSON_CreateNull());
        }
        cJSON_AddItemToArray(calls, c);
    }
    cJSON_AddNumberToObject(o, "rounds", t->rounds);
    if (t->error)
        cJSON_AddStringToObject(o, "error", t->error);
    return o;
}

/* ---- lifecycle -------------------------------------------------------------------- */

static void evict_finished(struct orch *o)
{
    for (struct orch_task *t = o->head, *nx; t && o->n_finished > o->cfg.keep_finished; t = nx) {
        nx = t->next;
        if (t->status != TASK_RUNNING && !t->subs)
            orch_task_release(t);
    }
}

static void task_finish(struct orch_task *t, enum orch_task_status st, const char *error)
{
    if (t->status != TASK_RUNNING)
        return;
    struct orch *o = t->o;
    if (t->deciding && t->decider_handle && o->has_decider)
        o->decider.cancel(o->decider.ctx, t->decider_handle);
    t->decider_handle = NULL;
    t->deciding = 0;
    exec_group_cancel_all(t->g, st == TASK_COMPLETED ? "not used by the final answer" :
                                st == TASK_CANCELLED ? "task cancelled" : "task failed");
    t->status = st;
    if (error)
        t->error = strdup(error);
    if (t->deadline)
        event_del(t->deadline);
    emit(t, st == TASK_COMPLETED ? "task.final" : "task.error", orch_task_summary(t));
    exec_group_destroy(t->g);
    t->g = NULL;
    o->n_running--;
    o->n_finished++;
    if (o->done_cb)
        o->done_cb(o->done_ud, t);
    evict_finished(o);
}

static void on_feedback(void *ud, const struct exec_feedback *fb)
{
    struct orch_task *t = ud;
    cJSON *e = ledger_find(t, fb->id);
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "id", fb->id);
    cJSON_AddStringToObject(rec, "to", fb->to);
    cJSON_AddStringToObject(rec, "status", fb_status_str(fb->status));
    cJSON_AddItemToObject(rec, "result", fb->result ? cJSON_Duplicate(fb->result, 1) : cJSON_CreateNull());
    if (fb->error)
        cJSON_AddStringToObject(rec, "error", fb->error);
    else
        cJSON_AddNullToObject(rec, "error");
    cJSON_AddNumberToObject(rec, "ms", (double)fb->ms);
    cJSON_AddNumberToObject(rec, "attempts", fb->attempts);
    if (e) {
        static const char *const keys[] = { "status", "result", "error", "ms", "attempts" };
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            cJSON_ReplaceItemInObjectCaseSensitive(e, keys[i],
                cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(rec, keys[i]), 1));
    }
    if (fb->dispatch_to_recv_ns >= 0)
        cJSON_AddNumberToObject(rec, "dispatch_to_recv_us", (double)fb->dispatch_to_recv_ns / 1000.0);
    if (fb->reply_to_record_ns >= 0)
        cJSON_AddNumberToObject(rec, "reply_to_record_us", (double)fb->reply_to_record_ns / 1000.0);
    emit(t, "call.result", rec);
    t->new_feedback++;
    if (t->status == TASK_RUNNING)
        event_active(t->kick, 0, 0);
}

static void on_call_closed(void *ud, const cJSON *call)
{
    struct orch_task *t = ud;
    if (t->status != TASK_RUNNING)
        return;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(call, "to");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToObject(e, "id", cJSON_IsString(id) ? cJSON_Duplicate(id, 0) : cJSON_CreateNull());
    cJSON_AddItemToObject(e, "to", cJSON_IsString(to) ? cJSON_Duplicate(to, 0) : cJSON_CreateNull());
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(call, "args");
    const cJSON *after = cJSON_GetObjectItemCaseSensitive(call, "after");
    cJSON_AddItemToObject(e, "args", args ? cJSON_Duplicate(args, 1) : cJSON_CreateObject());
    cJSON_AddItemToObject(e, "after", after ? cJSON_Duplicate(after, 1) : cJSON_CreateArray());
    cJSON_AddNullToObject(e, "status");
    cJSON_AddNullToObject(e, "result");
    cJSON_AddNullToObject(e, "error");
    cJSON_AddNumberToObject(e, "ms", 0);
    cJSON_AddNumberToObject(e, "attempts", 0);
    if (t->n_calls >= t->max_calls) {
        /* Over the limit: recorded as rejected without reaching the executor. */
        cJSON_ReplaceItemInObjectCaseSensitive(e, "status", cJSON_CreateString("rejected"));
        char err[96];
        snprintf(err, sizeof err, "task call limit (%d) reached", t->max_calls);
        cJSON_ReplaceItemInObjectCaseSensitive(e, "error", cJSON_CreateString(err));
        cJSON *rec = cJSON_Duplicate(e, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(rec, "args");
        cJSON_DeleteItemFromObjectCaseSensitive(rec, "after");
        cJSON_AddItemToArray(t->ledger, e);
        emit(t, "call.result", rec);
        t->new_feedback++;
        event_active(t->kick, 0, 0);
        return;
    }
    t->n_calls++;
    cJSON_AddItemToArray(t->ledger, e);
    cJSON *d = cJSON_CreateObject();
    static const char *const keys[] = { "id", "to", "args", "after" };
    for (size_t i = 0; i < 4; i++)
        cJSON_AddItemToObject(d, keys[i], cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(e, keys[i]), 1));
    emit(t, "call.dispatched", d);
    exec_group_submit(t->g, call);
}

void orch_task_decision_text(struct orch_task *t, const char *text, size_t n)
{
    if (t->status != TASK_RUNNING || !t->deciding || !t->parser)
        return;
    if (action_parser_feed(t->parser, text, n)) {
        /* Kept: finish() reports the error when the decision ends. */
    }
}

void orch_task_decision_end(struct orch_task *t, int status, const char *error)
{
    if (t->status != TASK_RUNNING || !t->deciding)
        return;
    t->deciding = 0;
    t->decider_handle = NULL;
    if (status) {
        char why[512];
        snprintf(why, sizeof why, "decision failed: %s", error ? error : ps_status_str(status));
        task_finish(t, TASK_FAILED, why);
        return;
    }
    cJSON *action = NULL;
    int st = action_parser_finish(t->parser, &action);
    action_parser_free(t->parser);
    t->parser = NULL;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "round", t->rounds);
    if (st) {
        /* A malformed action is reported and the model decides again
         * (bounded by max_rounds). */
        cJSON_AddStringToObject(d, "error", ps_error_last());
        emit(t, "decision", d);
        t->new_feedback++;
        event_active(t->kick, 0, 0);
        return;
    }
    cJSON_AddItemToObject(d, "action", cJSON_Duplicate(action, 1));
    emit(t, "decision", d);
    const cJSON *cancel = cJSON_GetObjectItemCaseSensitive(action, "cancel"), *c;
    cJSON_ArrayForEach(c, cancel)
        exec_group_cancel(t->g, c->valuestring, "cancelled by the orchestrator");
    const cJSON *fin = cJSON_GetObjectItemCaseSensitive(action, "final");
    if (fin && t->status == TASK_RUNNING)
        t->final_pending = cJSON_Duplicate(fin, 1);
    cJSON_Delete(action);
    if (t->status == TASK_RUNNING)
        event_active(t->kick, 0, 0);
}

static void decide(struct orch_task *t)
{
    struct orch *o = t->o;
    if (t->rounds >= t->max_rounds) {
        char why[96];
        snprintf(why, sizeof why, "max_rounds (%d) reached without a final answer", t->max_rounds);
        task_finish(t, TASK_FAILED, why);
        return;
    }
    if (t->script) {
        if (t->script_pos >= cJSON_GetArraySize(t->script)) {
            task_finish(t, TASK_FAILED, "script ended without a final action");
            return;
        }
    } else if (!o->has_decider) {
        task_finish(t, TASK_FAILED, "model-driven tasks need the engine: not built yet");
        return;
    }
    t->rounds++;
    t->parser = action_parser_new(on_call_closed, t);
    if (!t->parser) {
        task_finish(t, TASK_FAILED, "out of memory");
        return;
    }
    t->deciding = 1;
    if (t->script) {
        /* The scripted action takes the model's path: text through the
         * incremental parser, calls submitted as their objects close. */
        char *text = cJSON_PrintUnformatted(cJSON_GetArrayItem(t->script, t->script_pos++));
        if (text)
            orch_task_decision_text(t, text, strlen(text));
        free(text);
        orch_task_decision_end(t, text ? PS_OK : PS_ENOMEM, NULL);
        return;
    }
    char *prompt = orch_task_prompt(t);
    t->decider_handle = prompt ? o->decider.start(o->decider.ctx, t, prompt) : NULL;
    free(prompt);
    if (!t->decider_handle && t->deciding)
        orch_task_decision_end(t, PS_EINTERNAL, "the decider could not start");
}

static void on_kick(evutil_socket_t fd, short what, void *ud)
{
    struct orch_task *t = ud;
    if (t->status != TASK_RUNNING || t->deciding)
        return;
    if (t->final_pending) {
        const cJSON *uses = cJSON_GetObjectItemCaseSensitive(t->final_pending, "uses"), *u;
        cJSON_ArrayForEach(u, uses)
            if (exec_group_call_status(t->g, u->valuestring) == -2)
                return;   /* a used call is still running */
        t->output = render_answer(t, cJSON_GetObjectItemCaseSensitive(t->final_pending, "answer"));
        task_finish(t, TASK_COMPLETED, NULL);
        return;
    }
    if (t->rounds > 0 && t->new_feedback == 0 && exec_group_open(t->g) > 0)
        return;
    t->new_feedback = 0;
    decide(t);
}

static void on_deadline(evutil_socket_t fd, short what, void *ud)
{
    struct orch_task *t = ud;
    char why[96];
    snprintf(why, sizeof why, "deadline_ms (%d) exceeded", t->deadline_ms);
    task_finish(t, TASK_FAILED, why);
}

/* ---- public ------------------------------------------------------------------------ */

struct orch *orch_create(struct event_base *base, const struct registry *reg,
                         const struct exec_config *ecfg, const struct orch_config *ocfg)
{
    struct orch *o = calloc(1, sizeof *o);
    if (!o) {
        ps_error_set(PS_ENOMEM, "orchestrator: out of memory");
        return NULL;
    }
    o->base = base;
    o->reg = reg;
    o->cfg.max_rounds = ocfg && ocfg->max_rounds ? ocfg->max_rounds : 16;
    o->cfg.max_calls = ocfg && ocfg->max_calls ? ocfg->max_calls : 256;
    o->cfg.deadline_ms = ocfg && ocfg->deadline_ms ? ocfg->deadline_ms : 300000;
    o->cfg.keep_finished = ocfg && ocfg->keep_finished ? ocfg->keep_finished : 10000;
    o->next_id = ((uint64_t)orch_now_ns() * 2654435761u) & 0xffffffffu;
    if (!(o->ex = exec_create(base, reg, ecfg))) {
        free(o);
        return NULL;
    }
    return o;
}

struct exec *orch_executor(struct orch *o) { return o->ex; }

void orch_set_decider(struct orch *o, const struct orch_decider *d)
{
    if (d) {
        o->decider = *d;
        o->has_decider = 1;
    } else {
        o->has_decider = 0;
    }
}

void orch_set_done_cb(struct orch *o, orch_done_fn cb, void *ud)
{
    o->done_cb = cb;
    o->done_ud = ud;
}

static void task_free(struct orch_task *t)
{
    struct orch *o = t->o;
    while (t->subs)
        orch_unsubscribe(t->subs);
    exec_group_destroy(t->g);
    if (t->kick) event_free(t->kick);
    if (t->deadline) event_free(t->deadline);
    action_parser_free(t->parser);
    for (int i = 0; i < t->n_events; i++) {
        free(t->events[i].type);
        free(t->events[i].data);
    }
    free(t->events);
    cJSON_Delete(t->script);
    cJSON_Delete(t->ledger);
    cJSON_Delete(t->output);
    cJSON_Delete(t->final_pending);
    free(t->tenant);
    free(t->input);
    free(t->error);
    if (t->prev) t->prev->next = t->next; else if (o->head == t) o->head = t->next;
    if (t->next) t->next->prev = t->prev; else if (o->tail == t) o->tail = t->prev;
    free(t);
}

void orch_destroy(struct orch *o)
{
    if (!o)
        return;
    while (o->head) {
        struct orch_task *t = o->head;
        if (t->status == TASK_RUNNING && t->deciding && t->decider_handle && o->has_decider)
            o->decider.cancel(o->decider.ctx, t->decider_handle);
        task_free(t);
    }
    exec_destroy(o->ex);
    free(o);
}

static int get_limit(const cJSON *req, const char *key, int lo, int hi, int def, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);
    *out = def;
    if (!v || cJSON_IsNull(v))
        return PS_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi || v->valuedouble != (int)v->valuedouble)
        return ps_error_set(PS_EINVAL, "%s: must be an integer in %d..%d", key, lo, hi);
    *out = (int)v->valuedouble;
    return PS_OK;
}

int orch_task_submit(struct orch *o, const cJSON *req, const char *tenant, struct orch_task **out)
{
    *out = NULL;
    if (!cJSON_IsObject(req))
        return ps_error_set(PS_EINVAL, "request body must be a JSON object");
    static const char *const fields[] = { "input", "stream", "max_rounds", "max_calls", "deadline_ms", "script", "metadata" };
    for (const cJSON *k = req->child; k; k = k->next) {
        int known = 0;
        for (size_t i = 0; i < sizeof fields / sizeof fields[0] && !known; i++)
            known = !strcmp(k->string, fields[i]);
        if (!known)
            return ps_error_set(PS_EINVAL, "%s: unknown field", k->string);
    }
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(req, "input");
    if (!cJSON_IsString(input))
        return ps_error_set(PS_EINVAL, "input: required, must be a string");
    const cJSON *script = cJSON_GetObjectItemCaseSensitive(req, "script");
    if (script && !cJSON_IsNull(script)) {
        if (!cJSON_IsArray(script))
            return ps_error_set(PS_EINVAL, "script: must be a list of actions");
        int i = 0;
        const cJSON *a;
        cJSON_ArrayForEach(a, script) {
            char err[256];
            if (action_check(a, err, sizeof err))
                return ps_error_set(PS_EINVAL, "script[%d]: %s", i, err);
            i++;
        }
    } else {
        script = NULL;
    }
    int max_rounds, max_calls, deadline_ms;
    if (get_limit(req, "max_rounds", 1, 1000, o->cfg.max_rounds, &max_rounds) ||
        get_limit(req, "max_calls", 1, 100000, o->cfg.max_calls, &max_calls) ||
        get_limit(req, "deadline_ms", 1, 86400000, o->cfg.deadline_ms, &deadline_ms))
        return PS_EINVAL;
    if (script && max_rounds < cJSON_GetArraySize(script) && !cJSON_GetObjectItemCaseSensitive(req, "max_rounds"))
        max_rounds = cJSON_GetArraySize(script);

    struct orch_task *t = calloc(1, sizeof *t);
    if (!t)
        return ps_error_set(PS_ENOMEM, "out of memory");
    t->o = o;
    o->next_id++;
    snprintf(t->id, sizeof t->id, "task_%08llx%04x", (unsigned long long)o->next_id,
             (unsigned)(orch_now_ns() & 0xffff));
    t->tenant = strdup(tenant ? tenant : "default");
    t->input = strdup(input->valuestring);
    t->script = script ? cJSON_Duplicate(script, 1) : NULL;
    t->max_rounds = max_rounds;
    t->max_calls = max_calls;
    t->deadline_ms = deadline_ms;
    t->ledger = cJSON_CreateArray();
    t->g = exec_group_create(o->ex, on_feedback, t);
    t->kick = event_new(o->base, -1, 0, on_kick, t);
    t->deadline = evtimer_new(o->base, on_deadline, t);
    t->t_start = orch_now_ns();
    t->prev = o->tail;
    if (o->tail) o->tail->next = t; else o->head = t;
    o->tail = t;
    o->n_running++;
    if (!t->tenant || !t->input || (script && !t->script) || !t->ledger || !t->g || !t->kick || !t->deadline) {
        t->status = TASK_FAILED;
        o->n_running--;
        task_free(t);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    struct timeval tv = { deadline_ms / 1000, (deadline_ms % 1000) * 1000 };
    evtimer_add(t->deadline, &tv);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "id", t->id);
    cJSON_AddStringToObject(d, "input", t->input);
    cJSON_AddStringToObject(d, "mode", script ? "script" : "model");
    cJSON_AddNumberToObject(d, "max_rounds", max_rounds);
    cJSON_AddNumberToObject(d, "max_calls", max_calls);
    cJSON_AddNumberToObject(d, "deadline_ms", deadline_ms);
    emit(t, "task.created", d);
    event_active(t->kick, 0, 0);
    *out = t;
    return PS_OK;
}

struct orch_task *orch_task_find(struct orch *o, const char *id)
{
    for (struct orch_task *t = o->tail; t; t = t->prev)
        if (!strcmp(t->id, id))
            return t;
    return NULL;
}

const char *orch_task_id(const struct orch_task *t) { return t->id; }
const char *orch_task_tenant(const struct orch_task *t) { return t->tenant; }
enum orch_task_status orch_task_status(const struct orch_task *t) { return t->status; }
int orch_running(const struct orch *o) { return o->n_running; }

void orch_task_cancel(struct orch_task *t, const char *reason)
{
    task_finish(t, TASK_CANCELLED, reason ? reason : "cancelled by the client");
}

struct orch_sub *orch_task_subscribe(struct orch_task *t, int64_t after_id, orch_event_fn cb, void *ud)
{
    struct orch_sub *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->t = t;
    s->cb = cb;
    s->ud = ud;
    for (int i = 0; i < t->n_events; i++)
        if (t->events[i].id > after_id) {
            struct orch_event ev = { t->events[i].id, t->events[i].type, t->events[i].data };
            cb(ud, t, &ev);
        }
    s->next = t->subs;
    if (t->subs)
        t->subs->prev = s;
    t->subs = s;
    return s;
}

void orch_unsubscribe(struct orch_sub *s)
{
    if (!s)
        return;
    struct orch_task *t = s->t;
    if (s->prev) s->prev->next = s->next; else t->subs = s->next;
    if (s->next) s->next->prev = s->prev;
    free(s);
}

void orch_task_release(struct orch_task *t)
{
    if (!t || t->status == TASK_RUNNING)
        return;
    t->o->n_finished--;
    task_free(t);
}

char *orch_task_prompt(const struct orch_task *t)
{
    cJSON *cat = registry_catalogue(t->o->reg);
    char *cats = cJSON_PrintUnformatted(cat);
    cJSON_Delete(cat);
    cJSON *led = cJSON_CreateArray();
    const cJSON *e;
    cJSON_ArrayForEach(e, t->ledger) {
        cJSON *c = cJSON_Duplicate(e, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(c, "args");
        cJSON_AddItemToArray(led, c);
    }
    char *leds = cJSON_PrintUnformatted(led);
    cJSON_Delete(led);
    const char *head =
        "You are the orchestrator. Decide which agents to call. Reply with one JSON action: "
        "{\"calls\":[{\"id\":\"c1\",\"to\":AGENT,\"args\":{...},\"after\":[ids]}]} or {\"wait\":true} "
        "or {\"cancel\":[ids]} or {\"final\":{\"answer\":TEXT,\"uses\":[ids]}}.\n";
    size_t n = strlen(head) + strlen(t->input) + (cats ? strlen(cats) : 0) + (leds ? strlen(leds) : 0) + 64;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%sAgents: %s\nTask: %s\nLedger: %s\n", head, cats ? cats : "[]", t->input,
                 leds ? leds : "[]");
    free(cats);
    free(leds);
    return p;
}
