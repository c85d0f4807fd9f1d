/* test_orch_httpc.c - the outbound HTTP client's keep-alive fast path
 * (httpc.c) against a scripted raw TCP server: Content-Length, chunked
 * (split across writes, with extensions and trailers), close-delimited and
 * 100-Continue replies; connection reuse; a keep-alive connection the server
 * closed while idle is retried once on a fresh one; empty, partial and
 * oversized replies, connection refused, request timeout and cancel give
 * transport errors (never a callback before httpc_request returns).  All of
 * it runs twice: on the loop's own thread and on one I/O lane
 * (httpc_set_io_threads), where the same connection counts must hold; a
 * pool warmed by a burst stays warm for the same load in small turns; then
 * three lanes take hundreds of requests cancelled in every state a job can
 * be in (not yet handed over, in flight, finished on its way back), and an
 * httpc destroyed with requests in all of them (ASan: no leak, no use after
 * free). */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "common/status.h"
#include "orchestrator/httpc.h"
#include "orchestrator/httpc_parse.h"
#include "test_http_server.h"
#include "test_util.h"

/* ---- scripted server: one thread per connection, replies chosen by path ---- */

static int srv_fd = -1;
static int srv_port;
static atomic_int srv_accepts;
static atomic_int srv_requests;
static atomic_int srv_conns_open;

static void send_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k <= 0)
            return;
        s += k;
        n -= (size_t)k;
    }
}

static void send_str(int fd, const char *s) { send_all(fd, s, strlen(s)); }

static void *conn_thread(void *ud)
{
    int fd = (int)(intptr_t)ud;
    char buf[8192];
    size_t len = 0;
    size_t head, clen;
    while (test_http_read_request(fd, buf, sizeof buf, &len, &head, &clen)) {
        char path[64] = "";
        sscanf(buf, "%*s %63s", path);
        int has_host = strstr(buf, "\r\nHost: 127.0.0.1:") != NULL;
        int has_expect = strcasestr(buf, "\r\nExpect:") != NULL;
        char body[256];
        snprintf(body, sizeof body, "%.*s", (int)clen, buf + head);
        test_http_consume(buf, &len, head, clen);
        atomic_fetch_add(&srv_requests, 1);
        if (!strcmp(path, "/len")) {
            char r[512];
            /* echoes the body; says whether Host was sent and Expect was not */
            snprintf(r, sizeof r, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "X-Agent-Recv-Ns: 7\r\nX-Agent-Send-Ns: 9\r\nMcp-Session-Id: s1\r\n"
                     "Content-Length: %zu\r\n\r\n%s%s", strlen(body) + 2, body,
                     has_host && !has_expect ? "ok" : "no");
            send_str(fd, r);
        } else if (!strcmp(path, "/chunked")) {
            static const char *const parts[] = {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", "\r\n3\r", "\nabc\r\n4;ext=1\r\nde",
                "fg\r\n", "0\r\nX-Trailer: 1\r\n", "\r\n",
            };
            for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
                send_str(fd, parts[i]);
                usleep(5000);
            }
        } else if (!strcmp(path, "/close")) {
            send_str(fd, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-");
            usleep(5000);
            send_str(fd, "delimited");
            goto out;
        } else if (!strcmp(path, "/continue")) {
            send_str(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
        } else if (!strcmp(path, "/drop")) {
            goto out;
        } else if (!strcmp(path, "/partial")) {
            send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
            goto out;
        } else if (!strcmp(path, "/big")) {
            char r[128];
            snprintf(r, sizeof r, "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\nxx", HTTPC_MAX_BODY + 1);
            send_str(fd, r);
        } else if (!strcmp(path, "/idle-close")) {
            /* reply with keep-alive, then close as an idle timeout would */
            send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            usleep(20000);
            goto out;
        } else if (!strcmp(path, "/slow")) {
            usleep(30000);
            send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        } else if (!strcmp(path, "/hang")) {
            /* never reply; wait for the client to leave */
        } else {
            send_str(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    }
out:
    close(fd);
    atomic_fetch_sub(&srv_conns_open, 1);
    return NULL;
}

static void *accept_thread(void *ud)
{
    for (;;) {
        int fd = accept(srv_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        atomic_fetch_add(&srv_accepts, 1);
        atomic_fetch_add(&srv_conns_open, 1);
        pthread_t t;
        if (pthread_create(&t, NULL, conn_thread, (void *)(intptr_t)fd)) {
            close(fd);
            atomic_fetch_sub(&srv_conns_open, 1);
            continue;
        }
        pthread_detach(t);
    }
}

static int srv_start(pthread_t *th)
{
    srv_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (srv_fd < 0 || bind(srv_fd, (struct sockaddr *)&sa, sizeof sa) || listen(srv_fd, 64) ||
        getsockname(srv_fd, (struct sockaddr *)&sa, &sl))
        return -1;
    srv_port = ntohs(sa.sin_port);
    return pthread_create(th, NULL, accept_thread, NULL);
}

/* ---- client side ------------------------------------------------------------ */

struct result {
    int    calls;
    int    transport_error;
    long   status;
    char   body[256];
    char   ctype[64];
    char   sid[16];
    int64_t recv_ns, send_ns;
};

static struct event_base *base;
static struct httpc *http;
static int pending;
static int in_request;           /* set while httpc_request() runs */
static int early_callbacks;      /* callbacks that came from inside httpc_request() */
static pthread_t loop_thread;
static int foreign_callbacks;    /* callbacks that ran on another thread */

static void on_done(void *ud, const struct httpc_response *resp)
{
    struct result *r = ud;
    if (in_request)
        early_callbacks++;
    if (!pthread_equal(pthread_self(), loop_thread))
        foreign_callbacks++;
    r->calls++;
    r->transport_error = resp->transport_error;
    r->status = resp->status;
    snprintf(r->body, sizeof r->body, "%.*s", (int)(resp->body_len < 200 ? resp->body_len : 200), resp->body);
    snprintf(r->ctype, sizeof r->ctype, "%s", resp->content_type ? resp->content_type : "");
    snprintf(r->sid, sizeof r->sid, "%s", resp->session_id ? resp->session_id : "");
    r->recv_ns = resp->agent_recv_ns;
    r->send_ns = resp->agent_send_ns;
    if (--pending == 0)
        event_base_loopbreak(base);
}

static struct httpc_req *start(const char *path, int port, const char *body, long timeout_ms, struct result *r)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    static char *const hs[] = { "Content-Type: application/json", "Expect:", NULL };
    memset(r, 0, sizeof *r);
    pending++;
    in_request = 1;
    struct httpc_req *q = httpc_request(http, "POST", url, hs, NULL, body, strlen(body), timeout_ms, NULL, on_done, r);
    in_request = 0;
    CHECK_MSG(q != NULL, "httpc_request %s failed", path);
    if (!q)
        pending--;
    return q;
}

static void run_loop(void)
{
    struct timeval tv = { 5, 0 };
    if (pending)
        event_base_loopexit(base, &tv);     /* a hung test fails instead of hanging ctest */
    if (pending)
        event_base_dispatch(base);
    CHECK_MSG(pending == 0, "%d request(s) never called back", pending);
}

/* /idle-close: request 2 is started from request 1's callback after the
 * server has closed the connection, before the loop could notice. */
static struct result idle2;
static void on_idle1(void *ud, const struct httpc_response *resp)
{
    usleep(60000);
    start("/len", srv_port, "again", 0, &idle2);
    on_done(ud, resp);
}

/* ---- the reply parser alone (httpc_parse.h) ---- */

/* Deliver s[0..n) `step` bytes at a time (0: at once), each time in a
 * buffer of exactly the bytes received, as a reply on a connection that
 * then reaches EOF.  1: complete, -1: failed (message in msg), 2: truncated. */
static int parse_reply(const char *s, size_t n, size_t step, struct httpc_reply *r, char *msg, size_t msglen)
{
    char *in = NULL;
    size_t in_len = 0, off = 0;
    int rc = 0;
    memset(r, 0, sizeof *r);
    msg[0] = 0;
    for (;;) {
        size_t c = step && step < n - off ? step : n - off;
        char *nb = malloc(in_len + c + 1);
        if (in_len)
            memcpy(nb, in, in_len);
        memcpy(nb + in_len, s + off, c);
        free(in);
        in = nb;
        in_len += c;
        off += c;
        if (!r->head_done)
            rc = httpc_reply_parse_head(r, in, &in_len, msg, msglen);
        if (r->head_done)
            rc = httpc_reply_parse_body(r, in, &in_len, msg, msglen);
        if (rc)
            break;
        if (off == n) {
            rc = r->head_done && r->framing == HB_EOF ? 1 : 2;
            break;
        }
    }
    free(in);
    return rc;
}

static void parser_cases(void)
{
    static const char *const head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    struct httpc_reply r;
    char msg[160], buf[8192];
    for (size_t step = 0; step <= 3; step++) {
        /* valid: extension, trailer */
        snprintf(buf, sizeof buf, "%s5;x=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nT: 1\r\n\r\n", head);
        CHECK_MSG(parse_reply(buf, strlen(buf), step, &r, msg, sizeof msg) == 1 && r.len == 15 &&
                  !memcmp(r.body, "hello0123456789", 15), "step %zu: %s", step, msg);
        httpc_reply_clear(&r);
        /* A blank chunk-size line: strtoull skipped the line end and took
         * the size from the next line (an empty body at once; past the
         * received bytes when fed in pieces). */
        snprintf(buf, sizeof buf, "%s  \r\n0\r\nhello\r\n0\r\n\r\n", head);
        CHECK_MSG(parse_reply(buf, strlen(buf), step, &r, msg, sizeof msg) == -1 &&
                  !strcmp(msg, "bad chunked encoding"), "step %zu: blank size line: %s", step, msg);
        httpc_reply_clear(&r);
        /* signs and 0x are not chunk sizes */
        static const char *const bad[] = { "+5", "-0", "0x5", " 5" };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            snprintf(buf, sizeof buf, "%s%s\r\nhello\r\n0\r\n\r\n", head, bad[i]);
            CHECK_MSG(parse_reply(buf, strlen(buf), step, &r, msg, sizeof msg) == -1,
                      "step %zu: chunk size '%s' accepted", step, bad[i]);
            httpc_reply_clear(&r);
        }
        /* A chunk extension over HTTPC_CHUNK_LINE_MAX fails however it
         * arrives (it failed only when split before its line end). */
        int k = snprintf(buf, sizeof buf, "%s5;", head);
        memset(buf + k, 'e', 5000);
        snprintf(buf + k + 5000, sizeof buf - (size_t)k - 5000, "\r\nhello\r\n0\r\n\r\n");
        CHECK_MSG(parse_reply(buf, strlen(buf), step ? 1000 * step : 0, &r, msg, sizeof msg) == -1,
                  "step %zu: long chunk line accepted", step);
        httpc_reply_clear(&r);
    }
}

/* Optional whitespace is SP or HTAB (RFC 9110 5.6.3, RFC 9112 7.1.1): a
 * field value with a tab after it, or a tab before a chunk extension, is a
 * legal reply (both failed: "bad Content-Length", "bad chunked encoding"). */
static void parser_tabs_are_whitespace(void)
{
    static const char *const ok[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\t\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length:\t2 \t\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\t;x=1\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\t\r\nok\r\n0\r\n\r\n",
    };
    struct httpc_reply r;
    char msg[160];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        for (size_t step = 0; step <= 3; step++) {
            int rc = parse_reply(ok[i], strlen(ok[i]), step, &r, msg, sizeof msg);
            CHECK_MSG(rc == 1 && r.len == 2 && !memcmp(r.body, "ok", 2), "reply %zu step %zu: %d %s", i, step, rc,
                      msg);
            httpc_reply_clear(&r);
        }
    /* the value itself is trimmed of tabs too */
    const char *ct = "HTTP/1.1 200 OK\r\nContent-Type: application/json\t\r\nContent-Length: 0\r\n\r\n";
    CHECK(parse_reply(ct, strlen(ct), 0, &r, msg, sizeof msg) == 1 && r.content_type &&
          !strcmp(r.content_type, "application/json"));
    httpc_reply_clear(&r);
}

/* Everything a single connection pool must do, on the loop (lanes 0) or
 * on one I/O lane, which must behave the same, connection counts included. */
static void client_cases(int lanes)
{
    http = httpc_create(base);
    CHECK(http && httpc_set_io_threads(http, lanes) == PS_OK && httpc_io_threads(http) == lanes);
    if (!http)
        return;
    httpc_set_lane_inline(http, 0);        /* every request on the lane */
    struct result a, b, c;

    /* Content-Length reply, headers callers see, and reuse of one connection. */
    int acc0 = atomic_load(&srv_accepts);
    for (int i = 0; i < 5; i++) {
        start("/len", srv_port, "{\"x\":1}", 0, &a);
        run_loop();
        CHECK(a.calls == 1 && a.transport_error == 0 && a.status == 200);
        CHECK_MSG(!strcmp(a.body, "{\"x\":1}ok"), "body '%s'", a.body);
    }
    CHECK(!strcmp(a.ctype, "application/json") && !strcmp(a.sid, "s1"));
    CHECK(a.recv_ns == 7 && a.send_ns == 9);
    CHECK_MSG(atomic_load(&srv_accepts) - acc0 == 1, "5 sequential requests used %d connections",
              atomic_load(&srv_accepts) - acc0);

    /* Two at once need a second connection; both come back to the pool. */
    acc0 = atomic_load(&srv_accepts);
    start("/len", srv_port, "1", 0, &a);
    start("/len", srv_port, "2", 0, &b);
    run_loop();
    CHECK(!strcmp(a.body, "1ok") && !strcmp(b.body, "2ok"));
    start("/len", srv_port, "3", 0, &a);
    start("/len", srv_port, "4", 0, &b);
    run_loop();
    CHECK(!strcmp(a.body, "3ok") && !strcmp(b.body, "4ok"));
    CHECK_MSG(atomic_load(&srv_accepts) - acc0 == 1, "opened %d connections", atomic_load(&srv_accepts) - acc0);

    /* Chunked, split across writes; close-delimited HTTP/1.0; 100 Continue. */
    start("/chunked", srv_port, "", 0, &a);
    start("/close", srv_port, "", 0, &b);
    start("/continue", srv_port, "", 0, &c);
    run_loop();
    CHECK_MSG(a.transport_error == 0 && a.status == 200 && !strcmp(a.body, "abcdefg"),
              "chunked: err %d status %ld body '%s'", a.transport_error, a.status, a.body);
    CHECK_MSG(b.transport_error == 0 && !strcmp(b.body, "close-delimited"), "close: err %d body '%s'",
              b.transport_error, b.body);
    CHECK_MSG(c.transport_error == 0 && c.status == 201 && !strcmp(c.body, "ok"), "continue: %ld '%s'",
              c.status, c.body);

    /* Failures: no reply, a cut reply, one over the size limit. */
    start("/drop", srv_port, "", 0, &a);
    start("/partial", srv_port, "", 0, &b);
    start("/big", srv_port, "", 0, &c);
    run_loop();
    CHECK_MSG(a.transport_error == CURLE_GOT_NOTHING, "drop: %d", a.transport_error);
    CHECK_MSG(b.transport_error == CURLE_PARTIAL_FILE, "partial: %d", b.transport_error);
    CHECK_MSG(c.transport_error == CURLE_FILESIZE_EXCEEDED, "big: %d", c.transport_error);

    /* A pooled connection the server closed while idle: resent on a fresh one. */
    acc0 = atomic_load(&srv_accepts);
    struct result i1;
    memset(&i1, 0, sizeof i1);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/idle-close", srv_port);
    pending++;
    CHECK(httpc_request(http, "POST", url, NULL, NULL, "", 0, 0, NULL, on_idle1, &i1) != NULL);
    run_loop();
    CHECK(i1.calls == 1 && i1.status == 200);
    CHECK_MSG(idle2.calls == 1 && idle2.transport_error == 0 && !strcmp(idle2.body, "againok"),
              "after idle close: err %d body '%s'", idle2.transport_error, idle2.body);
    CHECK_MSG(atomic_load(&srv_accepts) - acc0 == 2, "idle close: %d connections", atomic_load(&srv_accepts) - acc0);

    /* Timeout, then cancel: the server sees both connections go. */
    start("/hang", srv_port, "", 150, &a);
    run_loop();
    CHECK_MSG(a.transport_error == CURLE_OPERATION_TIMEDOUT, "hang: %d", a.transport_error);
    memset(&b, 0, sizeof b);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hang", srv_port);
    struct httpc_req *q = httpc_request(http, "POST", url, NULL, NULL, "", 0, 0, NULL, on_done, &b);
    CHECK(q != NULL);
    struct timeval tv = { 0, 50000 };
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    httpc_cancel(q);
    CHECK(b.calls == 0);

    /* Connection refused: delivered on the loop, never from httpc_request. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    CHECK(fd >= 0 && !bind(fd, (struct sockaddr *)&sa, sizeof sa) && !getsockname(fd, (struct sockaddr *)&sa, &sl));
    start("/len", ntohs(sa.sin_port), "", 0, &a);    /* bound, not listening: refused */
    run_loop();
    close(fd);
    CHECK_MSG(a.transport_error == CURLE_COULDNT_CONNECT, "refused: %d", a.transport_error);
    CHECK(early_callbacks == 0);
    CHECK(httpc_active(http) == 0);

    /* A proxy in the environment (here a port that refuses) is never used
     * for loopback addresses, on the fast path or through curl: it would
     * see the request's headers (serve's local agents' token). */
    httpc_destroy(http);
    http = NULL;
    setenv("http_proxy", "http://127.0.0.1:9", 1);
    for (int curl = 0; curl < 2; curl++) {
        if (curl)
            setenv("PARASERVE_HTTPC", "curl", 1);
        http = httpc_create(base);
        CHECK(http && httpc_set_io_threads(http, lanes) == PS_OK);
        if (!http)
            break;
        httpc_set_lane_inline(http, 0);
        start("/len", srv_port, "p", 0, &a);
        run_loop();
        CHECK_MSG(a.transport_error == 0 && !strcmp(a.body, "pok"), "%s with http_proxy set: err %d body '%s'",
                  curl ? "curl" : "fast path", a.transport_error, a.body);
        httpc_destroy(http);
        http = NULL;
    }
    unsetenv("http_proxy");
    unsetenv("PARASERVE_HTTPC");
}

/* ---- three lanes: cancels in every job state, peeks, destroy ---------------- */

#define STRESS_N 300

static struct result stress_res[STRESS_N];
static struct httpc_req *stress_req[STRESS_N];
static int stress_cancelled[STRESS_N];
static int stress_first_seen;

/* The first reply to arrive waits until the lanes have finished the rest
 * (their replies are then on their way back, or already queued behind this
 * callback), and cancels every odd one still open: the jobs that were
 * DONE in transit must be dropped, those on the done list unlinked. */
static void on_stress(void *ud, const struct httpc_response *resp)
{
    struct result *r = ud;
    int idx = (int)(r - stress_res);
    stress_req[idx] = NULL;
    if (!stress_first_seen) {
        stress_first_seen = 1;
        usleep(100000);
        for (int i = 1; i < STRESS_N; i += 2)
            if (stress_req[i]) {
                httpc_cancel(stress_req[i]);
                stress_req[i] = NULL;
                stress_cancelled[i] = 1;
                pending--;
            }
    }
    on_done(ud, resp);
}

static int peek_calls, peek_foreign;
static int on_peek(void *ud, const char *body, size_t len)
{
    peek_calls++;
    if (!pthread_equal(pthread_self(), loop_thread))
        peek_foreign++;
    return len >= 3 && !memcmp(body, "abc", 3);
}

static void lanes_stress(void)
{
    http = httpc_create(base);
    CHECK(http && httpc_set_io_threads(http, 3) == PS_OK);
    if (!http)
        return;
    CHECK(httpc_set_io_threads(http, 2) == PS_EINVAL);          /* once only */

    /* By default the first HC_LANE_INLINE (8) requests of a loop turn are
     * the loop's own, the rest of a burst goes to the lanes. */
    {
        struct result few[20];
        int64_t l0 = httpc_lane_requests(http);
        for (int i = 0; i < 3; i++)
            start("/len", srv_port, "i", 0, &few[i]);
        run_loop();
        CHECK_MSG(httpc_lane_requests(http) == l0, "3 requests in a turn: %lld to lanes",
                  (long long)(httpc_lane_requests(http) - l0));
        for (int i = 0; i < 20; i++)
            start("/len", srv_port, "b", 0, &few[i]);
        run_loop();
        CHECK_MSG(httpc_lane_requests(http) == l0 + 12, "20 requests in a turn: %lld to lanes",
                  (long long)(httpc_lane_requests(http) - l0));
        for (int i = 0; i < 20; i++)
            CHECK(few[i].calls == 1 && !strcmp(few[i].body, "bok"));
    }
    httpc_set_lane_inline(http, 0);        /* the rest: every request on a lane */
    char url[128];

    /* Cancelled before the loop turn ends (never handed to a lane), and
     * cancelled while in flight on a lane (/hang): no callback, and the
     * server sees each in-flight connection closed. */
    int open0 = atomic_load(&srv_conns_open);
    struct result hang[40];
    struct httpc_req *hq[40];
    for (int i = 0; i < 40; i++) {
        hq[i] = start(i % 2 ? "/hang" : "/len", srv_port, "x", 0, &hang[i]);
        if (i % 4 == 0) {                  /* not yet posted */
            httpc_cancel(hq[i]);
            hq[i] = NULL;
            pending--;
        }
    }
    struct timeval tv = { 0, 100000 };
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);             /* the /len ones reply; the /hang ones wait */
    for (int i = 0; i < 40; i++)
        if (i % 2 && hq[i]) {
            CHECK(hang[i].calls == 0);
            httpc_cancel(hq[i]);           /* LIVE on its lane */
            pending--;
        }
    CHECK_MSG(pending == 0, "%d requests open after the cancels", pending);
    int calls = 0;
    for (int i = 0; i < 40; i++) {
        calls += hang[i].calls;
        if (i % 4 == 0 || i % 2)
            CHECK_MSG(hang[i].calls == 0, "request %d was cancelled but called back", i);
    }
    CHECK_MSG(calls == 10, "%d of the 10 uncancelled requests called back", calls);
    for (int i = 0; i < 300 && atomic_load(&srv_conns_open) > open0 + 3 * 4; i++)
        usleep(10000);
    /* the /len connections stay pooled (at most a few per lane); every
     * cancelled /hang connection was closed */
    CHECK_MSG(atomic_load(&srv_conns_open) <= open0 + 3 * 4, "%d server connections open, %d before",
              atomic_load(&srv_conns_open), open0);

    /* Cancels of replies already on their way back (see on_stress). */
    memset(stress_cancelled, 0, sizeof stress_cancelled);
    stress_first_seen = 0;
    for (int i = 0; i < STRESS_N; i++) {
        char body[16];
        snprintf(body, sizeof body, "%d", i);
        stress_req[i] = NULL;
        memset(&stress_res[i], 0, sizeof stress_res[i]);
        snprintf(url, sizeof url, "http://127.0.0.1:%d/len", srv_port);
        pending++;
        stress_req[i] = httpc_request(http, "POST", url, NULL, NULL, body, strlen(body), 0, NULL, on_stress,
                                      &stress_res[i]);
        CHECK(stress_req[i] != NULL);
    }
    run_loop();
    int ok = 0, cancelled = 0;
    for (int i = 0; i < STRESS_N; i++) {
        char want[24];
        snprintf(want, sizeof want, "%dok", i);
        if (stress_cancelled[i]) {
            cancelled++;
            CHECK_MSG(stress_res[i].calls == 0, "request %d was cancelled but called back", i);
        } else {
            ok += stress_res[i].calls == 1 && stress_res[i].transport_error == 0 &&
                  !strcmp(stress_res[i].body, want);
        }
    }
    CHECK_MSG(ok + cancelled == STRESS_N, "%d ok + %d cancelled of %d", ok, cancelled, STRESS_N);
    CHECK_MSG(cancelled > 0, "no request was still open when the first replied");
    CHECK(httpc_active(http) == 0);
    CHECK_MSG(foreign_callbacks == 0, "%d callbacks ran off the loop's thread", foreign_callbacks);

    /* A request given a peek function runs on the loop, peeks included. */
    struct result pr;
    memset(&pr, 0, sizeof pr);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/chunked", srv_port);
    pending++;
    struct httpc_req *pq = httpc_request(http, "POST", url, NULL, NULL, "", 0, 0, NULL, on_done, &pr);
    httpc_set_peek(pq, on_peek);
    run_loop();
    CHECK_MSG(pr.calls == 1 && pr.transport_error == 0 && !strncmp(pr.body, "abc", 3),
              "peeked request: err %d body '%s'", pr.transport_error, pr.body);
    CHECK(peek_calls >= 1 && peek_foreign == 0);

    /* ... at any place in a long loop turn: a lane gets its waiting jobs
     * every HC_LANE_BATCH, never the one httpc_request just returned. */
    for (int before = 0; before <= 3 * 17; before++) {
        struct result fill[64];
        for (int i = 0; i < before; i++)
            start("/len", srv_port, "f", 0, &fill[i]);
        memset(&pr, 0, sizeof pr);
        peek_calls = 0;
        pending++;
        pq = httpc_request(http, "POST", url, NULL, NULL, "", 0, 0, NULL, on_done, &pr);
        httpc_set_peek(pq, on_peek);
        run_loop();
        CHECK_MSG(pr.calls == 1 && peek_calls >= 1 && peek_foreign == 0,
                  "peek after %d requests in the same turn: %d calls, %d peeks", before, pr.calls, peek_calls);
    }

    /* Destroyed with requests in every state: not posted, in flight
     * (/hang), finished and queued back; no callback afterwards. */
    struct result last[30];
    for (int i = 0; i < 30; i++)
        start(i % 3 == 0 ? "/hang" : "/len", srv_port, "z", 0, &last[i]);
    struct timeval tv2 = { 0, 30000 };
    event_base_loopexit(base, &tv2);
    event_base_dispatch(base);
    for (int i = 0; i < 30; i++)
        start("/len", srv_port, "y", 0, &last[i]);   /* not posted yet */
    httpc_destroy(http);
    http = NULL;
    pending = 0;
    CHECK(foreign_callbacks == 0);
}

/* A pool warmed by a burst stays warm when the same load comes in small
 * turns: the burst left most of its connections idle on the lanes, and
 * a turn of a few requests - which the loop would write itself - goes to
 * a lane holding idle connections before the loop opens new ones. */
static struct result warm_res[48];
static int warm_next;

static void on_warm_turn(evutil_socket_t fd, short what, void *ud)
{
    (void)fd;
    (void)what;
    (void)ud;
    for (int i = 0; i < 4 && warm_next < 48; i++, warm_next++)
        start("/slow", srv_port, "t", 0, &warm_res[warm_next]);
}

/* warm_res[0..48) as /slow requests, 4 per loop turn (the first turn now,
 * 11 more 1 ms apart: all in flight at once); returns when all ended. */
static void run_in_turns_of_4(void)
{
    struct event *turns[12] = { NULL };
    warm_next = 0;
    on_warm_turn(-1, 0, NULL);
    for (int i = 1; i < 12; i++) {
        struct timeval tv = { 0, i * 1000 };
        turns[i] = evtimer_new(base, on_warm_turn, NULL);
        CHECK(turns[i] && evtimer_add(turns[i], &tv) == 0);
    }
    run_loop();
    for (int i = 1; i < 12; i++)
        if (turns[i])
            event_free(turns[i]);
}

static void lanes_keep_warm_pools(void)
{
    http = httpc_create(base);
    CHECK(http && httpc_set_io_threads(http, 2) == PS_OK);
    if (!http)
        return;
    for (int i = 0; i < 48; i++)          /* one turn: 8 on the loop, 40 on the lanes */
        start("/slow", srv_port, "b", 0, &warm_res[i]);
    run_loop();
    int64_t c0 = httpc_connects(http), l0 = httpc_lane_requests(http);
    CHECK_MSG(c0 == 48 && l0 == 40, "burst of 48: %lld connections, %lld on lanes", (long long)c0, (long long)l0);

    /* the same 48, 4 per loop turn, 1 ms apart: all in flight at once */
    run_in_turns_of_4();
    int ok = 0;
    for (int i = 0; i < 48; i++)
        ok += warm_res[i].calls == 1 && !warm_res[i].transport_error && !strcmp(warm_res[i].body, "ok");
    CHECK_MSG(ok == 48, "%d of 48 requests in small turns ok", ok);
    CHECK_MSG(httpc_connects(http) == c0, "48 requests in turns of 4 after a burst opened %lld connections",
              (long long)(httpc_connects(http) - c0));

    /* 40 when the turns come on time (the loop's pool holds 8); fewer when
     * a slow machine lets early replies free connections first */
    CHECK_MSG(httpc_lane_requests(http) - l0 > 0 && httpc_lane_requests(http) - l0 <= 40,
              "%lld of them on lanes", (long long)(httpc_lane_requests(http) - l0));
    /* 40 started and cancelled in one turn: the 8 the loop wrote close
     * their connections; the 32 sent to lanes for their idle connections
     * never left, so those counts come back.  Then 48 in turns of 4 open
     * only the loop's 8 again. */
    struct result gone[40];
    struct httpc_req *gq[40];
    for (int i = 0; i < 40; i++)
        gq[i] = start("/slow", srv_port, "c", 0, &gone[i]);
    for (int i = 0; i < 40; i++)
        if (gq[i]) {
            httpc_cancel(gq[i]);
            pending--;
        }
    int64_t c1 = httpc_connects(http);
    run_in_turns_of_4();
    for (int i = 0; i < 40; i++)
        CHECK_MSG(gone[i].calls == 0, "cancelled request %d called back", i);
    CHECK_MSG(httpc_connects(http) - c1 <= 8, "after 40 cancels, 48 requests in turns of 4 opened %lld connections",
              (long long)(httpc_connects(http) - c1));
    httpc_destroy(http);
    http = NULL;
}

int main(void)
{
    pthread_t th;
    parser_cases();
    parser_tabs_are_whitespace();
    if (srv_start(&th))
        TEST_SKIP("cannot listen on loopback: %s", strerror(errno));
    loop_thread = pthread_self();
    base = event_base_new();
    CHECK(base);
    if (!base)
        TEST_DONE();
    client_cases(0);
    client_cases(1);
    lanes_keep_warm_pools();
    lanes_stress();
    event_base_free(base);
    /* Every server-side connection ends once the client has closed its own. */
    for (int i = 0; i < 200 && atomic_load(&srv_conns_open) > 0; i++)
        usleep(10000);
    CHECK_MSG(atomic_load(&srv_conns_open) == 0, "%d server connections still open", atomic_load(&srv_conns_open));
    shutdown(srv_fd, SHUT_RDWR);
    close(srv_fd);
    pthread_join(th, NULL);
    TEST_DONE();
}
