/* mock_agent.h - an HTTP agent for tests and benchmarks, served by libevent
 * on its own thread (loopback).  It answers POST with JSON args:
 *   sleep_ms  reply after this many milliseconds (default 0)
 *   fault     "hang" (never reply), "5xx" (503), "4xx" (400), "nonjson"
 *             (200 with a non-JSON body), "drop" (close the connection
 *             without replying), "flaky" (503 on the first `fail_times`
 *             requests carrying the same `key`, then ok)
 * Replies {"ok":true,"args":<args>} with X-Agent-Recv-Ns / X-Agent-Send-Ns
 * headers (CLOCK_MONOTONIC) so callers can measure their own overhead.
 */
#ifndef PS_ORCH_MOCK_AGENT_H
#define PS_ORCH_MOCK_AGENT_H

#include <stdint.h>

struct mock_agent;

/* Start on 127.0.0.1:port (0 = any free port).  NULL on failure. */
struct mock_agent *mock_agent_start(int port);
int mock_agent_port(const struct mock_agent *m);
/* Requests received so far (thread-safe read). */
int64_t mock_agent_requests(const struct mock_agent *m);
/* Replies actually sent (not counting hangs, drops, cancelled sleeps). */
int64_t mock_agent_replies(const struct mock_agent *m);
void mock_agent_stop(struct mock_agent *m);

#endif /* PS_ORCH_MOCK_AGENT_H */
