/* fuzz_action.c - libFuzzer target for the incremental action parser
 * (host/orchestrator/action.h): the orchestrator model's output is
 * untrusted.
 *
 * Input: byte 0 picks how many chunk sizes follow (1..8); each following
 * byte is one chunk size (1..255, 0 = everything left), used in turn; the
 * rest is the model's text, fed in those chunks as decoding would, then
 * finished.  The same text is fed again in one piece, and action_check()
 * runs on whatever cJSON makes of it.
 *
 * Aborts when a feed or finish returns an unexpected status, when a call
 * handed to the callback is not an object, when finish succeeds with an
 * action that action_check() rejects, or when chunked and one-piece
 * feeding disagree (the calls delivered, their order, the feed results,
 * the finished action).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "common/status.h"
#include "orchestrator/action.h"

struct outcome {
    int      n_calls;
    uint64_t calls_hash;
    int      feed_rc;      /* first non-OK feed status, PS_OK if none */
    int      complete;
    int      finish_rc;
    uint64_t action_hash;
};

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull;
}

static void on_call(void *ud, const cJSON *call)
{
    struct outcome *o = ud;
    if (!cJSON_IsObject(call))
        abort();
    char *s = cJSON_PrintUnformatted(call);
    o->n_calls++;
    o->calls_hash = fnv(o->calls_hash, s ? s : "\1");
    free(s);
}

static void run(const char *text, size_t n, const uint8_t *sizes, size_t nsizes, struct outcome *o)
{
    memset(o, 0, sizeof *o);
    o->calls_hash = o->action_hash = 0xcbf29ce484222325ull;
    struct action_parser *p = action_parser_new(on_call, o);
    if (!p)
        return;
    size_t off = 0, k = 0;
    while (off < n) {
        size_t c = nsizes ? sizes[k++ % nsizes] : 0;
        if (c == 0 || c > n - off)
            c = n - off;
        int rc = action_parser_feed(p, text + off, c);
        if (rc != PS_OK && rc != PS_EFORMAT)
            abort();
        off += c;
        if (rc != PS_OK) {
            o->feed_rc = rc;
            break;
        }
    }
    size_t len;
    const char *t = action_parser_text(p, &len);
    if (!t || t[len] != 0 || len > n)
        abort();
    o->complete = action_parser_complete(p);
    cJSON *a = NULL;
    o->finish_rc = action_parser_finish(p, &a);
    if ((o->finish_rc == PS_OK) != (a != NULL))
        abort();
    if (o->finish_rc != PS_OK && o->finish_rc != PS_EFORMAT)
        abort();
    if (a) {
        char err[256];
        if (action_check(a, err, sizeof err) != PS_OK)
            abort();
        char *s = cJSON_PrintUnformatted(a);
        o->action_hash = fnv(o->action_hash, s ? s : "\1");
        free(s);
        cJSON_Delete(a);
    }
    action_parser_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sizes, *payload;
    size_t nsizes, n;
    if (!fuzz_split_framing(data, size, &sizes, &nsizes, &payload, &n))
        return 0;
    const char *text = (const char *)payload;
    struct outcome split, whole;
    run(text, n, sizes, nsizes, &split);
    run(text, n, NULL, 0, &whole);
    if (memcmp(&split, &whole, sizeof split) != 0)
        abort();
    cJSON *j = cJSON_ParseWithLength(text, n);
    char err[256];
    err[0] = 0;
    if (action_check(j, err, sizeof err) != PS_OK && !err[0])
        abort();
    cJSON_Delete(j);
    return 0;
}
