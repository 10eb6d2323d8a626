/* SPDX-License-Identifier: Apache-2.0 */
/** Declarations private to the control plane: shared between its files, never included from
 * outside controlplane/. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/** The daemon: admin API, routing-table publisher, LISTEN for config changes. Called by main.c
 * for the `serve` subcommand (also the default) with the arguments that follow the subcommand
 * word; <argv>[0] is "serve" or the program name, so getopt works on it. Returns the process
 * exit status. */
int cp_serve(int argc, char **argv);

/** Replace *<err> (freed if set) with a formatted message the caller frees; returns <rc> so a
 * failing path reads `return cp__fail(err, -EINVAL, "...")`. <err> may be NULL. Allocation
 * failure leaves *<err> NULL, which callers print as "out of memory". */
__attribute__((format(printf, 3, 4))) static inline int cp__fail(char **err, int rc,
                                                                 const char *fmt, ...)
{
    if (!err)
        return rc;
    free(*err);
    *err = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(err, fmt, ap) == -1)
        *err = NULL;
    va_end(ap);
    return rc;
}
