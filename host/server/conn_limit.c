/* conn_limit.c - open client connections counted and capped (see conn_limit.h).
 *
 * A tracked connection's record:
 *
 *   conn_limit_accepted --> PENDING (on cl->pending, bufferevent referenced)
 *   PENDING --attach (evhttp built it)--> ATTACHED (our close callback on it,
 *                                                   in the evcon hash)
 *   PENDING --attach (evhttp dropped it)--> freed, uncounted
 *   ATTACHED --on_closed (evhttp_connection_free)--> freed, uncounted
 *
 * With an idle timeout each record has a timer, armed at accept and at the
 * end of each reply (evhttp's on-complete callback) and stopped while a
 * request is served (conn_limit_request): when it fires the connection is
 * freed (evhttp_connection_free), which runs on_closed.
 *
 * Invariants: cl->open == records PENDING + ATTACHED <= cl->max; the
 * listener is enabled iff open < max and no accept-error pause runs
 * (gate_update is the only place that enables or disables it).
 */
#include "conn_limit.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "../common/status.h"
#include "metrics.h"

typedef void (*closecb_fn)(struct evhttp_connection *, void *);

struct conn_rec {
    struct conn_limit        *cl;
    struct bufferevent       *bev;
    struct evhttp_connection *evcon;    /* NULL while PENDING                 */
    closecb_fn                user_cb;  /* conn_closecb_set's, called first   */
    void                     *user_arg;
    struct event             *idle;     /* idle timer (NULL: no idle timeout) */
    bool                      busy;     /* a request is in flight             */
    void                    (*done_cb)(struct evhttp_request *, void *); /* conn_oncomplete_set's */
    void                     *done_arg;
    struct conn_rec          *next;     /* pending list, or hash chain        */
};

struct conn_limit {
    struct event_base     *base;
    struct metrics        *m;
    int32_t                max, open;
    struct evconnlistener *lev;         /* NULL: none (not yet, or closed)    */
    bool                   enabled;     /* what we last set on lev            */
    struct event          *ev_attach;   /* active while records are PENDING   */
    struct event          *ev_resume;   /* pending during an accept-error pause */
    struct conn_rec       *pending;
    struct conn_rec      **hash;        /* ATTACHED records by evcon          */
    size_t                 hash_mask;
    struct timeval         idle_tv;     /* idle timeout; 0: none               */
    uint64_t               accept_errors;   /* since the last report          */
    time_t                 accept_reported;
    time_t                 gate_reported;   /* last enable/disable failure logged (once a second) */
};

/* the trackers of this process (serve: its clients' port and its local
 * agents' port), for the calls that are not given one */
static struct conn_limit *g_cls[CONN_LIMIT_MAX_TRACKERS];

/* the record of c in whichever tracker holds it, or NULL */
static struct conn_rec *rec_any(struct evhttp_connection *c);

static size_t hash_slot(const struct conn_limit *cl, const struct evhttp_connection *c)
{
    uint64_t h = (uint64_t)(uintptr_t)c * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & cl->hash_mask;
}

static struct conn_rec *hash_find(const struct conn_limit *cl, const struct evhttp_connection *c)
{
    struct conn_rec *r = cl->hash[hash_slot(cl, c)];
    while (r && r->evcon != c)
        r = r->next;
    return r;
}

static void hash_remove(struct conn_limit *cl, struct conn_rec *rec)
{
    struct conn_rec **p = &cl->hash[hash_slot(cl, rec->evcon)];
    while (*p && *p != rec)
        p = &(*p)->next;
    if (*p)
        *p = rec->next;
}

static void gate_update(struct conn_limit *cl)
{
    if (!cl->lev)
        return;
    const bool want = cl->open < cl->max && !evtimer_pending(cl->ev_resume, NULL);
    if (want == cl->enabled)
        return;
    if (want ? evconnlistener_enable(cl->lev) : evconnlistener_disable(cl->lev)) {
        const time_t now = time(NULL);
        if (now != cl->gate_reported) {
            fprintf(stderr, "paraserve: cannot %s the listener (libevent)%s\n", want ? "enable" : "disable",
                    want ? "; retrying every 100 ms" : "");
            cl->gate_reported = now;
        }
        /* never left disabled: no close may come to re-enable it
         * (CONN_ACCEPT_PAUSE_MS, 100, as the log says) */
        const struct timeval tv = { 0, CONN_ACCEPT_PAUSE_MS * 1000 };
        if (want)
            (void)evtimer_add(cl->ev_resume, &tv);
        return;
    }
    cl->enabled = want;
    if (!want && cl->open >= cl->max)
        cl->m->accept_paused_cap++;
}

static void uncount(struct conn_limit *cl)
{
    cl->open--;
    cl->m->conns_open = cl->open;
    gate_update(cl);
}

static void rec_free(struct conn_rec *rec)
{
    if (rec->idle)
        event_free(rec->idle);
    free(rec);
}

static void on_closed(struct evhttp_connection *c, void *arg)
{
    struct conn_rec *rec = arg;
    struct conn_limit *cl = rec->cl;
    if (rec->user_cb)
        rec->user_cb(c, rec->user_arg);
    hash_remove(cl, rec);
    rec_free(rec);
    uncount(cl);
}

/* No request in flight for the idle timeout: close the connection (its
 * close callbacks run, on_closed uncounts it).  A PENDING record (evhttp
 * has not built the connection yet, never seen) waits for attach. */
static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    struct conn_rec *rec = arg;
    (void)fd;
    (void)what;
    if (!rec->evcon || rec->busy)
        return;
    rec->cl->m->idle_closed++;
    evhttp_connection_free(rec->evcon);
}

static void idle_arm(struct conn_rec *rec)
{
    if (rec->idle)
        evtimer_add(rec->idle, &rec->cl->idle_tv);
}

/* evhttp has built (or dropped) the connection of rec's bufferevent. */
static void attach(struct conn_limit *cl, struct conn_rec *rec)
{
    bufferevent_data_cb readcb = NULL;
    void *arg = NULL;
    bufferevent_getcb(rec->bev, &readcb, NULL, NULL, &arg);
    struct evhttp_connection *c = arg;
    if (readcb && c && evhttp_connection_get_bufferevent(c) == rec->bev) {
        rec->evcon = c;
        /* Replies stream in small writes (an SSE event per token): with
         * Nagle on, each waits until the previous segment is ACKed, and a
         * client that delays its ACKs (Linux: up to 40 ms) turned a token
         * stream into bursts.  Best effort: not fatal if refused. */
        const int one = 1;
        const evutil_socket_t sfd = bufferevent_getfd(rec->bev);
        if (sfd >= 0)
            (void)setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        size_t s = hash_slot(cl, c);
        rec->next = cl->hash[s];
        cl->hash[s] = rec;
        evhttp_connection_set_closecb(c, on_closed, rec);
        /* a reply the client does not read for the idle timeout: bufferevent
         * times the write side only while output is pending, restarting at
         * every byte written, so a slow reader that keeps reading and a
         * stream with nothing to send are never cut; expiry is evhttp's
         * network failure path (as a client gone: close callbacks run) */
        if (rec->idle)
            bufferevent_set_timeouts(rec->bev, NULL, &cl->idle_tv);
        bufferevent_decref(rec->bev);
        return;
    }
    /* evhttp_connection_free ran (bufferevent_free cleared the callbacks)
     * or evhttp never took the bufferevent: the socket is closed already */
    bufferevent_decref(rec->bev);
    rec_free(rec);
    uncount(cl);
}

static void on_attach(evutil_socket_t fd, short what, void *arg)
{
    struct conn_limit *cl = arg;
    (void)fd;
    (void)what;
    while (cl->pending) {
        struct conn_rec *rec = cl->pending;
        cl->pending = rec->next;
        rec->next = NULL;
        attach(cl, rec);
    }
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gate_update(arg);
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct conn_limit *cl = NULL;
    const int err = EVUTIL_SOCKET_ERROR();
    (void)arg; /* the listener's user data is evhttp's, not ours */
    for (int i = 0; i < CONN_LIMIT_MAX_TRACKERS && !cl; i++)
        if (g_cls[i] && g_cls[i]->lev == lev)
            cl = g_cls[i];
    if (!cl)
        return;
    cl->accept_errors++;
    const time_t now = time(NULL);
    if (now != cl->accept_reported) {
        fprintf(stderr, "paraserve: accept() failed %llu time(s): %s; pausing new connections for %d ms\n",
                (unsigned long long)cl->accept_errors, evutil_socket_error_to_string(err), CONN_ACCEPT_PAUSE_MS);
        cl->accept_errors = 0;
        cl->accept_reported = now;
    }
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        const struct timeval tv = { 0, CONN_ACCEPT_PAUSE_MS * 1000 };
        if (!evtimer_add(cl->ev_resume, &tv)) {
            cl->m->accept_paused_error++;
            gate_update(cl);
        }
    }
}

int conn_limit_create(struct event_base *base, int32_t max_conns, struct metrics *m, struct conn_limit **out)
{
    *out = NULL;
    if (max_conns < 1)
        return ps_error_set(PS_EINVAL, "max_connections must be at least 1, got %d", (int)max_conns);
    int slot = 0;
    while (slot < CONN_LIMIT_MAX_TRACKERS && g_cls[slot])
        slot++;
    if (slot == CONN_LIMIT_MAX_TRACKERS)
        return ps_error_set(PS_EINVAL, "at most %d connection limits per process", CONN_LIMIT_MAX_TRACKERS);
    struct conn_limit *cl = calloc(1, sizeof *cl);
    if (!cl)
        return ps_error_set(PS_ENOMEM, "out of memory");
    size_t n = 16;
    while (n < (size_t)max_conns * 2 && n < ((size_t)1 << 20))
        n *= 2;
    cl->hash = calloc(n, sizeof *cl->hash);
    cl->hash_mask = n - 1;
    cl->base = base;
    cl->m = m;
    cl->max = max_conns;
    if (!cl->hash) {
        free(cl);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    cl->ev_attach = event_new(base, -1, 0, on_attach, cl);
    cl->ev_resume = evtimer_new(base, on_resume, cl);
    if (!cl->ev_attach || !cl->ev_resume) {
        conn_limit_free(cl);
        return ps_error_set(PS_EINTERNAL, "libevent: cannot create events");
    }
    m->conns_open = 0;
    m->conns_max = max_conns;
    g_cls[slot] = cl;
    *out = cl;
    return PS_OK;
}

int conn_limit_listen(struct conn_limit *cl, struct evconnlistener *lev)
{
    cl->lev = lev;
    cl->enabled = true; /* evhttp binds it enabled */
    evconnlistener_set_error_cb(lev, on_accept_error);
    gate_update(cl);
    return PS_OK;
}

void conn_limit_unlisten(struct conn_limit *cl)
{
    if (!cl)
        return;
    if (cl->lev)
        evconnlistener_set_error_cb(cl->lev, NULL);
    cl->lev = NULL;
    cl->enabled = false;
    evtimer_del(cl->ev_resume);
}

int conn_limit_accepted(struct conn_limit *cl, struct bufferevent *bev)
{
    struct conn_rec *rec = calloc(1, sizeof *rec);
    if (!rec)
        return ps_error_set(PS_ENOMEM, "out of memory tracking a connection");
    rec->cl = cl;
    rec->bev = bev;
    if (cl->idle_tv.tv_sec || cl->idle_tv.tv_usec) {
        /* without a timer the connection is served, just never timed out */
        if ((rec->idle = evtimer_new(cl->base, on_idle, rec)))
            idle_arm(rec);
    }
    bufferevent_incref(bev); /* valid until attach, whatever evhttp does */
    rec->next = cl->pending;
    cl->pending = rec;
    event_active(cl->ev_attach, EV_TIMEOUT, 1);
    cl->open++;
    cl->m->conns_open = cl->open;
    cl->m->conns_accepted++;
    gate_update(cl);
    return PS_OK;
}

void conn_limit_set_idle(struct conn_limit *cl, int32_t idle_ms)
{
    cl->idle_tv.tv_sec = idle_ms > 0 ? idle_ms / 1000 : 0;
    cl->idle_tv.tv_usec = idle_ms > 0 ? (idle_ms % 1000) * 1000 : 0;
}

/* The reply of a request of this connection is complete: idle again. */
static void on_request_done(struct evhttp_request *req, void *arg)
{
    struct conn_limit *cl = arg;
    struct conn_rec *rec = hash_find(cl, evhttp_request_get_connection(req));
    if (!rec)
        return;
    void (*cb)(struct evhttp_request *, void *) = rec->done_cb;
    void *cb_arg = rec->done_arg;
    rec->done_cb = NULL;
    rec->done_arg = NULL;
    rec->busy = false;
    idle_arm(rec);
    if (cb)
        cb(req, cb_arg);
}

static struct conn_rec *rec_of(struct conn_limit *cl, struct evhttp_connection *c)
{
    struct conn_rec *rec = hash_find(cl, c);
    if (!rec && cl->pending) {
        /* a request handled before its connection's attach ran (not seen:
         * attach runs before any byte is read); attach it now */
        struct bufferevent *bev = evhttp_connection_get_bufferevent(c);
        for (struct conn_rec **p = &cl->pending; *p; p = &(*p)->next)
            if ((*p)->bev == bev) {
                struct conn_rec *r = *p;
                *p = r->next;
                r->next = NULL;
                attach(cl, r);
                rec = hash_find(cl, c);
                break;
            }
    }
    return rec;
}

void conn_limit_request(struct conn_limit *cl, struct evhttp_request *req)
{
    struct evhttp_connection *c = cl ? evhttp_request_get_connection(req) : NULL;
    struct conn_rec *rec = c ? rec_of(cl, c) : NULL;
    if (!rec || !rec->idle)
        return;
    rec->busy = true;
    rec->done_cb = NULL;
    rec->done_arg = NULL;
    evtimer_del(rec->idle);
    evhttp_request_set_on_complete_cb(req, on_request_done, cl);
}

void conn_oncomplete_set(struct evhttp_request *req, void (*cb)(struct evhttp_request *, void *), void *arg)
{
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    struct conn_rec *rec = c ? rec_any(c) : NULL;
    if (!rec || !rec->busy) {
        /* no idle timer on this request: the callback is free */
        evhttp_request_set_on_complete_cb(req, cb, arg);
        return;
    }
    rec->done_cb = cb;
    rec->done_arg = arg;
}

int32_t conn_limit_open(const struct conn_limit *cl)
{
    return cl ? cl->open : 0;
}

void conn_limit_free(struct conn_limit *cl)
{
    if (!cl)
        return;
    conn_limit_unlisten(cl);
    while (cl->pending) {
        struct conn_rec *rec = cl->pending;
        cl->pending = rec->next;
        bufferevent_decref(rec->bev);
        rec_free(rec);
    }
    /* ATTACHED records are freed by their close callbacks (evhttp_free);
     * any left belong to connections evhttp still holds: detach them */
    for (size_t s = 0; s <= cl->hash_mask && cl->hash; s++)
        while (cl->hash[s]) {
            struct conn_rec *rec = cl->hash[s];
            cl->hash[s] = rec->next;
            evhttp_connection_set_closecb(rec->evcon, rec->user_cb, rec->user_arg);
            rec_free(rec);
        }
    if (cl->ev_attach)
        event_free(cl->ev_attach);
    if (cl->ev_resume)
        event_free(cl->ev_resume);
    free(cl->hash);
    for (int i = 0; i < CONN_LIMIT_MAX_TRACKERS; i++)
        if (g_cls[i] == cl)
            g_cls[i] = NULL;
    free(cl);
}

static struct conn_rec *rec_any(struct evhttp_connection *c)
{
    struct conn_rec *rec = NULL;
    for (int i = 0; i < CONN_LIMIT_MAX_TRACKERS && !rec; i++)
        if (g_cls[i])
            rec = rec_of(g_cls[i], c);
    return rec;
}

void conn_closecb_set(struct evhttp_connection *c, closecb_fn cb, void *arg)
{
    struct conn_rec *rec = rec_any(c);
    if (!rec) {
        evhttp_connection_set_closecb(c, cb, arg);
        return;
    }
    rec->user_cb = cb;
    rec->user_arg = arg;
}

enum conn_peer conn_peer_probe(evutil_socket_t fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return CONN_PEER_QUIET;
    return n > 0 ? CONN_PEER_BYTES : CONN_PEER_GONE;
}
