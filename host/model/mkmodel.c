/* mkmodel.c - synthetic GGUF models (see mkmodel.h for the recipe). */
#include "mkmodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "gguf.h"

#define MK_N_BYTE_TOKENS 256
#define MK_TOK_ENDOFTEXT 256
#define MK_TOK_IM_START  257
#define MK_TOK_IM_END    258
#define MK_MIN_VOCAB     259

static const char mk_chatml_template[] =
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

struct mk_preset {
    const char     *name;
    enum model_arch arch;
    int32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_ctx;
    float   rope_theta, rms_eps;
};

static const struct mk_preset presets[] = {
    { "tiny",         ARCH_LLAMA,    512,   64,  2,  4, 2,  16,  128,    512, 10000.0f,   1e-5f },
    { "smollm2-135m", ARCH_LLAMA,  49152,  576, 30,  9, 3,  64, 1536,   8192, 100000.0f,  1e-5f },
    { "qwen2.5-0.5b", ARCH_QWEN2, 151936,  896, 24, 14, 2,  64, 4864,  32768, 1000000.0f, 1e-6f },
    { "qwen3-0.6b",   ARCH_QWEN3, 151936, 1024, 28, 16, 8, 128, 3072,  40960, 1000000.0f, 1e-6f },
    { "llama-3.2-1b", ARCH_LLAMA, 128256, 2048, 16, 32, 8,  64, 8192, 131072, 500000.0f,  1e-5f },
};

const char *mkmodel_preset_names(void)
{
    return "tiny smollm2-135m qwen2.5-0.5b qwen3-0.6b llama-3.2-1b";
}

int mkmodel_preset(const char *name, struct mkmodel_spec *spec)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const struct mk_preset *p = &presets[i];
        if (strcmp(p->name, name) != 0)
            continue;
        memset(spec, 0, sizeof *spec);
        spec->arch       = p->arch;
        spec->n_vocab    = p->n_vocab;
        spec->n_embd     = p->n_embd;
        spec->n_layer    = p->n_layer;
        spec->n_head     = p->n_head;
        spec->n_head_kv  = p->n_head_kv;
        spec->head_dim   = p->head_dim;
        spec->n_ff       = p->n_ff;
        spec->n_ctx      = p->n_ctx;
        spec->rope_theta = p->rope_theta;
        spec->rms_eps    = p->rms_eps;
        spec->tied       = true;
        spec->wtype      = DT_Q4_1;
        spec->embd_type  = DT_Q8_0;
        spec->seed       = 42;
        snprintf(spec->name, sizeof spec->name, "mkmodel-%s", p->name);
        return PS_OK;
    }
    return ps_error_set(PS_ENOTFOUND, "mkmodel: unknown preset '%s' (known: %s)", name,
                        mkmodel_preset_names());
}

/* ---- deterministic random numbers ------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct mk_rng {
    uint64_t state;
    bool     have_spare;
    double   spare;
};

static double rng_uniform(struct mk_rng *r) /* (0, 1) */
{
    return ((double)(splitmix64(&r->state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float rng_normal(struct mk_rng *r)
{
    if (r->have_spare) {
        r->have_spare = false;
        return (float)r->spare;
    }
    double u = rng_uniform(r), v = rng_uniform(r);
    double m = sqrt(-2.0 * log(u));
    r->spare      = m * sin(2.0 * M_PI * v);
    r->have_spare = true;
    return (float)(m * cos(2.0 * M_PI * v));
}

static void rng_seed(struct mk_rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    r->state      = seed ^ h;
    r->have_spare = false;
    r->spare      = 0.0;
    splitmix64(&r->state);
}

/* ---- tensor plan -------------------------------------------------------- */

enum mk_init { INIT_MATRIX, INIT_NORM, INIT_BIAS };

struct mk_tensor {
    char         name[64];
    enum dtype   type;
    int64_t      ne0, ne1;  /* ne1 == 1: a 1-D tensor */
    enum mk_init init;
    float        std;       /* INIT_MATRIX */
};

struct mk_plan {
    const struct mkmodel_spec *spec;
    struct mk_tensor          *t;
    int64_t                    n, cap;
    float                     *row;   /* [max ne0] scratch */
    int64_t                    row_cap;
};

static enum dtype mk_fit_type(enum dtype want, int64_t ne0)
{
    const struct dtype_info *di = dtype_info_get(want);
    if (di && ne0 % di->block_elems == 0)
        return want;
    if ((want == DT_Q4_K || want == DT_Q6_K) && ne0 % QK_BLOCK == 0)
        return DT_Q8_0;
    return want; /* mk_add rejects it with a detail */
}

static int mk_add(struct mk_plan *p, const char *name, enum dtype type, int64_t ne0, int64_t ne1,
                  enum mk_init init, float std)
{
    if (p->n == p->cap) {
        int64_t cap = p->cap ? p->cap * 2 : 64;
        struct mk_tensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t)
            return ps_error_set(PS_ENOMEM, "mkmodel: out of memory");
        p->t   = t;
        p->cap = cap;
    }
    struct mk_tensor *t = &p->t[p->n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = init == INIT_MATRIX ? mk_fit_type(type, ne0) : DT_F32;
    t->ne0  = ne0;
    t->ne1  = ne1;
    t->init = init;
    t->std  = std;
    if (dtype_row_bytes(t->type, ne0) == 0) {
        const struct dtype_info *di = dtype_info_get(t->type);
        return ps_error_set(PS_EINVAL,
                            "mkmodel: tensor '%s' has rows of %lld elements, not a multiple of "
                            "the %s block size %d",
                            name, (long long)ne0, di ? di->name : "?", di ? di->block_elems : 0);
    }
    if (ne0 > p->row_cap)
        p->row_cap = ne0;
    p->n++;
    return PS_OK;
}

static int mk_plan_build(struct mk_plan *p)
{
    const struct mkmodel_spec *s = p->spec;
    const int64_t e = s->n_embd, q = (int64_t)s->n_head * s->head_dim,
                  kv = (int64_t)s->n_head_kv * s->head_dim, ff = s->n_ff, hd = s->head_dim;
    const float out_scale = 1.0f / sqrtf(2.0f * (float)s->n_layer);
    int rc;
    char name[64];

    if ((rc = mk_add(p, "token_embd.weight", s->embd_type, e, s->n_vocab, INIT_MATRIX,
                     1.0f / sqrtf((float)e))) ||
        (rc = mk_add(p, "output_norm.weight", DT_F32, e, 1, INIT_NORM, 0)))
        return rc;
    if (!s->tied &&
        (rc = mk_add(p, "output.weight", s->embd_type, e, s->n_vocab, INIT_MATRIX,
                     1.0f / sqrtf((float)e))))
        return rc;
    for (int il = 0; il < s->n_layer; il++) {
        const struct {
            const char  *suffix;
            int64_t      ne0, ne1;
            enum mk_init init;
            float        std;
            bool         want;
        } lt[] = {
            { "attn_norm.weight",   e,  1,  INIT_NORM,   0, true },
            { "attn_q.weight",      e,  q,  INIT_MATRIX, 1.0f / sqrtf((float)e), true },
            { "attn_k.weight",      e,  kv, INIT_MATRIX, 1.0f / sqrtf((float)e), true },
            { "attn_v.weight",      e,  kv, INIT_MATRIX, 1.0f / sqrtf((float)e), true },
            { "attn_output.weight", q,  e,  INIT_MATRIX, out_scale / sqrtf((float)q), true },
            { "attn_q.bias",        q,  1,  INIT_BIAS,   0, s->arch == ARCH_QWEN2 },
            { "attn_k.bias",        kv, 1,  INIT_BIAS,   0, s->arch == ARCH_QWEN2 },
            { "attn_v.bias",        kv, 1,  INIT_BIAS,   0, s->arch == ARCH_QWEN2 },
            { "attn_q_norm.weight", hd, 1,  INIT_NORM,   0, s->arch == ARCH_QWEN3 },
            { "attn_k_norm.weight", hd, 1,  INIT_NORM,   0, s->arch == ARCH_QWEN3 },
            { "ffn_norm.weight",    e,  1,  INIT_NORM,   0, true },
            { "ffn_gate.weight",    e,  ff, INIT_MATRIX, 1.0f / sqrtf((float)e), true },
            { "ffn_up.weight",      e,  ff, INIT_MATRIX, 1.0f / sqrtf((float)e), true },
            { "ffn_down.weight",    ff, e,  INIT_MATRIX, out_scale / sqrtf((float)ff), true },
        };
        for (size_t i = 0; i < sizeof lt / sizeof lt[0]; i++) {
            if (!lt[i].want)
                continue;
            snprintf(name, sizeof name, "blk.%d.%s", il, lt[i].suffix);
            if ((rc = mk_add(p, name, s->wtype, lt[i].ne0, lt[i].ne1, lt[i].init, lt[i].std)))
                return rc;
        }
    }
    p->row = malloc((size_t)p->row_cap * sizeof *p->row);
    return p->row ? PS_OK : ps_error_set(PS_ENOMEM, "mkmodel: out of memory");
}

static int mk_fill(void *ctx, int64_t index, void *dst, size_t nbytes)
{
    struct mk_plan *p = ctx;
    const struct mk_tensor *t = &p->t[index];
    size_t row_bytes = dtype_row_bytes(t->type, t->ne0);
    struct mk_rng rng;
    rng_seed(&rng, p->spec->seed, t->name);
    if (row_bytes * (size_t)t->ne1 != nbytes)
        return ps_error_set(PS_EINTERNAL, "mkmodel: size mismatch for tensor '%s'", t->name);
    for (int64_t r = 0; r < t->ne1; r++) {
        for (int64_t i = 0; i < t->ne0; i++) {
            float z = rng_normal(&rng);
            switch (t->init) {
            case INIT_MATRIX: p->row[i] = z * t->std; break;
            case INIT_NORM:   p->row[i] = 1.0f + 0.05f * z; break;
            case INIT_BIAS:   p->row[i] = 0.02f * z; break;
            }
        }
        int rc = quant_row_quantize(t->type, p->row, (uint8_t *)dst + (size_t)r * row_bytes, t->ne0);
        if (rc)
            return rc;
    }
    return PS_OK;
}

/* ---- vocabulary --------------------------------------------------------- */

/* GPT-2 byte-level mapping: printable bytes map to themselves, the others
 * to U+0100 + k in byte order. */
static uint32_t gpt2_byte_codepoint(int b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
        return (uint32_t)b;
    int k = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)))
            k++;
    return 256u + (uint32_t)k;
}

static void utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static int mk_write_vocab(gguf_writer *w, int32_t n_vocab)
{
    int rc = PS_ENOMEM;
    char **tok = calloc((size_t)n_vocab, sizeof *tok);
    int32_t *type = malloc((size_t)n_vocab * sizeof *type);
    if (!tok || !type) {
        rc = ps_error_set(PS_ENOMEM, "mkmodel: out of memory for the vocabulary");
        goto fail;
    }
    for (int32_t i = 0; i < n_vocab; i++) {
        tok[i] = malloc(32);
        if (!tok[i]) {
            rc = ps_error_set(PS_ENOMEM, "mkmodel: out of memory for the vocabulary");
            goto fail;
        }
        if (i < MK_N_BYTE_TOKENS) {
            utf8_put(tok[i], gpt2_byte_codepoint(i));
            type[i] = 1; /* NORMAL */
        } else if (i == MK_TOK_ENDOFTEXT || i == MK_TOK_IM_START || i == MK_TOK_IM_END) {
            static const char *const specials[] = { "<|endoftext|>", "<|im_start|>",
                                                    "<|im_end|>" };
            snprintf(tok[i], 32, "%s", specials[i - MK_TOK_ENDOFTEXT]);
            type[i] = 3; /* CONTROL */
        } else {
            snprintf(tok[i], 32, "<|reserved_%d|>", i - MK_MIN_VOCAB);
            type[i] = 5; /* UNUSED */
        }
    }
    const char *no_merges[1] = { NULL };
    if ((rc = gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = gguf_writer_set_str(w, "tokenizer.ggml.pre", "default")) ||
        (rc = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok,
                                      (uint64_t)n_vocab)) ||
        (rc = gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", type, (uint64_t)n_vocab)) ||
        (rc = gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", no_merges, 0)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", MK_TOK_ENDOFTEXT)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", MK_TOK_IM_END)) ||
        (rc = gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", MK_TOK_ENDOFTEXT)) ||
        (rc = gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false)) ||
        (rc = gguf_writer_set_str(w, "tokenizer.chat_template", mk_chatml_template)))
        goto fail;
    rc = PS_OK;
fail:
    if (tok)
        for (int32_t i = 0; i < n_vocab; i++)
            free(tok[i]);
    free(tok);
    free(type);
    return rc;
}

/* ---- spec checks and header --------------------------------------------- */

static bool mk_weight_type_ok(enum dtype t)
{
    switch (t) {
    case DT_F32: case DT_F16: case DT_BF16: case DT_Q8_0: case DT_Q4_0: case DT_Q4_1:
    case DT_Q4_K: case DT_Q6_K:
        return true;
    default:
        return false;
    }
}

static int mk_check(const struct mkmodel_spec *s)
{
    if (s->arch != ARCH_LLAMA && s->arch != ARCH_QWEN2 && s->arch != ARCH_QWEN3)
        return ps_error_set(PS_EINVAL, "mkmodel: unknown architecture %d", (int)s->arch);
    if (s->n_vocab < MK_MIN_VOCAB || s->n_vocab > (1 << 24))
        return ps_error_set(PS_EINVAL, "mkmodel: vocab %d out of range (%d..%d)", s->n_vocab,
                            MK_MIN_VOCAB, 1 << 24);
    const struct { const char *what; int32_t v; } dims[] = {
        { "embd", s->n_embd }, { "layers", s->n_layer }, { "heads", s->n_head },
        { "kv-heads", s->n_head_kv }, { "head-dim", s->head_dim }, { "ff", s->n_ff },
        { "ctx", s->n_ctx },
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v <= 0 || (i != 6 && dims[i].v > 65536))
            return ps_error_set(PS_EINVAL, "mkmodel: %s = %d out of range", dims[i].what,
                                dims[i].v);
    if (s->n_head % s->n_head_kv != 0)
        return ps_error_set(PS_EINVAL, "mkmodel: heads (%d) not a multiple of kv-heads (%d)",
                            s->n_head, s->n_head_kv);
    if (s->head_dim % 2 != 0)
        return ps_error_set(PS_EINVAL, "mkmodel: head-dim %d must be even (rope)", s->head_dim);
    if (!(s->rope_theta > 0) || !(s->rms_eps > 0))
        return ps_error_set(PS_EINVAL, "mkmodel: rope theta and rms eps must be > 0");
    if (!mk_weight_type_ok(s->wtype) || !mk_weight_type_ok(s->embd_type))
        return ps_error_set(PS_EINVAL,
                            "mkmodel: weight types must be F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
                            "Q4_K or Q6_K");
    return PS_OK;
}

static int mk_write_hparams(gguf_writer *w, const struct mkmodel_spec *s)
{
    const char *arch = s->arch == ARCH_QWEN2 ? "qwen2" : s->arch == ARCH_QWEN3 ? "qwen3" : "llama";
    char key[96];
    int rc;
#define MK_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    if ((rc = gguf_writer_set_str(w, "general.architecture", arch)) ||
        (rc = gguf_writer_set_str(w, "general.name", s->name[0] ? s->name : "mkmodel")) ||
        (rc = gguf_writer_set_u32(w, "general.alignment", 32)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("vocab_size"), (uint32_t)s->n_vocab)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("context_length"), (uint32_t)s->n_ctx)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("embedding_length"), (uint32_t)s->n_embd)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("block_count"), (uint32_t)s->n_layer)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("feed_forward_length"), (uint32_t)s->n_ff)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("attention.head_count"), (uint32_t)s->n_head)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("attention.head_count_kv"), (uint32_t)s->n_head_kv)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("attention.key_length"), (uint32_t)s->head_dim)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("attention.value_length"), (uint32_t)s->head_dim)) ||
        (rc = gguf_writer_set_u32(w, MK_KEY("rope.dimension_count"), (uint32_t)s->head_dim)) ||
        (rc = gguf_writer_set_f32(w, MK_KEY("rope.freq_base"), s->rope_theta)) ||
        (rc = gguf_writer_set_f32(w, MK_KEY("attention.layer_norm_rms_epsilon"), s->rms_eps)))
        return rc;
#undef MK_KEY
    return PS_OK;
}

int mkmodel_write(const char *path, const struct mkmodel_spec *spec)
{
    struct mk_plan plan = { .spec = spec };
    gguf_writer *w = NULL;
    int rc;

    if ((rc = mk_check(spec)) || (rc = mk_plan_build(&plan)) || (rc = gguf_writer_create(&w)) ||
        (rc = mk_write_hparams(w, spec)) || (rc = mk_write_vocab(w, spec->n_vocab)))
        goto fail;
    for (int64_t i = 0; i < plan.n; i++) {
        const struct mk_tensor *t = &plan.t[i];
        int64_t ne[2] = { t->ne0, t->ne1 };
        if ((rc = gguf_writer_add_tensor(w, t->name, t->type, t->ne1 == 1 ? 1 : 2, ne, NULL)))
            goto fail;
    }
    rc = gguf_writer_write_fill(w, path, mk_fill, &plan);
fail:
    gguf_writer_free(w);
    free(plan.t);
    free(plan.row);
    return rc;
}
