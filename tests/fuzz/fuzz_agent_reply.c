/* fuzz_agent_reply.c - libFuzzer target for the agent reply handling of
 * the http-json, openai-chat / local and a2a adapters
 * (host/orchestrator/adapters.c: adapter_http_classify, http_json_reply,
 * chat_reply, a2a_reply): agents' replies are untrusted.
 *
 * Input: byte 0 picks the adapter (low 2 bits: http-json, chat, a2a, the
 * HTTP status classifier), the JSON-RPC id an a2a reply must carry (bits
 * 2-3: 1, 2, 2^40 + 1, or 2^53 + 1, where a double cannot
 * hold it), for the classifier a transport error (bit 4), and for a2a the
 * agent card reader (bit 5: describe.c's a2a_card_read) or a streamed
 * reply (bit 6: a2a_stream_feed, the body fed in two parts split at byte
 * 1's offset, then as complete); bytes 1-2
 * are the HTTP status for the classifier; the rest is the reply body, in a
 * buffer of exactly its length (no NUL after it).
 *
 * Aborts when an outcome is not a feedback status, when the error message
 * is not NUL-terminated in its buffer, when FB_OK comes with an error
 * message or without a result (a2a: or without a running task's id to
 * poll), when an error status comes with a result or without a message,
 * when a task id is empty, longer than A2A_MAX_TASK_ID or given for a task
 * that ended (or none), when a running task's id comes with an error
 * status, or when the classifier passes a transport error or a status
 * outside 2xx, fails one inside it, calls a transport error or a 429 / 5xx
 * not retryable (or anything else retryable), or writes a control byte;
 * when the card reader gives a version it does not know, a description
 * with an error, or an error without a message; when a stream's outcome is
 * ok without a result, an error with one or without a message, or its task
 * id is empty or longer than A2A_MAX_TASK_ID.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/describe.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"

static volatile size_t sink;

static void check(enum fb_status st, cJSON *res, char *task, int task_state, const char *err, size_t errlen)
{
    if ((unsigned)st >= FB_STATUS_COUNT || !memchr(err, 0, errlen))
        abort();
    if (task) {
        size_t n = strlen(task);
        if (n == 0 || n > A2A_MAX_TASK_ID || (task_state != A2A_TASK_RUNNING && task_state != A2A_TASK_WAITING))
            abort();
        if (task_state == A2A_TASK_RUNNING && (st != FB_OK || res))
            abort();
        free(task);
        if (task_state == A2A_TASK_RUNNING)
            return;   /* poll it */
    } else if (task_state == A2A_TASK_RUNNING) {
        abort();
    }
    if (st == FB_OK) {
        if (err[0] || !res)
            abort();
        char *s = cJSON_PrintUnformatted(res);
        sink += s ? strlen(s) : 0;
        free(s);
        cJSON_Delete(res);
    } else if (res || !err[0]) {
        abort();
    }
}

static void classify(long status, int transport_error, const char *body, size_t n)
{
    struct httpc_response r = { 0 };
    r.transport_error = transport_error;
    r.status = status;
    r.body = body;
    r.body_len = n;
    r.error = "";
    enum fb_status st = FB_OK;
    int retryable = -1;
    char err[256];
    memset(err, 'x', sizeof err);
    int pass = adapter_http_classify(&r, &st, err, sizeof err, &retryable);
    if (pass != (!transport_error && status >= 200 && status < 300))
        abort();
    if (pass)
        return;
    if (st != FB_EXEC_ERROR || !memchr(err, 0, sizeof err) ||
        retryable != (transport_error || status == 429 || status >= 500))
        abort();
    for (const char *p = err; *p; p++)
        if ((unsigned char)*p < 32 || *p == 127)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int kind = data[0] & 3;
    static const long ids[4] = { 1, 2, (1L << 40) + 1, (1L << 53) + 1 };
    long id = ids[(data[0] >> 2) & 3];
    int transport_error = (data[0] >> 4) & 1;
    long status = (long)data[1] << 8 | data[2];
    size_t n = size - 3;
    char *body = malloc(n ? n : 1);
    if (!body)
        return 0;
    memcpy(body, data + 3, n);
    cJSON *res = (cJSON *)1;
    char *task = (char *)1;
    enum a2a_task_state ts = A2A_TASK_ENDED;
    char err[512];
    memset(err, 'x', sizeof err);
    switch (kind) {
    case 0:
        check(http_json_reply(body, n, &res, err, sizeof err), res, NULL, A2A_NO_TASK, err, sizeof err);
        break;
    case 1:
        check(chat_reply(body, n, &res, err, sizeof err), res, NULL, A2A_NO_TASK, err, sizeof err);
        break;
    case 2: {
        if (data[0] & 64) {
            struct adapter_op *op = calloc(1, sizeof *op);
            if (!op)
                break;
            op->rpc_id = id;
            size_t split = n ? (size_t)data[1] % (n + 1) : 0;
            int ended = a2a_stream_feed(op, body, split, 0);
            if (!ended)
                ended = a2a_stream_feed(op, body, n, 1);
            if (ended != op->a2a_ended || (unsigned)op->b_status >= FB_STATUS_COUNT ||
                (ended && op->b_status == FB_OK && (!op->b_result || op->b_err[0])) ||
                (ended && op->b_status != FB_OK && (op->b_result || !op->b_err[0])) ||
                !memchr(op->b_err, 0, sizeof op->b_err) ||
                (op->a2a_task && (!op->a2a_task[0] || strlen(op->a2a_task) > A2A_MAX_TASK_ID)))
                abort();
            adapter_op_free(op);
            break;
        }
        if (data[0] & 32) {
            char *text = (char *)1;
            enum a2a_version v = (enum a2a_version)99;
            int streaming = 7;
            int rc = a2a_card_read(body, n, "http://127.0.0.1:1/a2a", &text, &v, &streaming, err, sizeof err);
            if ((rc != PS_OK && rc != PS_EFORMAT && rc != PS_ENOMEM) || text == (char *)1 ||
                streaming < -1 || streaming > 1 ||
                (v != A2A_VERSION_AUTO && v != A2A_VERSION_1_0 && v != A2A_VERSION_0_3) ||
                (rc != PS_OK && (text || !memchr(err, 0, sizeof err) || (rc == PS_EFORMAT && !err[0]))))
                abort();
            free(text);
            break;
        }
        long rpc_error = 1;
        enum fb_status st = a2a_reply(body, n, id, &res, &task, &ts, &rpc_error, err, sizeof err);
        check(st, res, task, ts, err, sizeof err);
        if (rpc_error && st == FB_OK)   /* an error code only beside an error status */
            abort();
        break;
    }
    default:
        classify(status, transport_error, body, n);
        break;
    }
    free(body);
    return 0;
}
