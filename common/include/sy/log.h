/* SPDX-License-Identifier: Apache-2.0 */
/** Structured logging: one line per event, `ts=… level=… group=… msg="…"` on stderr.
 * The level is checked before the arguments are evaluated. */
#pragma once

#include <stdarg.h>

enum sy_log_level {
    SY_LOG_ERROR = 0,
    SY_LOG_WARN,
    SY_LOG_INFO,
    SY_LOG_DEBUG,
    SY_LOG_MAX,
};

extern enum sy_log_level sy_log_threshold;

/** Log <fmt> at <level> under <group> when the level is enabled. */
#define sy_log(level, group, ...)                                                                  \
    do {                                                                                           \
        if ((level) <= sy_log_threshold)                                                           \
            sy__log((level), (group), __VA_ARGS__);                                                \
    } while (0)

void sy__log(enum sy_log_level level, const char *group, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Set the threshold from a name (error, warn, info, debug); -EINVAL on an unknown name. */
int sy_log_set_level(const char *name);

/** Name the process in every line (e.g. "dataplane[worker 1]"); borrows <name> for life. */
void sy_log_set_ident(const char *name);
