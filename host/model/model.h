/* model.h - architecture hyper-parameters and weight views of a GGUF model.
 *
 * Supported architectures (general.architecture): "llama" (SmolLM2, Llama),
 * "qwen2" (q/k/v biases, NEOX rope), "qwen3" (per-head q/k RMSNorm, NEOX
 * rope, head_dim from attention.key_length).  Weights stay in the mmapped
 * file; a `struct weight` is a view.  Matrices are stored row-major with
 * ne[0] = input features (row length) and ne[1] = output features (rows).
 */
#ifndef PS_MODEL_H
#define PS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "quant.h"

enum model_arch { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3 };

enum rope_style {
    ROPE_NORMAL, /* rotate pairs (2i, 2i+1) - llama in GGUF               */
    ROPE_NEOX,   /* rotate pairs (i, i + d/2) - qwen2/qwen3               */
};

struct model_hparams {
    enum model_arch arch;
    char     arch_name[16];
    int32_t  n_vocab;
    int32_t  n_embd;       /* hidden size                                  */
    int32_t  n_layer;
    int32_t  n_head;
    int32_t  n_head_kv;    /* GQA: n_head % n_head_kv == 0                 */
    int32_t  head_dim;     /* per-head size of q and k (and v)             */
    int32_t  n_ff;         /* FFN inner size                               */
    int32_t  n_ctx_train;  /* context length the model was trained for     */
    float    rms_eps;
    float    rope_theta;
    int32_t  rope_dim;     /* rotated dims per head (<= head_dim)          */
    enum rope_style rope_style;
    float    rope_freq_scale; /* linear scaling: 1 / rope.scaling.factor    */
    bool     tied_embeddings; /* no output.weight: logits use token_embd   */
};

struct weight {
    enum dtype  type;
    int64_t     ne[2];     /* ne[0] = row length, ne[1] = rows; vectors: ne[1] = 1 */
    const void *data;      /* NULL when the tensor is absent (optional ones) */
};

struct layer_weights {
    struct weight attn_norm;               /* [n_embd]                         */
    struct weight wq, wk, wv, wo;          /* wq [n_embd -> n_head*head_dim] ... */
    struct weight bq, bk, bv;              /* qwen2 biases, else absent         */
    struct weight q_norm, k_norm;          /* qwen3 [head_dim], else absent     */
    struct weight ffn_norm;                /* [n_embd]                         */
    struct weight w_gate, w_up, w_down;    /* gate/up [n_embd -> n_ff], down back */
};

struct model {
    gguf_file           *gguf;   /* owned */
    struct model_hparams hp;
    char                 name[128];
    struct weight        tok_embd;    /* [n_vocab rows of n_embd] */
    struct weight        output_norm; /* [n_embd]                */
    struct weight        output;      /* == tok_embd when tied   */
    struct layer_weights *layers;     /* [n_layer], owned        */
    float               *f32_arena;   /* owned: matrices converted by model_matrices_to_f32, else NULL */
};

/* Load a model from a GGUF file.  Checks the architecture, every required
 * key and tensor, and that each tensor's shape and type fit the hyper-
 * parameters; the detail names the first problem.  Free with model_free. */
int  model_load(const char *path, struct model **out);

/* Same, from an opened file; takes ownership of `f` on success and failure. */
int  model_from_gguf(gguf_file *f, struct model **out);

/* Dequantize every matrix (attention, FFN and output projections; the
 * token embedding stays as stored, its rows are dequantized on lookup) to
 * F32 copies owned by the model, so matmuls run in f32 without quantizing
 * activations: an exact-arithmetic reference of the same weights, at 4
 * bytes per weight.  Call before creating a backend.  PS_ENOMEM, or
 * PS_EUNSUPPORTED for a type without a dequantizer; idempotent. */
int  model_matrices_to_f32(struct model *m);

void model_free(struct model *m); /* NULL-safe */

#endif /* PS_MODEL_H */
