/* gpu_sweep.c - decode and prefill throughput of the CUDA backend on one
 * model, as CSV rows (stdout or --csv).  Driven by bench/gpu-sweep.
 *
 * Decode: for each batch B and context C, B sequences whose caches hold C
 * positions (random f16 K/V from backend_cuda_fill_kv_random: the prefill is
 * not run, the bytes read are the same) each decode one token per step,
 * sampled greedily on the GPU (backend_cuda_forward_sample: only ids cross
 * to the host).  3 warm-up steps (graph capture), then --steps timed steps;
 * the median step is reported.
 *   bytes/step = weights read (GEMV representation when B <= mmv_max, else the
 *                f16 copies) + B * (C + 1) * KV bytes per position
 *   roofline % = bytes/step / step time / peak bandwidth
 * Peak: the card's datasheet HBM bandwidth when the name is known, and a
 * measured device-to-device copy (bytes read + written) in every run.
 * Prefill: one forward of B x P new tokens from position 0, tokens/s. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_cuda.h"
#include "common/status.h"
#include "engine/backend.h"
#include "model/mkmodel.h"
#include "model/model.h"

#ifdef PARASERVE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define BS 16

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* GB/s of HBM from the datasheet, by device name; 0 when unknown. */
static double datasheet_gbs(const char *name)
{
    static const struct { const char *pat; double gbs; } t[] = {
        { "H200", 4800 }, { "H100 NVL", 3900 }, { "H100 PCIe", 2000 }, { "H100", 3350 },
        { "A100-SXM4-80GB", 2039 }, { "A100 80GB PCIe", 1935 }, { "A100-PCIE-40GB", 1555 },
        { "A100-SXM4-40GB", 1555 }, { "A100", 1555 }, { "L40S", 864 }, { "L4", 300 }, { "A10", 600 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strstr(name, t[i].pat))
            return t[i].gbs;
    return 0.0;
}

static double measured_copy_gbs(void)
{
#ifdef PARASERVE_HAVE_CUDA
    const size_t n = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) {
        cudaFree(a);
        return 0.0;
    }
    cudaMemset(a, 1, n);
    cudaMemset(b, 2, n);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double best = 0.0;
    for (int i = 0; i < 6; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        const double gbs = 2.0 * (double)n / (ms * 1e-3) / 1e9;
        if (i > 0 && gbs > best)
            best = gbs;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return best;
#else
    return 0.0;
#endif
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s)
            s++;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *label = "model", *csv_path = NULL;
    int batches[16] = { 1, 8, 32, 128, 256, 512 }, n_b = 6;
    int ctxs[16] = { 512, 2048, 8192 }, n_c = 3;
    int steps = 20, prefill_len = 512;
    double mem_frac = 0.80;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v) model_path = argv[++i];
        else if (!strcmp(a, "--label") && v) label = argv[++i];
        else if (!strcmp(a, "--csv") && v) csv_path = argv[++i];
        else if (!strcmp(a, "--batches") && v) n_b = parse_list(argv[++i], batches, 16);
        else if (!strcmp(a, "--ctx") && v) n_c = parse_list(argv[++i], ctxs, 16);
        else if (!strcmp(a, "--steps") && v) steps = atoi(argv[++i]);
        else if (!strcmp(a, "--prefill") && v) prefill_len = atoi(argv[++i]);
        else if (!strcmp(a, "--mem-frac") && v) mem_frac = atof(argv[++i]);
        else if (!strcmp(a, "--mkmodel") && v && i + 2 < argc) {
            /* gpu_sweep --mkmodel PRESET OUT.gguf: write a synthetic model and exit
             * (a device build without the server has no `paraserve mkmodel`). */
            struct mkmodel_spec spec;
            if (mkmodel_preset(argv[i + 1], &spec) || mkmodel_write(argv[i + 2], &spec)) {
                fprintf(stderr, "gpu_sweep: %s\n", ps_error_last());
                return 1;
            }
            return 0;
        }
        else {
            fprintf(stderr, "usage: gpu_sweep -m MODEL.gguf [--label NAME] [--csv OUT] [--batches 1,8,..] "
                            "[--ctx 512,..] [--steps N] [--prefill P] [--mem-frac F]\n"
                            "       gpu_sweep --mkmodel PRESET OUT.gguf\n");
            return 2;
        }
    }
    if (!model_path || steps < 1) {
        fprintf(stderr, "gpu_sweep: -m MODEL is required\n");
        return 2;
    }
    if (cuda_device_count() < 1) {
        printf("SKIP: no CUDA device: cuda_device_count() = 0\n");
        return 77;
    }
    struct model *m = NULL;
    if (model_load(model_path, &m)) {
        fprintf(stderr, "gpu_sweep: %s\n", ps_error_last());
        return 1;
    }
    const int32_t V = m->hp.n_vocab;
    int max_b = 1, max_c = 1;
    for (int i = 0; i < n_b; i++) max_b = batches[i] > max_b ? batches[i] : max_b;
    for (int i = 0; i < n_c; i++) max_c = ctxs[i] > max_c ? ctxs[i] : max_c;

    /* probe: memory, bytes per KV position */
    struct backend_config cfg = { .n_threads = 1, .n_kv_blocks = 16, .block_size = BS, .max_batch_tokens = 2048 };
    backend *be = NULL;
    struct cuda_backend_info info;
    if (backend_cuda_create(m, &cfg, &be) || backend_cuda_info(be, &info)) {
        fprintf(stderr, "gpu_sweep: %s\n", ps_error_last());
        return 1;
    }
    backend_free(be);
    const double block_bytes = (double)info.kv_bytes_per_token * BS;
    const double weights = (double)info.weight_bytes_gemv + (double)info.weight_bytes_f16;
    double budget = mem_frac * (double)info.mem_total - weights - 3.0e9; /* scratch, logits, workspace */
    const int64_t want = (int64_t)max_b * ((max_c + steps + 8 + BS - 1) / BS) + 1;
    int64_t nb = (int64_t)(budget / block_bytes);
    if (nb < 64 && nb < want) {
        fprintf(stderr, "gpu_sweep: not enough device memory for a KV cache (%lld blocks fit)\n", (long long)nb);
        return 1;
    }
    if (nb > want) nb = want; /* a (batch, ctx) that does not fit is skipped below */
    if (nb > INT32_MAX - 1) nb = INT32_MAX - 1;
    cfg.n_kv_blocks = (int32_t)nb;
    if (backend_cuda_create(m, &cfg, &be) || backend_cuda_fill_kv_random(be, 7)) {
        fprintf(stderr, "gpu_sweep: %s\n", ps_error_last());
        return 1;
    }
    backend_cuda_info(be, &info);
    const double peak_ds = datasheet_gbs(info.device), peak_meas = measured_copy_gbs();
    const double peak = peak_ds > 0 ? peak_ds : peak_meas;
    fprintf(stderr, "gpu_sweep: %s, %d SMs, %.1f GiB; datasheet %.0f GB/s, measured copy %.0f GB/s; KV blocks %lld\n",
            info.device, info.n_sm, (double)info.mem_total / (1 << 30), peak_ds, peak_meas, (long long)nb);

    FILE *csv = csv_path ? fopen(csv_path, "w") : stdout;
    if (!csv) {
        fprintf(stderr, "gpu_sweep: cannot write %s\n", csv_path);
        return 1;
    }
    fprintf(csv, "engine,card,model,kind,batch,ctx,step_ms,tok_s,host_us,bytes_per_step,gbs,roofline_pct,"
                 "peak_gbs,peak_measured_gbs,path,graph_nodes\n");

    int32_t *bt = malloc((size_t)nb * sizeof *bt);
    int32_t *tok = malloc((size_t)max_b * sizeof *tok);
    struct batch_seq *seqs = malloc((size_t)max_b * sizeof *seqs);
    struct cuda_sample_params *sp = calloc((size_t)max_b, sizeof *sp);
    double *times = malloc((size_t)steps * sizeof *times), *hosts = malloc((size_t)steps * sizeof *hosts);
    for (int64_t i = 0; i < nb; i++)
        bt[i] = (int32_t)i;
    for (int ic = 0; ic < n_c; ic++)
        for (int ib = 0; ib < n_b; ib++) {
            const int B = batches[ib], C = ctxs[ic];
            const int64_t per = (C + steps + 8 + BS - 1) / BS;
            if ((int64_t)B * per > nb || B > cfg.max_batch_tokens) {
                fprintf(stderr, "  decode B=%d C=%d: KV does not fit (%lld blocks), skipped\n", B, C,
                        (long long)((int64_t)B * per));
                fprintf(csv, "paraserve,%s,%s,decode,%d,%d,,,,,,,%.0f,%.0f,skipped-kv-does-not-fit,\n", info.device, label,
                        B, C, peak, peak_meas);
                continue;
            }
            for (int s = 0; s < B; s++) {
                tok[s] = (s * 131 + 7) % V;
                sp[s] = (struct cuda_sample_params){ 0.0f, 0, 1.0f, 0.0f, (uint64_t)s, 0 };
            }
            int rc = 0;
            for (int it = 0; it < 3 + steps && !rc; it++) {
                for (int s = 0; s < B; s++)
                    seqs[s] = (struct batch_seq){ &tok[s], 1, C + it, bt + (int64_t)s * per, (int32_t)per, LOGITS_LAST };
                struct batch_plan plan = { seqs, B };
                const double t0 = now_s();
                rc = backend_cuda_forward_sample(be, &plan, sp, NULL, tok);
                const double t1 = now_s();
                if (it >= 3) {
                    times[it - 3] = t1 - t0;
                    backend_cuda_info(be, &info);
                    hosts[it - 3] = info.last_host_us;
                }
            }
            if (rc) {
                fprintf(stderr, "gpu_sweep: decode B=%d C=%d: %s\n", B, C, ps_error_last());
                return 1;
            }
            const double t = median(times, steps), host = median(hosts, steps);
            const int gemv = B <= info.mmv_max;
            const double bytes = (double)(gemv ? info.weight_bytes_gemv : info.weight_bytes_f16) +
                                 (double)B * (C + 3 + steps / 2 + 1) * info.kv_bytes_per_token;
            const double gbs = bytes / t / 1e9;
            const long long nodes = info.graphs ? (long long)info.graph_nodes_last : -1;
            fprintf(csv, "paraserve,%s,%s,decode,%d,%d,%.4f,%.1f,%.1f,%.0f,%.1f,%.1f,%.0f,%.0f,%s,%lld\n", info.device,
                    label, B, C, t * 1e3, B / t, host, bytes, gbs, peak > 0 ? 100.0 * gbs / peak : 0.0, peak, peak_meas,
                    gemv ? "gemv" : "cublas", nodes);
            fprintf(stderr, "  decode B=%4d C=%5d: %8.3f ms/step %9.1f tok/s host %6.1f us  %6.1f GB/s (%4.1f%%) %lld graph nodes\n",
                    B, C, t * 1e3, B / t, host, gbs, peak > 0 ? 100.0 * gbs / peak : 0.0, nodes);
            fflush(csv);
        }

    /* prefill: B x P tokens from position 0 */
    const int pre_b[] = { 1, 4 };
    for (int ib = 0; ib < 2 && prefill_len > 0; ib++) { /* --prefill 0: decode only */
        const int B = pre_b[ib], P = prefill_len;
        const int64_t per = (P + BS - 1) / BS;
        if ((int64_t)B * P > cfg.max_batch_tokens || (int64_t)B * per > nb)
            continue;
        int32_t *ptok = malloc((size_t)B * P * sizeof *ptok);
        for (int64_t i = 0; i < (int64_t)B * P; i++)
            ptok[i] = (int32_t)((i * 2654435761u) % (uint32_t)V);
        for (int s = 0; s < B; s++)
            seqs[s] = (struct batch_seq){ ptok + (int64_t)s * P, P, 0, bt + (int64_t)s * per, (int32_t)per, LOGITS_LAST };
        struct batch_plan plan = { seqs, B };
        int n = 0, rc = 0;
        for (int it = 0; it < 6 && !rc; it++) {
            const double t0 = now_s();
            rc = backend_cuda_forward_sample(be, &plan, sp, NULL, tok);
            if (it >= 1)
                times[n++] = now_s() - t0;
        }
        free(ptok);
        if (rc) {
            fprintf(stderr, "gpu_sweep: prefill: %s\n", ps_error_last());
            return 1;
        }
        const double t = median(times, n);
        fprintf(csv, "paraserve,%s,%s,prefill,%d,%d,%.4f,%.1f,,,,,%.0f,%.0f,cublas,\n", info.device, label, B, P,
                t * 1e3, (double)B * P / t, peak, peak_meas);
        fprintf(stderr, "  prefill %d x %d: %.2f ms, %.0f tok/s\n", B, P, t * 1e3, (double)B * P / t);
    }
    if (csv != stdout)
        fclose(csv);
    free(bt); free(tok); free(seqs); free(sp); free(times); free(hosts);
    backend_free(be);
    model_free(m);
    return 0;
}
