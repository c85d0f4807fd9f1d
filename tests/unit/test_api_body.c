/* test_api_body.c - api_json_body_parse, the one parser of every route's
 * JSON body: bad text is a 400 naming the byte, memory running out while
 * parsing a 500 server_error (json_alloc_fail_after makes each of the
 * parse's allocations fail in turn), never a 400 that blames the client;
 * and api_error_json, the error body every route sends: whole or NULL
 * (the caller then sends API_ERROR_OOM_BODY), never a body with a member
 * missing; nothing leaks (ASan). */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/status.h"
#include "orchestrator/json_alloc.h"
#include "server/openai.h"
#include "test_util.h"

int main(void)
{
    json_alloc_install();
    static const char body[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":2}";
    struct api_error err;
    cJSON *root = NULL;
    memset(&err, 0, sizeof err);
    long a0 = json_alloc_count();
    CHECK(api_json_body_parse(body, strlen(body), &root, &err) == 0 && cJSON_IsObject(root));
    long allocs = json_alloc_count() - a0;
    cJSON_Delete(root);
    CHECK_MSG(allocs >= 8, "%ld allocations", allocs);

    int ooms = 0;
    for (long k = 1; k <= allocs; k++) {
        memset(&err, 0, sizeof err);
        root = NULL;
        json_alloc_fail_after(k);
        int rc = api_json_body_parse(body, strlen(body), &root, &err);
        json_alloc_fail_after(0);
        CHECK_MSG(rc != 0 && err.status == 500 && strstr(err.message, "out of memory") && !root,
                  "allocation %ld of %ld failed: rc %d, status %d, '%s'", k, allocs, rc, err.status, err.message);
        ooms += err.status == 500;
        cJSON_Delete(root);
    }
    printf("request body: each of %ld parse allocations failing gives a 500 (%d of them)\n", allocs, ooms);

    /* bad text stays the client's fault */
    static const char bad[] = "{\"model\":\"m\",]";
    memset(&err, 0, sizeof err);
    root = NULL;
    CHECK(api_json_body_parse(bad, strlen(bad), &root, &err) != 0 && err.status == 400 && !root);
    CHECK_MSG(strstr(err.message, "error near byte"), "%s", err.message);

    /* the error body, each of its allocations failing in turn */
    api_error_set(&err, 400, "invalid_request_error", "invalid_value", "temperature", "temperature: %s", "too hot");
    char *whole = api_error_json(&err);
    CHECK(whole && strstr(whole, "\"param\":\"temperature\"") && strstr(whole, "\"code\":\"invalid_value\""));
    a0 = json_alloc_count();
    free(api_error_json(&err));
    allocs = json_alloc_count() - a0;
    int nulls = 0;
    for (long k = 1; k <= allocs; k++) {
        json_alloc_fail_after(k);
        char *part = api_error_json(&err);
        json_alloc_fail_after(0);
        CHECK_MSG(!part || !strcmp(part, whole), "allocation %ld of %ld: %s", k, allocs, part);
        nulls += !part;
        free(part);
    }
    CHECK(nulls == allocs);
    cJSON *oom_body = cJSON_Parse(API_ERROR_OOM_BODY);
    const cJSON *oe = cJSON_GetObjectItemCaseSensitive(oom_body, "error");
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(oe, "message")) &&
          cJSON_IsString(cJSON_GetObjectItemCaseSensitive(oe, "type")) &&
          cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(oe, "param")) &&
          cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(oe, "code")));
    cJSON_Delete(oom_body);
    free(whole);
    printf("error body: each of its %ld allocations failing gives NULL (%d)\n", allocs, nulls);
    TEST_DONE();
}
