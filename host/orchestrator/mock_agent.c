/* mock_agent.c - loopback HTTP/1.1 mock agent on its own thread (see mock_agent.h).
 *
 * Test infrastructure that must not be what a benchmark measures, so it is
 * lean: raw non-blocking sockets on a private libevent loop (no evhttp, whose
 * deferred bufferevent writes cost an extra loop turn per reply, and whose
 * Date header reads the time zone), keep-alive connections, replies written
 * with one send() from the timer callback, and a loop with
 * EVENT_BASE_FLAG_PRECISE_TIMER (timerfd) so `sleep_ms` is honoured to
 * microseconds instead of being rounded up to the next millisecond.
 * Delays are per-connection timers: requests never wait for each other.
 *
 * Time of receipt: the kernel's delivery stamp of the request's last bytes
 * (SO_TIMESTAMPNS, taken on loopback inside the sender's send()), not the
 * moment this thread got to read them, and the reply is due `sleep_ms`
 * after it.  So the mock's own scheduling delay is neither charged to the
 * caller's dispatch -> receipt overhead nor added to the agent latency, and
 * the thread can run at normal priority, handling many sockets per wakeup
 * (real-time priority, preempting at every request, tripled its CPU per
 * request in a 1,000-task burst on 2 cores).
 *
 * Connection states (one request at a time per connection; bytes of a
 * pipelined next request wait in `in` until the reply is sent):
 *   IDLE  --conn_parse(): request complete-->  BUSY (timer, or hang)
 *   BUSY  --on_delay() / immediate reply-->   WRITING (out pending) or IDLE
 *   WRITING --on_write(): all sent-->          IDLE, or closed for Connection: close
 *   any   --EOF / error / drop fault-->        conn_free() (a pending reply is dropped)
 */
#include "orchestrator/mock_agent.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/grow.h"
#include "common/json_get.h"
#include "common/status.h"
#include "common/thread_cpu.h"
#include "orchestrator/httpc.h"

#define MOCK_BACKLOG   4096          /* a burst of connects must not drop SYNs */
#define MOCK_MAX_REQ   (1u << 20)    /* request head + body limit */
#define MOCK_READ_MIN  512           /* free space kept for one recv() */
#define MOCK_IN_INIT   1000          /* first request buffer of a connection: small
                                        requests; under glibc's 1 KiB large-chunk size */

struct flaky {
    char         *key;
    int           seen;
    struct flaky *next;
};

struct mock_worker;

struct conn {
    struct mock_worker *w;
    int                fd;
    struct event      *rd, *wr, *delay;
    char              *in;
    size_t             in_len, in_cap;
    char              *out;          /* unsent reply bytes (WRITING) */
    size_t             out_len, out_off;
    int                busy;         /* a request is being handled */
    int                close_after;  /* Connection: close / HTTP/1.0 */
    int64_t            recv_ns;
    int64_t            rx_rt_ns;     /* kernel delivery stamp (CLOCK_REALTIME) of the last bytes read; 0: none */
    int                code;         /* pending reply (BUSY with a timer) */
    char              *body;         /* NULL: drop the connection instead */
    struct conn       *prev, *next;
};

/* One thread: its own loop, its own listener on the shared port
 * (SO_REUSEPORT: the kernel spreads new connections over the listeners),
 * its connections. */
struct mock_worker {
    struct mock_agent *m;
    struct event_base *base;
    struct event      *accept_ev, *stop_ev;
    int                listen_fd;
    int                stop_fd[2];
    pthread_t          thread;
    int                started;
    struct conn       *conns;
};

struct mock_agent {
    struct mock_worker *workers;
    int                n_workers;
    int                port;
    pthread_mutex_t    flaky_mu;     /* guards `flaky` (every worker's requests count) */
    struct flaky      *flaky;
    atomic_llong       n_requests, n_replies;
    pthread_mutex_t    sent_mu;      /* guards the send stamps */
    int64_t           *sent_ns;      /* X-Agent-Send-Ns of every reply, in send order */
    size_t             n_sent, cap_sent;
    int                sent_lost;    /* a stamp could not be stored (out of memory) */
};

static void conn_free(struct conn *c)
{
    struct mock_worker *w = c->w;
    if (c->prev) c->prev->next = c->next; else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->rd) event_free(c->rd);
    if (c->wr) event_free(c->wr);
    if (c->delay) event_free(c->delay);
    if (c->fd >= 0) close(c->fd);
    free(c->in);
    free(c->out);
    free(c->body);
    free(c);
}

static void conn_parse(struct conn *c);

/* Send c->out from out_off; returns 0 when all is sent or EV_WRITE is armed,
 * -1 when the connection failed (the caller frees it). */
static int conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return event_add(c->wr, NULL) ? -1 : 0;
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    return 0;
}

/* Reply finished (sent or queued in the kernel): next request, or close. */
static void conn_reply_done(struct conn *c)
{
    c->busy = 0;
    if (c->close_after) {
        shutdown(c->fd, SHUT_WR);
        conn_free(c);
        return;
    }
    conn_parse(c);
}

static void conn_send_reply(struct conn *c, int code, const char *body)
{
    struct mock_agent *m = c->w->m;
    size_t bl = strlen(body);
    /* Head and body go out with one send() from a per-thread buffer; the
     * heap holds a reply only while the kernel cannot take all of it.  Not
     * a stack array: a reply sent at once calls conn_reply_done, which
     * parses the next pipelined request and may reply again (one frame per
     * pipelined request); the buffer is dead by then, so the nested reply
     * may reuse it. */
    static _Thread_local char stack[2048];
    size_t cap = bl + 256;
    char *out = cap <= sizeof stack ? stack : malloc(cap);
    if (!out) {
        conn_free(c);
        return;
    }
    int64_t sent_ns = orch_now_ns();
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "X-Agent-Recv-Ns: %lld\r\nX-Agent-Send-Ns: %lld\r\n%s\r\n",
                     code, code == 200 ? "OK" : "Error", bl, (long long)c->recv_ns,
                     (long long)sent_ns, c->close_after ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n + bl > cap) {
        if (out != stack)
            free(out);
        conn_free(c);
        return;
    }
    memcpy(out + n, body, bl);
    size_t len = (size_t)n + bl, off = 0;
    atomic_fetch_add(&m->n_replies, 1);
    pthread_mutex_lock(&m->sent_mu);
    if (m->n_sent == m->cap_sent) {
        int64_t *g = ps_grow(m->sent_ns, &m->cap_sent, m->n_sent + 1, sizeof *g, 4096);
        if (g)
            m->sent_ns = g;
    }
    if (m->n_sent < m->cap_sent)
        m->sent_ns[m->n_sent++] = sent_ns;
    else
        m->sent_lost = 1;
    pthread_mutex_unlock(&m->sent_mu);
    while (off < len) {
        ssize_t k = send(c->fd, out + off, len - off, MSG_NOSIGNAL);
        if (k > 0)
            off += (size_t)k;
        else if (k < 0 && errno == EINTR)
            continue;
        else {
            if (k == 0)
                errno = EPIPE;   /* no progress and no error: treat as a dead peer */
            break;
        }
    }
    if (off < len && !(errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (out != stack)
            free(out);
        conn_free(c);
        return;
    }
    if (off == len) {
        if (out != stack)
            free(out);
        conn_reply_done(c);
        return;
    }
    /* the rest waits for EV_WRITE (WRITING) */
    if (out == stack) {
        char *h = malloc(len);
        if (!h) {
            conn_free(c);
            return;
        }
        memcpy(h, stack, len);
        out = h;
    }
    c->out = out;
    c->out_len = len;
    c->out_off = off;
    if (conn_flush(c)) {
        conn_free(c);
        return;
    }
    if (!c->out)
        conn_reply_done(c);
}

static void conn_drop(struct conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    conn_free(c);
}

static void on_delay(evutil_socket_t fd, short what, void *ud)
{
    struct conn *c = ud;
    char *body = c->body;
    c->body = NULL;
    if (!body) {
        conn_drop(c);
        return;
    }
    conn_send_reply(c, c->code, body);
    free(body);
}

static void on_write(evutil_socket_t fd, short what, void *ud)
{
    struct conn *c = ud;
    if (conn_flush(c)) {
        conn_free(c);
        return;
    }
    if (!c->out)
        conn_reply_done(c);
}

/* Decide the reply to one request body (see mock_agent.h for the protocol).
 * Sets *code and *body (malloc'd; NULL: drop the connection), *sleep_ms and
 * *hang.  Returns -1 when out of memory. */
static int mock_decide(struct mock_agent *m, const char *text, size_t len,
                       int *code, char **body, int *sleep_ms, int *hang)
{
    cJSON *args = len ? cJSON_ParseWithLength(text, len) : NULL;
    const cJSON *sl = json_get(args, "sleep_ms");
    const cJSON *fa = json_get(args, "fault");
    const char *fault = cJSON_IsString(fa) ? fa->valuestring : "";
    *sleep_ms = cJSON_IsNumber(sl) ? sl->valueint : 0;
    *code = 200;
    *body = NULL;
    *hang = 0;
    const char *fixed = NULL;
    if (!strcmp(fault, "hang")) {
        *hang = 1;
        fixed = "";
    } else if (!strcmp(fault, "5xx")) {
        *code = 503;
        fixed = "{\"error\":\"unavailable\"}";
    } else if (!strcmp(fault, "4xx")) {
        *code = 400;
        fixed = "{\"error\":\"bad request\"}";
    } else if (!strcmp(fault, "nonjson")) {
        fixed = "<html>this is not json</html>";
    } else if (!strcmp(fault, "badutf8")) {
        fixed = "{\"ok\":true,\"v\":\"a\xff\"}";      /* JSON in shape, not UTF-8 */
    } else if (!strcmp(fault, "nul")) {
        fixed = "{\"ok\":true,\"v\":\"a\\u0000b\"}";  /* a NUL character in a string */
    } else if (!strcmp(fault, "drop")) {
        cJSON_Delete(args);
        return 0;
    } else if (!strcmp(fault, "flaky")) {
        const cJSON *k = json_get(args, "key");
        const cJSON *ft = json_get(args, "fail_times");
        const char *key = cJSON_IsString(k) ? k->valuestring : "";
        pthread_mutex_lock(&m->flaky_mu);
        struct flaky *f = m->flaky;
        while (f && strcmp(f->key, key))
            f = f->next;
        if (!f) {
            if (!(f = calloc(1, sizeof *f)) || !(f->key = strdup(key))) {
                pthread_mutex_unlock(&m->flaky_mu);
                free(f);
                cJSON_Delete(args);
                return -1;
            }
            f->next = m->flaky;
            m->flaky = f;
        }
        int fail = f->seen++ < (cJSON_IsNumber(ft) ? ft->valueint : 1);
        pthread_mutex_unlock(&m->flaky_mu);
        if (fail) {
            *code = 503;
            fixed = "{\"error\":\"flaky\"}";
        }
    }
    if (fixed) {
        *body = strdup(fixed);
    } else if ((*body = malloc(len + 32))) {
        /* {"ok":true,"args":<the request, verbatim when it is JSON>} */
        if (cJSON_IsObject(args))
            snprintf(*body, len + 32, "{\"ok\":true,\"args\":%.*s}", (int)len, text);
        else
            snprintf(*body, len + 32, "{\"ok\":true,\"args\":null}");
    }
    cJSON_Delete(args);
    return *body ? 0 : -1;
}

static const char *find_header(const char *head, const char *end, const char *name, size_t *vlen)
{
    size_t k = strlen(name);
    for (const char *p = head; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > k && !strncasecmp(p, name, k) && p[k] == ':') {
            const char *v = p + k + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

static void reply_status_only(struct conn *c, int code, const char *body)
{
    c->busy = 1;
    c->close_after = 1;
    conn_send_reply(c, code, body);
}

/* When the request's last bytes reached the socket, on CLOCK_MONOTONIC:
 * the kernel's stamp moved across from CLOCK_REALTIME, or now without one
 * (or when the clocks disagree: a stamp from the future). */
static int64_t mock_receipt_ns(const struct conn *c)
{
    if (!c->rx_rt_ns)
        return orch_now_ns();
    /* CLOCK_REALTIME first, then the monotonic clock: the time between the
     * two reads makes the receipt later than it was, never earlier (read
     * the other way round, a request taken within microseconds of its
     * dispatch could be stamped before it: a negative dispatch->recv) */
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    int64_t now = orch_now_ns();
    int64_t age = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec - c->rx_rt_ns;
    return age >= 0 && age < now ? now - age : now;
}

/* Handle the request at the front of `in` if it is complete (IDLE only). */
static void conn_parse(struct conn *c)
{
    if (c->busy || !c->in_len)
        return;
    char *hend = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!hend) {
        if (c->in_len > MOCK_MAX_REQ)
            conn_free(c);
        return;
    }
    const char *head_end = hend + 2;
    size_t head_len = (size_t)(hend + 4 - c->in);
    const char *sp = memchr(c->in, ' ', (size_t)(hend - c->in));
    const char *line_end = memchr(c->in, '\n', (size_t)(hend - c->in) + 1);
    if (!sp || !line_end) {
        reply_status_only(c, 400, "{\"error\":\"bad request line\"}");
        return;
    }
    int is_post = (size_t)(sp - c->in) == 4 && !memcmp(c->in, "POST", 4);
    int is_get = (size_t)(sp - c->in) == 3 && !memcmp(c->in, "GET", 3);
    size_t vlen = 0;
    const char *v;
    size_t clen = 0;
    if ((v = find_header(line_end + 1, head_end, "Transfer-Encoding", &vlen))) {
        reply_status_only(c, 411, "{\"error\":\"chunked requests are not supported\"}");
        return;
    }
    if ((v = find_header(line_end + 1, head_end, "Content-Length", &vlen))) {
        char num[24];
        if (vlen == 0 || vlen >= sizeof num) {
            reply_status_only(c, 400, "{\"error\":\"bad Content-Length\"}");
            return;
        }
        memcpy(num, v, vlen);
        num[vlen] = 0;
        char *e;
        unsigned long long x = strtoull(num, &e, 10);
        if (*e || x > MOCK_MAX_REQ) {
            reply_status_only(c, 413, "{\"error\":\"body too large\"}");
            return;
        }
        clen = (size_t)x;
    }
    if (c->in_len < head_len + clen)
        return;                                  /* body still arriving */
    c->close_after = line_end - c->in >= 9 && !memcmp(line_end - 9, "HTTP/1.0", 8);
    if ((v = find_header(line_end + 1, head_end, "Connection", &vlen)))
        c->close_after = vlen == 5 && !strncasecmp(v, "close", 5);
    c->recv_ns = mock_receipt_ns(c);
    atomic_fetch_add(&c->w->m->n_requests, 1);
    c->busy = 1;
    int code, sleep_ms, hang;
    char *body = NULL;
    int rc = 0;
    if (is_post)
        rc = mock_decide(c->w->m, c->in + head_len, clen, &code, &body, &sleep_ms, &hang);
    else if (is_get)
        rc = mock_decide(c->w->m, "", 0, &code, &body, &sleep_ms, &hang);
    else {
        code = 405;
        sleep_ms = hang = 0;
        rc = (body = strdup("{\"error\":\"method not allowed\"}")) ? 0 : -1;
    }
    c->in_len -= head_len + clen;
    memmove(c->in, c->in + head_len + clen, c->in_len);
    if (rc) {
        conn_free(c);
        return;
    }
    if (hang) {
        free(body);                              /* never answered; freed on close */
        return;
    }
    if (sleep_ms > 0) {
        c->code = code;
        c->body = body;                          /* NULL: drop when the timer fires */
        /* due sleep_ms after receipt, whenever this thread got to it */
        int64_t left_us = (int64_t)sleep_ms * 1000 - (orch_now_ns() - c->recv_ns) / 1000;
        if (left_us < 0)
            left_us = 0;
        struct timeval tv = { (time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000) };
        if (event_add(c->delay, &tv))
            conn_free(c);
        return;
    }
    if (!body) {
        conn_drop(c);
        return;
    }
    conn_send_reply(c, code, body);
    free(body);
}

static void on_read(evutil_socket_t fd, short what, void *ud)
{
    struct conn *c = ud;
    for (;;) {
        if (c->in_len > MOCK_MAX_REQ + MOCK_IN_INIT) {
            conn_free(c);                        /* over the request limit */
            return;
        }
        if (c->in_cap - c->in_len < MOCK_READ_MIN) {
            size_t cap = c->in_cap ? c->in_cap * 2 : MOCK_IN_INIT;
            char *nb = realloc(c->in, cap);
            if (!nb) {
                conn_free(c);
                return;
            }
            c->in = nb;
            c->in_cap = cap;
        }
        size_t room = c->in_cap - c->in_len;
        struct iovec io = { c->in + c->in_len, room };
        union {
            char           buf[CMSG_SPACE(sizeof(struct timespec))];
            struct cmsghdr align;
        } ctl;
        struct msghdr mh = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl.buf,
                             .msg_controllen = sizeof ctl.buf };
        ssize_t n = recvmsg(fd, &mh, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h))
                if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(h), sizeof ts);
                    c->rx_rt_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
                }
            if ((size_t)n < room)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_free(c);       /* EOF or reset: the client left; a pending reply is dropped */
        return;
    }
    conn_parse(c);
}

static void on_accept(evutil_socket_t lfd, short what, void *ud)
{
    struct mock_worker *w = ud;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;                              /* EAGAIN, or a transient error */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);   /* receipt stamps */
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->w = w;
        c->fd = fd;
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        c->rd = event_new(w->base, fd, EV_READ | EV_PERSIST, on_read, c);
        c->wr = event_new(w->base, fd, EV_WRITE, on_write, c);
        c->delay = evtimer_new(w->base, on_delay, c);
        if (!c->rd || !c->wr || !c->delay || event_add(c->rd, NULL))
            conn_free(c);
    }
}

static void on_stop(evutil_socket_t fd, short what, void *ud)
{
    struct mock_worker *w = ud;
    event_base_loopbreak(w->base);
}

static void *mock_thread(void *ud)
{
    struct mock_worker *w = ud;
    pthread_setname_np(pthread_self(), "ps-mock-agent");
    /* 1 ns timer slack instead of the default 50 us: replies leave when
     * sleep_ms says, not up to 50 us later (best effort; ignored if refused). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    /* Normal priority: receipt is the kernel's stamp and replies are due
     * from it (see the top of this file), so a late wakeup costs neither
     * measure; real-time priority made every request a preemption. */
    event_base_dispatch(w->base);
    return NULL;
}

static void worker_free(struct mock_worker *w)
{
    while (w->conns)
        conn_free(w->conns);
    if (w->accept_ev) event_free(w->accept_ev);
    if (w->stop_ev) event_free(w->stop_ev);
    if (w->base) event_base_free(w->base);
    if (w->listen_fd >= 0) close(w->listen_fd);
    if (w->stop_fd[0] >= 0) { close(w->stop_fd[0]); close(w->stop_fd[1]); }
}

/* Stop every started thread (or leave the agent running when one cannot
 * be woken: racing it would be worse), then free. */
static void mock_free(struct mock_agent *m)
{
    for (int i = 0; i < m->n_workers; i++) {
        struct mock_worker *w = &m->workers[i];
        if (!w->started)
            continue;
        if (write(w->stop_fd[1], "x", 1) != 1)
            return;
        pthread_join(w->thread, NULL);
        w->started = 0;
    }
    for (int i = 0; i < m->n_workers; i++)
        worker_free(&m->workers[i]);
    while (m->flaky) {
        struct flaky *f = m->flaky;
        m->flaky = f->next;
        free(f->key);
        free(f);
    }
    pthread_mutex_destroy(&m->flaky_mu);
    pthread_mutex_destroy(&m->sent_mu);
    free(m->sent_ns);
    free(m->workers);
    free(m);
}

/* Listener, loop and events of worker w on `port` (0: any; the first
 * worker's choice is then everybody's).  0 or -1. */
static int worker_open(struct mock_worker *w, int port, int reuseport)
{
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return -1;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    w->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!w->base || pipe(w->stop_fd))
        return -1;
    w->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (w->listen_fd < 0)
        return -1;
    int one = 1;
    setsockopt(w->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (reuseport && port && w == &w->m->workers[0]) {
        /* A port named by the caller must be free: with SO_REUSEPORT alone
         * another process's listener there would share it silently. */
        int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int busy = probe < 0 || setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
                   bind(probe, (struct sockaddr *)&sa, sizeof sa);
        if (probe >= 0)
            close(probe);
        if (busy)
            return -1;
    }
    if (reuseport && setsockopt(w->listen_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one))
        return -1;
    socklen_t sl = sizeof sa;
    if (bind(w->listen_fd, (struct sockaddr *)&sa, sizeof sa) || listen(w->listen_fd, MOCK_BACKLOG) ||
        getsockname(w->listen_fd, (struct sockaddr *)&sa, &sl))
        return -1;
    w->m->port = ntohs(sa.sin_port);
    w->accept_ev = event_new(w->base, w->listen_fd, EV_READ | EV_PERSIST, on_accept, w);
    w->stop_ev = event_new(w->base, w->stop_fd[0], EV_READ, on_stop, w);
    if (!w->accept_ev || !w->stop_ev || event_add(w->accept_ev, NULL) || event_add(w->stop_ev, NULL))
        return -1;
    return 0;
}

struct mock_agent *mock_agent_start(int port)
{
    return mock_agent_start_threads(port, 1);
}

struct mock_agent *mock_agent_start_threads(int port, int threads)
{
    if (threads < 1 || threads > MOCK_AGENT_MAX_THREADS)
        return NULL;
    struct mock_agent *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    pthread_mutex_init(&m->sent_mu, NULL);
    pthread_mutex_init(&m->flaky_mu, NULL);
    if (!(m->workers = calloc((size_t)threads, sizeof *m->workers))) {
        mock_free(m);
        return NULL;
    }
    m->n_workers = threads;
    for (int i = 0; i < threads; i++) {
        struct mock_worker *w = &m->workers[i];
        w->m = m;
        w->listen_fd = w->stop_fd[0] = w->stop_fd[1] = -1;
    }
    /* every listener first, so no thread accepts before all can */
    for (int i = 0; i < threads; i++)
        if (worker_open(&m->workers[i], i ? m->port : port, threads > 1))
            goto fail;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&m->workers[i].thread, NULL, mock_thread, &m->workers[i]))
            goto fail;
        m->workers[i].started = 1;
    }
    return m;
fail:
    mock_free(m);
    return NULL;
}

int mock_agent_port(const struct mock_agent *m) { return m->port; }
int mock_agent_threads(const struct mock_agent *m) { return m->n_workers; }
int64_t mock_agent_requests(const struct mock_agent *m) { return atomic_load(&((struct mock_agent *)m)->n_requests); }
int64_t mock_agent_replies(const struct mock_agent *m) { return atomic_load(&((struct mock_agent *)m)->n_replies); }

int64_t mock_agent_cpu_ns(const struct mock_agent *m)
{
    if (!m)
        return -1;
    int64_t sum = 0;
    for (int i = 0; i < m->n_workers; i++) {
        int64_t ns = ps_thread_cpu_ns(m->workers[i].thread);
        if (ns < 0)
            return -1;
        sum += ns;
    }
    return sum;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int mock_agent_send_times(struct mock_agent *m, int64_t from_ns, int64_t to_ns, int64_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&m->sent_mu);
    int st = m->sent_lost ? ps_error_set(PS_ENOMEM, "mock agent: send stamps lost to out of memory") : PS_OK;
    size_t k = 0;
    for (size_t i = 0; !st && i < m->n_sent; i++)
        k += m->sent_ns[i] >= from_ns && m->sent_ns[i] < to_ns;
    if (!st && k && !(*out = malloc(k * sizeof **out)))
        st = ps_error_set(PS_ENOMEM, "out of memory");
    for (size_t i = 0; !st && i < m->n_sent; i++)
        if (m->sent_ns[i] >= from_ns && m->sent_ns[i] < to_ns)
            (*out)[(*n)++] = m->sent_ns[i];
    pthread_mutex_unlock(&m->sent_mu);
    if (*n > 1 && m->n_workers > 1)
        qsort(*out, *n, sizeof **out, cmp_i64);  /* threads interleave their stamps */
    return st;
}

void mock_agent_stop(struct mock_agent *m)
{
    if (m)
        mock_free(m);
}
