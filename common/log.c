/* log.c: levelled logging to stderr (or a chosen stream), one whole line per call. */
#include <pthread.h>
#include <string.h>

#include "p2v-common.h"

static char log_progname[64] = "p2vkit";
static enum p2v_log_level log_level = P2V_LOG_INFO;
static FILE *log_stream;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void p2v_log_init(const char *progname)
{
    const char *base = strrchr(progname, '/');
    snprintf(log_progname, sizeof log_progname, "%s", base ? base + 1 : progname);
}

const char *p2v_log_progname(void)
{
    return log_progname;
}

void p2v_log_set_level(enum p2v_log_level level)
{
    log_level = level;
}

enum p2v_log_level p2v_log_get_level(void)
{
    return log_level;
}

void p2v_log_adjust(int verbose, int quiet)
{
    int l = (int)P2V_LOG_INFO + verbose - quiet;
    if (l < (int)P2V_LOG_ERROR)
        l = P2V_LOG_ERROR;
    if (l > (int)P2V_LOG_DEBUG)
        l = P2V_LOG_DEBUG;
    log_level = (enum p2v_log_level)l;
}

void p2v_log_set_stream(FILE *fp)
{
    log_stream = fp;
}

void p2v_log(enum p2v_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    if (level > log_level)
        return;
    char line[2048];
    int n = snprintf(line, sizeof line, "%s: ", log_progname);
    if (level != P2V_LOG_INFO && n >= 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, "%s: ", names[level]);
    if (n >= 0 && (size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
    }
    FILE *fp = log_stream ? log_stream : stderr;
    pthread_mutex_lock(&log_lock);
    fprintf(fp, "%s\n", line);
    fflush(fp);
    pthread_mutex_unlock(&log_lock);
}
