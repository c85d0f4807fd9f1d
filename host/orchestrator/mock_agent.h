/* mock_agent.h - an HTTP/1.1 agent for tests and benchmarks on its own thread
 * (loopback, keep-alive, precise reply timers; see mock_agent.c).  It answers
 * POST with JSON args (GET: as if with no args):
 *   sleep_ms  reply after this many milliseconds (default 0)
 *   fault     "hang" (never reply), "5xx" (503), "4xx" (400), "nonjson"
 *             (200 with a non-JSON body), "drop" (close the connection
 *             without replying), "flaky" (503 on the first `fail_times`
 *             requests carrying the same `key`, then ok), "badutf8" (200
 *             with a JSON-shaped body holding a 0xFF byte), "nul" (200 with
 *             {"v":"a\u0000b"})
 * Replies {"ok":true,"args":<args>} with X-Agent-Recv-Ns / X-Agent-Send-Ns
 * headers (CLOCK_MONOTONIC) so callers can measure their own overhead:
 * Recv is when the kernel delivered the request's last bytes to the socket
 * (SO_TIMESTAMPNS), Send when the reply was written; sleep_ms counts from
 * Recv.
 */
#ifndef PS_ORCH_MOCK_AGENT_H
#define PS_ORCH_MOCK_AGENT_H

#include <stddef.h>
#include <stdint.h>

struct mock_agent;

/* Start on 127.0.0.1:port (0 = any free port).  NULL on failure. */
struct mock_agent *mock_agent_start(int port);
/* The same with `threads` (1..MOCK_AGENT_MAX_THREADS) threads, each with its
 * own loop and its own listener on the port (SO_REUSEPORT); the counters,
 * flaky keys and send stamps are shared.  A connection stays on the thread
 * that accepted it.  NULL on failure. */
#define MOCK_AGENT_MAX_THREADS 64
struct mock_agent *mock_agent_start_threads(int port, int threads);
int mock_agent_port(const struct mock_agent *m);
int mock_agent_threads(const struct mock_agent *m);
/* Requests received so far (thread-safe read). */
int64_t mock_agent_requests(const struct mock_agent *m);
/* Replies actually sent (not counting hangs, drops, cancelled sleeps). */
int64_t mock_agent_replies(const struct mock_agent *m);
/* CPU time the agent's threads have used so far (ns), -1 if unknown: shows
 * whether the mock, rather than the code under test, is the bottleneck. */
int64_t mock_agent_cpu_ns(const struct mock_agent *m);
/* The X-Agent-Send-Ns stamps of the replies sent in [from_ns, to_ns), in
 * send order, into *out (caller frees; NULL when none): when the replies a
 * client must read arrived, for queueing bounds.  PS_ENOMEM when a stamp
 * was lost or no memory is left. */
int mock_agent_send_times(struct mock_agent *m, int64_t from_ns, int64_t to_ns, int64_t **out, size_t *n);
/* Stop the threads, drop unanswered requests, free.  NULL-safe. */
void mock_agent_stop(struct mock_agent *m);

#endif /* PS_ORCH_MOCK_AGENT_H */
