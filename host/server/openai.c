/* openai.c - request parsing and error bodies of the OpenAI-compatible API. */
#include "openai.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/grow.h"
#include "../common/json_get.h"
#include "../common/status.h"
#include "../common/utf8_cut.h"
#include "../orchestrator/json_alloc.h"
#include "../engine/scheduler.h"
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

const char *api_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return NULL;
    }
}

char *api_error_json(const struct api_error *e)
{
    long f0 = json_alloc_failures();
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    size_t n;
    char *msg = utf8_sanitize(e->message, strlen(e->message), &n);
    bool ok = msg && cJSON_AddStringToObject(err, "message", msg);
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
    if (!ok || json_alloc_failures() != f0) {
        free(s);
        return NULL;
    }
    return s;
}

/* ---- NUL characters in JSON strings (json_nul_find: json_alloc.h) ---------------- */

/* Append p[0..n) to out[0..cap) at *len; what does not fit is cut at a
 * UTF-8 character boundary and later appends add nothing (*len = cap - 1). */
static void path_append(char *out, size_t cap, size_t *len, const char *p, size_t n)
{
    if (*len + n >= cap) {
        n = utf8_cut(p, cap - 1 - *len);
        memcpy(out + *len, p, n);
        *len = cap - 1;
        out[*len] = '\0';
        return;
    }
    memcpy(out + *len, p, n);
    *len += n;
    out[*len] = '\0';
}

#define JSON_PATH_DEPTH 32

struct path_frame {          /* one open object or array of json_path_at      */
    bool      arr;
    bool      want_key;      /* object: the next string is a key              */
    long long idx;           /* array: index of the current element           */
    size_t    key, key_len;  /* object: the current member's key, s[key..+len) */
};

/* The parameter path ("messages[0].content", "stop[1]") of the string of
 * JSON text s[0..len) that holds byte `at`, into out[0..cap) ("" at the top
 * level, or for a string not found).  Keys are shown as they are written,
 * escapes included; levels past JSON_PATH_DEPTH are left out.  Any bytes are
 * safe to scan (the text need not be valid JSON). */
static void json_path_at(const char *s, size_t len, size_t at, char *out, size_t cap)
{
    struct path_frame st[JSON_PATH_DEPTH];
    size_t depth = 0, n = 0; /* depth may pass JSON_PATH_DEPTH: deeper levels are not tracked */
    out[0] = '\0';
    for (size_t i = 0; i < len; i++) {
        const char c = s[i];
        if (c == '"') {
            size_t j = i + 1;
            while (j < len && s[j] != '"')
                j += s[j] == '\\' ? 2 : 1;
            const size_t end = j < len ? j : len; /* an unterminated string runs to the end */
            const size_t d = depth < JSON_PATH_DEPTH ? depth : JSON_PATH_DEPTH;
            const bool is_key = depth >= 1 && depth <= JSON_PATH_DEPTH && !st[depth - 1].arr &&
                                st[depth - 1].want_key;
            if (is_key) {
                st[depth - 1].key = i + 1;
                st[depth - 1].key_len = end - (i + 1);
                st[depth - 1].want_key = false;
            }
            if (at > i && at < end) {
                for (size_t k = 0; k < d; k++) {
                    if (st[k].arr) {
                        char ix[32];
                        int m = snprintf(ix, sizeof ix, "[%lld]", st[k].idx);
                        path_append(out, cap, &n, ix, (size_t)m);
                    } else {
                        if (k > 0)
                            path_append(out, cap, &n, ".", 1);
                        path_append(out, cap, &n, s + st[k].key, st[k].key_len);
                    }
                }
                return;
            }
            i = end;
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth < JSON_PATH_DEPTH)
                st[depth] = (struct path_frame){ .arr = c == '[', .want_key = c == '{' };
            depth++;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        } else if (c == ',' && depth >= 1 && depth <= JSON_PATH_DEPTH) {
            if (st[depth - 1].arr)
                st[depth - 1].idx++;
            else
                st[depth - 1].want_key = true;
        }
    }
}

int api_json_nul_check(const char *body, size_t len, struct api_error *err)
{
    size_t at = 0;
    bool in_string = false;
    if (!json_nul_find(body, len, &at, &in_string))
        return 0;
    if (!in_string)
        return api_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                             "We could not parse the JSON body of your request (error near byte %zu: a NUL "
                             "byte outside a string). The body must be a JSON object.", at);
    char path[sizeof err->param];
    json_path_at(body, len, at, path, sizeof path);
    if (path[0])
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", path,
                             "NUL characters (\\u0000) are not supported in strings: '%s' holds one", path);
    return api_error_set(err, 400, "invalid_request_error", "unsupported_value", NULL,
                         "NUL characters (\\u0000) are not supported in strings: one is at byte %zu of the body",
                         at);
}

int api_json_body_parse(const char *body, size_t len, cJSON **out, struct api_error *err)
{
    *out = NULL;
    if (!utf8_valid(body, len))
        return api_error_set(err, 400, "invalid_request_error", "invalid_utf8", NULL,
                             "The request body is not valid UTF-8");
    const char *end = NULL;
    int oom;
    cJSON *root = json_parse_end_oom(body, len, &end, &oom);
    size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
    if (!root && oom)
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory while parsing the request body");
    if (!root)
        return api_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                             "We could not parse the JSON body of your request (error near byte %zu). "
                             "The body must be a JSON object.", at);
    int rc = 0;
    if (!end || end < body || end > body + len)
        at = len;
    size_t rest = at;
    while (rest < len && (body[rest] == ' ' || body[rest] == '\t' || body[rest] == '\n' || body[rest] == '\r'))
        rest++;
    if (!cJSON_IsObject(root))
        rc = api_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                           "The JSON body must be an object");
    else if ((rc = api_json_nul_check(body, at, err)))
        ;
    else if (rest < len)
        rc = api_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                           "We could not parse the JSON body of your request (unexpected data at byte %zu, "
                           "after the JSON value). The body must be one JSON object.", rest);
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    *out = root;
    return 0;
}

char *utf8_sanitize(const char *s, size_t len, size_t *out_len)
{
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    size_t i = 0, o = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80 && s[i]) {
            out[o++] = s[i++];
            continue;
        }
        if (!s[i]) {   /* a C string ends at NUL: the rest of the text would be lost */
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
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
    grammar_free(p->grammar);
    openai_output_free(p->output);
    for (int32_t i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    free(p->prompt_ids);
    free(p->prompt);
    free(p->prompt_markup);
    free(p->logit_bias);
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
    const cJSON *v = json_get(root, key);
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
    const cJSON *v = json_get(root, key);
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

/* "seed": any 64-bit integer, as OpenAI takes it (signed or not; JSON
 * numbers arrive as doubles, so values past 2^53 keep the precision the
 * double has, and a seed is the same each time it is sent).  Absent or
 * null: *present false. */
static int get_seed(const cJSON *root, uint64_t *out, bool *present, struct api_error *err)
{
    const cJSON *v = json_get(root, "seed");
    *present = false;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return BADTYPE("seed", "an integer");
    /* [-2^63, 2^64): both bounds are exact doubles */
    if (!(v->valuedouble >= -9223372036854775808.0 && v->valuedouble < 18446744073709551616.0))
        return BAD("seed", "'seed' must be a 64-bit integer, got %g", v->valuedouble);
    *out = v->valuedouble < 0 ? (uint64_t)(int64_t)v->valuedouble : (uint64_t)v->valuedouble;
    *present = true;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, bool *out, struct api_error *err)
{
    const cJSON *v = json_get(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return BADTYPE(key, "a boolean");
    *out = cJSON_IsTrue(v);
    return 0;
}

static int parse_stop(const cJSON *root, struct gen_params *p, struct api_error *err)
{
    const cJSON *v = json_get(root, "stop");
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

/* An assistant message's tool_calls (history of a tool conversation):
 * appended to its content as the JSON the model emits for a call,
 * {"name": ..., "arguments": ...}, one per line.  arguments (a string) is
 * parsed as JSON and embedded as such when it is JSON, else kept as a
 * string.  Its JSON is parsed a second time here, so the body's NUL check
 * never saw it: a NUL in one of its strings (the outer text
 * "{\"x\":\"\\u0000\"}", legitimately a backslash and the text u0000) is
 * refused the same way (400 unsupported_value, param
 * messages[i].tool_calls[j].function.arguments) instead of cutting the
 * arguments there. */
static int append_tool_calls(const cJSON *tc, int idx, char **content, struct api_error *err)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%d].tool_calls", idx);
    if (!tc || cJSON_IsNull(tc))
        return 0;
    if (!cJSON_IsArray(tc))
        return BADTYPE(param, "an array");
    const cJSON *call;
    int j = -1;
    cJSON_ArrayForEach(call, tc) {
        j++;
        const cJSON *fn = json_get(call, "function");
        const cJSON *name = json_get(fn, "name");
        const cJSON *args = json_get(fn, "arguments");
        const cJSON *id = json_get(call, "id");
        if (!cJSON_IsObject(call) || !cJSON_IsObject(fn) || !cJSON_IsString(name) ||
            (args && !cJSON_IsString(args)))
            return api_error_set(err, 400, "invalid_request_error", "invalid_type", param,
                                 "'%s' items must be {\"id\": string, \"type\": \"function\", "
                                 "\"function\": {\"name\": string, \"arguments\": string}}", param);
        char idp[sizeof err->param];
        snprintf(idp, sizeof idp, "messages[%d].tool_calls[%d].id", idx, j);
        if (!id)
            return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter", idp,
                                 "'%s' is required", idp);
        if (!cJSON_IsString(id) || !id->valuestring[0])
            return api_error_set(err, 400, "invalid_request_error", "invalid_type", idp,
                                 "'%s' must be a non-empty string", idp);
        const char *atext = args ? args->valuestring : "{}", *aend = NULL;
        cJSON *aj = cJSON_ParseWithOpts(atext, &aend, 0);
        size_t at = 0;
        bool in_string = false;
        if (aj && aend && aend >= atext && json_nul_find(atext, (size_t)(aend - atext), &at, &in_string) &&
            in_string) {
            cJSON_Delete(aj);
            char ap[sizeof err->param];
            snprintf(ap, sizeof ap, "messages[%d].tool_calls[%d].function.arguments", idx, j);
            return api_error_set(err, 400, "invalid_request_error", "unsupported_value", ap,
                                 "NUL characters (\\u0000) are not supported in strings: the JSON in '%s' "
                                 "holds one", ap);
        }
        cJSON *o = cJSON_CreateObject();
        char *js = NULL;
        bool added = false; /* the arguments are in o (then o owns aj) */
        if (o && cJSON_AddStringToObject(o, "name", name->valuestring)) {
            if (aj)
                added = cJSON_AddItemToObject(o, "arguments", aj);
            else
                added = cJSON_AddStringToObject(o, "arguments", atext) != NULL;
            if (added)
                js = cJSON_PrintUnformatted(o);
        }
        if (aj && !added)
            cJSON_Delete(aj);
        cJSON_Delete(o);
        size_t a = strlen(*content), b = js ? strlen(js) : 0;
        char *t = js ? realloc(*content, a + b + 2) : NULL;
        if (!t) {
            free(js);
            return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        }
        if (a)
            t[a++] = '\n';
        memcpy(t + a, js, b + 1);
        *content = t;
        free(js);
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
        const cJSON *type = json_get(part, "type");
        const cJSON *text = json_get(part, "text");
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
        const char *t = json_get(part, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + len, t, l + 1);
        len += l;
    }
    *out = s;
    return 0;
}

/* The tool calls of the last assistant message that made some, sorted by
 * id (lookups and the duplicate check in O(log n): a 1 MB body holds
 * ~10^4 calls), and which of them a tool message has answered. */
struct call_ref {
    const char *id;
    int         answered;
};

struct open_calls {
    struct call_ref *calls; /* [n] sorted by id; NULL: none open */
    int              n;
    int              msg;   /* the assistant message's index */
};

static int cmp_call_ref(const void *a, const void *b)
{
    return strcmp(((const struct call_ref *)a)->id, ((const struct call_ref *)b)->id);
}

/* OpenAI's pairing rules: a tool message answers, by tool_call_id, a call
 * of the assistant message before it (tool messages in between), each call
 * once; an assistant message's calls are all answered before the next
 * non-tool message or the end (m NULL).  Call ids are unique within their
 * message.  400 otherwise. */
static int tool_pairing(struct open_calls *oc, const cJSON *m, enum chat_role role, int i, struct api_error *err)
{
    char param[64];
    if (role == CHAT_TOOL) {
        const cJSON *id = json_get(m, "tool_call_id");
        snprintf(param, sizeof param, "messages[%d].tool_call_id", i);
        if (!id)
            return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter", param,
                                 "messages with role 'tool' must have a 'tool_call_id'");
        if (!cJSON_IsString(id))
            return BADTYPE(param, "a string");
        if (!oc->calls) {
            snprintf(param, sizeof param, "messages[%d].role", i);
            return BAD(param, "messages with role 'tool' must be a response to a preceding message with "
                       "'tool_calls'");
        }
        const struct call_ref key = { id->valuestring, 0 };
        struct call_ref *c = bsearch(&key, oc->calls, (size_t)oc->n, sizeof *c, cmp_call_ref);
        if (!c)
            return BAD(param, "'%.64s' is not the id of a tool call of messages[%d]", id->valuestring, oc->msg);
        if (c->answered)
            return BAD(param, "tool call '%.64s' of messages[%d] already has a response", id->valuestring, oc->msg);
        c->answered = 1;
        return 0;
    }
    if (oc->calls) {
        char missing[160] = ""; /* the first three ids (in id order), truncated */
        int n_missing = 0;
        for (int k = 0; k < oc->n; k++) {
            if (oc->calls[k].answered)
                continue;
            if (n_missing++ < 3) {
                size_t used = strlen(missing);
                snprintf(missing + used, sizeof missing - used, "%s%.40s", used ? ", " : "", oc->calls[k].id);
            }
        }
        if (n_missing)
            return BAD("messages", "an assistant message with 'tool_calls' must be followed by tool messages "
                       "responding to each 'tool_call_id'; messages[%d] has %d without one: %s", oc->msg,
                       n_missing, missing);
        free(oc->calls);
        *oc = (struct open_calls){ 0 };
    }
    const cJSON *tc = m ? json_get(m, "tool_calls") : NULL;
    if (role != CHAT_ASSISTANT || !cJSON_IsArray(tc) || cJSON_GetArraySize(tc) == 0)
        return 0;
    /* append_tool_calls checked every item's id is a non-empty string */
    const int n = cJSON_GetArraySize(tc);
    if (!(oc->calls = calloc((size_t)n, sizeof *oc->calls)))
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    oc->n = n;
    oc->msg = i;
    int k = 0;
    const cJSON *call;
    cJSON_ArrayForEach(call, tc)
        oc->calls[k++].id = json_get(call, "id")->valuestring;
    qsort(oc->calls, (size_t)n, sizeof *oc->calls, cmp_call_ref);
    for (k = 1; k < n; k++) {
        if (!strcmp(oc->calls[k - 1].id, oc->calls[k].id)) {
            snprintf(param, sizeof param, "messages[%d].tool_calls", i);
            return BAD(param, "'%s' has two calls with the id '%.64s'", param, oc->calls[k].id);
        }
    }
    return 0;
}

static int parse_messages(const cJSON *root, const chat_template *tmpl, const char *system_extra,
                          struct gen_params *p, struct api_error *err)
{
    const cJSON *msgs = json_get(root, "messages");
    if (!msgs)
        return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter", "messages",
                             "'messages' is required");
    if (!cJSON_IsArray(msgs))
        return BADTYPE("messages", "an array of messages");
    int n = cJSON_GetArraySize(msgs);
    if (n < 1)
        return BAD("messages", "'messages' must hold at least one message");
    /* one more slot for a system message describing the tools */
    struct chat_message *cm = calloc((size_t)n + 1, sizeof *cm);
    char **contents = calloc((size_t)n + 1, sizeof *contents);
    struct open_calls open = { 0 };
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
        const cJSON *role = json_get(m, "role");
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
        if ((rc = message_content(json_get(m, "content"), i, &contents[i], err)))
            goto done;
        if (cm[i].role == CHAT_ASSISTANT &&
            (rc = append_tool_calls(json_get(m, "tool_calls"), i, &contents[i], err)))
            goto done;
        if ((rc = tool_pairing(&open, m, cm[i].role, i, err)))
            goto done;
        cm[i].content = contents[i];
    }
    if ((rc = tool_pairing(&open, NULL, CHAT_USER, n, err))) /* the end: every call answered */
        goto done;
    size_t n_msgs = (size_t)n;
    if (system_extra) {
        /* appended to a leading system message, or a new one in front */
        if (cm[0].role == CHAT_SYSTEM) {
            size_t a = strlen(contents[0]), b = strlen(system_extra);
            char *t = malloc(a + b + 3);
            if (!t) {
                rc = api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
                goto done;
            }
            memcpy(t, contents[0], a);
            memcpy(t + a, a ? "\n\n" : "", a ? 2 : 0);
            memcpy(t + a + (a ? 2 : 0), system_extra, b + 1);
            free(contents[0]);
            contents[0] = t;
            cm[0].content = t;
        } else {
            memmove(cm + 1, cm, (size_t)n * sizeof *cm);
            cm[0].role = CHAT_SYSTEM;
            cm[0].content = system_extra;
            n_msgs++;
        }
    }
    struct chat_prompt cp;
    if (chat_template_render(tmpl, cm, n_msgs, 1, &cp)) {
        rc = BAD("messages", "cannot render the chat template: %s", ps_error_last());
        goto done;
    }
    p->prompt = cp.text;
    p->prompt_markup = cp.markup;
    p->n_prompt_markup = cp.n_markup;
done:
    free(open.calls);
    if (contents)
        for (int i = 0; i < n; i++)
            free(contents[i]);
    free(contents);
    free(cm);
    return rc;
}

/* prompt: string | [string] | [int, ...] | [[int, ...]] (one prompt only),
 * never empty: "" and [""] are refused like [] (400 invalid_value; the
 * engine would refuse an empty token list, reported as a context error). */
static int parse_prompt(const cJSON *root, int32_t n_vocab, struct gen_params *p, struct api_error *err)
{
    const cJSON *v = json_get(root, "prompt");
    if (!v)
        return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter", "prompt",
                             "'prompt' is required");
    if (cJSON_IsString(v) && !v->valuestring[0])
        return BAD("prompt", "'prompt' must not be empty");
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
            if (!first->valuestring[0])
                return BAD("prompt", "'prompt' must not be empty");
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

/* ---- constrained output: response_format, tools ------------------------------- */

#define TOOL_CALL_PREFIX  "{\"name\": \""
#define TOOL_ARGS_PREFIX  ", \"arguments\": "

struct out_call {
    char     id[32];          /* "call_" + 24 characters                     */
    char     name[72];
    size_t   args_start, args_end; /* into buf; args_end once done          */
    bool     done;            /* the arguments value is complete             */
};

/* Scans the output: calls[0..n_calls) have begun their arguments; the
 * one being named (OUT_NAME, OUT_ARGS_PREFIX) starts at base.  Calls are
 * separated by '\n' (grammar_options.max_docs). */
struct openai_output {
    char    *buf;             /* every output byte so far                    */
    size_t   len, cap;
    size_t   pos;             /* bytes scanned                               */
    size_t   base;            /* start of the call being scanned             */
    int      phase;           /* OUT_NAME .. OUT_END, OUT_BAD                */
    struct out_call calls[OPENAI_MAX_TOOL_CALLS];
    int      n_calls;
    int      announced;       /* calls whose first delta went out            */
    int      emit_call;       /* streaming: the call whose bytes go out next */
    size_t   emitted;         /* streaming: buf offset handed out so far     */
    int      depth;
    bool     in_str, esc;
    bool     auto_mode;       /* tool_choice "auto": not a call -> content    */
    size_t   content_sent;    /* auto text answer: bytes streamed as content */
};

/* OUT_AFTER: a call is complete (a '\n' may start the next); OUT_END:
 * trailing bytes ignored (none under the grammar); OUT_BAD: not a call. */
enum { OUT_NAME, OUT_ARGS_PREFIX, OUT_ARGS, OUT_AFTER, OUT_END, OUT_BAD };

static void call_id_new(char id[32])
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (++counter * 0x9e3779b97f4a7c15ull);
    memcpy(id, "call_", 5);
    for (int k = 0; k < 24; k++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        id[5 + k] = alnum[(x * 0x2545F4914F6CDD1Dull >> 40) % 62];
    }
    id[29] = '\0';
}

/* A reply shaper for a tool-call request (tool_choice "auto": auto_mode);
 * each call gets a fresh id when it begins.  NULL when out of memory. */
static struct openai_output *output_new(bool auto_mode)
{
    struct openai_output *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->auto_mode = auto_mode;
    return o;
}

struct openai_output *openai_output_another(const struct openai_output *o)
{
    return o ? output_new(o->auto_mode) : NULL;
}

static int compile_schema(const struct openai_options *opt, const char *schema, int32_t max_docs,
                          const char *param, const char *what, grammar **out, struct api_error *err)
{
    struct grammar_options go = { .max_compile_ms = opt->max_compile_ms > 0 ? opt->max_compile_ms : 5000,
                                  .max_docs = max_docs };
    /* PS_ENOMEM also when the schema's JSON was read out of memory,
     * whatever the compiler would have concluded (grammar.c) */
    int rc = grammar_compile(opt->vocab, schema, strlen(schema), &go, out);
    if (rc == PS_ENOMEM)
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory compiling %s", what);
    if (rc)
        return api_error_set(err, 400, "invalid_request_error",
                             rc == PS_EUNSUPPORTED ? "unsupported_schema" : "invalid_schema", param,
                             "%s: %s", what, ps_error_last());
    return 0;
}

static int tool_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

static int parse_response_format(const cJSON *rf, const struct openai_options *opt, struct gen_params *p,
                                 struct api_error *err)
{
    if (!cJSON_IsObject(rf))
        return BADTYPE("response_format", "an object");
    const cJSON *type = json_get(rf, "type");
    if (!cJSON_IsString(type))
        return api_error_set(err, 400, "invalid_request_error", "invalid_type", "response_format.type",
                             "'response_format.type' must be one of text, json_object, json_schema");
    if (!strcmp(type->valuestring, "text"))
        return 0;
    if (!strcmp(type->valuestring, "json_object"))
        return compile_schema(opt, GRAMMAR_SCHEMA_JSON_OBJECT, 1, "response_format", "response_format",
                              &p->grammar, err);
    if (strcmp(type->valuestring, "json_schema"))
        return api_error_set(err, 400, "invalid_request_error", "invalid_value", "response_format.type",
                             "'response_format.type' must be one of text, json_object, json_schema; got '%.40s'",
                             type->valuestring);
    const cJSON *js = json_get(rf, "json_schema");
    if (!cJSON_IsObject(js))
        return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter",
                             "response_format.json_schema",
                             "'response_format.json_schema' (an object with 'name' and 'schema') is required "
                             "for type json_schema");
    const cJSON *name = json_get(js, "name");
    if (name && !cJSON_IsString(name))
        return BADTYPE("response_format.json_schema.name", "a string");
    const cJSON *strict = json_get(js, "strict");
    if (strict && !cJSON_IsNull(strict) && !cJSON_IsBool(strict))
        return BADTYPE("response_format.json_schema.strict", "a boolean");
    const cJSON *schema = json_get(js, "schema");
    if (!schema || cJSON_IsNull(schema))
        return api_error_set(err, 400, "invalid_request_error", "missing_required_parameter",
                             "response_format.json_schema.schema",
                             "'response_format.json_schema.schema' is required");
    if (!cJSON_IsObject(schema) && !cJSON_IsBool(schema))
        return BADTYPE("response_format.json_schema.schema", "a JSON Schema object");
    char *text = cJSON_PrintUnformatted(schema);
    if (!text)
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    int rc = compile_schema(opt, text, 1, "response_format", "response_format.json_schema.schema",
                            &p->grammar, err);
    free(text);
    return rc;
}

/* The system text that shows the model its tools and the reply format. */
static char *tools_prompt(const cJSON *list, const char *forced, bool lazy, bool parallel)
{
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return NULL;
    const cJSON *t;
    cJSON_ArrayForEach(t, list) {
        if (!json_add(arr, NULL, cJSON_Duplicate(t, 1))) {   /* never a prompt without one of the tools */
            cJSON_Delete(arr);
            return NULL;
        }
    }
    char *tools = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    if (!tools)
        return NULL;
    const char *fmt = forced
        ? "You can call functions. Available functions:\n%s\nCall the function \"%s\": reply with only a JSON "
          "object {\"name\": \"%s\", \"arguments\": {...}} whose arguments match its parameters."
        : lazy ? "You can call functions. Available functions:\n%s\nTo call one, reply with only a JSON object "
                 "{\"name\": <function name>, \"arguments\": {...}} whose arguments match its parameters; "
                 "otherwise answer in plain text.%s%s"
        : "You can call functions. Available functions:\n%s\nCall one of them: reply with only a JSON object "
          "{\"name\": <function name>, \"arguments\": {...}} whose arguments match its parameters.%s%s";
    static const char several[] = " To make several calls, write one such object per line.";
    size_t n = strlen(fmt) + strlen(tools) + (forced ? 2 * strlen(forced) : 0) + sizeof several;
    char *out = malloc(n);
    if (out) {
        snprintf(out, n, fmt, tools, forced ? forced : "", forced ? forced : "");
        if (parallel)
            strcat(out, several);
    }
    free(tools);
    return out;
}

static int parse_tools(const cJSON *root, const cJSON *tools, const struct openai_options *opt, struct gen_params *p,
                       char **system_extra, struct api_error *err)
{
    if (!cJSON_IsArray(tools) || cJSON_GetArraySize(tools) < 1)
        return BADTYPE("tools", "a non-empty array of {\"type\": \"function\", \"function\": {...}}");
    const cJSON *tc = json_get(root, "tool_choice");
    const char *forced = NULL;
    bool lazy = !tc || cJSON_IsNull(tc) || (cJSON_IsString(tc) && !strcmp(tc->valuestring, "auto"));
    if (lazy) {
        /* the model answers in text or calls a tool: decided by its first token */
    } else if (cJSON_IsString(tc)) {
        if (!strcmp(tc->valuestring, "none"))
            return 0; /* tools are ignored: a plain answer */
        if (strcmp(tc->valuestring, "required"))
            return BAD("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or a named function; "
                       "got '%.40s'", tc->valuestring);
    } else if (cJSON_IsObject(tc)) {
        const cJSON *type = json_get(tc, "type");
        const cJSON *fn = json_get(tc, "function");
        const cJSON *name = json_get(fn, "name");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") || !cJSON_IsString(name))
            return BADTYPE("tool_choice", "'none', 'auto', 'required' or {\"type\": \"function\", "
                           "\"function\": {\"name\": string}}");
        forced = name->valuestring;
    } else {
        return BADTYPE("tool_choice", "a string or an object");
    }
    const cJSON *ptc = json_get(root, "parallel_tool_calls");   /* a boolean or null */
    bool parallel = !ptc || !cJSON_IsFalse(ptc);

    /* [{name, parameters}] of the callable tools (only the forced one);
     * built all-or-nothing (f0): a tool without its parameters would get a
     * looser grammar than it asked for */
    long f0 = json_alloc_failures();
    cJSON *list = cJSON_CreateArray(), *shown = cJSON_CreateArray();
    char *schema = NULL;
    int rc = 0, i = 0;
    bool found = false;
    if (!list || !shown) {
        rc = api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        char param[64];
        snprintf(param, sizeof param, "tools[%d]", i);
        const cJSON *type = json_get(t, "type");
        const cJSON *fn = json_get(t, "function");
        if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
            !cJSON_IsObject(fn)) {
            rc = api_error_set(err, 400, "invalid_request_error", "invalid_type", param,
                               "'%s' must be {\"type\": \"function\", \"function\": {\"name\", \"description\", "
                               "\"parameters\"}}", param);
            goto done;
        }
        const cJSON *name = json_get(fn, "name");
        const cJSON *desc = json_get(fn, "description");
        const cJSON *params = json_get(fn, "parameters");
        snprintf(param, sizeof param, "tools[%d].function.name", i);
        if (!cJSON_IsString(name) || !tool_name_ok(name->valuestring)) {
            rc = BAD(param, "'%s' must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -", param);
            goto done;
        }
        snprintf(param, sizeof param, "tools[%d].function.parameters", i);
        if (params && !cJSON_IsNull(params)) {
            const cJSON *pt = json_get(params, "type");
            if (!cJSON_IsObject(params) || (pt && !(cJSON_IsString(pt) && !strcmp(pt->valuestring, "object")))) {
                rc = BAD(param, "'%s' must be a JSON Schema of type object", param);
                goto done;
            }
        } else {
            params = NULL;
        }
        if (forced && strcmp(forced, name->valuestring)) {
            i++;
            continue;
        }
        found = true;
        cJSON *e = cJSON_CreateObject(), *sh = cJSON_CreateObject();
        if (!e || !sh) {
            cJSON_Delete(e);
            cJSON_Delete(sh);
            rc = api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            goto done;
        }
        cJSON_AddItemToArray(list, e);
        cJSON_AddItemToArray(shown, sh);
        cJSON_AddStringToObject(e, "name", name->valuestring);
        cJSON_AddStringToObject(sh, "name", name->valuestring);
        if (cJSON_IsString(desc))
            cJSON_AddStringToObject(sh, "description", desc->valuestring);
        if (params) {
            cJSON *pc = cJSON_Duplicate(params, 1);
            if (pc && !json_get(pc, "type"))
                cJSON_AddStringToObject(pc, "type", "object");
            json_add(e, "parameters", pc);   /* a failure is counted (f0) */
            json_add(sh, "parameters", cJSON_Duplicate(params, 1));
        }
        i++;
    }
    if (!found) {
        rc = BAD("tool_choice", "tool_choice names function '%.64s', which is not in 'tools'", forced);
        goto done;
    }
    char *lj = cJSON_PrintUnformatted(list);
    if (!lj || json_alloc_failures() != f0) {
        free(lj);
        rc = api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    f0 = json_alloc_failures();
    rc = grammar_tools_schema(lj, strlen(lj), &schema);
    free(lj);
    if (json_alloc_failures() != f0) {
        /* out of memory, whatever it concluded: a schema built with a
         * failed allocation may lack a part (it did: a $ref to no $defs) */
        free(schema);
        schema = NULL;
        rc = PS_ENOMEM;
    }
    if (rc) {
        rc = rc == PS_ENOMEM ? api_error_set(err, 500, "server_error", NULL, NULL, "out of memory")
                             : api_error_set(err, 400, "invalid_request_error", "invalid_schema", "tools",
                                             "tools: %s", ps_error_last());
        goto done;
    }
    if ((rc = compile_schema(opt, schema, parallel ? OPENAI_MAX_TOOL_CALLS : 1, "tools",
                             "tools (function parameters)", &p->grammar, err)))
        goto done;
    p->output = output_new(lazy);
    p->grammar_lazy = lazy;
    *system_extra = tools_prompt(shown, forced, lazy, parallel);
    if (!p->output || !*system_extra) {
        rc = api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
done:
    free(schema);
    cJSON_Delete(list);
    cJSON_Delete(shown);
    return rc;
}

/* "logit_bias": null, or an object mapping token ids (decimal strings, as
 * OpenAI's API takes them) to biases in [-100, 100], at most
 * SAMPLER_MAX_BIAS entries. */
static int parse_logit_bias(const cJSON *root, int32_t n_vocab, struct gen_params *p, struct api_error *err)
{
    const cJSON *lb = json_get(root, "logit_bias");
    if (!lb || cJSON_IsNull(lb))
        return 0;
    if (!cJSON_IsObject(lb))
        return BADTYPE("logit_bias", "an object mapping token ids to biases");
    int n = cJSON_GetArraySize(lb);
    if (n == 0)
        return 0;
    if (n > SAMPLER_MAX_BIAS)
        return BAD("logit_bias", "'logit_bias' has %d entries; at most %d are supported", n, SAMPLER_MAX_BIAS);
    if (!(p->logit_bias = malloc((size_t)n * sizeof *p->logit_bias)))
        return api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, lb) {
        const char *k = it->string;
        char *end = NULL;
        errno = 0;
        long id = k && *k >= '0' && *k <= '9' ? strtol(k, &end, 10) : -1;
        if (id < 0 || errno || !end || *end)
            return BAD("logit_bias", "'logit_bias' keys must be token ids (decimal integers), got '%.40s'",
                       k ? k : "");
        if (id >= n_vocab)
            return BAD("logit_bias", "'logit_bias' token id %ld is outside the vocabulary [0, %d)", id,
                       (int)n_vocab);
        if (!cJSON_IsNumber(it))
            return BADTYPE("logit_bias", "an object whose values are numbers");
        if (!(it->valuedouble >= -100 && it->valuedouble <= 100))
            return BAD("logit_bias", "'logit_bias' values must be in [-100, 100], got %g for token %ld",
                       it->valuedouble, id);
        p->logit_bias[p->n_logit_bias++] = (struct sampler_bias){ .token = (int32_t)id,
                                                                  .bias = (float)it->valuedouble };
    }
    return 0;
}

/* response_format, tools, tool_choice, functions: fills p->grammar (and
 * p->output, *system_extra for tools). */
static int parse_constraints(const cJSON *root, bool chat, const struct openai_options *opt,
                             struct gen_params *p, char **system_extra, struct api_error *err)
{
    static const char *const legacy[] = { "functions", "function_call" };
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = json_get(root, legacy[i]);
        if (v && !cJSON_IsNull(v))
            return api_error_set(err, 400, "invalid_request_error", "unsupported_value", legacy[i],
                                 "'%s' (the legacy function-calling API) is not supported; use 'tools' "
                                 "with 'tool_choice'", legacy[i]);
    }
    const cJSON *rf = json_get(root, "response_format");
    const cJSON *tools = json_get(root, "tools");
    const cJSON *tc = json_get(root, "tool_choice");
    const cJSON *ptc = json_get(root, "parallel_tool_calls");
    if (ptc && !cJSON_IsNull(ptc) && !cJSON_IsBool(ptc))   /* checked with or without tools, as OpenAI does */
        return BADTYPE("parallel_tool_calls", "a boolean");
    bool has_rf = rf && !cJSON_IsNull(rf), has_tools = tools && !cJSON_IsNull(tools);
    bool has_tc = tc && !cJSON_IsNull(tc);
    if (!has_rf && !has_tools && !has_tc)
        return 0;
    const char *first = has_rf ? "response_format" : has_tools ? "tools" : "tool_choice";
    if (!opt || !opt->vocab)
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", first,
                             "'%s' is not supported by this server (constrained decoding is not enabled)",
                             first);
    if (!chat && (has_tools || has_tc))
        return api_error_set(err, 400, "invalid_request_error", "unsupported_value", has_tools ? "tools" : "tool_choice",
                             "'%s' is only supported on /v1/chat/completions", has_tools ? "tools" : "tool_choice");
    if (has_tc && !has_tools)
        return BAD("tool_choice", "'tool_choice' is only allowed when 'tools' are given");
    int rc;
    if (has_rf && (rc = parse_response_format(rf, opt, p, err)))
        return rc;
    if (has_tools) {
        bool none = cJSON_IsString(tc) && !strcmp(tc->valuestring, "none");
        if (p->grammar && !none)
            return api_error_set(err, 400, "invalid_request_error", "unsupported_value", "response_format",
                                 "'response_format' together with a tool call is not supported: the call's "
                                 "arguments already follow the tool's parameters schema");
        if ((rc = parse_tools(root, tools, opt, p, system_extra, err)))
            return rc;
    }
    return 0;
}

struct token_constraint gen_params_constraint(const struct gen_params *p)
{
    return p->grammar_lazy ? grammar_constraint_lazy(p->grammar) : grammar_constraint(p->grammar);
}

/* ---- reply shaping ---------------------------------------------------------------- */

static int out_append(struct openai_output *o, const char *t, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        char *b = ps_grow(o->buf, &o->cap, o->len + n + 1, 1, 256);
        if (!b)
            return PS_ENOMEM;
        o->buf = b;
    }
    memcpy(o->buf + o->len, t, n);
    o->len += n;
    o->buf[o->len] = '\0';
    return 0;
}

/* Advance the scanner over the bytes received: each call's name, then
 * its arguments value (string/escape aware bracket depth), then a '\n'
 * before the next call. */
static void out_scan(struct openai_output *o)
{
    for (;;) {
        if (o->phase == OUT_NAME) {
            size_t pl = strlen(TOOL_CALL_PREFIX), have = o->len - o->base;
            size_t k = have < pl ? have : pl;
            if (memcmp(o->buf + o->base, TOOL_CALL_PREFIX, k)) {
                o->phase = o->n_calls ? OUT_END : OUT_BAD;
                return;
            }
            if (have <= pl)
                return;
            const char *q = memchr(o->buf + o->base + pl, '"', have - pl);
            if (!q)
                return;
            size_t n = (size_t)(q - o->buf) - o->base - pl;
            if (n >= sizeof o->calls[0].name || o->n_calls == OPENAI_MAX_TOOL_CALLS) {
                o->phase = o->n_calls ? OUT_END : OUT_BAD;
                return;
            }
            struct out_call *c = &o->calls[o->n_calls];
            memcpy(c->name, o->buf + o->base + pl, n);
            c->name[n] = '\0';
            o->pos = (size_t)(q - o->buf) + 1;
            o->phase = OUT_ARGS_PREFIX;
        } else if (o->phase == OUT_ARGS_PREFIX) {
            size_t pl = strlen(TOOL_ARGS_PREFIX), have = o->len - o->pos;
            size_t k = have < pl ? have : pl;
            if (memcmp(o->buf + o->pos, TOOL_ARGS_PREFIX, k)) {
                o->phase = o->n_calls ? OUT_END : OUT_BAD;
                return;
            }
            if (have < pl)
                return;
            o->pos += pl;
            struct out_call *c = &o->calls[o->n_calls++];
            c->args_start = o->pos;
            call_id_new(c->id);
            o->depth = 0;
            o->in_str = o->esc = false;
            o->phase = OUT_ARGS;
        } else if (o->phase == OUT_ARGS) {
            for (; o->pos < o->len; o->pos++) {
                char c = o->buf[o->pos];
                if (o->in_str) {
                    if (o->esc)
                        o->esc = false;
                    else if (c == '\\')
                        o->esc = true;
                    else if (c == '"')
                        o->in_str = false;
                    else
                        continue;
                    if (!o->in_str && o->depth == 0)
                        break; /* a top-level string ended */
                    continue;
                }
                if (c == '"')
                    o->in_str = true;
                else if (c == '{' || c == '[')
                    o->depth++;
                else if ((c == '}' || c == ']') && --o->depth <= 0)
                    break;
            }
            if (o->pos == o->len)
                return;
            struct out_call *c = &o->calls[o->n_calls - 1];
            c->args_end = ++o->pos;
            c->done = true;
            o->phase = OUT_AFTER;
        } else if (o->phase == OUT_AFTER) {
            /* the call's closing '}', then '\n' and the next call */
            if (o->len - o->pos < 2)
                return;
            if (memcmp(o->buf + o->pos, "}\n", 2)) {
                o->phase = OUT_END;
                return;
            }
            o->pos += 2;
            o->base = o->pos;
            o->phase = OUT_NAME;
        } else {
            return;
        }
    }
}

/* The bytes of call k's arguments scanned so far: [args_start, end). */
static size_t out_args_end(const struct openai_output *o, int k)
{
    return o->calls[k].done ? o->calls[k].args_end : o->pos;
}

/* Every call is complete (the reply's finish_reason is "tool_calls" when
 * the engine stopped by itself). */
static bool out_complete(const struct openai_output *o)
{
    return o->n_calls && o->calls[o->n_calls - 1].done && o->phase != OUT_ARGS_PREFIX &&
           !(o->phase == OUT_NAME && o->len > o->base);
}

/* Call k: a stream delta (index k; id, type and name only in the first)
 * or a message's whole call (id, type, name, no index). */
static cJSON *tool_call_json(const struct openai_output *o, int k, bool first, bool delta, const char *args,
                             size_t n)
{
    /* NULL (nothing sent, the caller's state not advanced) when any part
     * cannot be added: never a call entry without its id, name or arguments */
    cJSON *c = cJSON_CreateObject();
    if (!c)
        return NULL;
    bool ok = !delta || cJSON_AddNumberToObject(c, "index", k);
    if (ok && first)
        ok = cJSON_AddStringToObject(c, "id", o->calls[k].id) && cJSON_AddStringToObject(c, "type", "function");
    cJSON *fn = ok ? cJSON_AddObjectToObject(c, "function") : NULL;
    ok = fn && (!first || cJSON_AddStringToObject(fn, "name", o->calls[k].name));
    char *a = ok ? utf8_sanitize(args, n, NULL) : NULL;
    if (ok && !a)
        json_alloc_failed();
    ok = a && cJSON_AddStringToObject(fn, "arguments", a);
    free(a);
    if (!ok) {
        cJSON_Delete(c);
        return NULL;
    }
    return c;
}

/* Out of memory is counted (json_alloc_failures): the caller's builder
 * drops the whole chunk or reply, never sends "" in its place. */
static void add_content(cJSON *obj, const char *text, size_t len)
{
    char *clean = utf8_sanitize(text, len, NULL);
    if (!clean)
        json_alloc_failed();
    else
        cJSON_AddStringToObject(obj, "content", clean);
    free(clean);
}

bool openai_output_delta(struct openai_output *o, const char *text, size_t len, cJSON *delta)
{
    if (!o) {
        if (!len)
            return false;
        add_content(delta, text, len);
        return true;
    }
    if (out_append(o, text, len)) {
        json_alloc_failed();   /* the text is lost: the stream must not go on without it */
        return false;
    }
    out_scan(o);
    if (o->phase == OUT_BAD && o->auto_mode) { /* a text answer */
        if (o->content_sent == o->len)
            return false;
        add_content(delta, o->buf + o->content_sent, o->len - o->content_sent);
        o->content_sent = o->len;
        return true;
    }
    cJSON *arr = NULL;
    for (; o->emit_call < o->n_calls; o->emit_call++) {
        int k = o->emit_call;
        size_t from = o->emitted > o->calls[k].args_start ? o->emitted : o->calls[k].args_start;
        size_t end = out_args_end(o, k);
        bool first = k >= o->announced;
        if (first || end > from) {
            if (!arr && !(arr = cJSON_AddArrayToObject(delta, "tool_calls")))
                return false;
            cJSON *c = tool_call_json(o, k, first, true, o->buf + from, end - from);
            if (!c)
                return cJSON_GetArraySize(arr) > 0;
            cJSON_AddItemToArray(arr, c);
            o->announced = k + 1;
            o->emitted = end;
        }
        if (!o->calls[k].done)
            break;
    }
    return arr != NULL;
}

const char *openai_output_finish(struct openai_output *o, const char *finish, cJSON *delta)
{
    if (!o)
        return finish;
    if (!o->announced && o->len > o->content_sent && delta) /* not a call: the raw text */
        add_content(delta, o->buf + o->content_sent, o->len - o->content_sent);
    return out_complete(o) && !strcmp(finish, "stop") ? "tool_calls" : finish;
}

const char *openai_output_message(struct openai_output *o, const char *text, size_t len, const char *finish,
                                  cJSON *message)
{
    if (!o) {
        add_content(message, text, len);
        return finish;
    }
    if (!out_append(o, text, len))
        out_scan(o);
    else
        json_alloc_failed();
    if (!o->n_calls) {
        add_content(message, o->buf ? o->buf : "", o->len);
        return finish;
    }
    cJSON_AddNullToObject(message, "content");
    cJSON *arr = cJSON_AddArrayToObject(message, "tool_calls");
    for (int k = 0; arr && k < o->n_calls; k++) {
        size_t a = o->calls[k].args_start;
        cJSON *c = tool_call_json(o, k, true, false, o->buf + a, out_args_end(o, k) - a);
        if (c)
            cJSON_AddItemToArray(arr, c);
    }
    return out_complete(o) && !strcmp(finish, "stop") ? "tool_calls" : finish;
}

void openai_output_free(struct openai_output *o)
{
    if (!o)
        return;
    free(o->buf);
    free(o);
}

static int parse_body(const cJSON *root, bool chat, const char *const *model_names,
                      const chat_template *tmpl, int32_t n_vocab, const struct openai_options *opt,
                      struct gen_params *p, struct api_error *err)
{
    int rc;
    const cJSON *model = json_get(root, "model");
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
    const cJSON *so = json_get(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return BADTYPE("stream_options", "an object");
        const cJSON *iu = json_get(so, "include_usage");
        if (iu && !cJSON_IsBool(iu))
            return BADTYPE("stream_options.include_usage", "a boolean");
        p->include_usage = iu && cJSON_IsTrue(iu);
    }
    int64_t n = 1, max_tokens = 0, top_k = 0, priority = 0;
    uint64_t seed = 0;
    bool has_max = false, has_seed = false;
    if ((rc = get_int(root, "n", 1, OPENAI_MAX_N, &n, NULL, err)))
        return rc;
    p->n = (int32_t)n;
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
    /* suffix (completions' insert mode): text after the completion, which
     * this server cannot condition on; ignoring it would answer another
     * question.  null and "" are the default (none). */
    const cJSON *suffix = json_get(root, "suffix");
    if (suffix && !cJSON_IsNull(suffix)) {
        if (!cJSON_IsString(suffix))
            return BADTYPE("suffix", "a string or null");
        if (suffix->valuestring[0])
            return api_error_set(err, 400, "invalid_request_error", "unsupported_value", "suffix",
                                 "'suffix' (insert mode) is not supported");
    }
    /* logprobs.  Chat: a boolean (false, null and 0 read as off), with
     * optional top_logprobs in [0, 20] (alternatives per token), which
     * needs logprobs true, as OpenAI's API has it.  Completions: an
     * integer in [0, 5] (alternatives per token) or null/false (off). */
    const cJSON *lp = json_get(root, "logprobs");
    if (chat) {
        if (lp && !cJSON_IsNull(lp) && !cJSON_IsBool(lp) && !(cJSON_IsNumber(lp) && lp->valuedouble == 0))
            return BADTYPE("logprobs", "a boolean");
        p->logprobs = lp && cJSON_IsTrue(lp);
        const cJSON *top = json_get(root, "top_logprobs");
        if (top && !cJSON_IsNull(top)) {
            if (!is_int(top))
                return BADTYPE("top_logprobs", "an integer in [0, 20] or null");
            if (top->valuedouble < 0 || top->valuedouble > SCHED_MAX_TOP_LOGPROBS)
                return BAD("top_logprobs", "'top_logprobs' must be in [0, %d], got %.0f", SCHED_MAX_TOP_LOGPROBS,
                           top->valuedouble);
            if (!p->logprobs)
                return BAD("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
            p->top_logprobs = (int32_t)top->valuedouble;
        }
    } else if (lp && !cJSON_IsNull(lp) && !cJSON_IsFalse(lp)) {
        if (!is_int(lp))
            return BADTYPE("logprobs", "an integer in [0, 5] or null");
        if (lp->valuedouble < 0 || lp->valuedouble > 5)
            return BAD("logprobs", "'logprobs' must be in [0, 5], got %.0f", lp->valuedouble);
        p->logprobs = true;
        p->top_logprobs = (int32_t)lp->valuedouble;
    }
    char *system_extra = NULL;
    if ((rc = parse_constraints(root, chat, opt, p, &system_extra, err)))
        goto done;
    const char *mt_key = "max_tokens";
    if ((rc = get_int(root, "max_tokens", 1, 1 << 24, &max_tokens, &has_max, err)))
        goto done;
    if (!has_max && chat) {
        mt_key = "max_completion_tokens";
        if ((rc = get_int(root, mt_key, 1, 1 << 24, &max_tokens, &has_max, err)))
            goto done;
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
        goto done;
    /* top_p 0 keeps only the most likely token: greedy, exactly what
     * temperature 0 does (the sampler's top-p with a target of 0 would keep
     * the first candidate too, but the sampler takes top_p in (0, 1] and a
     * device sampler would keep every token tied for the maximum). */
    if (p->sp.top_p <= 0) {
        p->sp.temperature = 0.0f;
        p->sp.top_p = 1.0f;
    }
    if ((rc = get_int(root, "top_k", 0, 1 << 24, &top_k, NULL, err)) ||
        (rc = get_seed(root, &seed, &has_seed, err)) ||
        (rc = get_int(root, "priority", -1000000, 1000000, &priority, &p->has_priority, err)) ||
        (rc = get_bool(root, "ignore_eos", &p->ignore_eos, err)))
        goto done;
    p->sp.top_k = (int32_t)top_k;
    p->priority = (int32_t)priority;
    if (has_seed) {
        p->sp.seed = seed;
    } else {
        static uint64_t counter;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        p->sp.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (++counter * 0x9e3779b97f4a7c15ull);
    }
    if (sampler_params_validate(&p->sp))
        rc = BAD("", "%s", ps_error_last());
    if (!rc)
        rc = parse_stop(root, p, err);
    if (!rc)
        rc = parse_logit_bias(root, n_vocab, p, err);
    if (!rc)
        rc = chat ? parse_messages(root, tmpl, system_extra, p, err) : parse_prompt(root, n_vocab, p, err);
done:
    free(system_extra);
    return rc;
}

int openai_parse(const char *body, size_t len, bool chat, const char *const *model_names,
                 const chat_template *tmpl, int32_t n_vocab, struct gen_params *out,
                 struct api_error *err)
{
    return openai_parse_ex(body, len, chat, model_names, tmpl, n_vocab, NULL, out, err);
}

int openai_parse_ex(const char *body, size_t len, bool chat, const char *const *model_names,
                    const chat_template *tmpl, int32_t n_vocab, const struct openai_options *opt,
                    struct gen_params *out, struct api_error *err)
{
    memset(out, 0, sizeof *out);
    cJSON *root;
    int rc = api_json_body_parse(body, len, &root, err);
    if (!rc)
        rc = parse_body(root, chat, model_names, tmpl, n_vocab, opt, out, err);
    cJSON_Delete(root);
    if (rc)
        gen_params_free(out);
    return rc;
}
