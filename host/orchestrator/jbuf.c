/* jbuf.c - growable buffer and compact JSON printing (see jbuf.h). */
#include "orchestrator/jbuf.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchestrator/json_alloc.h"

void jbuf_init(struct jbuf *b, char *stack, size_t cap)
{
    b->p = stack;
    b->cap = cap;
    b->len = 0;
    b->heap = 0;
    b->oom = 0;
    b->p[0] = 0;
}

static int jbuf_reserve(struct jbuf *b, size_t n)
{
    if (b->oom)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap * 2;
    while (cap < b->len + n + 1)
        cap *= 2;
    int injected = json_alloc_fail_now();
    char *np = injected ? NULL : b->heap ? realloc(b->p, cap) : malloc(cap);
    if (!np) {
        if (!injected)
            json_alloc_failed();   /* counted like an injected failure */
        b->oom = 1;
        return -1;
    }
    if (!b->heap)
        memcpy(np, b->p, b->len + 1);
    b->p = np;
    b->cap = cap;
    b->heap = 1;
    return 0;
}

void jbuf_add_grow(struct jbuf *b, const char *s, size_t n)
{
    if (jbuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void jbuf_add_int(struct jbuf *b, long long v)
{
    static const char pairs[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char num[24], *p = num + sizeof num;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    while (u >= 100) {                     /* two digits per division */
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        *--p = pairs[d + 1];
        *--p = pairs[d];
    }
    if (u >= 10) {
        *--p = pairs[u * 2 + 1];
        *--p = pairs[u * 2];
    } else {
        *--p = (char)('0' + u);
    }
    if (v < 0)
        *--p = '-';
    jbuf_add(b, p, (size_t)(num + sizeof num - p));
}

/* Extra bytes a string byte takes when escaped: 1 for \" \\ \b \f \n \r \t,
 * 5 for the other control bytes (\u00XX), 0 for the rest. */
static const unsigned char esc_extra[256] = {
    [0] = 5, [1] = 5, [2] = 5, [3] = 5, [4] = 5, [5] = 5, [6] = 5, [7] = 5, [8] = 1, [9] = 1,
    [10] = 1, [11] = 5, [12] = 1, [13] = 1, [14] = 5, [15] = 5, [16] = 5, [17] = 5, [18] = 5,
    [19] = 5, [20] = 5, [21] = 5, [22] = 5, [23] = 5, [24] = 5, [25] = 5, [26] = 5, [27] = 5,
    [28] = 5, [29] = 5, [30] = 5, [31] = 5, [34] = 1, [92] = 1
};

/* A JSON string as cJSON's print_string_ptr writes it. */
static void add_string(struct jbuf *b, const char *s)
{
    if (!s) {
        jbuf_add(b, "\"\"", 2);
        return;
    }
    size_t extra = 0, n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
        extra += esc_extra[*p];
    if ((b->oom || b->len + n + extra + 3 > b->cap) && jbuf_reserve(b, n + extra + 2))
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    if (!extra) {
        memcpy(o, s, n);
        o += n;
    } else {
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
            if (*p >= 32 && *p != '"' && *p != '\\') {
                *o++ = (char)*p;
                continue;
            }
            *o++ = '\\';
            switch (*p) {
            case '"':  *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                snprintf(o, 6, "u%04x", *p);
                o += 5;
            }
        }
    }
    *o++ = '"';
    *o = 0;
    b->len = (size_t)(o - b->p);
}

/* As cJSON 1.7.15's print_number: "null" for NaN/inf; %1.15g unless that
 * does not read back exactly, then %1.17g.  Integers below 2^53 print the
 * same digits without the printf/scanf round trip. */
static void add_number(struct jbuf *b, double d)
{
    char num[32];
    int n;
    if (isnan(d) || isinf(d)) {
        jbuf_add(b, "null", 4);
        return;
    }
    if (d == floor(d) && fabs(d) < 9007199254740992.0 && !(d == 0 && signbit(d))) {
        long long v = (long long)d;
        unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
        /* %1.15g switches to exponent notation at 1e15 */
        if (u < 1000000000000000ull) {
            jbuf_add_int(b, v);
            return;
        }
    }
    n = snprintf(num, sizeof num, "%1.15g", d);
    double test = 0;
    /* cJSON's compare_double: equal within DBL_EPSILON of the larger; and,
     * unlike cJSON (whose inf - x > inf * eps is false), 17 digits when 15
     * read back as infinity: 1.7976931348623157e308 printed as
     * 1.79769313486232e+308 would parse as inf */
    if (sscanf(num, "%lg", &test) != 1 || isinf(test) ||
        fabs(test - d) > (fabs(test) > fabs(d) ? fabs(test) : fabs(d)) * DBL_EPSILON)
        n = snprintf(num, sizeof num, "%1.17g", d);
    if (n > 0)
        jbuf_add(b, num, (size_t)n);
}

static void add_value(struct jbuf *b, const cJSON *it, int depth)
{
    if (depth > JBUF_MAX_DEPTH) {
        b->oom = 1;   /* never print something other than the value */
        return;
    }
    switch (it->type & 0xFF) {
    case cJSON_NULL:   jbuf_add(b, "null", 4); break;
    case cJSON_False:  jbuf_add(b, "false", 5); break;
    case cJSON_True:   jbuf_add(b, "true", 4); break;
    case cJSON_Number: add_number(b, it->valuedouble); break;
    case cJSON_String: add_string(b, it->valuestring); break;
    case cJSON_Raw:
        if (it->valuestring)
            jbuf_add(b, it->valuestring, strlen(it->valuestring));
        else
            b->oom = 1;            /* cJSON fails to print a raw item without text */
        break;
    case cJSON_Array:
        jbuf_add(b, "[", 1);
        for (const cJSON *c = it->child; c; c = c->next) {
            add_value(b, c, depth + 1);
            if (c->next)
                jbuf_add(b, ",", 1);
        }
        jbuf_add(b, "]", 1);
        break;
    case cJSON_Object:
        jbuf_add(b, "{", 1);
        for (const cJSON *c = it->child; c; c = c->next) {
            add_string(b, c->string);
            jbuf_add(b, ":", 1);
            add_value(b, c, depth + 1);
            if (c->next)
                jbuf_add(b, ",", 1);
        }
        jbuf_add(b, "}", 1);
        break;
    default:
        b->oom = 1;                /* invalid item: cJSON prints nothing */
    }
}

void jbuf_json(struct jbuf *b, const cJSON *item)
{
    if (!item) {
        b->oom = 1;
        return;
    }
    add_value(b, item, 0);
}

char *jbuf_take(struct jbuf *b)
{
    char *r = NULL;
    if (!b->oom) {
        if (b->heap) {
            r = b->p;
            b->heap = 0;
        } else if (!json_alloc_fail_now()) {
            if ((r = malloc(b->len + 1)))
                memcpy(r, b->p, b->len + 1);
            else
                json_alloc_failed();
        }
    }
    jbuf_free(b);
    return r;
}

void jbuf_free(struct jbuf *b)
{
    if (b->heap)
        free(b->p);
    b->heap = 0;
    b->p = NULL;
    b->len = b->cap = 0;
}
