/* tokenizer.h - byte-level BPE tokenizer built from a GGUF vocabulary.
 *
 * tokenizer.ggml.model "gpt2" (byte-level BPE) with tokens, token_type and
 * merges.  The pre-tokenizer (regex split) is chosen from tokenizer.ggml.pre:
 * "smollm"/"gpt2"/"default" (GPT-2 rules, digits split one by one for smollm),
 * "qwen2" (Qwen rules).  An unknown model or pre type is an error naming it.
 *
 * Special tokens: USER_DEFINED ones (e.g. Qwen's "<tool_call>") are matched
 * in the input always, CONTROL ones ("<|im_start|>") only where encode is
 * asked to parse them (everywhere, or inside given spans); elsewhere their
 * text is tokenized as ordinary bytes.  Invalid UTF-8 input bytes are
 * encoded through their byte tokens, so decode(encode(s)) == s for any s
 * whose bytes all have tokens.  A byte with no token (SmolLM2 lacks 13 that
 * never occur in UTF-8 and 6 ASCII controls) is, as in llama.cpp, dropped
 * when part of a valid character and encoded as U+FFFD when invalid.
 */
#ifndef PS_TOKENIZER_H
#define PS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

enum token_attr {
    TOKEN_NORMAL       = 1,
    TOKEN_UNKNOWN      = 2,
    TOKEN_CONTROL      = 3,
    TOKEN_USER_DEFINED = 4,
    TOKEN_UNUSED       = 5,
    TOKEN_BYTE         = 6,
};

typedef struct tokenizer tokenizer;

/* Build from the GGUF metadata (copies what it needs: `f` may be closed
 * afterwards).  Free with tokenizer_free. */
int  tokenizer_from_gguf(const gguf_file *f, tokenizer **out);
void tokenizer_free(tokenizer *t); /* NULL-safe */

int32_t tokenizer_n_vocab(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);  /* -1 when the model has none */
int32_t tokenizer_eos(const tokenizer *t);
bool    tokenizer_add_bos(const tokenizer *t); /* tokenizer.ggml.add_bos_token */
/* End of generation: eos, eot, "<|im_end|>", "<|endoftext|>" ... */
bool    tokenizer_is_eog(const tokenizer *t, int32_t id);
enum token_attr tokenizer_token_attr(const tokenizer *t, int32_t id);
/* Id of a token by its exact vocab text, -1 when absent. */
int32_t tokenizer_find(const tokenizer *t, const char *text);

/* Encode len bytes of text.  *ids is malloc'd (caller frees), *n_ids set.
 * parse_special: recognise CONTROL-token text ("<|im_start|>").
 * USER_DEFINED tokens (added tokens that are not control tokens, e.g.
 * Qwen's "<tool_call>" or "<think>") are recognised either way, as
 * llama.cpp does.  No BOS is added: callers prepend tokenizer_bos() when
 * tokenizer_add_bos() says so. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len,
                     bool parse_special, int32_t **ids, size_t *n_ids);

/* Byte range [begin, end) of a text. */
struct text_span {
    uint32_t begin, end;
};

/* As tokenizer_encode, but CONTROL-token text is recognised only where it
 * lies wholly inside one of spans[0..n_spans) - the markup a chat template
 * wrote (chat_template_render) - and is plain text everywhere else, so a
 * message that spells "<|im_start|>" cannot open a turn (USER_DEFINED
 * tokens, which cannot, are recognised everywhere).  Spans must be
 * sorted, disjoint and within len (PS_EINVAL otherwise).  Outside the
 * special tokens the fragments are the same as tokenizer_encode's, so text
 * without special-token text encodes identically either way. */
int tokenizer_encode_spans(const tokenizer *t, const char *text, size_t len,
                           const struct text_span *spans, size_t n_spans,
                           int32_t **ids, size_t *n_ids);

/* How many bytes of text[0..len) have a token of their own: every one of
 * them is covered by the encoding (a byte without one may be dropped, see
 * tokenizer_encode), so at least this many bytes / the longest token's
 * bytes tokens come out - a bound callers can check before encoding. */
size_t tokenizer_bytes_with_tokens(const tokenizer *t, const char *text, size_t len);
/* The longest token's bytes (control tokens' text included). */
size_t tokenizer_max_token_bytes(const tokenizer *t);

/* Raw bytes of token `id` after byte-level decoding (may be a partial UTF-8
 * sequence).  Control tokens decode to their text only when `special`.
 * Returns a pointer owned by the tokenizer and sets *len; NULL for a bad id. */
const char *tokenizer_piece(const tokenizer *t, int32_t id, bool special, size_t *len);

/* Streaming decode that never splits a UTF-8 character: bytes of an
 * incomplete sequence are held until it completes (or is proven invalid, in
 * which case they are emitted as-is).  Zero-initialise, then push ids. */
struct token_stream {
    char    pending[8];
    int32_t n_pending;
};
/* Appends to out (capacity cap) and sets *n_out; PS_EFULL if cap is short
 * (cap >= 64 + the longest token is always enough). */
int tokenizer_stream_push(const tokenizer *t, struct token_stream *s, int32_t id,
                          bool special, char *out, size_t cap, size_t *n_out);
/* Emit whatever is still pending (end of stream). */
int tokenizer_stream_flush(struct token_stream *s, char *out, size_t cap, size_t *n_out);

#endif /* PS_TOKENIZER_H */
