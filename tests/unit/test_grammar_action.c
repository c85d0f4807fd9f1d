/* test_grammar_action.c - the orchestrator action grammar: agents' input
 * schemas inlined per "to", their $defs relocated, actions accepted and
 * rejected as DESIGN.md's Action describes. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "grammar/grammar.h"
#include "test_util.h"

static const char *registry =
    "[{\"name\":\"search\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"},"
    "\"k\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10}},\"required\":[\"q\"]}},"
    " {\"name\":\"math\",\"input_schema\":{\"$defs\":{\"expr\":{\"anyOf\":[{\"type\":\"integer\"},"
    "{\"type\":\"object\",\"properties\":{\"op\":{\"enum\":[\"+\",\"*\"]},\"args\":{\"type\":\"array\","
    "\"items\":{\"$ref\":\"#/$defs/expr\"}}},\"required\":[\"op\",\"args\"]}]}},"
    "\"type\":\"object\",\"properties\":{\"e\":{\"$ref\":\"#/$defs/expr\"}},\"required\":[\"e\"]}},"
    " {\"name\":\"clock\"}]";

static const char *good[] = {
    "{\"calls\": [{\"id\": \"c1\", \"to\": \"search\", \"args\": {\"q\": \"paris weather\"}}]}",
    "{\"calls\": [{\"id\": \"c1\", \"to\": \"search\", \"args\": {\"q\": \"x\", \"k\": 3}}, "
    "{\"id\": \"c2\", \"to\": \"math\", \"args\": {\"e\": {\"op\": \"+\", \"args\": [1, {\"op\": \"*\", \"args\": [2, 3]}]}}, "
    "\"after\": [\"c1\"]}]}",
    "{\"calls\": [{\"id\": \"c7\", \"to\": \"clock\", \"args\": {\"tz\": [1, \"utc\"]}}]}",
    "{\"wait\": true}",
    "{\"cancel\": [\"c3\", \"c4\"]}",
    "{\"final\": {\"answer\": \"42\", \"uses\": [\"c1\", \"c2\"]}}",
    "{\"final\": {\"answer\": \"caf\xc3\xa9 \\\"ok\\\"\"}}",
};

static const char *bad[] = {
    "{\"calls\": []}",                                                               /* minItems 1 */
    "{\"calls\": [{\"id\": \"c1\", \"to\": \"search\", \"args\": {\"k\": 3}}]}",     /* q required */
    "{\"calls\": [{\"id\": \"c1\", \"to\": \"math\", \"args\": {\"q\": \"x\"}}]}",   /* wrong args */
    "{\"calls\": [{\"id\": \"c1\", \"to\": \"nobody\", \"args\": {}}]}",             /* unknown agent */
    "{\"calls\": [{\"id\": \"x1\", \"to\": \"clock\", \"args\": {}}]}",              /* id pattern */
    "{\"wait\": false}",
    "{\"cancel\": []}",
    "{\"final\": {\"uses\": [\"c1\"]}}",
    "{\"wait\": true, \"final\": {\"answer\": \"\"}}",
};

int main(void)
{
    char *schema = NULL;
    CHECK(grammar_action_schema(registry, strlen(registry), &schema) == PS_OK);
    if (!schema)
        TEST_DONE();
    const char *pieces[258];
    size_t lens[258];
    static char bytes[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        lens[i] = 1;
    }
    pieces[256] = "\", \"to\": \"";
    lens[256] = strlen(pieces[256]);
    pieces[257] = NULL;
    lens[257] = 0;
    int32_t eos = 257;
    grammar_vocab *v = NULL;
    CHECK(grammar_vocab_create_from_pieces(258, pieces, lens, &eos, 1, &v) == PS_OK);
    grammar *g = NULL;
    int rc = grammar_compile(v, schema, strlen(schema), NULL, &g);
    CHECK_MSG(rc == PS_OK, "%s", ps_error_last());
    for (size_t i = 0; g && i < sizeof good / sizeof *good; i++) {
        grammar_matcher *m;
        grammar_matcher_create(g, &m);
        int ok = grammar_matcher_accept_bytes(m, good[i], strlen(good[i])) == PS_OK && grammar_matcher_can_end(m);
        CHECK_MSG(ok, "should accept %s", good[i]);
        grammar_matcher_free(m);
    }
    for (size_t i = 0; g && i < sizeof bad / sizeof *bad; i++) {
        grammar_matcher *m;
        grammar_matcher_create(g, &m);
        int ok = grammar_matcher_accept_bytes(m, bad[i], strlen(bad[i])) == PS_OK && grammar_matcher_can_end(m);
        CHECK_MSG(!ok, "should reject %s", bad[i]);
        grammar_matcher_free(m);
    }
    grammar_free(g);
    free(schema);

    /* registry errors */
    CHECK(grammar_action_schema("[]", 2, &schema) == PS_EINVAL);
    CHECK(grammar_action_schema("[{\"input_schema\":{}}]", 21, &schema) == PS_EINVAL);
    const char *remote = "[{\"name\":\"x\",\"input_schema\":{\"$ref\":\"http://a/b\"}}]";
    CHECK(grammar_action_schema(remote, strlen(remote), &schema) == PS_EUNSUPPORTED);
    grammar_vocab_free(v);
    TEST_DONE();
}
