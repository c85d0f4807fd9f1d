/* cors.h - Cross-Origin Resource Sharing for browser clients of `serve`.
 *
 * Off unless configured (cors_origins "": no CORS header is ever sent, and
 * browsers keep pages of other origins from reading replies).  The list is
 * "*" (any origin) or comma-separated exact origins, each
 * scheme://host[:port] with scheme http or https and nothing after the
 * authority ("https://app.example.com, http://localhost:3000").
 *
 * A request whose Origin header is allowed gets, on whatever reply a
 * handler gives it (errors, 401s and event streams included):
 *     Access-Control-Allow-Origin: * | the origin
 *     Access-Control-Expose-Headers: X-Task-Id
 * and with a list (not "*") every reply carries Vary: Origin.  Requests
 * libevent refuses itself before any handler runs (oversized or malformed
 * framing, unknown methods: server.c's guard_output) get no CORS header.
 * A preflight (OPTIONS from an allowed origin with
 * Access-Control-Request-Method) is answered 204 without authentication,
 * as browsers send it without credentials, and additionally gets
 *     Access-Control-Allow-Methods: the route's methods (its Allow list)
 *     Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID
 *                                   (plus the requested ones when they are
 *                                   plain header names)
 *     Access-Control-Max-Age: 600
 * OPTIONS never needs an API key (it only lists a known route's methods);
 * every other method on /v1/ still does. */
#ifndef PS_SERVER_CORS_H
#define PS_SERVER_CORS_H

#include <stdbool.h>

struct evhttp_request;

/* 0 when `list` is a valid cors_origins value (see above; "" = off), else
 * PS_EINVAL with a detail naming the bad entry. */
int  cors_list_validate(const char *list);

/* Whether `origin` (the request's Origin header, NULL = none) is allowed
 * by `list`: "*" allows any, otherwise an exact (ASCII case-insensitive in
 * scheme and host) match with one entry.  "" never allows. */
bool cors_origin_allowed(const char *list, const char *origin);

/* On an incoming request: adds Access-Control-Allow-Origin (and Vary) to
 * its reply headers when its Origin is allowed by `list`. */
void cors_on_request(struct evhttp_request *req, const char *list);

/* The reply headers of a route's method list: "Allow: allow", and on a
 * preflight that cors_on_request let through the Access-Control-Allow-*
 * headers above. */
void cors_allow_headers(struct evhttp_request *req, const char *allow);

#endif /* PS_SERVER_CORS_H */
