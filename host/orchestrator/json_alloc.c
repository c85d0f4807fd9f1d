/* json_alloc.c - cJSON's allocator (see json_alloc.h). */
#include "orchestrator/json_alloc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/unicode.h"

static _Thread_local long fail_countdown;  /* > 0: the allocation that brings it to 0 fails */
static _Thread_local long allocs;
static _Thread_local int  failed;          /* an allocation failed since the last json_parse_oom began */
static _Thread_local long failures;        /* failed allocations on this thread */

static void *json_malloc(size_t n)
{
    allocs++;
    if (fail_countdown > 0 && --fail_countdown == 0) {
        failed = 1;
        failures++;
        return NULL;
    }
    void *p = malloc(n);
    if (!p) {
        failed = 1;
        failures++;
    }
    return p;
}

static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static void install(void)
{
    cJSON_Hooks hooks = { json_malloc, free };
    cJSON_InitHooks(&hooks);
}

void json_alloc_install(void)
{
    pthread_once(&install_once, install);
}

static _Thread_local char refusal[96];

const char *json_parse_refusal(void) { return refusal; }

/* 0 when s[0..n) is UTF-8 and none of its strings holds a NUL; else 1 with
 * `refusal` set.  In a string each backslash takes the next byte with it,
 * so an escaped backslash never starts an escape. */
static int text_refused(const char *s, size_t n)
{
    int in = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            uint32_t cp;
            size_t k = unicode_utf8_decode((const uint8_t *)s + i, n - i, &cp);
            if (cp == UNICODE_INVALID) {
                snprintf(refusal, sizeof refusal, "invalid UTF-8 at byte %zu", i);
                return 1;
            }
            i += k;
            continue;
        }
        if (c == 0 && !in) {
            snprintf(refusal, sizeof refusal, "a 0 byte at byte %zu", i);   /* cJSON would skip it */
            return 1;
        }
        if (in && (c == 0 || (c == '\\' && i + 5 < n && !memcmp(s + i + 1, "u0000", 5)))) {
            snprintf(refusal, sizeof refusal, "a NUL character (\\u0000) in a string at byte %zu", i);
            return 1;
        }
        if (c == '"')
            in = !in;
        else if (in && c == '\\' && i + 1 < n)
            i++;        /* the escaped byte */
        i++;
    }
    return 0;
}

cJSON *json_parse_oom(const char *s, size_t n, int *oom)
{
    refusal[0] = 0;
    if (text_refused(s, n)) {
        *oom = 0;
        return NULL;
    }
    return json_parse_end_oom(s, n, NULL, oom);
}

cJSON *json_parse_end_oom(const char *s, size_t n, const char **end, int *oom)
{
    failed = 0;
    cJSON *j = cJSON_ParseWithLengthOpts(s, n, end, 0);
    *oom = !j && failed;
    return j;
}

void json_alloc_fail_after(long n) { fail_countdown = n > 0 ? n : 0; }
long json_alloc_count(void) { return allocs; }
long json_alloc_failures(void) { return failures; }
void json_alloc_failed(void) { failures++; }

int json_add(cJSON *to, const char *key, cJSON *item)
{
    if (item && to && (key ? cJSON_AddItemToObject(to, key, item) : cJSON_AddItemToArray(to, item)))
        return 1;
    cJSON_Delete(item);
    return 0;
}
