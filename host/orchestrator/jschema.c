/* jschema.c - JSON Schema subset validator (see jschema.h). */
#include "orchestrator/jschema.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/json_get.h"
#include "common/utf8_cut.h"
#include "common/status.h"

static const char *const known_types[] = {
    "object", "array", "string", "number", "integer", "boolean", "null",
};

static int type_known(const char *t)
{
    for (size_t i = 0; i < sizeof known_types / sizeof known_types[0]; i++)
        if (!strcmp(t, known_types[i]))
            return 1;
    return 0;
}


/* Location strings ("args.items[2].q"), truncated silently when long. */
static void path_join(char *dst, size_t n, const char *base, const char *key, int index)
{
    size_t k = 0;
    for (const char *p = base; *p && k + 1 < n; p++)
        dst[k++] = *p;
    char num[24];
    if (key) {
        if (k + 1 < n)
            dst[k++] = '.';
        for (const char *p = key; *p && k + 1 < n; p++)
            dst[k++] = *p;
    } else {
        int m = snprintf(num, sizeof num, "[%d]", index);
        for (int i = 0; i < m && k + 1 < n; i++)
            dst[k++] = num[i];
    }
    dst[k] = 0;
}

static int fail(char *err, size_t errlen, const char *fmt, const char *where, const char *what)
{
    snprintf(err, errlen, fmt, where, what);
    return PS_EINVAL;
}

static int check_rec(const cJSON *s, const char *where, int depth, char *err, size_t errlen)
{
    char sub[512];
    if (depth > JSCHEMA_MAX_DEPTH)
        return fail(err, errlen, "%s: schema nested too deeply%s", where, "");
    if (cJSON_IsBool(s))
        return PS_OK;
    if (!cJSON_IsObject(s))
        return fail(err, errlen, "%s: a schema must be an object%s", where, "");
    for (const cJSON *k = s->child; k; k = k->next) {
        const char *n = k->string;
        path_join(sub, sizeof sub, where, n, 0);
        if (!strcmp(n, "type")) {
            if (cJSON_IsString(k)) {
                if (!type_known(k->valuestring))
                    return fail(err, errlen, "%s: unknown type '%s'", sub, k->valuestring);
            } else if (cJSON_IsArray(k) && cJSON_GetArraySize(k) > 0) {
                for (const cJSON *t = k->child; t; t = t->next)
                    if (!cJSON_IsString(t) || !type_known(t->valuestring))
                        return fail(err, errlen, "%s: unknown type in list%s", sub, "");
            } else {
                return fail(err, errlen, "%s: must be a type name or a list of them%s", sub, "");
            }
        } else if (!strcmp(n, "properties")) {
            if (!cJSON_IsObject(k))
                return fail(err, errlen, "%s: must be an object%s", sub, "");
            for (const cJSON *p = k->child; p; p = p->next) {
                char psub[512];
                path_join(psub, sizeof psub, sub, p->string, 0);
                int st = check_rec(p, psub, depth + 1, err, errlen);
                if (st)
                    return st;
            }
        } else if (!strcmp(n, "required")) {
            if (!cJSON_IsArray(k))
                return fail(err, errlen, "%s: must be a list of property names%s", sub, "");
            for (const cJSON *p = k->child; p; p = p->next)
                if (!cJSON_IsString(p))
                    return fail(err, errlen, "%s: must be a list of property names%s", sub, "");
        } else if (!strcmp(n, "additionalProperties") || !strcmp(n, "items")) {
            int st = check_rec(k, sub, depth + 1, err, errlen);
            if (st)
                return st;
        } else if (!strcmp(n, "anyOf") || !strcmp(n, "oneOf")) {
            if (!cJSON_IsArray(k) || cJSON_GetArraySize(k) == 0)
                return fail(err, errlen, "%s: must be a non-empty list of schemas%s", sub, "");
            int i = 0;
            for (const cJSON *p = k->child; p; p = p->next, i++) {
                char psub[512];
                path_join(psub, sizeof psub, sub, NULL, i);
                int st = check_rec(p, psub, depth + 1, err, errlen);
                if (st)
                    return st;
            }
        } else if (!strcmp(n, "enum")) {
            if (!cJSON_IsArray(k) || cJSON_GetArraySize(k) == 0)
                return fail(err, errlen, "%s: must be a non-empty list%s", sub, "");
        } else if (!strcmp(n, "minimum") || !strcmp(n, "maximum") ||
                   !strcmp(n, "exclusiveMinimum") || !strcmp(n, "exclusiveMaximum")) {
            if (!cJSON_IsNumber(k))
                return fail(err, errlen, "%s: must be a number%s", sub, "");
        } else if (!strcmp(n, "minLength") || !strcmp(n, "maxLength") ||
                   !strcmp(n, "minItems") || !strcmp(n, "maxItems")) {
            if (!cJSON_IsNumber(k) || k->valuedouble < 0 || k->valuedouble != floor(k->valuedouble))
                return fail(err, errlen, "%s: must be a non-negative integer%s", sub, "");
        } else if (!strcmp(n, "const") || !strcmp(n, "description") || !strcmp(n, "title") ||
                   !strcmp(n, "default") || !strcmp(n, "examples") || !strcmp(n, "$schema")) {
            continue;
        } else {
            return fail(err, errlen, "%s: unsupported schema keyword '%s'", where, n);
        }
    }
    return PS_OK;
}

int jschema_check(const cJSON *schema, const char *where, char *err, size_t errlen)
{
    if (errlen)
        err[0] = 0;
    return check_rec(schema, where, 0, err, errlen);
}

static const char *type_of(const cJSON *v)
{
    if (cJSON_IsObject(v)) return "object";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    return "invalid";
}

static int type_matches(const char *t, const cJSON *v)
{
    if (!strcmp(t, "integer"))
        return cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
               v->valuedouble == floor(v->valuedouble);
    if (!strcmp(t, "number"))
        return cJSON_IsNumber(v);
    return !strcmp(t, type_of(v));
}

static int validate_rec(const cJSON *s, const cJSON *v, const char *where, int depth,
                        char *err, size_t errlen)
{
    char sub[512];
    if (depth > JSCHEMA_MAX_DEPTH)
        return fail(err, errlen, "%s: value nested too deeply%s", where, "");
    if (cJSON_IsBool(s)) {
        if (cJSON_IsFalse(s))
            return fail(err, errlen, "%s: not allowed here%s", where, "");
        return PS_OK;
    }
    if (!cJSON_IsObject(s))
        return PS_OK;

    const cJSON *type = json_get(s, "type");
    if (cJSON_IsString(type)) {
        if (!type_matches(type->valuestring, v)) {
            snprintf(err, errlen, "%s: expected %s, got %s", where, type->valuestring, type_of(v));
            return PS_EINVAL;
        }
    } else if (cJSON_IsArray(type)) {
        int ok = 0;
        for (const cJSON *t = type->child; t && !ok; t = t->next)
            ok = cJSON_IsString(t) && type_matches(t->valuestring, v);
        if (!ok)
            return fail(err, errlen, "%s: type %s not allowed", where, type_of(v));
    }

    const cJSON *en = json_get(s, "enum");
    if (cJSON_IsArray(en)) {
        int ok = 0;
        for (const cJSON *e = en->child; e && !ok; e = e->next)
            ok = cJSON_Compare(e, v, 1);
        if (!ok)
            return fail(err, errlen, "%s: not one of the allowed values%s", where, "");
    }
    const cJSON *cst = json_get(s, "const");
    if (cst && !cJSON_Compare(cst, v, 1))
        return fail(err, errlen, "%s: must equal the schema's const%s", where, "");

    if (cJSON_IsNumber(v)) {
        double x = v->valuedouble;
        const cJSON *b;
        if ((b = json_get(s, "minimum")) && cJSON_IsNumber(b) && x < b->valuedouble) {
            snprintf(err, errlen, "%s: %g is below the minimum %g", where, x, b->valuedouble);
            return PS_EINVAL;
        }
        if ((b = json_get(s, "maximum")) && cJSON_IsNumber(b) && x > b->valuedouble) {
            snprintf(err, errlen, "%s: %g is above the maximum %g", where, x, b->valuedouble);
            return PS_EINVAL;
        }
        if ((b = json_get(s, "exclusiveMinimum")) && cJSON_IsNumber(b) && x <= b->valuedouble) {
            snprintf(err, errlen, "%s: %g must be above %g", where, x, b->valuedouble);
            return PS_EINVAL;
        }
        if ((b = json_get(s, "exclusiveMaximum")) && cJSON_IsNumber(b) && x >= b->valuedouble) {
            snprintf(err, errlen, "%s: %g must be below %g", where, x, b->valuedouble);
            return PS_EINVAL;
        }
    }
    if (cJSON_IsString(v)) {
        size_t n = utf8_chars(v->valuestring);
        const cJSON *b;
        if ((b = json_get(s, "minLength")) && cJSON_IsNumber(b) && (double)n < b->valuedouble)
            return fail(err, errlen, "%s: string shorter than minLength%s", where, "");
        if ((b = json_get(s, "maxLength")) && cJSON_IsNumber(b) && (double)n > b->valuedouble)
            return fail(err, errlen, "%s: string longer than maxLength%s", where, "");
    }
    if (cJSON_IsArray(v)) {
        int n = cJSON_GetArraySize(v);
        const cJSON *b;
        if ((b = json_get(s, "minItems")) && cJSON_IsNumber(b) && n < b->valuedouble)
            return fail(err, errlen, "%s: fewer items than minItems%s", where, "");
        if ((b = json_get(s, "maxItems")) && cJSON_IsNumber(b) && n > b->valuedouble)
            return fail(err, errlen, "%s: more items than maxItems%s", where, "");
        const cJSON *items = json_get(s, "items");
        if (items) {
            int i = 0;
            for (const cJSON *e = v->child; e; e = e->next, i++) {
                path_join(sub, sizeof sub, where, NULL, i);
                int st = validate_rec(items, e, sub, depth + 1, err, errlen);
                if (st)
                    return st;
            }
        }
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = json_get(s, "properties");
        const cJSON *req = json_get(s, "required");
        const cJSON *addl = json_get(s, "additionalProperties");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            if (cJSON_IsString(r) && !json_get(v, r->valuestring))
                return fail(err, errlen, "%s: missing required property '%s'", where, r->valuestring);
        for (const cJSON *m = v->child; m; m = m->next) {
            path_join(sub, sizeof sub, where, m->string ? m->string : "?", 0);
            const cJSON *ps = props ? json_get(props, m->string) : NULL;
            if (ps) {
                int st = validate_rec(ps, m, sub, depth + 1, err, errlen);
                if (st)
                    return st;
            } else if (addl) {
                if (cJSON_IsFalse(addl))
                    return fail(err, errlen, "%s: unexpected property '%s'", where, m->string);
                int st = validate_rec(addl, m, sub, depth + 1, err, errlen);
                if (st)
                    return st;
            }
        }
    }
    const cJSON *any = json_get(s, "anyOf");
    if (cJSON_IsArray(any)) {
        int ok = 0;
        for (const cJSON *a = any->child; a && !ok; a = a->next)
            ok = validate_rec(a, v, where, depth + 1, err, errlen) == PS_OK;
        if (!ok)
            return fail(err, errlen, "%s: matches none of anyOf%s", where, "");
    }
    const cJSON *one = json_get(s, "oneOf");
    if (cJSON_IsArray(one)) {
        int n = 0;
        for (const cJSON *a = one->child; a; a = a->next)
            n += validate_rec(a, v, where, depth + 1, err, errlen) == PS_OK;
        if (n != 1)
            return fail(err, errlen, "%s: must match exactly one of oneOf%s", where, "");
    }
    if (errlen)
        err[0] = 0;
    return PS_OK;
}

int jschema_validate(const cJSON *schema, const cJSON *value, const char *where,
                     char *err, size_t errlen)
{
    if (errlen)
        err[0] = 0;
    if (!schema)
        return PS_OK;
    return validate_rec(schema, value, where, 0, err, errlen);
}

/* JSON types as bits; an integral number has both NUMBER and INTEGER, so
 * `mask & value_types(v)` says whether a mask admits v's type. */
enum {
    JT_OBJECT = 1, JT_ARRAY = 2, JT_STRING = 4, JT_NUMBER = 8, JT_INTEGER = 16,
    JT_BOOLEAN = 32, JT_NULL = 64, JT_ALL = 127,
};

static unsigned value_types(const cJSON *v)
{
    if (cJSON_IsNumber(v))
        return isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble)
                   ? JT_NUMBER | JT_INTEGER : JT_NUMBER;
    if (cJSON_IsObject(v)) return JT_OBJECT;
    if (cJSON_IsArray(v)) return JT_ARRAY;
    if (cJSON_IsString(v)) return JT_STRING;
    if (cJSON_IsBool(v)) return JT_BOOLEAN;
    if (cJSON_IsNull(v)) return JT_NULL;
    return 0;
}

static unsigned type_name_bit(const char *t)
{
    static const unsigned bits[] = { JT_OBJECT, JT_ARRAY, JT_STRING, JT_NUMBER, JT_INTEGER, JT_BOOLEAN, JT_NULL };
    for (size_t i = 0; i < sizeof known_types / sizeof known_types[0]; i++)
        if (!strcmp(t, known_types[i]))
            return bits[i];
    return 0;
}

/* The JT_* types schema s admits at path[0..n-1] (see jschema_wants_text). */
static unsigned types_at(const cJSON *s, const char *const *path, int n, int depth)
{
    if (cJSON_IsFalse(s))
        return 0;
    if (!cJSON_IsObject(s) || depth > JSCHEMA_MAX_DEPTH)
        return JT_ALL;
    unsigned m = JT_ALL;
    if (n == 0) {
        const cJSON *type = json_get(s, "type");
        if (cJSON_IsString(type)) {
            m = type_name_bit(type->valuestring);
        } else if (cJSON_IsArray(type)) {
            m = 0;
            for (const cJSON *t = type->child; t; t = t->next)
                m |= cJSON_IsString(t) ? type_name_bit(t->valuestring) : 0;
        }
        const cJSON *en = json_get(s, "enum");
        if (cJSON_IsArray(en)) {
            unsigned e = 0;
            for (const cJSON *v = en->child; v; v = v->next)
                e |= value_types(v);
            m &= e;
        }
        const cJSON *cst = json_get(s, "const");
        if (cst)
            m &= value_types(cst);
    } else {
        const cJSON *sub;
        if (path[0]) {
            const cJSON *props = json_get(s, "properties");
            sub = props ? json_get(props, path[0]) : NULL;
            if (!sub)
                sub = json_get(s, "additionalProperties");
        } else {
            sub = json_get(s, "items");
        }
        if (sub)
            m = types_at(sub, path + 1, n - 1, depth + 1);
    }
    static const char *const alts[] = { "anyOf", "oneOf" };
    for (size_t i = 0; i < 2; i++) {
        const cJSON *a = json_get(s, alts[i]);
        if (!cJSON_IsArray(a))
            continue;
        unsigned u = 0;
        for (const cJSON *b = a->child; b; b = b->next)
            u |= types_at(b, path, n, depth + 1);
        m &= u;
    }
    return m;
}

int jschema_wants_text(const cJSON *schema, const char *const *path, int n, const cJSON *value)
{
    if (!schema || cJSON_IsString(value) || n < 0 || n > JSCHEMA_MAX_DEPTH)
        return 0;
    unsigned m = types_at(schema, path, n, 0);
    return (m & JT_STRING) && !(m & value_types(value));
}
