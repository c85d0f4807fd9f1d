"""Mock HTTP agent for the orchestrator's end-to-end tests.

    python3 mock_agent.py PORT [CERT KEY]     (with CERT and KEY: HTTPS)
POST a JSON object; the reply depends on its fields (the same protocol as the
built-in C mock, host/orchestrator/mock_agent.h):
  sleep_ms  reply after this long            fault "slow"    = sleep_ms default 300
  fault     "hang" never reply   "5xx" 503   "4xx" 400   "nonjson" 200 + HTML
            "drop" close the connection without a reply
            "badutf8" 200 + JSON-shaped bytes holding 0xFF   "nul" 200 + {"v":"a\\u0000b"}
Reply: {"ok": true, "args": <the request>} with X-Agent-Recv-Ns/X-Agent-Send-Ns.
"""
import json
import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        recv = time.monotonic_ns()
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        try:
            args = json.loads(raw)
        except ValueError:
            args = {}
        fault = args.get("fault", "") if isinstance(args, dict) else ""
        sleep_ms = args.get("sleep_ms", 300 if fault == "slow" else 0) if isinstance(args, dict) else 0
        if fault == "hang":
            time.sleep(3600)
            return
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        if fault == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        code, body = 200, json.dumps({"ok": True, "args": args})
        if fault == "5xx":
            code, body = 503, '{"error":"unavailable"}'
        elif fault == "4xx":
            code, body = 400, '{"error":"bad request"}'
        elif fault == "nonjson":
            body = "<html>not json</html>"
        elif fault == "nul":
            body = '{"ok":true,"v":"a\\u0000b"}'
        data = body.encode() if fault != "badutf8" else b'{"ok":true,"v":"a\xff"}'

        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Agent-Recv-Ns", str(recv))
        self.send_header("X-Agent-Send-Ns", str(time.monotonic_ns()))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    srv = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    if len(sys.argv) == 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()
