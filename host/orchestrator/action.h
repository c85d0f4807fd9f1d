/* action.h - incremental parser for the orchestrator's action JSON
 * (proto/action.schema.json):
 *   {"calls":[{"id","to","args","after"?}, ...]}  {"wait":true}
 *   {"cancel":["c3"]}   {"final":{"answer":..., "uses":["c1"]}}
 *
 * Text is fed as the model decodes it.  Each element of the top-level
 * "calls" array is handed to the callback the moment its closing brace
 * arrives, so the executor can start it while decoding continues.  The
 * parser tracks only lexical structure (strings, escapes, nesting); the
 * complete document is parsed with cJSON at the end.
 */
#ifndef PS_ORCH_ACTION_H
#define PS_ORCH_ACTION_H

#include <stddef.h>
#include <cjson/cJSON.h>

#define ACTION_MAX_BYTES (1u << 20)
#define ACTION_MAX_DEPTH 64

struct action_parser;

/* `call` is borrowed for the duration of the callback. */
typedef void (*action_call_fn)(void *ud, const cJSON *call);

struct action_parser *action_parser_new(action_call_fn cb, void *ud);
void action_parser_free(struct action_parser *p);

/* Feed more text.  Returns PS_OK, or PS_EFORMAT when the text cannot be the
 * start of an action object (ps_error_set says why).  Text after the root
 * object closes is ignored. */
int action_parser_feed(struct action_parser *p, const char *text, size_t n);

/* The text fed so far (borrowed, NUL-terminated; valid until the next feed
 * or free). */
const char *action_parser_text(const struct action_parser *p, size_t *len);

/* 1 once the root object has closed. */
int action_parser_complete(const struct action_parser *p);

/* Parse and check the whole action.  Returns PS_OK and *action (caller
 * frees), or PS_EFORMAT with a message. */
int action_parser_finish(struct action_parser *p, cJSON **action);

/* Check an action object as proto/action.schema.json does at the action's
 * level: exactly one of calls (a non-empty list), wait (true), cancel (a
 * non-empty list of call ids), final ({"answer": string, "uses"?: call
 * ids}), beside an optional "thought" string; no other key.  The calls'
 * items are checked by the executor, one by one: a malformed call becomes
 * `rejected` feedback rather than refusing the whole action.  PS_OK or
 * PS_EINVAL with the message in err. */
int action_check(const cJSON *action, char *err, size_t errlen);

#endif /* PS_ORCH_ACTION_H */
