/* dmat.cu - weights on the device: repack GGUF blocks into the aligned
 * structure-of-arrays layout of struct dmat (cuda_common.cuh), upload, and
 * build the F16 copies the cuBLAS path multiplies with. */
#include <stdlib.h>
#include <string.h>

#include "ops.cuh"

/* ---- kernel: repacked -> f16 ---------------------------------------------- */

__global__ void dequant_f16_kernel(enum dtype type, const void *qs, const void *sc, int64_t K, int64_t N,
                                   __half *out /* [N][K] */)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * K)
        return;
    out[i] = __float2half_rn(dmat_get(type, qs, sc, K, i / K, i % K));
}

static int dequant_f16_launch(cudaStream_t st, const struct dmat *m, __half *out)
{
    const int64_t n = m->N * m->K;
    dequant_f16_kernel<<<(unsigned)ceil_div64(n, 256), 256, 0, st>>>(m->type, m->qs, m->sc, m->K, m->N, out);
    CUDA_LAUNCH_CHECK();
    return PS_OK;
}

/* ---- host repack ---------------------------------------------------------- */

static int native_type(enum dtype t)
{
    return t == DT_Q4_0 || t == DT_Q4_1 || t == DT_Q8_0 || t == DT_F16 || t == DT_BF16;
}

/* bytes of qs / sc per row in the repacked layout */
static void layout_bytes(enum dtype t, int64_t K, size_t *qs_row, size_t *sc_row)
{
    switch (t) {
    case DT_Q4_0: *qs_row = (size_t)K / 2; *sc_row = (size_t)(K / 32) * 2; break;
    case DT_Q4_1: *qs_row = (size_t)K / 2; *sc_row = (size_t)(K / 32) * 4; break;
    case DT_Q8_0: *qs_row = (size_t)K;     *sc_row = (size_t)(K / 32) * 2; break;
    default:      *qs_row = (size_t)K * 2; *sc_row = 0; break;
    }
}

/* One GGUF row of `src_type` into the repacked row of `dst_type` (equal,
 * or F16 for a converted type; tmp: K floats). */
static int repack_row(const uint8_t *src, enum dtype src_type, enum dtype dst_type, int64_t K,
                      uint8_t *qs, uint8_t *sc, float *tmp)
{
    const int64_t nb = K / 32;
    switch (dst_type == src_type ? src_type : DT_F32) {
    case DT_Q4_0:
        for (int64_t b = 0; b < nb; b++) {
            memcpy(sc + 2 * b, src + 18 * b, 2);
            memcpy(qs + 16 * b, src + 18 * b + 2, 16);
        }
        return PS_OK;
    case DT_Q4_1:
        for (int64_t b = 0; b < nb; b++) {
            memcpy(sc + 4 * b, src + 20 * b, 4); /* d, m: the half2 (low = d) */
            memcpy(qs + 16 * b, src + 20 * b + 4, 16);
        }
        return PS_OK;
    case DT_Q8_0:
        for (int64_t b = 0; b < nb; b++) {
            memcpy(sc + 2 * b, src + 34 * b, 2);
            memcpy(qs + 32 * b, src + 34 * b + 2, 32);
        }
        return PS_OK;
    case DT_F16:
    case DT_BF16:
        memcpy(qs, src, (size_t)K * 2);
        return PS_OK;
    default: {
        int rc = quant_row_dequantize(src_type, src, tmp, K);
        if (rc)
            return rc;
        uint16_t *h = (uint16_t *)qs;
        for (int64_t k = 0; k < K; k++)
            h[k] = f32_to_fp16(tmp[k]);
        return PS_OK;
    }
    }
}

void dmat_free(struct dmat *m)
{
    if (!m)
        return;
    if (m->f16_owned)
        cudaFree(m->f16);
    cudaFree(m->qs);
    cudaFree(m->sc);
    memset(m, 0, sizeof *m);
}

int64_t dmat_bytes_quant(const struct dmat *m)
{
    size_t q, s;
    layout_bytes(m->type, m->K, &q, &s);
    return (int64_t)(q + s) * m->N;
}

int dmat_upload_stack(const void *const *h_data, const enum dtype *types, const int64_t *N, int n,
                      int64_t K, int make_f16, cudaStream_t st, struct dmat *out)
{
    memset(out, 0, sizeof *out);
    enum dtype t = types[0];
    int64_t rows = 0;
    for (int i = 0; i < n; i++) {
        const struct dtype_info *ti = dtype_info_get((uint32_t)types[i]);
        if (!ti || dtype_row_bytes(types[i], K) == 0)
            return ps_error_set(PS_EUNSUPPORTED, "cuda: weight type %d with rows of %lld not supported",
                                (int)types[i], (long long)K);
        if (types[i] != t)
            t = DT_F16;
        rows += N[i];
    }
    if (!native_type(t))
        t = DT_F16;
    if ((t == DT_F16 || t == DT_BF16) && K % 8 != 0)
        return ps_error_set(PS_EUNSUPPORTED, "cuda: F16/BF16 rows of %lld elements (need a multiple of 8)",
                            (long long)K);
    size_t qs_row, sc_row;
    layout_bytes(t, K, &qs_row, &sc_row);
    int rc = PS_OK;
    uint8_t *hq = (uint8_t *)malloc(qs_row * (size_t)rows);
    uint8_t *hs = sc_row ? (uint8_t *)malloc(sc_row * (size_t)rows) : NULL;
    float *tmp = (float *)malloc((size_t)K * sizeof(float));
    if (!hq || (sc_row && !hs) || !tmp) {
        rc = ps_error_set(PS_ENOMEM, "cuda: out of host memory repacking a [%lld x %lld] weight",
                          (long long)K, (long long)rows);
        goto fail;
    }
    {
        int64_t r = 0;
        for (int i = 0; i < n; i++) {
            const size_t src_row = dtype_row_bytes(types[i], K);
            for (int64_t j = 0; j < N[i]; j++, r++) {
                rc = repack_row((const uint8_t *)h_data[i] + (size_t)j * src_row, types[i], t, K,
                                hq + (size_t)r * qs_row, hs ? hs + (size_t)r * sc_row : NULL, tmp);
                if (rc)
                    goto fail;
            }
        }
    }
    out->type = t;
    out->K = K;
    out->N = rows;
    {
        cudaError_t e = cudaMalloc(&out->qs, qs_row * (size_t)rows);
        if (e == cudaSuccess && sc_row)
            e = cudaMalloc(&out->sc, sc_row * (size_t)rows);
        if (e == cudaSuccess)
            e = cudaMemcpy(out->qs, hq, qs_row * (size_t)rows, cudaMemcpyHostToDevice);
        if (e == cudaSuccess && sc_row)
            e = cudaMemcpy(out->sc, hs, sc_row * (size_t)rows, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            rc = ps_error_set(PS_ENOMEM, "cuda: uploading a [%lld x %lld] %s weight: %s", (long long)K,
                              (long long)rows, dtype_info_get(t)->name, cudaGetErrorString(e));
            goto fail;
        }
    }
    if (t == DT_F16) {
        out->f16 = (__half *)out->qs;
    } else if (make_f16) {
        cudaError_t e = cudaMalloc(&out->f16, (size_t)rows * (size_t)K * sizeof(__half));
        if (e != cudaSuccess) {
            out->f16 = NULL;
            rc = ps_error_set(PS_ENOMEM, "cuda: F16 copy of a [%lld x %lld] weight: %s", (long long)K,
                              (long long)rows, cudaGetErrorString(e));
            goto fail;
        }
        out->f16_owned = 1;
        if ((rc = dequant_f16_launch(st, out, out->f16)))
            goto fail;
        if (cudaStreamSynchronize(st) != cudaSuccess) {
            rc = ps_error_set(PS_EINTERNAL, "cuda: F16 dequantize: %s", cudaGetErrorString(cudaGetLastError()));
            goto fail;
        }
    }
    free(hq);
    free(hs);
    free(tmp);
    return PS_OK;
fail:
    free(hq);
    free(hs);
    free(tmp);
    dmat_free(out);
    return rc;
}

int dmat_upload(const void *h_data, enum dtype type, int64_t K, int64_t N, int make_f16, cudaStream_t st,
                struct dmat *out)
{
    return dmat_upload_stack(&h_data, &type, &N, 1, K, make_f16, st, out);
}
