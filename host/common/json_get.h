/* json_get.h - cJSON member lookup for the request paths (header-only;
 * for code that links cJSON: the orchestrator and the server). */
#ifndef PS_JSON_GET_H
#define PS_JSON_GET_H

#include <string.h>
#include <cjson/cJSON.h>

/* Whether `item` is a member named `key`: its first byte compared before
 * the whole name. */
static inline int json_key_is(const cJSON *item, const char *key)
{
    return item->string && item->string[0] == key[0] && !strcmp(item->string, key);
}

/* The first member named `key` from `first` on (a member and its later
 * siblings), or NULL. */
static inline cJSON *json_get_from(const cJSON *first, const char *key)
{
    for (const cJSON *c = first; c && key; c = c->next)
        if (json_key_is(c, key))
            return (cJSON *)c;
    return NULL;
}

/* What cJSON_GetObjectItemCaseSensitive returns - the first member of
 * `object` named `key`, NULL when there is none or either is NULL -
 * inline.  The executor's loop looks up about 200 keys per task; the
 * library call and its strcmp per member were 15% of the loop's
 * instructions (callgrind, 2026-11-29). */
static inline cJSON *json_get(const cJSON *object, const char *key)
{
    return object ? json_get_from(object->child, key) : NULL;
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
