/* config.h - settings of `paraserve serve`: defaults, a JSON config file,
 * command-line overrides.
 *
 * Precedence: built-in defaults < --config FILE < command-line options.
 * The file is one JSON object whose keys are the long option names with
 * '_' for '-' (e.g. {"port": 8080, "kv_blocks": 1024}); an unknown key or
 * a value of the wrong type is an error naming it.  configs/server.json is
 * an example.  "api_keys" (an array of objects, see struct server_api_key)
 * is the one non-scalar key; --api-key KEY (repeatable) and the
 * PARASERVE_API_KEY environment variable add keys of tenant "default".
 */
#ifndef PS_SERVER_CONFIG_H
#define PS_SERVER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#define SERVER_MAX_API_KEYS 64

/* The tenant name of requests without a key when keys are configured
 * (/metrics labels); reserved: no key may name it. */
#define SERVER_TENANT_NO_KEY "none"

/* One API key (config "api_keys": [{"key", "tenant", "priority",
 * "max_priority"}], or --api-key KEY / $PARASERVE_API_KEY for tenant
 * "default").  Requests authenticated by it run as `tenant` (prefix cache
 * and per-tenant metrics are per tenant); a request without a "priority"
 * gets `priority`, and no request gets more than `max_priority`. */
struct server_api_key {
    char    key[256];
    char    tenant[64];         /* [A-Za-z0-9_.:-]+, not SERVER_TENANT_NO_KEY   */
    int32_t priority;           /* default 0                                    */
    int32_t max_priority;       /* default 1000000 (the API's maximum)          */
};

struct server_config {
    char    model[1024];        /* GGUF path (required)                         */
    char    model_alias[128];   /* API model name; "" = general.name or basename */
    char    host[256];          /* listen address, default 127.0.0.1            */
    char    backend[16];        /* "auto" (CUDA when a device is there), "cpu", "cuda" */
    int32_t port;               /* default 8080                                 */
    int32_t threads;            /* CPU backend threads, default: all cores      */
    int32_t max_batch;          /* running sequences at once, default 64        */
    int32_t max_batch_tokens;   /* token budget per step, default 256           */
    int32_t kv_blocks;          /* physical KV blocks, default 2048             */
    int32_t block_size;         /* tokens per block, default 16                 */
    int32_t ctx;                /* per-sequence context, default 2048           */
    int32_t max_body_bytes;     /* request body limit (413 above), default 1 MiB */
    int32_t max_connections;    /* client connections open at once; 0 (the default,
                                   not settable) = server_config_max_connections's
                                   choice from RLIMIT_NOFILE */
    int32_t idle_timeout_ms;    /* a connection with no request in flight is
                                   closed after this long (0: never), default 60 s */
    int32_t shutdown_grace_ms;  /* SIGTERM: wait for in-flight, then cancel     */
    int32_t sse_heartbeat_ms;   /* task event streams: a comment line this often (0: off) */
    int32_t max_running_tasks;  /* /v1/tasks running at once, 429 past it (0: no limit), default 16384 */
    int32_t max_running_tasks_per_tenant; /* the same per tenant (0: none), default 0 */
    int32_t keep_tasks;         /* finished tasks kept for GET (the oldest end goes first), default 10000 */
    int32_t http_threads;       /* I/O threads for /v1/tasks agent calls (0: the loop's own) */
    bool    prefix_cache;       /* default true                                 */
    bool    device_sampling;    /* sample on the device when the backend can, default true */
    char    kv_type[8];         /* KV cache element type: "f16" (default), "q8", "f32" (CPU backend only) */
    char    cors_origins[1024]; /* browser origins allowed by CORS: "" off (default), "*"
                                   any, or "https://a.example, http://localhost:3000"
                                   (cors.h) */
    char    agents[1024];       /* agent pool for /v1/tasks; "" = configs/agents.default.json
                                   when that file exists, else no agents    */
    char    task_store[1024];   /* "" = none; else the SQLite file finished tasks are kept in */
    char    trajectories[1024]; /* "" = none; else the JSONL file every task's trajectory is
                                   appended to when it ends (tasks_api_config.trajectories_path) */
    /* Authentication: none configured = open server (everything tenant 0);
     * else the /v1/ routes need "Authorization: Bearer KEY" (401 otherwise). */
    struct server_api_key api_keys[SERVER_MAX_API_KEYS];
    int32_t n_api_keys;
};

void server_config_defaults(struct server_config *c);

/* Apply a JSON config file over *c.  PS_EIO / PS_EFORMAT / PS_EINVAL with a
 * detail naming the file, key and problem. */
int  server_config_load(struct server_config *c, const char *path);
/* The same from NUL-terminated JSON text; `origin` names it in messages.
 * On failure *c may hold some of the text's settings. */
int  server_config_load_text(struct server_config *c, const char *text, const char *origin);

/* Parse `serve` arguments (argv[0] = "serve"): loads --config first, then
 * applies the other options.  Returns 0 ok, 1 when --help was printed,
 * -1 on a usage error (message already on stderr). */
int  server_config_parse_args(struct server_config *c, int argc, char **argv);

/* Append a key (tenant NULL: "default"); PS_EINVAL naming the problem
 * (empty or too long key, bad or reserved tenant name, duplicate key, too many). */
int  server_config_add_key(struct server_config *c, const char *key, const char *tenant,
                           int32_t priority, int32_t max_priority);

/* The engine tenant id in `s`, a local agent's tenant header (the task's
 * tenant, which the tasks API records as the decimal id): 1 to 10 decimal
 * digits, no sign, space or leading zero, below n_tenants.  PS_OK with
 * *id set; else PS_EINVAL naming the problem (*id untouched). */
int  server_tenant_id_parse(const char *s, uint32_t n_tenants, uint32_t *id);

/* Check ranges and relations (max_connections against the descriptor
 * limit, server_fd_limit); PS_EINVAL with a detail. */
int  server_config_validate(const struct server_config *c);

/* Descriptors.  Every client connection holds one; so do agent and tool
 * sockets (httpc keeps up to 4096 idle keep-alive connections per agent
 * host and opens one per call in flight beyond them), mcp-stdio pipes,
 * files and the server's own (listener, eventfd, epoll, stdio).  Clients may
 * take what RLIMIT_NOFILE allows less a reserve for the rest: a quarter of
 * the limit, at least min(256, half of it) (1024 -> 768 for clients,
 * 65536 -> 49152, 1048576 -> 786432).  The default cap is
 * SERVER_DEFAULT_MAX_CONNECTIONS or that bound when lower: beyond a few
 * thousand, idle connections cost memory (evhttp's buffers) and rarely
 * help; operators serving more clients raise it. */
#define SERVER_DEFAULT_MAX_CONNECTIONS 4096

/* Raise RLIMIT_NOFILE's soft limit to the hard one (serve does this before
 * it validates its options).  PS_OK, or PS_EIO when the limit is left as it
 * was (getrlimit / setrlimit refused; the detail names why). */
int     server_fd_limit_raise(void);
/* RLIMIT_NOFILE's soft limit now (RLIM_INFINITY and anything above 2^30 as
 * 2^30; 0 when it cannot be read). */
int64_t server_fd_limit(void);
/* Descriptors kept from clients of a process allowed `nofile`. */
int64_t server_fd_reserve(int64_t nofile);
/* The max_connections serve runs with: c->max_connections when set, else
 * min(SERVER_DEFAULT_MAX_CONNECTIONS, nofile - reserve) (at least 1). */
int32_t server_config_max_connections(const struct server_config *c, int64_t nofile);

#endif /* PS_SERVER_CONFIG_H */
