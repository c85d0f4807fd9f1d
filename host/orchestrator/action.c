/* action.c - incremental action parser (see action.h). */
#include "orchestrator/action.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/json_get.h"
#include "common/status.h"

struct action_parser {
    action_call_fn cb;
    void          *ud;
    char          *buf;
    size_t         len, cap;
    size_t         scanned;        /* bytes lexed so far */
    char           stack[ACTION_MAX_DEPTH];
    int            depth;
    int            in_string, escape;
    int            started, complete;
    size_t         str_start;      /* offset of the current string's content */
    char           last_key[16];   /* last string completed at depth 1 */
    int            key_is_calls;   /* the depth-1 value being read is "calls" */
    int            calls_depth;    /* depth of the calls array, 0 if none */
    size_t         obj_start;      /* offset of the call object being read */
};

struct action_parser *action_parser_new(action_call_fn cb, void *ud)
{
    struct action_parser *p = calloc(1, sizeof *p);
    if (p) {
        p->cb = cb;
        p->ud = ud;
    }
    return p;
}

void action_parser_free(struct action_parser *p)
{
    if (p) {
        free(p->buf);
        free(p);
    }
}

int action_parser_complete(const struct action_parser *p)
{
    return p->complete;
}

static int lex(struct action_parser *p)
{
    for (; p->scanned < p->len && !p->complete; p->scanned++) {
        size_t i = p->scanned;
        char ch = p->buf[i];
        if (p->in_string) {
            if (p->escape)
                p->escape = 0;
            else if (ch == '\\')
                p->escape = 1;
            else if (ch == '"') {
                p->in_string = 0;
                if (p->depth == 1) {
                    size_t n = i - p->str_start;
                    if (n >= sizeof p->last_key)
                        n = sizeof p->last_key - 1;
                    memcpy(p->last_key, p->buf + p->str_start, n);
                    p->last_key[n] = 0;
                }
            }
            continue;
        }
        switch (ch) {
        case ' ': case '\t': case '\n': case '\r':
            break;
        case '"':
            if (!p->started)
                return ps_error_set(PS_EFORMAT, "action: must be a JSON object");
            p->in_string = 1;
            p->str_start = i + 1;
            break;
        case ':':
            if (p->depth == 1)
                p->key_is_calls = !strcmp(p->last_key, "calls");
            break;
        case '{': case '[':
            if (!p->started) {
                if (ch != '{')
                    return ps_error_set(PS_EFORMAT, "action: must be a JSON object");
                p->started = 1;
            }
            if (p->depth >= ACTION_MAX_DEPTH)
                return ps_error_set(PS_EFORMAT, "action: nested deeper than %d", ACTION_MAX_DEPTH);
            p->stack[p->depth++] = ch;
            if (ch == '[' && p->depth == 2 && p->key_is_calls)
                p->calls_depth = 2;
            if (ch == '{' && p->calls_depth && p->depth == p->calls_depth + 1)
                p->obj_start = i;
            break;
        case '}': case ']': {
            if (!p->depth || p->stack[p->depth - 1] != (ch == '}' ? '{' : '['))
                return ps_error_set(PS_EFORMAT, "action: mismatched '%c' at byte %zu", ch, i);
            p->depth--;
            if (ch == '}' && p->calls_depth && p->depth == p->calls_depth) {
                cJSON *call = cJSON_ParseWithLength(p->buf + p->obj_start, i + 1 - p->obj_start);
                if (call && p->cb)
                    p->cb(p->ud, call);
                cJSON_Delete(call);
            }
            if (ch == ']' && p->calls_depth && p->depth == p->calls_depth - 1)
                p->calls_depth = 0;
            if (p->depth == 1 && ch == ']')
                p->key_is_calls = 0;
            if (p->depth == 0) {
                p->complete = 1;
                p->scanned = i + 1;
                return PS_OK;
            }
            break;
        }
        default:
            if (!p->started)
                return ps_error_set(PS_EFORMAT, "action: must be a JSON object");
            break;
        }
    }
    return PS_OK;
}

int action_parser_feed(struct action_parser *p, const char *text, size_t n)
{
    if (p->complete)
        return PS_OK;
    if (p->len + n > ACTION_MAX_BYTES)
        return ps_error_set(PS_EFORMAT, "action: longer than %u bytes", ACTION_MAX_BYTES);
    if (p->len + n + 1 > p->cap) {
        char *nb = ps_grow(p->buf, &p->cap, p->len + n + 1, 1, 256);
        if (!nb)
            return ps_error_set(PS_ENOMEM, "action: out of memory");
        p->buf = nb;
    }
    memcpy(p->buf + p->len, text, n);
    p->len += n;
    p->buf[p->len] = 0;
    return lex(p);
}

static int check_id_list(const cJSON *l, const char *what, char *err, size_t errlen)
{
    if (!cJSON_IsArray(l)) {
        snprintf(err, errlen, "action: '%s' must be a list of call ids", what);
        return PS_EINVAL;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, l) if (!cJSON_IsString(e)) {
        snprintf(err, errlen, "action: '%s' must be a list of call ids", what);
        return PS_EINVAL;
    }
    return PS_OK;
}

int action_check(const cJSON *a, char *err, size_t errlen)
{
    if (!cJSON_IsObject(a)) {
        snprintf(err, errlen, "action: must be a JSON object");
        return PS_EINVAL;
    }
    const char *kinds[4];
    int n_kinds = 0;
    for (const cJSON *k = a->child; k; k = k->next) {
        if (!strcmp(k->string, "calls")) {
            if (!cJSON_IsArray(k)) {
                snprintf(err, errlen, "action: 'calls' must be a list of calls");
                return PS_EINVAL;
            }
            if (!cJSON_GetArraySize(k)) {
                snprintf(err, errlen, "action: 'calls' is empty (list at least one call)");
                return PS_EINVAL;
            }
            int i = 0;
            for (const cJSON *c = k->child; c; c = c->next, i++)
                if (!cJSON_IsObject(c)) {
                    snprintf(err, errlen, "action: calls[%d] must be an object {\"to\", \"args\", ...}", i);
                    return PS_EINVAL;
                }
        } else if (!strcmp(k->string, "wait")) {
            if (!cJSON_IsTrue(k)) {
                snprintf(err, errlen, "action: 'wait' must be true");
                return PS_EINVAL;
            }
        } else if (!strcmp(k->string, "cancel")) {
            if (check_id_list(k, "cancel", err, errlen))
                return PS_EINVAL;
            if (!cJSON_GetArraySize(k)) {
                snprintf(err, errlen, "action: 'cancel' must list at least one call id");
                return PS_EINVAL;
            }
        } else if (!strcmp(k->string, "final")) {
            if (!cJSON_IsObject(k) || !cJSON_IsString(json_get(k, "answer"))) {
                snprintf(err, errlen, "action: 'final' must be an object with an 'answer' string");
                return PS_EINVAL;
            }
            for (const cJSON *f = k->child; f; f = f->next)
                if (strcmp(f->string, "answer") && strcmp(f->string, "uses")) {
                    snprintf(err, errlen, "action: 'final' has an unknown key '%s' (answer, uses)", f->string);
                    return PS_EINVAL;
                }
            const cJSON *uses = json_get(k, "uses");
            if (uses && check_id_list(uses, "final.uses", err, errlen))
                return PS_EINVAL;
        } else if (!strcmp(k->string, "thought")) {
            if (!cJSON_IsString(k)) {
                snprintf(err, errlen, "action: 'thought' must be a string");
                return PS_EINVAL;
            }
            continue;
        } else {
            snprintf(err, errlen, "action: unknown key '%s' (calls, wait, cancel, final, thought)", k->string);
            return PS_EINVAL;
        }
        for (int i = 0; i < n_kinds; i++)
            if (!strcmp(kinds[i], k->string)) {
                snprintf(err, errlen, "action: '%s' given twice", k->string);
                return PS_EINVAL;
            }
        if (n_kinds == 1) {
            snprintf(err, errlen, "action: exactly one of calls, wait, cancel, final (got '%s' and '%s')", kinds[0],
                     k->string);
            return PS_EINVAL;
        }
        kinds[n_kinds++] = k->string;
    }
    if (!n_kinds) {
        snprintf(err, errlen, "action: needs one of calls, wait, cancel, final");
        return PS_EINVAL;
    }
    return PS_OK;
}

const char *action_parser_text(const struct action_parser *p, size_t *len)
{
    *len = p->len;
    return p->buf ? p->buf : "";
}

int action_parser_finish(struct action_parser *p, cJSON **action)
{
    *action = NULL;
    if (!p->complete)
        return ps_error_set(PS_EFORMAT, "action: incomplete JSON object");
    cJSON *a = cJSON_ParseWithLength(p->buf, p->scanned);
    if (!a)
        return ps_error_set(PS_EFORMAT, "action: not valid JSON");
    char err[256];
    if (action_check(a, err, sizeof err)) {
        cJSON_Delete(a);
        return ps_error_set(PS_EFORMAT, "%s", err);
    }
    *action = a;
    return PS_OK;
}
