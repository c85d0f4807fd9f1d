#!/usr/bin/env python3
"""Seed corpus for fuzz_http_response: agent replies as the orchestrator's
HTTP client receives them (valid, and near-valid ones), each prefixed with
the chunk-size bytes the target reads first (see tests/fuzz/fuzz_http_response.c).
Usage: scripts/gen-http_response-corpus.py OUTDIR"""
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_http_response"
os.makedirs(out, exist_ok=True)

BODY = b'{"result":{"answer":"3"},"usage":{"prompt_tokens":4}}'
SSE = b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\r\n\r\n'


def chunked(body, sizes, ext=b"", trailer=b""):
    out, i = b"", 0
    for n in sizes:
        part = body[i:i + n]
        i += n
        out += b"%x%s\r\n%s\r\n" % (len(part), ext, part)
    return out + b"0\r\n" + trailer + b"\r\n"


def cl(body, status=b"200 OK", extra=b""):
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


replies = {
    "content_length": cl(BODY),
    "timings": cl(BODY, extra=b"X-Agent-Recv-Ns: 123456789\r\nX-Agent-Send-Ns: 123456999\r\n"),
    "mcp_session": cl(SSE, extra=b"Mcp-Session-Id: 4f1c-99\r\nContent-Type: text/event-stream\r\n"),
    "close": cl(BODY, extra=b"Connection: close\r\n"),
    "http10": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "http10_keepalive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
    "close_delimited": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY,
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
               + chunked(BODY, [7, 20, 100]),
    "chunked_ext_trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                           + chunked(BODY, [16, 64], ext=b";name=v", trailer=b"X-Trailer: 1\r\n"),
    "chunked_lf": b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "chunked_and_length": b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + chunked(b"abc", [3]),
    "continue_then_200": b"HTTP/1.1 100 Continue\r\n\r\n" + cl(BODY),
    "no_content": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "not_modified": b"HTTP/1.1 304 Not Modified\r\n\r\n",
    "error_500": cl(b'{"error":"boom"}', status=b"500 Internal Server Error"),
    "pipelined": cl(b"{}") + cl(BODY, status=b"429 Too Many Requests", extra=b"Retry-After: 1\r\n"),
    "empty_body": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    # near-valid
    "bad_length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "huge_length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    "length_short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    "bad_chunk_size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
    "chunk_size_ws": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n  \r\n5\r\nhello\r\n0\r\n\r\n",
    "chunk_no_crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n",
    "chunk_huge": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
    "chunk_truncated": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    "http2": b"HTTP/2 200\r\n\r\n",
    "bad_status": b"HTTP/1.1 20 OK\r\n\r\n",
    "status_only": b"HTTP/1.1 200\r\n\r\n",
    "no_headers_end": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
    "header_no_colon": b"HTTP/1.1 200 OK\r\nContent-Length 2\r\nX:\r\n\r\n{}",
}

# chunk-size prefixes: count byte (count-1 in the low 3 bits), then sizes
prefixes = [b"\x00\x00", b"\x00\x01", b"\x02\x03\x07\x40", b"\x07\x01\x02\x03\x05\x08\x0d\x15\x22"]
for name, reply in sorted(replies.items()):
    for i, pre in enumerate(prefixes):
        with open(os.path.join(out, "%s_%d" % (name, i)), "wb") as f:
            f.write(pre + reply)
