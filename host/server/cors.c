/* cors.c - Cross-Origin Resource Sharing (contract in cors.h). */
#include "cors.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <stdio.h>
#include <string.h>

#include "../common/status.h"

#define CORS_BASE_HEADERS "Authorization, Content-Type, Last-Event-ID"
#define CORS_HEADERS_MAX  512 /* bytes of an Access-Control-Allow-Headers value */

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Next comma-separated entry of *p, blanks trimmed: [*b, *b + *n); false at the end. */
static bool next_entry(const char **p, const char **b, size_t *n)
{
    const char *s = *p;
    if (!*s)
        return false;
    const char *e = strchr(s, ',');
    const char *end = e ? e : s + strlen(s);
    *p = e ? e + 1 : end;
    while (s < end && is_space(*s))
        s++;
    while (end > s && is_space(end[-1]))
        end--;
    *b = s;
    *n = (size_t)(end - s);
    return true;
}

/* scheme://host[:port], scheme http or https, host of letters, digits, '-',
 * '.', or a bracketed IPv6 literal; port 1-5 digits; nothing else. */
static bool origin_ok(const char *s, size_t n)
{
    size_t i;
    if (n > 7 && !evutil_ascii_strncasecmp(s, "http://", 7))
        i = 7;
    else if (n > 8 && !evutil_ascii_strncasecmp(s, "https://", 8))
        i = 8;
    else
        return false;
    size_t h0 = i;
    if (s[i] == '[') {
        while (i < n && s[i] != ']') {
            char c = s[i];
            if (i > h0 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':'))
                return false;
            i++;
        }
        if (i == n || i == h0 + 1)
            return false;
        i++;
    } else {
        while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                         (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.'))
            i++;
        if (i == h0)
            return false;
    }
    if (i < n && s[i] == ':') {
        size_t p0 = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == p0 || i - p0 > 5)
            return false;
    }
    return i == n;
}

int cors_list_validate(const char *list)
{
    if (!list[0] || !strcmp(list, "*"))
        return PS_OK;
    const char *p = list, *b;
    size_t n;
    while (next_entry(&p, &b, &n)) {
        if (n == 1 && *b == '*')
            return ps_error_set(PS_EINVAL, "cors_origins: '*' must be the whole list (any origin), not one entry");
        if (!origin_ok(b, n))
            return ps_error_set(PS_EINVAL,
                                "cors_origins: '%.*s' is not an origin (scheme://host[:port] with http or https, "
                                "no path, no trailing '/')", (int)(n > 200 ? 200 : n), b);
    }
    return PS_OK;
}

bool cors_origin_allowed(const char *list, const char *origin)
{
    if (!list[0] || !origin || !origin[0])
        return false;
    if (!strcmp(list, "*"))
        return true;
    size_t on = strlen(origin);
    const char *p = list, *b;
    size_t n;
    while (next_entry(&p, &b, &n))
        if (n == on && !evutil_ascii_strncasecmp(b, origin, n))
            return true;
    return false;
}

void cors_on_request(struct evhttp_request *req, const char *list)
{
    if (!list[0])
        return;
    const char *origin = evhttp_find_header(evhttp_request_get_input_headers(req), "Origin");
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const bool any = !strcmp(list, "*");
    /* the reply depends on Origin: caches must keep one per origin (also
     * the one without the header, for a disallowed or absent Origin) */
    if (!any)
        evhttp_add_header(out, "Vary", "Origin");
    if (!cors_origin_allowed(list, origin))
        return;
    /* an Origin allowed by the list is a valid origin: no CR / LF to inject */
    evhttp_add_header(out, "Access-Control-Allow-Origin", any ? "*" : origin);
    evhttp_add_header(out, "Access-Control-Expose-Headers", "X-Task-Id");
}

/* Whether s is a comma-separated list of HTTP header names (RFC 9110 tokens). */
static bool header_names_ok(const char *s)
{
    const char *p = s, *b;
    size_t n;
    bool any = false;
    while (next_entry(&p, &b, &n)) {
        if (!n)
            return false;
        for (size_t i = 0; i < n; i++) {
            char c = b[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  strchr("!#$%&'*+-.^_`|~", c)))
                return false;
        }
        any = true;
    }
    return any;
}

void cors_allow_headers(struct evhttp_request *req, const char *allow)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    evhttp_add_header(out, "Allow", allow);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_OPTIONS ||
        !evhttp_find_header(out, "Access-Control-Allow-Origin") ||
        !evhttp_find_header(in, "Access-Control-Request-Method"))
        return;
    evhttp_add_header(out, "Access-Control-Allow-Methods", allow);
    const char *asked = evhttp_find_header(in, "Access-Control-Request-Headers");
    char hdrs[CORS_HEADERS_MAX];
    if (asked && header_names_ok(asked) && strlen(asked) + sizeof CORS_BASE_HEADERS + 2 <= sizeof hdrs)
        snprintf(hdrs, sizeof hdrs, "%s, %s", CORS_BASE_HEADERS, asked);
    else
        snprintf(hdrs, sizeof hdrs, "%s", CORS_BASE_HEADERS);
    evhttp_add_header(out, "Access-Control-Allow-Headers", hdrs);
    evhttp_add_header(out, "Access-Control-Max-Age", "600");
}
