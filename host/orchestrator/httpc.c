/* httpc.c - libcurl multi on libevent (see httpc.h).
 *
 * Request lifecycle:  httpc_request() -> IN_MULTI (easy handle added)
 *   -> curl reports done -> removed from multi, pushed on the done list
 *   -> callback invoked from the done list -> freed.
 * Callbacks run only from the done list, after curl_multi_socket_action()
 * returned, so a callback may start or cancel any request (including ones
 * still queued on the done list: httpc_cancel unlinks and frees them).
 */
#include "orchestrator/httpc.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"

/* Easy handles kept for reuse: curl_easy_init/cleanup per request costs
 * allocations (buffers, state) that reuse after curl_easy_reset avoids. */
#define HTTPC_IDLE_EASY 1024

struct httpc {
    struct event_base *base;
    CURLM             *multi;
    struct event      *timer;
    struct httpc_req  *all;        /* doubly linked: every live request */
    struct httpc_req  *done_head;  /* finished, callback pending */
    struct httpc_req  *done_tail;
    int                n_active;
    int                dispatching;
    CURL              *idle[HTTPC_IDLE_EASY];  /* finished easy handles, reset, for reuse */
    int                n_idle;
};

struct httpc_req {
    struct httpc      *h;
    CURL              *easy;
    struct curl_slist *hdrs;
    httpc_done_fn      done;
    void              *ud;
    struct httpc_req  *prev, *next;   /* h->all */
    struct httpc_req  *done_next;
    int                on_done_list;
    int                in_multi;
    int                in_callback;
    CURLcode           result;
    char              *body;
    size_t             len, cap;
    int                too_big;
    char              *content_type;
    char              *session_id;
    int64_t            recv_ns, send_ns;
    char               errbuf[CURL_ERROR_SIZE];
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

static void req_free(struct httpc_req *r)
{
    struct httpc *h = r->h;
    if (r->in_multi) {
        curl_multi_remove_handle(h->multi, r->easy);
        r->in_multi = 0;
    }
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
    } else {
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->hdrs);
    free(r->body);
    free(r->content_type);
    free(r->session_id);
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
        if (r->too_big) {
            resp.transport_error = CURLE_FILESIZE_EXCEEDED;
            resp.error = "response too large";
        } else if (r->result != CURLE_OK) {
            resp.transport_error = (int)r->result;
            resp.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result);
        } else {
            resp.error = "";
            curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp.status);
        }
        resp.body = r->body ? r->body : "";
        resp.body_len = r->len;
        resp.content_type = r->content_type;
        resp.session_id = r->session_id;
        resp.agent_recv_ns = r->recv_ns;
        resp.agent_send_ns = r->send_ns;
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

static void check_multi_info(struct httpc *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct httpc_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->result = msg->data.result;
        curl_multi_remove_handle(h->multi, r->easy);
        r->in_multi = 0;
        r->on_done_list = 1;
        r->done_next = NULL;
        if (h->done_tail) h->done_tail->done_next = r; else h->done_head = r;
        h->done_tail = r;
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

struct httpc *httpc_create(struct event_base *base)
{
    pthread_once(&curl_once, curl_init_once);
    struct httpc *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->base = base;
    h->multi = curl_multi_init();
    h->timer = evtimer_new(base, on_timer, h);
    if (!h->multi || !h->timer) {
        httpc_destroy(h);
        return NULL;
    }
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
    while (h->all)
        req_free(h->all);
    while (h->n_idle > 0)
        curl_easy_cleanup(h->idle[--h->n_idle]);
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->timer)
        event_free(h->timer);
    free(h);
}

int httpc_active(const struct httpc *h)
{
    return h ? h->n_active : 0;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    struct httpc_req *r = ud;
    size_t len = sz * n;
    if (r->len + len > HTTPC_MAX_BODY) {
        r->too_big = 1;
        return 0;
    }
    if (r->len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + len + 1)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb)
            return 0;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, p, len);
    r->len += len;
    r->body[r->len] = 0;
    return len;
}

/* Copy a header's value (trimmed) if `line` is that header. */
static char *header_value(const char *line, size_t n, const char *name)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) || line[k] != ':')
        return NULL;
    const char *v = line + k + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
    return strndup(v, (size_t)(end - v));
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct httpc_req *r = ud;
    size_t len = sz * n;
    char *v;
    if ((v = header_value(p, len, "Content-Type"))) {
        free(r->content_type);
        r->content_type = v;
    } else if ((v = header_value(p, len, "Mcp-Session-Id"))) {
        free(r->session_id);
        r->session_id = v;
    } else if ((v = header_value(p, len, "X-Agent-Recv-Ns"))) {
        r->recv_ns = strtoll(v, NULL, 10);
        free(v);
    } else if ((v = header_value(p, len, "X-Agent-Send-Ns"))) {
        r->send_ns = strtoll(v, NULL, 10);
        free(v);
    }
    return len;
}

struct httpc_req *httpc_request(struct httpc *h, const char *method, const char *url,
                                char *const *headers, char *const *headers2,
                                const char *body, size_t body_len, long timeout_ms,
                                httpc_done_fn done, void *ud)
{
    struct httpc_req *r = calloc(1, sizeof *r);
    if (!r) {
        ps_error_set(PS_ENOMEM, "http: out of memory");
        return NULL;
    }
    r->h = h;
    r->done = done;
    r->ud = ud;
    r->easy = h->n_idle > 0 ? h->idle[--h->n_idle] : curl_easy_init();
    r->next = h->all;
    if (h->all) h->all->prev = r;
    h->all = r;
    h->n_active++;
    if (!r->easy) {
        ps_error_set(PS_ENOMEM, "http: curl_easy_init failed");
        req_free(r);
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
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    if (timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "");
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        ps_error_set(PS_EINTERNAL, "http: curl_multi_add_handle failed");
        req_free(r);
        return NULL;
    }
    r->in_multi = 1;
    return r;
}

void httpc_cancel(struct httpc_req *r)
{
    if (r && !r->in_callback)
        req_free(r);
}
