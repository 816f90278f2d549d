/* tap.h: a header-only TAP producer for the C unit tests (automake's tap-driver reads it).
 *
 *   plan(N);  ok(cond, "name %d", i);  is_int(got, want, "name");  is_str(...);
 *   skip_all("reason");  return exit_status();
 */
#ifndef P2V_TAP_H
#define P2V_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed, tap_planned = -1;

static inline void plan(int n)
{
    tap_planned = n;
    printf("1..%d\n", n);
    fflush(stdout);
}

static inline void skip_all(const char *reason)
{
    printf("1..0 # SKIP %s\n", reason);
    fflush(stdout);
    exit(0);
}

__attribute__((format(printf, 2, 3))) static inline int ok(int cond, const char *fmt, ...)
{
    va_list ap;
    tap_n++;
    if (!cond)
        tap_failed++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return cond;
}

__attribute__((format(printf, 1, 2))) static inline void diag(const char *fmt, ...)
{
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

#define is_int(got, want, ...)                                                            \
    do {                                                                                  \
        long long tap_g_ = (long long)(got), tap_w_ = (long long)(want);                  \
        if (!ok(tap_g_ == tap_w_, __VA_ARGS__))                                           \
            diag("  got %lld, want %lld", tap_g_, tap_w_);                                \
    } while (0)

#define is_str(got, want, ...)                                                            \
    do {                                                                                  \
        const char *tap_g_ = (got), *tap_w_ = (want);                                     \
        if (!ok(tap_g_ && tap_w_ && strcmp(tap_g_, tap_w_) == 0, __VA_ARGS__))           \
            diag("  got '%s', want '%s'", tap_g_ ? tap_g_ : "(null)", tap_w_);            \
    } while (0)

static inline int exit_status(void)
{
    if (tap_planned < 0)
        printf("1..%d\n", tap_n);
    else if (tap_planned != tap_n)
        diag("planned %d tests but ran %d", tap_planned, tap_n);
    return tap_failed || (tap_planned >= 0 && tap_planned != tap_n) ? 1 : 0;
}

#endif
