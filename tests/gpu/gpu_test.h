/* gpu_test.h - helpers of the GPU tests (C and CUDA): skip without a device,
 * NMSE comparison that prints the first mismatches (llama.cpp
 * test-backend-ops style), deterministic random numbers.
 *
 * Exit codes: 0 pass, 1 fail, 77 skipped (no CUDA device: the reason is
 * printed; ctest shows the test as skipped, never as passed). */
#ifndef PS_GPU_TEST_H
#define PS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int gt_failures;
static int gt_checks;

static uint64_t gt_rng_state = 0x853c49e6748fea9bULL;
static inline uint64_t gt_rand64(void)
{
    uint64_t z = (gt_rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline float gt_uniform(void) { return (float)(gt_rand64() >> 40) * 0x1p-24f; }  /* [0,1) */
static inline float gt_sym(float a) { return (2.0f * gt_uniform() - 1.0f) * a; }        /* [-a,a) */
static inline int gt_randint(int n) { return (int)(gt_rand64() % (uint64_t)n); }

/* NMSE = sum (a-b)^2 / sum b^2 (b: reference); also fails on NaN/inf in a. */
static inline int gt_nmse_check(const char *what, const float *got, const float *ref, int64_t n, double tol)
{
    double num = 0.0, den = 0.0;
    int64_t bad = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && bad < 0)
            bad = i;
        const double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    const double nmse = den > 0 ? num / den : num;
    gt_checks++;
    const int ok = bad < 0 && nmse <= tol;
    printf("%-58s nmse %.3e (tol %.0e) %s\n", what, nmse, tol, ok ? "OK" : "NOT OK");
    if (!ok) {
        gt_failures++;
        int shown = 0;
        for (int64_t i = 0; i < n && shown < 8; i++) {
            const double d = fabs((double)got[i] - ref[i]);
            if (!isfinite(got[i]) || d > 1e-3 * (fabs(ref[i]) + 1e-3)) {
                printf("    [%lld] got %.7g ref %.7g\n", (long long)i, got[i], ref[i]);
                shown++;
            }
        }
    }
    return ok;
}

#define GT_CHECK(cond, ...)                                                   \
    do {                                                                      \
        gt_checks++;                                                          \
        if (!(cond)) {                                                        \
            gt_failures++;                                                    \
            printf("%s:%d: NOT OK: %s: ", __FILE__, __LINE__, #cond);         \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
        }                                                                     \
    } while (0)

#define GT_SKIP(...)                                                          \
    do {                                                                      \
        printf("SKIP: ");                                                     \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
        fflush(stdout);                                                       \
        exit(77);                                                             \
    } while (0)

#define GT_DONE()                                                             \
    do {                                                                      \
        printf("%d checks, %d failed: %s\n", gt_checks, gt_failures,          \
               gt_failures ? "FAIL" : "PASS");                                \
        return gt_failures ? 1 : 0;                                           \
    } while (0)

#endif /* PS_GPU_TEST_H */
