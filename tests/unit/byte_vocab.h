/* byte_vocab.h - a small byte-level grammar vocabulary (every byte, the
 * JSON pieces a tokenizer has whole, one end-of-generation token) and a
 * ChatML-like template: what the OpenAI layer needs for constrained output
 * (tools, response_format) without a model.  For tests and fuzzers. */
#ifndef PS_TEST_BYTE_VOCAB_H
#define PS_TEST_BYTE_VOCAB_H

#include <string.h>

#include "common/status.h"
#include "grammar/grammar.h"
#include "model/chat.h"

#define BYTE_VOCAB_BYTES 256

static const char *const byte_vocab_extra[] = {
    "{\"", "\":", "\",", "\"}", "\":\"", ", \"", "true", "false", "null", "name", "arguments",
    "  ", "\n", "123", "0.", "\\n", "\\\"", "<|im_end|>",
};
#define BYTE_VOCAB_N (BYTE_VOCAB_BYTES + (int32_t)(sizeof byte_vocab_extra / sizeof byte_vocab_extra[0]))

/* The template and the vocabulary (BYTE_VOCAB_N tokens, the last one the
 * end of generation); PS_OK, or the failing call's status. */
static inline int byte_vocab_make(chat_template **tmpl, grammar_vocab **vocab)
{
    int st = chat_template_from_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                                     "{% endfor %}", tmpl);
    if (st != PS_OK)
        return st;
    static char bytes[BYTE_VOCAB_BYTES];
    static const char *pieces[BYTE_VOCAB_N];
    static size_t lens[BYTE_VOCAB_N];
    for (int i = 0; i < BYTE_VOCAB_BYTES; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        lens[i] = 1;
    }
    for (int32_t i = BYTE_VOCAB_BYTES; i < BYTE_VOCAB_N; i++) {
        pieces[i] = byte_vocab_extra[i - BYTE_VOCAB_BYTES];
        lens[i] = strlen(pieces[i]);
    }
    const int32_t eog = BYTE_VOCAB_N - 1;
    return grammar_vocab_create_from_pieces(BYTE_VOCAB_N, pieces, lens, &eog, 1, vocab);
}

#endif /* PS_TEST_BYTE_VOCAB_H */
