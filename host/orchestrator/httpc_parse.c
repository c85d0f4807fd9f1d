/* httpc_parse.c - the fast path's HTTP/1.1 reply parser (see httpc_parse.h):
 * status line, headers, Content-Length, chunked transfer encoding and the
 * keep-alive decision, over a caller-owned byte buffer. */
#include "orchestrator/httpc_parse.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/grow.h"
#include "orchestrator/httpc.h"

void httpc_reply_clear(struct httpc_reply *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->content_type);
    free(r->session_id);
    memset(r, 0, sizeof *r);
}

/* Append reply body bytes; 0, or -1 when over HTTPC_MAX_BODY (too_big set)
 * or out of memory. */
int httpc_reply_append_body(struct httpc_reply *r, const char *p, size_t len)
{
    if (r->len + len > HTTPC_MAX_BODY) {
        r->too_big = 1;
        return -1;
    }
    if (r->len + len + 1 > r->cap) {
        char *nb = ps_grow(r->body, &r->cap, r->len + len + 1, 1, 256);   /* agent replies are mostly small */
        if (!nb)
            return -1;
        r->body = nb;
    }
    memcpy(r->body + r->len, p, len);
    r->len += len;
    r->body[r->len] = 0;
    return 0;
}

/* The value (trimmed) if `line` is header `name`: a pointer into line and
 * its length in *vlen; NULL otherwise.  No allocation: this runs for every
 * header of every reply on the loop. */
static const char *header_span(const char *line, size_t n, const char *name, size_t *vlen)
{
    size_t k = strlen(name);
    if (n <= k || line[k] != ':' || strncasecmp(line, name, k))
        return NULL;
    const char *v = line + k + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
    *vlen = (size_t)(end - v);
    return v;
}

/* A decimal header value: 0 when it is not one (the X-Agent-* timings are
 * informational). */
static int64_t span_int(const char *v, size_t n)
{
    int64_t x = 0;
    if (!n || n > 18)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

/* 1 when `word` occurs in v[0..n) ignoring case (strcasestr on a span). */
static int strncasecmp_any(const char *v, size_t n, const char *word)
{
    size_t k = strlen(word);
    for (size_t i = 0; i + k <= n; i++)
        if (!strncasecmp(v + i, word, k))
            return 1;
    return 0;
}

/* Record the reply headers callers see (both paths). */
void httpc_reply_note_header(struct httpc_reply *r, const char *p, size_t len)
{
    const char *v;
    size_t n;
    if ((v = header_span(p, len, "Content-Type", &n))) {
        free(r->content_type);
        r->content_type = strndup(v, n);
    } else if ((v = header_span(p, len, "Mcp-Session-Id", &n))) {
        free(r->session_id);
        r->session_id = strndup(v, n);
    } else if ((v = header_span(p, len, "X-Agent-Recv-Ns", &n))) {
        r->recv_ns = span_int(v, n);
    } else if ((v = header_span(p, len, "X-Agent-Send-Ns", &n))) {
        r->send_ns = span_int(v, n);
    }
}

/* Parse the status line and headers at the front of in.  1: done (bytes
 * consumed), 0: need more, -1: malformed (message in msg). */
int httpc_reply_parse_head(struct httpc_reply *r, char *in, size_t *in_len, char *msg, size_t msglen)
{
    for (;;) {
        char *end = *in_len >= 4 ? memmem(in, *in_len, "\r\n\r\n", 4) : NULL;
        if (!end) {
            if (*in_len > HTTPC_HEAD_MAX) {
                snprintf(msg, msglen, "reply headers over %u bytes", HTTPC_HEAD_MAX);
                return -1;
            }
            return 0;
        }
        size_t head_len = (size_t)(end + 4 - in);
        /* "HTTP/1.x NNN": parsed by hand, sscanf costs a visible share of a
         * reply's handling on the loop */
        const char *s = in;
        if (*in_len < 12 || memcmp(s, "HTTP/", 5) || s[5] < '0' || s[5] > '9' || s[6] != '.' ||
            s[7] < '0' || s[7] > '9' || s[8] != ' ' || s[9] < '1' || s[9] > '9' ||
            s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
            (*in_len > 12 && s[12] != ' ' && s[12] != '\r')) {
            snprintf(msg, msglen, "Unsupported HTTP reply (not HTTP/1.x)");
            return -1;
        }
        int major = s[5] - '0', minor = s[7] - '0';
        int code = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
        if (code >= 100 && code < 200) {          /* interim (100 Continue): skip */
            *in_len -= head_len;
            memmove(in, in + head_len, *in_len);
            continue;
        }
        r->status = code;
        r->keep_alive = major == 1 && minor >= 1;
        r->framing = HB_EOF;
        const char *line = memchr(in, '\n', head_len);
        for (line = line ? line + 1 : end; line < end + 2;) {
            const char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
            if (!eol)
                break;
            size_t n = (size_t)(eol + 1 - line), vl;
            const char *v;
            if ((v = header_span(line, n, "Content-Length", &vl))) {
                unsigned long long x = 0;
                int bad = vl == 0 || vl > 20;
                for (size_t i = 0; !bad && i < vl; i++) {
                    bad = v[i] < '0' || v[i] > '9';
                    x = bad || x > HTTPC_MAX_BODY ? x : x * 10 + (unsigned)(v[i] - '0');
                }
                if (!bad && x > HTTPC_MAX_BODY)
                    r->too_big = 1;
                if (bad || r->too_big) {
                    snprintf(msg, msglen, r->too_big ? "response too large" : "bad Content-Length");
                    return -1;
                }
                if (r->framing != HB_CHUNKED) {
                    r->framing = HB_LENGTH;
                    r->remaining = (size_t)x;
                }
            } else if ((v = header_span(line, n, "Transfer-Encoding", &vl))) {
                if (strncasecmp_any(v, vl, "chunked")) {
                    r->framing = HB_CHUNKED;
                    r->chunk = HCH_SIZE;
                }
            } else if ((v = header_span(line, n, "Connection", &vl))) {
                if (strncasecmp_any(v, vl, "close"))
                    r->keep_alive = 0;
                else if (strncasecmp_any(v, vl, "keep-alive"))
                    r->keep_alive = 1;
            } else {
                httpc_reply_note_header(r, line, n);
            }
            line = eol + 1;
        }
        if (code == 204 || code == 304)
            r->framing = HB_NONE;
        if (r->framing == HB_EOF)
            r->keep_alive = 0;
        *in_len -= head_len;
        memmove(in, in + head_len, *in_len);
        r->head_done = 1;
        return 1;
    }
}

/* Move body bytes from in into r->body.  1: reply complete, 0: need
 * more, -1: malformed or too large (message in msg). */
int httpc_reply_parse_body(struct httpc_reply *r, char *in, size_t *in_len, char *msg, size_t msglen)
{
    size_t pos = 0;
    int rc = 0;
    switch (r->framing) {
    case HB_NONE:
        rc = 1;
        break;
    case HB_EOF:
        if (*in_len && httpc_reply_append_body(r, in, *in_len))
            rc = -1;
        pos = *in_len;
        break;
    case HB_LENGTH: {
        size_t n = *in_len < r->remaining ? *in_len : r->remaining;
        if (n && httpc_reply_append_body(r, in, n))
            rc = -1;
        pos = n;
        r->remaining -= n;
        if (!rc && !r->remaining)
            rc = 1;
        break;
    }
    case HB_CHUNKED:
        while (!rc && pos < *in_len) {
            char *p = in + pos, *eol;
            size_t left = *in_len - pos;
            if (r->chunk == HCH_DATA) {
                size_t n = left < r->remaining ? left : r->remaining;
                if (httpc_reply_append_body(r, p, n)) {
                    rc = -1;
                    break;
                }
                pos += n;
                if (!(r->remaining -= n))
                    r->chunk = HCH_DATA_END;
                continue;
            }
            if (!(eol = memchr(p, '\n', left))) {
                if (left > HTTPC_CHUNK_LINE_MAX) {
                    snprintf(msg, msglen, "bad chunked encoding");
                    rc = -1;
                }
                break;
            }
            /* A line over the limit fails whether or not its end has
             * arrived yet: the outcome must not depend on how the bytes
             * were split across reads. */
            if ((size_t)(eol - p) > HTTPC_CHUNK_LINE_MAX) {
                snprintf(msg, msglen, "bad chunked encoding");
                rc = -1;
                break;
            }
            pos += (size_t)(eol + 1 - p);
            if (r->chunk == HCH_SIZE) {
                /* Hex digits, then the line end, a space or tab (BWS) or a
                 * chunk extension; parsed by hand within the line (strtoull would
                 * skip leading whitespace, across the line end and past
                 * the received bytes, and take a sign or "0x"). */
                const char *e = p;
                unsigned long long x = 0;
                for (; e < eol && isxdigit((unsigned char)*e) && x <= HTTPC_MAX_BODY; e++)
                    x = x * 16 + (unsigned)(*e <= '9' ? *e - '0' : (*e | 0x20) - 'a' + 10);
                if (e == p || (*e != ';' && *e != '\r' && *e != '\n' && *e != ' ' && *e != '\t') || x > HTTPC_MAX_BODY) {
                    snprintf(msg, msglen, "bad chunked encoding");
                    rc = -1;
                    break;
                }
                r->remaining = (size_t)x;
                r->chunk = x ? HCH_DATA : HCH_TRAILER;
            } else if (r->chunk == HCH_DATA_END) {
                if (eol != p && !(eol == p + 1 && *p == '\r')) {
                    snprintf(msg, msglen, "bad chunked encoding");
                    rc = -1;
                    break;
                }
                r->chunk = HCH_SIZE;
            } else if (r->chunk == HCH_TRAILER) {
                if (eol == p || (eol == p + 1 && *p == '\r')) {
                    r->chunk = HCH_DONE;
                    rc = 1;
                }
            }
        }
        break;
    }
    if (rc < 0 && r->too_big)
        snprintf(msg, msglen, "response too large");
    else if (rc < 0 && !msg[0])
        snprintf(msg, msglen, "out of memory");
    *in_len -= pos;
    memmove(in, in + pos, *in_len);
    return rc;
}
