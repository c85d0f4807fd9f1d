/* json_get.h - cJSON member lookup for the request paths (header-only;
 * for code that links cJSON: the orchestrator and the server). */
#ifndef PS_JSON_GET_H
#define PS_JSON_GET_H

#include <string.h>
#include <cjson/cJSON.h>

/* What cJSON_GetObjectItemCaseSensitive returns - the first member of
 * `object` named `key`, NULL when there is none or either is NULL - inline,
 * comparing a member's first byte before its whole name.  The executor's
 * loop looks up about 200 keys per task; the library call and its strcmp
 * per member were 15% of the loop's instructions (callgrind, 2026-11-29). */
static inline cJSON *json_get(const cJSON *object, const char *key)
{
    if (!object || !key)
        return NULL;
    for (cJSON *c = object->child; c; c = c->next)
        if (c->string && c->string[0] == key[0] && !strcmp(c->string, key))
            return c;
    return NULL;
}

/* Put `item` in `object` under `key`, a string literal (kept, never
 * copied; the item's own key is freed): it replaces the first member so
 * named, or is added.  Allocates nothing - cJSON_ReplaceItemInObject*
 * copies the key and, in cJSON 1.7.15, installs the item keyless when that
 * copy fails.  0; -1 when object or item is NULL (the item stays the
 * caller's). */
static inline int json_put_literal(cJSON *object, const char *key, cJSON *item)
{
    if (!object || !item)
        return -1;
    cJSON *old = json_get(object, key);
    if (!old)
        return cJSON_AddItemToObjectCS(object, key, item) ? 0 : -1;
    if (item->string && !(item->type & cJSON_StringIsConst))
        cJSON_free(item->string);
    item->string = (char *)key;
    item->type |= cJSON_StringIsConst;
    return cJSON_ReplaceItemViaPointer(object, old, item) ? 0 : -1;
}

#endif /* PS_JSON_GET_H */
