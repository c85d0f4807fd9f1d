/* threadpool.h - fixed pool of worker threads for data-parallel compute.
 *
 * threadpool_run(tp, fn, ctx) calls fn(ctx, i, n) for i = 0..n-1 on the n
 * threads of the pool (the caller is thread 0) and returns when all are done.
 * Calls are serialised: one job at a time per pool.
 */
#ifndef PS_THREADPOOL_H
#define PS_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *ctx, int ith, int nth);

int  threadpool_create(int n_threads, threadpool **out); /* n_threads >= 1 */
void threadpool_run(threadpool *tp, threadpool_fn fn, void *ctx);
int  threadpool_size(const threadpool *tp);
void threadpool_free(threadpool *tp); /* NULL-safe; joins the workers */

#endif /* PS_THREADPOOL_H */
