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

int json_alloc_fail_now(void)
{
    allocs++;
    if (fail_countdown > 0 && --fail_countdown == 0) {
        failed = 1;
        failures++;
        return 1;
    }
    return 0;
}

static void *json_malloc(size_t n)
{
    if (json_alloc_fail_now())
        return NULL;
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

size_t utf8_invalid_at(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = unicode_utf8_decode((const uint8_t *)s + i, len - i, &cp);
        if (cp == UNICODE_INVALID)
            return i;
        i += n;
    }
    return len;
}

bool json_nul_find(const char *s, size_t len, size_t *at, bool *in_string)
{
    bool in = false, found = false;
    for (size_t i = 0; i < len; i++) {
        const char c = s[i];
        if (c == '\0') {
            if (!in) {
                *at = i;
                *in_string = false;
                return true;
            }
            if (!found) {
                *at = i;
                *in_string = found = true;
            }
            continue;
        }
        if (c == '"') {
            in = !in;
            continue;
        }
        if (!in || c != '\\' || i + 1 >= len)
            continue;
        if (s[i + 1] == 'u' && len - i >= 6 && !memcmp(s + i + 2, "0000", 4) && !found) {
            *at = i;
            *in_string = found = true;
        }
        if (s[i + 1] != '\0')
            i++; /* the escaped byte */
    }
    return found;
}

/* 0 when s[0..n) is UTF-8 and none of its strings holds a NUL; else 1 with
 * `refusal` set. */
static int text_refused(const char *s, size_t n)
{
    size_t at = utf8_invalid_at(s, n);
    bool in_string;
    if (at < n)
        snprintf(refusal, sizeof refusal, "invalid UTF-8 at byte %zu", at);
    else if (json_nul_find(s, n, &at, &in_string))
        snprintf(refusal, sizeof refusal, in_string ? "a NUL character (\\u0000) in a string at byte %zu"
                                                    : "a 0 byte at byte %zu", at);   /* cJSON would skip it */
    else
        return 0;
    return 1;
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
