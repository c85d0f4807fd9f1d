/* adapter_op.c - what every adapter shares (exec_internal.h): an attempt's
 * op freed or finished with its outcome, an outcome delivered from the loop,
 * and an HTTP reply's status classed.  adapters.c and mcp.c both build on
 * it; it calls neither. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/status.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"

void adapter_op_free(struct adapter_op *op)
{
    if (!op)
        return;
    if (op->req)
        httpc_cancel(op->req);
    if (op->ev)
        event_free(op->ev);
    cJSON_Delete(op->b_result);
    free(op->a2a_task);
    free(op->a2a_text);
    cJSON_Delete(op->a2a_data);
    free(op->call_id);
    free(op);
}

void adapter_finish(struct adapter_op *op, enum fb_status st, cJSON *result,
                    const char *error, int retryable, int64_t recv_ns, int64_t send_ns)
{
    struct adapter_result r = {
        .status = st, .result = result, .error = error, .retryable = retryable,
        .agent_recv_ns = recv_ns, .agent_send_ns = send_ns,
    };
    adapter_done_fn done = op->done;
    void *ud = op->ud;
    op->req = NULL;   /* the caller (an httpc callback) owns the finished request */
    adapter_op_free(op);
    done(ud, &r);
    cJSON_Delete(r.result);
}

int adapter_http_classify(const struct httpc_response *r, enum fb_status *st, char *err,
                          size_t errlen, int *retryable)
{
    if (r->transport_error) {
        *st = FB_EXEC_ERROR;
        *retryable = 1;
        snprintf(err, errlen, "transport error: %s", r->error);
        return 0;
    }
    if (r->status >= 200 && r->status < 300)
        return 1;
    *st = FB_EXEC_ERROR;
    *retryable = r->status == 429 || r->status >= 500;
    size_t n = r->body_len < 200 ? r->body_len : 200;
    char snippet[201];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        snippet[k++] = (r->body[i] >= 32 && r->body[i] < 127) ? r->body[i] : ' ';
    snippet[k] = 0;
    snprintf(err, errlen, "HTTP %ld: %s", r->status, snippet);
    return 0;
}

static void deliver(evutil_socket_t fd, short what, void *ud)
{
    (void)fd;
    (void)what;
    struct adapter_op *op = ud;
    cJSON *res = op->b_result;
    op->b_result = NULL;
    char err[512];
    snprintf(err, sizeof err, "%s", op->b_err);
    adapter_finish(op, op->b_status, res, op->b_status == FB_OK ? NULL : err, op->b_retryable, 0, 0);
}

int rpc_id_is(const cJSON *v, long id)
{
    return cJSON_IsNumber(v) && v->valuedouble == (double)id;
}

int adapter_deliver_later(struct adapter_op *op)
{
    if (!op->ev && !(op->ev = event_new(op->ex->base, -1, 0, deliver, op)))
        return ps_error_set(PS_ENOMEM, "out of memory");
    event_active(op->ev, 0, 0);
    return PS_OK;
}

int adapter_fail_later(struct adapter_op *op, enum fb_status st, const char *err, int retryable)
{
    op->b_status = st;
    op->b_retryable = retryable;
    snprintf(op->b_err, sizeof op->b_err, "%s", err);
    return adapter_deliver_later(op);
}
