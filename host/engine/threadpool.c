/* threadpool.c - persistent workers, spin-then-sleep job hand-off, and
 * shares the caller runs itself when a worker has not taken them.
 *
 * Protocol (one job at a time, serialised by the caller of threadpool_run;
 * job g is the g-th call, gen = g while it runs):
 *   caller: store fn/ctx, then gen = g (under mu, broadcast cv); run its own
 *           share (ith 0); then for each worker i claim share i itself if
 *           the worker has not (claim[i]: g-1 -> g by CAS) and run it, and
 *           wait for the shares workers claimed (done[i] == g).
 *   worker: wait until gen != seen (spin SPIN_ITERS, then sleep on cv with
 *           the check done under mu, so a wakeup cannot be lost); claim its
 *           share of the current job (CAS claim[ith] gen-1 -> gen; a stale
 *           or lost claim fails and the worker waits for the next job); run
 *           it; done[ith] = gen (release, publishing its writes).
 * Every share of job g is claimed once, by its worker or by the caller, so
 * claim[i] == g-1 whenever job g starts and fn(ctx, i, n) runs exactly once
 * per i on one thread (what fn keeps per ith, scratch buffers, stays
 * private).  A worker that is not running when a job comes - more busy
 * threads than cores: the server's event loop, other processes - no longer
 * stalls every job until the OS schedules it: the caller does its share
 * (with work claimed dynamically, as the engine's jobs do, the worker's
 * share is then empty anyway).  A decode step runs a few hundred short jobs
 * back to back, so workers spin between them and only sleep when the engine
 * is idle.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* ~ a few ms of pause instructions before a worker goes to sleep. */
#define SPIN_ITERS 200000
/* Spinners yield now and then so an oversubscribed machine (more threads
 * than free cores) still lets the thread being waited for run. */
#define YIELD_EVERY 1024

/* Job numbers are 64-bit: a 32-bit one could wrap while a worker lost
 * every claim, and its stale `done` would then read as the current job's. */
struct worker {
    _Alignas(64) atomic_ullong claim; /* last job whose share ith was claimed (by anyone) */
    atomic_ullong      done;          /* last job this worker ran its share of */
    struct threadpool *tp;
    int                ith;
};

struct threadpool {
    int              n;        /* threads including the caller */
    pthread_t       *threads;  /* [n-1] */
    struct worker   *workers;  /* [n-1] */
    int              n_started;
    pthread_mutex_t  mu;
    pthread_cond_t   cv;
    threadpool_fn    fn;
    void            *ctx;
    _Alignas(64) atomic_ullong gen;   /* current job (its own line: workers spin on it) */
    atomic_int       stop;
    _Alignas(64) unsigned long long taken;  /* worker shares the caller ran (threadpool_shares_taken) */
    unsigned long long jobs;   /* threadpool_run calls on more than one thread */
};

/* Claim share ith of job g for the calling thread: true for exactly one
 * caller per (share, job).  acq_rel: a worker's win follows its acquire
 * load of gen = g, after which fn / ctx are job g's and stay so until it
 * stores done = g. */
static bool share_claim(struct worker *w, unsigned long long g)
{
    unsigned long long expect = g - 1;
    return atomic_compare_exchange_strong_explicit(&w->claim, &expect, g, memory_order_acq_rel,
                                                   memory_order_relaxed);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct threadpool *tp = w->tp;
    /* gen is 0 at creation; a worker that starts late must still see job 1 */
    unsigned long long seen = 0;
    for (;;) {
        unsigned long long g = seen;
        for (int i = 0; i < SPIN_ITERS; i++) {
            g = atomic_load_explicit(&tp->gen, memory_order_acquire);
            if (g != seen || atomic_load_explicit(&tp->stop, memory_order_relaxed))
                break;
            if (i % YIELD_EVERY == YIELD_EVERY - 1)
                sched_yield();
            else
                cpu_relax();
        }
        if (g == seen) {
            pthread_mutex_lock(&tp->mu);
            while ((g = atomic_load(&tp->gen)) == seen && !atomic_load(&tp->stop))
                pthread_cond_wait(&tp->cv, &tp->mu);
            pthread_mutex_unlock(&tp->mu);
        }
        if (atomic_load(&tp->stop))
            break;
        seen = g;
        if (!share_claim(w, g))
            continue;   /* the caller took this share, or g is already over */
        tp->fn(tp->ctx, w->ith, tp->n);
        atomic_store_explicit(&w->done, g, memory_order_release);
    }
    return NULL;
}

int threadpool_create(int n_threads, threadpool **out)
{
    *out = NULL;
    if (n_threads < 1)
        return ps_error_set(PS_EINVAL, "threadpool: n_threads %d < 1", n_threads);

    const size_t tp_bytes = (sizeof(struct threadpool) + 63) / 64 * 64;   /* its lines are 64-byte aligned */
    struct threadpool *tp = aligned_alloc(64, tp_bytes);
    if (!tp)
        return ps_error_set(PS_ENOMEM, "threadpool: out of memory");
    memset(tp, 0, tp_bytes);
    tp->n = n_threads;
    atomic_init(&tp->gen, 0);
    atomic_init(&tp->stop, 0);
    if (pthread_mutex_init(&tp->mu, NULL)) {
        free(tp);
        return ps_error_set(PS_EINTERNAL, "threadpool: pthread_mutex_init failed");
    }
    if (pthread_cond_init(&tp->cv, NULL)) {
        pthread_mutex_destroy(&tp->mu);
        free(tp);
        return ps_error_set(PS_EINTERNAL, "threadpool: pthread_cond_init failed");
    }
    if (n_threads > 1) {
        tp->threads = calloc((size_t)n_threads - 1, sizeof *tp->threads);
        const size_t wbytes = ((size_t)n_threads - 1) * sizeof *tp->workers;   /* a multiple of 64 */
        tp->workers = aligned_alloc(64, wbytes);
        if (tp->workers)
            memset(tp->workers, 0, wbytes);
        if (!tp->threads || !tp->workers) {
            threadpool_free(tp);
            return ps_error_set(PS_ENOMEM, "threadpool: out of memory");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            atomic_init(&tp->workers[i].claim, 0);
            atomic_init(&tp->workers[i].done, 0);
            tp->workers[i].tp = tp;
            tp->workers[i].ith = i + 1;
            if (pthread_create(&tp->threads[i], NULL, worker_main, &tp->workers[i])) {
                threadpool_free(tp);
                return ps_error_set(PS_EINTERNAL, "threadpool: cannot start worker %d of %d",
                                    i + 1, n_threads);
            }
            tp->n_started++;
        }
    }
    *out = tp;
    return PS_OK;
}

void threadpool_run(threadpool *tp, threadpool_fn fn, void *ctx)
{
    if (tp->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->ctx = ctx;
    tp->jobs++;
    pthread_mutex_lock(&tp->mu);
    const unsigned long long g = atomic_fetch_add_explicit(&tp->gen, 1, memory_order_release) + 1;
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    fn(ctx, 0, tp->n);
    /* first every share no worker has started, then wait for the ones
     * workers have (a preempted worker holding one does not delay the
     * others' unclaimed shares) */
    for (int i = 0; i < tp->n - 1; i++) {
        struct worker *w = &tp->workers[i];
        if (share_claim(w, g)) {
            fn(ctx, w->ith, tp->n);
            atomic_store_explicit(&w->done, g, memory_order_relaxed);
            tp->taken++;
        }
    }
    for (int i = 0; i < tp->n - 1; i++) {
        struct worker *w = &tp->workers[i];
        for (unsigned k = 1; atomic_load_explicit(&w->done, memory_order_acquire) != g; k++) {
            if (k % YIELD_EVERY == 0)
                sched_yield();
            else
                cpu_relax();
        }
    }
}

unsigned long long threadpool_shares_taken(const threadpool *tp)
{
    return tp->taken;
}

unsigned long long threadpool_shares_offered(const threadpool *tp)
{
    return tp->jobs * (unsigned long long)(tp->n - 1);
}

int threadpool_size(const threadpool *tp)
{
    return tp->n;
}

void threadpool_free(threadpool *tp)
{
    if (!tp)
        return;
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, 1);
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 0; i < tp->n_started; i++)
        pthread_join(tp->threads[i], NULL);
    pthread_cond_destroy(&tp->cv);
    pthread_mutex_destroy(&tp->mu);
    free(tp->workers);
    free(tp->threads);
    free(tp);
}
