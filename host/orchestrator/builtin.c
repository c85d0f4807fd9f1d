/* builtin.c - safe builtin tools (see builtin.h). */
#include "orchestrator/builtin.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/json_get.h"
#include "common/status.h"

#define CALC_MAX_DEPTH 64
#define CALC_MAX_LEN   4096

struct calc {
    const char *s;
    size_t      pos;
    int         depth;
    char       *err;
    size_t      errlen;
    int         failed;
};

static double calc_fail(struct calc *c, const char *msg)
{
    if (!c->failed)
        snprintf(c->err, c->errlen, "calculator: %s at position %zu", msg, c->pos);
    c->failed = 1;
    return NAN;
}

/* Every value the parser builds passes here: an undefined one (NaN:
 * sqrt(-1), log(-1), inf - inf, 0 * inf) fails at once, since min, max and
 * pow would otherwise turn it into a number (fmax(NaN, 1) = 1, pow(NaN, 0)
 * = 1). */
static double calc_val(struct calc *c, double v)
{
    return isnan(v) && !c->failed ? calc_fail(c, "undefined result (domain error)") : v;
}

static void calc_ws(struct calc *c)
{
    while (c->s[c->pos] == ' ' || c->s[c->pos] == '\t' || c->s[c->pos] == '\n')
        c->pos++;
}

static double calc_expr(struct calc *c);

static double calc_unary(struct calc *c);

static double calc_primary(struct calc *c)
{
    calc_ws(c);
    char ch = c->s[c->pos];
    if (ch == '(') {
        c->pos++;
        double v = calc_expr(c);
        calc_ws(c);
        if (c->s[c->pos] != ')')
            return calc_fail(c, "expected ')'");
        c->pos++;
        return v;
    }
    if (isdigit((unsigned char)ch) || ch == '.') {
        char *end;
        double v = strtod(c->s + c->pos, &end);
        if (end == c->s + c->pos)
            return calc_fail(c, "bad number");
        if (isinf(v))   /* 1e400: past the double range (atan or pow(x, 0) would hide it) */
            return calc_fail(c, "number out of range");
        c->pos = (size_t)(end - c->s);
        return v;
    }
    if (isalpha((unsigned char)ch)) {
        char name[16];
        size_t n = 0;
        while (isalnum((unsigned char)c->s[c->pos]) && n < sizeof name - 1)
            name[n++] = c->s[c->pos++];
        name[n] = 0;
        if (isalnum((unsigned char)c->s[c->pos]))
            return calc_fail(c, "name too long");
        if (!strcmp(name, "pi")) return M_PI;
        if (!strcmp(name, "e")) return M_E;
        calc_ws(c);
        if (c->s[c->pos] != '(')
            return calc_fail(c, "unknown name");
        c->pos++;
        double a[2];
        int na = 0;
        calc_ws(c);
        if (c->s[c->pos] != ')') {
            for (;;) {
                if (na == 2)
                    return calc_fail(c, "too many arguments");
                a[na++] = calc_expr(c);
                if (c->failed)
                    return NAN;
                calc_ws(c);
                if (c->s[c->pos] == ',') { c->pos++; continue; }
                break;
            }
        }
        if (c->s[c->pos] != ')')
            return calc_fail(c, "expected ')' after arguments");
        c->pos++;
        static const struct { const char *n; double (*f)(double); } f1[] = {
            {"sqrt", sqrt}, {"abs", fabs}, {"sin", sin}, {"cos", cos}, {"tan", tan},
            {"asin", asin}, {"acos", acos}, {"atan", atan}, {"exp", exp}, {"ln", log},
            {"log", log}, {"log10", log10}, {"log2", log2}, {"floor", floor},
            {"ceil", ceil}, {"round", round},
        };
        for (size_t i = 0; i < sizeof f1 / sizeof f1[0]; i++)
            if (!strcmp(name, f1[i].n)) {
                if (na != 1)
                    return calc_fail(c, "function takes one argument");
                return calc_val(c, f1[i].f(a[0]));
            }
        if (!strcmp(name, "min") || !strcmp(name, "max") || !strcmp(name, "pow")) {
            if (na != 2)
                return calc_fail(c, "function takes two arguments");
            if (name[1] == 'i') return calc_val(c, fmin(a[0], a[1]));
            if (name[1] == 'a') return calc_val(c, fmax(a[0], a[1]));
            return calc_val(c, pow(a[0], a[1]));
        }
        return calc_fail(c, "unknown function");
    }
    if (!ch)
        return calc_fail(c, "unexpected end of expression");
    return calc_fail(c, "unexpected character");
}

/* power := primary ('^' | '**') unary   (right associative) */
static double calc_power(struct calc *c)
{
    double b = calc_primary(c);
    calc_ws(c);
    if (c->s[c->pos] == '^' || (c->s[c->pos] == '*' && c->s[c->pos + 1] == '*')) {
        c->pos += c->s[c->pos] == '^' ? 1 : 2;
        double e = calc_unary(c);
        return calc_val(c, pow(b, e));
    }
    return b;
}

static double calc_unary(struct calc *c)
{
    if (++c->depth > CALC_MAX_DEPTH)
        return calc_fail(c, "expression nested too deeply");
    calc_ws(c);
    double v;
    if (c->s[c->pos] == '-') { c->pos++; v = -calc_unary(c); }
    else if (c->s[c->pos] == '+') { c->pos++; v = calc_unary(c); }
    else v = calc_power(c);
    c->depth--;
    return v;
}

static double calc_term(struct calc *c)
{
    double v = calc_unary(c);
    for (;;) {
        calc_ws(c);
        char op = c->s[c->pos];
        if (op == '*' && c->s[c->pos + 1] == '*')
            return v;
        if (op != '*' && op != '/' && op != '%')
            return v;
        c->pos++;
        double r = calc_unary(c);
        if (c->failed)
            return NAN;
        if ((op == '/' || op == '%') && r == 0)
            return calc_fail(c, "division by zero");
        v = calc_val(c, op == '*' ? v * r : op == '/' ? v / r : fmod(v, r));
    }
}

static double calc_expr(struct calc *c)
{
    if (++c->depth > CALC_MAX_DEPTH)
        return calc_fail(c, "expression nested too deeply");
    double v = calc_term(c);
    for (;;) {
        calc_ws(c);
        char op = c->s[c->pos];
        if (op != '+' && op != '-')
            break;
        c->pos++;
        double r = calc_term(c);
        v = calc_val(c, op == '+' ? v + r : v - r);
    }
    c->depth--;
    return v;
}

int builtin_calc(const char *expr, double *out, char *err, size_t errlen)
{
    if (strlen(expr) > CALC_MAX_LEN) {
        snprintf(err, errlen, "calculator: expression longer than %d characters", CALC_MAX_LEN);
        return PS_EINVAL;
    }
    struct calc c = { .s = expr, .err = err, .errlen = errlen };
    double v = calc_expr(&c);
    calc_ws(&c);
    if (!c.failed && c.s[c.pos])
        calc_fail(&c, "unexpected character");
    if (c.failed)
        return PS_EINVAL;
    if (!isfinite(v)) {
        snprintf(err, errlen, "calculator: result is not a finite number");
        return PS_EINVAL;
    }
    *out = v;
    return PS_OK;
}

static const char *const builtin_names[] = { "calculator", "time", "text_stats", "echo" };

int builtin_exists(const char *tool)
{
    for (size_t i = 0; i < sizeof builtin_names / sizeof builtin_names[0]; i++)
        if (!strcmp(tool, builtin_names[i]))
            return 1;
    return 0;
}

int builtin_deterministic(const char *tool)
{
    return !strcmp(tool, "calculator") || !strcmp(tool, "text_stats") || !strcmp(tool, "echo");
}

cJSON *builtin_schema(const char *tool)
{
    const char *s = NULL;
    if (!strcmp(tool, "calculator"))
        s = "{\"type\":\"object\",\"properties\":{\"expression\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":4096,"
            "\"description\":\"arithmetic, e.g. (2+3)*sqrt(16)\"}},\"required\":[\"expression\"],\"additionalProperties\":false}";
    else if (!strcmp(tool, "time"))
        s = "{\"type\":\"object\",\"properties\":{\"utc_offset_minutes\":{\"type\":\"integer\",\"minimum\":-1440,\"maximum\":1440}},"
            "\"additionalProperties\":false}";
    else if (!strcmp(tool, "text_stats"))
        s = "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},\"required\":[\"text\"],\"additionalProperties\":false}";
    else if (!strcmp(tool, "echo"))
        s = "{\"type\":\"object\"}";
    return s ? cJSON_Parse(s) : NULL;
}

static cJSON *text_stats(const char *t)
{
    double chars = 0, bytes = 0, words = 0, lines = 0, sentences = 0;
    int in_word = 0;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++) {
        bytes++;
        if ((*p & 0xC0) != 0x80)
            chars++;
        int space = *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r';
        if (!space && !in_word)
            words++;
        in_word = !space;
        if (*p == '\n')
            lines++;
        if ((*p == '.' || *p == '!' || *p == '?') && (p[1] == 0 || p[1] == ' ' || p[1] == '\n'))
            sentences++;
    }
    if (bytes && t[(size_t)bytes - 1] != '\n')
        lines++;
    cJSON *r = cJSON_CreateObject();
    if (!r || !cJSON_AddNumberToObject(r, "chars", chars) || !cJSON_AddNumberToObject(r, "bytes", bytes) ||
        !cJSON_AddNumberToObject(r, "words", words) || !cJSON_AddNumberToObject(r, "lines", lines) ||
        !cJSON_AddNumberToObject(r, "sentences", sentences)) {
        cJSON_Delete(r);
        return NULL; /* out of memory */
    }
    return r;
}

static int builtin_call_tool(const char *tool, const cJSON *args, cJSON **result, char *err, size_t errlen)
{
    *result = NULL;
    if (!strcmp(tool, "calculator")) {
        const cJSON *e = json_get(args, "expression");
        if (!cJSON_IsString(e)) {
            snprintf(err, errlen, "calculator: 'expression' must be a string");
            return PS_EINVAL;
        }
        double v;
        int st = builtin_calc(e->valuestring, &v, err, errlen);
        if (st)
            return st;
        *result = cJSON_CreateObject();
        if (!*result || !cJSON_AddNumberToObject(*result, "value", v)) {
            cJSON_Delete(*result);
            *result = NULL;
            return PS_ENOMEM;
        }
        return PS_OK;
    }
    if (!strcmp(tool, "time")) {
        const cJSON *o = json_get(args, "utc_offset_minutes");
        const double offd = cJSON_IsNumber(o) ? o->valuedouble : 0;
        if (!(offd >= -1440 && offd <= 1440)) { /* before the cast: (long)1e300 is undefined */
            snprintf(err, errlen, "time: utc_offset_minutes out of range");
            return PS_EINVAL;
        }
        const int off = (int)offd;
        time_t now = time(NULL);
        time_t local = now + off * 60;
        struct tm tm;
        gmtime_r(&local, &tm);
        char iso[64], tz[16];
        if (off == 0)
            snprintf(tz, sizeof tz, "Z");
        else
            snprintf(tz, sizeof tz, "%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 60, abs(off) % 60);
        size_t n = strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(iso + n, sizeof iso - n, "%s", tz);
        *result = cJSON_CreateObject();
        if (!*result || !cJSON_AddNumberToObject(*result, "unix", (double)now) ||
            !cJSON_AddStringToObject(*result, "iso8601", iso)) {
            cJSON_Delete(*result);
            *result = NULL;
            return PS_ENOMEM;
        }
        return PS_OK;
    }
    if (!strcmp(tool, "text_stats")) {
        const cJSON *t = json_get(args, "text");
        if (!cJSON_IsString(t)) {
            snprintf(err, errlen, "text_stats: 'text' must be a string");
            return PS_EINVAL;
        }
        *result = text_stats(t->valuestring);
        return *result ? PS_OK : PS_ENOMEM;
    }
    if (!strcmp(tool, "echo")) {
        *result = cJSON_Duplicate(args, 1);
        return *result ? PS_OK : PS_ENOMEM;
    }
    snprintf(err, errlen, "unknown builtin tool '%s'", tool);
    return PS_ENOTFOUND;
}

int builtin_call(const char *tool, const cJSON *args, cJSON **result, char *err, size_t errlen)
{
    if (errlen)
        err[0] = 0;
    int st = builtin_call_tool(tool, args, result, err, errlen);
    if (st == PS_ENOMEM && errlen && !err[0])
        snprintf(err, errlen, "%s: out of memory", tool);
    return st;
}
