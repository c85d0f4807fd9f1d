/* flush_track.c - final replies counted until written (contract in flush_track.h). */
#include "flush_track.h"

#include <event2/http.h>
#include <stdlib.h>

#include "../common/status.h"
#include "conn_limit.h"

struct flush_token {
    int32_t *count;
    void   (*done)(void *ud);
    void    *ud;
};

static void token_end(struct flush_token *t)
{
    (*t->count)--;
    void (*done)(void *) = t->done;
    void *ud = t->ud;
    free(t);
    if (done)
        done(ud);
}

static void on_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    token_end(arg);
}

static void on_written(struct evhttp_request *req, void *arg)
{
    /* the reply is out: the close callback is no longer ours (a next request
     * on a kept-alive connection may install its own) */
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    if (c)
        conn_closecb_set(c, NULL, NULL);
    token_end(arg);
}

int flush_track(struct evhttp_request *req, int32_t *count, void (*done)(void *ud), void *ud)
{
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    if (!c)
        return PS_OK; /* no connection: libevent frees the reply unsent, nothing to wait for */
    struct flush_token *t = malloc(sizeof *t);
    if (!t)
        return ps_error_set(PS_ENOMEM, "out of memory tracking a reply");
    *t = (struct flush_token){ .count = count, .done = done, .ud = ud };
    conn_oncomplete_set(req, on_written, t);
    conn_closecb_set(c, on_closed, t);
    (*count)++;
    return PS_OK;
}
