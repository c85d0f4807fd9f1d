/* test_model.c - model hyper-parameters and weight views: the real
 * SmolLM2-135M file (skipped when absent), synthetic models of each
 * architecture from mkmodel, and broken variants whose error names the
 * missing key / tensor or wrong shape. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include "test_util.h"

static char tmpdir[64];

static void tmp_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", tmpdir, name);
}

static void test_real_model(void)
{
    const char *path = test_model_path();
    if (access(path, R_OK) != 0) {
        printf("note: %s absent (scripts/fetch-model): real-model checks skipped\n", path);
        return;
    }
    struct model *m = NULL;
    int rc = model_load(path, &m);
    CHECK_MSG(rc == PS_OK, "%s", ps_error_last());
    if (rc)
        return;
    const struct model_hparams *hp = &m->hp;
    CHECK(hp->arch == ARCH_LLAMA && !strcmp(hp->arch_name, "llama"));
    CHECK(hp->n_layer == 30 && hp->n_embd == 576 && hp->n_ff == 1536);
    CHECK(hp->n_head == 9 && hp->n_head_kv == 3 && hp->head_dim == 64 && hp->rope_dim == 64);
    CHECK(hp->n_vocab == 49152);
    CHECK(hp->rope_theta == 100000.0f && hp->rms_eps == 1e-5f);
    CHECK(hp->rope_style == ROPE_NORMAL && hp->rope_freq_scale == 1.0f);
    CHECK(hp->n_ctx_train == 8192);
    CHECK(hp->tied_embeddings);
    CHECK(m->tok_embd.type == DT_Q8_0 && m->tok_embd.ne[0] == 576 && m->tok_embd.ne[1] == 49152);
    CHECK(m->output.data == m->tok_embd.data && m->output.type == m->tok_embd.type);
    CHECK(m->output_norm.type == DT_F32 && m->output_norm.data);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct layer_weights *l = &m->layers[il];
        CHECK(l->attn_norm.data && l->ffn_norm.data && l->attn_norm.type == DT_F32);
        CHECK(l->wq.data && l->wk.data && l->wv.data && l->wo.data);
        CHECK(l->w_gate.data && l->w_up.data && l->w_down.data);
        CHECK(!l->bq.data && !l->q_norm.data);
        CHECK(l->wq.type == DT_Q4_1 && l->wq.ne[0] == 576 && l->wq.ne[1] == 576);
        CHECK(l->wk.ne[0] == 576 && l->wk.ne[1] == 192);
        CHECK(l->w_down.ne[0] == 1536 && l->w_down.ne[1] == 576);
    }
    model_free(m);
}

static struct mkmodel_spec small_spec(enum model_arch arch)
{
    struct mkmodel_spec s;
    CHECK(mkmodel_preset("tiny", &s) == PS_OK);
    s.arch      = arch;
    s.n_vocab   = 300;
    s.n_embd    = 64;
    s.n_layer   = 2;
    s.n_head    = 4;
    s.n_head_kv = 2;
    s.head_dim  = arch == ARCH_QWEN3 ? 32 : 16;
    s.n_ff      = 96;
    s.n_ctx     = 256;
    s.wtype     = DT_Q8_0;
    s.embd_type = DT_F16;
    return s;
}

static void test_synthetic(void)
{
    static const enum model_arch archs[] = { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3 };
    static const char *const names[] = { "llama", "qwen2", "qwen3" };
    for (int a = 0; a < 3; a++) {
        for (int tied = 0; tied < 2; tied++) {
            struct mkmodel_spec s = small_spec(archs[a]);
            s.tied = tied;
            char path[128];
            tmp_path(path, sizeof path, "syn.gguf");
            int rc = mkmodel_write(path, &s);
            CHECK_MSG(rc == PS_OK, "%s: %s", names[a], ps_error_last());
            struct model *m = NULL;
            rc = model_load(path, &m);
            CHECK_MSG(rc == PS_OK, "%s: %s", names[a], ps_error_last());
            if (rc)
                continue;
            const struct model_hparams *hp = &m->hp;
            CHECK(hp->arch == archs[a] && !strcmp(hp->arch_name, names[a]));
            CHECK(hp->n_vocab == 300 && hp->n_embd == 64 && hp->n_layer == 2);
            CHECK(hp->n_head == 4 && hp->n_head_kv == 2 && hp->head_dim == s.head_dim);
            CHECK(hp->n_ff == 96 && hp->n_ctx_train == 256 && hp->rope_dim == s.head_dim);
            CHECK(hp->rope_style == (archs[a] == ARCH_LLAMA ? ROPE_NORMAL : ROPE_NEOX));
            CHECK(hp->tied_embeddings == (bool)tied);
            CHECK(tied ? m->output.data == m->tok_embd.data : m->output.data != m->tok_embd.data);
            CHECK(m->tok_embd.type == DT_F16);
            const struct layer_weights *l = &m->layers[1];
            CHECK(l->wq.type == DT_Q8_0 && l->wq.ne[0] == 64 && l->wq.ne[1] == 4 * s.head_dim);
            CHECK(!!l->bq.data == (archs[a] == ARCH_QWEN2));
            CHECK(!!l->bv.data == (archs[a] == ARCH_QWEN2));
            CHECK(!!l->q_norm.data == (archs[a] == ARCH_QWEN3));
            CHECK(!!l->k_norm.data == (archs[a] == ARCH_QWEN3));
            if (l->q_norm.data)
                CHECK(l->q_norm.ne[0] == s.head_dim);
            /* tokenizer metadata is complete */
            const char *str;
            CHECK(gguf_get_str(m->gguf, "tokenizer.ggml.model", &str, NULL) == PS_OK &&
                  !strcmp(str, "gpt2"));
            CHECK(gguf_get_arr_str(m->gguf, "tokenizer.ggml.tokens", 257, &str, NULL) == PS_OK &&
                  !strcmp(str, "<|im_start|>"));
            CHECK(gguf_get_arr_str(m->gguf, "tokenizer.ggml.tokens", 32, &str, NULL) == PS_OK &&
                  !strcmp(str, "\xc4\xa0")); /* ' ' -> U+0120 */
            CHECK(gguf_get_str(m->gguf, "tokenizer.chat_template", &str, NULL) == PS_OK &&
                  strstr(str, "<|im_start|>"));
            /* weights are finite and sane: norms around 1 */
            const float *norm = m->layers[0].attn_norm.data;
            for (int i = 0; i < 64; i++)
                CHECK(norm[i] > 0.5f && norm[i] < 1.5f);
            model_free(m);
            unlink(path);
        }
    }

    /* determinism: same seed, same bytes; all weight types encode */
    static const enum dtype wt[] = { DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0, DT_Q4_1,
                                     DT_Q4_K, DT_Q6_K };
    for (size_t k = 0; k < sizeof wt / sizeof wt[0]; k++) {
        struct mkmodel_spec s = small_spec(ARCH_LLAMA);
        s.n_embd = 256;
        s.n_ff   = 256;
        s.head_dim = 64;
        s.wtype  = wt[k];
        s.embd_type = wt[k];
        char p1[128], p2[128];
        tmp_path(p1, sizeof p1, "d1.gguf");
        tmp_path(p2, sizeof p2, "d2.gguf");
        CHECK_MSG(mkmodel_write(p1, &s) == PS_OK, "%s", ps_error_last());
        CHECK_MSG(mkmodel_write(p2, &s) == PS_OK, "%s", ps_error_last());
        gguf_file *f1 = NULL, *f2 = NULL;
        CHECK(gguf_open(p1, &f1) == PS_OK && gguf_open(p2, &f2) == PS_OK);
        if (f1 && f2) {
            CHECK(gguf_file_size(f1) == gguf_file_size(f2));
            const struct gguf_tensor *t1 = gguf_find_tensor(f1, "blk.1.ffn_down.weight");
            const struct gguf_tensor *t2 = gguf_find_tensor(f2, "blk.1.ffn_down.weight");
            CHECK(t1 && t2 && t1->type == wt[k] && t1->nbytes == t2->nbytes &&
                  !memcmp(t1->data, t2->data, t1->nbytes));
        }
        gguf_close(f1);
        gguf_close(f2);
        unlink(p1);
        unlink(p2);
    }

    /* presets resolve; bad specs are rejected with a detail */
    struct mkmodel_spec s;
    CHECK(mkmodel_preset("qwen3-0.6b", &s) == PS_OK && s.arch == ARCH_QWEN3 && s.head_dim == 128);
    CHECK(mkmodel_preset("llama-3.2-1b", &s) == PS_OK && s.n_vocab == 128256);
    CHECK(mkmodel_preset("nope", &s) == PS_ENOTFOUND && strstr(ps_error_last(), "nope"));
    s = small_spec(ARCH_LLAMA);
    s.n_head_kv = 3;
    char path[128];
    tmp_path(path, sizeof path, "bad.gguf");
    CHECK(mkmodel_write(path, &s) == PS_EINVAL && strstr(ps_error_last(), "kv-heads"));
    s = small_spec(ARCH_LLAMA);
    s.wtype = DT_Q4_0;
    s.n_ff  = 48; /* ffn_down rows of 48: not a multiple of 32 */
    CHECK(mkmodel_write(path, &s) == PS_EINVAL && strstr(ps_error_last(), "ffn_down"));
    unlink(path);
}

/* ---- broken variants: copy a model through the writer with one change --- */

struct edit {
    const char *drop_key;
    const char *drop_tensor;
    const char *set_str_key, *set_str_val; /* replace a string value */
    const char *reshape_tensor;            /* replace with F32 of shape ne */
    int64_t     reshape_ne[2];
    enum dtype  reshape_type;
};

static int copy_with_edit(const gguf_file *f, const struct edit *e, const char *path)
{
    gguf_writer *w;
    int rc = gguf_writer_create(&w);
    for (int64_t i = 0; !rc && i < gguf_kv_count(f); i++) {
        const char *k = gguf_kv_key(f, i);
        if (e->drop_key && !strcmp(k, e->drop_key))
            continue;
        switch (gguf_kv_type(f, i)) {
        case GGUF_TYPE_UINT32: {
            uint32_t v;
            gguf_get_u32(f, k, &v);
            rc = gguf_writer_set_u32(w, k, v);
            break;
        }
        case GGUF_TYPE_FLOAT32: {
            float v;
            gguf_get_f32(f, k, &v);
            rc = gguf_writer_set_f32(w, k, v);
            break;
        }
        case GGUF_TYPE_BOOL: {
            bool v;
            gguf_get_bool(f, k, &v);
            rc = gguf_writer_set_bool(w, k, v);
            break;
        }
        case GGUF_TYPE_STRING: {
            const char *v;
            gguf_get_str(f, k, &v, NULL);
            if (e->set_str_key && !strcmp(k, e->set_str_key))
                v = e->set_str_val;
            rc = gguf_writer_set_str(w, k, v);
            break;
        }
        case GGUF_TYPE_ARRAY: {
            enum gguf_type et;
            uint64_t n;
            gguf_get_arr_info(f, k, &et, &n);
            if (et == GGUF_TYPE_STRING) {
                const char **v = malloc((n ? n : 1) * sizeof *v);
                for (uint64_t j = 0; j < n; j++)
                    gguf_get_arr_str(f, k, j, &v[j], NULL);
                rc = gguf_writer_set_arr_str(w, k, v, n);
                free(v);
            } else {
                const void *d;
                gguf_get_arr_data(f, k, &d);
                int32_t *v = malloc((n ? n : 1) * sizeof *v);
                memcpy(v, d, n * sizeof *v);
                rc = gguf_writer_set_arr_i32(w, k, v, n);
                free(v);
            }
            break;
        }
        default:
            rc = PS_EINTERNAL;
        }
    }
    if (e->set_str_key && gguf_find_kv(f, e->set_str_key) < 0 && !rc)
        rc = gguf_writer_set_str(w, e->set_str_key, e->set_str_val);
    for (int64_t i = 0; !rc && i < gguf_tensor_count(f); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        if (e->drop_tensor && !strcmp(t->name, e->drop_tensor))
            continue;
        if (e->reshape_tensor && !strcmp(t->name, e->reshape_tensor)) {
            size_t nb = dtype_row_bytes(e->reshape_type, e->reshape_ne[0]) * (size_t)e->reshape_ne[1];
            void *z = calloc(1, nb);
            rc = gguf_writer_add_tensor(w, t->name, e->reshape_type, 2, e->reshape_ne, z);
            free(z);
            continue;
        }
        rc = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data);
    }
    if (!rc)
        rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    return rc;
}

static void expect_model_fail(const gguf_file *base, const struct edit *e, int want,
                              const char *needle)
{
    char path[128];
    tmp_path(path, sizeof path, "edit.gguf");
    int rc = copy_with_edit(base, e, path);
    CHECK_MSG(rc == PS_OK, "copy: %s", ps_error_last());
    struct model *m = NULL;
    ps_error_clear();
    rc = model_load(path, &m);
    CHECK_MSG(rc != PS_OK && m == NULL, "accepted (want '%s')", needle);
    if (want)
        CHECK_MSG(rc == want, "status %d '%s' want %d", rc, ps_error_last(), want);
    CHECK_MSG(strstr(ps_error_last(), needle) != NULL, "detail '%s' lacks '%s'", ps_error_last(),
              needle);
    CHECK(strncmp(ps_error_last(), "model: ", 7) == 0);
    model_free(m);
    unlink(path);
}

static void test_broken(void)
{
    struct mkmodel_spec s = small_spec(ARCH_QWEN3);
    char path[128];
    tmp_path(path, sizeof path, "base.gguf");
    CHECK_MSG(mkmodel_write(path, &s) == PS_OK, "%s", ps_error_last());
    gguf_file *f = NULL;
    CHECK(gguf_open(path, &f) == PS_OK);
    if (!f)
        return;

    /* the unedited copy loads */
    struct edit none = { 0 };
    char cpath[128];
    tmp_path(cpath, sizeof cpath, "copy.gguf");
    CHECK(copy_with_edit(f, &none, cpath) == PS_OK);
    struct model *m = NULL;
    CHECK_MSG(model_load(cpath, &m) == PS_OK, "%s", ps_error_last());
    model_free(m);
    unlink(cpath);

    expect_model_fail(f, &(struct edit){ .drop_key = "qwen3.block_count" }, PS_EFORMAT,
                      "'qwen3.block_count'");
    expect_model_fail(f, &(struct edit){ .drop_key = "qwen3.attention.layer_norm_rms_epsilon" },
                      PS_EFORMAT, "layer_norm_rms_epsilon");
    expect_model_fail(f, &(struct edit){ .drop_key = "general.architecture" }, PS_EFORMAT,
                      "general.architecture");
    expect_model_fail(f, &(struct edit){ .set_str_key = "general.architecture",
                                         .set_str_val = "gpt2" },
                      PS_EUNSUPPORTED, "'gpt2'");
    expect_model_fail(f, &(struct edit){ .set_str_key = "qwen3.rope.scaling.type",
                                         .set_str_val = "yarn" },
                      PS_EUNSUPPORTED, "'yarn'");
    expect_model_fail(f, &(struct edit){ .drop_tensor = "blk.1.ffn_up.weight" }, PS_EFORMAT,
                      "'blk.1.ffn_up.weight'");
    expect_model_fail(f, &(struct edit){ .drop_tensor = "blk.0.attn_k_norm.weight" }, PS_EFORMAT,
                      "'blk.0.attn_k_norm.weight'");
    expect_model_fail(f, &(struct edit){ .drop_tensor = "token_embd.weight" }, PS_EFORMAT,
                      "'token_embd.weight'");
    expect_model_fail(f, &(struct edit){ .drop_tensor = "output_norm.weight" }, PS_EFORMAT,
                      "'output_norm.weight'");
    expect_model_fail(f, &(struct edit){ .reshape_tensor = "blk.0.attn_q.weight",
                                         .reshape_ne = { 64, 64 }, .reshape_type = DT_F32 },
                      PS_EFORMAT, "'blk.0.attn_q.weight' has shape [64, 64, 1, 1], expected [64, 128]");
    expect_model_fail(f, &(struct edit){ .reshape_tensor = "blk.1.ffn_down.weight",
                                         .reshape_ne = { 64, 96 }, .reshape_type = DT_F32 },
                      PS_EFORMAT, "'blk.1.ffn_down.weight'");
    expect_model_fail(f, &(struct edit){ .reshape_tensor = "blk.0.attn_norm.weight",
                                         .reshape_ne = { 64, 1 }, .reshape_type = DT_F16 },
                      PS_EUNSUPPORTED, "expected F32");
    /* without {arch}.vocab_size the vocabulary size comes from the token list */
    struct edit novocab = { .drop_key = "qwen3.vocab_size" };
    CHECK(copy_with_edit(f, &novocab, cpath) == PS_OK);
    m = NULL;
    CHECK_MSG(model_load(cpath, &m) == PS_OK, "%s", ps_error_last());
    if (m)
        CHECK(m->hp.n_vocab == 300);
    model_free(m);
    unlink(cpath);
    gguf_close(f);
    unlink(path);

    m = NULL;
    CHECK(model_load("/nonexistent.gguf", &m) == PS_EIO && m == NULL);
    CHECK(strstr(ps_error_last(), "/nonexistent.gguf"));
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_model.XXXXXX");
    if (!mkdtemp(tmpdir))
        TEST_SKIP("cannot create a temp dir");
    test_real_model();
    test_synthetic();
    test_broken();
    rmdir(tmpdir);
    TEST_DONE();
}
