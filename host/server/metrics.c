/* metrics.c - Prometheus text exposition of server and engine metrics. */
#include "metrics.h"
#include "conn_limit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double ttft_bounds[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
static const double itl_bounds[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10 };
static const double e2e_bounds[] = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300 };

static const char *const route_names[ROUTE_COUNT] = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "other",
};

void metrics_init(struct metrics *m)
{
    memset(m, 0, sizeof *m);
    histogram_init(&m->ttft, ttft_bounds, (int)(sizeof ttft_bounds / sizeof *ttft_bounds));
    histogram_init(&m->itl, itl_bounds, (int)(sizeof itl_bounds / sizeof *itl_bounds));
    histogram_init(&m->e2e, e2e_bounds, (int)(sizeof e2e_bounds / sizeof *e2e_bounds));
}

/* The cell of an HTTP status in a [ROUTE_COUNT][600] table (599: not one). */
static int status_cell(int status)
{
    return status < 100 || status >= 600 ? 599 : status;
}

void metrics_request(struct metrics *m, enum metrics_route r, int status)
{
    m->requests[r][status_cell(status)]++;
}

void metrics_stream_error(struct metrics *m, enum metrics_route r, int status)
{
    m->stream_errors[r][status_cell(status)]++;
}

void metrics_tenant_done(struct metrics *m, uint32_t t, int32_t n_prompt, int32_t n_generated,
                         int32_t n_cached)
{
    if (t >= (uint32_t)m->n_tenants)
        return;
    struct metrics_tenant *mt = &m->tenants[t];
    mt->requests++;
    mt->prompt_tokens += (uint64_t)n_prompt;
    mt->generated_tokens += (uint64_t)n_generated;
    mt->cached_prompt_tokens += (uint64_t)n_cached;
}

struct sbuf {
    char  *p;
    size_t len, cap;
    int    oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* One histogram series: `labels` ("agent=\"x\"", or NULL / "") go before le. */
static void hist_series(struct sbuf *b, const char *name, const char *labels, const struct histogram *h)
{
    const char *sep = labels && *labels ? "," : "";
    labels = labels ? labels : "";
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        sb_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    sb_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    if (*labels)
        sb_printf(b, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels, h->sum, name, labels,
                  (unsigned long long)h->count);
    else
        sb_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

static void family(struct sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_hist(struct sbuf *b, const char *name, const char *help, const struct histogram *h)
{
    family(b, name, "histogram", help);
    hist_series(b, name, NULL, h);
}

static void counter(struct sbuf *b, const char *name, const char *help, unsigned long long v)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, v);
}

static void gauge(struct sbuf *b, const char *name, const char *help, long long v)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, v);
}

/* A counter family by route and HTTP status: its non-zero cells. */
static void route_status_family(struct sbuf *b, const char *name, const char *help,
                                const uint64_t (*cells)[600])
{
    family(b, name, "counter", help);
    for (int r = 0; r < ROUTE_COUNT; r++)
        for (int st = 0; st < 600; st++)
            if (cells[r][st])
                sb_printf(b, "%s{route=\"%s\",status=\"%d\"} %llu\n", name, route_names[r], st,
                          (unsigned long long)cells[r][st]);
}

/* The one-number-per-agent families, in the order they are rendered. */
enum agent_number { AN_ATTEMPTS, AN_RETRIES, AN_BREAKER_REJECTS, AN_RUNNING, AN_QUEUED, AN_BREAKER };

static const struct {
    const char *name, *type, *help;
    enum agent_number what;
} agent_families[] = {
    { "paraserve_agent_attempts_total", "counter", "Adapter attempts started (retries included), by agent.",
      AN_ATTEMPTS },
    { "paraserve_agent_retries_total", "counter", "Attempts that were retries, by agent.", AN_RETRIES },
    { "paraserve_agent_breaker_rejects_total", "counter",
      "Calls failed at once because the agent's circuit breaker was open, by agent.", AN_BREAKER_REJECTS },
    { "paraserve_agent_calls_running", "gauge", "Attempts in an adapter now, by agent.", AN_RUNNING },
    { "paraserve_agent_calls_queued", "gauge",
      "Calls ready but waiting for a slot under the agent's max_concurrency, by agent.", AN_QUEUED },
    { "paraserve_agent_breaker_state", "gauge",
      "The agent's circuit breaker: 0 closed, 1 open, 2 half-open (the next call probes).", AN_BREAKER },
};

static long long agent_number(const struct exec_agent_stats *a, enum agent_number what)
{
    switch (what) {
    case AN_ATTEMPTS:        return a->attempts;
    case AN_RETRIES:         return a->retries;
    case AN_BREAKER_REJECTS: return a->breaker_rejects;
    case AN_RUNNING:         return a->running;
    case AN_QUEUED:          return a->queued;
    case AN_BREAKER:         return (long long)a->breaker;
    }
    return 0;
}

/* Tasks, agents and agent calls of the tasks API.  Agent names are
 * registry names ([A-Za-z0-9_.-]): safe as label values. */
static void render_orch(struct sbuf *b, const struct metrics_orch *o)
{
    static const char *const modes[2] = { "script", "model" };
    family(b, "paraserve_tasks_created_total", "counter",
           "Tasks accepted (POST /v1/tasks), by mode: script (replayed actions) or model (the served model decides).");
    for (int i = 0; i < 2; i++)
        sb_printf(b, "paraserve_tasks_created_total{mode=\"%s\"} %lld\n", modes[i], (long long)o->tasks.created[i]);
    family(b, "paraserve_tasks_finished_total", "counter", "Tasks ended, by status.");
    for (int st = TASK_COMPLETED; st <= TASK_CANCELLED; st++)
        sb_printf(b, "paraserve_tasks_finished_total{status=\"%s\"} %lld\n", orch_task_status_str((enum orch_task_status)st),
                  (long long)o->tasks.ended[st]);
    gauge(b, "paraserve_tasks_running", "Tasks not yet ended.", o->tasks.running);
    family(b, "paraserve_tasks_refused_total", "counter",
           "POST /v1/tasks refused 429 at a running-task limit: max_running (--max-running-tasks) or "
           "max_running_per_tenant (--max-running-tasks-per-tenant).");
    static const char *const limits[2] = { "max_running", "max_running_per_tenant" };
    for (int i = 0; i < 2; i++)
        sb_printf(b, "paraserve_tasks_refused_total{limit=\"%s\"} %lld\n", limits[i], (long long)o->tasks.refused[i]);
    family(b, "paraserve_task_decisions_total", "counter",
           "Decisions started: script (a replayed action) or model (one engine generation each).");
    for (int i = 0; i < 2; i++)
        sb_printf(b, "paraserve_task_decisions_total{mode=\"%s\"} %lld\n", modes[i], (long long)o->tasks.decisions[i]);
    counter(b, "paraserve_tasks_stored_total", "Finished tasks written to the --task-store.",
            (unsigned long long)o->tasks_stored);
    counter(b, "paraserve_task_store_errors_total", "Finished tasks that could not be written to the --task-store.",
            (unsigned long long)o->task_store_errors);
    gauge(b, "paraserve_tasks_restored", "Finished tasks restored from the --task-store at startup.", o->tasks_restored);
    counter(b, "paraserve_trajectories_written_total",
            "Task trajectories appended to the --trajectories file.", (unsigned long long)o->trajectories_written);
    counter(b, "paraserve_trajectory_write_errors_total",
            "Task trajectories that could not be printed or written to the --trajectories file.",
            (unsigned long long)o->trajectory_write_errors);
    render_hist(b, "paraserve_task_duration_seconds", "Time from a task's submission to its end.", &o->tasks.task_s);
    render_hist(b, "paraserve_task_decision_duration_seconds",
                "Time of one decision of the model: engine queue, prefill and decode.", &o->tasks.decision_s);

    family(b, "paraserve_agent_calls_total", "counter",
           "Agent and tool calls finished, by agent and feedback status.");
    for (int i = 0; i < o->n_agents; i++)
        for (int st = 0; st < FB_STATUS_COUNT; st++)
            sb_printf(b, "paraserve_agent_calls_total{agent=\"%s\",status=\"%s\"} %lld\n", o->agents[i].name,
                      fb_status_str((enum fb_status)st), (long long)o->agents[i].calls[st]);
    counter(b, "paraserve_agent_calls_unknown_agent_total",
            "Calls naming no agent of the pool (each rejected without a call).",
            (unsigned long long)o->unknown_agent_calls);
    for (size_t f = 0; f < sizeof agent_families / sizeof agent_families[0]; f++) {
        family(b, agent_families[f].name, agent_families[f].type, agent_families[f].help);
        for (int i = 0; i < o->n_agents; i++)
            sb_printf(b, "%s{agent=\"%s\"} %lld\n", agent_families[f].name, o->agents[i].name,
                      agent_number(&o->agents[i], agent_families[f].what));
    }
    family(b, "paraserve_agent_call_duration_seconds", "histogram",
           "Time from a call's first dispatch to its feedback (retries and backoff included), by agent.");
    for (int i = 0; i < o->n_agents; i++) {
        char labels[96];
        snprintf(labels, sizeof labels, "agent=\"%s\"", o->agents[i].name);
        hist_series(b, "paraserve_agent_call_duration_seconds", labels, &o->agents[i].duration_s);
    }
    gauge(b, "paraserve_agent_http_connections_active", "Outbound HTTP exchanges of agent calls in progress.",
          o->exec.http_active);
    counter(b, "paraserve_agent_http_connections_opened_total",
            "Outbound connections opened for agent calls (the rest reused a kept-alive one).",
            (unsigned long long)o->exec.http_connects);
}

char *metrics_render(const struct metrics *m, const struct engine_stats *es, const char *model_name,
                     const struct metrics_orch *orch)
{
    struct sbuf b = { malloc(8192), 0, 8192, 0 };
    if (!b.p)
        return NULL;
    const struct sched_stats *s = &es->sched;
    sb_printf(&b, "# HELP paraserve_info Server information.\n# TYPE paraserve_info gauge\n"
                  "paraserve_info{model=\"%s\",n_ctx=\"%d\"} 1\n", model_name, (int)es->n_ctx);
    route_status_family(&b, "paraserve_requests_total", "HTTP requests answered, by route and status.",
                        m->requests);
    route_status_family(&b, "paraserve_stream_errors_total",
                        "Streamed replies (their 200 already sent, so counted as 200 in paraserve_requests_total) "
                        "that ended with an error event, by route and the error's status.",
                        m->stream_errors);
    counter(&b, "paraserve_prompt_tokens_total", "Prompt tokens of finished requests.", m->prompt_tokens);
    counter(&b, "paraserve_generation_tokens_total", "Tokens generated for finished requests.",
            m->generated_tokens);
    counter(&b, "paraserve_cached_prompt_tokens_total",
            "Prompt tokens of finished requests served by the prefix cache (usage cached_tokens).",
            m->cached_prompt_tokens);
    counter(&b, "paraserve_client_disconnects_total", "Requests whose client left before the end.",
            m->client_disconnects);
    counter(&b, "paraserve_engine_prompt_tokens_total", "Prompt tokens submitted to the scheduler.",
            s->prompt_tokens);
    counter(&b, "paraserve_prefill_tokens_total",
            "Tokens run through the model as prefill (recompute after preemption included).",
            s->prefill_tokens);
    counter(&b, "paraserve_prefix_cache_hit_tokens_total",
            "Tokens whose KV came from the prefix cache instead of being computed.", s->prefix_hit_tokens);
    counter(&b, "paraserve_prompt_shared_tokens_total",
            "Prompt tokens whose KV a choice of an n > 1 request took from another of its choices instead of "
            "computing them.", s->group_shared_tokens);
    counter(&b, "paraserve_prompt_tokenizations_total",
            "Prompt texts the engine tokenized (the n choices of one request: once).", es->prompts_tokenized);
    counter(&b, "paraserve_engine_generated_tokens_total", "Tokens sampled by the engine.", s->generated_tokens);
    counter(&b, "paraserve_engine_steps_total", "Engine batches run.", s->steps);
    counter(&b, "paraserve_preemptions_total",
            "Sequences preempted (KV blocks or batch slots ran out, or a higher priority waited; recomputed later).",
            s->preemptions);
    counter(&b, "paraserve_priority_preemptions_total",
            "Preemptions made for a waiting request of strictly higher priority.", s->priority_preemptions);
    counter(&b, "paraserve_auth_failures_total", "Requests answered 401 (missing or wrong API key).",
            m->auth_failures);
    static const char *const tnames[4] = { "requests", "prompt_tokens", "generation_tokens",
                                           "cached_prompt_tokens" };
    static const char *const thelp[4] = {
        "Generation requests answered, by tenant.", "Prompt tokens of finished requests, by tenant.",
        "Tokens generated for finished requests, by tenant.",
        "Prompt tokens served by the tenant's own prefix cache, by tenant." };
    for (int k = 0; k < 4 && m->n_tenants > 0; k++) {
        sb_printf(&b, "# HELP paraserve_tenant_%s_total %s\n# TYPE paraserve_tenant_%s_total counter\n",
                  tnames[k], thelp[k], tnames[k]);
        for (int32_t t = 0; t < m->n_tenants; t++) {
            const struct metrics_tenant *mt = &m->tenants[t];
            uint64_t v = k == 0 ? mt->requests : k == 1 ? mt->prompt_tokens : k == 2 ? mt->generated_tokens
                                                                                : mt->cached_prompt_tokens;
            sb_printf(&b, "paraserve_tenant_%s_total{tenant=\"%s\"} %llu\n", tnames[k], mt->name,
                      (unsigned long long)v);
        }
    }
    gauge(&b, "paraserve_running_sequences", "Sequences in the running batch.", s->n_running);
    gauge(&b, "paraserve_waiting_sequences", "Sequences waiting (new or preempted).", s->n_waiting);
    gauge(&b, "paraserve_http_in_flight", "Generation requests not yet answered completely.", m->in_flight);
    gauge(&b, "paraserve_http_connections_open", "Client connections open (accepted, not yet closed).",
          m->conns_open);
    gauge(&b, "paraserve_http_connections_max",
          "Client connections allowed at once (max_connections); beyond it clients wait in the listen backlog.",
          m->conns_max);
    counter(&b, "paraserve_http_connections_accepted_total", "Client connections accepted.", m->conns_accepted);
    counter(&b, "paraserve_http_idle_closed_total",
            "Client connections closed after idle_timeout_ms with no request in flight (before a complete "
            "request, or after a reply).", m->idle_closed);
    sb_printf(&b, "# HELP paraserve_http_accept_paused_total Times accepting new connections was paused: at "
                  "max_connections (until one closes), or after accept() failed for want of descriptors or "
                  "memory (for %d ms).\n# TYPE paraserve_http_accept_paused_total counter\n"
                  "paraserve_http_accept_paused_total{reason=\"max_connections\"} %llu\n"
                  "paraserve_http_accept_paused_total{reason=\"accept_error\"} %llu\n",
              CONN_ACCEPT_PAUSE_MS, (unsigned long long)m->accept_paused_cap,
              (unsigned long long)m->accept_paused_error);
    sb_printf(&b, "# HELP paraserve_kv_blocks KV cache blocks by state: free, cached (idle, held only by "
                  "the prefix cache), active (held by sequences).\n# TYPE paraserve_kv_blocks gauge\n"
                  "paraserve_kv_blocks{state=\"free\"} %d\nparaserve_kv_blocks{state=\"cached\"} %d\n"
                  "paraserve_kv_blocks{state=\"active\"} %d\n",
              (int)s->kv_free, (int)s->kv_idle, (int)(s->kv_total - s->kv_free - s->kv_idle));
    gauge(&b, "paraserve_kv_blocks_total", "KV cache blocks.", s->kv_total);
    gauge(&b, "paraserve_prefix_cache_blocks", "Blocks listed in the prefix cache (in use or idle).",
          s->kv_cached);
    render_hist(&b, "paraserve_time_to_first_token_seconds", "Time from request to first token.", &m->ttft);
    render_hist(&b, "paraserve_inter_token_latency_seconds",
                "Time between consecutive tokens of a request (of one choice when n > 1).",
                &m->itl);
    render_hist(&b, "paraserve_request_duration_seconds", "Time from request to last token.", &m->e2e);
    if (orch)
        render_orch(&b, orch);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
