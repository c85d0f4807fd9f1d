/* threadpool.h - fixed pool of worker threads for data-parallel compute.
 *
 * threadpool_run(tp, fn, ctx) calls fn(ctx, i, n) once for each i = 0..n-1
 * and returns when all are done: fn(ctx, 0, n) on the caller, fn(ctx, i, n)
 * on worker i, or on the caller after its own share when worker i has not
 * started it by then (a worker the OS is not running), so a call never
 * waits for a thread to be scheduled before that thread has begun.  No two
 * calls for one i overlap.  Calls are serialised: one job at a time per
 * pool.
 */
#ifndef PS_THREADPOOL_H
#define PS_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *ctx, int ith, int nth);

int  threadpool_create(int n_threads, threadpool **out); /* n_threads >= 1 */
void threadpool_run(threadpool *tp, threadpool_fn fn, void *ctx);
int  threadpool_size(const threadpool *tp);
/* Worker shares the caller has run itself so far (see above), of all the
 * worker shares of the calls so far (calls x (n - 1)). */
unsigned long long threadpool_shares_taken(const threadpool *tp);
unsigned long long threadpool_shares_offered(const threadpool *tp);
void threadpool_free(threadpool *tp); /* NULL-safe; joins the workers */

#endif /* PS_THREADPOOL_H */
