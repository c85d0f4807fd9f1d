/* httpc_parse.h - INTERNAL to httpc.c (and its tests and fuzz target): the
 * fast path's HTTP/1.1 reply parser as pure functions, bytes in and parse
 * state out, with no socket or event loop.  Agents' replies are untrusted:
 * every input either parses, asks for more bytes, or fails with a message.
 *
 * Use: zero a struct httpc_reply; append received bytes to a buffer `in`
 * (*in_len bytes); call httpc_reply_parse_head() until it returns 1 (head_done
 * is then set), then httpc_reply_parse_body() after each arrival.  Both
 * consume what they parse from the front of `in` (memmove) and update
 * *in_len; bytes after a complete reply stay in `in`.  Neither reads past
 * in[*in_len - 1]: `in` need not be NUL-terminated.  At EOF a reply whose
 * framing is HB_EOF (no Content-Length, not chunked) is complete; any other
 * unfinished reply is truncated.  The caller bounds `in`: httpc.c stops
 * reading when more than HTTPC_HEAD_MAX bytes are buffered.
 *
 * Ownership: body, content_type and session_id are malloc'd and owned by
 * the struct; httpc_reply_clear() frees them (NULL-safe, reusable after).
 */
#ifndef PS_ORCH_HTTPC_PARSE_H
#define PS_ORCH_HTTPC_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define HTTPC_HEAD_MAX       (64u << 10) /* reply status line + headers */
#define HTTPC_CHUNK_LINE_MAX 4096        /* chunk-size / trailer line */

/* How the body is delimited. */
enum hc_body { HB_NONE, HB_LENGTH, HB_CHUNKED, HB_EOF };
enum hc_chunk { HCH_SIZE, HCH_DATA, HCH_DATA_END, HCH_TRAILER, HCH_DONE };

struct httpc_reply {
    long          status;      /* after the head: 200..999 (1xx interim replies are skipped) */
    char         *body;        /* NUL-terminated when len > 0; NULL before any body byte */
    size_t        len, cap;
    int           too_big;     /* body or Content-Length over HTTPC_MAX_BODY */
    char         *content_type;
    char         *session_id;  /* Mcp-Session-Id */
    int64_t       recv_ns, send_ns; /* X-Agent-Recv-Ns / X-Agent-Send-Ns, 0 if absent or not decimal */
    int           head_done;   /* status line and headers parsed */
    int           keep_alive;  /* the connection may be reused afterwards */
    enum hc_body  framing;
    size_t        remaining;   /* HB_LENGTH: body bytes left; chunked: chunk bytes left */
    enum hc_chunk chunk;
};

/* Parse the status line and headers at the front of in.  1: done (bytes
 * consumed, head_done set), 0: need more, -1: malformed or too large
 * (message in msg, which the caller zero-initialises). */
int  httpc_reply_parse_head(struct httpc_reply *r, char *in, size_t *in_len, char *msg, size_t msglen);
/* Move body bytes from the front of in into r->body (head_done must be
 * set).  1: reply complete, 0: need more, -1: malformed, too large or out
 * of memory (message in msg). */
int  httpc_reply_parse_body(struct httpc_reply *r, char *in, size_t *in_len, char *msg, size_t msglen);
/* Append body bytes; 0, or -1 when over HTTPC_MAX_BODY (too_big set) or out
 * of memory.  The curl path's write callback uses it too. */
int  httpc_reply_append_body(struct httpc_reply *r, const char *p, size_t len);
/* Record a header line ("Name: value\r\n", len bytes) that callers see
 * (Content-Type, Mcp-Session-Id, X-Agent-*); others are ignored. */
void httpc_reply_note_header(struct httpc_reply *r, const char *line, size_t len);
/* Free what r owns and zero it.  NULL-safe. */
void httpc_reply_clear(struct httpc_reply *r);

#endif /* PS_ORCH_HTTPC_PARSE_H */
