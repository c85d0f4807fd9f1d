/* fuzz_agent_reply.c - libFuzzer target for the agent reply handling of
 * the http-json, openai-chat / local and a2a adapters
 * (host/orchestrator/adapters.c: adapter_http_classify, http_json_reply,
 * chat_reply, a2a_reply): agents' replies are untrusted.
 *
 * Input: byte 0 picks the adapter (low 2 bits: http-json, chat, a2a, the
 * HTTP status classifier) and the JSON-RPC id an a2a call waits for (1..4,
 * from bits 2-3); bytes 1-2 are the HTTP status for the classifier; the
 * rest is the reply body, in a buffer of exactly its length (no NUL after
 * it).
 *
 * Aborts when an outcome is not a feedback status, when the error message
 * is not NUL-terminated in its buffer, when FB_OK comes with an error
 * message or without a result (a2a: or a working task id), when an error
 * status comes with a result or without a message, when a working task id
 * is empty or longer than A2A_MAX_TASK_ID, or when the classifier passes a
 * status outside 2xx, fails one inside it, or writes a control byte.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"

static volatile size_t sink;

static void check(enum fb_status st, cJSON *res, char *working, const char *err, size_t errlen)
{
    if ((unsigned)st >= FB_STATUS_COUNT || !memchr(err, 0, errlen))
        abort();
    if (working) {
        size_t n = strlen(working);
        if (st != FB_OK || res || n == 0 || n > A2A_MAX_TASK_ID)
            abort();
        free(working);
        return;
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

static void classify(long status, const char *body, size_t n)
{
    struct httpc_response r = { 0 };
    r.status = status;
    r.body = body;
    r.body_len = n;
    r.error = "";
    enum fb_status st = FB_OK;
    int retryable = -1;
    char err[256];
    memset(err, 'x', sizeof err);
    int pass = adapter_http_classify(&r, &st, err, sizeof err, &retryable);
    if (pass != (status >= 200 && status < 300))
        abort();
    if (pass)
        return;
    if (st != FB_EXEC_ERROR || !memchr(err, 0, sizeof err) || retryable != (status == 429 || status >= 500))
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
    long id = 1 + ((data[0] >> 2) & 3);
    long status = (long)data[1] << 8 | data[2];
    size_t n = size - 3;
    char *body = malloc(n ? n : 1);
    if (!body)
        return 0;
    memcpy(body, data + 3, n);
    cJSON *res = (cJSON *)1;
    char *working = (char *)1;
    char err[512];
    memset(err, 'x', sizeof err);
    switch (kind) {
    case 0:
        check(http_json_reply(body, n, &res, err, sizeof err), res, NULL, err, sizeof err);
        break;
    case 1:
        check(chat_reply(body, n, &res, err, sizeof err), res, NULL, err, sizeof err);
        break;
    case 2: {
        enum fb_status st = a2a_reply(body, n, id, &res, &working, err, sizeof err);
        check(st, res, working, err, sizeof err);
        break;
    }
    default:
        classify(status, body, n);
        break;
    }
    free(body);
    return 0;
}
