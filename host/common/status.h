/* status.h - the one error table of paraserve.
 *
 * Every fallible library function returns an int status: PS_OK (0) or one of
 * the PS_E* codes below.  A function that fails also records a one-line,
 * human-readable detail with ps_error_set(); callers at the top (CLI, HTTP
 * handlers) print ps_error_last() so the user sees what went wrong and where
 * ("gguf: tensor 'blk.0.attn_q.weight' data ends past end of file").
 * The detail is thread-local: each thread sees only its own last error.
 * Nothing below main() calls exit().
 */
#ifndef PS_STATUS_H
#define PS_STATUS_H

#include <stdarg.h>

#define PS_STATUS_TABLE(X)                                              \
    X(PS_OK,            "ok")                                           \
    X(PS_EINVAL,        "invalid argument")                             \
    X(PS_ENOMEM,        "out of memory")                                \
    X(PS_EIO,           "i/o error")                                    \
    X(PS_EFORMAT,       "malformed file")                               \
    X(PS_EUNSUPPORTED,  "unsupported feature")                          \
    X(PS_ENOTFOUND,     "not found")                                    \
    X(PS_ERANGE,        "value out of range")                           \
    X(PS_EFULL,         "capacity exhausted")                           \
    X(PS_ECANCELLED,    "cancelled")                                    \
    X(PS_EINTERNAL,     "internal error")

enum ps_status {
#define PS_STATUS_ENUM(code, msg) code,
    PS_STATUS_TABLE(PS_STATUS_ENUM)
#undef PS_STATUS_ENUM
    PS_STATUS_COUNT
};

/* Static message for a status code; never NULL. */
const char *ps_status_str(int status);

/* Record a formatted detail for the calling thread and return `status`, so a
 * failure site reads:  return ps_error_set(PS_EFORMAT, "gguf: bad magic");  */
int ps_error_set(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Last detail recorded on this thread ("" when none).  Valid until the next
 * ps_error_set on this thread. */
const char *ps_error_last(void);

/* Status the last ps_error_set on this thread recorded with its detail
 * (PS_OK when none since the last ps_error_clear): for a function that
 * returns NULL on failure, the caller's status to pass on. */
int ps_error_last_status(void);

/* Forget the thread's last detail. */
void ps_error_clear(void);

#endif /* PS_STATUS_H */
