/* task.c - orchestrator task loop, ledger and event log (see task.h). */
#include "orchestrator/task.h"

#include <ctype.h>
#include <event2/event.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/grow.h"
#include "common/json_get.h"
#include "common/status.h"
#include "common/shared_text.h"
#include "common/str_index.h"
#include "common/utf8_cut.h"
#include "orchestrator/action.h"
#include "orchestrator/httpc.h"
#include "orchestrator/jbuf.h"
#include "orchestrator/json_alloc.h"
#include "orchestrator/registry.h"
#include "orchestrator/trajectory.h"

struct ev_rec {
    int64_t     id;
    const char *type;   /* a string literal */
    char       *data;
    size_t      len;    /* strlen(data) */
    int64_t     t_us;   /* the numbers struct orch_event carries */
    int64_t     d2r_us, r2r_us;
};

#define TASK_FALLBACK_BYTES 320   /* terminal event text when printing fails */
#define TRANSCRIPT_RESULT_MAX 600 /* bytes of one result shown to the model */
/* Model-driven tasks keep time before their deadline for a final decision:
 * initially min(deadline / 4, TASK_RESERVE_INIT_MS), then see reserve_update. */
#define TASK_RESERVE_INIT_MS  4000
#define TASK_RESERVE_SLACK_MS 500

struct orch_sub {
    struct orch_task *t;
    orch_event_fn     cb;
    void             *ud;
    int64_t           seen;     /* id of the last event delivered to it */
    int               dead;     /* unsubscribed during a delivery: freed after it */
    struct orch_sub  *prev, *next;
};

/* Incremental search of a decision's text for the start of its final
 * answer: "final", then "answer", then the opening quote of its value,
 * with no "calls" anywhere (a final among calls is not watched).  Each
 * token's text is searched once (plus a pattern's length of overlap), not
 * the whole decision again at every token. */
struct answer_watch {
    size_t scanned;      /* bytes of the text searched so far */
    int    stage;        /* 0: looking for "final", 1: "answer", 2: its quote, 3: found */
    size_t from;         /* stages 1 and 2: search from this offset on */
    size_t answer;       /* stage 3: offset of the answer's first byte */
    int    calls;        /* "calls" seen: never an answer */
};

/* Running tasks of one tenant (max_running_per_tenant).  Kept for the
 * orch's life: tenants are few (the server's API keys). */
struct tenant_load {
    char               *tenant;
    int                 running;
    struct tenant_load *next;
};

struct orch_task {
    struct orch          *o;
    char                  id[40];
    char                 *tenant;
    struct tenant_load   *load;        /* its tenant's running count */
    char                 *input;
    cJSON                *metadata;    /* the request's, or NULL */
    cJSON                *script;      /* NULL: model-driven */
    int                   script_borrowed; /* script is still the request's (submit not done) */
    int                   script_pos;
    int                   max_rounds, max_calls, deadline_ms;
    enum orch_task_status status;
    char                 *error;       /* error_short when strdup failed */
    char                  error_short[160];
    cJSON                *output;
    int                   rounds, n_calls;
    int                   n_ledger;      /* entries in ledger */
    struct str_index      ledger_ix;     /* call id -> its (first) ledger entry */
    cJSON                *ledger;      /* [{id,to,args,after,status,result,error,ms,attempts}] */
    struct exec_group    *g;
    struct ev_rec        *events;
    int                   n_events, cap_events;  /* cap_events > n_events while running */
    int                   log_error;   /* a non-terminal event could not be stored */
    char                 *fallback;    /* preallocated terminal event text */
    struct shared_text   *summary_text; /* orch_task_summary_text's, until summary_changed() */
    char                 *transcript;  /* append-only decision/feedback history */
    struct trajectory    *traj;        /* NULL: the task records none */
    /* a finished task restored from a store (orch_task_restore): its
     * summary is summary_text, its calls a count, its trajectory in the
     * store (restored_traj: it has one) */
    int                   restored;
    int                   restored_script, restored_calls, restored_traj;
    size_t                tr_len, tr_cap;
    cJSON                *usage;       /* [{round,prompt_tokens,cached_tokens,completion_tokens}] */
    struct orch_sub      *subs;
    int                   delivering;  /* deliver() is on the stack */
    int                   in_feedback; /* on_feedback() is on the stack: the executor works on g */
    struct event         *kick, *deadline;
    int                   new_feedback;
    int                   deciding;
    void                 *decider_handle;
    struct action_parser *parser;
    cJSON                *final_pending;
    cJSON                *made;        /* this decision's calls as dispatched (ids filled in) */
    int                   final_only;  /* the decision being made must be a final */
    size_t                answer_keep; /* > 0: the final answer being decoded looped; bytes of it kept */
    struct answer_watch   watch;       /* where this decision's final answer starts (model-driven) */
    int                   finalize;    /* deadline near: decide a final now */
    int                   repeated;    /* a decision only repeated answered calls: the next is final-only */
    struct event         *finalize_ev; /* fires at deadline - reserve (model-driven) */
    int64_t               reserve_ms;  /* time kept for the last decision(s) */
    int64_t               t_decide;    /* start of the decision being made */
    int64_t               t_start, t_end;   /* t_end: 0 while running */
    int64_t               created_unix_ms;
    struct orch_task     *prev, *next;          /* creation order */
    struct orch_task     *fin_prev, *fin_next;  /* finish order (in_fin == FIN_LISTED) */
    int                   in_fin;               /* enum fin_state */
    uint64_t              id_hash;
    int                   indexed;              /* in o->index */
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
    struct orch_task      *fin_head, *fin_tail;   /* finished tasks, oldest end first */
    /* Tasks by id: open addressing with linear probing on id_hash; a power
     * of two slots (0 before the first task), at most half used; NULL is
     * an empty slot (removal shifts the probe chain back, no tombstones). */
    struct orch_task     **index;
    size_t                 index_cap, index_n;
    int                    n_running, n_finished;
    struct tenant_load    *loads;         /* every tenant seen */
    struct str_index       loads_ix;      /* by tenant */
    char                  *prompt_head;   /* prompt_head()'s, made on first use */
    size_t                 prompt_head_len;
    uint64_t               next_id;
    struct orch_stats      stats;         /* n_running apart */
};

static const char *const task_status_names[] = { "running", "completed", "failed", "cancelled" };

const char *orch_task_status_str(enum orch_task_status s)
{
    return (unsigned)s < 4 ? task_status_names[s] : "?";
}

/* The task's summary changes: a shared text printed before no longer
 * stands for it (its holders keep theirs). */
static void summary_changed(struct orch_task *t)
{
    shared_text_unref(t->summary_text);
    t->summary_text = NULL;
}

/* ---- events ------------------------------------------------------------------ */

/* Append an event to the log and deliver it to subscribers.
 *
 * Invariant: while a task runs its log has a free slot (cap_events >
 * n_events), so the terminal event can always be stored; it falls back to
 * the preallocated `fallback` text when printing it runs out of memory.
 * A non-terminal event that cannot be stored (out of memory, or the log
 * reached max_events) is not delivered: emit() returns PS_ENOMEM / PS_EFULL,
 * records it in log_error and kicks the task, whose next on_kick fails it
 * with that typed error (deferred: emit() runs inside executor callbacks,
 * which must not cancel or destroy the group).  Once log_error is set no
 * further non-terminal event is stored, so the log never has a hole. */
static void log_fail(struct orch_task *t, int st)
{
    if (t->log_error)
        return;
    t->log_error = st;
    if (t->kick)
        event_active(t->kick, 0, 0);
}

/* An event or record member that could not be added (out of memory): the
 * task fails with that typed error rather than report less than happened. */
static void need(struct orch_task *t, int added)
{
    if (!added)
        log_fail(t, PS_ENOMEM);
}

/* The task records its trajectory and will keep more steps (not past its
 * size limit): a scripted task keeps a transcript and builds prompts only
 * then. */
static int traj_live(const struct orch_task *t)
{
    return t->traj && !trajectory_full(t->traj);
}

/* The trajectory's step for the decision being made begins / ends (a
 * task that records one; a step that could not be kept for lack of memory
 * fails the task as a lost event does: the document never misses a
 * decision the model made). */
static void traj_begin(struct orch_task *t, const char *prompt)
{
    if (t->traj)
        need(t, prompt && trajectory_begin(t->traj, t->rounds, prompt, t->n_ledger) == PS_OK);
}

static void traj_end(struct orch_task *t, const char *text, size_t n, int valid, const char *note)
{
    if (t->traj)
        need(t, trajectory_end(t->traj, text, n, valid, note, (orch_now_ns() - t->t_decide) / 1000000) == PS_OK);
}

/* The step ends cut short (the decision failed, or the task ended during
 * it): not valid, with the text decoded until then, if any. */
static void traj_end_cut(struct orch_task *t, const char *note)
{
    size_t tl = 0;
    const char *txt = t->traj && t->parser ? action_parser_text(t->parser, &tl) : NULL;
    traj_end(t, tl ? txt : NULL, tl, 0, note);
}

/* Where a task stands for eviction.  A finished task with subscribers is
 * never evicted: the eviction walk takes it off the list (FIN_PINNED) so
 * that later walks do not pass it again (with every finished task
 * subscribed, as under `paraserve orchestrate`, each end walked them all),
 * and its last unsubscribe puts it back at the head, oldest first. */
enum fin_state { FIN_NONE = 0, FIN_LISTED = 1, FIN_PINNED = 2 };

static void fin_link_head(struct orch *o, struct orch_task *t)
{
    t->fin_prev = NULL;
    t->fin_next = o->fin_head;
    if (o->fin_head) o->fin_head->fin_prev = t; else o->fin_tail = t;
    o->fin_head = t;
    t->in_fin = FIN_LISTED;
}

static void fin_unlink(struct orch *o, struct orch_task *t)
{
    if (t->fin_prev) t->fin_prev->fin_next = t->fin_next; else o->fin_head = t->fin_next;
    if (t->fin_next) t->fin_next->fin_prev = t->fin_prev; else o->fin_tail = t->fin_prev;
    t->fin_prev = t->fin_next = NULL;
    t->in_fin = FIN_NONE;
}

static void sub_unlink_free(struct orch_sub *s)
{
    struct orch_task *t = s->t;
    if (s->prev) s->prev->next = s->next; else t->subs = s->next;
    if (s->next) s->next->prev = s->prev;
    free(s);
    if (!t->subs && t->in_fin == FIN_PINNED)
        fin_link_head(t->o, t); /* evicted by the next task's end, not here: a caller may still hold t */
}

/* Bring every subscriber up to the end of the log, each in event order.
 * Callbacks may emit (a cancel ends the task), subscribe or unsubscribe:
 * an event emitted inside a callback is appended to the log and delivered
 * by the outermost deliver(), after the event being delivered has reached
 * every subscriber that had not seen it, so no subscriber sees ids out of
 * order or twice; a subscription ended inside a callback gets nothing
 * more and is freed when the outermost deliver() returns. */
static void deliver(struct orch_task *t)
{
    if (t->delivering)
        return;
    t->delivering = 1;
    for (;;) {
        int64_t lo = t->n_events;
        for (const struct orch_sub *s = t->subs; s; s = s->next)
            if (!s->dead && s->seen < lo)
                lo = s->seen;
        if (lo >= t->n_events)
            break;
        /* One pass in id order; a subscriber takes an event only when it is
         * the next one for it (one added during the pass, further back,
         * catches up on the next pass). */
        for (int64_t id = lo + 1; id <= t->n_events; id++) {
            for (struct orch_sub *s = t->subs; s; s = s->next) {
                if (s->dead || s->seen != id - 1)
                    continue;
                s->seen = id;
                const struct ev_rec *e = &t->events[id - 1];
                struct orch_event ev = { e->id, e->type, e->data, e->len, e->t_us, e->d2r_us, e->r2r_us };
                s->cb(s->ud, t, &ev);
            }
        }
    }
    t->delivering = 0;
    for (struct orch_sub *s = t->subs, *nx; s; s = nx) {
        nx = s->next;
        if (s->dead)
            sub_unlink_free(s);
    }
}

/* Store and deliver an event whose data object is the text in b (consumed;
 * b->oom or NULL b: the event could not be printed); d2r_us / r2r_us: the
 * overheads a call.result's text carries (-1: none). */
static int emit_text_n(struct orch_task *t, const char *type, struct jbuf *b, int terminal, int64_t d2r_us,
                       int64_t r2r_us)
{
    char *text = NULL;
    size_t len = 0;
    int64_t us = (orch_now_ns() - t->t_start) / 1000;
    summary_changed(t);   /* whatever the event reports changed the task */
    if (b && !b->oom && !(terminal ? 0 : t->log_error) && b->len >= 2 && b->p[b->len - 1] == '}') {
        /* "task" and "t_ms" appended as text (no printf): one malloc for
         * the event */
        char frac[4] = { (char)('0' + us % 1000 / 100), (char)('0' + us % 100 / 10), (char)('0' + us % 10), '}' };
        int more = b->len > 2;                      /* members before ours */
        b->len--;                                   /* the closing brace */
        if (more)
            jbuf_add(b, ",", 1);
        jbuf_add(b, "\"task\":\"", 8);
        jbuf_add(b, t->id, strlen(t->id));
        jbuf_add(b, "\",\"t_ms\":", 9);
        jbuf_add_int(b, (long long)(us / 1000));
        jbuf_add(b, ".", 1);
        jbuf_add(b, frac, 4);
        len = b->len;
        text = jbuf_take(b);
    } else if (b) {
        jbuf_free(b);
    }
    if (!terminal) {
        int st = t->log_error;
        if (!st && !text)
            st = PS_ENOMEM;
        if (!st && t->n_events + 2 > t->o->cfg.max_events)
            st = PS_EFULL;
        if (!st && t->n_events + 2 > t->cap_events) {
            int cap = t->cap_events * 2;
            struct ev_rec *ne = realloc(t->events, (size_t)cap * sizeof *ne);
            if (ne) {
                t->events = ne;
                t->cap_events = cap;
            } else {
                st = PS_ENOMEM;
            }
        }
        if (st) {
            free(text);
            log_fail(t, st);
            return st;
        }
    } else if (!text) {
        text = t->fallback;
        t->fallback = NULL;
        if (!text)
            return PS_ENOMEM;   /* unreachable: one terminal event per task */
        snprintf(text, TASK_FALLBACK_BYTES,
                 "{\"id\":\"%s\",\"status\":\"%s\",\"output\":null,\"calls\":[],\"rounds\":%d,"
                 "\"error\":\"out of memory while reporting the task's end\",\"task\":\"%s\",\"t_ms\":0}",
                 t->id, orch_task_status_str(t->status), t->rounds, t->id);
        us = 0;                 /* as the text says */
        len = strlen(text);
    }
    struct ev_rec *e = &t->events[t->n_events++];
    e->id = t->n_events;
    e->type = type;
    e->data = text;
    e->len = len;
    e->t_us = us;
    e->d2r_us = d2r_us;
    e->r2r_us = r2r_us;
    deliver(t);
    return PS_OK;
}

static int emit_text(struct orch_task *t, const char *type, struct jbuf *b, int terminal)
{
    return emit_text_n(t, type, b, terminal, -1, -1);
}

/* emit_text of a non-terminal event from a cJSON object (taken), printed by jbuf: integers without
 * cJSON's sprintf + sscanf round trip, into a stack buffer. */
static int emit(struct orch_task *t, const char *type, cJSON *data /* taken */)
{
    char stack[4096];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    if (data && !t->log_error)
        jbuf_json(&b, data);
    else
        b.oom = 1;
    cJSON_Delete(data);
    return emit_text(t, type, &b, 0);
}

/* ,"key":<item> (or {"key":<item> when first) into b; a NULL item as null. */
static void jb_member(struct jbuf *b, int first, const char *key, const cJSON *item)
{
    jbuf_add(b, first ? "{\"" : ",\"", 2);
    jbuf_add(b, key, strlen(key));
    jbuf_add(b, "\":", 2);
    if (item)
        jbuf_json(b, item);
    else
        jbuf_add(b, "null", 4);
}

/* Append text to the transcript the model reads (append-only, so each
 * round's prompt extends the previous one and the prefix cache serves it).
 * Out of memory fails the task like a lost event. */
static void transcript_add(struct orch_task *t, const char *a, const char *b, const char *c)
{
    if (t->script && !traj_live(t))
        return;   /* only a model reads it, or a trajectory records it */
    const char *parts[3] = { a, b, c };
    size_t n = 0;
    for (int i = 0; i < 3; i++)
        n += parts[i] ? strlen(parts[i]) : 0;
    if (t->tr_len + n + 1 > t->tr_cap) {
        char *nb = ps_grow(t->transcript, &t->tr_cap, t->tr_len + n + 1, 1, 1024);
        if (!nb) {
            log_fail(t, PS_ENOMEM);
            return;
        }
        t->transcript = nb;
    }
    for (int i = 0; i < 3; i++) {
        size_t l = parts[i] ? strlen(parts[i]) : 0;
        if (l)
            memcpy(t->transcript + t->tr_len, parts[i], l);
        t->tr_len += l;
    }
    t->transcript[t->tr_len] = 0;
}

static void task_finish(struct orch_task *t, enum orch_task_status st, const char *error);

#define TRANSCRIPT_DROPPED "(Earlier decisions and results were dropped: the context is full.)\n"
#define TRANSCRIPT_LAST    "Last decision: give the final answer now.\n"

/* The prompt is over the model's context: make this decision the final and
 * drop the oldest half of the transcript (at a line boundary) until it
 * fits; the cut breaks prefix-cache reuse once.  Returns 1 when the task
 * ended (nothing more to drop), else 0 with the transcript fitting. */
static int transcript_fit(struct orch_task *t)
{
    struct orch *o = t->o;
    t->final_only = 1;
    for (;;) {
        const size_t skip = strncmp(t->transcript ? t->transcript : "", TRANSCRIPT_DROPPED,
                                    strlen(TRANSCRIPT_DROPPED)) ? 0 : strlen(TRANSCRIPT_DROPPED);
        const size_t body = t->tr_len - skip;
        const size_t tail = strlen(TRANSCRIPT_LAST);
        if (body <= tail) {
            task_finish(t, TASK_FAILED, "the task's instructions, agent catalogue and input alone do not fit "
                                        "the model's context");
            return 1;
        }
        /* keep the newer half (from a line start), then the closing line */
        size_t cut = skip + body / 2;
        while (cut < t->tr_len && t->transcript[cut - 1] != '\n')
            cut++;
        size_t keep = t->tr_len - cut;
        if (keep >= tail && !strcmp(t->transcript + t->tr_len - tail, TRANSCRIPT_LAST))
            keep -= tail;
        char *nt = malloc(strlen(TRANSCRIPT_DROPPED) + keep + tail + 1);
        if (!nt) {
            task_finish(t, TASK_FAILED, "out of memory");
            return 1;
        }
        int n = sprintf(nt, "%s", TRANSCRIPT_DROPPED);
        memcpy(nt + n, t->transcript + cut, keep);
        memcpy(nt + n + keep, TRANSCRIPT_LAST, tail + 1);
        free(t->transcript);
        t->transcript = nt;
        t->tr_len = (size_t)n + keep + tail;
        t->tr_cap = t->tr_len + 1;
        char *prompt = orch_task_prompt(t);
        if (!prompt) {
            task_finish(t, TASK_FAILED, "out of memory");
            return 1;
        }
        int32_t over = o->decider.over_context(o->decider.ctx, t, prompt);
        free(prompt);
        if (over <= 0)
            return 0;
    }
}

/* One feedback line for the model: {"id","to","status","result"|"error"},
 * the result cut to TRANSCRIPT_RESULT_MAX bytes of text. */
static void transcript_feedback(struct orch_task *t, const cJSON *rec)
{
    if (t->script && !traj_live(t))
        return;
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL;
    static const char *const keys[] = { "id", "to", "status" };
    for (size_t i = 0; ok && i < 3; i++)
        ok = json_add(o, keys[i], cJSON_Duplicate(json_get(rec, keys[i]), 1));
    const cJSON *err = json_get(rec, "error");
    const cJSON *res = json_get(rec, "result");
    if (ok && cJSON_IsString(err)) {
        ok = cJSON_AddStringToObject(o, "error", err->valuestring) != NULL;
    } else if (ok && res && !cJSON_IsNull(res)) {
        char *txt = exec_result_text(res);
        if (txt && strlen(txt) > TRANSCRIPT_RESULT_MAX)
            strcpy(txt + utf8_cut(txt, TRANSCRIPT_RESULT_MAX - 3), "...");   /* no character split */
        ok = txt && cJSON_AddStringToObject(o, "result", txt);
        free(txt);
    }
    char *line = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    /* the model must never read a result line with a member missing, nor
     * miss one: out of memory fails the task */
    need(t, line != NULL);
    if (line)
        transcript_add(t, "Result: ", line, "\n");
    free(line);
}

/* Replace every byte that is not part of a well-formed UTF-8 sequence with
 * '?', in place (model text cut anywhere must stay valid JSON text). */
static void utf8_scrub(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
        int ok = n > 0 && !(n == 2 && *p < 0xC2) && !(n == 4 && *p > 0xF4);
        for (int i = 1; ok && i < n; i++)
            ok = (p[i] & 0xC0) == 0x80;
        if (!ok) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

/* ---- helpers ------------------------------------------------------------------ */

/* The ledger entry of the call that ran under `id`: the first with it.  A
 * later entry with the same id is a call the task rejected for reusing it
 * (on_call_closed); it never reached the executor, so feedback, {{refs}}
 * and answers mean the first. */
static cJSON *ledger_find(struct orch_task *t, const char *id)
{
    return str_index_get(&t->ledger_ix, id);
}

/* Append entry e to the ledger and index its id (the first entry of an id
 * stays the one found).  PS_OK, or PS_ENOMEM with e appended but not
 * findable: the caller fails the task. */
static int ledger_append(struct orch_task *t, cJSON *e)
{
    summary_changed(t);
    cJSON_AddItemToArray(t->ledger, e);
    t->n_ledger++;
    const cJSON *id = json_get(e, "id");
    return cJSON_IsString(id) ? str_index_put(&t->ledger_ix, id->valuestring, e) : PS_OK;
}

/* The next reference "{{id}}" or "{{id.path}}" in s: returns where its "{{"
 * starts and sets *end past its "}}"; ref gets the call id and *path the
 * path after the first '.' ("" when none), or ref is "" when the reference
 * does not fit in refn bytes.  NULL when no closed reference follows. */
static const char *answer_ref_next(const char *s, const char **end, char *ref, size_t refn, const char **path)
{
    const char *open = strstr(s, "{{"), *close = open ? strstr(open + 2, "}}") : NULL;
    if (!close)
        return NULL;
    size_t n = (size_t)(close - open - 2);
    ref[0] = '\0';
    *path = "";
    if (n < refn) {
        memcpy(ref, open + 2, n);
        ref[n] = '\0';
        char *dot = strchr(ref, '.');
        if (dot) {
            *dot = '\0';
            *path = dot + 1;
        }
    }
    *end = close + 2;
    return open;
}

/* "{{c1}}" in a final answer string -> c1's result text, into *out (NULL
 * when there is no answer).  0, or -1 when out of memory. */
static int render_answer(struct orch_task *t, const cJSON *answer, cJSON **out)
{
    *out = NULL;
    if (!answer)
        return 0;
    if (!cJSON_IsString(answer) || !strstr(answer->valuestring, "{{"))
        return (*out = cJSON_Duplicate(answer, 1)) ? 0 : -1;
    const char *s = answer->valuestring;
    size_t cap = strlen(s) + 64, len = 0;
    char *text = malloc(cap);
    if (!text)
        return -1;
    while (*s) {
        char ref[80];
        const char *end, *path;
        const char *open = answer_ref_next(s, &end, ref, sizeof ref, &path);
        size_t pre = open ? (size_t)(open - s) : strlen(s);
        char *txt = NULL;
        if (open) {
            const cJSON *r = NULL;
            if (ref[0]) {
                cJSON *e = ledger_find(t, ref);
                const cJSON *st = json_get(e, "status");
                r = exec_json_path(json_get(e, "result"), path);
                if (!(cJSON_IsString(st) && !strcmp(st->valuestring, "ok")))
                    r = NULL;
            }
            /* a reference that does not resolve stays as written */
            txt = r ? exec_result_text(r) : strndup(open, (size_t)(end - open));
            if (!txt) {
                free(text);
                return -1;
            }
        }
        size_t tn = txt ? strlen(txt) : 0;
        if (len + pre + tn + 1 > cap) {
            cap = (len + pre + tn + 1) * 2;
            char *nb = realloc(text, cap);
            if (!nb) { free(text); free(txt); return -1; }
            text = nb;
        }
        memcpy(text + len, s, pre);
        len += pre;
        if (txt)
            memcpy(text + len, txt, tn);
        len += tn;
        free(txt);
        s = open ? end : s + pre;
    }
    text[len] = 0;
    *out = cJSON_CreateString(text);
    free(text);
    return *out ? 0 : -1;
}

cJSON *orch_task_summary(const struct orch_task *t)
{
    if (t->restored)
        return cJSON_ParseWithLength(t->summary_text->data, t->summary_text->len);
    cJSON *o = cJSON_CreateObject(), *calls = NULL;
    int ok = o && cJSON_AddStringToObject(o, "id", t->id) &&
             cJSON_AddStringToObject(o, "status", orch_task_status_str(t->status)) &&
             json_add(o, "output", t->output ? cJSON_Duplicate(t->output, 1) : cJSON_CreateNull()) &&
             (calls = cJSON_AddArrayToObject(o, "calls"));
    const cJSON *e;
    for (e = ok ? t->ledger->child : NULL; e && ok; e = e->next) {
        cJSON *c = cJSON_CreateObject();
        ok = json_add(calls, NULL, c);
        static const char *const keys[] = { "id", "to", "status", "result", "error", "ms", "attempts" };
        for (size_t i = 0; i < sizeof keys / sizeof keys[0] && ok; i++) {
            const cJSON *v = json_get(e, keys[i]);
            ok = json_add(c, keys[i], v ? cJSON_Duplicate(v, 1) : cJSON_CreateNull());
        }
    }
    ok = ok && cJSON_AddNumberToObject(o, "rounds", t->rounds);
    if (ok && t->metadata)
        ok = json_add(o, "metadata", cJSON_Duplicate(t->metadata, 1));
    if (ok && t->usage && cJSON_GetArraySize(t->usage)) {
        int sum[3] = { 0, 0, 0 };
        static const char *const uk[] = { "prompt_tokens", "cached_tokens", "completion_tokens" };
        cJSON_ArrayForEach(e, t->usage)
            for (int i = 0; i < 3; i++)
                sum[i] += (int)cJSON_GetNumberValue(json_get(e, uk[i]));
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        ok = u != NULL;
        for (int i = 0; i < 3 && ok; i++)
            ok = cJSON_AddNumberToObject(u, uk[i], sum[i]) != NULL;
        ok = ok && json_add(u, "decisions", cJSON_Duplicate(t->usage, 1));
    }
    if (ok && t->error)
        ok = cJSON_AddStringToObject(o, "error", t->error) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* orch_task_summary(t) printed, without building it: the same text for a
 * task without usage records (scripted tasks; test_orch_exec compares the
 * two). */
static void summary_print(const struct orch_task *t, struct jbuf *b)
{
    cJSON str = { .type = cJSON_String };
    str.valuestring = (char *)t->id;
    jb_member(b, 1, "id", &str);
    str.valuestring = (char *)orch_task_status_str(t->status);
    jb_member(b, 0, "status", &str);
    jb_member(b, 0, "output", t->output);
    jbuf_add(b, ",\"calls\":[", 10);
    const cJSON *e;
    cJSON_ArrayForEach(e, t->ledger) {
        static const char *const keys[] = { "id", "to", "status", "result", "error", "ms", "attempts" };
        /* members found in the entry's order (ledger_entry_new), each
         * looked up from the last one found; one out of order, anywhere */
        const cJSON *from = e->child;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            const cJSON *v = json_get_from(from, keys[i]);
            if (v)
                from = v->next;
            else
                v = json_get(e, keys[i]);
            jb_member(b, i == 0, keys[i], v);
        }
        jbuf_add(b, e->next ? "}," : "}", e->next ? 2 : 1);
    }
    char num[48];
    int n = snprintf(num, sizeof num, "],\"rounds\":%d", t->rounds);
    jbuf_add(b, num, (size_t)n);
    if (t->metadata)
        jb_member(b, 0, "metadata", t->metadata);
    if (t->error) {
        str.valuestring = t->error;
        jb_member(b, 0, "error", &str);
    }
    jbuf_add(b, "}", 1);
}

/* ---- lifecycle -------------------------------------------------------------------- */

/* Release the finished tasks without subscribers that ended first, while
 * more than keep_finished are kept, never `ending`: the task whose end
 * triggers this stays valid for its caller (DELETE replies with its
 * summary); a later end evicts it.  Walks the finished tasks only, so
 * thousands of running tasks created before them cost nothing here. */
static void evict_finished(struct orch *o, const struct orch_task *ending)
{
    for (struct orch_task *t = o->fin_head, *nx; t && o->n_finished > o->cfg.keep_finished; t = nx) {
        nx = t->fin_next;
        if (t == ending)
            continue;
        if (t->subs) {
            fin_unlink(o, t);
            t->in_fin = FIN_PINNED;
        } else {
            orch_task_release(t);
        }
    }
}

/* The summary's text into b: summary_print where it gives the same text
 * (no usage records), else orch_task_summary printed by jbuf (not cJSON's
 * printer: a number near DBL_MAX must read back). */
static void summary_text_print(const struct orch_task *t, struct jbuf *b)
{
    if (cJSON_GetArraySize(t->usage) > 0) {
        cJSON *s = orch_task_summary(t);
        if (s)
            jbuf_json(b, s);
        else
            b->oom = 1;
        cJSON_Delete(s);
    } else {
        summary_print(t, b);
    }
}

struct shared_text *orch_task_summary_text(struct orch_task *t)
{
    if (t->summary_text)
        return shared_text_ref(t->summary_text);
    char stack[4096];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    summary_text_print(t, &b);
    size_t len = b.len;
    struct shared_text *st = shared_text_adopt(jbuf_take(&b), len);
    if (st)
        t->summary_text = shared_text_ref(st);   /* until summary_changed() */
    return st;
}

/* A task starts (+1) or stops (-1) running: the orch's and its tenant's counts. */
static void running_add(struct orch_task *t, int d)
{
    t->o->n_running += d;
    if (t->load)
        t->load->running += d;
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
    /* Ended before its calls are cancelled: a subscriber that ends the
     * task again from one of their `cancelled` records finds it ended. */
    t->status = st;
    t->t_end = orch_now_ns();
    summary_changed(t);
    running_add(t, -1);   /* before the terminal event: its subscribers may submit */
    if (t->traj) {
        traj_end_cut(t, "the task ended during this decision (cancelled, its deadline, or a failure): the text "
                        "decoded until then");   /* a no-op unless it ended during one */
        trajectory_seal(t->traj);
    }
    if (error && !(t->error = strdup(error))) {
        /* out of memory: the message cut to fit, never dropped */
        snprintf(t->error_short, sizeof t->error_short, "%s", error);
        utf8_scrub(t->error_short);   /* the cut may split a character */
        t->error = t->error_short;
    }
    exec_group_cancel_all(t->g, st == TASK_COMPLETED ? "not used by the final answer" :
                                st == TASK_CANCELLED ? "task cancelled" : "task failed");
    if (t->deadline)
        event_del(t->deadline);
    if (t->finalize_ev)
        event_del(t->finalize_ev);
    const char *type = st == TASK_COMPLETED ? "task.final" : "task.error";
    char stack[4096];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    summary_text_print(t, &b);
    emit_text(t, type, &b, 1);
    if (t->in_feedback) {
        /* Ended from a subscriber's callback inside the executor's feedback
         * callback: the executor goes on with the group when that returns,
         * so it is destroyed on the next turn of the loop (on_kick). */
        event_active(t->kick, 0, 0);
    } else {
        exec_group_destroy(t->g);
        t->g = NULL;
    }
    o->n_finished++;
    o->stats.ended[st]++;
    histogram_observe(&o->stats.task_s, (double)(orch_now_ns() - t->t_start) / 1e9);
    t->fin_prev = o->fin_tail;
    if (o->fin_tail) o->fin_tail->fin_next = t; else o->fin_head = t;
    o->fin_tail = t;
    t->in_fin = FIN_LISTED;
    if (o->done_cb)
        o->done_cb(o->done_ud, t);
    evict_finished(o, t);
}

/* Set a ledger field in place (the entry's placeholders are replaced by
 * value, no node or key allocated).  0, or -1 when out of memory. */
static int json_set_string(cJSON *node, const char *s)
{
    if (!node)
        return -1;
    char *copy = strdup(s);
    if (!copy)
        return -1;
    if ((cJSON_IsString(node) || cJSON_IsRaw(node)) && !(node->type & cJSON_IsReference))
        free(node->valuestring);
    node->valuestring = copy;
    node->type = cJSON_String | (node->type & cJSON_StringIsConst);
    return 0;
}

/* Set a ledger field to a static text, allocating nothing (it cannot fail):
 * the node refers to `literal` (cJSON_IsReference: never freed; copies made
 * of it own theirs). */
static void json_set_static(cJSON *node, const char *literal)
{
    if (!node)
        return;
    if ((cJSON_IsString(node) || cJSON_IsRaw(node)) && !(node->type & cJSON_IsReference))
        free(node->valuestring);
    node->valuestring = (char *)literal;
    node->type = cJSON_String | cJSON_IsReference | (node->type & cJSON_StringIsConst);
}

static void json_set_null(cJSON *node)
{
    if ((cJSON_IsString(node) || cJSON_IsRaw(node)) && !(node->type & cJSON_IsReference))
        free(node->valuestring);
    node->valuestring = NULL;
    node->type = cJSON_NULL | (node->type & cJSON_StringIsConst);
}

/* Ledger entry `key`: the existing node, or a fresh null member. */
static cJSON *ledger_field(cJSON *e, const char *key)
{
    cJSON *v = json_get(e, key);
    if (!v && (v = cJSON_CreateNull()) && !cJSON_AddItemToObject(e, key, v)) {
        cJSON_Delete(v);
        v = NULL;
    }
    return v;
}

/* One finished call: its ledger entry is filled in place and the
 * call.result event printed from it, {"id","to","status","result","error",
 * "ms","attempts"} plus the two overheads in whole microseconds.  (Built as
 * a separate record and copied into the ledger field by field, this was
 * the largest share of the loop's allocations per call.) */
static void feedback_record(struct orch_task *t, const struct exec_feedback *fb)
{
    summary_changed(t);
    cJSON *e = ledger_find(t, fb->id), *own = NULL;
    if (!e) {
        /* not in the ledger (cannot happen: every call is entered before it
         * is submitted): report it all the same */
        if (!(e = own = cJSON_CreateObject()) || !cJSON_AddStringToObject(e, "id", fb->id) ||
            !cJSON_AddStringToObject(e, "to", fb->to)) {
            cJSON_Delete(own);
            log_fail(t, PS_ENOMEM);
            return;
        }
    }
    /* the entry's members in one pass (a lookup per key, twice, showed as
     * strcmp in the loop's profile); missing ones are added as null */
    static const char *const keys[] = { "id", "to", "status", "result", "error", "ms", "attempts" };
    enum { K_ID, K_TO, K_STATUS, K_RESULT, K_ERROR, K_MS, K_ATTEMPTS, K_N };
    cJSON *f[K_N] = { 0 };
    for (cJSON *ch = e->child; ch; ch = ch->next)
        for (int k = 0; k < K_N; k++)
            if (!f[k] && json_key_is(ch, keys[k])) {
                f[k] = ch;
                break;
            }
    for (int k = K_STATUS; k < K_N; k++)
        if (!f[k])
            f[k] = ledger_field(e, keys[k]);
    cJSON *st = f[K_STATUS], *res = f[K_RESULT], *err = f[K_ERROR], *ms = f[K_MS], *att = f[K_ATTEMPTS];
    if (!st || !res || !err || !ms || !att) {
        /* only an entry made here (own) can lack members */
        cJSON_Delete(own);
        log_fail(t, PS_ENOMEM);
        return;
    }
    /* The entry is always left whole and typed: the status is a static
     * text; a result that cannot be copied makes the call an exec_error
     * (the summary never shows "ok" without its result), an error text that
     * cannot be copied a static one.  Either way the record lost what the
     * agent said, so the task fails (log_fail) rather than answer without
     * it. */
    cJSON *rcopy = fb->result ? cJSON_Duplicate(fb->result, 1) : NULL;
    if (rcopy && json_put_literal(e, "result", rcopy)) {
        cJSON_Delete(rcopy);
        rcopy = NULL;
    } else if (rcopy) {
        f[K_RESULT] = rcopy;                    /* the ledger owns it */
    } else {
        json_set_null(res);
    }
    if (fb->result && !rcopy) {
        json_set_static(st, fb_status_str(FB_EXEC_ERROR));
        json_set_static(err, "out of memory while recording the agent's result");
        log_fail(t, PS_ENOMEM);
    } else {
        json_set_static(st, fb_status_str(fb->status));
        if (!fb->error) {
            json_set_null(err);
        } else if (json_set_string(err, fb->error)) {
            json_set_static(err, "(the error's text was lost: out of memory)");
            log_fail(t, PS_ENOMEM);
        }
    }
    cJSON_SetNumberValue(ms, (double)fb->ms);
    cJSON_SetNumberValue(att, fb->attempts);
    ms->type = cJSON_Number | (ms->type & cJSON_StringIsConst);
    att->type = cJSON_Number | (att->type & cJSON_StringIsConst);
    if (t->status == TASK_RUNNING)
        transcript_feedback(t, e);
    char stack[4096];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    for (int k = 0; k < K_N; k++)
        jb_member(&b, k == 0, keys[k], f[k]);
    int64_t d2r_us = fb->dispatch_to_recv_ns >= 0 ? fb->dispatch_to_recv_ns / 1000 : -1;
    int64_t r2r_us = fb->reply_to_record_ns >= 0 ? fb->reply_to_record_ns / 1000 : -1;
    if (d2r_us >= 0) {
        jbuf_add(&b, ",\"dispatch_to_recv_us\":", 23);
        jbuf_add_int(&b, (long long)d2r_us);
    }
    if (r2r_us >= 0) {
        jbuf_add(&b, ",\"reply_to_record_us\":", 22);
        jbuf_add_int(&b, (long long)r2r_us);
    }
    jbuf_add(&b, "}", 1);
    cJSON_Delete(own);
    emit_text_n(t, "call.result", &b, 0, d2r_us, r2r_us);
    t->new_feedback++;
    if (t->status == TASK_RUNNING)
        event_active(t->kick, 0, 0);
}

/* The executor's feedback callback (the group's calls must outlive it:
 * see task_finish). */
static void on_feedback(void *ud, const struct exec_feedback *fb)
{
    struct orch_task *t = ud;
    t->in_feedback++;
    feedback_record(t, fb);
    t->in_feedback--;
}

/* A fresh id for a call that came without one: "c<k>", k the call's
 * 1-based position among the task's calls, or the next number not taken
 * (a script may use c-ids itself).  Unique within the task by construction. */
static void fresh_id(struct orch_task *t, char *buf, size_t n)
{
    int k = t->n_ledger + 1;
    for (;; k++) {
        snprintf(buf, n, "c%d", k);
        if (!ledger_find(t, buf))
            return;
    }
}

/* A copy of `call` with "id" first (caller frees); NULL when out of memory. */
static cJSON *call_with_id(const cJSON *call, const char *id)
{
    cJSON *c = cJSON_CreateObject();
    if (!c || !cJSON_AddStringToObject(c, "id", id))
        goto fail;
    for (const cJSON *k = call->child; k; k = k->next) {
        if (!strcmp(k->string, "id"))
            continue;
        if (!json_add(c, k->string, cJSON_Duplicate(k, 1)))
            goto fail;
    }
    return c;
fail:
    cJSON_Delete(c);
    return NULL;
}

static void reserve_update(struct orch_task *t, int64_t ms);

/* A new ledger entry for `call`: {"id","to","args","after","status",
 * "result","error","ms","attempts"}, the last five still null / 0, in that
 * order (summary_print relies on it; keys are literals, not copied).  NULL
 * when out of memory. */
static cJSON *ledger_entry_new(const cJSON *call)
{
    const cJSON *id = json_get(call, "id");
    const cJSON *to = json_get(call, "to");
    const cJSON *args = json_get(call, "args");
    const cJSON *after = json_get(call, "after");
    static const char *const keys[9] = { "id", "to", "args", "after", "status", "result", "error", "ms",
                                         "attempts" };
    cJSON *e = cJSON_CreateObject();
    cJSON *fields[9] = {
        cJSON_IsString(id) ? cJSON_Duplicate(id, 0) : cJSON_CreateNull(),
        cJSON_IsString(to) ? cJSON_Duplicate(to, 0) : cJSON_CreateNull(),
        args ? cJSON_Duplicate(args, 1) : cJSON_CreateObject(),
        after ? cJSON_Duplicate(after, 1) : cJSON_CreateArray(),
        cJSON_CreateNull(), cJSON_CreateNull(), cJSON_CreateNull(), cJSON_CreateNumber(0), cJSON_CreateNumber(0),
    };
    int ok = e != NULL;
    for (int i = 0; i < 9; i++) {
        if (ok && fields[i] && cJSON_AddItemToObjectCS(e, keys[i], fields[i]))
            continue;
        ok = 0;
        cJSON_Delete(fields[i]);
    }
    if (!ok) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

static void on_call_closed(void *ud, const cJSON *call_in)
{
    struct orch_task *t = ud;
    if (t->status != TASK_RUNNING)
        return;
    cJSON *own = NULL;
    const cJSON *call = call_in;
    /* A call without a usable id gets a fresh one, so that its record and
     * its events carry the same id, found once: absent (the grammar leaves
     * ids out), or - rejected then - not a string of 1-ORCH_MAX_CALL_ID
     * characters, or the call not an object at all. */
    const cJSON *given = cJSON_IsObject(call_in) ? json_get(call_in, "id") : NULL;
    char bad[192] = "";
    if (!cJSON_IsObject(call_in))
        snprintf(bad, sizeof bad, "a call must be a JSON object {\"to\", \"args\", ...}");
    else if (given && !(cJSON_IsString(given) && given->valuestring[0] &&
                        strlen(given->valuestring) <= ORCH_MAX_CALL_ID))
        snprintf(bad, sizeof bad, "call 'id' must be a string of 1-%d characters", ORCH_MAX_CALL_ID);
    if (bad[0] || !given) {
        char idb[32];
        fresh_id(t, idb, sizeof idb);
        own = cJSON_IsObject(call_in) ? call_with_id(call_in, idb) : cJSON_CreateObject();
        if (!own || (!cJSON_IsObject(call_in) && !cJSON_AddStringToObject(own, "id", idb))) {
            cJSON_Delete(own);
            log_fail(t, PS_ENOMEM);
            return;
        }
        if (bad[0]) {
            size_t n = strlen(bad);
            snprintf(bad + n, sizeof bad - n, " (recorded as '%s')", idb);
        }
        call = own;
    }
    if (t->made) {
        cJSON *copy = cJSON_Duplicate(call, 1);
        if (copy)
            cJSON_AddItemToArray(t->made, copy);
        else
            log_fail(t, PS_ENOMEM);
    }
    const cJSON *id = json_get(call, "id");
    cJSON *e = ledger_entry_new(call);
    if (!e) {
        /* never submitted: a call without a ledger entry would end with no
         * record in the task's summary */
        cJSON_Delete(own);
        log_fail(t, PS_ENOMEM);
        return;
    }
    /* An id the task already used, or a call over the limit: recorded as
     * rejected without reaching the executor.  (A duplicate that reached it
     * would be rejected there too, but its feedback, matched by id, could
     * land on the first call's ledger entry.) */
    char err[192] = "";
    if (bad[0])
        snprintf(err, sizeof err, "%s", bad);
    else if (cJSON_IsString(id) && ledger_find(t, id->valuestring))
        snprintf(err, sizeof err, "duplicate call id '%.64s'", id->valuestring);
    else if (t->n_calls >= t->max_calls)
        snprintf(err, sizeof err, "task call limit (%d) reached", t->max_calls);
    if (err[0]) {
        const cJSON *to = json_get(call, "to");
        exec_count_rejected(t->o->ex, cJSON_IsString(to) ? to->valuestring : NULL);
        cJSON *rec = NULL;
        json_set_static(json_get(e, "status"), fb_status_str(FB_REJECTED));
        if (json_set_string(json_get(e, "error"), err))
            json_set_static(json_get(e, "error"), "rejected (its reason was lost: out of memory)");
        if (!(rec = cJSON_Duplicate(e, 1))) {
            cJSON_Delete(e);
            cJSON_Delete(own);
            log_fail(t, PS_ENOMEM);
            return;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(rec, "args");
        cJSON_DeleteItemFromObjectCaseSensitive(rec, "after");
        if (ledger_append(t, e))
            log_fail(t, PS_ENOMEM);
        transcript_feedback(t, rec);
        emit(t, "call.result", rec);
        t->new_feedback++;
        event_active(t->kick, 0, 0);
        cJSON_Delete(own);
        return;
    }
    t->n_calls++;
    if (ledger_append(t, e)) {
        /* a call whose feedback could not find its entry: not submitted */
        json_set_static(json_get(e, "status"), fb_status_str(FB_EXEC_ERROR));
        json_set_static(json_get(e, "error"), "out of memory: the call could not be entered");
        log_fail(t, PS_ENOMEM);
        cJSON_Delete(own);
        return;
    }
    /* The event, {"id","to","args","after"}, printed from the ledger entry
     * (no copy of it). */
    char stack[4096];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    static const char *const keys[] = { "id", "to", "args", "after" };
    for (size_t i = 0; i < 4; i++)
        jb_member(&b, i == 0, keys[i], json_get(e, keys[i]));
    jbuf_add(&b, "}", 1);
    /* Submitted before the event goes out (feedback never comes back
     * inside submit): a subscriber may end the task from its callback, and
     * the ending then cancels this call like the others.  Submitted even
     * when the event cannot be stored: the task is failing then, and its
     * end cancels the call, keeping the ledger whole.  A call the executor
     * could not take (out of memory) would never get a record: the task
     * fails with that typed error (log_fail) rather than wait for it. */
    if (exec_group_submit(t->g, call) != PS_OK) {
        /* its record, which no feedback will fill: the task's end (task
         * summaries need a status for every call) */
        json_set_static(json_get(e, "status"), fb_status_str(FB_EXEC_ERROR));
        json_set_static(json_get(e, "error"), "out of memory: the executor could not take the call");
        log_fail(t, PS_ENOMEM);
    }
    emit_text(t, "call.dispatched", &b, 0);
    cJSON_Delete(own);
}

/* The decision's calls as dispatched (ids filled in) replace the parsed
 * ones, so the decision event and the transcript show the ids. */
static void action_fill_ids(struct orch_task *t, cJSON *action)
{
    cJSON *calls = json_get(action, "calls");
    if (!cJSON_IsArray(calls) || !t->made || cJSON_GetArraySize(calls) != cJSON_GetArraySize(t->made))
        return;
    cJSON *nc = cJSON_Duplicate(t->made, 1);
    if (!nc || json_put_literal(action, "calls", nc)) {
        cJSON_Delete(nc);
        log_fail(t, PS_ENOMEM);            /* the decision event would lack the ids */
    }
}

int orch_task_final_only(const struct orch_task *t) { return t->final_only; }

/* {"final":{"answer": the answer text decoded so far}} from a final-only
 * decision that stopped before its document closed, or NULL.  The text is
 * a prefix of {"final": {"answer": "...", "uses": [...]}}; an escape or a
 * UTF-8 sequence cut at the end is dropped. */
static cJSON *final_salvage(struct orch_task *t)
{
    size_t n;
    const char *txt = action_parser_text(t->parser, &n);
    const char *a = strstr(txt, "\"answer\"");
    if (!a || !(a = strchr(a + 8, '"')))
        return NULL;
    a++;
    size_t i = 0, len = strlen(a);
    if (t->answer_keep && t->answer_keep < len) {
        /* a loop was cut: keep its first time, without a word cut in two
         * or trailing separators */
        len = t->answer_keep;
        size_t w = len;
        while (w > 0 && isalnum((unsigned char)a[w - 1]))
            w--;
        if (w > 0 && w < len && isalnum((unsigned char)a[len]))
            len = w;
        while (len > 1 && strchr(" ,;", a[len - 1]))
            len--;
    }
    size_t last_esc = SIZE_MAX, prev_esc = SIZE_MAX;   /* where the last two escapes start */
    while (i < len && a[i] != '"') {
        if (a[i] == '\\') {
            prev_esc = last_esc;
            last_esc = i;
            i += 2;
        } else {
            i++;
        }
    }
    size_t before = last_esc;  /* the escape that may now end the text */
    if (i > len) {             /* cut right after a backslash */
        i = last_esc;
        before = prev_esc;
    } else if (i == len && last_esc != SIZE_MAX && a[last_esc + 1] == 'u' && len - last_esc < 6) {
        i = last_esc;          /* cut inside a \uXXXX */
        before = prev_esc;
    }
    /* a high surrogate whose low half was cut off cannot stand alone */
    if (before != SIZE_MAX && before + 6 == i && a[before + 1] == 'u' && (a[before + 2] | 0x20) == 'd' &&
        strchr("89abAB", a[before + 3]))
        i = before;
    char *q = malloc(i + 3);
    if (!q)
        return NULL;
    q[0] = '"';
    memcpy(q + 1, a, i);
    q[i + 1] = '"';
    q[i + 2] = 0;
    utf8_scrub(q);
    cJSON *ans = cJSON_Parse(q);
    free(q);
    cJSON *act = cJSON_CreateObject(), *fin = act ? cJSON_AddObjectToObject(act, "final") : NULL;
    if (!cJSON_IsString(ans) || !fin) {
        cJSON_Delete(ans);
        cJSON_Delete(act);
        return NULL;
    }
    if (!json_add(fin, "answer", ans)) {
        cJSON_Delete(act);
        log_fail(t, PS_ENOMEM);
        return NULL;
    }
    /* The cut text never reached "uses": the calls the answer references
     * ({{id}} / {{id.path}}) are its uses, so it waits for them - unless
     * the deadline is near (finalize): then a call still running is left
     * out, its reference stays text, and the task ends before the deadline
     * instead of waiting into it. */
    cJSON *uses = cJSON_AddArrayToObject(fin, "uses");
    if (!uses) {
        cJSON_Delete(act);
        log_fail(t, PS_ENOMEM);
        return NULL;
    }
    char id[80];
    const char *end, *path;
    for (const char *r = ans->valuestring; uses && answer_ref_next(r, &end, id, sizeof id, &path); r = end) {
        if (!id[0])
            continue;
        int seen = 0;
        const cJSON *u;
        cJSON_ArrayForEach(u, uses) seen |= !strcmp(u->valuestring, id);
        int cs = exec_group_call_status(t->g, id);
        if (!seen && cs != -1 && !(t->finalize && cs == -2) && !json_add(uses, NULL, cJSON_CreateString(id))) {
            cJSON_Delete(act);     /* a final without one of its uses would not wait for it */
            log_fail(t, PS_ENOMEM);
            return NULL;
        }
    }
    if (!cJSON_GetArraySize(uses))
        cJSON_DeleteItemFromObjectCaseSensitive(fin, "uses");
    return act;
}

int orch_task_finished_ids(const struct orch_task *t, const char **ids, int max)
{
    int n = 0, total = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, t->ledger) {
        const cJSON *st = json_get(e, "status");
        const cJSON *id = json_get(e, "id");
        if (cJSON_IsString(st) && cJSON_IsString(id))
            total++;
    }
    int skip = total > max ? total - max : 0;
    cJSON_ArrayForEach(e, t->ledger) {
        const cJSON *st = json_get(e, "status");
        const cJSON *id = json_get(e, "id");
        if (!cJSON_IsString(st) || !cJSON_IsString(id))
            continue;
        if (skip > 0) {
            skip--;
            continue;
        }
        if (n < max)
            ids[n++] = id->valuestring;
    }
    return n;
}

/* Where the answer's string text starts in a final action's raw text, or
 * NULL (not a final, or its answer has not begun). */
/* Offset of the first pat (m bytes) in txt[from, len), or len. */
static size_t find_from(const char *txt, size_t len, size_t from, const char *pat, size_t m)
{
    const char *c = from < len ? memmem(txt + from, len - from, pat, m) : NULL;
    return c ? (size_t)(c - txt) : len;
}

/* Offset of the final answer's first byte in txt[0, len) (the text of one
 * decision, which only grows), or 0 when there is none (yet): the text
 * after a "final" key, its "answer" key and the value's opening quote, in
 * a text without a "calls" key.  Searches only what the last call did not. */
static size_t final_answer_offset(struct answer_watch *w, const char *txt, size_t len)
{
    static const char calls[] = "\"calls\"", fin[] = "\"final\"", ans[] = "\"answer\"";
    if (!w->calls) {
        const size_t back = sizeof calls - 2;   /* a key cut by the last token */
        w->calls = find_from(txt, len, w->scanned > back ? w->scanned - back : 0, calls, sizeof calls - 1) < len;
    }
    w->scanned = len;
    while (!w->calls && w->stage < 3) {
        size_t at;
        if (w->stage == 0) {
            if ((at = find_from(txt, len, w->from, fin, sizeof fin - 1)) >= len)
                break;
            w->from = at;   /* where strstr(txt + at, "\"answer\"") would start */
        } else if (w->stage == 1) {
            if ((at = find_from(txt, len, w->from, ans, sizeof ans - 1)) >= len)
                break;
            w->from = at + sizeof ans - 1;
        } else {
            const char *q = w->from < len ? memchr(txt + w->from, '"', len - w->from) : NULL;
            if (!q)
                break;
            w->answer = (size_t)(q - txt) + 1;
        }
        w->stage++;
    }
    /* stages 0 and 1 resume one pattern's length back: a key may be cut */
    if (w->stage == 0 && len >= sizeof fin - 2 && w->from < len - (sizeof fin - 2))
        w->from = len - (sizeof fin - 2);
    else if (w->stage == 1 && len >= sizeof ans - 2 && w->from < len - (sizeof ans - 2))
        w->from = len - (sizeof ans - 2);
    return !w->calls && w->stage == 3 ? w->answer : 0;
}

/* Bytes of the answer text a[0..n) to keep: n, or fewer when it ends in a
 * loop, a unit of ANSWER_LOOP_MIN_UNIT bytes or more repeated three times
 * in a row (greedy decoding of a small model does this until its token
 * budget runs out): the text is then cut after the unit's first time. */
#define ANSWER_LOOP_MIN_UNIT 8
static size_t answer_loop_keep(const char *a, size_t n)
{
    /* Only a phrase (a letter and a space in the unit, the last p bytes)
     * is a loop: long numbers, rules like "-----" and other runs of one
     * pattern are answers.  The unit has a space iff p > the distance from
     * the end to the last space (likewise a letter), so units without one
     * cost nothing, and a unit is compared for 2p bytes before the run is
     * measured: linear in n for any text, runs of one byte included. */
    size_t to_space = n, to_letter = n;   /* n: none */
    for (size_t i = n; i-- > 0 && (to_space == n || to_letter == n);) {
        if (to_space == n && a[i] == ' ')
            to_space = n - 1 - i;
        if (to_letter == n && isalpha((unsigned char)a[i]))
            to_letter = n - 1 - i;
    }
    for (size_t p = ANSWER_LOOP_MIN_UNIT; 3 * p <= n; p++) {
        if (to_space >= p || to_letter >= p)
            continue;
        size_t r = 0;
        while (r < 2 * p && a[n - 1 - r] == a[n - 1 - r - p])
            r++;
        if (r < 2 * p)
            continue;
        while (r < n - p && a[n - 1 - r] == a[n - 1 - r - p])
            r++;
        return n - r;
    }
    return n;
}

int orch_task_decision_text(struct orch_task *t, const char *text, size_t n)
{
    if (t->status != TASK_RUNNING || !t->deciding || !t->parser)
        return 1;
    /* A lexical error is kept: action_parser_finish() reports it when the
     * decision ends, which the decider may do at once. */
    if (action_parser_feed(t->parser, text, n))
        return 1;
    if (action_parser_complete(t->parser))
        return 1;
    if (!t->script) {
        size_t len;
        const char *txt = action_parser_text(t->parser, &len);
        const size_t off = final_answer_offset(&t->watch, txt, len);
        if (off) {
            const char *a = txt + off;
            size_t an = len - off, keep = answer_loop_keep(a, an);
            if (keep < an) {
                t->answer_keep = keep ? keep : 1;
                return 1;     /* decision_end salvages the answer up to the loop */
            }
        }
    }
    return 0;
}

int orch_task_rounds(const struct orch_task *t) { return t->rounds; }

void orch_task_decision_usage(struct orch_task *t, int round, int n_prompt, int n_cached, int n_generated)
{
    cJSON *u = cJSON_CreateObject();
    if (!u || !t->usage)
        goto fail;
    if (!cJSON_AddNumberToObject(u, "round", round) || !cJSON_AddNumberToObject(u, "prompt_tokens", n_prompt) ||
        !cJSON_AddNumberToObject(u, "cached_tokens", n_cached) ||
        !cJSON_AddNumberToObject(u, "completion_tokens", n_generated))
        goto fail;
    cJSON_AddItemToArray(t->usage, u);
    summary_changed(t);   /* the engine's answer to a cancel comes after the end */
    return;
fail:
    cJSON_Delete(u);   /* usage is informational: losing a record fails nothing */
}

/* 1 when `action` makes calls and every one repeats (same agent, same
 * args) a call that finished ok before, to a deterministic agent: the
 * model has nothing new to ask. */
static int repeats_only(struct orch_task *t, const cJSON *action)
{
    const cJSON *calls = json_get(action, "calls"), *c;
    if (!cJSON_GetArraySize(calls))
        return 0;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *id = json_get(c, "id");
        const cJSON *to = json_get(c, "to");
        const cJSON *args = json_get(c, "args"), *e;
        const struct agent_spec *a = cJSON_IsString(to) ? registry_find(t->o->reg, to->valuestring) : NULL;
        if (!a || !a->deterministic)
            return 0;
        int seen = 0;
        cJSON_ArrayForEach(e, t->ledger) {
            const cJSON *eid = json_get(e, "id");
            const cJSON *ea = json_get(e, "args");
            const cJSON *est = json_get(e, "status");
            if (cJSON_IsString(eid) && cJSON_IsString(id) && !strcmp(eid->valuestring, id->valuestring))
                break;                       /* only calls made before this one */
            if (cJSON_IsString(est) && !strcmp(est->valuestring, "ok") &&
                cJSON_Compare(json_get(e, "to"), to, 1) &&
                (args ? cJSON_Compare(ea, args, 1) : !cJSON_GetArraySize(ea))) {
                seen = 1;
                break;
            }
        }
        if (!seen)
            return 0;
    }
    return 1;
}

static void decision_apply(struct orch_task *t, cJSON *d, cJSON *action, const char *round);

void orch_task_decision_end(struct orch_task *t, int status, const char *error)
{
    if (t->status != TASK_RUNNING || !t->deciding)
        return;
    t->deciding = 0;
    t->decider_handle = NULL;
    if (!t->script) {
        int64_t took = orch_now_ns() - t->t_decide;
        histogram_observe(&t->o->stats.decision_s, (double)took / 1e9);
        reserve_update(t, took / 1000000);
    }
    if (status) {
        char why[512];
        snprintf(why, sizeof why, "decision failed: %s", error ? error : ps_status_str(status));
        traj_end_cut(t, why);
        task_finish(t, TASK_FAILED, why);
        return;
    }
    char round[32];
    snprintf(round, sizeof round, "Decision %d: ", t->rounds);
    cJSON *action = NULL;
    int st = action_parser_finish(t->parser, &action);
    char perr[256];
    snprintf(perr, sizeof perr, "%s", st ? ps_error_last() : "");
    cJSON *salvaged = st && (t->final_only || t->answer_keep) ? final_salvage(t) : NULL;
    if (salvaged && t->answer_keep)
        snprintf(perr, sizeof perr, "the answer repeated itself: cut after its first time");
    if (t->traj) {
        size_t tl;
        const char *txt = action_parser_text(t->parser, &tl);
        traj_end(t, txt, tl, st == PS_OK, st ? perr : NULL);
    }
    cJSON *d = cJSON_CreateObject();
    need(t, cJSON_AddNumberToObject(d, "round", t->rounds) != NULL);
    if (st) {
        /* A malformed action is reported, with the text the model wrote (cut
         * to 1000 bytes), and the model decides again (bounded by max_rounds). */
        size_t tl;
        const char *txt = action_parser_text(t->parser, &tl);
        char *cut = strndup(txt, tl > 1000 ? 1000 : tl);
        if (cut)
            utf8_scrub(cut);
        need(t, cut && cJSON_AddStringToObject(d, "text", cut) != NULL);
        free(cut);
    }
    action_parser_free(t->parser);
    t->parser = NULL;
    if (st && salvaged) {
        /* A final-only decision cut by its token budget: the answer decoded
         * so far is the final (the grammar guarantees the prefix). */
        action = salvaged;
        cJSON_DeleteItemFromObjectCaseSensitive(d, "text");
        need(t, cJSON_AddStringToObject(d, "incomplete", perr) != NULL);
        st = PS_OK;
    } else if (st && cJSON_GetArraySize(t->made) > 0) {
        /* Decoding stopped (token budget) or went wrong after some calls had
         * closed: those calls were dispatched, they are the decision. */
        action = cJSON_CreateObject();
        cJSON *calls = cJSON_Duplicate(t->made, 1);
        if (!action || !calls) {
            cJSON_Delete(action);
            cJSON_Delete(calls);
            cJSON_Delete(d);
            task_finish(t, TASK_FAILED, "out of memory");
            return;
        }
        if (!cJSON_AddItemToObject(action, "calls", calls)) {
            cJSON_Delete(calls);
            log_fail(t, PS_ENOMEM);
        }
        cJSON_DeleteItemFromObjectCaseSensitive(d, "text");
        need(t, cJSON_AddStringToObject(d, "incomplete", perr) != NULL);
        st = PS_OK;
    }
    if (st) {
        cJSON_Delete(t->made);
        t->made = NULL;
        need(t, cJSON_AddStringToObject(d, "error", perr) != NULL);
        transcript_add(t, round, "(not a valid action: ", perr);
        transcript_add(t, ")\n", NULL, NULL);
        emit(t, "decision", d);
        t->new_feedback++;
        event_active(t->kick, 0, 0);
        return;
    }
    action_fill_ids(t, action);
    cJSON_Delete(t->made);
    t->made = NULL;
    decision_apply(t, d, action, round);
    cJSON_Delete(action);
}

/* The tail of a valid decision: its event (d, taken, gets a reference to
 * the action, which stays the caller's and is not modified), transcript,
 * cancels and final. */
static void decision_apply(struct orch_task *t, cJSON *d, cJSON *action, const char *round)
{
    /* a reference (the action stays the caller's), made here:
     * cJSON_AddItemReferenceToObject leaks its reference when it cannot
     * copy the key (cJSON 1.7.15) */
    cJSON *ref = cJSON_IsObject(action) ? cJSON_CreateObjectReference(action->child) : NULL;
    if (!ref || !cJSON_AddItemToObjectCS(d, "action", ref)) {
        cJSON_Delete(ref);
        log_fail(t, PS_ENOMEM);
    }
    if (!t->script || traj_live(t)) {
        char rbuf[32];
        if (!round) {
            snprintf(rbuf, sizeof rbuf, "Decision %d: ", t->rounds);
            round = rbuf;
        }
        char *atext = cJSON_PrintUnformatted(action);
        if (atext)
            transcript_add(t, round, atext, "\n");
        else
            log_fail(t, PS_ENOMEM);
        free(atext);
    }
    emit(t, "decision", d);
    if (!t->script && repeats_only(t, action)) {
        t->repeated = 1;
        transcript_add(t, "(Those calls repeat calls already answered: their results are above.)\n", NULL, NULL);
    }
    /* a subscriber may end the task from the decision event, or from a
     * cancelled call's record: its group is gone then */
    const cJSON *cancel = json_get(action, "cancel"), *c;
    cJSON_ArrayForEach(c, cancel)
        if (t->status == TASK_RUNNING)
            exec_group_cancel(t->g, c->valuestring, "cancelled by the orchestrator");
    const cJSON *fin = json_get(action, "final");
    if (fin && t->status == TASK_RUNNING)
        need(t, (t->final_pending = cJSON_Duplicate(fin, 1)) != NULL);
    if (t->status == TASK_RUNNING)
        event_active(t->kick, 0, 0);
}

/* 1 when `it` (at nesting level `level`, the root object being 1) goes
 * through the text path unchanged: no container deeper than the parser
 * takes (ACTION_MAX_DEPTH), only the JSON types jbuf prints, and every
 * number reads back as itself from the text jbuf prints for it (cJSON's
 * %1.15g is kept when it reads back within DBL_EPSILON, and infinities
 * print as null: the parsed calls would carry those values).  *bytes
 * grows by at least the item's printed length (strings counted as if all
 * escaped, numbers at 32), for the parser's ACTION_MAX_BYTES. */
static int script_text_same(const cJSON *it, int level, size_t *bytes)
{
    switch (it->type & 0xFF) {
    case cJSON_NULL: case cJSON_False: case cJSON_True:
        *bytes += 5;
        return 1;
    case cJSON_String:
        *bytes += 6 * strlen(it->valuestring ? it->valuestring : "") + 2;
        return 1;
    case cJSON_Number: {
        double d = it->valuedouble;
        *bytes += 32;
        if (!isfinite(d))
            return 0;
        if (d == floor(d) && fabs(d) < 1e15)
            return 1;   /* printed digit for digit */
        char num[64];
        struct jbuf b;
        jbuf_init(&b, num, sizeof num);
        jbuf_json(&b, it);
        int same = !b.oom && strtod(b.p, NULL) == d;
        jbuf_free(&b);
        return same;
    }
    case cJSON_Array: case cJSON_Object:
        if (level > ACTION_MAX_DEPTH)
            return 0;
        *bytes += 2;
        for (const cJSON *c = it->child; c; c = c->next) {
            *bytes += 1 + (c->string ? 6 * strlen(c->string) + 3 : 0);
            if (!script_text_same(c, level + 1, bytes) || *bytes > ACTION_MAX_BYTES)
                return 0;
        }
        return 1;
    default:
        return 0;       /* jbuf refuses to print it */
    }
}

/* A scripted action that is valid and whose calls all carry ids can go
 * the way its text would through the incremental parser without printing
 * and parsing it again (decide_script_direct).  0 when it needs the text
 * path: an invalid action is reported from the text the parser saw, calls
 * without ids get fresh ones recorded in `made`, and an action the text
 * would change or the parser refuse (script_text_same) goes that way. */
static int script_direct_ok(const cJSON *act)
{
    char err[256];
    size_t bytes = 0;
    if (action_check(act, err, sizeof err) || !script_text_same(act, 1, &bytes) || bytes > ACTION_MAX_BYTES)
        return 0;
    for (const cJSON *k = act->child; k; k = k->next) {
        const cJSON *c;
        if (!strcmp(k->string, "calls"))
            cJSON_ArrayForEach(c, k) if (cJSON_IsObject(c) && !json_get(c, "id"))
                return 0;
    }
    return 1;
}

/* Each object element of a top-level "calls" list to on_call_closed, in
 * order, then the decision, as the parser would hand them over; the calls
 * are the script's own objects (borrowed: the script lives as long as the
 * task). */
static void decide_script_direct(struct orch_task *t, cJSON *act)
{
    t->deciding = 1;
    for (const cJSON *k = act->child; k; k = k->next) {
        const cJSON *c;
        if (!strcmp(k->string, "calls"))
            cJSON_ArrayForEach(c, k) if (cJSON_IsObject(c))
                on_call_closed(t, c);
    }
    if (t->status != TASK_RUNNING || !t->deciding)
        return;
    t->deciding = 0;
    cJSON *d = cJSON_CreateObject();
    if (!d) {
        task_finish(t, TASK_FAILED, "out of memory");
        return;
    }
    need(t, cJSON_AddNumberToObject(d, "round", t->rounds) != NULL);
    if (t->traj) {
        char stack[4096];
        struct jbuf b;
        jbuf_init(&b, stack, sizeof stack);
        jbuf_json(&b, act);
        need(t, !b.oom);
        traj_end(t, b.oom ? NULL : b.p, b.len, !b.oom, b.oom ? "out of memory" : NULL);
        jbuf_free(&b);
    }
    decision_apply(t, d, act, NULL);
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
        task_finish(t, TASK_FAILED, "a task without a script needs the model to decide: this orchestrator has none (paraserve orchestrate runs scripted tasks; model-driven ones run in paraserve serve, POST /v1/tasks)");
        return;
    }
    t->rounds++;
    summary_changed(t);
    o->stats.decisions[!t->script]++;
    t->final_only = !t->script && (t->rounds >= t->max_rounds || t->n_calls >= t->max_calls || t->finalize ||
                                   t->repeated);
    t->t_decide = orch_now_ns();
    cJSON_Delete(t->made);
    t->made = NULL;
    /* `made` (the calls as dispatched, ids filled in) matters when a call
     * gets a fresh id, or when a model's decision stops early; a scripted
     * action whose calls all carry ids does without the copies. */
    const cJSON *act = t->script ? cJSON_GetArrayItem(t->script, t->script_pos) : NULL;
    if (act && traj_live(t)) {
        /* the prompt a model would read here: the script is its demonstration */
        char *prompt = orch_task_prompt(t);
        traj_begin(t, prompt);
        free(prompt);
    }
    if (act && script_direct_ok(act)) {
        decide_script_direct(t, cJSON_GetArrayItem(t->script, t->script_pos++));
        return;
    }
    int need_made = !t->script;
    const cJSON *cl;
    cJSON_ArrayForEach(cl, json_get(act, "calls"))
        need_made |= cJSON_IsObject(cl) && !json_get(cl, "id");
    int oom = need_made && !(t->made = cJSON_CreateArray());
    t->parser = oom ? NULL : action_parser_new(on_call_closed, t);
    t->answer_keep = 0;
    t->watch = (struct answer_watch){ 0 };
    if (!t->parser) {
        task_finish(t, TASK_FAILED, "out of memory");
        return;
    }
    t->deciding = 1;
    if (t->script) {
        /* The scripted action takes the model's path: text through the
         * incremental parser, calls submitted as their objects close. */
        char stack[4096];
        struct jbuf b;
        jbuf_init(&b, stack, sizeof stack);
        jbuf_json(&b, cJSON_GetArrayItem(t->script, t->script_pos++));
        int st = b.oom ? PS_ENOMEM : PS_OK;
        if (!b.oom)
            orch_task_decision_text(t, b.p, b.len);
        jbuf_free(&b);
        orch_task_decision_end(t, st, NULL);
        return;
    }
    if (t->final_only)
        transcript_add(t, TRANSCRIPT_LAST, NULL, NULL);
    char *prompt = orch_task_prompt(t);
    if (prompt && o->decider.over_context && o->decider.over_context(o->decider.ctx, t, prompt) > 0) {
        free(prompt);
        prompt = NULL;
        if (transcript_fit(t))
            return; /* the task ended */
        prompt = orch_task_prompt(t);
    }
    int have_prompt = prompt != NULL;
    if (prompt)
        traj_begin(t, prompt);
    t->decider_handle = prompt ? o->decider.start(o->decider.ctx, t, prompt) : NULL;
    free(prompt);
    if (!t->decider_handle && t->deciding) {
        char why[256];
        snprintf(why, sizeof why, "the decider could not start: %s",
                 have_prompt ? ps_error_last() : "out of memory");
        orch_task_decision_end(t, PS_EINTERNAL, why);
    }
}

static void on_kick(evutil_socket_t fd, short what, void *ud)
{
    struct orch_task *t = ud;
    if (t->status != TASK_RUNNING) {
        exec_group_destroy(t->g);   /* kept while the executor was on the stack (task_finish) */
        t->g = NULL;
        return;
    }
    if (t->log_error) {
        char why[128];
        if (t->log_error == PS_EFULL)
            snprintf(why, sizeof why, "event log full: the task reached max_events (%d)", t->o->cfg.max_events);
        else
            snprintf(why, sizeof why, "out of memory: an event or a call's record could not be stored");
        task_finish(t, TASK_FAILED, why);
        return;
    }
    if (t->deciding)
        return;
    if (t->final_pending) {
        const cJSON *uses = json_get(t->final_pending, "uses"), *u;
        int running = 0;
        cJSON_ArrayForEach(u, uses)
            running |= exec_group_call_status(t->g, u->valuestring) == -2;
        if (running && !(t->finalize && !t->script && t->rounds < t->max_rounds))
            return;   /* a used call is still running */
        if (!running) {
            summary_changed(t);
            if (render_answer(t, json_get(t->final_pending, "answer"), &t->output))
                task_finish(t, TASK_FAILED, "out of memory while rendering the final answer");
            else
                task_finish(t, TASK_COMPLETED, NULL);
            return;
        }
        /* The deadline is near and the final waits on running calls: drop
         * it and decide a final-only one over the finished calls. */
        cJSON_Delete(t->final_pending);
        t->final_pending = NULL;
        transcript_add(t, "(The deadline is near: the calls that final used are still running.)\n", NULL, NULL);
    }
    int open = exec_group_open(t->g);
    if (!t->finalize && open > 0) {
        if (t->rounds > 0 && t->new_feedback == 0)
            return;
        /* The last decision (a final) waits for every running call, so it
         * can use them all, unless the deadline is near. */
        if (!t->script && t->rounds > 0 &&
            (t->rounds + 1 >= t->max_rounds || t->n_calls >= t->max_calls || t->repeated))
            return;
    }
    t->new_feedback = 0;
    decide(t);
}

static void on_finalize(evutil_socket_t fd, short what, void *ud)
{
    struct orch_task *t = ud;
    if (t->status != TASK_RUNNING || t->finalize)
        return;
    t->finalize = 1;
    if (t->deciding && !t->final_only && t->decider_handle) {
        /* Stop the decision being decoded: the calls that closed stand as
         * its action, and a final is decided at once. */
        struct orch *o = t->o;
        void *h = t->decider_handle;
        t->decider_handle = NULL;
        o->decider.cancel(o->decider.ctx, h);
        orch_task_decision_end(t, PS_OK, NULL);
    }
    event_active(t->kick, 0, 0);
}

/* (Re)arm the finalize timer at deadline - reserve. */
static void finalize_arm(struct orch_task *t)
{
    if (!t->finalize_ev || t->finalize || t->status != TASK_RUNNING)
        return;
    int64_t at_ms = (int64_t)t->deadline_ms - t->reserve_ms;
    int64_t left = at_ms - (orch_now_ns() - t->t_start) / 1000000;
    if (left <= 0) {
        on_finalize(-1, 0, t);
        return;
    }
    struct timeval tv = { (time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000) };
    evtimer_add(t->finalize_ev, &tv);
}

/* After a decision of `ms`: keep room for a final decision (twice the
 * slowest decision so far, plus slack: its prompt is longer and the
 * machine may be busier), at most half the deadline. */
static void reserve_update(struct orch_task *t, int64_t ms)
{
    int64_t want = 2 * ms + TASK_RESERVE_SLACK_MS;
    if (want > t->deadline_ms / 2)
        want = t->deadline_ms / 2;
    if (want > t->reserve_ms) {
        t->reserve_ms = want;
        finalize_arm(t);
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *ud)
{
    struct orch_task *t = ud;
    char why[96];
    snprintf(why, sizeof why, "deadline_ms (%d) exceeded", t->deadline_ms);
    task_finish(t, TASK_FAILED, why);
}

/* ---- public ------------------------------------------------------------------------ */

/* Per-task limits where orch_config leaves them 0 (task.h). */
static const struct orch_config LIMIT_DEFAULTS = { .max_rounds = 16, .max_calls = 256, .deadline_ms = 300000 };

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
    o->cfg.max_rounds = ocfg && ocfg->max_rounds ? ocfg->max_rounds : LIMIT_DEFAULTS.max_rounds;
    o->cfg.max_calls = ocfg && ocfg->max_calls ? ocfg->max_calls : LIMIT_DEFAULTS.max_calls;
    o->cfg.deadline_ms = ocfg && ocfg->deadline_ms ? ocfg->deadline_ms : LIMIT_DEFAULTS.deadline_ms;
    o->cfg.keep_finished = ocfg && ocfg->keep_finished ? ocfg->keep_finished : 10000;
    o->cfg.max_running = ocfg && ocfg->max_running > 0 ? ocfg->max_running : 0;
    o->cfg.max_running_per_tenant = ocfg && ocfg->max_running_per_tenant > 0 ? ocfg->max_running_per_tenant : 0;
    o->cfg.record_trajectories = ocfg && ocfg->record_trajectories;
    o->cfg.id_lane = ocfg ? ocfg->id_lane : 0;
    if (o->cfg.id_lane < 0 || o->cfg.id_lane > 255) {
        free(o);
        ps_error_set(PS_EINVAL, "orchestrator: id_lane %d is not in 0-255", ocfg->id_lane);
        return NULL;
    }
    o->cfg.max_events = ocfg && ocfg->max_events >= 4 ? ocfg->max_events : 100000;
    o->next_id = ((uint64_t)orch_now_ns() * 2654435761u) & 0xffffffffu;
    static const double duration_bounds[] = { ORCH_DURATION_BOUNDS };
    histogram_init(&o->stats.task_s, duration_bounds, (int)(sizeof duration_bounds / sizeof *duration_bounds));
    histogram_init(&o->stats.decision_s, duration_bounds, (int)(sizeof duration_bounds / sizeof *duration_bounds));
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

/* ---- tasks by id ------------------------------------------------------------------ */

/* FNV-1a, 64 bits */
static uint64_t task_id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static int index_grow(struct orch *o)
{
    const size_t cap = o->index_cap ? 2 * o->index_cap : 64;
    struct orch_task **slots = calloc(cap, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < o->index_cap; i++) {
        struct orch_task *t = o->index[i];
        if (!t)
            continue;
        size_t j = t->id_hash & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = t;
    }
    free(o->index);
    o->index = slots;
    o->index_cap = cap;
    return 0;
}

/* 0, or -1 when out of memory (t is then not indexed) */
static int index_add(struct orch *o, struct orch_task *t)
{
    if (2 * (o->index_n + 1) > o->index_cap && index_grow(o))
        return -1;
    const size_t mask = o->index_cap - 1;
    size_t j = t->id_hash & mask;
    while (o->index[j])
        j = (j + 1) & mask;
    o->index[j] = t;
    o->index_n++;
    t->indexed = 1;
    return 0;
}

static void index_remove(struct orch *o, struct orch_task *t)
{
    if (!t->indexed)
        return;
    const size_t mask = o->index_cap - 1;
    size_t hole = t->id_hash & mask;
    while (o->index[hole] != t)
        hole = (hole + 1) & mask;
    /* Shift back every later entry of the probe chain whose home slot is
     * not cyclically in (hole, j]: lookups never meet an empty slot before
     * their entry. */
    for (size_t j = (hole + 1) & mask; o->index[j]; j = (j + 1) & mask) {
        const size_t home = o->index[j]->id_hash & mask;
        const int stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            o->index[hole] = o->index[j];
            hole = j;
        }
    }
    o->index[hole] = NULL;
    o->index_n--;
    t->indexed = 0;
}

static void task_free(struct orch_task *t)
{
    struct orch *o = t->o;
    while (t->subs)
        orch_unsubscribe(t->subs);
    exec_group_destroy(t->g);
    if (t->kick) event_free(t->kick);
    if (t->deadline) event_free(t->deadline);
    if (t->finalize_ev) event_free(t->finalize_ev);
    cJSON_Delete(t->made);
    shared_text_unref(t->summary_text);
    action_parser_free(t->parser);
    for (int i = 0; i < t->n_events; i++)
        free(t->events[i].data);
    free(t->events);
    free(t->fallback);
    free(t->transcript);
    trajectory_free(t->traj);
    cJSON_Delete(t->usage);
    if (!t->script_borrowed)
        cJSON_Delete(t->script);
    cJSON_Delete(t->ledger);
    str_index_free(&t->ledger_ix);
    cJSON_Delete(t->output);
    cJSON_Delete(t->final_pending);
    free(t->tenant);
    free(t->input);
    cJSON_Delete(t->metadata);
    if (t->error != t->error_short)
        free(t->error);
    if (t->prev) t->prev->next = t->next; else if (o->head == t) o->head = t->next;
    if (t->next) t->next->prev = t->prev; else if (o->tail == t) o->tail = t->prev;
    if (t->in_fin == FIN_LISTED)
        fin_unlink(o, t);
    index_remove(o, t);
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
    free(o->index);
    for (struct tenant_load *ld = o->loads, *nx; ld; ld = nx) {
        nx = ld->next;
        free(ld->tenant);
        free(ld);
    }
    str_index_free(&o->loads_ix);
    free(o->prompt_head);
    free(o);
}

static int get_limit(const cJSON *req, const char *key, int lo, int hi, int def, int *out)
{
    const cJSON *v = json_get(req, key);
    *out = def;
    if (!v || cJSON_IsNull(v))
        return PS_OK;
    if (!cJSON_IsNumber(v))
        return ps_error_set(PS_EINVAL, "%s: must be an integer in %d..%d", key, lo, hi);
    if (v->valuedouble < lo || v->valuedouble > hi || v->valuedouble != (int)v->valuedouble)
        return ps_error_set(PS_EINVAL, "%s: %.17g is not an integer in %d..%d", key, v->valuedouble, lo, hi);
    *out = (int)v->valuedouble;
    return PS_OK;
}

/* Containers nested in `it`, itself counted (a scalar: 0), in one walk of
 * the whole item with *bytes grown by an upper bound of its printed length
 * (strings as if every byte were escaped, numbers at 32: the accounting of
 * script_text_same, which stops at the first item that cannot go the
 * direct way and so bounds nothing). */
static int json_nesting_bound(const cJSON *it, size_t *bytes)
{
    if (it->string)
        *bytes += 6 * strlen(it->string) + 3;
    if (!cJSON_IsArray(it) && !cJSON_IsObject(it)) {
        *bytes += cJSON_IsString(it) ? 6 * strlen(it->valuestring ? it->valuestring : "") + 2 : 32;
        return 0;
    }
    *bytes += 2;
    int deepest = 0;
    for (const cJSON *c = it->child; c; c = c->next) {
        *bytes += 1;
        int d = json_nesting_bound(c, bytes);
        if (d > deepest)
            deepest = d;
    }
    return deepest + 1;
}

/* A scripted action is decided as the model's text is (printed, then read
 * by the action parser): one the parser would refuse - nested deeper than
 * ACTION_MAX_DEPTH, or printed longer than ACTION_MAX_BYTES (possible with
 * a body limit above 1 MiB) - is refused at submit, PS_EINVAL naming it,
 * rather than end its decision with that error while the task goes on
 * without its calls.  The length is printed only when a cheap upper bound
 * passes the limit. */
static int script_action_fits(const cJSON *a, int i)
{
    size_t bound = 0;
    if (json_nesting_bound(a, &bound) > ACTION_MAX_DEPTH)
        return ps_error_set(PS_EINVAL, "script[%d]: the action is nested deeper than %d", i, ACTION_MAX_DEPTH);
    if (bound <= ACTION_MAX_BYTES)
        return PS_OK;
    char stack[256];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    jbuf_json(&b, a);
    int oom = b.oom;
    size_t len = b.len;
    jbuf_free(&b);
    if (oom)
        return ps_error_set(PS_ENOMEM, "out of memory");
    if (len > ACTION_MAX_BYTES)
        return ps_error_set(PS_EINVAL, "script[%d]: the action's JSON text has %zu bytes; the limit is %u", i, len,
                            (unsigned)ACTION_MAX_BYTES);
    return PS_OK;
}

/* Validate a task request against the limits' defaults in cfg: PS_OK with
 * the script (NULL: none) and limits, or PS_EINVAL naming the field. */
static int request_parse(const struct orch_config *cfg, const cJSON *req, const cJSON **script_out,
                         int *max_rounds, int *max_calls, int *deadline_ms, int *record)
{
    if (!cJSON_IsObject(req))
        return ps_error_set(PS_EINVAL, "request body must be a JSON object");
    static const char *const fields[] = { "input", "stream", "max_rounds", "max_calls", "deadline_ms", "script",
                                          "metadata", "trajectory" };
    for (const cJSON *k = req->child; k; k = k->next) {
        int known = 0;
        for (size_t i = 0; i < sizeof fields / sizeof fields[0] && !known; i++)
            known = !strcmp(k->string, fields[i]);
        if (!known)
            return ps_error_set(PS_EINVAL, "%s: unknown field", k->string);
    }
    const cJSON *input = json_get(req, "input");
    if (!cJSON_IsString(input))
        return ps_error_set(PS_EINVAL, "input: required, must be a string");
    const cJSON *script = json_get(req, "script");
    if (script && !cJSON_IsNull(script)) {
        if (!cJSON_IsArray(script))
            return ps_error_set(PS_EINVAL, "script: must be a list of actions");
        int i = 0;
        const cJSON *a;
        cJSON_ArrayForEach(a, script) {
            char err[256];
            if (action_check(a, err, sizeof err))
                return ps_error_set(PS_EINVAL, "script[%d]: %s", i, err);
            int rc = script_action_fits(a, i);
            if (rc)
                return rc;
            i++;
        }
    } else {
        script = NULL;
    }
    if (get_limit(req, "max_rounds", 1, 1000, cfg->max_rounds, max_rounds) ||
        get_limit(req, "max_calls", 1, 100000, cfg->max_calls, max_calls) ||
        get_limit(req, "deadline_ms", 1, 86400000, cfg->deadline_ms, deadline_ms))
        return PS_EINVAL;
    if (script && *max_rounds < cJSON_GetArraySize(script) && !json_get(req, "max_rounds"))
        *max_rounds = cJSON_GetArraySize(script);
    const cJSON *meta = json_get(req, "metadata");
    if (meta && !cJSON_IsNull(meta)) {
        /* OpenAI's metadata: at most 16 pairs of strings, keys up to 64
         * characters, values up to 512 */
        if (!cJSON_IsObject(meta))
            return ps_error_set(PS_EINVAL, "metadata: must be an object of string values");
        int n = 0;
        for (const cJSON *m = meta->child; m; m = m->next) {
            if (++n > ORCH_METADATA_MAX_PAIRS)
                return ps_error_set(PS_EINVAL, "metadata: at most %d pairs", ORCH_METADATA_MAX_PAIRS);
            if (!m->string[0] || utf8_chars(m->string) > ORCH_METADATA_MAX_KEY)
                return ps_error_set(PS_EINVAL, "metadata: keys must have 1 to %d characters", ORCH_METADATA_MAX_KEY);
            if (!cJSON_IsString(m))
                return ps_error_set(PS_EINVAL, "metadata: the value of '%s' must be a string", m->string);
            if (utf8_chars(m->valuestring) > ORCH_METADATA_MAX_VALUE)
                return ps_error_set(PS_EINVAL, "metadata: the value of '%s' is over %d characters", m->string,
                                    ORCH_METADATA_MAX_VALUE);
            for (const cJSON *o = meta->child; o != m; o = o->next)
                if (!strcmp(o->string, m->string))
                    return ps_error_set(PS_EINVAL, "metadata: key '%s' twice", m->string);
        }
    }
    const cJSON *traj = json_get(req, "trajectory");
    if (traj && !cJSON_IsNull(traj) && !cJSON_IsBool(traj))
        return ps_error_set(PS_EINVAL, "trajectory: must be a boolean");
    *record = traj && cJSON_IsBool(traj) ? cJSON_IsTrue(traj) : cfg->record_trajectories != 0;
    *script_out = script;
    return PS_OK;
}

int orch_task_request_check(const cJSON *req)
{
    const cJSON *script;
    int max_rounds, max_calls, deadline_ms, record;
    return request_parse(&LIMIT_DEFAULTS, req, &script, &max_rounds, &max_calls, &deadline_ms, &record);
}

/* The running count of `tenant`, made on its first task.  NULL when out of
 * memory. */
static struct tenant_load *tenant_load_get(struct orch *o, const char *tenant)
{
    struct tenant_load *ld = str_index_get(&o->loads_ix, tenant);
    if (ld)
        return ld;
    if (!(ld = calloc(1, sizeof *ld)) || !(ld->tenant = strdup(tenant)) ||
        str_index_put(&o->loads_ix, ld->tenant, ld)) {
        if (ld)
            free(ld->tenant);
        free(ld);
        return NULL;
    }
    ld->next = o->loads;
    o->loads = ld;
    return ld;
}

/* May `tenant` start one more task?  PS_OK with *load its count, PS_EFULL
 * at max_running or its max_running_per_tenant (counted in the stats), or
 * PS_ENOMEM. */
static int admit(struct orch *o, const char *tenant, struct tenant_load **load)
{
    if (o->cfg.max_running > 0 && o->n_running >= o->cfg.max_running) {
        o->stats.refused[ORCH_REFUSED_MAX_RUNNING]++;
        return ps_error_set(PS_EFULL, "too many tasks running: %d, the server's limit; retry when some have ended",
                            o->n_running);
    }
    if (!(*load = tenant_load_get(o, tenant)))
        return ps_error_set(PS_ENOMEM, "out of memory");
    if (o->cfg.max_running_per_tenant > 0 && (*load)->running >= o->cfg.max_running_per_tenant) {
        o->stats.refused[ORCH_REFUSED_MAX_RUNNING_PER_TENANT]++;
        return ps_error_set(PS_EFULL, "too many of your tasks running: %d, the limit per tenant; retry when some "
                            "have ended", (*load)->running);
    }
    return PS_OK;
}

/* take_script: the task takes req's script (detached from req once the
 * task exists) instead of a copy; on failure req is left as it was. */
static int task_submit(struct orch *o, cJSON *req, int take_script, const char *tenant, struct orch_task **out)
{
    *out = NULL;
    const cJSON *script;
    int max_rounds, max_calls, deadline_ms, record;
    int rc = request_parse(&o->cfg, req, &script, &max_rounds, &max_calls, &deadline_ms, &record);
    if (rc)
        return rc;
    const cJSON *input = json_get(req, "input");
    struct tenant_load *load = NULL;
    if ((rc = admit(o, tenant ? tenant : "default", &load)))
        return rc;

    struct orch_task *t = calloc(1, sizeof *t);
    if (!t)
        return ps_error_set(PS_ENOMEM, "out of memory");
    t->o = o;
    t->load = load;
    do {   /* an id of a task restored from a store is never given again */
        o->next_id++;
        snprintf(t->id, sizeof t->id, "task_%08x%02x%02x", (unsigned)(o->next_id & 0xffffffffu),
                 (unsigned)o->cfg.id_lane, (unsigned)(orch_now_ns() & 0xff));
    } while (o->index_n && orch_task_find(o, t->id));
    t->id_hash = task_id_hash(t->id);
    t->tenant = strdup(tenant ? tenant : "default");
    t->input = strdup(input->valuestring);
    const cJSON *meta = json_get(req, "metadata");
    int has_meta = cJSON_IsObject(meta) && meta->child;
    if (has_meta)
        t->metadata = cJSON_Duplicate(meta, 1);
    if (script && take_script) {
        t->script = (cJSON *)script;       /* req's own child: detached at the end */
        t->script_borrowed = 1;
    } else if (script) {
        t->script = cJSON_Duplicate(script, 1);
    }
    t->max_rounds = max_rounds;
    t->max_calls = max_calls;
    t->deadline_ms = deadline_ms;
    t->ledger = cJSON_CreateArray();
    t->usage = cJSON_CreateArray();
    if (record)
        t->traj = trajectory_new();
    t->cap_events = 16;
    t->events = malloc((size_t)t->cap_events * sizeof *t->events);
    t->fallback = malloc(TASK_FALLBACK_BYTES);
    t->g = exec_group_create(o->ex, on_feedback, t);
    t->kick = event_new(o->base, -1, 0, on_kick, t);
    t->deadline = evtimer_new(o->base, on_deadline, t);
    if (!script)
        t->finalize_ev = evtimer_new(o->base, on_finalize, t);
    t->t_start = orch_now_ns();
    struct timespec now_rt;
    clock_gettime(CLOCK_REALTIME, &now_rt);
    t->created_unix_ms = (int64_t)now_rt.tv_sec * 1000 + now_rt.tv_nsec / 1000000;
    t->prev = o->tail;
    if (o->tail) o->tail->next = t; else o->head = t;
    o->tail = t;
    running_add(t, +1);
    if (!t->tenant || !t->input || (script && !t->script) || (has_meta && !t->metadata) || !t->ledger || !t->usage ||
        (record && !t->traj) ||
        !t->events ||
        !t->fallback || !t->g || !t->kick || !t->deadline || (!script && !t->finalize_ev) || index_add(o, t)) {
        t->status = TASK_FAILED;
        running_add(t, -1);
        task_free(t);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    /* its local agents' generations run as its tenant */
    rc = exec_group_set_tenant(t->g, t->tenant);
    if (rc) {
        t->status = TASK_FAILED;
        running_add(t, -1);
        task_free(t);
        return rc;
    }
    struct timeval tv = { deadline_ms / 1000, (deadline_ms % 1000) * 1000 };
    evtimer_add(t->deadline, &tv);
    t->reserve_ms = deadline_ms / 4 < TASK_RESERVE_INIT_MS ? deadline_ms / 4 : TASK_RESERVE_INIT_MS;
    finalize_arm(t);
    cJSON *d = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(d, "id", t->id) || !cJSON_AddStringToObject(d, "input", t->input) ||
        !cJSON_AddStringToObject(d, "mode", script ? "script" : "model") ||
        !cJSON_AddNumberToObject(d, "max_rounds", max_rounds) || !cJSON_AddNumberToObject(d, "max_calls", max_calls) ||
        !cJSON_AddNumberToObject(d, "deadline_ms", deadline_ms) ||
        (t->metadata && !json_add(d, "metadata", cJSON_Duplicate(t->metadata, 1)))) {
        cJSON_Delete(d);
        d = NULL;                          /* emit refuses it: out of memory */
    }
    if (emit(t, "task.created", d)) {
        evtimer_del(t->deadline);
        t->status = TASK_FAILED;
        running_add(t, -1);
        task_free(t);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    if (t->script_borrowed) {
        cJSON_DetachItemViaPointer(req, t->script);   /* allocates nothing */
        t->script_borrowed = 0;
    }
    event_active(t->kick, 0, 0);
    o->stats.created[!t->script]++;
    *out = t;
    return PS_OK;
}

int orch_task_submit(struct orch *o, const cJSON *req, const char *tenant, struct orch_task **out)
{
    return task_submit(o, (cJSON *)req, 0, tenant, out);
}

int orch_task_submit_take(struct orch *o, cJSON *req, const char *tenant, struct orch_task **out)
{
    return task_submit(o, req, 1, tenant, out);
}

struct orch_task *orch_task_find(struct orch *o, const char *id)
{
    if (!o->index_cap)
        return NULL;
    const size_t mask = o->index_cap - 1;
    for (size_t j = task_id_hash(id) & mask; o->index[j]; j = (j + 1) & mask)
        if (!strcmp(o->index[j]->id, id))
            return o->index[j];
    return NULL;
}

const char *orch_task_id(const struct orch_task *t) { return t->id; }
int64_t orch_task_created_ns(const struct orch_task *t) { return t->t_start; }
const char *orch_task_tenant(const struct orch_task *t) { return t->tenant; }
int64_t orch_task_created_unix_ms(const struct orch_task *t) { return t->created_unix_ms; }
int orch_task_scripted(const struct orch_task *t) { return t->script != NULL || t->restored_script; }
const char *orch_task_input(const struct orch_task *t) { return t->input; }
const cJSON *orch_task_metadata(const struct orch_task *t) { return t->metadata; }
int orch_task_n_calls(const struct orch_task *t) { return t->restored ? t->restored_calls : t->n_ledger; }
struct orch_task *orch_task_oldest(const struct orch *o) { return o->head; }
struct orch_task *orch_task_newest(const struct orch *o) { return o->tail; }
struct orch_task *orch_task_newer(const struct orch_task *t) { return t->next; }
struct orch_task *orch_task_older(const struct orch_task *t) { return t->prev; }
enum orch_task_status orch_task_status(const struct orch_task *t) { return t->status; }
int orch_running(const struct orch *o) { return o->n_running; }
int orch_task_recorded(const struct orch_task *t) { return t->traj != NULL || t->restored_traj; }
int orch_task_restored(const struct orch_task *t) { return t->restored; }

int orch_task_trajectory_text(const struct orch_task *t, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (t->restored_traj)
        return ps_error_set(PS_EUNSUPPORTED, "task %s was restored: its trajectory is in the task store", t->id);
    if (!t->traj)
        return ps_error_set(PS_ENOTFOUND, "task %s records no trajectory: submit it with \"trajectory\": true "
                            "(or serve with --trajectories)", t->id);
    const struct trajectory_task facts = {
        .id = t->id, .input = t->input, .metadata = t->metadata, .mode = t->script ? "script" : "model",
        .status = orch_task_status_str(t->status), .error = t->error, .system = ORCH_SYSTEM_PROMPT,
        .output = t->output, .ledger = t->ledger, .usage = t->usage, .rounds = t->rounds,
        .max_rounds = t->max_rounds, .created_unix_ms = t->created_unix_ms,
        .wall_ms = ((t->t_end ? t->t_end : orch_now_ns()) - t->t_start) / 1000000,
    };
    char stack[4096];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    trajectory_print(t->traj, &facts, &b);
    size_t n = b.len;
    if (b.oom) {
        jbuf_free(&b);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    if (!(*out = jbuf_take(&b)))
        return ps_error_set(PS_ENOMEM, "out of memory");
    *len = n;
    return PS_OK;
}

int orch_task_id_lane(const char *id)
{
    if (!id || strncmp(id, "task_", 5) || strlen(id) != 5 + 12)
        return -1;
    int lane = 0;
    for (int i = 0; i < 12; i++) {
        char c = id[5 + i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i == 8 || i == 9)
            lane = lane * 16 + v;
    }
    return lane;
}

void orch_get_stats(const struct orch *o, struct orch_stats *st)
{
    *st = o->stats;
    st->running = o->n_running;
}

void orch_task_cancel(struct orch_task *t, const char *reason)
{
    task_finish(t, TASK_CANCELLED, reason ? reason : "cancelled by the client");
}

void orch_cancel_all(struct orch *o, const char *reason)
{
    /* Ending a task may evict finished ones (not t itself), never a
     * running one: step to the next running task before cancelling. */
    struct orch_task *t = o->head;
    while (t && t->status != TASK_RUNNING)
        t = t->next;
    while (t) {
        struct orch_task *nx = t->next;
        while (nx && nx->status != TASK_RUNNING)
            nx = nx->next;
        orch_task_cancel(t, reason);
        t = nx;
    }
}

struct orch_sub *orch_task_subscribe(struct orch_task *t, int64_t after_id, orch_event_fn cb, void *ud)
{
    struct orch_sub *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->t = t;
    s->cb = cb;
    s->ud = ud;
    /* past the log: from its end (an id no event of this task had yet;
     * the events to come, terminal one included, still reach it) */
    s->seen = after_id < 0 ? 0 : after_id > t->n_events ? t->n_events : after_id;
    s->next = t->subs;
    if (t->subs)
        t->subs->prev = s;
    t->subs = s;
    deliver(t);   /* the replay; inside a callback, the running deliver() does it */
    return s;
}

void orch_unsubscribe(struct orch_sub *s)
{
    if (!s)
        return;
    if (s->t->delivering) {
        s->dead = 1;
        return;
    }
    sub_unlink_free(s);
}

int orch_task_event_at(const struct orch_task *t, int64_t id, struct orch_event *out)
{
    if (id < 1 || id > t->n_events)
        return 0;
    const struct ev_rec *e = &t->events[id - 1];
    *out = (struct orch_event){ e->id, e->type, e->data, e->len, e->t_us, e->d2r_us, e->r2r_us };
    return 1;
}

int64_t orch_task_n_events(const struct orch_task *t) { return t->n_events; }

static const char *const EVENT_TYPES[] = { "task.created", "decision", "call.dispatched", "call.result",
                                           "task.final", "task.error" };

int orch_task_restore(struct orch *o, const struct orch_restore *r, struct orch_task **out)
{
    if (out)
        *out = NULL;
    int status = -1;
    for (int s = TASK_COMPLETED; s <= TASK_CANCELLED; s++)
        if (r->status && !strcmp(r->status, task_status_names[s]))
            status = s;
    if (status < 0)
        return ps_error_set(PS_EINVAL, "restore: status '%.32s' is not one of a finished task",
                            r->status ? r->status : "");
    unsigned counter = 0, lane = 0, low = 0;
    int idn = 0;
    if (!r->id || strlen(r->id) != 17 || sscanf(r->id, "task_%8x%2x%2x%n", &counter, &lane, &low, &idn) != 3 ||
        idn != 17 || strspn(r->id + 5, "0123456789abcdef") != 12)
        return ps_error_set(PS_EINVAL, "restore: '%.40s' is not a task id of ours (task_ and 12 hex digits)",
                            r->id ? r->id : "");
    if (orch_task_find(o, r->id))
        return ps_error_set(PS_EINVAL, "restore: task %s exists already", r->id);
    if (!r->mode || (strcmp(r->mode, "script") && strcmp(r->mode, "model")) || !r->tenant || !r->input ||
        !r->summary || r->n_events < 1 || r->rounds < 0 || r->calls < 0)
        return ps_error_set(PS_EINVAL, "restore: task %s lacks its mode, tenant, input, summary or events", r->id);
    const char *const last = r->events[r->n_events - 1].type;
    if (!last || (strcmp(last, "task.final") && strcmp(last, "task.error")))
        return ps_error_set(PS_EINVAL, "restore: task %s: its log does not end with its terminal event", r->id);
    /* every text a client will read is a JSON object, as one the task
     * printed (a damaged or hostile store is refused row by row) */
    for (int64_t i = -1; i < r->n_events; i++) {
        const char *txt = i < 0 ? r->summary : r->events[i].data;
        const size_t len = i < 0 ? strlen(r->summary) : r->events[i].len;
        cJSON *j = txt ? cJSON_ParseWithLength(txt, len) : NULL;
        const int obj = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!obj)
            return ps_error_set(PS_EINVAL, "restore: task %s: %s is not a JSON object", r->id,
                                i < 0 ? "its summary" : "an event's text");
    }
    struct orch_task *t = calloc(1, sizeof *t);
    if (!t)
        return ps_error_set(PS_ENOMEM, "out of memory");
    t->o = o;
    t->restored = 1;
    t->restored_script = !strcmp(r->mode, "script");
    t->restored_calls = r->calls;
    t->status = (enum orch_task_status)status;
    t->rounds = r->rounds;
    snprintf(t->id, sizeof t->id, "%s", r->id);
    t->id_hash = task_id_hash(t->id);
    t->created_unix_ms = r->created_unix_ms;
    t->t_start = t->t_end = orch_now_ns();
    t->tenant = strdup(r->tenant);
    t->input = strdup(r->input);
    t->ledger = cJSON_CreateArray();
    t->usage = cJSON_CreateArray();
    t->metadata = r->metadata ? cJSON_Duplicate(r->metadata, 1) : NULL;
    t->restored_traj = r->has_trajectory != 0;
    char *sum = strdup(r->summary);
    t->summary_text = sum ? shared_text_adopt(sum, strlen(sum)) : NULL;
    if (sum && !t->summary_text)
        free(sum);
    t->events = calloc((size_t)r->n_events, sizeof *t->events);
    int ok = t->tenant && t->input && t->ledger && t->usage && (!r->metadata || t->metadata) && t->summary_text &&
             t->events && r->n_events <= INT32_MAX;
    int bad_type = 0;
    for (int64_t i = 0; ok && i < r->n_events; i++) {
        const struct orch_restore_event *e = &r->events[i];
        const char *type = NULL;
        for (size_t k = 0; k < sizeof EVENT_TYPES / sizeof *EVENT_TYPES && !type; k++)
            if (e->type && !strcmp(e->type, EVENT_TYPES[k]))
                type = EVENT_TYPES[k];   /* the log keeps literals */
        if (!type || !e->data) {
            bad_type = 1;
            break;
        }
        char *d = malloc(e->len + 1);
        ok = d != NULL;
        if (d) {
            memcpy(d, e->data, e->len);
            d[e->len] = 0;
            t->events[i] = (struct ev_rec){ .id = i + 1, .type = type, .data = d, .len = e->len, .t_us = 0,
                                            .d2r_us = -1, .r2r_us = -1 };
            t->n_events = t->cap_events = (int)(i + 1);
        }
    }
    t->prev = o->tail;
    if (o->tail) o->tail->next = t; else o->head = t;
    o->tail = t;
    if (!ok || bad_type || index_add(o, t)) {
        task_free(t);
        return bad_type ? ps_error_set(PS_EINVAL, "restore: task %s: an event of an unknown type", r->id)
                        : ps_error_set(PS_ENOMEM, "out of memory");
    }
    t->fin_prev = o->fin_tail;
    if (o->fin_tail) o->fin_tail->fin_next = t; else o->fin_head = t;
    o->fin_tail = t;
    t->in_fin = FIN_LISTED;
    o->n_finished++;
    /* new ids of this lane after the restored ones: none repeats an old
     * id, kept or evicted (up to the counter's wrap, 2^32 tasks) */
    if ((int)lane == o->cfg.id_lane && (uint64_t)counter >= (o->next_id & 0xffffffffu))
        o->next_id = counter;   /* the next task takes counter + 1 */
    evict_finished(o, t);
    if (out)
        *out = t;
    return PS_OK;
}

void orch_task_release(struct orch_task *t)
{
    if (!t || t->status == TASK_RUNNING)
        return;
    t->o->n_finished--;
    task_free(t);
}

/* A JSON Schema type in a few words for the catalogue ("string", "integer",
 * "string|number", "object"). */
static const char *schema_type(const cJSON *sch, char *buf, size_t n)
{
    const cJSON *ty = json_get(sch, "type");
    if (cJSON_IsString(ty))
        return ty->valuestring;
    buf[0] = '\0';
    const cJSON *x;
    cJSON_ArrayForEach(x, ty) if (cJSON_IsString(x)) {
        size_t l = strlen(buf);
        snprintf(buf + l, n - l, "%s%s", l ? "|" : "", x->valuestring);
    }
    return buf[0] ? buf : "any";
}

/* One catalogue line per agent: "- name: description Args: {"k": type, "k2"?: type}". */
static int catalogue_text(const struct registry *reg, char **out, const char **example_to,
                          const char **example_key)
{
    size_t cap = 1024, len = 0;
    char *b = malloc(cap);
    *example_to = *example_key = NULL;
    int example_builtin = 0;
    if (!b)
        return PS_ENOMEM;
    b[0] = '\0';
    for (int i = 0; i < registry_count(reg); i++) {
        const struct agent_spec *a = registry_at(reg, i);
        char args[1024] = "{", tb[64];
        const cJSON *props = json_get(a->input_schema, "properties");
        const cJSON *req = json_get(a->input_schema, "required"), *p, *r;
        int k = 0;
        cJSON_ArrayForEach(p, props) {
            int required = 0;
            cJSON_ArrayForEach(r, req) required |= cJSON_IsString(r) && !strcmp(r->valuestring, p->string);
            size_t l = strlen(args);
            snprintf(args + l, sizeof args - l, "%s\"%s\"%s: %s", k++ ? ", " : "", p->string, required ? "" : "?",
                     schema_type(p, tb, sizeof tb));
            /* The example call: the first tool (builtin) taking a required
             * string, else the first agent that does. */
            if (required && !strcmp(schema_type(p, tb, sizeof tb), "string") &&
                (!*example_to || (a->kind == AGENT_BUILTIN && !example_builtin))) {
                *example_to = a->name;
                *example_key = p->string;
                example_builtin = a->kind == AGENT_BUILTIN;
            }
        }
        size_t l = strlen(args);
        snprintf(args + l, sizeof args - l, "}");
        size_t need = len + strlen(a->name) + strlen(a->description) + strlen(args) + 32;
        if (need > cap) {
            while (cap < need)
                cap *= 2;
            char *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                return PS_ENOMEM;
            }
            b = nb;
        }
        /* Descriptions that already spell out their args keep their own words. */
        int own = strstr(a->description, "Args:") != NULL;
        len += (size_t)snprintf(b + len, cap - len, "- %s: %s%s%s\n", a->name, a->description,
                                own ? "" : " Args: ", own ? "" : args);
    }
    *out = b;
    return PS_OK;
}

/* The part of every prompt before the task: instructions, the agent
 * catalogue and a worked example.  It depends on the registry alone, which
 * is settled before the orchestrator uses it (registry.h), so it is made
 * once per orchestrator (each decision's prompt took ~13 us to build it
 * again).  NULL when out of memory (ps_error_set). */
static const char *prompt_head(struct orch *o)
{
    if (o->prompt_head)
        return o->prompt_head;
    char *cats = NULL;
    const char *ex_to, *ex_key;
    if (catalogue_text(o->reg, &cats, &ex_to, &ex_key)) {
        ps_error_set(PS_ENOMEM, "out of memory");
        return NULL;
    }
    /* A worked example in the transcript's own format: small models copy
     * its shape (call, result, final) far better than they follow rules.
     * The first agent with an `example` gives a concrete one; otherwise a
     * placeholder call to the first tool taking a required string. */
    const struct agent_spec *exa = NULL;
    for (int i = 0; i < registry_count(o->reg) && !exa; i++)
        if (registry_at(o->reg, i)->example)
            exa = registry_at(o->reg, i);
    char *ex_args = NULL, *ex_result = NULL;
    if (exa) {
        ex_args = cJSON_PrintUnformatted(json_get(exa->example, "args"));
        /* the result as transcript_feedback shows results: its text, as a JSON string */
        char *rt = exec_result_text(json_get(exa->example, "result"));
        cJSON *rs = rt ? cJSON_CreateString(rt) : NULL;
        ex_result = rs ? cJSON_PrintUnformatted(rs) : NULL;
        cJSON_Delete(rs);
        free(rt);
        if (!ex_args || !ex_result) {
            free(ex_args);
            free(ex_result);
            free(cats);
            ps_error_set(PS_ENOMEM, "out of memory");
            return NULL;
        }
    }
    char example[2048], shot[4096];
    if (exa)
        snprintf(example, sizeof example, "{\"calls\":[{\"to\":\"%s\",\"args\":%s}]}", exa->name, ex_args);
    else if (ex_to)
        snprintf(example, sizeof example, "{\"calls\":[{\"to\":\"%s\",\"args\":{\"%s\":\"...\"}}]}",
                 ex_to, ex_key);
    else
        snprintf(example, sizeof example, "{\"calls\":[{\"to\":\"AGENT\",\"args\":{}}]}");
    snprintf(shot, sizeof shot,
             "Example:\nTask: %s\nDecision 1: %s\n"
             "Result: {\"id\":\"c1\",\"to\":\"%s\",\"status\":\"ok\",\"result\":%s}\n"
             "Decision 2: {\"final\":{\"answer\":\"{{c1}}\",\"uses\":[\"c1\"]}}\nEnd of example.\n",
             exa ? json_get(exa->example, "task")->valuestring : "(a question)",
             example, exa ? exa->name : ex_to ? ex_to : "AGENT", exa ? ex_result : "\"(its answer)\"");
    free(ex_args);
    free(ex_result);
    static const char *const fmt =
        "Agents:\n%s"
        "Reply with exactly one JSON action:\n"
        "%s  calls agents; calls are numbered c1, c2, ... in the order they are made; independent calls run in parallel, \"after\":[\"c1\"] makes a call wait for c1\n"
        "{\"final\":{\"answer\":\"The answer is {{c1}}\",\"uses\":[\"c1\"]}}  gives the final answer; {{c1}} is c1's result\n"
        "{\"wait\":true}  waits for running calls\n"
        "{\"cancel\":[\"c1\"]}  cancels running calls\n"
        "%s";
    size_t n = strlen(fmt) + strlen(cats) + strlen(example) + strlen(shot) + 1;
    char *p = malloc(n);
    if (p) {
        snprintf(p, n, fmt, cats, example, shot);
        o->prompt_head = p;
        o->prompt_head_len = strlen(p);
    } else {
        ps_error_set(PS_ENOMEM, "out of memory");
    }
    free(cats);
    return p;
}

/* Instructions, agent catalogue and task first, then the transcript: each
 * round's prompt extends the previous round's text, so the engine's prefix
 * cache serves everything but the new feedback. */
char *orch_task_prompt(const struct orch_task *t)
{
    const char *head = prompt_head(t->o);
    if (!head)
        return NULL;
    const char *tr = t->transcript ? t->transcript : "";
    const size_t hl = t->o->prompt_head_len, il = strlen(t->input), tl = t->transcript ? t->tr_len : 0;
    char *p = malloc(hl + 6 + il + 1 + tl + 1);
    if (!p) {
        ps_error_set(PS_ENOMEM, "out of memory");
        return NULL;
    }
    char *w = p;
    memcpy(w, head, hl);
    w += hl;
    memcpy(w, "Task: ", 6);
    w += 6;
    memcpy(w, t->input, il);
    w += il;
    *w++ = '\n';
    memcpy(w, tr, tl);
    w[tl] = '\0';
    return p;
}
