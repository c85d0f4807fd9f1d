"""CORS for browser clients (`serve --cors-origins`, host/server/cors.h).

- off by default: no Access-Control-* header whatever the Origin;
- with a list: an allowed Origin gets Access-Control-Allow-Origin and
  Access-Control-Expose-Headers (X-Task-Id) on every reply, errors, 401s
  and task event streams included; any other origin gets none; every reply
  says Vary: Origin;
- a preflight (OPTIONS with Access-Control-Request-Method) needs no API key
  and lists the route's methods and the allowed request headers;
- "*" answers any origin with "*";
- a malformed list stops the server at start with a message naming it.
"""
import http.client
import subprocess

import httpx
import openai
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)

KEY = "sk-cors-test"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def cors_server(start_server):
    return start_server("--cors-origins", f"{ORIGIN}, http://localhost:3000", "--api-key", KEY,
                        "--kv-blocks", 256)


def _preflight(port, path, origin, method="POST", headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    c.request("OPTIONS", path, headers=h)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


def test_preflight_from_an_allowed_origin_needs_no_key(cors_server):
    for path, allow in (("/v1/chat/completions", "POST, OPTIONS"), ("/v1/completions", "POST, OPTIONS"),
                        ("/v1/models", "GET, HEAD, OPTIONS"), ("/v1/tasks", "GET, HEAD, POST, OPTIONS"),
                        ("/v1/tasks/task_x", "GET, HEAD, DELETE, OPTIONS"),
                        ("/v1/tasks/task_x/events", "GET, HEAD, OPTIONS")):
        r, body = _preflight(cors_server.port, path, ORIGIN,
                             headers="authorization, content-type, x-stainless-os")
        assert r.status == 204 and body == b"", (path, r.status, body)
        assert r.getheader("Access-Control-Allow-Origin") == ORIGIN, (path, r.getheaders())
        assert "Origin" in r.getheader("Vary", "")
        assert r.getheader("Access-Control-Allow-Methods") == allow
        assert r.getheader("Allow") == allow
        hdrs = [h.strip().lower() for h in r.getheader("Access-Control-Allow-Headers").split(",")]
        for need in ("authorization", "content-type", "x-stainless-os"):
            assert need in hdrs, (path, hdrs)
        assert r.getheader("Access-Control-Max-Age") == "600"
    # a second allowed origin, echoed as sent
    r, _ = _preflight(cors_server.port, "/v1/models", "http://localhost:3000", method="GET")
    assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == "http://localhost:3000"


def test_other_origins_get_no_cors_headers(cors_server):
    for origin in ("https://evil.example.com", "https://app.example.com.evil.com", "http://app.example.com", "null"):
        r, _ = _preflight(cors_server.port, "/v1/chat/completions", origin)
        assert r.status == 204  # OPTIONS needs no key, but the browser is refused: no CORS header
        assert r.getheader("Access-Control-Allow-Origin") is None, (origin, r.getheaders())
        assert r.getheader("Access-Control-Allow-Methods") is None
        rr = httpx.get(cors_server.url + "/v1/models", headers={"Origin": origin,
                                                               "Authorization": f"Bearer {KEY}"}, timeout=10)
        assert rr.status_code == 200 and "access-control-allow-origin" not in rr.headers
        # the reply still depends on Origin: a shared cache must not hand it to an allowed one
        assert "Origin" in rr.headers.get("vary", ""), rr.headers
    rr = httpx.get(cors_server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert "Origin" in rr.headers.get("vary", "") and "access-control-allow-origin" not in rr.headers
    # header names that are not tokens are not echoed into Access-Control-Allow-Headers
    r, _ = _preflight(cors_server.port, "/v1/chat/completions", ORIGIN, headers="x-ok, bad header")
    assert r.getheader("Access-Control-Allow-Headers") == "Authorization, Content-Type, Last-Event-ID"


def test_replies_to_an_allowed_origin_carry_the_header(cors_server):
    h = {"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}
    r = httpx.post(cors_server.url + "/v1/chat/completions", headers=h, timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "Origin" in r.headers["vary"]
    # streamed completions
    with httpx.stream("POST", cors_server.url + "/v1/completions", headers=h, timeout=60,
                      json={"prompt": "a", "max_tokens": 2, "stream": True}) as s:
        assert s.status_code == 200 and s.headers["access-control-allow-origin"] == ORIGIN
        assert "data: [DONE]" in "".join(s.iter_text())
    # errors a page must be able to read: 401 without a key, 400, 404
    r = httpx.post(cors_server.url + "/v1/chat/completions", headers={"Origin": ORIGIN}, timeout=10,
                   json={"messages": []})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    assert r.json()["error"]["code"] == "missing_api_key"
    r = httpx.post(cors_server.url + "/v1/chat/completions", headers=h, timeout=10, content=b"{")
    assert r.status_code == 400 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(cors_server.url + "/v1/nothing", headers=h, timeout=10)
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == ORIGIN
    # a task's event stream
    with httpx.stream("POST", cors_server.url + "/v1/tasks", headers=h, timeout=60,
                      json={"input": "x", "stream": True, "script": [{"final": {"answer": "done"}}]}) as s:
        assert s.status_code == 200 and s.headers["access-control-allow-origin"] == ORIGIN
        # a page may read the task id header
        assert s.headers["access-control-expose-headers"] == "X-Task-Id" and s.headers["x-task-id"]
        assert "task.final" in "".join(s.iter_text())
    # the SDK still works (it sends no Origin)
    client = openai.OpenAI(base_url=cors_server.url + "/v1", api_key=KEY)
    assert client.models.list().data


def test_any_origin_and_off_by_default(start_server, server):
    # default: no CORS headers at all
    r, _ = _preflight(server.port, "/v1/chat/completions", ORIGIN)
    assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") is None
    r = httpx.get(server.url + "/v1/models", headers={"Origin": ORIGIN}, timeout=10)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # "*": any origin, answered "*", no Vary needed
    any_srv = start_server("--cors-origins", "*", "--kv-blocks", 64)
    for origin in (ORIGIN, "null", "http://localhost:1234"):
        r, _ = _preflight(any_srv.port, "/v1/completions", origin)
        assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == "*", origin
        assert r.getheader("Access-Control-Allow-Methods") == "POST, OPTIONS"
    r = httpx.get(any_srv.url + "/v1/models", timeout=10)  # no Origin: no header
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(any_srv.url + "/v1/models", headers={"Origin": ORIGIN}, timeout=10)
    assert r.headers["access-control-allow-origin"] == "*" and "vary" not in r.headers


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/", "https://a.com,*", "ftp://x.com"])
def test_a_malformed_list_stops_the_server(paraserve_bin, model_path, bad):
    p = subprocess.run([paraserve_bin, "serve", "-m", model_path, "--port", "0", "--cors-origins", bad],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "cors_origins" in p.stderr and p.stderr.count("\n") <= 3, p.stderr
    assert "Traceback" not in p.stderr
