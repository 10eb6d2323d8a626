/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "sy/log.h"

enum sy_log_level sy_log_threshold = SY_LOG_INFO;

static const char *ident = "switchyard";
static const char *const level_names[SY_LOG_MAX] = {"error", "warn", "info", "debug"};

void sy_log_set_ident(const char *name)
{
    ident = name;
}

int sy_log_set_level(const char *name)
{
    for (int i = 0; i < SY_LOG_MAX; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            sy_log_threshold = (enum sy_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

void sy__log(enum sy_log_level level, const char *group, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s proc=%s pid=%d group=%s msg=\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), level_names[level], ident, (int)getpid(), group);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 2, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m < sizeof(line) - (size_t)n - 3 ? (size_t)m : sizeof(line) - (size_t)n - 3);
    line[len++] = '"';
    line[len++] = '\n';
    /* One write per line, so lines from several workers never interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
