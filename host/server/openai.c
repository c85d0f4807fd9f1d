/* openai.c - request parsing and error bodies of the OpenAI-compatible API. */
#include "openai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/status.h"
#include "../model/unicode.h"

int api_error_set(struct api_error *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return status;
}

char *api_error_json(const struct api_error *e)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    size_t n;
    char *msg = utf8_sanitize(e->message, strlen(e->message), &n);
    cJSON_AddStringToObject(err, "message", msg ? msg : "error");
    free(msg);
    cJSON_AddStringToObject(err, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0])
        cJSON_AddStringToObject(err, "param", e->param);
    else
        cJSON_AddNullToObject(err, "param");
    if (e->code)
        cJSON_AddStringToObject(err, "code", e->code);
    else
        cJSON_AddNullToObject(err, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

bool utf8_valid(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = unicode_utf8_decode((const uint8_t *)s + i, len - i, &cp);
        if (cp == UNICODE_INVALID)
            return false;
        i += n;
    }
    return true;
}

char *utf8_sanitize(const char *s, size_t len, size_t *out_len)
{
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    size_t i = 0, o = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            out[o++] = s[i++];
            continue;
        }
        uint32_t cp;
        size_t n = unicode_utf8_decode((const uint8_t *)s + i, len - i, &cp);
        if (cp == UNICODE_INVALID) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
        } else {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    if (out_len)
        *out_len = o;
    return out;
}

void gen_params_free(struct gen_params *p)
{
    if (!p)
        return;
    for (int32_t i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    free(p->prompt_ids);
    free(p->prompt);
    memset(p, 0, sizeof *p);
}

#define BAD(param, ...) api_error_set(err, 400, "invalid_request_error", "invalid_value", param, __VA_ARGS__)
#define BADTYPE(param, what) \
    api_error_set(err, 400, "invalid_request_error", "invalid_type", param, \
                  "'%s' must be %s", param, what)

static bool is_int(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 9.0e15;
}

/* Optional number field into *out; range [lo, hi]. */
static int get_num(const cJSON *root, const char *key, double lo, double hi, float *out,
                   struct api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v))
        return BADTYPE(key, "a number");
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(key, "'%s' must be in [%g, %g], got %g", key, lo, hi, v->valuedouble);
    *out = (float)v->valuedouble;
    return 0;
}

static int get_int(const cJSON *root, const char *key, double lo, double hi, int64_t *out, bool *present,
                   struct api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (present)
        *present = false;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!is_int(v))
        return BADTYPE(key, "an integer");
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(key, "'%s' must be in [%.0f, %.0f], got %.0f", key, lo, hi, v->valuedouble);
    *out = (int64_t)v->valuedouble;
    if (present)
        *present = true;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, bool *out, struct api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return BADTYPE(key, "a boolean");
    *out = cJSON_IsTrue(v);
    return 0;
}

static int parse_stop(const cJSON *root, struct gen_params *p, struct api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!v || cJSON_IsNull(v))
        return 0;
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0)
        return BADTYPE("stop", "a string or an array of strings");
    if (n > 16)
        return BAD("stop", "'stop' may hold at most 16 strings, got %d", n);
    p->stop = calloc((size_t)(n ? n : 1), sizeof *p->stop);
    if (!p->stop)
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    for (int i = 0; i < n; i++) {
        const cJSON *s = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(s)) {
            char param[32];
            snprintf(param, sizeof param, "stop[%d]", i);
            return BADTYPE(param, "a string");
        }
        if (strlen(s->valuestring) > 256)
            return BAD("stop", "stop strings may be at most 256 bytes");
        if (!s->valuestring[0])
            continue;
        if (!(p->stop[p->n_stop] = strdup(s->valuestring)))
            return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        p->n_stop++;
    }
    return 0;
}

/* Content of a message: a string, null, or an array of text parts. */
static int message_content(const cJSON *c, int idx, char **out, struct api_error *err)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%d].content", idx);
    if (!c || cJSON_IsNull(c)) {
        *out = strdup("");
        return *out ? 0 : api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (cJSON_IsString(c)) {
        *out = strdup(c->valuestring);
        return *out ? 0 : api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (!cJSON_IsArray(c))
        return BADTYPE(param, "a string or an array of content parts");
    size_t total = 1;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
            !cJSON_IsString(text))
            return api_error_set(err, 400, "invalid_request_error", "invalid_type", param,
                                 "'%s' parts must be {\"type\": \"text\", \"text\": string}; "
                                 "other part types are not supported", param);
        total += strlen(text->valuestring);
    }
    char *s = malloc(total);
    if (!s)
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    s[0] = '\0';
    size_t len = 0;
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + len, t, l + 1);
        len += l;
    }
    *out = s;
    return 0;
}

static int parse_messages(const cJSON *root, const chat_template *tmpl, struct gen_params *p,
                          struct api_error *err)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!msgs)
        return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter", "messages",
                             "'messages' is required");
    if (!cJSON_IsArray(msgs))
        return BADTYPE("messages", "an array of messages");
    int n = cJSON_GetArraySize(msgs);
    if (n < 1)
        return BAD("messages", "'messages' must hold at least one message");
    struct chat_message *cm = calloc((size_t)n, sizeof *cm);
    char **contents = calloc((size_t)n, sizeof *contents);
    int rc = 0;
    if (!cm || !contents) {
        rc = api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *m = cJSON_GetArrayItem(msgs, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(m)) {
            rc = BADTYPE(param, "an object");
            goto done;
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(param, sizeof param, "messages[%d].role", i);
        if (!cJSON_IsString(role)) {
            rc = BADTYPE(param, "a string");
            goto done;
        }
        if (!strcmp(role->valuestring, "developer"))
            cm[i].role = CHAT_SYSTEM;
        else if (chat_role_parse(role->valuestring, &cm[i].role)) {
            rc = BAD(param, "'%s' must be one of system, developer, user, assistant, tool; got '%.40s'",
                     param, role->valuestring);
            goto done;
        }
        if ((rc = message_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i, &contents[i], err)))
            goto done;
        cm[i].content = contents[i];
    }
    if (chat_template_apply(tmpl, cm, (size_t)n, 1, &p->prompt)) {
        rc = BAD("messages", "cannot render the chat template: %s", ps_error_last());
        goto done;
    }
done:
    if (contents)
        for (int i = 0; i < n; i++)
            free(contents[i]);
    free(contents);
    free(cm);
    return rc;
}

/* prompt: string | [string] | [int, ...] | [[int, ...]] (one prompt only). */
static int parse_prompt(const cJSON *root, int32_t n_vocab, struct gen_params *p, struct api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!v)
        return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter", "prompt",
                             "'prompt' is required");
    if (cJSON_IsString(v)) {
        p->prompt = strdup(v->valuestring);
        return p->prompt ? 0 : api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (!cJSON_IsArray(v))
        return BADTYPE("prompt", "a string, an array of token ids, or a one-element array of either");
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return BAD("prompt", "'prompt' must not be empty");
    const cJSON *first = cJSON_GetArrayItem(v, 0);
    if (cJSON_IsString(first) || cJSON_IsArray(first)) {
        if (n > 1)
            return BAD("prompt", "only one prompt per request is supported (got %d); send them separately", n);
        if (cJSON_IsString(first)) {
            p->prompt = strdup(first->valuestring);
            return p->prompt ? 0 : api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        }
        v = first;
        n = cJSON_GetArraySize(v);
        if (n == 0)
            return BAD("prompt", "'prompt' must not be empty");
    }
    p->prompt_ids = malloc((size_t)n * sizeof *p->prompt_ids);
    if (!p->prompt_ids)
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    for (int i = 0; i < n; i++) {
        const cJSON *t = cJSON_GetArrayItem(v, i);
        if (!is_int(t))
            return BADTYPE("prompt", "a string or an array of integer token ids");
        if (t->valuedouble < 0 || t->valuedouble >= n_vocab)
            return BAD("prompt", "token id %.0f is outside the vocabulary [0, %d)", t->valuedouble, (int)n_vocab);
        p->prompt_ids[i] = (int32_t)t->valuedouble;
    }
    p->n_prompt_ids = n;
    return 0;
}

static int parse_body(const cJSON *root, bool chat, const char *const *model_names,
                      const chat_template *tmpl, int32_t n_vocab, struct gen_params *p,
                      struct api_error *err)
{
    int rc;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model))
            return BADTYPE("model", "a string");
        bool known = false;
        for (size_t i = 0; model_names[i]; i++)
            if (!strcmp(model->valuestring, model_names[i]))
                known = true;
        if (!known)
            return api_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                                 "The model '%.200s' does not exist; this server serves '%s' (alias 'default')",
                                 model->valuestring, model_names[0]);
    }
    p->chat = chat;
    if ((rc = get_bool(root, "stream", &p->stream, err)))
        return rc;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return BADTYPE("stream_options", "an object");
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (iu && !cJSON_IsBool(iu))
            return BADTYPE("stream_options.include_usage", "a boolean");
        p->include_usage = iu && cJSON_IsTrue(iu);
    }
    int64_t n = 1, max_tokens = 0, seed = 0, top_k = 0, priority = 0;
    bool has_max = false, has_seed = false;
    if ((rc = get_int(root, "n", 1, 128, &n, NULL, err)))
        return rc;
    if (n != 1)
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", "n",
                             "'n' must be 1: one choice per request is supported (got %lld)", (long long)n);
    int64_t best_of = 1;
    if ((rc = get_int(root, "best_of", 1, 128, &best_of, NULL, err)))
        return rc;
    if (best_of != 1)
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", "best_of",
                             "'best_of' must be 1");
    bool flag = false;
    if ((rc = get_bool(root, "echo", &flag, err)))
        return rc;
    if (flag)
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", "echo",
                             "'echo' is not supported");
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (lp && !cJSON_IsNull(lp) && !cJSON_IsFalse(lp) && !(cJSON_IsNumber(lp) && lp->valuedouble == 0))
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", "logprobs",
                             "'logprobs' is not supported yet");
    /* Constrained output (issue 7's grammar engine) is not wired into the
     * HTTP API yet: refuse rather than silently return unconstrained text. */
    static const char *const unwired[] = { "response_format", "tools", "tool_choice", "functions" };
    for (size_t i = 0; i < sizeof unwired / sizeof unwired[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, unwired[i]);
        if (v && !cJSON_IsNull(v))
            return api_error_set(err, 400, "invalid_request_error", "unsupported_value", unwired[i],
                                 "'%s' is not supported yet by this server", unwired[i]);
    }
    const char *mt_key = "max_tokens";
    if ((rc = get_int(root, "max_tokens", 1, 1 << 24, &max_tokens, &has_max, err)))
        return rc;
    if (!has_max && chat) {
        mt_key = "max_completion_tokens";
        if ((rc = get_int(root, mt_key, 1, 1 << 24, &max_tokens, &has_max, err)))
            return rc;
    }
    (void)mt_key;
    p->max_tokens = has_max ? (int32_t)max_tokens : chat ? 0 : 16;

    p->sp = sampler_params_default();
    p->sp.temperature = 1.0f;
    if ((rc = get_num(root, "temperature", 0, 2, &p->sp.temperature, err)) ||
        (rc = get_num(root, "top_p", 0, 1, &p->sp.top_p, err)) ||
        (rc = get_num(root, "min_p", 0, 1, &p->sp.min_p, err)) ||
        (rc = get_num(root, "presence_penalty", -2, 2, &p->sp.presence_penalty, err)) ||
        (rc = get_num(root, "frequency_penalty", -2, 2, &p->sp.frequency_penalty, err)) ||
        (rc = get_num(root, "repetition_penalty", 0.01, 10, &p->sp.repeat_penalty, err)) ||
        (rc = get_num(root, "repeat_penalty", 0.01, 10, &p->sp.repeat_penalty, err)))
        return rc;
    if (p->sp.top_p <= 0)
        return BAD("top_p", "'top_p' must be in (0, 1], got 0");
    if ((rc = get_int(root, "top_k", 0, 1 << 24, &top_k, NULL, err)) ||
        (rc = get_int(root, "seed", -9.0e15, 9.0e15, &seed, &has_seed, err)) ||
        (rc = get_int(root, "priority", -1000000, 1000000, &priority, NULL, err)) ||
        (rc = get_bool(root, "ignore_eos", &p->ignore_eos, err)))
        return rc;
    p->sp.top_k = (int32_t)top_k;
    p->priority = (int32_t)priority;
    if (has_seed) {
        p->sp.seed = (uint64_t)seed;
    } else {
        static uint64_t counter;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        p->sp.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (++counter * 0x9e3779b97f4a7c15ull);
    }
    if (sampler_params_validate(&p->sp))
        return BAD("", "%s", ps_error_last());
    if ((rc = parse_stop(root, p, err)))
        return rc;
    return chat ? parse_messages(root, tmpl, p, err) : parse_prompt(root, n_vocab, p, err);
}

int openai_parse(const char *body, size_t len, bool chat, const char *const *model_names,
                 const chat_template *tmpl, int32_t n_vocab, struct gen_params *out,
                 struct api_error *err)
{
    memset(out, 0, sizeof *out);
    if (!utf8_valid(body, len))
        return api_error_set(err, 400, "invalid_request_error", "invalid_utf8", NULL,
                             "The request body is not valid UTF-8");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return api_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                             "We could not parse the JSON body of your request (error near byte %zu). "
                             "The body must be a JSON object.", at);
    }
    int rc;
    if (!cJSON_IsObject(root))
        rc = api_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                           "The JSON body must be an object");
    else
        rc = parse_body(root, chat, model_names, tmpl, n_vocab, out, err);
    cJSON_Delete(root);
    if (rc)
        gen_params_free(out);
    return rc;
}
