/* test_api_body.c - api_json_body_parse, the one parser of every route's
 * JSON body: bad text is a 400 naming the byte, memory running out while
 * parsing a 500 server_error (json_alloc_fail_after makes each of the
 * parse's allocations fail in turn), never a 400 that blames the client;
 * nothing leaks (ASan). */
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
    TEST_DONE();
}
