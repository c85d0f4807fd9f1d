/* unicode.h - the few Unicode facts the tokenizer needs.
 *
 * Strict UTF-8 decoding (no overlongs, no surrogates, nothing above
 * U+10FFFF) and a code point class table generated from Python's
 * unicodedata by scripts/gen-unicode-tables.py: letter (\p{L}), number
 * (\p{N}), white space (the Unicode White_Space property, i.e. \s).
 * Bytes that start no valid sequence decode one at a time to
 * UNICODE_INVALID, which has no class ("other"), like U+FFFD.
 */
#ifndef PS_UNICODE_H
#define PS_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#define UNICODE_LETTER 1u
#define UNICODE_NUMBER 2u
#define UNICODE_SPACE  4u

/* Decoded value of a byte that starts no valid UTF-8 sequence. */
#define UNICODE_INVALID 0xFFFFFFFFu

struct unicode_range {
    uint32_t first, last; /* inclusive */
    uint32_t flags;       /* UNICODE_* bits, never 0 */
};

/* Generated (unicode_data.c): sorted, disjoint. */
extern const struct unicode_range unicode_ranges[];
extern const size_t unicode_ranges_count;

/* UNICODE_* class bits of a code point; 0 for "other" and UNICODE_INVALID. */
uint32_t unicode_flags(uint32_t cp);

/* Decode one code point from s[0..len) (len >= 1).  Returns the bytes
 * consumed (1..4); *cp is UNICODE_INVALID (and 1 is returned) when s[0]
 * does not start a complete, valid sequence. */
size_t unicode_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp);

/* Bytes of a valid sequence that starts with lead byte b (2..4), 1 for
 * ASCII, 0 when b can never start one. */
size_t unicode_utf8_seq_len(uint8_t b);

/* Encode cp (<= 0x10FFFF) into out (4 bytes room); returns the length. */
size_t unicode_utf8_encode(uint32_t cp, char *out);

#endif /* PS_UNICODE_H */
