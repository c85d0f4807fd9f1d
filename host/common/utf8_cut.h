/* utf8_cut.h - where to cut UTF-8 text so that no character is split, and
 * how many characters it has. */
#ifndef PS_COMMON_UTF8_CUT_H
#define PS_COMMON_UTF8_CUT_H

#include <stddef.h>

/* The length of the longest prefix of s[0..n] ending on a character
 * boundary: n moved back over continuation bytes.  s[n] must be readable
 * (the text is longer than n, or s[n] is its NUL). */
static inline size_t utf8_cut(const char *s, size_t n)
{
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Characters (code points) of NUL-terminated UTF-8 text: its bytes that
 * do not continue a character. */
static inline size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

#endif /* PS_COMMON_UTF8_CUT_H */
