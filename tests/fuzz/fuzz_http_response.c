/* fuzz_http_response.c - libFuzzer target for the outbound HTTP client's
 * reply parser (host/orchestrator/httpc_parse.h): agents' replies are
 * untrusted.
 *
 * Input: byte 0 picks how many chunk sizes follow (1..8); each following
 * byte is one chunk size (1..255, 0 = everything left), used in turn; the
 * rest is the byte stream a connection receives.  The stream is delivered
 * in those chunks exactly as hc_on_read does (append, parse the head until
 * it is done, then the body), each time in a buffer allocated to the exact
 * length so that a read past the received bytes is caught.  A complete
 * reply with bytes left over is followed by parsing the next reply from
 * them, as on a kept-alive connection; the end of the stream is EOF.
 *
 * Aborts when: a parse returns something other than -1/0/1, fails without a
 * message, grows the buffer, leaves the body unterminated or over
 * HTTPC_MAX_BODY, reports a status outside 200..999, or when the outcome
 * (replies, statuses, bodies, headers, keep-alive, error) differs between
 * chunked delivery and delivery in one piece.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "orchestrator/httpc.h"
#include "orchestrator/httpc_parse.h"

#define MAX_REPLIES 16

struct outcome {
    int      n;                 /* complete replies */
    long     status[MAX_REPLIES];
    int      keep_alive[MAX_REPLIES];
    size_t   len[MAX_REPLIES];
    uint64_t hash[MAX_REPLIES]; /* body, content type, session id, timings */
    int      end;               /* 0 clean EOF, -1 error, 2 truncated reply */
    char     msg[160];
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t reply_hash(const struct httpc_reply *r)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, r->body ? r->body : "", r->len);
    h = fnv(h, r->content_type ? r->content_type : "\1", r->content_type ? strlen(r->content_type) : 1);
    h = fnv(h, r->session_id ? r->session_id : "\1", r->session_id ? strlen(r->session_id) : 1);
    h = fnv(h, &r->recv_ns, sizeof r->recv_ns);
    return fnv(h, &r->send_ns, sizeof r->send_ns);
}

static void check_state(const struct httpc_reply *r, int rc, const char *msg, size_t before, size_t after,
                        int body)
{
    if (rc < -1 || rc > 1 || after > before)
        abort();
    if (rc < 0 && !msg[0])
        abort();
    if (r->len > HTTPC_MAX_BODY || (r->len && (!r->body || r->body[r->len] != 0)) || r->len > r->cap)
        abort();
    if (r->head_done && (r->status < 200 || r->status > 999))
        abort();
    if (rc > 0 && !body && !r->head_done)
        abort();
    if (rc > 0 && body && r->framing == HB_LENGTH && r->remaining)
        abort();
    if (rc > 0 && body && r->framing == HB_CHUNKED && r->chunk != HCH_DONE)
        abort();
}

/* Deliver stream[0..n) in the chunks sizes[] describes (nsizes 0: one piece). */
static void run(const uint8_t *stream, size_t n, const uint8_t *sizes, size_t nsizes, struct outcome *o)
{
    struct httpc_reply r = {0};
    char *in = NULL;
    size_t in_len = 0, off = 0, k = 0;
    int eof = 0, fresh = 0;       /* fresh: leftover bytes of a complete reply to parse first */
    memset(o, 0, sizeof *o);
    for (;;) {
        if (!fresh) {
            if (off < n) {
                size_t c = nsizes ? sizes[k++ % nsizes] : 0;
                if (c == 0 || c > n - off)
                    c = n - off;
                char *nb = malloc(in_len + c);
                if (!nb)
                    abort();
                if (in_len)
                    memcpy(nb, in, in_len);
                memcpy(nb + in_len, stream + off, c);
                free(in);
                in = nb;
                in_len += c;
                off += c;
            } else {
                eof = 1;
            }
        }
        fresh = 0;
        int rc = 0;
        char msg[160] = "";
        size_t before = in_len;
        if (!r.head_done) {
            rc = httpc_reply_parse_head(&r, in, &in_len, msg, sizeof msg);
            check_state(&r, rc, msg, before, in_len, 0);
        }
        if (r.head_done) {
            before = in_len;
            rc = httpc_reply_parse_body(&r, in, &in_len, msg, sizeof msg);
            check_state(&r, rc, msg, before, in_len, 1);
        }
        if (rc == 0 && eof && r.head_done && r.framing == HB_EOF)
            rc = 1;                        /* close-delimited body */
        if (rc > 0) {
            if (o->n < MAX_REPLIES) {
                o->status[o->n] = r.status;
                o->keep_alive[o->n] = r.keep_alive;
                o->len[o->n] = r.len;
                o->hash[o->n] = reply_hash(&r);
            }
            o->n++;
            httpc_reply_clear(&r);
            if (in_len) {
                fresh = 1;
                continue;
            }
            if (eof)
                break;
            continue;
        }
        if (rc < 0) {
            o->end = -1;
            memcpy(o->msg, msg, sizeof msg);
            break;
        }
        if (eof) {
            o->end = in_len || r.head_done ? 2 : 0;
            break;
        }
    }
    httpc_reply_clear(&r);
    free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sizes, *stream;
    size_t nsizes, n;
    if (!fuzz_split_framing(data, size, &sizes, &nsizes, &stream, &n))
        return 0;
    static struct outcome split, whole;
    run(stream, n, sizes, nsizes, &split);
    run(stream, n, NULL, 0, &whole);
    /* Over HTTPC_HEAD_MAX buffered bytes, a head still incomplete fails
     * while one piece may hold the whole head: only shorter streams must
     * agree. */
    if (n <= HTTPC_HEAD_MAX && memcmp(&split, &whole, sizeof split) != 0)
        abort();
    return 0;
}
