/* cmd_orchestrate.c - `paraserve orchestrate`: run tasks through the
 * orchestrator on a libevent loop without the HTTP server, printing each
 * task's event stream as JSON lines:
 *   {"id":N,"event":"call.result","data":{...}}
 * Tasks come from --task JSON (repeatable) or --tasks-file (one request
 * per line), each submitted --repeat times: all at once (a burst), or
 * spread uniformly over --stagger-ms (task k of N at k*W/N ms).  A task
 * without a `script` needs the engine (model-driven) and fails with a
 * clear error here.  --stats ends with one {"stats":{...}} line; its CPU
 * figures (this loop's thread, the mock agent's thread) tell whether a run
 * was bound by the executor, by the mock, or by neither.  --floor N then
 * measures, in the same process against the same mock, the CPU floor of
 * one keep-alive round trip (http_floor.h: a minimal client, N requests)
 * for comparison with the executor's cost per call.  With the mock, --stats
 * also replays the run's reply times (the mock's send stamps) through a
 * first-come-first-served queue at the floor's cost per reply (one thread;
 * one per core) and at this loop's CPU per call: reply_queue_*_p99_us, the
 * reply->record p99 that queueing alone implies.
 */
#include <event2/event.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef PS_CALLGRIND
/* A profiling build (-DPS_CALLGRIND, valgrind's headers): callgrind counts
 * only the measured pass (run with --collect-atstart=no). */
#include <valgrind/callgrind.h>
#define MEASURED_BEGIN() CALLGRIND_TOGGLE_COLLECT
#define MEASURED_END()   CALLGRIND_TOGGLE_COLLECT
#else
#define MEASURED_BEGIN() ((void)0)
#define MEASURED_END()   ((void)0)
#endif

#include "cli_util.h"
#include "commands.h"
#include "common/grow.h"
#include "common/status.h"
#include "orchestrator/http_floor.h"
#include "orchestrator/httpc.h"
#include "orchestrator/mock_agent.h"
#include "orchestrator/describe.h"
#include "orchestrator/registry.h"
#include "orchestrator/task.h"

#define ORCH_MAX_TASK_ARGS 256
#define ORCH_MAX_TASKS     (INT_MAX - 1)   /* tasks in one run (r.tasks has total + 1) */

struct run {
    struct event_base *base;
    struct orch       *orch;
    int                quiet, stats;
    int                warming;        /* --warmup pass: no output, no samples */
    int                total;          /* tasks to submit */
    int                submitted, finished, completed, failed, cancelled;
    int                peak_running;   /* most tasks running at once */
    int                submit_error;   /* a submission failed: stop */
    int                stats_oom;      /* a stats sample was lost to out of memory */
    double            *d2r, *r2r, *task_ms;
    size_t             n_d2r, n_r2r, n_task, cap_d2r, cap_r2r, cap_task;
    struct orch_task **tasks;
    cJSON             *reqs;           /* task requests, submitted round-robin */
    int32_t            stagger_ms;     /* 0: all at once */
    int64_t            t0;
    struct event      *stagger_ev;
};

static void usage(FILE *out)
{
    fprintf(out,
        "usage: paraserve orchestrate [--agents FILE] (--task JSON ... | --tasks-file FILE | --catalogue) [options]\n"
        "  --agents FILE      agent pool (default configs/agents.default.json)\n"
        "  --catalogue        print the agent catalogue the model reads (name, kind, description,\n"
        "                     input_schema; MCP agents described by their tools/list) as one JSON\n"
        "                     line, and exit\n"
        "  --task JSON        a task request {\"input\",\"script\",\"max_rounds\",\"deadline_ms\"} (repeatable)\n"
        "  --tasks-file FILE  task requests, one JSON object per line\n"
        "  --repeat N         submit each task N times (default 1)\n"
        "  --stagger-ms W     spread the submissions uniformly over W ms (default 0: all at once)\n"
        "  --mock-agent PORT  serve the built-in mock HTTP agent on 127.0.0.1:PORT (0: any port)\n"
        "                     for the run; {MOCK_PORT} in the agents file is replaced by its port\n"
        "  --mock-threads N   the mock agent's threads, each with its own listener on the port\n"
        "                     (SO_REUSEPORT; default 1)\n"
        "  --http-threads N   I/O threads for plain-http agent calls (0-64, default 0: the\n"
        "                     executor's own loop does the socket work)\n"
        "  --local-url URL    OpenAI chat endpoint serving the embedded model (kind local)\n"
        "  --cancel-after MS  cancel every unfinished task after MS milliseconds\n"
        "  --max-events N     events kept per task (default 100000); a task that\n"
        "                     reaches it fails with a typed error\n"
        "  --warmup           first run the same tasks once, all at once, unmeasured and unprinted\n"
        "                     (--cancel-after applies to it too), so the executor's keep-alive\n"
        "                     pools hold the connections the run needs (a server in steady\n"
        "                     state); without it the run starts cold.  Agent state carries over\n"
        "                     (the mock's flaky counters, open circuit breakers)\n"
        "  --quiet            print only each task's terminal event\n"
        "  --stats            print a final {\"stats\":...} line (overheads, tasks/s)\n"
        "  --floor N          with --stats and --mock-agent: after the run, N keep-alive round\n"
        "                     trips of a minimal client to the mock ({\"sleep_ms\":1}, 64\n"
        "                     connections); adds floor_client_us / floor_mock_us per request,\n"
        "                     and floor_open_client_us / floor_open_mock_us per new connection\n"
        "                     (connect + its first round trip)\n");
}

/* Append a sample; out of memory sets r->stats_oom (the stats are then
 * refused, never printed from a partial sample). */
static void push(struct run *r, double **v, size_t *n, size_t *cap, double x)
{
    if (*n == *cap) {
        double *nv = ps_grow(*v, cap, *n + 1, sizeof *nv, 1024);
        if (!nv) {
            r->stats_oom = 1;
            return;
        }
        *v = nv;
    }
    (*v)[(*n)++] = x;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    if (!n)
        return -1;   /* no samples (printed as -1: JSON has no NaN) */
    qsort(v, n, sizeof *v, cmp_d);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* Each event printed (--quiet: only the terminal ones); --stats takes
 * its numbers from the event (struct orch_event), not from the text. */
static void on_event(void *ud, struct orch_task *t, const struct orch_event *ev)
{
    struct run *r = ud;
    if (r->warming)
        return;
    int terminal = !strcmp(ev->type, "task.final") || !strcmp(ev->type, "task.error");
    if (!r->quiet || terminal)
        printf("{\"id\":%lld,\"event\":\"%s\",\"data\":%s}\n", (long long)ev->id, ev->type, ev->data);
    if (r->stats && ev->dispatch_to_recv_us >= 0)
        push(r, &r->d2r, &r->n_d2r, &r->cap_d2r, (double)ev->dispatch_to_recv_us);
    if (r->stats && ev->reply_to_record_us >= 0)
        push(r, &r->r2r, &r->n_r2r, &r->cap_r2r, (double)ev->reply_to_record_us);
    if (r->stats && terminal)
        push(r, &r->task_ms, &r->n_task, &r->cap_task, (double)ev->t_us / 1000.0);
}

static void on_done(void *ud, struct orch_task *t)
{
    struct run *r = ud;
    r->finished++;
    switch (orch_task_status(t)) {
    case TASK_COMPLETED: r->completed++; break;
    case TASK_CANCELLED: r->cancelled++; break;
    default: r->failed++; break;
    }
    if (r->finished == r->total || (r->submit_error && r->finished == r->submitted))
        event_base_loopbreak(r->base);
}

/* Submit task number r->submitted (requests round-robin).  0 or -1. */
static int submit_next(struct run *r)
{
    int n_reqs = cJSON_GetArraySize(r->reqs);
    int qi = r->submitted % n_reqs;
    struct orch_task *t;
    if (orch_task_submit(r->orch, cJSON_GetArrayItem(r->reqs, qi), NULL, &t)) {
        fprintf(stderr, "paraserve orchestrate: task #%d: %s\n", qi + 1, ps_error_last());
        r->submit_error = 1;
        return -1;
    }
    r->tasks[r->submitted++] = t;
    if (!orch_task_subscribe(t, 0, on_event, r)) {
        /* unsubscribed, the task could be evicted once it ends: not ours
         * to release; it ends cancelled and the run stops as on a submit
         * error */
        fprintf(stderr, "paraserve orchestrate: task #%d: out of memory subscribing to its events\n", qi + 1);
        r->tasks[r->submitted - 1] = NULL;
        r->submit_error = 1;
        orch_task_cancel(t, "out of memory");
        return -1;
    }
    int running = r->submitted - r->finished;
    if (running > r->peak_running)
        r->peak_running = running;
    return 0;
}

/* --stagger-ms: submit every task that is due, then sleep until the next. */
static void on_stagger(evutil_socket_t fd, short what, void *ud)
{
    struct run *r = ud;
    int64_t el_us = (orch_now_ns() - r->t0) / 1000;
    while (r->submitted < r->total &&
           (int64_t)r->submitted * r->stagger_ms * 1000 / r->total <= el_us) {
        if (submit_next(r)) {
            if (r->finished == r->submitted)
                event_base_loopbreak(r->base);
            return;
        }
    }
    if (r->submitted == r->total)
        return;
    int64_t due_us = (int64_t)r->submitted * r->stagger_ms * 1000 / r->total - el_us;
    struct timeval tv = { (time_t)(due_us / 1000000), (suseconds_t)(due_us % 1000000) };
    evtimer_add(r->stagger_ev, &tv);
}

/* This thread's user and kernel CPU seconds (tick-sampled by the kernel:
 * a split, not a precise measure). */
static void thread_user_sys_s(double *user, double *sys)
{
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru)) {
        *user = *sys = -1;
        return;
    }
    *user = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    return clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) ? -1 : (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t mock_cpu_fn(void *ud) { return mock_agent_cpu_ns(ud); }

/* p99 (µs) of the time from each reply's arrival (arr_ns, ascending) to the
 * end of its handling, when `servers` threads each take service_us per
 * reply, first come first served: a lower bound on reply->record p99 for
 * any client that spends service_us per reply on that many threads.  -1 on
 * bad input or no memory. */
static double queue_p99_us(const int64_t *arr_ns, size_t n, double service_us, int servers)
{
    if (!n || service_us < 0 || servers < 1 || servers > 1024)
        return -1;
    double *free_at = calloc((size_t)servers, sizeof *free_at), *lat = malloc(n * sizeof *lat);
    double p = -1;
    if (free_at && lat) {
        for (size_t i = 0; i < n; i++) {
            double a = (double)(arr_ns[i] - arr_ns[0]) / 1e3;
            int k = 0;
            for (int j = 1; j < servers; j++)
                if (free_at[j] < free_at[k])
                    k = j;
            double start = free_at[k] > a ? free_at[k] : a;
            free_at[k] = start + service_us;
            lat[i] = free_at[k] - a;
        }
        p = pct(lat, n, 0.99);
    }
    free(free_at);
    free(lat);
    return p;
}

static void on_cancel_timer(evutil_socket_t fd, short what, void *ud)
{
    struct run *r = ud;
    for (int i = 0; i < r->submitted; i++)
        if (r->tasks[i] && orch_task_status(r->tasks[i]) == TASK_RUNNING)
            orch_task_cancel(r->tasks[i], "cancelled by --cancel-after");
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b)
        b[n] = 0;
    fclose(f);
    return b;
}

/* Replace every {MOCK_PORT} in text (returns a new string). */
static char *subst_port(const char *text, int port)
{
    const char *key = "{MOCK_PORT}";
    size_t n = strlen(text) + 1, k = strlen(key);
    for (const char *p = text; (p = strstr(p, key)); p += k)
        n += 8;
    char *out = malloc(n), *o = out;
    if (!out)
        return NULL;
    for (const char *p = text; *p;) {
        if (!strncmp(p, key, k)) {
            o += sprintf(o, "%d", port);
            p += k;
        } else {
            *o++ = *p++;
        }
    }
    *o = 0;
    return out;
}

int cmd_orchestrate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"agents", required_argument, 0, 'a'}, {"task", required_argument, 0, 't'},
        {"tasks-file", required_argument, 0, 'f'}, {"repeat", required_argument, 0, 'r'},
        {"mock-agent", required_argument, 0, 'm'}, {"local-url", required_argument, 0, 'l'},
        {"cancel-after", required_argument, 0, 'c'}, {"quiet", no_argument, 0, 'q'},
        {"stats", no_argument, 0, 's'}, {"max-events", required_argument, 0, 'e'},
        {"stagger-ms", required_argument, 0, 'w'}, {"floor", required_argument, 0, 'F'},
        {"warmup", no_argument, 0, 'W'}, {"catalogue", no_argument, 0, 'C'},
        {"http-threads", required_argument, 0, 'H'}, {"mock-threads", required_argument, 0, 'M'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *agents_path = "configs/agents.default.json", *tasks_file = NULL, *local_url = NULL;
    const char *task_args[ORCH_MAX_TASK_ARGS];
    int n_task_args = 0;
    int32_t repeat = 1, mock_port = -1, cancel_after = -1, max_events = 0, floor_n = 0;
    int32_t http_threads = 0, mock_threads = 1;
    int warmup = 0, print_catalogue = 0;
    struct run r = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "a:t:f:r:m:l:c:e:w:F:H:M:qshWC", opts, NULL)) != -1) {
        switch (c) {
        case 'a': agents_path = optarg; break;
        case 't':
            if (n_task_args == ORCH_MAX_TASK_ARGS) {
                fprintf(stderr, "paraserve orchestrate: at most %d --task\n", ORCH_MAX_TASK_ARGS);
                return 2;
            }
            task_args[n_task_args++] = optarg;
            break;
        case 'f': tasks_file = optarg; break;
        /* numbers: the whole argument, in range, or exit 2 naming it */
        case 'r': if (cli_parse_i32("orchestrate", "--repeat", optarg, 1, 1000000, &repeat)) return 2; break;
        case 'm': if (cli_parse_i32("orchestrate", "--mock-agent", optarg, 0, 65535, &mock_port)) return 2; break;
        case 'l': local_url = optarg; break;
        case 'c': if (cli_parse_i32("orchestrate", "--cancel-after", optarg, 0, INT32_MAX, &cancel_after)) return 2; break;
        case 'e': if (cli_parse_i32("orchestrate", "--max-events", optarg, 4, INT32_MAX, &max_events)) return 2; break;
        case 'w': if (cli_parse_i32("orchestrate", "--stagger-ms", optarg, 0, 3600000, &r.stagger_ms)) return 2; break;
        case 'F': if (cli_parse_i32("orchestrate", "--floor", optarg, 0, 10000000, &floor_n)) return 2; break;
        case 'H': if (cli_parse_i32("orchestrate", "--http-threads", optarg, 0, HTTPC_MAX_IO_THREADS, &http_threads)) return 2; break;
        case 'M': if (cli_parse_i32("orchestrate", "--mock-threads", optarg, 1, MOCK_AGENT_MAX_THREADS, &mock_threads)) return 2; break;
        case 'q': r.quiet = 1; break;
        case 'W': warmup = 1; break;
        case 'C': print_catalogue = 1; break;
        case 's': r.stats = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((!n_task_args && !tasks_file && !print_catalogue) || repeat < 1 || repeat > 1000000 || (max_events && max_events < 4) ||
        r.stagger_ms < 0 || r.stagger_ms > 3600000 || floor_n < 0 || floor_n > 10000000 ||
        (floor_n && (mock_port < 0 || !r.stats))) {
        usage(stderr);
        return 2;
    }

    int rc = 1;
    struct mock_agent *mock = NULL;
    struct registry *reg = NULL;
    cJSON *reqs = cJSON_CreateArray();
    char *agents_text = NULL, *tasks_text = NULL;
    struct event *cancel_ev = NULL;
    /* Precise timers (CLOCK_MONOTONIC, timerfd) with --stagger-ms: each
     * task is submitted at its own time instead of batching arrivals per
     * clock tick of the default coarse clock.  Without it the loop is the
     * server's kind (server.c): no timerfd to re-arm as the earliest call
     * timeout changes. */
    struct event_config *bcfg = event_config_new();
    if (bcfg) {
        if (r.stagger_ms > 0)
            event_config_set_flag(bcfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        r.base = event_base_new_with_config(bcfg);
        event_config_free(bcfg);
    }
    if (!r.base || !reqs)
        goto done;
    if (mock_port >= 0 && !(mock = mock_agent_start_threads(mock_port, mock_threads))) {
        fprintf(stderr, "paraserve orchestrate: cannot start the mock agent on port %d\n", mock_port);
        goto done;
    }
    if (!(agents_text = read_file(agents_path))) {
        fprintf(stderr, "paraserve orchestrate: %s: cannot read\n", agents_path);
        goto done;
    }
    if (mock) {
        char *s = subst_port(agents_text, mock_agent_port(mock));
        free(agents_text);
        agents_text = s;
    }
    if (!agents_text || registry_load_json(agents_text, agents_path, &reg)) {
        fprintf(stderr, "paraserve orchestrate: %s\n", ps_error_last());
        goto done;
    }
    for (int i = 0; i < n_task_args; i++) {
        cJSON *j = cJSON_Parse(task_args[i]);
        if (!j) {
            fprintf(stderr, "paraserve orchestrate: --task #%d is not valid JSON\n", i + 1);
            rc = 2;
            goto done;
        }
        cJSON_AddItemToArray(reqs, j);
    }
    if (tasks_file) {
        if (!(tasks_text = read_file(tasks_file))) {
            fprintf(stderr, "paraserve orchestrate: %s: cannot read\n", tasks_file);
            goto done;
        }
        int line = 0;
        for (char *p = tasks_text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
            nl = strchr(p, '\n');
            if (nl)
                *nl = 0;
            line++;
            if (!*p)
                continue;
            cJSON *j = cJSON_Parse(p);
            if (!j) {
                fprintf(stderr, "paraserve orchestrate: %s:%d: not valid JSON\n", tasks_file, line);
                goto done;
            }
            cJSON_AddItemToArray(reqs, j);
        }
    }
    struct exec_config ecfg = { .local_url = local_url, .http_threads = http_threads };
    struct orch_config ocfg = { .max_events = max_events };
    if (agents_describe(reg, &ecfg, DESCRIBE_WAIT_MS, stderr, NULL)) {
        fprintf(stderr, "paraserve orchestrate: %s\n", ps_error_last());
        goto done;
    }
    if (print_catalogue) {
        cJSON *cat = registry_catalogue(reg);
        char *text = cat ? cJSON_PrintUnformatted(cat) : NULL;
        cJSON_Delete(cat);
        if (!text) {
            fprintf(stderr, "paraserve orchestrate: out of memory\n");
            goto done;
        }
        printf("%s\n", text);
        free(text);
        rc = 0;
        goto done;
    }
    r.orch = orch_create(r.base, reg, &ecfg, &ocfg);
    if (!r.orch) {
        fprintf(stderr, "paraserve orchestrate: %s\n", ps_error_last());
        goto done;
    }
    orch_set_done_cb(r.orch, on_done, &r);
    if (!cJSON_GetArraySize(reqs)) {
        fprintf(stderr, "paraserve orchestrate: no tasks\n");
        rc = 2;
        goto done;
    }
    r.reqs = reqs;
    /* requests x --repeat is the task count, an int: refused before the
     * product overflows (it wrapped, and the run failed on a calloc of the
     * wrapped size, or ran fewer tasks than asked) */
    if (cJSON_GetArraySize(reqs) > ORCH_MAX_TASKS / repeat) {
        fprintf(stderr, "paraserve orchestrate: %d task requests x --repeat %d is over %d tasks\n",
                cJSON_GetArraySize(reqs), repeat, ORCH_MAX_TASKS);
        rc = 2;
        goto done;
    }
    r.total = cJSON_GetArraySize(reqs) * repeat;
    r.tasks = calloc((size_t)r.total + 1, sizeof *r.tasks);
    if (!r.tasks) {
        fprintf(stderr, "paraserve orchestrate: out of memory for %d tasks\n", r.total);
        goto done;
    }
    if (!(r.stagger_ev = evtimer_new(r.base, on_stagger, &r)))
        goto done;
    /* --cancel-after, armed for the warm-up pass (or its tasks would run
     * to their deadline) and again for the timed one */
    const struct timeval cancel_tv = { cancel_after / 1000, (cancel_after % 1000) * 1000 };
    if (cancel_after >= 0 && !(cancel_ev = evtimer_new(r.base, on_cancel_timer, &r)))
        goto done;
    if (warmup) {
        /* Unmeasured pass: the same tasks, all at once, to completion; its
         * tasks are freed and every counter starts again from zero. */
        r.warming = 1;
        while (r.submitted < r.total && !submit_next(&r))
            ;
        if (cancel_ev)
            evtimer_add(cancel_ev, &cancel_tv);
        if (r.submit_error) {
            rc = 2;
            goto done;
        }
        if (r.finished < r.total)
            event_base_dispatch(r.base);
        if (r.finished < r.total) {
            fprintf(stderr, "paraserve orchestrate: --warmup: %d of %d tasks did not end\n",
                    r.total - r.finished, r.total);
            goto done;
        }
        for (int i = 0; i < r.submitted; i++) {
            orch_task_release(r.tasks[i]);
            r.tasks[i] = NULL;
        }
        r.submitted = r.finished = r.completed = r.failed = r.cancelled = r.peak_running = 0;
        r.warming = 0;
        if (cancel_ev)
            evtimer_del(cancel_ev);
    }
    struct exec_stats xs0, xs1;
    exec_get_stats(orch_executor(r.orch), &xs0);
    double cpu0 = thread_cpu_s(), user0, sys0;
    thread_user_sys_s(&user0, &sys0);
    int64_t mock_cpu0 = mock ? mock_agent_cpu_ns(mock) : -1;
    int64_t mock_req0 = mock ? mock_agent_requests(mock) : 0;
    r.t0 = orch_now_ns();
    MEASURED_BEGIN();
    if (r.stagger_ms > 0) {
        on_stagger(-1, 0, &r);
    } else {
        while (r.submitted < r.total && !submit_next(&r))
            ;
    }
    if (r.submit_error && (!r.stagger_ms || !r.submitted)) {
        rc = 2;                 /* a task request was refused before the run */
        goto done;
    }
    if (cancel_ev)
        evtimer_add(cancel_ev, &cancel_tv);
    if (r.finished < r.total && !(r.submit_error && r.finished == r.submitted))
        event_base_dispatch(r.base);
    int64_t t_end = orch_now_ns();
    MEASURED_END();
    double wall = (double)(t_end - r.t0) / 1e9;
    double loop_cpu = thread_cpu_s() - cpu0, user1, sys1;
    exec_get_stats(orch_executor(r.orch), &xs1);
    int64_t connects = xs1.http_connects - xs0.http_connects;
    double io_cpu = xs1.http_io_cpu_ns >= 0 && xs0.http_io_cpu_ns >= 0
                        ? (double)(xs1.http_io_cpu_ns - xs0.http_io_cpu_ns) / 1e9 : -1.0;
    thread_user_sys_s(&user1, &sys1);
    int64_t mock_cpu1 = mock ? mock_agent_cpu_ns(mock) : -1;
    int64_t mock_requests = mock ? mock_agent_requests(mock) - mock_req0 : 0;
    double mock_cpu = mock_cpu0 >= 0 && mock_cpu1 >= 0 ? (double)(mock_cpu1 - mock_cpu0) / 1e9 : -1;
    /* The physical peer of loop_cpu_s: what a minimal client and this mock
     * spend on one keep-alive round trip here (-1: not measured). */
    double floor_client_us = -1, floor_mock_us = -1, open_client_us = -1, open_mock_us = -1;
    if (floor_n > 0) {
        enum { FLOOR_CONNS = 64 };
        struct http_floor_stats fs;
        if (http_floor_run(mock_agent_port(mock), "/agent", "{\"sleep_ms\":1}",
                           floor_n < FLOOR_CONNS ? floor_n : FLOOR_CONNS, floor_n, mock_cpu_fn, mock, &fs)) {
            fprintf(stderr, "paraserve orchestrate: --floor: %s\n", ps_error_last());
            goto done;
        }
        floor_client_us = fs.client_cpu_s * 1e6 / (double)fs.requests;
        if (fs.peer_cpu_s >= 0)
            floor_mock_us = fs.peer_cpu_s * 1e6 / (double)fs.requests;
        open_client_us = fs.open_client_cpu_s * 1e6 / (double)fs.opened;
        if (fs.open_peer_cpu_s >= 0)
            open_mock_us = fs.open_peer_cpu_s * 1e6 / (double)fs.opened;
    }
    /* Queueing bounds for reply->record: the replies as the mock sent them
     * in this run, handled at the floor's cost per round trip (one thread,
     * and one per core), and at this loop's measured CPU per call. */
    double q_floor1 = -1, q_floor_cores = -1, q_loop = -1;
    if (mock && r.stats) {
        int64_t *sent = NULL;
        size_t n_sent = 0;
        if (mock_agent_send_times(mock, r.t0, t_end, &sent, &n_sent)) {
            fprintf(stderr, "paraserve orchestrate: %s\n", ps_error_last());
            goto done;
        }
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        if (floor_client_us >= 0) {
            q_floor1 = queue_p99_us(sent, n_sent, floor_client_us, 1);
            q_floor_cores = queue_p99_us(sent, n_sent, floor_client_us, cores > 0 ? (int)cores : 1);
        }
        if (r.n_r2r)
            q_loop = queue_p99_us(sent, n_sent, loop_cpu * 1e6 / (double)r.n_r2r, 1);
        free(sent);
    }
    if (r.stats && r.stats_oom) {
        fprintf(stderr, "paraserve orchestrate: out of memory for the --stats samples; no stats printed\n");
    } else if (r.stats) {
        /* last_submit_s: when the last task went in (0 for a burst); the
         * ideal wall time is last_submit_s + a task's critical path. */
        printf("{\"stats\":{\"tasks\":%d,\"completed\":%d,\"failed\":%d,\"cancelled\":%d,"
               "\"wall_s\":%.4f,\"tasks_per_s\":%.1f,\"stagger_ms\":%d,\"last_submit_s\":%.4f,"
               "\"peak_running\":%d,\"calls_measured\":%zu,"
               "\"dispatch_to_recv_us_p50\":%.1f,\"dispatch_to_recv_us_p99\":%.1f,"
               "\"reply_to_record_us_p50\":%.1f,\"reply_to_record_us_p99\":%.1f,"
               "\"task_ms_p50\":%.2f,\"task_ms_p99\":%.2f,\"task_ms_max\":%.2f,"
               "\"loop_cpu_s\":%.4f,\"loop_user_s\":%.3f,\"loop_sys_s\":%.3f,"
               "\"mock_cpu_s\":%.4f,\"mock_requests\":%lld,"
               "\"connections\":%lld,\"floor_requests\":%d,\"floor_client_us\":%.1f,\"floor_mock_us\":%.1f,"
               "\"floor_open_client_us\":%.1f,\"floor_open_mock_us\":%.1f,"
               "\"reply_queue_floor_p99_us\":%.1f,\"reply_queue_floor_cores_p99_us\":%.1f,"
               "\"reply_queue_loop_p99_us\":%.1f,\"http_threads\":%d,\"http_threads_cpu_s\":%.4f,"
               "\"mock_threads\":%d,\"allocator\":\"%s\"}}\n",
               r.submitted, r.completed, r.failed, r.cancelled, wall, r.submitted / wall, r.stagger_ms,
               r.total > 1 ? (double)(r.total - 1) * r.stagger_ms / r.total / 1000.0 : 0.0,
               r.peak_running, r.n_d2r,
               pct(r.d2r, r.n_d2r, 0.5), pct(r.d2r, r.n_d2r, 0.99),
               pct(r.r2r, r.n_r2r, 0.5), pct(r.r2r, r.n_r2r, 0.99),
               pct(r.task_ms, r.n_task, 0.5), pct(r.task_ms, r.n_task, 0.99),
               pct(r.task_ms, r.n_task, 1.0), loop_cpu, user1 - user0, sys1 - sys0, mock_cpu,
               (long long)mock_requests,
               (long long)connects, floor_n, floor_client_us, floor_mock_us, open_client_us, open_mock_us,
               q_floor1, q_floor_cores, q_loop, http_threads, io_cpu, mock ? mock_agent_threads(mock) : 0,
               cli_allocator());
    }
    fflush(stdout);
    rc = r.submit_error ? 2 : r.finished == r.total && !r.stats_oom ? 0 : 1;
done:
    if (r.stagger_ev)
        event_free(r.stagger_ev);
    if (cancel_ev)
        event_free(cancel_ev);
    orch_destroy(r.orch);
    registry_free(reg);
    mock_agent_stop(mock);
    if (r.base)
        event_base_free(r.base);
    cJSON_Delete(reqs);
    free(agents_text);
    free(tasks_text);
    free(r.tasks);
    free(r.d2r);
    free(r.r2r);
    free(r.task_ms);
    return rc;
}
