/* flush_track.h - counting final replies until libevent has written them.
 *
 * Shutdown waits for every final reply handed to libevent (evhttp_send_reply
 * or evhttp_send_reply_end) to reach the socket.  libevent reports a written
 * reply through the request's on-complete callback only: when the client
 * drops while the reply is still buffered (a client that stopped reading),
 * the connection is freed and that callback never runs, so a plain counter
 * stayed raised and shutdown waited out its whole grace time.  The
 * connection's close callback covers that case.
 *
 * Contract: flush_track(req, count, done, ud) before the final send:
 * increments *count; exactly once, when the reply is written or its
 * connection closes first, decrements it and calls done(ud) (NULL: none).
 * It installs the connection's close callback until then, so the caller
 * must have cleared its own (conn_closecb_set(c, NULL, NULL): conn_limit.h)
 * and must not set one on that connection until the reply is sent.  *count,
 * done and ud must outlive the connection (evhttp_free closes them all).
 * Returns 0, or PS_ENOMEM when nothing could be tracked (*count unchanged:
 * shutdown just does not wait for that reply). */
#ifndef PS_SERVER_FLUSH_TRACK_H
#define PS_SERVER_FLUSH_TRACK_H

#include <stdint.h>

struct evhttp_request;

int flush_track(struct evhttp_request *req, int32_t *count, void (*done)(void *ud), void *ud);

#endif /* PS_SERVER_FLUSH_TRACK_H */
