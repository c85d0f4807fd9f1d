/* conn_limit.h - open client connections of the evhttp server, counted
 * exactly and capped (max_connections), and the listener paused instead of
 * spinning when accept() fails for want of descriptors.
 *
 * Why this shape (libevent 2.1): evhttp tells nobody when it frees a server
 * connection except through the connection's close callback, and a
 * connection's first moment visible to us is evhttp_set_bevcb (called once
 * per accepted socket, before the evhttp_connection exists).  So:
 *   - conn_limit_accepted (from the bevcb) counts the connection, holds a
 *     reference on its bufferevent and queues it; an event made active there
 *     runs once evhttp has finished building the connection (later in the
 *     same loop turn, before any of its bytes are read) and installs our
 *     close callback on it: evhttp sets the bufferevent's callback argument
 *     to its evhttp_connection, checked against
 *     evhttp_connection_get_bufferevent.  A connection evhttp gave up on
 *     before that (its callbacks already cleared) is uncounted right there.
 *   - evhttp (2.1.12, http.c) frees a server connection only through
 *     evhttp_connection_free, which calls the close callback exactly once
 *     (fd still set, state never DISCONNECTED for incoming connections), on
 *     every path: client EOF or error, a reply with Connection: close,
 *     timeouts, evhttp_free at shutdown.  Connections that never send a
 *     byte are counted and uncounted like any other.
 *   - The close callback slot is one per connection and the request handlers
 *     need it too (client-left detection, flush_track.h): they set theirs
 *     with conn_closecb_set, which our close callback calls first.  Never
 *     call evhttp_connection_set_closecb on a server connection directly:
 *     it would replace ours and the connection would never be uncounted.
 *
 * Rejected alternatives: a filter bufferevent (free_context would be the
 * close hook) reports its output written once the bytes reach the socket
 * bufferevent, not the socket, so evhttp would free a Connection: close
 * reply's connection with the reply still buffered; our own listener cannot
 * hand an accepted socket to evhttp (2.1 has no public call for it).
 *
 * The gate: the listener is enabled iff open < max and no accept-error pause
 * is running.  At the cap it is disabled (paraserve_http_accept_paused_total
 * {reason="max_connections"}); new clients wait in the kernel's listen
 * backlog (128, evhttp's) and are accepted as soon as a connection closes.
 * accept() failing with EMFILE / ENFILE / ENOBUFS / ENOMEM leaves the
 * connection in the backlog (libevent 2.1 would retry at once, in a busy
 * loop): the listener pauses for CONN_ACCEPT_PAUSE_MS ({reason=
 * "accept_error"}), failures are logged at most once a second with a count.
 *
 * Metrics (struct metrics, rendered by metrics.c): conns_open, conns_max,
 * conns_accepted, accept_paused_cap, accept_paused_error.
 *
 * At most CONN_LIMIT_MAX_TRACKERS per process (serve: one for its clients'
 * port, one for its local agents' port, each with its own struct metrics):
 * conn_closecb_set and conn_oncomplete_set find a connection's tracker
 * without being passed it, as flush_track and the tasks API, which do not
 * know the server, call them too.  Everything runs on the loop thread.
 */
#ifndef PS_SERVER_CONN_LIMIT_H
#define PS_SERVER_CONN_LIMIT_H

#include <stdint.h>

#include <event2/util.h>

struct bufferevent;
struct event_base;
struct evconnlistener;
struct evhttp_connection;
struct evhttp_request;
struct metrics;
struct conn_limit;

#define CONN_ACCEPT_PAUSE_MS 100
#define CONN_LIMIT_MAX_TRACKERS 2

/* A tracker for at most max_conns (>= 1) open connections on `base`; `m`
 * (not owned, outlives it) receives the counts.  PS_EINVAL / PS_ENOMEM /
 * PS_EINTERNAL (libevent), or PS_OK with *out, which the caller frees with
 * conn_limit_free; PS_EINVAL also when CONN_LIMIT_MAX_TRACKERS exist. */
int  conn_limit_create(struct event_base *base, int32_t max_conns, struct metrics *m, struct conn_limit **out);

/* Gate `lev` (evhttp_bound_socket_get_listener of the bound socket; enabled)
 * and handle its accept errors.  Call conn_limit_unlisten before the listener
 * is freed (evhttp_del_accept_socket, evhttp_free).  PS_OK. */
int  conn_limit_listen(struct conn_limit *cl, struct evconnlistener *lev);
void conn_limit_unlisten(struct conn_limit *cl);

/* From the evhttp bevcb, for the bufferevent it returns (fd not set yet):
 * counts one open connection, and disables the listener when that reaches
 * the cap.  PS_ENOMEM: the connection is not tracked (never counted, never
 * uncounted; it is served as usual). */
int  conn_limit_accepted(struct conn_limit *cl, struct bufferevent *bev);

/* Idle timeout (0: none, the default): a tracked connection with no
 * request in flight - from its accept until its first request is complete
 * (slowloris), and from each reply's end until the next request is
 * complete (keep-alive) - is closed after idle_ms.  A request being served
 * (conn_limit_request, until its reply is sent) is not cut by that timer;
 * but a reply that makes no write progress for idle_ms (a client that
 * stopped reading, e.g. pipelining requests it never reads the answers
 * of) closes the connection, as a client gone would.
 * paraserve_http_idle_closed_total counts the idle closes (not the
 * stalled writes, which libevent's own path closes). */
void conn_limit_set_idle(struct conn_limit *cl, int32_t idle_ms);

/* Every request the server handles, first thing: stops its connection's
 * idle timer until the request's reply is complete (evhttp's on-complete
 * callback, which this takes: others set theirs with conn_oncomplete_set). */
void conn_limit_request(struct conn_limit *cl, struct evhttp_request *req);

/* evhttp_request_set_on_complete_cb for the server's requests: cb(req, arg)
 * runs when the reply is written, after the idle timer is re-armed.  One
 * per request (the last set wins).  Never call evhttp's directly on a
 * request conn_limit_request saw: it would replace the idle timer's and
 * the connection would never idle out. */
void conn_oncomplete_set(struct evhttp_request *req, void (*cb)(struct evhttp_request *, void *), void *arg);

/* Open connections now (0 when cl is NULL). */
int32_t conn_limit_open(const struct conn_limit *cl);

/* Call after evhttp_free (which closes every connection): releases what is
 * still queued and the tracker.  NULL-safe. */
void conn_limit_free(struct conn_limit *cl);

/* evhttp_connection_set_closecb for server connections: cb (NULL: none) is
 * called with arg when the connection closes, before it is uncounted.  Same
 * contract as libevent's (one callback per connection, the last set wins);
 * connections no tracker knows get libevent's own. */
void conn_closecb_set(struct evhttp_connection *c, void (*cb)(struct evhttp_connection *, void *), void *arg);

/* What a client that evhttp is not reading from (a reply is pending) has
 * done, peeked without consuming: CONN_PEER_QUIET (nothing yet),
 * CONN_PEER_BYTES (a pipelined request: stop watching, evhttp will read
 * it) or CONN_PEER_GONE (EOF or a socket error: the client left). */
enum conn_peer { CONN_PEER_QUIET, CONN_PEER_BYTES, CONN_PEER_GONE };
enum conn_peer conn_peer_probe(evutil_socket_t fd);

#endif /* PS_SERVER_CONN_LIMIT_H */
