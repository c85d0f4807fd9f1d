/* config.c - defaults, JSON config file, command line (see config.h). */
#include "config.h"
#include "cors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../common/status.h"
#include "../engine/backend.h"

enum opt_type { OPT_STR, OPT_INT, OPT_BOOL };

struct opt_desc {
    const char   *key;   /* JSON key; CLI option is the same with '-' for '_' */
    int           short_opt;
    enum opt_type type;
    size_t        off;
    size_t        size;  /* OPT_STR buffer size */
    int64_t       lo, hi;
    const char   *help;
};

#define OFF(f) offsetof(struct server_config, f)
static const struct opt_desc opts[] = {
    { "model", 'm', OPT_STR, OFF(model), sizeof(((struct server_config *)0)->model), 0, 0,
      "GGUF model file (required)" },
    { "model_alias", 0, OPT_STR, OFF(model_alias), sizeof(((struct server_config *)0)->model_alias), 0, 0,
      "model name in the API (default: general.name, else the file's basename)" },
    { "host", 0, OPT_STR, OFF(host), sizeof(((struct server_config *)0)->host), 0, 0,
      "listen address (default 127.0.0.1)" },
    { "backend", 0, OPT_STR, OFF(backend), sizeof(((struct server_config *)0)->backend), 0, 0,
      "auto (CUDA when a GPU is present, else CPU), cpu or cuda (default auto)" },
    { "device", 0, OPT_STR, OFF(backend), sizeof(((struct server_config *)0)->backend), 0, 0,
      "same as --backend" },
    { "port", 'p', OPT_INT, OFF(port), 0, 0, 65535, "listen port, 0 = any free one (default 8080)" },
    { "threads", 't', OPT_INT, OFF(threads), 0, 1, 256, "CPU backend threads (default: all cores)" },
    { "max_batch", 0, OPT_INT, OFF(max_batch), 0, 1, 4096, "sequences running at once (default 64)" },
    { "max_batch_tokens", 0, OPT_INT, OFF(max_batch_tokens), 0, 1, 1 << 16,
      "tokens per engine step: decodes + prefill chunks (default 256)" },
    { "kv_blocks", 0, OPT_INT, OFF(kv_blocks), 0, 1, 1 << 22, "KV cache blocks (default 2048)" },
    { "block_size", 0, OPT_INT, OFF(block_size), 0, 1, 1024, "tokens per KV block (default 16)" },
    { "ctx", 'c', OPT_INT, OFF(ctx), 0, 16, 1 << 22, "context per sequence, prompt + output (default 2048)" },
    { "max_body_bytes", 0, OPT_INT, OFF(max_body_bytes), 0, 1024, 1 << 30,
      "request body limit; larger bodies get 413 (default 1048576)" },
    { "max_connections", 0, OPT_INT, OFF(max_connections), 0, 1, 1 << 30,
      "client connections open at once; at the cap new ones wait in the listen backlog until one closes "
      "(default: 4096, or less when RLIMIT_NOFILE less a reserve for agent sockets and files, a quarter "
      "of it, allows less)" },
    { "idle_timeout_ms", 0, OPT_INT, OFF(idle_timeout_ms), 0, 0, 3600000,
      "close a client connection that has no request in flight for this long: before its first request "
      "is complete (headers or body trickled in: slowloris) or after its last reply (keep-alive); a "
      "request being served is never cut; 0 = off (default 60000)" },
    { "shutdown_grace_ms", 0, OPT_INT, OFF(shutdown_grace_ms), 0, 0, 3600000,
      "on SIGTERM/SIGINT, let in-flight requests finish this long, then cancel (default 5000)" },
    { "sse_heartbeat_ms", 0, OPT_INT, OFF(sse_heartbeat_ms), 0, 0, 3600000,
      "task event streams (SSE) get a ': keep-alive' comment this often, so proxies do not cut a stream "
      "that waits on slow agents; 0 = off (default 15000)" },
    { "keep_tasks", 0, OPT_INT, OFF(keep_tasks), 0, 1, 1 << 24,
      "finished /v1/tasks kept for GET and event replay; past it the oldest end is freed (never one a client "
      "is still reading) and GET is 404 (default 10000)" },
    { "max_running_tasks", 0, OPT_INT, OFF(max_running_tasks), 0, 0, 1 << 24,
      "/v1/tasks running at once; a POST past it gets 429 (rate_limit_exceeded, Retry-After) until some have "
      "ended (tasks outlive their connections: without a limit a client could start them without end); "
      "0 = no limit (default 16384)" },
    { "max_running_tasks_per_tenant", 0, OPT_INT, OFF(max_running_tasks_per_tenant), 0, 0, 1 << 24,
      "the same limit per tenant (API key), so one tenant cannot take them all; 0 = none but the server's "
      "(default 0)" },
    { "http_threads", 0, OPT_INT, OFF(http_threads), 0, 0, 64,
      "I/O threads that carry /v1/tasks calls to plain-http agents (connect, send, receive, HTTP parsing), "
      "so the event loop keeps only the bookkeeping; for many concurrent calls on machines with cores to "
      "spare (default 0: the event loop does it all)" },
    { "prefix_cache", 0, OPT_BOOL, OFF(prefix_cache), 0, 0, 1, "reuse KV blocks of shared prompt prefixes (default true)" },
    { "device_sampling", 0, OPT_BOOL, OFF(device_sampling), 0, 0, 1,
      "sample (and apply grammar masks) on the GPU when the backend can; false: logits to the host sampler (default true)" },
    { "kv_type", 0, OPT_STR, OFF(kv_type), sizeof(((struct server_config *)0)->kv_type), 0, 0,
      "KV cache element type: f16, q8 (int8 blocks of 32 + scale) or f32; q8 / f32 need the CPU backend (default f16)" },
    { "cors_origins", 0, OPT_STR, OFF(cors_origins), sizeof(((struct server_config *)0)->cors_origins), 0, 0,
      "origins whose browser pages may call the API (CORS): '*' (any), or a comma-separated list such as "
      "'https://app.example.com,http://localhost:3000'; preflights need no API key (default: none, no CORS headers)" },
    { "agents", 0, OPT_STR, OFF(agents), sizeof(((struct server_config *)0)->agents), 0, 0,
      "agent pool of /v1/tasks (default configs/agents.default.json when present)" },
    { "task_store", 0, OPT_STR, OFF(task_store), sizeof(((struct server_config *)0)->task_store), 0, 0,
      "keep finished /v1/tasks in this SQLite file (created if missing; WAL): after a restart the newest "
      "keep_tasks of them are served again - GET, event replay with Last-Event-ID, the list, trajectories - "
      "under the tenant (API key tenant name) they belong to; a task still running when the server is killed "
      "is ended at the next start (failed: the server stopped) (default: none)" },
    { "trajectories", 0, OPT_STR, OFF(trajectories), sizeof(((struct server_config *)0)->trajectories), 0, 0,
      "append each /v1/tasks task's trajectory, when it ends, to this file as one JSON line: every decision's "
      "prompt and completion as chat messages (for fine-tuning the orchestrator), its calls, and reward terms "
      "(proto/trajectory.schema.json); every task records one unless its request says \"trajectory\": false "
      "(default: none; a request with \"trajectory\": true records one for GET /v1/tasks/{id}/trajectory)" },
};
#define N_OPTS (sizeof opts / sizeof opts[0])

void server_config_defaults(struct server_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    snprintf(c->backend, sizeof c->backend, "auto");
    snprintf(c->kv_type, sizeof c->kv_type, "f16");
    c->port = 8080;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c->threads = ncpu > 0 ? (int32_t)(ncpu > 64 ? 64 : ncpu) : 1;
    c->max_batch = 64;
    c->max_batch_tokens = 256;
    c->kv_blocks = 2048;
    c->block_size = 16;
    c->ctx = 2048;
    c->max_body_bytes = 1 << 20;
    c->idle_timeout_ms = 60000;
    c->shutdown_grace_ms = 5000;
    c->sse_heartbeat_ms = 15000;
    c->keep_tasks = 10000;
    c->max_running_tasks = 16384;
    c->prefix_cache = true;
    c->device_sampling = true;
}

static int set_str(struct server_config *c, const struct opt_desc *o, const char *v, const char *where)
{
    if (strlen(v) >= o->size)
        return ps_error_set(PS_EINVAL, "%s%s: value longer than %zu bytes", where, o->key, o->size - 1);
    memcpy((char *)c + o->off, v, strlen(v) + 1);
    return PS_OK;
}

static int set_int(struct server_config *c, const struct opt_desc *o, int64_t v, const char *where)
{
    if (v < o->lo || v > o->hi)
        return ps_error_set(PS_EINVAL, "%s%s must be an integer in [%lld, %lld], got %lld", where, o->key,
                            (long long)o->lo, (long long)o->hi, (long long)v);
    *(int32_t *)((char *)c + o->off) = (int32_t)v;
    return PS_OK;
}

static int load_api_keys(struct server_config *c, const cJSON *arr, const char *path);

int server_config_load(struct server_config *c, const char *path)
{
    int rc = PS_OK;
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ps_error_set(PS_EIO, "config %s: %s", path, strerror(errno));
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    if (n < 0 || n > (1 << 20) || fseek(f, 0, SEEK_SET) != 0) {
        rc = ps_error_set(PS_EIO, "config %s: cannot read (or larger than 1 MiB)", path);
        goto done;
    }
    text = malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
        rc = ps_error_set(PS_EIO, "config %s: read failed", path);
        goto done;
    }
    text[n] = '\0';
    rc = server_config_load_text(c, text, path);
done:
    free(text);
    fclose(f);
    return rc;
}

int server_config_load_text(struct server_config *c, const char *text, const char *path)
{
    int rc = PS_OK;
    cJSON *root = cJSON_Parse(text);
    if (!root || !cJSON_IsObject(root)) {
        rc = ps_error_set(PS_EFORMAT, "config %s: not a JSON object%s%.20s", path,
                          root ? "" : " near: ", root ? "" : (cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : ""));
        goto done;
    }
    char unknown[512] = "";
    for (cJSON *it = root->child; it; it = it->next) {
        const struct opt_desc *o = NULL;
        for (size_t i = 0; i < N_OPTS; i++)
            if (!strcmp(it->string, opts[i].key))
                o = &opts[i];
        if (!strcmp(it->string, "api_keys")) {
            if ((rc = load_api_keys(c, it, path)))
                goto done;
            continue;
        }
        if (!o) {
            size_t ul = strlen(unknown);
            snprintf(unknown + ul, sizeof unknown - ul, "%s'%s'", ul ? ", " : "", it->string);
            continue;
        }
        char where[300];
        snprintf(where, sizeof where, "config %.256s: ", path);
        switch (o->type) {
        case OPT_STR:
            if (!cJSON_IsString(it)) {
                rc = ps_error_set(PS_EINVAL, "%s%s must be a string", where, o->key);
                goto done;
            }
            rc = set_str(c, o, it->valuestring, where);
            break;
        case OPT_INT:
            if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
                fabs(it->valuedouble) > 9e15) {
                rc = ps_error_set(PS_EINVAL, "%s%s must be an integer", where, o->key);
                goto done;
            }
            rc = set_int(c, o, (int64_t)it->valuedouble, where);
            break;
        case OPT_BOOL:
            if (!cJSON_IsBool(it)) {
                rc = ps_error_set(PS_EINVAL, "%s%s must be true or false", where, o->key);
                goto done;
            }
            *(bool *)((char *)c + o->off) = cJSON_IsTrue(it);
            break;
        }
        if (rc)
            goto done;
    }
    if (unknown[0])
        rc = ps_error_set(PS_EINVAL, "config %s: unknown key(s) %s", path, unknown);
done:
    cJSON_Delete(root);
    return rc;
}

static bool tenant_name_ok(const char *t)
{
    if (!*t)
        return false;
    for (; *t; t++)
        if (!((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || (*t >= '0' && *t <= '9') ||
              *t == '_' || *t == '.' || *t == ':' || *t == '-'))
            return false;
    return true;
}

int server_config_add_key(struct server_config *c, const char *key, const char *tenant,
                          int32_t priority, int32_t max_priority)
{
    if (!tenant)
        tenant = "default";
    if (!key[0] || strlen(key) >= sizeof c->api_keys[0].key)
        return ps_error_set(PS_EINVAL, "an API key must have 1 to %zu bytes", sizeof c->api_keys[0].key - 1);
    for (const char *k = key; *k; k++)
        if ((unsigned char)*k <= 0x20 || (unsigned char)*k >= 0x7f)
            return ps_error_set(PS_EINVAL, "an API key must be printable ASCII without spaces");
    if (strlen(tenant) >= sizeof c->api_keys[0].tenant || !tenant_name_ok(tenant))
        return ps_error_set(PS_EINVAL, "tenant '%.80s': 1 to %zu characters of [A-Za-z0-9_.:-]", tenant,
                            sizeof c->api_keys[0].tenant - 1);
    /* /metrics labels the requests without a key (tenant 0) "none" once keys
     * exist: a configured tenant of that name would repeat its series */
    if (!strcmp(tenant, SERVER_TENANT_NO_KEY))
        return ps_error_set(PS_EINVAL, "tenant '%s' is reserved (it names the requests without a key in /metrics)",
                            tenant);
    if (priority < -1000000 || priority > 1000000 || max_priority < -1000000 || max_priority > 1000000 ||
        priority > max_priority)
        return ps_error_set(PS_EINVAL, "tenant '%s': priority %d / max_priority %d must lie in "
                            "[-1000000, 1000000] with priority <= max_priority", tenant, (int)priority,
                            (int)max_priority);
    for (int32_t i = 0; i < c->n_api_keys; i++)
        if (!strcmp(c->api_keys[i].key, key))
            return ps_error_set(PS_EINVAL, "tenant '%s': duplicate API key (also tenant '%s')", tenant,
                                c->api_keys[i].tenant);
    if (c->n_api_keys >= SERVER_MAX_API_KEYS)
        return ps_error_set(PS_EINVAL, "at most %d API keys", SERVER_MAX_API_KEYS);
    struct server_api_key *k = &c->api_keys[c->n_api_keys++];
    snprintf(k->key, sizeof k->key, "%s", key);
    snprintf(k->tenant, sizeof k->tenant, "%s", tenant);
    k->priority = priority;
    k->max_priority = max_priority;
    return PS_OK;
}

int server_tenant_id_parse(const char *s, uint32_t n_tenants, uint32_t *id)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 10 || strspn(s, "0123456789") != n || (n > 1 && s[0] == '0'))
        return ps_error_set(PS_EINVAL, "must be a tenant id (decimal digits, no sign, spaces or leading zeros)");
    unsigned long long v = strtoull(s, NULL, 10);
    if (v >= n_tenants)
        return ps_error_set(PS_EINVAL, "'%s' names no tenant of this server (ids 0 to %u)", s,
                            (unsigned)(n_tenants ? n_tenants - 1 : 0));
    *id = (uint32_t)v;
    return PS_OK;
}

/* "api_keys": [{"key": "...", "tenant": "...", "priority": 0, "max_priority": 10}, ...] */
static int load_api_keys(struct server_config *c, const cJSON *arr, const char *path)
{
    if (!cJSON_IsArray(arr))
        return ps_error_set(PS_EINVAL, "config %s: api_keys must be an array of objects", path);
    int idx = 0;
    for (const cJSON *o = arr->child; o; o = o->next, idx++) {
        if (!cJSON_IsObject(o))
            return ps_error_set(PS_EINVAL, "config %s: api_keys[%d] must be an object", path, idx);
        const char *key = NULL, *tenant = NULL;
        double prio = 0, maxp = 1000000;
        for (const cJSON *f = o->child; f; f = f->next) {
            bool is_int = cJSON_IsNumber(f) && f->valuedouble == floor(f->valuedouble);
            if (!strcmp(f->string, "key") && cJSON_IsString(f))
                key = f->valuestring;
            else if (!strcmp(f->string, "tenant") && cJSON_IsString(f))
                tenant = f->valuestring;
            else if (!strcmp(f->string, "priority") && is_int)
                prio = f->valuedouble;
            else if (!strcmp(f->string, "max_priority") && is_int)
                maxp = f->valuedouble;
            else
                return ps_error_set(PS_EINVAL, "config %s: api_keys[%d].%s: unknown member or wrong type "
                                    "(key and tenant are strings, priority and max_priority integers)",
                                    path, idx, f->string);
        }
        if (!key)
            return ps_error_set(PS_EINVAL, "config %s: api_keys[%d] needs a \"key\"", path, idx);
        if (fabs(prio) > 1e6 || fabs(maxp) > 1e6)
            return ps_error_set(PS_EINVAL, "config %s: api_keys[%d]: priorities lie in [-1000000, 1000000]",
                                path, idx);
        if (server_config_add_key(c, key, tenant, (int32_t)prio, (int32_t)maxp)) {
            char why[256]; /* the detail lives in the buffer ps_error_set writes */
            snprintf(why, sizeof why, "%s", ps_error_last());
            return ps_error_set(PS_EINVAL, "config %s: api_keys[%d]: %s", path, idx, why);
        }
    }
    return PS_OK;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: paraserve serve -m MODEL [options]\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s", opts[i].key);
        for (char *p = name; *p; p++)
            if (*p == '_')
                *p = '-';
        char lhs[96];
        if (opts[i].short_opt)
            snprintf(lhs, sizeof lhs, "-%c, --%s%s", opts[i].short_opt, name,
                     opts[i].type == OPT_BOOL ? " true|false" : " V");
        else
            snprintf(lhs, sizeof lhs, "    --%s%s", name, opts[i].type == OPT_BOOL ? " true|false" : " V");
        fprintf(out, "  %-28s %s\n", lhs, opts[i].help);
    }
    fprintf(out, "  %-28s %s\n", "    --api-key KEY",
            "require \"Authorization: Bearer KEY\" on /v1/* (repeatable; tenant \"default\"; also "
            "$PARASERVE_API_KEY; per-tenant keys: \"api_keys\" in the config)");
    fprintf(out, "  %-28s %s\n", "    --config FILE", "JSON file with the same keys ('_' for '-'); options override it");
    fprintf(out, "Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, /health, /metrics,\n"
                 "POST /v1/tasks, GET /v1/tasks/{id}, GET /v1/tasks/{id}/events (SSE), DELETE /v1/tasks/{id}.\n"
                 "SIGTERM/SIGINT: stop accepting, finish (or after the grace time cancel) in-flight, exit 0.\n");
}

int server_config_parse_args(struct server_config *c, int argc, char **argv)
{
    struct option longopts[N_OPTS + 4];
    char names[N_OPTS][64];
    char shorts[64] = ":h";
    size_t k = 0;
    for (size_t i = 0; i < N_OPTS; i++) {
        snprintf(names[i], sizeof names[i], "%s", opts[i].key);
        for (char *p = names[i]; *p; p++)
            if (*p == '_')
                *p = '-';
        longopts[k++] = (struct option){ names[i], required_argument, 0, 256 + (int)i };
        if (opts[i].short_opt) {
            size_t l = strlen(shorts);
            shorts[l] = (char)opts[i].short_opt;
            shorts[l + 1] = ':';
            shorts[l + 2] = '\0';
        }
    }
    longopts[k++] = (struct option){ "config", required_argument, 0, 1000 };
    longopts[k++] = (struct option){ "api-key", required_argument, 0, 1001 };
    longopts[k++] = (struct option){ "help", no_argument, 0, 'h' };
    longopts[k] = (struct option){ 0, 0, 0, 0 };

    /* pass 1: --config and --help only */
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, shorts, longopts, NULL)) != -1) {
        if (ch == 'h') {
            usage(stdout);
            return 1;
        }
        if (ch == 1000 && server_config_load(c, optarg)) {
            fprintf(stderr, "paraserve serve: %s\n", ps_error_last());
            return -1;
        }
    }
    /* pass 2: everything else overrides */
    optind = 1;
    while ((ch = getopt_long(argc, argv, shorts, longopts, NULL)) != -1) {
        const struct opt_desc *o = NULL;
        if (ch == 1000 || ch == 'h')
            continue;
        if (ch == 1001) {
            if (server_config_add_key(c, optarg, NULL, 0, 1000000)) {
                fprintf(stderr, "paraserve serve: --api-key: %s\n", ps_error_last());
                return -1;
            }
            continue;
        }
        if (ch == ':') {
            fprintf(stderr, "paraserve serve: option '%s' needs a value\n", argv[optind - 1]);
            return -1;
        }
        if (ch >= 256 && ch < 256 + (int)N_OPTS)
            o = &opts[ch - 256];
        for (size_t i = 0; !o && i < N_OPTS; i++)
            if (opts[i].short_opt && opts[i].short_opt == ch)
                o = &opts[i];
        if (!o) {
            fprintf(stderr, "paraserve serve: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return -1;
        }
        int rc = PS_OK;
        if (o->type == OPT_STR) {
            rc = set_str(c, o, optarg, "--");
        } else if (o->type == OPT_INT) {
            char *end;
            errno = 0;
            long long v = strtoll(optarg, &end, 10);
            if (errno || end == optarg || *end)
                rc = ps_error_set(PS_EINVAL, "--%s must be an integer, got '%s'", o->key, optarg);
            else
                rc = set_int(c, o, v, "--");
        } else {
            if (!strcmp(optarg, "true") || !strcmp(optarg, "1"))
                *(bool *)((char *)c + o->off) = true;
            else if (!strcmp(optarg, "false") || !strcmp(optarg, "0"))
                *(bool *)((char *)c + o->off) = false;
            else
                rc = ps_error_set(PS_EINVAL, "--%s must be true or false, got '%s'", o->key, optarg);
        }
        if (rc) {
            fprintf(stderr, "paraserve serve: %s\n", ps_error_last());
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "paraserve serve: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    const char *env_key = getenv("PARASERVE_API_KEY");
    if (env_key && *env_key && server_config_add_key(c, env_key, NULL, 0, 1000000)) {
        fprintf(stderr, "paraserve serve: PARASERVE_API_KEY: %s\n", ps_error_last());
        return -1;
    }
    if (server_config_validate(c)) {
        fprintf(stderr, "paraserve serve: %s\n", ps_error_last());
        return -1;
    }
    return 0;
}

int server_fd_limit_raise(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return ps_error_set(PS_EIO, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    if (rl.rlim_cur >= rl.rlim_max)
        return PS_OK;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl))
        return ps_error_set(PS_EIO, "setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long)rl.rlim_max,
                            strerror(errno));
    return PS_OK;
}

int64_t server_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return 0;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > ((rlim_t)1 << 30))
        return (int64_t)1 << 30;
    return (int64_t)rl.rlim_cur;
}

int64_t server_fd_reserve(int64_t nofile)
{
    int64_t r = nofile / 4, floor_r = nofile / 2 < 256 ? nofile / 2 : 256;
    return r > floor_r ? r : floor_r;
}

int32_t server_config_max_connections(const struct server_config *c, int64_t nofile)
{
    if (c->max_connections > 0)
        return c->max_connections;
    int64_t allowed = nofile - server_fd_reserve(nofile);
    if (allowed > SERVER_DEFAULT_MAX_CONNECTIONS)
        allowed = SERVER_DEFAULT_MAX_CONNECTIONS;
    return allowed < 1 ? 1 : (int32_t)allowed;
}

int server_config_validate(const struct server_config *c)
{
    if (!c->model[0])
        return ps_error_set(PS_EINVAL, "a model is required (-m MODEL or \"model\" in the config)");
    if (strcmp(c->backend, "auto") && strcmp(c->backend, "cpu") && strcmp(c->backend, "cuda"))
        return ps_error_set(PS_EINVAL, "backend must be auto, cpu or cuda, got '%s'", c->backend);
    enum kv_type kv;
    if (kv_type_parse(c->kv_type, &kv))
        return ps_error_set(PS_EINVAL, "kv_type must be f16, q8 or f32, got '%s'", c->kv_type);
    if (kv != KV_F16 && !strcmp(c->backend, "cuda"))
        return ps_error_set(PS_EINVAL, "kv_type %s needs the CPU backend (the CUDA backend has an f16 cache only)",
                            c->kv_type);
    if (cors_list_validate(c->cors_origins))
        return PS_EINVAL;
    if ((int64_t)c->kv_blocks * c->block_size < 2)
        return ps_error_set(PS_EINVAL, "kv_blocks x block_size must hold at least 2 tokens");
    const int64_t nofile = server_fd_limit(), reserve = server_fd_reserve(nofile);
    if (nofile - reserve < 1)
        return ps_error_set(PS_EINVAL, "RLIMIT_NOFILE is %lld: too few descriptors to serve (raise ulimit -n)",
                            (long long)nofile);
    if (c->max_connections > nofile - reserve)
        return ps_error_set(PS_EINVAL, "max_connections %d is more than the descriptor limit allows: "
                            "RLIMIT_NOFILE %lld less a reserve of %lld (agent and tool sockets, pipes, files) "
                            "leaves %lld for clients (raise ulimit -n, or lower max_connections)",
                            (int)c->max_connections, (long long)nofile, (long long)reserve,
                            (long long)(nofile - reserve));
    return PS_OK;
}
