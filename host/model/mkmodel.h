/* mkmodel.h - synthetic GGUF models with deterministic random weights.
 *
 * The file is complete: paraserve loads it (model_load) and tokenizes with it
 * (tokenizer "gpt2", pre "default": the 256 GPT-2 byte-level tokens at ids
 * 0..255 in byte order, then "<|endoftext|>" 256, "<|im_start|>" 257,
 * "<|im_end|>" 258 (CONTROL), then "<|reserved_N|>" fillers (UNUSED) up to
 * n_vocab; no merges; bos = 256, eos = 258; a ChatML chat template).
 *
 * Weights: per tensor a splitmix64 stream seeded from (seed, tensor name), so
 * a tensor's values do not depend on the others; normal samples by
 * Box-Muller.  Matrices ~ N(0, 1/fan_in) (attn_output and ffn_down further
 * scaled by 1/sqrt(2 n_layer)), embeddings ~ N(0, 1/n_embd), norms
 * 1 + N(0, 0.05^2), biases N(0, 0.02^2): activations stay finite over many
 * layers.  Matrices are quantized to `wtype` with quant_row_quantize; a K
 * quant (Q4_K, Q6_K) whose row length is not a multiple of 256 falls back to
 * Q8_0 for that tensor, as llama.cpp's quantizer does.
 *
 * Presets (hyper-parameters of the real models; weights are random):
 *   name           arch   vocab   embd layers heads kv hdim   ff    ctx    theta   eps  tied
 *   tiny           llama    512     64   2     4    2   16   128    512   10000  1e-5  yes
 *   smollm2-135m   llama  49152    576  30     9    3   64  1536   8192  100000  1e-5  yes
 *   qwen2.5-0.5b   qwen2 151936    896  24    14    2   64  4864  32768   1e6    1e-6  yes
 *   qwen3-0.6b     qwen3 151936   1024  28    16    8  128  3072  40960   1e6    1e-6  yes
 *   llama-3.2-1b   llama 128256   2048  16    32    8   64  8192 131072  500000  1e-5  yes
 * (llama-3.2-1b's "llama3" rope scaling is not reproduced.)  Preset weight
 * types: Q4_1 matrices and Q8_0 embeddings; callers may override.
 */
#ifndef PS_MKMODEL_H
#define PS_MKMODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "quant.h"

struct mkmodel_spec {
    enum model_arch arch;
    int32_t  n_vocab;    /* >= 259 (bytes + 3 specials)               */
    int32_t  n_embd;
    int32_t  n_layer;
    int32_t  n_head;
    int32_t  n_head_kv;  /* divides n_head                            */
    int32_t  head_dim;
    int32_t  n_ff;
    int32_t  n_ctx;      /* context_length written to the file        */
    float    rope_theta;
    float    rms_eps;
    bool     tied;       /* no output.weight                          */
    enum dtype wtype;    /* attention and FFN matrices                */
    enum dtype embd_type;/* token_embd, and output.weight when untied */
    uint64_t seed;
    char     name[64];   /* general.name                              */
};

/* Fill *spec from a preset name; PS_ENOTFOUND (detail lists the names) when
 * unknown. */
int mkmodel_preset(const char *name, struct mkmodel_spec *spec);

/* Space-separated preset names, for usage messages. */
const char *mkmodel_preset_names(void);

/* Validate spec and write the model to path (streamed: one tensor in memory
 * at a time).  PS_EINVAL with a detail for a bad spec. */
int mkmodel_write(const char *path, const struct mkmodel_spec *spec);

#endif /* PS_MKMODEL_H */
