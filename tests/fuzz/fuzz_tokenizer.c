/* fuzz_tokenizer.c - libFuzzer target: encode arbitrary bytes with and
 * without special-token parsing, decode, and abort when the round trip
 * fails for input whose every byte has a token (the tokenizer.h promise),
 * when an id is out of range, or when streaming decode disagrees with
 * concatenated pieces.  The vocab is loaded once from $PARASERVE_MODEL or
 * models/SmolLM2-135M-Instruct.Q4_1.gguf. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/unicode.h"

static tokenizer *tok;
static bool byte_has_token[256];

static uint32_t byte_level_cp(int b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return (uint32_t)b;
    return b <= 0x20 ? 0x100u + (uint32_t)b : b <= 0xA0 ? 0x121u + (uint32_t)(b - 0x7F) : 0x143u;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = getenv("PARASERVE_MODEL");
    gguf_file *f = NULL;
    if (!path)
        path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (gguf_open(path, &f) || tokenizer_from_gguf(f, &tok)) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, ps_error_last());
        abort();
    }
    gguf_close(f);
    for (int b = 0; b < 256; b++) {
        char enc[5];
        enc[unicode_utf8_encode(byte_level_cp(b), enc)] = '\0';
        byte_has_token[b] = tokenizer_find(tok, enc) >= 0;
    }
    return 0;
}

/* decode(encode(s)) == s whenever every byte of s has a token. */
static void check_round_trip(const uint8_t *data, size_t size, const char *dec, size_t dn)
{
    bool all = true;
    for (size_t i = 0; i < size; i++)
        all &= byte_has_token[data[i]];
    if (all && (dn != size || memcmp(dec, data, size) != 0))
        abort();
}

static void check(const uint8_t *data, size_t size, bool special)
{
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(tok, (const char *)data, size, special, &ids, &n) != PS_OK)
        abort();
    char *dec = malloc(size * 3 + 16), *stream = malloc(size * 3 + 64);
    size_t dn = 0, sn = 0;
    struct token_stream st = { 0 };
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tokenizer_n_vocab(tok))
            abort();
        size_t pl, cn;
        const char *p = tokenizer_piece(tok, ids[i], special, &pl);
        if (!p || dn + pl > size * 3 + 16)
            abort();
        memcpy(dec + dn, p, pl);
        dn += pl;
        char chunk[1024];
        if (tokenizer_stream_push(tok, &st, ids[i], special, chunk, sizeof chunk, &cn) != PS_OK)
            abort();
        memcpy(stream + sn, chunk, cn);
        sn += cn;
    }
    size_t cn;
    char chunk[16];
    if (tokenizer_stream_flush(&st, chunk, sizeof chunk, &cn) != PS_OK)
        abort();
    memcpy(stream + sn, chunk, cn);
    sn += cn;
    if (sn != dn || memcmp(stream, dec, dn) != 0)
        abort();
    check_round_trip(data, size, dec, dn);
    free(stream);
    free(dec);
    free(ids);
}

/* Special tokens recognised only inside spans (a chat prompt's markup):
 * every id valid, and decode(encode(s)) == s when every byte has a token.
 * The spans alternate in and out, lengths from the input's own bytes. */
static void check_spans(const uint8_t *data, size_t size)
{
    struct text_span spans[64];
    size_t n_spans = 0, at = 0;
    for (size_t k = 0; at < size && n_spans < 64; k++) {
        size_t step = 1 + data[(at * 31 + k) % size] % 24;
        size_t end = at + step > size ? size : at + step;
        if (k % 2)
            spans[n_spans++] = (struct text_span){ (uint32_t)at, (uint32_t)end };
        at = end;
    }
    int32_t *ids;
    size_t n;
    if (tokenizer_encode_spans(tok, (const char *)data, size, spans, n_spans, &ids, &n) != PS_OK)
        abort();
    char *dec = malloc(size * 3 + 16);
    size_t dn = 0;
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        const char *p = tokenizer_piece(tok, ids[i], true, &pl);
        if (!p || dn + pl > size * 3 + 16)
            abort();
        memcpy(dec + dn, p, pl);
        dn += pl;
    }
    check_round_trip(data, size, dec, dn);
    free(dec);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check(data, size, false);
    check(data, size, true);
    if (size)
        check_spans(data, size);
    return 0;
}
