/* metrics.h - counters and histograms of the HTTP side, rendered with the
 * engine's snapshot in the Prometheus text format (version 0.0.4).
 *
 * Updated and read only on the event-loop thread: no locking.  Engine-side
 * numbers (sequences, KV blocks, prefill and prefix-hit tokens) come from
 * engine_get_stats at render time.
 */
#ifndef PS_SERVER_METRICS_H
#define PS_SERVER_METRICS_H

#include <stdint.h>

#include "../engine/engine.h"

enum metrics_route {
    ROUTE_CHAT, ROUTE_COMPLETIONS, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_METRICS, ROUTE_OTHER,
    ROUTE_COUNT
};

#define METRICS_MAX_BUCKETS 16

struct histogram {
    const double *bounds; /* [n] upper bounds, ascending; +Inf implied */
    int           n;
    uint64_t      counts[METRICS_MAX_BUCKETS + 1];
    double        sum;
    uint64_t      count;
};

#define METRICS_MAX_TENANTS 65 /* tenant 0 (no API keys) + one per key */

/* Per-tenant counters (tenant id = index; names set at startup). */
struct metrics_tenant {
    char     name[64];
    uint64_t requests;            /* generation requests answered          */
    uint64_t prompt_tokens, generated_tokens, cached_prompt_tokens;
};

struct metrics {
    /* requests_total{route, status}: status classes tracked individually */
    uint64_t requests[ROUTE_COUNT][600];
    uint64_t prompt_tokens, generated_tokens, cached_prompt_tokens;
    uint64_t client_disconnects;
    struct histogram ttft, itl, e2e;
    int32_t  in_flight;
    uint64_t auth_failures;       /* 401 answers                            */
    struct metrics_tenant tenants[METRICS_MAX_TENANTS];
    int32_t  n_tenants;           /* rendered: tenants[0 .. n_tenants)      */
    /* client connections (conn_limit.h) */
    int32_t  conns_open, conns_max;
    uint64_t conns_accepted;
    uint64_t accept_paused_cap;   /* listener disabled at max_connections   */
    uint64_t accept_paused_error; /* accept() failed (EMFILE ...): paused   */
    uint64_t idle_closed;         /* connections closed by the idle timeout */
};

void metrics_init(struct metrics *m);
void metrics_request(struct metrics *m, enum metrics_route r, int status);
/* Count a finished generation request of tenant `t` (ignored when out of range). */
void metrics_tenant_done(struct metrics *m, uint32_t t, int32_t n_prompt, int32_t n_generated,
                         int32_t n_cached);
void histogram_observe(struct histogram *h, double v);

/* Render everything into a malloc'd NUL-terminated string (caller frees);
 * NULL when out of memory. */
char *metrics_render(const struct metrics *m, const struct engine_stats *es, const char *model_name);

#endif /* PS_SERVER_METRICS_H */
