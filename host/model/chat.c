/* chat.c - native rendering of recognised chat-template families.
 *
 * Recognition (chat_template_from_text):
 *   - text containing "<|im_start|>" is ChatML.  A literal default system
 *     turn in the template ("<|im_start|>system\n...<|im_end|>", with a real
 *     newline or a Jinja "\n" escape) is used when the first message is not
 *     a system message: SmolLM2 ("You are a helpful AI assistant named
 *     SmolLM, trained by Hugging Face"), Qwen2 ("You are a helpful
 *     assistant."), Qwen2.5 ("You are Qwen, created by Alibaba Cloud. ...").
 *     Templates that wrap tool results in <tool_response> (Qwen2.5) render
 *     tool messages that way: consecutive tool messages share one user turn.
 *   - anything else is PS_EUNSUPPORTED.
 */
#include "chat.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

struct chat_template {
    const char *name;
    char       *default_system; /* NULL: none */
    bool        tool_response;  /* Qwen2.5-style tool turns */
};

static const char *const role_names[] = { "system", "user", "assistant", "tool" };

int chat_role_parse(const char *s, enum chat_role *out)
{
    for (int i = 0; i < 4; i++) {
        if (s && strcmp(s, role_names[i]) == 0) {
            *out = (enum chat_role)i;
            return PS_OK;
        }
    }
    return ps_error_set(PS_EINVAL, "chat: unknown role '%s' (system, user, assistant, tool)", s ? s : "(null)");
}

/* Default system text of a ChatML template, malloc'd, or NULL. */
static char *find_default_system(const char *text)
{
    static const char marker[] = "<|im_start|>system";
    for (const char *p = strstr(text, marker); p; p = strstr(p + 1, marker)) {
        const char *q = p + sizeof marker - 1;
        if (*q == '\n')
            q += 1;
        else if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *end = strstr(q, "<|im_end|>");
        /* only a literal: no Jinja expression between the markers */
        if (!end || end == q || memchr(q, '{', (size_t)(end - q)) || memchr(q, '\'', (size_t)(end - q)))
            continue;
        char *out = malloc((size_t)(end - q) + 1);
        if (!out)
            return NULL;
        size_t o = 0;
        for (const char *c = q; c < end; c++) {
            if (c[0] == '\\' && c + 1 < end && c[1] == 'n') {
                out[o++] = '\n';
                c++;
            } else {
                out[o++] = *c;
            }
        }
        out[o] = '\0';
        return out;
    }
    return NULL;
}

int chat_template_from_text(const char *text, chat_template **out)
{
    *out = NULL;
    if (!text)
        return ps_error_set(PS_EINVAL, "chat: NULL template");
    if (!strstr(text, "<|im_start|>")) {
        const char *hint = strstr(text, "<|start_header_id|>") ? " (Llama-3 family)"
                           : strstr(text, "<start_of_turn>")   ? " (Gemma family)"
                           : strstr(text, "[INST]")            ? " (Mistral/Llama-2 family)"
                                                               : "";
        return ps_error_set(PS_EUNSUPPORTED, "chat: template not recognised%s: only ChatML "
                            "(<|im_start|>role ... <|im_end|>) is supported", hint);
    }
    chat_template *t = calloc(1, sizeof *t);
    if (!t)
        return ps_error_set(PS_ENOMEM, "chat: out of memory");
    t->name = "chatml";
    t->default_system = find_default_system(text);
    t->tool_response = strstr(text, "<tool_response>") != NULL;
    *out = t;
    return PS_OK;
}

int chat_template_from_gguf(const gguf_file *f, chat_template **out)
{
    const char *text;
    int rc = gguf_get_str(f, "tokenizer.chat_template", &text, NULL);
    if (rc == PS_ENOTFOUND) {
        ps_error_clear();
        return chat_template_from_text("<|im_start|>", out);
    }
    if (rc)
        return rc;
    return chat_template_from_text(text, out);
}

void chat_template_free(chat_template *t)
{
    if (!t)
        return;
    free(t->default_system);
    free(t);
}

const char *chat_template_name(const chat_template *t)
{
    return t->name;
}

struct sbuf {
    char             *p;
    size_t            n, cap;
    struct text_span *spans;
    size_t            n_spans, cap_spans;
};

static int sb_put(struct sbuf *b, const char *s)
{
    size_t len = strlen(s);
    if (len > UINT32_MAX - 1 - b->n)
        return PS_ERANGE;
    if (b->n + len + 1 > b->cap) {
        size_t cap = (b->n + len + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return PS_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len + 1);
    b->n += len;
    return PS_OK;
}

/* Template markup: appended and recorded as a span (merged with the
 * previous span when they touch). */
static int sb_mark(struct sbuf *b, const char *s)
{
    const size_t begin = b->n;
    int rc = sb_put(b, s);
    if (rc || b->n == begin)
        return rc;
    if (b->n_spans && b->spans[b->n_spans - 1].end == begin) {
        b->spans[b->n_spans - 1].end = (uint32_t)b->n;
        return PS_OK;
    }
    if (b->n_spans == b->cap_spans) {
        size_t cap = b->cap_spans ? b->cap_spans * 2 : 16;
        struct text_span *p = realloc(b->spans, cap * sizeof *p);
        if (!p)
            return PS_ENOMEM;
        b->spans = p;
        b->cap_spans = cap;
    }
    b->spans[b->n_spans++] = (struct text_span){ (uint32_t)begin, (uint32_t)b->n };
    return PS_OK;
}

static int sb_turn(struct sbuf *b, const char *role, const char *content)
{
    int rc;
    if ((rc = sb_mark(b, "<|im_start|>")) || (rc = sb_mark(b, role)) || (rc = sb_mark(b, "\n")) ||
        (rc = sb_put(b, content)) || (rc = sb_mark(b, "<|im_end|>\n")))
        return rc;
    return PS_OK;
}

void chat_prompt_free(struct chat_prompt *p)
{
    if (!p)
        return;
    free(p->text);
    free(p->markup);
    *p = (struct chat_prompt){ 0 };
}

int chat_template_render(const chat_template *t, const struct chat_message *msgs,
                         size_t n_msgs, int add_generation_prompt, struct chat_prompt *out)
{
    struct sbuf b = { 0 };
    int rc = sb_put(&b, "");
    *out = (struct chat_prompt){ 0 };
    if (rc)
        goto fail;
    for (size_t i = 0; i < n_msgs; i++) {
        if ((unsigned)msgs[i].role > CHAT_TOOL || !msgs[i].content) {
            free(b.p);
            return ps_error_set(PS_EINVAL, "chat: message %zu has a bad role or no content", i);
        }
    }
    if (t->default_system && (n_msgs == 0 || msgs[0].role != CHAT_SYSTEM)) {
        /* SmolLM2's template adds it inside the message loop: not for an
         * empty conversation.  Qwen's adds it regardless. */
        if ((n_msgs > 0 || t->tool_response) && (rc = sb_turn(&b, "system", t->default_system)))
            goto fail;
    }
    for (size_t i = 0; i < n_msgs; i++) {
        const struct chat_message *m = &msgs[i];
        if (m->role == CHAT_TOOL && t->tool_response) {
            bool first = i == 0 || msgs[i - 1].role != CHAT_TOOL;
            bool last = i + 1 == n_msgs || msgs[i + 1].role != CHAT_TOOL;
            if ((first && (rc = sb_mark(&b, "<|im_start|>user"))) ||
                (rc = sb_mark(&b, "\n<tool_response>\n")) || (rc = sb_put(&b, m->content)) ||
                (rc = sb_mark(&b, "\n</tool_response>")) || (last && (rc = sb_mark(&b, "<|im_end|>\n"))))
                goto fail;
            continue;
        }
        if ((rc = sb_turn(&b, role_names[m->role], m->content)))
            goto fail;
    }
    if (add_generation_prompt && (rc = sb_mark(&b, "<|im_start|>assistant\n")))
        goto fail;
    *out = (struct chat_prompt){ .text = b.p, .len = b.n, .markup = b.spans, .n_markup = b.n_spans };
    return PS_OK;
fail:
    free(b.p);
    free(b.spans);
    return rc == PS_ERANGE ? ps_error_set(rc, "chat: rendered prompt over 4 GiB")
                           : ps_error_set(rc, "chat: out of memory");
}

int chat_prompt_append_text(struct chat_prompt *p, const char *text)
{
    size_t n = strlen(text);
    if (n > UINT32_MAX - 1 - p->len)
        return ps_error_set(PS_ERANGE, "chat: rendered prompt over 4 GiB");
    char *q = realloc(p->text, p->len + n + 1);
    if (!q)
        return ps_error_set(PS_ENOMEM, "chat: out of memory");
    memcpy(q + p->len, text, n + 1);
    p->text = q;
    p->len += n;
    return PS_OK;
}
