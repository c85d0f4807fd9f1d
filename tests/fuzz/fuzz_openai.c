/* fuzz_openai.c - libFuzzer target for the OpenAI request parser and the
 * tool-call reply shaping (host/server/openai.h: openai_parse_ex,
 * openai_output_delta / _finish / _message): every body a client sends to
 * /v1/completions and /v1/chat/completions goes through them, constrained
 * output (response_format, tools) through the JSON Schema compiler too.
 *
 * Input: byte 0 picks the endpoint (bit 0: chat), whether constrained output
 * is enabled (bit 1: a vocabulary is given) and, in bits 2-7, where the rest
 * splits; the rest up to that split is the request body (any bytes, NULs
 * included: the parser takes a length), what follows is the model's output
 * fed to the reply shaping when the request asked for a tool call (its
 * first byte: streamed or whole, finish reason "stop" or "length").
 *
 * Aborts when the parser answers a status other than 0 / 400 / 404 / 500,
 * an error without a message, or an accepted request with no prompt, a
 * prompt that is not valid UTF-8, token ids outside the vocabulary,
 * negative max_tokens, sampler parameters the sampler refuses, stop
 * strings that are missing, or a tool-call reply without a finish reason.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz_util.h"
#include "common/status.h"
#include "engine/sampler.h"
#include "grammar/grammar.h"
#include "model/chat.h"
#include "orchestrator/json_alloc.h"
#include "server/openai.h"
#include "../unit/byte_vocab.h"

#define N_VOCAB BYTE_VOCAB_N

static chat_template *tmpl;
static grammar_vocab *vocab;

static int setup(void)
{
    static int done;
    if (done)
        return tmpl && vocab;
    done = 1;
    return byte_vocab_make(&tmpl, &vocab) == PS_OK;
}

static void shape_reply(struct openai_output *o, const uint8_t *text, size_t n, const char *finish)
{
    /* streamed, in pieces of 1..7 bytes */
    size_t step = n % 7 + 1;
    for (size_t at = 0; at < n; at += step) {
        cJSON *delta = cJSON_CreateObject();
        if (!delta)
            return;
        openai_output_delta(o, (const char *)text + at, at + step <= n ? step : n - at, delta);
        cJSON_Delete(delta);
    }
    cJSON *delta = cJSON_CreateObject();
    if (delta) {
        if (!openai_output_finish(o, finish, delta))
            abort();
        cJSON_Delete(delta);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || !setup())
        return 0;
    const bool chat = data[0] & 1, constrained = data[0] & 2;
    size_t rest = size - 1, split = rest * (size_t)(data[0] >> 2) / 63;
    const char *body = (const char *)data + 1;
    const uint8_t *output = data + 1 + split;
    size_t n_output = rest - split;

    static const char *const models[] = { "smol", "other-name", NULL };
    struct openai_options opt = { constrained ? vocab : NULL, 500 };
    struct gen_params p;
    struct api_error e;
    memset(&e, 0, sizeof e);
    int st = openai_parse_ex(body, split, chat, models, tmpl, N_VOCAB, &opt, &p, &e);
    if (st) {
        if (st != 400 && st != 404 && st != 500)
            abort();
        if (e.status != st || !e.message[0])
            abort();
        return 0;
    }
    if (!p.prompt && !p.prompt_ids)
        abort();
    if (p.prompt && !utf8_valid(p.prompt, strlen(p.prompt)))
        abort();
    if (p.prompt_ids && p.n_prompt_ids <= 0)
        abort();
    for (int32_t i = 0; i < p.n_prompt_ids; i++)
        if (p.prompt_ids[i] < 0 || p.prompt_ids[i] >= N_VOCAB)
            abort();
    if (p.max_tokens < 0 || p.n_stop < 0 || (p.n_stop && !p.stop))
        abort();
    for (int32_t i = 0; i < p.n_stop; i++)
        if (!p.stop[i])
            abort();
    if (sampler_params_validate(&p.sp) != PS_OK)
        abort();
    if (p.grammar_lazy && !p.grammar)
        abort();
    if (p.output && n_output) {
        /* output[0]: streamed or whole (bit 0), finish reason (bit 1) */
        const char *finish = (output[0] & 2) ? "stop" : "length";
        if (output[0] & 1) {
            shape_reply(p.output, output + 1, n_output - 1, finish);
        } else {
            cJSON *msg = cJSON_CreateObject();
            if (msg) {
                if (!openai_output_message(p.output, (const char *)output + 1, n_output - 1, finish, msg))
                    abort();
                cJSON_Delete(msg);
            }
        }
    }
    gen_params_free(&p);
    return 0;
}
