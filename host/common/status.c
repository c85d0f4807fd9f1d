#include "status.h"

#include <stdio.h>

static const char *const status_messages[] = {
#define PS_STATUS_MSG(code, msg) msg,
    PS_STATUS_TABLE(PS_STATUS_MSG)
#undef PS_STATUS_MSG
};

static _Thread_local char error_detail[512];
static _Thread_local int error_status;

const char *ps_status_str(int status)
{
    if (status < 0 || status >= PS_STATUS_COUNT)
        return "unknown status";
    return status_messages[status];
}

int ps_error_set(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_detail, sizeof error_detail, fmt, ap);
    va_end(ap);
    error_status = status;
    return status;
}

const char *ps_error_last(void)
{
    return error_detail;
}

int ps_error_last_status(void)
{
    return error_status;
}

void ps_error_clear(void)
{
    error_detail[0] = '\0';
    error_status = PS_OK;
}
