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
 *
 * --loops N runs the tasks on N executor loops, one thread each (task k on
 * loop k mod N), started together once every loop is set up (and warm);
 * the stats then sum the loops' CPU and counters and pool their samples.
 */
#include <event2/event.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
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
#include "orchestrator/trajectory.h"

#define ORCH_MAX_TASK_ARGS 256
#define ORCH_MAX_TASKS     (INT_MAX - 1)   /* tasks in one run (a loop's tasks[] has its total + 1) */
#define ORCH_MAX_LOOPS     64

/* What every executor loop of a run shares (read-only once the loops
 * start, but for the start gate). */
struct batch {
    const struct registry    *reg;
    const struct exec_config *ecfg;
    const struct orch_config *ocfg;
    cJSON             *reqs;           /* task requests, submitted round-robin */
    int                quiet, stats, warmup;
    int                n_loops;
    int                all_tasks;      /* tasks of the run, over every loop */
    int32_t            stagger_ms;     /* 0: all at once */
    int32_t            cancel_after;   /* -1: never */
    /* start gate: each loop arrives once it is set up and warm; the
     * measured pass starts, on every loop at once, when gate_open is set */
    pthread_mutex_t    mu;
    pthread_cond_t     cv;
    int                arrived, gate_open, abort;
    int64_t            t0;
    atomic_int         running, peak_running;   /* measured pass, over every loop */
    /* --trajectories: the file (-1: none), written by every loop in turn */
    int                traj_fd;
    pthread_mutex_t    traj_mu;
    int                traj_errors;
};

/* Per-call and per-task samples of the measured pass. */
enum sample_kind { SAMPLE_D2R, SAMPLE_R2R, SAMPLE_TASK_MS, SAMPLE_KINDS };
struct samples {
    double *v;
    size_t  n, cap;
};

/* One executor loop (its own thread, event base, orch and keep-alive
 * pools) and its share of the tasks: global task numbers loop, loop +
 * n_loops, ... */
struct run {
    struct batch      *b;
    int                loop;
    pthread_t          thread;
    int                ready;          /* set up (and warm): may be measured */
    int                rc;             /* 0, 1 (failed), 2 (a task request refused) */
    struct event_base *base;
    struct orch       *orch;
    int                warming;        /* --warmup pass: no output, no samples */
    int                total;          /* tasks of this loop */
    int                submitted, finished, completed, failed, cancelled;
    int                submit_error;   /* a submission failed: stop */
    int                stats_oom;      /* a stats sample was lost to out of memory */
    struct samples     samples[SAMPLE_KINDS];
    struct orch_task **tasks;
    int64_t            t0, t_end;
    struct event      *stagger_ev, *cancel_ev;
    /* measured pass: this thread's CPU, and its executor's counters */
    double             cpu_s, user_s, sys_s;
    struct exec_stats  xs0, xs1;
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
        "  --loops N          executor loops, each on its own thread with its own keep-alive pools\n"
        "                     and I/O threads (1-64, default 1); task k runs on loop k mod N.  An\n"
        "                     agent's max_concurrency and circuit breaker count per loop\n"
        "  --local-url URL    OpenAI chat endpoint serving the embedded model (kind local)\n"
        "  --cancel-after MS  cancel every unfinished task after MS milliseconds\n"
        "  --max-events N     events kept per task (default 100000); a task that\n"
        "                     reaches it fails with a typed error\n"
        "  --warmup           first run the same tasks once, all at once, unmeasured and unprinted\n"
        "                     (--cancel-after applies to it too), so the executor's keep-alive\n"
        "                     pools hold the connections the run needs (a server in steady\n"
        "                     state); without it the run starts cold.  Agent state carries over\n"
        "                     (the mock's flaky counters, open circuit breakers)\n"
        "  --trajectories FILE  append each task's trajectory, when it ends, to FILE as one JSON line\n"
        "                     (proto/trajectory.schema.json: every decision as chat messages, the\n"
        "                     calls, reward terms); tasks record one unless they say\n"
        "                     \"trajectory\": false.  The --warmup pass writes none\n"
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
static void push(struct run *r, enum sample_kind k, double x)
{
    struct samples *s = &r->samples[k];
    if (s->n == s->cap) {
        double *nv = ps_grow(s->v, &s->cap, s->n + 1, sizeof *nv, 1024);
        if (!nv) {
            r->stats_oom = 1;
            return;
        }
        s->v = nv;
    }
    s->v[s->n++] = x;
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
    if (!r->b->quiet || terminal)
        printf("{\"id\":%lld,\"event\":\"%s\",\"data\":%s}\n", (long long)ev->id, ev->type, ev->data);
    if (!r->b->stats)
        return;
    if (ev->dispatch_to_recv_us >= 0)
        push(r, SAMPLE_D2R, (double)ev->dispatch_to_recv_us);
    if (ev->reply_to_record_us >= 0)
        push(r, SAMPLE_R2R, (double)ev->reply_to_record_us);
    if (terminal)
        push(r, SAMPLE_TASK_MS, (double)ev->t_us / 1000.0);
}

static void on_done(void *ud, struct orch_task *t)
{
    struct run *r = ud;
    struct batch *b = r->b;
    if (b->traj_fd >= 0 && !r->warming && orch_task_recorded(t)) {
        /* printed on this loop, written one loop at a time */
        char *text = NULL;
        size_t len = 0;
        int st = orch_task_trajectory_text(t, &text, &len);
        pthread_mutex_lock(&b->traj_mu);
        if (!st)
            st = trajectory_line_write(b->traj_fd, text, len);
        if (st && b->traj_errors++ == 0)
            fprintf(stderr, "paraserve orchestrate: --trajectories: %s: %s\n", orch_task_id(t), ps_error_last());
        pthread_mutex_unlock(&b->traj_mu);
        free(text);
    }
    r->finished++;
    if (!r->warming)
        atomic_fetch_sub(&r->b->running, 1);
    switch (orch_task_status(t)) {
    case TASK_COMPLETED: r->completed++; break;
    case TASK_CANCELLED: r->cancelled++; break;
    default: r->failed++; break;
    }
    if (r->finished == r->total || (r->submit_error && r->finished == r->submitted))
        event_base_loopbreak(r->base);
}

/* The global number of this loop's k-th task. */
static int task_number(const struct run *r, int k)
{
    return r->loop + k * r->b->n_loops;
}

/* When task number g is due, in µs after t0 (--stagger-ms). */
static int64_t due_us(const struct batch *b, int g)
{
    return (int64_t)g * b->stagger_ms * 1000 / b->all_tasks;
}

/* Submit this loop's next task (requests round-robin over the global
 * task numbers).  0 or -1. */
static int submit_next(struct run *r)
{
    int n_reqs = cJSON_GetArraySize(r->b->reqs);
    int qi = task_number(r, r->submitted) % n_reqs;
    struct orch_task *t;
    if (orch_task_submit(r->orch, cJSON_GetArrayItem(r->b->reqs, qi), NULL, &t)) {
        fprintf(stderr, "paraserve orchestrate: task #%d: %s\n", qi + 1, ps_error_last());
        r->submit_error = 1;
        return -1;
    }
    r->tasks[r->submitted++] = t;
    if (!r->warming) {
        int running = atomic_fetch_add(&r->b->running, 1) + 1;
        for (int peak = atomic_load(&r->b->peak_running);
             running > peak && !atomic_compare_exchange_weak(&r->b->peak_running, &peak, running);)
            ;
    }
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
    return 0;
}

/* --stagger-ms: submit every task of this loop that is due, then sleep
 * until the next. */
static void on_stagger(evutil_socket_t fd, short what, void *ud)
{
    struct run *r = ud;
    int64_t el_us = (orch_now_ns() - r->t0) / 1000;
    while (r->submitted < r->total && due_us(r->b, task_number(r, r->submitted)) <= el_us) {
        if (submit_next(r)) {
            if (r->finished == r->submitted)
                event_base_loopbreak(r->base);
            return;
        }
    }
    if (r->submitted == r->total)
        return;
    int64_t wait_us = due_us(r->b, task_number(r, r->submitted)) - el_us;
    struct timeval tv = { (time_t)(wait_us / 1000000), (suseconds_t)(wait_us % 1000000) };
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


/* Set up loop r: its event base, orch and timers.  0, or -1 said on stderr. */
static int loop_setup(struct run *r)
{
    const struct batch *b = r->b;
    /* Precise timers (CLOCK_MONOTONIC, timerfd) with --stagger-ms: each
     * task is submitted at its own time instead of batching arrivals per
     * clock tick of the default coarse clock.  Without it the loop is the
     * server's kind (server.c): no timerfd to re-arm as the earliest call
     * timeout changes. */
    struct event_config *bcfg = event_config_new();
    if (bcfg) {
        if (b->stagger_ms > 0)
            event_config_set_flag(bcfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        r->base = event_base_new_with_config(bcfg);
        event_config_free(bcfg);
    }
    if (!r->base) {
        fprintf(stderr, "paraserve orchestrate: loop %d: cannot create its event base\n", r->loop);
        return -1;
    }
    struct orch_config ocfg = *b->ocfg;
    ocfg.id_lane = r->loop;   /* ids unique over the loops by construction */
    if (!(r->orch = orch_create(r->base, b->reg, b->ecfg, &ocfg))) {
        fprintf(stderr, "paraserve orchestrate: %s\n", ps_error_last());
        return -1;
    }
    orch_set_done_cb(r->orch, on_done, r);
    r->total = b->all_tasks / b->n_loops + (r->loop < b->all_tasks % b->n_loops);
    r->tasks = calloc((size_t)r->total + 1, sizeof *r->tasks);
    r->stagger_ev = evtimer_new(r->base, on_stagger, r);
    if (b->cancel_after >= 0)
        r->cancel_ev = evtimer_new(r->base, on_cancel_timer, r);
    if (!r->tasks || !r->stagger_ev || (b->cancel_after >= 0 && !r->cancel_ev)) {
        fprintf(stderr, "paraserve orchestrate: out of memory for %d tasks\n", r->total);
        return -1;
    }
    return 0;
}

/* --cancel-after, armed for the warm-up pass (or its tasks would run to
 * their deadline) and again for the timed one. */
static void arm_cancel(struct run *r)
{
    if (!r->cancel_ev)
        return;
    int32_t ms = r->b->cancel_after;
    const struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(r->cancel_ev, &tv);
}

/* --warmup: this loop's tasks, all at once, to completion, unmeasured and
 * unprinted; its tasks are freed and every counter starts again from zero.
 * 0, or -1 with r->rc set (said on stderr). */
static int loop_warm(struct run *r)
{
    r->warming = 1;
    while (r->submitted < r->total && !submit_next(r))
        ;
    arm_cancel(r);
    if (r->submit_error) {
        r->rc = 2;
        return -1;
    }
    if (r->finished < r->total)
        event_base_dispatch(r->base);
    if (r->finished < r->total) {
        fprintf(stderr, "paraserve orchestrate: --warmup: %d of %d tasks did not end\n",
                r->total - r->finished, r->total);
        r->rc = 1;
        return -1;
    }
    for (int i = 0; i < r->submitted; i++) {
        orch_task_release(r->tasks[i]);
        r->tasks[i] = NULL;
    }
    r->submitted = r->finished = r->completed = r->failed = r->cancelled = 0;
    r->warming = 0;
    if (r->cancel_ev)
        evtimer_del(r->cancel_ev);
    return 0;
}

/* Arrive at the start gate and wait for it to open.  0: run the measured
 * pass from b->t0; -1: the run was called off (a loop failed to start). */
static int gate_pass(struct run *r)
{
    struct batch *b = r->b;
    pthread_mutex_lock(&b->mu);
    b->arrived++;
    pthread_cond_broadcast(&b->cv);
    while (!b->gate_open && !b->abort)
        pthread_cond_wait(&b->cv, &b->mu);
    int go = !b->abort;
    r->t0 = b->t0;
    pthread_mutex_unlock(&b->mu);
    return go ? 0 : -1;
}

/* The main side of the gate: wait for every loop to arrive; then open it
 * (after `before_open`, with t0 taken last) or, when a loop is not ready,
 * call the run off.  1 when it opened. */
static int gate_open(struct batch *b, struct run *loops, void (*before_open)(void *), void *ud)
{
    pthread_mutex_lock(&b->mu);
    while (b->arrived < b->n_loops)
        pthread_cond_wait(&b->cv, &b->mu);
    int ready = 1;
    for (int i = 0; i < b->n_loops; i++)
        ready &= loops[i].ready;
    if (ready) {
        before_open(ud);
        b->t0 = orch_now_ns();
        b->gate_open = 1;
    } else {
        b->abort = 1;
    }
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return ready;
}

/* What loop_setup made, freed on the loop's own thread when it is done
 * (the loops' teardowns, stdio agents' grace periods included, overlap). */
static void loop_teardown(struct run *r)
{
    if (r->stagger_ev)
        event_free(r->stagger_ev);
    if (r->cancel_ev)
        event_free(r->cancel_ev);
    r->stagger_ev = r->cancel_ev = NULL;
    orch_destroy(r->orch);
    r->orch = NULL;
    if (r->base)
        event_base_free(r->base);
    r->base = NULL;
}

/* One executor loop's thread: set up, warm up, wait at the gate, run its
 * tasks; the result is in r (rc, samples, CPU, executor counters). */
static void *loop_main(void *arg)
{
    struct run *r = arg;
    const struct batch *b = r->b;
    if (!loop_setup(r) && (!b->warmup || !loop_warm(r)))
        r->ready = 1;
    else if (!r->rc)
        r->rc = 1;
    if (gate_pass(r)) {
        loop_teardown(r);
        return NULL;
    }
    exec_get_stats(orch_executor(r->orch), &r->xs0);
    MEASURED_BEGIN();   /* callgrind's collection state is per thread */
    double cpu0 = thread_cpu_s(), user0, sys0, user1, sys1;
    thread_user_sys_s(&user0, &sys0);
    if (b->stagger_ms > 0) {
        on_stagger(-1, 0, r);
    } else {
        while (r->submitted < r->total && !submit_next(r))
            ;
    }
    if (r->submit_error && (!b->stagger_ms || !r->submitted)) {
        r->rc = 2;             /* a task request was refused before the run */
    } else {
        arm_cancel(r);
        if (r->finished < r->total && !(r->submit_error && r->finished == r->submitted))
            event_base_dispatch(r->base);
        r->rc = r->submit_error ? 2 : r->finished == r->total && !r->stats_oom ? 0 : 1;
    }
    r->t_end = orch_now_ns();
    MEASURED_END();
    r->cpu_s = thread_cpu_s() - cpu0;
    thread_user_sys_s(&user1, &sys1);
    r->user_s = user1 - user0;
    r->sys_s = sys1 - sys0;
    exec_get_stats(orch_executor(r->orch), &r->xs1);
    loop_teardown(r);
    return NULL;
}

/* What the main thread still reads after the join. */
static void loop_free(struct run *r)
{
    free(r->tasks);
    for (int k = 0; k < SAMPLE_KINDS; k++)
        free(r->samples[k].v);
}

/* Every loop's samples of kind k in one array (for percentiles); -1 when
 * out of memory. */
static int merge_samples(const struct run *loops, int n_loops, enum sample_kind k, struct samples *out)
{
    size_t n = 0;
    for (int i = 0; i < n_loops; i++)
        n += loops[i].samples[k].n;
    *out = (struct samples){0};
    if (!n)
        return 0;
    if (!(out->v = malloc(n * sizeof *out->v)))
        return -1;
    for (int i = 0; i < n_loops; i++) {
        const struct samples *s = &loops[i].samples[k];
        if (s->n)
            memcpy(out->v + out->n, s->v, s->n * sizeof *out->v);
        out->n += s->n;
    }
    out->cap = n;
    return 0;
}

struct mock_snapshot {
    struct mock_agent *mock;
    int64_t            cpu_ns, requests;
};

/* The gate's before_open: the mock's counters at the start of the measured
 * pass. */
static void snapshot_mock(void *ud)
{
    struct mock_snapshot *m = ud;
    m->cpu_ns = m->mock ? mock_agent_cpu_ns(m->mock) : -1;
    m->requests = m->mock ? mock_agent_requests(m->mock) : 0;
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
        {"loops", required_argument, 0, 'L'}, {"trajectories", required_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *agents_path = "configs/agents.default.json", *tasks_file = NULL, *local_url = NULL;
    const char *traj_path = NULL;
    const char *task_args[ORCH_MAX_TASK_ARGS];
    int n_task_args = 0;
    int32_t repeat = 1, mock_port = -1, max_events = 0, floor_n = 0;
    int32_t http_threads = 0, mock_threads = 1;
    int print_catalogue = 0;
    struct batch b = { .cancel_after = -1, .traj_fd = -1 };
    int32_t loops = 1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "a:t:f:r:m:l:c:e:w:F:H:M:L:T:qshWC", opts, NULL)) != -1) {
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
        case 'T': traj_path = optarg; break;
        case 'c': if (cli_parse_i32("orchestrate", "--cancel-after", optarg, 0, INT32_MAX, &b.cancel_after)) return 2; break;
        case 'e': if (cli_parse_i32("orchestrate", "--max-events", optarg, 4, INT32_MAX, &max_events)) return 2; break;
        case 'w': if (cli_parse_i32("orchestrate", "--stagger-ms", optarg, 0, 3600000, &b.stagger_ms)) return 2; break;
        case 'F': if (cli_parse_i32("orchestrate", "--floor", optarg, 0, 10000000, &floor_n)) return 2; break;
        case 'H': if (cli_parse_i32("orchestrate", "--http-threads", optarg, 0, HTTPC_MAX_IO_THREADS, &http_threads)) return 2; break;
        case 'M': if (cli_parse_i32("orchestrate", "--mock-threads", optarg, 1, MOCK_AGENT_MAX_THREADS, &mock_threads)) return 2; break;
        case 'L': if (cli_parse_i32("orchestrate", "--loops", optarg, 1, ORCH_MAX_LOOPS, &loops)) return 2; break;
        case 'q': b.quiet = 1; break;
        case 'W': b.warmup = 1; break;
        case 'C': print_catalogue = 1; break;
        case 's': b.stats = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((!n_task_args && !tasks_file && !print_catalogue) || repeat < 1 || repeat > 1000000 || (max_events && max_events < 4) ||
        b.stagger_ms < 0 || b.stagger_ms > 3600000 || floor_n < 0 || floor_n > 10000000 ||
        (floor_n && (mock_port < 0 || !b.stats))) {
        usage(stderr);
        return 2;
    }

    int rc = 1;
    struct mock_agent *mock = NULL;
    struct registry *reg = NULL;
    cJSON *reqs = cJSON_CreateArray();
    char *agents_text = NULL, *tasks_text = NULL;
    struct run *lp = NULL;
    struct samples merged[SAMPLE_KINDS] = {0};
    int n_started = 0;
    pthread_mutex_init(&b.mu, NULL);
    pthread_mutex_init(&b.traj_mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    atomic_init(&b.running, 0);
    atomic_init(&b.peak_running, 0);
    if (!reqs)
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
    struct orch_config ocfg = { .max_events = max_events, .record_trajectories = traj_path != NULL };
    if (traj_path && (b.traj_fd = trajectory_file_open(traj_path)) < 0) {
        fprintf(stderr, "paraserve orchestrate: --trajectories %s\n", ps_error_last());
        goto done;
    }
    /* the registry is settled here, once, on this thread: the loops only
     * read it */
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
    if (!cJSON_GetArraySize(reqs)) {
        fprintf(stderr, "paraserve orchestrate: no tasks\n");
        rc = 2;
        goto done;
    }
    /* requests x --repeat is the task count, an int: refused before the
     * product overflows (it wrapped, and the run failed on a calloc of the
     * wrapped size, or ran fewer tasks than asked) */
    if (cJSON_GetArraySize(reqs) > ORCH_MAX_TASKS / repeat) {
        fprintf(stderr, "paraserve orchestrate: %d task requests x --repeat %d is over %d tasks\n",
                cJSON_GetArraySize(reqs), repeat, ORCH_MAX_TASKS);
        rc = 2;
        goto done;
    }
    /* every request is checked here, before any loop starts: a bad one
     * exits 2 with nothing run (as the first submission of it would) */
    for (int i = 0; i < cJSON_GetArraySize(reqs); i++) {
        if (orch_task_request_check(cJSON_GetArrayItem(reqs, i))) {
            fprintf(stderr, "paraserve orchestrate: task #%d: %s\n", i + 1, ps_error_last());
            rc = 2;
            goto done;
        }
    }
    b.reg = reg;
    b.ecfg = &ecfg;
    b.ocfg = &ocfg;
    b.reqs = reqs;
    b.all_tasks = cJSON_GetArraySize(reqs) * repeat;
    b.n_loops = loops < b.all_tasks ? loops : b.all_tasks;   /* every loop has a task */
    if (!(lp = calloc((size_t)b.n_loops, sizeof *lp))) {
        fprintf(stderr, "paraserve orchestrate: out of memory\n");
        goto done;
    }
    for (int i = 0; i < b.n_loops; i++) {
        lp[i].b = &b;
        lp[i].loop = i;
        if (pthread_create(&lp[i].thread, NULL, loop_main, &lp[i])) {
            fprintf(stderr, "paraserve orchestrate: cannot start loop %d's thread\n", i);
            pthread_mutex_lock(&b.mu);
            b.abort = 1;
            pthread_cond_broadcast(&b.cv);
            pthread_mutex_unlock(&b.mu);
            break;
        }
        n_started++;
    }
    struct mock_snapshot m0 = { .mock = mock };
    int opened = 0;
    if (n_started == b.n_loops)
        opened = gate_open(&b, lp, snapshot_mock, &m0);
    for (int i = 0; i < n_started; i++)
        pthread_join(lp[i].thread, NULL);
    int loops_rc = 0, submitted = 0, finished = 0, completed = 0, failed = 0, cancelled = 0;
    int stats_oom = 0;
    for (int i = 0; i < n_started; i++) {
        if (lp[i].rc > loops_rc)
            loops_rc = lp[i].rc;
        stats_oom |= lp[i].stats_oom;
    }
    if (!opened || loops_rc == 2) {
        rc = loops_rc ? loops_rc : 1;
        goto done;
    }
    int64_t t_end = b.t0;
    double loop_cpu = 0, loop_cpu_max = 0, loop_user = 0, loop_sys = 0, io_cpu = 0;
    int64_t connects = 0;
    for (int i = 0; i < b.n_loops; i++) {
        const struct run *r = &lp[i];
        submitted += r->submitted;
        finished += r->finished;
        completed += r->completed;
        failed += r->failed;
        cancelled += r->cancelled;
        if (r->t_end > t_end)
            t_end = r->t_end;
        loop_cpu += r->cpu_s;
        if (r->cpu_s > loop_cpu_max)
            loop_cpu_max = r->cpu_s;
        loop_user += r->user_s;
        loop_sys += r->sys_s;
        connects += r->xs1.http_connects - r->xs0.http_connects;
        if (io_cpu >= 0 && r->xs1.http_io_cpu_ns >= 0 && r->xs0.http_io_cpu_ns >= 0)
            io_cpu += (double)(r->xs1.http_io_cpu_ns - r->xs0.http_io_cpu_ns) / 1e9;
        else
            io_cpu = -1;
    }
    double wall = (double)(t_end - b.t0) / 1e9;
    int64_t mock_cpu1 = mock ? mock_agent_cpu_ns(mock) : -1;
    int64_t mock_requests = mock ? mock_agent_requests(mock) - m0.requests : 0;
    double mock_cpu = m0.cpu_ns >= 0 && mock_cpu1 >= 0 ? (double)(mock_cpu1 - m0.cpu_ns) / 1e9 : -1;
    for (int k = 0; k < SAMPLE_KINDS && b.stats; k++)
        if (merge_samples(lp, b.n_loops, k, &merged[k]))
            stats_oom = 1;
    struct samples *d2r = &merged[SAMPLE_D2R], *r2r = &merged[SAMPLE_R2R], *task_ms = &merged[SAMPLE_TASK_MS];
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
     * and one per core), and at the loops' measured CPU per call (one
     * server per loop, each reply to the first free one: a lower bound,
     * since a reply is its task's loop's to record). */
    double q_floor1 = -1, q_floor_cores = -1, q_loop = -1;
    if (mock && b.stats) {
        int64_t *sent = NULL;
        size_t n_sent = 0;
        if (mock_agent_send_times(mock, b.t0, t_end, &sent, &n_sent)) {
            fprintf(stderr, "paraserve orchestrate: %s\n", ps_error_last());
            goto done;
        }
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        if (floor_client_us >= 0) {
            q_floor1 = queue_p99_us(sent, n_sent, floor_client_us, 1);
            q_floor_cores = queue_p99_us(sent, n_sent, floor_client_us, cores > 0 ? (int)cores : 1);
        }
        if (r2r->n)
            q_loop = queue_p99_us(sent, n_sent, loop_cpu * 1e6 / (double)r2r->n, b.n_loops);
        free(sent);
    }
    if (b.stats && stats_oom) {
        fprintf(stderr, "paraserve orchestrate: out of memory for the --stats samples; no stats printed\n");
    } else if (b.stats) {
        /* last_submit_s: when the last task went in (0 for a burst); the
         * ideal wall time is last_submit_s + a task's critical path. */
        printf("{\"stats\":{\"tasks\":%d,\"completed\":%d,\"failed\":%d,\"cancelled\":%d,"
               "\"wall_s\":%.4f,\"tasks_per_s\":%.1f,\"stagger_ms\":%d,\"last_submit_s\":%.4f,"
               "\"peak_running\":%d,\"calls_measured\":%zu,"
               "\"dispatch_to_recv_us_p50\":%.1f,\"dispatch_to_recv_us_p99\":%.1f,"
               "\"reply_to_record_us_p50\":%.1f,\"reply_to_record_us_p99\":%.1f,"
               "\"task_ms_p50\":%.2f,\"task_ms_p99\":%.2f,\"task_ms_max\":%.2f,"
               "\"loops\":%d,\"loop_cpu_s\":%.4f,\"loop_cpu_max_s\":%.4f,\"loop_user_s\":%.3f,\"loop_sys_s\":%.3f,"
               "\"mock_cpu_s\":%.4f,\"mock_requests\":%lld,"
               "\"connections\":%lld,\"floor_requests\":%d,\"floor_client_us\":%.1f,\"floor_mock_us\":%.1f,"
               "\"floor_open_client_us\":%.1f,\"floor_open_mock_us\":%.1f,"
               "\"reply_queue_floor_p99_us\":%.1f,\"reply_queue_floor_cores_p99_us\":%.1f,"
               "\"reply_queue_loop_p99_us\":%.1f,\"http_threads\":%d,\"http_threads_cpu_s\":%.4f,"
               "\"mock_threads\":%d,\"allocator\":\"%s\"}}\n",
               submitted, completed, failed, cancelled, wall, submitted / wall, b.stagger_ms,
               b.all_tasks > 1 ? (double)(b.all_tasks - 1) * b.stagger_ms / b.all_tasks / 1000.0 : 0.0,
               atomic_load(&b.peak_running), d2r->n,
               pct(d2r->v, d2r->n, 0.5), pct(d2r->v, d2r->n, 0.99),
               pct(r2r->v, r2r->n, 0.5), pct(r2r->v, r2r->n, 0.99),
               pct(task_ms->v, task_ms->n, 0.5), pct(task_ms->v, task_ms->n, 0.99),
               pct(task_ms->v, task_ms->n, 1.0), b.n_loops, loop_cpu, loop_cpu_max, loop_user, loop_sys,
               mock_cpu, (long long)mock_requests,
               (long long)connects, floor_n, floor_client_us, floor_mock_us, open_client_us, open_mock_us,
               q_floor1, q_floor_cores, q_loop, http_threads, io_cpu, mock ? mock_agent_threads(mock) : 0,
               cli_allocator());
    }
    fflush(stdout);
    rc = loops_rc ? loops_rc : finished == b.all_tasks && !stats_oom && !b.traj_errors ? 0 : 1;
done:
    if (b.traj_fd >= 0)
        close(b.traj_fd);
    pthread_mutex_destroy(&b.traj_mu);
    for (int i = 0; lp && i < b.n_loops; i++)
        loop_free(&lp[i]);
    free(lp);
    for (int k = 0; k < SAMPLE_KINDS; k++)
        free(merged[k].v);
    registry_free(reg);
    mock_agent_stop(mock);
    cJSON_Delete(reqs);
    free(agents_text);
    free(tasks_text);
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
    return rc;
}
