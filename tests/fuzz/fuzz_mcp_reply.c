/* fuzz_mcp_reply.c - libFuzzer target for the MCP client's reply handling
 * (host/orchestrator/mcp.c: mcp_reply_parse, mcp_reply_result): MCP
 * servers' replies, JSON or text/event-stream, are untrusted.
 *
 * Input: byte 0 picks the JSON-RPC id the client waits for (1..4); the
 * rest is the HTTP reply body, in a buffer of exactly its length (no NUL
 * after it).  A message found is mapped to a call outcome; so is whatever
 * cJSON makes of the body directly.
 *
 * Aborts when a found message is not an object, when an outcome is not a
 * feedback status, when FB_OK comes with a message or an error without
 * one, or when the message is unterminated.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "orchestrator/exec_internal.h"

static volatile size_t sink;

static void outcome(const cJSON *msg)
{
    cJSON *res = (cJSON *)1;
    char err[512];
    memset(err, 'x', sizeof err);
    enum fb_status st = mcp_reply_result(msg, &res, err, sizeof err);
    if ((unsigned)st >= FB_STATUS_COUNT || !memchr(err, 0, sizeof err))
        abort();
    if (st == FB_OK) {
        if (err[0])
            abort();
        char *s = cJSON_PrintUnformatted(res);
        sink += s ? strlen(s) : 0;
        free(s);
        cJSON_Delete(res);
    } else if (res || !err[0]) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    long id = 1 + data[0] % 4;
    size_t n = size - 1;
    char *body = malloc(n ? n : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, n);
    cJSON *m = mcp_reply_parse(body, n, id, NULL);
    if (m) {
        outcome(m);
        cJSON_Delete(m);
    }
    cJSON *j = cJSON_ParseWithLength(body, n);
    if (j)
        outcome(j);
    cJSON_Delete(j);
    free(body);
    return 0;
}
