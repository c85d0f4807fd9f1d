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

#include "../common/histogram.h"
#include "../engine/engine.h"
#include "../orchestrator/task.h"

enum metrics_route {
    ROUTE_CHAT, ROUTE_COMPLETIONS, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_METRICS, ROUTE_OTHER,
    ROUTE_COUNT
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
    /* stream_errors_total{route, status}: streamed replies (their 200 sent)
     * that ended with an error event of that status */
    uint64_t stream_errors[ROUTE_COUNT][600];
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

/* The tasks API's numbers at render time (metrics_render's `orch`). */
struct metrics_orch {
    struct orch_stats              tasks;
    struct exec_stats              exec;
    const struct exec_agent_stats *agents;   /* [n_agents], registry order */
    int                            n_agents;
    int64_t                        unknown_agent_calls;
    int64_t                        trajectories_written;    /* --trajectories lines */
    int64_t                        trajectory_write_errors; /* trajectories not written */
    int64_t                        tasks_stored;      /* --task-store rows written */
    int64_t                        task_store_errors; /* finished tasks not stored */
    int64_t                        tasks_restored;    /* restored at startup */
};

void metrics_init(struct metrics *m);
void metrics_request(struct metrics *m, enum metrics_route r, int status);
/* A streamed reply of route r ended with an error event of HTTP status `status`. */
void metrics_stream_error(struct metrics *m, enum metrics_route r, int status);
/* Count a finished generation request of tenant `t` (ignored when out of range). */
void metrics_tenant_done(struct metrics *m, uint32_t t, int32_t n_prompt, int32_t n_generated,
                         int32_t n_cached);

/* Render everything (orch: the tasks, agents and agent calls; NULL: none)
 * into a malloc'd NUL-terminated string (caller frees); NULL when out of
 * memory. */
char *metrics_render(const struct metrics *m, const struct engine_stats *es, const char *model_name,
                     const struct metrics_orch *orch);

#endif /* PS_SERVER_METRICS_H */
