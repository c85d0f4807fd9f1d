/* httpc.c - outbound HTTP on libevent (see httpc.h): libcurl multi, and a
 * keep-alive HTTP/1.1 fast path for plain http:// to numeric hosts.
 *
 * Request lifecycle (both paths):
 *   httpc_request() -> IN FLIGHT (curl: easy handle in the multi; fast: on a
 *   pooled connection, request bytes written or pending)
 *   -> reply complete or failed -> pushed on the done list
 *   -> callback invoked from the done list -> freed.
 * Callbacks run only from the done list, after the event handler that
 * finished the request has done its own work, so a callback may start or
 * cancel any request (including ones still queued on the done list:
 * httpc_cancel unlinks and frees them).  A fast-path request that fails
 * inside httpc_request() (connection refused at once) is delivered through
 * the `kick` event on the next loop turn: never before httpc_request returns.
 *
 * Fast-path connection states (struct hconn):
 *   CONNECTING --writable, SO_ERROR 0--> BUSY (request being written/answered)
 *   BUSY --reply complete, reusable--> IDLE (in its pool's idle list)
 *   IDLE --httpc_request() takes it--> BUSY
 *   any --EOF, error, Connection: close, cancel, timeout--> closed (hconn_close)
 * An IDLE connection keeps its read event: a server that closes it is noticed
 * and the connection freed, so the pool holds no dead sockets for long.
 */
#include "orchestrator/httpc.h"
#include "orchestrator/httpc_parse.h"

#include <arpa/inet.h>
#include <curl/curl.h>
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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/grow.h"
#include "common/status.h"
#include "common/thread_cpu.h"

/* Easy handles kept for reuse: curl_easy_init/cleanup per request costs
 * allocations (buffers, state) that reuse after curl_easy_reset avoids. */
#define HTTPC_IDLE_EASY 1024
/* Fast path limits. */
#define HC_MAX_IDLE_PER_POOL 4096        /* idle keep-alive connections per host:port */
#define HC_CONNECT_MS        10000       /* as CURLOPT_CONNECTTIMEOUT_MS on the curl path */
/* First reply buffer of a connection, and the free space kept for one
 * recv(): agent replies are mostly small, and a first buffer under glibc's
 * large-request size (1 KiB chunks, which consolidate the fast bins on every
 * such malloc) and touching one page instead of two keeps a burst of new
 * connections cheap.  Longer replies grow it by doubling. */
#define HC_READ_MIN          512
#define HC_IN_INIT           1000
/* I/O lanes: a lane gets the jobs made for it at the end of the loop turn,
 * or as soon as this many wait (a burst's turn can make thousands; the
 * lane should not idle until the turn ends). */
#define HC_LANE_BATCH        16
/* ... and the first this many requests of a loop turn are written by the
 * loop itself, as without lanes: a loop that is not busy sends at once
 * (a handover costs a wakeup of the lane, and on a loaded machine its
 * scheduling); only a turn that makes more - a burst - spreads them. */
#define HC_LANE_INLINE       8

struct hpool;
struct hconn;
struct hjob;
struct hlane;
struct hqueue;

struct httpc {
    struct event_base *base;
    CURLM             *multi;
    struct event      *timer;
    struct event      *kick;       /* fast path: deliver done-list entries on the loop */
    struct httpc_req  *all;        /* doubly linked: every live request */
    struct httpc_req  *done_head;  /* finished, callback pending */
    struct httpc_req  *done_tail;
    int                n_active;
    int                dispatching;
    int                fast_ok;    /* the fast path may be used (no proxy env, not disabled) */
    int                fast_loopback; /* ... for loopback URLs (not disabled; proxies never apply) */
    struct hpool      *pools;      /* fast path: one per host:port */
    char              *last_url;   /* fast path: the last URL parsed (an agent's calls repeat it) */
    struct hpool      *last_pool;  /* ... its pool */
    size_t             last_after; /* ... where its target starts ("", "/..." or "?...") */
    CURL              *idle[HTTPC_IDLE_EASY];  /* finished easy handles, reset, for reuse */
    int                n_idle;
    _Atomic int64_t    n_connects; /* fast path: connections opened so far */
    int                max_idle;   /* idle keep-alive connections kept per pool */
    /* I/O lanes (httpc_set_io_threads): fast-path requests run on these */
    struct hlane      *lanes;
    int                n_lanes;
    int                next_lane;
    int                lane_inline; /* requests per loop turn written here before lanes take the rest */
    int                inline_used; /* ... this turn */
    int64_t            lane_requests; /* requests handed to lanes so far */
    int                lanes_stopped; /* destroy joined them: jobs are freed here */
    struct event      *flush;      /* posts the jobs made during this loop turn */
    int                flush_armed;
    struct hqueue     *rets;       /* finished jobs the lanes send back */
};

struct httpc_req {
    struct httpc      *h;
    CURL              *easy;       /* curl path; NULL on the fast path */
    struct curl_slist *hdrs;
    httpc_done_fn      done;
    void              *ud;
    struct httpc_req  *prev, *next;   /* h->all */
    struct httpc_req  *done_next;
    int                on_done_list;
    int                in_multi;
    int                in_callback;
    CURLcode           result;
    struct httpc_reply rep;        /* status, body, headers (both paths); parse state (fast path) */
    char               errbuf[CURL_ERROR_SIZE];
    /* fast path */
    struct hpool      *pool;
    struct hconn      *conn;       /* while in flight */
    char              *out;        /* request bytes */
    size_t             out_len, out_off;
    int                retried;    /* resent once after a stale keep-alive connection */
    long               timeout_ms;
    int64_t            deadline_ns;/* 0: none */
    struct event      *tmo;        /* lazily made: connect / request timeout */
    int                got_bytes;  /* any reply byte arrived */
    httpc_peek_fn      peek;       /* NULL: none (httpc_set_peek) */
    int                peeked;     /* peek ended it (curl path: the write abort is not an error) */
    struct hjob       *job;        /* lanes: the job carrying it, until its result arrived */
    int                took_idle;  /* fast path: started on a pooled idle connection */
    int                kept_conn;  /* ... and left its connection idle in the pool */
};

struct hpool {
    struct httpc         *h;
    struct sockaddr_storage sa;
    socklen_t             salen;
    char                 *key;     /* "host:port" as in the URL (the Host header) */
    struct hconn         *idle;    /* doubly linked, most recently used first */
    int                   n_idle;
    /* Caller's loop with lanes: per lane, the idle connections to this
     * host:port the loop counts in that lane's pool (+1 for each request
     * that left its connection there, -1 for each sent to use one; reset
     * when a lane found none).  A hint for where to send the next
     * request; NULL until a lane kept one. */
    int                  *lane_idle;
    struct hpool         *next;
};

struct hconn {
    struct hpool     *pool;
    int               fd;
    struct event     *rd;          /* EV_READ | EV_PERSIST, for the connection's life */
    struct event     *wr;          /* EV_WRITE: connecting, or request not fully written */
    int               connecting;
    int               reused;      /* has carried a complete reply before */
    struct httpc_req *req;         /* BUSY: the request; NULL when IDLE */
    char             *in;          /* reply bytes not consumed yet */
    size_t            in_len, in_cap;
    struct hconn     *prev, *next; /* pool's idle list */
};

/* One per socket curl watches; its event is re-assigned in place when
 * curl changes what it waits for (no free/new per change). */
struct sockinfo {
    struct event *ev;
    short         kind;
};

int64_t orch_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static void hconn_close(struct hconn *c);
static void hc_release(struct httpc_req *r, int reusable);
static void lane_abandon(struct httpc_req *r);
static void lane_take_back(struct httpc_req *r);
static void lanes_stop(struct httpc *h);
static void lanes_release(struct httpc *h);
static void arm_flush(struct httpc *h);
static int  lane_post(struct httpc *h, struct httpc_req *r, struct hpool *p, char *out, size_t out_len,
                      long timeout_ms, int lane);
static int  lane_with_idle(struct httpc *h, const struct hpool *p);

static void req_free(struct httpc_req *r)
{
    struct httpc *h = r->h;
    if (r->job)
        lane_abandon(r);
    if (r->in_multi) {
        curl_multi_remove_handle(h->multi, r->easy);
        r->in_multi = 0;
    }
    if (r->conn)
        hc_release(r, 0);      /* cancelled in flight: the connection cannot be reused */
    if (r->on_done_list) {
        struct httpc_req **pp = &h->done_head, *prev = NULL;
        while (*pp && *pp != r) { prev = *pp; pp = &(*pp)->done_next; }
        if (*pp) {
            *pp = r->done_next;
            if (h->done_tail == r)
                h->done_tail = prev;
        }
        r->on_done_list = 0;
    }
    if (r->prev) r->prev->next = r->next; else h->all = r->next;
    if (r->next) r->next->prev = r->prev;
    h->n_active--;
    if (r->easy && h->n_idle < HTTPC_IDLE_EASY) {
        curl_easy_reset(r->easy);
        h->idle[h->n_idle++] = r->easy;
    } else if (r->easy) {
        curl_easy_cleanup(r->easy);
    }
    if (r->tmo)
        event_free(r->tmo);
    curl_slist_free_all(r->hdrs);
    free(r->out);
    httpc_reply_clear(&r->rep);
    free(r);
}

static void dispatch_done(struct httpc *h)
{
    if (h->dispatching)
        return;
    h->dispatching = 1;
    while (h->done_head) {
        struct httpc_req *r = h->done_head;
        h->done_head = r->done_next;
        if (!h->done_head)
            h->done_tail = NULL;
        r->on_done_list = 0;
        struct httpc_response resp = {0};
        if (r->rep.too_big) {
            resp.transport_error = CURLE_FILESIZE_EXCEEDED;
            resp.error = "response too large";
        } else if (r->result != CURLE_OK) {
            resp.transport_error = (int)r->result;
            resp.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result);
        } else {
            resp.error = "";
            resp.status = r->rep.status;
        }
        resp.body = r->rep.body ? r->rep.body : "";
        resp.body_len = r->rep.len;
        resp.content_type = r->rep.content_type;
        resp.session_id = r->rep.session_id;
        resp.agent_recv_ns = r->rep.recv_ns;
        resp.agent_send_ns = r->rep.send_ns;
        httpc_done_fn cb = r->done;
        void *ud = r->ud;
        /* resp points into r: free only after the callback returns; a
         * cancel of r from inside its own callback is a no-op. */
        r->in_callback = 1;
        cb(ud, &resp);
        req_free(r);
    }
    h->dispatching = 0;
}

static void push_done(struct httpc_req *r)
{
    struct httpc *h = r->h;
    r->on_done_list = 1;
    r->done_next = NULL;
    if (h->done_tail) h->done_tail->done_next = r; else h->done_head = r;
    h->done_tail = r;
}

static void check_multi_info(struct httpc *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct httpc_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->result = r->peeked ? CURLE_OK : msg->data.result;
        if (r->result == CURLE_OK)
            curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->rep.status);
        curl_multi_remove_handle(h->multi, r->easy);
        r->in_multi = 0;
        push_done(r);
    }
    dispatch_done(h);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *h = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(h->multi, fd, action, &running);
    check_multi_info(h);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *h = arg;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(h);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    dispatch_done(arg);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct httpc *h = userp;
    struct sockinfo *si = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (si) {
            event_free(si->ev);
            free(si);
            curl_multi_assign(h->multi, s, NULL);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (!si) {
        si = calloc(1, sizeof *si);
        if (!si)
            return -1;
        if (!(si->ev = event_new(h->base, s, kind, on_socket_event, h))) {
            free(si);
            return -1;
        }
        si->kind = kind;
        curl_multi_assign(h->multi, s, si);
        return event_add(si->ev, NULL) ? -1 : 0;
    }
    if (si->kind == kind)
        return 0;
    event_del(si->ev);
    if (event_assign(si->ev, h->base, s, kind, on_socket_event, h))
        return -1;
    si->kind = kind;
    return event_add(si->ev, NULL) ? -1 : 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    struct httpc *h = userp;
    if (timeout_ms < 0) {
        evtimer_del(h->timer);
        return 0;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    evtimer_add(h->timer, &tv);
    return 0;
}

/* curl honours these for http:// URLs; the fast path does not speak to
 * proxies, so their presence sends every request through curl. */
static int proxy_in_env(void)
{
    static const char *const names[] = { "http_proxy", "all_proxy", "ALL_PROXY" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (v && *v)
            return 1;
    }
    return 0;
}

struct httpc *httpc_create(struct event_base *base)
{
    pthread_once(&curl_once, curl_init_once);
    struct httpc *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->base = base;
    h->max_idle = HC_MAX_IDLE_PER_POOL;
    h->lane_inline = HC_LANE_INLINE;
    const char *li = getenv("PARASERVE_HTTPC_LANE_INLINE");
    char *end;
    long v = li && *li ? strtol(li, &end, 10) : -1;
    if (li && *li && !*end && v >= 0 && v <= 1000000)
        h->lane_inline = (int)v;            /* anything else: the default */
    h->multi = curl_multi_init();
    h->timer = evtimer_new(base, on_timer, h);
    h->kick = event_new(base, -1, 0, on_kick, h);
    if (!h->multi || !h->timer || !h->kick) {
        httpc_destroy(h);
        return NULL;
    }
    const char *mode = getenv("PARASERVE_HTTPC");
    h->fast_loopback = !(mode && !strcmp(mode, "curl"));
    h->fast_ok = h->fast_loopback && !proxy_in_env();
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 4096L);
    return h;
}

void httpc_destroy(struct httpc *h)
{
    if (!h)
        return;
    if (h->n_lanes)
        lanes_stop(h);
    while (h->all)
        req_free(h->all);             /* after lanes_stop: their jobs are freed with them */
    lanes_release(h);
    while (h->pools) {
        struct hpool *p = h->pools;
        while (p->idle)
            hconn_close(p->idle);
        h->pools = p->next;
        free(p->key);
        free(p->lane_idle);
        free(p);
    }
    free(h->last_url);
    while (h->n_idle > 0)
        curl_easy_cleanup(h->idle[--h->n_idle]);
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->timer)
        event_free(h->timer);
    if (h->kick)
        event_free(h->kick);
    free(h);
}

int httpc_active(const struct httpc *h)
{
    return h ? h->n_active : 0;
}


static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    size_t len = sz * n;
    struct httpc_req *r = ud;
    if (httpc_reply_append_body(&r->rep, p, len))
        return 0;
    if (r->peek && len) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 && code < 300 && r->peek(r->ud, r->rep.body, r->rep.len)) {
            r->peeked = 1;
            return 0;              /* ends the transfer; check_multi_info: not an error */
        }
    }
    return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct httpc_req *r = ud;
    httpc_reply_note_header(&r->rep, p, sz * n);
    return sz * n;
}

/* ---- fast path: HTTP/1.1 over pooled keep-alive connections ---------------- */

static void hc_fail(struct httpc_req *r, CURLcode code, const char *msg);
static int  hc_start(struct httpc_req *r);
static void hc_on_read(evutil_socket_t fd, short what, void *ud);
static void hc_on_write(evutil_socket_t fd, short what, void *ud);

static void pool_unlink_idle(struct hconn *c)
{
    struct hpool *p = c->pool;
    if (c->prev) c->prev->next = c->next; else p->idle = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    p->n_idle--;
}

/* Free a connection (IDLE or detached from its request). */
static void hconn_close(struct hconn *c)
{
    if (!c->req && (c->prev || c->pool->idle == c))
        pool_unlink_idle(c);
    if (c->rd) event_free(c->rd);
    if (c->wr) event_free(c->wr);
    if (c->fd >= 0) close(c->fd);
    free(c->in);
    free(c);
}

/* Detach r from its connection: back to the pool when `reusable`, else closed. */
static void hc_release(struct httpc_req *r, int reusable)
{
    struct hconn *c = r->conn;
    r->conn = NULL;
    if (r->tmo)
        event_del(r->tmo);
    if (!c)
        return;
    c->req = NULL;
    struct hpool *p = c->pool;
    if (!reusable || c->in_len || p->n_idle >= p->h->max_idle) {
        hconn_close(c);
        return;
    }
    if (c->wr)
        event_del(c->wr);
    r->kept_conn = 1;
    c->reused = 1;
    c->prev = NULL;
    c->next = p->idle;
    if (p->idle)
        p->idle->prev = c;
    p->idle = c;
    p->n_idle++;
}

static void hc_complete(struct httpc_req *r)
{
    /* A reply that came before the whole request was written (an early
     * error) leaves the connection mid-request: not reusable. */
    hc_release(r, r->rep.keep_alive && r->out_off == r->out_len);
    r->result = CURLE_OK;
    push_done(r);
}

static void hc_fail(struct httpc_req *r, CURLcode code, const char *msg)
{
    hc_release(r, 0);
    r->result = code;
    snprintf(r->errbuf, sizeof r->errbuf, "%s", msg);
    push_done(r);
}

/* A reused connection died before any reply byte: the server closed it
 * while idle (keep-alive timeout) as we sent.  Resend once on a fresh one.
 * Returns 0 when that does not apply; 1 when it took the request over (it
 * is then in flight again, or failed and queued on the done list). */
static int hc_retry_stale(struct httpc_req *r)
{
    struct hconn *c = r->conn;
    if (!c || !c->reused || r->got_bytes || r->retried)
        return 0;
    r->retried = 1;
    hc_release(r, 0);
    r->out_off = 0;
    hc_start(r);
    return 1;
}

static void hc_timeout(evutil_socket_t fd, short what, void *ud)
{
    struct httpc_req *r = ud;
    struct httpc *h = r->h;
    char msg[128];
    if (r->conn && r->conn->connecting)
        snprintf(msg, sizeof msg, "Failed to connect: no connection within %d ms", HC_CONNECT_MS);
    else
        snprintf(msg, sizeof msg, "Operation timed out after %ld milliseconds", r->timeout_ms);
    hc_fail(r, CURLE_OPERATION_TIMEDOUT, msg);
    dispatch_done(h);
}

/* Arm the request's timer for its next deadline (connect, then the whole
 * request).  0 or -1. */
static int hc_arm_timer(struct httpc_req *r, int connecting)
{
    int64_t now = orch_now_ns();
    int64_t due = r->deadline_ns;
    if (connecting && (!due || due > now + (int64_t)HC_CONNECT_MS * 1000000))
        due = now + (int64_t)HC_CONNECT_MS * 1000000;
    if (!due) {
        if (r->tmo)
            event_del(r->tmo);
        return 0;
    }
    if (!r->tmo && !(r->tmo = evtimer_new(r->h->base, hc_timeout, r)))
        return -1;
    int64_t us = due > now ? (due - now) / 1000 : 0;
    struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
    return evtimer_add(r->tmo, &tv);
}

/* Write what is left of the request.  0: all written or EV_WRITE armed;
 * -1: the connection failed (errno set). */
static int hc_flush(struct httpc_req *r)
{
    struct hconn *c = r->conn;
    while (r->out_off < r->out_len) {
        ssize_t n = send(c->fd, r->out + r->out_off, r->out_len - r->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            r->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return event_add(c->wr, NULL) ? -1 : 0;
        if (n == 0)
            errno = EPIPE;
        return -1;
    }
    return 0;
}

static struct hconn *hconn_new(struct hpool *p)
{
    struct httpc *h = p->h;
    struct hconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->pool = p;
    c->fd = socket(p->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    h->n_connects++;          /* hc_start connects it next */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->rd = event_new(h->base, c->fd, EV_READ | EV_PERSIST, hc_on_read, c);
    c->wr = event_new(h->base, c->fd, EV_WRITE, hc_on_write, c);
    if (!c->rd || !c->wr) {
        hconn_close(c);
        return NULL;
    }
    return c;
}

/* Put r on a connection (idle one first) and start writing.  0, or -1
 * with r already failed and on the done list (kick armed). */
static int hc_start(struct httpc_req *r)
{
    struct hpool *p = r->pool;
    struct hconn *c = p->idle;
    char msg[160];
    r->took_idle = c != NULL;
    if (c) {
        pool_unlink_idle(c);
    } else if (!(c = hconn_new(p))) {
        snprintf(msg, sizeof msg, "Failed to create a socket: %s", strerror(errno));
        goto fail;
    } else if (connect(c->fd, (struct sockaddr *)&p->sa, p->salen) == 0) {
        if (event_add(c->rd, NULL)) {
            hconn_close(c);
            snprintf(msg, sizeof msg, "event_add failed");
            goto fail;
        }
    } else if (errno == EINPROGRESS) {
        /* EV_WRITE is armed only if the request cannot be written at once
         * (hc_flush on EAGAIN): on loopback the handshake is done inside
         * connect(), and a write event armed here would cost two epoll
         * changes and a wakeup per connection for nothing. */
        c->connecting = 1;
        if (event_add(c->rd, NULL)) {
            hconn_close(c);
            snprintf(msg, sizeof msg, "event_add failed");
            goto fail;
        }
    } else {
        snprintf(msg, sizeof msg, "Failed to connect to %s: %s", p->key, strerror(errno));
        hconn_close(c);
        r->result = CURLE_COULDNT_CONNECT;
        goto fail_code;
    }
    c->req = r;
    r->conn = c;
    r->rep.head_done = r->got_bytes = 0;
    if (hc_arm_timer(r, c->connecting)) {
        snprintf(msg, sizeof msg, "event_add failed");
        goto fail_conn;
    }
    /* Write at once, even while connecting: on loopback the handshake has
     * usually completed inside connect(), and a request that leaves now is
     * not held behind the rest of a burst.  Not yet connected: EAGAIN, and
     * hc_on_write() takes over when the socket is writable. */
    if (!hc_flush(r)) {
        if (c->connecting && r->out_off > 0) {
            c->connecting = 0;
            if (hc_arm_timer(r, 0)) {
                snprintf(msg, sizeof msg, "event_add failed");
                goto fail_conn;
            }
        }
        return 0;
    }
    if (c->connecting) {
        snprintf(msg, sizeof msg, "Failed to connect to %s: %s", p->key, strerror(errno));
        goto fail_conn;
    }
    if (hc_retry_stale(r))
        return r->on_done_list ? -1 : 0;
    snprintf(msg, sizeof msg, "Send failure: %s", strerror(errno));
    r->result = CURLE_SEND_ERROR;
    goto fail_conn_code;
fail:
    r->result = CURLE_COULDNT_CONNECT;
    goto fail_code;
fail_conn:
    r->result = CURLE_COULDNT_CONNECT;
fail_conn_code:
    hc_release(r, 0);
fail_code:
    snprintf(r->errbuf, sizeof r->errbuf, "%s", msg);
    push_done(r);
    event_active(r->h->kick, 0, 0);
    return -1;
}

static void hc_on_write(evutil_socket_t fd, short what, void *ud)
{
    struct hconn *c = ud;
    struct httpc_req *r = c->req;
    if (!r)
        return;
    struct httpc *h = r->h;
    if (c->connecting) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
            char msg[160];
            snprintf(msg, sizeof msg, "Failed to connect to %s: %s", c->pool->key, strerror(err ? err : errno));
            hc_fail(r, CURLE_COULDNT_CONNECT, msg);
            dispatch_done(h);
            return;
        }
        c->connecting = 0;
        if (hc_arm_timer(r, 0)) {
            hc_fail(r, CURLE_OUT_OF_MEMORY, "event_add failed");
            dispatch_done(h);
            return;
        }
    }
    if (hc_flush(r) && !hc_retry_stale(r)) {
        char msg[160];
        snprintf(msg, sizeof msg, "Send failure: %s", strerror(errno));
        hc_fail(r, CURLE_SEND_ERROR, msg);
    }
    dispatch_done(h);
}

static void hc_on_read(evutil_socket_t fd, short what, void *ud)
{
    struct hconn *c = ud;
    struct httpc_req *r = c->req;
    char msg[160] = "";
    int eof = 0, err = 0;
    /* c->in stays under 2 * HTTPC_HEAD_MAX: body bytes are moved out to the
     * request after each parse, and an over-long head fails it. */
    for (;;) {
        if (c->in_len > HTTPC_HEAD_MAX)
            break;
        if (c->in_cap - c->in_len < HC_READ_MIN) {
            size_t cap = c->in_cap ? c->in_cap * 2 : HC_IN_INIT;
            char *nb = realloc(c->in, cap);
            if (!nb) {
                err = ENOMEM;
                break;
            }
            c->in = nb;
            c->in_cap = cap;
        }
        size_t room = c->in_cap - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if ((size_t)n < room)
                break;
            if (r && r->rep.head_done)
                break;                     /* move body bytes out before reading on */
            continue;
        }
        if (n == 0) {
            eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            err = errno;
        break;
    }
    if (!r) {                              /* IDLE: the server closed it, or sent junk */
        if (eof || err || c->in_len)
            hconn_close(c);
        return;
    }
    struct httpc *h = r->h;
    if (c->in_len)
        r->got_bytes = 1;
    int rc = 0;
    if (!r->rep.head_done)
        rc = httpc_reply_parse_head(&r->rep, c->in, &c->in_len, msg, sizeof msg);
    if (r->rep.head_done)
        rc = httpc_reply_parse_body(&r->rep, c->in, &c->in_len, msg, sizeof msg);
    if (rc > 0) {
        if (eof || err)
            r->rep.keep_alive = 0;
        hc_complete(r);
    } else if (rc < 0) {
        hc_fail(r, r->rep.too_big ? CURLE_FILESIZE_EXCEEDED : CURLE_RECV_ERROR, msg);
    } else if (r->peek && r->rep.head_done && r->rep.status >= 200 && r->rep.status < 300 &&
               r->rep.len &&
               r->peek(r->ud, r->rep.body, r->rep.len)) {
        r->rep.keep_alive = 0;             /* the rest of the stream is not read */
        hc_complete(r);
    } else if (eof && r->rep.head_done && r->rep.framing == HB_EOF) {
        hc_complete(r);                    /* close-delimited body */
    } else if (eof || err) {
        if (c->connecting) {               /* refused or reset during the handshake */
            snprintf(msg, sizeof msg, "Failed to connect to %s: %s", c->pool->key,
                     strerror(err ? err : ECONNREFUSED));
            hc_fail(r, CURLE_COULDNT_CONNECT, msg);
        } else if (hc_retry_stale(r)) {
            /* resent on a fresh connection (or failed and queued) */
        } else if (!r->got_bytes) {
            hc_fail(r, CURLE_GOT_NOTHING, "Empty reply from server");
        } else {
            snprintf(msg, sizeof msg, "Connection closed before the reply ended%s%s",
                     err ? ": " : "", err ? strerror(err) : "");
            hc_fail(r, CURLE_PARTIAL_FILE, msg);
        }
    }
    dispatch_done(h);
}

static struct hpool *pool_get(struct httpc *h, const char *key, const struct sockaddr_storage *sa,
                              socklen_t salen)
{
    for (struct hpool *p = h->pools; p; p = p->next)
        if (!strcmp(p->key, key))
            return p;
    struct hpool *p = calloc(1, sizeof *p);
    if (!p || !(p->key = strdup(key))) {
        free(p);
        return NULL;
    }
    p->h = h;
    p->sa = *sa;
    p->salen = salen;
    p->next = h->pools;
    h->pools = p;
    return p;
}

/* Split an http:// URL whose host is a numeric IP into address, Host value
 * and request target.  0, or -1 when the fast path does not apply (curl
 * takes the request). */
static int fast_url(const char *url, struct sockaddr_storage *sa, socklen_t *salen,
                    char *authority, size_t alen, const char **target)
{
    if (strncmp(url, "http://", 7))
        return -1;
    const char *a = url + 7;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == '#')
            return -1;
    size_t n = strcspn(a, "/?");
    if (!n || n >= alen || memchr(a, '@', n))
        return -1;
    memcpy(authority, a, n);
    authority[n] = 0;
    *target = a[n] == '/' ? a + n : NULL;   /* "?q" or "" : see httpc_request */
    char host[64];
    const char *port_s = NULL;
    if (authority[0] == '[') {
        char *rb = strchr(authority, ']');
        if (!rb || (size_t)(rb - authority - 1) >= sizeof host)
            return -1;
        memcpy(host, authority + 1, (size_t)(rb - authority - 1));
        host[rb - authority - 1] = 0;
        if (rb[1] == ':')
            port_s = rb + 2;
        else if (rb[1])
            return -1;
    } else {
        char *colon = strchr(authority, ':');
        size_t hl = colon ? (size_t)(colon - authority) : n;
        if (hl >= sizeof host)
            return -1;
        memcpy(host, authority, hl);
        host[hl] = 0;
        port_s = colon ? colon + 1 : NULL;
    }
    long port = 80;
    if (port_s) {
        char *e;
        port = strtol(port_s, &e, 10);
        if (!*port_s || *e || port < 1 || port > 65535)
            return -1;
    }
    memset(sa, 0, sizeof *sa);
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *salen = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *salen = sizeof *s6;
    } else {
        return -1;                         /* a name: curl resolves it */
    }
    return 0;
}

/* Whether url is http:// to a loopback address (127.0.0.0/8, ::1).  Such
 * a request never goes through a proxy from the environment: a proxy would
 * see its headers (serve's local agents' token) and, elsewhere, could not
 * reach it anyway. */
static int url_is_loopback(const char *url)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    char authority[256];
    const char *target;
    if (fast_url(url, &sa, &salen, authority, sizeof authority, &target))
        return 0;
    if (sa.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&sa)->sin_addr.s_addr) >> 24) == 127;
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&sa)->sin6_addr);
}

static int out_add(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        char *nb = ps_grow(*buf, cap, *len + n + 1, 1, 512);
        if (!nb)
            return -1;
        *buf = nb;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    return 0;
}

/* Headers as curl would send them: "Name: value" lines; "Name:" with no
 * value removes a header (curl's convention; "Expect:") and is skipped. */
static int out_headers(char **buf, size_t *len, size_t *cap, char *const *hs)
{
    for (char *const *p = hs; p && *p; p++) {
        const char *colon = strchr(*p, ':');
        if (!colon || colon == *p || strpbrk(*p, "\r\n"))
            continue;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (!*v)
            continue;
        if (out_add(buf, len, cap, *p, strlen(*p)) || out_add(buf, len, cap, "\r\n", 2))
            return -1;
    }
    return 0;
}

static struct httpc_req *fast_request(struct httpc *h, struct httpc_req *r, const char *method,
                                      const char *url, char *const *headers, char *const *headers2,
                                      const char *body, size_t body_len, long timeout_ms)
{
    struct hpool *p;
    const char *after;                     /* "", "/..." or "?..." */
    if (h->last_url && !strcmp(url, h->last_url)) {
        p = h->last_pool;                  /* the same text parses the same */
        after = url + h->last_after;
    } else {
        struct sockaddr_storage sa;
        socklen_t salen;
        char authority[300];
        const char *target;
        if (fast_url(url, &sa, &salen, authority, sizeof authority, &target))
            return NULL;
        if (!(p = pool_get(h, authority, &sa, salen)))
            return NULL;
        after = url + 7 + strlen(authority);
        free(h->last_url);
        if ((h->last_url = strdup(url))) { /* else no cache: parsed each time */
            h->last_pool = p;
            h->last_after = (size_t)(after - url);
        }
    }
    const char *target = *after == '/' ? after : NULL;
    size_t cap = 0, len = 0;
    char *out = NULL;
    char line[128];
    int is_post = !strcmp(method, "POST");
    int bad = out_add(&out, &len, &cap, method, strlen(method)) || out_add(&out, &len, &cap, " ", 1) ||
              (!target && out_add(&out, &len, &cap, "/", 1)) ||
              out_add(&out, &len, &cap, after, strlen(after)) ||
              out_add(&out, &len, &cap, " HTTP/1.1\r\nHost: ", 17) ||
              out_add(&out, &len, &cap, p->key, strlen(p->key)) || out_add(&out, &len, &cap, "\r\n", 2) ||
              out_headers(&out, &len, &cap, headers) || out_headers(&out, &len, &cap, headers2);
    if (!bad && is_post) {
        /* the digits by hand: a printf per call showed in the loop's profile */
        char *d = line + sizeof line;
        size_t v = body_len;
        *--d = '\n';
        *--d = '\r';
        do {
            *--d = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        bad = out_add(&out, &len, &cap, "Content-Length: ", 16) ||
              out_add(&out, &len, &cap, d, (size_t)(line + sizeof line - d));
    }
    bad = bad || out_add(&out, &len, &cap, "\r\n", 2) ||
          (is_post && body_len && out_add(&out, &len, &cap, body, body_len));
    if (bad) {
        free(out);
        return NULL;
    }
    if (h->n_lanes) {
        /* The loop writes it while this turn's inline allowance lasts and
         * its own pool has an idle connection; else a lane that has one
         * (so a warm pool stays warm whichever way a load arrives); else,
         * while the allowance lasts, the loop on a new connection; else
         * the next lane in turn. */
        int inline_ok = h->inline_used < h->lane_inline;
        int lane = inline_ok && p->idle ? -1 : lane_with_idle(h, p);
        if (lane < 0 && inline_ok) {
            h->inline_used++;
            arm_flush(h);                  /* the turn's end resets the count */
        } else {
            if (lane_post(h, r, p, out, len, timeout_ms, lane)) {
                free(out);
                return NULL;
            }
            h->lane_requests++;
            return r;
        }
    }
    r->out = out;
    r->out_len = len;
    r->pool = p;
    r->timeout_ms = timeout_ms;
    r->deadline_ns = timeout_ms > 0 ? orch_now_ns() + (int64_t)timeout_ms * 1000000 : 0;
    hc_start(r);              /* a failure is delivered through the kick event */
    return r;
}

/* ---- I/O lanes ------------------------------------------------------------
 * With httpc_set_io_threads(h, n), fast-path requests are carried out on n
 * lane threads, each an httpc of its own (own event base, own keep-alive
 * pools) on which the request runs exactly as it would on the caller's
 * loop.  The caller's loop keeps the requests it hands out (the proxies:
 * what httpc_request returns, what callbacks and httpc_cancel see); the
 * socket work - connect, send, recv, HTTP parsing - is the lanes'.
 *
 * A job carries one request to a lane and its reply back:
 *   made (caller's loop, in its lane's `pend` list; posted = 0)
 *   --flush, at the end of the loop turn or when HC_LANE_BATCH wait: one
 *     lock and at most one eventfd write per batch--> LIVE on the lane
 *   --reply or failure on the lane: CAS LIVE->DONE--> back on `rets`
 *     (one eventfd write per batch) --> its proxy gets the reply on the
 *     caller's loop and is delivered like any other (done list, callback)
 *   httpc_cancel of the proxy:
 *     not posted: the job is unlinked and freed on the spot;
 *     LIVE: CAS LIVE->CANCEL and a cancel message, sent at once; the lane
 *       cancels the request if it still runs and frees the job (the
 *       caller's loop never touches a job again once CANCEL is set);
 *     DONE: the job is orphaned and freed when it arrives back.
 * So each job is freed exactly once, by whichever side the state names.
 * Requests with a peek function (streams read as they arrive) stay on the
 * caller's loop: httpc_set_peek takes an unposted job back.  So do the
 * first HC_LANE_INLINE requests of each loop turn (httpc_set_lane_inline):
 * they never become jobs. */

enum { JOB_LIVE, JOB_CANCEL, JOB_DONE };

struct hjob {
    struct httpc_req   *proxy;     /* caller's loop: the request it carries */
    struct hlane       *lane;
    struct hpool       *origin;    /* caller's pool: lanes read only its key and address
                                      (immutable); lane_idle is the caller's */
    char               *out;       /* request bytes, until the lane takes them */
    size_t              out_len;
    long                timeout_ms;
    int64_t             deadline_ns;
    _Atomic int         state;
    int                 posted;    /* caller's loop: handed to the lane */
    int                 orphan;    /* caller's loop: cancelled while DONE */
    int                 to_idle;   /* caller's loop: sent to this lane for an idle connection */
    int                 took_idle; /* lane -> caller: it started on an idle connection */
    int                 kept_conn; /* lane -> caller: it left its connection idle there */
    struct hjob        *pprev_link;/* caller's loop: `pend` list (doubly linked) */
    struct hjob        *pnext;
    struct httpc_req   *inner;     /* lane: its request while in flight */
    CURLcode            result;    /* lane -> caller: as httpc_req */
    char                errbuf[CURL_ERROR_SIZE];
    struct httpc_reply  rep;
    struct hjob        *next;      /* a queue: the lane's `starts`, or `rets` */
    struct hjob        *next_cancel; /* the lane's `cancels` */
};

struct hlane {
    struct httpc      *owner;      /* the caller's httpc */
    struct httpc      *h;          /* the lane's own, used on its thread only */
    struct event_base *base;
    pthread_t          thread;
    int                running;
    struct hqueue     *starts;     /* jobs to start; its lock also guards: */
    struct hjob       *cancels;    /* starts->mu */
    int                stop;       /* starts->mu */
    /* caller's loop only, posted at the next flush (or at HC_LANE_BATCH) */
    struct hjob       *pend, *pend_tail;
    int                n_pend;
};

static void job_free(struct hjob *j)
{
    free(j->out);
    httpc_reply_clear(&j->rep);
    free(j);
}

static void eventfd_signal(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void eventfd_drain(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}

static void pend_unlink(struct hjob *j)
{
    struct hlane *l = j->lane;
    l->n_pend--;
    if (j->pprev_link) j->pprev_link->pnext = j->pnext; else l->pend = j->pnext;
    if (j->pnext) j->pnext->pprev_link = j->pprev_link; else l->pend_tail = j->pprev_link;
    j->pprev_link = j->pnext = NULL;
}

static void arm_flush(struct httpc *h)
{
    if (!h->flush_armed) {
        h->flush_armed = 1;
        event_active(h->flush, 0, 0);
    }
}

/* A handover queue between two threads: jobs linked by `next`, a lock, and
 * an eventfd that wakes the reader's loop (its event calls `cb`).  The
 * eventfd is written only when the reader has not been woken since it
 * last took the queue, so a burst costs one write. */
struct hqueue {
    pthread_mutex_t mu;
    struct hjob    *head, *tail;   /* mu */
    int             signalled;     /* mu: fd written, not yet taken */
    int             fd;
    struct event   *ev;
};

/* NULL with *step / *err saying what failed. */
static struct hqueue *hqueue_new(struct event_base *reader, event_callback_fn cb, void *arg, const char **step,
                                 int *err)
{
    struct hqueue *q = calloc(1, sizeof *q);
    *step = "out of memory";
    *err = ENOMEM;
    if (!q)
        return NULL;
    if ((*err = pthread_mutex_init(&q->mu, NULL))) {
        *step = "mutex";
        free(q);
        return NULL;
    }
    if ((q->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        *step = "eventfd";
        *err = errno;
    } else if (!(q->ev = event_new(reader, q->fd, EV_READ | EV_PERSIST, cb, arg)) || event_add(q->ev, NULL)) {
        *step = "event loop";
        *err = ENOMEM;
    } else {
        return q;
    }
    if (q->ev) event_free(q->ev);
    if (q->fd >= 0) close(q->fd);
    pthread_mutex_destroy(&q->mu);
    free(q);
    return NULL;
}

/* The reader's event must be gone with its loop's thread (or be this one). */
static void hqueue_free(struct hqueue *q)
{
    if (!q)
        return;
    event_free(q->ev);
    close(q->fd);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/* With q->mu held: note that the reader is being woken; 1 when the caller
 * must write the eventfd after unlocking. */
static int hqueue_mark_locked(struct hqueue *q)
{
    int wake = !q->signalled;
    q->signalled = 1;
    return wake;
}

/* Append the chain first..last and wake the reader. */
static void hqueue_push(struct hqueue *q, struct hjob *first, struct hjob *last)
{
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = first; else q->head = first;
    q->tail = last;
    int wake = hqueue_mark_locked(q);
    pthread_mutex_unlock(&q->mu);
    if (wake)
        eventfd_signal(q->fd);
}

/* Reader, with q->mu held (after reading the eventfd): the whole queue. */
static struct hjob *hqueue_take_locked(struct hqueue *q)
{
    struct hjob *j = q->head;
    q->head = q->tail = NULL;
    q->signalled = 0;
    return j;
}

/* Caller's loop: hand lane l the jobs made for it so far. */
static void lane_post_pending(struct hlane *l)
{
    struct hjob *first = l->pend, *last = l->pend_tail;
    if (!first)
        return;
    l->pend = l->pend_tail = NULL;
    l->n_pend = 0;
    for (struct hjob *j = first, *n; j; j = n) {   /* `pend` becomes the tail of `starts` */
        n = j->pnext;
        j->posted = 1;
        j->next = n;
        j->pprev_link = j->pnext = NULL;
    }
    hqueue_push(l->starts, first, last);
}

/* Caller's loop: post every lane's jobs made this turn. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *h = arg;
    h->flush_armed = 0;
    h->inline_used = 0;
    for (int i = 0; i < h->n_lanes; i++)
        lane_post_pending(&h->lanes[i]);
}

/* Lane: hand a DONE job back to the caller's loop. */
static void lane_return(struct hjob *j)
{
    j->next = NULL;
    hqueue_push(j->lane->owner->rets, j, j);
}

/* Lane: the job's request ended (its done callback, on the lane's loop). */
static void lane_done(void *ud, const struct httpc_response *resp)
{
    (void)resp;
    struct hjob *j = ud;
    struct httpc_req *in = j->inner;
    j->inner = NULL;
    int live = JOB_LIVE;
    if (!atomic_compare_exchange_strong(&j->state, &live, JOB_DONE))
        return;                            /* cancelled: its cancel message frees it */
    j->result = in->result;
    j->took_idle = in->took_idle;
    j->kept_conn = in->kept_conn;
    memcpy(j->errbuf, in->errbuf, sizeof j->errbuf);
    j->rep = in->rep;                      /* the reply moves to the job */
    memset(&in->rep, 0, sizeof in->rep);
    lane_return(j);
}

/* Lane: start one job's request on the lane's own httpc. */
static void lane_start(struct hlane *l, struct hjob *j)
{
    struct httpc *h = l->h;
    struct httpc_req *r = calloc(1, sizeof *r);
    struct hpool *p = r ? pool_get(h, j->origin->key, &j->origin->sa, j->origin->salen) : NULL;
    if (!r || !p) {
        free(r);
        int live = JOB_LIVE;
        if (atomic_compare_exchange_strong(&j->state, &live, JOB_DONE)) {
            j->result = CURLE_OUT_OF_MEMORY;
            snprintf(j->errbuf, sizeof j->errbuf, "http: out of memory");
            lane_return(j);
        }
        return;
    }
    r->h = h;
    r->done = lane_done;
    r->ud = j;
    r->next = h->all;
    if (h->all) h->all->prev = r;
    h->all = r;
    h->n_active++;
    r->out = j->out;
    r->out_len = j->out_len;
    j->out = NULL;
    r->pool = p;
    r->timeout_ms = j->timeout_ms;
    r->deadline_ns = j->deadline_ns;
    j->inner = r;
    hc_start(r);                           /* a failure is delivered through the lane's kick */
}

static void on_lane_wake(evutil_socket_t fd, short what, void *arg)
{
    struct hlane *l = arg;
    eventfd_drain(l->starts->fd);
    pthread_mutex_lock(&l->starts->mu);
    if (l->stop) {
        pthread_mutex_unlock(&l->starts->mu);
        event_base_loopbreak(l->base);
        return;
    }
    struct hjob *starts = hqueue_take_locked(l->starts), *cancels = l->cancels;
    l->cancels = NULL;
    pthread_mutex_unlock(&l->starts->mu);
    while (starts) {
        struct hjob *j = starts;
        starts = j->next;
        if (atomic_load(&j->state) == JOB_LIVE)
            lane_start(l, j);              /* else its cancel message is on its way */
    }
    while (cancels) {
        struct hjob *j = cancels;
        cancels = j->next_cancel;
        if (j->inner)
            httpc_cancel(j->inner);
        job_free(j);
    }
    dispatch_done(l->h);
}

static void *lane_main(void *arg)
{
    struct hlane *l = arg;
    pthread_setname_np(pthread_self(), "ps-http-io");   /* top -H, perf --comm */
    event_base_dispatch(l->base);
    return NULL;
}

/* Caller's loop: what a finished job says about its lane's idle
 * connections to its host:port (hpool.lane_idle). */
static void lane_count_idle(struct httpc *h, const struct hjob *j)
{
    struct hpool *p = j->origin;
    int k = (int)(j->lane - h->lanes);
    if (!p->lane_idle && j->kept_conn && !(p->lane_idle = calloc((size_t)h->n_lanes, sizeof *p->lane_idle)))
        return;                            /* only a hint: lanes are then taken in turn */
    if (!p->lane_idle)
        return;
    if (j->to_idle && !j->took_idle)
        p->lane_idle[k] = 0;               /* the count was stale (closed while idle) */
    if (j->kept_conn)
        p->lane_idle[k]++;
}

/* Caller's loop: a job sent to its lane for an idle connection never
 * reached the lane (taken back, or cancelled before the handover): that
 * connection is still idle there. */
static void lane_idle_unspend(const struct hjob *j)
{
    if (j->to_idle)
        j->origin->lane_idle[j->lane - j->lane->owner->lanes]++;
}

/* Caller's loop: the next lane, from the one in turn, the loop counts an
 * idle connection to p's host:port in; -1 when none. */
static int lane_with_idle(struct httpc *h, const struct hpool *p)
{
    for (int i = 0; p->lane_idle && i < h->n_lanes; i++) {
        int k = (h->next_lane + i) % h->n_lanes;
        if (p->lane_idle[k] > 0)
            return k;
    }
    return -1;
}

/* Caller's loop: replies the lanes sent back. */
static void on_rets(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *h = arg;
    eventfd_drain(h->rets->fd);
    pthread_mutex_lock(&h->rets->mu);
    struct hjob *j = hqueue_take_locked(h->rets);
    pthread_mutex_unlock(&h->rets->mu);
    while (j) {
        struct hjob *n = j->next;
        lane_count_idle(h, j);
        if (!j->orphan) {
            struct httpc_req *r = j->proxy;
            r->job = NULL;
            r->result = j->result;
            memcpy(r->errbuf, j->errbuf, sizeof r->errbuf);
            r->rep = j->rep;
            memset(&j->rep, 0, sizeof j->rep);
            push_done(r);
        }
        job_free(j);
        j = n;
    }
    dispatch_done(h);
}

/* Caller's loop: hand r (its request bytes made, pool p) to lane `lane`,
 * chosen for an idle connection there (lane_with_idle), or with lane < 0
 * to the next lane in turn. */
static int lane_post(struct httpc *h, struct httpc_req *r, struct hpool *p, char *out, size_t out_len,
                     long timeout_ms, int lane)
{
    struct hjob *j = calloc(1, sizeof *j);
    if (!j)
        return -1;
    if (lane >= 0) {
        p->lane_idle[lane]--;
        j->to_idle = 1;
    } else {
        lane = h->next_lane;
    }
    struct hlane *l = &h->lanes[lane];
    h->next_lane = (lane + 1) % h->n_lanes;
    /* A long turn: the lane starts on the waiting ones meanwhile.  Posted
     * before this job is added, so the job httpc_request returns is never
     * posted yet - httpc_set_peek right after can still take it back. */
    if (l->n_pend >= HC_LANE_BATCH)
        lane_post_pending(l);
    j->proxy = r;
    j->lane = l;
    j->origin = p;
    j->out = out;
    j->out_len = out_len;
    j->timeout_ms = timeout_ms;
    j->deadline_ns = timeout_ms > 0 ? orch_now_ns() + (int64_t)timeout_ms * 1000000 : 0;
    atomic_init(&j->state, JOB_LIVE);
    j->pprev_link = l->pend_tail;
    if (l->pend_tail) l->pend_tail->pnext = j; else l->pend = j;
    l->pend_tail = j;
    r->job = j;
    r->pool = p;
    l->n_pend++;
    arm_flush(h);
    return 0;
}

/* Caller's loop: r is freed or cancelled while its job is out. */
static void lane_abandon(struct httpc_req *r)
{
    struct hjob *j = r->job;
    struct httpc *h = r->h;
    r->job = NULL;
    if (h->lanes_stopped) {
        job_free(j);                       /* destroy: no lane runs any more */
        return;
    }
    if (!j->posted) {
        lane_idle_unspend(j);
        pend_unlink(j);
        job_free(j);
        return;
    }
    /* Cancelled after the handover: the lane may or may not have started
     * it on the idle connection it was sent for; that count stays spent
     * (an undercount: the next request the lane keeps a connection for
     * adds one back). */
    int live = JOB_LIVE;
    if (atomic_compare_exchange_strong(&j->state, &live, JOB_CANCEL)) {
        /* at once, not at the end of the turn: the connection closes now
         * even when the caller does not run its loop again */
        struct hlane *l = j->lane;
        pthread_mutex_lock(&l->starts->mu);
        j->next_cancel = l->cancels;
        l->cancels = j;
        int wake = hqueue_mark_locked(l->starts);
        pthread_mutex_unlock(&l->starts->mu);
        if (wake)
            eventfd_signal(l->starts->fd);
    } else {
        j->orphan = 1;                     /* DONE: on its way back */
    }
}

/* Caller's loop: take an unposted job back and run r here (peek). */
static void lane_take_back(struct httpc_req *r)
{
    struct hjob *j = r->job;
    if (!j || j->posted)
        return;
    pend_unlink(j);
    r->job = NULL;
    r->out = j->out;
    r->out_len = j->out_len;
    j->out = NULL;
    r->pool = j->origin;
    lane_idle_unspend(j);
    r->timeout_ms = j->timeout_ms;
    r->deadline_ns = j->deadline_ns;
    job_free(j);
    hc_start(r);                           /* a failure is delivered through the kick */
}

static void lanes_stop(struct httpc *h)
{
    for (int i = 0; i < h->n_lanes; i++) {
        struct hlane *l = &h->lanes[i];
        if (!l->running)
            continue;
        pthread_mutex_lock(&l->starts->mu);
        l->stop = 1;
        pthread_mutex_unlock(&l->starts->mu);
        eventfd_signal(l->starts->fd);
        pthread_join(l->thread, NULL);
        l->running = 0;
    }
    h->lanes_stopped = 1;
    /* Jobs only a message still names are freed here; the others belong
     * to their proxies, which httpc_destroy frees next. */
    for (int i = 0; i < h->n_lanes; i++) {
        struct hlane *l = &h->lanes[i];
        while (l->cancels) {
            struct hjob *j = l->cancels;
            l->cancels = j->next_cancel;
            job_free(j);
        }
        if (l->h)
            httpc_destroy(l->h);           /* requests still in flight: no callbacks */
        l->h = NULL;
        hqueue_free(l->starts);            /* its jobs belong to their proxies */
        l->starts = NULL;
        if (l->base) event_base_free(l->base);
        l->base = NULL;
    }
    if (h->rets) {
        pthread_mutex_lock(&h->rets->mu);
        struct hjob *j = hqueue_take_locked(h->rets);
        pthread_mutex_unlock(&h->rets->mu);
        for (struct hjob *n; j; j = n) {
            n = j->next;
            if (j->orphan)
                job_free(j);
            else
                j->next = NULL;            /* its proxy frees it */
        }
    }
}

/* After lanes_stop (and, in httpc_destroy, after the proxies are freed):
 * free what the caller's loop kept for the lanes; the client is then as
 * if it never had any.  NULL-safe parts, so a partial set-up works too. */
static void lanes_release(struct httpc *h)
{
    if (h->flush) event_free(h->flush);
    h->flush = NULL;
    hqueue_free(h->rets);
    h->rets = NULL;
    free(h->lanes);
    h->lanes = NULL;
    h->n_lanes = 0;
    h->lanes_stopped = 0;
}

int httpc_set_io_threads(struct httpc *h, int n)
{
    if (n < 0 || n > HTTPC_MAX_IO_THREADS)
        return ps_error_set(PS_EINVAL, "http: io threads must be 0 to %d, not %d", HTTPC_MAX_IO_THREADS, n);
    if (h->n_lanes || h->n_active)
        return ps_error_set(PS_EINVAL, "http: io threads are set once, before any request");
    if (n == 0)
        return PS_OK;
    const char *step = "out of memory";
    int err = ENOMEM;
    if (!(h->lanes = calloc((size_t)n, sizeof *h->lanes)))
        goto fail;
    h->n_lanes = n;
    if (!(h->rets = hqueue_new(h->base, on_rets, h, &step, &err)))
        goto fail;
    step = "event loop";
    if (!(h->flush = event_new(h->base, -1, 0, on_flush, h)))
        goto fail;
    for (int i = 0; i < n; i++) {
        struct hlane *l = &h->lanes[i];
        l->owner = h;
        step = "event loop";
        err = ENOMEM;
        if (!(l->base = event_base_new()) || !(l->starts = hqueue_new(l->base, on_lane_wake, l, &step, &err)))
            goto fail;
        step = "out of memory";
        err = ENOMEM;
        if (!(l->h = httpc_create(l->base)))
            goto fail;
        l->h->fast_ok = h->fast_ok;
        l->h->fast_loopback = h->fast_loopback;
        /* the lanes share the pool's idle allowance between them */
        l->h->max_idle = HC_MAX_IDLE_PER_POOL / n > 64 ? HC_MAX_IDLE_PER_POOL / n : 64;
        step = "thread";
        if ((err = pthread_create(&l->thread, NULL, lane_main, l)))
            goto fail;
        l->running = 1;
    }
    return PS_OK;
fail:
    lanes_stop(h);                         /* the client is left as it was, without lanes */
    lanes_release(h);
    return ps_error_set(err == ENOMEM ? PS_ENOMEM : PS_EINTERNAL, "http: cannot start %d io threads: %s: %s",
                        n, step, strerror(err));
}

void httpc_set_lane_inline(struct httpc *h, int n)
{
    h->lane_inline = n < 0 ? 0 : n;
}

int64_t httpc_lane_requests(const struct httpc *h)
{
    return h ? h->lane_requests : 0;
}

int httpc_io_threads(const struct httpc *h)
{
    return h ? h->n_lanes : 0;
}

int64_t httpc_io_cpu_ns(const struct httpc *h)
{
    int64_t sum = 0;
    for (int i = 0; h && i < h->n_lanes; i++) {
        int64_t ns = h->lanes[i].running ? ps_thread_cpu_ns(h->lanes[i].thread) : -1;
        if (ns < 0)
            return -1;
        sum += ns;
    }
    return sum;
}

int64_t httpc_connects(const struct httpc *h)
{
    if (!h)
        return 0;
    int64_t n = atomic_load(&h->n_connects);
    for (int i = 0; i < h->n_lanes; i++)
        if (h->lanes[i].h)
            n += atomic_load(&h->lanes[i].h->n_connects);
    return n;
}

/* ---- requests -------------------------------------------------------------- */

static struct httpc_req *curl_request(struct httpc *h, struct httpc_req *r, const char *method,
                                      const char *url, char *const *headers, char *const *headers2,
                                      const char *body, size_t body_len, long timeout_ms, const char *ca_file)
{
    r->easy = h->n_idle > 0 ? h->idle[--h->n_idle] : curl_easy_init();
    if (!r->easy) {
        ps_error_set(PS_ENOMEM, "http: curl_easy_init failed");
        return NULL;
    }
    CURL *e = r->easy;
    struct curl_slist *l = curl_slist_append(NULL, "Expect:");
    for (char *const *p = headers; l && p && *p; p++)
        l = curl_slist_append(l, *p);
    for (char *const *p = headers2; l && p && *p; p++)
        l = curl_slist_append(l, *p);
    r->hdrs = l;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* 16 KiB (the minimum) instead of 64: freeing a 64 KiB chunk makes glibc
     * consolidate its fast bins, on every request. */
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)HC_CONNECT_MS);
    if (url_is_loopback(url))
        curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    /* a reused handle was reset (curl_easy_reset): the system CAs unless set */
    if (ca_file && curl_easy_setopt(e, CURLOPT_CAINFO, ca_file) != CURLE_OK) {
        ps_error_set(PS_EINTERNAL, "http: this libcurl cannot take a CA file (CURLOPT_CAINFO)");
        return NULL;
    }
    if (timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "");
    } else if (!strcmp(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        ps_error_set(PS_EINTERNAL, "http: curl_multi_add_handle failed");
        return NULL;
    }
    r->in_multi = 1;
    return r;
}

struct httpc_req *httpc_request(struct httpc *h, const char *method, const char *url,
                                char *const *headers, char *const *headers2,
                                const char *body, size_t body_len, long timeout_ms,
                                const char *ca_file, httpc_done_fn done, void *ud)
{
    struct httpc_req *r = calloc(1, sizeof *r);
    if (!r) {
        ps_error_set(PS_ENOMEM, "http: out of memory");
        return NULL;
    }
    r->h = h;
    r->done = done;
    r->ud = ud;
    r->next = h->all;
    if (h->all) h->all->prev = r;
    h->all = r;
    h->n_active++;
    if ((h->fast_ok || (h->fast_loopback && url_is_loopback(url))) &&
        fast_request(h, r, method, url, headers, headers2, body, body_len, timeout_ms))
        return r;
    if (!curl_request(h, r, method, url, headers, headers2, body, body_len, timeout_ms, ca_file)) {
        req_free(r);
        return NULL;
    }
    return r;
}

void httpc_set_peek(struct httpc_req *r, httpc_peek_fn peek)
{
    if (!r)
        return;
    r->peek = peek;
    if (peek && r->job)
        lane_take_back(r);                 /* peeks run on this loop */
}

void httpc_cancel(struct httpc_req *r)
{
    if (r && !r->in_callback)
        req_free(r);
}
