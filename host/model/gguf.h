/* gguf.h - reader and writer of GGUF model files (versions 2 and 3).
 *
 * File layout (little endian):
 *   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x  { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to `general.alignment` (default 32) | tensor data
 *   string = u64 len | bytes (no NUL);  array = u32 elem_type | u64 n | elems
 *
 * The reader maps the file read-only and validates everything before it
 * returns: every length is checked against the bytes left, every tensor's
 * data range against the file size, dims against overflow, types against the
 * supported set.  A failure returns PS_EFORMAT / PS_EUNSUPPORTED / PS_EIO with
 * a one-line detail in ps_error_last() naming the problem; it never reads out
 * of bounds, and never allocates more than a small multiple of the file size.
 */
#ifndef PS_GGUF_H
#define PS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quant.h"

enum gguf_type {
    GGUF_TYPE_UINT8   = 0,
    GGUF_TYPE_INT8    = 1,
    GGUF_TYPE_UINT16  = 2,
    GGUF_TYPE_INT16   = 3,
    GGUF_TYPE_UINT32  = 4,
    GGUF_TYPE_INT32   = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL    = 7,
    GGUF_TYPE_STRING  = 8,
    GGUF_TYPE_ARRAY   = 9,
    GGUF_TYPE_UINT64  = 10,
    GGUF_TYPE_INT64   = 11,
    GGUF_TYPE_FLOAT64 = 12,
};

#define GGUF_MAX_DIMS 4

typedef struct gguf_file gguf_file;

struct gguf_tensor {
    const char *name;              /* NUL-terminated, owned by the file  */
    uint32_t    n_dims;
    int64_t     ne[GGUF_MAX_DIMS]; /* ne[0] = elements per row; unused dims = 1 */
    enum dtype  type;
    uint64_t    offset;            /* relative to the data section       */
    size_t      nbytes;
    const void *data;              /* into the mapping, aligned           */
};

/* Open and validate a GGUF file (mmap).  *out owned by caller: gguf_close. */
int gguf_open(const char *path, gguf_file **out);

/* Parse a GGUF image held in memory (not copied: `data` must outlive the
 * handle).  Same validation as gguf_open; used by the fuzzer and tests. */
int gguf_open_memory(const void *data, size_t size, gguf_file **out);

void gguf_close(gguf_file *f); /* NULL-safe */

uint32_t gguf_version(const gguf_file *f);
size_t   gguf_file_size(const gguf_file *f);

/* ---- metadata -------------------------------------------------------- */
int64_t        gguf_kv_count(const gguf_file *f);
const char    *gguf_kv_key(const gguf_file *f, int64_t i);
enum gguf_type gguf_kv_type(const gguf_file *f, int64_t i);
int64_t        gguf_find_kv(const gguf_file *f, const char *key); /* -1: absent */

/* Scalar getters.  PS_ENOTFOUND when the key is absent, PS_EFORMAT when its
 * value has another kind (integers of any width convert to the requested
 * one when the value fits; floats of either width convert to float). The
 * detail names the key. */
int gguf_get_u32 (const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64 (const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32 (const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out);
/* String value: NUL-terminated, owned by the file; *len excludes the NUL
 * (the string may itself contain NUL bytes). len may be NULL. */
int gguf_get_str (const gguf_file *f, const char *key, const char **out, size_t *len);

/* Arrays.  gguf_get_arr_info gives the element type and count.  For a numeric
 * array, gguf_get_arr_data returns a pointer to the packed little-endian
 * elements inside the file (possibly unaligned: read with memcpy).  For a
 * string array, gguf_get_arr_str returns element i (owned by the file). */
int gguf_get_arr_info(const gguf_file *f, const char *key, enum gguf_type *elem_type, uint64_t *n);
int gguf_get_arr_data(const gguf_file *f, const char *key, const void **data);
int gguf_get_arr_str (const gguf_file *f, const char *key, uint64_t i, const char **out, size_t *len);

/* ---- tensors --------------------------------------------------------- */
int64_t                   gguf_tensor_count(const gguf_file *f);
const struct gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i);
const struct gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL: absent */

/* ---- writer ---------------------------------------------------------- */
/* Builds a GGUF v3 file in memory, then writes it.  Tensor data is copied
 * at gguf_writer_add_tensor.  Used by `paraserve mkmodel` and the tests. */
typedef struct gguf_writer gguf_writer;

int  gguf_writer_create(gguf_writer **out);
void gguf_writer_free(gguf_writer *w); /* NULL-safe */
int  gguf_writer_set_u32 (gguf_writer *w, const char *key, uint32_t v);
int  gguf_writer_set_i32 (gguf_writer *w, const char *key, int32_t v);
int  gguf_writer_set_f32 (gguf_writer *w, const char *key, float v);
int  gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
int  gguf_writer_set_str (gguf_writer *w, const char *key, const char *v);
int  gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n);
int  gguf_writer_set_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n);
int  gguf_writer_set_arr_f32(gguf_writer *w, const char *key, const float *v, uint64_t n);
/* data: dtype_row_bytes(type, ne[0]) * ne[1] * ne[2] * ne[3] bytes, or NULL
 * to have gguf_writer_write_fill produce it at write time (streaming). */
int  gguf_writer_add_tensor(gguf_writer *w, const char *name, enum dtype type,
                            uint32_t n_dims, const int64_t *ne, const void *data);
int  gguf_writer_write(gguf_writer *w, const char *path);
/* Like gguf_writer_write; for each tensor added with data == NULL, calls
 * fill(ctx, index, dst, nbytes) (index in add order) to produce its bytes in a
 * temporary buffer, so only one such tensor is in memory at a time. */
typedef int (*gguf_tensor_fill_fn)(void *ctx, int64_t index, void *dst, size_t nbytes);
int  gguf_writer_write_fill(gguf_writer *w, const char *path, gguf_tensor_fill_fn fill, void *ctx);

#endif /* PS_GGUF_H */
