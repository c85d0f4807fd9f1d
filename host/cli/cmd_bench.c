/* cmd_bench.c - `paraserve bench`: engine throughput on one model.
 *
 * Measures, on the CPU backend, with deterministic pseudo-random prompts:
 *   prefill  - one sequence, a --prompt-len token prompt in one forward
 *              (chunks of --chunk tokens), tokens per second;
 *   decode   - for each batch size B in --batch: B sequences, each prefilled
 *              (once, untimed) with --prompt-len tokens, then --gen decode steps with all B
 *              sequences in every forward; aggregate tokens/s = B*gen/time and
 *              milliseconds per step.  Prompts are distinct per sequence, or
 *              (--clone-prompt) copies of sequence 0's cache, or
 *              (--shared-prefix) sequence 0's cache blocks themselves, as the
 *              engine's prefix cache shares a common prompt (column prompts).
 *   roofline - the physical limit of a batch-1 decode step: the bytes it
 *              must read from memory (every matrix once, the K/V of the
 *              step's mean context) over this machine's read bandwidth
 *              (--threads threads each summing a share of a 256 MiB buffer,
 *              best of 7 passes before the decode runs and 7 after: the
 *              bandwidth of a VM moves with its neighbours' load), as ms
 *              per step and tokens/s (phase "roofline").
 * Each figure is the median of --repeat runs, with the KV cache of
 * --kv-type (f16 default).  Output: one CSV line per measurement on stdout
 * (header first), progress on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "commands.h"
#include "common/status.h"
#include "engine/backend.h"
#include "model/model.h"
#include "model/quant.h"

#define BENCH_MAX_BATCHES 16

struct bench_opts {
    const char *model_path;
    int32_t     n_threads;
    int32_t     prompt_len;
    int32_t     n_gen;
    int32_t     chunk;
    int32_t     repeat;
    int32_t     batches[BENCH_MAX_BATCHES];
    int32_t     n_batches;
    int         clone_prompt;
    int         shared_prefix;
    enum kv_type kv_type;
};

static void bench_usage(FILE *out)
{
    fprintf(out,
        "usage: paraserve bench -m MODEL [options]\n"
        "  -t, --threads K      CPU threads (default: all cores)\n"
        "      --prompt-len N   prompt tokens (default 512)\n"
        "      --gen N          decode steps per sequence (default 64)\n"
        "      --chunk N        prefill chunk (default 512)\n"
        "      --batch LIST     decode batch sizes, comma separated (default 1,8,32)\n"
        "      --repeat N       runs per figure, median reported (default 3)\n"
        "      --kv-type T      KV cache: f16 (default), q8 or f32\n"
        "      --clone-prompt   decode sequences 1.. start from a copy of sequence 0's\n"
        "                       prompt cache (same decode work, no per-sequence\n"
        "                       prefill: quick profiling runs)\n"
        "      --shared-prefix  decode sequences 1.. share sequence 0's prompt: the\n"
        "                       full blocks of its cache are in every block table\n"
        "                       (as the engine's prefix cache shares a common\n"
        "                       prompt), the last partial block is copied\n");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int parse_batches(const char *s, struct bench_opts *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_batches = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (o->n_batches == BENCH_MAX_BATCHES) {
            fprintf(stderr, "paraserve bench: at most %d batch sizes\n", BENCH_MAX_BATCHES);
            return -1;
        }
        if (cli_parse_i32("bench", "--batch", tok, 1, 4096, &o->batches[o->n_batches++]))
            return -1;
    }
    return o->n_batches ? 0 : -1;
}

static int bench_parse(int argc, char **argv, struct bench_opts *o)
{
    enum { OPT_PLEN = 256, OPT_GEN, OPT_CHUNK, OPT_BATCH, OPT_REPEAT, OPT_CLONE, OPT_SHARED, OPT_KV };
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' },
        { "threads", required_argument, 0, 't' },
        { "prompt-len", required_argument, 0, OPT_PLEN },
        { "gen", required_argument, 0, OPT_GEN },
        { "chunk", required_argument, 0, OPT_CHUNK },
        { "batch", required_argument, 0, OPT_BATCH },
        { "repeat", required_argument, 0, OPT_REPEAT },
        { "clone-prompt", no_argument, 0, OPT_CLONE },
        { "shared-prefix", no_argument, 0, OPT_SHARED },
        { "kv-type", required_argument, 0, OPT_KV },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(o, 0, sizeof *o);
    o->n_threads = ncpu > 0 ? (int32_t)ncpu : 1;
    o->prompt_len = 512;
    o->n_gen = 64;
    o->chunk = 512;
    o->repeat = 3;
    o->batches[0] = 1, o->batches[1] = 8, o->batches[2] = 32, o->n_batches = 3;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:t:h", longopts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 't': rc = cli_parse_i32("bench", "--threads", optarg, 1, 256, &o->n_threads); break;
        case OPT_PLEN: rc = cli_parse_i32("bench", "--prompt-len", optarg, 1, 1 << 16, &o->prompt_len); break;
        case OPT_GEN: rc = cli_parse_i32("bench", "--gen", optarg, 1, 1 << 16, &o->n_gen); break;
        case OPT_CHUNK: rc = cli_parse_i32("bench", "--chunk", optarg, 1, 1 << 16, &o->chunk); break;
        case OPT_BATCH: rc = parse_batches(optarg, o); break;
        case OPT_REPEAT: rc = cli_parse_i32("bench", "--repeat", optarg, 1, 1000, &o->repeat); break;
        case OPT_CLONE: o->clone_prompt = 1; break;
        case OPT_SHARED: o->shared_prefix = 1; break;
        case OPT_KV:
            if (kv_type_parse(optarg, &o->kv_type)) {
                fprintf(stderr, "paraserve bench: --kv-type must be f16, q8 or f32, got '%s'\n", optarg);
                rc = -1;
            }
            break;
        case 'h': bench_usage(stdout); return 1;
        default:
            fprintf(stderr, "paraserve bench: bad option '%s'\n", argv[optind - 1]);
            bench_usage(stderr);
            return -1;
        }
        if (rc)
            return -1;
    }
    if (!o->model_path) {
        fprintf(stderr, "paraserve bench: -m MODEL is required\n");
        return -1;
    }
    return 0;
}

/* Deterministic prompt tokens for sequence `seq` (xorshift). */
static void bench_prompt(int32_t *ids, int32_t n, int32_t n_vocab, uint32_t seq)
{
    uint64_t x = 0x9E3779B97F4A7C15ull ^ ((uint64_t)seq * 0xD1B54A32D192ED03ull);
    for (int32_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)(n_vocab > 256 ? n_vocab - 256 : n_vocab)) + (n_vocab > 256 ? 256 : 0);
    }
}

/* ---- memory roofline of a batch-1 decode step ---------------------------- */

#define BW_BYTES   (256u << 20)   /* 8x the largest L3 seen on the bench machines */
#define BW_THREADS 64

struct bw_share {
    const uint64_t *p;
    size_t          n;
    uint64_t        sum;   /* kept, so the reads cannot be optimized away */
};

static void *bw_read(void *arg)
{
    struct bw_share *b = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= b->n; i += 4) {
        s0 += b->p[i];
        s1 += b->p[i + 1];
        s2 += b->p[i + 2];
        s3 += b->p[i + 3];
    }
    b->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Read bandwidth in GB/s of `threads` (at most BW_THREADS: *used) threads
 * each summing its share of a BW_BYTES buffer, best of 7 passes; 0 with
 * *why set when it cannot be measured. */
static double read_bandwidth_gbs(int threads, int *used, const char **why)
{
    if (threads < 1)
        threads = 1;
    if (threads > BW_THREADS)
        threads = BW_THREADS;
    *used = threads;
    *why = "out of memory for its 256 MiB buffer";
    uint64_t *buf = malloc(BW_BYTES);
    if (!buf)
        return 0.0;
    *why = "its threads could not be started";
    memset(buf, 1, BW_BYTES);
    const size_t words = BW_BYTES / sizeof *buf, per = words / (size_t)threads;
    struct bw_share sh[BW_THREADS];
    pthread_t tid[BW_THREADS];
    double best = 0.0;
    for (int pass = 0; pass < 7; pass++) {
        int started = 0;
        const double t0 = cli_now_s();
        for (int t = 0; t < threads; t++) {
            sh[t] = (struct bw_share){ buf + (size_t)t * per, per, 0 };
            if (t > 0 && pthread_create(&tid[t], NULL, bw_read, &sh[t]) != 0)
                break;
            started = t + 1;
        }
        bw_read(&sh[0]);
        for (int t = 1; t < started; t++)
            pthread_join(tid[t], NULL);
        const double dt = cli_now_s() - t0;
        if (started == threads && dt > 0.0 && (double)per * threads * sizeof *buf / dt / 1e9 > best)
            best = (double)per * threads * sizeof *buf / dt / 1e9;
    }
    free(buf);
    return best;
}

static double weight_bytes(const struct weight *w)
{
    return w->data ? (double)dtype_row_bytes(w->type, w->ne[0]) * (double)w->ne[1] : 0.0;
}

/* Bytes a batch-1 decode step reads at `ctx` positions: every matrix once
 * (the output projection included), *kv_out of them the K/V cache. */
static double decode_step_bytes(const struct model *m, double ctx, enum kv_type kt, double *kv_out)
{
    double w = weight_bytes(&m->output);
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        const struct layer_weights *L = &m->layers[l];
        w += weight_bytes(&L->wq) + weight_bytes(&L->wk) + weight_bytes(&L->wv) + weight_bytes(&L->wo) +
             weight_bytes(&L->w_gate) + weight_bytes(&L->w_up) + weight_bytes(&L->w_down);
    }
    const double esz = kt == KV_F32 ? 4.0 : kt == KV_Q8 ? 1.0 + 4.0 / 32.0 : 2.0;   /* q8: a f32 scale per 32 */
    *kv_out = (double)m->hp.n_layer * ctx * 2.0 * m->hp.n_head_kv * m->hp.head_dim * esz;
    return w + *kv_out;
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Prefill one sequence's n prompt tokens in chunks; the last chunk writes
 * its last-position logits to logits[n_vocab]. */
static int bench_prefill(backend *be, const int32_t *ids, int32_t n, int32_t chunk, const int32_t *table,
                         int32_t n_blocks, float *logits)
{
    for (int32_t off = 0; off < n; off += chunk) {
        int32_t len = n - off < chunk ? n - off : chunk;
        struct batch_seq s = { .tokens = ids + off, .n_tokens = len, .pos0 = off, .block_table = table,
                               .n_blocks = n_blocks, .logits = off + len == n ? LOGITS_LAST : LOGITS_NONE };
        struct batch_plan plan = { &s, 1 };
        int rc = backend_forward(be, &plan, logits);
        if (rc)
            return rc;
    }
    return PS_OK;
}

int cmd_bench(int argc, char **argv)
{
    struct bench_opts o;
    int prc = bench_parse(argc, argv, &o);
    if (prc)
        return prc > 0 ? 0 : 2;

    int status = 1, rc;
    struct model *m = NULL;
    backend *be = NULL;
    int32_t *ids = NULL, *tables = NULL, *next = NULL, *first = NULL;
    float *logits = NULL;
    struct batch_seq *seqs = NULL;

    int32_t max_b = 1;
    for (int i = 0; i < o.n_batches; i++)
        if (o.batches[i] > max_b)
            max_b = o.batches[i];
    const int32_t bs = 16;
    const int32_t ctx = o.prompt_len + o.n_gen;
    const int32_t blocks_per_seq = (ctx + bs - 1) / bs;
    const int32_t max_tokens = o.chunk > max_b ? o.chunk : max_b;

    rc = model_load(o.model_path, &m);
    if (rc)
        goto fail;
    struct backend_config cfg = { .n_threads = o.n_threads, .n_kv_blocks = blocks_per_seq * max_b,
                                  .block_size = bs, .max_batch_tokens = max_tokens, .kv_type = o.kv_type };
    rc = backend_cpu_create(m, &cfg, &be);
    if (rc)
        goto fail;
    const int32_t n_vocab = m->hp.n_vocab;
    ids = malloc((size_t)o.prompt_len * max_b * sizeof *ids);
    tables = malloc((size_t)blocks_per_seq * max_b * sizeof *tables);
    next = malloc((size_t)max_b * sizeof *next);
    first = malloc((size_t)max_b * sizeof *first);
    logits = malloc((size_t)max_b * n_vocab * sizeof *logits);
    seqs = calloc((size_t)max_b, sizeof *seqs);
    if (!ids || !tables || !next || !first || !logits || !seqs) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < blocks_per_seq * max_b; i++)
        tables[i] = i;
    for (int32_t b = 0; b < max_b; b++)
        bench_prompt(ids + (size_t)b * o.prompt_len, o.prompt_len, n_vocab, (uint32_t)b);

    const char *kvn = kv_type_name(o.kv_type);
    const char *prompts = o.shared_prefix ? "shared" : o.clone_prompt ? "clone" : "distinct";
    printf("engine,threads,simd,phase,batch,prompt_len,gen,tokens_per_s,ms_per_step,kv_type,prompts\n");
    fprintf(stderr, "[bench] model=%s backend=%s simd=%s threads=%d kv=%s x8=%d\n", m->name, backend_name(be),
            cli_simd_label(), o.n_threads, kvn, backend_cpu_x8_matrices(be));

    double runs[64];
    int nrep = o.repeat > 64 ? 64 : o.repeat;
    /* Prefill of one sequence. */
    for (int r = 0; r < nrep; r++) {
        double t0 = cli_now_s();
        rc = bench_prefill(be, ids, o.prompt_len, o.chunk, tables, blocks_per_seq, logits);
        if (rc)
            goto fail;
        runs[r] = cli_now_s() - t0;
    }
    double tp = median(runs, nrep);
    printf("paraserve,%d,%s,prefill,1,%d,0,%.1f,%.3f,%s,%s\n", o.n_threads, cli_simd_label(), o.prompt_len,
           o.prompt_len / tp, 1e3 * tp, kvn, prompts);
    fprintf(stderr, "[bench] prefill %d tokens: %.1f tok/s\n", o.prompt_len, o.prompt_len / tp);

    /* Prefill every sequence once (not timed): its prompt's K/V stay in its
     * own blocks, and a decode run only writes positions prompt_len.. of
     * them, which the next run overwrites with the same tokens - so every
     * decode run starts from the same cache and the same first tokens. */
    for (int32_t b = 0; b < max_b; b++) {
        if (o.shared_prefix && b > 0) {
            for (int32_t k = 0; k < o.prompt_len / bs; k++)
                tables[(size_t)b * blocks_per_seq + k] = tables[k];
            if (o.prompt_len % bs) {
                const int32_t k = o.prompt_len / bs;
                rc = be->ops->copy_block(be, tables[k], tables[(size_t)b * blocks_per_seq + k]);
                if (rc)
                    goto fail;
            }
            first[b] = first[0];
            continue;
        }
        if (o.clone_prompt && b > 0) {
            for (int32_t k = 0; k < blocks_per_seq; k++) {
                rc = be->ops->copy_block(be, tables[k], tables[(size_t)b * blocks_per_seq + k]);
                if (rc)
                    goto fail;
            }
            first[b] = first[0];
            continue;
        }
        rc = bench_prefill(be, ids + (size_t)b * o.prompt_len, o.prompt_len, o.chunk,
                           tables + (size_t)b * blocks_per_seq, blocks_per_seq, logits + (size_t)b * n_vocab);
        if (rc)
            goto fail;
        first[b] = argmax(logits + (size_t)b * n_vocab, n_vocab);
    }
    /* the read bandwidth around the decode runs (the roofline below) */
    int bw_threads = 0;
    const char *bw_why = NULL;
    const double gbs_before = read_bandwidth_gbs(o.n_threads, &bw_threads, &bw_why);
    for (int bi = 0; bi < o.n_batches; bi++) {
        int32_t B = o.batches[bi];
        for (int r = 0; r < nrep; r++) {
            memcpy(next, first, (size_t)B * sizeof *next);
            double t0 = cli_now_s();
            for (int32_t g = 0; g < o.n_gen; g++) {
                for (int32_t b = 0; b < B; b++)
                    seqs[b] = (struct batch_seq){ .tokens = &next[b], .n_tokens = 1,
                                                  .pos0 = o.prompt_len + g,
                                                  .block_table = tables + (size_t)b * blocks_per_seq,
                                                  .n_blocks = blocks_per_seq, .logits = LOGITS_LAST };
                struct batch_plan plan = { seqs, B };
                rc = backend_forward(be, &plan, logits);
                if (rc)
                    goto fail;
                for (int32_t b = 0; b < B; b++)
                    next[b] = argmax(logits + (size_t)b * n_vocab, n_vocab);
            }
            runs[r] = cli_now_s() - t0;
        }
        double td = median(runs, nrep);
        printf("paraserve,%d,%s,decode,%d,%d,%d,%.1f,%.3f,%s,%s\n", o.n_threads, cli_simd_label(), B,
               o.prompt_len, o.n_gen, (double)B * o.n_gen / td, 1e3 * td / o.n_gen, kvn, prompts);
        fprintf(stderr, "[bench] decode batch %d: %.1f tok/s, %.2f ms/step\n", B,
                (double)B * o.n_gen / td, 1e3 * td / o.n_gen);
    }
    {
        const double gbs_after = read_bandwidth_gbs(o.n_threads, &bw_threads, &bw_why);
        const double ctx = o.prompt_len + (o.n_gen + 1) / 2.0, gbs = gbs_after > gbs_before ? gbs_after : gbs_before;
        double kv = 0.0;
        const double bytes = decode_step_bytes(m, ctx, o.kv_type, &kv);
        if (gbs > 0.0) {
            const double ms = bytes / (gbs * 1e9) * 1e3;
            printf("paraserve,%d,%s,roofline,1,%d,%d,%.1f,%.3f,%s,%s\n", o.n_threads, cli_simd_label(), o.prompt_len,
                   o.n_gen, 1e3 / ms, ms, kvn, prompts);
            fprintf(stderr, "[bench] batch-1 roofline: %.3f MB per step (matrices %.3f, K/V %.3f at %.1f positions) "
                    "at %.3f GB/s read (%d threads): %.4f ms/step, %.1f tok/s\n", bytes / 1e6, (bytes - kv) / 1e6,
                    kv / 1e6, ctx, gbs, bw_threads, ms, 1e3 / ms);
        } else {
            fprintf(stderr, "[bench] batch-1 roofline: the read bandwidth could not be measured: %s\n", bw_why);
        }
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "paraserve bench: %s\n", ps_error_last()[0] ? ps_error_last() : ps_status_str(rc));
done:
    free(seqs);
    free(logits);
    free(next);
    free(first);
    free(tables);
    free(ids);
    backend_free(be);
    model_free(m);
    return status;
}
