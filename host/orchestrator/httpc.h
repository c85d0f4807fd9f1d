/* httpc.h - outbound HTTP(S) on a libevent loop, so thousands of agent calls
 * share the event-loop thread and never block it.  Two paths, one contract:
 *   - plain http:// to a numeric IPv4/IPv6 host (loopback and LAN agents,
 *     the mock agents): httpc's own HTTP/1.1 client with a keep-alive pool
 *     per host:port.  The request is written from httpc_request() itself (no
 *     loop turn before it leaves; with I/O threads, below, it is handed to
 *     one at the end of the loop turn), one persistent read event per connection
 *     (no epoll changes per request), Content-Length, chunked and
 *     close-delimited replies; a reused connection that the server closed
 *     before replying is retried once on a fresh one (as curl does).
 *   - everything else (https, host names, user:pass@, a proxy set in the
 *     environment - but never for a loopback address, 127.0.0.0/8 or ::1,
 *     which no proxy is used for): libcurl multi driven by its socket API
 *     (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION mapped to libevent
 *     events); TLS is libcurl's (OpenSSL build).
 * PARASERVE_HTTPC=curl in the environment sends everything through curl.
 *
 * Every function must be called on the loop's thread.  A request ends in
 * exactly one of: its done callback (once), or httpc_cancel() (no callback
 * afterwards).  Responses over HTTPC_MAX_BODY bytes fail as transport errors.
 */
#ifndef PS_ORCH_HTTPC_H
#define PS_ORCH_HTTPC_H

#include <stddef.h>
#include <stdint.h>

#define HTTPC_MAX_BODY (16u << 20)

struct event_base;
struct httpc;
struct httpc_req;

struct httpc_response {
    int         transport_error; /* 0, or a CURLcode (both paths): no complete HTTP reply */
    const char *error;           /* transport error message ("" when none) */
    long        status;          /* HTTP status when transport_error == 0 */
    const char *body;            /* NUL-terminated; valid during the callback */
    size_t      body_len;
    const char *content_type;    /* NULL when absent */
    const char *session_id;      /* Mcp-Session-Id reply header, NULL when absent */
    int64_t     agent_recv_ns;   /* X-Agent-Recv-Ns reply header (CLOCK_MONOTONIC), 0 if absent */
    int64_t     agent_send_ns;   /* X-Agent-Send-Ns reply header, 0 if absent */
};

typedef void (*httpc_done_fn)(void *ud, const struct httpc_response *resp);

struct httpc *httpc_create(struct event_base *base);
/* Cancels every outstanding request (no callbacks) and frees. NULL-safe. */
void httpc_destroy(struct httpc *h);

/* Start a request.  `method` is "POST" (body sent), "GET" or "DELETE"; `headers`
 * are "Name: value" lines (two NULL-terminated lists, either may be NULL),
 * copied.  `body` is copied.  timeout_ms 0 = none (the executor enforces
 * call timeouts itself).  `ca_file`: a PEM bundle that verifies an https
 * server instead of the system's CAs (NULL: the system's; the peer and
 * host name are always verified).  Returns NULL (with ps_error_set) on
 * failure to start; the callback is then never called. */
struct httpc_req *httpc_request(struct httpc *h, const char *method, const char *url,
                                char *const *headers, char *const *headers2,
                                const char *body, size_t body_len, long timeout_ms,
                                const char *ca_file, httpc_done_fn done, void *ud);

/* Optional, set right after httpc_request() (before the loop turns: with
 * I/O threads that is what keeps the request on the loop; later it would
 * have no effect there): called on the loop after each
 * read of body bytes of a 2xx reply (the body so far, NUL-terminated; it
 * may end inside a line, so the callback should look at complete units of
 * its own and remember how far it looked); returning
 * 1 ends the request at once, the body so far delivered as a complete reply
 * (its connection is not reused).  For replies whose end the caller can
 * tell from their content while the server keeps them open (an MCP SSE
 * stream that already carries the awaited response). */
typedef int (*httpc_peek_fn)(void *ud, const char *body, size_t len);
void httpc_set_peek(struct httpc_req *r, httpc_peek_fn peek);

/* Run plain-http fast-path requests (see above) on n I/O threads ("lanes",
 * 0..HTTPC_MAX_IO_THREADS; 0, the default: on the loop's own thread), each
 * with its own event loop and keep-alive pools.  A request the loop does
 * not write itself (httpc_set_lane_inline) goes to a lane the loop counts
 * an idle connection to its host:port in, else to the next lane in turn.
 * The contract above is unchanged: every function is still
 * called on the loop's thread, callbacks run there, and a cancelled
 * request never calls back.  What moves to the lanes is the socket work
 * (connect, send, recv, HTTP parsing), so one loop can drive more calls
 * per second than its own core could carry.  Requests made during one
 * loop turn are handed over together at its end (one lock and at most one
 * wakeup per lane); replies come back in batches the same way; the first
 * few of each turn stay on the loop (httpc_set_lane_inline).  Requests
 * given a peek function stay on the loop.  Call once, before any request.
 * PS_OK, PS_EINVAL (bad n, or called twice / too late), PS_ENOMEM,
 * PS_EINTERNAL (no thread or eventfd). */
#define HTTPC_MAX_IO_THREADS 64
int httpc_set_io_threads(struct httpc *h, int n);
/* With I/O threads: the first n plain-http requests of each loop turn are
 * still written by the loop itself (default 8), so a loop that is not busy
 * sends at once instead of paying a handover and a wakeup; a turn that
 * makes more (a burst) hands the rest to the lanes.  Within the n, a
 * request whose agent has no idle connection in the loop's pool but has
 * one on a lane goes to that lane rather than open a new connection.  0: every one goes to
 * a lane (tests of the lanes themselves).  PARASERVE_HTTPC_LANE_INLINE in
 * the environment sets the default for every httpc created afterwards. */
void httpc_set_lane_inline(struct httpc *h, int n);
/* Requests handed to I/O threads so far. */
int64_t httpc_lane_requests(const struct httpc *h);
int httpc_io_threads(const struct httpc *h);
/* CPU time the I/O threads have used so far (ns; 0 without them, -1 if
 * a thread's clock cannot be read). */
int64_t httpc_io_cpu_ns(const struct httpc *h);

/* Abort a request that has not called back yet; frees it.  NULL-safe. */
void httpc_cancel(struct httpc_req *r);

/* Requests in flight (for leak checks and metrics). */
int httpc_active(const struct httpc *h);
/* Connections the fast path has opened so far (each costs a handshake:
 * benchmarks set it beside the round trips). */
int64_t httpc_connects(const struct httpc *h);

/* CLOCK_MONOTONIC in nanoseconds: the clock of every timing in the
 * orchestrator and of the mock agents' X-Agent-* headers. */
int64_t orch_now_ns(void);

#endif /* PS_ORCH_HTTPC_H */
