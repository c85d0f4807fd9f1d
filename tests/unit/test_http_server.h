/* Request framing for the scripted HTTP/1.1 servers of the unit tests
 * (test_orch_httpc.c, test_orch_exec.c): one request at a time off a
 * blocking socket, pipelined bytes kept for the next. */
#ifndef PS_TEST_HTTP_SERVER_H
#define PS_TEST_HTTP_SERVER_H

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Read from fd until buf (cap bytes, *len of them held from earlier reads)
 * holds a whole request: 1 with *head (bytes up to and including the blank
 * line) and *clen (its Content-Length, 0 if none); 0 when the peer closed,
 * recv failed, or the request does not fit in cap - 1 bytes. */
static inline int test_http_read_request(int fd, char *buf, size_t cap, size_t *len, size_t *head, size_t *clen)
{
    char *end;
    while (!(end = *len >= 4 ? memmem(buf, *len, "\r\n\r\n", 4) : NULL)) {
        ssize_t n = *len < cap - 1 ? recv(fd, buf + *len, cap - 1 - *len, 0) : -1;
        if (n <= 0)
            return 0;
        *len += (size_t)n;
    }
    *head = (size_t)(end + 4 - buf);
    *clen = 0;
    buf[*len] = 0;
    const char *cl = strcasestr(buf, "Content-Length:");
    if (cl && cl < end)
        *clen = strtoul(cl + 15, NULL, 10);
    while (*len < *head + *clen) {
        ssize_t n = *len < cap - 1 ? recv(fd, buf + *len, cap - 1 - *len, 0) : -1;
        if (n <= 0)
            return 0;
        *len += (size_t)n;
    }
    return 1;
}

/* Drop the request test_http_read_request returned from buf, keeping what
 * follows it. */
static inline void test_http_consume(char *buf, size_t *len, size_t head, size_t clen)
{
    memmove(buf, buf + head + clen, *len - head - clen);
    *len -= head + clen;
}

#endif
