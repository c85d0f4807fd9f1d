/* action.c - the orchestrator action schema with every agent's input_schema
 * inlined as the "args" of a call addressed to it (see grammar.h).
 *
 * Each agent's schema is moved to $defs/a<i>__root and its own $defs /
 * definitions to $defs/a<i>_<name>; every "$ref" inside is rewritten to the
 * new location, so local references keep resolving.  Non-recursive refs are
 * inlined by the compiler, so the indirection costs nothing at match time.
 *
 * Out of memory: every item is attached with json_add (freed when it
 * cannot be), and a schema whose build saw a cJSON allocation fail
 * (json_alloc_failures) is PS_ENOMEM, never a schema with a part missing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/status.h"
#include "grammar.h"
#include "orchestrator/json_alloc.h"

#define ID_PATTERN "^c[0-9]{1,4}$"

/* Rewrite every "$ref" under node for agent index i. */
static int rewrite_refs(cJSON *node, int i)
{
    if (!node)
        return PS_OK;
    if (cJSON_IsObject(node)) {
        cJSON *ref = cJSON_GetObjectItemCaseSensitive(node, "$ref");
        if (ref && cJSON_IsString(ref)) {
            const char *r = ref->valuestring;
            char buf[1024];
            if (!strcmp(r, "#"))
                snprintf(buf, sizeof buf, "#/$defs/a%d__root", i);
            else if (!strncmp(r, "#/$defs/", 8))
                snprintf(buf, sizeof buf, "#/$defs/a%d_%s", i, r + 8);
            else if (!strncmp(r, "#/definitions/", 14))
                snprintf(buf, sizeof buf, "#/$defs/a%d_%s", i, r + 14);
            else if (!strncmp(r, "#/", 2))
                snprintf(buf, sizeof buf, "#/$defs/a%d__root/%s", i, r + 2);
            else
                return ps_error_set(PS_EUNSUPPORTED, "schema %d: $ref '%s' is not local (only local "
                                    "references are supported)", i, r);
            if (!cJSON_SetValuestring(ref, buf))
                return ps_error_set(PS_ENOMEM, "out of memory");
        }
    }
    for (cJSON *c = node->child; c; c = c->next) {
        int rc = rewrite_refs(c, i);
        if (rc)
            return rc;
    }
    return PS_OK;
}

static cJSON *id_schema(void)
{
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "type", "string");
    cJSON_AddStringToObject(s, "pattern", ID_PATTERN);
    return s;
}

static cJSON *id_list(int min)
{
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "type", "array");
    json_add(s, "items", id_schema());
    if (min)
        cJSON_AddNumberToObject(s, "minItems", min);
    return s;
}

/* {"type":"object","properties":{key: value},"required":[key],"additionalProperties":false} */
static cJSON *single_key(const char *key, cJSON *value)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "object");
    cJSON *p = cJSON_AddObjectToObject(o, "properties");
    json_add(p, key, value);   /* frees value when p is NULL */
    cJSON *r = cJSON_AddArrayToObject(o, "required");
    json_add(r, NULL, cJSON_CreateString(key));
    cJSON_AddFalseToObject(o, "additionalProperties");
    return o;
}

/* Move schema s (owned; consumed) of member i under defs as a<i>__root and
 * its own $defs/definitions as a<i>_<name>, rewriting its $refs; ref
 * receives "#/$defs/a<i>__root". */
static int relocate(cJSON *s, int i, cJSON *defs, char *ref, size_t ref_size)
{
    int rc;
    static const char *const def_keys[] = { "$defs", "definitions" };
    for (int k = 0; k < 2 && cJSON_IsObject(s); k++) {
        cJSON *d = cJSON_DetachItemFromObjectCaseSensitive(s, def_keys[k]);
        while (d && d->child) {
            cJSON *item = cJSON_DetachItemViaPointer(d, d->child);
            char key[512];
            snprintf(key, sizeof key, "a%d_%s", i, item->string ? item->string : "");
            if ((rc = rewrite_refs(item, i))) {
                cJSON_Delete(item);
                cJSON_Delete(d);
                cJSON_Delete(s);
                return rc;
            }
            json_add(defs, key, item);
        }
        cJSON_Delete(d);
    }
    if ((rc = rewrite_refs(s, i))) {
        cJSON_Delete(s);
        return rc;
    }
    char key[64];
    snprintf(key, sizeof key, "a%d__root", i);
    snprintf(ref, ref_size, "#/$defs/%s", key);
    json_add(defs, key, s);
    return PS_OK;
}

int grammar_tools_schema(const char *tools_json, size_t len, char **schema_out)
{
    *schema_out = NULL;
    int rc = PS_OK;
    long f0 = json_alloc_failures();
    cJSON *tools = cJSON_ParseWithLength(tools_json, len);
    cJSON *root = cJSON_CreateObject();
    if (!tools || !root) {
        rc = tools || json_alloc_failures() != f0 ? ps_error_set(PS_ENOMEM, "out of memory")
                                                  : ps_error_set(PS_EFORMAT, "tools schema: not valid JSON");
        goto done;
    }
    if (!cJSON_IsArray(tools) || !cJSON_GetArraySize(tools)) {
        rc = ps_error_set(PS_EINVAL, "tools schema: expected a non-empty array of {name, parameters}");
        goto done;
    }
    cJSON *defs = cJSON_AddObjectToObject(root, "$defs");
    cJSON *any = cJSON_AddArrayToObject(root, "anyOf");
    int i = 0;
    for (cJSON *t = tools->child; t; t = t->next, i++) {
        cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
        cJSON *params = cJSON_GetObjectItemCaseSensitive(t, "parameters");
        if (!cJSON_IsString(name) || !name->valuestring[0]) {
            rc = ps_error_set(PS_EINVAL, "tools schema: tool %d has no \"name\"", i);
            goto done;
        }
        cJSON *s = params ? cJSON_Duplicate(params, 1) : cJSON_CreateObject();
        if (!s) {
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto done;
        }
        if (!cJSON_IsObject(s)) {
            cJSON_Delete(s);
            rc = ps_error_set(PS_EINVAL, "tools schema: tool '%s': parameters must be a schema object",
                              name->valuestring);
            goto done;
        }
        if (!params) {
            cJSON_AddStringToObject(s, "type", "object");
            cJSON_AddObjectToObject(s, "properties");
        }
        char ref[96];
        if ((rc = relocate(s, i, defs, ref, sizeof ref)))
            goto done;
        cJSON *call = cJSON_CreateObject();
        cJSON_AddStringToObject(call, "type", "object");
        cJSON *p = cJSON_AddObjectToObject(call, "properties");
        cJSON *nm = cJSON_AddObjectToObject(p, "name");
        cJSON_AddStringToObject(nm, "const", name->valuestring);
        cJSON *args = cJSON_AddObjectToObject(p, "arguments");
        cJSON_AddStringToObject(args, "$ref", ref);
        cJSON *req = cJSON_AddArrayToObject(call, "required");
        json_add(req, NULL, cJSON_CreateString("name"));
        json_add(req, NULL, cJSON_CreateString("arguments"));
        cJSON_AddFalseToObject(call, "additionalProperties");
        json_add(any, NULL, call);
    }
    *schema_out = cJSON_PrintUnformatted(root);
    if (!*schema_out || json_alloc_failures() != f0) {
        free(*schema_out);
        *schema_out = NULL;
        rc = ps_error_set(PS_ENOMEM, "out of memory");
    }
done:
    cJSON_Delete(tools);
    cJSON_Delete(root);
    return rc;
}

int grammar_action_schema(const char *registry_json, size_t len, char **schema_out)
{
    *schema_out = NULL;
    int rc = PS_OK;
    long f0 = json_alloc_failures();
    cJSON *reg = cJSON_ParseWithLength(registry_json, len);
    cJSON *root = cJSON_CreateObject();
    if (!reg || !root) {
        rc = reg || json_alloc_failures() != f0 ? ps_error_set(PS_ENOMEM, "out of memory")
                                                : ps_error_set(PS_EFORMAT, "action schema: registry is not valid JSON");
        goto done;
    }
    if (!cJSON_IsArray(reg) || !cJSON_GetArraySize(reg)) {
        rc = ps_error_set(PS_EINVAL, "action schema: registry must be a non-empty array of {name, input_schema}");
        goto done;
    }
    cJSON *defs = cJSON_AddObjectToObject(root, "$defs");
    cJSON *any = cJSON_AddArrayToObject(root, "anyOf");
    cJSON *branches = cJSON_CreateArray();
    int i = 0;
    for (cJSON *a = reg->child; a; a = a->next, i++) {
        cJSON *name = cJSON_GetObjectItemCaseSensitive(a, "name");
        cJSON *in = cJSON_GetObjectItemCaseSensitive(a, "input_schema");
        if (!cJSON_IsString(name) || !name->valuestring[0]) {
            cJSON_Delete(branches);
            rc = ps_error_set(PS_EINVAL, "action schema: registry entry %d has no \"name\"", i);
            goto done;
        }
        cJSON *s = in ? cJSON_Duplicate(in, 1) : cJSON_CreateObject();
        if (!s) {
            cJSON_Delete(branches);
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto done;
        }
        if (!cJSON_IsObject(s) && !cJSON_IsBool(s)) {
            cJSON_Delete(s);
            cJSON_Delete(branches);
            rc = ps_error_set(PS_EINVAL, "action schema: agent '%s': input_schema must be a schema object",
                              name->valuestring);
            goto done;
        }
        char ref[96];
        if ((rc = relocate(s, i, defs, ref, sizeof ref))) {
            cJSON_Delete(branches);
            goto done;
        }

        cJSON *call = cJSON_CreateObject();
        cJSON_AddStringToObject(call, "type", "object");
        cJSON *p = cJSON_AddObjectToObject(call, "properties");
        json_add(p, "id", id_schema());
        cJSON *to = cJSON_AddObjectToObject(p, "to");
        cJSON_AddStringToObject(to, "const", name->valuestring);
        cJSON *args = cJSON_AddObjectToObject(p, "args");
        cJSON_AddStringToObject(args, "$ref", ref);
        json_add(p, "after", id_list(0));
        cJSON *req = cJSON_AddArrayToObject(call, "required");
        json_add(req, NULL, cJSON_CreateString("id"));
        json_add(req, NULL, cJSON_CreateString("to"));
        json_add(req, NULL, cJSON_CreateString("args"));
        cJSON_AddFalseToObject(call, "additionalProperties");
        json_add(branches, NULL, call);
    }
    cJSON *calls = cJSON_CreateObject();
    cJSON_AddStringToObject(calls, "type", "array");
    cJSON_AddNumberToObject(calls, "minItems", 1);
    cJSON *items = cJSON_AddObjectToObject(calls, "items");
    json_add(items, "anyOf", branches);
    json_add(any, NULL, single_key("calls", calls));
    cJSON *t = cJSON_CreateObject();
    cJSON_AddTrueToObject(t, "const");
    json_add(any, NULL, single_key("wait", t));
    json_add(any, NULL, single_key("cancel", id_list(1)));
    cJSON *fin = cJSON_CreateObject();
    cJSON_AddStringToObject(fin, "type", "object");
    cJSON *fp = cJSON_AddObjectToObject(fin, "properties");
    cJSON *ans = cJSON_AddObjectToObject(fp, "answer");
    cJSON_AddStringToObject(ans, "type", "string");
    json_add(fp, "uses", id_list(0));
    cJSON *freq = cJSON_AddArrayToObject(fin, "required");
    json_add(freq, NULL, cJSON_CreateString("answer"));
    cJSON_AddFalseToObject(fin, "additionalProperties");
    json_add(any, NULL, single_key("final", fin));
    *schema_out = cJSON_PrintUnformatted(root);
    if (!*schema_out || json_alloc_failures() != f0) {
        free(*schema_out);
        *schema_out = NULL;
        rc = ps_error_set(PS_ENOMEM, "out of memory");
    }
done:
    cJSON_Delete(reg);
    cJSON_Delete(root);
    return rc;
}
