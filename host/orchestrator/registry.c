/* registry.c - agent registry loading and lookup (see registry.h). */
#include "orchestrator/registry.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/json_get.h"
#include "common/status.h"
#include "common/utf8_cut.h"
#include "orchestrator/builtin.h"
#include "orchestrator/jschema.h"

#define REGISTRY_MAX_AGENTS 4096
#define REGISTRY_MAX_FILE   (16u << 20)

struct registry {
    struct agent_spec *agents;
    int                n;
};

static const char *const kind_names[] = {
#define AGENT_KIND_NAME(k, s) s,
    AGENT_KIND_TABLE(AGENT_KIND_NAME)
#undef AGENT_KIND_NAME
};

const char *agent_kind_str(enum agent_kind k)
{
    return (unsigned)k < AGENT_KIND_COUNT ? kind_names[k] : "?";
}

static void strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static void spec_free(struct agent_spec *a)
{
    free(a->name);
    free(a->description);
    cJSON_Delete(a->input_schema);
    free(a->url);
    strv_free(a->command);
    strv_free(a->headers);
    free(a->ca_file);
    free(a->card_url);
    free(a->tool);
    free(a->model);
    free(a->system_prompt);
    cJSON_Delete(a->example);
}

void registry_free(struct registry *reg)
{
    if (!reg)
        return;
    for (int i = 0; i < reg->n; i++)
        spec_free(&reg->agents[i]);
    free(reg->agents);
    free(reg);
}

static int get_str(const cJSON *o, const char *key, int required, char **out, const char *where)
{
    const cJSON *v = json_get(o, key);
    if (!v) {
        if (required)
            return ps_error_set(PS_EINVAL, "%s.%s: required field missing", where, key);
        return PS_OK;
    }
    if (!cJSON_IsString(v))
        return ps_error_set(PS_EINVAL, "%s.%s: must be a string", where, key);
    *out = strdup(v->valuestring);
    return *out ? PS_OK : PS_ENOMEM;
}

static int get_int(const cJSON *o, const char *key, int lo, int hi, int def, int *out, const char *where)
{
    const cJSON *v = json_get(o, key);
    *out = def;
    if (!v)
        return PS_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi)
        return ps_error_set(PS_EINVAL, "%s.%s: must be an integer in %d..%d", where, key, lo, hi);
    *out = (int)v->valuedouble;
    return PS_OK;
}

static const char *const spec_fields[] = {
    "name", "kind", "description", "input_schema", "url", "command", "headers", "tool",
    "model", "system_prompt", "max_tokens", "timeout_ms", "max_concurrency", "retries",
    "backoff_ms", "breaker_failures", "breaker_open_ms", "deterministic", "example", "comment", "ca_file",
    "a2a_version", "card_url", "a2a_streaming",
};

static int is_http_url(const char *s)
{
    return !strncmp(s, "http://", 7) || !strncmp(s, "https://", 8);
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

/* "example": {"task": text, "args": object valid for the input schema,
 * "result": any JSON} -- a worked call the orchestrator's prompt shows.  The
 * sizes are bounded: the example is part of every decision's prompt. */
#define EXAMPLE_MAX_BYTES 1024
static int parse_example(const cJSON *o, const char *where, struct agent_spec *a)
{
    const cJSON *ex = json_get(o, "example");
    if (!ex)
        return PS_OK;
    if (!cJSON_IsObject(ex))
        return ps_error_set(PS_EINVAL, "%s.example: must be an object {\"task\", \"args\", \"result\"}", where);
    for (const cJSON *k = ex->child; k; k = k->next)
        if (strcmp(k->string, "task") && strcmp(k->string, "args") && strcmp(k->string, "result"))
            return ps_error_set(PS_EINVAL, "%s.example.%s: unknown field (task, args, result)", where, k->string);
    const cJSON *task = json_get(ex, "task");
    const cJSON *args = json_get(ex, "args");
    const cJSON *result = json_get(ex, "result");
    if (!cJSON_IsString(task) || !task->valuestring[0] || strpbrk(task->valuestring, "\r\n"))
        return ps_error_set(PS_EINVAL, "%s.example.task: must be a non-empty single-line string", where);
    if (!cJSON_IsObject(args))
        return ps_error_set(PS_EINVAL, "%s.example.args: must be an object", where);
    if (!result)
        return ps_error_set(PS_EINVAL, "%s.example.result: required (what the call returns)", where);
    char sw[300], err[512];
    snprintf(sw, sizeof sw, "%s.example.args", where);
    if (jschema_validate(a->input_schema, args, sw, err, sizeof err))
        return ps_error_set(PS_EINVAL, "%s (the example must be a valid call)", err);
    char *text = cJSON_PrintUnformatted(ex);
    if (!text)
        return PS_ENOMEM;
    size_t n = strlen(text);
    free(text);
    if (n > EXAMPLE_MAX_BYTES)
        return ps_error_set(PS_EINVAL, "%s.example: %zu bytes, at most %d (it is in every prompt)", where, n,
                            EXAMPLE_MAX_BYTES);
    return (a->example = cJSON_Duplicate(ex, 1)) ? PS_OK : PS_ENOMEM;
}

static int parse_spec(const cJSON *o, const char *where, struct agent_spec *a)
{
    int st;
    char err[512];
    if (!cJSON_IsObject(o))
        return ps_error_set(PS_EINVAL, "%s: must be an object", where);
    for (const cJSON *k = o->child; k; k = k->next) {
        int known = 0;
        for (size_t i = 0; i < sizeof spec_fields / sizeof spec_fields[0] && !known; i++)
            known = !strcmp(k->string, spec_fields[i]);
        if (!known)
            return ps_error_set(PS_EINVAL, "%s.%s: unknown field", where, k->string);
    }
    if ((st = get_str(o, "name", 1, &a->name, where)))
        return st;
    if (!name_ok(a->name))
        return ps_error_set(PS_EINVAL, "%s.name: '%s' must be 1-64 characters of [A-Za-z0-9_.-]", where, a->name);
    char *kind = NULL;
    if ((st = get_str(o, "kind", 1, &kind, where)))
        return st;
    a->kind = AGENT_KIND_COUNT;
    for (int i = 0; i < AGENT_KIND_COUNT; i++)
        if (!strcmp(kind, kind_names[i]))
            a->kind = (enum agent_kind)i;
    if (a->kind == AGENT_KIND_COUNT) {
        st = ps_error_set(PS_EINVAL, "%s.kind: unknown kind '%s' (local, openai-chat, mcp-http, "
                          "mcp-stdio, a2a, http-json, builtin)", where, kind);
        free(kind);
        return st;
    }
    free(kind);
    if ((st = get_str(o, "description", 0, &a->description, where)) ||
        (st = get_str(o, "url", 0, &a->url, where)) ||
        (st = get_str(o, "tool", 0, &a->tool, where)) ||
        (st = get_str(o, "model", 0, &a->model, where)) ||
        (st = get_str(o, "system_prompt", 0, &a->system_prompt, where)) ||
        (st = get_str(o, "ca_file", 0, &a->ca_file, where)) ||
        (st = get_str(o, "card_url", 0, &a->card_url, where)))
        return st;
    if ((st = get_int(o, "max_tokens", 1, 1 << 20, 256, &a->max_tokens, where)) ||
        (st = get_int(o, "timeout_ms", 1, 3600000, 30000, &a->timeout_ms, where)) ||
        (st = get_int(o, "max_concurrency", 1, 100000, 16, &a->max_concurrency, where)) ||
        (st = get_int(o, "retries", 0, 10, 2, &a->retries, where)) ||
        (st = get_int(o, "backoff_ms", 0, 60000, 100, &a->backoff_ms, where)) ||
        (st = get_int(o, "breaker_failures", 0, 1000000, 5, &a->breaker_failures, where)) ||
        (st = get_int(o, "breaker_open_ms", 0, 3600000, 5000, &a->breaker_open_ms, where)))
        return st;
    if (!a->description && !(a->description = strdup("")))
        return PS_ENOMEM;

    int needs_url = a->kind == AGENT_OPENAI_CHAT || a->kind == AGENT_MCP_HTTP ||
                    a->kind == AGENT_A2A || a->kind == AGENT_HTTP_JSON;
    if (needs_url && !a->url)
        return ps_error_set(PS_EINVAL, "%s.url: required for kind %s", where, agent_kind_str(a->kind));
    if (a->url && !is_http_url(a->url))
        return ps_error_set(PS_EINVAL, "%s.url: must start with http:// or https://", where);
    if (a->url && !needs_url)
        return ps_error_set(PS_EINVAL, "%s.url: not used by kind %s", where, agent_kind_str(a->kind));
    if (a->ca_file) {
        if (!a->url || strncmp(a->url, "https://", 8))
            return ps_error_set(PS_EINVAL, "%s.ca_file: only an https:// url is verified with a CA file", where);
        struct stat sb;
        const char *why = NULL;
        FILE *f = NULL;
        if (stat(a->ca_file, &sb))
            why = strerror(errno);
        else if (!S_ISREG(sb.st_mode))
            why = "not a regular file";
        else if (!(f = fopen(a->ca_file, "rb")))
            why = strerror(errno);
        if (f)
            fclose(f);
        if (why)
            return ps_error_set(PS_EINVAL, "%s.ca_file: cannot read '%s': %s", where, a->ca_file, why);
    }

    static const char *const a2a_only[] = { "a2a_version", "a2a_streaming", "card_url" };
    for (size_t i = 0; i < sizeof a2a_only / sizeof a2a_only[0]; i++)
        if (a->kind != AGENT_A2A && json_get(o, a2a_only[i]))
            return ps_error_set(PS_EINVAL, "%s.%s: only for kind a2a", where, a2a_only[i]);
    const cJSON *ver = json_get(o, "a2a_version");
    if (ver) {
        if (!cJSON_IsString(ver) || (strcmp(ver->valuestring, "1.0") && strcmp(ver->valuestring, "0.3") &&
                                     strcmp(ver->valuestring, "auto")))
            return ps_error_set(PS_EINVAL, "%s.a2a_version: must be \"1.0\", \"0.3\" or \"auto\"", where);
        a->a2a_version = !strcmp(ver->valuestring, "1.0")   ? A2A_VERSION_1_0
                       : !strcmp(ver->valuestring, "0.3") ? A2A_VERSION_0_3
                                                          : A2A_VERSION_AUTO;
    }

    a->a2a_streaming = -1;
    const cJSON *stream = json_get(o, "a2a_streaming");
    if (stream) {
        if (!cJSON_IsBool(stream))
            return ps_error_set(PS_EINVAL, "%s.a2a_streaming: must be true or false", where);
        a->a2a_streaming = cJSON_IsTrue(stream);
    }
    if (a->card_url && !is_http_url(a->card_url))
        return ps_error_set(PS_EINVAL, "%s.card_url: must start with http:// or https://", where);

    const cJSON *cmd = json_get(o, "command");
    if (a->kind == AGENT_MCP_STDIO) {
        if (!cJSON_IsArray(cmd) || cJSON_GetArraySize(cmd) == 0)
            return ps_error_set(PS_EINVAL, "%s.command: kind mcp-stdio needs a non-empty list of strings (argv)", where);
        int n = cJSON_GetArraySize(cmd);
        a->command = calloc((size_t)n + 1, sizeof *a->command);
        if (!a->command)
            return PS_ENOMEM;
        int i = 0;
        for (const cJSON *c = cmd->child; c; c = c->next, i++) {
            if (!cJSON_IsString(c))
                return ps_error_set(PS_EINVAL, "%s.command[%d]: must be a string", where, i);
            if (!(a->command[i] = strdup(c->valuestring)))
                return PS_ENOMEM;
        }
    } else if (cmd) {
        return ps_error_set(PS_EINVAL, "%s.command: only kind mcp-stdio runs a command", where);
    }

    const cJSON *hdr = json_get(o, "headers");
    if (hdr) {
        if (!cJSON_IsObject(hdr) || !needs_url)
            return ps_error_set(PS_EINVAL, "%s.headers: must be an object of strings, for http kinds", where);
        int n = cJSON_GetArraySize(hdr), i = 0;
        a->headers = calloc((size_t)n + 1, sizeof *a->headers);
        if (!a->headers)
            return PS_ENOMEM;
        for (const cJSON *h = hdr->child; h; h = h->next, i++) {
            if (!cJSON_IsString(h) || strpbrk(h->string, "\r\n:") || strpbrk(h->valuestring, "\r\n"))
                return ps_error_set(PS_EINVAL, "%s.headers.%s: must be a single-line string", where, h->string);
            size_t len = strlen(h->string) + strlen(h->valuestring) + 3;
            if (!(a->headers[i] = malloc(len)))
                return PS_ENOMEM;
            snprintf(a->headers[i], len, "%s: %s", h->string, h->valuestring);
        }
    }

    if (a->kind == AGENT_BUILTIN) {
        const char *t = a->tool ? a->tool : a->name;
        if (!builtin_exists(t))
            return ps_error_set(PS_EINVAL, "%s.tool: unknown builtin '%s' (calculator, time, text_stats, echo)", where, t);
    }

    const cJSON *schema = json_get(o, "input_schema");
    if (schema) {
        char sw[300];
        snprintf(sw, sizeof sw, "%s.input_schema", where);
        if (!cJSON_IsObject(schema))
            return ps_error_set(PS_EINVAL, "%s: must be a JSON Schema object", sw);
        if (jschema_check(schema, sw, err, sizeof err))
            return ps_error_set(PS_EINVAL, "%s", err);
        a->input_schema = cJSON_Duplicate(schema, 1);
        a->input_schema_given = 1;
    } else if (a->kind == AGENT_BUILTIN) {
        a->input_schema = builtin_schema(a->tool ? a->tool : a->name);
    } else if (a->kind == AGENT_LOCAL || a->kind == AGENT_OPENAI_CHAT || a->kind == AGENT_A2A) {
        a->input_schema = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"input\":{\"type\":\"string\"}},"
                                      "\"required\":[\"input\"],\"additionalProperties\":false}");
    } else {
        a->input_schema = cJSON_Parse("{\"type\":\"object\"}");
    }
    if (!a->input_schema)
        return PS_ENOMEM;
    const cJSON *det = json_get(o, "deterministic");
    if (det && !cJSON_IsBool(det))
        return ps_error_set(PS_EINVAL, "%s.deterministic: must be true or false", where);
    a->deterministic = det ? cJSON_IsTrue(det)
                           : a->kind == AGENT_BUILTIN && builtin_deterministic(a->tool ? a->tool : a->name);
    return parse_example(o, where, a);
}

int registry_load_json(const char *text, const char *origin, struct registry **out)
{
    *out = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    struct registry *reg = NULL;
    int st;
    if (!root) {
        long off = end ? (long)(end - text) : -1;
        return ps_error_set(PS_EFORMAT, "%s: not valid JSON (near byte %ld)", origin, off);
    }
    const cJSON *agents = json_get(root, "agents");
    if (!cJSON_IsObject(root) || !cJSON_IsArray(agents)) {
        st = ps_error_set(PS_EINVAL, "%s: agents: must be a list (file format {\"agents\":[...]})", origin);
        goto fail;
    }
    for (const cJSON *k = root->child; k; k = k->next)
        if (strcmp(k->string, "agents") && strcmp(k->string, "comment")) {
            st = ps_error_set(PS_EINVAL, "%s: %s: unknown top-level field", origin, k->string);
            goto fail;
        }
    int n = cJSON_GetArraySize(agents);
    if (n > REGISTRY_MAX_AGENTS) {
        st = ps_error_set(PS_ERANGE, "%s: agents: more than %d agents", origin, REGISTRY_MAX_AGENTS);
        goto fail;
    }
    st = PS_ENOMEM;
    if (!(reg = calloc(1, sizeof *reg)) || !(reg->agents = calloc((size_t)n + 1, sizeof *reg->agents)))
        goto fail;
    int i = 0;
    for (const cJSON *a = agents->child; a; a = a->next, i++) {
        char where[256];
        snprintf(where, sizeof where, "%s: agents[%d]", origin, i);
        reg->n = i + 1;
        if ((st = parse_spec(a, where, &reg->agents[i]))) {
            if (st == PS_ENOMEM)
                ps_error_set(st, "%s: out of memory", where);
            goto fail;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(reg->agents[j].name, reg->agents[i].name)) {
                st = ps_error_set(PS_EINVAL, "%s.name: duplicate agent name '%s' (also agents[%d])",
                                  where, reg->agents[i].name, j);
                goto fail;
            }
    }
    cJSON_Delete(root);
    *out = reg;
    return PS_OK;
fail:
    registry_free(reg);
    cJSON_Delete(root);
    return st;
}

int registry_load_file(const char *path, struct registry **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ps_error_set(PS_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(REGISTRY_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        return ps_error_set(PS_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, REGISTRY_MAX_FILE + 1, f);
    int rerr = ferror(f);
    fclose(f);
    int st;
    if (rerr)
        st = ps_error_set(PS_EIO, "%s: read error", path);
    else if (n > REGISTRY_MAX_FILE)
        st = ps_error_set(PS_ERANGE, "%s: larger than %u bytes", path, REGISTRY_MAX_FILE);
    else {
        buf[n] = 0;
        st = registry_load_json(buf, path, out);
    }
    free(buf);
    return st;
}

int registry_count(const struct registry *reg)
{
    return reg ? reg->n : 0;
}

const struct agent_spec *registry_at(const struct registry *reg, int i)
{
    return reg && i >= 0 && i < reg->n ? &reg->agents[i] : NULL;
}

const struct agent_spec *registry_find(const struct registry *reg, const char *name)
{
    if (!reg || !name)
        return NULL;
    for (int i = 0; i < reg->n; i++)
        if (!strcmp(reg->agents[i].name, name))
            return &reg->agents[i];
    return NULL;
}

cJSON *registry_catalogue(const struct registry *reg)
{
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < registry_count(reg); i++) {
        const struct agent_spec *a = &reg->agents[i];
        cJSON *o = cJSON_CreateObject();
        int ok = o && cJSON_AddStringToObject(o, "name", a->name) &&
                 cJSON_AddStringToObject(o, "kind", agent_kind_str(a->kind)) &&
                 cJSON_AddStringToObject(o, "description", a->description);
        if (ok) {
            cJSON *sch = cJSON_Duplicate(a->input_schema, 1);
            ok = sch && cJSON_AddItemToObject(o, "input_schema", sch);
            if (!ok)
                cJSON_Delete(sch);
        }
        if (!ok || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

/* `text` as one line of at most REGISTRY_DESCRIBED_MAX bytes: control
 * characters become spaces, runs of spaces one, no space at either end; a
 * cut never splits a UTF-8 sequence. */
static char *one_line(const char *text)
{
    size_t n = strlen(text), k = 0;
    char *o = malloc(n + 1);
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 32 || c == 127)
            c = ' ';
        if (c == ' ' && (k == 0 || o[k - 1] == ' '))
            continue;
        o[k++] = (char)c;
    }
    if (k > REGISTRY_DESCRIBED_MAX) {
        k = utf8_cut(o, REGISTRY_DESCRIBED_MAX);
    }
    while (k > 0 && o[k - 1] == ' ')
        k--;
    o[k] = '\0';
    return o;
}

int registry_describe_agent(struct registry *reg, int i, const char *description,
                            const cJSON *input_schema, int *applied)
{
    *applied = 0;
    if (!reg || i < 0 || i >= reg->n)
        return ps_error_set(PS_EINVAL, "registry: no agent %d", i);
    struct agent_spec *a = &reg->agents[i];
    cJSON *schema = NULL;
    if (input_schema && !a->input_schema_given) {
        char err[512];
        if (!cJSON_IsObject(input_schema))
            return ps_error_set(PS_EINVAL, "its inputSchema is not an object");
        if (jschema_check(input_schema, "inputSchema", err, sizeof err))
            return ps_error_set(PS_EINVAL, "%s", err);
        const cJSON *ex_args = a->example ? json_get(a->example, "args") : NULL;
        if (ex_args && jschema_validate(input_schema, ex_args, "example.args", err, sizeof err))
            return ps_error_set(PS_EINVAL, "the pool's example does not fit its inputSchema: %s", err);
        if (!(schema = cJSON_Duplicate(input_schema, 1)))
            return PS_ENOMEM;
    }
    char *text = NULL;
    if (description && !a->description[0]) {
        if (!(text = one_line(description))) {
            cJSON_Delete(schema);
            return PS_ENOMEM;
        }
        if (!text[0]) {
            free(text);
            text = NULL;
        }
    }
    if (schema) {
        cJSON_Delete(a->input_schema);
        a->input_schema = schema;
        *applied |= REGISTRY_DESCRIBED_SCHEMA;
    }
    if (text) {
        free(a->description);
        a->description = text;
        *applied |= REGISTRY_DESCRIBED_TEXT;
    }
    return PS_OK;
}

int registry_settle_a2a_version(struct registry *reg, int i, enum a2a_version v, int *applied)
{
    *applied = 0;
    if (!reg || i < 0 || i >= reg->n || reg->agents[i].kind != AGENT_A2A || v == A2A_VERSION_AUTO)
        return ps_error_set(PS_EINVAL, "registry: agent %d is not an a2a agent to settle", i);
    if (reg->agents[i].a2a_version == A2A_VERSION_AUTO) {
        reg->agents[i].a2a_version = v;
        *applied = 1;
    }
    return PS_OK;
}

int registry_settle_a2a_streaming(struct registry *reg, int i, int streaming, int *applied)
{
    *applied = 0;
    if (!reg || i < 0 || i >= reg->n || reg->agents[i].kind != AGENT_A2A)
        return ps_error_set(PS_EINVAL, "registry: agent %d is not an a2a agent", i);
    if (reg->agents[i].a2a_streaming < 0) {
        reg->agents[i].a2a_streaming = streaming ? 1 : 0;
        *applied = 1;
    }
    return PS_OK;
}
