/* fuzz_agents.c - libFuzzer target for the agent registry loader
 * (registry_load_json) and the JSON-Schema subset (jschema_check,
 * jschema_validate): agent files, agents' input schemas and the arguments
 * validated against them are untrusted.
 *
 * Input: the text up to the first NUL byte (all of it when there is none)
 * is loaded as an agents file; a loaded registry is walked (lookups by
 * name, the catalogue) and every agent's input_schema validates the file's
 * own JSON.  Then the input splits at its first NUL into a schema and an
 * instance (no NUL: the same text is both); when cJSON accepts the schema
 * and jschema_check() passes, the instance is validated against it.
 *
 * Aborts when a call fails without a message, returns a status outside
 * its contract, leaves *out set on failure, or when a lookup by name does
 * not find the agent loaded under that name, or when an accepted agent's
 * example args fail its input schema.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "common/status.h"
#include "orchestrator/jschema.h"
#include "orchestrator/registry.h"

static volatile size_t sink;

static void validate(const cJSON *schema, const cJSON *value)
{
    char err[256];
    memset(err, 'x', sizeof err);
    int st = jschema_validate(schema, value, "args", err, sizeof err);
    if (st != PS_OK && st != PS_EINVAL)
        abort();
    if (!memchr(err, 0, sizeof err) || (st == PS_EINVAL) != (err[0] != 0))
        abort();
}

static void load_agents(const char *text)
{
    struct registry *reg = (struct registry *)1;
    int st = registry_load_json(text, "fuzz.json", &reg);
    if (st != PS_OK) {
        if (reg || !ps_error_last()[0])
            abort();
        return;
    }
    cJSON *doc = cJSON_Parse(text);
    for (int i = 0; i < registry_count(reg); i++) {
        const struct agent_spec *a = registry_at(reg, i);
        if (!a || !a->name || !a->description || !a->input_schema || registry_find(reg, a->name) != a)
            abort();
        if ((unsigned)a->kind >= AGENT_KIND_COUNT)
            abort();
        sink += strlen(agent_kind_str(a->kind));
        for (char **h = a->headers; h && *h; h++)
            if (strpbrk(*h, "\r\n"))
                abort();
        validate(a->input_schema, doc);
        if (a->example) {
            /* an accepted example's args are a valid call */
            char err[256];
            if (jschema_validate(a->input_schema, cJSON_GetObjectItemCaseSensitive(a->example, "args"), "args",
                                 err, sizeof err) != PS_OK)
                abort();
        }
    }
    if (registry_at(reg, registry_count(reg)) || registry_at(reg, -1))
        abort();
    cJSON *cat = registry_catalogue(reg);
    if (!cat || cJSON_GetArraySize(cat) != registry_count(reg))
        abort();
    char *s = cJSON_PrintUnformatted(cat);
    sink += s ? strlen(s) : 0;
    free(s);
    cJSON_Delete(cat);
    cJSON_Delete(doc);
    registry_free(reg);
}

static void schema_pair(const char *schema_text, const char *value_text, size_t value_len)
{
    cJSON *schema = cJSON_Parse(schema_text);
    if (!schema)
        return;
    char err[256];
    memset(err, 'x', sizeof err);
    int st = jschema_check(schema, "input_schema", err, sizeof err);
    if (st != PS_OK && st != PS_EINVAL)
        abort();
    if (!memchr(err, 0, sizeof err) || (st == PS_EINVAL && !err[0]))
        abort();
    if (st == PS_OK) {
        cJSON *value = cJSON_ParseWithLength(value_text, value_len);
        if (value)
            validate(schema, value);
        cJSON_Delete(value);
    }
    cJSON_Delete(schema);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    if (!text)
        return 0;
    load_agents(text);
    size_t cut = strlen(text);
    if (cut < size)
        schema_pair(text, text + cut + 1, size - cut - 1);
    else
        schema_pair(text, text, size);
    free(text);
    return 0;
}
