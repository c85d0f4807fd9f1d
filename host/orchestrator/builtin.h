/* builtin.h - safe builtin tools, run in-process on the event loop.
 *
 * No tool executes code or touches the filesystem or network:
 *   calculator  {"expression": str}  -> {"value": number}
 *               arithmetic parser (+ - * / % ^, parentheses, unary minus,
 *               pi, e, sqrt abs sin cos tan asin acos atan exp ln log log10
 *               log2 floor ceil round min max pow); never eval.
 *   time        {"utc_offset_minutes"?: int} -> {"unix": n, "iso8601": str}
 *   text_stats  {"text": str} -> {"chars","bytes","words","lines","sentences"}
 *   echo        any object -> the same object (tests, demos)
 */
#ifndef PS_ORCH_BUILTIN_H
#define PS_ORCH_BUILTIN_H

#include <stddef.h>
#include <cjson/cJSON.h>

/* 1 when `tool` names a builtin. */
int builtin_exists(const char *tool);

/* 1 when the same args always give the same result (all but time). */
int builtin_deterministic(const char *tool);

/* The input schema of a builtin as a new cJSON (caller frees), NULL if
 * unknown. */
cJSON *builtin_schema(const char *tool);

/* Run a builtin.  On success returns PS_OK and *result (caller frees with
 * cJSON_Delete); on bad input returns PS_EINVAL with a message in err. */
int builtin_call(const char *tool, const cJSON *args, cJSON **result, char *err, size_t errlen);

/* Evaluate an arithmetic expression (the calculator).  PS_OK or PS_EINVAL
 * with a message naming the position of the problem. */
int builtin_calc(const char *expr, double *out, char *err, size_t errlen);

#endif /* PS_ORCH_BUILTIN_H */
