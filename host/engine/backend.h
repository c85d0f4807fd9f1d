/* backend.h - the one compute API of paraserve, implemented by the CPU
 * reference backend (backend_cpu.c) and the CUDA backend (cuda/).
 *
 * A backend owns the weights' working copies and the KV cache: n_kv_blocks
 * physical blocks of block_size token slots each, per layer, for K and V.
 * Which blocks a sequence uses is decided above the backend (kv_blocks.h);
 * a batch plan hands the backend each sequence's block table.
 *
 * One backend_forward call runs one step for a ragged batch: each sequence
 * brings n_tokens new tokens at positions pos0 .. pos0+n_tokens-1 (a prefill
 * chunk, or 1 token for a decode), attends to its cached positions
 * 0 .. pos0-1 plus the new ones (causal), writes the new K/V into its blocks,
 * and yields logits when asked.  Token at position p lives in block
 * block_table[p / block_size], slot p % block_size.
 *
 * Usage:
 *   struct backend_config cfg = { .n_threads = 2, .n_kv_blocks = 256, .block_size = 16 };
 *   backend *be; if (backend_cpu_create(model, &cfg, &be)) fail(ps_error_last());
 *   struct batch_seq s = { .tokens = ids, .n_tokens = n, .pos0 = 0,
 *                          .block_table = bt, .n_blocks = nb, .logits = LOGITS_LAST };
 *   struct batch_plan plan = { .seqs = &s, .n_seqs = 1 };
 *   float *logits = malloc(backend_logits_rows(&plan) * n_vocab * sizeof *logits);
 *   backend_forward(be, &plan, logits);
 *   // or, ids only (sampled on the device when backend_can_sample(be)):
 *   struct backend_sample_params sp = { .temperature = 0.7f, .top_p = 0.9f, .seed = 1, .step = k };
 *   int32_t next; backend_forward_sample(be, &plan, &sp, NULL, NULL, &next);
 *   backend_free(be);
 */
#ifndef PS_BACKEND_H
#define PS_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "../model/model.h"

enum logits_mode {
    LOGITS_NONE = 0, /* no rows (a prefill chunk that is not the last)  */
    LOGITS_LAST = 1, /* one row: the last new token                     */
    LOGITS_ALL  = 2, /* n_tokens rows (tests, scoring)                  */
};

struct batch_seq {
    const int32_t   *tokens;      /* [n_tokens] new token ids            */
    int32_t          n_tokens;    /* >= 1                                */
    int32_t          pos0;        /* position of tokens[0]; cache holds 0..pos0-1 */
    const int32_t   *block_table; /* [n_blocks] physical block ids       */
    int32_t          n_blocks;    /* >= ceil((pos0 + n_tokens) / block_size) */
    enum logits_mode logits;
};

struct batch_plan {
    const struct batch_seq *seqs; /* [n_seqs] */
    int32_t                 n_seqs;
};

/* Element type of the K/V cache.  F16 halves the memory and is what both
 * backends are tuned for; F32 keeps attention exact in f32 (reference runs,
 * tests against an f32 peer).  Q8 (CPU backend only) stores each cache row
 * (one token's K or V, n_head_kv * head_dim values) as blocks of 32 int8
 * with one f32 scale per block: q = round-half-away(x * (1 / d)), d = max|x| / 127
 * (q = 0 when d = 0), x ~ q * d; 1.125 bytes a value instead of 2, so
 * attention reads ~0.56x the bytes of f16.  Layout: the int8 values exactly
 * where the f16 cache keeps its elements ([n_layer][n_kv_blocks][block_size]
 * [n_head_kv * head_dim]) and the scales beside them in
 * [n_layer][n_kv_blocks][block_size][n_head_kv * head_dim / 32]; needs
 * head_dim % 32 == 0 (a block never spans two heads).  Attention on a q8
 * cache quantizes the query heads the same way for the scores.  The CUDA backend
 * supports KV_F16 only. */
enum kv_type {
    KV_F16 = 0,
    KV_F32 = 1,
    KV_Q8  = 2,
};

/* "f16" / "f32" / "q8" -> *out; PS_EINVAL (with a detail naming the value)
 * for any other name. */
int kv_type_parse(const char *name, enum kv_type *out);
const char *kv_type_name(enum kv_type t); /* "f16", "f32", "q8", "?" */

struct backend_config {
    int32_t n_threads;   /* CPU worker threads (CPU backend), >= 1        */
    int32_t n_kv_blocks; /* physical KV blocks                            */
    int32_t block_size;  /* token slots per block, e.g. 16                */
    int32_t max_batch_tokens; /* upper bound of sum(n_tokens) per forward; 0 = 2048 */
    enum kv_type kv_type;     /* KV_F16 unless set                        */
};

typedef struct backend backend;

/* Sampling setup of one logits row for backend_forward_sample.  The fields
 * mean what sampler.h's do; there are no penalties (they need the token
 * history: the scheduler samples such sequences on the host).  Greedy ties
 * go to the lowest id; the draw is U(seed, step) of sampler.h, so a row
 * sampled by a backend gives the token sampler_sample would give at draw
 * index `step` (up to float summation order in the truncations). */
struct backend_sample_params {
    float    temperature; /* <= 0: greedy                                  */
    int32_t  top_k;       /* <= 0: off                                     */
    float    top_p;       /* >= 1: off                                     */
    float    min_p;       /* <= 0: off                                     */
    uint64_t seed;
    uint64_t step;        /* the sequence's draw index (tokens sampled so far) */
};

/* Token masks of a backend_forward_sample step, asked for once the forward
 * is under way (so the host computes them while the device runs).  masks:
 * [rows] entries, all NULL on entry; set masks[r] to a bitset of
 * (n_vocab + 31) / 32 words (bit id % 32 of word id / 32 set = id allowed)
 * for each constrained row, leave NULL for a free row.  The bitsets stay
 * owned by the callee and must not change until backend_forward_sample
 * returns.  A non-zero return aborts the step with that status. */
typedef int (*backend_mask_fn)(void *ud, const uint32_t **masks, int64_t rows);

/* Implementation table; a backend struct starts with a pointer to one. */
struct backend_ops {
    const char *name;
    int  (*forward)(backend *be, const struct batch_plan *plan, float *logits);
    int  (*copy_block)(backend *be, int32_t src, int32_t dst);
    void (*free)(backend *be);
    /* Optional (NULL: the backend returns logits only; the CPU backend):
     * backend_forward_sample's contract, called with a validated plan. */
    int  (*forward_sample)(backend *be, const struct batch_plan *plan,
                           const struct backend_sample_params *params, backend_mask_fn mask_fn,
                           void *mask_ud, int32_t *tokens);
};

struct backend {
    const struct backend_ops *ops;
    const struct model       *model; /* borrowed: outlives the backend */
    struct backend_config     cfg;
};

/* CPU reference backend (threads, AVX2/FMA when present). */
int backend_cpu_create(const struct model *m, const struct backend_config *cfg, backend **out);

/* Decode rows the CPU backend `be` has attended through shared-prefix
 * items so far; 0 for any other backend.  Such rows belong to sequences
 * whose block tables start with the same cache blocks (GRP_MIN_PREFIX
 * positions or more, backend_cpu.c): those blocks are read once per item
 * of up to GRP_ROWS rows instead of once per row, and the values are
 * bitwise those of attending each row alone.  f16 cache, AVX2 only;
 * PARASERVE_CPU_SHARED_PREFIX=0 turns it off. */
int64_t backend_cpu_shared_prefix_rows(const backend *be);
/* Decode rows (one per forward of a lone decode row, every layer) whose
 * attention was split over the threads by position and output element
 * (f16 cache, AVX2, 2+ threads, >= 64 positions; bitwise the same as
 * the per-KV-head items; PARASERVE_CPU_ATTN_SPLIT=0 turns it off). */
int64_t backend_cpu_split_rows(const backend *be);

/* Matrices a CPU backend runs on copies repacked for 8-row tiles
 * (quant.h "x8": Q4_1 and Q8_0 with a multiple of 8 rows, on the AVX2
 * path; 0 for a non-CPU
 * backend).  PARASERVE_CPU_X8=0 at creation turns them off. */
int backend_cpu_x8_matrices(const backend *be);

/* Backend by name: "cpu", "cuda", or "auto" (CUDA when a GPU is present
 * and the KV cache type is one it has (f16), else CPU).  PS_EINVAL for
 * another name; "cuda" without a device, in a build without CUDA or with a
 * q8 / f32 cache fails with the CUDA backend's error. */
int backend_create_named(const char *device, const struct model *m, const struct backend_config *cfg,
                         backend **out);

/* Rows of logits backend_forward will write for this plan. */
int64_t backend_logits_rows(const struct batch_plan *plan);

/* Validate the plan (token ids, positions, block tables within the cache,
 * total tokens <= max_batch_tokens) then run it.  logits: [rows, n_vocab] f32,
 * rows in plan order.  PS_EINVAL with a detail for a bad plan; nothing is
 * written to the cache then. */
int backend_forward(backend *be, const struct batch_plan *plan, float *logits);

/* True when the backend samples on its own device (ops->forward_sample):
 * backend_forward_sample then returns ids without copying logits back. */
bool backend_can_sample(const backend *be);

/* One step that ends in sampled token ids instead of logits.  Validates the
 * plan and params[rows] (rows = backend_logits_rows(plan)) as
 * backend_forward does (PS_EINVAL, nothing written to the cache), starts
 * the forward, calls mask_fn(mask_ud, masks, rows) once (when rows > 0 and
 * mask_fn is non-NULL; on this thread, while the forward runs on a device),
 * then samples row r with params[r] under masks[r].  tokens: [rows].
 *
 * PS_OK: tokens[r] is an id in [0, n_vocab) that masks[r] allows, or -1
 * when masks[r] allows no id, or BACKEND_TOKEN_NONFINITE when row r's
 * logits hold a NaN or an inf (the model is broken: sampler_sample's
 * PS_ERANGE).  Those two affect only their row: the caller fails that
 * sequence alone.  Any other status is a failure of the whole step
 * (the backend's error, or mask_fn's status); the KV of the plan's tokens
 * may have been written then.
 *
 * A backend without ops->forward_sample runs backend_forward into a host
 * buffer (allocated per call) and sampler_sample_draw per row: the same
 * contract, with the logits crossing to the host. */
#define BACKEND_TOKEN_NONFINITE (-2)
int backend_forward_sample(backend *be, const struct batch_plan *plan,
                           const struct backend_sample_params *params, backend_mask_fn mask_fn,
                           void *mask_ud, int32_t *tokens);

/* Copy one physical KV block to another (copy-on-write of shared prefixes). */
int backend_copy_block(backend *be, int32_t src, int32_t dst);

const char *backend_name(const backend *be);
void        backend_free(backend *be); /* NULL-safe */

#endif /* PS_BACKEND_H */
