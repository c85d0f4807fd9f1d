/* json_alloc.c - cJSON's allocator (see json_alloc.h). */
#include "orchestrator/json_alloc.h"

#include <pthread.h>
#include <stdlib.h>

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

cJSON *json_parse_oom(const char *s, size_t n, int *oom)
{
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
