/* test_gguf.c - GGUF reader/writer: round trips of every value type and
 * tensor type, getter conversions, and malformed files that must fail with
 * a detail naming the problem (never crash, never allocate absurdly). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "test_util.h"

/* ---- hand-built images -------------------------------------------------- */

struct img {
    uint8_t *p;
    size_t   len, cap;
};

static void put(struct img *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p   = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}
static void put_u8(struct img *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(struct img *b, uint16_t v) { put(b, &v, 2); } /* host is little endian */
static void put_u32(struct img *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct img *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct img *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_key(struct img *b, const char *k, uint32_t type)
{
    put_str(b, k);
    put_u32(b, type);
}
static void pad_to(struct img *b, size_t align)
{
    while (b->len % align)
        put_u8(b, 0);
}
static void put_header(struct img *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void put_tensor_info(struct img *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                            uint32_t type, uint64_t offset)
{
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        put_u64(b, ne[d]);
    put_u32(b, type);
    put_u64(b, offset);
}

/* One kv, one tensor: F32 [8] (32 bytes) unless the caller changes it. */
struct one {
    uint32_t version;
    uint64_t n_kv_override;  /* 0: real count */
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    uint64_t offset;
    size_t   data_bytes;     /* bytes of data actually present */
};

static struct one one_default(void)
{
    struct one o = { .version = 3, .n_dims = 1, .ne = { 8 }, .type = 0, .offset = 0,
                     .data_bytes = 32 };
    return o;
}

static struct img build_one(const struct one *o)
{
    struct img b = { 0 };
    put_header(&b, o->version, 1, o->n_kv_override ? o->n_kv_override : 1);
    put_key(&b, "general.name", GGUF_TYPE_STRING);
    put_str(&b, "x");
    put_tensor_info(&b, "t", o->n_dims, o->ne, o->type, o->offset);
    pad_to(&b, 32);
    for (size_t i = 0; i < o->data_bytes; i++)
        put_u8(&b, (uint8_t)i);
    return b;
}

/* Expect open_memory to fail with status `want` (0: any) and a detail
 * containing `needle`. */
static void expect_fail(const struct img *b, int want, const char *needle, const char *what)
{
    gguf_file *f = NULL;
    ps_error_clear();
    int rc = gguf_open_memory(b->p, b->len, &f);
    CHECK_MSG(rc != PS_OK, "%s: accepted", what);
    CHECK_MSG(f == NULL, "%s: handle set on failure", what);
    if (want)
        CHECK_MSG(rc == want, "%s: status %d (%s), want %d", what, rc, ps_error_last(), want);
    CHECK_MSG(strncmp(ps_error_last(), "gguf: ", 6) == 0, "%s: detail '%s'", what,
              ps_error_last());
    CHECK_MSG(strstr(ps_error_last(), needle) != NULL, "%s: detail '%s' lacks '%s'", what,
              ps_error_last(), needle);
    CHECK(strchr(ps_error_last(), '\n') == NULL);
    gguf_close(f);
}

/* ---- every metadata type, hand-built ------------------------------------ */

static void test_all_value_types(void)
{
    struct img b = { 0 };
    put_header(&b, 2, 1, 17);
    put_key(&b, "u8", GGUF_TYPE_UINT8);     put_u8(&b, 200);
    put_key(&b, "i8", GGUF_TYPE_INT8);      put_u8(&b, (uint8_t)-5);
    put_key(&b, "u16", GGUF_TYPE_UINT16);   put_u16(&b, 60000);
    put_key(&b, "i16", GGUF_TYPE_INT16);    put_u16(&b, (uint16_t)-300);
    put_key(&b, "u32", GGUF_TYPE_UINT32);   put_u32(&b, 4000000000u);
    put_key(&b, "i32", GGUF_TYPE_INT32);    put_u32(&b, (uint32_t)-7);
    float fv = 1.5f;
    uint32_t fu;
    memcpy(&fu, &fv, 4);
    put_key(&b, "f32", GGUF_TYPE_FLOAT32);  put_u32(&b, fu);
    put_key(&b, "bool", GGUF_TYPE_BOOL);    put_u8(&b, 1);
    put_key(&b, "str", GGUF_TYPE_STRING);   put_u64(&b, 3); put(&b, "a\0b", 3);
    put_key(&b, "u64", GGUF_TYPE_UINT64);   put_u64(&b, UINT64_MAX);
    put_key(&b, "i64", GGUF_TYPE_INT64);    put_u64(&b, (uint64_t)INT64_C(-123456789012));
    double dv = 2.25;
    uint64_t du;
    memcpy(&du, &dv, 8);
    put_key(&b, "f64", GGUF_TYPE_FLOAT64);  put_u64(&b, du);
    put_key(&b, "arr_i16", GGUF_TYPE_ARRAY); put_u32(&b, GGUF_TYPE_INT16); put_u64(&b, 3);
    put_u16(&b, 1); put_u16(&b, 2); put_u16(&b, (uint16_t)-3);
    put_key(&b, "arr_str", GGUF_TYPE_ARRAY); put_u32(&b, GGUF_TYPE_STRING); put_u64(&b, 2);
    put_str(&b, "hello"); put_str(&b, "");
    put_key(&b, "arr_bool", GGUF_TYPE_ARRAY); put_u32(&b, GGUF_TYPE_BOOL); put_u64(&b, 2);
    put_u8(&b, 0); put_u8(&b, 1);
    /* [[1, 2], ["x"]] */
    put_key(&b, "nested", GGUF_TYPE_ARRAY); put_u32(&b, GGUF_TYPE_ARRAY); put_u64(&b, 2);
    put_u32(&b, GGUF_TYPE_UINT32); put_u64(&b, 2); put_u32(&b, 1); put_u32(&b, 2);
    put_u32(&b, GGUF_TYPE_STRING); put_u64(&b, 1); put_str(&b, "x");
    put_key(&b, "empty_arr", GGUF_TYPE_ARRAY); put_u32(&b, GGUF_TYPE_FLOAT32); put_u64(&b, 0);
    uint64_t ne[2] = { 4, 2 };
    put_tensor_info(&b, "w", 2, ne, DT_F32, 0);
    pad_to(&b, 32);
    for (int i = 0; i < 8; i++) {
        float x = (float)i;
        put(&b, &x, 4);
    }

    gguf_file *f = NULL;
    int rc = gguf_open_memory(b.p, b.len, &f);
    CHECK_MSG(rc == PS_OK, "%s", ps_error_last());
    if (rc) {
        free(b.p);
        return;
    }
    CHECK(gguf_version(f) == 2);
    CHECK(gguf_kv_count(f) == 17);
    CHECK(gguf_file_size(f) == b.len);
    CHECK(gguf_kv_type(f, gguf_find_kv(f, "nested")) == GGUF_TYPE_ARRAY);
    CHECK(!strcmp(gguf_kv_key(f, 0), "u8"));
    CHECK(gguf_kv_key(f, 17) == NULL && gguf_kv_key(f, -1) == NULL);
    CHECK(gguf_find_kv(f, "nope") == -1);

    uint32_t u;
    int64_t i64;
    float fl;
    bool bo;
    const char *s;
    size_t len;
    CHECK(gguf_get_u32(f, "u8", &u) == PS_OK && u == 200);
    CHECK(gguf_get_u32(f, "u16", &u) == PS_OK && u == 60000);
    CHECK(gguf_get_u32(f, "u32", &u) == PS_OK && u == 4000000000u);
    CHECK(gguf_get_u32(f, "i8", &u) == PS_ERANGE);
    CHECK(strstr(ps_error_last(), "'i8'"));
    CHECK(gguf_get_u32(f, "u64", &u) == PS_ERANGE);
    CHECK(gguf_get_i64(f, "i8", &i64) == PS_OK && i64 == -5);
    CHECK(gguf_get_i64(f, "i16", &i64) == PS_OK && i64 == -300);
    CHECK(gguf_get_i64(f, "i32", &i64) == PS_OK && i64 == -7);
    CHECK(gguf_get_i64(f, "i64", &i64) == PS_OK && i64 == INT64_C(-123456789012));
    CHECK(gguf_get_i64(f, "u32", &i64) == PS_OK && i64 == 4000000000);
    CHECK(gguf_get_i64(f, "u64", &i64) == PS_ERANGE);
    CHECK(gguf_get_f32(f, "f32", &fl) == PS_OK && fl == 1.5f);
    CHECK(gguf_get_f32(f, "f64", &fl) == PS_OK && fl == 2.25f);
    CHECK(gguf_get_f32(f, "u32", &fl) == PS_EFORMAT);
    CHECK(strstr(ps_error_last(), "'u32'"));
    CHECK(gguf_get_bool(f, "bool", &bo) == PS_OK && bo);
    CHECK(gguf_get_bool(f, "u8", &bo) == PS_EFORMAT);
    CHECK(gguf_get_str(f, "str", &s, &len) == PS_OK && len == 3 && !memcmp(s, "a\0b", 4));
    CHECK(gguf_get_str(f, "str", &s, NULL) == PS_OK);
    CHECK(gguf_get_str(f, "u8", &s, &len) == PS_EFORMAT);
    CHECK(gguf_get_u32(f, "str", &u) == PS_EFORMAT);
    CHECK(gguf_get_u32(f, "missing.key", &u) == PS_ENOTFOUND);
    CHECK(strstr(ps_error_last(), "missing.key"));

    enum gguf_type et;
    uint64_t n;
    const void *data;
    CHECK(gguf_get_arr_info(f, "arr_i16", &et, &n) == PS_OK && et == GGUF_TYPE_INT16 && n == 3);
    CHECK(gguf_get_arr_data(f, "arr_i16", &data) == PS_OK);
    int16_t v16[3];
    memcpy(v16, data, sizeof v16);
    CHECK(v16[0] == 1 && v16[1] == 2 && v16[2] == -3);
    CHECK(gguf_get_arr_info(f, "arr_str", &et, &n) == PS_OK && et == GGUF_TYPE_STRING && n == 2);
    CHECK(gguf_get_arr_str(f, "arr_str", 0, &s, &len) == PS_OK && len == 5 && !strcmp(s, "hello"));
    CHECK(gguf_get_arr_str(f, "arr_str", 1, &s, &len) == PS_OK && len == 0 && !strcmp(s, ""));
    CHECK(gguf_get_arr_str(f, "arr_str", 2, &s, &len) == PS_ERANGE);
    CHECK(gguf_get_arr_data(f, "arr_str", &data) == PS_EFORMAT);
    CHECK(gguf_get_arr_str(f, "arr_i16", 0, &s, &len) == PS_EFORMAT);
    CHECK(gguf_get_arr_info(f, "arr_bool", &et, &n) == PS_OK && et == GGUF_TYPE_BOOL && n == 2);
    CHECK(gguf_get_arr_info(f, "nested", &et, &n) == PS_OK && et == GGUF_TYPE_ARRAY && n == 2);
    CHECK(gguf_get_arr_data(f, "nested", &data) == PS_EUNSUPPORTED);
    CHECK(gguf_get_arr_str(f, "nested", 0, &s, &len) == PS_EUNSUPPORTED);
    CHECK(gguf_get_arr_info(f, "empty_arr", &et, &n) == PS_OK && n == 0);
    CHECK(gguf_get_arr_info(f, "u8", &et, &n) == PS_EFORMAT);
    CHECK(gguf_get_arr_info(f, "nope", &et, &n) == PS_ENOTFOUND);

    CHECK(gguf_tensor_count(f) == 1);
    const struct gguf_tensor *t = gguf_find_tensor(f, "w");
    CHECK(t && t == gguf_tensor_at(f, 0));
    CHECK(gguf_tensor_at(f, 1) == NULL && gguf_find_tensor(f, "nope") == NULL);
    if (t) {
        CHECK(t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
        CHECK(t->type == DT_F32 && t->nbytes == 32 && t->offset == 0);
        float x;
        memcpy(&x, (const float *)t->data + 7, 4);
        CHECK(x == 7.0f);
    }
    gguf_close(f);
    free(b.p);
}

/* ---- writer round trip -------------------------------------------------- */

static char tmpdir[64];

static void test_writer_roundtrip(void)
{
    static const enum dtype types[] = { DT_F32, DT_F16, DT_BF16, DT_Q4_0, DT_Q4_1,
                                        DT_Q8_0, DT_Q8_1, DT_Q4_K, DT_Q6_K, DT_Q8_K };
    const size_t n_types = sizeof types / sizeof types[0];
    gguf_writer *w;
    CHECK(gguf_writer_create(&w) == PS_OK);
    CHECK(gguf_writer_set_u32(w, "a.u32", 123) == PS_OK);
    CHECK(gguf_writer_set_i32(w, "a.i32", -9) == PS_OK);
    CHECK(gguf_writer_set_f32(w, "a.f32", 0.25f) == PS_OK);
    CHECK(gguf_writer_set_bool(w, "a.bool", true) == PS_OK);
    CHECK(gguf_writer_set_str(w, "a.str", "héllo") == PS_OK);
    const char *strs[] = { "x", "", "zz\xc3\xa9" };
    CHECK(gguf_writer_set_arr_str(w, "a.strs", strs, 3) == PS_OK);
    int32_t iv[4] = { 1, -2, 3, INT32_MIN };
    CHECK(gguf_writer_set_arr_i32(w, "a.ints", iv, 4) == PS_OK);
    float fv[2] = { 0.5f, -1e30f };
    CHECK(gguf_writer_set_arr_f32(w, "a.floats", fv, 2) == PS_OK);
    CHECK(gguf_writer_set_u32(w, "a.u32", 1) == PS_EINVAL); /* duplicate key */
    CHECK(strstr(ps_error_last(), "a.u32"));

    uint8_t *blobs[16] = { 0 };
    size_t sizes[16];
    for (size_t k = 0; k < n_types; k++) {
        const struct dtype_info *di = dtype_info_get(types[k]);
        CHECK(di != NULL);
        if (!di)
            continue;
        int64_t ne[3] = { 256, 3, 2 };
        sizes[k] = dtype_row_bytes(types[k], 256) * 6;
        blobs[k] = malloc(sizes[k]);
        for (size_t i = 0; i < sizes[k]; i++)
            blobs[k][i] = (uint8_t)(i * 31 + k);
        char name[32];
        snprintf(name, sizeof name, "t.%s", di->name);
        CHECK_MSG(gguf_writer_add_tensor(w, name, types[k], 3, ne, blobs[k]) == PS_OK, "%s",
                  ps_error_last());
    }
    int64_t ne_bad[1] = { 33 };
    CHECK(gguf_writer_add_tensor(w, "bad", DT_Q4_0, 1, ne_bad, blobs[0]) == PS_EINVAL);
    int64_t ne1[1] = { 256 };
    CHECK(gguf_writer_add_tensor(w, "t.F32", DT_F32, 1, ne1, blobs[0]) == PS_EINVAL);

    char path[128];
    snprintf(path, sizeof path, "%s/rt.gguf", tmpdir);
    CHECK_MSG(gguf_writer_write(w, path) == PS_OK, "%s", ps_error_last());
    gguf_writer_free(w);

    gguf_file *f;
    int rc = gguf_open(path, &f);
    CHECK_MSG(rc == PS_OK, "%s", ps_error_last());
    if (rc == PS_OK) {
        uint32_t u;
        int64_t i64;
        float fl;
        bool bo;
        const char *s;
        size_t len;
        enum gguf_type et;
        uint64_t n;
        const void *data;
        CHECK(gguf_version(f) == 3);
        CHECK(gguf_get_u32(f, "a.u32", &u) == PS_OK && u == 123);
        CHECK(gguf_get_i64(f, "a.i32", &i64) == PS_OK && i64 == -9);
        CHECK(gguf_get_u32(f, "a.i32", &u) == PS_ERANGE);
        CHECK(gguf_get_f32(f, "a.f32", &fl) == PS_OK && fl == 0.25f);
        CHECK(gguf_get_bool(f, "a.bool", &bo) == PS_OK && bo);
        CHECK(gguf_get_str(f, "a.str", &s, &len) == PS_OK && !strcmp(s, "héllo") && len == 6);
        CHECK(gguf_get_arr_info(f, "a.strs", &et, &n) == PS_OK && et == GGUF_TYPE_STRING && n == 3);
        CHECK(gguf_get_arr_str(f, "a.strs", 2, &s, &len) == PS_OK && !strcmp(s, "zz\xc3\xa9"));
        CHECK(gguf_get_arr_info(f, "a.ints", &et, &n) == PS_OK && et == GGUF_TYPE_INT32 && n == 4);
        CHECK(gguf_get_arr_data(f, "a.ints", &data) == PS_OK && !memcmp(data, iv, sizeof iv));
        CHECK(gguf_get_arr_info(f, "a.floats", &et, &n) == PS_OK && et == GGUF_TYPE_FLOAT32);
        CHECK(gguf_get_arr_data(f, "a.floats", &data) == PS_OK && !memcmp(data, fv, sizeof fv));
        CHECK(gguf_tensor_count(f) == (int64_t)n_types);
        for (size_t k = 0; k < n_types; k++) {
            const struct gguf_tensor *t = gguf_tensor_at(f, (int64_t)k);
            if (!t || !blobs[k])
                continue;
            CHECK(t->type == types[k]);
            CHECK(t->n_dims == 3 && t->ne[0] == 256 && t->ne[1] == 3 && t->ne[2] == 2);
            CHECK(t->nbytes == sizes[k]);
            CHECK(((uintptr_t)t->data % 32) == 0);
            CHECK(t->data && !memcmp(t->data, blobs[k], sizes[k]));
            CHECK(gguf_find_tensor(f, t->name) == t);
        }
        gguf_close(f);
    }
    for (size_t k = 0; k < n_types; k++)
        free(blobs[k]);

    /* every prefix of a small valid file fails cleanly */
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    if (fp) {
        fseek(fp, 0, SEEK_END);
        long size = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        uint8_t *all = malloc((size_t)size);
        CHECK(fread(all, 1, (size_t)size, fp) == (size_t)size);
        fclose(fp);
        int fails = 0;
        for (long cut = 0; cut < size; cut++) {
            uint8_t *copy = malloc(cut ? (size_t)cut : 1);
            memcpy(copy, all, (size_t)cut);
            gguf_file *g = NULL;
            ps_error_clear();
            rc = gguf_open_memory(copy, (size_t)cut, &g);
            if (rc == PS_OK || g != NULL || strncmp(ps_error_last(), "gguf: ", 6) != 0) {
                if (fails++ < 5)
                    fprintf(stderr, "prefix %ld of %ld: rc %d '%s'\n", cut, size, rc,
                            ps_error_last());
            }
            gguf_close(g);
            free(copy);
        }
        CHECK(fails == 0);
        gguf_file *g = NULL;
        CHECK(gguf_open_memory(all, (size_t)size, &g) == PS_OK);
        gguf_close(g);
        free(all);
    }
}

/* ---- malformed input ---------------------------------------------------- */

static void test_bad_inputs(void)
{
    struct one o;
    struct img b;

    o = one_default();
    b = build_one(&o);
    gguf_file *f = NULL;
    CHECK_MSG(gguf_open_memory(b.p, b.len, &f) == PS_OK, "baseline: %s", ps_error_last());
    gguf_close(f);
    b.p[0] = 'X';
    expect_fail(&b, PS_EFORMAT, "magic", "wrong magic");
    free(b.p);

    o = one_default();
    o.version = 1;
    b = build_one(&o);
    expect_fail(&b, PS_EUNSUPPORTED, "version 1", "version 1");
    free(b.p);
    o.version = 99;
    b = build_one(&o);
    expect_fail(&b, PS_EUNSUPPORTED, "version 99", "version 99");
    free(b.p);

    o = one_default();
    o.data_bytes = 31;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "tensor 't'", "data past EOF");
    free(b.p);

    o = one_default();
    o.offset = 1ull << 62;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "end of file", "offset past EOF");
    free(b.p);

    o = one_default();
    o.offset = UINT64_MAX - 31; /* aligned, offset + nbytes wraps */
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "tensor 't'", "offset wrap");
    free(b.p);

    o = one_default();
    o.offset     = 4;
    o.data_bytes = 64;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "alignment", "unaligned offset");
    free(b.p);

    o = one_default();
    o.type = 23;
    b = build_one(&o);
    expect_fail(&b, PS_EUNSUPPORTED, "tensor 't' has unsupported type 23", "unknown dtype");
    free(b.p);

    o = one_default();
    o.type = DT_Q4_0; /* ne[0] = 8 is not a multiple of 32 */
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "block size", "partial block");
    free(b.p);

    o = one_default();
    o.ne[0] = 1ull << 62;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "ne[0]", "ne 2^62");
    free(b.p);

    o = one_default();
    o.n_dims = 4;
    o.ne[0] = 1 << 20; o.ne[1] = 1 << 20; o.ne[2] = 2; o.ne[3] = 1;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "tensor 't' has shape [1048576, 1048576, 2, 1]: more than 2^40",
                "product over 2^40");
    free(b.p);

    /* each dim is legal, the product is not: no single dim is blamed */
    o = one_default();
    o.n_dims = 2;
    o.ne[0] = 1ull << 40; o.ne[1] = 49152;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "shape [1099511627776, 49152]: more than 2^40", "2^40 x 49152");
    CHECK_MSG(strstr(ps_error_last(), "ne[") == NULL, "blames one dim: %s", ps_error_last());
    free(b.p);

    /* a single dim over 2^40 is named by its index, even past a legal one */
    o = one_default();
    o.n_dims = 2;
    o.ne[1] = (1ull << 40) + 1;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "bad dimension ne[1] = 1099511627777", "ne[1] 2^40 + 1");
    free(b.p);

    o = one_default();
    o.ne[0] = 0;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "ne[0] = 0", "zero dim");
    free(b.p);

    o = one_default();
    o.n_dims = 5;
    o.ne[1] = o.ne[2] = o.ne[3] = o.ne[4] = 1;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "5 dims", "n_dims 5");
    free(b.p);

    o = one_default();
    o.n_dims = 0;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "0 dims", "n_dims 0");
    free(b.p);

    o = one_default();
    o.n_kv_override = 1ull << 60;
    b = build_one(&o);
    expect_fail(&b, PS_EFORMAT, "kv count", "n_kv 2^60");
    free(b.p);

    /* absurd tensor count */
    b = (struct img){ 0 };
    put_header(&b, 3, 1ull << 60, 0);
    put_u64(&b, 0);
    expect_fail(&b, PS_EFORMAT, "tensor count", "n_tensors 2^60");
    free(b.p);

    /* string length 2^60 */
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_u64(&b, 1ull << 60);
    put(&b, "abcdefghijklmnop", 16);
    expect_fail(&b, PS_EFORMAT, "string length", "key length 2^60");
    free(b.p);

    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_key(&b, "k", GGUF_TYPE_STRING);
    put_u64(&b, 1ull << 60);
    put(&b, "abcdefghijklmnop", 16);
    expect_fail(&b, PS_EFORMAT, "'k'", "value length 2^60");
    free(b.p);

    /* array count 2^60 of u32 and of strings */
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_key(&b, "arr", GGUF_TYPE_ARRAY);
    put_u32(&b, GGUF_TYPE_UINT32);
    put_u64(&b, 1ull << 60);
    put(&b, "abcdefghijklmnop", 16);
    expect_fail(&b, PS_EFORMAT, "'arr'", "array count 2^60");
    free(b.p);
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_key(&b, "arr", GGUF_TYPE_ARRAY);
    put_u32(&b, GGUF_TYPE_STRING);
    put_u64(&b, 1ull << 60);
    put(&b, "abcdefghijklmnop", 16);
    expect_fail(&b, PS_EFORMAT, "'arr'", "string array count 2^60");
    free(b.p);

    /* deeply nested arrays */
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_key(&b, "deep", GGUF_TYPE_ARRAY);
    for (int i = 0; i < 100; i++) {
        put_u32(&b, GGUF_TYPE_ARRAY);
        put_u64(&b, 1);
    }
    put_u32(&b, GGUF_TYPE_UINT8);
    put_u64(&b, 0);
    expect_fail(&b, PS_EFORMAT, "nested", "deep nesting");
    free(b.p);

    /* unknown value type */
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_key(&b, "k", 13);
    put_u32(&b, 0);
    expect_fail(&b, PS_EFORMAT, "value type 13", "unknown value type");
    free(b.p);

    /* bad alignment: 3, 0, and a string */
    static const uint32_t bad_align[] = { 3, 0 };
    for (size_t i = 0; i < 2; i++) {
        b = (struct img){ 0 };
        put_header(&b, 3, 0, 1);
        put_key(&b, "general.alignment", GGUF_TYPE_UINT32);
        put_u32(&b, bad_align[i]);
        expect_fail(&b, PS_EFORMAT, "general.alignment", "bad alignment");
        free(b.p);
    }
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 1);
    put_key(&b, "general.alignment", GGUF_TYPE_STRING);
    put_str(&b, "32");
    expect_fail(&b, PS_EFORMAT, "general.alignment", "string alignment");
    free(b.p);

    /* a valid non-default alignment moves the data section */
    b = (struct img){ 0 };
    put_header(&b, 3, 1, 1);
    put_key(&b, "general.alignment", GGUF_TYPE_UINT32);
    put_u32(&b, 64);
    uint64_t ne8[1] = { 8 };
    put_tensor_info(&b, "t", 1, ne8, DT_F32, 0);
    pad_to(&b, 64);
    size_t start = b.len;
    for (int i = 0; i < 32; i++)
        put_u8(&b, (uint8_t)i);
    f = NULL;
    CHECK_MSG(gguf_open_memory(b.p, b.len, &f) == PS_OK, "alignment 64: %s", ps_error_last());
    if (f)
        CHECK(gguf_find_tensor(f, "t")->data == b.p + start);
    gguf_close(f);
    free(b.p);

    /* duplicate key */
    b = (struct img){ 0 };
    put_header(&b, 3, 0, 2);
    put_key(&b, "dup.key", GGUF_TYPE_UINT32);
    put_u32(&b, 1);
    put_key(&b, "dup.key", GGUF_TYPE_UINT8);
    put_u8(&b, 1);
    expect_fail(&b, PS_EFORMAT, "duplicate key 'dup.key'", "duplicate key");
    free(b.p);

    /* duplicate tensor name, overlapping tensors */
    for (int k = 0; k < 2; k++) {
        b = (struct img){ 0 };
        put_header(&b, 3, 2, 0);
        put_tensor_info(&b, "a", 1, ne8, DT_F32, 0);
        put_tensor_info(&b, k == 0 ? "a" : "b", 1, ne8, DT_F32, k == 0 ? 32 : 0);
        pad_to(&b, 32);
        for (int i = 0; i < 64; i++)
            put_u8(&b, 0);
        expect_fail(&b, PS_EFORMAT, k == 0 ? "duplicate tensor name 'a'" : "overlap",
                    k == 0 ? "duplicate tensor" : "overlap");
        free(b.p);
    }

    /* empty and tiny buffers */
    b = (struct img){ 0 };
    put(&b, "GG", 2);
    expect_fail(&b, PS_EFORMAT, "small", "2 bytes");
    free(b.p);

    /* gguf_open errors name the path */
    f = NULL;
    CHECK(gguf_open("/nonexistent/x.gguf", &f) == PS_EIO && f == NULL);
    CHECK(strstr(ps_error_last(), "/nonexistent/x.gguf"));
    CHECK(gguf_open("/", &f) == PS_EIO);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_gguf.XXXXXX");
    if (!mkdtemp(tmpdir))
        TEST_SKIP("cannot create a temp dir");
    test_all_value_types();
    test_writer_roundtrip();
    test_bad_inputs();
    char path[128];
    snprintf(path, sizeof path, "%s/rt.gguf", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    TEST_DONE();
}
