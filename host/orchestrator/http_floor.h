/* http_floor.h - the CPU floor of one loopback HTTP/1.1 keep-alive round
 * trip: a minimal client (one epoll loop, requests written with one send(),
 * replies framed by Content-Length, no JSON, no allocation per request)
 * keeps `conns` requests in flight against an agent until `requests` have
 * been answered.  Benchmarks set the CPU it and the agent spend per request
 * beside the executor's own cost per call: what any client of this agent
 * would pay on this machine, so an efficiency can be compared with the
 * bound the hardware allows.
 *
 * The keep-alive round trips are timed after the connections are open and
 * have each carried one reply; opening them (connect + first round trip)
 * is timed apart, so the cost of a fresh connection is known too.  Runs on
 * the calling thread and blocks until done; not for the event-loop thread
 * of a server.
 */
#ifndef PS_ORCH_HTTP_FLOOR_H
#define PS_ORCH_HTTP_FLOOR_H

#include <stdint.h>

struct http_floor_stats {
    int64_t requests;      /* round trips completed in the timed part */
    double  client_cpu_s;  /* this thread's CPU over the timed part */
    double  wall_s;        /* wall time of the timed part */
    double  peer_cpu_s;    /* peer_cpu_ns() delta over the timed part; -1 without it */
    /* The open phase before it, timed apart: `opened` connections opened at
     * once (non-blocking connect, request written at once, as the executor
     * does in a burst), each carrying its first round trip. */
    int64_t opened;
    double  open_client_cpu_s;
    double  open_peer_cpu_s;  /* -1 without peer_cpu_ns */
};

/* CPU time of the agent (ns, or -1 when unknown), sampled when timing
 * starts and stops: e.g. mock_agent_cpu_ns for the in-process mock. */
typedef int64_t (*http_floor_cpu_fn)(void *ud);

/* POST `body` (JSON text, borrowed) to http://127.0.0.1:port`path` over
 * `conns` keep-alive connections (1..4096), `requests` (>= conns) times in
 * the timed part.  Every reply must be a complete HTTP/1.1 response with
 * Content-Length (status not checked: the agent's CPU is what counts).
 * peer_cpu_ns may be NULL.
 * Returns PS_OK with *out filled, PS_EINVAL for bad arguments, PS_EIO when a
 * connection fails or a reply cannot be framed, PS_ENOMEM (ps_error_set
 * says which). */
int http_floor_run(int port, const char *path, const char *body, int conns, int64_t requests,
                   http_floor_cpu_fn peer_cpu_ns, void *peer_ud, struct http_floor_stats *out);

#endif /* PS_ORCH_HTTP_FLOOR_H */
