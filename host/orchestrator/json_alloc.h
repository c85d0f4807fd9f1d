/* json_alloc.h - cJSON's allocator for the process (orchestrator, server,
 * grammar): malloc and free, plus what cJSON 1.7.15 does not tell: whether
 * an allocation failed.  A parse
 * that returns NULL met either bad text or no memory; an agent's reply
 * must be reported as parse_error only for the first.  Tests can also make
 * the n-th cJSON allocation on their thread fail. */
#ifndef PS_ORCH_JSON_ALLOC_H
#define PS_ORCH_JSON_ALLOC_H

#include <stdbool.h>
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
/* The two checks json_parse_oom makes, for callers that report them their
 * own way (the server's 400s name the JSON path).
 * utf8_invalid_at: the offset of the first byte of s[0..len) that does not
 * begin a valid UTF-8 sequence (strict: no overlong forms, surrogates or
 * code points past U+10FFFF; a sequence cut by the end is invalid), or len.
 * json_nul_find: a NUL in JSON text s[0..len): true with *at its offset and
 * *in_string whether a string holds it.  In a string, a NUL is a raw 0 byte
 * or a \u0000 escape (*at: its backslash); outside every string only a raw
 * 0 byte (which cJSON skips as whitespace: JSON allows none there).  The
 * first raw 0 byte outside the strings is reported if there is one (the
 * text is not JSON), else the first NUL in a string.  In a string each
 * backslash takes the next byte with it (a 0 byte excepted), so an escaped
 * backslash never starts an escape; \u0000 outside a string is not JSON
 * either, and is not reported (cJSON refuses it). */
size_t utf8_invalid_at(const char *s, size_t len);
static inline bool utf8_valid(const char *s, size_t len) { return utf8_invalid_at(s, len) == len; }
bool   json_nul_find(const char *s, size_t len, size_t *at, bool *in_string);
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
 * fails); json_alloc_count: cJSON allocations made on this thread.  The
 * JSON printer's buffers (jbuf.h) count as cJSON allocations here: they
 * ask json_alloc_fail_now() first, which counts one and returns 1 when it
 * is the one to fail. */
int    json_alloc_fail_now(void);
void   json_alloc_fail_after(long n);
long   json_alloc_count(void);

#endif /* PS_ORCH_JSON_ALLOC_H */
