/* jschema.h - validation of JSON values against the JSON Schema subset the
 * agent protocol uses.
 *
 * Supported keywords: type (string or array of type names: object, array,
 * string, number, integer, boolean, null), properties, required,
 * additionalProperties (boolean or schema), items (one schema), enum, const,
 * minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers),
 * minLength, maxLength, minItems, maxItems, pattern-free string checks,
 * anyOf / oneOf (lists of schemas).  description, title, default, examples
 * and $schema are accepted and ignored.  Any other keyword makes
 * jschema_check() fail, so an agent config never silently relies on a
 * constraint that is not enforced.
 *
 * Nesting is limited to JSCHEMA_MAX_DEPTH levels (value and schema) so a
 * hostile document cannot exhaust the stack.
 */
#ifndef PS_ORCH_JSCHEMA_H
#define PS_ORCH_JSCHEMA_H

#include <stddef.h>
#include <cjson/cJSON.h>

#define JSCHEMA_MAX_DEPTH 64

/* Check that `schema` uses only the supported subset and is well formed.
 * Returns PS_OK or PS_EINVAL with a message naming the offending location
 * (relative to `where`, e.g. "agents[2].input_schema.properties.q.type")
 * written to err (always NUL-terminated). */
int jschema_check(const cJSON *schema, const char *where, char *err, size_t errlen);

/* Validate `value` against `schema` (assumed checked).  Returns PS_OK or
 * PS_EINVAL with the first violation in err, e.g. "args.q: expected string,
 * got number".  `where` names the root of value ("args"). */
int jschema_validate(const cJSON *schema, const cJSON *value, const char *where,
                     char *err, size_t errlen);

/* 1 when `schema` (assumed checked), at the position `path` names inside
 * the value it validates, admits a string but not the JSON type of `value`;
 * else 0 (also when `value` is a string, or nothing constrains that
 * position's type).  The executor renders a whole-string {{ref}} argument as
 * text exactly then.
 *
 * path[0..n-1] are the steps from the root: an object member's key, or NULL
 * for an array element.  A step follows the member's `properties` schema,
 * else `additionalProperties`, and `items` for an element (as
 * jschema_validate does).  The types a schema admits are those of `type`
 * intersected with those of `enum` / `const` values; `anyOf` and `oneOf`
 * admit what any branch admits at that position (a branch that does not
 * constrain it admits every type), intersected with the rest of the schema.
 * "integer" admits integral numbers only; false admits nothing.  Paths
 * longer than JSCHEMA_MAX_DEPTH steps are not followed (0). */
int jschema_wants_text(const cJSON *schema, const char *const *path, int n, const cJSON *value);

#endif /* PS_ORCH_JSCHEMA_H */
