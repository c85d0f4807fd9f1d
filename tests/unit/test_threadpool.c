/* test_threadpool - every index runs exactly once per job, never two calls
 * for one index at once, jobs are serialised, writes of workers are visible
 * to the caller, the caller runs the shares of workers the OS is not
 * running (an oversubscribed pool), and the cost of one threadpool_run is
 * measured (printed, not asserted). */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/threadpool.h"
#include "common/status.h"
#include "test_util.h"

struct job {
    int        hits[16];
    int        nth_seen[16];
    long       data[1024];
    atomic_int calls;
};

static void job_fn(void *ctx, int ith, int nth)
{
    struct job *j = ctx;
    j->hits[ith]++;
    j->nth_seen[ith] = nth;
    for (int i = ith; i < 1024; i += nth)
        j->data[i] += i;
    atomic_fetch_add(&j->calls, 1);
}

/* per index: calls, and a flag raised while a call runs (two at once for
 * one index would find it raised) */
struct claim_job {
    long       hits[64];
    atomic_int busy[64];
    atomic_int overlaps;
    long       job;        /* which job this is; each index records the last it saw */
    long       seen[64];
    atomic_int stale;      /* a call that saw another job's number */
};

static void claim_fn(void *ctx, int ith, int nth)
{
    struct claim_job *j = ctx;
    (void)nth;
    if (atomic_exchange(&j->busy[ith], 1))
        atomic_fetch_add(&j->overlaps, 1);
    j->hits[ith]++;
    if (j->seen[ith] != j->job - 1)
        atomic_fetch_add(&j->stale, 1);
    j->seen[ith] = j->job;
    atomic_store(&j->busy[ith], 0);
}

static void empty_fn(void *ctx, int ith, int nth)
{
    (void)ctx;
    (void)ith;
    (void)nth;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(void)
{
    threadpool *tp = NULL;
    CHECK(threadpool_create(0, &tp) == PS_EINVAL);
    CHECK(tp == NULL);
    threadpool_free(NULL);

    for (int n = 1; n <= 4; n++) {
        CHECK(threadpool_create(n, &tp) == PS_OK);
        CHECK(threadpool_size(tp) == n);
        struct job j;
        memset(&j, 0, sizeof j);
        const int rounds = 1000;
        for (int r = 0; r < rounds; r++)
            threadpool_run(tp, job_fn, &j);
        CHECK(atomic_load(&j.calls) == rounds * n);
        for (int i = 0; i < n; i++) {
            CHECK(j.hits[i] == rounds);
            CHECK(j.nth_seen[i] == n);
        }
        int ok = 1;
        for (int i = 0; i < 1024; i++)
            ok &= j.data[i] == (long)i * rounds;
        CHECK(ok);

        /* more threads than cores makes each run cost a scheduler slice */
        const int iters = n <= 2 ? 20000 : 200;
        double t0 = now_s();
        for (int r = 0; r < iters; r++)
            threadpool_run(tp, empty_fn, NULL);
        double us = (now_s() - t0) / iters * 1e6;
        printf("threads %d: %.2f us per threadpool_run (empty job)\n", n, us);
        threadpool_free(tp);
        tp = NULL;
    }

    /* Oversubscribed: 4 threads per online CPU (at least 8).  Workers that
     * are not running when a job comes leave their shares to the caller;
     * every share still runs once per job, on one thread at a time, with
     * the job's data. */
    {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        int  n = ncpu > 0 && ncpu < 16 ? 4 * (int)ncpu : 64;
        n = n < 8 ? 8 : n;
        CHECK(threadpool_create(n, &tp) == PS_OK);
        static struct claim_job cj;
        memset(&cj, 0, sizeof cj);
        const int rounds = 3000;
        double t0 = now_s();
        for (int r = 0; r < rounds; r++) {
            cj.job = r + 1;
            threadpool_run(tp, claim_fn, &cj);
        }
        double us = (now_s() - t0) / rounds * 1e6;
        int ok = 1;
        for (int i = 0; i < n; i++)
            ok &= cj.hits[i] == rounds && cj.seen[i] == rounds;
        CHECK(ok);
        CHECK(atomic_load(&cj.overlaps) == 0);
        CHECK(atomic_load(&cj.stale) == 0);
        const unsigned long long taken = threadpool_shares_taken(tp);
        CHECK(taken > 0);
        printf("threads %d on %ld CPUs: %.2f us per threadpool_run, %llu of %lld worker shares run by the caller\n",
               n, ncpu, us, taken, (long long)rounds * (n - 1));
        threadpool_free(tp);
        tp = NULL;
    }

    /* A pool whose workers went to sleep still wakes up. */
    CHECK(threadpool_create(2, &tp) == PS_OK);
    struct timespec ts = { 0, 50 * 1000 * 1000 };
    nanosleep(&ts, NULL);
    struct job j;
    memset(&j, 0, sizeof j);
    threadpool_run(tp, job_fn, &j);
    CHECK(j.hits[0] == 1 && j.hits[1] == 1);
    threadpool_free(tp);
    TEST_DONE();
}
