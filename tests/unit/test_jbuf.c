/* test_jbuf.c - jbuf_json prints exactly what cJSON_PrintUnformatted
 * prints (strings with every escape and every byte value, integers and fractions, the switch to
 * exponents, -0, NaN, nesting deeper than a parse gives, raw items; past
 * JBUF_MAX_DEPTH a refusal, never other text), the buffer moves from the stack
 * to the heap when it grows, jbuf_add_int prints any long long, and
 * jbuf_take hands over an owned copy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchestrator/jbuf.h"
#include "test_util.h"

static void same_as_cjson(const cJSON *j, size_t stack_cap)
{
    char stack[8192];
    struct jbuf b;
    jbuf_init(&b, stack, stack_cap);
    jbuf_json(&b, j);
    char *ref = cJSON_PrintUnformatted(j);
    CHECK(!b.oom && ref);
    if (ref && !b.oom)
        CHECK_MSG(!strcmp(ref, b.p), "\n cJSON %s\n jbuf  %s", ref, b.p);
    CHECK(b.len == strlen(b.p));
    free(ref);
    jbuf_free(&b);
}

/* [[[...1...]]] nested `depth` arrays deep, built without cJSON's parse limit */
static cJSON *nested(int depth)
{
    cJSON *inner = cJSON_CreateNumber(1);
    for (int i = 0; i < depth && inner; i++) {
        cJSON *a = cJSON_CreateArray();
        if (!a || !cJSON_AddItemToArray(a, inner)) {
            cJSON_Delete(a);
            cJSON_Delete(inner);
            return NULL;
        }
        inner = a;
    }
    return inner;
}

static void doc(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    CHECK_MSG(j != NULL, "%s", text);
    if (!j)
        return;
    same_as_cjson(j, 8192);
    same_as_cjson(j, 1);          /* grows from a one-byte buffer */
    cJSON_Delete(j);
}

int main(void)
{
    doc("{}");
    doc("[]");
    doc("{\"a\":[1,2,{\"b\":null,\"c\":true,\"d\":false}],\"e\":\"x\"}");
    doc("{\"s\":\"quote\\\" back\\\\ slash\\/ \\b\\f\\n\\r\\t \\u0001\\u001f \\u007f \\u00e9 \\ud83d\\ude00\"}");
    doc("{\"k\\n\\\"ey\":1}");
    doc("[0,-0,1,-1,42,123456789012345,999999999999999,1000000000000000,-1000000000000000,"
        "9007199254740992,9007199254740993,1e300,-1e-300,0.1,0.2,0.30000000000000004,3.14159,"
        "1.5e-7,2.5,-2.5,1e15,1e16,123456789.123456789,4294967296,-2147483649]");
    doc("[[[[[[[[[[[[[[[[[[[[\"deep\"]]]]]]]]]]]]]]]]]]]]");

    /* near DBL_MAX 15 digits read back as infinity: jbuf prints 17 (cJSON
     * keeps the 15), and the text parses back to the number */
    static const double huge[] = { 1.7976931348623157e308, -1.7976931348623157e308, 1.797693134862315e308 };
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        cJSON *num = cJSON_CreateNumber(huge[i]);
        char stack[64];
        struct jbuf b;
        jbuf_init(&b, stack, sizeof stack);
        jbuf_json(&b, num);
        double back = strtod(b.p, NULL);
        CHECK_MSG(!b.oom && back == huge[i] && !isinf(back), "%.17g printed as %s", huge[i], b.p);
        jbuf_free(&b);
        cJSON_Delete(num);
    }

    /* every byte value (the escape table), alone and together, into
     * buffers from 1 byte up: the text grows past the stack at each length */
    char all[256];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = 0;
    for (size_t cap = 1; cap <= 16; cap++) {
        cJSON *str = cJSON_CreateString(all);
        same_as_cjson(str, cap);
        cJSON_Delete(str);
    }
    for (int i = 1; i < 256; i++) {
        char one[4] = { (char)i, 'x', (char)i, 0 };
        cJSON *str = cJSON_CreateString(one);
        same_as_cjson(str, 1 + (size_t)i % 9);
        cJSON_Delete(str);
    }

    /* numbers cJSON holds but no JSON text can (NaN, inf) print as null */
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNumber(NAN));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(INFINITY));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(-0.0));
    cJSON_AddItemToArray(a, cJSON_CreateRaw("{\"raw\":1}"));
    cJSON_AddItemToArray(a, cJSON_CreateString(""));
    same_as_cjson(a, 8192);

    /* random doubles and integers against cJSON */
    uint64_t rng = 12345;
    cJSON *r = cJSON_CreateArray();
    for (int i = 0; i < 2000; i++) {
        uint64_t x = ((uint64_t)test_rng_u32(&rng) << 32) | test_rng_u32(&rng);
        double d;
        switch (i % 4) {
        case 0: d = (double)(int64_t)(x >> (x % 60)); break;                 /* integers of all sizes */
        case 1: d = (double)(x % 1000000) / 1000.0; break;                   /* decimals */
        case 2: memcpy(&d, &x, sizeof d); if (isnan(d) || isinf(d)) d = 1; break;  /* any bits */
        default: d = -(double)(x % 100000) * 1e-9; break;
        }
        cJSON_AddItemToArray(r, cJSON_CreateNumber(d));
    }
    same_as_cjson(r, 8192);
    cJSON_Delete(r);

    /* a raw item without text cannot be printed (cJSON fails it too) */
    cJSON *bad = cJSON_CreateRaw("x");
    free(bad->valuestring);
    bad->valuestring = NULL;
    char st[64];
    struct jbuf b;
    jbuf_init(&b, st, sizeof st);
    jbuf_json(&b, bad);
    CHECK(b.oom);
    CHECK(jbuf_take(&b) == NULL);
    cJSON_Delete(bad);

    /* integers by hand */
    jbuf_init(&b, st, sizeof st);
    jbuf_add_int(&b, 0);
    jbuf_add(&b, " ", 1);
    jbuf_add_int(&b, -42);
    jbuf_add(&b, " ", 1);
    jbuf_add_int(&b, 9223372036854775807LL);
    jbuf_add(&b, " ", 1);
    jbuf_add_int(&b, -9223372036854775807LL - 1);
    CHECK_MSG(!strcmp(b.p, "0 -42 9223372036854775807 -9223372036854775808"), "%s", b.p);
    jbuf_free(&b);
    /* every length, both signs, the digit pairs: as printf prints them */
    int int_bad = 0;
    long long base = 1;
    for (int digits = 1; digits <= 19; digits++, base = digits <= 19 ? base * 10 : base)
        for (long long d = -101; d <= 101; d++)
            for (int sign = -1; sign <= 1; sign += 2) {
                long long v = sign * (base + d * (base / 100 + 1));
                char want[32];
                snprintf(want, sizeof want, "%lld", v);
                jbuf_init(&b, st, sizeof st);
                jbuf_add_int(&b, v);
                int_bad += strcmp(b.p, want) != 0;
                jbuf_free(&b);
            }
    CHECK_MSG(int_bad == 0, "%d integers printed unlike printf", int_bad);

    /* take: stack text copied out; heap text handed over */
    jbuf_init(&b, st, sizeof st);
    jbuf_add(&b, "abc", 3);
    CHECK(!b.heap);
    char *t = jbuf_take(&b);
    CHECK(t && !strcmp(t, "abc"));
    free(t);
    jbuf_init(&b, st, sizeof st);
    for (int i = 0; i < 100; i++)
        jbuf_add(&b, "0123456789", 10);
    CHECK(b.heap && b.len == 1000 && strlen(b.p) == 1000);
    jbuf_json(&b, a);
    t = jbuf_take(&b);
    CHECK(t && strlen(t) > 1000);
    free(t);
    cJSON_Delete(a);

    /* deeper than a parse gives, as a {{ref}} can nest a result: printed as
     * cJSON prints it; past JBUF_MAX_DEPTH refused (oom), never altered */
    cJSON *deep = nested(CJSON_NESTING_LIMIT + 6);
    CHECK(deep != NULL);
    if (deep)
        same_as_cjson(deep, 8192);
    cJSON_Delete(deep);
    deep = nested(JBUF_MAX_DEPTH + 2);
    CHECK(deep != NULL);
    if (deep) {
        jbuf_init(&b, st, sizeof st);
        jbuf_json(&b, deep);
        CHECK(b.oom);
        jbuf_free(&b);
    }
    cJSON_Delete(deep);
    TEST_DONE();
}
