/* test_util.h - minimal assertion helpers for the C unit tests.
 * A test binary returns 0 on success, 1 on failure, 77 when it cannot run
 * here (it prints why), which ctest reports as skipped. */
#ifndef PS_TEST_UTIL_H
#define PS_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failures;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            test_failures++;                                                 \
        }                                                                    \
    } while (0)

#define CHECK_MSG(cond, ...)                                                 \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            test_failures++;                                                 \
        }                                                                    \
    } while (0)

#define TEST_SKIP(...)                                                       \
    do {                                                                     \
        printf("SKIP: ");                                                    \
        printf(__VA_ARGS__);                                                 \
        printf("\n");                                                        \
        exit(77);                                                            \
    } while (0)

#define TEST_DONE()                                                          \
    do {                                                                     \
        if (test_failures) {                                                 \
            fprintf(stderr, "%d check(s) failed\n", test_failures);          \
            return 1;                                                        \
        }                                                                    \
        printf("OK\n");                                                      \
        return 0;                                                            \
    } while (0)

/* xorshift64: deterministic test data from a per-test seed in *state. */
static inline uint32_t test_rng_u32(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (uint32_t)(*state >> 16);
}

/* Path of the embedded default model (ctest sets PARASERVE_MODEL). */
static inline const char *test_model_path(void)
{
    const char *p = getenv("PARASERVE_MODEL");
    return p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

#endif /* PS_TEST_UTIL_H */
