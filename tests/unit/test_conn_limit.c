/* test_conn_limit.c - conn_limit.h on a real evhttp server in this process:
 * connections counted exactly (idle ones, keep-alive, a handler's own close
 * callback chained through conn_closecb_set, server-side closes), the
 * listener disabled at the cap and enabled again when one closes, and
 * accept() failing with EMFILE pausing the listener (a bounded number of
 * retries, not libevent 2.1's busy loop) until a descriptor frees up. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/status.h"
#include "server/config.h"
#include "server/conn_limit.h"
#include "server/metrics.h"
#include "test_util.h"

struct harness {
    struct event_base          *base;
    struct evhttp              *http;
    struct evhttp_bound_socket *sock;
    struct conn_limit          *cl;
    struct metrics              m;
    int                         port;
    int                         user_closes;
    int                         nodelay;     /* TCP_NODELAY of the last request's socket (-1: unreadable) */
};

static struct bufferevent *on_bev(struct event_base *base, void *arg)
{
    struct harness *h = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    if (bev)
        CHECK(conn_limit_accepted(h->cl, bev) == PS_OK);
    return bev;
}

static void on_user_close(struct evhttp_connection *c, void *arg)
{
    (void)c;
    ((struct harness *)arg)->user_closes++;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct harness *h = arg;
    int v = 0;
    socklen_t vl = sizeof v;
    evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evhttp_request_get_connection(req)));
    h->nodelay = fd >= 0 && !getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &vl) ? v != 0 : -1;
    if (strstr(evhttp_request_get_uri(req), "watch"))
        conn_closecb_set(evhttp_request_get_connection(req), on_user_close, h);
    struct evbuffer *b = evbuffer_new();
    CHECK(b && !evbuffer_add(b, "ok", 2));
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void run_ms(struct harness *h, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    event_base_loopexit(h->base, &tv);
    event_base_dispatch(h->base);
}

/* Turn the loop until cond holds (at most ms). */
#define RUN_UNTIL(h, cond, ms)                                  \
    do {                                                        \
        for (int waited_ = 0; !(cond) && waited_ < (ms); waited_ += 5) \
            run_ms((h), 5);                                     \
    } while (0)

static int client(const struct harness *h)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)h->port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        fd = -1;
    }
    CHECK_MSG(fd >= 0, "connect: %s", strerror(errno));
    return fd;
}

static void send_str(int fd, const char *s)
{
    CHECK(send(fd, s, strlen(s), 0) == (ssize_t)strlen(s));
}

/* Bytes the server has sent on fd so far (non-blocking), appended to buf. */
static void drain(int fd, char *buf, size_t cap)
{
    size_t n = strlen(buf);
    ssize_t r;
    while (n + 1 < cap && (r = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
}

/* 1 when the server has closed fd (EOF), after reading what it sent. */
static int peer_closed(int fd)
{
    char b[512];
    ssize_t r;
    while ((r = recv(fd, b, sizeof b, MSG_DONTWAIT)) > 0)
        ;
    return r == 0;
}

static void test_fd_budget(void)
{
    CHECK(server_fd_reserve(1024) == 256);
    CHECK(server_fd_reserve(96) == 48);
    CHECK(server_fd_reserve(4096) == 1024);
    CHECK(server_fd_reserve(1 << 20) == 1 << 18);
    CHECK(server_fd_reserve(8) == 4);
    struct server_config c;
    server_config_defaults(&c);
    CHECK(c.max_connections == 0);
    CHECK(server_config_max_connections(&c, 1024) == 768);
    CHECK(server_config_max_connections(&c, 96) == 48);
    CHECK(server_config_max_connections(&c, 1 << 20) == SERVER_DEFAULT_MAX_CONNECTIONS);
    c.max_connections = 9;
    CHECK(server_config_max_connections(&c, 1 << 20) == 9);
}

int main(void)
{
    test_fd_budget();

    struct harness h = { 0 };
    metrics_init(&h.m);
    h.base = event_base_new();
    h.http = h.base ? evhttp_new(h.base) : NULL;
    CHECK(h.http);
    if (!h.http)
        TEST_DONE();
    CHECK(conn_limit_create(h.base, 0, &h.m, &h.cl) == PS_EINVAL && !h.cl);
    CHECK(conn_limit_create(h.base, 4, &h.m, &h.cl) == PS_OK);
    {   /* CONN_LIMIT_MAX_TRACKERS (2) per process, each with its own metrics */
        struct metrics m2, m3;
        metrics_init(&m2);
        metrics_init(&m3);
        struct conn_limit *second = NULL, *third = NULL;
        CHECK(conn_limit_create(h.base, 3, &m2, &second) == PS_OK && second && m2.conns_max == 3);
        CHECK(conn_limit_create(h.base, 4, &m3, &third) == PS_EINVAL && !third);
        CHECK(h.m.conns_max == 4);
        conn_limit_free(second);
        CHECK(conn_limit_create(h.base, 5, &m3, &third) == PS_OK && third);
        conn_limit_free(third);
    }
    evhttp_set_gencb(h.http, on_request, &h);
    evhttp_set_bevcb(h.http, on_bev, &h);
    h.sock = evhttp_bind_socket_with_handle(h.http, "127.0.0.1", 0);
    CHECK(h.sock);
    if (!h.sock)
        TEST_DONE();
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    CHECK(!getsockname(evhttp_bound_socket_get_fd(h.sock), (struct sockaddr *)&sa, &sl));
    h.port = ntohs(sa.sin_port);
    CHECK(conn_limit_listen(h.cl, evhttp_bound_socket_get_listener(h.sock)) == PS_OK);
    CHECK(h.m.conns_max == 4 && h.m.conns_open == 0);

    /* the cap: 6 clients, 4 accepted (idle, not a byte sent), 2 wait */
    int c[7];
    for (int i = 0; i < 6; i++)
        c[i] = client(&h);
    RUN_UNTIL(&h, h.m.conns_open == 4, 2000);
    run_ms(&h, 100);
    CHECK_MSG(h.m.conns_open == 4 && h.m.conns_accepted == 4 && h.m.accept_paused_cap == 1,
              "open %d accepted %llu paused %llu", (int)h.m.conns_open, (unsigned long long)h.m.conns_accepted,
              (unsigned long long)h.m.accept_paused_cap);
    CHECK(conn_limit_open(h.cl) == 4);

    /* a keep-alive request whose handler sets its own close callback */
    char buf[4096] = "";
    send_str(c[0], "GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
    RUN_UNTIL(&h, (drain(c[0], buf, sizeof buf), strstr(buf, "\r\n\r\nok")), 2000);
    CHECK_MSG(!strncmp(buf, "HTTP/1.1 200", 12), "%s", buf);
    /* streamed replies are small writes: never held back by Nagle */
    CHECK_MSG(h.nodelay == 1, "TCP_NODELAY on the served socket: %d", h.nodelay);
    close(c[0]);
    RUN_UNTIL(&h, h.user_closes == 1 && h.m.conns_accepted == 5, 2000);
    CHECK(h.user_closes == 1);                  /* the handler's callback ran, */
    CHECK(h.m.conns_open == 4);                 /* its slot went to a waiting client */
    CHECK(h.m.conns_accepted == 5 && h.m.accept_paused_cap == 2);

    /* all close: back to 0; a new client is served and the server closes it */
    for (int i = 1; i < 6; i++)
        close(c[i]);
    RUN_UNTIL(&h, h.m.conns_open == 0, 2000);
    CHECK(h.m.conns_open == 0 && h.m.conns_accepted == 6);
    c[6] = client(&h);
    send_str(c[6], "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    RUN_UNTIL(&h, peer_closed(c[6]), 2000);
    RUN_UNTIL(&h, h.m.conns_open == 0, 2000);
    CHECK(h.m.conns_open == 0 && h.m.conns_accepted == 7);
    close(c[6]);

    /* EMFILE: descriptors run out with a client waiting in the backlog */
    struct rlimit saved, low;
    CHECK(!getrlimit(RLIMIT_NOFILE, &saved));
    low = saved;
    low.rlim_cur = 256;
    int fill[256], n_fill = 0;
    int waiting = client(&h);
    if (saved.rlim_cur >= 256 && !setrlimit(RLIMIT_NOFILE, &low)) {
        while (n_fill < 256 && (fill[n_fill] = dup(0)) >= 0)
            n_fill++;
        CHECK(errno == EMFILE);
        run_ms(&h, 350);
        CHECK(h.m.conns_open == 0);
        /* one failure per pause (100 ms): a busy retry would count thousands */
        CHECK_MSG(h.m.accept_paused_error >= 1 && h.m.accept_paused_error <= 5, "%llu pauses",
                  (unsigned long long)h.m.accept_paused_error);
        close(fill[--n_fill]);
        RUN_UNTIL(&h, h.m.conns_open == 1, 1000);
        CHECK(h.m.conns_open == 1 && h.m.conns_accepted == 8);
        while (n_fill)
            close(fill[--n_fill]);
        CHECK(!setrlimit(RLIMIT_NOFILE, &saved));
    } else {
        printf("note: EMFILE part skipped (RLIMIT_NOFILE %llu)\n", (unsigned long long)saved.rlim_cur);
        RUN_UNTIL(&h, h.m.conns_open == 1, 1000);
    }
    close(waiting);
    RUN_UNTIL(&h, h.m.conns_open == 0, 2000);
    CHECK(h.m.conns_open == 0);

    /* shutdown order of server.c: unlisten, evhttp_free (closes), free */
    int held = client(&h);
    RUN_UNTIL(&h, h.m.conns_open == 1, 2000);
    conn_limit_unlisten(h.cl);
    evhttp_free(h.http);
    CHECK(h.m.conns_open == 0);
    conn_limit_free(h.cl);
    close(held);
    event_base_free(h.base);
    TEST_DONE();
}
