/* model.c - hyper-parameters and weight views of llama / qwen2 / qwen3 GGUF
 * models.  Every check names the key or tensor at fault; the first failure
 * wins.  Weights are views into the gguf mapping, which the model owns. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

#define MODEL_MAX_LAYERS 4096
#define MODEL_MAX_DIM    (1 << 20)
#define MODEL_MAX_VOCAB  (1 << 24)

static const struct {
    const char     *name;
    enum model_arch arch;
    enum rope_style rope;
} archs[] = {
    { "llama", ARCH_LLAMA, ROPE_NORMAL },
    { "qwen2", ARCH_QWEN2, ROPE_NEOX },
    { "qwen3", ARCH_QWEN3, ROPE_NEOX },
};

/* `{arch}.{suffix}` as a positive int32 no larger than max.  Absent: PS_OK
 * with *out = dflt when dflt >= 0, else an error naming the key. */
static int hp_int(const gguf_file *f, const char *arch, const char *suffix, int64_t dflt,
                  int64_t max, int32_t *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t v;
    int rc = gguf_get_i64(f, key, &v);
    if (rc == PS_ENOTFOUND) {
        if (dflt < 0)
            return ps_error_set(PS_EFORMAT, "model: required key '%s' is missing", key);
        *out = (int32_t)dflt;
        return PS_OK;
    }
    if (rc)
        return rc; /* the gguf detail names the key and its type */
    if (v <= 0 || v > max)
        return ps_error_set(PS_EFORMAT, "model: key '%s' = %lld is out of range (1..%lld)", key,
                            (long long)v, (long long)max);
    *out = (int32_t)v;
    return PS_OK;
}

static int hp_float(const gguf_file *f, const char *arch, const char *suffix, bool required,
                    float dflt, float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_get_f32(f, key, out);
    if (rc == PS_ENOTFOUND && !required) {
        *out = dflt;
        return PS_OK;
    }
    if (rc == PS_ENOTFOUND)
        return ps_error_set(PS_EFORMAT, "model: required key '%s' is missing", key);
    if (rc)
        return rc; /* the gguf detail names the key and its type */
    if (!(*out > 0.0f) || *out != *out || *out > 1e30f)
        return ps_error_set(PS_EFORMAT, "model: key '%s' = %g is out of range", key,
                            (double)*out);
    return PS_OK;
}

static int read_rope_scaling(const gguf_file *f, struct model_hparams *hp)
{
    const char *arch = hp->arch_name;
    char key[128];
    const char *type = NULL;
    hp->rope_freq_scale = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    int rc = gguf_get_str(f, key, &type, NULL);
    if (rc == PS_ENOTFOUND) {
        /* older files: {arch}.rope.scale_linear */
        float s;
        snprintf(key, sizeof key, "%s.rope.scale_linear", arch);
        rc = gguf_get_f32(f, key, &s);
        if (rc == PS_ENOTFOUND)
            return PS_OK;
        if (rc)
            return rc;
        if (!(s > 0.0f) || s > 1e6f)
            return ps_error_set(PS_EFORMAT, "model: key '%s' = %g is out of range", key, (double)s);
        hp->rope_freq_scale = 1.0f / s;
        return PS_OK;
    }
    if (rc)
        return rc;
    if (!strcmp(type, "none"))
        return PS_OK;
    if (strcmp(type, "linear") != 0)
        return ps_error_set(PS_EUNSUPPORTED,
                            "model: rope scaling type '%s' (%s) is not supported (only linear)",
                            type, key);
    float factor;
    if ((rc = hp_float(f, arch, "rope.scaling.factor", true, 1.0f, &factor)))
        return rc;
    hp->rope_freq_scale = 1.0f / factor;
    return PS_OK;
}

static int read_hparams(const gguf_file *f, struct model_hparams *hp)
{
    const char *arch;
    int rc = gguf_get_str(f, "general.architecture", &arch, NULL);
    if (rc == PS_ENOTFOUND)
        return ps_error_set(PS_EFORMAT, "model: required key 'general.architecture' is missing");
    if (rc)
        return rc;
    size_t i;
    for (i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (!strcmp(arch, archs[i].name))
            break;
    if (i == sizeof archs / sizeof archs[0])
        return ps_error_set(PS_EUNSUPPORTED,
                            "model: unsupported architecture '%.64s' (supported: llama, qwen2, qwen3)",
                            arch);
    hp->arch       = archs[i].arch;
    hp->rope_style = archs[i].rope;
    snprintf(hp->arch_name, sizeof hp->arch_name, "%s", archs[i].name);
    arch = hp->arch_name;

    if ((rc = hp_int(f, arch, "block_count", -1, MODEL_MAX_LAYERS, &hp->n_layer)) ||
        (rc = hp_int(f, arch, "embedding_length", -1, MODEL_MAX_DIM, &hp->n_embd)) ||
        (rc = hp_int(f, arch, "feed_forward_length", -1, MODEL_MAX_DIM, &hp->n_ff)) ||
        (rc = hp_int(f, arch, "attention.head_count", -1, MODEL_MAX_DIM, &hp->n_head)) ||
        (rc = hp_int(f, arch, "attention.head_count_kv", hp->n_head, MODEL_MAX_DIM,
                     &hp->n_head_kv)) ||
        (rc = hp_int(f, arch, "context_length", -1, INT32_MAX, &hp->n_ctx_train)))
        return rc;
    if (hp->n_head % hp->n_head_kv != 0)
        return ps_error_set(PS_EFORMAT,
                            "model: %s.attention.head_count (%d) is not a multiple of "
                            "head_count_kv (%d)",
                            arch, hp->n_head, hp->n_head_kv);
    int64_t dflt_hd = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : -1;
    if ((rc = hp_int(f, arch, "attention.key_length", dflt_hd, MODEL_MAX_DIM, &hp->head_dim)))
        return rc;
    int32_t v_len = 0;
    if ((rc = hp_int(f, arch, "attention.value_length", hp->head_dim, MODEL_MAX_DIM, &v_len)))
        return rc;
    if (v_len != hp->head_dim)
        return ps_error_set(PS_EUNSUPPORTED,
                            "model: %s.attention.value_length (%d) differs from key_length (%d)",
                            arch, v_len, hp->head_dim);
    if ((rc = hp_int(f, arch, "rope.dimension_count", hp->head_dim, MODEL_MAX_DIM, &hp->rope_dim)))
        return rc;
    if (hp->rope_dim > hp->head_dim || hp->rope_dim % 2 != 0)
        return ps_error_set(PS_EFORMAT,
                            "model: %s.rope.dimension_count (%d) must be even and <= head_dim (%d)",
                            arch, hp->rope_dim, hp->head_dim);
    if ((rc = hp_float(f, arch, "attention.layer_norm_rms_epsilon", true, 0, &hp->rms_eps)) ||
        (rc = hp_float(f, arch, "rope.freq_base", false, 10000.0f, &hp->rope_theta)) ||
        (rc = read_rope_scaling(f, hp)))
        return rc;

    /* vocabulary size: explicit key, else the token list; token_embd decides last */
    hp->n_vocab = 0;
    if ((rc = hp_int(f, arch, "vocab_size", 0, MODEL_MAX_VOCAB, &hp->n_vocab)))
        return rc;
    if (hp->n_vocab == 0) {
        enum gguf_type et;
        uint64_t n;
        if (gguf_get_arr_info(f, "tokenizer.ggml.tokens", &et, &n) == PS_OK) {
            if (n == 0 || n > MODEL_MAX_VOCAB)
                return ps_error_set(PS_EFORMAT,
                                    "model: tokenizer.ggml.tokens has %llu entries (1..%d allowed)",
                                    (unsigned long long)n, MODEL_MAX_VOCAB);
            hp->n_vocab = (int32_t)n;
        }
    }
    ps_error_clear();
    return PS_OK;
}

static const char *dtype_name(enum dtype t)
{
    const struct dtype_info *di = dtype_info_get(t);
    return di ? di->name : "?";
}

enum wkind { W_VECTOR_F32, W_MATRIX };

/* View tensor `name`, checking shape [ne0] (vector) or [ne0, ne1] (matrix). */
static int get_weight(const gguf_file *f, const char *name, enum wkind kind, int64_t ne0,
                      int64_t ne1, bool required, struct weight *w)
{
    const struct gguf_tensor *t = gguf_find_tensor(f, name);
    memset(w, 0, sizeof *w);
    if (!t) {
        if (required)
            return ps_error_set(PS_EFORMAT, "model: required tensor '%s' is missing", name);
        return PS_OK;
    }
    bool ok = t->ne[0] == ne0 && t->ne[1] == ne1 && t->ne[2] == 1 && t->ne[3] == 1;
    if (!ok) {
        if (kind == W_VECTOR_F32)
            return ps_error_set(PS_EFORMAT,
                                "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], "
                                "expected [%lld]",
                                name, (long long)t->ne[0], (long long)t->ne[1],
                                (long long)t->ne[2], (long long)t->ne[3], (long long)ne0);
        return ps_error_set(PS_EFORMAT,
                            "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], "
                            "expected [%lld, %lld]",
                            name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                            (long long)t->ne[3], (long long)ne0, (long long)ne1);
    }
    if (kind == W_VECTOR_F32 && t->type != DT_F32)
        return ps_error_set(PS_EUNSUPPORTED, "model: tensor '%s' has type %s, expected F32", name,
                            dtype_name(t->type));
    if (kind == W_MATRIX && (t->type == DT_Q8_1 || t->type == DT_Q8_K))
        return ps_error_set(PS_EUNSUPPORTED,
                            "model: tensor '%s' has type %s, which is not a weight format", name,
                            dtype_name(t->type));
    w->type  = t->type;
    w->ne[0] = t->ne[0];
    w->ne[1] = t->ne[1];
    w->data  = t->data;
    return PS_OK;
}

static int load_layer(const gguf_file *f, const struct model_hparams *hp, int il,
                      struct layer_weights *l)
{
    const int64_t e = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim,
                  kv = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff, hd = hp->head_dim;
    const bool qwen3 = hp->arch == ARCH_QWEN3;
    const struct {
        const char   *suffix;
        enum wkind    kind;
        int64_t       ne0, ne1;
        bool          required;
        struct weight *w;
    } spec[] = {
        { "attn_norm.weight",   W_VECTOR_F32, e,  1,  true,  &l->attn_norm },
        { "attn_q.weight",      W_MATRIX,     e,  q,  true,  &l->wq },
        { "attn_k.weight",      W_MATRIX,     e,  kv, true,  &l->wk },
        { "attn_v.weight",      W_MATRIX,     e,  kv, true,  &l->wv },
        { "attn_output.weight", W_MATRIX,     q,  e,  true,  &l->wo },
        { "attn_q.bias",        W_VECTOR_F32, q,  1,  false, &l->bq },
        { "attn_k.bias",        W_VECTOR_F32, kv, 1,  false, &l->bk },
        { "attn_v.bias",        W_VECTOR_F32, kv, 1,  false, &l->bv },
        { "attn_q_norm.weight", W_VECTOR_F32, hd, 1,  qwen3, &l->q_norm },
        { "attn_k_norm.weight", W_VECTOR_F32, hd, 1,  qwen3, &l->k_norm },
        { "ffn_norm.weight",    W_VECTOR_F32, e,  1,  true,  &l->ffn_norm },
        { "ffn_gate.weight",    W_MATRIX,     e,  ff, true,  &l->w_gate },
        { "ffn_up.weight",      W_MATRIX,     e,  ff, true,  &l->w_up },
        { "ffn_down.weight",    W_MATRIX,     ff, e,  true,  &l->w_down },
    };
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "blk.%d.%s", il, spec[i].suffix);
        int rc = get_weight(f, name, spec[i].kind, spec[i].ne0, spec[i].ne1, spec[i].required,
                            spec[i].w);
        if (rc)
            return rc;
    }
    return PS_OK;
}

int model_from_gguf(gguf_file *f, struct model **out)
{
    int rc;
    *out = NULL;
    struct model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(f);
        return ps_error_set(PS_ENOMEM, "model: out of memory");
    }
    m->gguf = f;
    struct model_hparams *hp = &m->hp;
    if ((rc = read_hparams(f, hp)))
        goto fail;

    const struct gguf_tensor *te = gguf_find_tensor(f, "token_embd.weight");
    if (!te) {
        rc = ps_error_set(PS_EFORMAT, "model: required tensor 'token_embd.weight' is missing");
        goto fail;
    }
    if (hp->n_vocab == 0) {
        if (te->ne[1] > MODEL_MAX_VOCAB) {
            rc = ps_error_set(PS_EFORMAT, "model: token_embd.weight has %lld rows (too many)",
                              (long long)te->ne[1]);
            goto fail;
        }
        hp->n_vocab = (int32_t)te->ne[1];
    }
    if ((rc = get_weight(f, "token_embd.weight", W_MATRIX, hp->n_embd, hp->n_vocab, true,
                         &m->tok_embd)) ||
        (rc = get_weight(f, "output_norm.weight", W_VECTOR_F32, hp->n_embd, 1, true,
                         &m->output_norm)) ||
        (rc = get_weight(f, "output.weight", W_MATRIX, hp->n_embd, hp->n_vocab, false,
                         &m->output)))
        goto fail;
    if (!m->output.data) {
        m->output              = m->tok_embd;
        hp->tied_embeddings    = true;
    }

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        rc = ps_error_set(PS_ENOMEM, "model: out of memory for %d layers", hp->n_layer);
        goto fail;
    }
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = load_layer(f, hp, il, &m->layers[il])))
            goto fail;

    const char *name = NULL;
    if (gguf_get_str(f, "general.name", &name, NULL) != PS_OK)
        name = hp->arch_name;
    snprintf(m->name, sizeof m->name, "%s", name);
    ps_error_clear();
    *out = m;
    return PS_OK;

fail:
    model_free(m);
    return rc;
}

int model_load(const char *path, struct model **out)
{
    gguf_file *f;
    *out = NULL;
    int rc = gguf_open(path, &f);
    if (rc)
        return rc;
    return model_from_gguf(f, out);
}

/* The matrices model_matrices_to_f32 converts, in a fixed order. */
static int64_t model_matrices(struct model *m, struct weight **out)
{
    int64_t n = 0;
    for (int32_t il = 0; il < m->hp.n_layer; il++) {
        struct layer_weights *lw = &m->layers[il];
        struct weight *mats[] = { &lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w_gate, &lw->w_up, &lw->w_down };
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            out[n++] = mats[i];
    }
    out[n++] = &m->output;
    return n;
}

int model_matrices_to_f32(struct model *m)
{
    if (m->f32_arena)
        return PS_OK;
    struct weight **mats = malloc(((size_t)m->hp.n_layer * 7 + 1) * sizeof *mats);
    if (!mats)
        return ps_error_set(PS_ENOMEM, "model: out of memory");
    const int64_t n = model_matrices(m, mats);
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++)
        total += mats[i]->ne[0] * mats[i]->ne[1];
    float *arena = malloc((size_t)total * sizeof *arena);
    if (!arena) {
        free(mats);
        return ps_error_set(PS_ENOMEM, "model: no memory for %lld f32 weights (%.1f MiB)", (long long)total,
                            (double)total * 4 / (1 << 20));
    }
    float *dst = arena;
    for (int64_t i = 0; i < n; i++) {
        struct weight *w = mats[i];
        const size_t rb = dtype_row_bytes(w->type, w->ne[0]);
        for (int64_t r = 0; r < w->ne[1]; r++) {
            int rc = quant_row_dequantize(w->type, (const uint8_t *)w->data + (size_t)r * rb, dst + r * w->ne[0],
                                          w->ne[0]);
            if (rc) {
                free(arena);
                free(mats);
                return rc;
            }
        }
        dst += w->ne[0] * w->ne[1];
    }
    /* repoint only once every conversion succeeded */
    dst = arena;
    for (int64_t i = 0; i < n; i++) {
        mats[i]->type = DT_F32;
        mats[i]->data = dst;
        dst += mats[i]->ne[0] * mats[i]->ne[1];
    }
    m->f32_arena = arena;
    free(mats);
    return PS_OK;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    free(m->f32_arena);
    free(m->layers);
    gguf_close(m->gguf);
    free(m);
}
