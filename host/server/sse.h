/* sse.h - starting a server-sent-events reply with libevent 2.1's evhttp.
 *
 * An SSE reply has no length: HTTP/1.1 frames it with chunked encoding,
 * HTTP/1.0 has none, so there the stream must end with the connection.
 * libevent 2.1 keeps a 1.0 connection whose request said "Connection:
 * keep-alive" (answering "Connection: keep-alive" and "Content-Length: 0"
 * before the events, and never closing), so sse_prepare_request drops that
 * request header before evhttp_send_reply_start: the 1.0 reply is then
 * close-delimited.  On 1.1 it changes nothing (persistence is the default
 * there).  libevent reads the header the same way (a value starting
 * "keep-alive", any case). */
#ifndef PS_SERVER_SSE_H
#define PS_SERVER_SSE_H

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

static inline void sse_prepare_request(struct evhttp_request *req)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *c;
    /* every such header: libevent reads the first one left */
    while ((c = evhttp_find_header(in, "Connection")) && !evutil_ascii_strncasecmp(c, "keep-alive", 10))
        evhttp_remove_header(in, "Connection");
}

#endif /* PS_SERVER_SSE_H */
