/* histogram.h - a fixed-bucket histogram (Prometheus semantics: bucket i
 * counts observations <= bounds[i], the last one +Inf), shared by the
 * server's request metrics and the orchestrator's task and agent-call
 * metrics.  Not thread-safe: each one is updated by one thread. */
#ifndef PS_COMMON_HISTOGRAM_H
#define PS_COMMON_HISTOGRAM_H

#include <stdint.h>

#define HISTOGRAM_MAX_BUCKETS 16

struct histogram {
    const double *bounds; /* [n] upper bounds, ascending; +Inf implied (borrowed, static) */
    int           n;
    uint64_t      counts[HISTOGRAM_MAX_BUCKETS + 1];
    double        sum;
    uint64_t      count;
};

/* Empty histogram over bounds[0..n) (n <= HISTOGRAM_MAX_BUCKETS; more are
 * ignored). */
static inline void histogram_init(struct histogram *h, const double *bounds, int n)
{
    *h = (struct histogram){ .bounds = bounds, .n = n < HISTOGRAM_MAX_BUCKETS ? n : HISTOGRAM_MAX_BUCKETS };
}

static inline void histogram_observe(struct histogram *h, double v)
{
    int i = 0;
    while (i < h->n && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

/* Add b's observations to a (same bounds). */
static inline void histogram_merge(struct histogram *a, const struct histogram *b)
{
    for (int i = 0; i <= a->n; i++)
        a->counts[i] += b->counts[i];
    a->sum += b->sum;
    a->count += b->count;
}

#endif /* PS_COMMON_HISTOGRAM_H */
