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

/* Render messages to prompt text; add_generation_prompt appends the
 * assistant header.  *out malloc'd, NUL-terminated, caller frees. */
int chat_template_apply(const chat_template *t, const struct chat_message *msgs,
                        size_t n_msgs, int add_generation_prompt, char **out);

/* Role from "system" / "user" / "assistant" / "tool"; PS_EINVAL otherwise. */
int chat_role_parse(const char *s, enum chat_role *out);

#endif /* PS_CHAT_H */
