/* SPDX-License-Identifier: Apache-2.0 */
/** Declarations shared between the files of proto/src. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

/** Set *<err> (when <err> is not NULL) to a new printf-formatted message the caller frees, and
 * return <rc>. Aborts on allocation failure, as sy_buf does: messages are small. */
int sy__proto_fail(char **err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/** Whether <c> may appear in an HTTP field name (RFC 9110 "tchar"). */
bool sy__is_tchar(unsigned char c);
