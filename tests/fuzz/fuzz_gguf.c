/* fuzz_gguf.c - libFuzzer target for the GGUF reader and the model loader.
 * Build: CC=clang cmake -S . -B build-fuzz -DPARASERVE_FUZZ=ON
 * Run:   scripts/gen-gguf-corpus.py && build-fuzz/fuzz_gguf tests/fuzz/corpus_gguf -max_total_time=60
 * Every accepted file is walked through all getters; the loader runs on a
 * second open (model_from_gguf takes ownership of its file). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/model.h"

static volatile uint64_t sink;

static void walk(const gguf_file *f)
{
    for (int64_t i = 0; i < gguf_kv_count(f); i++) {
        const char *k = gguf_kv_key(f, i);
        uint32_t u;
        int64_t i64;
        float fl;
        bool b;
        const char *s;
        size_t len;
        enum gguf_type et;
        uint64_t n;
        const void *d;
        /* a key holding a NUL byte is unreachable by name; any found key matches */
        int64_t j = gguf_find_kv(f, k);
        if (j < 0)
            continue;
        if (strcmp(gguf_kv_key(f, j), k) != 0)
            __builtin_trap();
        if (gguf_get_u32(f, k, &u) == PS_OK) sink += u;
        if (gguf_get_i64(f, k, &i64) == PS_OK) sink += (uint64_t)i64;
        if (gguf_get_f32(f, k, &fl) == PS_OK) sink += (uint64_t)(fl == fl);
        if (gguf_get_bool(f, k, &b) == PS_OK) sink += b;
        if (gguf_get_str(f, k, &s, &len) == PS_OK) sink += len ? (unsigned char)s[len - 1] : 0;
        if (gguf_get_arr_info(f, k, &et, &n) == PS_OK) {
            if (gguf_get_arr_data(f, k, &d) == PS_OK && n) {
                const uint8_t *p = d;
                sink += p[0];
            }
            for (uint64_t j = 0; j < n && j < 64; j++)
                if (gguf_get_arr_str(f, k, j, &s, &len) == PS_OK)
                    sink += len ? (unsigned char)s[len - 1] : 0;
            gguf_get_arr_str(f, k, n, &s, &len);
        }
    }
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        if (gguf_find_tensor(f, t->name) != t)
            __builtin_trap();
        if (t->nbytes) {
            const uint8_t *p = t->data;
            sink += p[0] + p[t->nbytes - 1];
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_file *f = NULL;
    if (gguf_open_memory(data, size, &f) != PS_OK) {
        if (f || strncmp(ps_error_last(), "gguf: ", 6) != 0)
            __builtin_trap();
        return 0;
    }
    walk(f);
    gguf_close(f);
    if (gguf_open_memory(data, size, &f) != PS_OK)
        __builtin_trap(); /* parsing is deterministic */
    struct model *m = NULL;
    if (model_from_gguf(f, &m) == PS_OK) {
        for (int il = 0; il < m->hp.n_layer; il++)
            sink += (uintptr_t)m->layers[il].wq.data;
        model_free(m);
    } else if (m) {
        __builtin_trap();
    }
    return 0;
}
