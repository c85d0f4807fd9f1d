/* test_api_body.c - api_json_body_parse, the one parser of every route's
 * JSON body: bad text is a 400 naming the byte, memory running out while
 * parsing a 500 server_error (json_alloc_fail_after makes each of the
 * parse's allocations fail in turn), never a 400 that blames the client;
 * and api_error_json, the error body every route sends: whole or NULL
 * (the caller then sends API_ERROR_OOM_BODY), never a body with a member
 * missing; and a tool-call request and its answer (openai_parse_ex,
 * openai_output_message): out of memory is a 500 or is counted in
 * json_alloc_failures (the server then answers 500), never a prompt or a
 * message with a part missing; nothing leaks (ASan). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/status.h"
#include "orchestrator/json_alloc.h"
#include "server/openai.h"
#include "byte_vocab.h"
#include "test_util.h"

/* A message's tool call ids, random per answer, taken out before two are
 * compared. */
static const char good_call[] = "{\"name\": \"add\", \"arguments\": {\"a\": 2}}";
static const char bad_call[] = "{\"name\": \"add\", \"arguments\": {\"a\": \"x\"}}";

/* Whether grammar g takes text whole. */
static bool grammar_takes(grammar *g, const char *text)
{
    grammar_matcher *m = NULL;
    if (!g || grammar_matcher_create(g, &m))
        return false;
    bool ok = grammar_matcher_accept_bytes(m, text, strlen(text)) == PS_OK && grammar_matcher_can_end(m);
    grammar_matcher_free(m);
    return ok;
}

static void drop_call_ids(cJSON *msg)
{
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(msg, "tool_calls"))
        cJSON_DeleteItemFromObjectCaseSensitive(c, "id");
}

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

    /* tools: the request (tools prompt, grammar) and the answer's message */
    chat_template *tmpl = NULL;
    grammar_vocab *vocab = NULL;
    CHECK(byte_vocab_make(&tmpl, &vocab) == PS_OK);
    static const char tools_body[] =
        "{\"model\":\"smol\",\"messages\":[{\"role\":\"user\",\"content\":\"add\"}],\"tools\":["
        "{\"type\":\"function\",\"function\":{\"name\":\"add\",\"description\":\"Adds.\",\"parameters\":"
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"neg\",\"parameters\":{\"properties\":"
        "{\"x\":{\"type\":\"number\"}}}}}],\"tool_choice\":\"required\",\"parallel_tool_calls\":false}";
    static const char *const models[] = { "smol", NULL };
    struct openai_options opt = { vocab, 5000 };
    struct gen_params p;
    memset(&err, 0, sizeof err);
    a0 = json_alloc_count();
    CHECK(openai_parse_ex(tools_body, strlen(tools_body), true, models, tmpl, BYTE_VOCAB_N, &opt, &p, &err) == 0);
    long parse_allocs = json_alloc_count() - a0;
    CHECK(p.prompt && p.output && strstr(p.prompt, "neg") && strstr(p.prompt, "Adds."));
    char *prompt0 = p.prompt ? strdup(p.prompt) : NULL;
    static const char answer[] = "{\"name\": \"add\", \"arguments\": {\"a\": 2}}";
    cJSON *msg = cJSON_CreateObject();
    struct openai_output *o = openai_output_another(p.output);
    CHECK(msg && o && openai_output_message(o, answer, strlen(answer), "stop", msg));
    drop_call_ids(msg);   /* random per answer */
    char *msg0 = cJSON_PrintUnformatted(msg);
    CHECK(msg0 && strstr(msg0, "\"tool_calls\"") && strstr(msg0, "\"add\""));
    cJSON_Delete(msg);
    openai_output_free(o);
    int parse_500 = 0, msg_counted = 0;
    CHECK(grammar_takes(p.grammar, good_call) && !grammar_takes(p.grammar, bad_call));
    for (long k = 1; k <= parse_allocs && prompt0; k++) {
        /* a fresh vocabulary each time: the grammar is compiled, not taken
         * from the clean run's cache entry */
        chat_template *t2 = NULL;
        grammar_vocab *v2 = NULL;
        CHECK(byte_vocab_make(&t2, &v2) == PS_OK);
        struct openai_options opt2 = { v2, 5000 };
        struct gen_params q;
        memset(&err, 0, sizeof err);
        json_alloc_fail_after(k);
        int st = openai_parse_ex(tools_body, strlen(tools_body), true, models, t2, BYTE_VOCAB_N, &opt2, &q, &err);
        json_alloc_fail_after(0);
        if (st) {
            CHECK_MSG(st == 500 && strstr(err.message, "memory"), "allocation %ld: %d %s", k, st, err.message);
            parse_500++;
        } else {
            /* the same prompt, and a grammar as strict as the clean one's */
            CHECK_MSG(q.prompt && !strcmp(q.prompt, prompt0) && q.output, "allocation %ld: a prompt unlike the clean "
                      "one:\n%s", k, q.prompt ? q.prompt : "(none)");
            CHECK_MSG(grammar_takes(q.grammar, good_call) && !grammar_takes(q.grammar, bad_call),
                      "allocation %ld: the grammar %s", k, grammar_takes(q.grammar, bad_call) ? "is looser" : "refuses the call");
            gen_params_free(&q);
        }
        grammar_vocab_free(v2);
        chat_template_free(t2);
    }
    /* the answer message with each cJSON allocation failing: no crash and
     * no leak (ASan); a message unlike the clean one always comes with a
     * counted failure, which makes the server answer 500 (the failures of
     * its own mallocs, counted by json_alloc_failed, are not injected here) */
    for (long k = 1; k <= 64 && msg0; k++) {
        o = openai_output_another(p.output);
        msg = cJSON_CreateObject();
        long f0 = json_alloc_failures();
        json_alloc_fail_after(k);
        openai_output_message(o, answer, strlen(answer), "stop", msg);
        json_alloc_fail_after(0);
        drop_call_ids(msg);
        char *txt = cJSON_PrintUnformatted(msg);
        if (json_alloc_failures() != f0)
            msg_counted++;
        else
            CHECK_MSG(txt && !strcmp(txt, msg0), "allocation %ld: an uncounted partial message %s", k, txt);
        free(txt);
        cJSON_Delete(msg);
        openai_output_free(o);
    }
    CHECK(parse_500 > 0 && msg_counted > 0);
    printf("tools request: %d of %ld parse allocations failing give a 500, the rest the same prompt; "
           "answer message: %d counted failures\n", parse_500, parse_allocs, msg_counted);
    free(prompt0);
    free(msg0);
    gen_params_free(&p);
    grammar_vocab_free(vocab);
    chat_template_free(tmpl);
    TEST_DONE();
}
