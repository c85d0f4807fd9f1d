/* openai.h - the OpenAI-compatible request schema: parse and validate a
 * /v1/chat/completions or /v1/completions body into generation parameters,
 * and OpenAI-style error bodies.
 *
 * Error contract: every rejected body yields an api_error with the HTTP
 * status (400 bad request, 404 unknown model), the OpenAI error type, a
 * message that names the offending parameter, the parameter path in
 * `param` ("messages[1].content", "temperature") or "" and a short `code`.
 */
#ifndef PS_SERVER_OPENAI_H
#define PS_SERVER_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "../engine/sampler.h"
#include "../grammar/grammar.h"
#include "../model/chat.h"

struct api_error {
    int         status;       /* HTTP status                                   */
    const char *type;         /* "invalid_request_error", "not_found_error" ... */
    char        message[512];
    char        param[96];    /* "" = null                                     */
    const char *code;         /* NULL = null                                   */
};

/* Fill *e and return e->status. */
int api_error_set(struct api_error *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* {"error":{"message","type","param","code"}}; malloc'd, caller frees;
 * NULL when memory ran out (never a body with a member missing): send
 * API_ERROR_OOM_BODY then. */
char *api_error_json(const struct api_error *e);
#define API_ERROR_OOM_BODY \
    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}"

/* The HTTP reason phrase of a status the server sends; NULL for others. */
const char *api_http_reason(int status);

/* Most choices one request may ask for ("n"). */
#define OPENAI_MAX_N 128
/* Tool calls in one reply with parallel_tool_calls (true by default). */
#define OPENAI_MAX_TOOL_CALLS 16

struct gen_params {
    bool     chat;
    int32_t  n;               /* "n": choices, 1..OPENAI_MAX_N (default 1) */
    bool     stream;
    bool     include_usage;   /* stream_options.include_usage                */
    char    *prompt;          /* malloc'd: rendered chat or completion text  */
    struct text_span *prompt_markup; /* malloc'd, chat only: the template's
                                 markup in prompt, where special-token text
                                 is recognised (chat.h)                  */
    size_t   n_prompt_markup;
    int32_t *prompt_ids;      /* malloc'd: completion prompt given as ids    */
    int32_t  n_prompt_ids;
    int32_t  max_tokens;      /* 0: until the context is full                */
    struct sampler_params sp;
    char   **stop;            /* malloc'd [n_stop] strings                   */
    int32_t  n_stop;
    int32_t  priority;        /* extension "priority": integer in
                                 [-1000000, 1000000], larger runs first and
                                 may preempt lower running requests
                                 (default 0, or the API key's tenant's)  */
    bool     has_priority;    /* the body set "priority"                     */
    bool     ignore_eos;      /* extension                                   */
    bool     logprobs;        /* completions "logprobs" 0..5, or chat's
                                 "logprobs": true: the sampled tokens'
                                 logprobs                                */
    struct sampler_bias *logit_bias; /* malloc'd [n_logit_bias]: "logit_bias"
                                 {"token id": bias in [-100, 100]}    */
    int32_t  n_logit_bias;
    int32_t  top_logprobs;    /* with logprobs: alternatives per token,
                                 completions' "logprobs" N (0..5) or chat's
                                 "top_logprobs" (0..20, only with
                                 "logprobs": true); else 0               */
    /* Constrained output (response_format json_schema / json_object, tools
     * with tool_choice "required" or a named function): */
    grammar *grammar;         /* a reference, or NULL; engine_request gets
                                 gen_params_constraint(p) (the engine takes
                                 its own reference on submit)              */
    bool     grammar_lazy;    /* tool_choice "auto": text or a tool call    */
    struct openai_output *output; /* tool calls: shapes the reply; NULL for
                                 plain content.  Take it (set the member to
                                 NULL) to keep it past gen_params_free.   */
};

/* The engine_request.constraint of p: none, the grammar, or its lazy form
 * (grammar_constraint_lazy) for tool_choice "auto". */
struct token_constraint gen_params_constraint(const struct gen_params *p);

/* What constrained output needs from the server (openai_parse_ex). */
struct openai_options {
    grammar_vocab *vocab;      /* the model's, built once at start; NULL: the
                                  constrained-output fields answer 400      */
    int32_t max_compile_ms;    /* per schema; 0 = 5000 (PS_ERANGE -> 400)  */
};

/* The NUL check of every route that parses a JSON request body (chat,
 * completions, POST /v1/tasks), run on the bytes cJSON parsed,
 * body[0..len).  cJSON ends a string at a NUL, so a string holding one
 * (escaped \u0000, or a raw 0 byte) would reach the handlers cut short:
 * such a body is refused instead.  An escape starts at a backslash that is
 * not itself escaped ("\\u0000" is a backslash and the text u0000, not a
 * NUL).  Returns 0, or 400 with *err filled: code "unsupported_value",
 * `param` the path of the string holding the first NUL ("messages[0].content",
 * "stop[1]"; a key is named as sent; "" = null when it cannot be named), a
 * message saying NUL characters (\u0000) are not supported in strings.
 * A raw 0 byte outside every string (cJSON skips it as whitespace) makes
 * the body malformed JSON instead: 400 "invalid_json", param null, whatever
 * the strings hold.  A string whose value is JSON parsed again (an
 * assistant message's tool_calls[j].function.arguments) gets the same
 * check on that value where it is parsed (openai.c append_tool_calls). */
int api_json_nul_check(const char *body, size_t len, struct api_error *err);

/* The JSON body of chat, completions and POST /v1/tasks, body[0..len):
 * strict UTF-8, one JSON value and nothing after it but JSON whitespace,
 * an object, no NUL in any string (api_json_nul_check).  Returns 0 with
 * *out the parsed object (cJSON_Delete it), or 400 with *err filled and
 * *out NULL: "invalid_utf8", or "invalid_json" naming the byte where the
 * parse failed or where unexpected data follows the value (`{"a":1} x`
 * is malformed JSON, not the object before it), or the NUL check's error. */
int api_json_body_parse(const char *body, size_t len, struct cJSON **out, struct api_error *err);

/* Copy of s[0..len) with every invalid UTF-8 byte, and every NUL byte (a
 * C string, and so a cJSON string, would end there and drop the rest),
 * replaced by U+FFFD; malloc'd, NUL-terminated; NULL when out of memory. */
char *utf8_sanitize(const char *s, size_t len, size_t *out_len);

/* Parse a request body.  `model_names` lists the accepted model names
 * (NULL-terminated); the chat template renders messages.  Returns 0, or the
 * HTTP status with *err filled (nothing to free then). */
int openai_parse(const char *body, size_t len, bool chat, const char *const *model_names,
                 const chat_template *tmpl, int32_t n_vocab, struct gen_params *out,
                 struct api_error *err);
/* The same with constrained output: `response_format` {"type": "text" |
 * "json_object" | "json_schema", "json_schema": {"name", "schema",
 * "strict", "description"}} (chat and completions) and, on chat, `tools`
 * (type "function"; name, description, parameters) with `tool_choice`
 * "auto" (the default: the first token decides between a text answer and a
 * call, grammar_constraint_lazy), "required", {"type": "function",
 * "function": {"name"}} or "none" (tools ignored).  With
 * `parallel_tool_calls` true (the default) a reply carries 1 to
 * OPENAI_MAX_TOOL_CALLS calls, one compact JSON object per line (the
 * grammar's document sequence, grammar_options.max_docs); false: exactly
 * one.  Every call is one of the allowed tools (only the named one when
 * tool_choice names it) with its own parameters.  The legacy `functions` /
 * `function_call` are 400 "not supported".
 * A schema the grammar compiler
 * refuses is a 400 whose message is the compiler's (naming the keyword),
 * param "response_format" or "tools".  Schemas are compiled here (cached by
 * text in opt->vocab).  For tools a system message describing them is added
 * to the prompt, and the output is {"name": ..., "arguments": {...}}, calls
 * separated by '\n'. */
int openai_parse_ex(const char *body, size_t len, bool chat, const char *const *model_names,
                    const chat_template *tmpl, int32_t n_vocab, const struct openai_options *opt,
                    struct gen_params *out, struct api_error *err);

/* ---- reply shaping: message content or tool_calls ----------------------------
 *
 * One openai_output per tool-call request (gen_params.output); every
 * function also takes NULL, meaning plain content.  Streaming:
 *   for each piece of text:  if (openai_output_delta(o, text, len, delta)) send it
 *   at the end:              finish = openai_output_finish(o, finish, delta)
 * Each call's deltas carry its position as index (0, 1, ...): the first
 * one id, type "function" and function.name, later ones
 * function.arguments fragments, which concatenate to the arguments JSON
 * text.  A delta normally holds one call; a piece of text spanning the end
 * of one call and the named start of the next holds one entry for each, in
 * order.  A call appears once its arguments begin.  Non-streaming, once
 * with the whole text:
 *   finish = openai_output_message(o, text, len, finish, message)
 * which adds "content" (null for calls) and "tool_calls", every call with
 * its own id.  finish_reason becomes "tool_calls" when the last call is
 * complete and the engine said "stop"; "length" stays "length" (the last
 * call's partial arguments as they are; a next call cut before its
 * arguments began is left out). */
struct openai_output;
bool        openai_output_delta(struct openai_output *o, const char *text, size_t len, cJSON *delta);
const char *openai_output_finish(struct openai_output *o, const char *finish, cJSON *delta);
const char *openai_output_message(struct openai_output *o, const char *text, size_t len,
                                  const char *finish, cJSON *message);
void        openai_output_free(struct openai_output *o); /* NULL-safe */
/* A fresh shaper of o's kind (tool_choice auto or not) with its own call
 * id, for another choice of the same request ("n" > 1); the caller frees
 * it.  NULL when o is NULL (plain content) or out of memory. */
struct openai_output *openai_output_another(const struct openai_output *o);

void gen_params_free(struct gen_params *p); /* NULL-safe; frees the members */

#endif /* PS_SERVER_OPENAI_H */
