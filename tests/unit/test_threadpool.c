/* test_threadpool - every index runs exactly once per job, jobs are
 * serialised, writes of workers are visible to the caller, and the cost of
 * one threadpool_run is measured (printed, not asserted). */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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
