/* json_alloc.h - cJSON's allocator for the process (orchestrator, server,
 * grammar): malloc and free, plus what cJSON 1.7.15 does not tell: whether
 * an allocation failed.  A parse
 * that returns NULL met either bad text or no memory; an agent's reply
 * must be reported as parse_error only for the first.  Tests can also make
 * the n-th cJSON allocation on their thread fail. */
#ifndef PS_ORCH_JSON_ALLOC_H
#define PS_ORCH_JSON_ALLOC_H

#include <stddef.h>
#include <cjson/cJSON.h>

/* Install the allocator (cJSON_InitHooks), once per process; safe to call
 * from any thread, any number of times.  Memory cJSON allocated before is
 * freed the same way (free). */
void   json_alloc_install(void);
/* Parse n bytes of s, text from outside (an agent's reply), strictly: it
 * must be UTF-8 (RFC 8259) and no string may hold a NUL character (a raw
 * 0 byte or \u0000, which cJSON would end the string at, silently
 * cutting it).  NULL with *oom set when memory ran out, NULL with *oom
 * clear when the text is not JSON or is refused (json_parse_refusal()
 * then says why). */
cJSON *json_parse_oom(const char *s, size_t n, int *oom);
/* Why the thread's last json_parse_oom refused text that cJSON alone would
 * have taken ("invalid UTF-8 at byte 12", "a NUL character (\u0000) in a
 * string at byte 40"), or "" when it did not. */
const char *json_parse_refusal(void);
/* The same, with cJSON_ParseWithLengthOpts's end pointer (no trailing-
 * text check). */
cJSON *json_parse_end_oom(const char *s, size_t n, const char **end, int *oom);
/* Add item to `to`: under key (copied) in an object, or appended to an
 * array when key is NULL.  1 when added; 0 when item is NULL (its creation
 * failed) or the key could not be copied, item then freed - so a builder
 * can chain adds with && and drop the whole object on the first 0. */
int    json_add(cJSON *to, const char *key, cJSON *item);
/* cJSON allocations that failed on this thread so far: a builder that
 * reads it before and after knows whether anything it added (or printed)
 * was dropped, without checking every call. */
long   json_alloc_failures(void);
/* Count a failure of the builder's own (a malloc outside cJSON, say the
 * copy of a text it was to add) among json_alloc_failures. */
void   json_alloc_failed(void);
/* Tests: the n-th cJSON allocation from now on this thread fails (0: none
 * fails); json_alloc_count: cJSON allocations made on this thread. */
void   json_alloc_fail_after(long n);
long   json_alloc_count(void);

#endif /* PS_ORCH_JSON_ALLOC_H */
