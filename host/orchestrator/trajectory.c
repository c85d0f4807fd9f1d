/* trajectory.c - a task's decisions kept as training data (see trajectory.h). */
#include "orchestrator/trajectory.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/grow.h"
#include "common/json_get.h"
#include "common/status.h"
#include "common/str_index.h"
#include "orchestrator/jbuf.h"
#include "orchestrator/json_alloc.h"

struct traj_step {
    int     round;
    size_t  keep;        /* bytes of the previous step's prompt this one starts with */
    char   *suffix;      /* the rest of its prompt */
    char   *completion;  /* NULL: none */
    char   *note;        /* NULL: none */
    int     valid;
    int     ended;
    int     ledger_begin;
    int64_t ms;
};

struct trajectory {
    struct traj_step *steps;
    int               n, cap;
    char             *last;      /* the previous step's prompt, while the task runs */
    size_t            last_len, last_cap;
    size_t            bytes;     /* the steps' prompts and completions as printed, in all */
    int               full;      /* past TRAJECTORY_MAX_BYTES: no more steps */
    int               full_round;/* the first round not recorded */
    int               full_ledger; /* the ledger's length then: the last step's calls end there */
};

struct trajectory *trajectory_new(void)
{
    return calloc(1, sizeof(struct trajectory));
}

void trajectory_free(struct trajectory *tr)
{
    if (!tr)
        return;
    for (int i = 0; i < tr->n; i++) {
        free(tr->steps[i].suffix);
        free(tr->steps[i].completion);
        free(tr->steps[i].note);
    }
    free(tr->steps);
    free(tr->last);
    free(tr);
}

int trajectory_steps(const struct trajectory *tr) { return tr ? tr->n : 0; }
int trajectory_full(const struct trajectory *tr) { return tr && tr->full; }

/* Bytes of s[0..n) as a JSON string's contents (jbuf / cJSON escaping:
 * quote and backslash 2, \b \f \n \r \t 2, other control bytes 6). */
static size_t json_escaped_len(const char *s, size_t n)
{
    size_t out = n;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            out += 1;
        else if (c < 0x20)
            out += 5;
    }
    return out;
}

void trajectory_seal(struct trajectory *tr)
{
    if (!tr)
        return;
    free(tr->last);
    tr->last = NULL;
    tr->last_len = tr->last_cap = 0;
}

/* Every byte of s[0..n) that is not part of well-formed UTF-8 replaced
 * by '?': the document is JSON text, which is UTF-8. */
static void utf8_scrub_n(char *s, size_t n)
{
    size_t i = 0;
    while ((i += utf8_invalid_at(s + i, n - i)) < n)
        s[i++] = '?';
}

int trajectory_begin(struct trajectory *tr, int round, const char *prompt, int ledger_len)
{
    if (tr->n > 0 && !tr->steps[tr->n - 1].ended)
        trajectory_end(tr, NULL, 0, 0, NULL, tr->steps[tr->n - 1].ms);
    if (tr->full)
        return PS_OK;
    size_t len = strlen(prompt), keep = 0;
    const size_t printed = json_escaped_len(prompt, len);
    if (tr->bytes + printed > TRAJECTORY_MAX_BYTES) {
        tr->full = 1;
        tr->full_round = round;
        tr->full_ledger = ledger_len;
        return PS_OK;
    }
    int rc = PS_OK;
    while (keep < tr->last_len && keep < len && tr->last[keep] == prompt[keep])
        keep++;
    size_t cap = (size_t)tr->cap;
    struct traj_step *ns = ps_grow(tr->steps, &cap, (size_t)tr->n + 1, sizeof *ns, 8);
    char *suffix = ns ? strdup(prompt + keep) : NULL;
    char *last = NULL;
    if (ns) {
        tr->steps = ns;
        tr->cap = (int)cap;
    }
    if (!suffix || !(last = ps_grow(tr->last, &tr->last_cap, len + 1, 1, 1024))) {
        free(suffix);
        rc = ps_error_set(PS_ENOMEM, "out of memory");
    } else {
        memcpy(last + keep, prompt + keep, len - keep + 1);
        tr->last = last;
        tr->last_len = len;
        tr->bytes += printed;
        tr->steps[tr->n++] = (struct traj_step){ .round = round, .keep = keep, .suffix = suffix,
                                                 .ledger_begin = ledger_len };
    }
    return rc;
}

int trajectory_end(struct trajectory *tr, const char *completion, size_t n, int valid, const char *note,
                   int64_t ms)
{
    if (tr->n == 0 || tr->steps[tr->n - 1].ended)
        return PS_OK;
    struct traj_step *s = &tr->steps[tr->n - 1];
    s->ended = 1;
    s->valid = valid;
    s->ms = ms;
    int rc = PS_OK;
    if (completion && !(s->completion = strndup(completion, n))) {
        s->valid = 0;
        note = "the completion could not be kept: out of memory";
        rc = ps_error_set(PS_ENOMEM, "out of memory");
    }
    tr->bytes += s->completion ? json_escaped_len(s->completion, strlen(s->completion)) : 0;
    if (!completion && !note)
        note = "no text: the task ended during this decision, or it could not start";
    if (note && !(s->note = strdup(note)))
        rc = ps_error_set(PS_ENOMEM, "out of memory");
    return rc;
}

/* ---- printing -------------------------------------------------------------------- */

static void put_key(struct jbuf *b, int first, const char *key)
{
    jbuf_add(b, first ? "{\"" : ",\"", 2);
    jbuf_add(b, key, strlen(key));
    jbuf_add(b, "\":", 2);
}

static void put_str(struct jbuf *b, const char *s)
{
    cJSON str = { .type = cJSON_String };
    str.valuestring = (char *)s;
    jbuf_json(b, &str);
}

static void put_str_member(struct jbuf *b, int first, const char *key, const char *s)
{
    put_key(b, first, key);
    if (s)
        put_str(b, s);
    else
        jbuf_add(b, "null", 4);
}

static void put_int_member(struct jbuf *b, int first, const char *key, long long v)
{
    put_key(b, first, key);
    jbuf_add_int(b, v);
}

static void put_num_member(struct jbuf *b, const char *key, double v, int is_null)
{
    char num[32];
    int n = is_null ? snprintf(num, sizeof num, "null") : snprintf(num, sizeof num, "%.4g", v);
    put_key(b, 0, key);
    jbuf_add(b, num, (size_t)n);
}

static void put_message(struct jbuf *b, int first, const char *role, const char *content)
{
    if (!first)
        jbuf_add(b, ",", 1);
    put_str_member(b, 1, "role", role);
    put_str_member(b, 0, "content", content);
    jbuf_add(b, "}", 1);
}

static const char *entry_str(const cJSON *e, const char *key)
{
    const cJSON *v = json_get(e, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int is_rejected(const cJSON *e)
{
    const char *st = entry_str(e, "status");
    return st && !strcmp(st, "rejected");
}

/* The usage record of `round`, or NULL. */
static const cJSON *usage_of(const cJSON *usage, int round)
{
    const cJSON *u;
    cJSON_ArrayForEach(u, usage) {
        if ((int)cJSON_GetNumberValue(json_get(u, "round")) == round)
            return u;
    }
    return NULL;
}

void trajectory_print(const struct trajectory *tr, const struct trajectory_task *task, struct jbuf *b)
{
    const size_t start = b->len;
    put_str_member(b, 1, "object", "task.trajectory");
    put_str_member(b, 0, "id", task->id);
    put_str_member(b, 0, "mode", task->mode);
    put_str_member(b, 0, "status", task->status);
    put_str_member(b, 0, "input", task->input);
    if (task->metadata) {
        put_key(b, 0, "metadata");
        jbuf_json(b, task->metadata);
    }
    put_key(b, 0, "output");
    if (task->output)
        jbuf_json(b, task->output);
    else
        jbuf_add(b, "null", 4);
    if (task->error)
        put_str_member(b, 0, "error", task->error);
    put_int_member(b, 0, "created_at", task->created_unix_ms / 1000);
    put_int_member(b, 0, "wall_ms", task->wall_ms);
    put_int_member(b, 0, "max_rounds", task->max_rounds);
    if (tr && tr->full) {
        char why[256];
        snprintf(why, sizeof why, "the trajectory reached its size limit (%d MiB of prompts and completions as "
                 "printed): rounds from %d on are not recorded (decisions and protocol_compliance count "
                 "the recorded ones)", TRAJECTORY_MAX_BYTES >> 20, tr->full_round);
        put_str_member(b, 0, "truncated", why);
    }

    /* the ledger in an array, to find each step's calls by position */
    const int n_ledger = cJSON_GetArraySize(task->ledger);
    const cJSON **entries = n_ledger ? malloc((size_t)n_ledger * sizeof *entries) : NULL;
    if (n_ledger && !entries) {
        b->oom = 1;
        return;
    }
    int k = 0;
    for (const cJSON *e = task->ledger ? task->ledger->child : NULL; e && k < n_ledger; e = e->next)
        entries[k++] = e;

    /* each step's prompt rebuilt from the differences */
    char *prompt = NULL;
    size_t prompt_cap = 0;
    int valid_steps = 0;
    put_key(b, 0, "steps");
    jbuf_add(b, "[", 1);
    for (int i = 0; tr && i < tr->n && !b->oom; i++) {
        const struct traj_step *s = &tr->steps[i];
        size_t sl = strlen(s->suffix);
        char *np = ps_grow(prompt, &prompt_cap, s->keep + sl + 1, 1, 1024);
        if (!np) {
            b->oom = 1;
            break;
        }
        prompt = np;
        memcpy(prompt + s->keep, s->suffix, sl + 1);
        const int lo = s->ledger_begin < n_ledger ? s->ledger_begin : n_ledger;
        /* the last step's calls end where the next decision began: the
         * ledger's end, or where recording stopped (truncated) */
        int hi = i + 1 < tr->n ? tr->steps[i + 1].ledger_begin : tr->full ? tr->full_ledger : n_ledger;
        hi = hi < lo ? lo : hi > n_ledger ? n_ledger : hi;
        int rejected = 0;
        for (int j = lo; j < hi; j++)
            rejected += is_rejected(entries[j]);
        valid_steps += s->valid && rejected == 0;

        jbuf_add(b, i ? "," : "", i ? 1 : 0);
        put_int_member(b, 1, "round", s->round);
        put_key(b, 0, "messages");
        jbuf_add(b, "[", 1);
        put_message(b, 1, "system", task->system);
        put_message(b, 0, "user", prompt);
        if (s->completion)
            put_message(b, 0, "assistant", s->completion);
        jbuf_add(b, "]", 1);
        put_key(b, 0, "valid");
        jbuf_add(b, s->valid ? "true" : "false", s->valid ? 4 : 5);
        if (s->note)
            put_str_member(b, 0, "note", s->note);
        put_key(b, 0, "calls");
        jbuf_add(b, "[", 1);
        for (int j = lo; j < hi; j++) {
            jbuf_add(b, j > lo ? "," : "", j > lo ? 1 : 0);
            const cJSON *id = json_get(entries[j], "id");
            if (id)
                jbuf_json(b, id);
            else
                jbuf_add(b, "null", 4);
        }
        jbuf_add(b, "]", 1);
        put_int_member(b, 0, "rejected", rejected);
        put_int_member(b, 0, "ms", s->ms);
        const cJSON *u = usage_of(task->usage, s->round);
        if (u) {
            put_key(b, 0, "usage");
            jbuf_json(b, u);
        }
        jbuf_add(b, "}", 1);
    }
    jbuf_add(b, "]", 1);
    free(prompt);

    put_key(b, 0, "calls");
    if (task->ledger)
        jbuf_json(b, task->ledger);
    else
        jbuf_add(b, "[]", 2);

    /* measures and reward terms */
    int ok = 0, rejected = 0, distinct = 0;
    struct str_index agents = { 0 };
    for (int j = 0; j < n_ledger; j++) {
        const char *st = entry_str(entries[j], "status");
        if (st && !strcmp(st, "ok"))
            ok++;
        if (is_rejected(entries[j])) {
            rejected++;
            continue;
        }
        const char *to = entry_str(entries[j], "to");
        if (to && !str_index_get(&agents, to)) {
            if (str_index_put(&agents, to, (void *)to))
                b->oom = 1;
            distinct++;
        }
    }
    str_index_free(&agents);
    free(entries);
    long long tok[3] = { 0, 0, 0 };
    static const char *const uk[] = { "prompt_tokens", "cached_tokens", "completion_tokens" };
    const cJSON *u;
    cJSON_ArrayForEach(u, task->usage)
        for (int i = 0; i < 3; i++)
            tok[i] += (long long)cJSON_GetNumberValue(json_get(u, uk[i]));
    const int steps = tr ? tr->n : 0, dispatched = n_ledger - rejected;
    put_key(b, 0, "measures");
    put_int_member(b, 1, "rounds", task->rounds);
    put_int_member(b, 0, "decisions", steps);
    put_int_member(b, 0, "decisions_compliant", valid_steps);
    put_int_member(b, 0, "calls", n_ledger);
    put_int_member(b, 0, "calls_ok", ok);
    put_int_member(b, 0, "calls_rejected", rejected);
    put_int_member(b, 0, "agents_distinct", distinct);
    for (int i = 0; i < 3; i++)
        put_int_member(b, 0, uk[i], tok[i]);
    jbuf_add(b, "}", 1);

    const int completed = task->status && !strcmp(task->status, "completed");
    const double ideal = dispatched > 0 ? 2.0 : 1.0;
    double eff = completed && task->rounds > 0 ? ideal / task->rounds : 0.0;
    put_key(b, 0, "rewards");
    put_int_member(b, 1, "success", completed);
    put_num_member(b, "protocol_compliance", steps ? (double)valid_steps / steps : 0.0, 0);
    put_num_member(b, "diversity", dispatched ? (double)distinct / dispatched : 0.0, dispatched == 0);
    put_num_member(b, "efficiency", eff > 1.0 ? 1.0 : eff, 0);
    jbuf_add(b, "}}", 2);
    /* JSON text is UTF-8: a byte that is not part of well-formed UTF-8 -
     * a token budget ending a decision inside a character, an agent's or
     * a library caller's text - becomes '?', which is never JSON syntax
     * (such bytes only occur inside strings) */
    if (!b->oom)
        utf8_scrub_n(b->p + start, b->len - start);
}

int trajectory_file_open(const char *path)
{
    const int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        ps_error_set(PS_EIO, "%s: %s", path, strerror(errno));
    return fd;
}

int trajectory_line_write(int fd, const char *text, size_t len)
{
    const off_t start = lseek(fd, 0, SEEK_END);
    struct iovec iov[2] = { { (void *)text, len }, { (void *)"\n", 1 } };
    int i = 0;
    while (i < 2) {
        ssize_t w = writev(fd, iov + i, 2 - i);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            const int err = w < 0 ? errno : EIO;
            if (start < 0 || ftruncate(fd, start) != 0) {
                ssize_t nl = write(fd, "\n", 1);
                (void)nl;
            }
            return ps_error_set(PS_EIO, "%s", w < 0 ? strerror(err) : "nothing written");
        }
        while (i < 2 && (size_t)w >= iov[i].iov_len) {
            w -= (ssize_t)iov[i].iov_len;
            i++;
        }
        if (i < 2) {
            iov[i].iov_base = (char *)iov[i].iov_base + w;
            iov[i].iov_len -= (size_t)w;
        }
    }
    return PS_OK;
}
