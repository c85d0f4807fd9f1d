#include "unicode.h"

#include <stdbool.h>

uint32_t unicode_flags(uint32_t cp)
{
    /* ASCII is hot: letters, digits and the five C0 spaces + ' '. */
    if (cp < 0x80) {
        if ((cp | 0x20) - 'a' < 26)
            return UNICODE_LETTER;
        if (cp - '0' < 10)
            return UNICODE_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D))
            return UNICODE_SPACE;
        return 0;
    }
    size_t lo = 0, hi = unicode_ranges_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < unicode_ranges[mid].first)
            hi = mid;
        else if (cp > unicode_ranges[mid].last)
            lo = mid + 1;
        else
            return unicode_ranges[mid].flags;
    }
    return 0;
}

size_t unicode_utf8_seq_len(uint8_t b)
{
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        return 2;
    if (b >= 0xE0 && b <= 0xEF)
        return 3;
    if (b >= 0xF0 && b <= 0xF4)
        return 4;
    return 0;
}

static bool is_cont(uint8_t b)
{
    return (b & 0xC0) == 0x80;
}

size_t unicode_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp)
{
    uint8_t b0 = s[0];
    size_t n = unicode_utf8_seq_len(b0);
    *cp = UNICODE_INVALID;
    if (n == 1) {
        *cp = b0;
        return 1;
    }
    if (n == 0 || len < n)
        return 1;
    /* Second-byte ranges exclude overlongs (E0, F0), surrogates (ED) and
     * values above U+10FFFF (F4): Unicode table 3-7. */
    uint8_t b1 = s[1], lo = 0x80, hi = 0xBF;
    if (b0 == 0xE0)
        lo = 0xA0;
    else if (b0 == 0xED)
        hi = 0x9F;
    else if (b0 == 0xF0)
        lo = 0x90;
    else if (b0 == 0xF4)
        hi = 0x8F;
    if (b1 < lo || b1 > hi)
        return 1;
    if (n == 2) {
        *cp = ((uint32_t)(b0 & 0x1F) << 6) | (b1 & 0x3F);
        return 2;
    }
    if (!is_cont(s[2]))
        return 1;
    if (n == 3) {
        *cp = ((uint32_t)(b0 & 0x0F) << 12) | ((uint32_t)(b1 & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    if (!is_cont(s[3]))
        return 1;
    *cp = ((uint32_t)(b0 & 0x07) << 18) | ((uint32_t)(b1 & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

size_t unicode_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
