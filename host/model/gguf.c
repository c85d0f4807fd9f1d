/* gguf.c - GGUF reader (validating, mmap) and writer.
 *
 * Reader invariants, established by gguf_parse() before a handle is returned:
 *   1. every byte read lies inside [0, size): each read goes through rd_need();
 *   2. every count is bounded by the bytes left divided by the smallest encoding
 *      of one element before anything is allocated for it, so allocations stay
 *      a small multiple of the file size;
 *   3. keys and tensor names are unique (hash tables, also used by the finders);
 *   4. each tensor has 1..4 dims, all > 0, at most 2^40 elements, a supported
 *      type, ne[0] a multiple of its block size, and its data range
 *      [offset, offset + nbytes) is aligned, inside the file, and overlaps no
 *      other tensor's.
 * Strings are copied NUL-terminated into an arena owned by the handle; numeric
 * array payloads and tensor data stay in the mapping.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/grow.h"
#include "common/status.h"

#define GGUF_MAGIC             0x46554747u /* "GGUF" little endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ELEMS         (INT64_C(1) << 40)
#define GGUF_MAX_NESTING       8
/* Smallest encodings: a kv is key length (8) + type (4) + a 1-byte value; a
 * tensor info is name length (8) + n_dims (4) + one dim (8) + type (4) +
 * offset (8). */
#define GGUF_MIN_KV_BYTES      13
#define GGUF_MIN_TENSOR_BYTES  32

/* ---- string arena ------------------------------------------------------ */

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    char   mem[];
};

struct arena {
    struct arena_chunk *head;
};

static char *arena_alloc(struct arena *a, size_t n)
{
    struct arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap  = cap;
        c->next = a->head;
        a->head = c;
    }
    char *p = c->mem + c->used;
    c->used += n;
    return p;
}

static void arena_free(struct arena *a)
{
    struct arena_chunk *c = a->head;
    while (c) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
}

/* ---- hash index of names ---------------------------------------------- */

static uint64_t name_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Open addressing; slots hold index + 1 (0 = empty).  cap is a power of two
 * at least twice the number of entries. */
struct name_index {
    int64_t *slots;
    size_t   cap;
};

static int name_index_init(struct name_index *ix, int64_t n)
{
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap <<= 1;
    ix->slots = calloc(cap, sizeof *ix->slots);
    ix->cap   = cap;
    return ix->slots ? PS_OK : PS_ENOMEM;
}

/* ---- handle ------------------------------------------------------------ */

struct gguf_kv {
    const char    *key;
    size_t         key_len;
    enum gguf_type type;
    union {
        uint64_t u;
        int64_t  i;
        double   f;
    } num;                        /* integer, bool and float scalars      */
    const char    *str;           /* STRING: NUL-terminated copy          */
    size_t         str_len;
    enum gguf_type arr_type;      /* ARRAY: element type                  */
    uint64_t       arr_n;
    const uint8_t *arr_data;      /* numeric elements in the image        */
    const char   **arr_strs;      /* string elements (arena)              */
    size_t        *arr_str_lens;
};

struct gguf_file {
    const uint8_t      *base;
    size_t              size;
    bool                mapped;
    uint32_t            version;
    uint64_t            alignment;
    size_t              data_start;
    int64_t             n_kv;
    struct gguf_kv     *kv;
    int64_t             n_tensors;
    struct gguf_tensor *tensors;
    struct name_index   kv_index, tensor_index;
    struct arena        arena;
};

static int64_t index_lookup(const struct name_index *ix, const struct gguf_file *f,
                            bool tensors, const char *name, size_t len)
{
    if (!ix->slots)
        return -1;
    size_t mask = ix->cap - 1;
    for (size_t s = name_hash(name, len) & mask;; s = (s + 1) & mask) {
        int64_t v = ix->slots[s];
        if (v == 0)
            return -1;
        int64_t i = v - 1;
        const char *n;
        size_t nl;
        if (tensors) {
            n  = f->tensors[i].name;
            nl = strlen(n); /* tensor names are checked NUL-free */
        } else {
            n  = f->kv[i].key;
            nl = f->kv[i].key_len;
        }
        if (nl == len && memcmp(n, name, len) == 0)
            return i;
    }
}

static void index_insert(struct name_index *ix, const char *name, size_t len, int64_t i)
{
    size_t mask = ix->cap - 1;
    size_t s = name_hash(name, len) & mask;
    while (ix->slots[s])
        s = (s + 1) & mask;
    ix->slots[s] = i + 1;
}

/* ---- bounded reader ---------------------------------------------------- */

struct rd {
    const uint8_t *p;
    size_t         size;
    size_t         pos;
    char           what[160]; /* what is being read, for error details */
};

static int rd_need(struct rd *r, uint64_t n)
{
    if (n > r->size - r->pos)
        return ps_error_set(PS_EFORMAT,
                            "gguf: file truncated at offset %zu reading %s (need %llu bytes, %zu left)",
                            r->pos, r->what, (unsigned long long)n, r->size - r->pos);
    return PS_OK;
}

static int rd_u32(struct rd *r, uint32_t *v)
{
    int rc = rd_need(r, 4);
    if (rc)
        return rc;
    const uint8_t *p = r->p + r->pos;
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    r->pos += 4;
    return PS_OK;
}

static int rd_u64(struct rd *r, uint64_t *v)
{
    int rc = rd_need(r, 8);
    if (rc)
        return rc;
    const uint8_t *p = r->p + r->pos;
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    *v = x;
    r->pos += 8;
    return PS_OK;
}

/* Read a string; copy it NUL-terminated into the arena. */
static int rd_str(struct rd *r, struct arena *a, const char **out, size_t *len)
{
    uint64_t n;
    size_t at = r->pos;
    int rc = rd_u64(r, &n);
    if (rc)
        return rc;
    if (n > r->size - r->pos)
        return ps_error_set(PS_EFORMAT,
                            "gguf: string length %llu at offset %zu (%s) exceeds the %zu bytes left",
                            (unsigned long long)n, at, r->what, r->size - r->pos);
    char *s = arena_alloc(a, (size_t)n + 1);
    if (!s)
        return ps_error_set(PS_ENOMEM, "gguf: out of memory reading %s", r->what);
    memcpy(s, r->p + r->pos, (size_t)n);
    s[n] = '\0';
    r->pos += (size_t)n;
    *out = s;
    *len = (size_t)n;
    return PS_OK;
}

static size_t gguf_type_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

static bool gguf_type_valid(uint32_t t)
{
    return t <= GGUF_TYPE_FLOAT64;
}

/* Skip one array payload (elem type + count + elements), recursively for
 * arrays of arrays, bounded by depth. */
static int rd_skip_array(struct rd *r, int depth)
{
    uint32_t et;
    uint64_t n;
    int rc;
    if (depth > GGUF_MAX_NESTING)
        return ps_error_set(PS_EFORMAT, "gguf: arrays nested deeper than %d at offset %zu (%s)",
                            GGUF_MAX_NESTING, r->pos, r->what);
    if ((rc = rd_u32(r, &et)) || (rc = rd_u64(r, &n)))
        return rc;
    if (!gguf_type_valid(et))
        return ps_error_set(PS_EFORMAT, "gguf: unknown array element type %u at offset %zu (%s)",
                            et, r->pos - 12, r->what);
    size_t es = gguf_type_size(et);
    if (es) {
        if (n > (r->size - r->pos) / es)
            return ps_error_set(PS_EFORMAT,
                                "gguf: array of %llu elements at offset %zu (%s) exceeds the %zu bytes left",
                                (unsigned long long)n, r->pos - 12, r->what, r->size - r->pos);
        r->pos += (size_t)(n * es);
        return PS_OK;
    }
    /* strings (>= 8 bytes each) or arrays (>= 12 bytes each) */
    size_t min = et == GGUF_TYPE_STRING ? 8 : 12;
    if (n > (r->size - r->pos) / min)
        return ps_error_set(PS_EFORMAT,
                            "gguf: array of %llu elements at offset %zu (%s) exceeds the %zu bytes left",
                            (unsigned long long)n, r->pos - 12, r->what, r->size - r->pos);
    for (uint64_t i = 0; i < n; i++) {
        if (et == GGUF_TYPE_STRING) {
            uint64_t len;
            size_t at = r->pos;
            if ((rc = rd_u64(r, &len)))
                return rc;
            if (len > r->size - r->pos)
                return ps_error_set(PS_EFORMAT,
                                    "gguf: string length %llu at offset %zu (%s) exceeds the %zu bytes left",
                                    (unsigned long long)len, at, r->what, r->size - r->pos);
            r->pos += (size_t)len;
        } else if ((rc = rd_skip_array(r, depth + 1))) {
            return rc;
        }
    }
    return PS_OK;
}

static int read_value(struct rd *r, struct gguf_file *f, struct gguf_kv *kv)
{
    int rc;
    uint32_t t = kv->type;
    size_t es = gguf_type_size(t);
    if (es) {
        if ((rc = rd_need(r, es)))
            return rc;
        const uint8_t *p = r->p + r->pos;
        uint64_t raw = 0;
        for (size_t i = es; i-- > 0;)
            raw = raw << 8 | p[i];
        r->pos += es;
        switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32:
        case GGUF_TYPE_UINT64: case GGUF_TYPE_BOOL:
            kv->num.u = raw;
            break;
        case GGUF_TYPE_INT8:  kv->num.i = (int8_t)raw; break;
        case GGUF_TYPE_INT16: kv->num.i = (int16_t)raw; break;
        case GGUF_TYPE_INT32: kv->num.i = (int32_t)raw; break;
        case GGUF_TYPE_INT64: kv->num.i = (int64_t)raw; break;
        case GGUF_TYPE_FLOAT32: {
            uint32_t u32 = (uint32_t)raw;
            float x;
            memcpy(&x, &u32, 4);
            kv->num.f = x;
            break;
        }
        case GGUF_TYPE_FLOAT64: memcpy(&kv->num.f, &raw, 8); break;
        default: break;
        }
        return PS_OK;
    }
    if (t == GGUF_TYPE_STRING)
        return rd_str(r, &f->arena, &kv->str, &kv->str_len);

    /* array */
    size_t start = r->pos;
    uint32_t et;
    uint64_t n;
    if ((rc = rd_u32(r, &et)) || (rc = rd_u64(r, &n)))
        return rc;
    if (!gguf_type_valid(et))
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' has unknown array element type %u",
                            kv->key, et);
    kv->arr_type = et;
    kv->arr_n    = n;
    es = gguf_type_size(et);
    if (es) {
        if (n > (r->size - r->pos) / es)
            return ps_error_set(PS_EFORMAT,
                                "gguf: key '%s': array of %llu elements at offset %zu exceeds the %zu bytes left",
                                kv->key, (unsigned long long)n, start, r->size - r->pos);
        kv->arr_data = r->p + r->pos;
        r->pos += (size_t)(n * es);
        return PS_OK;
    }
    if (et == GGUF_TYPE_ARRAY) {
        /* nested arrays: validated and skipped, not exposed by the getters */
        r->pos = start;
        return rd_skip_array(r, 0);
    }
    /* string array */
    if (n > (r->size - r->pos) / 8)
        return ps_error_set(PS_EFORMAT,
                            "gguf: key '%s': array of %llu strings at offset %zu exceeds the %zu bytes left",
                            kv->key, (unsigned long long)n, start, r->size - r->pos);
    kv->arr_strs     = malloc((size_t)(n ? n : 1) * sizeof *kv->arr_strs);
    kv->arr_str_lens = malloc((size_t)(n ? n : 1) * sizeof *kv->arr_str_lens);
    if (!kv->arr_strs || !kv->arr_str_lens)
        return ps_error_set(PS_ENOMEM, "gguf: out of memory for array '%s'", kv->key);
    for (uint64_t i = 0; i < n; i++) {
        snprintf(r->what, sizeof r->what, "element %llu of array '%.100s'", (unsigned long long)i,
                 kv->key);
        if ((rc = rd_str(r, &f->arena, &kv->arr_strs[i], &kv->arr_str_lens[i])))
            return rc;
    }
    return PS_OK;
}

static const char *gguf_type_name(uint32_t t)
{
    static const char *names[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                   "string", "array", "u64", "i64", "f64" };
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static int parse_kvs(struct rd *r, struct gguf_file *f)
{
    int rc;
    for (int64_t i = 0; i < f->n_kv; i++) {
        struct gguf_kv *kv = &f->kv[i];
        snprintf(r->what, sizeof r->what, "key of kv %lld", (long long)i);
        if ((rc = rd_str(r, &f->arena, &kv->key, &kv->key_len)))
            return rc;
        if (kv->key_len == 0)
            return ps_error_set(PS_EFORMAT, "gguf: kv %lld has an empty key", (long long)i);
        if (index_lookup(&f->kv_index, f, false, kv->key, kv->key_len) >= 0)
            return ps_error_set(PS_EFORMAT, "gguf: duplicate key '%s'", kv->key);
        index_insert(&f->kv_index, kv->key, kv->key_len, i);
        snprintf(r->what, sizeof r->what, "type of key '%.100s'", kv->key);
        uint32_t t;
        if ((rc = rd_u32(r, &t)))
            return rc;
        if (!gguf_type_valid(t))
            return ps_error_set(PS_EFORMAT, "gguf: key '%s' has unknown value type %u at offset %zu",
                                kv->key, t, r->pos - 4);
        kv->type = t;
        snprintf(r->what, sizeof r->what, "value of key '%.100s'", kv->key);
        if ((rc = read_value(r, f, kv)))
            return rc;
    }
    return PS_OK;
}

static int parse_tensor_infos(struct rd *r, struct gguf_file *f)
{
    int rc;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        const char *name;
        size_t len;
        snprintf(r->what, sizeof r->what, "name of tensor %lld", (long long)i);
        if ((rc = rd_str(r, &f->arena, &name, &len)))
            return rc;
        if (len == 0 || memchr(name, '\0', len))
            return ps_error_set(PS_EFORMAT, "gguf: tensor %lld has an empty or invalid name",
                                (long long)i);
        t->name = name;
        if (index_lookup(&f->tensor_index, f, true, name, len) >= 0)
            return ps_error_set(PS_EFORMAT, "gguf: duplicate tensor name '%s'", name);
        index_insert(&f->tensor_index, name, len, i);

        snprintf(r->what, sizeof r->what, "info of tensor '%.100s'", name);
        uint32_t n_dims;
        if ((rc = rd_u32(r, &n_dims)))
            return rc;
        if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
            return ps_error_set(PS_EFORMAT, "gguf: tensor '%s' has %u dims (must be 1..%d)", name,
                                n_dims, GGUF_MAX_DIMS);
        t->n_dims = n_dims;
        /* All dims are read before any is judged, so that a dim out of
         * 1..2^40 is named by its own index, and a product over 2^40 (no
         * single dim at fault) names the whole shape. */
        uint64_t ne[GGUF_MAX_DIMS];
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            ne[d] = 1;
            if (d < n_dims && (rc = rd_u64(r, &ne[d])))
                return rc;
        }
        for (uint32_t d = 0; d < n_dims; d++)
            if (ne[d] == 0 || ne[d] > (uint64_t)GGUF_MAX_ELEMS)
                return ps_error_set(PS_EFORMAT,
                                    "gguf: tensor '%s' has bad dimension ne[%u] = %llu "
                                    "(each must be 1..2^40)",
                                    name, d, (unsigned long long)ne[d]);
        uint64_t nelem = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            if (nelem > (uint64_t)GGUF_MAX_ELEMS / ne[d]) {
                /* each dim is <= 2^40 here (13 digits), so the shape fits */
                char shape[GGUF_MAX_DIMS * 16 + 1];
                size_t at = 0;
                for (uint32_t k = 0; k < n_dims; k++)
                    at += (size_t)snprintf(shape + at, sizeof shape - at, "%s%llu", k ? ", " : "",
                                           (unsigned long long)ne[k]);
                return ps_error_set(PS_EFORMAT,
                                    "gguf: tensor '%s' has shape [%s]: more than 2^40 elements "
                                    "in total",
                                    name, shape);
            }
            nelem *= ne[d];
        }
        for (int d = 0; d < GGUF_MAX_DIMS; d++)
            t->ne[d] = (int64_t)ne[d];
        uint32_t type;
        uint64_t offset;
        if ((rc = rd_u32(r, &type)) || (rc = rd_u64(r, &offset)))
            return rc;
        const struct dtype_info *di = dtype_info_get(type);
        if (!di)
            return ps_error_set(PS_EUNSUPPORTED, "gguf: tensor '%s' has unsupported type %u", name,
                                type);
        t->type = (enum dtype)type;
        if (t->ne[0] % di->block_elems != 0)
            return ps_error_set(PS_EFORMAT,
                                "gguf: tensor '%s' of type %s has ne[0] = %lld, not a multiple of "
                                "its block size %d",
                                name, di->name, (long long)t->ne[0], di->block_elems);
        size_t row = dtype_row_bytes(t->type, t->ne[0]);
        if (row == 0)
            return ps_error_set(PS_EUNSUPPORTED, "gguf: tensor '%s': cannot size rows of type %s",
                                name, di->name);
        t->nbytes = row * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        t->offset = offset;
    }
    return PS_OK;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a;
    const struct gguf_tensor *y = *(const struct gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int check_tensor_data(struct gguf_file *f)
{
    size_t avail = f->data_start <= f->size ? f->size - f->data_start : 0;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment != 0)
            return ps_error_set(PS_EFORMAT,
                                "gguf: tensor '%s' data offset %llu is not a multiple of the "
                                "alignment %llu",
                                t->name, (unsigned long long)t->offset,
                                (unsigned long long)f->alignment);
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return ps_error_set(PS_EFORMAT,
                                "gguf: tensor '%s' data [%llu, +%zu) at file offset %zu ends past "
                                "end of file (%zu bytes)",
                                t->name, (unsigned long long)t->offset, t->nbytes,
                                f->data_start + (size_t)(t->offset < avail ? t->offset : avail),
                                f->size);
        t->data = f->base + f->data_start + t->offset;
    }
    if (f->n_tensors < 2)
        return PS_OK;
    const struct gguf_tensor **order = malloc((size_t)f->n_tensors * sizeof *order);
    if (!order)
        return ps_error_set(PS_ENOMEM, "gguf: out of memory checking tensor overlap");
    for (int64_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_tensor_offset);
    int rc = PS_OK;
    for (int64_t i = 1; i < f->n_tensors; i++) {
        const struct gguf_tensor *a = order[i - 1], *b = order[i];
        if (a->offset + a->nbytes > b->offset) {
            rc = ps_error_set(PS_EFORMAT, "gguf: data of tensors '%s' and '%s' overlap", a->name,
                              b->name);
            break;
        }
    }
    free(order);
    return rc;
}

static int gguf_parse(struct gguf_file *f)
{
    struct rd r = { .p = f->base, .size = f->size, .pos = 0 };
    int rc;
    uint32_t magic = 0;
    uint64_t n_tensors, n_kv;

    snprintf(r.what, sizeof r.what, "header");
    if (f->size < 4)
        return ps_error_set(PS_EFORMAT, "gguf: file too small (%zu bytes) to be GGUF", f->size);
    rd_u32(&r, &magic);
    if (magic != GGUF_MAGIC)
        return ps_error_set(PS_EFORMAT, "gguf: bad magic 0x%08x (not a GGUF file)", magic);
    if ((rc = rd_u32(&r, &f->version)))
        return rc;
    if (f->version != 2 && f->version != 3)
        return ps_error_set(PS_EUNSUPPORTED,
                            "gguf: unsupported version %u (only versions 2 and 3 are supported)",
                            f->version);
    if ((rc = rd_u64(&r, &n_tensors)) || (rc = rd_u64(&r, &n_kv)))
        return rc;
    size_t left = r.size - r.pos;
    if (n_kv > left / GGUF_MIN_KV_BYTES)
        return ps_error_set(PS_EFORMAT,
                            "gguf: kv count %llu is impossible for the %zu bytes left "
                            "(truncated or corrupt file)",
                            (unsigned long long)n_kv, left);
    if (n_tensors > (left - n_kv * GGUF_MIN_KV_BYTES) / GGUF_MIN_TENSOR_BYTES)
        return ps_error_set(PS_EFORMAT,
                            "gguf: tensor count %llu is impossible for the %zu bytes left "
                            "(truncated or corrupt file)",
                            (unsigned long long)n_tensors, left);
    f->n_kv      = (int64_t)n_kv;
    f->n_tensors = (int64_t)n_tensors;
    f->kv        = calloc(n_kv ? n_kv : 1, sizeof *f->kv);
    f->tensors   = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors || name_index_init(&f->kv_index, f->n_kv) ||
        name_index_init(&f->tensor_index, f->n_tensors))
        return ps_error_set(PS_ENOMEM, "gguf: out of memory for %llu kvs / %llu tensors",
                            (unsigned long long)n_kv, (unsigned long long)n_tensors);

    if ((rc = parse_kvs(&r, f)))
        return rc;

    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = gguf_find_kv(f, "general.alignment");
    if (ai >= 0) {
        const struct gguf_kv *kv = &f->kv[ai];
        bool is_int = kv->type == GGUF_TYPE_UINT32 || kv->type == GGUF_TYPE_UINT64 ||
                      kv->type == GGUF_TYPE_UINT16 || kv->type == GGUF_TYPE_UINT8;
        uint64_t a = kv->num.u;
        if (!is_int || a == 0 || (a & (a - 1)) != 0 || a > (1u << 20))
            return ps_error_set(PS_EFORMAT,
                                "gguf: general.alignment must be an unsigned power of two "
                                "<= 2^20 (got type %s, value %llu)",
                                gguf_type_name(kv->type), is_int ? (unsigned long long)a : 0ull);
        f->alignment = a;
    }

    if ((rc = parse_tensor_infos(&r, f)))
        return rc;

    uint64_t start = ((uint64_t)r.pos + f->alignment - 1) / f->alignment * f->alignment;
    if (start > f->size) {
        if (f->n_tensors > 0)
            return ps_error_set(PS_EFORMAT,
                                "gguf: data section at offset %llu starts past end of file (%zu bytes)",
                                (unsigned long long)start, f->size);
        start = f->size;
    }
    f->data_start = (size_t)start;
    return check_tensor_data(f);
}

static void gguf_free_parsed(gguf_file *f)
{
    if (f->kv) {
        for (int64_t i = 0; i < f->n_kv; i++) {
            free(f->kv[i].arr_strs);
            free(f->kv[i].arr_str_lens);
        }
    }
    free(f->kv);
    free(f->tensors);
    free(f->kv_index.slots);
    free(f->tensor_index.slots);
    arena_free(&f->arena);
}

int gguf_open_memory(const void *data, size_t size, gguf_file **out)
{
    *out = NULL;
    if (!data && size)
        return ps_error_set(PS_EINVAL, "gguf: NULL buffer");
    gguf_file *f = calloc(1, sizeof *f);
    if (!f)
        return ps_error_set(PS_ENOMEM, "gguf: out of memory");
    f->base = data;
    f->size = size;
    int rc = gguf_parse(f);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return PS_OK;
}

int gguf_open(const char *path, gguf_file **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ps_error_set(PS_EIO, "gguf: cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ps_error_set(PS_EIO, "gguf: cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ps_error_set(PS_EIO, "gguf: '%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 24) {
        close(fd);
        return ps_error_set(PS_EFORMAT, "gguf: '%s' is too small (%zu bytes) to be a GGUF file",
                            path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return ps_error_set(PS_EIO, "gguf: cannot map '%s': %s", path, strerror(e));
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, size);
        return ps_error_set(PS_ENOMEM, "gguf: out of memory");
    }
    f->base   = map;
    f->size   = size;
    f->mapped = true;
    int rc = gguf_parse(f);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return PS_OK;
}

void gguf_close(gguf_file *f)
{
    if (!f)
        return;
    gguf_free_parsed(f);
    if (f->mapped)
        munmap((void *)f->base, f->size);
    free(f);
}

uint32_t gguf_version(const gguf_file *f) { return f->version; }
size_t   gguf_file_size(const gguf_file *f) { return f->size; }

/* ---- metadata getters -------------------------------------------------- */

int64_t gguf_kv_count(const gguf_file *f) { return f->n_kv; }

const char *gguf_kv_key(const gguf_file *f, int64_t i)
{
    return i >= 0 && i < f->n_kv ? f->kv[i].key : NULL;
}

enum gguf_type gguf_kv_type(const gguf_file *f, int64_t i)
{
    return i >= 0 && i < f->n_kv ? f->kv[i].type : (enum gguf_type)-1;
}

int64_t gguf_find_kv(const gguf_file *f, const char *key)
{
    return index_lookup(&f->kv_index, f, false, key, strlen(key));
}

static int find_typed(const gguf_file *f, const char *key, const struct gguf_kv **out)
{
    int64_t i = gguf_find_kv(f, key);
    if (i < 0)
        return ps_error_set(PS_ENOTFOUND, "gguf: key '%s' not found", key);
    *out = &f->kv[i];
    return PS_OK;
}

static bool kv_is_signed(enum gguf_type t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

static bool kv_is_unsigned(enum gguf_type t)
{
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 ||
           t == GGUF_TYPE_UINT64;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_typed(f, key, &kv);
    if (rc)
        return rc;
    if (kv_is_unsigned(kv->type)) {
        if (kv->num.u > UINT32_MAX)
            return ps_error_set(PS_ERANGE, "gguf: key '%s' value %llu does not fit in u32", key,
                                (unsigned long long)kv->num.u);
        *out = (uint32_t)kv->num.u;
        return PS_OK;
    }
    if (kv_is_signed(kv->type)) {
        if (kv->num.i < 0 || kv->num.i > (int64_t)UINT32_MAX)
            return ps_error_set(PS_ERANGE, "gguf: key '%s' value %lld does not fit in u32", key,
                                (long long)kv->num.i);
        *out = (uint32_t)kv->num.i;
        return PS_OK;
    }
    return ps_error_set(PS_EFORMAT, "gguf: key '%s' has type %s, expected an integer", key,
                        gguf_type_name(kv->type));
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_typed(f, key, &kv);
    if (rc)
        return rc;
    if (kv_is_unsigned(kv->type)) {
        if (kv->num.u > (uint64_t)INT64_MAX)
            return ps_error_set(PS_ERANGE, "gguf: key '%s' value %llu does not fit in i64", key,
                                (unsigned long long)kv->num.u);
        *out = (int64_t)kv->num.u;
        return PS_OK;
    }
    if (kv_is_signed(kv->type)) {
        *out = kv->num.i;
        return PS_OK;
    }
    return ps_error_set(PS_EFORMAT, "gguf: key '%s' has type %s, expected an integer", key,
                        gguf_type_name(kv->type));
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_typed(f, key, &kv);
    if (rc)
        return rc;
    if (kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64)
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' has type %s, expected a float", key,
                            gguf_type_name(kv->type));
    *out = (float)kv->num.f;
    return PS_OK;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_typed(f, key, &kv);
    if (rc)
        return rc;
    if (kv->type != GGUF_TYPE_BOOL)
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' has type %s, expected bool", key,
                            gguf_type_name(kv->type));
    *out = kv->num.u != 0;
    return PS_OK;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **out, size_t *len)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_typed(f, key, &kv);
    if (rc)
        return rc;
    if (kv->type != GGUF_TYPE_STRING)
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' has type %s, expected string", key,
                            gguf_type_name(kv->type));
    *out = kv->str;
    if (len)
        *len = kv->str_len;
    return PS_OK;
}

static int find_array(const gguf_file *f, const char *key, const struct gguf_kv **out)
{
    int rc = find_typed(f, key, out);
    if (rc)
        return rc;
    if ((*out)->type != GGUF_TYPE_ARRAY)
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' has type %s, expected array", key,
                            gguf_type_name((*out)->type));
    return PS_OK;
}

int gguf_get_arr_info(const gguf_file *f, const char *key, enum gguf_type *elem_type, uint64_t *n)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_array(f, key, &kv);
    if (rc)
        return rc;
    if (elem_type)
        *elem_type = kv->arr_type;
    if (n)
        *n = kv->arr_n;
    return PS_OK;
}

int gguf_get_arr_data(const gguf_file *f, const char *key, const void **data)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_array(f, key, &kv);
    if (rc)
        return rc;
    if (kv->arr_type == GGUF_TYPE_ARRAY)
        return ps_error_set(PS_EUNSUPPORTED, "gguf: key '%s' is a nested array", key);
    if (kv->arr_type == GGUF_TYPE_STRING)
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' is a string array, not numeric", key);
    *data = kv->arr_data;
    return PS_OK;
}

int gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t i, const char **out, size_t *len)
{
    const struct gguf_kv *kv = NULL;
    int rc = find_array(f, key, &kv);
    if (rc)
        return rc;
    if (kv->arr_type == GGUF_TYPE_ARRAY)
        return ps_error_set(PS_EUNSUPPORTED, "gguf: key '%s' is a nested array", key);
    if (kv->arr_type != GGUF_TYPE_STRING)
        return ps_error_set(PS_EFORMAT, "gguf: key '%s' is an array of %s, not of strings", key,
                            gguf_type_name(kv->arr_type));
    if (i >= kv->arr_n)
        return ps_error_set(PS_ERANGE, "gguf: index %llu out of range for '%s' (%llu elements)",
                            (unsigned long long)i, key, (unsigned long long)kv->arr_n);
    *out = kv->arr_strs[i];
    if (len)
        *len = kv->arr_str_lens[i];
    return PS_OK;
}

/* ---- tensors ----------------------------------------------------------- */

int64_t gguf_tensor_count(const gguf_file *f) { return f->n_tensors; }

const struct gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i)
{
    return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    int64_t i = index_lookup(&f->tensor_index, f, true, name, strlen(name));
    return i >= 0 ? &f->tensors[i] : NULL;
}

/* ---- writer ------------------------------------------------------------ */

struct buf {
    uint8_t *p;
    size_t   len, cap;
};

static int buf_put(struct buf *b, const void *src, size_t n)
{
    if (n > b->cap - b->len) {
        uint8_t *p = n > SIZE_MAX - b->len ? NULL : ps_grow(b->p, &b->cap, b->len + n, 1, 256);
        if (!p)
            return ps_error_set(PS_ENOMEM, "gguf: writer out of memory");
        b->p = p;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return PS_OK;
}

static int buf_u32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
    return buf_put(b, x, 4);
}

static int buf_u64(struct buf *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    return buf_put(b, x, 8);
}

static int buf_str(struct buf *b, const char *s, size_t n)
{
    int rc = buf_u64(b, n);
    return rc ? rc : buf_put(b, s, n);
}

struct writer_tensor {
    char    *name;
    uint32_t n_dims;
    int64_t  ne[GGUF_MAX_DIMS];
    enum dtype type;
    size_t   nbytes;
    uint8_t *data;
};

struct gguf_writer {
    struct buf            kv;      /* serialized kv section */
    int64_t               n_kv;
    char                **keys;
    struct writer_tensor *tensors;
    int64_t               n_tensors, cap_tensors;
};

int gguf_writer_create(gguf_writer **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? PS_OK : ps_error_set(PS_ENOMEM, "gguf: writer out of memory");
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w)
        return;
    for (int64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    free(w->kv.p);
    free(w);
}

/* Append key + type; rejects duplicates. */
static int writer_key(gguf_writer *w, const char *key, enum gguf_type t)
{
    if (!key || !*key)
        return ps_error_set(PS_EINVAL, "gguf: writer: empty key");
    for (int64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return ps_error_set(PS_EINVAL, "gguf: writer: duplicate key '%s'", key);
    char **keys = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *keys);
    if (!keys)
        return ps_error_set(PS_ENOMEM, "gguf: writer out of memory");
    w->keys = keys;
    char *k = strdup(key);
    if (!k)
        return ps_error_set(PS_ENOMEM, "gguf: writer out of memory");
    int rc;
    if ((rc = buf_str(&w->kv, key, strlen(key))) || (rc = buf_u32(&w->kv, t))) {
        free(k);
        return rc;
    }
    w->keys[w->n_kv++] = k;
    return PS_OK;
}

int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
    int rc = writer_key(w, key, GGUF_TYPE_UINT32);
    return rc ? rc : buf_u32(&w->kv, v);
}

int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v)
{
    int rc = writer_key(w, key, GGUF_TYPE_INT32);
    return rc ? rc : buf_u32(&w->kv, (uint32_t)v);
}

int gguf_writer_set_f32(gguf_writer *w, const char *key, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    int rc = writer_key(w, key, GGUF_TYPE_FLOAT32);
    return rc ? rc : buf_u32(&w->kv, u);
}

int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    int rc = writer_key(w, key, GGUF_TYPE_BOOL);
    return rc ? rc : buf_put(&w->kv, &b, 1);
}

int gguf_writer_set_str(gguf_writer *w, const char *key, const char *v)
{
    int rc = writer_key(w, key, GGUF_TYPE_STRING);
    return rc ? rc : buf_str(&w->kv, v, strlen(v));
}

int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n)
{
    int rc;
    if ((rc = writer_key(w, key, GGUF_TYPE_ARRAY)) || (rc = buf_u32(&w->kv, GGUF_TYPE_STRING)) ||
        (rc = buf_u64(&w->kv, n)))
        return rc;
    for (uint64_t i = 0; i < n; i++)
        if ((rc = buf_str(&w->kv, v[i], strlen(v[i]))))
            return rc;
    return PS_OK;
}

int gguf_writer_set_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n)
{
    int rc;
    if ((rc = writer_key(w, key, GGUF_TYPE_ARRAY)) || (rc = buf_u32(&w->kv, GGUF_TYPE_INT32)) ||
        (rc = buf_u64(&w->kv, n)))
        return rc;
    for (uint64_t i = 0; i < n; i++)
        if ((rc = buf_u32(&w->kv, (uint32_t)v[i])))
            return rc;
    return PS_OK;
}

int gguf_writer_set_arr_f32(gguf_writer *w, const char *key, const float *v, uint64_t n)
{
    int rc;
    if ((rc = writer_key(w, key, GGUF_TYPE_ARRAY)) || (rc = buf_u32(&w->kv, GGUF_TYPE_FLOAT32)) ||
        (rc = buf_u64(&w->kv, n)))
        return rc;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        if ((rc = buf_u32(&w->kv, u)))
            return rc;
    }
    return PS_OK;
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, enum dtype type, uint32_t n_dims,
                           const int64_t *ne, const void *data)
{
    if (!name || !*name)
        return ps_error_set(PS_EINVAL, "gguf: writer: empty tensor name");
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return ps_error_set(PS_EINVAL, "gguf: writer: tensor '%s' has %u dims", name, n_dims);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return ps_error_set(PS_EINVAL, "gguf: writer: duplicate tensor '%s'", name);
    struct writer_tensor t = { .n_dims = n_dims, .type = type };
    int64_t rows = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        t.ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
        if (t.ne[d] <= 0 || t.ne[d] > GGUF_MAX_ELEMS)
            return ps_error_set(PS_EINVAL, "gguf: writer: tensor '%s' has bad ne[%d] = %lld",
                                name, d, (long long)t.ne[d]);
        if (d > 0)
            rows *= t.ne[d];
    }
    size_t row = dtype_row_bytes(type, t.ne[0]);
    if (row == 0)
        return ps_error_set(PS_EINVAL,
                            "gguf: writer: tensor '%s': type %u cannot hold rows of %lld elements",
                            name, (unsigned)type, (long long)t.ne[0]);
    t.nbytes = row * (size_t)rows;
    if (w->n_tensors == w->cap_tensors) {
        int64_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        struct writer_tensor *p = realloc(w->tensors, (size_t)cap * sizeof *p);
        if (!p)
            return ps_error_set(PS_ENOMEM, "gguf: writer out of memory");
        w->tensors     = p;
        w->cap_tensors = cap;
    }
    t.name = strdup(name);
    t.data = data ? malloc(t.nbytes) : NULL;
    if (!t.name || (data && !t.data)) {
        free(t.name);
        free(t.data);
        return ps_error_set(PS_ENOMEM, "gguf: writer out of memory for tensor '%s'", name);
    }
    if (data)
        memcpy(t.data, data, t.nbytes);
    w->tensors[w->n_tensors++] = t;
    return PS_OK;
}

static size_t align_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

int gguf_writer_write(gguf_writer *w, const char *path)
{
    return gguf_writer_write_fill(w, path, NULL, NULL);
}

int gguf_writer_write_fill(gguf_writer *w, const char *path, gguf_tensor_fill_fn fill, void *ctx)
{
    struct buf h = { 0 };
    int rc;
    FILE *fp = NULL;
    uint8_t *tmp = NULL;
    static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];

    for (int64_t i = 0; i < w->n_tensors; i++)
        if (!w->tensors[i].data && !fill)
            return ps_error_set(PS_EINVAL, "gguf: writer: tensor '%s' has no data and no fill",
                                w->tensors[i].name);

    if ((rc = buf_u32(&h, GGUF_MAGIC)) || (rc = buf_u32(&h, 3)) ||
        (rc = buf_u64(&h, (uint64_t)w->n_tensors)) || (rc = buf_u64(&h, (uint64_t)w->n_kv)) ||
        (rc = buf_put(&h, w->kv.p, w->kv.len)))
        goto fail;
    size_t off = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const struct writer_tensor *t = &w->tensors[i];
        if ((rc = buf_str(&h, t->name, strlen(t->name))) || (rc = buf_u32(&h, t->n_dims)))
            goto fail;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if ((rc = buf_u64(&h, (uint64_t)t->ne[d])))
                goto fail;
        if ((rc = buf_u32(&h, (uint32_t)t->type)) || (rc = buf_u64(&h, off)))
            goto fail;
        off = align_up(off + t->nbytes, GGUF_DEFAULT_ALIGNMENT);
    }
    if ((rc = buf_put(&h, zeros, align_up(h.len, GGUF_DEFAULT_ALIGNMENT) - h.len)))
        goto fail;

    fp = fopen(path, "wb");
    if (!fp) {
        rc = ps_error_set(PS_EIO, "gguf: cannot create '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (fwrite(h.p, 1, h.len, fp) != h.len)
        goto io_fail;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const struct writer_tensor *t = &w->tensors[i];
        size_t pad = align_up(t->nbytes, GGUF_DEFAULT_ALIGNMENT) - t->nbytes;
        const uint8_t *src = t->data;
        if (!src) {
            tmp = malloc(t->nbytes);
            if (!tmp) {
                rc = ps_error_set(PS_ENOMEM, "gguf: writer out of memory for tensor '%s'",
                                  t->name);
                goto fail;
            }
            if ((rc = fill(ctx, i, tmp, t->nbytes)))
                goto fail;
            src = tmp;
        }
        if (fwrite(src, 1, t->nbytes, fp) != t->nbytes)
            goto io_fail;
        free(tmp);
        tmp = NULL;
        if (i + 1 < w->n_tensors && pad && fwrite(zeros, 1, pad, fp) != pad)
            goto io_fail;
    }
    if (fclose(fp) != 0) {
        fp = NULL;
        goto io_fail;
    }
    free(h.p);
    return PS_OK;

io_fail:
    rc = ps_error_set(PS_EIO, "gguf: cannot write '%s': %s", path, strerror(errno));
fail:
    free(tmp);
    if (fp)
        fclose(fp);
    free(h.p);
    return rc;
}
