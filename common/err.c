/* err.c: the error out-parameter (struct p2v_err) and its helpers. */
#include <errno.h>
#include <string.h>

#include "p2v-common.h"

int p2v_err_setv(struct p2v_err *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return -1;
}

int p2v_err_set(struct p2v_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    p2v_err_setv(err, code, fmt, ap);
    va_end(ap);
    return -1;
}

int p2v_err_errno(struct p2v_err *err, const char *fmt, ...)
{
    int saved = errno;
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(saved));
        err->code = saved;
    }
    errno = saved;
    return -1;
}

int p2v_err_prefix(struct p2v_err *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char ctx[P2V_ERR_MSG_MAX];
    char old[P2V_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    /* Join into a buffer large enough for both, then keep what fits. */
    char joined[2 * P2V_ERR_MSG_MAX + 2];
    if (old[0])
        snprintf(joined, sizeof joined, "%s: %s", ctx, old);
    else
        snprintf(joined, sizeof joined, "%s", ctx);
    snprintf(err->msg, sizeof err->msg, "%.*s", (int)sizeof err->msg - 1, joined);
    return -1;
}

void p2v_err_clear(struct p2v_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
