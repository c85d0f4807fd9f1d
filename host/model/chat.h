/* chat.h - chat templates, selected from tokenizer.chat_template.
 *
 * paraserve does not run Jinja: it recognises template families by the
 * markers in the GGUF template and renders them natively.  Supported now:
 * ChatML ("<|im_start|>role\n...<|im_end|>\n"), used by SmolLM2 and Qwen,
 * incl. SmolLM2's default system prompt when the conversation has none.
 * A template that matches no family is PS_EUNSUPPORTED with a clear detail.
 */
#ifndef PS_CHAT_H
#define PS_CHAT_H

#include <stddef.h>

#include "gguf.h"
#include "tokenizer.h"

enum chat_role { CHAT_SYSTEM, CHAT_USER, CHAT_ASSISTANT, CHAT_TOOL };

struct chat_message {
    enum chat_role role;
    const char    *content; /* NUL-terminated UTF-8 */
};

typedef struct chat_template chat_template;

/* From the model's tokenizer.chat_template (ChatML when the key is absent). */
int  chat_template_from_gguf(const gguf_file *f, chat_template **out);
/* From template text, for tests and --chat-template. */
int  chat_template_from_text(const char *text, chat_template **out);
void chat_template_free(chat_template *t); /* NULL-safe */
const char *chat_template_name(const chat_template *t); /* "chatml", ... */

/* A rendered prompt: its text, and the byte ranges of it the template
 * itself wrote (turn markers, role names, separators), sorted and
 * disjoint.  Tokenize it with tokenizer_encode_spans(text, len, markup,
 * n_markup): special-token text inside a message (a user's, a tool's, an
 * agent's result) then stays plain text and cannot forge a turn. */
struct chat_prompt {
    char             *text; /* malloc'd, NUL-terminated */
    size_t            len;
    struct text_span *markup; /* malloc'd, [n_markup] */
    size_t            n_markup;
};

/* Render messages; add_generation_prompt appends the assistant header.
 * On success *out owns its arrays (chat_prompt_free); on failure *out is
 * zeroed. */
int chat_template_render(const chat_template *t, const struct chat_message *msgs,
                         size_t n_msgs, int add_generation_prompt, struct chat_prompt *out);
void chat_prompt_free(struct chat_prompt *p); /* NULL-safe; zeroes *p */

/* Append plain text (not markup) to a rendered prompt: a prefix the model
 * should continue from. */
int chat_prompt_append_text(struct chat_prompt *p, const char *text);

/* Role from "system" / "user" / "assistant" / "tool"; PS_EINVAL otherwise. */
int chat_role_parse(const char *s, enum chat_role *out);

#endif /* PS_CHAT_H */
