/* cmd_mkmodel.c - `paraserve mkmodel`: write a synthetic GGUF model. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "commands.h"
#include "common/status.h"
#include "model/mkmodel.h"

static void mkmodel_usage(FILE *out)
{
    fprintf(out,
            "usage: paraserve mkmodel (--preset NAME | --arch A --vocab N --embd N --layers N\n"
            "                          --heads N --kv-heads N --head-dim N --ff N)\n"
            "                         [--ctx N] [--rope-theta X] [--eps X] [--dtype T]\n"
            "                         [--embd-dtype T] [--seed S] [--tied | --untied]\n"
            "                         [--name NAME] -o PATH\n"
            "\n"
            "Writes a GGUF model with deterministic random weights and a byte-level\n"
            "vocabulary (see host/model/mkmodel.h).\n"
            "  presets: %s\n"
            "  arch:    llama, qwen2, qwen3\n"
            "  types:   F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K (default Q4_1, embeddings Q8_0)\n"
            "  --kv-heads defaults to --heads, --head-dim to embd/heads, --ctx to 2048.\n"
            "  Options given after --preset override it.\n",
            mkmodel_preset_names());
}

static int parse_int(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "paraserve mkmodel: %s: bad value '%s' (expected %lld..%lld)\n", opt, s,
                (long long)lo, (long long)hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v > 0)) {
        fprintf(stderr, "paraserve mkmodel: %s: bad value '%s' (expected a number > 0)\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_dtype(const char *opt, const char *s, enum dtype *out)
{
    for (uint32_t id = 0; id < 64; id++) {
        const struct dtype_info *di = dtype_info_get(id);
        if (di && !strcasecmp(di->name, s)) {
            *out = (enum dtype)id;
            return 0;
        }
    }
    fprintf(stderr, "paraserve mkmodel: %s: unknown type '%s'\n", opt, s);
    return -1;
}

int cmd_mkmodel(int argc, char **argv)
{
    struct mkmodel_spec spec;
    const char *out_path = NULL;
    bool have_preset = false, have_arch = false;
    int64_t v;

    memset(&spec, 0, sizeof spec);
    spec.wtype      = DT_Q4_1;
    spec.embd_type  = DT_Q8_0;
    spec.tied       = true;
    spec.seed       = 42;
    spec.rope_theta = 10000.0f;
    spec.rms_eps    = 1e-5f;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            mkmodel_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--tied")) {
            spec.tied = true;
            continue;
        }
        if (!strcmp(a, "--untied")) {
            spec.tied = false;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "paraserve mkmodel: unknown option or missing value: '%s'\n", a);
            mkmodel_usage(stderr);
            return 2;
        }
        const char *val = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--preset")) {
            if (mkmodel_preset(val, &spec) != PS_OK) {
                fprintf(stderr, "paraserve mkmodel: %s\n", ps_error_last());
                return 2;
            }
            have_preset = true;
        } else if (!strcmp(a, "--arch")) {
            if (!strcmp(val, "llama"))
                spec.arch = ARCH_LLAMA;
            else if (!strcmp(val, "qwen2"))
                spec.arch = ARCH_QWEN2;
            else if (!strcmp(val, "qwen3"))
                spec.arch = ARCH_QWEN3;
            else {
                fprintf(stderr, "paraserve mkmodel: --arch: unknown architecture '%s'\n", val);
                return 2;
            }
            have_arch = true;
        } else if (!strcmp(a, "--vocab")) {
            bad = parse_int(a, val, 259, 1 << 24, &v);
            spec.n_vocab = (int32_t)v;
        } else if (!strcmp(a, "--embd")) {
            bad = parse_int(a, val, 1, 65536, &v);
            spec.n_embd = (int32_t)v;
        } else if (!strcmp(a, "--layers")) {
            bad = parse_int(a, val, 1, 4096, &v);
            spec.n_layer = (int32_t)v;
        } else if (!strcmp(a, "--heads")) {
            bad = parse_int(a, val, 1, 65536, &v);
            spec.n_head = (int32_t)v;
        } else if (!strcmp(a, "--kv-heads")) {
            bad = parse_int(a, val, 1, 65536, &v);
            spec.n_head_kv = (int32_t)v;
        } else if (!strcmp(a, "--head-dim")) {
            bad = parse_int(a, val, 2, 65536, &v);
            spec.head_dim = (int32_t)v;
        } else if (!strcmp(a, "--ff")) {
            bad = parse_int(a, val, 1, 65536, &v);
            spec.n_ff = (int32_t)v;
        } else if (!strcmp(a, "--ctx")) {
            bad = parse_int(a, val, 1, INT32_MAX, &v);
            spec.n_ctx = (int32_t)v;
        } else if (!strcmp(a, "--seed")) {
            bad = parse_int(a, val, 0, INT64_MAX, &v);
            spec.seed = (uint64_t)v;
        } else if (!strcmp(a, "--rope-theta")) {
            bad = parse_float(a, val, &spec.rope_theta);
        } else if (!strcmp(a, "--eps")) {
            bad = parse_float(a, val, &spec.rms_eps);
        } else if (!strcmp(a, "--dtype")) {
            bad = parse_dtype(a, val, &spec.wtype);
        } else if (!strcmp(a, "--embd-dtype")) {
            bad = parse_dtype(a, val, &spec.embd_type);
        } else if (!strcmp(a, "--name")) {
            snprintf(spec.name, sizeof spec.name, "%s", val);
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out_path = val;
        } else {
            fprintf(stderr, "paraserve mkmodel: unknown option '%s'\n", a);
            mkmodel_usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
    }

    if (!out_path) {
        fprintf(stderr, "paraserve mkmodel: missing -o PATH\n");
        return 2;
    }
    if (!have_preset) {
        if (!have_arch || !spec.n_vocab || !spec.n_embd || !spec.n_layer || !spec.n_head ||
            !spec.n_ff) {
            fprintf(stderr, "paraserve mkmodel: give --preset NAME, or --arch, --vocab, --embd, "
                            "--layers, --heads and --ff\n");
            return 2;
        }
        if (!spec.n_head_kv)
            spec.n_head_kv = spec.n_head;
        if (!spec.head_dim) {
            if (spec.n_embd % spec.n_head) {
                fprintf(stderr, "paraserve mkmodel: --embd is not a multiple of --heads; "
                                "give --head-dim\n");
                return 2;
            }
            spec.head_dim = spec.n_embd / spec.n_head;
        }
        if (!spec.n_ctx)
            spec.n_ctx = 2048;
    }
    int rc = mkmodel_write(out_path, &spec);
    if (rc) {
        fprintf(stderr, "paraserve mkmodel: %s\n", ps_error_last());
        return rc == PS_EINVAL ? 2 : 1;
    }
    return 0;
}
