/* thread_cpu.h - CPU time a thread has used, for the per-thread costs that
 * benchmarks report (the executor's I/O threads, the mock agent's). */
#ifndef PS_COMMON_THREAD_CPU_H
#define PS_COMMON_THREAD_CPU_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Nanoseconds of CPU `t` (a live thread) has used, -1 if its clock cannot be read. */
static inline int64_t ps_thread_cpu_ns(pthread_t t)
{
    clockid_t cid;
    struct timespec ts;
    if (pthread_getcpuclockid(t, &cid) || clock_gettime(cid, &ts))
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif /* PS_COMMON_THREAD_CPU_H */
