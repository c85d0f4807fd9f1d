/* fuzz_util.h - input framing shared by the libFuzzer targets. */
#ifndef PS_FUZZ_UTIL_H
#define PS_FUZZ_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Chunked-delivery framing: byte 0 picks how many chunk sizes follow
 * (1..8), those bytes are the sizes (used in turn; 0 means the rest), and
 * what follows is the payload.  Returns 0 when the input is too short. */
static inline int fuzz_split_framing(const uint8_t *data, size_t size, const uint8_t **sizes, size_t *nsizes,
                                     const uint8_t **payload, size_t *n)
{
    if (size < 1)
        return 0;
    *nsizes = (size_t)(data[0] % 8) + 1;
    if (size < 1 + *nsizes)
        return 0;
    *sizes = data + 1;
    *payload = data + 1 + *nsizes;
    *n = size - 1 - *nsizes;
    return 1;
}

/* The input as a NUL-terminated string (malloc'd; NULL when out of
 * memory).  Text parsers read it up to its first NUL. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s) {
        memcpy(s, data, size);
        s[size] = 0;
    }
    return s;
}

#endif
