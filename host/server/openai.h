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

#include "../engine/sampler.h"
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

/* {"error":{"message","type","param","code"}}; malloc'd, caller frees. */
char *api_error_json(const struct api_error *e);

struct gen_params {
    bool     chat;
    bool     stream;
    bool     include_usage;   /* stream_options.include_usage                */
    char    *prompt;          /* malloc'd: rendered chat or completion text  */
    int32_t *prompt_ids;      /* malloc'd: completion prompt given as ids    */
    int32_t  n_prompt_ids;
    int32_t  max_tokens;      /* 0: until the context is full                */
    struct sampler_params sp;
    char   **stop;            /* malloc'd [n_stop] strings                   */
    int32_t  n_stop;
    int32_t  priority;        /* extension: larger runs first (default 0)    */
    bool     ignore_eos;      /* extension                                   */
};

/* Check that body[0..len) is valid UTF-8 (strict). */
bool utf8_valid(const char *s, size_t len);

/* Copy of s[0..len) with every invalid UTF-8 byte replaced by U+FFFD;
 * malloc'd, NUL-terminated; NULL when out of memory. */
char *utf8_sanitize(const char *s, size_t len, size_t *out_len);

/* Parse a request body.  `model_names` lists the accepted model names
 * (NULL-terminated); the chat template renders messages.  Returns 0, or the
 * HTTP status with *err filled (nothing to free then). */
int openai_parse(const char *body, size_t len, bool chat, const char *const *model_names,
                 const chat_template *tmpl, int32_t n_vocab, struct gen_params *out,
                 struct api_error *err);

void gen_params_free(struct gen_params *p); /* NULL-safe; frees the members */

#endif /* PS_SERVER_OPENAI_H */
