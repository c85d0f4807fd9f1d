/* cmd_generate.c - `paraserve generate`: one prompt, streamed continuation.
 *
 * Text goes to stdout as it decodes (UTF-8 never split mid-character);
 * statistics (prompt tokens, prefill and decode tok/s) go to stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "commands.h"
#include "common/status.h"
#include "engine/backend.h"
#include "engine/kv_blocks.h"
#include "engine/sampler.h"
#include "grammar/grammar.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/quant.h"
#include "model/tokenizer.h"

struct generate_opts {
    const char *model_path;
    const char *prompt;
    const char *prompt_ids; /* "1 2 3": bypasses the tokenizer */
    const char *system;
    int         chat;
    int         print_ids;
    int32_t     n_predict;
    int32_t     n_threads;
    const char *device;      /* auto | cpu | cuda */
    int32_t     n_ctx;
    int32_t     block_size;
    int32_t     ignore_eos;
    const char *json_schema; /* file with a JSON Schema constraining the output */
    int         json;        /* constrain the output to any JSON object */
    int         exact;       /* f32 matrices and f32 KV cache (CPU) */
    int         kv_set;      /* --kv-type given */
    enum kv_type kv_type;    /* KV_F16 unless --kv-type / --exact */
    struct sampler_params sp;
};

static void generate_usage(FILE *out)
{
    fprintf(out,
        "usage: paraserve generate -m MODEL (-p PROMPT | --prompt-ids IDS) [options]\n"
        "  -m, --model PATH        GGUF model file\n"
        "  -p, --prompt TEXT       prompt text (without --chat, special-token text such as\n"
        "                          <|im_start|> in it is the control token)\n"
        "      --prompt-ids IDS    prompt as space-separated token ids (no tokenizer)\n"
        "      --chat              wrap the prompt in the model's chat template as a user turn\n"
        "      --system TEXT       system message for --chat\n"
        "  -n, --n-predict N       tokens to generate (default 128)\n"
        "      --temp T            temperature, 0 = greedy (default 0)\n"
        "      --top-k K           (default off)\n"
        "      --top-p P           (default off)\n"
        "      --min-p P           (default off)\n"
        "      --repeat-penalty R  (default 1 = off)\n"
        "      --presence-penalty F, --frequency-penalty F\n"
        "      --seed S            sampler seed (default 0)\n"
        "  -t, --threads K         CPU threads (default: all cores)\n"
        "      --device D          auto (CUDA when a GPU is present), cpu or cuda (default auto)\n"
        "  -c, --ctx N             context size in tokens (default 2048)\n"
        "      --ignore-eos        keep generating past end-of-generation tokens\n"
        "      --print-ids         after the text, print a line 'ids: <generated ids>'\n"
        "      --json-schema FILE  constrain the output to JSON valid under the schema in FILE\n"
        "      --json              constrain the output to a JSON object\n"
        "      --exact             exact arithmetic: matrices dequantized to f32 at load, f32 KV\n"
        "                          cache, activations never quantized (CPU; 4 bytes per weight)\n"
        "      --kv-type T         KV cache element type: f16 (default), q8 (int8 blocks of 32\n"
        "                          with an f32 scale, CPU only) or f32 (CPU only; --exact uses it)\n"
        "  stderr ends with '[paraserve] finish_reason=stop|length'\n");
}

static int parse_f32(const char *name, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) {
        fprintf(stderr, "paraserve generate: %s must be a number, got '%s'\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_u64(const char *name, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "paraserve generate: %s must be a non-negative integer, got '%s'\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    OPT_PROMPT_IDS = 256, OPT_CHAT, OPT_SYSTEM, OPT_TEMP, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P,
    OPT_REPEAT, OPT_PRESENCE, OPT_FREQUENCY, OPT_SEED, OPT_PRINT_IDS, OPT_IGNORE_EOS,
    OPT_JSON_SCHEMA, OPT_JSON, OPT_DEVICE, OPT_EXACT, OPT_KV_TYPE,
};

/* Returns 0 ok, 1 help printed, -1 usage error (already reported). */
static int generate_parse(int argc, char **argv, struct generate_opts *o)
{
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' },
        { "prompt", required_argument, 0, 'p' },
        { "prompt-ids", required_argument, 0, OPT_PROMPT_IDS },
        { "chat", no_argument, 0, OPT_CHAT },
        { "system", required_argument, 0, OPT_SYSTEM },
        { "n-predict", required_argument, 0, 'n' },
        { "temp", required_argument, 0, OPT_TEMP },
        { "top-k", required_argument, 0, OPT_TOP_K },
        { "top-p", required_argument, 0, OPT_TOP_P },
        { "min-p", required_argument, 0, OPT_MIN_P },
        { "repeat-penalty", required_argument, 0, OPT_REPEAT },
        { "presence-penalty", required_argument, 0, OPT_PRESENCE },
        { "frequency-penalty", required_argument, 0, OPT_FREQUENCY },
        { "seed", required_argument, 0, OPT_SEED },
        { "threads", required_argument, 0, 't' },
        { "device", required_argument, 0, OPT_DEVICE },
        { "ctx", required_argument, 0, 'c' },
        { "ignore-eos", no_argument, 0, OPT_IGNORE_EOS },
        { "print-ids", no_argument, 0, OPT_PRINT_IDS },
        { "json-schema", required_argument, 0, OPT_JSON_SCHEMA },
        { "json", no_argument, 0, OPT_JSON },
        { "exact", no_argument, 0, OPT_EXACT },
        { "kv-type", required_argument, 0, OPT_KV_TYPE },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(o, 0, sizeof *o);
    o->n_predict = 128;
    o->n_threads = ncpu > 0 ? (int32_t)(ncpu > 64 ? 64 : ncpu) : 1;
    o->n_ctx = 2048;
    o->block_size = 16;
    o->sp = sampler_params_default();

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:n:t:c:h", longopts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 'p': o->prompt = optarg; break;
        case OPT_PROMPT_IDS: o->prompt_ids = optarg; break;
        case OPT_CHAT: o->chat = 1; break;
        case OPT_SYSTEM: o->system = optarg; break;
        case 'n': rc = cli_parse_i32("generate", "--n-predict", optarg, 0, 1 << 20, &o->n_predict); break;
        case OPT_TEMP: rc = parse_f32("--temp", optarg, &o->sp.temperature); break;
        case OPT_TOP_K: rc = cli_parse_i32("generate", "--top-k", optarg, 0, 1 << 24, &o->sp.top_k); break;
        case OPT_TOP_P: rc = parse_f32("--top-p", optarg, &o->sp.top_p); break;
        case OPT_MIN_P: rc = parse_f32("--min-p", optarg, &o->sp.min_p); break;
        case OPT_REPEAT: rc = parse_f32("--repeat-penalty", optarg, &o->sp.repeat_penalty); break;
        case OPT_PRESENCE: rc = parse_f32("--presence-penalty", optarg, &o->sp.presence_penalty); break;
        case OPT_FREQUENCY: rc = parse_f32("--frequency-penalty", optarg, &o->sp.frequency_penalty); break;
        case OPT_SEED: rc = parse_u64("--seed", optarg, &o->sp.seed); break;
        case 't': rc = cli_parse_i32("generate", "--threads", optarg, 1, 256, &o->n_threads); break;
        case OPT_DEVICE: o->device = optarg; break;
        case 'c': rc = cli_parse_i32("generate", "--ctx", optarg, 16, 1 << 20, &o->n_ctx); break;
        case OPT_IGNORE_EOS: o->ignore_eos = 1; break;
        case OPT_PRINT_IDS: o->print_ids = 1; break;
        case OPT_JSON_SCHEMA: o->json_schema = optarg; break;
        case OPT_JSON: o->json = 1; break;
        case OPT_EXACT: o->exact = 1; break;
        case OPT_KV_TYPE:
            if (kv_type_parse(optarg, &o->kv_type)) {
                fprintf(stderr, "paraserve generate: --kv-type must be f16, q8 or f32, got '%s'\n", optarg);
                return -1;
            }
            o->kv_set = 1;
            break;
        case 'h': generate_usage(stdout); return 1;
        case ':':
            fprintf(stderr, "paraserve generate: option '%s' needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "paraserve generate: unknown option '%s'\n", argv[optind - 1]);
            generate_usage(stderr);
            return -1;
        }
        if (rc)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "paraserve generate: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->model_path) {
        fprintf(stderr, "paraserve generate: -m MODEL is required\n");
        return -1;
    }
    if (o->exact && o->kv_set && o->kv_type != KV_F32) {
        fprintf(stderr, "paraserve generate: --exact uses an f32 KV cache, not --kv-type %s\n",
                kv_type_name(o->kv_type));
        return -1;
    }
    if (o->exact)
        o->kv_type = KV_F32;
    if (!o->prompt == !o->prompt_ids) {
        fprintf(stderr, "paraserve generate: give exactly one of -p PROMPT or --prompt-ids IDS\n");
        return -1;
    }
    if (o->chat && o->prompt_ids) {
        fprintf(stderr, "paraserve generate: --chat needs -p PROMPT, not --prompt-ids\n");
        return -1;
    }
    if (o->json_schema && o->json) {
        fprintf(stderr, "paraserve generate: give at most one of --json-schema FILE or --json\n");
        return -1;
    }
    if (sampler_params_validate(&o->sp)) {
        fprintf(stderr, "paraserve generate: %s\n", ps_error_last());
        return -1;
    }
    return 0;
}

/* Parse "1 2 3" into a malloc'd array. */
static int parse_id_list(const char *s, int32_t n_vocab, int32_t **ids, size_t *n)
{
    size_t cap = 16, len = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return ps_error_set(PS_ENOMEM, "out of memory");
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long t = strtol(p, &end, 10);
        if (errno || end == p || t < 0 || t >= n_vocab) {
            free(v);
            return ps_error_set(PS_EINVAL, "--prompt-ids: '%.20s' is not a token id in [0, %d)", p, n_vocab);
        }
        if (len == cap) {
            int32_t *nv = realloc(v, 2 * cap * sizeof *v);
            if (!nv) {
                free(v);
                return ps_error_set(PS_ENOMEM, "out of memory");
            }
            v = nv;
            cap *= 2;
        }
        v[len++] = (int32_t)t;
        p = end;
    }
    if (!len) {
        free(v);
        return ps_error_set(PS_EINVAL, "--prompt-ids: no token ids given");
    }
    *ids = v;
    *n = len;
    return PS_OK;
}

/* Prompt token ids from the options (chat template, BOS as the model asks). */
static int build_prompt(const struct generate_opts *o, const struct model *m, const tokenizer *tok,
                        int32_t **ids, size_t *n)
{
    if (o->prompt_ids)
        return parse_id_list(o->prompt_ids, m->hp.n_vocab, ids, n);

    int32_t *body = NULL;
    size_t n_body = 0;
    int rc;
    if (o->chat) {
        chat_template *tmpl = NULL;
        rc = chat_template_from_gguf(m->gguf, &tmpl);
        if (rc)
            return rc;
        struct chat_message msgs[2];
        size_t n_msgs = 0;
        if (o->system)
            msgs[n_msgs++] = (struct chat_message){ CHAT_SYSTEM, o->system };
        msgs[n_msgs++] = (struct chat_message){ CHAT_USER, o->prompt };
        struct chat_prompt cp;
        rc = chat_template_render(tmpl, msgs, n_msgs, 1, &cp);
        chat_template_free(tmpl);
        if (rc)
            return rc;
        /* the template's markers are control tokens, the user's text is text */
        rc = tokenizer_encode_spans(tok, cp.text, cp.len, cp.markup, cp.n_markup, &body, &n_body);
        chat_prompt_free(&cp);
    } else {
        /* a raw prompt is the user's own template, as a /v1/completions prompt */
        rc = tokenizer_encode(tok, o->prompt, strlen(o->prompt), true, &body, &n_body);
    }
    if (rc)
        return rc;
    int add_bos = tokenizer_add_bos(tok) && tokenizer_bos(tok) >= 0;
    int32_t *all = malloc((n_body + 1) * sizeof *all);
    if (!all) {
        free(body);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    size_t k = 0;
    if (add_bos)
        all[k++] = tokenizer_bos(tok);
    if (n_body)
        memcpy(all + k, body, n_body * sizeof *body);
    k += n_body;
    free(body);
    if (!k) {
        free(all);
        return ps_error_set(PS_EINVAL, "the prompt is empty");
    }
    *ids = all;
    *n = k;
    return PS_OK;
}

/* Read a whole file into a malloc'd NUL-terminated buffer. */
static int read_file(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ps_error_set(PS_EIO, "cannot open '%s': %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (!buf)
        return ps_error_set(PS_ENOMEM, "out of memory");
    if (n == cap) {
        char *nb = realloc(buf, cap + 1);
        if (!nb) {
            free(buf);
            return ps_error_set(PS_ENOMEM, "out of memory");
        }
        buf = nb;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return PS_OK;
}

/* Grow the sequence's block table to cover `n_positions`. */
static int ensure_blocks(kv_blocks *kv, int32_t *table, int32_t *n_blocks, int32_t block_size,
                         int32_t n_positions)
{
    while (*n_blocks * block_size < n_positions) {
        int rc = kv_blocks_alloc(kv, &table[*n_blocks]);
        if (rc)
            return ps_error_set(rc, "KV cache full at %d positions", n_positions);
        (*n_blocks)++;
    }
    return PS_OK;
}

int cmd_generate(int argc, char **argv)
{
    struct generate_opts o;
    int prc = generate_parse(argc, argv, &o);
    if (prc)
        return prc > 0 ? 0 : 2;

    int status = 1, rc;
    struct model *m = NULL;
    tokenizer *tok = NULL;
    backend *be = NULL;
    kv_blocks *kv = NULL;
    sampler *smp = NULL;
    int32_t *prompt = NULL, *generated = NULL, *table = NULL;
    float *logits = NULL;
    size_t n_prompt = 0;
    char *out = NULL;
    char *schema = NULL;
    grammar_vocab *gv = NULL;
    grammar *gr = NULL;
    grammar_matcher *gm = NULL;
    uint32_t *mask = NULL;
    const char *finish = "length";

    rc = model_load(o.model_path, &m);
    if (rc)
        goto fail;
    if (o.exact && (rc = model_matrices_to_f32(m)))
        goto fail;
    rc = tokenizer_from_gguf(m->gguf, &tok);
    if (rc)
        goto fail;
    rc = build_prompt(&o, m, tok, &prompt, &n_prompt);
    if (rc)
        goto fail;
    if (o.json_schema || o.json) {
        size_t schema_len = strlen(GRAMMAR_SCHEMA_JSON_OBJECT);
        if (o.json_schema && (rc = read_file(o.json_schema, &schema, &schema_len)))
            goto fail;
        if ((rc = grammar_vocab_create(tok, &gv)) ||
            (rc = grammar_compile(gv, schema ? schema : GRAMMAR_SCHEMA_JSON_OBJECT, schema_len, NULL, &gr)) ||
            (rc = grammar_matcher_create(gr, &gm)))
            goto fail;
        mask = malloc(grammar_mask_words(gv) * sizeof *mask);
        if (!mask) {
            rc = ps_error_set(PS_ENOMEM, "out of memory");
            goto fail;
        }
    }

    const int32_t n_vocab = m->hp.n_vocab;
    const int32_t bs = o.block_size;
    int64_t need = (int64_t)n_prompt + o.n_predict;
    if ((int64_t)n_prompt > o.n_ctx) {
        rc = ps_error_set(PS_EINVAL, "prompt has %zu tokens, more than the context of %d (--ctx)",
                          n_prompt, o.n_ctx);
        goto fail;
    }
    if (need > o.n_ctx)
        need = o.n_ctx;
    const int32_t max_blocks = (o.n_ctx + bs - 1) / bs;
    const int32_t chunk = 512;

    struct backend_config cfg = { .n_threads = o.n_threads, .n_kv_blocks = max_blocks,
                                  .block_size = bs, .max_batch_tokens = chunk,
                                  .kv_type = o.kv_type };
    /* --exact and the f32 / q8 caches are CPU modes: "auto" picks the CPU,
     * "cuda" fails with the CUDA backend's error (backend_create_named) */
    rc = backend_create_named(o.device, m, &cfg, &be);
    if (rc)
        goto fail;
    rc = kv_blocks_create(max_blocks, &kv);
    if (rc)
        goto fail;
    rc = sampler_create(&o.sp, n_vocab, &smp);
    if (rc)
        goto fail;
    table = malloc((size_t)max_blocks * sizeof *table);
    logits = malloc((size_t)n_vocab * sizeof *logits);
    generated = malloc(((size_t)o.n_predict + 1) * sizeof *generated);
    out = malloc(4096);
    if (!table || !logits || !generated || !out) {
        rc = ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }

    int32_t n_blocks = 0;
    double t0 = cli_now_s();
    for (size_t off = 0; off < n_prompt; off += chunk) {
        int32_t n = (int32_t)(n_prompt - off < (size_t)chunk ? n_prompt - off : (size_t)chunk);
        rc = ensure_blocks(kv, table, &n_blocks, bs, (int32_t)off + n);
        if (rc)
            goto fail;
        struct batch_seq s = { .tokens = prompt + off, .n_tokens = n, .pos0 = (int32_t)off,
                               .block_table = table, .n_blocks = n_blocks,
                               .logits = off + n == n_prompt ? LOGITS_LAST : LOGITS_NONE };
        struct batch_plan plan = { &s, 1 };
        rc = backend_forward(be, &plan, logits);
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < n_prompt; i++)
        sampler_accept(smp, prompt[i]);
    double t_prefill = cli_now_s() - t0;

    struct token_stream ts = { 0 };
    int32_t n_gen = 0, pos = (int32_t)n_prompt;
    double t1 = cli_now_s();
    while (n_gen < o.n_predict) {
        int32_t next;
        if (gm && (rc = grammar_matcher_fill_mask(gm, mask)))
            goto fail;
        if ((rc = sampler_logits_check(logits, n_vocab)))
            goto fail;
        rc = sampler_sample(smp, logits, mask, &next);
        if (rc)
            goto fail;
        if (gm && (rc = grammar_matcher_accept(gm, next)))
            goto fail;
        sampler_accept(smp, next);
        generated[n_gen++] = next;
        if ((!o.ignore_eos || gm) && tokenizer_is_eog(tok, next)) {
            finish = "stop";
            break;
        }
        size_t n_out = 0;
        rc = tokenizer_stream_push(tok, &ts, next, 0, out, 4096, &n_out);
        if (rc)
            goto fail;
        fwrite(out, 1, n_out, stdout);
        fflush(stdout);
        if (gm && grammar_matcher_is_done(gm)) {
            finish = "stop";
            break;
        }
        if (n_gen == o.n_predict || pos + 1 > o.n_ctx)
            break;
        rc = ensure_blocks(kv, table, &n_blocks, bs, pos + 1);
        if (rc)
            goto fail;
        struct batch_seq s = { .tokens = &next, .n_tokens = 1, .pos0 = pos, .block_table = table,
                               .n_blocks = n_blocks, .logits = LOGITS_LAST };
        struct batch_plan plan = { &s, 1 };
        rc = backend_forward(be, &plan, logits);
        if (rc)
            goto fail;
        pos++;
    }
    double t_decode = cli_now_s() - t1;
    size_t n_out = 0;
    tokenizer_stream_flush(&ts, out, 4096, &n_out);
    fwrite(out, 1, n_out, stdout);
    fputc('\n', stdout);
    if (o.print_ids) {
        fputs("ids:", stdout);
        for (int32_t i = 0; i < n_gen; i++)
            printf(" %d", generated[i]);
        fputc('\n', stdout);
    }
    fflush(stdout);
    fprintf(stderr,
            "[paraserve] model=%s backend=%s simd=%s threads=%d\n"
            "[paraserve] prompt: %zu tokens in %.3f s (%.1f tok/s)\n"
            "[paraserve] decode: %d tokens in %.3f s (%.1f tok/s)\n"
            "[paraserve] finish_reason=%s\n",
            m->name, backend_name(be), cli_simd_label(), o.n_threads, n_prompt, t_prefill,
            t_prefill > 0 ? (double)n_prompt / t_prefill : 0.0, n_gen, t_decode,
            t_decode > 0 && n_gen > 1 ? (double)(n_gen - 1) / t_decode : 0.0, finish);
    status = 0;
    goto done;

fail:
    fprintf(stderr, "paraserve generate: %s\n", ps_error_last()[0] ? ps_error_last() : ps_status_str(rc));
done:
    free(mask);
    grammar_matcher_free(gm);
    grammar_free(gr);
    grammar_vocab_free(gv);
    free(schema);
    free(out);
    free(generated);
    free(logits);
    free(table);
    free(prompt);
    sampler_free(smp);
    kv_blocks_free(kv);
    backend_free(be);
    tokenizer_free(tok);
    model_free(m);
    return status;
}
