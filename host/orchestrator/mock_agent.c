/* mock_agent.c - loopback HTTP mock agent on its own thread (see mock_agent.h). */
#include "orchestrator/mock_agent.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "orchestrator/httpc.h"

#define MOCK_BACKLOG 4096

struct pending {
    struct mock_agent        *m;
    struct evhttp_request    *req;
    struct evhttp_connection *conn;
    struct event             *timer;
    int64_t                   recv_ns;
    char                     *body;     /* reply body, NULL for a drop */
    int                       code;
    struct pending           *prev, *next;
};

struct flaky {
    char         *key;
    int           seen;
    struct flaky *next;
};

struct mock_agent {
    struct event_base *base;
    struct evhttp     *http;
    struct event      *stop_ev;
    int                stop_fd[2];
    int                port;
    pthread_t          thread;
    struct pending    *pending;
    struct flaky      *flaky;
    atomic_llong       n_requests, n_replies;
};

static void pending_free(struct pending *p)
{
    struct mock_agent *m = p->m;
    if (p->prev) p->prev->next = p->next; else m->pending = p->next;
    if (p->next) p->next->prev = p->prev;
    if (p->timer)
        event_free(p->timer);
    free(p->body);
    free(p);
}

static void send_now(struct mock_agent *m, struct evhttp_request *req, int64_t recv_ns,
                     int code, const char *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)recv_ns);
    evhttp_add_header(h, "X-Agent-Recv-Ns", v);
    evhttp_add_header(h, "Content-Type", "application/json");
    snprintf(v, sizeof v, "%lld", (long long)orch_now_ns());
    evhttp_add_header(h, "X-Agent-Send-Ns", v);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
    atomic_fetch_add(&m->n_replies, 1);
}

static void drop_now(struct evhttp_request *req)
{
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
    if (bev)
        shutdown(bufferevent_getfd(bev), SHUT_RDWR);
}

static void on_client_close(struct evhttp_connection *c, void *ud)
{
    struct pending *p = ud;
    pending_free(p);
}

static void on_pending_timer(evutil_socket_t fd, short what, void *ud)
{
    struct pending *p = ud;
    struct mock_agent *m = p->m;
    evhttp_connection_set_closecb(p->conn, NULL, NULL);
    if (p->body)
        send_now(m, p->req, p->recv_ns, p->code, p->body);
    else
        drop_now(p->req);
    pending_free(p);
}

static void on_request(struct evhttp_request *req, void *ud)
{
    struct mock_agent *m = ud;
    int64_t recv_ns = orch_now_ns();
    atomic_fetch_add(&m->n_requests, 1);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    char *text = malloc(n + 1);
    if (!text) {
        evhttp_send_error(req, 500, "oom");
        return;
    }
    evbuffer_copyout(in, text, n);
    text[n] = 0;
    cJSON *args = cJSON_Parse(text);
    free(text);
    const cJSON *sl = cJSON_GetObjectItemCaseSensitive(args, "sleep_ms");
    const cJSON *fa = cJSON_GetObjectItemCaseSensitive(args, "fault");
    int sleep_ms = cJSON_IsNumber(sl) ? sl->valueint : 0;
    const char *fault = cJSON_IsString(fa) ? fa->valuestring : "";
    int code = 200;
    char *body = NULL;
    int hang = 0;
    if (!strcmp(fault, "hang")) {
        hang = 1;
    } else if (!strcmp(fault, "5xx")) {
        code = 503;
        body = strdup("{\"error\":\"unavailable\"}");
    } else if (!strcmp(fault, "4xx")) {
        code = 400;
        body = strdup("{\"error\":\"bad request\"}");
    } else if (!strcmp(fault, "nonjson")) {
        body = strdup("<html>this is not json</html>");
    } else if (!strcmp(fault, "drop")) {
        body = NULL;
    } else {
        if (!strcmp(fault, "flaky")) {
            const cJSON *k = cJSON_GetObjectItemCaseSensitive(args, "key");
            const cJSON *ft = cJSON_GetObjectItemCaseSensitive(args, "fail_times");
            const char *key = cJSON_IsString(k) ? k->valuestring : "";
            struct flaky *f = m->flaky;
            while (f && strcmp(f->key, key))
                f = f->next;
            if (!f && (f = calloc(1, sizeof *f))) {
                f->key = strdup(key);
                f->next = m->flaky;
                m->flaky = f;
            }
            if (f && f->seen++ < (cJSON_IsNumber(ft) ? ft->valueint : 1)) {
                code = 503;
                body = strdup("{\"error\":\"flaky\"}");
            }
        }
        if (!body) {
            cJSON *r = cJSON_CreateObject();
            cJSON_AddBoolToObject(r, "ok", 1);
            cJSON_AddItemToObject(r, "args", args ? cJSON_Duplicate(args, 1) : cJSON_CreateNull());
            body = cJSON_PrintUnformatted(r);
            cJSON_Delete(r);
        }
    }
    cJSON_Delete(args);
    if (!hang && sleep_ms <= 0) {
        if (body)
            send_now(m, req, recv_ns, code, body);
        else
            drop_now(req);
        free(body);
        return;
    }
    struct pending *p = calloc(1, sizeof *p);
    if (!p) {
        free(body);
        evhttp_send_error(req, 500, "oom");
        return;
    }
    p->m = m;
    p->req = req;
    p->conn = evhttp_request_get_connection(req);
    p->recv_ns = recv_ns;
    p->code = code;
    p->body = body;
    p->next = m->pending;
    if (m->pending)
        m->pending->prev = p;
    m->pending = p;
    evhttp_connection_set_closecb(p->conn, on_client_close, p);
    if (!hang) {
        p->timer = evtimer_new(m->base, on_pending_timer, p);
        struct timeval tv = { sleep_ms / 1000, (sleep_ms % 1000) * 1000 };
        evtimer_add(p->timer, &tv);
    }
}

static void on_stop(evutil_socket_t fd, short what, void *ud)
{
    struct mock_agent *m = ud;
    event_base_loopbreak(m->base);
}

static void *mock_thread(void *ud)
{
    struct mock_agent *m = ud;
    event_base_dispatch(m->base);
    return NULL;
}

struct mock_agent *mock_agent_start(int port)
{
    struct mock_agent *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->stop_fd[0] = m->stop_fd[1] = -1;
    m->base = event_base_new();
    m->http = m->base ? evhttp_new(m->base) : NULL;
    if (!m->http || pipe(m->stop_fd))
        goto fail;
    evhttp_set_gencb(m->http, on_request, m);
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_POST | EVHTTP_REQ_GET);
    /* A burst of thousands of new connections (bench/orchestrate) must not
     * overflow the accept queue (libevent's default backlog is 128): a
     * dropped SYN costs the client a 1 s retransmit. */
    struct sockaddr_in bind_sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    bind_sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *lst = evconnlistener_new_bind(m->base, NULL, NULL,
                                                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                                         MOCK_BACKLOG, (struct sockaddr *)&bind_sa, sizeof bind_sa);
    struct evhttp_bound_socket *bs = lst ? evhttp_bind_listener(m->http, lst) : NULL;
    if (!bs) {
        if (lst)
            evconnlistener_free(lst);
        goto fail;
    }
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl))
        goto fail;
    m->port = ntohs(sa.sin_port);
    m->stop_ev = event_new(m->base, m->stop_fd[0], EV_READ, on_stop, m);
    if (!m->stop_ev || event_add(m->stop_ev, NULL))
        goto fail;
    if (pthread_create(&m->thread, NULL, mock_thread, m))
        goto fail;
    return m;
fail:
    if (m->stop_ev) event_free(m->stop_ev);
    if (m->http) evhttp_free(m->http);
    if (m->base) event_base_free(m->base);
    if (m->stop_fd[0] >= 0) { close(m->stop_fd[0]); close(m->stop_fd[1]); }
    free(m);
    return NULL;
}

int mock_agent_port(const struct mock_agent *m) { return m->port; }
int64_t mock_agent_requests(const struct mock_agent *m) { return atomic_load(&((struct mock_agent *)m)->n_requests); }
int64_t mock_agent_replies(const struct mock_agent *m) { return atomic_load(&((struct mock_agent *)m)->n_replies); }

void mock_agent_stop(struct mock_agent *m)
{
    if (!m)
        return;
    if (write(m->stop_fd[1], "x", 1) != 1) {
        /* the thread cannot be woken: leave it running rather than race it */
        return;
    }
    pthread_join(m->thread, NULL);
    while (m->pending) {
        evhttp_connection_set_closecb(m->pending->conn, NULL, NULL);
        pending_free(m->pending);
    }
    evhttp_free(m->http);
    event_free(m->stop_ev);
    event_base_free(m->base);
    close(m->stop_fd[0]);
    close(m->stop_fd[1]);
    while (m->flaky) {
        struct flaky *f = m->flaky;
        m->flaky = f->next;
        free(f->key);
        free(f);
    }
    free(m);
}
