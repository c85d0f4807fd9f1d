/* test_orch_tools.c - the builtin tools (builtin.c) on hostile input: the
 * calculator's answers must be right or an error, never a number made up
 * from an undefined intermediate. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/builtin.h"
#include "orchestrator/executor.h"
#include "orchestrator/registry.h"
#include "test_util.h"

/* An undefined intermediate (sqrt(-1), log(-1), inf - inf, 0 * inf, ...) is
 * an error wherever it appears: min, max and pow used to swallow the NaN,
 * so "max(sqrt(-1), 1)" answered 1 and "sqrt(-1)^0" answered 1. */
static void test_calc_undefined_intermediates(void)
{
    static const char *const bad[] = {
        "max(sqrt(-1), 1)", "min(log(-1), 2)", "pow(sqrt(-1), 0)", "sqrt(-1)^0", "1^log(-1)",
        "1 ** acos(2)", "max(1e308*10 - 1e308*10, 3)", "min(0 * (1e308*10), 5)", "pow(asin(3), 0) + 1",
        "sqrt(-4)", "(-8)^(1/3)",
    };
    char err[256];
    double x;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        x = 12345;
        int st = builtin_calc(bad[i], &x, err, sizeof err);
        CHECK_MSG(st == PS_EINVAL, "'%s' gave %g", bad[i], x);
    }
    /* defined ones still work */
    static const struct { const char *e; double v; } good[] = {
        { "max(2, 7) / 2", 3.5 }, { "pow(2, 10)", 1024 }, { "2^3^2", 512 }, { "-2^2", -4 },
        { "min(-1, sqrt(4))", -1 }, { "(-8)^3", -512 }, { "5 % 3", 2 }, { "1/(1e308*10)", 0 },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int st = builtin_calc(good[i].e, &x, err, sizeof err);
        CHECK_MSG(st == PS_OK && x == good[i].v, "'%s': %d %g (%s)", good[i].e, st, x, st ? err : "");
    }
}

/* A result's text (what "{{c1}}" inside a longer string and the final
 * answer show): integral values print as integers, others as %.17g.  A
 * value out of long long's range was cast to long long before its size was
 * checked, which is undefined behaviour (UBSan float-cast-overflow). */
static void test_result_text_of_large_numbers(void)
{
    static const struct { double v; const char *want; } cases[] = {
        { 42, "42" }, { -7, "-7" }, { 0.5, "0.5" }, { 1e20, "1e+20" }, { -1e300, "-1.0000000000000001e+300" },
        { 9.2233720368547758e18, "9.2233720368547758e+18" }, { 1e15, "1000000000000000" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *n = cJSON_CreateNumber(cases[i].v);
        char *t = exec_result_text(n);
        CHECK_MSG(t && !strcmp(t, cases[i].want), "%.17g: '%s' (want '%s')", cases[i].v, t ? t : "(null)",
                  cases[i].want);
        free(t);
        cJSON_Delete(n);
    }
}

/* A literal past the double range is an error, not infinity that a
 * function then hides (atan(1e400) answered 1.5708, pow(1e400, 0) 1). */
static void test_calc_literal_out_of_range(void)
{
    static const char *const bad[] = { "atan(1e400)", "pow(1e400, 0)", "1e400 - 1e400", "min(1e999, 2)" };
    char err[256];
    double x;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int st = builtin_calc(bad[i], &x, err, sizeof err);
        CHECK_MSG(st == PS_EINVAL && strstr(err, "out of range"), "%s: status %d, %g, '%s'", bad[i], st, x, err);
    }
    CHECK(builtin_calc("1e308 / 1e300", &x, err, sizeof err) == PS_OK && x == 1e8);
    CHECK(builtin_calc("1e-400 + 2", &x, err, sizeof err) == PS_OK && x == 2);
}

/* registry_catalogue when an allocation fails part-way: NULL, never a
 * catalogue with members missing, and nothing leaked (ASan). */
static long fail_at, n_allocs;
static void *failing_malloc(size_t n)
{
    return n_allocs++ == fail_at ? NULL : malloc(n);
}

static void test_catalogue_out_of_memory(void)
{
    struct registry *reg = NULL;
    CHECK(registry_load_json("{\"agents\":[{\"name\":\"calculator\",\"kind\":\"builtin\"},"
                             "{\"name\":\"w\",\"kind\":\"http-json\",\"url\":\"http://127.0.0.1:9/\","
                             "\"description\":\"d\",\"input_schema\":{\"type\":\"object\",\"properties\":"
                             "{\"q\":{\"type\":\"string\"}}}}]}", "test", &reg) == PS_OK);
    if (!reg)
        return;
    int nulls = 0, whole = 0;
    for (fail_at = 0; fail_at < 200; fail_at++) {
        n_allocs = 0;
        cJSON_Hooks hooks = { failing_malloc, free };
        cJSON_InitHooks(&hooks);
        cJSON *cat = registry_catalogue(reg);
        cJSON_InitHooks(NULL);
        if (!cat) {
            nulls++;
            continue;
        }
        int complete = cJSON_GetArraySize(cat) == 2;
        const cJSON *o;
        cJSON_ArrayForEach(o, cat)
            complete &= cJSON_GetArraySize(o) == 4 && cJSON_IsObject(cJSON_GetObjectItem(o, "input_schema"));
        CHECK_MSG(complete, "allocation %ld failed: a partial catalogue came back", fail_at);
        whole++;
        cJSON_Delete(cat);
        if (n_allocs <= fail_at)
            break;   /* no allocation failed: every failure point was tried */
    }
    CHECK_MSG(nulls > 10 && whole == 1, "%d failures answered NULL, %d complete", nulls, whole);
    registry_free(reg);
}

/* The time tool's utc_offset_minutes arrives as a JSON double: an offset
 * far outside a long (1e300) is refused before any conversion to an
 * integer (the cast was undefined: float-cast-overflow), as are NaN-free
 * out-of-range values; fractional offsets in range truncate. */
static void test_time_offset_out_of_range(void)
{
    static const char *const bad[] = {
        "{\"utc_offset_minutes\": 1e300}", "{\"utc_offset_minutes\": -1e300}",
        "{\"utc_offset_minutes\": 1441}", "{\"utc_offset_minutes\": -1440.5}",
        "{\"utc_offset_minutes\": 9.3e18}",
    };
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *args = cJSON_Parse(bad[i]), *res = NULL;
        CHECK(args != NULL);
        err[0] = 0;
        int st = builtin_call("time", args, &res, err, sizeof err);
        CHECK(st == PS_EINVAL);
        CHECK(res == NULL);
        CHECK(strstr(err, "out of range") != NULL);
        cJSON_Delete(args);
        cJSON_Delete(res);
    }
    static const char *const good[] = { "{\"utc_offset_minutes\": 1440}", "{\"utc_offset_minutes\": -90.5}",
                                        "{}" };
    static const char *const tz[] = { "+24:00", "-01:30", "Z" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        cJSON *args = cJSON_Parse(good[i]), *res = NULL;
        CHECK(args != NULL);
        int st = builtin_call("time", args, &res, err, sizeof err);
        CHECK(st == PS_OK);
        char *text = res ? cJSON_PrintUnformatted(res) : NULL;
        CHECK(text && strstr(text, tz[i]));
        free(text);
        cJSON_Delete(args);
        cJSON_Delete(res);
    }
}

int main(void)
{
    test_calc_undefined_intermediates();
    test_result_text_of_large_numbers();
    test_calc_literal_out_of_range();
    test_catalogue_out_of_memory();
    test_time_offset_out_of_range();
    TEST_DONE();
}
