/* test_grammar.c - the JSON Schema automaton on hand-written documents, the
 * token masks against a brute-force check, the compile cache, document
 * sequences (max_docs: parallel tool calls), and clear
 * errors for unsupported schemas.  Uses a synthetic vocabulary (all 256
 * single bytes plus multi-byte tokens) so it runs without a model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "grammar/grammar.h"
#include "test_util.h"

static const char *multi[] = {
    "{\"", "\":", "\": ", "\", \"", "\"}", "\"]", "]}", "}}", "true", "false", "null", "},",
    "\"name", "name", "12", "123", "0.", ".5", "\\\"", "\\u", "\\n", " \"", ", ", "\xc3\xa9",
    "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xe2", "\x82\xac", "\"a\"", "[1", ", 2", "-1", "1e", "e+",
    "abc", "\"\"", "{}", "[]", "\"}\n", "},{\"", "\": [", "], \"",
    "}\n", "}\n{\"", "\n{", "}}\n{\"name\": \"", "\n\n",
};
#define N_MULTI (sizeof multi / sizeof multi[0])
#define EOS_ID (256 + (int32_t)N_MULTI)

static grammar_vocab *make_vocab(void)
{
    int32_t n = EOS_ID + 2; /* + EOS + one unusable token */
    const char **p = calloc((size_t)n, sizeof *p);
    size_t *l = calloc((size_t)n, sizeof *l);
    static char bytes[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        p[i] = &bytes[i];
        l[i] = 1;
    }
    for (size_t i = 0; i < N_MULTI; i++) {
        p[256 + i] = multi[i];
        l[256 + i] = strlen(multi[i]);
    }
    int32_t eos = EOS_ID;
    grammar_vocab *v = NULL;
    int rc = grammar_vocab_create_from_pieces(n, p, l, &eos, 1, &v);
    CHECK(rc == PS_OK);
    free(p);
    free(l);
    return v;
}

static grammar *compile(grammar_vocab *v, const char *schema)
{
    grammar *g = NULL;
    int rc = grammar_compile(v, schema, strlen(schema), NULL, &g);
    CHECK_MSG(rc == PS_OK, "compile %s: %s", schema, ps_error_last());
    return g;
}

/* 1 when `doc` is a complete document of g. */
static int accepts(grammar *g, const char *doc)
{
    grammar_matcher *m;
    if (grammar_matcher_create(g, &m))
        return -1;
    int ok = grammar_matcher_accept_bytes(m, doc, strlen(doc)) == PS_OK && grammar_matcher_can_end(m);
    grammar_matcher_free(m);
    return ok;
}

struct case_ {
    const char *schema;
    const char *doc;
    int ok;
};

static const struct case_ cases[] = {
    { "{\"type\":\"string\"}", "\"hello\"", 1 },
    { "{\"type\":\"string\"}", "\"\"", 1 },
    { "{\"type\":\"string\"}", "\"a\\\"b\\\\c\\/d\\n\\t\\r\\b\\f\"", 1 },
    { "{\"type\":\"string\"}", "\"\\u00e9\\u20AC\"", 1 },
    { "{\"type\":\"string\"}", "\"\\ud83d\"", 0 },          /* surrogate escapes refused */
    { "{\"type\":\"string\"}", "\"\\x\"", 0 },
    { "{\"type\":\"string\"}", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", 1 },
    { "{\"type\":\"string\"}", "\"\xc3\"", 0 },              /* truncated UTF-8 */
    { "{\"type\":\"string\"}", "\"\xed\xa0\x80\"", 0 },      /* UTF-8 surrogate */
    { "{\"type\":\"string\"}", "\"\xc0\xaf\"", 0 },          /* overlong */
    { "{\"type\":\"string\"}", "\"a\nb\"", 0 },              /* raw control char */
    { "{\"type\":\"string\"}", "\"abc", 0 },
    { "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"ab\"", 1 },
    { "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"\xc3\xa9\\n\xe2\x82\xac\"", 1 },
    { "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"a\"", 0 },
    { "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"abcd\"", 0 },
    { "{\"type\":\"integer\"}", "0", 1 },
    { "{\"type\":\"integer\"}", "-17", 1 },
    { "{\"type\":\"integer\"}", "007", 0 },
    { "{\"type\":\"integer\"}", "-0", 0 },
    { "{\"type\":\"integer\"}", "1.5", 0 },
    { "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}", "-5", 1 },
    { "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}", "120", 1 },
    { "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}", "121", 0 },
    { "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}", "-6", 0 },
    { "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}", "99", 1 },
    { "{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}", "0", 0 },
    { "{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}", "9", 1 },
    { "{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}", "10", 0 },
    { "{\"type\":\"integer\",\"minimum\":1000,\"maximum\":20000}", "999", 0 },
    { "{\"type\":\"integer\",\"minimum\":1000,\"maximum\":20000}", "1000", 1 },
    { "{\"type\":\"integer\",\"minimum\":1000,\"maximum\":20000}", "19999", 1 },
    { "{\"type\":\"integer\",\"minimum\":1000,\"maximum\":20000}", "20001", 0 },
    { "{\"type\":\"number\"}", "-12.5e+3", 1 },
    { "{\"type\":\"number\"}", "0.25", 1 },
    { "{\"type\":\"number\"}", ".5", 0 },
    /* a negative fraction of magnitude below 1 (found by the differential test) */
    { "{\"type\":\"number\"}", "-0.5", 1 },
    { "{\"type\":\"number\"}", "-0.05e-3", 1 },
    { "{\"type\":\"number\"}", "-0", 0 },
    { "{\"type\":\"number\"}", "-00.5", 0 },
    { "{}", "[-0.25]", 1 },
    { "{\"type\":\"number\"}", "1.", 0 },
    { "{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "0.5", 1 },
    { "{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "1", 1 },
    { "{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "1.5", 0 },
    { "{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "-0.5", 0 },
    { "{\"type\":\"number\",\"minimum\":-2.5,\"maximum\":3}", "-1.75", 1 },
    { "{\"type\":\"number\",\"exclusiveMinimum\":0}", "0", 0 },
    /* fractional bounds are exact decimals (found by the differential test: 0.75 and 1.25 were refused) */
    { "{\"type\":\"number\",\"minimum\":0.5,\"maximum\":1.5}", "0.5", 1 },
    { "{\"type\":\"number\",\"minimum\":0.5,\"maximum\":1.5}", "0.75", 1 },
    { "{\"type\":\"number\",\"minimum\":0.5,\"maximum\":1.5}", "1.25", 1 },
    { "{\"type\":\"number\",\"minimum\":0.5,\"maximum\":1.5}", "1.5", 1 },
    { "{\"type\":\"number\",\"minimum\":0.5,\"maximum\":1.5}", "1.51", 0 },
    { "{\"type\":\"number\",\"minimum\":0.5,\"maximum\":1.5}", "0.4999", 0 },
    { "{\"type\":\"number\",\"exclusiveMinimum\":0.5,\"exclusiveMaximum\":0.75}", "0.5", 0 },
    { "{\"type\":\"number\",\"exclusiveMinimum\":0.5,\"exclusiveMaximum\":0.75}", "0.5001", 1 },
    { "{\"type\":\"number\",\"exclusiveMinimum\":0.5,\"exclusiveMaximum\":0.75}", "0.75", 0 },
    { "{\"type\":\"number\",\"minimum\":-8.7,\"maximum\":-5}", "-8.7", 1 },
    { "{\"type\":\"number\",\"minimum\":-8.7,\"maximum\":-5}", "-8.2", 1 },
    { "{\"type\":\"number\",\"minimum\":-8.7,\"maximum\":-5}", "-8.71", 0 },
    { "{\"type\":\"number\",\"minimum\":-8.7,\"maximum\":-5}", "-4.9", 0 },
    /* at most 15 significant digits: 8.000000000000001 reads back as 8 in a double */
    { "{\"type\":\"number\",\"exclusiveMinimum\":8}", "8.00000000000001", 1 },
    { "{\"type\":\"number\",\"exclusiveMinimum\":8}", "8.000000000000001", 0 },
    { "{\"type\":\"boolean\"}", "true", 1 },
    { "{\"type\":\"boolean\"}", "tru", 0 },
    { "{\"type\":\"null\"}", "null", 1 },
    { "{\"type\":[\"string\",\"null\"]}", "null", 1 },
    { "{\"type\":[\"string\",\"null\"]}", "\"x\"", 1 },
    { "{\"type\":[\"string\",\"null\"]}", "1", 0 },
    { "{\"enum\":[\"red\",\"green\",1,null,{\"a\":[1]}]}", "\"green\"", 1 },
    /* enum / const objects and arrays use the one layout of every value (was compact) */
    { "{\"enum\":[\"red\",\"green\",1,null,{\"a\":[1]}]}", "{\"a\": [1]}", 1 },
    { "{\"enum\":[\"red\",\"green\",1,null,{\"a\":[1]}]}", "{\"a\":[1]}", 0 },
    { "{\"const\":{\"k\":[1,{\"x\":\"\\u00e9\"},[]],\"e\":{}}}", "{\"k\": [1, {\"x\": \"\xc3\xa9\"}, []], \"e\": {}}", 1 },
    { "{\"enum\":[\"red\",\"green\",1,null,{\"a\":[1]}]}", "\"blue\"", 0 },
    /* keywords beside enum / const filter the members (found by the differential test) */
    { "{\"type\":\"integer\",\"enum\":[-46,3,7],\"minimum\":0,\"exclusiveMaximum\":7}", "-46", 0 },
    { "{\"type\":\"integer\",\"enum\":[-46,3,7],\"minimum\":0,\"exclusiveMaximum\":7}", "7", 0 },
    { "{\"type\":\"integer\",\"enum\":[-46,3,7],\"minimum\":0,\"exclusiveMaximum\":7}", "3", 1 },
    { "{\"enum\":[\"b|\",\"\xc3\xa9\xc3\xa9\",15,[1,2,3]],\"maxLength\":2,\"maxItems\":2}", "\"b|\"", 1 },
    { "{\"enum\":[\"b|/\",\"\xc3\xa9\xc3\xa9\",15,[1,2,3]],\"maxLength\":2,\"maxItems\":2}", "\"b|/\"", 0 },
    { "{\"enum\":[\"b|/\",\"\xc3\xa9\xc3\xa9\",15,[1,2,3]],\"maxLength\":2,\"maxItems\":2}", "\"\xc3\xa9\xc3\xa9\"", 1 },
    { "{\"enum\":[\"b|/\",\"\xc3\xa9\xc3\xa9\",15,[1,2,3]],\"maxLength\":2,\"maxItems\":2}", "15", 1 },
    { "{\"enum\":[\"b|/\",\"\xc3\xa9\xc3\xa9\",15,[1,2,3]],\"maxLength\":2,\"maxItems\":2}", "[1, 2, 3]", 0 },
    { "{\"const\":\"caf\xc3\xa9 \\\"q\\\"\"}", "\"caf\xc3\xa9 \\\"q\\\"\"", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
      "{\"a\": 1, \"b\": \"x\"}", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
      "{\"a\": 1}", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
      "{\"b\": \"x\"}", 0 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
      "{\"a\": 1, \"c\": 2}", 0 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}}}", "{}", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}}}", "{\"b\": \"\"}", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}}}", "{, \"b\": \"\"}", 0 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":true}",
      "{\"a\": 1, \"zz\": [1, {\"q\": null}], \"y\": \"s\"}", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":true}",
      "{\"zz\": 1, \"a\": \"no\"}", 0 },  /* a known name may not come back as an extra key */
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":\"boolean\"}}",
      "{\"ab\": true, \"b\": false}", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":\"boolean\"}}",
      "{\"b\": 1}", 0 },
    /* extra keys may be any JSON string that is not a declared name (found by the differential
     * test: non-ASCII and escaped keys were refused) */
#define MAP "{\"type\":\"object\",\"properties\":{\"caf\xc3\xa9\":{\"type\":\"integer\"},\"k/s\":{\"type\":\"integer\"}," \
            "\"q\\\"u\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":\"boolean\"}}"
    { MAP, "{\"\xc3\xbc" "ber\": true, \"\xe6\x97\xa5\": false}", 1 },
    { MAP, "{\"caf\xc3\xa8\": true}", 1 },       /* diverges inside a name's character */
    { MAP, "{\"caf\xc3\xa9\": true}", 0 },       /* a declared name with the extra schema */
    { MAP, "{\"caf\\u00e9\": true}", 0 },        /* the same name escaped */
    { MAP, "{\"x\\\"y\\n\": true, \"p\\\\q\": true}", 1 },
    { MAP, "{\"q\\\"\": true}", 1 },
    { MAP, "{\"q\\\"u\": true}", 0 },
    { MAP, "{\"k\\/s\": true}", 0 },             /* '/' escaped still spells k/s */
    { MAP, "{\"k\\/t\": true}", 0 },             /* refused: \/ where a name has '/' */
    { MAP, "{\"\xc3\": true}", 0 },
#undef MAP
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}", "[1, 2, 3]", 1 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}", "[]", 0 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}", "[1, 2, 3, 4]", 0 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[]", 1 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[1, 2, 3, 4, 5]", 1 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[1,2]", 0 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2}", "[1, 2, 3]", 1 },
    { "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2}", "[1]", 0 },
    { "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}", "[\"a\", 1]", 1 },
    { "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}", "[\"a\", 1, 2]", 0 },
    { "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"}],\"items\":{\"type\":\"null\"}}", "[\"a\", null, null]", 1 },
    { "{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"object\",\"properties\":{\"k\":{\"const\":1}},\"required\":[\"k\"]}]}", "{\"k\": 1}", 1 },
    { "{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"object\",\"properties\":{\"k\":{\"const\":1}},\"required\":[\"k\"]}]}", "5", 1 },
    { "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"a\"},\"x\":{\"type\":\"integer\"}},\"required\":[\"t\",\"x\"]},"
      "{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"b\"},\"y\":{\"type\":\"string\"}},\"required\":[\"t\",\"y\"]}]}",
      "{\"t\": \"b\", \"y\": \"s\"}", 1 },
    { "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"a\"},\"x\":{\"type\":\"integer\"}},\"required\":[\"t\",\"x\"]},"
      "{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"b\"},\"y\":{\"type\":\"string\"}},\"required\":[\"t\",\"y\"]}]}",
      "{\"t\": \"b\", \"x\": 1}", 0 },
    { "{\"$defs\":{\"p\":{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"string\"}},\"required\":[\"n\"]}},"
      "\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/p\"}}", "[{\"n\": \"a\"}, {\"n\": \"b\"}]", 1 },
    /* recursive: a tree */
    { "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
      "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/node\"}",
      "{\"v\": 1, \"kids\": [{\"v\": 2}, {\"v\": 3, \"kids\": [{\"v\": 4, \"kids\": []}]}]}", 1 },
    { "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
      "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/node\"}",
      "{\"v\": 1, \"kids\": [{\"v\": 2}, {\"kids\": []}]}", 0 },
    { "{\"type\":\"object\",\"properties\":{\"c\":{\"$ref\":\"#\"}}}", "{\"c\": {\"c\": {}}}", 1 },
    { "{}", "[1, \"a\", {\"b\": [true, false, null]}, -2.5]", 1 },
    { "{}", "[1, ]", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^[a-z]+-[0-9]{2,3}$\"}", "\"abc-12\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"^[a-z]+-[0-9]{2,3}$\"}", "\"abc-1\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^[a-z]+-[0-9]{2,3}$\"}", "\"Abc-12\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^(foo|ba[rz])\\\\.txt$\"}", "\"baz.txt\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"^(foo|ba[rz])\\\\.txt$\"}", "\"bazXtxt\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"ab\"}", "\"xxabyy\"", 1 },   /* unanchored: search */
    { "{\"type\":\"string\",\"pattern\":\"ab\"}", "\"xxayy\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^a\\\"b\\\\\\\\c$\"}", "\"a\\\"b\\\\c\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"^\\\\d+(\\\\.\\\\d+)?$\"}", "\"3.14\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"^[^,]+$\"}", "\"a,b\"", 0 },
    /* non-ASCII in negated classes; newlines around an unanchored match (found by the differential test) */
    { "{\"type\":\"string\",\"pattern\":\"^[^,]+$\"}", "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"^[^\\\\d]$\"}", "\"\xc3\xa9\"", 0 }, /* Unicode \\d in Python */
    { "{\"type\":\"string\",\"pattern\":\"^\\\\D$\"}", "\"a\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"ab\"}", "\"x\\nab\\n\"", 1 },
    /* U+001F is whitespace to Python's re, not to ECMA-262: neither \s nor \S takes it
     * (found by the differential test: \S accepted it) */
    { "{\"type\":\"string\",\"pattern\":\"^\\\\S$\"}", "\"\\u001f\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^[^\\\\s]$\"}", "\"\\u001f\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^\\\\s$\"}", "\"\\u001f\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^\\\\S$\"}", "\"\\u0001\"", 1 },
    { "{\"type\":\"string\",\"pattern\":\"^a.b$\"}", "\"a\\nb\"", 0 },
    { "{\"type\":\"string\",\"pattern\":\"^caf\xc3\xa9.$\"}", "\"caf\xc3\xa9\xe2\x82\xac\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2024-02-28\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2024-13-01\"", 0 },
    /* calendar dates: month lengths, leap years, no year 0 (found by the differential test) */
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2024-01-31\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2024-04-30\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2024-04-31\"", 0 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2024-02-29\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2000-02-29\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"1900-02-29\"", 0 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"2023-02-29\"", 0 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"0000-01-01\"", 0 },
    { "{\"type\":\"string\",\"format\":\"date\"}", "\"0001-01-01\"", 1 },
    { "{\"type\":\"string\",\"format\":\"uuid\"}", "\"123e4567-e89b-12d3-a456-426614174000\"", 1 },
    { "{\"type\":\"string\",\"format\":\"date-time\"}", "\"2024-01-02T03:04:05Z\"", 1 },
    { "{\"type\":\"object\",\"properties\":{\"a b\\\"c\":{\"type\":\"null\"}},\"required\":[\"a b\\\"c\"]}",
      "{\"a b\\\"c\": null}", 1 },
};

static const char *const unsupported[][2] = {
    { "{\"type\":\"string\",\"contentEncoding\":\"base64\"}", "contentEncoding" },
    { "{\"type\":\"array\",\"uniqueItems\":true}", "uniqueItems" },
    { "{\"not\":{\"type\":\"null\"}}", "not" },
    { "{\"type\":\"object\",\"patternProperties\":{\"^x\":{}}}", "patternProperties" },
    { "{\"type\":\"integer\",\"multipleOf\":3}", "multipleOf" },
    { "{\"if\":{},\"then\":{}}", "if" },
    { "{\"type\":\"string\",\"format\":\"hostname\"}", "hostname" },
    { "{\"type\":\"string\",\"pattern\":\"(?=x)\"}", "lookaround" },
    { "{\"type\":\"string\",\"pattern\":\"(a)\\\\1\"}", "\\1" },
    { "{\"$ref\":\"http://example.com/s.json\"}", "local" },
    { "{\"allOf\":[{\"type\":\"string\"},{\"maxLength\":3}]}", "allOf" },
    { "{\"type\":\"string\",\"enum\":[\"a\",\"b\"],\"pattern\":\"^a\"}", "pattern" },
    { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"object\",\"minProperties\":1}}}", "minProperties" },
};

/* Masks against brute force along `doc`: at each byte boundary, every token
 * whose bit is set must be accepted, every other one rejected. */
static void check_masks(grammar_vocab *v, grammar *g, const char *doc)
{
    int32_t n_vocab = grammar_vocab_n_vocab(v);
    size_t words = grammar_mask_words(v);
    uint32_t *mask = calloc(words, sizeof *mask);
    size_t len = strlen(doc);
    for (size_t k = 0; k <= len; k++) {
        grammar_matcher *m;
        CHECK(grammar_matcher_create(g, &m) == PS_OK);
        CHECK(grammar_matcher_accept_bytes(m, doc, k) == PS_OK);
        CHECK(grammar_matcher_fill_mask(m, mask) == PS_OK);
        int any = 0;
        for (int32_t t = 0; t < n_vocab; t++) {
            int bit = mask[t >> 5] >> (t & 31) & 1;
            any |= bit;
            grammar_matcher *m2;
            grammar_matcher_create(g, &m2);
            grammar_matcher_accept_bytes(m2, doc, k);
            int ok = grammar_matcher_accept(m2, t) == PS_OK;
            grammar_matcher_free(m2);
            CHECK_MSG(bit == ok, "doc %s prefix %zu token %d: mask %d, accept %d", doc, k, t, bit, ok);
            if (bit != ok) {
                grammar_matcher_free(m);
                free(mask);
                return;
            }
        }
        CHECK_MSG(any, "empty mask at %zu of %s", k, doc);
        grammar_matcher_free(m);
    }
    free(mask);
}

/* Sequences of documents (grammar_options.max_docs, OpenAI parallel tool
 * calls): two tools, each call checked against its own tool's parameters. */
static const char TOOLS[] =
    "[{\"name\": \"add\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, "
    "\"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]}}, "
    "{\"name\": \"echo\", \"parameters\": {\"type\": \"object\", \"properties\": {\"text\": {\"type\": \"string\", "
    "\"maxLength\": 8}}, \"required\": [\"text\"]}}]";
#define CALL_ADD  "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 22}}"
#define CALL_ECHO "{\"name\": \"echo\", \"arguments\": {\"text\": \"hi\\n\"}}"

static grammar *compile_docs(grammar_vocab *v, const char *schema, int32_t max_docs)
{
    struct grammar_options o = { .max_docs = max_docs };
    grammar *g = NULL;
    int rc = grammar_compile(v, schema, strlen(schema), &o, &g);
    CHECK_MSG(rc == PS_OK, "compile (max_docs %d): %s", max_docs, ps_error_last());
    return g;
}

static void test_doc_sequences(grammar_vocab *v)
{
    char *schema = NULL;
    CHECK(grammar_tools_schema(TOOLS, strlen(TOOLS), &schema) == PS_OK);
    grammar *one = compile_docs(v, schema, 0), *three = compile_docs(v, schema, 3);
    grammar *sixteen = compile_docs(v, schema, 16);
    if (!one || !three || !sixteen)
        goto done;
    CHECK(one != three && three != sixteen); /* the cache tells max_docs apart */
    grammar *again = compile_docs(v, schema, 3);
    CHECK(again == three);
    grammar_free(again);

    /* one call: same language either way */
    CHECK(accepts(one, CALL_ADD) == 1 && accepts(three, CALL_ADD) == 1);
    /* parallel off (one document): a second call is refused */
    CHECK(accepts(one, CALL_ADD "\n" CALL_ECHO) == 0);
    CHECK(accepts(one, CALL_ADD "\n") == 0);
    /* two and three calls, any tools in any order */
    CHECK(accepts(three, CALL_ADD "\n" CALL_ECHO) == 1);
    CHECK(accepts(three, CALL_ECHO "\n" CALL_ADD "\n" CALL_ECHO) == 1);
    CHECK(accepts(three, CALL_ADD "\n" CALL_ADD "\n" CALL_ADD) == 1);
    /* past the cap */
    CHECK(accepts(three, CALL_ADD "\n" CALL_ADD "\n" CALL_ADD "\n" CALL_ADD) == 0);
    /* a separator must start another call: not the end, not twice */
    CHECK(accepts(three, CALL_ADD "\n") == 0);
    CHECK(accepts(three, CALL_ADD "\n\n" CALL_ADD) == 0);
    CHECK(accepts(three, CALL_ADD " " CALL_ADD) == 0);
    /* each call's arguments follow its own tool's parameters */
    CHECK(accepts(three, CALL_ADD "\n{\"name\": \"echo\", \"arguments\": {\"a\": 1, \"b\": 2}}") == 0);
    CHECK(accepts(three, CALL_ECHO "\n{\"name\": \"add\", \"arguments\": {\"text\": \"x\"}}") == 0);
    CHECK(accepts(three, CALL_ECHO "\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}") == 0);
    CHECK(accepts(three, CALL_ADD "\n{\"name\": \"echo\", \"arguments\": {\"text\": \"123456789\"}}") == 0);
    CHECK(accepts(three, CALL_ADD "\n{\"name\": \"nope\", \"arguments\": {}}") == 0);
    CHECK(accepts(sixteen, CALL_ADD "\n" CALL_ECHO "\n" CALL_ADD "\n" CALL_ECHO) == 1);

    /* masks against brute force, tokens across the separator included */
    check_masks(v, three, CALL_ADD "\n" CALL_ECHO);
    check_masks(v, three, CALL_ECHO "\n" CALL_ADD "\n" CALL_ECHO);
    check_masks(v, one, CALL_ADD);

    /* the matcher's view: can_end after each call; done at the cap */
    grammar_matcher *m;
    CHECK(grammar_matcher_create(three, &m) == PS_OK);
    size_t words = grammar_mask_words(v);
    uint32_t *mask = calloc(words, sizeof *mask);
    const char *sep_tok[] = { "}\n", "}\n{\"", "\n{", "}}\n{\"name\": \"", "\n" };
    int32_t sep_id[5] = { 256 + (int32_t)N_MULTI - 5, 256 + (int32_t)N_MULTI - 4, 256 + (int32_t)N_MULTI - 3,
                          256 + (int32_t)N_MULTI - 2, '\n' };
    for (int i = 0; i < 4; i++) {
        size_t len;
        const char *p = grammar_vocab_piece(v, sep_id[i], &len);
        CHECK(p && len == strlen(sep_tok[i]) && !memcmp(p, sep_tok[i], len));
    }
    for (int doc = 0; doc < 3; doc++) {
        const char *c = doc == 1 ? CALL_ECHO : CALL_ADD;
        CHECK(grammar_matcher_accept_bytes(m, c, strlen(c) - 2) == PS_OK); /* up to the last "}}" */
        CHECK(!grammar_matcher_can_end(m));
        CHECK(grammar_matcher_fill_mask(m, mask) == PS_OK);
        int want_sep = doc < 2;
        CHECK_MSG((int)(mask[sep_id[3] >> 5] >> (sep_id[3] & 31) & 1) == want_sep, "doc %d: }}\\n{ token", doc);
        CHECK(grammar_matcher_accept_bytes(m, "}}", 2) == PS_OK);
        CHECK(grammar_matcher_can_end(m));
        CHECK(grammar_matcher_fill_mask(m, mask) == PS_OK);
        CHECK((mask[EOS_ID >> 5] >> (EOS_ID & 31) & 1) == 1);
        for (int i = 2; i < 5; i += 2)
            CHECK_MSG((int)(mask[sep_id[i] >> 5] >> (sep_id[i] & 31) & 1) == want_sep, "doc %d token %d", doc, i);
        CHECK_MSG(grammar_matcher_is_done(m) == !want_sep, "doc %d: is_done", doc);
        if (want_sep)
            CHECK(grammar_matcher_accept(m, '\n') == PS_OK);
        else
            CHECK(grammar_matcher_accept(m, '\n') == PS_EINVAL);
    }
    grammar_matcher_free(m);
    /* a token holding the separator and the next call's start */
    CHECK(grammar_matcher_create(three, &m) == PS_OK);
    CHECK(grammar_matcher_accept_bytes(m, CALL_ADD, strlen(CALL_ADD) - 2) == PS_OK);
    CHECK(grammar_matcher_accept(m, sep_id[3]) == PS_OK);
    const char *rest = "echo\", \"arguments\": {\"text\": \"\"}}";
    CHECK(grammar_matcher_accept_bytes(m, rest, strlen(rest)) == PS_OK);
    CHECK(grammar_matcher_can_end(m) && !grammar_matcher_is_done(m));
    CHECK(grammar_matcher_accept(m, EOS_ID) == PS_OK && grammar_matcher_is_done(m));
    grammar_matcher_free(m);
    /* one document: nothing follows a complete call */
    CHECK(grammar_matcher_create(one, &m) == PS_OK);
    CHECK(grammar_matcher_accept_bytes(m, CALL_ADD, strlen(CALL_ADD)) == PS_OK);
    CHECK(grammar_matcher_is_done(m));
    CHECK(grammar_matcher_accept(m, '\n') == PS_EINVAL);
    grammar_matcher_free(m);
    free(mask);

    struct grammar_options bad = { .max_docs = GRAMMAR_MAX_DOCS + 1 };
    grammar *g = NULL;
    CHECK(grammar_compile(v, schema, strlen(schema), &bad, &g) == PS_EINVAL && !g);
done:
    grammar_free(one);
    grammar_free(three);
    grammar_free(sixteen);
    free(schema);
}

int main(void)
{
    grammar_vocab *v = make_vocab();
    if (!v)
        return 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        grammar *g = compile(v, cases[i].schema);
        if (!g)
            continue;
        int got = accepts(g, cases[i].doc);
        CHECK_MSG(got == cases[i].ok, "schema %s doc %s: expected %s", cases[i].schema, cases[i].doc,
                  cases[i].ok ? "accept" : "reject");
        if (cases[i].ok && got == 1)
            check_masks(v, g, cases[i].doc);
        grammar_free(g);
    }
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        grammar *g = NULL;
        int rc = grammar_compile(v, unsupported[i][0], strlen(unsupported[i][0]), NULL, &g);
        CHECK_MSG(rc == PS_EUNSUPPORTED, "%s: rc %d", unsupported[i][0], rc);
        CHECK_MSG(strstr(ps_error_last(), unsupported[i][1]) != NULL, "%s: error '%s' should name '%s'",
                  unsupported[i][0], ps_error_last(), unsupported[i][1]);
        CHECK(g == NULL);
    }
    /* errors of other kinds */
    grammar *g = NULL;
    CHECK(grammar_compile(v, "{\"type\":", 8, NULL, &g) == PS_EFORMAT);
    CHECK(grammar_compile(v, "{\"type\":\"integer\",\"minimum\":5,\"maximum\":1}", 42, NULL, &g) == PS_EINVAL);
    { const char *bad = "{\"$ref\":\"#/$defs/nope\"}"; CHECK(grammar_compile(v, bad, strlen(bad), NULL, &g) == PS_EINVAL); }
    struct grammar_options small = { .max_states = 50 };
    const char *big = "{\"type\":\"string\",\"maxLength\":200}";
    CHECK(grammar_compile(v, big, strlen(big), &small, &g) == PS_ERANGE);
    CHECK(strstr(ps_error_last(), "limit") != NULL);

    /* cache: same schema -> same grammar object */
    const char *s = "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"boolean\"}}}";
    grammar *g1 = compile(v, s), *g2 = compile(v, s);
    CHECK(g1 && g1 == g2);
    grammar_free(g1);
    grammar_free(g2);

    /* EOS only at the end; is_done after it */
    g = compile(v, "{\"type\":\"boolean\"}");
    grammar_matcher *m;
    grammar_matcher_create(g, &m);
    CHECK(grammar_matcher_accept(m, EOS_ID) == PS_EINVAL);
    CHECK(grammar_matcher_accept(m, 256 + 8) == PS_OK); /* "true" */
    CHECK(grammar_matcher_is_done(m));                   /* nothing can follow */
    grammar_matcher_free(m);
    grammar_free(g);
    g = compile(v, "{\"type\":\"integer\"}");
    grammar_matcher_create(g, &m);
    CHECK(grammar_matcher_accept(m, '1') == PS_OK);
    CHECK(grammar_matcher_can_end(m) && !grammar_matcher_is_done(m));
    CHECK(grammar_matcher_accept(m, EOS_ID) == PS_OK);
    CHECK(grammar_matcher_is_done(m));
    grammar_matcher_free(m);
    grammar_free(g);

    test_doc_sequences(v);

    grammar_vocab_free(v);
    TEST_DONE();
}
