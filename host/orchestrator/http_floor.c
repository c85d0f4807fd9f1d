/* http_floor.c - minimal keep-alive HTTP client loop (see http_floor.h).
 *
 * Per connection: IDLE --send request--> WAITING --reply complete--> IDLE.
 * The timed loop does per request exactly what no client can avoid: one
 * send(), one recv() (more only when a reply arrives split), its share of
 * one epoll_wait(); buffers are allocated once, before timing starts. */
#include "orchestrator/http_floor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"

#define FLOOR_MAX_CONNS 4096
#define FLOOR_BUF       8192        /* one reply (head + body) must fit */

struct floor_conn {
    int    fd;
    size_t len;                      /* reply bytes buffered */
    char   buf[FLOOR_BUF];
};

static double thread_cpu_s(void)
{
    struct timespec ts;
    return clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) ? 0 : (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Length of the complete reply at the front of buf: 0 while incomplete,
 * -1 when it cannot be framed (no Content-Length, or too large). */
static long reply_len(const char *buf, size_t len)
{
    const char *end = len >= 4 ? memmem(buf, len, "\r\n\r\n", 4) : NULL;
    if (!end)
        return len >= FLOOR_BUF ? -1 : 0;
    size_t head = (size_t)(end + 4 - buf);
    for (const char *p = buf; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        p = eol + 1;
        if ((size_t)(end - p) > 15 && !strncasecmp(p, "Content-Length:", 15)) {
            /* digits only (no sign, no overflow): at most FLOOR_BUF */
            const char *d = p + 15;
            while (d < end && (*d == ' ' || *d == '\t'))
                d++;
            size_t n = 0;
            const char *d0 = d;
            for (; d < end && *d >= '0' && *d <= '9'; d++) {
                n = n * 10 + (size_t)(*d - '0');
                if (n > FLOOR_BUF)
                    return -1;
            }
            if (d == d0 || n > FLOOR_BUF - head)
                return -1;
            return len >= head + n ? (long)(head + n) : 0;
        }
    }
    return -1;
}

static int send_all(int fd, const char *s, size_t n)
{
    int waits = 0;
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k > 0) {
            s += k;
            n -= (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN) &&
                   waits++ < 100000) {
            /* still connecting, or (a small request into an idle
             * connection's empty send buffer) memory pressure: wait, at
             * most 10 s, rather than spin */
            struct timespec ts = { 0, 100000 };
            nanosleep(&ts, NULL);
        } else {
            return -1;
        }
    }
    return 0;
}

/* Read what is there; returns 1 when a whole reply was consumed, 0 when
 * more is needed, -1 on error or EOF. */
static int conn_read(struct floor_conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, FLOOR_BUF - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            break;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        return -1;
    }
    long r = reply_len(c->buf, c->len);
    if (r <= 0)
        return (int)r;
    c->len -= (size_t)r;
    memmove(c->buf, c->buf + r, c->len);
    return 1;
}

/* Wait for `want` replies on the connections; after each, send the request
 * again on that connection while *sent < limit (limit 0: no resends). */
static int floor_replies(int ep, struct epoll_event *evs, struct floor_conn *cs, int conns, int64_t want,
                         const char *req, size_t rl, int64_t *sent, int64_t limit)
{
    for (int64_t got_n = 0; got_n < want;) {
        int n = epoll_wait(ep, evs, conns, 10000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return ps_error_set(PS_EIO, "http_floor: %s", n ? strerror(errno) : "no reply within 10 s");
        for (int k = 0; k < n; k++) {
            struct floor_conn *c = &cs[evs[k].data.u32];
            int got = conn_read(c);
            if (got < 0)
                return ps_error_set(PS_EIO, "http_floor: a connection failed or sent an unframed reply");
            if (!got)
                continue;
            got_n++;
            if (*sent < limit) {
                if (send_all(c->fd, req, rl))
                    return ps_error_set(PS_EIO, "http_floor: send: %s", strerror(errno));
                (*sent)++;
            }
        }
    }
    return PS_OK;
}

int http_floor_run(int port, const char *path, const char *body, int conns, int64_t requests,
                   http_floor_cpu_fn peer_cpu_ns, void *peer_ud, struct http_floor_stats *out)
{
    if (port < 1 || port > 65535 || !path || path[0] != '/' || !body || conns < 1 ||
        conns > FLOOR_MAX_CONNS || requests < conns || !out)
        return ps_error_set(PS_EINVAL, "http_floor: bad arguments");
    memset(out, 0, sizeof *out);
    int st = PS_OK, ep = -1, opened = 0;
    size_t bl = strlen(body);
    size_t rcap = strlen(path) + bl + 256;
    char *req = malloc(rcap);
    struct floor_conn *cs = calloc((size_t)conns, sizeof *cs);
    struct epoll_event *evs = calloc((size_t)conns, sizeof *evs);
    if (!req || !cs || !evs) {
        st = ps_error_set(PS_ENOMEM, "http_floor: out of memory");
        goto done;
    }
    /* the bytes httpc's fast path writes for an http-json call */
    int rl = snprintf(req, rcap,
                      "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                      "Accept: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                      path, port, bl, body);
    if (rl < 0 || (size_t)rl >= rcap) {
        st = ps_error_set(PS_EINTERNAL, "http_floor: request too long");
        goto done;
    }
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        st = ps_error_set(PS_EIO, "http_floor: epoll_create1: %s", strerror(errno));
        goto done;
    }
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Open phase (timed on its own): every connection opened as the
     * executor opens one in a burst (non-blocking connect, the request
     * written at once) and its first reply read. */
    int64_t open_peer0 = peer_cpu_ns ? peer_cpu_ns(peer_ud) : -1;
    double open_cpu0 = thread_cpu_s();
    for (int i = 0; i < conns; i++) {
        struct floor_conn *c = &cs[i];
        int one = 1;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            st = ps_error_set(PS_EIO, "http_floor: socket: %s", strerror(errno));
            goto done;
        }
        opened = i + 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) && errno != EINPROGRESS) {
            st = ps_error_set(PS_EIO, "http_floor: connect to 127.0.0.1:%d: %s", port, strerror(errno));
            goto done;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev)) {
            st = ps_error_set(PS_EIO, "http_floor: epoll_ctl: %s", strerror(errno));
            goto done;
        }
        /* on loopback the handshake is done inside connect(); otherwise
         * send_all waits for the connection */
        if (send_all(c->fd, req, (size_t)rl)) {
            st = ps_error_set(PS_EIO, "http_floor: connect to 127.0.0.1:%d: %s", port, strerror(errno));
            goto done;
        }
    }
    int64_t no_resend = 0;
    if ((st = floor_replies(ep, evs, cs, conns, conns, req, (size_t)rl, &no_resend, 0)))
        goto done;
    out->open_client_cpu_s = thread_cpu_s() - open_cpu0;
    int64_t open_peer1 = peer_cpu_ns ? peer_cpu_ns(peer_ud) : -1;
    out->open_peer_cpu_s = open_peer0 >= 0 && open_peer1 >= 0 ? (double)(open_peer1 - open_peer0) / 1e9 : -1;
    out->opened = conns;
    int64_t peer0 = peer_cpu_ns ? peer_cpu_ns(peer_ud) : -1;
    double cpu0 = thread_cpu_s(), t0 = mono_s();
    int64_t sent = 0;
    for (int i = 0; i < conns; i++, sent++)
        if (send_all(cs[i].fd, req, (size_t)rl)) {
            st = ps_error_set(PS_EIO, "http_floor: send: %s", strerror(errno));
            goto done;
        }
    if ((st = floor_replies(ep, evs, cs, conns, requests, req, (size_t)rl, &sent, requests)))
        goto done;
    out->client_cpu_s = thread_cpu_s() - cpu0;
    out->wall_s = mono_s() - t0;
    int64_t peer1 = peer_cpu_ns ? peer_cpu_ns(peer_ud) : -1;
    out->peer_cpu_s = peer0 >= 0 && peer1 >= 0 ? (double)(peer1 - peer0) / 1e9 : -1;
    out->requests = requests;
done:
    for (int i = 0; i < opened; i++)
        close(cs[i].fd);
    if (ep >= 0)
        close(ep);
    free(evs);
    free(cs);
    free(req);
    return st;
}
